"""The saved state of a fine-tuning run (``finetune_last.pt``): written atomically after every epoch, read back
weights-only and checked to resume it (:func:`hscl.engine.finetune.loop.finetune`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["_atomic_save", "_finetune_state_file", "_read_finetune_state", "_restore_finetune_state"]


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _finetune_state_file(out_dir: str | Path | None, resume: bool) -> Path | None:
    """``out_dir/finetune_last.pt`` (None without ``out_dir``); refuses to overwrite one unless resuming."""
    if out_dir is None:
        return None
    state_file = Path(out_dir) / "finetune_last.pt"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    if state_file.exists() and not resume:
        raise FileExistsError(
            f"{state_file.parent} already holds a fine-tuning run (finetune_last.pt); pass --resume to continue "
            "it or choose another --out directory"
        )
    return state_file


def _read_finetune_state(state_file: Path | None, resume: bool, resolved: dict) -> dict | None:
    """The saved state of ``state_file`` to resume from (None: start afresh), checked against this run's config."""
    if state_file is None or not resume or not state_file.exists():
        return None
    from hscl.engine.runtime.checkpoints import load_checkpoint

    saved = load_checkpoint(state_file, expect="finetune")  # weights-only; a damaged file: one line
    if saved["config"] != resolved:
        raise ValueError(
            f"{state_file}: was written with another fine-tuning config {saved['config']}; this run uses "
            f"{resolved}; choose another --out directory"
        )
    return saved


def _restore_finetune_state(
    saved: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler,
) -> tuple[int, list[dict], float]:
    """Restore model, optimizer, scheduler (and fp16 gradient scaler) from ``saved``; returns ``(epoch, history,
    seconds)``."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    return saved["epoch"], saved["history"], saved["seconds"]
