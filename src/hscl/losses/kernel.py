"""The fused log-space kernel of :func:`~hscl.losses.contrastive_loss` for log-linear hardenings (and SupCon).

None, :class:`~hscl.hardening.Exponential` and :class:`~hscl.hardening.Threshold` (and any hardening that
declares ``log_linear``) have the form ``log w = beta * g`` on a kept set ``{g >= log_threshold}``, so eq. (3)
of arXiv 2209.00078 has a closed-form gradient. :class:`_FusedContrastive` computes it block by block of
anchors, memory ``O(chunk x rows)``, in four steps per block:

1. :func:`_similarities`: ``g(r, s) - shift`` for the block's anchors and every column, and ``g`` of the positives;
2. :func:`_tilted_mean`: ``log E(r) = logsumexp_{N(r)}((1 + beta) g) - logsumexp_{N(r)}(beta g)``;
3. :func:`_positive_terms`: ``loss(r, p) = softplus(log M(r) - g(r, p) + log E(r))`` and its derivatives;
4. :func:`_gradient`: ``d loss / d g`` on the negatives (two (c, N) matrices) and the positives, times ``Z``.

SupCon (Khosla et al.'s L_out) is the same computation with ``N(r)`` = every other row, ``beta = 0``,
``M = rows - 1`` and the linear pair term ``log M(r) - g(r,p) + log E(r)`` (``-log softmax``).

For the scalar reductions the gradient is computed in the forward, block by block, while the block's
matrices are at hand: the backward only scales it by the incoming gradient, so ``g`` is never
recomputed. ``reduction="none"`` (a vector output) recomputes each block in the backward instead.
On the CPU, a whole batch without a memory takes :mod:`~hscl.losses.symmetric` instead (half of ``g``,
one product for the gradient). The definition these compute is :func:`~hscl.losses.dense_contrastive_loss`.

Every set is a small column table per anchor, built once per call with tensor ops (:mod:`~hscl.losses.sets`):
excluded columns are set to -inf (or 0 after the exp) with one scatter, positives are gathered from ``g`` with
one gather; no (c, N) boolean mask, no Python loop over classes, no host synchronisation per block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from hscl.losses.buffers import _WORKSPACE, _Outputs, _set_columns
from hscl.losses.pairs import pair_terms
from hscl.losses.sets import _Layout, _positive_width, _Spec, _Tables, _tables, _tiles
from hscl.losses.symmetric import symmetric_applies, symmetric_loss

#: ``exp`` arguments down to ``-limit`` stay normal numbers: below this spread of ``(1 + beta) g``
#: the shift of the log-sum-exp can be the constant ``max g = 1 / temperature`` instead of a row max
_CONSTANT_SHIFT_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}

#: on the CPU the block path takes anchors in blocks of about this many (c x N) entries even without
#: ``chunk_size``: each pass over the (c, N) matrices then runs from cache instead of memory
_CPU_BLOCK_ELEMENTS = 1 << 20


def _cpu_block(rows: int) -> int:
    """Anchors per block of the block path on the CPU: ``2**20 / rows``, at least 32."""
    return max(32, _CPU_BLOCK_ELEMENTS // max(rows, 1))


def _constant_shift(spec: _Spec, dtype: torch.dtype, *, normalized: bool) -> float | None:
    """``1 / temperature`` (the largest ``g`` of unit rows) when ``exp((1 + beta)(g - shift))`` cannot
    underflow to 0 on the sphere; ``None``: shift each row by its max instead."""
    spread = (1.0 + spec.beta) * 2.0 * spec.inv_t
    if normalized and spread <= _CONSTANT_SHIFT_LIMIT.get(dtype, 0.0):
        return spec.inv_t
    return None


def _folded_shift(spec: _Spec) -> bool:
    """Whether the constant shift is folded into the product ``g - shift = [Z / t, -shift] . [Z, 1]``:
    not with a threshold, whose comparisons must see ``g`` as rounded without the shift."""
    return spec.shift is not None and spec.log_threshold == -math.inf


def _column_operand(Z: Tensor, spec: _Spec) -> Tensor:
    """The right operand of ``g``: ``Z``, or ``[Z, 1]`` (cols, d + 1) when the shift is folded into the product."""
    if not _folded_shift(spec):
        return Z
    return torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)


def _anchor_operand(Z: Tensor, columns: Tensor, spec: _Spec, start: int, stop: int) -> Tensor:
    """The left operand of ``g`` for the anchors ``start:stop``: ``Z / t``, or ``[Z / t, -shift]``."""
    if not _folded_shift(spec):
        return Z[start:stop] * spec.inv_t
    scale = torch.full((columns.shape[1],), spec.inv_t, dtype=Z.dtype, device=Z.device)
    scale[-1] = -spec.shift
    return columns[start:stop] * scale


@dataclass
class _Weights:
    """How the pairs of a block weigh in the gradient: one weight per anchor (the scalar reductions), or one
    per pair (the backward of ``reduction="none"``: padded ``(t, K)`` tiles, in order)."""

    row: Tensor | None = None  # (N,)
    pairs: Iterator[Tensor] | None = None

    def for_tile(self, a: int, b: int, real: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(pair weights (t, K), anchor weights (t,) or None)`` of the anchors ``a:b``."""
        if self.row is not None:
            return real, self.row[a:b]
        return next(self.pairs), None


# --------------------------------------------------------------------------------------------
# the four steps of a block of anchors


@dataclass
class _Similarities:
    """Step 1 of the anchors ``start:stop``: ``S`` (c, cols) holds ``g - shift`` (``shift`` folded into the
    product) or ``g`` (``shift = 0``); per row tile ``(a, b)`` its tables (None: rebuilt when needed) and
    ``g(r, p) - shift`` of its positives (t, K)."""

    S: Tensor
    shift: float
    tiles: list[tuple[int, int]]
    tables: list[_Tables | None]
    positives: list[Tensor]

    def table(self, spec: _Spec, layout: _Layout, i: int) -> _Tables:
        a, b = self.tiles[i]
        return self.tables[i] or _tables(spec, layout, a, b, self.S.dtype)


def _similarities(Z: Tensor, columns: Tensor, spec: _Spec, layout: _Layout, start: int, stop: int) -> _Similarities:
    """``S = g - shift`` of the anchors ``start:stop`` against every column (one product into a reused buffer),
    the positives' values gathered, and the excluded columns set to -inf where a threshold or a row max must not
    see them (they are set back to finite values by :func:`_tilted_mean`)."""
    c, dtype = stop - start, Z.dtype
    anchors = _anchor_operand(Z, columns, spec, start, stop)
    S = torch.mm(anchors, columns.T, out=_WORKSPACE.get(0, c, spec.cols, dtype, Z.device))  # (c, cols)
    tiles = _tiles(spec, layout, start, stop)
    keep_tables = len(tiles) == 1  # else rebuilt when needed: all tiles' tables together may be (c, N)
    # exp is never given -inf: on the CPU a vector of arguments holding -inf takes a slow path
    masked = spec.log_threshold != -math.inf or spec.shift is None
    tables, positives = [], []
    for a, b in tiles:  # row tiles of a bounded size, not classes
        tab = _tables(spec, layout, a, b, dtype)
        rows = S[a - start : b - start]
        positives.append(rows.gather(1, tab.pos))  # (t, K) g(r, p) - shift
        if masked:
            _set_columns(rows, tab.nonneg, -math.inf)
        tables.append(tab if keep_tables else None)
    return _Similarities(S, spec.shift if _folded_shift(spec) else 0.0, tiles, tables, positives)


@dataclass
class _TiltedMean:
    """Step 2: ``e_a = exp((1 + beta)(g - m))`` and ``e_b = exp(beta (g - m))`` (c, cols) on the kept negatives
    (0 elsewhere; the same matrix when ``beta`` is 0), their row sums ``num`` and ``den`` (c,), and
    ``log E(r) = log num - log den + m`` (0 for invalid anchors)."""

    e_a: Tensor
    e_b: Tensor
    num: Tensor
    den: Tensor
    log_c: Tensor


def _zero_excluded(E: Tensor, sim: _Similarities, spec: _Spec, layout: _Layout, start: int, drop) -> Tensor:
    """``E`` (c, N) with 0 on the columns that are not kept negatives (``drop``: those below the threshold)."""
    for i, (a, b) in enumerate(sim.tiles):
        _set_columns(E[a - start : b - start], sim.table(spec, layout, i).nonneg, 0.0)
    if drop is not None:
        E.masked_fill_(drop, 0.0)
    return E


def _tilted_mean(sim: _Similarities, spec: _Spec, layout: _Layout, start: int, out: _Outputs) -> _TiltedMean:
    """``log E(r)`` of the block, in place over ``sim.S``; the threshold's kept counts and fallbacks into ``out``."""
    S, shift = sim.S, sim.shift
    c, dtype, device = S.shape[0], S.dtype, S.device
    stop = start + c
    num_neg, row_ok = spec.num_neg[start:stop], spec.valid[start:stop]
    kept, drop = num_neg, None
    if spec.log_threshold != -math.inf:  # every anchor at once: where no negative passes, w = 1
        keep = S >= spec.log_threshold - shift  # (c, N); excluded columns are -inf
        kept = keep.sum(1)
        fallback = (num_neg > 0) & (kept == 0)
        drop = keep.logical_not_().logical_and_(~fallback[:, None])  # negatives below the threshold, and more
        kept = torch.where(fallback, num_neg, kept)
        out.fallback[start:stop] = fallback
        out.num_kept[start:stop] = kept
    if spec.shift is None:
        m = S.amax(1)  # the largest negative (the largest kept one when any is kept)
        m = torch.where(torch.isfinite(m), m, 0.0)
    else:
        m = torch.full((c,), spec.shift, dtype=dtype, device=device)
    if spec.log_threshold != -math.inf or spec.shift is None:  # excluded columns back to finite: exp(g - m) = 1
        for i, (a, b) in enumerate(sim.tiles):  # (S holds g here: no shift is folded when masked)
            _set_columns(S[a - start : b - start], sim.table(spec, layout, i).nonneg, m[a - start : b - start])
    if spec.shift is None or not _folded_shift(spec):
        S.sub_(m[:, None])  # g - m <= 0 on the negatives
    beta = spec.beta
    if beta == 0.0:
        e_a = e_b = _zero_excluded(S.exp_(), sim, spec, layout, start, drop)  # exp(g - m)
        num, den = e_a.sum(1), kept.to(dtype)
    elif beta == 1.0:
        e_b = _zero_excluded(S.exp_(), sim, spec, layout, start, drop)  # exp(g - m)
        e_a = torch.mul(e_b, e_b, out=_WORKSPACE.get(1, c, spec.cols, dtype, device))  # exp(2 (g - m))
        num, den = e_a.sum(1), e_b.sum(1)
    else:
        e_b = torch.mul(S, beta, out=_WORKSPACE.get(1, c, spec.cols, dtype, device)).exp_()  # exp(beta (g - m))
        e_b = _zero_excluded(e_b, sim, spec, layout, start, drop)
        e_a = _zero_excluded(S.mul_(1.0 + beta).exp_(), sim, spec, layout, start, drop)
        num, den = e_a.sum(1), e_b.sum(1)
    log_c = torch.where(row_ok, torch.log(num), 0.0) - torch.where(row_ok, torch.log(den), 0.0)
    log_c = log_c + torch.where(row_ok, m, 0.0)  # log E(r)
    out.log_tilted_mean[start:stop] = log_c
    return _TiltedMean(e_a, e_b, num, den, log_c)


def _positive_terms(
    sim: _Similarities, log_c: Tensor, spec: _Spec, layout: _Layout, start: int, out: _Outputs, weights
) -> tuple[list[tuple], Tensor | None]:
    """The pair values into ``out`` (anchor sums; with ``out.pairs`` each pair and its sort key); with
    ``weights`` (:class:`_Weights`) also ``[(positive columns (t, K), PairTerms, anchor weights or None)]`` per
    tile and ``Sigma(r)`` (c,), the weighted ``sum_p d loss(r, p) / d log E(r)``."""
    c, dtype, device = sim.S.shape[0], sim.S.dtype, sim.S.device
    row_ok = spec.valid[start : start + c]
    ok = row_ok.to(dtype)[:, None]
    sigma = torch.zeros(c, dtype=dtype, device=device) if weights is not None else None
    grads = []
    for i, ((a, b), s) in enumerate(zip(sim.tiles, sim.positives, strict=True)):
        tab = sim.table(spec, layout, i)
        rows = slice(a - start, b - start)
        real = ok[rows].expand(tab.pos.shape) if tab.real is None else tab.real  # (t, K)
        w, row_weight = weights.for_tile(a, b, real) if weights is not None else (None, None)
        kw = dict(shift=sim.shift, tau_plus=spec.tau_plus, inv_t=spec.inv_t, linear=spec.pair == "linear")
        kw["x_min"] = spec.pair_floor()
        terms = pair_terms(s, real, log_c[rows], spec.log_M[a:b], weight=w, **kw)
        out.anchor_sum[a:b] = terms.loss.sum(1) * ok[rows, 0]
        if out.pairs is not None:
            key = torch.arange(a, b, device=device)[:, None] * spec.cols + tab.pos
            pair = (real > 0) & row_ok[rows, None]
            out.pairs.append(terms.loss.flatten())
            out.keys.append(torch.where(pair, key, spec.rows * spec.cols).flatten())  # rows * cols sorts last
        if weights is not None:
            sigma[rows] = terms.sigma if row_weight is None else terms.sigma * row_weight
            grads.append((tab.pos, terms, row_weight))
    return grads, sigma


def _gradient(
    Z: Tensor, sim: _Similarities, tilted: _TiltedMean, grads: list, sigma: Tensor, spec: _Spec, start: int, dZ
) -> None:
    """``dZ += d loss / d Z`` of the block (batch rows only: memory rows carry no gradient).

    ``d loss / d g(r, s) = a(r) e_a + b(r) e_b`` on the negatives, with ``a = (1 + beta') Sigma / num`` and
    ``b = -beta' Sigma / den`` (``beta'``: beta, 0 when the weights are detached), plus ``d loss / d g(r, p)`` on
    the positives; then ``G = [d loss / d g] / t`` gives ``dZ_r += G_r Z`` (anchor side) and ``dZ_s += G_s^T Z``
    (column side). Without debiasing the row factor ``a`` is applied to the (c, d) products, not the matrix.
    """
    row_ok = spec.valid[start : start + sim.S.shape[0]]
    beta_g = spec.beta_grad if spec.beta != 0.0 else 0.0
    a = torch.where(row_ok, (1.0 + beta_g) * sigma / tilted.num, 0.0)
    H = tilted.e_a  # becomes d loss / d g (over the row factor), in place
    if spec.tau_plus == 0.0:  # H = e_a + (b / a) e_b + positives / a; b / a does not depend on Sigma
        factor, pos_scale = a, 1.0 / torch.where(a > 0, a, 1.0)  # a = 0: Sigma = 0, no positive term either
        if beta_g != 0.0:
            kappa = torch.where(row_ok, beta_g * tilted.num / ((1.0 + beta_g) * tilted.den), 0.0)  # -b / a
            H.addcmul_(tilted.e_b, -kappa[:, None])
    else:  # a debiased pair has a term of its own even where Sigma = 0
        factor, pos_scale = torch.ones_like(a), None
        H.mul_(a[:, None])
        if beta_g != 0.0:
            H.addcmul_(tilted.e_b, torch.where(row_ok, -beta_g * sigma / tilted.den, 0.0)[:, None])
    for (a_, b_), (pos, terms, row_weight) in zip(sim.tiles, grads, strict=True):
        rows = slice(a_ - start, b_ - start)
        scale = pos_scale[rows] if pos_scale is not None else None
        if row_weight is not None:
            scale = row_weight if scale is None else scale * row_weight
        H[rows].scatter_add_(1, pos, terms.d_g(scale))
    factor = factor * spec.inv_t  # d/dZ of (Zc / temperature) Z^T
    stop = start + H.shape[0]
    dZ[start:stop].addcmul_(torch.mm(H, Z), factor[:, None])
    dZ.addmm_(H[:, : spec.rows].T, Z[start:stop] * factor[:, None])  # the columns' side, batch columns only


def _block(Z, columns, spec: _Spec, layout: _Layout, start: int, stop: int, out: _Outputs, weights) -> None:
    """Anchors ``start:stop``: statistics and pair values into ``out``; with ``weights`` (:class:`_Weights`) also
    their gradient into ``out.dZ``. ``Z`` (cols, d) are the batch rows then the memory rows."""
    sim = _similarities(Z, columns, spec, layout, start, stop)
    tilted = _tilted_mean(sim, spec, layout, start, out)
    grads, sigma = _positive_terms(sim, tilted.log_c, spec, layout, start, out, weights)
    if weights is not None:
        _gradient(Z, sim, tilted, grads, sigma, spec, start, out.dZ)


# --------------------------------------------------------------------------------------------
# the autograd Function


#: F.normalize's eps: rows are divided by max(||z||, eps)
_NORM_EPS = 1e-12


def _normalized(Z: Tensor, *, normalize: bool) -> tuple[Tensor, Tensor | None]:
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


def _with_memory(Zn: Tensor, memory: Tensor | None, *, normalize: bool) -> Tensor:
    """The columns: the batch rows ``Zn`` (N, d), then the memory rows (K, d) without gradient."""
    if memory is None:
        return Zn
    return torch.cat([Zn, _normalized(memory.detach().to(Zn.dtype), normalize=normalize)[0]])


def _blocks(Zc: Tensor, spec: _Spec, layout: _Layout, out: _Outputs, weights: _Weights | None) -> None:
    """Every block of anchors of :attr:`_Spec.chunk` rows."""
    columns = _column_operand(Zc, spec)
    for start in range(0, spec.rows, spec.chunk):
        _block(Zc, columns, spec, layout, start, min(spec.rows, start + spec.chunk), out, weights)


class _FusedContrastive(torch.autograd.Function):
    """Eq. (3) for log-linear hardenings (and SupCon), over the column tables of a :class:`_Layout`,
    with an analytic gradient; called through :func:`fused_loss`.

    Inputs: ``Z`` (N, d) rows and ``memory`` (K, d) or None (both normalised inside when
    ``normalize``; the memory carries no gradient); ``row_weight`` (N,) weight of
    each pair of an anchor in the scalar output; ``need_grad``: compute the gradient in the forward;
    ``whole``: the batch takes :func:`~hscl.losses.symmetric.symmetric_loss` instead of blocks.
    Output: the weighted sum of the pair losses or, with ``per_pair``, the valid pair losses ordered
    by ``(r, p)``; the statistics go into ``outputs`` (a list that receives the :class:`_Outputs`).

    Gradient, with ``Sigma(r) = sum_p d loss(r,p) / d log E(r)``:
    ``d log E(r) / d g(r,s) = (1 + beta') pA(r,s) - beta' pB(r,s)`` on kept negatives, where
    ``pA = softmax((1 + beta) g)``, ``pB = softmax(beta g)`` over them and ``beta' = beta`` unless
    the weights are detached (then 0); plus ``d loss(r,p) / d g(r,p)`` on the positives.
    """

    @staticmethod
    def forward(ctx, Z, memory, row_weight, spec, layout, per_pair, need_grad, normalize, whole, outputs):
        Zn, norms = _normalized(Z, normalize=normalize)
        Zc = _with_memory(Zn, memory, normalize=normalize)
        grad = need_grad and not per_pair
        out = _Outputs.empty(spec.num_neg, Zn, per_pair=per_pair, grad=grad)
        if whole:
            symmetric_loss(Zc, _column_operand(Zc, spec), spec, layout, out, row_weight if grad else None)
        else:
            _blocks(Zc, spec, layout, out, _Weights(row=row_weight) if grad else None)
        outputs.append(out)
        ctx.spec, ctx.layout, ctx.per_pair, ctx.normalize = spec, layout, per_pair, normalize
        if per_pair:  # padded tables -> the valid pairs in (r, p) order, without a host sync
            keys = torch.cat(out.keys)
            order = torch.argsort(keys)[: spec.num_pairs]
            out.keys = [keys[order]]
            ctx.padded = keys.numel()
            ctx.save_for_backward(Z, memory, order)
            return torch.cat(out.pairs)[order]
        ctx.save_for_backward(_through_normalize(out.dZ, Zn, norms) if grad else None)
        return (out.anchor_sum * row_weight).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        nones = (None,) * 9
        if not ctx.per_pair:
            (dZ,) = ctx.saved_tensors
            return dZ * grad_out, *nones
        spec, layout = ctx.spec, ctx.layout
        Z, memory, order = ctx.saved_tensors
        Zn, norms = _normalized(Z, normalize=ctx.normalize)
        Zc = _with_memory(Zn, memory, normalize=ctx.normalize)
        padded = torch.zeros(ctx.padded, dtype=Z.dtype, device=Z.device)
        padded[order] = grad_out
        width = _positive_width(spec, layout)
        starts = range(0, spec.rows, spec.chunk)
        tiles = [tile for start in starts for tile in _tiles(spec, layout, start, min(spec.rows, start + spec.chunk))]
        weights = iter(piece.view(-1, width) for piece in padded.split([(b - a) * width for a, b in tiles]))
        out = _Outputs.empty(spec.num_neg, Zn, per_pair=False, grad=True)
        _blocks(Zc, spec, layout, out, _Weights(pairs=weights))
        return _through_normalize(out.dZ, Zn, norms), *nones


def fused_loss(
    Z: Tensor,
    row_weight: Tensor,
    spec: _Spec,
    layout: _Layout,
    *,
    hardening=None,
    detach_weights: bool = False,
    per_pair: bool = False,
    normalize: bool = True,
    memory: Tensor | None = None,
) -> tuple[Tensor, _Outputs]:
    """The loss of a log-linear ``hardening`` (None: ``w = 1``) over the column tables of ``layout``, with its
    statistics: :class:`_FusedContrastive` on the rows ``Z`` (N, d) and the ``memory`` rows (K, d) or None."""
    if hardening is not None:
        spec.beta = float(hardening.beta)
        spec.beta_grad = 0.0 if detach_weights else spec.beta
        spec.log_threshold = float(hardening.log_threshold)
    spec.shift = _constant_shift(spec, Z.dtype, normalized=normalize)
    whole = symmetric_applies(spec, layout, Z, per_pair=per_pair, memory=memory is not None)
    if Z.device.type == "cpu" and not whole:  # blocks whose (c, N) matrices stay in cache; the same values
        spec.chunk = min(spec.chunk, _cpu_block(spec.cols))
    need_grad = torch.is_grad_enabled() and Z.requires_grad
    outputs: list[_Outputs] = []
    args = (row_weight, spec, layout, per_pair, need_grad, normalize, whole, outputs)
    loss = _FusedContrastive.apply(Z, memory, *args)
    return loss, outputs[0]
