"""Alignment and uniformity on the hypersphere (Wang and Isola 2020); re-exported by :mod:`hscl.geometry`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment(z: Tensor, alpha: float = 2.0, normalize: bool = True) -> float:
    """Wang and Isola's alignment ``E ||f(x) - f(x+)||^alpha`` over every pair of views of a sample.

    Shape: z ``(B, V>=2, d)``.
    """
    if not isinstance(z, Tensor) or z.dim() != 3 or z.shape[1] < 2:
        raise ValueError("z must be a tensor of shape (B, V>=2, d)")
    z = z.detach().to("cpu", torch.float64)
    if normalize:
        z = F.normalize(z, dim=-1)
    V = z.shape[1]
    left, right = torch.triu_indices(V, V, offset=1)
    diff = z[:, left] - z[:, right]  # (B, pairs, d)
    return float(diff.norm(dim=-1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0, normalize: bool = True) -> float:
    """Wang and Isola's uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct rows.

    Shape: z ``(N, d)`` or ``(B, V, d)`` (flattened to rows).
    """
    if not isinstance(z, Tensor) or z.dim() not in (2, 3):
        raise ValueError("z must be a tensor of shape (N, d) or (B, V, d)")
    x = z.detach().to("cpu", torch.float64).reshape(-1, z.shape[-1])
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least 2 rows")
    if normalize:
        x = F.normalize(x, dim=-1)
    sq = torch.pdist(x).pow(2)
    return float(torch.logsumexp(-t * sq, 0) - math.log(sq.numel()))
