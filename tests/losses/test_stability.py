"""Numerical stability: extreme beta and temperature, bf16 autocast, degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold
from hscl.losses import contrastive_loss, get_loss, supcon_loss


@pytest.mark.parametrize("method", ["h-scl", "h-ucl", "schane"])
def test_beta_10_temperature_005_is_finite_and_accurate(method):
    torch.manual_seed(0)
    z = torch.randn(64, 2, 32)
    labels = torch.randint(0, 5, (64,))
    # the naive form overflows here: exp(beta * g) with g up to 1/0.05 = 20 is exp(200) > float32 max
    assert not math.isfinite(torch.exp(torch.tensor(10.0 * 20.0)).item())
    loss_fn = get_loss(method, beta=10.0, temperature=0.05)
    z32 = z.clone().requires_grad_(True)
    loss32 = loss_fn(z32, labels)
    loss32.backward()
    z64 = z.double().requires_grad_(True)
    loss64 = loss_fn(z64, labels)
    loss64.backward()
    assert torch.isfinite(loss32) and torch.isfinite(z32.grad).all()
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["ucl", "h-ucl", "scl", "h-scl", "supcon", "schane"])
def test_bf16_autocast_is_finite(method):
    torch.manual_seed(1)
    encoder = torch.nn.Linear(16, 32)
    x = torch.randn(48, 2, 16)
    labels = torch.randint(0, 4, (48,))
    loss_fn = get_loss(method) if method in ("ucl", "scl", "supcon") else get_loss(method, beta=5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder(x)
        assert z.dtype == torch.bfloat16
        loss = loss_fn(z, labels)
    assert loss.dtype == torch.float32  # computed in float32 inside autocast
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    # close to the float32 loss on the same (bf16-rounded) embeddings
    torch.testing.assert_close(loss, loss_fn(z.detach().float(), labels), rtol=1e-5, atol=1e-5)


def test_one_class_batch_supervised_negatives_is_exact_zero():
    z = torch.randn(16, 2, 8, requires_grad=True)
    labels = torch.full((16,), 3)
    with pytest.warns(RuntimeWarning, match="no valid"):
        loss = get_loss("h-scl", beta=1.0)(z, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    with pytest.warns(RuntimeWarning):
        per_pair = contrastive_loss(z, labels, positives="labels", negatives="supervised", reduction="none")
    assert per_pair.shape == (0,)


def test_singleton_classes_single_view_has_no_positive():
    z = torch.randn(5, 1, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning):
        loss = contrastive_loss(z, torch.arange(5), positives="labels", negatives="supervised")
    assert loss.item() == 0.0
    with pytest.warns(RuntimeWarning):
        assert supcon_loss(z, torch.arange(5)).item() == 0.0


def test_partially_invalid_anchors_are_skipped_not_nan():
    # class 9 has one sample and one view: no positive; the rest is fine
    z = torch.randn(7, 1, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 9])
    loss, stats = contrastive_loss(
        z, labels, positives="labels", negatives="supervised", hardening=Exponential(1.0), return_stats=True
    )
    assert not stats.valid[6] and stats.valid[:5].all()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_far_negatives_threshold_and_tiny_temperature():
    torch.manual_seed(2)
    z = torch.randn(32, 2, 8, requires_grad=True)
    loss = contrastive_loss(
        z,
        torch.randint(0, 3, (32,)),
        positives="labels",
        negatives="supervised",
        hardening=Threshold(1.0),
        temperature=0.01,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_debiased_estimator_clamp_stays_finite():
    # tau_plus close to 1 drives E - tau_plus e^g negative for many pairs: the clamp M e^{-1/t} applies
    torch.manual_seed(3)
    z = torch.randn(32, 2, 4, requires_grad=True)
    loss = contrastive_loss(z, hardening=Exponential(1.0), tau_plus=0.95, temperature=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("method", ["h-scl", "scl", "supcon", "h-ucl"])
def test_fp16_autocast_non_finite_z_lets_the_gradient_scaler_skip_the_step(method):
    # fp16-mixed training: an overflow in the encoder must reach the GradScaler as a non-finite loss
    # and gradient (the scaler then skips the step), not stop training with an error
    torch.manual_seed(4)
    encoder = torch.nn.Linear(16, 32)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(24, 2, 16)
    x[3, 1, 5] = math.inf
    labels = torch.randint(0, 3, (24,))
    loss_fn = get_loss(method) if method in ("scl", "supcon") else get_loss(method, beta=1.0)
    before = [p.detach().clone() for p in encoder.parameters()]
    with torch.autocast("cpu", dtype=torch.float16):
        z = encoder(x)
        assert z.dtype == torch.float16
        loss = loss_fn(z, labels)
    assert not torch.isfinite(loss)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(encoder.parameters(), before, strict=True))  # step skipped
    assert scaler.get_scale() < 2.0**16  # and the scale backed off


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_z_stays_an_error_outside_fp16(dtype):
    encoder = torch.nn.Linear(16, 32)
    x = torch.randn(8, 2, 16)
    x[0, 0, 0] = math.nan
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        z = encoder(x)
        assert z.dtype == dtype
        with pytest.raises(ValueError, match="non-finite"):
            get_loss("h-scl", beta=1.0)(z, torch.randint(0, 2, (8,)))
        with pytest.raises(ValueError, match="non-finite"):
            supcon_loss(z)


def test_the_non_finite_decision():
    from hscl.losses._checks import _nonfinite_allowed

    z = torch.zeros(2, 2, 3)
    assert not _nonfinite_allowed(z) and not _nonfinite_allowed(z.double()) and not _nonfinite_allowed(z.bfloat16())
    assert _nonfinite_allowed(z.half())
    with torch.autocast("cpu", dtype=torch.float16):
        assert _nonfinite_allowed(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _nonfinite_allowed(z)
