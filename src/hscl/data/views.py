"""Batches of B samples x V views.

Pair modes:

* ``instance``: every view of sample ``i`` is an augmentation of image ``i`` (SimCLR).
* ``same_label``: view 0 is an augmentation of image ``i``; every further view is an augmentation
  of another image of the same class, drawn at random (the H-SCL paper's SCL / H-SCL positives).
  A class with a single image falls back to the image itself.

The batches of an epoch are a function of ``(seed, epoch)`` only, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PAIR_MODES", "ViewSampler", "epoch_generator"]

PAIR_MODES = ("instance", "same_label")


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch, stream)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 97 + stream)


@dataclass
class ViewSampler:
    """Index batches for one epoch.

    Args:
        labels: ``(N,)`` class of each training image.
        batch_size: samples per batch ``B`` (the last incomplete batch is dropped).
        pair_mode: ``"instance"`` or ``"same_label"``.
        views: ``V``.
        seed: base seed.
    """

    labels: Tensor
    batch_size: int
    pair_mode: str = "instance"
    views: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pair_mode not in PAIR_MODES:
            raise ValueError(f"pair_mode must be one of {', '.join(PAIR_MODES)}, got {self.pair_mode!r}")
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {self.views}")
        n = int(self.labels.numel())
        if not 1 <= self.batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}] (the training set size), got {self.batch_size}")
        labels = self.labels.long().cpu()
        order = torch.argsort(labels, stable=True)
        _, counts = torch.unique_consecutive(labels[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        _, inverse = torch.unique(labels, return_inverse=True)
        self._order = order  # images sorted by class
        self._class_start = starts[inverse]  # (N,) where the class of each image starts in _order
        self._class_count = counts[inverse]  # (N,) images in the class of each image

    def __len__(self) -> int:
        return int(self.labels.numel()) // self.batch_size

    def batches(self, epoch: int) -> Tensor:
        """Image indices of every batch of ``epoch``. Shape: ``(num_batches, B, V)``."""
        generator = epoch_generator(self.seed, epoch)
        n = int(self.labels.numel())
        perm = torch.randperm(n, generator=generator)[: len(self) * self.batch_size]
        anchors = perm.view(len(self), self.batch_size)
        if self.pair_mode == "instance":
            return anchors[..., None].expand(-1, -1, self.views).clone()
        out = [anchors]
        for _ in range(self.views - 1):
            out.append(self._same_label_partner(anchors, generator))
        return torch.stack(out, -1)

    def _same_label_partner(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        count = self._class_count[anchors]
        start = self._class_start[anchors]
        # a uniform other member of the class: draw among count - 1 and skip the anchor's own slot
        position = self._position_in_class(anchors)
        draw = (torch.rand(anchors.shape, generator=generator) * (count - 1).clamp(min=1)).long()
        draw = draw + (draw >= position).long()
        draw = torch.where(count > 1, draw, torch.zeros_like(draw))
        return self._order[start + draw]

    def _position_in_class(self, images: Tensor) -> Tensor:
        if not hasattr(self, "_rank"):
            rank = torch.empty_like(self._order)
            rank[self._order] = torch.arange(self._order.numel())
            self._rank = rank - self._class_start
        return self._rank[images]
