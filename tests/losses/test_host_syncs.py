"""Host synchronisations of one loss call: at most one (the table shapes, read with the value checks and an
automatic hardening's solution), none in its backward; counted on the CPU by :class:`sync_counter.SyncCounter`,
on a GPU (the ``gpu`` test at the end) by CUDA's own sync debug mode."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from hscl.losses import METHODS, contrastive_loss, get_loss, supcon_loss
from sync_counter import SyncCounter


def _batch(B: int = 16, V: int = 2, d: int = 8, classes: int = 4):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(B, V, d, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (B,), generator=generator)
    return z, labels


#: (method, loss kwargs): every registered method, its hardenings, chunked
CASES = [(name, {}) for name in METHODS]
CASES += [(name, {"beta": 1.0}) for name, m in METHODS.items() if m.hardened]
CASES += [("h-scl", {"tau": math.exp(0.1)}), ("h-scl", {"beta": 1.0, "chunk_size": 5}), ("supcon", {"chunk_size": 5})]
CASES += [("ucl", {"chunk_size": 3}), ("h-ucl", {"beta": 0.5, "tau_plus": 0.1})]
CASES += [("h-scl", {"beta": "auto"}), ("h-ucl", {"beta": "auto", "chunk_size": 5})]  # the solve reads nothing


@pytest.mark.parametrize(("method", "kwargs"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_one_host_sync_per_loss_call(method, kwargs, monkeypatch):
    z, labels = _batch()
    loss_fn = get_loss(method, **kwargs)
    counter = SyncCounter(monkeypatch).install()
    with counter.counting():
        loss = loss_fn(z, labels)
    assert counter.count <= 1, counter.where
    with counter.counting():
        loss.backward()
    assert counter.count == 0, counter.where
    assert torch.isfinite(loss) and z.grad is not None


def test_one_host_sync_with_a_memory_and_multi_hot_labels(monkeypatch):
    z, labels = _batch()
    loss_fn = get_loss("h-scl", beta=1.0, memory_size=24)
    loss_fn(z.detach(), labels)  # fills the memory
    multi = torch.nn.functional.one_hot(labels, 4).long()  # 0/1 numbers: checked in the same read
    counter = SyncCounter(monkeypatch).install()
    with counter.counting():
        loss = loss_fn(z, labels)
        contrastive_loss(z, multi, positives="labels", negatives="supervised", memory=(z.detach()[:, 0], multi))
        supcon_loss(z, labels)
    assert counter.count <= 3, counter.where  # three calls, one read each
    assert torch.isfinite(loss)


def test_the_counter_sees_host_reads(monkeypatch):
    """The check above can fail: each way of reading a value on the host is counted."""
    x = torch.arange(6.0)
    counter = SyncCounter(monkeypatch).install()
    with counter.counting():
        float(x.sum()), x.tolist(), bool(x.any()), x[x > 2], x.nonzero(), torch.where(x > 1), x.unique()
    assert counter.count == 7, counter.where


def test_non_finite_input_is_a_clear_error_on_the_cpu():
    z, labels = _batch()
    broken = z.detach().clone()
    broken[3, 1, 2] = math.nan
    for method in METHODS:
        with pytest.raises(ValueError, match=r"z contains 1 non-finite value\(s\)"):
            get_loss(method)(broken, labels)
    huge = torch.full((4, 2, 3), 3e38)  # the sum overflows, every value is finite: no error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_loss("ucl")(huge, None)
    bad_memory = (torch.full((5, 8), math.inf), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"memory\[0\] \(z_mem\) has non-finite values"):
        contrastive_loss(z, labels, positives="labels", negatives="supervised", memory=bad_memory)


@pytest.mark.gpu
@pytest.mark.parametrize(("method", "kwargs"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_one_host_sync_per_loss_call_on_cuda(method, kwargs):
    """CUDA's own count: every synchronising call warns under ``set_sync_debug_mode("warn")``."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    z, labels = _batch()
    z, labels = z.detach().cuda().requires_grad_(True), labels.cuda()
    loss_fn = get_loss(method, **kwargs)
    loss_fn(z, labels).backward()  # warm-up: lazy initialisations
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss = loss_fn(z, labels)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, syncs
