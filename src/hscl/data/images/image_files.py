"""Datasets stored as image files (PNG, JPEG, BMP), decoded with Pillow in parallel threads: TinyImageNet
(with a cache of the decoded arrays) and generic class folders."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from hscl.data.images.base import ImageData, PathLike, _split
from hscl.data.images.specs import SPECS, _cache_path

__all__ = ["read_image_folder", "read_tiny_imagenet"]


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
    root = SPECS["tiny-imagenet"].locate(directory)
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
# image folders
# ----------------------------------------------------------------------------------------------------------------


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
