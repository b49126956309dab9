"""Geometry diagnostics: Lemma 1, Assumption 1, Proposition 2, neural and dimensional collapse.

Everything here takes a batch of embeddings ``z`` of shape ``(B, V, d)`` (view ``v`` of sample
``i`` at ``z[i, v]``; rows flattened view-major, ``r = v * B + i``, as in :mod:`hscl.losses`) and
integer ``labels`` of shape ``(B,)``, and computes in float64 on a CPU copy of them, whatever their device
(float64 is slow on most GPUs, and some of its GPU kernels have no deterministic version); tensors it
returns are on the CPU.

H-SCL paper (Jiang, Nguyen, Ishwar, Aeron, arXiv 2209.00078), Sec. IV:

* :func:`loss_quartet`: UCL, H-UCL, SCL and H-SCL on the same embeddings with the same positives
  (the other views) and the same ``M``, so that only the negative distribution differs (Lemma 1).
* :func:`assumption1`: per anchor ``r``, ``E_{q_Hcol}[e^g] >= E_{q_H-SCL}[e^g]`` where both
  distributions are tilted by the hardening ``eta``; Hcol(r) = same label, other instance;
  H-SCL(r) = other label. Under it, ``L_H-SCL <= L_H-UCL`` (Lemma 1): a measured ordering, which
  the probe set may or may not show. ``L_SCL <= L_H-SCL`` and ``L_UCL <= L_H-UCL`` are not
  measurements: with the same ``M`` they hold by construction for any non-decreasing hardening
  (Chebyshev's sum inequality: ``E[eta(g) e^g] >= E[eta(g)] E[e^g]``, so tilting never lowers
  ``E_q[e^g]``).
* :func:`alphas`: ``alpha_set(r) = (1 / |N(r)|) sum_{s in N(r)} 1[s in set] eta(g(r, s))`` over the
  unsupervised negatives ``N(r)``; Proposition 2: ``alpha_H-UCL = alpha_H-SCL + alpha_Hcol``.

Geometry paper (Jiang et al., arXiv 2311.05139) and the collapse literature:

* :func:`neural_collapse`: NC1 ``Tr(S_W S_B^+) / C`` (Papyan, Han, Donoho 2020); NC2 on the
  centred class means (spread of pairwise cosines, distance to the simplex-ETF value
  ``-1/(C-1)``, spread of the norms); NC4-style nearest-class-mean accuracy.
* :func:`spectrum`: singular values ``s`` of the centred embedding matrix and the covariance
  eigenvalues ``s^2 / N``; effective rank ``exp(H(p))`` with ``p = s / sum(s)`` (Roy and Vetterli
  2007, as RankMe uses it) and, as ``effective_rank_cov``, with ``p = s^2 / sum(s^2)``; dimensions
  holding 99% of the variance. Dimensional collapse = effective rank well below the dimension the
  geometry needs.
* :func:`alignment` and :func:`uniformity` (Wang and Isola 2020), :func:`isotropy` (Mu and
  Viswanath 2018's score over the eigenvectors, which SCHaNe reports; ``symmetric=True`` adds
  their negatives).
* :func:`diagnose`: all of the above as one flat mapping of scalars (one row of a metrics CSV).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hscl.geometry._batch import _check_batch, _rows, _weights
from hscl.geometry.collapse import (
    NeuralCollapse,
    Spectrum,
    class_means,
    effective_rank,
    isotropy,
    neural_collapse,
    spectrum,
)
from hscl.geometry.hypersphere import alignment, uniformity
from hscl.geometry.lemma1 import (
    QUARTET,  # noqa: F401  (hscl.geometry.QUARTET, as before the split)
    Assumption1,
    Quartet,
    _alphas,
    _assumption1,
    alphas,
    assumption1,
    loss_quartet,
)
from hscl.hardening import Exponential, Hardening, check_hardening
from hscl.validation import check_positive_real

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

    ``isotropy`` is Mu and Viswanath's score (eigenvectors only, :func:`isotropy`).

    Shape: z ``(B, V>=2, d)``, labels ``(B,)``; returns (metrics, covariance eigenvalues ``(d,)``).
    """
    z64, labels = _check_batch(z, labels, need_views=2)
    B, V, d = z64.shape
    hardening = Exponential(1.0) if hardening is None else check_hardening(hardening)
    out: dict[str, float] = {}
    out.update(loss_quartet(z64, labels, hardening, temperature=temperature, M=M, normalize=normalize).as_dict())
    temperature = check_positive_real("temperature", temperature)
    rows_ = _rows(z64, labels, temperature, normalize)  # shared by Assumption 1 and the alphas
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
    return out, spec.eigenvalues
