"""The fused log-space path of :func:`~hscl.losses.contrastive_loss` for the built-in hardenings.

None, :class:`~hscl.hardening.Exponential` and :class:`~hscl.hardening.Threshold` all have the
log-linear form ``log w = beta * g`` on a kept set ``{g >= log_threshold}``, so eq. (3) of
arXiv 2209.00078 has a closed-form gradient. :class:`_FusedContrastive` computes it block by block
of anchors, memory ``O(chunk x rows)``:

    log E(r)  = logsumexp_{s in N(r)}((1 + beta) g) - logsumexp_{s in N(r)}(beta g)
    loss(r,p) = softplus(log M(r) - g(r,p) + log E(r))

SupCon (Khosla et al.'s L_out) is the same computation with ``N(r)`` = every other row, ``beta = 0``,
``M = rows - 1`` and the linear pair term ``log M(r) - g(r,p) + log E(r)`` (``-log softmax``).

For the scalar reductions the gradient is computed in the forward, block by block, while the block's
matrices are at hand: the backward only scales it by the incoming gradient, so ``g`` is never
recomputed. ``reduction="none"`` (a vector output) recomputes each block in the backward instead.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.losses.sets import _Layout, _nonneg, _positive_width, _tables, _tiles

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
# Every set is a small column table per anchor, built once per call with tensor ops: the rows of a
# class form a (C, K) table (K = V x the largest class), the views of a sample a (N, V) table.
# Non-negatives (the class, the sample's views, or the anchor itself) are set to -inf with one
# scatter, positives are gathered from g with one gather. No (c, N) boolean mask, no Python loop
# over classes, no host synchronisation per block. The (c, N) matrices live in two reused buffers.


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


#: ``exp`` arguments down to ``-limit`` stay normal numbers: below this spread of ``(1 + beta) g``
#: the shift of the log-sum-exp can be the constant ``max g = 1 / temperature`` instead of a row max
_CONSTANT_SHIFT_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


def _constant_shift(spec: _Spec, normalized: bool, dtype: torch.dtype) -> float | None:
    """``1 / temperature`` (the largest ``g`` of unit rows) when ``exp((1 + beta)(g - shift))`` cannot
    underflow to 0 on the sphere; ``None``: shift each row by its max instead."""
    spread = (1.0 + spec.beta) * 2.0 * spec.inv_t
    if normalized and spread <= _CONSTANT_SHIFT_LIMIT.get(dtype, 0.0):
        return spec.inv_t
    return None


def _fill(value: float, like: Tensor, shape: tuple[int, int]) -> Tensor:
    """A constant ``(t, W)`` source for scatters (an expanded scalar: much faster than a scalar value)."""
    return torch.full((1, 1), value, dtype=like.dtype, device=like.device).expand(shape)


def _set_columns(rows: Tensor, columns: Tensor, value: float | Tensor) -> None:
    """``rows`` (t, cols) set to ``value`` (a number, or one per row (t,)) on ``columns``: a (t, W) table of
    column indices, or a (t, cols) bool mask (the dense sets of multi-hot labels)."""
    if columns.dtype == torch.bool:
        if isinstance(value, Tensor):
            torch.where(columns, value[:, None], rows, out=rows)
        else:
            rows.masked_fill_(columns, value)
    elif isinstance(value, Tensor):
        rows.scatter_(1, columns, value[:, None].expand(columns.shape))
    else:
        rows.scatter_(1, columns, _fill(value, rows, columns.shape))


def _zero_nonnegatives(
    E: Tensor, spec: _Spec, layout: _Layout, tiles: list, tables: list, start: int, drop: Tensor | None
) -> Tensor:
    """``E`` (c, N) with 0 on the columns that are not kept negatives (``drop``: those below the threshold)."""
    for i, (a, b) in enumerate(tiles):
        nonneg = tables[i].nonneg if tables[i] is not None else _nonneg(spec, layout, a, b)
        _set_columns(E[a - start : b - start], nonneg, 0.0)
    if drop is not None:
        E.masked_fill_(drop, 0.0)
    return E


def _block(Z: Tensor, columns: Tensor, spec: _Spec, layout: _Layout, start: int, stop: int, out: dict, grad) -> None:
    """Anchors ``start:stop``: statistics and pair values into ``out``; with ``grad``
    (``("rows", weight (N,))`` or ``("pairs", iterator over padded (t, K) weights)``) also their
    gradient into ``out["dZ"]`` (batch rows only: memory rows carry no gradient).

    ``Z`` (cols, d) are the batch rows then the memory rows; ``columns`` is the right operand of ``g``:
    ``Z``, or ``[Z, 1]`` (cols, d + 1) when a constant shift is folded into the product.
    """
    N, cols, c = spec.rows, spec.cols, stop - start
    dtype, device = Z.dtype, Z.device
    folded = _folded_shift(spec)
    shift = spec.shift if folded else 0.0  # subtracted inside the product: S = g - shift
    if folded:  # [Z / t, -shift] from [Z, 1] in one product
        anchor_scale = torch.full((columns.shape[1],), spec.inv_t, dtype=dtype, device=device)
        anchor_scale[-1] = -shift
        anchors = columns[start:stop] * anchor_scale
    else:
        anchors = Z[start:stop] * spec.inv_t
    S = torch.mm(anchors, columns.T, out=_WORKSPACE.get(0, c, cols, dtype, device))  # (c, cols)
    tiles = _tiles(spec, layout, start, stop)
    keep_tables = len(tiles) == 1  # else rebuilt below: all tiles' tables together may be (c, N)
    # A threshold or a row max must not see the non-negatives: they are -inf while those are taken,
    # then set to the row's shift (exp(0) = 1, zeroed after the exp). exp is never given -inf: on the
    # CPU a vector of arguments holding -inf takes a slow path (several times the cost of the exp).
    masked = spec.log_threshold != -math.inf or spec.shift is None
    tables, positives = [], []
    for a, b in tiles:  # row tiles of a bounded size, not classes
        tab = _tables(spec, layout, a, b, dtype)
        rows = S[a - start : b - start]
        positives.append(rows.gather(1, tab.pos))  # (t, K) g(r, p) - shift
        if masked:
            _set_columns(rows, tab.nonneg, -math.inf)
        tables.append(tab if keep_tables else None)
    num_neg = spec.num_neg[start:stop]
    row_ok = spec.valid[start:stop]
    kept, drop = num_neg, None
    if spec.log_threshold != -math.inf:  # every anchor at once: where no negative passes, w = 1
        keep = S >= spec.log_threshold - shift  # (c, N); non-negatives are -inf
        kept = keep.sum(1)
        fallback = (num_neg > 0) & (kept == 0)
        drop = keep.logical_not_().logical_and_(~fallback[:, None])  # negatives below the threshold, and more
        kept = torch.where(fallback, num_neg, kept)
        out["fallback"][start:stop] = fallback
        out["num_kept"][start:stop] = kept
    if spec.shift is None:
        m = S.amax(1)  # the largest negative (the largest kept one when any is kept)
        m = torch.where(torch.isfinite(m), m, 0.0)
    else:
        m = torch.full((c,), spec.shift, dtype=dtype, device=device)
    if masked:  # the non-negatives back to finite values: exp(g - m) = 1 there until zeroed
        for i, (a, b) in enumerate(tiles):  # (S holds g here: no shift is folded when masked)
            nonneg = tables[i].nonneg if tables[i] is not None else _nonneg(spec, layout, a, b)
            _set_columns(S[a - start : b - start], nonneg, m[a - start : b - start])
    if spec.shift is None or not folded:
        S.sub_(m[:, None])  # g - m <= 0 on the negatives
    beta = spec.beta
    if beta == 0.0:
        e_a = e_b = _zero_nonnegatives(S.exp_(), spec, layout, tiles, tables, start, drop)  # exp(g - m)
        num = e_a.sum(1)
        den = kept.to(dtype)
    elif beta == 1.0:
        e_b = _zero_nonnegatives(S.exp_(), spec, layout, tiles, tables, start, drop)  # exp(g - m)
        den = e_b.sum(1)
        e_a = torch.mul(e_b, e_b, out=_WORKSPACE.get(1, c, cols, dtype, device))  # exp(2 (g - m))
        num = e_a.sum(1)
    else:
        e_b = torch.mul(S, beta, out=_WORKSPACE.get(1, c, cols, dtype, device)).exp_()  # exp(beta (g - m))
        e_b = _zero_nonnegatives(e_b, spec, layout, tiles, tables, start, drop)
        den = e_b.sum(1)
        e_a = _zero_nonnegatives(S.mul_(1.0 + beta).exp_(), spec, layout, tiles, tables, start, drop)
        num = e_a.sum(1)
    log_num = torch.where(row_ok, torch.log(num), 0.0)
    log_den = torch.where(row_ok, torch.log(den), 0.0)
    m = torch.where(row_ok, m, 0.0)
    log_c = log_num - log_den + m  # log E(r)
    out["log_tilted_mean"][start:stop] = log_c

    # --- positives: values, and d loss / d g(r,p) and Sigma(r) = sum_p d loss(r,p) / d log E(r)
    offset = (spec.log_M[start:stop] + log_c - shift)[:, None]  # x = log M + log E - g = offset - (g - shift)
    ok = row_ok.to(dtype)[:, None]
    sigma = torch.zeros(c, dtype=dtype, device=device) if grad is not None else None
    pos_grads = []
    for i, ((a, b), s) in enumerate(zip(tiles, positives, strict=True)):
        tab = tables[i] or _tables(spec, layout, a, b, dtype)
        rows = slice(a - start, b - start)
        real = ok[rows].expand(tab.pos.shape) if tab.real is None else tab.real  # (t, K)
        if spec.tau_plus != 0.0:
            g = s + shift
            loss = _pair_loss(g, log_c[rows, None], spec.log_M[a:b, None], spec.tau_plus, spec.inv_t)
        else:
            x = torch.sub(offset[rows], s, out=s)  # (t, K), in the buffer of s
            loss = x if spec.pair == "linear" else F.softplus(x, threshold=_SOFTPLUS_LINEAR_FROM)
        loss = loss * real  # invalid anchors: zeroed below (their weights are 0 already)
        out["anchor_sum"][a:b] = loss.sum(1) * ok[rows, 0]
        if "pairs" in out:
            key = torch.arange(a, b, device=device)[:, None] * cols + tab.pos
            pair = (real > 0) & row_ok[rows, None]
            out["pairs"].append(loss.flatten())
            out["keys"].append(torch.where(pair, key, N * cols).flatten())  # N * cols sorts after every pair
        if grad is None:
            continue
        kind, weight = grad
        row_weight = weight[a:b] if kind == "rows" else None  # (t,) the same weight for every pair of a row
        w = real if kind == "rows" else next(weight)  # (t, K) weight of each pair (times row_weight)
        if spec.tau_plus != 0.0:
            d_s, d_c = _pair_grads(g, log_c[rows, None], spec.log_M[a:b, None], spec.tau_plus, spec.inv_t)
            d_s, d_c = d_s.mul_(w), d_c.mul_(w)  # d_s: the positive's own term, kept as is
        else:  # d loss / d g = -d loss / d log E = -sigmoid(x) (1 for the linear term): d_s = -d_c
            d_s = d_c = w if spec.pair == "linear" else x.sigmoid_().mul_(w)
        sigma[rows] = d_c.sum(1) if row_weight is None else d_c.sum(1) * row_weight
        pos_grads.append((tab.pos, d_s, row_weight))
    if grad is None:
        return

    # --- negatives: G = Sigma * ((1 + beta') pA - beta' pB), pA = e_a / num, pB = e_b / den, plus
    # the positives. Without debiasing, the row factor cA = (1 + beta') Sigma / num is kept out of
    # the (c, N) matrix (applied to the (c, d) products): H = e_a - kappa e_b + positives / cA.
    # Sigma(r) = 0 then leaves no positive term either (d loss / d g = -d loss / d log E per pair).
    beta_g = spec.beta_grad if beta != 0.0 else 0.0
    c_a = torch.where(row_ok, (1.0 + beta_g) * sigma / num, 0.0)
    H = e_a
    if spec.tau_plus == 0.0:
        factor = c_a
        pos_scale = -1.0 / torch.where(c_a > 0, c_a, 1.0)
        if beta_g != 0.0:
            kappa = torch.where(row_ok, beta_g * num / ((1.0 + beta_g) * den), 0.0)
            H.addcmul_(e_b, -kappa[:, None])
    else:
        factor = torch.ones_like(c_a)
        pos_scale = factor
        H.mul_(c_a[:, None])
        if beta_g != 0.0:
            H.addcmul_(e_b, torch.where(row_ok, -beta_g * sigma / den, 0.0)[:, None])
    for (a, b), (pos, d_s, row_weight) in zip(tiles, pos_grads, strict=True):
        rows = slice(a - start, b - start)
        scale = pos_scale[rows] if row_weight is None else pos_scale[rows] * row_weight
        H[rows].scatter_add_(1, pos, d_s * scale[:, None])
    factor = factor * spec.inv_t  # d/dZ of (Zc / temperature) Z^T
    dZ = out["dZ"]
    dZ[start:stop].addcmul_(torch.mm(H, Z), factor[:, None])
    # the columns' side (batch columns only), accumulated inside the product
    dZ.addmm_(H[:, :N].T, Z[start:stop] * factor[:, None])


def _outputs(spec: _Spec, Z: Tensor, per_pair: bool, grad: bool) -> dict:
    N, dtype, device = spec.rows, Z.dtype, Z.device
    out = {
        "log_tilted_mean": torch.zeros(N, dtype=dtype, device=device),
        "anchor_sum": torch.zeros(N, dtype=dtype, device=device),
        "fallback": torch.zeros(N, dtype=torch.bool, device=device),
        "num_kept": spec.num_neg.clone(),
    }
    if per_pair:
        out["pairs"], out["keys"] = [], []
    if grad:
        out["dZ"] = torch.zeros(N, Z.shape[1], dtype=dtype, device=device)
    return out


def _folded_shift(spec: _Spec) -> bool:
    """Whether the constant shift is folded into the product ``g - shift = [Z / t, -shift] . [Z, 1]``:
    not with a threshold, whose comparisons must see ``g`` as rounded without the shift."""
    return spec.shift is not None and spec.log_threshold == -math.inf


def _column_operand(Z: Tensor, spec: _Spec) -> Tensor:
    if not _folded_shift(spec):
        return Z
    return torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)  # (cols, d + 1): g - shift in one product


#: F.normalize's eps: rows are divided by max(||z||, eps)
_NORM_EPS = 1e-12


def _normalized(Z: Tensor, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """``Z / max(||Z_r||, eps)`` (as :func:`torch.nn.functional.normalize`) and the row norms."""
    if not normalize:
        return Z, None
    norms = torch.linalg.vector_norm(Z, dim=1, keepdim=True)  # (N, 1)
    return Z / norms.clamp_min(_NORM_EPS), norms


def _through_normalize(dZ: Tensor, Zn: Tensor, norms: Tensor | None) -> Tensor:
    """The gradient w.r.t. the raw rows from the one w.r.t. the normalised rows ``Zn``:
    ``(dZ - Zn (Zn . dZ)) / ||z||`` (``dZ / eps`` where the norm is clamped)."""
    if norms is None:
        return dZ
    radial = (Zn * dZ).sum(1, keepdim=True) * (norms > _NORM_EPS)  # (N, 1)
    return dZ.sub_(Zn * radial).div_(norms.clamp_min(_NORM_EPS))


def _with_memory(Zn: Tensor, memory: Tensor | None, normalize: bool) -> Tensor:
    """The columns: the batch rows ``Zn`` (N, d), then the memory rows (K, d) without gradient."""
    if memory is None:
        return Zn
    return torch.cat([Zn, _normalized(memory.detach().to(Zn.dtype), normalize)[0]])


class _FusedContrastive(torch.autograd.Function):
    """Eq. (3) for built-in hardenings (and SupCon), over the column tables of a :class:`_Layout`,
    with an analytic gradient.

    Inputs: ``Z`` (N, d) rows and ``memory`` (K, d) or None (both normalised inside when
    ``normalize``; the memory carries no gradient); ``row_weight`` (N,) weight of
    each pair of an anchor in the scalar output; ``need_grad``: compute the gradient in the forward.
    Output: the weighted sum of the pair losses or, with ``per_pair``, the valid pair losses ordered
    by ``(r, p)``.

    Gradient, with ``Sigma(r) = sum_p d loss(r,p) / d log E(r)``:
    ``d log E(r) / d g(r,s) = (1 + beta') pA(r,s) - beta' pB(r,s)`` on kept negatives, where
    ``pA = softmax((1 + beta) g)``, ``pB = softmax(beta g)`` over them and ``beta' = beta`` unless
    the weights are detached (then 0); plus ``d loss(r,p) / d g(r,p)`` on the positives.
    """

    @staticmethod
    def forward(ctx, Z, memory, row_weight, spec, layout, per_pair, need_grad, normalize, stats):
        Zn, norms = _normalized(Z, normalize)
        Zc = _with_memory(Zn, memory, normalize)
        columns = _column_operand(Zc, spec)
        grad = ("rows", row_weight) if need_grad and not per_pair else None
        out = _outputs(spec, Zn, per_pair, grad is not None)
        for start in range(0, spec.rows, spec.chunk):
            _block(Zc, columns, spec, layout, start, min(spec.rows, start + spec.chunk), out, grad)
        stats.update({key: out[key] for key in ("log_tilted_mean", "anchor_sum", "fallback", "num_kept")})
        ctx.spec, ctx.layout, ctx.per_pair, ctx.normalize = spec, layout, per_pair, normalize
        if per_pair:  # padded tables -> the valid pairs in (r, p) order, without a host sync
            keys = torch.cat(out["keys"])
            order = torch.argsort(keys)[: spec.num_pairs]
            stats["pair_keys"] = keys[order]
            ctx.padded = keys.numel()
            ctx.save_for_backward(Z, memory, order)
            return torch.cat(out["pairs"])[order]
        ctx.save_for_backward(_through_normalize(out["dZ"], Zn, norms) if grad is not None else None)
        return (out["anchor_sum"] * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.per_pair:
            (dZ,) = ctx.saved_tensors
            return dZ * grad_out, None, None, None, None, None, None, None, None
        spec, layout = ctx.spec, ctx.layout
        Z, memory, order = ctx.saved_tensors
        Zn, norms = _normalized(Z, ctx.normalize)
        Zc = _with_memory(Zn, memory, ctx.normalize)
        padded = torch.zeros(ctx.padded, dtype=Z.dtype, device=Z.device)
        padded[order] = grad_out
        width = _positive_width(spec, layout)
        starts = range(0, spec.rows, spec.chunk)
        tiles = [tile for start in starts for tile in _tiles(spec, layout, start, min(spec.rows, start + spec.chunk))]
        weights = iter(piece.view(-1, width) for piece in padded.split([(b - a) * width for a, b in tiles]))
        columns = _column_operand(Zc, spec)
        out = _outputs(spec, Zn, False, True)
        for start in range(0, spec.rows, spec.chunk):
            _block(Zc, columns, spec, layout, start, min(spec.rows, start + spec.chunk), out, ("pairs", weights))
        return _through_normalize(out["dZ"], Zn, norms), None, None, None, None, None, None, None, None
