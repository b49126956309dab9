"""Batches of B samples x V views.

Pair modes:

* ``instance``: every view of sample ``i`` is an augmentation of image ``i`` (SimCLR).
* ``same_label``: view 0 is an augmentation of image ``i``; every further view is an augmentation
  of another image of the same class, drawn at random (the H-SCL paper's SCL / H-SCL positives).
  A class with a single image falls back to the image itself.

Labels are class indices ``(N,)`` or multi-hot label sets ``(N, C)`` (bool or 0/1; a multi-label dataset
such as ``fashion-mnist-mosaic``). ``instance`` pairs ignore the labels. ``same_label`` pairs with multi-hot
labels follow the loss's definition of a positive (two images *share a class* when some column is 1 in
both): for each further view, one class of the anchor is drawn uniformly among its classes, then another
image holding that class uniformly among those; so the partner always shares at least one class with the
anchor. An image with no class, or the only image of the drawn class, falls back to itself.

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
        labels: ``(N,)`` class of each training image, or ``(N, C)`` multi-hot label sets (bool or 0/1).
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
        if self.labels.ndim not in (1, 2):
            raise ValueError(
                f"labels must be (N,) class indices or (N, C) multi-hot, got shape {tuple(self.labels.shape)}"
            )
        n = int(self.labels.shape[0])
        if not 1 <= self.batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}] (the training set size), got {self.batch_size}")
        if self.labels.ndim == 2:
            self._index_label_sets(self.labels.cpu())
            return
        labels = self.labels.long().cpu()
        order = torch.argsort(labels, stable=True)
        _, counts = torch.unique_consecutive(labels[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        _, inverse = torch.unique(labels, return_inverse=True)
        self._order = order  # images sorted by class
        self._class_start = starts[inverse]  # (N,) where the class of each image starts in _order
        self._class_count = counts[inverse]  # (N,) images in the class of each image

    def _index_label_sets(self, labels: Tensor) -> None:
        """The tables of multi-hot ``same_label`` pairs: the members of each class, and the classes of each image."""
        if labels.dtype != torch.bool:
            if not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("multi-hot labels (N, C) must be bool or hold only 0 and 1")
            labels = labels != 0
        if self.pair_mode != "same_label":
            return
        image, cls = labels.T.nonzero(as_tuple=True)[::-1]  # class-major: the members of class 0, then 1, ...
        counts = labels.sum(0)  # (C,) images holding each class
        self._members = image  # (P,) the images of each class, ascending within a class
        self._member_start = torch.cumsum(counts, 0) - counts  # (C,) where class c starts in _members
        self._member_count = counts
        position = torch.zeros(labels.shape, dtype=torch.long)  # (N, C) slot of image i among class c's members
        position[image, cls] = torch.arange(image.numel()) - self._member_start[cls]
        self._member_position = position
        # (N, C) the classes of each image first (ascending), then the others; and how many it holds
        self._classes_of = torch.argsort((~labels).to(torch.int8), dim=1, stable=True)
        self._class_total = labels.sum(1)  # (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0]) // self.batch_size

    def batches(self, epoch: int) -> Tensor:
        """Image indices of every batch of ``epoch``. Shape: ``(num_batches, B, V)``."""
        generator = epoch_generator(self.seed, epoch)
        n = int(self.labels.shape[0])
        perm = torch.randperm(n, generator=generator)[: len(self) * self.batch_size]
        anchors = perm.view(len(self), self.batch_size)
        if self.pair_mode == "instance":
            return anchors[..., None].expand(-1, -1, self.views).clone()
        out = [anchors]
        partner = self._shared_class_partner if self.labels.ndim == 2 else self._same_label_partner
        for _ in range(self.views - 1):
            out.append(partner(anchors, generator))
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

    def _shared_class_partner(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        """Multi-hot labels: a uniform class of the anchor, then a uniform other image holding that class."""
        held = self._class_total[anchors]  # (nb, B) classes of each anchor
        if self._members.numel() == 0:  # no image holds any class
            return anchors.clone()
        pick = (torch.rand(anchors.shape, generator=generator) * held.clamp(min=1)).long()
        cls = self._classes_of[anchors, pick]  # (nb, B) a class of the anchor (any column when it has none)
        count = self._member_count[cls]
        position = self._member_position[anchors, cls]
        draw = (torch.rand(anchors.shape, generator=generator) * (count - 1).clamp(min=1)).long()
        draw = draw + (draw >= position).long()  # skip the anchor's own slot
        partner = self._members[(self._member_start[cls] + draw).clamp(max=self._members.numel() - 1)]
        return torch.where((held > 0) & (count > 1), partner, anchors)

    def _position_in_class(self, images: Tensor) -> Tensor:
        if not hasattr(self, "_rank"):
            rank = torch.empty_like(self._order)
            rank[self._order] = torch.arange(self._order.numel())
            self._rank = rank - self._class_start
        return self._rank[images]
