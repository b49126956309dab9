"""Who is a positive and who is a negative of whom: the sets of eq. (3) as column tables (fused path) and
as masks (generic path).

Columns are the candidates of every anchor: the ``N = V * B`` batch rows (view-major, row ``r = v * B + i``)
followed by the ``K`` rows of a memory (``N .. N + K - 1``), which are never anchors and are each their
own instance. Two columns *share a class* when their integer labels are equal, or when some column of
their multi-hot labels is 1 in both (a memory row without labels has no class). Then, for an anchor ``r``:

* ``P(r)``, ``"views"``: the other rows of its instance; ``"labels"``: every other column of its
  instance or sharing a class with it.
* ``N(r)``, ``"unsupervised"``: every column of another instance; ``"supervised"``: every column of
  another instance sharing no class; ``"all"`` (SupCon): every column but ``r``.

Integer labels on every column give one ``(C, K)`` table of the columns of each class, built once per
call with tensor ops (the fast path). Multi-hot labels, or a memory without labels under a set that
uses them, give per-tile tables read off the ``(t, columns)`` mask of shared classes ("dense").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hscl.losses.core import _Spec

#: the column tables of an anchor block are built for row tiles of at most this many entries
#: (``None``: an eighth of the block's ``c x columns``), so they never outgrow the (c, columns) buffers;
#: a block of one tile keeps its tables from the forward pass to the gradient, others rebuild them
_PAIR_TILE_ELEMENTS: int | None = None


def _label_groups(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Class index (0 .. C - 1 by ascending label) and rank inside its class of every entry, and the
    class sizes (shape ``(n,)``, 0 past ``C``), from one stable sort: tensor ops only, no host sync.

    Shape: labels ``(n,)``; returns three ``(n,)`` long tensors.
    """
    n, device = labels.shape[0], labels.device
    sorted_labels, order = torch.sort(labels, stable=True)
    starts_class = torch.ones(n, dtype=torch.bool, device=device)
    starts_class[1:] = sorted_labels[1:] != sorted_labels[:-1]
    class_sorted = torch.cumsum(starts_class, 0) - 1  # (n,) class of each sorted entry
    counts = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, class_sorted, torch.ones_like(order))
    rank_sorted = torch.arange(n, device=device) - (torch.cumsum(counts, 0) - counts)[class_sorted]
    entry_class = torch.empty_like(order).scatter_(0, order, class_sorted)
    entry_rank = torch.empty_like(order).scatter_(0, order, rank_sorted)
    return entry_class, entry_rank, counts


@dataclass
class _Relation:
    """Instances and classes of the columns (batch rows, then memory rows)."""

    rows: int  # N anchors
    cols: int  # N + K columns
    instance: Tensor  # (cols,) instance id: r % B for batch rows, B + k for memory row k
    labels: Tensor | None = None  # (cols,) integer class of each column
    has_class: Tensor | None = None  # (cols,) bool, with integer labels: False for memory rows without labels
    multi: Tensor | None = None  # (cols, C) 0/1 in the compute dtype: multi-hot labels

    @property
    def dense(self) -> bool:
        """Sets read off masks (multi-hot labels, or unlabelled columns) instead of class tables."""
        return self.multi is not None or self.has_class is not None

    def shares(self, rows: Tensor) -> Tensor:
        """``(t, cols)`` bool: column ``s`` is of the instance of anchor ``rows[i]`` or shares a class with it."""
        same = self.instance[rows][:, None] == self.instance[None, :]
        if self.multi is not None:
            share = (self.multi[rows] @ self.multi.T) > 0.5
        elif self.labels is not None:
            share = self.labels[rows][:, None] == self.labels[None, :]
            if self.has_class is not None:
                share &= self.has_class[None, :]
        else:
            return same
        return share.logical_or_(same)

    def share_counts(self, block: int) -> Tensor:
        """``(N,)`` columns of each anchor's instance or sharing a class with it (itself included)."""
        device = self.instance.device
        parts = [
            self.shares(torch.arange(a, min(self.rows, a + block), device=device)).sum(1)
            for a in range(0, self.rows, block)
        ]
        return torch.cat(parts)


@dataclass
class _Layout:
    """Column tables of the batch (anchors in row order). Shapes: ``(N,)`` per row unless stated;
    ``C`` classes, ``K`` = columns in the largest class."""

    instance_columns: Tensor  # (N, V) the rows of the same sample, self included
    view_columns: Tensor | None  # (N, V - 1) the same without self (positives="views")
    relation: _Relation
    groups: tuple[Tensor, Tensor, Tensor] | None  # _label_groups of the column labels (class tables)
    row_class: Tensor | None  # class index of each row
    shape_t: Tensor  # (2,) on the device: [largest class, classes], or [positive width, non-negative width]
    width: int = 0  # table width, set once per call by the caller's one synchronisation
    class_columns: Tensor | None = None  # (C, K) the columns of each class, padded by repeating one
    class_inside: Tensor | None = None  # (C, K) which entries of class_columns are real
    self_index: Tensor | None = None  # position of each row in its class's table
    pos_width: int = 0  # dense: the most positives of an anchor
    nonneg_width: int = 0  # dense: the most non-negatives of an anchor


def _make_layout(
    spec: _Spec, relation: _Relation, groups: tuple[Tensor, Tensor, Tensor] | None, share_count: Tensor | None
) -> _Layout:
    """The per-row tables, with tensor ops only (no host sync).

    Class tables from ``groups`` (:func:`_label_groups` of the column labels) when the sets use integer
    labels of every column; the dense form from ``share_count`` (:meth:`_Relation.share_counts`).
    """
    N, B, V = spec.rows, spec.batch, spec.views
    device = relation.instance.device
    rows = torch.arange(N, device=device)
    view_ids = torch.arange(V, device=device)
    instance_columns = view_ids[None, :] * B + (rows % B)[:, None]  # (N, V)
    view_columns = None
    if V > 1:  # the other views of each row, ascending: view j < own, then j + 1 (no mask indexing: no sync)
        other = view_ids[None, : V - 1] + (view_ids[None, : V - 1] >= (rows // B)[:, None]).long()  # (N, V - 1)
        view_columns = other * B + (rows % B)[:, None]
    row_class = None
    shape_t = torch.zeros(2, dtype=torch.long, device=device)
    if share_count is not None:
        pos = share_count - 1 if spec.positives == "labels" else torch.zeros_like(share_count)
        nonneg = share_count if spec.negatives == "supervised" else torch.zeros_like(share_count)
        shape_t = torch.stack([pos.max(), nonneg.max()])
    elif groups is not None:
        col_class, _, counts = groups
        row_class = col_class[:N]
        shape_t = torch.stack([counts.max(), (counts > 0).sum()])
    return _Layout(instance_columns, view_columns, relation, groups, row_class, shape_t)


def _finish_layout(layout: _Layout, first: int, second: int) -> None:
    """The (C, K) class tables (or the dense widths), once the host knows their shape (the one sync)."""
    if layout.relation.dense:
        layout.pos_width, layout.nonneg_width = max(first, 1), max(second, 1)
        layout.width = max(layout.pos_width, layout.nonneg_width)
        return
    largest, classes = first, second
    layout.width = largest
    if layout.groups is None:
        return
    col_class, col_rank, counts = layout.groups
    cols, device = col_class.shape[0], col_class.device
    table = torch.zeros(classes, max(largest, 1), dtype=torch.long, device=device)
    table[col_class, col_rank] = torch.arange(cols, device=device)  # (C, K) ascending columns
    inside = torch.arange(table.shape[1], device=device)[None, :] < counts[:classes, None]
    layout.class_columns = torch.where(inside, table, table[:, :1])  # padding repeats a member
    layout.class_inside = inside
    layout.self_index = col_rank[: layout.instance_columns.shape[0]]


@dataclass
class _Tables:
    """Column tables of the anchors ``a:b`` (``t = b - a`` rows); padded entries repeat a real
    column of the same set (or the anchor itself, with weight 0)."""

    nonneg: Tensor  # (t, W) columns that are not negatives (the class, the views, or self), or a (t, cols) bool mask
    pos: Tensor  # (t, K) columns of the positives
    real: Tensor | None  # (t, K) float: 1 on real positives (not padding, not self); None: all real


def _class_block(layout: _Layout, a: int, b: int) -> Tensor:
    """(t, K) the columns of the class of each anchor ``a:b``."""
    return layout.class_columns.index_select(0, layout.row_class[a:b])


def _mask_table(mask: Tensor, width: int, pad: Tensor) -> tuple[Tensor, Tensor]:
    """The columns where ``mask`` (t, cols) is True, ascending and padded with ``pad`` (t,) to ``width``,
    and which entries are real. Tensor ops only."""
    t, cols = mask.shape
    slot = torch.where(mask, mask.cumsum(1) - 1, width)  # members to their rank, the rest to a spare slot
    table = pad[:, None].expand(t, width + 1).clone()
    table.scatter_(1, slot, torch.arange(cols, device=mask.device).expand(t, cols))
    inside = torch.arange(width, device=mask.device)[None, :] < mask.sum(1, keepdim=True)
    return table[:, :width], inside


def _nonneg(spec: _Spec, layout: _Layout, a: int, b: int, block: Tensor | None = None) -> Tensor:
    """(t, W) the columns that are not negatives of the anchors ``a:b`` (the class, the views, or self); for
    the dense sets a (t, cols) bool mask instead."""
    if spec.negatives == "supervised":
        if layout.relation.dense:
            return layout.relation.shares(torch.arange(a, b, device=layout.instance_columns.device))
        return _class_block(layout, a, b) if block is None else block
    if spec.negatives == "unsupervised":
        return layout.instance_columns[a:b]
    return torch.arange(a, b, device=layout.instance_columns.device)[:, None]  # "all": all rows but self


def _tables(spec: _Spec, layout: _Layout, a: int, b: int, dtype: torch.dtype) -> _Tables:
    if layout.relation.dense and spec.positives == "labels":
        anchors = torch.arange(a, b, device=layout.instance_columns.device)
        share = layout.relation.shares(anchors)  # (t, cols)
        nonneg = share.clone() if spec.negatives == "supervised" else None  # a (t, cols) mask
        share[torch.arange(b - a, device=share.device), anchors] = False  # an anchor is not its own positive
        pos, inside = _mask_table(share, layout.pos_width, anchors)
        if nonneg is None:
            nonneg = _nonneg(spec, layout, a, b)
        return _Tables(nonneg, pos, inside.to(dtype))
    block = _class_block(layout, a, b) if layout.class_columns is not None else None
    nonneg = _nonneg(spec, layout, a, b, block)
    if spec.positives == "views":
        return _Tables(nonneg, layout.view_columns[a:b], None)
    real = layout.class_inside.to(dtype).index_select(0, layout.row_class[a:b])
    real.scatter_(1, layout.self_index[a:b, None], 0.0)  # an anchor is not its own positive
    return _Tables(nonneg, block, real)


def _positive_width(spec: _Spec, layout: _Layout) -> int:
    """Columns of the positive table: ``V - 1`` other views, or the largest label block."""
    if spec.positives == "views":
        return spec.views - 1
    return layout.pos_width if layout.relation.dense else max(layout.width, 1)


def _tiles(spec: _Spec, layout: _Layout, start: int, stop: int) -> list[tuple[int, int]]:
    """Row tiles of the anchor block whose tables have at most ``_PAIR_TILE_ELEMENTS`` entries."""
    c = stop - start
    budget = _PAIR_TILE_ELEMENTS if _PAIR_TILE_ELEMENTS is not None else max(1, c * spec.cols // 8)
    step = max(1, min(c, budget // max(layout.width, spec.views, 1)))
    return [(a, min(stop, a + step)) for a in range(start, stop, step)]


# --------------------------------------------------------------------------------------------
# masks of the generic path (block of anchors start:stop against every column)


def _negative_mask(spec: _Spec, start: int, stop: int) -> Tensor:
    """``N(r)`` for the anchors ``start:stop``. Shape: ``(stop - start, cols)`` bool."""
    relation = spec.relation
    anchors = torch.arange(start, stop, device=relation.instance.device)
    if spec.negatives == "unsupervised":
        return relation.instance[anchors][:, None] != relation.instance[None, :]
    return relation.shares(anchors).logical_not_()


def _positive_mask(spec: _Spec, start: int, stop: int) -> Tensor:
    """``P(r)`` restricted to valid anchors, for ``positives="labels"``. Shape ``(c, cols)`` bool."""
    anchors = torch.arange(start, stop, device=spec.relation.instance.device)
    mask = spec.relation.shares(anchors)
    mask[torch.arange(stop - start, device=mask.device), anchors] = False
    mask &= spec.valid[start:stop, None]
    return mask
