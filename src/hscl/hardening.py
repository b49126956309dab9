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
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch

from hscl.validation import check_int, check_real

__all__ = [
    "AutoExponential",
    "Exponential",
    "Hardening",
    "LinearThreshold",
    "Threshold",
    "ess_beta",
    "check_hardening",
    "ess_ratio",
    "is_log_linear",
    "linear_threshold",
]


class Hardening:
    """Base class of the hardening functions.

    A hardening is *log-linear* when ``log eta(g) = beta * g`` on a kept set ``{g >= log_threshold}`` and
    ``-inf`` elsewhere, i.e. ``eta(g) = exp(beta * g) * 1[g >= log_threshold]`` (this class's own
    ``__call__``). The class attribute ``log_linear`` declares it: the loss then computes eq. (3) from
    ``beta`` and ``log_threshold`` alone, with a fused, analytic forward and backward. Any other hardening
    (``log_linear = False``, or a plain callable ``eta(g) -> weights``) takes the generic autograd path.

    ``log_linear`` is inherited, except that a subclass which defines its own ``__call__`` is not log-linear
    unless it declares ``log_linear = True`` itself: a new ``eta`` must say that it still has that form.
    :class:`Exponential`, :class:`Threshold` and :class:`AutoExponential` declare it, and so do their
    subclasses that keep their ``__call__``.
    """

    #: ``eta(g) = exp(beta * g) * 1[g >= log_threshold]`` exactly (see the class docstring)
    log_linear: ClassVar[bool] = True
    #: slope of ``log eta`` in ``g`` (0 for the threshold)
    beta: float = 0.0
    #: ``g`` below this gets weight 0 (``-inf`` keeps every negative)
    log_threshold: float = -math.inf

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__ and "log_linear" not in cls.__dict__:
            cls.log_linear = False  # a new eta(g) is not known to be log-linear until it says so

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """Return the weights ``eta(g) = exp(beta * g) * 1[g >= log_threshold]``, same shape as ``g``."""
        return torch.exp(self.beta * g) * (g >= self.log_threshold).to(g.dtype)


@dataclass(frozen=True)
class Exponential(Hardening):
    """Exponential tilting ``eta(t) = exp(beta * t)``, ``beta >= 0`` (H-SCL(beta), H-UCL).

    ``beta = 0`` gives weight 1 everywhere, i.e. no hardening.
    """

    log_linear = True  # eta(g) = exp(beta * g)
    beta: float = 1.0

    def __post_init__(self) -> None:
        check_real("beta", self.beta)
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

    log_linear = True  # eta(g) = 1[g >= log(tau)]
    tau: float = 1.0

    def __post_init__(self) -> None:
        check_real("tau", self.tau)
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (the threshold compares exp(g) >= tau), got tau={self.tau}")

    @property
    def log_threshold(self) -> float:  # type: ignore[override]
        return math.log(self.tau)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return (g >= self.log_threshold).to(g.dtype)


class AutoExponential(Hardening):
    """Exponential tilting whose ``beta`` each forward of the loss chooses from the batch (docs/losses.md,
    "Automatic hardness").

    The gradient's negative distribution of anchor ``r`` is proportional to ``exp((1 + beta) g(r, s))`` over
    its negatives ``N(r)``. With ``ESS(w) = (sum_s w)^2 / sum_s w^2`` (the effective number of negatives under
    weights ``w``), ``rho_r(beta) = ESS(exp((1 + beta) g)) / ESS(exp(g))`` is the share of the effective
    negatives that the tilt keeps beyond the concentration the temperature already gives: 1 at ``beta = 0`` at
    every temperature, non-increasing in ``beta``. Each call of the loss sets ``beta >= 0`` so that the mean of
    ``rho_r`` over the anchors with ``|N(r)| >= 2`` equals ``target``, on the detached similarities (no
    gradient flows through the choice), capped at ``max_beta``; the loss is then exactly H-SCL / H-UCL with
    :class:`Exponential` ``(beta)``.

    The solve (:func:`ess_beta`) is ``iterations`` steps of a safeguarded Newton iteration on ``[0, max_beta]``
    (bisection whenever a Newton step leaves the bracket), started from the previous call's solution, all on
    the similarities' device; the loss reads the solution with its own one host synchronisation. At most
    ``max_entries`` similarities enter it: for a larger batch it uses 8 evenly spaced contiguous groups of
    anchors holding that many, against every candidate column.

    Attributes: ``beta``, the beta the last call used (0 before the first); ``solved``, the last call's
    solution (None before the first). They differ only where :meth:`use` is overridden: the training engine's
    smoothing over steps and warm-up (``loss.auto_momentum``, ``loss.auto_warmup_steps``) do so.

    Args:
        target: the mean ``rho_r``, in ``(0, 1]`` (1 gives ``beta = 0``; smaller is harder).
        max_beta: the cap on ``beta`` (default 10), also the answer when even it leaves a larger mean.
        iterations: Newton / bisection steps per call (default 6).
        max_entries: similarities the solver may use per call (default ``2**18``: every anchor of a batch of
            256 x 2 views).
    """

    MAX_BETA = 10.0
    ITERATIONS = 6
    log_linear = True  # eta(g) = exp(beta * g) with this call's beta

    def __init__(
        self,
        target: float = 0.5,
        *,
        max_beta: float = MAX_BETA,
        iterations: int = ITERATIONS,
        max_entries: int = 1 << 18,
    ) -> None:
        check_real("target", target)
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1] (a mean ratio of effective sample sizes), got target={target}")
        check_real("max_beta", max_beta)
        if not max_beta > 0:
            raise ValueError(f"max_beta must be > 0, got max_beta={max_beta}")
        check_int("iterations", iterations, 1)
        check_int("max_entries", max_entries, 1)
        self.target, self.max_beta = float(target), float(max_beta)
        self.iterations, self.max_entries = iterations, max_entries
        self.beta = 0.0
        self.solved: float | None = None

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.beta * g)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target}, beta={self.beta:.6g}, max_beta={self.max_beta})"

    def choose(self, g: torch.Tensor, negatives: torch.Tensor) -> float:
        """Solve for similarities ``g`` (a, n) with the negative mask ``negatives`` (a, n), set ``solved`` and
        ``beta`` (:meth:`use` of the solution) and return ``beta``: :meth:`solve`, then :meth:`accept`. One host
        synchronisation (the loss instead reads the solution with its own, see :meth:`solve`)."""
        return self.accept(float(self.solve(g, negatives)))

    def solve(self, g: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The solution for similarities ``g`` (a, n) with the negative mask ``negatives`` (a, n), started from
        the previous one, as a scalar tensor on ``g``'s device: nothing is read back (:func:`ess_beta`)."""
        start = 1.0 if self.solved is None else self.solved
        return ess_beta(g, negatives, self.target, self.max_beta, start=start, iterations=self.iterations)

    def accept(self, solved: float) -> float:
        """Record a solution read on the host: set ``solved`` and ``beta`` (:meth:`use` of it); return ``beta``."""
        self.solved = float(solved)
        self.beta = float(self.use(self.solved))
        return self.beta

    def use(self, solved: float) -> float:
        """The beta a call uses given its solution: the solution itself (the training engine's smoothing
        overrides this)."""
        return solved

    def state(self) -> dict:
        """What a resumed run needs to choose the very betas of an uninterrupted one (plain numbers)."""
        return {"beta": self.beta, "solved": self.solved}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""
        self.beta = float(state["beta"])
        self.solved = None if state.get("solved") is None else float(state["solved"])


def _ess_prepare(g: torch.Tensor, negatives: torch.Tensor):
    """The solver's inputs: ``g`` minus each row's largest negative on ``N(r)`` (<= 0; ``_OFF`` elsewhere, so
    that its weights vanish for every ``theta >= 1``), the rows with ``|N(r)| >= 2`` (as the compute dtype) and
    their number (at least 1). Shapes ``(a, n)``, ``(a,)`` bool, scalar; float64 for float64 ``g``, else float32."""
    dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    g, negatives = g.detach().to(dtype), negatives.detach().to(device=g.device, dtype=torch.bool)
    top = torch.where(negatives, g, -math.inf).amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    shifted = torch.where(negatives, g - top, _OFF)
    rows = negatives.sum(1) >= 2
    return shifted, rows, rows.sum().to(dtype).clamp(min=1.0)


#: the shifted similarity off ``N(r)``: ``exp(theta * _OFF)`` is 0 in float32 and float64 for ``theta >= 1``, and
#: ``_OFF * 0`` is 0 (an infinity would give NaN in the derivative's sums)
_OFF = -1.0e5


def _log_ess(shifted: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log ESS(exp(theta g))`` per row and its derivative in ``theta``, ``2 E_theta[g] - 2 E_2theta[g]``
    (``E_t``: the mean of ``g`` under weights ``exp(t g)``), from the max-shifted ``g``: the weights are at most 1
    and the largest is 1, so the sums are >= 1 (the log-sum-exp form) and finite at any temperature."""
    w = torch.mul(shifted, theta).exp_()  # in place, and row dot products: no (a, n) temporaries beyond w
    s1, g1 = w.sum(1), torch.linalg.vecdot(shifted, w, dim=1)
    w.mul_(w)
    s2, g2 = w.sum(1), torch.linalg.vecdot(shifted, w, dim=1)
    return 2.0 * s1.log() - s2.log(), 2.0 * (g1 / s1 - g2 / s2)


def ess_ratio(g: torch.Tensor, negatives: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """``mean_r rho_r(beta)`` over the rows with ``|N(r)| >= 2``, ``rho_r = ESS(exp((1 + beta) g)) / ESS(exp(g))``
    (1 where no row qualifies).

    Shape: g ``(a, n)``, negatives ``(a, n)`` bool; output: a scalar tensor (float64 for float64 ``g``, else
    float32), on ``g``'s device.
    """
    shifted, rows, count = _ess_prepare(g, negatives)
    base = _log_ess(shifted, torch.ones((), dtype=shifted.dtype, device=shifted.device))[0]
    theta = 1.0 + torch.as_tensor(beta, dtype=shifted.dtype, device=shifted.device)
    rho = torch.where(rows, torch.exp(_log_ess(shifted, theta)[0] - base), 0.0)  # NaN rows (no negative) dropped
    return torch.where(rows.any(), rho.sum() / count, 1.0)


def ess_beta(
    g: torch.Tensor,
    negatives: torch.Tensor,
    target: float,
    max_beta: float = AutoExponential.MAX_BETA,
    *,
    start: float = 1.0,
    iterations: int = AutoExponential.ITERATIONS,
) -> torch.Tensor:
    """The ``beta`` in ``[0, max_beta]`` with ``ess_ratio(g, negatives, beta) = target`` (:func:`ess_ratio`):
    ``max_beta`` when even it leaves a larger ratio, 0 for ``target >= 1`` or without a row of ``|N(r)| >= 2``.

    ``iterations`` steps of safeguarded Newton from ``start`` (clamped to the bracket): each step keeps the
    bracket ``[lo, hi]`` of the root and takes the Newton step when it falls inside it, else the midpoint. All
    on the device with a fixed number of steps: no host synchronisation (the caller reads the result).

    Shape: g ``(a, n)``, negatives ``(a, n)`` bool; output: a scalar tensor (float64 for float64 ``g``, else
    float32) on ``g``'s device.
    """
    dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    if target >= 1.0:
        return torch.zeros((), dtype=dtype, device=g.device)
    shifted, rows, count = _ess_prepare(g, negatives)

    def at(beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean ratio minus ``target``, and its derivative in ``beta``."""
        log_ess, slope = _log_ess(shifted, 1.0 + beta)
        rho = torch.where(rows, torch.exp(log_ess - base), 0.0)  # NaN rows (no negative) dropped
        return rho.sum() / count - target, torch.where(rows, rho * slope, 0.0).sum() / count

    def full(value: float) -> torch.Tensor:
        return torch.full((), value, dtype=dtype, device=g.device)

    base = _log_ess(shifted, full(1.0))[0]
    lo, hi = full(0.0), full(max_beta)
    beta = full(min(max(float(start), 0.0), max_beta))
    for _ in range(iterations):
        value, slope = at(beta)
        above = value > 0  # the ratio is still above the target: the root lies above beta
        lo, hi = torch.where(above, beta, lo), torch.where(above, hi, beta)
        step = beta - value / slope
        inside = (slope < 0) & (step >= lo) & (step <= hi)
        beta = torch.where(inside, step, 0.5 * (lo + hi))
    capped = at(hi.new_tensor(max_beta))[0] >= 0  # the target is not reached below the cap
    return torch.where(rows.any(), torch.where(capped, full(max_beta), beta), full(0.0))


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
        check_real("start", self.start)
        check_real("end", self.end)
        if not (-1.0 <= self.start <= 1.0 and -1.0 <= self.end <= 1.0):
            raise ValueError(
                f"start and end are cosine similarities and must lie in [-1, 1], got start={self.start}, end={self.end}"
            )
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got epochs={self.epochs!r}")
        check_real("temperature", self.temperature)
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


def is_log_linear(hardening: object) -> bool:
    """Whether ``hardening`` declares ``eta(g) = exp(beta * g) * 1[g >= log_threshold]`` (a :class:`Hardening`
    whose ``log_linear`` is true): the condition of the losses' fused path and of the graph losses' closed form."""
    return isinstance(hardening, Hardening) and bool(hardening.log_linear)


def check_hardening(hardening: object):
    """``hardening`` unchanged if it is ``None``, a :class:`Hardening` or a callable ``eta(g)``; a one-line error
    otherwise, or when a log-linear hardening's ``beta`` (a finite real >= 0) or ``log_threshold`` (a real
    < inf) is out of range: the fused path reads those two numbers and nothing else."""
    if is_log_linear(hardening):
        beta, log_threshold = hardening.beta, hardening.log_threshold  # type: ignore[union-attr]
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < math.inf:
            raise ValueError(f"a log-linear hardening's beta must be a finite real >= 0, got beta={beta!r}")
        real = isinstance(log_threshold, numbers.Real) and not isinstance(log_threshold, bool)
        if not real or not log_threshold < math.inf:
            raise ValueError(
                f"a log-linear hardening's log_threshold must be a real < inf, got log_threshold={log_threshold!r}"
            )
    if hardening is None or isinstance(hardening, Hardening) or callable(hardening):
        return hardening
    raise TypeError(
        "hardening must be None, hscl.hardening.Exponential(beta), hscl.hardening.Threshold(tau) or a "
        f"callable eta(g) -> non-negative weights of the same shape, got {type(hardening).__name__}"
    )
