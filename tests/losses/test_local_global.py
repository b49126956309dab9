"""InfoGraph's local-global objective (hscl.losses.local_global) against a float64 loop, the hardening
direction, and any hardening: exponential (``beta=`` or ``Exponential``), threshold, user callables."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Hardening, Threshold
from hscl.losses import local_global_loss
from hscl.losses.local_global import graph_negative_mask, negative_weights
from reference import LOG2, random_graph_problem, reference_local_global


def test_ucl_jsd_is_infograph_loss():
    """With every other graph a negative, E_neg is the plain mean over all (node, other graph) pairs."""
    local, global_, batch, _ = random_graph_problem(2)
    scores = local @ global_.T
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[torch.arange(batch.numel()), batch] = True
    e_pos = (LOG2 - torch.nn.functional.softplus(-scores[pos])).mean()
    e_neg = (torch.nn.functional.softplus(scores[~pos]) - LOG2).mean()
    torch.testing.assert_close(local_global_loss(local, global_, batch), e_neg - e_pos)


def test_supervised_negatives_and_anchor_without_negatives():
    # graph 1 (label 1) is the only graph of another label for the nodes of graphs 0 and 2;
    # with all labels equal, no node has a negative: JSD keeps only its positive term
    local, global_, batch, _ = random_graph_problem(3, nodes_per_graph=(2, 2, 1), labels=(0, 1, 0))
    mask = graph_negative_mask(batch, 3, torch.tensor([0, 1, 0]))
    assert mask.tolist() == [[False, True, False]] * 2 + [[True, False, True]] * 2 + [[False, True, False]]
    same = torch.zeros(3, dtype=torch.long)
    value = local_global_loss(local, global_, batch, same, negatives="supervised", beta=1.0)
    expected = reference_local_global(local, global_, batch, same, True, 1.0, "jsd")
    torch.testing.assert_close(value, expected)
    local.requires_grad_(True)
    nce = local_global_loss(local, global_, batch, same, negatives="supervised", estimator="infonce")
    assert float(nce.detach()) == 0.0 and nce.requires_grad


def test_hardening_weights_grow_with_similarity_and_average_one():
    """The direction test: a MORE similar (harder) negative must weigh more. The sign-reversed variant
    exp(-beta s) (weighting easier negatives more) fails the monotonicity check below."""
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(7, 9, generator=generator, dtype=torch.float64) * 3
    mask = torch.rand(7, 9, generator=generator) < 0.7
    mask[0] = False  # an anchor without negatives
    mask[1] = False
    mask[1, 4] = True  # an anchor with one negative
    for beta in (0.5, 1.0, 2.0, 10.0):
        w = negative_weights(scores, mask, beta)
        assert torch.all(w[~mask] == 0)
        for row in range(1, 7):
            negatives = mask[row].nonzero().flatten()
            ws, ss = w[row, negatives], scores[row, negatives]
            torch.testing.assert_close(ws.mean(), torch.ones((), dtype=torch.float64))  # mean 1 per anchor
            order = ss.argsort()
            assert torch.all(ws[order][1:] > ws[order][:-1]), f"weights must increase with similarity (beta={beta})"
            # the closed form: ratios of weights are exp(beta * score differences)
            torch.testing.assert_close(ws / ws[0], torch.exp(beta * (ss - ss[0])))
        assert torch.all(w[0] == 0)
    torch.testing.assert_close(negative_weights(scores, mask, 0.0), mask.double())
    reversed_weights = negative_weights(-scores, mask, 1.0)  # what a sign error would compute
    row = mask[2].nonzero().flatten()
    order = scores[2, row].argsort()
    assert torch.all(reversed_weights[2, row][order][1:] < reversed_weights[2, row][order][:-1])


def test_hardening_raises_the_negative_term():
    """Tilting toward high scores (Chebyshev: w and softplus(s) similarly ordered) never lowers the JSD loss."""
    for seed in range(5):
        local, global_, batch, _ = random_graph_problem(seed, scale=1.5)
        plain = local_global_loss(local, global_, batch)
        for beta in (1.0, 2.0, 10.0):
            assert float(local_global_loss(local, global_, batch, beta=beta)) >= float(plain) - 1e-12


def test_large_beta_and_scores_stay_finite():
    local, global_, batch, _ = random_graph_problem(5, scale=6.0)
    local.requires_grad_(True)
    for estimator in ("jsd", "infonce"):
        value = local_global_loss(local.float(), global_.float(), batch, beta=10.0, estimator=estimator)
        assert torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, local)
        assert torch.isfinite(grad).all()


def test_detached_weights_same_value_other_gradient():
    local, global_, batch, _ = random_graph_problem(6)
    local.requires_grad_(True)
    a = local_global_loss(local, global_, batch, beta=2.0)
    b = local_global_loss(local, global_, batch, beta=2.0, detach_weights=True)
    torch.testing.assert_close(a, b)
    ga, gb = (torch.autograd.grad(v, local)[0] for v in (a, b))
    assert not torch.allclose(ga, gb)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta": -1.0}, "beta"),
        ({"estimator": "nce"}, "estimator"),
        ({"negatives": "labels"}, "negatives"),
        ({"negatives": "supervised"}, "labels"),
        ({"beta": 1.0, "hardening": Exponential(1.0)}, "at most one of beta= and hardening="),
        ({"hardening": lambda s: s}, "negative weights"),
        ({"hardening": lambda s: s[:1]}, "same shape"),
        ({"hardening": lambda s: s * math.inf}, "non-finite"),
    ],
)
def test_loss_bad_input(kwargs, match):
    local, global_, batch, _ = random_graph_problem(0)
    with pytest.raises(ValueError, match=match):
        local_global_loss(local, global_, batch, **kwargs)
    with pytest.raises(ValueError, match="batch"):
        local_global_loss(local, global_, batch[:-1])


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("supervised", [False, True])
@pytest.mark.parametrize(
    "hardening",
    [Threshold(1.0), Threshold(0.5), lambda s: torch.sigmoid(2.0 * s), lambda s: (s + 0.5).clamp(min=0.0) ** 2],
    ids=["threshold-1", "threshold-0.5", "sigmoid", "relu-squared"],
)
def test_any_hardening_matches_float64_loop(hardening, supervised, estimator):
    local, global_, batch, labels = random_graph_problem(11)
    local.requires_grad_(True)
    global_.requires_grad_(True)
    negatives = "supervised" if supervised else "unsupervised"
    value = local_global_loss(
        local, global_, batch, labels, negatives=negatives, hardening=hardening, estimator=estimator
    )
    expected = reference_local_global(local, global_, batch, labels, supervised, hardening, estimator)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(value, (local, global_))
    expected_grads = torch.autograd.grad(expected, (local, global_))
    for got, want in zip(grads, expected_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_beta_is_the_exponential_shortcut(estimator):
    local, global_, batch, _ = random_graph_problem(12)
    for beta in (0.0, 0.5, 3.0):
        by_beta = local_global_loss(local, global_, batch, beta=beta, estimator=estimator)
        by_hardening = local_global_loss(local, global_, batch, hardening=Exponential(beta), estimator=estimator)
        assert torch.equal(by_beta, by_hardening)
    assert torch.equal(
        local_global_loss(local, global_, batch, estimator=estimator),
        local_global_loss(local, global_, batch, beta=0.0, estimator=estimator),
    )
    # a callable exp(beta s) takes the generic path and agrees to rounding
    generic = local_global_loss(local, global_, batch, hardening=lambda s: torch.exp(2.0 * s), estimator=estimator)
    torch.testing.assert_close(generic, local_global_loss(local, global_, batch, beta=2.0, estimator=estimator))


def test_threshold_keeps_the_hard_negatives_and_falls_back():
    local, global_, batch, _ = random_graph_problem(13)
    scores = local @ global_.T
    mask = graph_negative_mask(batch, global_.shape[0])
    tau = 1.0  # keeps s >= 0
    w = negative_weights(scores, mask, hardening=Threshold(tau))
    kept = mask & (scores >= 0)
    rows = kept.any(1)
    assert torch.all(w[rows][~kept[rows]] == 0)
    torch.testing.assert_close(w[rows].sum(1), mask[rows].sum(1).double())  # mean 1 over N(n)
    torch.testing.assert_close(w[~rows], mask[~rows].double())  # nothing passes: w = 1
    # a threshold below every exp(s) is no hardening; one above every exp(s) falls back everywhere
    low, high = Threshold(math.exp(float(scores.min()) - 1)), Threshold(math.exp(float(scores.max()) + 1))
    plain = local_global_loss(local, global_, batch)
    torch.testing.assert_close(local_global_loss(local, global_, batch, hardening=low), plain)
    torch.testing.assert_close(local_global_loss(local, global_, batch, hardening=high), plain)


def test_user_subclass_of_hardening_takes_the_generic_path():
    class Cubic(Hardening):
        def __call__(self, g):
            return (g + 3.0).clamp(min=0.0) ** 3

    local, global_, batch, labels = random_graph_problem(14)
    ours = local_global_loss(local, global_, batch, hardening=Cubic(), estimator="infonce")
    expected = reference_local_global(local, global_, batch, labels, False, Cubic(), "infonce")
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_hardening_of_wrong_type_is_rejected():
    local, global_, batch, _ = random_graph_problem(0)
    with pytest.raises(TypeError, match="hardening must be"):
        local_global_loss(local, global_, batch, hardening=2.0)
