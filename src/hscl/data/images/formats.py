"""Readers of the binary on-disk formats: idx (MNIST, Fashion-MNIST), the CIFAR python pickles (read by an
unpickler that only builds arrays), STL-10's binary files, and scikit-learn's digits."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from hscl.data.images.base import ImageData, PathLike, _split, _to_tensor
from hscl.data.images.specs import _IDX_FILES, SPECS, _idx_names

__all__ = ["read_cifar10", "read_cifar100", "read_digits", "read_fashion_mnist", "read_idx", "read_mnist", "read_stl10"]


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
    root = SPECS[name].locate(directory)
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
    root = SPECS["cifar10"].locate(directory)
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", root, batches, "test_batch", "batches.meta", b"label_names", b"labels")


def read_cifar100(directory: PathLike) -> ImageData:
    """CIFAR-100 (python version) from ``directory/cifar-100-python`` or ``directory`` itself.

    Reads ``train`` (50000), ``test`` (10000) and ``meta``; uses the 100 fine labels and fine label names.
    Images (3, 32, 32) RGB.
    """
    root = SPECS["cifar100"].locate(directory)
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
    root = SPECS["stl10"].locate(directory, {"unlabeled": unlabeled})
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
# scikit-learn digits
# ----------------------------------------------------------------------------------------------------------------


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
