"""The contrastive loss family: UCL, H-UCL, SCL, H-SCL, SupCon and SCHaNe.

One functional core, :func:`contrastive_loss`, computes eq. (3) of the H-SCL paper (the large-k
limit of InfoNCE with a tilted negative distribution) for every combination of positives
(``"views"`` or ``"labels"``), negatives (``"unsupervised"`` or ``"supervised"``) and hardening
(none, :class:`~hscl.hardening.Exponential`, :class:`~hscl.hardening.Threshold`, or any callable).
The named methods are presets of it; :func:`supcon_loss` is Khosla et al.'s L_out.

References:
    Jiang, Nguyen, Ishwar, Aeron. Supervised Contrastive Learning with Hard Negative Samples.
    arXiv 2209.00078. (eq. (3), Definition 1, eq. (4))
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
    (H-UCL and the debiased estimator with ``tau_plus``)
    Khosla et al. Supervised Contrastive Learning. NeurIPS 2020. (SupCon, L_out)
    Long et al. SCHaNe, arXiv 2308.14893. (``M = |N(r)|``, per-anchor averaging)

Layout (see ``LOSSES.md``): ``z`` has shape ``(B, V, d)``; rows are flattened view-major, row
``r = v * B + i`` is view ``v`` of sample ``i``; ``g(r, s) = z_r . z_s / temperature``.

Everything is computed in log space:
``log E(r) = logsumexp_s(g + log w) - logsumexp_s(log w)`` over the negatives ``N(r)`` and
``loss(r, p) = softplus(log M(r) - g(r, p) + log E(r))``. The built-in hardenings go through a
fused autograd function with an analytic backward that recomputes each block of anchors, so memory
is ``O(chunk_size x rows)`` in the forward and the backward alike.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import inspect
import math
import numbers
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.hardening import Exponential, Hardening, Threshold

__all__ = [
    "HSCL",
    "HUCL",
    "LOSSES",
    "SCL",
    "UCL",
    "ContrastiveLoss",
    "LossStats",
    "SCHaNe",
    "SupCon",
    "available_losses",
    "contrastive_loss",
    "get_loss",
    "supcon_loss",
]

POSITIVES = ("views", "labels")
NEGATIVES = ("unsupervised", "supervised")
REDUCTIONS = ("mean", "sum", "none", "anchor_mean")

HardeningLike = Hardening | Callable[[Tensor], Tensor] | None
MLike = float | int | str | None

# softplus(x) is computed exactly as log1p(exp(x)) below this and as x above it; at 40 the
# difference is below 5e-18, i.e. exact in float64 and exp(40) does not overflow float32.
_SOFTPLUS_LINEAR_FROM = 40.0


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
# validation


def _check_z(z: object) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (B, V, d), got {type(z).__name__}")
    if z.dim() != 3:
        raise ValueError(
            f"z must have shape (B, V, d) (samples, views, features), got a {z.dim()}-d tensor of "
            f"shape {tuple(z.shape)}; for a single view use z.unsqueeze(1)"
        )
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    if z.shape[0] < 1 or z.shape[1] < 1 or z.shape[2] < 1:
        raise ValueError(f"z must have B >= 1, V >= 1, d >= 1, got shape {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).sum())
        raise ValueError(
            f"z contains {bad} non-finite value(s) (NaN or inf); the encoder output is already broken "
            f"before the loss (check the learning rate, the input data and mixed-precision settings)"
        )
    return z


def _check_labels(labels: object, batch: int, device: torch.device, required_for: str | None) -> Tensor | None:
    if labels is None:
        if required_for is not None:
            raise ValueError(f"labels are required for {required_for}; pass labels of shape (B,) = ({batch},)")
        return None
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype (e.g. torch.long), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape (B,) = ({batch},) to match z of B={batch} samples, got shape {tuple(labels.shape)}"
        )
    return labels.to(device=device, dtype=torch.long)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_positive_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number > 0, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value}")
    return value


def _check_M(M: object) -> MLike:
    if M is None or M == "count":
        return M  # type: ignore[return-value]
    if isinstance(M, str):
        raise ValueError(f"M must be None (rows - 2), a number > 0, or 'count' (|N(r)|), got {M!r}")
    return _check_positive_real("M", M)


def _check_tau_plus(tau_plus: object, negatives: str) -> float:
    if isinstance(tau_plus, bool) or not isinstance(tau_plus, numbers.Real):
        raise TypeError(f"tau_plus must be a real number in [0, 1), got {type(tau_plus).__name__}")
    tau_plus = float(tau_plus)
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1) (the class prior of H-UCL's debiasing), got {tau_plus}")
    if tau_plus > 0 and negatives != "unsupervised":
        raise ValueError(
            "tau_plus > 0 (debiasing) corrects for false negatives among unsupervised negatives only; "
            f"it cannot be used with negatives={negatives!r}"
        )
    return tau_plus


def _check_hardening(hardening: object) -> HardeningLike:
    if hardening is None or isinstance(hardening, Hardening) or callable(hardening):
        return hardening  # type: ignore[return-value]
    raise TypeError(
        "hardening must be None, hscl.hardening.Exponential(beta), hscl.hardening.Threshold(tau) or a "
        f"callable eta(g) -> non-negative weights of the same shape, got {type(hardening).__name__}"
    )


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------------------------
# set sizes, masks


@dataclass
class _Spec:
    """Everything the block computations need (hyper-parameters + row ids)."""

    batch: int  # B
    views: int  # V
    rows: int  # N = V * B
    positives: str
    negatives: str
    inv_t: float
    tau_plus: float
    instance: Tensor  # (N,) instance id of each row
    labels: Tensor | None  # (N,) label of each row
    valid: Tensor  # (N,) bool
    log_M: Tensor  # (N,)
    num_neg: Tensor  # (N,) |N(r)|
    chunk: int
    beta: float = 0.0  # slope of log w in g (built-ins)
    beta_grad: float = 0.0  # beta, or 0 when the weights are detached
    log_threshold: float = -math.inf


def _set_sizes(batch: int, views: int, labels: Tensor | None, positives: str, negatives: str, device):
    """``|P(r)|`` and ``|N(r)|`` for every row, in O(rows) from class counts.

    Shape: returns two ``(V*B,)`` long tensors.
    """
    rows = views * batch
    if labels is not None:
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        class_rows = views * counts[inverse].repeat(views)  # (N,) rows sharing the label of each row
    if positives == "views":
        num_pos = torch.full((rows,), views - 1, dtype=torch.long, device=device)
    else:
        num_pos = class_rows - 1
    if negatives == "unsupervised":
        num_neg = torch.full((rows,), rows - views, dtype=torch.long, device=device)
    else:
        num_neg = rows - class_rows
    return num_pos, num_neg


def _negative_mask(spec: _Spec, start: int, stop: int) -> Tensor:
    """``N(r)`` for the anchors ``start:stop``. Shape: ``(stop - start, N)`` bool."""
    ids = spec.instance if spec.negatives == "unsupervised" else spec.labels
    return ids[start:stop, None] != ids[None, :]


def _positive_index(spec: _Spec, start: int, stop: int) -> Tensor:
    """Columns of the other views of each anchor ``start:stop`` (``positives="views"``).

    Shape: ``(stop - start, V - 1)`` long, ascending along dim 1.
    """
    rows = torch.arange(start, stop, device=spec.instance.device)
    view_ids = torch.arange(spec.views, device=rows.device)
    columns = view_ids[None, :] * spec.batch + (rows % spec.batch)[:, None]  # (c, V)
    others = view_ids[None, :] != (rows // spec.batch)[:, None]  # (c, V)
    return columns[others].view(stop - start, spec.views - 1)


def _positive_mask(spec: _Spec, start: int, stop: int) -> Tensor:
    """``P(r)`` restricted to valid anchors, for ``positives="labels"``. Shape ``(c, N)`` bool."""
    mask = spec.labels[start:stop, None] == spec.labels[None, :]
    mask[torch.arange(stop - start, device=mask.device), torch.arange(start, stop, device=mask.device)] = False
    mask &= spec.valid[start:stop, None]
    return mask


def _block_similarity(Z: Tensor, start: int, stop: int, inv_t: float) -> Tensor:
    """``g`` for the anchors ``start:stop``. Shape: ``(c, N)``."""
    return (Z[start:stop] * inv_t) @ Z.T


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


# --------------------------------------------------------------------------------------------
# generic path (callable hardening): autograd, each block checkpointed when chunked


def _generic_block(
    Z: Tensor,
    start: int,
    stop: int,
    spec: _Spec,
    eta: Callable,
    detach: bool,
    per_pair: bool,
    row_weight: Tensor,
    out: dict,
) -> Tensor:
    """One block of anchors for a user callable ``eta``: ``E(r)`` in max-shifted ratio form."""
    S = _block_similarity(Z, start, stop, spec.inv_t)  # (c, N)
    neg = _negative_mask(spec, start, stop)
    w = eta(S)
    if not isinstance(w, Tensor) or w.shape != S.shape:
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(
            "hardening callable must return a tensor of weights with the same shape as its input g "
            f"{tuple(S.shape)}, got {got}"
        )
    w = torch.where(neg, w.to(S.dtype), 0.0)  # (c, N) weights on N(r)
    with torch.no_grad():
        if not bool(torch.isfinite(w).all()):
            raise ValueError("hardening callable returned non-finite weights (NaN or inf) on negatives")
        if bool((w < 0).any()):
            raise ValueError(
                f"hardening callable returned negative weights (min {float(w.min()):.4g}); a hardening "
                "function must be non-negative (Definition 1)"
            )
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
    out["log_tilted_mean"][start:stop] = log_e.detach()
    out["anchor_sum"][start:stop] = row_sum.detach()
    out["fallback"][start:stop] = fallback
    out["num_kept"][start:stop] = support.sum(1)
    return flat if per_pair else (row_sum * row_weight[start:stop]).sum()


def _generic_loss(
    Z: Tensor, row_weight: Tensor, spec: _Spec, eta: Callable, detach: bool, per_pair: bool, chunked: bool, out: dict
) -> Tensor:
    N = spec.rows
    out.update(
        log_tilted_mean=torch.zeros(N, dtype=Z.dtype, device=Z.device),
        anchor_sum=torch.zeros(N, dtype=Z.dtype, device=Z.device),
        fallback=torch.zeros(N, dtype=torch.bool, device=Z.device),
        num_kept=torch.zeros(N, dtype=torch.long, device=Z.device),
    )
    parts = []
    for start in range(0, N, spec.chunk):
        stop = min(N, start + spec.chunk)
        args = (Z, start, stop, spec, eta, detach, per_pair, row_weight, out)
        if chunked and torch.is_grad_enabled() and Z.requires_grad:
            # the backward recomputes this block instead of keeping its (c, N) matrices alive
            parts.append(torch.utils.checkpoint.checkpoint(_generic_block, *args, use_reentrant=False))
        else:
            parts.append(_generic_block(*args))
    return torch.cat(parts) if per_pair else torch.stack(parts).sum()


def _pair_index(spec: _Spec) -> Tensor:
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


# --------------------------------------------------------------------------------------------
# public functional API


def _compute_dtype(z: Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


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
    return_stats: bool = False,
):
    """The H-SCL family loss, eq. (3) of Jiang et al. with a tilted negative distribution.

    For each anchor row ``r`` and positive ``p in P(r)``::

        E(r)      = sum_{s in N(r)} w(r,s) exp(g(r,s)) / sum_{s in N(r)} w(r,s),   w = eta(g)
        loss(r,p) = log(1 + M(r) * exp(-g(r,p)) * E(r))

    Implements eq. (3) of arXiv 2209.00078 (UCL, H-UCL, SCL, H-SCL), the debiased estimator of
    Robinson et al. (``tau_plus``) and SCHaNe's ``M = |N(r)|`` (``M="count"``).

    Args:
        z: embeddings, view ``v`` of sample ``i`` at ``z[i, v]``.
        labels: class ids; needed when ``positives="labels"`` or ``negatives="supervised"``.
        positives: ``"views"`` (other views of the same sample) or ``"labels"`` (every other row of
            the same class).
        negatives: ``"unsupervised"`` (every row of another sample) or ``"supervised"`` (every row
            of another class).
        hardening: ``None``, :class:`~hscl.hardening.Exponential`, :class:`~hscl.hardening.Threshold`,
            or a callable ``eta(g) -> weights`` (same shape, non-negative, non-decreasing).
        temperature: gamma; ``g = z_r . z_s / temperature``. Must be > 0.
        M: ``None`` for ``V*B - 2``, a number > 0, or ``"count"`` for ``|N(r)|``.
        tau_plus: class prior for H-UCL's debiasing, in ``[0, 1)``; unsupervised negatives only.
        normalize: L2-normalise each row first (the paper's ``f: X -> S^{d-1}``).
        detach_weights: treat ``w`` as constants in the backward.
        reduction: ``"mean"`` over valid pairs, ``"sum"``, ``"none"`` (per-pair values in row-major
            ``(r, p)`` order, see ``LossStats.pair_index``) or ``"anchor_mean"`` (mean over each
            anchor's positives, then over anchors: SCHaNe's averaging).
        chunk_size: process anchors in blocks of this many rows (memory ``O(chunk_size x rows)``,
            same values and gradients). ``None``: one block.
        return_stats: also return a :class:`LossStats`.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)``; output: scalar, or ``(num_pairs,)`` for ``"none"``.

    A batch without a single valid pair (e.g. one class with supervised negatives) gives an exact
    0 attached to the graph and a ``RuntimeWarning``; never NaN. The loss is computed in float32
    (float64 for float64 input) with autocast disabled, in log space.
    """
    z = _check_z(z)
    positives = _check_choice("positives", positives, POSITIVES)
    negatives = _check_choice("negatives", negatives, NEGATIVES)
    reduction = _check_choice("reduction", reduction, REDUCTIONS)
    temperature = _check_positive_real("temperature", temperature)
    M = _check_M(M)
    tau_plus = _check_tau_plus(tau_plus, negatives)
    hardening = _check_hardening(hardening)
    chunk_size = _check_chunk_size(chunk_size)
    B, V, d = z.shape
    needs = []
    if positives == "labels":
        needs.append('positives="labels"')
    if negatives == "supervised":
        needs.append('negatives="supervised"')
    labels = _check_labels(labels, B, z.device, " and ".join(needs) if needs else None)
    if positives == "views" and V < 2:
        raise ValueError(
            'positives="views" needs at least 2 views per sample (z of shape (B, V>=2, d)), '
            f'got V={V}; use positives="labels" with labels for single-view batches'
        )
    rows = V * B
    device = z.device
    num_pos, num_neg = _set_sizes(B, V, labels, positives, negatives, device)
    valid = (num_pos > 0) & (num_neg > 0)
    dtype = _compute_dtype(z)
    if M is None:
        if rows - 2 <= 0:
            raise ValueError(f"M=None means rows - 2 = {rows - 2} for a batch of {rows} rows; pass M > 0 explicitly")
        log_M = torch.full((rows,), math.log(rows - 2), dtype=dtype, device=device)
    elif M == "count":
        log_M = torch.where(valid, torch.log(num_neg.clamp(min=1).to(dtype)), 0.0)
    else:
        log_M = torch.full((rows,), math.log(M), dtype=dtype, device=device)
    num_pairs = int(num_pos[valid].sum())
    num_anchors = int(valid.sum())

    with _autocast_off(device):
        Z = z.transpose(0, 1).reshape(rows, d).to(dtype)  # (N, d), row r = v*B + i
        if normalize:
            Z = F.normalize(Z, dim=1)
        stats_out: dict = {}
        if num_pairs == 0:
            warnings.warn(
                "contrastive_loss: no valid (anchor, positive) pair in this batch "
                f"(positives={positives!r}, negatives={negatives!r}, B={B}, V={V}"
                + (f", classes={int(labels.unique().numel())}" if labels is not None else "")
                + "): every anchor lacks a positive or a negative; the loss is 0",
                RuntimeWarning,
                stacklevel=2,
            )
            zero = Z.sum() * 0.0
            loss = zero[None][:0] if reduction == "none" else zero
            stats_out.update(
                log_tilted_mean=torch.zeros(rows, dtype=dtype, device=device),
                anchor_sum=torch.zeros(rows, dtype=dtype, device=device),
                fallback=torch.zeros(rows, dtype=torch.bool, device=device),
                num_kept=num_neg.clone(),
            )
            if reduction == "none":
                stats_out["pair_index"] = torch.zeros((0, 2), dtype=torch.long, device=device)
        else:
            if reduction == "mean":
                row_weight = torch.full((rows,), 1.0 / num_pairs, dtype=dtype, device=device)
            elif reduction == "anchor_mean":
                row_weight = 1.0 / (num_pos.clamp(min=1).to(dtype) * num_anchors)
            else:
                row_weight = torch.ones(rows, dtype=dtype, device=device)
            row_weight = row_weight * valid
            spec = _Spec(
                batch=B,
                views=V,
                rows=rows,
                positives=positives,
                negatives=negatives,
                inv_t=1.0 / temperature,
                tau_plus=tau_plus,
                instance=torch.arange(rows, device=device) % B,
                labels=labels.repeat(V) if labels is not None else None,
                valid=valid,
                log_M=log_M,
                num_neg=num_neg,
                chunk=chunk_size or rows,
            )
            per_pair = reduction == "none"
            if hardening is None or type(hardening) in (Exponential, Threshold):  # built-ins: fused path
                if hardening is not None:
                    spec.beta = float(hardening.beta)
                    spec.beta_grad = 0.0 if detach_weights else spec.beta
                    spec.log_threshold = float(hardening.log_threshold)
                layout = _make_layout(spec)
                perm = layout.perm
                sorted_spec = dataclasses.replace(spec, valid=valid[perm], log_M=log_M[perm], num_neg=num_neg[perm])
                loss = _FusedContrastive.apply(Z[perm], row_weight[perm], sorted_spec, layout, per_pair, stats_out)
                for key in ("log_tilted_mean", "anchor_sum", "fallback", "num_kept"):  # back to row order
                    unsorted = torch.empty_like(stats_out[key])
                    unsorted[perm] = stats_out[key]
                    stats_out[key] = unsorted
                if per_pair:
                    keys = stats_out.pop("pair_keys")
                    stats_out["pair_index"] = torch.stack([keys // rows, keys % rows], 1)
            else:
                loss = _generic_loss(
                    Z, row_weight, spec, hardening, detach_weights, per_pair, chunk_size is not None, stats_out
                )
                if per_pair and return_stats:
                    stats_out["pair_index"] = _pair_index(spec)
    if not return_stats:
        return loss
    anchor_loss = torch.where(valid, stats_out["anchor_sum"] / num_pos.clamp(min=1), 0.0)
    stats = LossStats(
        num_positives=num_pos,
        num_negatives=num_neg,
        num_kept=stats_out["num_kept"],
        valid=valid,
        fallback=stats_out["fallback"],
        log_tilted_mean=torch.where(valid, stats_out["log_tilted_mean"], 0.0).detach(),
        log_M=torch.where(valid, log_M, 0.0),
        anchor_loss=anchor_loss.detach(),
        pair_index=stats_out.get("pair_index"),
    )
    return loss, stats


def supcon_loss(
    z: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    normalize: bool = True,
) -> Tensor:
    """Khosla et al.'s supervised contrastive loss L_out (SupCon); SimCLR's NT-Xent without labels.

    For each anchor ``r`` with at least one positive (same label, or same sample without labels)::

        loss(r) = -(temperature / base_temperature) * mean_{p in P(r)} log softmax_{s != r}(g(r, .))[p]

    and the result is the mean over those anchors. Every other row (positives included) is in the
    denominator. Implements eq. (2) of Khosla et al., NeurIPS 2020.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` or None; output: scalar.
    """
    z = _check_z(z)
    temperature = _check_positive_real("temperature", temperature)
    base_temperature = _check_positive_real("base_temperature", base_temperature)
    B, V, d = z.shape
    labels = _check_labels(labels, B, z.device, None)
    if labels is None and V < 2:
        raise ValueError(f"supcon_loss without labels needs V >= 2 views per sample, got V={V}")
    rows = V * B
    with _autocast_off(z.device):
        Z = z.transpose(0, 1).reshape(rows, d).to(_compute_dtype(z))
        if normalize:
            Z = F.normalize(Z, dim=1)
        ids = (labels if labels is not None else torch.arange(B, device=z.device)).repeat(V)
        same = ids[:, None] == ids[None, :]  # (N, N)
        eye = torch.eye(rows, dtype=torch.bool, device=z.device)
        same &= ~eye
        num_pos = same.sum(1)
        has = num_pos > 0
        if not bool(has.any()):
            warnings.warn(
                "supcon_loss: no anchor has a positive in this batch; the loss is 0", RuntimeWarning, stacklevel=2
            )
            return Z.sum() * 0.0
        logits = (Z @ Z.T / temperature).masked_fill(eye, -math.inf)  # (N, N)
        log_norm = torch.logsumexp(logits, 1)  # (N,)
        pos_logit_sum = torch.where(same, logits, 0.0).sum(1)
        mean_log_prob = (pos_logit_sum - num_pos * log_norm) / num_pos.clamp(min=1)
        per_anchor = -(temperature / base_temperature) * mean_log_prob
        return per_anchor[has].mean()


# --------------------------------------------------------------------------------------------
# modules and presets


def _resolve_hardening(beta, tau, hardening, default_beta: float | None) -> HardeningLike:
    given = [name for name, v in (("beta", beta), ("tau", tau), ("hardening", hardening)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of beta=, tau=, hardening=; got {', '.join(given)}")
    if beta is not None:
        return Exponential(beta)
    if tau is not None:
        return Threshold(tau)
    if hardening is not None:
        return _check_hardening(hardening)
    return Exponential(default_beta) if default_beta is not None else None


class ContrastiveLoss(nn.Module):
    """:func:`contrastive_loss` as a module; hyper-parameters are validated at construction.

    After each forward, ``last_stats`` holds the :class:`LossStats` of that batch.
    ``hardening`` may be reassigned between steps (e.g. a threshold schedule per epoch).
    """

    def __init__(
        self,
        *,
        positives: str,
        negatives: str,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        M: MLike = None,
        tau_plus: float = 0.0,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.positives = _check_choice("positives", positives, POSITIVES)
        self.negatives = _check_choice("negatives", negatives, NEGATIVES)
        self.hardening = _check_hardening(hardening)
        self.temperature = _check_positive_real("temperature", temperature)
        self.M = _check_M(M)
        self.tau_plus = _check_tau_plus(tau_plus, negatives)
        self.normalize = bool(normalize)
        self.detach_weights = bool(detach_weights)
        self.reduction = _check_choice("reduction", reduction, REDUCTIONS)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.last_stats: LossStats | None = None

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: z ``(B, V, d)``, labels ``(B,)``; returns a scalar (or per-pair values)."""
        loss, self.last_stats = contrastive_loss(
            z,
            labels,
            positives=self.positives,
            negatives=self.negatives,
            hardening=self.hardening,
            temperature=self.temperature,
            M=self.M,
            tau_plus=self.tau_plus,
            normalize=self.normalize,
            detach_weights=self.detach_weights,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            return_stats=True,
        )
        return loss

    def extra_repr(self) -> str:
        return (
            f"positives={self.positives!r}, negatives={self.negatives!r}, hardening={self.hardening!r}, "
            f"temperature={self.temperature}, M={self.M!r}, tau_plus={self.tau_plus}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"
        )


class UCL(ContrastiveLoss):
    """UCL: SimCLR's InfoNCE in the form of eq. (3): views as positives, every other sample negative.

    ``tau_plus > 0`` gives the debiased loss of Chuang et al. / Robinson et al.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        M: MLike = None,
        tau_plus: float = 0.0,
        normalize: bool = True,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            positives="views",
            negatives="unsupervised",
            temperature=temperature,
            M=M,
            tau_plus=tau_plus,
            normalize=normalize,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class HUCL(ContrastiveLoss):
    """H-UCL (Robinson et al., ICLR 2021): UCL with hard (tilted) unsupervised negatives.

    ``beta=`` for exponential tilting (default 1.0), ``tau=`` for a threshold, or ``hardening=``.
    """

    def __init__(
        self,
        *,
        beta: float | None = None,
        tau: float | None = None,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        M: MLike = None,
        tau_plus: float = 0.0,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            positives="views",
            negatives="unsupervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M=M,
            tau_plus=tau_plus,
            normalize=normalize,
            detach_weights=detach_weights,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class SCL(ContrastiveLoss):
    """SCL, the H-SCL paper's supervised baseline: label positives, negatives of other labels, eq. (3).

    Not Khosla et al.'s SupCon (see :class:`SupCon`): positives are not in the denominator.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        M: MLike = None,
        normalize: bool = True,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            temperature=temperature,
            M=M,
            normalize=normalize,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class HSCL(ContrastiveLoss):
    """H-SCL, the paper's method: SCL with hard negatives tilted by ``eta`` (eq. (3), Definition 1).

    ``beta=`` for H-SCL(beta) (default 1.0), ``tau=`` for H-SCL(tau), or ``hardening=``.
    """

    def __init__(
        self,
        *,
        beta: float | None = None,
        tau: float | None = None,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        M: MLike = None,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M=M,
            normalize=normalize,
            detach_weights=detach_weights,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class SCHaNe(ContrastiveLoss):
    """SCHaNe's contrastive term (arXiv 2308.14893): H-SCL(beta) with ``M = |N(r)|``, averaged per
    anchor over its positives, then over anchors. Training mixes it as ``(1 - lam) CE + lam * this``.
    """

    def __init__(
        self,
        *,
        beta: float | None = None,
        tau: float | None = None,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        normalize: bool = True,
        detach_weights: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M="count",
            normalize=normalize,
            detach_weights=detach_weights,
            reduction="anchor_mean",
            chunk_size=chunk_size,
        )


class SupCon(nn.Module):
    """Khosla et al.'s SupCon loss L_out as a module (see :func:`supcon_loss`)."""

    def __init__(self, *, temperature: float = 0.1, base_temperature: float = 0.07, normalize: bool = True) -> None:
        super().__init__()
        self.temperature = _check_positive_real("temperature", temperature)
        self.base_temperature = _check_positive_real("base_temperature", base_temperature)
        self.normalize = bool(normalize)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon_loss(
            z, labels, temperature=self.temperature, base_temperature=self.base_temperature, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"


#: method name -> preset class; the CLI, configs and tests iterate over this registry
LOSSES: dict[str, type[nn.Module]] = {
    "ucl": UCL,
    "h-ucl": HUCL,
    "scl": SCL,
    "h-scl": HSCL,
    "supcon": SupCon,
    "schane": SCHaNe,
}


def available_losses() -> list[str]:
    return list(LOSSES)


def get_loss(method: str, **kwargs) -> nn.Module:
    """The preset loss module for ``method`` (one of :data:`LOSSES`), built with ``kwargs``.

    Example: ``get_loss("h-scl", beta=1.0, temperature=0.5, chunk_size=1024)(z, labels)``.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {', '.join(LOSSES)}; got {type(method).__name__}")
    key = method.strip().lower().replace("_", "-")
    if key not in LOSSES:
        raise ValueError(f"unknown loss method {method!r}; valid methods: {', '.join(LOSSES)}")
    cls = LOSSES[key]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"get_loss({key!r}) got unexpected keyword(s) {', '.join(unknown)}; it accepts {', '.join(allowed)}"
        )
    return cls(**kwargs)
