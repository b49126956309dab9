"""The loss's state in a task checkpoint beyond its buffers: the automatic hardening's beta and state, and the
memory of past batches, whose saved shape is the right one (the memory grows until it is full)."""

from __future__ import annotations

from torch import nn

from hscl.engine.runtime.checkpoints import check_weights
from hscl.hardening import AutoExponential

__all__ = [
    "AUTO_BETA_KEY",
    "AUTO_STATE_KEY",
    "auto_hardening",
    "check_task_weights",
    "memory_rows",
    "restore_loss_state",
    "save_loss_state",
]


def auto_hardening(loss_fn: nn.Module | None) -> AutoExponential | None:
    """The loss's automatic hardening (:class:`hscl.hardening.AutoExponential`, ``loss.beta: auto``), else None."""
    own = getattr(loss_fn, "hardening", None)
    return own if isinstance(own, AutoExponential) else None


def memory_rows(loss_fn: nn.Module | None) -> int | None:
    """Rows in the loss's memory of past batches: 0 while empty, None for a loss without a memory."""
    if not getattr(loss_fn, "memory_size", 0):
        return None
    memory = loss_fn.memory  # (z (K', d), labels) or None
    return 0 if memory is None else int(memory[0].shape[0])


#: the entry of a task checkpoint holding the last beta an automatic hardening used
AUTO_BETA_KEY = "hscl_auto_beta"
#: the entry holding its state (AutoExponential.state(): the last solution, where the next solve starts, and the
#: engine's moving average and step count), so that a resumed run uses the very betas of an uninterrupted one
AUTO_STATE_KEY = "hscl_auto_state"

#: the loss's memory buffers: their saved shape is the right one (the memory grows until it is full)
_LOSS_MEMORY = ("loss_fn.memory_z", "loss_fn.memory_labels", "loss_fn.memory_steps")


def save_loss_state(task: nn.Module, checkpoint: dict) -> None:
    """Add to a task checkpoint the loss state that is not a buffer: the automatic hardening's beta and state."""
    auto = auto_hardening(task.loss_fn)
    if auto is not None:
        checkpoint[AUTO_BETA_KEY] = float(auto.beta)
        checkpoint[AUTO_STATE_KEY] = auto.state()


def restore_loss_state(task: nn.Module, checkpoint: dict) -> None:
    """Before the task loads ``checkpoint`` (strictly): fit its ``state_dict`` to the task's loss (a checkpoint
    written before the losses had a memory gets the task's own, empty one; a memory the loss does not keep is
    dropped) and restore the automatic hardening's state (a checkpoint of before it kept one: its last beta)."""
    own = task.state_dict()
    state = {k: v for k, v in checkpoint["state_dict"].items() if k not in _LOSS_MEMORY or k in own}
    state.update({k: own[k] for k in _LOSS_MEMORY if k in own and k not in state})
    checkpoint["state_dict"] = state
    auto = auto_hardening(task.loss_fn)
    if auto is not None and AUTO_STATE_KEY in checkpoint:
        auto.load_state(checkpoint[AUTO_STATE_KEY])
    elif auto is not None and AUTO_BETA_KEY in checkpoint:
        auto.beta = float(checkpoint[AUTO_BETA_KEY])


def check_task_weights(task: nn.Module, state: dict, path, what: str) -> None:
    """:func:`~hscl.engine.runtime.checkpoints.check_weights` of a task checkpoint's ``state``; the loss's
    memory may have any saved shape, and be missing from a checkpoint written before the losses had one."""
    own = task.state_dict()
    shaped = {k: v for k, v in state.items() if k not in _LOSS_MEMORY}
    shaped.update({k: own[k] for k in _LOSS_MEMORY if k in own})
    check_weights(task, shaped, path, what)
