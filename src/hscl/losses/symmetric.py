"""The fused kernel for a whole batch on the CPU: half of ``g``, and one product for the gradient.

Without a memory every set is symmetric (``s`` is a negative, a positive or an excluded column of ``r`` exactly
when ``r`` is one of ``s``), and with the constant shift of unit rows so are ``e = exp(g - shift)`` and ``e^2``.
The block path of :mod:`~hscl.losses.kernel` computes every ``g(r, s)`` and two products for the gradient;
this computes the same values and gradients (the tests hold them equal) with

* ``g`` for the upper block triangle only: anchors in blocks of ``c`` rows, block ``i`` (rows ``a_i:b_i``)
  against the columns ``a_i:N``, each a ``(c, N - a_i)`` matrix in one packed buffer, so half the product.
  A row's sums over its negatives are its own block's row sums plus the column sums of the blocks above it;
  a positive ``g(r, p)`` with ``p < a_i`` is read from the row of ``p`` (:func:`_mirror`).
* the gradient's matrix ``G = A + A^T`` (``A(r, s) = d loss / d g(r, s)``: ``a(r) e_a + b(r) e_b`` on the
  negatives, the pair terms ``P(r, s)`` on the positives), symmetric:
  ``G(r, s) = (a(r) + a(s)) e_a + (b(r) + b(s)) e_b + P(r, s) + P(s, r)`` on the stored triangle, and
  ``dZ = G Z / t`` in one product: block ``i`` gives ``G_i Z[a_i:]`` to its rows and ``G_i^T Z_i`` below them.

It serves ``beta`` 0 or 1 (``e_a`` = ``e`` or ``e^2``) without a threshold, integer labels (or none), the scalar
reductions, and batches whose stored entries fit :data:`_SYMMETRIC_ELEMENTS`; everything else takes the block path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hscl.losses.buffers import _WORKSPACE, _Outputs, _set_columns
from hscl.losses.pairs import pair_terms
from hscl.losses.sets import _Layout, _positive_width, _Spec, _Tables, _tables

#: at most this many stored entries (the packed triangle of ``g`` and the pair table; 256 MB in float32,
#: about 11500 rows): a larger batch takes the block path, whose memory is ``O(block x rows)``
_SYMMETRIC_ELEMENTS = 1 << 26

#: a block of anchors has about this many entries (``c x N``): ``c = 2**21 / N`` rows (256 at 8192 rows),
#: so that the passes over one block run from the last-level cache
_SYMMETRIC_BLOCK_ELEMENTS = 1 << 21


def _blocks(rows: int) -> list[tuple[int, int, int]]:
    """``(a, b, offset)`` of each block of anchors: its rows ``a:b`` and where its ``(b - a, rows - a)`` matrix
    starts in the packed buffer."""
    c = max(1, min(rows, _SYMMETRIC_BLOCK_ELEMENTS // max(rows, 1)))
    blocks, offset = [], 0
    for a in range(0, rows, c):
        b = min(rows, a + c)
        blocks.append((a, b, offset))
        offset += (b - a) * (rows - a)
    return blocks


def _packed_size(rows: int) -> int:
    """Entries of the packed buffer: every block's ``(b - a, rows - a)`` matrix."""
    a, b, offset = _blocks(rows)[-1]
    return offset + (b - a) * (rows - a)


def symmetric_applies(spec: _Spec, layout: _Layout, Z: Tensor, *, per_pair: bool, memory: bool) -> bool:
    """Whether :func:`symmetric_loss` serves this call (see the module's docstring)."""
    if Z.device.type != "cpu" or per_pair or memory or spec.cols != spec.rows or spec.chunk < spec.rows:
        return False
    if spec.shift is None or spec.log_threshold != -math.inf or spec.beta not in (0.0, 1.0):
        return False
    if layout.relation.dense:
        return False
    return _packed_size(spec.rows) + spec.rows * _positive_width(spec, layout) <= _SYMMETRIC_ELEMENTS


def _mirror(spec: _Spec, layout: _Layout, a: int, b: int, pos: Tensor, width: int) -> Tensor:
    """For each positive ``p = pos[r, k]`` of the anchors ``a:b``, the entry of ``r`` in the positive table of
    ``p`` (row-major in a ``(N, width)`` table): its class's table is ``r``'s (at ``r``'s rank), its views are
    ``r``'s other views (at ``r``'s view, less one above ``p``'s). Shape ``(t, K)`` long."""
    if spec.positives == "labels":
        position = layout.self_index[a:b, None]
    else:
        view = torch.arange(a, b, device=pos.device)[:, None] // spec.batch
        position = view - (view > pos // spec.batch).long()
    return pos * width + position


def _local(columns: Tensor, a: int, b: int) -> tuple[Tensor, Tensor]:
    """Column indices ``columns`` (t, W) of the anchors ``a:b`` in their block's stored columns ``a:N``: those
    left of ``a`` (stored in the rows of an earlier block) go to the anchor's own column; and which were kept."""
    local = columns - a
    stored = local >= 0
    own = torch.arange(b - a, device=columns.device)[:, None]
    return torch.where(stored, local, own), stored


def _upper_similarities(Z, columns, spec, layout, packed, posval) -> tuple[Tensor, Tensor]:
    """Block by block: ``e = exp(g - shift)`` on the negatives (0 elsewhere) into ``packed``, the positives'
    ``g - shift`` into ``posval`` (N, K), and every row's sums ``num`` of ``e_a`` and ``den`` of ``e_b``."""
    N, dtype, device = spec.rows, Z.dtype, Z.device
    width = posval.shape[1]
    num = torch.zeros(N, dtype=dtype, device=device)
    den = torch.zeros(N, dtype=dtype, device=device) if spec.beta == 1.0 else spec.num_neg.to(dtype)
    scale = torch.full((columns.shape[1],), spec.inv_t, dtype=dtype, device=device)
    scale[-1] = -spec.shift
    for a, b, offset in _blocks(N):
        c = b - a
        E = packed[offset : offset + c * (N - a)].view(c, N - a)
        torch.mm(columns[a:b] * scale, columns[a:].T, out=E)  # g - shift, (c, N - a)
        tab = _tables(spec, layout, a, b, dtype)
        local, stored = _local(tab.pos, a, b)
        mirrored = posval.view(-1)[_mirror(spec, layout, a, b, tab.pos, width)]  # rows above: filled already
        posval[a:b] = torch.where(stored, E.gather(1, local), mirrored)
        _set_columns(E.exp_(), _local(tab.nonneg, a, b)[0], 0.0)  # the excluded columns are 0
        e_a = E if spec.beta == 0.0 else torch.mul(E, E, out=_WORKSPACE.get(1, c, N - a, dtype, device))
        num[a:b] += e_a.sum(1)
        num[b:] += e_a[:, c:].sum(0)  # the rows below, whose columns a:b are stored here
        if spec.beta == 1.0:
            den[a:b] += E.sum(1)
            den[b:] += E[:, c:].sum(0)
    return num, den


def _pair_values(spec, layout, posval, log_c, out: _Outputs, row_weight: Tensor | None) -> Tensor | None:
    """The pair terms into ``out``; with ``row_weight`` (N,) also ``Sigma(r)`` (returned) and the pairs' own
    terms ``P(r, p) = row weight x d loss / d g(r, p)`` (into ``posval``, over the values)."""
    ok = spec.valid.to(posval.dtype)
    sigma = torch.zeros_like(ok) if row_weight is not None else None
    linear = spec.pair == "linear"
    for a, b, _ in _blocks(spec.rows):
        tab: _Tables = _tables(spec, layout, a, b, posval.dtype)
        real = ok[a:b, None].expand(tab.pos.shape) if tab.real is None else tab.real
        terms = pair_terms(
            posval[a:b], real, log_c[a:b], spec.log_M[a:b], shift=spec.shift, tau_plus=spec.tau_plus,
            inv_t=spec.inv_t, linear=linear, weight=real if row_weight is not None else None,
        )  # fmt: skip
        out.anchor_sum[a:b] = terms.loss.sum(1) * ok[a:b]
        if row_weight is not None:
            sigma[a:b] = terms.sigma * row_weight[a:b]
            torch.mul(terms.d_g, row_weight[a:b, None], out=posval[a:b])
    return sigma


def _symmetric_gradient(Z, spec, layout, packed, P, coef_a: Tensor, coef_b: Tensor, dZ: Tensor) -> None:
    """``dZ = G Z / t`` from the stored triangle of ``e`` (overwritten by ``G``) and the pair terms ``P`` (N, K)."""
    N, dtype, device = spec.rows, Z.dtype, Z.device
    width = P.shape[1]
    for a, b, offset in _blocks(N):
        c = b - a
        G = packed[offset : offset + c * (N - a)].view(c, N - a)  # e, becomes G
        tmp = _WORKSPACE.get(1, c, N - a, dtype, device)
        if spec.beta == 0.0:  # e_a = e_b = e: G = (a(r) + a(s)) e
            G.mul_(torch.add(coef_a[a:b, None], coef_a[None, a:], out=tmp))
        else:  # e_a = e^2: G = e ((a(r) + a(s)) e + b(r) + b(s))
            torch.addcmul(coef_b[a:b, None], G, coef_a[a:b, None], out=tmp)
            G.mul_(tmp.addcmul_(G, coef_a[None, a:]).add_(coef_b[None, a:]))
        tab = _tables(spec, layout, a, b, dtype)
        local, stored = _local(tab.pos, a, b)
        if tab.real is not None:  # not the padding of a class table (it repeats a real positive), nor r itself
            stored &= tab.real > 0
        both = P[a:b] + P.view(-1)[_mirror(spec, layout, a, b, tab.pos, width)]  # P(r, p) + P(p, r)
        G.scatter_add_(1, local, torch.where(stored, both, 0.0))
        dZ[a:b].addmm_(G, Z[a:])
        dZ[b:].addmm_(G[:, c:].T, Z[a:b])  # the rows below: G(s, r) = G(r, s)
    dZ.mul_(spec.inv_t)


def symmetric_loss(Z: Tensor, columns: Tensor, spec: _Spec, layout: _Layout, out: _Outputs, row_weight) -> None:
    """The statistics and pair values of the whole batch into ``out``; with ``row_weight`` (N,) the gradient
    w.r.t. the rows ``Z`` (N, d) into ``out.dZ``. ``columns``: ``[Z, 1]`` (N, d + 1)."""
    N, dtype, device = spec.rows, Z.dtype, Z.device
    packed = _WORKSPACE.get(2, 1, _packed_size(N), dtype, device).view(-1)
    posval = _WORKSPACE.get(3, N, _positive_width(spec, layout), dtype, device)
    num, den = _upper_similarities(Z, columns, spec, layout, packed, posval)
    valid = spec.valid
    log_c = torch.where(valid, torch.log(num), 0.0) - torch.where(valid, torch.log(den), 0.0)
    log_c = log_c + torch.where(valid, spec.shift, 0.0)  # log E(r)
    out.log_tilted_mean.copy_(log_c)
    sigma = _pair_values(spec, layout, posval, log_c, out, row_weight)
    if row_weight is None:
        return
    beta_g = spec.beta_grad if spec.beta != 0.0 else 0.0
    coef_a = torch.where(valid, (1.0 + beta_g) * sigma / num, 0.0)  # (1 + beta') Sigma / num
    coef_b = torch.where(valid, -beta_g * sigma / den, 0.0)  # -beta' Sigma / den
    _symmetric_gradient(Z, spec, layout, packed, posval, coef_a, coef_b, out.dZ)
