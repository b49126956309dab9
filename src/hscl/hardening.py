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

__all__ = ["Exponential", "Hardening", "LinearThreshold", "Threshold", "linear_threshold"]


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
