"""Image datasets: readers for the official on-disk formats, a registry, resolution and checked downloads.

Every reader returns an :class:`ImageData` with uint8 images of shape (N, C, H, W) and int64 labels of
shape (N,). The formats:

* MNIST / Fashion-MNIST: four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), plain or gzipped. An idx file starts with two
  zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then one big-endian int32 per
  dimension, then the data in C order. Images 1x28x28.
* CIFAR-10 (python version, folder ``cifar-10-batches-py``): pickled dicts with bytes keys;
  ``b"data"`` is (N, 3072) uint8, 1024 red then 1024 green then 1024 blue values, each plane row-major
  32x32; ``b"labels"``; ``batches.meta`` holds ``b"label_names"``. Five training batches, one test batch.
* CIFAR-100 (python version, folder ``cifar-100-python``): files ``train``, ``test``, ``meta``, same data
  layout; the 100 fine labels (``b"fine_labels"``, ``b"fine_label_names"``) are used.
* STL-10 (binary version, folder ``stl10_binary``): ``*_X.bin`` are uint8 3x96x96 images stored column-major
  (each channel is written column after column), ``*_y.bin`` uint8 labels 1..10 (returned as 0..9),
  ``class_names.txt``; the 100000 ``unlabeled_X.bin`` images (2.7 GB) are memory-mapped on request.
* TinyImageNet (folder ``tiny-imagenet-200``): 200 classes of 64x64 JPEGs, ``train/<wnid>/images/*.JPEG``
  (500 per class) and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; the validation set is
  the test split (the official test images have no labels). Decoded arrays are cached in one ``.npz``.
* scikit-learn digits: 1797 8x8 grey images (values 0..16, scaled to 0..255), a fixed stratified split.
* A generic image folder: ``root/train/<class>/*`` and ``root/test/<class>/*``, or ``root/<class>/*``
  split 80/20.

:func:`load_dataset` finds a dataset by name in the ``data_dir`` argument, ``$HSCL_DATA``, known system
locations, the cache directory (``$HSCL_CACHE/<name>``, default ``~/.cache/hscl/<name>``), and finally
downloads it from the official source with an md5 check.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Download",
    "ImageData",
    "UnsafeArchiveError",
    "cache_dir",
    "download_file",
    "extract_archive",
    "load_dataset",
    "read_cifar10",
    "read_cifar100",
    "read_digits",
    "read_fashion_mnist",
    "read_idx",
    "read_image_folder",
    "read_mnist",
    "read_stl10",
    "read_tiny_imagenet",
    "stratified_indices",
]

PathLike = str | os.PathLike


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
    ``seed``.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
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


def _check_images(name: str, images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(images.shape)}")
    return images


def _check_labels(name: str, labels: object, count: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64, got {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(labels.shape)}")
    if labels.shape[0] != count:
        raise ValueError(f"{name} has {labels.shape[0]} labels for {count} images")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} classes, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


@dataclass(repr=False)
class ImageData:
    """A labelled image dataset with a train and a test split.

    Attributes:
        name: dataset name (e.g. ``"cifar10"``, ``"folder:/path"``).
        train_images: uint8 tensor (N_train, C, H, W), values 0..255.
        train_labels: int64 tensor (N_train,), values in [0, num_classes).
        test_images: uint8 tensor (N_test, C, H, W) with the same C, H, W.
        test_labels: int64 tensor (N_test,).
        classes: class names; ``classes[k]`` is the name of label k.
        unlabeled_images: optional uint8 tensor (N_unlabeled, C, H, W) (STL-10's unlabeled split; a lazy,
            memory-mapped and non-contiguous view: index it in batches).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    unlabeled_images: torch.Tensor | None = field(default=None)

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
        _check_labels(f"{self.name}: train_labels", self.train_labels, train.shape[0], len(self.classes))
        _check_labels(f"{self.name}: test_labels", self.test_labels, test.shape[0], len(self.classes))
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

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> ImageData:
        """A stratified subset: ``train`` training and ``test`` test images (None keeps a split whole).

        Each class keeps its share of the split (see :func:`stratified_indices`); the images keep their
        original order; the result is the same for the same ``seed``. ``unlabeled_images`` is kept as is.
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
        return (
            f"ImageData({self.name!r}, train={self.train_images.shape[0]}, "
            f"test={self.test_images.shape[0]}{unlabeled}, "
            f"channels={self.channels}, size={self.train_images.shape[2]}x{self.train_images.shape[3]}, "
            f"classes={self.num_classes})"
        )


def _to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor owning a contiguous, writable copy (or view) of ``array`` converted to ``dtype``."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (idx)
# ----------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_names(stem: str) -> tuple[str, ...]:
    """Accepted names of an idx file: the standard one and the ``train-images.idx3-ubyte`` spelling, each
    plain or gzipped."""
    dotted = stem.replace("-idx", ".idx", 1)
    return (stem, stem + ".gz", dotted, dotted + ".gz")


def read_idx(path: PathLike) -> np.ndarray:
    """Read one idx file (plain, or gzipped: recognised by its content) into an array of its dims.

    Header: bytes 0-1 are zero, byte 2 is the dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; multi-byte values big-endian), byte 3 the number of dimensions, then one
    big-endian uint32 per dimension; then the values in C order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated idx file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad idx magic number 0x{raw[:4].hex()} (expected 0x0000 then a dtype code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} then the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual < expected:
        raise ValueError(f"{path}: truncated idx data: dims {dims} need {expected} bytes, file has {actual}")
    if actual > expected:
        raise ValueError(f"{path}: {actual - expected} unexpected trailing bytes after idx data of dims {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(directory: Path, names: Iterable[str]) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: none of {', '.join(names)} found")


def _read_idx_split(directory: Path, images_stem: str, labels_stem: str, num_classes: int):
    images_path = _find_file(directory, _idx_names(images_stem))
    labels_path = _find_file(directory, _idx_names(labels_stem))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of dims (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of dims (N,), got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path.name} has {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} out of range for {num_classes} classes")
    return _to_tensor(images[:, None], torch.uint8), _to_tensor(labels, torch.int64)


def _read_idx_dataset(directory: PathLike, name: str, classes: list[str]) -> ImageData:
    root = _locate(directory, DATASETS[name])
    train_images, train_labels = _read_idx_split(root, _IDX_FILES[0], _IDX_FILES[1], len(classes))
    test_images, test_labels = _read_idx_split(root, _IDX_FILES[2], _IDX_FILES[3], len(classes))
    return ImageData(name, train_images, train_labels, test_images, test_labels, list(classes))


def read_mnist(directory: PathLike) -> ImageData:
    """MNIST from its four idx files (plain or ``.gz``) in ``directory`` (or ``directory/mnist``).

    Returns 60000 train and 10000 test images of shape (1, 28, 28); classes ``"0"``..``"9"``.
    """
    return _read_idx_dataset(directory, "mnist", MNIST_CLASSES)


def read_fashion_mnist(directory: PathLike) -> ImageData:
    """Fashion-MNIST from its four idx files (plain or ``.gz``) in ``directory`` (or ``directory/fashion-mnist``).

    Returns 60000 train and 10000 test images of shape (1, 28, 28); classes ``"T-shirt/top"``..``"Ankle boot"``.
    """
    return _read_idx_dataset(directory, "fashion-mnist", FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
# ----------------------------------------------------------------------------------------------------------------

_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain containers and numpy arrays (the CIFAR files need no more), so
    a hostile file cannot run code."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            data = _ArrayUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a valid dataset pickle ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return data


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: missing key {key!r} (keys: {sorted(batch)})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected b'data' of uint8 (N, 3072), got {data.dtype} {data.shape}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside [0, {num_classes})")
    # Each row: the red plane, then green, then blue, each 32 rows of 32 values.
    return data.reshape(-1, 3, 32, 32), labels


def _names(path: Path, key: bytes) -> list[str]:
    meta = _unpickle(path)
    if key not in meta:
        raise ValueError(f"{path}: missing key {key!r} (keys: {sorted(meta)})")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _cifar(name: str, root: Path, train: list[str], test: str, meta: str, names_key: bytes, labels_key: bytes):
    classes = _names(root / meta, names_key)
    train_parts = [_cifar_batch(root / f, labels_key, len(classes)) for f in train]
    test_images, test_labels = _cifar_batch(root / test, labels_key, len(classes))
    return ImageData(
        name,
        _to_tensor(np.concatenate([p[0] for p in train_parts]), torch.uint8),
        _to_tensor(np.concatenate([p[1] for p in train_parts]), torch.int64),
        _to_tensor(test_images, torch.uint8),
        _to_tensor(test_labels, torch.int64),
        classes,
    )


def read_cifar10(directory: PathLike) -> ImageData:
    """CIFAR-10 (python version) from ``directory/cifar-10-batches-py`` or ``directory`` itself.

    Reads ``data_batch_1``..``data_batch_5`` (50000 train), ``test_batch`` (10000) and ``batches.meta``.
    Images (3, 32, 32) RGB. The pickles are read with ``encoding="bytes"`` by an unpickler that only
    accepts numpy arrays and plain containers.
    """
    root = _locate(directory, DATASETS["cifar10"])
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", root, batches, "test_batch", "batches.meta", b"label_names", b"labels")


def read_cifar100(directory: PathLike) -> ImageData:
    """CIFAR-100 (python version) from ``directory/cifar-100-python`` or ``directory`` itself.

    Reads ``train`` (50000), ``test`` (10000) and ``meta``; uses the 100 fine labels and fine label names.
    Images (3, 32, 32) RGB.
    """
    root = _locate(directory, DATASETS["cifar100"])
    return _cifar("cifar100", root, ["train"], "test", "meta", b"fine_label_names", b"fine_labels")


# ----------------------------------------------------------------------------------------------------------------
# STL-10 (binary)
# ----------------------------------------------------------------------------------------------------------------

_STL_SHAPE = (3, 96, 96)
_STL_BYTES = 3 * 96 * 96


def _stl_count(path: Path) -> int:
    size = path.stat().st_size
    if size % _STL_BYTES:
        raise ValueError(f"{path}: size {size} is not a multiple of one 3x96x96 image ({_STL_BYTES} bytes)")
    return size // _STL_BYTES


def _stl_split(root: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x_path, y_path = root / f"{split}_X.bin", root / f"{split}_y.bin"
    count = _stl_count(x_path)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if labels.shape[0] != count:
        raise ValueError(f"{x_path.name} has {count} images but {y_path.name} has {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{y_path}: labels must lie in 1..{num_classes}, got {labels.min()}..{labels.max()}")
    # On disk each image is (C, W, H) in C order (column-major per channel): swap the last two axes.
    images = np.fromfile(x_path, dtype=np.uint8).reshape(count, *_STL_SHAPE).transpose(0, 1, 3, 2)
    return _to_tensor(images, torch.uint8), _to_tensor(labels - 1, torch.int64)


def read_stl10(directory: PathLike, unlabeled: bool = False) -> ImageData:
    """STL-10 (binary version) from ``directory/stl10_binary`` or ``directory`` itself.

    ``train_X.bin`` (5000) and ``test_X.bin`` (8000) hold uint8 images of 3x96x96 stored column-major;
    ``*_y.bin`` hold labels 1..10 (returned as 0..9); ``class_names.txt`` one name per line. With
    ``unlabeled=True`` the 100000 images of ``unlabeled_X.bin`` are memory-mapped (copy-on-write, nothing
    read until indexed) as ``unlabeled_images``, a non-contiguous (N, 3, 96, 96) view.
    """
    root = _locate(directory, DATASETS["stl10"], {"unlabeled": unlabeled})
    classes = [line.strip() for line in (root / "class_names.txt").read_text().splitlines() if line.strip()]
    if not classes:
        raise ValueError(f"{root / 'class_names.txt'}: no class names")
    train_images, train_labels = _stl_split(root, "train", len(classes))
    test_images, test_labels = _stl_split(root, "test", len(classes))
    unlabeled_images = None
    if unlabeled:
        path = root / "unlabeled_X.bin"
        mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(_stl_count(path), *_STL_SHAPE))
        unlabeled_images = torch.from_numpy(mapped).transpose(2, 3)
    return ImageData("stl10", train_images, train_labels, test_images, test_labels, classes, unlabeled_images)


# ----------------------------------------------------------------------------------------------------------------
# TinyImageNet
# ----------------------------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_TINY_CACHE_VERSION = 1


def _image_files(directory: Path, suffixes: set[str] = _IMAGE_SUFFIXES) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in suffixes)
    return [directory / n for n in names]


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as an (H, W, C) uint8 array in ``mode`` ("L" or "RGB"), resized to ``size`` (W, H) if given."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size is not None and image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from e
    return array[:, :, None] if array.ndim == 2 else array


def _decode_all(paths: Sequence[Path], mode: str, size: tuple[int, int], desc: str, workers: int | None) -> np.ndarray:
    """Decode ``paths`` into one (N, C, H, W) uint8 array, in parallel threads (Pillow releases the GIL)."""
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(paths[i], mode, size).transpose(2, 0, 1)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(work, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False):
            pass
    return out


def _tiny_listing(root: Path) -> tuple[list[str], list[str], list[Path], np.ndarray, list[Path], np.ndarray]:
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"{root / 'wnids.txt'}: expected distinct wnids, got {len(wnids)} lines")
    wnids = sorted(wnids)
    index = {w: k for k, w in enumerate(wnids)}
    first_names: dict[str, str] = {}
    with open(root / "words.txt", encoding="utf-8") as f:
        for line in f:
            wnid, _, words = line.rstrip("\n").partition("\t")
            if wnid in index:
                first_names[wnid] = words.split(",")[0].strip() or wnid
    classes = [first_names.get(w, w) for w in wnids]

    train_files: list[Path] = []
    train_labels: list[int] = []
    for k, wnid in enumerate(wnids):
        files = _image_files(root / "train" / wnid / "images")
        if not files:
            raise ValueError(f"{root / 'train' / wnid / 'images'}: no images")
        train_files += files
        train_labels += [k] * len(files)

    annotations: dict[str, str] = {}
    for number, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise ValueError(f"{root / 'val' / 'val_annotations.txt'}:{number}: bad line {line!r}")
        annotations[parts[0]] = parts[1]
    test_files = _image_files(root / "val" / "images")
    unlabelled = [p.name for p in test_files if p.name not in annotations]
    if unlabelled:
        raise ValueError(f"{root / 'val'}: {len(unlabelled)} images have no annotation, e.g. {unlabelled[0]}")
    missing = set(annotations) - {p.name for p in test_files}
    if missing:
        raise ValueError(f"{root / 'val' / 'val_annotations.txt'} lists {len(missing)} missing images")
    test_labels = [index[annotations[p.name]] for p in test_files]
    return (
        wnids,
        classes,
        train_files,
        np.asarray(train_labels, dtype=np.int64),
        test_files,
        np.asarray(test_labels, dtype=np.int64),
    )


def read_tiny_imagenet(
    directory: PathLike, cache_dir: PathLike | None = None, cache: bool = True, workers: int | None = None
) -> ImageData:
    """TinyImageNet from ``directory/tiny-imagenet-200`` or ``directory`` itself.

    Train split: ``train/<wnid>/images/*.JPEG`` (100000 images); test split: ``val/images/*.JPEG`` (10000)
    labelled by ``val/val_annotations.txt`` (tab-separated file name, wnid, 4 box ints). Images are
    converted to RGB (some are greyscale or CMYK) at 64x64, shape (3, 64, 64). Labels are the positions
    of the wnids of ``wnids.txt`` in sorted order; class names the first name of each wnid in ``words.txt``.

    Decoding takes a while, so the arrays are stored once in ``<cache_dir>/tiny-imagenet-200.npz``
    (default cache dir: ``cache_dir("tiny-imagenet")``) and reused while the source path and the list of
    image files are unchanged. ``cache=False`` neither reads nor writes it.
    """
    root = _locate(directory, DATASETS["tiny-imagenet"])
    wnids, classes, train_files, train_labels, test_files, test_labels = _tiny_listing(root)
    listing = "\n".join(
        [str(root.resolve()), *wnids, *(p.relative_to(root).as_posix() for p in train_files + test_files)]
    )
    fingerprint = (
        f"v{_TINY_CACHE_VERSION}:{len(train_files)}+{len(test_files)}:{hashlib.sha1(listing.encode()).hexdigest()}"
    )
    cache_file = Path(cache_dir if cache_dir is not None else _cache_path("tiny-imagenet")) / "tiny-imagenet-200.npz"

    if cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    return ImageData(
                        "tiny-imagenet",
                        torch.from_numpy(stored["train_images"]),
                        torch.from_numpy(stored["train_labels"]),
                        torch.from_numpy(stored["test_images"]),
                        torch.from_numpy(stored["test_labels"]),
                        [str(c) for c in stored["classes"]],
                    )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable cache {cache_file}: {e}", stacklevel=2)

    train_images = _decode_all(train_files, "RGB", (64, 64), "tiny-imagenet train", workers)
    test_images = _decode_all(test_files, "RGB", (64, 64), "tiny-imagenet val", workers)
    if cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            part = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.part.npz")
            np.savez(
                part,
                fingerprint=np.asarray(fingerprint),
                train_images=train_images,
                train_labels=train_labels,
                test_images=test_images,
                test_labels=test_labels,
                classes=np.asarray(classes),
            )
            os.replace(part, cache_file)
        except OSError as e:
            warnings.warn(f"could not write the TinyImageNet cache {cache_file}: {e}", stacklevel=2)
    return ImageData(
        "tiny-imagenet",
        torch.from_numpy(train_images),
        torch.from_numpy(train_labels),
        torch.from_numpy(test_images),
        torch.from_numpy(test_labels),
        classes,
    )


# ----------------------------------------------------------------------------------------------------------------
# scikit-learn digits, image folders
# ----------------------------------------------------------------------------------------------------------------


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train indices, test indices) with ``round(N * test_fraction)`` test items."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    test = stratified_indices(labels, round(len(labels) * test_fraction), seed)
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def read_digits(directory: PathLike | None = None) -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn; ``directory`` is ignored).

    Grey values 0..16 are scaled to uint8 by ``value * 255 // 16``; images (1, 8, 8); classes ``"0"``..``"9"``.
    A fixed stratified split (seed 0) puts 1/3 of the images (599) in the test split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.int64) * 255 // 16).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train, test = _split(labels, 1 / 3, seed=0)
    return ImageData(
        "digits",
        _to_tensor(images[train], torch.uint8),
        _to_tensor(labels[train], torch.int64),
        _to_tensor(images[test], torch.uint8),
        _to_tensor(labels[test], torch.int64),
        [str(d) for d in range(10)],
    )


def _class_folders(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _folder_files(directory: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = _image_files(directory / name) if (directory / name).is_dir() else []
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def read_image_folder(
    root: PathLike,
    size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    workers: int | None = None,
) -> ImageData:
    """A dataset from class folders of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, any case).

    Layouts: ``root/train/<class>/*`` with ``root/test/<class>/*``, or ``root/<class>/*`` split into a
    stratified ``1 - test_fraction`` / ``test_fraction`` train/test split by ``seed``. Classes are the
    folder names, sorted. ``size`` resizes every image to ``size`` x ``size`` (bilinear); without it all
    images must have one size. ``channels`` is 1 (grey) or 3 (RGB); by default 1 if every image is
    greyscale, else 3. Returns (N, channels, H, W) uint8 images; name ``"folder:<root>"``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_folders(root / "train")
        unknown = sorted(set(_class_folders(root / "test")) - set(classes))
        if unknown:
            raise ValueError(f"{root / 'test'}: classes {unknown} have no folder in {root / 'train'}")
        train_files, train_labels = _folder_files(root / "train", classes)
        test_files, test_labels = _folder_files(root / "test", classes)
    else:
        classes = _class_folders(root)
        files, labels = _folder_files(root, classes)
        train, test = _split(labels, test_fraction, seed)
        train_files, train_labels = [files[i] for i in train], labels[train]
        test_files, test_labels = [files[i] for i in test], labels[test]
    if not classes or not train_files:
        raise ValueError(f"{root}: no images found in class folders (expected root/<class>/*.png or train/, test/)")

    sizes: set[tuple[int, int]] = set()
    grey = True
    for path in train_files + test_files:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
                grey = grey and image.mode in _GREY_MODES
        except OSError as e:
            raise ValueError(f"{path}: cannot read image ({e})") from e
    if size is None and len(sizes) > 1:
        raise ValueError(f"{root}: images have different sizes {sorted(sizes)[:4]}...; pass size= to resize them")
    target = (size, size) if size is not None else next(iter(sizes))
    mode = "L" if (channels or (1 if grey else 3)) == 1 else "RGB"
    return ImageData(
        f"folder:{root}",
        torch.from_numpy(_decode_all(train_files, mode, target, "train images", workers)),
        torch.from_numpy(train_labels),
        torch.from_numpy(_decode_all(test_files, mode, target, "test images", workers)),
        torch.from_numpy(test_labels),
        classes,
    )


# ----------------------------------------------------------------------------------------------------------------
# Downloads and archives
# ----------------------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, destination: PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` (http(s), ftp or file) to ``destination``, checking its md5 if given.

    The data is streamed to ``<destination>.<pid>.part`` with a progress bar, its md5 computed on the fly,
    and renamed to ``destination`` only when complete and correct; on any failure the part file is
    deleted. A ``destination`` that already exists with the right md5 is kept without downloading.
    Raises :class:`ChecksumError` on an md5 mismatch, ``urllib.error.URLError`` / ``OSError`` otherwise.
    """
    destination = Path(destination)
    if destination.is_file() and (md5 is None or _md5(destination) == md5):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(f"{destination.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"{url}: incomplete download ({part.stat().st_size} of {total} bytes)")
        if md5 is not None and digest.hexdigest() != md5:
            raise ChecksumError(f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}")
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)
    return destination


def _safe_target(root: Path, name: str) -> Path:
    """The path of archive member ``name`` under ``root``; raises if it is absolute or escapes ``root``."""
    if not name or name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} escapes the target directory")
    return target


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streaming: one forward pass, even through gzip
            target = _safe_target(root, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"archive member {member.name!r} has no data")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise UnsafeArchiveError(f"archive member {member.name!r} is a {kind}")


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _safe_target(root, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"archive member {info.filename!r} is a link")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def extract_archive(archive: PathLike, directory: PathLike) -> list[Path]:
    """Extract a tar (any compression) or zip ``archive`` into ``directory``; returns the top-level entries.

    Members are extracted into a temporary folder inside ``directory`` and moved into place only when the
    whole archive is extracted. Raises :class:`UnsafeArchiveError` (and extracts nothing) for a member with
    an absolute path, a path escaping ``directory``, a (sym/hard) link or a special file.
    """
    archive, directory = Path(archive), Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".extract-", dir=directory)).resolve()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, temp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, temp)
        else:
            raise ValueError(f"{archive}: neither a tar nor a zip archive")
        moved = []
        for entry in sorted(temp.iterdir()):
            target = directory / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
            moved.append(target)
        return moved
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Registry and resolution
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """One file of a dataset's official source: fetched from ``url``, checked against ``md5``, saved as
    ``filename`` in the cache dir and, if ``extract``, unpacked there (and the archive deleted)."""

    url: str
    md5: str
    filename: str
    extract: bool


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a built-in dataset.

    Attributes:
        name: registry name (``load_dataset(name)``).
        reader: ``reader(directory, **options) -> ImageData``.
        folder: the dataset's own folder name (e.g. ``"cifar-10-batches-py"``); data roots are searched for
            ``<root>/<folder>``, ``<root>/<name>``, ``<root>/<name>/<folder>`` and ``<root>`` itself.
        files: required files (or directories) relative to that folder; each entry lists accepted
            alternative names. Empty for data shipped with a package (digits).
        downloads: the official source files with md5s.
        system_paths: directories where a system package installs the data.
        channels, size, num_classes: image channels, height/width, classes.
        option_files: (option, file) pairs: ``file`` is required too when ``options[option]`` is true.
        hint: extra advice for the not-found error.
    """

    name: str
    reader: Callable[..., ImageData]
    folder: str
    files: tuple[tuple[str, ...], ...]
    downloads: tuple[Download, ...]
    system_paths: tuple[str, ...]
    channels: int
    size: int
    num_classes: int
    option_files: tuple[tuple[str, str], ...] = ()
    hint: str = ""

    def required(self, options: dict | None = None) -> tuple[tuple[str, ...], ...]:
        """Required files for these reader options."""
        options = options or {}
        return self.files + tuple((f,) for option, f in self.option_files if options.get(option))

    def candidates(self, root: PathLike) -> list[Path]:
        """Directories under a data root that may hold the files, in search order."""
        root = Path(root).expanduser()
        paths = [root / self.folder, root / self.name, root / self.name / self.folder, root]
        return list(dict.fromkeys(paths))

    def missing(self, directory: Path, options: dict | None = None) -> list[str]:
        """Required files not present in ``directory``."""
        return [alts[0] for alts in self.required(options) if not any((directory / a).exists() for a in alts)]

    def find(self, root: PathLike, options: dict | None = None) -> tuple[Path | None, str]:
        """(directory holding all required files, "") or (None, why not) for one data root."""
        root = Path(root).expanduser()
        if not root.is_dir():
            return None, "does not exist" if not root.exists() else "not a directory"
        reasons = []
        for directory in self.candidates(root):
            if not directory.is_dir():
                continue
            missing = self.missing(directory, options)
            if not missing:
                return directory, ""
            reasons.append(f"{directory}: missing {', '.join(missing)}")
        return None, "; ".join(reasons)


def _locate(directory: PathLike | None, spec: DatasetSpec, options: dict | None = None) -> Path:
    if directory is None:
        raise FileNotFoundError(f"{spec.name}: no directory given")
    found, why = spec.find(directory, options)
    if found is None:
        raise FileNotFoundError(f"{spec.name} not found in {directory}: {why}")
    return found


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _idx_downloads(base: str, md5s: Sequence[str]) -> tuple[Download, ...]:
    return tuple(Download(base + f + ".gz", m, f + ".gz", False) for f, m in zip(_IDX_FILES, md5s))


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        reader=read_mnist,
        folder="mnist",
        files=tuple(_idx_names(f) for f in _IDX_FILES),
        downloads=_idx_downloads(
            _MNIST_URL,
            [
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ],
        ),
        system_paths=(),
        channels=1,
        size=28,
        num_classes=10,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        reader=read_fashion_mnist,
        folder="fashion-mnist",
        files=tuple(_idx_names(f) for f in _IDX_FILES),
        downloads=_idx_downloads(
            _FASHION_URL,
            [
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ],
        ),
        system_paths=("/usr/share/datasets/fashion-mnist",),
        channels=1,
        size=28,
        num_classes=10,
        hint="on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs /usr/share/datasets/fashion-mnist)",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        reader=read_cifar10,
        folder="cifar-10-batches-py",
        files=tuple((f,) for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]),
        downloads=(
            Download(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                "cifar-10-python.tar.gz",
                True,
            ),
        ),
        system_paths=(),
        channels=3,
        size=32,
        num_classes=10,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        reader=read_cifar100,
        folder="cifar-100-python",
        files=(("train",), ("test",), ("meta",)),
        downloads=(
            Download(
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
                "cifar-100-python.tar.gz",
                True,
            ),
        ),
        system_paths=(),
        channels=3,
        size=32,
        num_classes=100,
    ),
    "stl10": DatasetSpec(
        name="stl10",
        reader=read_stl10,
        folder="stl10_binary",
        files=tuple((f,) for f in ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]),
        downloads=(
            Download(
                "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                "91f7769df0f17e558f3565bffb0c7dfb",
                "stl10_binary.tar.gz",
                True,
            ),
        ),
        system_paths=(),
        channels=3,
        size=96,
        num_classes=10,
        option_files=(("unlabeled", "unlabeled_X.bin"),),
    ),
    "tiny-imagenet": DatasetSpec(
        name="tiny-imagenet",
        reader=read_tiny_imagenet,
        folder="tiny-imagenet-200",
        files=(("wnids.txt",), ("words.txt",), ("train",), ("val/images",), ("val/val_annotations.txt",)),
        downloads=(
            Download(
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                "90528d7ca1a48142e341f4ef8d21d0de",
                "tiny-imagenet-200.zip",
                True,
            ),
        ),
        system_paths=(),
        channels=3,
        size=64,
        num_classes=200,
    ),
    "digits": DatasetSpec(
        name="digits",
        reader=read_digits,
        folder="",
        files=(),
        downloads=(),
        system_paths=(),
        channels=1,
        size=8,
        num_classes=10,
        hint="shipped with scikit-learn",
    ),
}


def cache_dir(name: str | None = None) -> Path:
    """The cache directory: ``$HSCL_CACHE``, else ``$XDG_CACHE_HOME/hscl``, else ``~/.cache/hscl``;
    ``/<name>`` appended when a dataset name is given."""
    return _cache_path(name)


def _cache_path(name: str | None) -> Path:
    root = os.environ.get("HSCL_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hscl"
    return base / name if name else base


class _DownloadError(Exception):
    """A download step failed; ``url`` names the source, ``error`` is the cause."""

    def __init__(self, url: str, error: Exception):
        super().__init__(url, error)
        self.url, self.error = url, error


def _download(spec: DatasetSpec, target: Path) -> None:
    """Fetch, check and unpack every source file of ``spec`` into ``target``; errors name the failing URL."""
    for item in spec.downloads:
        try:
            archive = download_file(item.url, target / item.filename, item.md5)
            if item.extract:
                extract_archive(archive, target)
                archive.unlink(missing_ok=True)
        except Exception as e:
            raise _DownloadError(item.url, e) from e


def _lookup(name: str) -> DatasetSpec | None:
    """The spec for ``name``, ignoring case, ``-`` and ``_`` (``"CIFAR-10"``, ``"fashion_mnist"`` work)."""

    def key(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")

    return next((spec for n, spec in DATASETS.items() if key(n) == key(name)), None)


def _valid_names() -> str:
    return ", ".join([*DATASETS, "folder:<path>"])


def load_dataset(name: str, data_dir: PathLike | None = None, download: bool = True, **options) -> ImageData:
    """Load a dataset by name: one of :data:`DATASETS` or ``"folder:<path>"`` (see :func:`read_image_folder`).

    Data roots are searched in this order, each for ``<root>/<folder>``, ``<root>/<name>[/<folder>]``, ``<root>``:
    ``data_dir``, the ``os.pathsep``-separated roots of ``$HSCL_DATA``, the dataset's system paths (e.g.
    ``/usr/share/datasets/fashion-mnist`` from the Debian package ``dataset-fashion-mnist``), and the cache
    dir :func:`cache_dir` ``(name)``. If none holds the files and ``download`` is true, the official files
    are downloaded into the cache dir, md5-checked and extracted. ``options`` go to the reader (e.g.
    ``unlabeled=True`` for STL-10; ``size``, ``channels``, ``seed``, ``test_fraction`` for folders).

    Raises ``ValueError`` for an unknown name and one :class:`DatasetNotFoundError` listing every location
    tried, why it failed, and how to provide the data.
    """
    if name.startswith("folder:"):
        path = Path(name[len("folder:") :]).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"image folder {path} does not exist; expected {path}/<class>/*.png or {path}/train/<class>/*",
                [(str(path), "does not exist")],
            )
        return read_image_folder(path, **options)
    spec = _lookup(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {_valid_names()}")
    if not spec.files:
        return spec.reader(None, **options)

    roots: list[tuple[str, Path | None, str]] = []
    roots.append(("data_dir argument", Path(data_dir) if data_dir is not None else None, "not given"))
    env = os.environ.get("HSCL_DATA", "")
    env_roots = [p for p in env.split(os.pathsep) if p]
    roots += [("$HSCL_DATA", Path(p), "") for p in env_roots] or [("$HSCL_DATA", None, "not set")]
    roots += [("system path", Path(p), "") for p in spec.system_paths]
    target = cache_dir(spec.name)
    roots.append(("cache", target, ""))

    tried: list[tuple[str, str]] = []
    for label, root, reason in roots:
        if root is None:
            tried.append((label, reason))
            continue
        found, why = spec.find(root, options)
        if found is not None:
            return spec.reader(found, **options)
        tried.append((f"{label} {root}", why))

    if not spec.downloads:
        tried.append(("download", "no download source"))
    elif not download:
        tried.append(("download", "disabled (download=False)"))
    else:
        try:
            _download(spec, target)
        except _DownloadError as e:  # any failure is reported in the one error below
            tried.append((f"download {e.url} into {target}", f"download failed: {e.error!r}"))
        else:
            found, why = spec.find(target, options)
            if found is not None:
                return spec.reader(found, **options)
            tried.append((f"download into {target}", f"downloaded, but {why}"))

    needed = ", ".join(alts[0] for alts in spec.required(options))
    how = [f"pass --data-dir DIR (data_dir=DIR) or set HSCL_DATA=DIR, where DIR/{spec.folder}/ or DIR holds {needed}"]
    if spec.downloads:
        fetch = "; ".join(f"{d.url} (md5 {d.md5})" for d in spec.downloads)
        unpack = " and unpack it there" if any(d.extract for d in spec.downloads) else ""
        how.append(f"or fetch by hand {fetch} into DIR{unpack}")
    if spec.hint:
        how.append(f"or {spec.hint}")
    lines = [f"dataset {spec.name!r} not found. Tried:"]
    lines += [f"  - {where_}: {why}" for where_, why in tried]
    lines.append("To provide it: " + ";\n  ".join(how) + ".")
    raise DatasetNotFoundError("\n".join(lines), tried)
