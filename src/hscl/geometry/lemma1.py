"""Lemma 1, Assumption 1 and Proposition 2 of the H-SCL paper (arXiv 2209.00078), Sec. IV.

See :mod:`hscl.geometry` for the definitions; everything here is re-exported there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hscl.geometry._batch import _check_batch, _Rows, _rows, _weights
from hscl.hardening import Exponential, Hardening, check_hardening
from hscl.losses import METHODS, contrastive_loss
from hscl.validation import check_positive_real

#: the H-SCL paper's four settings, the losses Lemma 1 compares: unsupervised or supervised negatives, each
#: plain or hardened (their negatives and hardening are read from the registry)
QUARTET = ("ucl", "h-ucl", "scl", "h-scl")


@dataclass
class Quartet:
    """The four losses of Lemma 1 on one batch: same positives (views) and the same ``M``.

    ``h_scl <= h_ucl`` is Lemma 1's claim under Assumption 1: measured, it can fail. ``scl <= h_scl`` and
    ``ucl <= h_ucl`` hold by construction for a non-decreasing hardening (Chebyshev's sum inequality), per
    positive pair, up to rounding: they check the implementation, not the paper.

    ``per_pair[method]`` holds each positive pair's loss in the row-major ``(r, p)`` order of
    :func:`hscl.losses.contrastive_loss` with ``reduction="none"``.
    """

    ucl: float
    h_ucl: float
    scl: float
    h_scl: float
    per_pair: dict[str, Tensor] = field(repr=False, default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"loss_ucl": self.ucl, "loss_h_ucl": self.h_ucl, "loss_scl": self.scl, "loss_h_scl": self.h_scl}


def loss_quartet(
    z: Tensor,
    labels: Tensor,
    hardening: Hardening | None = None,
    *,
    temperature: float = 0.5,
    M: float | str | None = None,
    normalize: bool = True,
) -> Quartet:
    """UCL, H-UCL, SCL and H-SCL of eq. (3) on the same embeddings (Lemma 1's setting).

    All four use ``positives="views"`` and the same ``M`` (default ``V*B - 2``); UCL / H-UCL take
    every other instance as negatives, SCL / H-SCL only rows of another label; H-UCL / H-SCL tilt
    them by ``hardening`` (default :class:`~hscl.hardening.Exponential` with beta = 1).
    Computed in float64 without gradients.

    For a non-decreasing hardening ``h_scl >= scl`` and ``h_ucl >= ucl`` hold by construction, pair by pair
    (Chebyshev's sum inequality); ``h_scl <= h_ucl`` is Lemma 1's conclusion, which holds for the anchors that
    satisfy Assumption 1, so for the means it is a measurement.

    Shape: z ``(B, V>=2, d)``, labels ``(B,)``.
    """
    z64, labels = _check_batch(z, labels, need_views=2)
    check_positive_real("temperature", temperature)
    hardening = Exponential(1.0) if hardening is None else check_hardening(hardening)
    means: dict[str, float] = {}
    per_pair: dict[str, Tensor] = {}
    import warnings

    for method in QUARTET:
        kw = {
            "positives": "views",
            "negatives": METHODS[method].negatives,
            "hardening": hardening if METHODS[method].hardened else None,
            "temperature": temperature,
            "M": M,
            "normalize": normalize,
            "reduction": "none",
        }
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # one-class batch: SCL has no pair
            values = contrastive_loss(z64, labels, **kw)
        per_pair[method] = values
        means[method] = float(values.mean()) if values.numel() else math.nan
    return Quartet(*(means[method] for method in QUARTET), per_pair)


def _log_tilted_mean_exp(G: Tensor, log_w: Tensor, mask: Tensor) -> Tensor:
    """``log( sum_s w e^g / sum_s w )`` over ``mask`` per row; ``nan`` where the weight is 0."""
    neg_inf = torch.tensor(-math.inf, dtype=G.dtype, device=G.device)
    lw = torch.where(mask, log_w, neg_inf)
    num = torch.logsumexp(lw + G, dim=1)
    den = torch.logsumexp(lw, dim=1)
    return torch.where(torch.isfinite(den), num - den, torch.full_like(den, math.nan))


@dataclass
class Assumption1:
    """Assumption 1 per anchor row: ``log E_{q_Hcol}[e^g]`` vs ``log E_{q_H-SCL}[e^g]``.

    ``holds`` is 1.0 / 0.0 per row and ``nan`` for rows left out (Hcol or the H-SCL set empty, or
    of zero total weight under a threshold); ``fraction`` is over the rows that are not left out.
    """

    log_e_hcol: Tensor  # (N,)
    log_e_hscl: Tensor  # (N,)
    holds: Tensor  # (N,)
    fraction: float
    num_anchors: int
    num_excluded: int
    num_empty_hcol: int
    num_empty_hscl: int


def assumption1(
    z: Tensor,
    labels: Tensor,
    hardening: Hardening | None = None,
    *,
    temperature: float = 0.5,
    normalize: bool = True,
) -> Assumption1:
    """Assumption 1 of the H-SCL paper, checked per anchor.

    ``E_q[e^g] = sum_{s in S(r)} eta(g) e^g / sum_{s in S(r)} eta(g)`` for ``S = Hcol(r)`` (same
    label, another instance) and ``S = H-SCL(r)`` (another label); it holds at ``r`` when the first
    is at least the second. Rows with an empty (or zero-weight) set are left out and counted.

    Shape: z ``(B, V, d)``, labels ``(B,)``; per-row outputs ``(V*B,)``.
    """
    z64, labels = _check_batch(z, labels)
    rows = _rows(z64, labels, check_positive_real("temperature", temperature), normalize)
    hardening = Exponential(1.0) if hardening is None else check_hardening(hardening)
    return _assumption1(rows, _weights(hardening, rows.G))


def _assumption1(rows: _Rows, w: Tensor) -> Assumption1:
    log_w = torch.log(w)
    e_col = _log_tilted_mean_exp(rows.G, log_w, rows.hcol)
    e_scl = _log_tilted_mean_exp(rows.G, log_w, rows.sup)
    keep = torch.isfinite(e_col) & torch.isfinite(e_scl)
    holds = torch.where(keep, (e_col >= e_scl).to(torch.float64), torch.full_like(e_col, math.nan))
    n_keep = int(keep.sum())
    return Assumption1(
        log_e_hcol=e_col,
        log_e_hscl=e_scl,
        holds=holds,
        fraction=float(holds[keep].mean()) if n_keep else math.nan,
        num_anchors=int(keep.numel()),
        num_excluded=int((~keep).sum()),
        num_empty_hcol=int((~rows.hcol.any(1)).sum()),
        num_empty_hscl=int((~rows.sup.any(1)).sum()),
    )


def alphas(
    z: Tensor,
    labels: Tensor,
    hardening: Hardening | None = None,
    *,
    temperature: float = 0.5,
    normalize: bool = True,
) -> dict[str, Tensor]:
    """Per-anchor ``alpha_H-UCL``, ``alpha_H-SCL``, ``alpha_Hcol`` (Proposition 2).

    ``alpha_S(r) = (1 / |N(r)|) sum_{s in N(r)} 1[s in S(r)] eta(g(r, s))`` with ``N(r)`` the
    unsupervised negatives (every other instance). Since N(r) is the disjoint union of the H-SCL
    set (other label) and Hcol (same label), ``alpha_H-UCL = alpha_H-SCL + alpha_Hcol`` exactly.

    Shape: z ``(B, V, d)``, labels ``(B,)``; each output ``(V*B,)``.
    """
    z64, labels = _check_batch(z, labels)
    rows = _rows(z64, labels, check_positive_real("temperature", temperature), normalize)
    hardening = Exponential(1.0) if hardening is None else check_hardening(hardening)
    return _alphas(rows, _weights(hardening, rows.G))


def _alphas(rows: _Rows, w: Tensor) -> dict[str, Tensor]:
    count = rows.unsup.sum(1).clamp(min=1).to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    return {
        "h-ucl": torch.where(rows.unsup, w, zero).sum(1) / count,
        "h-scl": torch.where(rows.sup, w, zero).sum(1) / count,
        "hcol": torch.where(rows.hcol, w, zero).sum(1) / count,
    }
