"""Input checks and the row structure shared by the batch diagnostics of :mod:`hscl.geometry`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_batch(z: object, labels: object, need_views: int = 1) -> tuple[Tensor, Tensor]:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (B, V, d), got {type(z).__name__}")
    if z.dim() != 3:
        raise ValueError(f"z must have shape (B, V, d), got shape {tuple(z.shape)}")
    B, V, d = z.shape
    if B < 2 or d < 1:
        raise ValueError(f"z must hold at least 2 samples of dimension >= 1, got shape {tuple(z.shape)}")
    if V < need_views:
        raise ValueError(f"z needs at least {need_views} views per sample (shape (B, V>={need_views}, d)), got V={V}")
    if not torch.isfinite(z).all():
        raise ValueError("z contains NaN or infinite values")
    labels = _check_class_ids(labels, B)
    # float64 on a CPU copy: GPUs run float64 slowly, and some of their kernels have no deterministic version
    return z.detach().to("cpu", torch.float64), labels.cpu()


def _check_class_ids(labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor of shape ({n},), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    return labels.long()


@dataclass
class _Rows:
    """Flattened rows and their set masks. ``N = V * B``; all masks ``(N, N)`` bool."""

    G: Tensor  # (N, N) float64 similarities g = z_r . z_s / temperature
    instance: Tensor  # (N,)
    label: Tensor  # (N,)
    unsup: Tensor  # other instance: N_unsupervised(r)
    sup: Tensor  # other label: N_supervised(r), the H-SCL negatives
    hcol: Tensor  # same label, other instance


def _rows(z: Tensor, labels: Tensor, temperature: float, normalize: bool) -> _Rows:
    B, V, d = z.shape
    Z = z.transpose(0, 1).reshape(V * B, d)
    if normalize:
        Z = F.normalize(Z, dim=1)
    G = Z @ Z.T / temperature
    instance = torch.arange(B, device=z.device).repeat(V)
    label = labels.repeat(V)
    unsup = instance[:, None] != instance[None, :]
    same_label = label[:, None] == label[None, :]
    return _Rows(G, instance, label, unsup, unsup & ~same_label, unsup & same_label)


def _weights(hardening, G: Tensor) -> Tensor:
    w = hardening(G)
    if not isinstance(w, Tensor) or w.shape != G.shape:
        raise ValueError("hardening(g) must return a tensor of the same shape as g")
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError("hardening(g) must return finite, non-negative weights")
    return w.to(G.device, torch.float64)
