"""hscl.losses against the float64 loop of tests/reference.py over a randomized grid of every mode."""

from __future__ import annotations

import contextlib
import math
import random

import pytest
import torch

from hscl.hardening import Exponential, Threshold
from hscl.losses import contrastive_loss
from reference import reference_loss, reference_pairs


def _sigmoid_eta(g):
    return torch.sigmoid(2.0 * g)


def _poly_eta(g):
    return (g + 3.0).clamp(min=0.0) ** 2  # zero for g < -3: some anchors fall back


def _draw_case(rng: random.Random) -> dict:
    positives = rng.choice(["views", "labels"])
    negatives = rng.choice(["unsupervised", "supervised"])
    V = rng.choice([2, 3]) if positives == "views" else rng.choice([1, 2, 3])
    B = rng.randint(2, 20 if V < 3 else 14)
    classes = rng.choice([1, 2, 3, 5, 10, 100])
    temperature = rng.choice([0.2, 0.5, 1.0])
    kind = rng.choice(["none", "exp", "threshold", "callable"])
    if kind == "none":
        hardening = None
    elif kind == "exp":
        hardening = Exponential(rng.choice([0.0, 0.5, 1.0, 3.0]))
    elif kind == "threshold":
        cut = rng.uniform(-0.5, 0.9)  # cosine cut; high cuts make anchors fall back
        hardening = Threshold(math.exp(cut / temperature))
    else:
        hardening = rng.choice([_sigmoid_eta, _poly_eta])
    M = rng.choice([None, 7.5, "count"])
    tau_plus = rng.choice([0.0, 0.1, 0.3]) if negatives == "unsupervised" else 0.0
    reduction = rng.choice(["mean", "sum", "none", "anchor_mean"])
    return {
        "B": B,
        "V": V,
        "d": rng.choice([3, 8, 16]),
        "classes": classes,
        "kw": {
            "positives": positives,
            "negatives": negatives,
            "hardening": hardening,
            "temperature": temperature,
            "M": M,
            "tau_plus": tau_plus,
            "reduction": reduction,
        },
        "chunk_size": rng.choice([None, 1, 5, 17]),
        "detach_weights": rng.random() < 0.2,
    }


CASES = [_draw_case(random.Random(seed)) for seed in range(72)]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_float64_loop(case, label_layout):
    torch.manual_seed(hash(str(case)) % 2**31)
    B, V, d = case["B"], case["V"], case["d"]
    z = torch.randn(B, V, d, dtype=torch.float64)
    # fewer labels than classes when B is small; label ids are arbitrary integers
    labels = torch.randint(0, case["classes"], (B,)) * 3 + 11
    kw = dict(case["kw"])
    if kw["M"] is None and V * B <= 2:
        kw["M"] = 1.0
    ours_in = z.clone().requires_grad_(True)
    ref_in = z.clone().requires_grad_(True)
    with pytest.warns(RuntimeWarning) if not reference_pairs(z, labels, **_ref_kw(kw)) else contextlib.nullcontext():
        loss, stats = contrastive_loss(
            ours_in,
            labels,
            chunk_size=case["chunk_size"],
            detach_weights=case["detach_weights"],
            return_stats=True,
            **kw,
        )
    ref = reference_loss(
        ref_in, labels, reduction=kw["reduction"], detach_weights=case["detach_weights"], **_ref_kw(kw)
    )
    assert loss.dtype == torch.float64
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-10)
    if ref.numel() == 0 or not ref.requires_grad:
        return
    weights = torch.linspace(0.5, 1.5, ref.numel(), dtype=torch.float64).reshape(ref.shape)
    (loss * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-8, atol=1e-10)
    pairs = reference_pairs(z, labels, **_ref_kw(kw))
    assert stats.num_pairs == len(pairs)
    assert stats.num_valid_anchors == len({r for r, _, _ in pairs})
    if kw["reduction"] == "none":
        assert stats.pair_index.tolist() == [[r, p] for r, p, _ in pairs]


def _ref_kw(kw):
    return {k: v for k, v in kw.items() if k != "reduction"}


@pytest.mark.parametrize(
    "kw",
    [
        {"positives": "views", "negatives": "unsupervised"},
        {"positives": "views", "negatives": "unsupervised", "hardening": Exponential(1.5), "tau_plus": 0.2},
        {"positives": "labels", "negatives": "supervised", "hardening": Exponential(2.0)},
        {"positives": "labels", "negatives": "supervised", "hardening": Threshold(math.exp(0.1 / 0.5))},
        {"positives": "labels", "negatives": "unsupervised", "hardening": _sigmoid_eta, "M": "count"},
        {"positives": "views", "negatives": "supervised", "hardening": Exponential(1.0), "reduction": "none"},
        {"positives": "labels", "negatives": "supervised", "hardening": Exponential(1.0), "reduction": "anchor_mean"},
        {"positives": "labels", "negatives": "supervised", "hardening": Exponential(1.0), "chunk_size": 3},
    ],
)
def test_gradcheck_float64(kw, label_layout):
    torch.manual_seed(3)
    z = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    assert torch.autograd.gradcheck(lambda x: contrastive_loss(x, labels, **kw), (z,), eps=1e-6, atol=1e-7)


def test_float32_matches_float64_loop():
    torch.manual_seed(0)
    z = torch.randn(32, 2, 16)
    labels = torch.randint(0, 4, (32,))
    for hardening in [None, Exponential(1.0), Threshold(1.0)]:
        ours = contrastive_loss(z, labels, positives="labels", negatives="supervised", hardening=hardening)
        ref = reference_loss(z.double(), labels, positives="labels", negatives="supervised", hardening=hardening)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=1e-6)


def test_identical_embeddings_closed_form():
    # every g = 1/temperature: E = e^{1/t}, loss = log(1 + M) = log(V*B - 1) (lightly's log(2n - 1))
    z = torch.ones(10, 2, 8)
    for method_kw in [{}, {"hardening": Exponential(4.0)}, {"hardening": Threshold(0.5)}]:
        loss = contrastive_loss(z, **method_kw)
        torch.testing.assert_close(loss, torch.tensor(math.log(19.0)))


def test_stats_per_anchor():
    torch.manual_seed(1)
    z = torch.randn(8, 2, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    _, stats = contrastive_loss(
        z, labels, positives="labels", negatives="supervised", hardening=Exponential(1.0), return_stats=True
    )
    pairs = reference_pairs(z, labels, positives="labels", negatives="supervised", hardening=Exponential(1.0))
    # class 2 has one sample but two views, so every anchor has a positive here
    assert stats.valid.all()
    assert stats.num_positives.tolist() == [5, 5, 5, 3, 3, 1, 3, 3] * 2
    assert stats.num_negatives.tolist() == [16 - (k + 1) for k in [5, 5, 5, 3, 3, 1, 3, 3]] * 2
    for r in range(16):
        mine = [float(v) for rr, _, v in pairs if rr == r]
        assert float(stats.anchor_loss[r]) == pytest.approx(sum(mine) / len(mine), rel=1e-10)
    assert float(stats.anchor_loss.mean()) == pytest.approx(
        float(
            contrastive_loss(
                z,
                labels,
                positives="labels",
                negatives="supervised",
                hardening=Exponential(1.0),
                reduction="anchor_mean",
            )
        ),
        rel=1e-10,
    )
