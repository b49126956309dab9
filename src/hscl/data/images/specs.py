"""What is known about each built-in dataset, and where to look for it: :class:`DatasetSpec` (folder, files,
official downloads, system paths, shape), :data:`SPECS`, and the lookup of a dataset's folder under a data root
(:meth:`DatasetSpec.find`, :meth:`DatasetSpec.locate`) and of the data roots themselves
(:meth:`DatasetSpec.roots`: the given folder, ``$HSCL_DATA``, system paths, :func:`cache_dir`).

This module imports nothing else of :mod:`hscl.data`: the readers look their folder up here, and the registry
(:mod:`hscl.data.images.registry`) pairs each spec with its reader on top of both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPECS", "DatasetSpec", "Download", "cache_dir"]


@dataclass(frozen=True)
class Download:
    """One file of a dataset's official source: fetched from ``url``, checked against ``md5``, saved as
    ``filename`` in the cache dir and, if ``extract``, unpacked there (and the archive deleted)."""

    url: str
    md5: str
    filename: str
    extract: bool


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


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a built-in dataset.

    Attributes:
        name: registry name (``load_dataset(name)``).
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
        reader: ``reader(directory, **options) -> ImageData``; set in the registry's
            :data:`~hscl.data.images.DATASETS`, None in :data:`SPECS` (which the readers themselves consult).
    """

    name: str
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
    reader: Callable[..., object] | None = None

    def required(self, options: dict | None = None) -> tuple[tuple[str, ...], ...]:
        """Required files for these reader options."""
        options = options or {}
        return self.files + tuple((f,) for option, f in self.option_files if options.get(option))

    def candidates(self, root: str | os.PathLike) -> list[Path]:
        """Directories under a data root that may hold the files, in search order."""
        root = Path(root).expanduser()
        paths = [root / self.folder, root / self.name, root / self.name / self.folder]
        if self.source:
            paths += [root / self.source, root / self.source / self.folder]
        return list(dict.fromkeys([*paths, root]))

    def missing(self, directory: Path, options: dict | None = None) -> list[str]:
        """Required files not present in ``directory``."""
        return [alts[0] for alts in self.required(options) if not any((directory / a).exists() for a in alts)]

    def find(self, root: str | os.PathLike, options: dict | None = None) -> tuple[Path | None, str]:
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

    def locate(self, directory: str | os.PathLike | None, options: dict | None = None) -> Path:
        """The folder holding the files under the data root ``directory`` (what a reader is given: the root
        or the dataset's folder itself); ``FileNotFoundError`` saying what is missing where."""
        if directory is None:
            raise FileNotFoundError(f"{self.name}: no directory given")
        found, why = self.find(directory, options)
        if found is None:
            raise FileNotFoundError(f"{self.name} not found in {directory}: {why}")
        return found

    def roots(self, data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path | None, str]]:
        """The data roots to search, in order, as ``(label, root, why not)`` (``root`` None where there is
        none): ``data_dir``, the ``os.pathsep``-separated roots of ``$HSCL_DATA``, the system paths, and the
        cache dir (of ``source`` for a derived dataset, so both share one download)."""
        roots: list[tuple[str, Path | None, str]] = [
            ("data_dir argument", Path(data_dir) if data_dir is not None else None, "not given")
        ]
        env_roots = [p for p in os.environ.get("HSCL_DATA", "").split(os.pathsep) if p]
        roots += [("$HSCL_DATA", Path(p), "") for p in env_roots] or [("$HSCL_DATA", None, "not set")]
        roots += [("system path", Path(p), "") for p in self.system_paths]
        roots.append(("cache", cache_dir(self.source or self.name), ""))
        return roots


#: the four idx files of MNIST and Fashion-MNIST (training images and labels, test images and labels)
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_names(stem: str) -> tuple[str, ...]:
    """Accepted names of an idx file: the standard one and the ``train-images.idx3-ubyte`` spelling, each
    plain or gzipped."""
    dotted = stem.replace("-idx", ".idx", 1)
    return (stem, stem + ".gz", dotted, dotted + ".gz")


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _idx_downloads(base: str, md5s: Sequence[str]) -> tuple[Download, ...]:
    return tuple(Download(base + f + ".gz", m, f + ".gz", False) for f, m in zip(_IDX_FILES, md5s))


def _derived(spec: DatasetSpec, name: str, **changes) -> DatasetSpec:
    """A dataset built from ``spec``'s files (same folder, files, downloads, system paths and cache)."""
    return dataclasses.replace(spec, name=name, source=spec.name, **changes)


#: the built-in datasets by name, without their readers (the registry adds those)
SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
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
SPECS["fashion-mnist-mosaic"] = _derived(SPECS["fashion-mnist"], "fashion-mnist-mosaic", size=56)
SPECS["mnist-mosaic"] = _derived(SPECS["mnist"], "mnist-mosaic", size=56)
SPECS["cifar-fs"] = _derived(SPECS["cifar100"], "cifar-fs", num_classes=20)
SPECS["fc100"] = _derived(SPECS["cifar100"], "fc100", num_classes=20)
SPECS["mini-imagenet"] = DatasetSpec(
    name="mini-imagenet",
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
