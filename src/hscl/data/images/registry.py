"""The registry of built-in datasets (:data:`DATASETS`: each spec of :mod:`~hscl.data.images.specs` with its
reader) and :func:`load_dataset`: resolution of a dataset in the data roots, system paths and the cache, then a
checked download."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hscl.data.images.base import DatasetNotFoundError, ImageData, PathLike
from hscl.data.images.download import _download, _DownloadError
from hscl.data.images.fewshot_splits import _cifar_fs_episodes, _fc100_episodes, _mini_imagenet_episodes
from hscl.data.images.formats import (
    read_cifar10,
    read_cifar100,
    read_digits,
    read_fashion_mnist,
    read_mnist,
    read_stl10,
)
from hscl.data.images.image_files import read_image_folder, read_tiny_imagenet
from hscl.data.images.mosaic import read_fashion_mnist_mosaic, read_mnist_mosaic
from hscl.data.images.specs import SPECS, DatasetSpec

__all__ = ["DATASETS", "DatasetSpec", "check_data_dir", "holds_dataset", "load_dataset"]

_READERS = {
    "mnist": read_mnist,
    "fashion-mnist": read_fashion_mnist,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "stl10": read_stl10,
    "tiny-imagenet": read_tiny_imagenet,
    "digits": read_digits,
    "fashion-mnist-mosaic": read_fashion_mnist_mosaic,
    "mnist-mosaic": read_mnist_mosaic,
    "cifar-fs": _cifar_fs_episodes,
    "fc100": _fc100_episodes,
    "mini-imagenet": _mini_imagenet_episodes,
}

#: the built-in datasets by name: each :data:`~hscl.data.images.specs.SPECS` entry with its ``reader``
DATASETS: dict[str, DatasetSpec] = {
    name: dataclasses.replace(spec, reader=_READERS[name]) for name, spec in SPECS.items()
}


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

    roots = spec.roots(data_dir)
    target = roots[-1][1]  # the cache dir, where a download goes
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
    raise _not_found(spec, tried, options)


def _not_found(spec: DatasetSpec, tried: list[tuple[str, str]], options: dict) -> DatasetNotFoundError:
    """The one error of :func:`load_dataset`: every location tried, why it failed, how to provide the data."""
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
    return DatasetNotFoundError("\n".join(lines), tried)
