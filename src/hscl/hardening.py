"""Hardening functions (Definition 1 of the H-SCL paper) and the threshold schedule of eq. (4).

A hardening function ``eta`` is non-negative and non-decreasing. The loss tilts the negative
distribution of each anchor ``r`` by ``w(r, s) = eta(g(r, s))`` where ``g = z_r . z_s / temperature``.

References:
    Jiang, Nguyen, Ishwar, Aeron. Supervised Contrastive Learning with Hard Negative Samples.
    arXiv 2209.00078 (Definition 1, eq. (3), eq. (4)).
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AutoExponential", "Exponential", "Hardening", "LinearThreshold", "Threshold", "linear_threshold"]


class Hardening:
    """Base class of the built-in hardening functions.

    A built-in hardening has the log-linear form ``log eta(g) = beta * g`` on a kept set
    ``{g >= log_threshold}`` and ``-inf`` elsewhere. The loss uses that form for a fused, analytic
    forward and backward; a plain callable ``eta(g) -> weights`` takes the generic autograd path.
    """

    #: slope of ``log eta`` in ``g`` (0 for the threshold)
    beta: float = 0.0
    #: ``g`` below this gets weight 0 (``-inf`` keeps every negative)
    log_threshold: float = -math.inf

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """Return the weights ``eta(g) = exp(beta * g) * 1[g >= log_threshold]``, same shape as ``g``."""
        return torch.exp(self.beta * g) * (g >= self.log_threshold).to(g.dtype)


@dataclass(frozen=True)
class Exponential(Hardening):
    """Exponential tilting ``eta(t) = exp(beta * t)``, ``beta >= 0`` (H-SCL(beta), H-UCL).

    ``beta = 0`` gives weight 1 everywhere, i.e. no hardening.
    """

    beta: float = 1.0

    def __post_init__(self) -> None:
        _check_real("beta", self.beta)
        if self.beta < 0:
            raise ValueError(
                f"beta must be >= 0 (exponential tilting exp(beta * g) must be non-decreasing), got beta={self.beta}"
            )

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.beta * g)


@dataclass(frozen=True)
class Threshold(Hardening):
    """Threshold ``eta(t) = 1[exp(t) >= tau]``, i.e. keep negatives with ``g >= log(tau)``, ``tau > 0``.

    With ``g = cos / temperature`` the negatives kept are those whose cosine similarity to the
    anchor is at least ``temperature * log(tau)``. An anchor none of whose negatives passes falls
    back to the untilted distribution (weight 1), and the loss counts the fallback.
    """

    tau: float = 1.0

    def __post_init__(self) -> None:
        _check_real("tau", self.tau)
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (the threshold compares exp(g) >= tau), got tau={self.tau}")

    @property
    def log_threshold(self) -> float:  # type: ignore[override]
        return math.log(self.tau)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return (g >= self.log_threshold).to(g.dtype)


class AutoExponential(Hardening):
    """Exponential tilting whose ``beta`` is chosen by each forward of the loss for a target effective
    sample size of the tilted negatives.

    For an anchor ``r`` with negatives ``N(r)`` and weights ``w = exp(beta g(r, s))``,
    ``ESS_r = (sum_s w)^2 / sum_s w^2`` is the effective number of negatives; the fraction
    ``ESS_r / |N(r)|`` is 1 at ``beta = 0`` and decreases in ``beta``. Each call of the loss sets
    ``beta >= 0`` so that the mean of that fraction over the anchors with a non-empty ``N(r)`` equals
    ``target``, on the detached similarities (no gradient flows through the choice), capped at
    ``max_beta``; the loss is then exactly H-SCL / H-UCL with :class:`Exponential` ``(beta)``.
    ``beta`` holds the value of the last call (0 before the first).

    The solver is a safeguarded Newton iteration on ``[0, max_beta]`` (bisection whenever a Newton step
    leaves the bracket), started from the previous call's ``beta``, to ``|mean fraction - target| <=
    1e-6``. At most ``max_entries`` similarities enter it: for a larger batch it uses 8 evenly spaced
    contiguous groups of anchors holding that many, against every candidate column.

    Args:
        target: the mean ESS fraction, in ``(0, 1]`` (1 gives ``beta = 0``).
        max_beta: the cap on ``beta`` (default 50: ``exp(50 g)`` already puts all the weight on the
            hardest negatives for any temperature).
        max_entries: similarities the solver may use per call (default ``2**19``).
    """

    MAX_BETA = 50.0

    def __init__(self, target: float = 0.5, *, max_beta: float = MAX_BETA, max_entries: int = 1 << 19) -> None:
        _check_real("target", target)
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1] (a mean fraction ESS_r / |N(r)|), got target={target}")
        _check_real("max_beta", max_beta)
        if not max_beta > 0:
            raise ValueError(f"max_beta must be > 0, got max_beta={max_beta}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got max_entries={max_entries!r}")
        self.target, self.max_beta, self.max_entries = float(target), float(max_beta), max_entries
        self.beta = 0.0

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.beta * g)

    def __repr__(self) -> str:
        return f"AutoExponential(target={self.target}, beta={self.beta:.6g}, max_beta={self.max_beta})"

    def choose(self, g: torch.Tensor, negatives: torch.Tensor) -> float:
        """Set and return ``beta`` for similarities ``g`` (a, n) with the negative mask ``negatives`` (a, n)."""
        self.beta = ess_beta(g, negatives, self.target, self.max_beta, start=self.beta)
        return self.beta


def ess_fraction(g: torch.Tensor, negatives: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over the rows with a negative of ``ESS_r / |N(r)|`` for weights ``exp(beta g)`` on the mask.

    Shape: g ``(a, n)``, negatives ``(a, n)`` bool; output: a scalar tensor.
    """
    return _ess_at(_ess_prepare(g, negatives), beta)[0]


def _ess_prepare(g: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows with a negative: ``g`` minus the row's largest negative (0 off the negatives), the mask
    in ``g``'s dtype, and ``|N(r)|``."""
    rows = negatives.any(1)
    g, negatives = g[rows], negatives[rows]
    top = torch.where(negatives, g, -math.inf).amax(1, keepdim=True)
    shifted = torch.where(negatives, g - top, 0.0)  # <= 0: the weights stay <= 1
    mask = negatives.to(g.dtype)
    return shifted, mask, mask.sum(1)


def _ess_at(prepared, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean ESS fraction and its derivative in ``beta``: ``d f_r / d beta = 2 f_r (m_beta - m_2beta)``
    with ``m_b`` the mean of ``g`` under weights ``exp(b g)``."""
    shifted, mask, count = prepared
    w = torch.exp(beta * shifted).mul_(mask)  # (a, n), 0 off the negatives
    w2 = w * w
    a, b = w.sum(1), w2.sum(1)
    frac = a * a / (count * b)
    slope = frac * 2.0 * ((shifted * w).sum(1) / a - (shifted * w2).sum(1) / b)
    return frac.mean(), slope.mean()


def ess_beta(
    g: torch.Tensor,
    negatives: torch.Tensor,
    target: float,
    max_beta: float = AutoExponential.MAX_BETA,
    start: float = 0.0,
) -> float:
    """The ``beta`` in ``[0, max_beta]`` whose mean ESS fraction (:func:`ess_fraction`) is ``target``
    (``max_beta`` when even that leaves a larger fraction). Safeguarded Newton from ``start``.

    Shape: g ``(a, n)``, negatives ``(a, n)`` bool.
    """
    g, negatives = g.detach(), negatives.detach()
    if target >= 1.0 or not bool(negatives.any()):
        return 0.0
    prepared = _ess_prepare(g, negatives)
    if float(_ess_at(prepared, max_beta)[0]) >= target:
        return float(max_beta)  # the cap: the target is not reached below it
    lo, hi = 0.0, float(max_beta)
    beta = min(max(float(start), 0.0), hi)
    for _ in range(200):
        value, slope = (float(x) for x in _ess_at(prepared, beta))
        if abs(value - target) <= 1e-6:
            break
        if value > target:
            lo = beta
        else:
            hi = beta
        step = beta - (value - target) / slope if slope < 0 else math.nan
        beta = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return beta


@dataclass(frozen=True)
class LinearThreshold:
    """The linear threshold schedule of eq. (4): ``tau(epoch) = exp(l(epoch) / temperature)``.

    ``l(epoch) = start + (epoch - 1) / (epochs - 1) * (end - start)`` for a 1-based ``epoch``, so
    at epoch ``e`` the threshold keeps negatives whose cosine similarity is at least ``l(e)``.
    The paper's grid is ``start in {-0.5, -0.3, -0.1}``, ``end in {-0.1, 0, 0.1}``.
    """

    start: float
    end: float
    epochs: int
    temperature: float

    def __post_init__(self) -> None:
        _check_real("start", self.start)
        _check_real("end", self.end)
        if not (-1.0 <= self.start <= 1.0 and -1.0 <= self.end <= 1.0):
            raise ValueError(
                f"start and end are cosine similarities and must lie in [-1, 1], got start={self.start}, end={self.end}"
            )
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got epochs={self.epochs!r}")
        _check_real("temperature", self.temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={self.temperature}")

    def cosine(self, epoch: int) -> float:
        """The cosine-similarity cut ``l(epoch)`` for a 1-based ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch must be an integer in [1, {self.epochs}] (1-based), got epoch={epoch!r}")
        if self.epochs == 1:
            return float(self.start)
        return self.start + (epoch - 1) / (self.epochs - 1) * (self.end - self.start)

    def __call__(self, epoch: int) -> float:
        """``tau`` for a 1-based ``epoch``."""
        return math.exp(self.cosine(epoch) / self.temperature)

    def hardening(self, epoch: int) -> Threshold:
        """The :class:`Threshold` hardening in force at a 1-based ``epoch``."""
        return Threshold(self(epoch))


def linear_threshold(start: float, end: float, epochs: int, temperature: float) -> LinearThreshold:
    """Eq. (4): a schedule ``epoch -> tau``; call it with a 1-based epoch.

    Example: ``linear_threshold(-0.5, -0.1, 200, 0.5)(1) == exp(-0.5 / 0.5)``.
    """
    return LinearThreshold(start, end, epochs, temperature)


def _check_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value}")
