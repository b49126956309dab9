"""The fused loss at training sizes (thousands of rows) against a dense float64 reference.

Marked slow (``make test-slow``): each case builds (rows x rows) float64 matrices. The reference is the
contract written with dense masks and plain autograd (``log E(r)`` as a difference of two masked
logsumexps, ``softplus(log M - g + log E)`` per pair), sharing no code with ``hscl.losses``.
"""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold
from hscl.losses import contrastive_loss

pytestmark = pytest.mark.slow


def dense_reference(z: torch.Tensor, labels: torch.Tensor, *, positives, negatives, hardening, temperature):
    """Mean over valid (r, p) pairs of eq. (3) with M = rows - 2, in float64, from dense masks."""
    B, V, _ = z.shape
    Z = torch.nn.functional.normalize(torch.cat(z.double().unbind(1)), dim=1)  # (N, d), row v * B + i
    N = V * B
    instance = torch.arange(B).repeat(V)
    label = labels.repeat(V)
    g = Z @ Z.T / temperature  # (N, N)
    eye = torch.eye(N, dtype=torch.bool)
    same = (instance[:, None] == instance[None, :]) if positives == "views" else (label[:, None] == label[None, :])
    positive = same & ~eye
    negative = (
        instance[:, None] != instance[None, :] if negatives == "unsupervised" else label[:, None] != label[None, :]
    )
    if isinstance(hardening, Exponential):
        log_w = hardening.beta * g
    elif isinstance(hardening, Threshold):
        keep = g >= math.log(hardening.tau)
        fallback = ~(keep & negative).any(1, keepdim=True)  # no negative passes: w = 1 for that anchor
        log_w = torch.where(keep | fallback, 0.0, -math.inf).double()
    else:
        log_w = torch.zeros_like(g)
    log_w = log_w.masked_fill(~negative, -math.inf)
    log_E = torch.logsumexp(g + log_w, 1) - torch.logsumexp(log_w, 1)  # (N,)
    pair = torch.nn.functional.softplus(math.log(N - 2) - g + log_E[:, None])  # (N, N)
    valid = positive & negative.any(1, keepdim=True)
    return pair[valid].mean()


CASES = [
    ("h-scl beta", "labels", "supervised", Exponential(1.0), 10),
    ("h-scl tau", "labels", "supervised", Threshold(math.exp(0.2 / 0.5)), 100),
    ("h-ucl beta", "views", "unsupervised", Exponential(2.0), 10),
    ("scl", "labels", "supervised", None, 3),
]


@pytest.mark.parametrize(("name", "positives", "negatives", "hardening", "classes"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rows", [4096, 8192])
@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_fused_loss_matches_dense_float64_at_scale(name, positives, negatives, hardening, classes, rows, chunk_size):
    generator = torch.Generator().manual_seed(rows + classes)
    B = rows // 2
    z = torch.randn(B, 2, 128, generator=generator)
    labels = torch.randint(0, classes, (B,), generator=generator)
    z32 = z.clone().requires_grad_(True)
    loss = contrastive_loss(
        z32,
        labels,
        positives=positives,
        negatives=negatives,
        hardening=hardening,
        temperature=0.5,
        chunk_size=chunk_size,
    )
    loss.backward()
    z64 = z.double().requires_grad_(True)
    reference = dense_reference(
        z64, labels, positives=positives, negatives=negatives, hardening=hardening, temperature=0.5
    )
    reference.backward()
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item())
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-3, atol=1e-9)


def test_bf16_autocast_stays_close_at_scale():
    """bf16 autocast at 8192 rows, beta = 10, temperature 0.05: finite and within bf16 accuracy of float64."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4096, 2, 128, generator=generator)
    labels = torch.randint(0, 10, (4096,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contrastive_loss(
            z, labels, positives="labels", negatives="supervised", hardening=Exponential(10.0), temperature=0.05
        )
    reference = dense_reference(
        z, labels, positives="labels", negatives="supervised", hardening=Exponential(10.0), temperature=0.05
    )
    assert math.isfinite(float(loss))
    assert abs(float(loss) - float(reference)) <= 2e-2 * abs(float(reference))
