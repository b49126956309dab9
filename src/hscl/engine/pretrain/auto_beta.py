"""The training engine's automatic hardness (``loss.beta: auto``): each step's solution smoothed over steps.

:class:`hscl.hardening.AutoExponential` solves one beta per loss call (docs/losses.md, "Automatic hardness"). Over
a run that solution follows each batch's sampling noise, and in the first steps it is the solution for an
untrained encoder. The engine therefore trains with

* ``loss.auto_warmup_steps`` = ``W``: beta = 1 (:data:`WARMUP_BETA`, H-SCL's default) for the first ``W``
  training steps (default :data:`DEFAULT_WARMUP_STEPS`), while the solver runs (its solution is logged);
* ``loss.auto_momentum`` = ``m``: after them, the beta used at step ``t`` is the exponential moving average
  ``b_t = m * b_{t-1} + (1 - m) * s_t`` of the solutions ``s_t`` (default :data:`DEFAULT_MOMENTUM`: a time
  constant of about 10 steps, a third of an epoch of the quick presets), started at the warm-up's beta 1, or at
  the first solution when ``W = 0``; ``m = 0`` uses each step's solution.

``metrics.csv`` logs per epoch the mean beta used (``beta``) and the mean solution (``beta_solved``). The
average and the step count are saved in the run's checkpoints, so a resumed run uses the very betas of an
uninterrupted one.
"""

from __future__ import annotations

from hscl.hardening import AutoExponential

__all__ = ["DEFAULT_MOMENTUM", "DEFAULT_WARMUP_STEPS", "WARMUP_BETA", "SmoothedAutoExponential"]

#: the EMA momentum of ``loss.auto_momentum`` when not set
DEFAULT_MOMENTUM = 0.9
#: training steps at :data:`WARMUP_BETA` before the automatic choice takes over, when not set
DEFAULT_WARMUP_STEPS = 20
#: the beta of the warm-up (H-SCL's default, the middle of the paper's grid)
WARMUP_BETA = 1.0


class SmoothedAutoExponential(AutoExponential):
    """:class:`~hscl.hardening.AutoExponential` whose call uses the warm-up's beta, then the moving average of
    the solutions (module docstring). ``steps`` counts the calls (training steps); ``average`` is the beta of
    the last call after the warm-up (None before)."""

    def __init__(self, target: float, *, momentum: float = DEFAULT_MOMENTUM, warmup_steps: int = DEFAULT_WARMUP_STEPS):
        super().__init__(target)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1) (0: no smoothing), got momentum={momentum!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got warmup_steps={warmup_steps!r}")
        self.momentum, self.warmup_steps = float(momentum), warmup_steps
        self.steps = 0
        self.average: float | None = None

    def use(self, solved: float) -> float:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self.average = WARMUP_BETA
        elif self.average is None:
            self.average = solved
        else:
            self.average = self.momentum * self.average + (1.0 - self.momentum) * solved
        return self.average

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target}, beta={self.beta:.6g}, max_beta={self.max_beta}, "
            f"momentum={self.momentum}, warmup_steps={self.warmup_steps}, steps={self.steps})"
        )

    def state(self) -> dict:
        return {**super().state(), "steps": self.steps, "average": self.average}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.steps = int(state.get("steps", 0))
        self.average = None if state.get("average") is None else float(state["average"])
