"""The identities of the loss page (docs/losses.md, "Identities"), and chunked == unchunked."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold
from hscl.losses import contrastive_loss, get_loss
from reference import reference_loss


def _batch(seed: int, B: int = 24, V: int = 2, d: int = 8, classes: int = 4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=dtype)
    labels = torch.randint(0, classes, (B,), generator=generator)
    return z, labels


SETTINGS = [("views", "unsupervised"), ("labels", "supervised"), ("labels", "unsupervised"), ("views", "supervised")]


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("M", [None, "count", 3.0])
def test_tilting_never_lowers_the_loss(positives, negatives, M):
    # per pair: exp(beta g) and exp(g) are similarly ordered, so the tilted mean of exp(g) is >= the plain one
    for seed in range(10):
        z, labels = _batch(seed, classes=3)
        kw = {"positives": positives, "negatives": negatives, "M": M, "reduction": "none"}
        plain = contrastive_loss(z, labels, **kw)
        for beta in [0.1, 1.0, 5.0]:
            tilted = contrastive_loss(z, labels, hardening=Exponential(beta), **kw)
            assert torch.all(tilted >= plain - 1e-12)
            assert tilted.sum() > plain.sum()


def test_lower_bounds_on_presets():
    for seed in range(5):
        z, labels = _batch(seed, B=64, classes=10, dtype=torch.float32)
        assert get_loss("h-scl", beta=1.0)(z, labels) >= get_loss("scl")(z, labels)
        assert get_loss("h-ucl", beta=1.0)(z) >= get_loss("ucl")(z)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
def test_beta_zero_equals_no_hardening(positives, negatives):
    z, labels = _batch(1)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la = contrastive_loss(a, labels, positives=positives, negatives=negatives, hardening=Exponential(0.0))
    lb = contrastive_loss(b, labels, positives=positives, negatives=negatives)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
def test_low_threshold_equals_no_hardening(positives, negatives):
    temperature = 0.5
    z, labels = _batch(2)
    below_all = 0.5 * math.exp(-1.0 / temperature)  # every g >= -1/temperature on the sphere
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la, stats = contrastive_loss(
        a, labels, positives=positives, negatives=negatives, hardening=Threshold(below_all), return_stats=True
    )
    lb = contrastive_loss(b, labels, positives=positives, negatives=negatives)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-13, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-11, atol=1e-14)
    assert stats.num_fallbacks == 0
    assert torch.equal(stats.num_kept, stats.num_negatives)


def test_high_threshold_falls_back_and_counts(label_layout):
    z, labels = _batch(3)
    above_all = 2.0 * math.exp(1.0 / 0.5)  # no g reaches it: every anchor falls back to w = 1
    la, stats = contrastive_loss(
        z, labels, positives="labels", negatives="supervised", hardening=Threshold(above_all), return_stats=True
    )
    lb = contrastive_loss(z, labels, positives="labels", negatives="supervised")
    torch.testing.assert_close(la, lb, rtol=1e-13, atol=0)
    assert stats.num_fallbacks == int((stats.num_negatives > 0).sum())
    assert torch.isfinite(la)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("hardening", [None, Exponential(2.0), Threshold(1.2), lambda g: torch.sigmoid(g)])
def test_permutation_invariance(positives, negatives, hardening, label_layout):
    z, labels = _batch(4, V=3)
    kw = {"positives": positives, "negatives": negatives, "hardening": hardening}
    base, stats = contrastive_loss(z, labels, return_stats=True, **kw)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(9))
    view_perm = torch.tensor([2, 0, 1])
    shuffled = z[perm][:, view_perm]
    other, other_stats = contrastive_loss(shuffled, labels[perm], return_stats=True, **kw)
    torch.testing.assert_close(base, other, rtol=1e-12, atol=0)
    # the per-anchor statistics move with their rows: row v*B + i of the shuffled batch is sample perm[i]
    B = z.shape[0]
    rows = torch.tensor([view_perm[v] * B + perm[i] for v in range(3) for i in range(B)])
    torch.testing.assert_close(other_stats.anchor_loss, stats.anchor_loss[rows], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize(
    "hardening",
    [None, Exponential(1.0), Threshold(1.5), lambda g: torch.exp(0.7 * g)],
    ids=["none", "exp", "thr", "fn"],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_equals_unchunked(positives, negatives, hardening, reduction, label_layout):
    z, labels = _batch(5, B=30, V=2, dtype=torch.float32)
    kw = {"positives": positives, "negatives": negatives, "hardening": hardening, "reduction": reduction}
    a = z.clone().requires_grad_(True)
    la = contrastive_loss(a, labels, **kw)
    la.sum().backward()
    for chunk in [1, 7, 59, 60, 1000]:
        b = z.clone().requires_grad_(True)
        lb = contrastive_loss(b, labels, chunk_size=chunk, **kw)
        lb.sum().backward()
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * float(a.grad.abs().max()))


def test_distinct_labels_make_scl_equal_ucl():
    # every sample its own class: same-label rows are exactly the other views, other-label rows
    # exactly the other samples
    z, _ = _batch(6, B=20, V=2)
    labels = torch.arange(20) * 7
    for hardening in [None, Exponential(1.5)]:
        scl = contrastive_loss(z, labels, positives="labels", negatives="supervised", hardening=hardening)
        ucl = contrastive_loss(z, positives="views", negatives="unsupervised", hardening=hardening)
        torch.testing.assert_close(scl, ucl, rtol=1e-13, atol=0)


def test_reductions_are_consistent():
    z, labels = _batch(7)
    kw = {"positives": "labels", "negatives": "supervised", "hardening": Exponential(1.0)}
    per_pair, stats = contrastive_loss(z, labels, reduction="none", return_stats=True, **kw)
    torch.testing.assert_close(contrastive_loss(z, labels, reduction="sum", **kw), per_pair.sum())
    torch.testing.assert_close(contrastive_loss(z, labels, reduction="mean", **kw), per_pair.mean())
    anchor_mean = torch.stack(
        [per_pair[stats.pair_index[:, 0] == r].mean() for r in stats.pair_index[:, 0].unique()]
    ).mean()
    torch.testing.assert_close(contrastive_loss(z, labels, reduction="anchor_mean", **kw), anchor_mean)


def test_detach_weights_changes_only_the_gradient():
    z, labels = _batch(8)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    kw = {"positives": "labels", "negatives": "supervised", "hardening": Exponential(2.0)}
    la = contrastive_loss(a, labels, **kw)
    lb = contrastive_loss(b, labels, detach_weights=True, **kw)
    torch.testing.assert_close(la, lb, rtol=1e-14, atol=0)
    la.backward()
    lb.backward()
    assert (a.grad - b.grad).abs().max() > 1e-4


def test_unnormalized_embeddings_use_raw_dot_products():
    z, labels = _batch(9)
    scaled = contrastive_loss(2.0 * z, labels, normalize=False, temperature=1.0)
    plain = contrastive_loss(z, labels, normalize=False, temperature=0.25)
    torch.testing.assert_close(scaled, plain, rtol=1e-12, atol=0)  # (2z).(2z)/1 = z.z/0.25


def _count_host_syncs(monkeypatch) -> list:
    """Record every Tensor -> Python conversion (each is a host synchronisation on an accelerator)."""
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("hardening", [None, Exponential(1.0), Threshold(1.5)], ids=["none", "exp", "thr"])
def test_host_syncs_are_constant_per_call_not_per_chunk(positives, negatives, hardening, monkeypatch, label_layout):
    z, labels = _batch(10, B=30, V=2, dtype=torch.float32)
    counts = []
    for chunk in [None, 7, 1]:
        a = z.clone().requires_grad_(True)
        with monkeypatch.context() as patch:
            calls = _count_host_syncs(patch)
            loss = contrastive_loss(
                a, labels, positives=positives, negatives=negatives, hardening=hardening, chunk_size=chunk
            )
            loss.backward()
        counts.append(len(calls))
    assert counts[0] == counts[1] == counts[2] <= 2, counts  # the finiteness check and one for the shapes


def test_supcon_host_syncs_are_constant(monkeypatch):
    from hscl.losses import supcon_loss

    z, labels = _batch(11, B=30, V=2, dtype=torch.float32)
    a = z.clone().requires_grad_(True)
    with monkeypatch.context() as patch:
        calls = _count_host_syncs(patch)
        supcon_loss(a, labels).backward()
    assert len(calls) <= 2, calls


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize(
    "hardening", [None, Exponential(1.0), Exponential(0.3), Threshold(0.5)], ids=["none", "exp1", "exp03", "thr"]
)
@pytest.mark.parametrize("normalize", [True, False])
def test_cpu_blocks_without_chunk_size_match_the_loop(positives, negatives, hardening, normalize, monkeypatch):
    # without chunk_size the block kernel takes anchors in cache-sized blocks on the CPU
    # (hscl.losses.kernel._cpu_block); force it (not the symmetric kernel) with blocks of 32 rows on a 96-row
    # batch and check value and gradient against the float64 loop
    from hscl.losses import kernel, symmetric

    monkeypatch.setattr(symmetric, "_SYMMETRIC_ELEMENTS", 0)
    monkeypatch.setattr(kernel, "_CPU_BLOCK_ELEMENTS", 1)
    assert kernel._cpu_block(96) == 32
    z, labels = _batch(11, B=48, V=2, d=6, classes=3)
    kw = {"positives": positives, "negatives": negatives, "hardening": hardening, "temperature": 0.5}
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    ours = contrastive_loss(a, labels, normalize=normalize, **kw)
    ref = reference_loss(b, labels, normalize=normalize, **kw)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-11)
