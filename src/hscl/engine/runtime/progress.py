"""The progress display of ``hscl train``: one line per epoch, 1-based, on rank 0 only.

On a terminal the line of the running epoch is redrawn in place (``\\r``) as its steps finish, then completed
with the epoch's mean loss, its kNN monitor and its time; elsewhere (a log file, a notebook's captured output) only
the completed line is written. So a run of E epochs prints exactly the lines ``Epoch 1/E`` ... ``Epoch E/E``, each
once, and nothing is left to redraw when Lightning prints its own messages.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

__all__ = ["EpochProgress"]


class EpochProgress(ProgressBar):
    """Lightning's progress bar slot filled with one line per epoch (see the module). ``stream``: default stdout."""

    def __init__(self, stream: TextIO | None = None, refresh_seconds: float = 0.2) -> None:
        super().__init__()
        self._stream = stream
        self.refresh_seconds = refresh_seconds
        self._enabled = True
        self._start = 0.0
        self._drawn = 0.0
        self._width = 0

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _live(self, trainer) -> bool:
        return self._enabled and trainer.is_global_zero

    def _head(self, trainer) -> str:
        return f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def _write(self, text: str, end: str) -> None:
        padding = " " * max(0, self._width - len(text)) if self._width else ""
        self.stream.write(f"\r{text}{padding}{end}" if self._width else f"{text}{end}")
        self.stream.flush()
        self._width = 0 if end else len(text)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._drawn = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._live(trainer) or not getattr(self.stream, "isatty", lambda: False)():
            return
        now = time.perf_counter()
        total = self.total_train_batches
        last = isinstance(total, int) and batch_idx + 1 >= total
        if now - self._drawn < self.refresh_seconds and not last:
            return
        self._drawn = now
        steps = f"{batch_idx + 1}/{total}" if isinstance(total, int) else f"{batch_idx + 1}"
        rate = (batch_idx + 1) / (now - self._start) if now > self._start else math.nan
        self._write(f"{self._head(trainer)}  step {steps}  {rate:.2f} it/s", end="")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._live(trainer):
            return
        metrics = trainer.progress_bar_metrics
        parts = [self._head(trainer)]
        total = self.total_train_batches
        if isinstance(total, int):
            parts.append(f"{total} steps")
        parts.append(f"{time.perf_counter() - self._start:.1f}s")
        for key in ("loss", "knn_top1", "knn_mAP", "beta"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4g}")
        self._write("  ".join(parts), end="\n")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._live(trainer) and self._width:  # a line left open (an epoch cut short)
            self._write("", end="\n")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
