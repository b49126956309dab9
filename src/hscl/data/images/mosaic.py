"""Multi-label image datasets from single-label ones: 2 x 2 mosaics of real images, labelled by the set of
classes they show (``fashion-mnist-mosaic``, ``mnist-mosaic``).

The draw rule, for each mosaic of a split, from ``numpy.random.default_rng(seed)``:

1. the number of distinct classes ``k`` is uniform on ``1 .. min(4, K)`` (``K``: classes present in the split);
2. the ``k`` classes are a uniformly random ``k``-subset of those ``K``;
3. the four tiles' classes are the ``k`` classes plus ``4 - k`` more drawn uniformly (with replacement) from the
   ``k``, in a uniformly random order; so every chosen class shows up at least once and nothing else does;
4. each tile is an image drawn uniformly from the split's images of its class (independently for each tile).

Tiles are placed row-major: tile 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; a mosaic of (C, H, W)
images is (C, 2H, 2W) (56 x 56 for 28 x 28 inputs). Its label is the multi-hot row of its classes, bool
``(num_classes,)`` with ``k`` true entries, so the label sets have 1, 2, 3 or 4 classes with equal frequency.
Train mosaics are drawn from the train split only and test mosaics from the test split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from hscl.data.images.base import ImageData, PathLike, _check_images
from hscl.data.images.formats import read_fashion_mnist, read_mnist

__all__ = ["TILES", "Mosaics", "make_mosaics", "mosaic_dataset", "read_fashion_mnist_mosaic", "read_mnist_mosaic"]

TILES = 4  # a 2 x 2 grid


class Mosaics(NamedTuple):
    """Mosaics of one split.

    Attributes:
        images: uint8 (M, C, 2H, 2W).
        labels: bool (M, num_classes), the multi-hot set of the tiles' classes.
        tiles: int64 (M, 4), the index in the source split of each tile's image (top-left, top-right,
            bottom-left, bottom-right).
    """

    images: Tensor
    labels: Tensor
    tiles: Tensor


def make_mosaics(
    images: Tensor, labels: Tensor, num_classes: int, count: int, seed: int | Sequence[int] = 0
) -> Mosaics:
    """``count`` 2 x 2 mosaics of ``images`` drawn by the rule of :mod:`hscl.data.images.mosaic`.

    The draw depends only on ``labels``, ``count`` and ``seed`` (``numpy.random.default_rng(seed)``).

    Shape: images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64 in ``[0, num_classes)`` -> :class:`Mosaics`
    of ``(count, C, 2H, 2W)`` images, ``(count, num_classes)`` bool labels, ``(count, 4)`` tile indices.
    """
    _check_images("images", images)
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) (one class per image)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int (mosaics to draw), got {count!r}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: no mosaic can be drawn")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")

    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    present, first, per_class = np.unique(np.sort(y, kind="stable"), return_index=True, return_counts=True)
    by_class = np.argsort(y, kind="stable")  # image indices grouped by class, ascending within a class
    kmax = min(TILES, len(present))

    # 1. number of distinct classes, 2. which (the first k of a random permutation of the present classes)
    k = 1 + np.floor(rng.random(count) * kmax).astype(np.int64)  # (M,)
    chosen = np.argsort(rng.random((count, len(present))), axis=1)[:, :kmax]  # (M, kmax) positions in present
    # 3. tile j < k shows chosen class j, the others a uniform pick among the k; then the tiles are shuffled
    slot = np.arange(TILES)[None, :]
    extra = np.floor(rng.random((count, TILES)) * k[:, None]).astype(np.int64)
    tile_class = np.take_along_axis(chosen, np.where(slot < k[:, None], slot, extra), axis=1)  # (M, 4)
    tile_class = np.take_along_axis(tile_class, np.argsort(rng.random((count, TILES)), axis=1), axis=1)
    # 4. a uniform image of each tile's class
    offset = np.floor(rng.random((count, TILES)) * per_class[tile_class]).astype(np.int64)
    tiles = torch.from_numpy(by_class[first[tile_class] + offset])  # (M, 4)

    _, c, h, w = images.shape
    out = torch.empty((count, c, 2 * h, 2 * w), dtype=torch.uint8)
    for t in range(TILES):
        row, col = divmod(t, 2)
        out[:, :, row * h : (row + 1) * h, col * w : (col + 1) * w] = images[tiles[:, t]]
    multi_hot = torch.zeros((count, num_classes), dtype=torch.bool)
    multi_hot[torch.arange(count)[:, None], labels.cpu()[tiles]] = True
    return Mosaics(out, multi_hot, tiles)


def mosaic_dataset(
    base: ImageData, train_size: int | None = None, test_size: int | None = None, seed: int = 0
) -> ImageData:
    """A multi-label :class:`ImageData` of 2 x 2 mosaics of ``base``'s images (see :func:`make_mosaics`).

    ``train_size`` train mosaics are drawn from ``base``'s train split with ``default_rng([seed, 0])``, and
    ``test_size`` test mosaics from its test split with ``default_rng([seed, 1])`` (None: as many mosaics as
    the split has images). Labels are bool ``(N, num_classes)``; classes are ``base``'s; the name is
    ``"<base name>-mosaic"``.
    """
    if base.multilabel:
        raise ValueError(f"{base.name} is already multi-label; mosaics are built from one class per image")
    train = make_mosaics(
        base.train_images,
        base.train_labels,
        base.num_classes,
        _size("train_size", train_size, base.train_labels),
        [seed, 0],
    )
    test = make_mosaics(
        base.test_images,
        base.test_labels,
        base.num_classes,
        _size("test_size", test_size, base.test_labels),
        [seed, 1],
    )
    return ImageData(f"{base.name}-mosaic", train.images, train.labels, test.images, test.labels, list(base.classes))


def _size(name: str, value: int | None, labels: Tensor) -> int:
    if value is None:
        return int(labels.shape[0])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (mosaics to draw) or None, got {value!r}")
    return value


def read_fashion_mnist_mosaic(
    directory: PathLike, train_size: int | None = None, test_size: int | None = None, seed: int = 0
) -> ImageData:
    """``fashion-mnist-mosaic``: :func:`mosaic_dataset` of Fashion-MNIST read from ``directory``.

    Default: 60000 train and 10000 test mosaics of shape (1, 56, 56), 10 classes, bool multi-hot labels.
    """
    return mosaic_dataset(read_fashion_mnist(directory), train_size, test_size, seed)


def read_mnist_mosaic(
    directory: PathLike, train_size: int | None = None, test_size: int | None = None, seed: int = 0
) -> ImageData:
    """``mnist-mosaic``: :func:`mosaic_dataset` of MNIST read from ``directory``.

    Default: 60000 train and 10000 test mosaics of shape (1, 56, 56), 10 classes, bool multi-hot labels.
    """
    return mosaic_dataset(read_mnist(directory), train_size, test_size, seed)
