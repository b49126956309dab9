"""The fused kernel for a whole batch on the CPU: half of ``g``, and one product for the gradient.

Without a memory every set is symmetric (``s`` is a negative, a positive or an excluded column of ``r`` exactly
when ``r`` is one of ``s``), and with the constant shift of unit rows so are ``e = exp(g - shift)`` and ``e^2``.
The block path of :mod:`~hscl.losses.kernel` computes every ``g(r, s)`` and two products for the gradient;
this computes the same values and gradients (the tests hold them equal) with

* ``g`` for the upper block triangle only: anchors in blocks of ``c`` rows, block ``i`` (rows ``a_i:b_i``)
  against the columns ``a_i:N``, each a ``(c, N - a_i)`` matrix in one packed buffer, so half the product.
  A row's sums over its negatives are its own block's row sums plus the column sums of the blocks above it.
* the positives in groups whose members are each other's positives (a class, or a sample's views): a
  ``(groups, K, K)`` table of ``g`` between the members, symmetric, filled from the stored triangle.
* the gradient's matrix ``G = A + A^T`` (``A(r, s) = d loss / d g(r, s)``: ``a(r) e_a + b(r) e_b`` on the
  negatives, the pair terms ``P(r, s)`` on the positives), symmetric:
  ``G(r, s) = (a(r) + a(s)) e_a + (b(r) + b(s)) e_b + P(r, s) + P(s, r)`` on the stored triangle, and
  ``dZ = G Z / t`` in one product: block ``i`` gives ``G_i Z[a_i:]`` to its rows and ``G_i^T Z_i`` below them.

It serves ``beta`` 0 or 1 (``e_a`` = ``e`` or ``e^2``) without a threshold, integer labels (or none), the scalar
reductions, and batches whose stored entries fit :data:`_SYMMETRIC_ELEMENTS`; everything else takes the block path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hscl.losses.buffers import _WORKSPACE, _Outputs, _set_columns
from hscl.losses.pairs import pair_terms
from hscl.losses.sets import _Layout, _Spec

#: at most this many entries in the buffers it keeps between calls (the packed triangle of ``g``, four tables of the
#: positives, their columns; 512 MB in float32, freed by :func:`~hscl.losses.release_workspace`): a larger batch
#: takes the block path, whose memory is ``O(block x rows)``. At 8192 rows and 10 classes: about 80 million.
_SYMMETRIC_ELEMENTS = 1 << 27

#: a block of anchors has about this many entries (``c x N``): ``c = 2**21 / N`` rows (256 at 8192 rows),
#: so that the passes over one block run from the last-level cache
_SYMMETRIC_BLOCK_ELEMENTS = 1 << 21


def _blocks(rows: int) -> list[tuple[int, int, int]]:
    """``(a, b, offset)`` of each block of anchors: its rows ``a:b`` and where its ``(b - a, 1 + rows - a)``
    matrix starts in the packed buffer (column 0 is a spare that takes what falls left of the stored triangle)."""
    c = max(1, min(rows, _SYMMETRIC_BLOCK_ELEMENTS // max(rows, 1)))
    blocks, offset = [], 0
    for a in range(0, rows, c):
        b = min(rows, a + c)
        blocks.append((a, b, offset))
        offset += (b - a) * (1 + rows - a)
    return blocks


def _packed_size(rows: int) -> int:
    """Entries of the packed buffer: every block's ``(b - a, 1 + rows - a)`` matrix."""
    a, b, offset = _blocks(rows)[-1]
    return offset + (b - a) * (1 + rows - a)


def _block_matrix(packed: Tensor, rows: int, a: int, b: int, offset: int) -> Tensor:
    """The ``(b - a, 1 + rows - a)`` matrix of the block ``a:b`` in ``packed``: the spare, then the columns ``a:``."""
    return packed[offset : offset + (b - a) * (1 + rows - a)].view(b - a, 1 + rows - a)


def _local(columns: Tensor, a: int) -> Tensor:
    """Column indices ``columns`` (t, W) in a block matrix of the anchors from ``a`` on: ``1 + column - a``, or the
    spare 0 for the columns left of ``a`` (stored in the rows of an earlier block)."""
    return (columns - (a - 1)).clamp_(min=0)


@dataclass
class _Groups:
    """The positives as groups whose members are each other's positives: the classes (``positives="labels"``
    with integer labels) or the samples (``"views"``). ``G`` groups of at most ``K`` members."""

    members: Tensor  # (G, K) the columns of each group, ascending, padded by repeating one
    slot: Tensor  # (N,) the row of each anchor in a (G * K, K) table: group * K + rank in the group
    real: Tensor  # (G * K, K) float: 1 where member k is a positive of member j (both real, k != j, j valid)
    local: Tensor  # (N, K) where each anchor's group members are in its block's matrix (_local)


def _groups(spec: _Spec, layout: _Layout, real: Tensor, local: Tensor) -> _Groups:
    """The groups of the positives, into the buffers ``real`` (G, K, K) and ``local`` (N, K) long."""
    if spec.positives == "labels":
        members, inside = layout.class_columns, layout.class_inside
        group, rank = layout.row_class, layout.self_index
    else:  # the views of sample i are the rows i, B + i, ...
        members = layout.instance_columns[: spec.batch]
        inside = torch.ones_like(members, dtype=torch.bool)
        rows = torch.arange(spec.rows, device=members.device)
        group, rank = rows % spec.batch, rows // spec.batch
    G, K = members.shape
    row_ok = (inside & spec.valid[members]).to(real.dtype)  # (G, K) a real member and a valid anchor
    torch.mul(row_ok[:, :, None], inside.to(real.dtype)[:, None, :], out=real)  # (G, K, K)
    real.diagonal(dim1=1, dim2=2).zero_()  # a member is not its own positive
    rows = torch.arange(spec.rows, device=members.device)
    start = rows - rows % (_blocks(spec.rows)[0][1])  # the first anchor of each anchor's block
    torch.index_select(members, 0, group, out=local)
    local.sub_(start[:, None] - 1).clamp_(min=0)
    return _Groups(members, group * K + rank, real.view(G * K, K), local)


def symmetric_applies(spec: _Spec, layout: _Layout, Z: Tensor, *, per_pair: bool, memory: bool) -> bool:
    """Whether :func:`symmetric_loss` serves this call (see the module's docstring)."""
    if Z.device.type != "cpu" or per_pair or memory or spec.cols != spec.rows or spec.chunk < spec.rows:
        return False
    if spec.shift is None or spec.log_threshold != -math.inf or spec.beta not in (0.0, 1.0):
        return False
    if layout.relation.dense or (spec.positives == "labels" and layout.class_columns is None):
        return False
    G, K = layout.class_columns.shape if spec.positives == "labels" else (spec.batch, spec.views)
    return _packed_size(spec.rows) + 4 * G * K * K + 2 * spec.rows * K <= _SYMMETRIC_ELEMENTS  # long: 2 each


def _upper_similarities(columns, spec, layout, groups: _Groups, packed, table, values) -> tuple[Tensor, Tensor]:
    """Block by block: ``e = exp(g - shift)`` on the negatives (0 elsewhere) into ``packed``, and the positives'
    ``g - shift`` into ``table`` (G, K, K), then whole into ``values`` (each entry below the diagonal from its
    mirror). Returns every row's sums ``num`` of ``e_a`` and ``den`` of ``e_b`` (N,)."""
    N, dtype, device = spec.rows, columns.dtype, columns.device
    num = torch.zeros(N, dtype=dtype, device=device)
    den = torch.zeros(N, dtype=dtype, device=device) if spec.beta == 1.0 else spec.num_neg.to(dtype)
    scale = torch.full((columns.shape[1],), spec.inv_t, dtype=dtype, device=device)
    scale[-1] = -spec.shift
    anchors = columns * scale  # [Z / t, -shift]: g - shift in one product
    ones = torch.ones(min(N, _blocks(N)[0][1]), dtype=dtype, device=device)
    same = spec.positives == "labels" and spec.negatives.uses_labels  # the class is positive and excluded
    K = groups.local.shape[1]
    for a, b, offset in _blocks(N):
        c = b - a
        full = _block_matrix(packed, N, a, b, offset)
        E = full[:, 1:]  # (c, N - a)
        torch.mm(anchors[a:b], columns[a:].T, out=E)  # g - shift
        full[:, 0] = 0.0  # the spare: what a positive left of a reads (replaced by its mirror below)
        local = groups.local[a:b]
        table.view(-1, K).index_copy_(0, groups.slot[a:b], full.gather(1, local))  # the stored ones are right
        excluded = local if same else _local(spec.negatives.excluded_columns(layout, a, b), a)
        E.exp_()
        _set_columns(full, excluded, 0.0)  # the excluded columns are 0 (and the spare)
        e_a = E if spec.beta == 0.0 else torch.mul(E, E, out=_WORKSPACE.get(1, c, N - a, dtype, device))
        num[a:b] += e_a.sum(1)
        num[b:] += torch.mv(e_a[:, c:].T, ones[:c])  # the rows below, whose columns a:b are stored here
        if spec.beta == 1.0:
            den[a:b] += E.sum(1)
            den[b:] += torch.mv(E[:, c:].T, ones[:c])
    upper = torch.ones(table.shape[1:], dtype=torch.bool, device=device).triu()  # member k >= member j: stored
    torch.where(upper, table, table.transpose(1, 2), out=values)
    return num, den


def _pair_values(spec, groups: _Groups, values, log_c, out: _Outputs, row_weight: Tensor | None, scratch):
    """The pair terms of every group from ``values`` (G * K, K, overwritten), into ``out``; with ``row_weight``
    (N,) also ``Sigma(r)`` and the pairs' own terms ``P(j, k) = row weight x d loss / d g`` (G * K, K)."""
    members = groups.members.reshape(-1)  # the anchor of each table row (padding: a repeated member)
    weight = groups.real if row_weight is not None else None
    terms = pair_terms(
        values, groups.real, log_c[members], spec.log_M[members], shift=spec.shift, tau_plus=spec.tau_plus,
        inv_t=spec.inv_t, linear=spec.pair == "linear", weight=weight, x_min=spec.pair_floor(), scratch=scratch,
    )  # fmt: skip
    out.anchor_sum.copy_(terms.loss.sum(1)[groups.slot])
    if row_weight is None:
        return None, None
    return terms.sigma[groups.slot] * row_weight, terms.d_g(row_weight[members])


def _symmetric_gradient(Z, spec, groups: _Groups, packed, P, both, coef_a, coef_b, dZ: Tensor) -> None:
    """``dZ = G Z / t`` from the stored triangle of ``e`` (overwritten by ``G``) and the pair terms ``P``
    (``both``: a buffer of its shape)."""
    N, dtype, device = spec.rows, Z.dtype, Z.device
    K = P.shape[1]
    torch.add(P.view(-1, K, K), P.view(-1, K, K).transpose(1, 2), out=both.view(-1, K, K))  # P(j, k) + P(k, j)
    for a, b, offset in _blocks(N):
        c = b - a
        full = _block_matrix(packed, N, a, b, offset)
        G = full[:, 1:]  # e, becomes G
        tmp = _WORKSPACE.get(1, c, N - a, dtype, device)
        if spec.beta == 0.0:  # e_a = e_b = e: G = (a(r) + a(s)) e
            G.mul_(torch.add(coef_a[a:b, None], coef_a[None, a:], out=tmp))
        else:  # e_a = e^2: G = e ((a(r) + a(s)) e + b(r) + b(s))
            torch.addcmul(coef_b[a:b, None], G, coef_a[a:b, None], out=tmp)
            G.mul_(tmp.addcmul_(G, coef_a[None, a:]).add_(coef_b[None, a:]))
        full.scatter_add_(1, groups.local[a:b], both.index_select(0, groups.slot[a:b]))  # the spare takes the rest
        dZ[a:b].addmm_(G, Z[a:])
        dZ[b:].addmm_(G[:, c:].T, Z[a:b])  # the rows below: G(s, r) = G(r, s)
    dZ.mul_(spec.inv_t)


def symmetric_loss(Z: Tensor, columns: Tensor, spec: _Spec, layout: _Layout, out: _Outputs, row_weight) -> None:
    """The statistics and pair values of the whole batch into ``out``; with ``row_weight`` (N,) the gradient
    w.r.t. the rows ``Z`` (N, d) into ``out.dZ``. ``columns``: ``[Z, 1]`` (N, d + 1)."""
    N, dtype, device = spec.rows, Z.dtype, Z.device
    G, K = layout.class_columns.shape if spec.positives == "labels" else (spec.batch, spec.views)
    table, values, first, real = (_WORKSPACE.get(slot, G * K, K, dtype, device) for slot in range(3, 7))
    groups = _groups(spec, layout, real.view(G, K, K), _WORKSPACE.get(7, N, K, torch.long, device))
    packed = _WORKSPACE.get(2, 1, _packed_size(N), dtype, device).view(-1)
    table = table.view(G, K, K).zero_()  # padding rows stay finite
    num, den = _upper_similarities(columns, spec, layout, groups, packed, table, values.view(G, K, K))
    valid = spec.valid
    log_c = torch.where(valid, torch.log(num), 0.0) - torch.where(valid, torch.log(den), 0.0)
    log_c = torch.where(valid, log_c + spec.shift, log_c)  # log E(r) (a Python float: exact in float64)
    out.log_tilted_mean.copy_(log_c)
    sigma, P = _pair_values(spec, groups, values, log_c, out, row_weight, (first, table.view(G * K, K)))
    if row_weight is None:
        return
    beta_g = spec.beta_grad if spec.beta != 0.0 else 0.0
    coef_a = torch.where(valid, (1.0 + beta_g) * sigma / num, 0.0)  # (1 + beta') Sigma / num
    coef_b = torch.where(valid, -beta_g * sigma / den, 0.0)  # -beta' Sigma / den
    _symmetric_gradient(Z, spec, groups, packed, P, table.view(G * K, K), coef_a, coef_b, out.dZ)
