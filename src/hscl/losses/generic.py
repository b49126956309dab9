"""The autograd path of :func:`~hscl.losses.contrastive_loss` for user hardening callables.

A callable ``eta(g) -> weights`` has no known log-linear form, so ``E(r)`` is computed in a
max-shifted ratio form from explicit ``(chunk, rows)`` masks and autograd differentiates it; each
block of anchors is checkpointed when ``chunk_size`` is set, so the backward recomputes it instead
of keeping its matrices alive.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hscl.losses._checks import _callable_weights
from hscl.losses.buffers import _Outputs
from hscl.losses.pairs import _pair_loss
from hscl.losses.sets import _other_views, _positive_mask, _Spec


def _positive_index(spec: _Spec, start: int, stop: int) -> Tensor:
    """Columns of the other views of each anchor ``start:stop`` (``positives="views"``).

    Shape: ``(stop - start, V - 1)`` long, ascending along dim 1.
    """
    return _other_views(torch.arange(start, stop, device=spec.relation.instance.device), spec.batch, spec.views)


def _block_similarity(Z: Tensor, columns: Tensor, start: int, stop: int, inv_t: float) -> Tensor:
    """``g`` of the anchors ``start:stop`` (rows of ``Z``) and every column. Shape: ``(c, cols)``."""
    return (Z[start:stop] * inv_t) @ columns.T


# --------------------------------------------------------------------------------------------
# generic path (callable hardening): autograd, each block checkpointed when chunked


def _generic_block(
    Z: Tensor,
    memory: Tensor | None,
    start: int,
    stop: int,
    spec: _Spec,
    eta: Callable,
    row_weight: Tensor,
    out: _Outputs,
    *,
    detach: bool,
    per_pair: bool,
) -> Tensor:
    """One block of anchors for a user callable ``eta``: ``E(r)`` in max-shifted ratio form."""
    columns = Z if memory is None else torch.cat([Z, memory])  # the memory rows carry no gradient
    S = _block_similarity(Z, columns, start, stop, spec.inv_t)  # (c, cols)
    neg = spec.negatives.mask(spec.relation, start, stop)
    w = _callable_weights(eta, S, neg)  # (c, N) weights on N(r), checked
    if detach:
        w = w.detach()
    support = w > 0
    fallback = ~support.any(1) & neg.any(1)  # every weight 0: fall back to w = 1
    if bool(fallback.any()):
        w = torch.where(fallback[:, None] & neg, 1.0, w)
        support = torch.where(fallback[:, None], neg, support)
    t = S.masked_fill(~support, -math.inf)
    m = t.amax(1).detach()  # max of g over the support: the largest term of num is w(argmax) * 1
    m = torch.where(torch.isfinite(m), m, 0.0)
    e = torch.exp(t - m[:, None])  # (c, N), 0 off the support
    row_ok = spec.valid[start:stop]
    num = torch.where(row_ok, (w * e).sum(1), 1.0)
    den = torch.where(row_ok, w.sum(1), 1.0)
    log_e = torch.where(row_ok, torch.log(num) - torch.log(den) + m, 0.0)  # log E(r)
    log_c, log_M = log_e[:, None], spec.log_M[start:stop, None]
    if spec.positives == "views":
        index = _positive_index(spec, start, stop)
        loss = _pair_loss(S.gather(1, index), log_c, log_M, spec.tau_plus, spec.inv_t)
        loss = torch.where(row_ok[:, None], loss, 0.0)  # (c, V-1)
        flat = loss[row_ok].reshape(-1)
    else:
        pos = _positive_mask(spec, start, stop)
        loss = torch.where(pos, _pair_loss(S, log_c, log_M, spec.tau_plus, spec.inv_t), 0.0)  # (c, N)
        flat = loss[pos]
    row_sum = loss.sum(1)
    out.log_tilted_mean[start:stop] = log_e.detach()
    out.anchor_sum[start:stop] = row_sum.detach()
    out.fallback[start:stop] = fallback
    out.num_kept[start:stop] = support.sum(1)
    return flat if per_pair else (row_sum * row_weight[start:stop]).sum()


def generic_loss(
    Z: Tensor,
    memory: Tensor | None,
    row_weight: Tensor,
    spec: _Spec,
    eta: Callable,
    *,
    detach: bool = False,
    per_pair: bool = False,
    chunked: bool = False,
) -> tuple[Tensor, _Outputs]:
    """The loss of a hardening callable ``eta`` over the rows ``Z`` (N, d) and the ``memory`` rows (K, d) or None
    (both normalised already), with its statistics; autograd differentiates it. ``chunked``: checkpoint each
    block of :attr:`_Spec.chunk` anchors (the backward recomputes it)."""
    N = spec.rows
    out = _Outputs.empty(spec.num_neg, Z, per_pair=False, grad=False)  # every entry is set below
    parts = []
    for start in range(0, N, spec.chunk):
        stop = min(N, start + spec.chunk)
        args, flags = (Z, memory, start, stop, spec, eta, row_weight, out), dict(detach=detach, per_pair=per_pair)
        if chunked and torch.is_grad_enabled() and Z.requires_grad:
            # the backward recomputes this block instead of keeping its (c, N) matrices alive
            parts.append(torch.utils.checkpoint.checkpoint(_generic_block, *args, use_reentrant=False, **flags))
        else:
            parts.append(_generic_block(*args, **flags))
    return (torch.cat(parts) if per_pair else torch.stack(parts).sum()), out


def pair_index(spec: _Spec) -> Tensor:
    """``(num_pairs, 2)`` rows ``(r, p)`` of the valid pairs, row-major (the order of ``"none"``)."""
    pieces = []
    for start in range(0, spec.rows, spec.chunk):
        stop = min(spec.rows, start + spec.chunk)
        if spec.positives == "views":
            index = _positive_index(spec, start, stop)
            rows = torch.arange(start, stop, device=index.device)[:, None].expand_as(index)
            ok = spec.valid[start:stop]
            pieces.append(torch.stack([rows[ok].reshape(-1), index[ok].reshape(-1)], 1))
        else:
            r, p = _positive_mask(spec, start, stop).nonzero(as_tuple=True)
            pieces.append(torch.stack([r + start, p], 1))
    return torch.cat(pieces)
