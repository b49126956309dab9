"""Who is a positive and who is a negative of whom: the sets of eq. (3), and the spec the kernels read.

Columns are the candidates of every anchor: the ``N = V * B`` batch rows (view-major, row ``r = v * B + i``)
followed by the ``K`` rows of a memory (``N .. N + K - 1``), which are never anchors and are each their
own instance. Two columns *share a class* when their integer labels are equal, or when some column of
their multi-hot labels is 1 in both (a memory row without labels has no class). Then, for an anchor ``r``:

* ``P(r)``, ``"views"``: the other rows of its instance; ``"labels"``: every other column of its
  instance or sharing a class with it.
* ``N(r)``: every column but the ones :class:`Negatives` excludes: ``"unsupervised"`` its instance;
  ``"supervised"`` its instance and every column sharing a class with it; ``"all"`` (SupCon) ``r`` itself.

Integer labels on every column give one ``(C, K)`` table of the columns of each class, built once per
call with tensor ops (the fast path). Multi-hot labels, or a memory without labels under a set that
uses them, give per-tile tables read off the ``(t, columns)`` mask of shared classes ("dense").
The generic path reads the same sets as ``(t, columns)`` masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

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


def _other_views(rows: Tensor, batch: int, views: int) -> Tensor:
    """The columns of the other views of each row in ``rows``, ascending (view ``j`` below the row's own view,
    then ``j + 1``): tensor ops only, no mask indexing (no host sync). Shape ``(t,)`` -> ``(t, V - 1)``."""
    view_ids = torch.arange(views - 1, device=rows.device)[None, :]
    other = view_ids + (view_ids >= (rows // batch)[:, None]).long()  # (t, V - 1)
    return other * batch + (rows % batch)[:, None]


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


def _relation(
    B: int, V: int, labels: Tensor | None, memory: tuple | None, dtype: torch.dtype, device, *, uses_labels: bool
) -> _Relation:
    """Instances and classes of the batch rows (view-major) followed by the memory rows."""
    rows = V * B
    K = 0 if memory is None else memory[0].shape[0]
    instance = torch.arange(rows, device=device) % B
    if K:
        instance = torch.cat([instance, B + torch.arange(K, device=device)])
    relation = _Relation(rows=rows, cols=rows + K, instance=instance)
    if not uses_labels:
        return relation
    memory_labels = memory[1] if memory is not None else None
    if labels.dim() == 2:  # multi-hot
        multi = labels.repeat(V, 1)
        if K:
            multi = torch.cat(
                [multi, memory_labels if memory_labels is not None else multi.new_zeros(K, multi.shape[1])]
            )
        relation.multi = multi.to(dtype)
        return relation
    relation.labels = labels.repeat(V)
    if K:
        relation.labels = torch.cat([relation.labels, memory_labels if memory_labels is not None else instance[rows:]])
        if memory_labels is None:  # memory rows without a class
            relation.has_class = torch.arange(rows + K, device=device) < rows
    return relation


@dataclass(frozen=True)
class Negatives:
    """``N(r)``, one kind of negatives: every column but those it excludes for the anchor ``r``, read as a count,
    as a table of the excluded columns (the fused path) or as a mask (the generic path). The one place that
    says which columns are negatives.

    ``excludes``: ``"self"`` (``r`` alone: SupCon's every other row), ``"instance"`` (the rows of ``r``'s sample)
    or ``"classes"`` (those and every column sharing a class with ``r``).
    """

    name: str
    excludes: str

    @property
    def uses_labels(self) -> bool:
        return self.excludes == "classes"

    def count(self, relation: _Relation, views: int, share_count: Tensor | None) -> Tensor:
        """``|N(r)|`` for every row; ``share_count`` (N,): the columns of each row's instance or classes, itself
        included (needed when :attr:`uses_labels`). Shape ``(N,)`` long."""
        if self.excludes == "classes":
            return relation.cols - share_count
        excluded = 1 if self.excludes == "self" else views
        return torch.full((relation.rows,), relation.cols - excluded, dtype=torch.long, device=relation.instance.device)

    def excluded_width(self, share_count: Tensor) -> Tensor:
        """The most excluded columns of an anchor under dense sets (a table of those is read off a mask)."""
        return share_count if self.uses_labels else torch.zeros_like(share_count)

    def excluded_columns(self, layout: _Layout, a: int, b: int, class_block: Tensor | None = None) -> Tensor:
        """The columns excluded for the anchors ``a:b`` (never negatives, ``r`` itself always among them): a
        ``(t, W)`` table, or a ``(t, cols)`` bool mask under dense sets. ``class_block``: the anchors' class
        tables when the caller has them."""
        anchors = torch.arange(a, b, device=layout.instance_columns.device)
        if self.excludes == "self":
            return anchors[:, None]
        if self.excludes == "instance":
            return layout.instance_columns[a:b]
        if layout.relation.dense:
            return layout.relation.shares(anchors)
        return _class_block(layout, a, b) if class_block is None else class_block

    def mask(self, relation: _Relation, start: int, stop: int) -> Tensor:
        """``N(r)`` of the anchors ``start:stop``. Shape: ``(stop - start, cols)`` bool."""
        anchors = torch.arange(start, stop, device=relation.instance.device)
        if self.excludes == "self":
            return anchors[:, None] != torch.arange(relation.cols, device=anchors.device)[None, :]
        if self.excludes == "instance":
            return relation.instance[anchors][:, None] != relation.instance[None, :]
        return relation.shares(anchors).logical_not_()


#: the kinds of negatives by name (``"all"``: SupCon's, not an option of contrastive_loss)
NEGATIVE_SETS = {
    kind.name: kind
    for kind in (Negatives("unsupervised", "instance"), Negatives("supervised", "classes"), Negatives("all", "self"))
}


@dataclass
class _Spec:
    """Everything the block computations need (hyper-parameters + the sets)."""

    batch: int  # B
    views: int  # V
    rows: int  # N = V * B anchors
    cols: int  # N + K columns (the batch rows, then K memory rows)
    relation: _Relation  # instances and classes of the columns
    positives: str  # "views" | "labels"
    negatives: Negatives
    inv_t: float
    tau_plus: float
    valid: Tensor  # (N,) bool
    log_M: Tensor  # (N,)
    num_neg: Tensor  # (N,) |N(r)|
    chunk: int
    beta: float = 0.0  # slope of log w in g (built-ins)
    beta_grad: float = 0.0  # beta, or 0 when the weights are detached
    log_threshold: float = -math.inf
    pair: str = "softplus"  # the pair term: eq. (3) ("softplus") or SupCon's -log softmax ("linear")
    shift: float | None = None  # constant log-sum-exp shift (fused path), None: each row's max
    num_pairs: int = 0  # valid (anchor, positive) pairs, on the host
    log_M_min: float = 0.0  # a lower bound of log_M, on the host

    def pair_floor(self) -> float:
        """A lower bound of ``log M + log E(r) - g(r, p)`` over unit rows (``g`` and ``log E`` at least
        ``-1 / temperature``, ``g`` at most ``1 / temperature``): what :func:`~hscl.losses.pairs.pair_terms`
        may assume when the shift is the constant one (the rows are normalised)."""
        return self.log_M_min - 2.0 * self.inv_t if self.shift is not None else -math.inf


def _set_sizes(
    views: int,
    relation: _Relation,
    groups: tuple | None,
    share_count: Tensor | None,
    positives: str,
    negatives: Negatives,
) -> tuple[Tensor, Tensor]:
    """``|P(r)|`` and ``|N(r)|`` for every row, from the class sizes of :func:`_label_groups` over the
    columns (``groups``) or the counts of columns sharing a class (``share_count``, the dense form).

    Shape: returns two ``(V*B,)`` long tensors.
    """
    rows, device = relation.rows, relation.instance.device
    if groups is not None:
        col_class, _, counts = groups
        share_count = counts[col_class[:rows]]  # (N,) columns of the class of each row, itself included
    if positives == "views":
        num_pos = torch.full((rows,), views - 1, dtype=torch.long, device=device)
    else:
        num_pos = share_count - 1
    return num_pos, negatives.count(relation, views, share_count)


@dataclass
class _Layout:
    """Column tables of the batch (anchors in row order). Shapes: ``(N,)`` per row unless stated;
    ``C`` classes, ``K`` = columns in the largest class."""

    instance_columns: Tensor  # (N, V) the rows of the same sample, self included
    view_columns: Tensor | None  # (N, V - 1) the same without self (positives="views")
    relation: _Relation
    groups: tuple[Tensor, Tensor, Tensor] | None  # _label_groups of the column labels (class tables)
    row_class: Tensor | None  # class index of each row
    shape_t: Tensor  # (2,) on the device: [largest class, classes], or [positive width, excluded width]
    width: int = 0  # table width, set once per call by the caller's one synchronisation
    class_columns: Tensor | None = None  # (C, K) the columns of each class, padded by repeating one
    class_inside: Tensor | None = None  # (C, K) which entries of class_columns are real
    self_index: Tensor | None = None  # position of each row in its class's table
    pos_width: int = 0  # dense: the most positives of an anchor
    nonneg_width: int = 0  # dense: the most excluded columns of an anchor


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
    instance_columns = torch.arange(V, device=device)[None, :] * B + (rows % B)[:, None]  # (N, V)
    view_columns = _other_views(rows, B, V) if V > 1 else None
    row_class = None
    shape_t = torch.zeros(2, dtype=torch.long, device=device)
    if share_count is not None:
        pos = share_count - 1 if spec.positives == "labels" else torch.zeros_like(share_count)
        shape_t = torch.stack([pos.max(), spec.negatives.excluded_width(share_count).max()])
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


def _tables(spec: _Spec, layout: _Layout, a: int, b: int, dtype: torch.dtype) -> _Tables:
    """The excluded and the positive columns of the anchors ``a:b``."""
    if layout.relation.dense and spec.positives == "labels":
        anchors = torch.arange(a, b, device=layout.instance_columns.device)
        share = layout.relation.shares(anchors)  # (t, cols)
        nonneg = share.clone() if spec.negatives.uses_labels else spec.negatives.excluded_columns(layout, a, b)
        share[torch.arange(b - a, device=share.device), anchors] = False  # an anchor is not its own positive
        pos, inside = _mask_table(share, layout.pos_width, anchors)
        return _Tables(nonneg, pos, inside.to(dtype))
    block = _class_block(layout, a, b) if layout.class_columns is not None else None
    nonneg = spec.negatives.excluded_columns(layout, a, b, block)
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


def _positive_mask(spec: _Spec, start: int, stop: int) -> Tensor:
    """``P(r)`` restricted to valid anchors, for ``positives="labels"`` (the generic path). Shape ``(c, cols)``
    bool."""
    anchors = torch.arange(start, stop, device=spec.relation.instance.device)
    mask = spec.relation.shares(anchors)
    mask[torch.arange(stop - start, device=mask.device), anchors] = False
    mask &= spec.valid[start:stop, None]
    return mask
