"""The float64 reference of the loss rows of ``benchmarks/gpu_check.py``, written from the loss page
(``docs/losses.md``), not from hscl's kernel: the value and the gradient of H-SCL, SCL and SupCon, computed
in blocks of anchors on the device of the input (autograd per block, the gradients summed), so that it runs
at 65536 rows in a few GB.

With rows ``Z`` (view-major, ``r = v * B + i``) normalised, ``g = Z Z^T / temperature``, ``P(r)`` the other
rows of ``r``'s label and ``N(r)`` the rows of other labels:

* H-SCL (beta) / SCL (beta = 0): ``log E(r) = logsumexp_{N(r)} (1 + beta) g - logsumexp_{N(r)} beta g``,
  ``loss(r, p) = softplus(log M - g(r, p) + log E(r))`` with ``M = rows - 2``, the mean over all pairs
  ``(r, p in P(r))``; the gradient flows through the weights.
* SupCon (L_out): ``loss(r) = -(temperature / base_temperature) mean_{p in P(r)} (g(r, p) - logsumexp_{s != r}
  g(r, s))``, the mean over the anchors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: the settings of each hscl loss of the check (the library's defaults, written out: the reference takes them)
LOSS_PARAMS = {
    "h-scl": {"beta": 1.0, "temperature": 0.5},
    "scl": {"temperature": 0.5},
    "supcon": {"temperature": 0.1, "base_temperature": 0.07},
}
#: memory of one (anchor x row) entry of a reference block: ~8 float64 (c, N) tensors kept for autograd
REFERENCE_BYTES_PER_PAIR = 96


def rows_of(z: Tensor) -> Tensor:
    """``(B, V, d)`` -> ``(V * B, d)``, row ``v * B + i`` is view ``v`` of sample ``i``."""
    return torch.cat(z.unbind(1))


def reference_chunk(rows: int, memory: float) -> int:
    """Anchors per block of the reference: the largest power of two whose block fits in ``memory`` bytes
    (at least 1, at most ``rows``)."""
    fit = max(1, int(memory // (REFERENCE_BYTES_PER_PAIR * rows)))
    return min(rows, 2 ** int(math.log2(fit)))


def _pair_sum(method: str, g: Tensor, same: Tensor, own: Tensor, log_M: float) -> Tensor:
    """Per anchor of the block: the sum of its pair losses over ``P(r)``. ``g``, ``same``, ``own`` ``(c, N)``."""
    positives = same & ~own
    if method == "supcon":
        pair = torch.logsumexp(g.masked_fill(own, -math.inf), 1, keepdim=True) - g  # -log softmax over s != r
    else:
        beta = LOSS_PARAMS[method].get("beta", 0.0)
        negatives = ~same
        log_E = torch.logsumexp(torch.where(negatives, (1.0 + beta) * g, -math.inf), 1) - torch.logsumexp(
            torch.where(negatives, beta * g, -math.inf), 1
        )
        pair = F.softplus(log_M - g + log_E[:, None])
    return torch.where(positives, pair, 0.0).sum(1)


def reference_loss(method: str, z: Tensor, labels: Tensor, chunk: int) -> tuple[float, Tensor]:
    """The float64 value and gradient (shape of ``z``) of ``method`` on ``z`` ``(B, 2, d)``, labels ``(B,)``,
    computed in blocks of ``chunk`` anchors on ``z``'s device."""
    if method not in LOSS_PARAMS:
        raise ValueError(f"method must be one of {', '.join(LOSS_PARAMS)}, got {method!r}")
    B, V, d = z.shape
    Z = rows_of(z.detach()).double().requires_grad_(True)  # (N, d)
    Zn = F.normalize(Z, dim=1)
    leaf = Zn.detach().requires_grad_(True)
    L = labels.repeat(V)
    N = L.numel()
    share = torch.bincount(L)[L]  # rows of each row's label, itself included
    num_pos = share - 1
    num_neg = torch.full_like(share, N - 1) if method == "supcon" else N - share
    if not bool(((num_pos > 0) & (num_neg > 0)).all()):
        raise ValueError("the reference needs every row to have a positive and a negative (two labels at least)")
    params = LOSS_PARAMS[method]
    inv_t = 1.0 / params["temperature"]
    if method == "supcon":  # the mean over anchors of the mean over their positives, times T / T_base
        weight = (params["temperature"] / params["base_temperature"]) / (num_pos.double() * N)
    else:  # the mean over all (anchor, positive) pairs
        weight = torch.full((N,), 1.0 / float(num_pos.sum()), dtype=torch.float64, device=z.device)
    log_M = math.log(N - 2)
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    grad = torch.zeros_like(leaf)
    columns = torch.arange(N, device=z.device)
    for a in range(0, N, chunk):
        b = min(N, a + chunk)
        g = (leaf[a:b] @ leaf.T) * inv_t
        same = L[a:b, None] == L[None, :]
        own = columns[a:b, None] == columns[None, :]
        part = (_pair_sum(method, g, same, own, log_M) * weight[a:b]).sum()
        (block_grad,) = torch.autograd.grad(part, leaf)
        grad += block_grad
        total += part.detach()
    Zn.backward(grad)
    return float(total), Z.grad.view(V, B, d).transpose(0, 1)
