"""The checks of scalar arguments that every layer shares: a bad value raises one line naming the argument and
what is allowed (``TypeError`` for a value of the wrong type, ``ValueError`` for one out of range).

Each check returns the value as the type it checked for, so that a caller writes
``self.lam = check_real("lam", lam, 0.0, 1.0)``. Checks of tensors (shapes, labels, finiteness on the device)
are where the tensors are: :mod:`hscl.losses` and :mod:`hscl.geometry`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["check_choice", "check_int", "check_positive_real", "check_real"]


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``; else ``ValueError: name must be one of 'a', 'b', got 'c'``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def check_real(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False
) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    A bool is not a number here (``True`` is refused), nor is NaN or an infinity.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value}")
    if (value <= low if low_open else value < low) or value > high:
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must lie in {bounds}, got {name}={value}")
    return value


def check_positive_real(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number > 0, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value}")
    return value


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return int(value)
