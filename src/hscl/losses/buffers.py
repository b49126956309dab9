"""What the fused kernels write into: reusable per-thread buffers, scatters into them, the per-call outputs."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor


class _Workspace(threading.local):
    """Per-thread reusable buffers for the fused kernels (CPU only; other devices allocate), by slot."""

    def __init__(self) -> None:
        self.buffers: dict = {}

    def get(self, slot: int, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A ``(rows, cols)`` matrix (contents undefined) in the buffer of ``slot``."""
        if device.type != "cpu":
            return torch.empty(rows, cols, dtype=dtype, device=device)
        key = (slot, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            self.buffers.pop(key, None)
            del buf
            buf = torch.empty(rows * cols, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[: rows * cols].view(rows, cols)


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free the reusable (chunk x rows) buffers the loss keeps between calls on CPU."""
    _WORKSPACE.buffers.clear()


def _fill(value: float, like: Tensor, shape: tuple[int, int]) -> Tensor:
    """A constant ``(t, W)`` source for scatters (an expanded scalar: much faster than a scalar value)."""
    return torch.full((1, 1), value, dtype=like.dtype, device=like.device).expand(shape)


def _set_columns(rows: Tensor, columns: Tensor, value: float | Tensor) -> None:
    """``rows`` (t, cols) set to ``value`` (a number, or one per row (t,)) on ``columns``: a (t, W) table of
    column indices, or a (t, cols) bool mask (the dense sets of multi-hot labels)."""
    if columns.dtype == torch.bool:
        if isinstance(value, Tensor):
            torch.where(columns, value[:, None], rows, out=rows)
        else:
            rows.masked_fill_(columns, value)
    elif isinstance(value, Tensor):
        rows.scatter_(1, columns, value[:, None].expand(columns.shape))
    else:
        rows.scatter_(1, columns, _fill(value, rows, columns.shape))


@dataclass
class _Outputs:
    """What one call of a fused kernel produces. Shapes ``(N,)`` per anchor; ``dZ`` ``(N, d)``."""

    log_tilted_mean: Tensor  # log E(r)
    anchor_sum: Tensor  # sum over the positives of loss(r, p)
    fallback: Tensor  # bool: a threshold kept no negative, w = 1
    num_kept: Tensor  # negatives of non-zero weight
    dZ: Tensor | None = None  # the gradient w.r.t. the (normalised) batch rows
    pairs: list[Tensor] | None = None  # reduction="none": the pair values of each tile, padded
    keys: list[Tensor] | None = None  # ... and their sort keys r * cols + p (padding sorts last)

    @classmethod
    def empty(cls, num_neg: Tensor, Z: Tensor, *, per_pair: bool, grad: bool) -> _Outputs:
        """Zeros for ``N = len(num_neg)`` anchors of rows ``Z`` (N, d); ``num_kept`` starts at ``|N(r)|``."""
        N, dtype, device = num_neg.shape[0], Z.dtype, Z.device
        return cls(
            log_tilted_mean=torch.zeros(N, dtype=dtype, device=device),
            anchor_sum=torch.zeros(N, dtype=dtype, device=device),
            fallback=torch.zeros(N, dtype=torch.bool, device=device),
            num_kept=num_neg.clone(),
            dZ=torch.zeros(N, Z.shape[1], dtype=dtype, device=device) if grad else None,
            pairs=[] if per_pair else None,
            keys=[] if per_pair else None,
        )
