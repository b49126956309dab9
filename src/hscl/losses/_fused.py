"""The fused log-space path of :func:`~hscl.losses.contrastive_loss` for the built-in hardenings.

None, :class:`~hscl.hardening.Exponential` and :class:`~hscl.hardening.Threshold` all have the
log-linear form ``log w = beta * g`` on a kept set ``{g >= log_threshold}``, so eq. (3) of
arXiv 2209.00078 has a closed-form gradient. :class:`_FusedContrastive` computes it block by block
of anchors, in the forward and again in the backward, so memory is ``O(chunk x rows)`` both ways:

    log E(r)  = logsumexp_{s in N(r)}((1 + beta) g) - logsumexp_{s in N(r)}(beta g)
    loss(r,p) = softplus(log M(r) - g(r,p) + log E(r))
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from hscl.losses.core import _Spec

# softplus(x) is computed exactly as log1p(exp(x)) below this and as x above it; at 40 the
# difference is below 5e-18, i.e. exact in float64 and exp(40) does not overflow float32.
_SOFTPLUS_LINEAR_FROM = 40.0


# --------------------------------------------------------------------------------------------
# the per-pair term


def _debias(s: Tensor, log_c: Tensor, tau_plus: float, inv_t: float):
    """H-UCL's debiased ``log(Ng / M)`` in log space, and the pieces its derivative needs.

    ``log(Ng / M) = max(log(E - tau_plus * e^s) - log(1 - tau_plus), -1/temperature)``.
    """
    a = tau_plus * torch.exp(s - log_c)  # tau_plus e^s / E
    ok = a < 1
    a_safe = torch.where(ok, a, torch.zeros_like(a))
    branch = log_c + torch.log1p(-a_safe) - math.log1p(-tau_plus)
    active = ok & (branch > -inv_t)
    return torch.where(active, branch, torch.full_like(branch, -inv_t)), a_safe, active


def _pair_loss(s: Tensor, log_c: Tensor, log_M: Tensor, tau_plus: float, inv_t: float) -> Tensor:
    """``loss(r, p) = softplus(log M - g(r,p) + log E(r))`` (eq. (3)); debiased if ``tau_plus > 0``.

    ``s = g(r, p)``; ``log_c = log E(r)`` and ``log_M`` broadcast against it. Built from
    differentiable torch ops (the generic path differentiates it with autograd).
    """
    if tau_plus == 0.0:
        x = log_M + log_c - s
    else:
        x = log_M + _debias(s, log_c, tau_plus, inv_t)[0] - s
    return F.softplus(x, threshold=_SOFTPLUS_LINEAR_FROM)


def _pair_grads(s: Tensor, log_c: Tensor, log_M: Tensor, tau_plus: float, inv_t: float) -> tuple[Tensor, Tensor]:
    """Analytic ``(d loss / d s, d loss / d log_c)`` of :func:`_pair_loss`."""
    if tau_plus == 0.0:
        sig = torch.sigmoid(log_M + log_c - s)
        return -sig, sig
    log_ng, a_safe, active = _debias(s, log_c, tau_plus, inv_t)
    sig = torch.sigmoid(log_M + log_ng - s)
    inv = torch.where(active, 1.0 / (1.0 - a_safe), torch.zeros_like(a_safe))  # d log Ng / d log E
    return sig * (-a_safe * inv - 1.0), sig * inv


# --------------------------------------------------------------------------------------------
# fused path (built-in hardenings)
#
# Rows are first reordered by label (stable), so that "same label" is a contiguous block of
# columns for every anchor: masking supervised negatives is a slice fill, label positives are
# computed only inside class blocks (N^2 / C entries, not N^2), and instance masks are (c, V)
# scatters. No (c, N) boolean mask is built for the common cases. The (c, N) matrices live in
# three reused buffers and are updated in place: on CPU, allocating a fresh 64 MB tensor costs as
# much as several elementwise passes over it.


class _Workspace(threading.local):
    """Per-thread reusable (c, N) buffers for the fused path (CPU only; other devices allocate)."""

    def __init__(self) -> None:
        self.buffers: dict = {}

    def get(self, slot: int, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        if device.type != "cpu":
            return torch.empty(rows, cols, dtype=dtype, device=device)
        key = (slot, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            self.buffers.pop(key, None)
            del buf
            buf = torch.empty(rows * cols, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[: rows * cols].view(rows, cols)


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free the reusable (chunk x rows) buffers the loss keeps between calls on CPU."""
    _WORKSPACE.buffers.clear()


#: classes of at most this many rows use gathered (rows x K) column tables; larger classes use
#: contiguous blocks (a Python loop over classes, cheap only when there are few of them)
_GATHER_MAX_CLASS_ROWS = 256


@dataclass
class _Layout:
    """The batch in label-sorted row order (identity order when no labels are used).

    Positives and non-negatives of each sorted row are either column tables (for scatters and
    gathers) or, for large classes, contiguous label blocks ``bounds``.
    """

    perm: Tensor  # (N,) original row of each sorted row
    nonneg_columns: Tensor | None  # (N, K) sorted columns that are not negatives (self included)
    pos_columns: Tensor | None  # (N, K) sorted columns of the positives, padded
    pos_valid: Tensor | None  # (N, K) which entries of pos_columns are real positives
    bounds: list[int] | None  # class blocks [bounds[k], bounds[k+1]) in sorted order


def _make_layout(spec: _Spec) -> _Layout:
    N, B, V = spec.rows, spec.batch, spec.views
    device = spec.instance.device
    rows = torch.arange(N, device=device)
    bounds = label_columns = label_valid = None
    if spec.labels is not None:
        perm = torch.sort(spec.labels, stable=True).indices
        counts = torch.unique_consecutive(spec.labels[perm], return_counts=True)[1]
        ends = torch.cumsum(counts, 0)
        bounds = [0, *ends.tolist()]
        kmax = int(counts.max())
        if kmax <= _GATHER_MAX_CLASS_ROWS:
            size = torch.repeat_interleave(counts, counts)  # (N,) rows in the class of each sorted row
            lo = torch.repeat_interleave(ends - counts, counts)
            offsets = torch.arange(kmax, device=device)
            label_columns = torch.minimum(lo[:, None] + offsets, (lo + size - 1)[:, None])  # (N, kmax), padded
            label_valid = (offsets[None, :] < size[:, None]) & (label_columns != rows[:, None])
    else:
        perm = rows
    inverse = torch.empty_like(perm)
    inverse[perm] = rows
    view_ids = torch.arange(V, device=device)
    original = view_ids[None, :] * B + (perm % B)[:, None]  # (N, V) original rows of the sample
    same_instance = inverse[original]
    if spec.positives == "views":
        others = view_ids[None, :] != (perm // B)[:, None]
        pos_columns = same_instance[others].view(N, V - 1)
        pos_valid = torch.ones_like(pos_columns, dtype=torch.bool)
    else:
        pos_columns, pos_valid = label_columns, label_valid
    nonneg_columns = same_instance if spec.negatives == "unsupervised" else label_columns
    return _Layout(
        perm=perm, nonneg_columns=nonneg_columns, pos_columns=pos_columns, pos_valid=pos_valid, bounds=bounds
    )


def _needs_runs(layout: _Layout) -> bool:
    return layout.bounds is not None and (layout.pos_columns is None or layout.nonneg_columns is None)


def _runs(layout: _Layout, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """Class runs in the anchor block: ``(a, b, lo, hi)`` = anchors ``a:b`` (block-relative) whose
    same-label columns are ``lo:hi``."""
    bounds = layout.bounds
    k = bisect.bisect_right(bounds, start) - 1
    out = []
    while k + 1 < len(bounds) and bounds[k] < stop:
        lo, hi = bounds[k], bounds[k + 1]
        out.append((max(lo, start) - start, min(hi, stop) - start, lo, hi))
        k += 1
    return out


def _negative_logits(spec, layout, S, t, start, stop, runs, fallback):
    """Fill ``t`` with ``g`` on the kept negatives of anchors ``start:stop`` and ``-inf`` elsewhere.

    Returns the per-anchor fallback flags (threshold passed by no negative).
    """
    t.copy_(S)
    if layout.nonneg_columns is not None:
        t.scatter_(1, layout.nonneg_columns[start:stop], -math.inf)
    else:
        for a, b, lo, hi in runs:
            t[a:b, lo:hi] = -math.inf
    if spec.log_threshold == -math.inf:
        return fallback
    t.masked_fill_(S < spec.log_threshold, -math.inf)
    if fallback is None:
        has_neg = spec.num_neg[start:stop] > 0
        fallback = has_neg & ~torch.isfinite(t.amax(1))
    rows = fallback.nonzero().flatten()
    if rows.numel():
        t[rows] = S[rows]
        if layout.nonneg_columns is not None:
            t[rows] = t[rows].scatter_(1, layout.nonneg_columns[start:stop][rows], -math.inf)
        else:
            for a, b, lo, hi in runs:
                inside = rows[(rows >= a) & (rows < b)]
                if inside.numel():
                    t[inside, lo:hi] = -math.inf
    return fallback


def _shift(t: Tensor) -> Tensor:
    """Subtract the row max over the kept negatives in place; returns it (0 for empty rows)."""
    m = t.amax(1)
    m = torch.where(torch.isfinite(m), m, 0.0)
    t.sub_(m[:, None])
    return m


def _block_pairs(runs, start, device):
    """Label-positive blocks of an anchor block: ``(a, b, lo, hi, diag_rows, diag_cols)``; the
    diagonal entries (an anchor with itself) are indexed block-relative."""
    for a, b, lo, hi in runs:
        rows = torch.arange(a, b, device=device)
        yield a, b, lo, hi, rows - a, rows + start - lo


class _FusedContrastive(torch.autograd.Function):
    """Eq. (3) for built-in hardenings, in label-sorted row order, with an analytic backward that
    recomputes each anchor block.

    Inputs: ``Z`` (N, d) normalised rows in sorted order; ``row_weight`` (N,) weight of each pair
    of an anchor in the scalar output. Output: the weighted sum of the pair losses or, with
    ``per_pair``, the valid pair losses ordered by original ``(r, p)``.

    Backward, with ``Sigma(r) = sum_p d loss(r,p) / d log E(r)``:
    ``d log E(r) / d g(r,s) = (1 + beta') pA(r,s) - beta' pB(r,s)`` on kept negatives, where
    ``pA = softmax((1 + beta) g)``, ``pB = softmax(beta g)`` over them and ``beta' = beta`` unless
    the weights are detached (then 0); plus ``d loss(r,p) / d g(r,p)`` on the positives.
    """

    @staticmethod
    def forward(ctx, Z: Tensor, row_weight: Tensor, spec: _Spec, layout: _Layout, per_pair: bool, stats: dict):
        N = spec.rows
        dtype, device = Z.dtype, Z.device
        m_all = torch.zeros(N, dtype=dtype, device=device)
        log_num_all = torch.zeros(N, dtype=dtype, device=device)
        log_den_all = torch.zeros(N, dtype=dtype, device=device)
        fallback_all = torch.zeros(N, dtype=torch.bool, device=device)
        kept_all = spec.num_neg.clone()
        anchor_sum = torch.zeros(N, dtype=dtype, device=device)
        total = torch.zeros((), dtype=dtype, device=device)
        values, keys = [], []
        perm = layout.perm
        for start in range(0, N, spec.chunk):
            stop = min(N, start + spec.chunk)
            c = stop - start
            runs = _runs(layout, start, stop) if _needs_runs(layout) else []
            S = torch.mm(Z[start:stop] * spec.inv_t, Z.T, out=_WORKSPACE.get(0, c, N, dtype, device))  # g
            t = _WORKSPACE.get(1, c, N, dtype, device)
            work = _WORKSPACE.get(2, c, N, dtype, device)
            fallback = _negative_logits(spec, layout, S, t, start, stop, runs, None)
            if fallback is not None:
                fallback_all[start:stop] = fallback
                kept_all[start:stop] = torch.isfinite(t).sum(1)
            m = _shift(t)  # t = g - m on kept negatives, -inf elsewhere
            if spec.beta == 0.0:
                log_den = torch.log(kept_all[start:stop].to(dtype))
                log_num = torch.log(torch.exp(t, out=work).sum(1))
            else:
                log_den = torch.log(torch.mul(t, spec.beta, out=work).exp_().sum(1))
                log_num = torch.log(torch.mul(t, 1.0 + spec.beta, out=work).exp_().sum(1))
            row_ok = spec.valid[start:stop]
            log_num = torch.where(row_ok, log_num, 0.0)
            log_den = torch.where(row_ok, log_den, 0.0)
            m = torch.where(row_ok, m, 0.0)
            m_all[start:stop], log_num_all[start:stop], log_den_all[start:stop] = m, log_num, log_den
            log_c = (log_num - log_den + m)[:, None]  # log E(r)
            log_M = spec.log_M[start:stop, None]
            if layout.pos_columns is not None:
                columns = layout.pos_columns[start:stop]  # (c, K)
                mask = layout.pos_valid[start:stop] & row_ok[:, None]
                loss = _pair_loss(S.gather(1, columns), log_c, log_M, spec.tau_plus, spec.inv_t)
                loss = loss * mask  # (c, K)
                row_sum = loss.sum(1)
                if per_pair:
                    values.append(loss[mask])
                    keys.append((perm[start:stop, None] * N + perm[columns])[mask])
            else:
                row_sum = torch.zeros(c, dtype=dtype, device=device)
                for a, b, lo, hi, di, dj in _block_pairs(runs, start, device):
                    x = _pair_loss(S[a:b, lo:hi], log_c[a:b], log_M[a:b], spec.tau_plus, spec.inv_t)  # (b-a, hi-lo)
                    x[di, dj] = 0.0  # an anchor is not its own positive
                    x.mul_(row_ok[a:b, None])
                    row_sum[a:b] = x.sum(1)
                    if per_pair:
                        off = torch.ones_like(x, dtype=torch.bool)
                        off[di, dj] = False
                        off &= row_ok[a:b, None]
                        values.append(x[off])
                        keys.append((perm[start + a : start + b, None] * N + perm[lo:hi][None, :])[off])
            anchor_sum[start:stop] = row_sum
            total = total + (row_sum * row_weight[start:stop]).sum()
        stats.update(
            log_tilted_mean=log_num_all - log_den_all + m_all,
            anchor_sum=anchor_sum,
            fallback=fallback_all,
            num_kept=kept_all,
        )
        ctx.spec, ctx.layout, ctx.per_pair = spec, layout, per_pair
        if per_pair:
            keys = torch.cat(keys)
            order = torch.argsort(keys)
            stats["pair_keys"] = keys[order]
            ctx.pair_counts = [v.numel() for v in values]
            ctx.save_for_backward(Z, row_weight, log_num_all, log_den_all, m_all, fallback_all, order)
            return torch.cat(values)[order]
        ctx.save_for_backward(Z, row_weight, log_num_all, log_den_all, m_all, fallback_all)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        spec: _Spec = ctx.spec
        layout: _Layout = ctx.layout
        Z, row_weight, log_num_all, log_den_all, m_all, fallback_all = ctx.saved_tensors[:6]
        N = spec.rows
        dtype, device = Z.dtype, Z.device
        if ctx.per_pair:  # back to the enumeration order of the forward
            order = ctx.saved_tensors[6]
            pair_grad = torch.empty_like(grad_out)
            pair_grad[order] = grad_out
            pieces = iter(pair_grad.split(ctx.pair_counts))
        dZ = torch.zeros_like(Z)
        has_threshold = spec.log_threshold != -math.inf
        for start in range(0, N, spec.chunk):
            stop = min(N, start + spec.chunk)
            c = stop - start
            runs = _runs(layout, start, stop) if _needs_runs(layout) else []
            Zc = Z[start:stop]
            S = torch.mm(Zc * spec.inv_t, Z.T, out=_WORKSPACE.get(0, c, N, dtype, device))  # as in the forward
            t = _WORKSPACE.get(1, c, N, dtype, device)
            work = _WORKSPACE.get(2, c, N, dtype, device)
            _negative_logits(spec, layout, S, t, start, stop, runs, fallback_all[start:stop] if has_threshold else None)
            _shift(t)  # same shift as the forward for valid anchors, <= 0 everywhere
            row_ok = spec.valid[start:stop]
            log_c = (log_num_all[start:stop] - log_den_all[start:stop] + m_all[start:stop])[:, None]
            log_M = spec.log_M[start:stop, None]
            if ctx.per_pair:
                row_grad = None
            else:
                row_grad = (grad_out * row_weight[start:stop] * row_ok)[:, None]  # (c, 1)
            # --- positives: d loss / d g(r,p) and Sigma(r) = sum_p d loss(r,p) / d log E(r)
            if layout.pos_columns is not None:
                columns = layout.pos_columns[start:stop]  # (c, K)
                mask = layout.pos_valid[start:stop] & row_ok[:, None]
                d_s, d_c = _pair_grads(S.gather(1, columns), log_c, log_M, spec.tau_plus, spec.inv_t)
                if row_grad is None:
                    g = torch.zeros_like(d_c)
                    g[mask] = next(pieces)
                else:
                    g = row_grad * mask
                sigma = (d_c * g).sum(1)  # (c,)
                pos_grad = d_s * g  # (c, K)
            else:
                sigma = torch.zeros(c, dtype=dtype, device=device)
                blocks = []
                for a, b, lo, hi, di, dj in _block_pairs(runs, start, device):
                    if row_grad is None:
                        g = torch.zeros(b - a, hi - lo, dtype=dtype, device=device)
                        off = torch.ones_like(g, dtype=torch.bool)
                        off[di, dj] = False
                        off &= row_ok[a:b, None]
                        g[off] = next(pieces)
                    else:
                        g = row_grad[a:b]
                    d_s, d_c = _pair_grads(S[a:b, lo:hi], log_c[a:b], log_M[a:b], spec.tau_plus, spec.inv_t)
                    d_c.mul_(g)
                    d_c[di, dj] = 0.0
                    sigma[a:b] = d_c.sum(1)
                    d_s.mul_(g)
                    d_s[di, dj] = 0.0
                    blocks.append((a, b, lo, hi, d_s))
            # --- negatives: Sigma(r) * d log E(r) / d g(r,s), in the buffer of t
            log_num = log_num_all[start:stop, None]
            if spec.beta_grad == 0.0:
                grad = t.mul_(1.0 + spec.beta).sub_(log_num).exp_().mul_(sigma[:, None])  # Sigma * pA
            else:
                p_b = torch.mul(t, spec.beta, out=work).sub_(log_den_all[start:stop, None]).exp_()  # pB
                grad = t.mul_(1.0 + spec.beta).sub_(log_num).exp_()  # pA
                grad.mul_(1.0 + spec.beta_grad).sub_(p_b.mul_(spec.beta_grad)).mul_(sigma[:, None])
            if layout.pos_columns is not None:
                grad.scatter_add_(1, columns, pos_grad)
            else:
                for a, b, lo, hi, d_s in blocks:
                    grad[a:b, lo:hi] += d_s
            grad.mul_(spec.inv_t)  # d/dZ of (Zc / temperature) Z^T
            dZ[start:stop] += grad @ Z
            dZ.addmm_(grad.T, Zc)
        return dZ, None, None, None, None, None
