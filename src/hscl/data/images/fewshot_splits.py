"""The few-shot benchmarks' class splits: CIFAR-FS, FC100 and miniImageNet, each a train / val / test split of
disjoint classes, and their conversion to the :class:`ImageData` that :func:`hscl.engine.finetune.fewshot.few_shot`
draws
episodes from.

* CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019): the 100
  CIFAR-100 classes split 64 / 16 / 20 at random, by class name (the split files of the authors' code).
* FC100 (Oreshkin et al., "TADAM: Task dependent adaptive metric for improved few-shot learning", NeurIPS 2018):
  the 20 CIFAR-100 superclasses split 12 / 4 / 4, i.e. 60 / 20 / 20 classes, so that no superclass spans two
  splits. Its fine classes are found from the coarse labels of the CIFAR-100 files.
* miniImageNet (Ravi & Larochelle, "Optimization as a model for few-shot learning", ICLR 2017; the split used
  by nearly all later work): ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``, the label a
  WordNet id such as ``n01532829``) over a folder ``images/`` of JPEGs; 64 / 16 / 20 classes of 600 images. The
  images are decoded with Pillow to RGB and resized (bilinear) to 84 x 84, the standard resolution.

Both CIFAR benchmarks are read from the CIFAR-100 python files (:func:`~hscl.data.images.read_cifar100`), with
the official train and test images pooled per class, as the benchmarks do: 600 images per class.

Every benchmark is a :class:`FewShotBenchmark`: ``benchmark["test"]`` is a :class:`FewShotSplit` with uint8 images
``(N, C, H, W)``, int64 labels ``0 .. n_classes - 1`` (classes in ascending CIFAR-100 label order, or sorted
WordNet ids) and the class names. :meth:`FewShotBenchmark.as_episode_data` turns one split into an
:class:`ImageData` whose classes are that split's classes, for the episode code.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hscl.data.images.base import ImageData, PathLike, _check_dataset_labels, _check_images, _split
from hscl.data.images.formats import _names, _unpickle, read_cifar100
from hscl.data.images.image_files import _decode_all
from hscl.data.images.specs import SPECS

__all__ = [
    "CIFAR_FS_CLASSES",
    "FC100_SUPERCLASSES",
    "MINI_IMAGENET_WNIDS",
    "SPLITS",
    "FewShotBenchmark",
    "FewShotSplit",
    "read_cifar_fs",
    "read_fc100",
    "read_mini_imagenet",
]

SPLITS = ("train", "val", "test")

#: CIFAR-FS: the CIFAR-100 fine class names of each split (Bertinetto et al. 2019, their split files).
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
        "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
        "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
        "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ),
}  # fmt: skip

#: FC100: the CIFAR-100 superclass (coarse label) names of each split (Oreshkin et al. 2018): superclasses
#: 1-6, 9, 10, 15, 17-19 train, 8, 11, 13, 16 val, 0, 7, 12, 14 test.
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles", "trees",
        "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip

#: miniImageNet: the WordNet ids of each split of Ravi & Larochelle's split files (train.csv, val.csv, test.csv).
MINI_IMAGENET_WNIDS: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747", "n02074367",
        "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551", "n02108915", "n02111277",
        "n02113712", "n02120079", "n02165456", "n02457408", "n02606052", "n02687172", "n02747177", "n02795169",
        "n02823428", "n02966193", "n03017168", "n03047690", "n03062245", "n03207743", "n03220513", "n03337140",
        "n03347037", "n03400231", "n03476684", "n03527444", "n03676483", "n03838899", "n03854065", "n03888605",
        "n03908618", "n03924679", "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548",
        "n04296562", "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
        "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560", "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356", "n02981792",
        "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504", "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165", "n02219486",
        "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143", "n03775546", "n04146614",
        "n04149813", "n04418357", "n04522168", "n07613480",
    ),
}  # fmt: skip

_WNID = re.compile(r"n\d{8}")


@dataclass(repr=False)
class FewShotSplit:
    """The images of one split of a few-shot benchmark.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,), values in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` is the name of label k.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        _check_images("images", self.images)
        _check_dataset_labels("labels", self.labels, self.images.shape[0], len(self.classes))
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be class indices of shape (N,), got {tuple(self.labels.shape)}")

    @property
    def num_classes(self) -> int:
        """Number of classes of the split."""
        return len(self.classes)

    def __repr__(self) -> str:
        return f"FewShotSplit(images={self.images.shape[0]}, classes={self.num_classes})"


@dataclass(repr=False)
class FewShotBenchmark:
    """A few-shot benchmark: splits (some of ``"train"``, ``"val"``, ``"test"``) with disjoint classes.

    ``benchmark[split]`` is a :class:`FewShotSplit`.
    """

    name: str
    splits: dict[str, FewShotSplit]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"{self.name}: unknown splits {unknown}; valid: {', '.join(SPLITS)}")
        seen: dict[str, str] = {}
        for split, part in self.splits.items():
            for c in part.classes:
                if c in seen:
                    raise ValueError(f"{self.name}: class {c!r} is in both the {seen[c]} and the {split} split")
                seen[c] = split

    def __getitem__(self, split: str) -> FewShotSplit:
        if split not in self.splits:
            valid = ", ".join(repr(s) for s in self.splits)
            raise KeyError(f"{self.name} has no split {split!r} loaded; loaded splits: {valid}")
        return self.splits[split]

    def as_episode_data(self, split: str = "test", query_fraction: float = 0.5, seed: int = 0) -> ImageData:
        """One split as an :class:`ImageData` for :func:`hscl.engine.finetune.fewshot.few_shot`.

        The images of each class of ``split`` are divided once, stratified and at random by ``seed``, into
        ``train_images`` (``1 - query_fraction`` of them) and ``test_images``. The episode code
        (:func:`hscl.engine.finetune.episodes.sample_episode`) by default pools the two again and draws an episode's
        support and query sets from all the images of each class (all 600 for CIFAR-FS and FC100), disjoint within
        the episode: the papers' protocol, so this division does not restrict the episodes. With
        ``FewShotConfig(draw="split")`` it does: the support from ``train_images``, the queries from
        ``test_images``, and no image is ever both a support and a query image. Labels and classes are the split's
        (``0 .. n_classes - 1``): pass ``classes=range(data.num_classes)`` to ``few_shot`` (the CLI's default).

        Any split may be converted (``"train"``: the base classes, e.g. to pre-train or fine-tune a backbone on
        them, with a held-out test split). The name is ``"<benchmark>:<split>"`` (with ``:q<fraction>:seed<seed>``
        appended when these differ from the defaults), so episode logs of different pools are never mixed.
        """
        part = self[split]
        if not 0 < query_fraction < 1:
            raise ValueError(f"query_fraction must lie in (0, 1), got {query_fraction}")
        support, query = _split(part.labels.numpy(), query_fraction, seed)
        for pool, index in (("query", query), ("support", support)):
            counts = np.bincount(part.labels.numpy()[index], minlength=part.num_classes)
            if counts.min() == 0:
                raise ValueError(
                    f"{self.name} {split}: query_fraction={query_fraction} leaves class "
                    f"{part.classes[int(counts.argmin())]!r} without {pool} images"
                )
        name = f"{self.name}:{split}"
        if (query_fraction, seed) != (0.5, 0):
            name += f":q{query_fraction:g}:seed{seed}"
        support_t, query_t = torch.from_numpy(support), torch.from_numpy(query)
        return ImageData(
            name,
            part.images[support_t],
            part.labels[support_t],
            part.images[query_t],
            part.labels[query_t],
            list(part.classes),
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={p.num_classes} classes / {p.images.shape[0]} images" for s, p in self.splits.items())
        return f"FewShotBenchmark({self.name!r}, {inner})"


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100 (CIFAR-100 python files)
# ----------------------------------------------------------------------------------------------------------------


def _cifar100_root(directory: PathLike) -> Path:
    return SPECS["cifar100"].locate(directory)


def _pooled_cifar100(root: Path) -> tuple[Tensor, Tensor, list[str], int]:
    """CIFAR-100's train then test images (60000), their fine labels, the fine class names, the train count."""
    data = read_cifar100(root)
    images = torch.cat([data.train_images, data.test_images])
    labels = torch.cat([data.train_labels, data.test_labels])
    return images, labels, data.classes, int(data.train_labels.shape[0])


def _select(
    name: str, images: Tensor, labels: Tensor, class_names: list[str], groups: dict[str, Sequence[int]]
) -> FewShotBenchmark:
    """A benchmark whose split ``s`` holds the images of the original classes ``groups[s]`` (relabelled in
    ascending order of the original label)."""
    splits = {}
    for split, members in groups.items():
        members = sorted(members)
        lookup = torch.full((len(class_names),), -1, dtype=torch.int64)
        lookup[torch.tensor(members, dtype=torch.int64)] = torch.arange(len(members))
        keep = torch.nonzero(lookup[labels] >= 0).flatten()
        splits[split] = FewShotSplit(images[keep], lookup[labels[keep]], [class_names[m] for m in members])
    return FewShotBenchmark(name, splits)


def read_cifar_fs(directory: PathLike) -> FewShotBenchmark:
    """CIFAR-FS from the CIFAR-100 python files in ``directory/cifar-100-python`` or ``directory``.

    Splits ``"train"`` / ``"val"`` / ``"test"`` of 64 / 16 / 20 classes (:data:`CIFAR_FS_CLASSES`), 600 images
    each (CIFAR-100's 500 train and 100 test images of the class, in file order, train first); images
    (3, 32, 32). Labels follow the CIFAR-100 label order within each split.
    """
    root = _cifar100_root(directory)
    images, labels, names, _ = _pooled_cifar100(root)
    index = {n: k for k, n in enumerate(names)}
    missing = [c for split in SPLITS for c in CIFAR_FS_CLASSES[split] if c not in index]
    if missing:
        raise ValueError(f"{root / 'meta'}: CIFAR-FS classes {missing} are not among its fine_label_names")
    groups = {split: [index[c] for c in CIFAR_FS_CLASSES[split]] for split in SPLITS}
    return _select("cifar-fs", images, labels, names, groups)


def _coarse_labels(root: Path, counts: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """The coarse (superclass) label of every image of ``train`` then ``test`` and the superclass names."""
    coarse_names = _names(root / "meta", b"coarse_label_names")
    parts = []
    for file, count in zip(("train", "test"), counts):
        batch = _unpickle(root / file)
        if b"coarse_labels" not in batch:
            raise ValueError(f"{root / file}: missing key b'coarse_labels' (keys: {sorted(batch)})")
        coarse = np.asarray(batch[b"coarse_labels"], dtype=np.int64).reshape(-1)
        if coarse.shape[0] != count:
            raise ValueError(f"{root / file}: {coarse.shape[0]} coarse labels for {count} images")
        if coarse.size and (coarse.min() < 0 or coarse.max() >= len(coarse_names)):
            raise ValueError(f"{root / file}: coarse labels outside [0, {len(coarse_names)})")
        parts.append(coarse)
    return np.concatenate(parts), coarse_names


def read_fc100(directory: PathLike) -> FewShotBenchmark:
    """FC100 from the CIFAR-100 python files in ``directory/cifar-100-python`` or ``directory``.

    Splits ``"train"`` / ``"val"`` / ``"test"`` hold the fine classes of 12 / 4 / 4 superclasses
    (:data:`FC100_SUPERCLASSES`), i.e. 60 / 20 / 20 classes of 600 images (CIFAR-100's train and test images,
    train first); images (3, 32, 32). A fine class belongs to the superclass of its images' ``coarse_labels``
    (every image of a class must carry the same one). Labels follow the CIFAR-100 label order within a split.
    """
    root = _cifar100_root(directory)
    images, labels, names, n_train = _pooled_cifar100(root)
    coarse, coarse_names = _coarse_labels(root, (n_train, int(images.shape[0]) - n_train))
    superclass_of: dict[int, int] = {}
    for fine, sup in zip(labels.tolist(), coarse.tolist()):
        if superclass_of.setdefault(fine, sup) != sup:
            raise ValueError(
                f"{root}: images of class {names[fine]!r} carry the coarse labels {superclass_of[fine]} and {sup}"
            )
    empty = [names[k] for k in range(len(names)) if k not in superclass_of]
    if empty:
        raise ValueError(f"{root}: classes {empty} have no images")
    index = {n: k for k, n in enumerate(coarse_names)}
    missing = [s for split in SPLITS for s in FC100_SUPERCLASSES[split] if s not in index]
    if missing:
        raise ValueError(f"{root / 'meta'}: FC100 superclasses {missing} are not among its coarse_label_names")
    groups = {
        split: [f for f, s in superclass_of.items() if coarse_names[s] in FC100_SUPERCLASSES[split]] for split in SPLITS
    }
    return _select("fc100", images, labels, names, groups)


# ----------------------------------------------------------------------------------------------------------------
# miniImageNet (CSV split files over a folder of JPEGs)
# ----------------------------------------------------------------------------------------------------------------


def _read_split_csv(path: Path, split: str, official: bool) -> tuple[list[str], list[str]]:
    """(file names, WordNet ids) of one split file; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (expected the header filename,label)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path}:1: expected the header 'filename,label', got {','.join(rows[0]) if rows else ''!r}")
    allowed = set(MINI_IMAGENET_WNIDS[split])
    files, wnids = [], []
    for number, row in enumerate(rows[1:], 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip():
            raise ValueError(f"{path}:{number}: expected 'filename,label', got {','.join(row)!r}")
        file, label = row[0].strip(), row[1].strip()
        if not _WNID.fullmatch(label):
            raise ValueError(f"{path}:{number}: unknown label {label!r} (expected a WordNet id such as n01532829)")
        if official and label not in allowed:
            raise ValueError(
                f"{path}:{number}: unknown label {label!r}: not one of the {len(allowed)} classes of the Ravi & "
                f"Larochelle {split} split (pass official=False to read another split)"
            )
        if os.path.isabs(file) or ".." in Path(file).parts:
            raise ValueError(f"{path}:{number}: file name {file!r} must be relative to images/")
        files.append(file)
        wnids.append(label)
    if not files:
        raise ValueError(f"{path}: no images listed")
    if official and set(wnids) != allowed:
        absent = sorted(allowed - set(wnids))
        raise ValueError(f"{path}: classes {absent} of the Ravi & Larochelle {split} split have no images")
    return files, wnids


def _image_paths(images: Path, csv_path: Path, files: list[str], wnids: list[str]) -> list[Path]:
    """The path of every listed image: ``images/<file>``, else ``images/<wnid>/<file>``."""
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: images folder not found")
    paths = []
    for file, wnid in zip(files, wnids):
        for candidate in (images / file, images / wnid / file):
            if candidate.is_file():
                paths.append(candidate)
                break
        else:
            raise FileNotFoundError(
                f"{csv_path} lists {file}, which is neither {images / file} nor {images / wnid / file}"
            )
    return paths


def read_mini_imagenet(
    directory: PathLike,
    splits: Sequence[str] = SPLITS,
    size: int = 84,
    official: bool = True,
    workers: int | None = None,
) -> FewShotBenchmark:
    """miniImageNet (Ravi & Larochelle split) from ``directory/miniImagenet`` or ``directory``.

    Reads ``<split>.csv`` (header ``filename,label``; label a WordNet id) for each of ``splits`` and decodes the
    listed images from ``images/<filename>`` (or ``images/<label>/<filename>``) to RGB, resized (bilinear) to
    ``size`` x ``size``: images (3, size, size) uint8, in the order of the CSV. Labels are the positions of the
    split's WordNet ids in sorted order; class names are the WordNet ids. Only the requested splits are decoded.

    With ``official=True`` each CSV must list exactly the classes of the Ravi & Larochelle split
    (:data:`MINI_IMAGENET_WNIDS`). Errors (a missing CSV or image, a malformed line, an unknown label, a class in
    two splits) are raised as one line naming the file.
    """
    splits = list(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names among {', '.join(SPLITS)}, got {splits}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"miniImageNet folder {root} does not exist")
    # the first of root/miniImagenet, root/mini-imagenet, root/mini-imagenet/miniImagenet, root with split files
    root = next(
        (d for d in SPECS["mini-imagenet"].candidates(root) if any((d / f"{s}.csv").is_file() for s in SPLITS)),
        root,
    )
    parts = {}
    owner: dict[str, str] = {}
    for split in splits:
        path = root / f"{split}.csv"
        files, wnids = _read_split_csv(path, split, official)
        for w in set(wnids):
            if owner.setdefault(w, split) != split:
                raise ValueError(f"{path}: class {w} is also in {owner[w]}.csv; the splits must be disjoint")
        classes = sorted(set(wnids))
        index = {w: k for k, w in enumerate(classes)}
        paths = _image_paths(root / "images", path, files, wnids)
        images = _decode_all(paths, "RGB", (size, size), f"miniImageNet {split}", workers)
        labels = torch.tensor([index[w] for w in wnids], dtype=torch.int64)
        parts[split] = FewShotSplit(torch.from_numpy(images), labels, classes)
    return FewShotBenchmark("mini-imagenet", parts)


# ----------------------------------------------------------------------------------------------------------------
# registry readers: one split as episode data
# ----------------------------------------------------------------------------------------------------------------


def _cifar_fs_episodes(directory: PathLike, split: str = "test", query_fraction: float = 0.5, seed: int = 0):
    """``load_dataset("cifar-fs")``: :func:`read_cifar_fs` ``(directory).as_episode_data(split, ...)``."""
    return read_cifar_fs(directory).as_episode_data(_check_split(split), query_fraction, seed)


def _fc100_episodes(directory: PathLike, split: str = "test", query_fraction: float = 0.5, seed: int = 0):
    """``load_dataset("fc100")``: :func:`read_fc100` ``(directory).as_episode_data(split, ...)``."""
    return read_fc100(directory).as_episode_data(_check_split(split), query_fraction, seed)


def _mini_imagenet_episodes(
    directory: PathLike, split: str = "test", query_fraction: float = 0.5, seed: int = 0, size: int = 84
):
    """``load_dataset("mini-imagenet")``: one split of :func:`read_mini_imagenet` as episode data."""
    benchmark = read_mini_imagenet(directory, splits=[_check_split(split)], size=size)
    return benchmark.as_episode_data(split, query_fraction, seed)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split
