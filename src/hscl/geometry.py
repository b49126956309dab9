"""Geometry diagnostics: Lemma 1, Assumption 1, Proposition 2, neural and dimensional collapse.

Everything here takes a batch of embeddings ``z`` of shape ``(B, V, d)`` (view ``v`` of sample
``i`` at ``z[i, v]``; rows flattened view-major, ``r = v * B + i``, as in :mod:`hscl.losses`) and
integer ``labels`` of shape ``(B,)``, and computes in float64.

H-SCL paper (Jiang, Nguyen, Ishwar, Aeron, arXiv 2209.00078), Sec. IV:

* :func:`loss_quartet`: UCL, H-UCL, SCL and H-SCL on the same embeddings with the same positives
  (the other views) and the same ``M``, so that only the negative distribution differs (Lemma 1).
* :func:`assumption1`: per anchor ``r``, ``E_{q_Hcol}[e^g] >= E_{q_H-SCL}[e^g]`` where both
  distributions are tilted by the hardening ``eta``; Hcol(r) = same label, other instance;
  H-SCL(r) = other label. Under it, ``L_H-SCL <= L_H-UCL`` (Lemma 1).
* :func:`alphas`: ``alpha_set(r) = (1 / |N(r)|) sum_{s in N(r)} 1[s in set] eta(g(r, s))`` over the
  unsupervised negatives ``N(r)``; Proposition 2: ``alpha_H-UCL = alpha_H-SCL + alpha_Hcol``.

Geometry paper (Jiang et al., arXiv 2311.05139) and the collapse literature:

* :func:`neural_collapse`: NC1 ``Tr(S_W S_B^+) / C`` (Papyan, Han, Donoho 2020); NC2 on the
  centred class means (spread of pairwise cosines, distance to the simplex-ETF value
  ``-1/(C-1)``, spread of the norms); NC4-style nearest-class-mean accuracy.
* :func:`spectrum`: singular values of the embedding covariance, effective rank
  ``exp(H(p))`` with ``p = s / sum(s)`` (Roy and Vetterli 2007), dimensions holding 99% of the
  variance. Dimensional collapse = effective rank well below the dimension the geometry needs.
* :func:`alignment` and :func:`uniformity` (Wang and Isola 2020), :func:`isotropy` (the score
  SCHaNe reports, from Mu and Viswanath 2018).
* :func:`diagnose`: all of the above as one flat mapping of scalars (one row of a metrics CSV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.hardening import Exponential, Hardening
from hscl.losses import METHODS, contrastive_loss

__all__ = [
    "Assumption1",
    "NeuralCollapse",
    "Quartet",
    "Spectrum",
    "alignment",
    "alphas",
    "assumption1",
    "class_means",
    "diagnose",
    "effective_rank",
    "isotropy",
    "loss_quartet",
    "neural_collapse",
    "spectrum",
    "uniformity",
]

#: the H-SCL paper's four settings (its Table I methods: UCL, H-UCL, SCL, H-SCL), from the registry
QUARTET = tuple(m.name for m in METHODS.values() if m.table1)


# --------------------------------------------------------------------------------------------
# input checks and the row structure shared by the batch diagnostics


def _check_batch(z: object, labels: object, need_views: int = 1) -> tuple[Tensor, Tensor]:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (B, V, d), got {type(z).__name__}")
    if z.dim() != 3:
        raise ValueError(f"z must have shape (B, V, d), got shape {tuple(z.shape)}")
    B, V, d = z.shape
    if B < 2 or d < 1:
        raise ValueError(f"z must hold at least 2 samples of dimension >= 1, got shape {tuple(z.shape)}")
    if V < need_views:
        raise ValueError(f"z needs at least {need_views} views per sample (shape (B, V>={need_views}, d)), got V={V}")
    if not torch.isfinite(z).all():
        raise ValueError("z contains NaN or infinite values")
    labels = _check_labels(labels, B)
    return z.detach().to(torch.float64), labels.to(z.device)


def _check_labels(labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor of shape ({n},), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    return labels.long()


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    return float(temperature)


def _check_hardening(hardening: object):
    if not callable(hardening):
        raise TypeError(f"hardening must be a Hardening or a callable eta(g), got {type(hardening).__name__}")
    return hardening


@dataclass
class _Rows:
    """Flattened rows and their set masks. ``N = V * B``; all masks ``(N, N)`` bool."""

    G: Tensor  # (N, N) float64 similarities g = z_r . z_s / temperature
    instance: Tensor  # (N,)
    label: Tensor  # (N,)
    unsup: Tensor  # other instance: N_unsupervised(r)
    sup: Tensor  # other label: N_supervised(r), the H-SCL negatives
    hcol: Tensor  # same label, other instance


def _rows(z: Tensor, labels: Tensor, temperature: float, normalize: bool) -> _Rows:
    B, V, d = z.shape
    Z = z.transpose(0, 1).reshape(V * B, d)
    if normalize:
        Z = F.normalize(Z, dim=1)
    G = Z @ Z.T / temperature
    instance = torch.arange(B, device=z.device).repeat(V)
    label = labels.repeat(V)
    unsup = instance[:, None] != instance[None, :]
    same_label = label[:, None] == label[None, :]
    return _Rows(G, instance, label, unsup, unsup & ~same_label, unsup & same_label)


def _weights(hardening, G: Tensor) -> Tensor:
    w = hardening(G)
    if not isinstance(w, Tensor) or w.shape != G.shape:
        raise ValueError("hardening(g) must return a tensor of the same shape as g")
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError("hardening(g) must return finite, non-negative weights")
    return w.to(torch.float64)


# --------------------------------------------------------------------------------------------
# Lemma 1, Assumption 1, Proposition 2


@dataclass
class Quartet:
    """The four losses of Lemma 1 on one batch: same positives (views) and the same ``M``.

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

    Shape: z ``(B, V>=2, d)``, labels ``(B,)``.
    """
    z64, labels = _check_batch(z, labels, need_views=2)
    _check_temperature(temperature)
    hardening = Exponential(1.0) if hardening is None else _check_hardening(hardening)
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
    rows = _rows(z64, labels, _check_temperature(temperature), normalize)
    hardening = Exponential(1.0) if hardening is None else _check_hardening(hardening)
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
    rows = _rows(z64, labels, _check_temperature(temperature), normalize)
    hardening = Exponential(1.0) if hardening is None else _check_hardening(hardening)
    return _alphas(rows, _weights(hardening, rows.G))


def _alphas(rows: _Rows, w: Tensor) -> dict[str, Tensor]:
    count = rows.unsup.sum(1).clamp(min=1).to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    return {
        "h-ucl": torch.where(rows.unsup, w, zero).sum(1) / count,
        "h-scl": torch.where(rows.sup, w, zero).sum(1) / count,
        "hcol": torch.where(rows.hcol, w, zero).sum(1) / count,
    }


# --------------------------------------------------------------------------------------------
# neural collapse


def _check_features(h: object, labels: object) -> tuple[Tensor, Tensor]:
    if not isinstance(h, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape (N, d), got {type(h).__name__}")
    if h.dim() != 2 or h.shape[0] < 2:
        raise ValueError(f"features must have shape (N>=2, d), got shape {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("features contain NaN or infinite values")
    return h.detach().to(torch.float64), _check_labels(labels, h.shape[0]).to(h.device)


def class_means(h: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class means ``(C, d)`` of features ``(N, d)`` and the sorted class ids ``(C,)``."""
    h, labels = _check_features(h, labels)
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, inverse, h)
    counts = torch.bincount(inverse, minlength=len(classes)).to(h.dtype)
    return sums / counts[:, None], classes


@dataclass
class NeuralCollapse:
    """Neural-collapse measures of features ``(N, d)`` with ``C`` classes.

    * ``nc1 = Tr(S_W S_B^+) / C`` with ``S_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and
      ``S_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``, ``mu_G = (1/C) sum_c mu_c``. 0 when every
      class has collapsed to its mean.
    * with ``m_c = mu_c - mu_G`` and ``cos_cc' = m_c . m_c' / (|m_c| |m_c'|)`` over pairs ``c != c'``:
      ``nc2_cos_std`` = std of the cosines, ``nc2_etf = mean |cos_cc' + 1/(C-1)|`` (0 for a simplex
      ETF), ``nc2_norm_cv = std(|m_c|) / mean(|m_c|)`` (0 when equinorm). Stds are population stds.
    * ``ncc_accuracy``: fraction of samples whose nearest class mean (Euclidean) is their own class.
    """

    nc1: float
    nc2_cos_std: float
    nc2_etf: float
    nc2_norm_cv: float
    ncc_accuracy: float
    num_classes: int

    def as_dict(self) -> dict[str, float]:
        return {
            "nc1": self.nc1,
            "nc2_cos_std": self.nc2_cos_std,
            "nc2_etf": self.nc2_etf,
            "nc2_norm_cv": self.nc2_norm_cv,
            "ncc_accuracy": self.ncc_accuracy,
        }


def neural_collapse(h: Tensor, labels: Tensor) -> NeuralCollapse:
    """NC1, NC2 and nearest-class-mean accuracy of features ``(N, d)`` (see :class:`NeuralCollapse`).

    Needs at least two classes.
    """
    h, labels = _check_features(h, labels)
    means, classes = class_means(h, labels)
    C = len(classes)
    if C < 2:
        raise ValueError(f"neural_collapse needs at least 2 classes in labels, got {C}")
    inverse = torch.searchsorted(classes, labels)
    within = h - means[inverse]
    S_W = within.T @ within / h.shape[0]
    centred = means - means.mean(0)
    S_B = centred.T @ centred / C
    nc1 = float(torch.trace(S_W @ torch.linalg.pinv(S_B, hermitian=True, rtol=1e-10)) / C)
    norms = centred.norm(dim=1)
    unit = centred / norms.clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    cos = unit @ unit.T
    off = ~torch.eye(C, dtype=torch.bool, device=h.device)
    pair_cos = cos[off]
    distances = torch.cdist(h, means)
    ncc = float((distances.argmin(1) == inverse).to(torch.float64).mean())
    return NeuralCollapse(
        nc1=nc1,
        nc2_cos_std=float(pair_cos.std(unbiased=False)),
        nc2_etf=float((pair_cos + 1.0 / (C - 1)).abs().mean()),
        nc2_norm_cv=float(norms.std(unbiased=False) / norms.mean()) if float(norms.mean()) > 0 else math.nan,
        ncc_accuracy=ncc,
        num_classes=C,
    )


# --------------------------------------------------------------------------------------------
# dimensional collapse


@dataclass
class Spectrum:
    """Spectrum of the covariance ``Sigma = (1/N) sum_i (x_i - mean)(x_i - mean)^T`` of ``(N, d)``.

    ``singular_values`` are those of ``Sigma`` (its eigenvalues, descending); ``effective_rank`` is
    ``exp(-sum_k p_k log p_k)`` with ``p = s / sum(s)``; ``dims_99`` the fewest leading directions
    holding 99% of the variance.
    """

    singular_values: Tensor  # (d,)
    effective_rank: float
    dims_99: int

    def as_dict(self) -> dict[str, float]:
        return {"effective_rank": self.effective_rank, "dims_99": float(self.dims_99)}


def effective_rank(values: Tensor) -> float:
    """``exp`` of the Shannon entropy of ``values / values.sum()`` (Roy and Vetterli 2007)."""
    values = values.to(torch.float64).clamp(min=0)
    total = values.sum()
    if not float(total) > 0:
        return 0.0
    p = values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectrum(x: Tensor, variance: float = 0.99) -> Spectrum:
    """Covariance spectrum, effective rank and the dimensions holding ``variance`` of it.

    Shape: x ``(N, d)`` (or ``(B, V, d)``, flattened to rows).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N>=2, d), got shape {tuple(x.shape)}")
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    x = x.detach().to(torch.float64)
    centred = x - x.mean(0)
    cov = centred.T @ centred / x.shape[0]
    values = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0)
    total = values.sum()
    if float(total) > 0:
        share = torch.cumsum(values, 0) / total
        dims = int((share < variance - 1e-12).sum()) + 1
    else:
        dims = 0
    return Spectrum(values, effective_rank(values), min(dims, len(values)))


# --------------------------------------------------------------------------------------------
# alignment, uniformity, isotropy


def alignment(z: Tensor, alpha: float = 2.0, normalize: bool = True) -> float:
    """Wang and Isola's alignment ``E ||f(x) - f(x+)||^alpha`` over every pair of views of a sample.

    Shape: z ``(B, V>=2, d)``.
    """
    if not isinstance(z, Tensor) or z.dim() != 3 or z.shape[1] < 2:
        raise ValueError("z must be a tensor of shape (B, V>=2, d)")
    z = z.detach().to(torch.float64)
    if normalize:
        z = F.normalize(z, dim=-1)
    V = z.shape[1]
    left, right = torch.triu_indices(V, V, offset=1)
    diff = z[:, left] - z[:, right]  # (B, pairs, d)
    return float(diff.norm(dim=-1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0, normalize: bool = True) -> float:
    """Wang and Isola's uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct rows.

    Shape: z ``(N, d)`` or ``(B, V, d)`` (flattened to rows).
    """
    if not isinstance(z, Tensor) or z.dim() not in (2, 3):
        raise ValueError("z must be a tensor of shape (N, d) or (B, V, d)")
    x = z.detach().to(torch.float64).reshape(-1, z.shape[-1])
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least 2 rows")
    if normalize:
        x = F.normalize(x, dim=-1)
    sq = torch.pdist(x).pow(2)
    return float(torch.logsumexp(-t * sq, 0) - math.log(sq.numel()))


def isotropy(z: Tensor) -> float:
    """Isotropy score ``I = min_c Z(c) / max_c Z(c)``, ``Z(c) = sum_i exp(c . z_i)`` (Mu and Viswanath).

    ``c`` runs over the eigenvectors of ``Z^T Z`` and their negatives (an eigenvector's sign is
    arbitrary; both signs are unit vectors of the definition's ``||c|| = 1``). 1 is perfectly
    isotropic; all rows equal to a unit vector give ``e^{-2}``. Embeddings are used as given.

    Shape: z ``(N, d)`` or ``(B, V, d)`` (flattened to rows).
    """
    if not isinstance(z, Tensor) or z.dim() not in (2, 3):
        raise ValueError("z must be a tensor of shape (N, d) or (B, V, d)")
    x = z.detach().to(torch.float64).reshape(-1, z.shape[-1])
    if not torch.isfinite(x).all():
        raise ValueError("z contains NaN or infinite values")
    _, vectors = torch.linalg.eigh(x.T @ x)  # columns: eigenvectors
    c = torch.cat([vectors, -vectors], 1)  # (d, 2d)
    log_Z = torch.logsumexp(x @ c, dim=0)  # (2d,)
    return float(torch.exp(log_Z.min() - log_Z.max()))


# --------------------------------------------------------------------------------------------
# everything at once


def diagnose(
    z: Tensor,
    labels: Tensor,
    hardening: Hardening | None = None,
    *,
    temperature: float = 0.5,
    M: float | str | None = None,
    normalize: bool = True,
) -> tuple[dict[str, float], Tensor]:
    """Every diagnostic of one probe batch as a flat mapping of scalars, plus the spectrum.

    The losses, Assumption 1 and the alphas use ``g = z . z' / temperature`` (rows L2-normalised
    first when ``normalize``, as the loss does); the collapse measures use the embeddings as the
    model outputs them (sphere, ball or unnormalised), all rows of all views.

    Shape: z ``(B, V>=2, d)``, labels ``(B,)``; returns (metrics, singular values ``(d,)``).
    """
    z64, labels = _check_batch(z, labels, need_views=2)
    B, V, d = z64.shape
    hardening = Exponential(1.0) if hardening is None else _check_hardening(hardening)
    out: dict[str, float] = {}
    out.update(loss_quartet(z64, labels, hardening, temperature=temperature, M=M, normalize=normalize).as_dict())
    rows_ = _rows(z64, labels, _check_temperature(temperature), normalize)  # shared by Assumption 1 and the alphas
    w = _weights(hardening, rows_.G)
    a1 = _assumption1(rows_, w)
    out["assumption1"] = a1.fraction
    out["assumption1_excluded"] = float(a1.num_excluded)
    al = _alphas(rows_, w)
    out["alpha_h_ucl"] = float(al["h-ucl"].mean())
    out["alpha_h_scl"] = float(al["h-scl"].mean())
    out["alpha_hcol"] = float(al["hcol"].mean())
    rows = z64.transpose(0, 1).reshape(V * B, d)
    row_labels = labels.repeat(V)
    if len(torch.unique(labels)) >= 2:
        out.update(neural_collapse(rows, row_labels).as_dict())
    else:
        out.update(dict.fromkeys(("nc1", "nc2_cos_std", "nc2_etf", "nc2_norm_cv", "ncc_accuracy"), math.nan))
    spec = spectrum(rows)
    out.update(spec.as_dict())
    out["alignment"] = alignment(z64, normalize=normalize)
    out["uniformity"] = uniformity(z64, normalize=normalize)
    out["isotropy"] = isotropy(rows)
    out["mean_norm"] = float(rows.norm(dim=1).mean())
    return out, spec.singular_values
