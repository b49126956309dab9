"""pytorch-metric-learning's call shape ``loss_fn(embeddings (N, d), labels (N,))`` for every loss module."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold
from hscl.losses import available_losses, get_loss
from reference import reference_metric_learning, reference_supcon

# methods whose label sets coincide with the (B, V, d) ones when the embeddings are the views
SUPERVISED = [
    ("scl", {}),
    ("h-scl", {"beta": 2.0}),
    ("h-scl", {"tau": math.exp(0.2 / 0.5)}),
    ("schane", {"beta": 1.0}),
    ("supcon", {}),
]


def _flat(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, d) views -> (V*B, d) embeddings in row order r = v * B + i, and their labels."""
    return torch.cat(z.unbind(1)), labels.repeat(z.shape[1])


@pytest.mark.parametrize("method,kwargs", SUPERVISED, ids=[f"{m}-{list(k)}" for m, k in SUPERVISED])
@pytest.mark.parametrize("views", [2, 3])
def test_agrees_with_the_views_form(method, kwargs, views, label_layout):
    generator = torch.Generator().manual_seed(views)
    z = torch.randn(10, views, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,), generator=generator)
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    loss_fn = get_loss(method, temperature=0.5, **kwargs)
    as_views = loss_fn(a, labels)
    views_stats = getattr(loss_fn, "last_stats", None)
    embeddings, flat_labels = _flat(b, labels)
    as_rows = loss_fn(embeddings, flat_labels)
    torch.testing.assert_close(as_rows, as_views, rtol=1e-12, atol=0)
    as_views.backward()
    as_rows.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-14)
    if views_stats is not None:
        for field in ("num_positives", "num_negatives", "valid", "log_tilted_mean", "anchor_loss"):
            torch.testing.assert_close(getattr(loss_fn.last_stats, field), getattr(views_stats, field))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_per_pair_values_agree_with_the_views_form(reduction):
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(9, 2, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (9,), generator=generator)
    loss_fn = get_loss("h-scl", beta=1.0, reduction=reduction, chunk_size=4)
    torch.testing.assert_close(loss_fn(*_flat(z, labels)), loss_fn(z, labels), rtol=1e-12, atol=0)


CASES = [
    ("ucl", {}, "unsupervised", None),
    ("h-ucl", {"beta": 1.5}, "unsupervised", Exponential(1.5)),
    ("h-ucl", {"tau": 1.2}, "unsupervised", Threshold(1.2)),
    ("scl", {}, "supervised", None),
    ("h-scl", {"beta": 3.0}, "supervised", Exponential(3.0)),
    ("h-scl", {"tau": 2.0}, "supervised", Threshold(2.0)),
    ("h-scl", {"hardening": lambda g: torch.sigmoid(2.0 * g)}, "supervised", lambda g: torch.sigmoid(2.0 * g)),
]


@pytest.mark.parametrize("method,kwargs,negatives,hardening", CASES, ids=[f"{c[0]}-{list(c[1])}" for c in CASES])
@pytest.mark.parametrize("classes", [2, 5])
def test_matches_the_metric_learning_loop(method, kwargs, negatives, hardening, classes):
    """Positives: other rows of the label; negatives: every other row (unsupervised) or other labels."""
    generator = torch.Generator().manual_seed(classes)
    embeddings = torch.randn(14, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (14,), generator=generator)
    a, b = embeddings.clone().requires_grad_(True), embeddings.clone().requires_grad_(True)
    ours = get_loss(method, temperature=0.4, **kwargs)(a, labels)
    ref = reference_metric_learning(b, labels, negatives=negatives, hardening=hardening, temperature=0.4)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_schane_and_supcon_match_their_loops():
    generator = torch.Generator().manual_seed(9)
    embeddings = torch.randn(15, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (15,), generator=generator)
    schane = get_loss("schane", beta=0.5, temperature=0.3)(embeddings, labels)
    ref = reference_metric_learning(
        embeddings,
        labels,
        negatives="supervised",
        hardening=Exponential(0.5),
        temperature=0.3,
        M="count",
        reduction="anchor_mean",
    )
    torch.testing.assert_close(schane, ref, rtol=1e-10, atol=0)
    supcon = get_loss("supcon", temperature=0.2)(embeddings, labels)
    torch.testing.assert_close(
        supcon, reference_supcon(embeddings[:, None], labels, temperature=0.2), rtol=1e-10, atol=0
    )


def test_supcon_is_pytorch_metric_learning_supcon():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(40, 8, generator=generator)
    labels = torch.randint(0, 6, (40,), generator=generator)
    ours = get_loss("supcon", temperature=0.1, base_temperature=0.1)(embeddings, labels)
    theirs = pml_losses.SupConLoss(temperature=0.1)(embeddings, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_unsupervised_negatives_include_rows_of_the_same_label():
    """For UCL the label only picks the positives: a same-label row is a negative too (all other rows)."""
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(6, 3, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    loss_fn = get_loss("ucl")
    loss_fn(embeddings, labels)
    stats = loss_fn.last_stats
    assert stats.num_negatives.tolist() == [5] * 6
    assert stats.num_positives.tolist() == [2, 2, 2, 1, 1, 0]
    assert stats.valid.tolist() == [True] * 5 + [False]


@pytest.mark.parametrize("method", available_losses())
def test_two_dimensional_input_without_labels_is_a_clear_error(method):
    with pytest.raises(ValueError, match=r"embeddings of shape \(N, d\) = \(8, 4\) need labels of shape \(N,\)"):
        get_loss(method)(torch.randn(8, 4))
