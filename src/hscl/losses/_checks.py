"""Input checks of the loss family: each bad argument gets a clear error naming it and the allowed values."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hscl.hardening import Hardening
from hscl.validation import check_positive_real

HardeningLike = Hardening | Callable[[Tensor], Tensor] | None
MLike = float | int | str | None


class _ValueChecks:
    """Checks of tensor values whose verdicts are read with a loss call's one host synchronisation.

    Each check adds a 0-d flag on the device (1: passed) and what to do when it failed (raise, or look closer);
    the loss stacks :meth:`flags` with the other numbers it reads and hands their values to :meth:`verify`.
    """

    def __init__(self) -> None:
        self._flags: list[Tensor] = []
        self._failed: list[Callable[[], None]] = []

    def add(self, ok: Tensor, failed: Callable[[], None]) -> None:
        self._flags.append(ok.reshape(()).long())
        self._failed.append(failed)

    def flags(self) -> list[Tensor]:
        return self._flags

    def verify(self, values: Sequence[int] | None = None) -> None:
        """Call what each failed check asked for (``values``: the flags read on the host; None: read them now)."""
        if values is None:
            values = torch.stack(self._flags).tolist() if self._flags else []
        for passed, failed in zip(values, self._failed):
            if not passed:
                failed()


#: torch >= 2.4: ``torch.is_autocast_enabled(device_type)`` and ``torch.get_autocast_dtype(device_type)``
_PER_DEVICE_AUTOCAST = hasattr(torch, "get_autocast_dtype")


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for ``device_type`` and its dtype, on every torch since 2.1 (the per-device-type
    ``torch.is_autocast_enabled(device_type)`` / ``torch.get_autocast_dtype`` came in 2.4)."""
    if _PER_DEVICE_AUTOCAST:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cuda":
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return False, None


def _nonfinite_allowed(z: Tensor) -> bool:
    """Whether a non-finite ``z`` passes through instead of raising: under float16 (autocast or
    float16 ``z``), where overflow is expected and a gradient scaler skips the step on a non-finite
    loss. float32, float64 and bfloat16 keep the clear error."""
    if not isinstance(z, Tensor):
        return False
    if z.dtype == torch.float16:
        return True
    try:
        enabled, dtype = _autocast_state(z.device.type)
    except (RuntimeError, TypeError):  # a device type without autocast support
        return False
    return enabled and dtype == torch.float16


def _check_z(z: object, *, allow_nonfinite: bool = False, checks: _ValueChecks | None = None) -> Tensor:
    """``z`` of shape (B, V, d), floating, not empty; finite unless ``allow_nonfinite``: that check is added to
    ``checks`` (read with the caller's one host synchronisation), or without ``checks`` done here."""
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
    if allow_nonfinite:
        return z

    def nonfinite() -> None:  # a NaN or inf makes the sum non-finite; an overflow of the sum alone is no error
        bad = int((~torch.isfinite(z)).sum())
        if bad:
            raise ValueError(
                f"z contains {bad} non-finite value(s) (NaN or inf); the encoder output is already broken "
                f"before the loss (check the learning rate, the input data and mixed-precision settings)"
            )

    own = checks is None
    checks = _ValueChecks() if own else checks
    checks.add(torch.isfinite(z.detach().sum()), nonfinite)  # one reduction
    if own:
        checks.verify()
    return z


def _check_labels(
    labels: object, batch: int, device: torch.device, required_for: str | None, checks: _ValueChecks | None = None
) -> Tensor | None:
    """Integer class ids ``(B,)`` or ``(B, 1)`` as long ``(B,)``, or multi-hot ``(B, C)`` as bool: ``C > 1`` columns
    of bool or 0/1 numbers, or one bool column (a bool tensor is always multi-hot), on ``device``. The value checks
    (class ids >= 0, multi-hot numbers 0 or 1) are added to ``checks`` when given, else done here."""
    if labels is None:
        if required_for is not None:
            raise ValueError(f"labels are required for {required_for}; pass labels of shape (B,) = ({batch},)")
        return None
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dim() == 2 and labels.shape[0] == batch and labels.shape[1] == 1 and labels.dtype != torch.bool:
        if labels.is_floating_point() or labels.is_complex():  # 0/1 targets: class ids or one-class sets?
            raise TypeError(
                f"labels of shape (B, 1) = ({batch}, 1) must be integer class ids (labels.long()) or, for multi-hot "
                f"sets of one class, bool (labels.bool()); got {labels.dtype}"
            )
        labels = labels[:, 0]  # a column of class ids
    elif labels.dim() == 2 and labels.shape[0] == batch:
        return _multi_hot("labels", labels.to(device), checks)
    elif labels.dim() == 2:
        raise ValueError(
            f"labels of shape (B, C) = ({batch}, C) (multi-hot) or (B,) = ({batch},) (class ids) must match z of "
            f"B={batch} samples, got shape {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype (e.g. torch.long), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape (B,) = ({batch},) (class ids) or (B, C) (multi-hot) to match z of B={batch} "
            f"samples, got shape {tuple(labels.shape)}"
        )
    labels = labels.to(device=device, dtype=torch.long)

    def negative_ids() -> None:
        raise _negative_ids_error(int((labels < 0).sum()))

    own = checks is None
    checks = _ValueChecks() if own else checks
    checks.add(~(labels < 0).any(), negative_ids)
    if own:
        checks.verify()
    return labels


def _negative_ids_error(count: int) -> ValueError:
    """The error for ``count`` negative class ids (found with the caller's host synchronisation)."""
    return ValueError(
        f"labels must be class ids >= 0, got {count} negative id(s) (e.g. -1 as 'ignore'); a sample without a class "
        "is not supported: drop its rows from z and labels, or give it an id of its own"
    )


def _multi_hot(name: str, labels: Tensor, checks: _ValueChecks | None = None) -> Tensor:
    """``labels`` (n, C) as bool; numbers must be 0 or 1 (a check added to ``checks``, else done here)."""
    if labels.is_complex():
        raise TypeError(f"{name} of shape (n, C) must be multi-hot (bool or 0/1), got {labels.dtype}")
    if labels.shape[1] == 0:
        raise ValueError(f"{name} of shape (n, C) must have at least one class column, got shape {tuple(labels.shape)}")
    if labels.dtype != torch.bool:

        def not_multi_hot() -> None:
            raise ValueError(f"{name} of shape (n, C) must be multi-hot: every entry 0 or 1")

        own = checks is None
        checks = _ValueChecks() if own else checks
        checks.add(~((labels != 0) & (labels != 1)).any(), not_multi_hot)
        if own:
            checks.verify()
        labels = labels != 0
    return labels


def _check_memory(
    memory: object, z: Tensor, labels: Tensor | None, checks: _ValueChecks | None = None
) -> tuple[Tensor, Tensor | None] | None:
    """``memory=(z_mem (K, d), labels_mem)``: shapes, dtype and device against ``z`` (B, V, d) and ``labels``;
    the finiteness of ``z_mem`` (and the 0/1 of multi-hot numbers) added to ``checks``, else checked here.
    Returns None for no memory or K = 0."""
    if memory is None:
        return None
    if not isinstance(memory, (tuple, list)) or len(memory) != 2:
        raise TypeError("memory must be a pair (z_mem of shape (K, d), labels_mem of shape (K,), (K, C) or None)")
    z_mem, labels_mem = memory
    d = z.shape[-1]
    if not isinstance(z_mem, Tensor) or not z_mem.is_floating_point() or z_mem.dim() != 2 or z_mem.shape[1] != d:
        shape = tuple(z_mem.shape) if isinstance(z_mem, Tensor) else type(z_mem).__name__
        raise ValueError(f"memory[0] (z_mem) must be a floating tensor of shape (K, d) with d = {d}, got {shape}")
    if z_mem.device != z.device:
        raise ValueError(f"memory[0] (z_mem) is on {z_mem.device} but z is on {z.device}; keep them on one device")
    K = z_mem.shape[0]
    if K == 0:
        return None
    own = checks is None
    checks = _ValueChecks() if own else checks

    def nonfinite() -> None:
        raise ValueError("memory[0] (z_mem) has non-finite values (NaN or inf)")

    checks.add(torch.isfinite(z_mem.detach()).all(), nonfinite)
    checked = _memory_labels(labels_mem, K, z, labels, checks)
    if own:
        checks.verify()
    return z_mem, checked


def _memory_labels(labels_mem: object, K: int, z: Tensor, labels: Tensor | None, checks: _ValueChecks) -> Tensor | None:
    """``memory[1]``: None, class ids ``(K,)`` or multi-hot ``(K, C)``, of the kind of ``labels``."""
    if labels_mem is None:
        return None
    if not isinstance(labels_mem, Tensor) or labels_mem.shape[0] != K or labels_mem.dim() not in (1, 2):
        shape = tuple(labels_mem.shape) if isinstance(labels_mem, Tensor) else type(labels_mem).__name__
        raise ValueError(f"memory[1] (labels_mem) must be None or of shape (K,) or (K, C) with K = {K}, got {shape}")
    labels_mem = labels_mem.to(z.device)
    if labels is not None and labels.dim() != labels_mem.dim():
        kind = "multi-hot (B, C)" if labels.dim() == 2 else "class ids (B,)"
        raise ValueError(
            f"memory[1] (labels_mem) must be of the kind of labels, {kind}; got shape {tuple(labels_mem.shape)}"
        )
    if labels_mem.dim() == 2:
        labels_mem = _multi_hot("memory[1] (labels_mem)", labels_mem, checks)
        if labels is not None and labels_mem.shape[1] != labels.shape[1]:
            raise ValueError(
                f"memory[1] (labels_mem) has {labels_mem.shape[1]} classes but labels have {labels.shape[1]}"
            )
        return labels_mem
    if labels_mem.dtype == torch.bool or labels_mem.is_floating_point() or labels_mem.is_complex():
        raise TypeError(f"memory[1] (labels_mem) must have an integer dtype, got {labels_mem.dtype}")
    return labels_mem.long()


def _check_M(M: object) -> MLike:
    if M is None or M == "count":
        return M  # type: ignore[return-value]
    if isinstance(M, str):
        raise ValueError(f"M must be None (rows - 2), a number > 0, or 'count' (|N(r)|), got {M!r}")
    return check_positive_real("M", M)


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


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def _callable_weights(eta: Callable, g: Tensor, negative_mask: Tensor) -> Tensor:
    """``eta(g)`` on the negatives (0 elsewhere), checked: same shape as ``g``, finite, non-negative.

    Shape: g ``(c, N)``, negative_mask ``(c, N)`` bool -> weights ``(c, N)`` in ``g``'s dtype.
    """
    w = eta(g)
    if not isinstance(w, Tensor) or w.shape != g.shape:
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(
            "hardening callable must return a tensor of weights with the same shape as its input g "
            f"{tuple(g.shape)}, got {got}"
        )
    w = torch.where(negative_mask, w.to(g.dtype), 0.0)
    with torch.no_grad():  # both checks in one host synchronisation
        finite, nonnegative = torch.stack([torch.isfinite(w).all(), (w >= 0).all()]).tolist()
        if not finite:
            raise ValueError("hardening callable returned non-finite weights (NaN or inf) on negatives")
        if not nonnegative:
            raise ValueError(
                f"hardening callable returned negative weights (min {float(w.min()):.4g}); a hardening "
                "function must be non-negative (Definition 1)"
            )
    return w
