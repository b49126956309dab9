"""The image dataset type: :class:`ImageData` (uint8 images; int64 class labels or bool multi-hot label sets;
a train and a test split), stratified subsets, and the errors of :mod:`hscl.data.images`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

__all__ = [
    "VALIDATION_SEED",
    "ChecksumError",
    "DatasetNotFoundError",
    "ImageData",
    "UnsafeArchiveError",
    "holdout_indices",
    "stratified_indices",
]

PathLike = str | os.PathLike

#: the seed of every validation hold-out (:meth:`ImageData.hold_out`): a constant, independent of any training
#: seed, so that every run on the same training split holds out the same images
VALIDATION_SEED = 1729


class DatasetNotFoundError(FileNotFoundError):
    """No location held the dataset and it could not be downloaded. ``tried`` lists (location, reason)."""

    def __init__(self, message: str, tried: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.tried = list(tried)


class ChecksumError(OSError):
    """A downloaded file's md5 differs from the expected one (the file is deleted)."""


class UnsafeArchiveError(ValueError):
    """An archive member is absolute, escapes the target directory, or is a link or special file."""


# ----------------------------------------------------------------------------------------------------------------
# ImageData
# ----------------------------------------------------------------------------------------------------------------


def stratified_indices(labels: np.ndarray | torch.Tensor, n: int, seed: int | Sequence[int]) -> np.ndarray:
    """Indices of a stratified sample of ``n`` of the ``len(labels)`` items, sorted ascending.

    Each class gets ``floor(n * count / N)`` items; the remaining items go to the classes with the largest
    remainders (ties: the larger class, then the lower label). Within a class the items are drawn uniformly
    at random by ``numpy.random.default_rng(seed)``, so the result depends only on the labels, ``n`` and
    ``seed``. Multi-hot labels ``(N, C)`` are stratified by label set: each distinct row is one stratum
    (ordered as the rows sort lexicographically).

    Shape: labels ``(N,)`` class indices or ``(N, C)`` multi-hot.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim == 2:  # one stratum per distinct label set
        labels = np.unique(labels, axis=0, return_inverse=True)[1]
    labels = labels.reshape(-1)
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"cannot take a stratified sample of {n} from {total} items")
    if n == total:
        return np.arange(total)
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n * counts // total
    remainder = n * counts % total
    extra = n - int(quota.sum())
    # np.lexsort sorts by the last key first: largest remainder, then larger class, then lower label.
    order = np.lexsort((np.arange(len(values)), -counts, -remainder))
    quota[order[:extra]] += 1
    rng = np.random.default_rng(seed)
    by_class = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = [rng.permutation(by_class[starts[k] : starts[k + 1]])[: quota[k]] for k in range(len(values))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def holdout_indices(
    labels: np.ndarray | torch.Tensor, n: int, seed: int | Sequence[int] = VALIDATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: a stratified sample of ``n`` items held out (:func:`stratified_indices`) and the others,
    both sorted ascending; disjoint, together every index once.

    Shape: labels ``(N,)`` class indices or ``(N, C)`` multi-hot.
    """
    held = stratified_indices(labels, n, seed)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _check_images(name: str, images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(images.shape)}")
    return images


def _check_dataset_labels(name: str, labels: object, count: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or, multi-hot, (N, C); got {tuple(labels.shape)}")
    if labels.shape[0] != count:
        raise ValueError(f"{name} has {labels.shape[0]} labels for {count} images")
    if labels.ndim == 2:
        if labels.dtype != torch.bool:
            raise TypeError(f"{name}: multi-hot labels (N, C) must have dtype torch.bool, got {labels.dtype}")
        if labels.shape[1] != num_classes:
            raise ValueError(f"{name} has {labels.shape[1]} columns for {num_classes} classes")
        return
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64 (or be multi-hot (N, C) torch.bool), got {labels.dtype}")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


@dataclass(repr=False)
class ImageData:
    """A labelled image dataset with a train and a test split, and optionally a validation split held out of the
    training split (:meth:`hold_out`).

    Labels are either class indices, int64 ``(N,)`` with values in ``[0, num_classes)``, or (a multi-label
    dataset, :attr:`multilabel`) label sets, bool ``(N, num_classes)`` multi-hot rows (``True`` where the
    class is present; a row may hold any number of classes, including none). Both splits use the same kind.

    Attributes:
        name: dataset name (e.g. ``"cifar10"``, ``"folder:/path"``).
        train_images: uint8 tensor (N_train, C, H, W), values 0..255.
        train_labels: int64 tensor (N_train,), values in [0, num_classes); or bool (N_train, num_classes).
        test_images: uint8 tensor (N_test, C, H, W) with the same C, H, W.
        test_labels: int64 tensor (N_test,); or bool (N_test, num_classes), as train_labels.
        classes: class names; ``classes[k]`` is the name of label k.
        unlabeled_images: optional uint8 tensor (N_unlabeled, C, H, W) (STL-10's unlabeled split; a lazy,
            memory-mapped and non-contiguous view: index it in batches).
        val_images, val_labels: the validation split (None: none), as train_images / train_labels; images held
            out of the training split by :meth:`hold_out`, so no training image is also a validation image.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    unlabeled_images: torch.Tensor | None = field(default=None)
    val_images: torch.Tensor | None = field(default=None)
    val_labels: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        self.classes = list(self.classes)
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"{self.name}: classes must be a non-empty list of str, got {self.classes!r}")
        train = _check_images(f"{self.name}: train_images", self.train_images)
        test = _check_images(f"{self.name}: test_images", self.test_images)
        if train.shape[1:] != test.shape[1:]:
            raise ValueError(
                f"{self.name}: train images (C, H, W) = {tuple(train.shape[1:])} differ from test images "
                f"{tuple(test.shape[1:])}"
            )
        _check_dataset_labels(f"{self.name}: train_labels", self.train_labels, train.shape[0], len(self.classes))
        _check_dataset_labels(f"{self.name}: test_labels", self.test_labels, test.shape[0], len(self.classes))
        if self.train_labels.ndim != self.test_labels.ndim:
            raise ValueError(
                f"{self.name}: train_labels {tuple(self.train_labels.shape)} and test_labels "
                f"{tuple(self.test_labels.shape)} must both be class indices (N,) or both multi-hot (N, C)"
            )
        if (self.val_images is None) != (self.val_labels is None):
            raise ValueError(f"{self.name}: give both val_images and val_labels, or neither")
        if self.val_images is not None:
            val = _check_images(f"{self.name}: val_images", self.val_images)
            if val.shape[1:] != train.shape[1:]:
                raise ValueError(
                    f"{self.name}: validation images (C, H, W) = {tuple(val.shape[1:])} differ from train images "
                    f"{tuple(train.shape[1:])}"
                )
            _check_dataset_labels(f"{self.name}: val_labels", self.val_labels, val.shape[0], len(self.classes))
            if self.val_labels.ndim != self.train_labels.ndim:
                raise ValueError(
                    f"{self.name}: val_labels must be of the kind of train_labels (class ids or multi-hot)"
                )
        if self.unlabeled_images is not None:
            unlabeled = _check_images(f"{self.name}: unlabeled_images", self.unlabeled_images)
            if unlabeled.shape[1:] != train.shape[1:]:
                raise ValueError(
                    f"{self.name}: unlabeled images (C, H, W) = {tuple(unlabeled.shape[1:])} differ from train "
                    f"images {tuple(train.shape[1:])}"
                )

    @property
    def channels(self) -> int:
        """Number of channels C (1 grey, 3 RGB)."""
        return int(self.train_images.shape[1])

    @property
    def size(self) -> int:
        """Image height H (all built-in datasets are square)."""
        return int(self.train_images.shape[2])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """True when the labels are multi-hot label sets (bool ``(N, num_classes)``), False for class indices."""
        return self.train_labels.ndim == 2

    def hold_out(self, n: int, seed: int | Sequence[int] = VALIDATION_SEED) -> ImageData:
        """The data with a stratified sample of ``n`` training images moved to the validation split.

        The sample is :func:`holdout_indices` of the training labels (each class, or each distinct label set,
        keeps its share); it depends only on the labels, ``n`` and ``seed`` (by default :data:`VALIDATION_SEED`,
        not a training seed). Both parts keep their original order; the test split is unchanged.
        """
        if self.val_images is not None:
            raise ValueError(f"{self.name}: already holds a validation split of {self.val_images.shape[0]} images")
        total = self.train_labels.shape[0]
        if not 0 < n < total:
            raise ValueError(f"{self.name}: cannot hold out {n} of {total} training images (need 0 < n < {total})")
        kept, held = (torch.from_numpy(i) for i in holdout_indices(self.train_labels, n, seed))
        return replace(
            self,
            train_images=self.train_images[kept],
            train_labels=self.train_labels[kept],
            val_images=self.train_images[held],
            val_labels=self.train_labels[held],
            classes=list(self.classes),
        )

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> ImageData:
        """A stratified subset: ``train`` training and ``test`` test images (None keeps a split whole).

        Each class (for a multi-label dataset: each distinct label set) keeps its share of the split (see
        :func:`stratified_indices`); the images keep their original order; the result is the same for the
        same ``seed``. ``unlabeled_images`` and the validation split are kept as they are.
        """

        def take(images: torch.Tensor, labels: torch.Tensor, n: int | None, stream: int):
            if n is None:
                return images, labels
            if n < 0 or n > labels.shape[0]:
                raise ValueError(f"{self.name}: cannot take {n} of {labels.shape[0]} images for the subset")
            index = torch.from_numpy(stratified_indices(labels, n, (seed, stream)))
            return images[index], labels[index]

        train_images, train_labels = take(self.train_images, self.train_labels, train, 0)
        test_images, test_labels = take(self.test_images, self.test_labels, test, 1)
        return replace(
            self,
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            classes=list(self.classes),
        )

    def __repr__(self) -> str:
        unlabeled = "" if self.unlabeled_images is None else f", unlabeled={self.unlabeled_images.shape[0]}"
        val = "" if self.val_images is None else f", val={self.val_images.shape[0]}"
        return (
            f"ImageData({self.name!r}, train={self.train_images.shape[0]}{val}, "
            f"test={self.test_images.shape[0]}{unlabeled}, "
            f"channels={self.channels}, size={self.train_images.shape[2]}x{self.train_images.shape[3]}, "
            f"classes={self.num_classes}{', multilabel' if self.multilabel else ''})"
        )


def _to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor owning a contiguous, writable copy (or view) of ``array`` converted to ``dtype``."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(dtype)


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train indices, test indices) with ``round(N * test_fraction)`` test items."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    test = stratified_indices(labels, round(len(labels) * test_fraction), seed)
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), test
