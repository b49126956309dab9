"""The registry of built-in datasets (:data:`DATASETS`) and :func:`load_dataset`: resolution of a dataset
in the data roots, system paths and the cache, then a checked download."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hscl.data.images.base import DatasetNotFoundError, ImageData, PathLike
from hscl.data.images.download import Download, _download, _DownloadError, cache_dir
from hscl.data.images.fewshot_splits import _cifar_fs_episodes, _fc100_episodes, _mini_imagenet_episodes
from hscl.data.images.formats import (
    _IDX_FILES,
    _idx_names,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_fashion_mnist,
    read_mnist,
    read_stl10,
)
from hscl.data.images.image_files import read_image_folder, read_tiny_imagenet
from hscl.data.images.mosaic import read_fashion_mnist_mosaic, read_mnist_mosaic

__all__ = ["DATASETS", "DatasetSpec", "check_data_dir", "holds_dataset", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a built-in dataset.

    Attributes:
        name: registry name (``load_dataset(name)``).
        reader: ``reader(directory, **options) -> ImageData``.
        folder: the dataset's own folder name (e.g. ``"cifar-10-batches-py"``); data roots are searched for
            ``<root>/<folder>``, ``<root>/<name>``, ``<root>/<name>/<folder>`` (then ``<root>/<source>`` and
            ``<root>/<source>/<folder>`` for a derived dataset) and ``<root>`` itself.
        files: required files (or directories) relative to that folder; each entry lists accepted
            alternative names. Empty for data shipped with a package (digits).
        downloads: the official source files with md5s.
        system_paths: directories where a system package installs the data.
        channels, size, num_classes: image channels, height/width, classes.
        option_files: (option, file) pairs: ``file`` is required too when ``options[option]`` is true.
        hint: extra advice for the not-found error.
        source: for a dataset built from another one's files (``cifar-fs`` from ``cifar100``), that dataset's
            registry name: the two share one cache folder, so the files are downloaded once.
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
    source: str = ""

    def required(self, options: dict | None = None) -> tuple[tuple[str, ...], ...]:
        """Required files for these reader options."""
        options = options or {}
        return self.files + tuple((f,) for option, f in self.option_files if options.get(option))

    def candidates(self, root: PathLike) -> list[Path]:
        """Directories under a data root that may hold the files, in search order."""
        root = Path(root).expanduser()
        paths = [root / self.folder, root / self.name, root / self.name / self.folder]
        if self.source:
            paths += [root / self.source, root / self.source / self.folder]
        return list(dict.fromkeys([*paths, root]))

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


def _derived(spec: DatasetSpec, name: str, reader: Callable[..., ImageData], **changes) -> DatasetSpec:
    """A dataset built from ``spec``'s files (same folder, files, downloads, system paths and cache)."""
    return dataclasses.replace(spec, name=name, reader=reader, source=spec.name, **changes)


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
DATASETS["fashion-mnist-mosaic"] = _derived(
    DATASETS["fashion-mnist"], "fashion-mnist-mosaic", read_fashion_mnist_mosaic, size=56
)
DATASETS["mnist-mosaic"] = _derived(DATASETS["mnist"], "mnist-mosaic", read_mnist_mosaic, size=56)
DATASETS["cifar-fs"] = _derived(DATASETS["cifar100"], "cifar-fs", _cifar_fs_episodes, num_classes=20)
DATASETS["fc100"] = _derived(DATASETS["cifar100"], "fc100", _fc100_episodes, num_classes=20)
DATASETS["mini-imagenet"] = DatasetSpec(
    name="mini-imagenet",
    reader=_mini_imagenet_episodes,
    folder="miniImagenet",
    files=(("train.csv",), ("val.csv",), ("test.csv",), ("images",)),
    downloads=(),
    system_paths=(),
    channels=3,
    size=84,
    num_classes=20,
    hint=(
        "miniImageNet is not downloaded (ImageNet's terms): put Ravi & Larochelle's split files train.csv, "
        "val.csv, test.csv and the images/ folder of JPEGs they list into DIR/miniImagenet"
    ),
)


def _lookup(name: str) -> DatasetSpec | None:
    """The spec for ``name``, ignoring case, ``-`` and ``_`` (``"CIFAR-10"``, ``"fashion_mnist"`` work)."""

    def key(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")

    return next((spec for n, spec in DATASETS.items() if key(n) == key(name)), None)


def _valid_names() -> str:
    return ", ".join([*DATASETS, "folder:<path>"])


def check_data_dir(name: str, data_dir: PathLike | None, **options) -> None:
    """Check that an explicit ``data_dir`` (``--data-dir``, ``data.data_dir``) holds dataset ``name``.

    :func:`load_dataset` searches further (``$HSCL_DATA``, system paths, the cache, a download); a run given a
    folder must not silently read the data from elsewhere, so it calls this first. Raises a one-line
    :class:`DatasetNotFoundError` naming the folder, the files looked for and where. No-op without ``data_dir``,
    for ``folder:<path>`` datasets and for data shipped with a package (``digits``).
    """
    if data_dir is None or name.startswith("folder:"):
        return
    spec = _lookup(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {_valid_names()}")
    if not spec.files:
        return
    found, why = spec.find(data_dir, options)
    if found is None:
        needed = ", ".join(alts[0] for alts in spec.required(options))
        places = ", ".join(str(p) for p in spec.candidates(data_dir))
        raise DatasetNotFoundError(
            f"--data-dir {data_dir}: dataset {spec.name!r} is not there ({why}); looked for {needed} in {places}",
            [(f"data_dir {data_dir}", why)],
        )


def holds_dataset(name: str, data_dir: PathLike | None, **options) -> bool:
    """Whether ``data_dir`` passes :func:`check_data_dir` (False for None)."""
    if data_dir is None:
        return False
    try:
        check_data_dir(name, data_dir, **options)
    except (DatasetNotFoundError, ValueError):
        return False
    return True


def load_dataset(name: str, data_dir: PathLike | None = None, download: bool = True, **options) -> ImageData:
    """Load a dataset by name: one of :data:`DATASETS` or ``"folder:<path>"`` (see :func:`read_image_folder`).

    Data roots are searched in this order, each for ``<root>/<folder>``, ``<root>/<name>[/<folder>]``, ``<root>``:
    ``data_dir``, the ``os.pathsep``-separated roots of ``$HSCL_DATA``, the dataset's system paths (e.g.
    ``/usr/share/datasets/fashion-mnist`` from the Debian package ``dataset-fashion-mnist``), and the cache
    dir :func:`cache_dir` ``(name)`` (for a dataset built from another's files, such as ``cifar-fs`` or
    ``fashion-mnist-mosaic``, the cache dir of that one). If none holds the files and ``download`` is true, the
    official files are downloaded into the cache dir, md5-checked and extracted. ``options`` go to the reader
    (e.g. ``unlabeled=True`` for STL-10; ``size``, ``channels``, ``seed``, ``test_fraction`` for folders;
    ``train_size``, ``test_size``, ``seed`` for mosaics; ``split``, ``query_fraction``, ``seed`` for the
    few-shot benchmarks ``cifar-fs``, ``fc100``, ``mini-imagenet``, which load one split, by default
    ``"test"``, as episode data: see :meth:`~hscl.data.images.FewShotBenchmark.as_episode_data`).

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
    target = cache_dir(spec.source or spec.name)
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
