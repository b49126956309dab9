"""The functional core of the loss family: :func:`contrastive_loss`, eq. (3) of the H-SCL paper.

One function computes the large-k limit of InfoNCE with a tilted negative distribution for every
combination of positives (``"views"`` or ``"labels"``), negatives (``"unsupervised"`` or
``"supervised"``) and hardening (none, :class:`~hscl.hardening.Exponential`,
:class:`~hscl.hardening.Threshold`, or any callable). The named methods (``ucl.py`` ... ``schane.py``)
are presets of it. This module holds the contract: input checks, ``M``, the reductions and :class:`LossStats`;
the sets are in ``sets.py``, the computation in ``kernel.py`` (log-linear hardenings, analytic gradient) or
``generic.py`` (other callables, autograd); its definition on one screen is ``dense.py``.

References:
    Jiang, Nguyen, Ishwar, Aeron. Supervised Contrastive Learning with Hard Negative Samples.
    arXiv 2209.00078. (eq. (3), Definition 1, eq. (4))
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021,
    arXiv 2010.04592. (H-UCL and the debiased estimator with ``tau_plus``)
    Long et al. SCHaNe, arXiv 2308.14893. (``M = |N(r)|``, per-anchor averaging)

Layout (``docs/losses.md``, "Input layout"): ``z`` has shape ``(B, V, d)``; rows are flattened view-major, row
``r = v * B + i`` is view ``v`` of sample ``i``; ``g(r, s) = z_r . z_s / temperature``.

Everything is computed in log space:
``log E(r) = logsumexp_s(g + log w) - logsumexp_s(log w)`` over the negatives ``N(r)`` and
``loss(r, p) = softplus(log M(r) - g(r, p) + log E(r))``.
"""

from __future__ import annotations

import contextlib
import math
import struct
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.hardening import AutoExponential, check_hardening, is_log_linear
from hscl.losses import _compiled
from hscl.losses._checks import (
    HardeningLike,
    MLike,
    _check_chunk_size,
    _check_labels,
    _check_M,
    _check_memory,
    _check_tau_plus,
    _check_z,
    _nonfinite_allowed,
    _ValueChecks,
)
from hscl.losses.buffers import _Outputs
from hscl.losses.generic import generic_loss, pair_index
from hscl.losses.kernel import fused_loss
from hscl.losses.sets import (
    NEGATIVE_SETS,
    Negatives,
    _finish_layout,
    _label_groups,
    _Layout,
    _make_layout,
    _relation,
    _set_sizes,
    _Spec,
)
from hscl.validation import check_choice, check_positive_real

__all__ = ["NEGATIVES", "POSITIVES", "REDUCTIONS", "LossStats", "contrastive_loss"]

POSITIVES = ("views", "labels")
NEGATIVES = ("unsupervised", "supervised")
REDUCTIONS = ("mean", "sum", "none", "anchor_mean")


# --------------------------------------------------------------------------------------------
# statistics


@dataclass
class LossStats:
    """Per-anchor statistics of one forward of :func:`contrastive_loss` (all detached).

    Shapes: every per-anchor tensor has shape ``(V*B,)`` in row order ``r = v * B + i``.

    Attributes:
        num_positives: ``|P(r)|``.
        num_negatives: ``|N(r)|`` (before any threshold).
        num_kept: negatives with non-zero weight (``|N(r)|`` unless a threshold or callable zeroes
            some; after a fallback it is ``|N(r)|`` again).
        valid: ``P(r)`` and ``N(r)`` both non-empty; only valid anchors contribute.
        fallback: a threshold (or callable) gave every negative of ``r`` weight 0, so ``r`` fell
            back to the untilted distribution ``w = 1``.
        log_tilted_mean: ``log E(r)``, the log of the tilted mean of ``exp(g)`` over ``N(r)``
            (0 where not valid).
        log_M: ``log M(r)`` used for each anchor (0 where not valid).
        anchor_loss: mean of ``loss(r, p)`` over ``p in P(r)`` (0 where not valid).
        pair_index: ``(num_pairs, 2)`` rows ``(r, p)`` in the order of ``reduction="none"``;
            only filled for that reduction.
    """

    num_positives: Tensor
    num_negatives: Tensor
    num_kept: Tensor
    valid: Tensor
    fallback: Tensor
    log_tilted_mean: Tensor
    log_M: Tensor
    anchor_loss: Tensor
    pair_index: Tensor | None = None

    @property
    def num_valid_anchors(self) -> int:
        return int(self.valid.sum())

    @property
    def num_pairs(self) -> int:
        """Number of valid (anchor, positive) pairs."""
        return int(self.num_positives[self.valid].sum())

    @property
    def num_fallbacks(self) -> int:
        return int(self.fallback.sum())


# --------------------------------------------------------------------------------------------
# the sets, M, the reductions


def _log_M(M: MLike, rows: int, valid: Tensor, num_neg: Tensor, dtype: torch.dtype, device, cols: int = 0) -> Tensor:
    """``log M(r)`` per row: ``cols - 2`` (``M=None``; ``cols`` = the rows plus the memory's), a constant, or
    ``|N(r)|`` (``"count"``). Shape ``(N,)``."""
    if M is None:
        cols = cols or rows
        if cols - 2 <= 0:  # M = 0: every pair term is log(1 + 0) = 0; contrastive_loss marks no anchor valid
            return torch.zeros(rows, dtype=dtype, device=device)
        return torch.full((rows,), math.log(cols - 2), dtype=dtype, device=device)
    if M == "count":
        return torch.where(valid, torch.log(num_neg.clamp(min=1).to(dtype)), 0.0)
    return torch.full((rows,), math.log(M), dtype=dtype, device=device)


def _make_spec(
    z: Tensor,
    labels: Tensor | None,
    memory: tuple | None,
    *,
    positives: str,
    negatives: Negatives,
    M: MLike,
    temperature: float,
    tau_plus: float,
    chunk: int,
) -> tuple[_Spec, _Layout, Tensor]:
    """The sets of a call (instances and classes of the columns, their sizes, the valid anchors, ``log M``) as
    a :class:`_Spec`, their column tables (shapes still on the device) and ``|P(r)|`` (N,). Tensor ops only."""
    B, V, _ = z.shape
    rows, device, dtype = V * B, z.device, _compute_dtype(z)
    uses_labels = labels is not None and (positives == "labels" or negatives.uses_labels)
    relation = _relation(B, V, labels, memory, dtype, device, uses_labels=uses_labels)
    groups = share_count = None
    if uses_labels and relation.dense:
        share_count = relation.share_counts(chunk)
    elif uses_labels:
        groups = _label_groups(relation.labels)
    num_pos, num_neg = _set_sizes(V, relation, groups, share_count, positives, negatives)
    valid = (num_pos > 0) & (num_neg > 0)
    if M is None and relation.cols <= 2:  # M = rows - 2 = 0 (a batch of one or two rows): every term is 0
        valid = torch.zeros_like(valid)
    log_M = _log_M(M, rows, valid, num_neg, dtype, device, relation.cols)
    spec = _Spec(
        batch=B,
        views=V,
        rows=rows,
        cols=relation.cols,
        relation=relation,
        positives=positives,
        negatives=negatives,
        inv_t=1.0 / temperature,
        tau_plus=tau_plus,
        valid=valid,
        log_M=log_M,
        num_neg=num_neg,
        chunk=chunk,
        log_M_min=min(0.0, math.log(M)) if isinstance(M, float) else 0.0,  # None: log(cols - 2), or log |N(r)|
    )
    return spec, _make_layout(spec, relation, groups, share_count), num_pos


def _synchronise(
    count: Tensor, layout: _Layout, checks: _ValueChecks, *, tables: bool, solution: Tensor | None = None
) -> tuple[int, float | None]:
    """The call's one host synchronisation: ``count`` (a 0-d tensor: the pairs, or the anchors, to average over)
    with the shape of the class tables, the value checks (raising what failed) and an automatic hardening's
    ``solution`` (a float scalar, read through its bits); then the class tables, when ``tables``. Returns
    ``count`` and the solution (None without one)."""
    extra = [] if solution is None else [_float_bits(solution)]
    sizes = torch.stack([count, *layout.shape_t, *extra, *checks.flags()]).tolist()
    solved = None if solution is None else _bits_float(sizes[3], solution.dtype)
    checks.verify(sizes[3 + len(extra) :])
    if tables:
        _finish_layout(layout, sizes[1], sizes[2])
    return sizes[0], solved


def _float_bits(x: Tensor) -> Tensor:
    """A float32 or float64 scalar's bits as an int64 scalar: exact inside an integer read."""
    return x.view(torch.int64) if x.dtype == torch.float64 else x.to(torch.float32).view(torch.int32).long()


def _bits_float(bits: int, dtype: torch.dtype) -> float:
    """The float whose bits :func:`_float_bits` read."""
    if dtype == torch.float64:
        return struct.unpack("=d", struct.pack("=q", bits))[0]
    return struct.unpack("=f", struct.pack("=i", bits))[0]


def _row_weight(reduction: str, num_pos: Tensor, valid: Tensor, num_pairs: int, dtype: torch.dtype) -> Tensor:
    """Weight of each pair of anchor ``r`` in the scalar output (0 for invalid anchors). Shape ``(N,)``."""
    rows = num_pos.shape[0]
    if reduction == "mean":
        row_weight = torch.full((rows,), 1.0 / num_pairs, dtype=dtype, device=num_pos.device)
    elif reduction == "anchor_mean":
        row_weight = 1.0 / (num_pos.clamp(min=1).to(dtype) * valid.sum())
    else:
        row_weight = torch.ones(rows, dtype=dtype, device=num_pos.device)
    return row_weight * valid


def _compute_dtype(z: Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def _rows(z: Tensor, memory: tuple | None, *, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """The batch rows ``(N, d)`` (row ``r = v * B + i``) and the memory rows ``(K, d)`` (no gradient) in the
    compute dtype, L2-normalised when ``normalize``."""
    B, V, d = z.shape
    dtype = _compute_dtype(z)
    Z = z.transpose(0, 1).reshape(V * B, d).to(dtype)
    Zm = None if memory is None else memory[0].detach().to(dtype)
    if normalize:
        Z = F.normalize(Z, dim=1)
        Zm = None if Zm is None else F.normalize(Zm, dim=1)
    return Z, Zm


# --------------------------------------------------------------------------------------------
# the two paths


def _no_pairs(Z: Tensor, num_neg: Tensor, reduction: str) -> tuple[Tensor, _Outputs]:
    """An exact 0 attached to the graph, and empty statistics, for a batch without a valid pair."""
    zero = Z.sum() * 0.0
    loss = zero[None][:0] if reduction == "none" else zero
    out = _Outputs.empty(num_neg, Z, per_pair=reduction == "none", grad=False)
    if out.keys is not None:
        out.keys.append(torch.zeros(0, dtype=torch.long, device=Z.device))
    return loss, out


def _warn_no_pairs(function: str, positives: str, negatives: str, z: Tensor, labels: Tensor | None) -> None:
    B, V, _ = z.shape
    classes = f", classes={int(labels.unique(dim=0).shape[0])}" if labels is not None else ""
    warnings.warn(
        f"{function}: no valid (anchor, positive) pair in this batch (positives={positives!r}, "
        f"negatives={negatives!r}, B={B}, V={V}{classes}): every anchor lacks a positive or a negative (or "
        "M = rows - 2 is 0); the loss is 0",
        RuntimeWarning,
        stacklevel=3,
    )


def _solve_beta(z: Tensor, memory: tuple | None, spec: _Spec, hardening: AutoExponential, *, normalize: bool):
    """An automatic hardening's solution for this batch (a device scalar, read later with the call's one host
    synchronisation), on the detached similarities (see :class:`AutoExponential`): every anchor, or 8 evenly
    spaced groups of anchors holding ``hardening.max_entries`` similarities, each against the anchor's own
    ``N(r)`` (memory columns included), as the loss sees them."""
    with torch.no_grad(), _autocast_off(z.device):
        Z, Zm = _rows(z.detach(), memory, normalize=normalize)
        columns = Z if Zm is None else torch.cat([Z, Zm])
        rows, per = spec.rows, max(1, hardening.max_entries // spec.cols)
        if per >= rows:
            groups = [(0, rows)]
        else:
            n = min(8, per)
            size = per // n
            groups = [(s, s + size) for s in (round(i * (rows - size) / max(n - 1, 1)) for i in range(n))]
        g = torch.cat([(columns[a:b] * spec.inv_t) @ columns.T for a, b in groups])  # (a, cols)
        negatives = torch.cat([spec.negatives.mask(spec.relation, a, b) for a, b in groups])
        return hardening.solve(g, negatives)


def _pair_losses(
    Z: Tensor, Zm: Tensor | None, spec: _Spec, layout: _Layout, num_pos: Tensor, hardening, *, fused: bool, **flags
) -> tuple[Tensor, _Outputs]:
    """The loss of a batch with valid pairs and its statistics, by the fused kernel (log-linear hardenings) or the
    generic path. ``flags``: ``reduction``, ``normalize``, ``detach_weights``, ``chunked``."""
    row_weight = _row_weight(flags["reduction"], num_pos, spec.valid, spec.num_pairs, Z.dtype)
    per_pair, detach = flags["reduction"] == "none", flags["detach_weights"]
    if fused:
        kw = dict(hardening=hardening, detach_weights=detach, per_pair=per_pair, normalize=flags["normalize"])
        return fused_loss(Z, row_weight, spec, layout, memory=Zm, **kw)
    return generic_loss(Z, Zm, row_weight, spec, hardening, detach=detach, per_pair=per_pair, chunked=flags["chunked"])


def _loss_stats(out: _Outputs, spec: _Spec, num_pos: Tensor, *, per_pair: bool) -> LossStats:
    """The statistics of a call from its outputs; the pair index of ``reduction="none"`` (the fused kernel sorted
    its pairs by key ``r * cols + p``; the generic path lists them here)."""
    valid = spec.valid
    anchor_loss = torch.where(valid, out.anchor_sum / num_pos.clamp(min=1), 0.0)
    pairs = None
    if per_pair and out.keys is not None:
        pairs = torch.stack([out.keys[0] // spec.cols, out.keys[0] % spec.cols], 1)
    elif per_pair:
        pairs = pair_index(spec)
    return LossStats(
        num_positives=num_pos,
        num_negatives=spec.num_neg,
        num_kept=out.num_kept,
        valid=valid,
        fallback=out.fallback,
        log_tilted_mean=torch.where(valid, out.log_tilted_mean, 0.0).detach(),
        log_M=torch.where(valid, spec.log_M, 0.0),
        anchor_loss=anchor_loss.detach(),
        pair_index=pairs,
    )


# --------------------------------------------------------------------------------------------
# public functional API


def contrastive_loss(
    z: Tensor,
    labels: Tensor | None = None,
    *,
    positives: str = "views",
    negatives: str = "unsupervised",
    hardening: HardeningLike = None,
    temperature: float = 0.5,
    M: MLike = None,
    tau_plus: float = 0.0,
    normalize: bool = True,
    detach_weights: bool = False,
    reduction: str = "mean",
    chunk_size: int | None = None,
    memory: tuple[Tensor, Tensor | None] | None = None,
    return_stats: bool = False,
):
    """The H-SCL family loss, eq. (3) of Jiang et al. with a tilted negative distribution.

    For each anchor row ``r`` and positive ``p in P(r)``::

        E(r)      = sum_{s in N(r)} w(r,s) exp(g(r,s)) / sum_{s in N(r)} w(r,s),   w = eta(g)
        loss(r,p) = log(1 + M(r) * exp(-g(r,p)) * E(r))

    Implements eq. (3) of arXiv 2209.00078 (UCL, H-UCL, SCL, H-SCL), the debiased estimator of
    Robinson et al. (``tau_plus``) and SCHaNe's ``M = |N(r)|`` (``M="count"``). Its definition, step by step,
    is :func:`~hscl.losses.dense_contrastive_loss`; this computes the same values and gradients block by block.

    Args:
        z: embeddings, view ``v`` of sample ``i`` at ``z[i, v]``.
        labels: class ids ``(B,)``, or multi-hot ``(B, C)`` (bool or 0/1: two rows share a class when
            some column is 1 in both); needed when ``positives="labels"`` or ``negatives="supervised"``.
        positives: ``"views"`` (other views of the same sample) or ``"labels"`` (every other row of
            the same class).
        negatives: ``"unsupervised"`` (every row of another sample) or ``"supervised"`` (every row
            of another class).
        hardening: ``None``, :class:`~hscl.hardening.Exponential`, :class:`~hscl.hardening.Threshold`,
            or a callable ``eta(g) -> weights`` (same shape, non-negative, non-decreasing); fused when it
            declares :attr:`~hscl.hardening.Hardening.log_linear` (the built-ins and their subclasses do).
        temperature: gamma; ``g = z_r . z_s / temperature``. Must be > 0.
        M: ``None`` for ``V*B - 2``, a number > 0, or ``"count"`` for ``|N(r)|``.
        tau_plus: class prior for H-UCL's debiasing, in ``[0, 1)``; unsupervised negatives only.
        normalize: L2-normalise each row first (the paper's ``f: X -> S^{d-1}``).
        detach_weights: treat ``w`` as constants in the backward.
        reduction: ``"mean"`` over valid pairs, ``"sum"``, ``"none"`` (per-pair values in row-major
            ``(r, p)`` order, see ``LossStats.pair_index``) or ``"anchor_mean"`` (mean over each
            anchor's positives, then over anchors: SCHaNe's averaging).
        chunk_size: process anchors in blocks of this many rows (memory ``O(chunk_size x rows)``,
            same values and gradients). ``None``: one block (on the CPU, blocks sized for the cache).
        memory: ``(z_mem (K, d), labels_mem)`` with ``labels_mem`` ``(K,)``, ``(K, C)`` (the kind of
            ``labels``) or None: K more rows that join every anchor's candidates by the same rules, never
            anchors, without gradient, each its own instance (normalised like ``z``). ``M=None`` is then
            ``V*B + K - 2``; ``LossStats.pair_index`` numbers memory row ``k`` as column ``V*B + k``.
        return_stats: also return a :class:`LossStats`.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` or ``(B, C)``; output: scalar, or ``(num_pairs,)`` for ``"none"``.

    A batch without a single valid pair (e.g. one class with supervised negatives) gives an exact
    0 attached to the graph and a ``RuntimeWarning``; never NaN. The loss is computed in float32
    (float64 for float64 input) with autocast disabled, in log space. A non-finite ``z`` is an error,
    except under float16 (``torch.autocast(dtype=torch.float16)`` or a float16 ``z``): there it gives
    a non-finite loss and gradient, so that a gradient scaler skips the step.

    Cost: the counts and column tables are built once per call with tensor ops; the call has one
    host synchronisation, which reads the table shapes together with the value checks (the finiteness
    of ``z``, skipped under float16, and of a memory) and an :class:`~hscl.hardening.AutoExponential`'s
    device-side solution; each block of anchors is then tensor ops only (a callable
    hardening adds one per block: its weights are checked). For the scalar reductions the gradient is
    computed in the forward (when ``z`` requires it), so the backward is a scaling.

    Under ``torch.compile`` (``fullgraph=True`` too) the call is one custom operator running this eager call:
    the same values, gradients, statistics and errors (``docs/losses.md``, "Inside torch.compile").
    """
    checks = _ValueChecks()  # the value checks, read with the call's one host synchronisation
    z = _check_z(z, allow_nonfinite=_nonfinite_allowed(z), checks=checks)
    positives = check_choice("positives", positives, POSITIVES)
    negatives = check_choice("negatives", negatives, NEGATIVES)
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    temperature = check_positive_real("temperature", temperature)
    M = _check_M(M)
    tau_plus = _check_tau_plus(tau_plus, negatives)
    hardening = check_hardening(hardening)
    chunk_size = _check_chunk_size(chunk_size)
    B, V, _ = z.shape
    uses = (('positives="labels"', positives == "labels"), ('negatives="supervised"', negatives == "supervised"))
    needs = [need for need, used in uses if used]
    labels = _check_labels(labels, B, z.device, " and ".join(needs) or None, checks)
    memory = _check_memory(memory, z, labels, checks)
    if positives == "views" and V < 2:
        raise ValueError(
            'positives="views" needs at least 2 views per sample (z of shape (B, V>=2, d)), '
            f'got V={V}; use positives="labels" with labels for single-view batches'
        )
    if _compiled.AVAILABLE and torch.compiler.is_compiling():  # one custom operator running this eager call
        args = (positives, negatives, temperature, M, tau_plus, normalize, detach_weights, reduction, chunk_size)
        loss, fields = _compiled.traced_call("contrastive", z, labels, memory, hardening, args)
        return (loss, LossStats(**fields)) if return_stats else loss
    spec, layout, num_pos = _make_spec(
        z, labels, memory, positives=positives, negatives=NEGATIVE_SETS[negatives], M=M, temperature=temperature,
        tau_plus=tau_plus, chunk=chunk_size or V * B,
    )  # fmt: skip
    fused = hardening is None or is_log_linear(hardening)  # declared log-linear (built-ins, subclasses): fused
    auto = isinstance(hardening, AutoExponential)
    solution = _solve_beta(z, memory, spec, hardening, normalize=normalize) if auto else None
    spec.num_pairs, solved = _synchronise((num_pos * spec.valid).sum(), layout, checks, tables=fused, solution=solution)
    if auto and spec.num_pairs:  # the batch's beta, read with the counts
        hardening.accept(solved)
    with _autocast_off(z.device):
        Z, Zm = _rows(z, memory, normalize=normalize and not (fused and spec.num_pairs))  # fused: normalises inside
        if spec.num_pairs == 0:
            _warn_no_pairs("contrastive_loss", positives, negatives, z, labels)
            loss, out = _no_pairs(Z, spec.num_neg, reduction)
        else:
            flags = dict(reduction=reduction, normalize=normalize, detach_weights=detach_weights)
            loss, out = _pair_losses(Z, Zm, spec, layout, num_pos, hardening, fused=fused, **flags,
                                     chunked=chunk_size is not None)  # fmt: skip
    if not return_stats:
        return loss
    return loss, _loss_stats(out, spec, num_pos, per_pair=reduction == "none")


_compiled.register("contrastive", contrastive_loss)
