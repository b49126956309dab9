"""Neural collapse (NC1, NC2, nearest class mean), dimensional collapse (spectrum, effective rank), isotropy.

See :mod:`hscl.geometry` for the references; everything here is re-exported there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hscl.geometry._batch import _check_class_ids


def _check_features(h: object, labels: object) -> tuple[Tensor, Tensor]:
    if not isinstance(h, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape (N, d), got {type(h).__name__}")
    if h.dim() != 2 or h.shape[0] < 2:
        raise ValueError(f"features must have shape (N>=2, d), got shape {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("features contain NaN or infinite values")
    return h.detach().to("cpu", torch.float64), _check_class_ids(labels, h.shape[0]).cpu()  # float64 on the CPU


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
    """Spectrum of the centred rows ``X_c = x - mean`` of ``x`` ``(N, d)``.

    * ``singular_values``: the singular values ``s`` of ``X_c`` (descending, zero-padded to ``d``).
    * ``eigenvalues``: the eigenvalues of the covariance ``Sigma = X_c^T X_c / N``, ``s^2 / N`` (descending,
      ``d`` of them); they give the variance shares.
    * ``effective_rank``: ``exp(-sum_k p_k log p_k)`` with ``p = s / sum(s)`` over the singular values: Roy and
      Vetterli's effective rank of the embedding matrix, as RankMe (Garrido et al. 2023) uses it.
    * ``effective_rank_cov``: the same entropy over the covariance eigenvalues, ``p = s^2 / sum(s^2)``. It
      weighs the leading directions more, so it is never above ``effective_rank``.
    * ``dims_99``: the fewest leading directions holding 99% of the variance (of the eigenvalues).
    """

    singular_values: Tensor  # (d,)
    eigenvalues: Tensor  # (d,)
    effective_rank: float
    effective_rank_cov: float
    dims_99: int

    def as_dict(self) -> dict[str, float]:
        return {
            "effective_rank": self.effective_rank,
            "effective_rank_cov": self.effective_rank_cov,
            "dims_99": float(self.dims_99),
        }


def effective_rank(values: Tensor) -> float:
    """``exp`` of the Shannon entropy of ``values / values.sum()`` (Roy and Vetterli 2007).

    Pass singular values for the effective rank of a matrix, covariance eigenvalues for the variance-weighted form.
    """
    values = values.to("cpu", torch.float64).clamp(min=0)
    total = values.sum()
    if not float(total) > 0:
        return 0.0
    p = values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectrum(x: Tensor, variance: float = 0.99) -> Spectrum:
    """Singular values and covariance eigenvalues of the centred ``x``, both effective ranks, and the
    dimensions holding ``variance`` of the variance (see :class:`Spectrum`).

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
    x = x.detach().to("cpu", torch.float64)  # float64 SVD / cumsum on the CPU
    N, d = x.shape
    s = torch.linalg.svdvals(x - x.mean(0))  # (min(N, d),), descending
    singular = torch.cat([s, s.new_zeros(d - s.numel())])
    values = singular.square() / N
    total = values.sum()
    if float(total) > 0:
        share = torch.cumsum(values, 0) / total
        dims = int((share < variance - 1e-12).sum()) + 1
    else:
        dims = 0
    return Spectrum(singular, values, effective_rank(singular), effective_rank(values), min(dims, d))


def _oriented(vectors: Tensor) -> Tensor:
    """The columns of ``vectors``, each with the sign that makes its entry of largest magnitude positive (the
    first such entry on a tie): an eigenvector's sign is arbitrary, and LAPACK builds differ in it."""
    index = vectors.abs().argmax(0)
    signs = torch.sign(vectors[index, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def isotropy(z: Tensor, symmetric: bool = False) -> float:
    """Isotropy score ``I = min_c Z(c) / max_c Z(c)``, ``Z(c) = sum_i exp(c . z_i)`` (Mu and Viswanath 2018).

    ``c`` runs over the eigenvectors of ``Z^T Z`` (the score SCHaNe reports), each oriented so that its entry of
    largest magnitude is positive (the definition leaves the sign open; fixing it makes the score the same on
    every linear-algebra library). ``symmetric=True`` runs ``c`` over the eigenvectors and their negatives: the
    sign-symmetric form, never above the default one. 1 is perfectly isotropic. All rows equal to a unit vector
    give ``e^{-1}`` (``e^{-2}`` symmetric). Embeddings are used as given.

    Shape: z ``(N, d)`` or ``(B, V, d)`` (flattened to rows).
    """
    if not isinstance(z, Tensor) or z.dim() not in (2, 3):
        raise ValueError("z must be a tensor of shape (N, d) or (B, V, d)")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    x = z.detach().to("cpu", torch.float64).reshape(-1, z.shape[-1])
    if not torch.isfinite(x).all():
        raise ValueError("z contains NaN or infinite values")
    _, vectors = torch.linalg.eigh(x.T @ x)  # columns: eigenvectors
    c = _oriented(vectors)
    if symmetric:
        c = torch.cat([c, -c], 1)  # (d, 2d)
    log_Z = torch.logsumexp(x @ c, dim=0)
    return float(torch.exp(log_Z.min() - log_Z.max()))
