"""Projection head and output normalisation for contrastive models.

``ProjectionHead`` is the SimCLR / H-SCL head ``Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out)``
(e.g. 2048 -> 512 -> BN -> ReLU -> 128). ``normalize_output`` / ``OutputNormalization`` place the projection on the
unit sphere (``"sphere"``), in the closed unit ball (``"ball"``) or leave it alone (``"none"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NORMALIZATIONS", "OutputNormalization", "ProjectionHead", "normalize_output"]

NORMALIZATIONS = ("sphere", "ball", "none")


def _check_mode(mode: str) -> str:
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization mode {mode!r}; valid modes: {', '.join(NORMALIZATIONS)}")
    return mode


def normalize_output(z: torch.Tensor, mode: str = "sphere", eps: float = 1e-12) -> torch.Tensor:
    """Normalise the rows of ``z`` (shape ``(B, D)``; the last dimension is the feature dimension).

    * ``"sphere"``: ``z / max(||z||, eps)``, rows on the unit sphere;
    * ``"ball"``: ``z / max(1, ||z||)``, the projection onto the closed unit ball: rows with ``||z|| <= 1`` are
      returned unchanged (bit for bit), longer rows are scaled to norm 1;
    * ``"none"``: ``z`` itself.

    Raises ValueError for any other mode.
    """
    _check_mode(mode)
    if mode == "sphere":
        return F.normalize(z, p=2.0, dim=-1, eps=eps)
    if mode == "ball":
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1.0)
    return z


class OutputNormalization(nn.Module):
    """Module form of :func:`normalize_output`: ``(B, D) -> (B, D)``."""

    def __init__(self, mode: str = "sphere") -> None:
        super().__init__()
        self.mode = _check_mode(mode)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_output(z, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ProjectionHead(nn.Module):
    """``Linear(in_dim, hidden_dim) -> BatchNorm1d -> ReLU -> Linear(hidden_dim, out_dim)``.

    The first linear layer has no bias (the batch norm right after it would cancel it). Being a batch-norm
    layer, the head needs batches of more than one row in training mode.

    Shapes: ``forward(h)``: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_dim, self.hidden_dim, self.out_dim = int(in_dim), int(hidden_dim), int(out_dim)
        self.net = nn.Sequential(
            nn.Linear(self.in_dim, self.hidden_dim, bias=False),
            nn.BatchNorm1d(self.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden_dim, self.out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return self.net(h)
