"""The extensions of the loss page (docs/losses.md, "Extensions"): a memory of past rows, multi-hot labels,
AutoExponential; against the float64 loop of tests/reference.py (written from the semantics, sharing no code with
hscl.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import AutoExponential, Exponential, Threshold
from hscl.losses import contrastive_loss, get_loss
from reference import _rows, reference_loss, reference_pairs

SETTINGS = [("views", "unsupervised"), ("labels", "supervised"), ("labels", "unsupervised"), ("views", "supervised")]
HARDENINGS = [None, Exponential(1.0), Threshold(1.5), lambda g: torch.exp(0.7 * g)]
HARDENING_IDS = ["none", "exp", "thr", "fn"]


def _batch(seed, B=10, V=2, d=5, classes=3, multi=False):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=torch.float64)
    if multi:
        labels = torch.rand(B, classes, generator=generator) < 0.4  # some rows have no class
    else:
        labels = torch.randint(0, classes, (B,), generator=generator)
    return z, labels


def _memory(seed, K=7, d=5, classes=3, multi=False, with_labels=True):
    generator = torch.Generator().manual_seed(100 + seed)
    z_mem = torch.randn(K, d, generator=generator, dtype=torch.float64)
    if not with_labels:
        return z_mem, None
    if multi:
        return z_mem, torch.rand(K, classes, generator=generator) < 0.4
    return z_mem, torch.randint(0, classes, (K,), generator=generator)


def _compare(z, labels, kw, reduction="mean", chunk_size=None, **ref_kw):
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    ours = contrastive_loss(a, labels, reduction=reduction, chunk_size=chunk_size, **kw)
    ref = reference_loss(b, labels, reduction=reduction, **kw, **ref_kw)
    assert ref.numel() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-11)


# ---------------------------------------------------------------------------------------------------------------
# memory


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("hardening", HARDENINGS, ids=HARDENING_IDS)
@pytest.mark.parametrize("reduction", ["mean", "none", "anchor_mean"])
def test_memory_matches_loop(positives, negatives, hardening, reduction, label_layout):
    z, labels = _batch(1)
    memory = _memory(1)
    kw = {"positives": positives, "negatives": negatives, "hardening": hardening, "memory": memory}
    _compare(z, labels, kw, reduction)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_memory_chunked_matches_loop(positives, negatives, chunk_size):
    z, labels = _batch(2)
    kw = {"positives": positives, "negatives": negatives, "hardening": Exponential(0.6), "memory": _memory(2)}
    _compare(z, labels, kw, chunk_size=chunk_size)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
def test_memory_without_labels_has_no_class(positives, negatives):
    # memory rows without labels: never positives, negatives of every anchor
    z, labels = _batch(3)
    kw = {"positives": positives, "negatives": negatives, "hardening": Exponential(1.0)}
    _compare(z, labels, {**kw, "memory": _memory(3, with_labels=False)})


def test_memory_debiased_and_count_M_match_loop():
    z, _ = _batch(4)
    kw = {"hardening": Exponential(0.5), "tau_plus": 0.1, "memory": _memory(4, with_labels=False)}
    _compare(z, None, kw)
    z, labels = _batch(5)
    _compare(z, labels, {"positives": "labels", "negatives": "supervised", "M": "count", "memory": _memory(5)})


def test_memory_gets_no_gradient_and_pair_index_numbers_its_columns():
    z, labels = _batch(6)
    z_mem, labels_mem = _memory(6)
    z_mem.requires_grad_(True)
    z.requires_grad_(True)
    loss, stats = contrastive_loss(
        z, labels, positives="labels", negatives="supervised", memory=(z_mem, labels_mem), reduction="none",
        return_stats=True,
    )  # fmt: skip
    pairs = reference_pairs(z, labels, positives="labels", negatives="supervised", memory=(z_mem, labels_mem))
    assert stats.pair_index.tolist() == [[r, p] for r, p, _ in pairs]
    assert (stats.pair_index[:, 1] >= 20).any()  # some positives are memory rows (columns 2B + k)
    loss.sum().backward()
    assert z_mem.grad is None and z.grad is not None


def test_memory_M_default_counts_its_rows():
    z, labels = _batch(7)
    memory = _memory(7)
    _, stats = contrastive_loss(z, labels, memory=memory, return_stats=True)
    assert torch.allclose(stats.log_M[stats.valid], torch.tensor(math.log(20 + 7 - 2), dtype=torch.float64))
    assert stats.num_negatives.tolist() == [20 + 7 - 2] * 20  # unsupervised: every other instance


def test_empty_memory_is_no_memory():
    z, labels = _batch(8)
    with_empty = contrastive_loss(z, labels, memory=(torch.zeros(0, 5, dtype=torch.float64), None))
    assert with_empty == contrastive_loss(z, labels)


@pytest.mark.parametrize(
    "memory,message",
    [
        ("bad", r"memory must be a pair"),
        ((torch.zeros(3, 4), None), r"memory\[0\] \(z_mem\) must be a floating tensor of shape \(K, d\) with d = 5"),
        ((torch.full((3, 5), math.nan), None), r"memory\[0\] \(z_mem\) has non-finite values"),
        ((torch.zeros(3, 5), torch.zeros(4, dtype=torch.long)), r"labels_mem\) must be None or of shape \(K,\)"),
        ((torch.zeros(3, 5), torch.zeros(3, 3, dtype=torch.bool)), r"must be of the kind of labels, class ids"),
        ((torch.zeros(3, 5), torch.zeros(3)), r"labels_mem\) must have an integer dtype"),
    ],
)
def test_memory_errors(memory, message):
    z, labels = _batch(9)
    with pytest.raises((ValueError, TypeError), match=message):
        contrastive_loss(z.float(), labels, positives="labels", negatives="supervised", memory=memory)


# ---------------------------------------------------------------------------------------------------------------
# multi-hot labels


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("hardening", HARDENINGS, ids=HARDENING_IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_multi_hot_matches_loop(positives, negatives, hardening, reduction, label_layout):
    z, labels = _batch(10, multi=True)
    kw = {"positives": positives, "negatives": negatives, "hardening": hardening}
    _compare(z, labels, kw, reduction)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_multi_hot_with_memory_matches_loop(positives, negatives, chunk_size):
    z, labels = _batch(11, multi=True)
    kw = {"positives": positives, "negatives": negatives, "hardening": Threshold(1.2)}
    _compare(z, labels, {**kw, "memory": _memory(11, multi=True)}, chunk_size=chunk_size)


@pytest.mark.parametrize("positives,negatives", SETTINGS)
def test_one_hot_equals_class_ids(positives, negatives):
    z, labels = _batch(12, classes=4)
    one_hot = torch.nn.functional.one_hot(labels, 4)  # 0/1 integers
    z_mem, labels_mem = _memory(12, classes=4)
    kw = {"positives": positives, "negatives": negatives, "hardening": Exponential(1.0), "reduction": "none"}
    a = contrastive_loss(z, labels, memory=(z_mem, labels_mem), **kw)
    b = contrastive_loss(z, one_hot.bool(), memory=(z_mem, torch.nn.functional.one_hot(labels_mem, 4)), **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(contrastive_loss(z, one_hot, **kw), contrastive_loss(z, labels, **kw))


def test_supcon_with_multi_hot_labels_matches_its_definition():
    # SupCon: -log softmax over every other row, positives = rows sharing a class (or the same sample)
    z, labels = _batch(13, multi=True)
    a = z.clone().requires_grad_(True)
    loss = get_loss("supcon", temperature=0.5, base_temperature=0.5)(a, labels)
    Z = _rows(z, True)
    N, B = Z.shape[0], z.shape[0]
    g = Z @ Z.T / 0.5
    terms = []
    for r in range(N):
        P = [s for s in range(N) if s != r and (s % B == r % B or bool((labels[s % B] & labels[r % B]).any()))]
        if not P:
            continue
        log_den = torch.logsumexp(torch.cat([g[r, :r], g[r, r + 1 :]]), 0)
        terms.append(torch.stack([log_den - g[r, p] for p in P]).mean())
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-10, atol=0)


def test_multi_hot_errors():
    z, _ = _batch(14)
    with pytest.raises(ValueError, match=r"labels of shape \(n, C\) must be multi-hot: every entry 0 or 1"):
        contrastive_loss(z, torch.full((10, 3), 2), positives="labels", negatives="supervised")
    with pytest.raises(ValueError, match=r"at least one class column"):
        contrastive_loss(z, torch.zeros(10, 0, dtype=torch.bool), positives="labels", negatives="supervised")


# ---------------------------------------------------------------------------------------------------------------
# AutoExponential (the solver and the loss at its beta: test_auto_hardening.py)


def test_get_loss_beta_auto():
    loss_fn = get_loss("h-scl", beta="auto")
    assert isinstance(loss_fn.hardening, AutoExponential) and loss_fn.hardening.target == 0.5
    z, labels = _batch(22)
    loss_fn(z, labels)
    assert loss_fn.hardening.beta > 0
    with pytest.raises(ValueError, match=r'beta must be a number >= 0 or "auto"'):
        get_loss("h-scl", beta="hard")
    with pytest.raises(ValueError, match=r"target must be in \(0, 1\]"):
        AutoExponential(1.5)


# ---------------------------------------------------------------------------------------------------------------
# the memory of a loss module


def test_fifo_keeps_the_most_recent_rows_and_a_call_uses_the_memory_before_it():
    loss_fn = get_loss("scl", memory_size=25)
    batches = [_batch(30 + k) for k in range(4)]  # 20 rows each
    previous = None
    rows, row_labels = [], []
    for z, labels in batches:
        value = loss_fn(z, labels)
        want = contrastive_loss(z, labels, positives="labels", negatives="supervised", memory=previous)
        torch.testing.assert_close(value, want, rtol=0, atol=0)
        rows.append(torch.nn.functional.normalize(z.transpose(0, 1).reshape(20, 5), dim=1))
        row_labels.append(labels.repeat(2))
        previous = loss_fn.memory
        torch.testing.assert_close(previous[0], torch.cat(rows)[-25:], rtol=0, atol=1e-15)
        assert torch.equal(previous[1], torch.cat(row_labels)[-25:])


def test_warmup_fills_before_it_uses():
    loss_fn = get_loss("h-scl", beta=1.0, memory_size=100, memory_warmup_steps=2)
    (z0, l0), (z1, l1), (z2, l2) = (_batch(40 + k) for k in range(3))

    def plain(z, y):
        return contrastive_loss(z, y, positives="labels", negatives="supervised", hardening=Exponential(1.0))

    assert loss_fn(z0, l0) == plain(z0, l0)
    assert loss_fn(z1, l1) == plain(z1, l1)
    assert loss_fn.memory[0].shape[0] == 40
    assert loss_fn(z2, l2) != plain(z2, l2)  # the third call uses the 40 rows of the first two


def test_eval_mode_uses_but_does_not_change_the_memory():
    loss_fn = get_loss("ucl", memory_size=30)
    z, _ = _batch(50)
    loss_fn(z)
    held = loss_fn.memory[0].clone()
    loss_fn.eval()
    loss_fn(_batch(51)[0])
    assert torch.equal(loss_fn.memory[0], held)


def test_memory_resumes_exactly_from_a_state_dict():
    a = get_loss("h-scl", beta=1.0, memory_size=30, memory_warmup_steps=1)
    for k in range(3):
        a(*_batch(60 + k))
    b = get_loss("h-scl", beta=1.0, memory_size=30, memory_warmup_steps=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.memory[0], b.memory[0]) and torch.equal(a.memory[1], b.memory[1])
    z, labels = _batch(63)
    assert a(z, labels) == b(z, labels)
    assert torch.equal(a.memory[0], b.memory[0])
    a.reset_memory()
    assert a.memory is None and int(a.memory_steps) == 0


def test_module_memory_errors():
    with pytest.raises(ValueError, match="memory_size must be an integer >= 0"):
        get_loss("scl", memory_size=-1)
    loss_fn = get_loss("ucl", memory_size=10)
    z, labels = _batch(70)
    loss_fn(z, labels)
    with pytest.raises(ValueError, match="labels were given in some calls and not in others"):
        loss_fn(z)


def test_extensions_on_the_device(device):
    # memory, multi-hot labels and auto beta on the device: the same values as on the CPU, the memory kept there
    z, labels = _batch(80, multi=True)
    z_mem, labels_mem = _memory(80, multi=True)
    cpu = contrastive_loss(
        z,
        labels,
        positives="labels",
        negatives="supervised",
        hardening=AutoExponential(0.5),
        memory=(z_mem, labels_mem),
    )
    got = contrastive_loss(
        z.to(device),
        labels.to(device),
        positives="labels",
        negatives="supervised",
        hardening=AutoExponential(0.5),
        memory=(z_mem.to(device), labels_mem.to(device)),
    )
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), cpu, rtol=1e-9, atol=1e-12)
    loss_fn = get_loss("h-scl", beta="auto", memory_size=30).to(device)
    for k in range(3):
        z, labels = _batch(81 + k)
        loss_fn(z.to(device), labels.to(device)).item()
    assert loss_fn.memory[0].device.type == device.type and loss_fn.memory[1].device.type == device.type
