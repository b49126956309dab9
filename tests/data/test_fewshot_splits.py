"""Few-shot benchmark splits: the official class lists, CIFAR-FS and FC100 from tiny CIFAR-100 python files,
miniImageNet from a tiny folder of CSVs + JPEGs, episode data for hscl.engine.finetune.fewshot, clear errors."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hscl.data import DATASETS, DatasetNotFoundError, load_dataset
from hscl.data.images import (
    CIFAR_FS_CLASSES,
    FC100_SUPERCLASSES,
    MINI_IMAGENET_WNIDS,
    FewShotBenchmark,
    FewShotSplit,
    read_cifar_fs,
    read_fc100,
    read_mini_imagenet,
)

# The CIFAR-100 hierarchy (the dataset's documentation): superclass -> its five fine classes, superclasses in
# the order of their coarse labels 0..19. The fine labels are the positions of the names in sorted order.
HIERARCHY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
COARSE = list(HIERARCHY)
FINE = sorted(n for names in HIERARCHY.values() for n in names)
SUPERCLASS_OF = {n: s for s, names in HIERARCHY.items() for n in names}
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's data or cache, nor the network."""
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSCL_DATA", raising=False)
    missing = (tmp_path / "missing").as_uri()
    for name, spec in list(DATASETS.items()):
        downloads = tuple(dataclasses.replace(d, url=f"{missing}/{d.filename}") for d in spec.downloads)
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, downloads=downloads, system_paths=()))


# ---------------------------------------------------------------------------------------------------------------
# Writers of tiny files in the official layouts
# ---------------------------------------------------------------------------------------------------------------


def write_cifar100(directory: Path, per_class=(2, 1), seed=0) -> dict:
    """CIFAR-100 python files with every class: ``per_class`` = (train, test) images per class, in a shuffled
    order. Returns {"train": (images (N, 3, 32, 32), fine names), "test": ...}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [c.encode() for c in COARSE]}
    (directory / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    out = {}
    for file, count in zip(("train", "test"), per_class):
        fine = rng.permutation(np.repeat(np.arange(100), count))
        images = rng.integers(0, 256, size=(len(fine), 3, 32, 32), dtype=np.uint8)
        rows = np.concatenate([images[:, c].reshape(len(fine), 1024) for c in range(3)], axis=1)
        batch = {
            b"filenames": [f"{i}.png".encode() for i in range(len(fine))],
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [COARSE.index(SUPERCLASS_OF[FINE[f]]) for f in fine],
            b"data": rows,
        }
        (directory / file).write_bytes(pickle.dumps(batch, protocol=2))
        out[file] = (images, [FINE[f] for f in fine])
    return out


def expected_split(written: dict, classes: list[str]) -> tuple[np.ndarray, list[int]]:
    """The images of ``classes`` among train-then-test images, and their labels (positions in ``classes``)."""
    images = np.concatenate([written["train"][0], written["test"][0]])
    names = written["train"][1] + written["test"][1]
    keep = [i for i, n in enumerate(names) if n in classes]
    return images[keep], [classes.index(names[i]) for i in keep]


def colour(split: int, label: int, i: int) -> tuple[int, int, int]:
    return (40 + 60 * split, 10 + 2 * label, 30 + 100 * i)


def write_mini_imagenet(root: Path, per_class=2, side=20, nested=False) -> dict:
    """Official-split CSVs + flat-colour JPEGs of ``side`` pixels (resized to 84 by the reader). Returns
    {split: [(file, wnid, colour), ...]} in CSV order (classes interleaved, not sorted)."""
    (root / "images").mkdir(parents=True)
    listing = {}
    for s, split in enumerate(SPLITS):
        wnids = list(MINI_IMAGENET_WNIDS[split])
        rows = []
        for i in range(per_class):
            for label, wnid in reversed(list(enumerate(sorted(wnids)))):
                file = f"{wnid}{i:08d}.jpg"
                folder = root / "images" / wnid if nested else root / "images"
                folder.mkdir(exist_ok=True)
                Image.new("RGB", (side, side), colour(s, label, i)).save(folder / file, quality=95)
                rows.append((file, wnid, colour(s, label, i)))
        (root / f"{split}.csv").write_text("filename,label\n" + "".join(f"{f},{w}\n" for f, w, _ in rows))
        listing[split] = rows
    return listing


# ---------------------------------------------------------------------------------------------------------------
# The official class lists
# ---------------------------------------------------------------------------------------------------------------


def test_cifar_fs_lists_are_a_64_16_20_partition_of_cifar100():
    assert [len(CIFAR_FS_CLASSES[s]) for s in SPLITS] == [64, 16, 20]
    every = [c for s in SPLITS for c in CIFAR_FS_CLASSES[s]]
    assert len(set(every)) == 100 and set(every) == set(FINE)


def test_fc100_lists_are_whole_superclasses_12_4_4():
    assert [len(FC100_SUPERCLASSES[s]) for s in SPLITS] == [12, 4, 4]
    every = [c for s in SPLITS for c in FC100_SUPERCLASSES[s]]
    assert len(set(every)) == 20 and set(every) == set(COARSE)
    # TADAM's split by coarse label: 0, 7, 12, 14 test; 8, 11, 13, 16 val; the other 12 train
    assert sorted(COARSE.index(c) for c in FC100_SUPERCLASSES["test"]) == [0, 7, 12, 14]
    assert sorted(COARSE.index(c) for c in FC100_SUPERCLASSES["val"]) == [8, 11, 13, 16]


def test_mini_imagenet_lists_are_64_16_20_distinct_wordnet_ids():
    assert [len(MINI_IMAGENET_WNIDS[s]) for s in SPLITS] == [64, 16, 20]
    every = [w for s in SPLITS for w in MINI_IMAGENET_WNIDS[s]]
    assert len(set(every)) == 100 and all(re.fullmatch(r"n\d{8}", w) for w in every)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100
# ---------------------------------------------------------------------------------------------------------------


def test_cifar_fs_pools_train_and_test_images_per_class(tmp_path):
    written = write_cifar100(tmp_path / "cifar-100-python")
    benchmark = read_cifar_fs(tmp_path)  # finds the cifar-100-python folder
    assert isinstance(benchmark, FewShotBenchmark) and benchmark.name == "cifar-fs"
    for split in SPLITS:
        part = benchmark[split]
        classes = sorted(CIFAR_FS_CLASSES[split])  # CIFAR-100 label order is alphabetical
        assert part.classes == classes
        images, labels = expected_split(written, classes)
        assert part.images.shape == (3 * len(classes), 3, 32, 32)  # 2 train + 1 test image per class
        assert torch.equal(part.images, torch.from_numpy(images))
        assert part.labels.dtype == torch.int64 and part.labels.tolist() == labels
        assert torch.bincount(part.labels).tolist() == [3] * len(classes)


def test_fc100_splits_are_whole_superclasses(tmp_path):
    written = write_cifar100(tmp_path / "cifar-100-python", seed=1)
    benchmark = read_fc100(tmp_path / "cifar-100-python")
    sizes = {split: benchmark[split].num_classes for split in SPLITS}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    for split in SPLITS:
        part = benchmark[split]
        expected = sorted(n for s in FC100_SUPERCLASSES[split] for n in HIERARCHY[s])
        assert part.classes == expected
        images, labels = expected_split(written, expected)
        assert torch.equal(part.images, torch.from_numpy(images)) and part.labels.tolist() == labels
    for superclass, members in HIERARCHY.items():  # each superclass lies whole in exactly one split
        holders = [s for s in SPLITS if set(members) & set(benchmark[s].classes)]
        assert len(holders) == 1 and set(members) <= set(benchmark[holders[0]].classes), superclass


def test_cifar_errors_name_the_file(tmp_path):
    root = tmp_path / "cifar-100-python"
    write_cifar100(root)
    meta = pickle.loads((root / "meta").read_bytes())
    meta[b"fine_label_names"][FINE.index("whale")] = b"orca"
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(ValueError, match=r"meta: CIFAR-FS classes \['whale'\] are not among"):
        read_cifar_fs(root)

    write_cifar100(root)
    train = pickle.loads((root / "train").read_bytes())
    del train[b"coarse_labels"]
    (root / "train").write_bytes(pickle.dumps(train, protocol=2))
    with pytest.raises(ValueError, match=r"train: missing key b'coarse_labels'"):
        read_fc100(root)

    write_cifar100(root)
    test = pickle.loads((root / "test").read_bytes())
    test[b"coarse_labels"][0] = (test[b"coarse_labels"][0] + 1) % 20
    (root / "test").write_bytes(pickle.dumps(test, protocol=2))
    with pytest.raises(ValueError, match="carry the coarse labels"):
        read_fc100(root)
    with pytest.raises(FileNotFoundError, match="cifar100 not found"):
        read_cifar_fs(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------------
# Episode data
# ---------------------------------------------------------------------------------------------------------------


def marked_split(n_classes=4, per_class=10) -> FewShotSplit:
    """A split whose image i carries i in its first pixel."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(labels), dtype=torch.uint8)
    return FewShotSplit(images, labels, [f"c{k}" for k in range(n_classes)])


def test_episode_data_partitions_each_class_into_support_and_query_pools():
    part = marked_split()
    benchmark = FewShotBenchmark("toy", {"test": part})
    data = benchmark.as_episode_data("test")
    assert data.name == "toy:test" and data.classes == part.classes and not data.multilabel
    support = data.train_images[:, 0, 0, 0].tolist()
    query = data.test_images[:, 0, 0, 0].tolist()
    assert not set(support) & set(query) and sorted(support + query) == list(range(40))
    assert torch.equal(data.train_labels, part.labels[support]) and torch.equal(data.test_labels, part.labels[query])
    assert torch.bincount(data.test_labels).tolist() == [5] * 4  # half of each class
    again = benchmark.as_episode_data("test")
    assert torch.equal(again.train_images, data.train_images)
    other = benchmark.as_episode_data("test", query_fraction=0.3, seed=1)
    assert other.name == "toy:test:q0.3:seed1" and torch.bincount(other.test_labels).tolist() == [3] * 4
    with pytest.raises(KeyError, match="no split 'val' loaded"):
        benchmark.as_episode_data("val")
    with pytest.raises(ValueError, match="query_fraction"):
        benchmark.as_episode_data("test", query_fraction=1.0)
    with pytest.raises(ValueError, match=r"leaves class 'c\d' without query images"):
        FewShotBenchmark("toy", {"test": marked_split(per_class=1)}).as_episode_data("test")
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        FewShotSplit(part.images, part.labels + 1, part.classes)


def test_benchmark_rejects_a_class_in_two_splits():
    part = marked_split()
    with pytest.raises(ValueError, match="'c0' is in both the train and the test split"):
        FewShotBenchmark("toy", {"train": part, "test": part})
    with pytest.raises(ValueError, match="unknown splits"):
        FewShotBenchmark("toy", {"novel": part})


def test_few_shot_draws_episodes_from_the_test_classes(tmp_path):
    from hscl.engine.finetune.config import FinetuneConfig
    from hscl.engine.finetune.fewshot import FewShotConfig, few_shot
    from hscl.models import build_model

    write_cifar100(tmp_path / "cifar-100-python", per_class=(4, 2))
    data = load_dataset("cifar-fs", data_dir=tmp_path)  # the test split as episode data
    assert data.name == "cifar-fs:test" and data.classes == sorted(CIFAR_FS_CLASSES["test"])
    assert data.train_images.shape == (60, 3, 32, 32) and data.test_images.shape == (60, 3, 32, 32)
    torch.manual_seed(0)
    model = build_model("convnet", 3, widths=(4, 8, 8, 8), hidden_dim=16, projection_dim=8)
    fewshot = FewShotConfig(ways=5, shots=[1], queries=2, episodes=2, steps=1)
    config = {"ce": FinetuneConfig(objective="ce", bn="frozen", embedding="projection")}
    rows = few_shot(model, data, range(data.num_classes), config, fewshot, progress=False, device="cpu")[1]
    assert len(rows) == 2
    for row in rows:
        assert len(set(row["classes"])) == 5
        assert {data.classes[c] for c in row["classes"]} <= set(CIFAR_FS_CLASSES["test"])
        assert 0 <= row["accuracy"]["ce"] <= 100


def test_registry_entries_share_the_cifar100_files(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "cache" / "cifar100" / "cifar-100-python")  # where a cifar100 download goes
    fc100 = load_dataset("FC100", split="val", download=False)
    assert fc100.name == "fc100:val" and fc100.num_classes == 20
    assert fc100.classes == sorted(n for s in FC100_SUPERCLASSES["val"] for n in HIERARCHY[s])
    train = load_dataset("cifar-fs", split="train", download=False)
    assert train.num_classes == 64 and train.train_images.shape[0] + train.test_images.shape[0] == 64 * 3
    # a data root holding <root>/cifar100/cifar-100-python serves the derived datasets too
    write_cifar100(tmp_path / "data" / "cifar100" / "cifar-100-python")
    monkeypatch.setenv("HSCL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "empty-cache"))
    assert load_dataset("cifar-fs", download=False).num_classes == 20
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        load_dataset("cifar-fs", split="novel", download=False)
    for name in ("cifar-fs", "fc100", "mini-imagenet"):
        spec = DATASETS[name]
        assert spec.num_classes == 20 and spec.channels == 3


# ---------------------------------------------------------------------------------------------------------------
# miniImageNet
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_mini_imagenet_reads_csv_order_labels_and_pixels(tmp_path, nested):
    listing = write_mini_imagenet(tmp_path / "miniImagenet", nested=nested)
    benchmark = read_mini_imagenet(tmp_path)
    for split in SPLITS:
        part, rows = benchmark[split], listing[split]
        assert part.classes == sorted(MINI_IMAGENET_WNIDS[split])
        assert part.images.shape == (len(rows), 3, 84, 84) and part.images.dtype == torch.uint8
        assert part.labels.tolist() == [part.classes.index(w) for _, w, _ in rows]
        expected = torch.tensor([c for _, _, c in rows], dtype=torch.int16)[:, :, None, None]
        assert int((part.images.to(torch.int16) - expected).abs().max()) <= 3  # flat colours survive JPEG


def test_mini_imagenet_decodes_only_the_splits_asked_for(tmp_path):
    write_mini_imagenet(tmp_path, per_class=2)
    (tmp_path / "images" / f"{MINI_IMAGENET_WNIDS['train'][0]}00000000.jpg").write_bytes(b"not a jpeg")
    benchmark = read_mini_imagenet(tmp_path, splits=["test"], size=32)
    assert list(benchmark.splits) == ["test"] and benchmark["test"].images.shape == (40, 3, 32, 32)
    with pytest.raises(ValueError, match=r"00000000\.jpg: cannot decode image"):
        read_mini_imagenet(tmp_path, splits=["train"])
    data = load_dataset("mini-imagenet", data_dir=tmp_path, query_fraction=0.5)
    assert data.name == "mini-imagenet:test" and data.size == 84 and data.num_classes == 20


def test_mini_imagenet_errors_name_the_file(tmp_path):
    root = tmp_path / "mini"
    write_mini_imagenet(root, per_class=1)
    test_csv = root / "test.csv"
    good = test_csv.read_text()

    (root / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.csv: split file not found"):
        read_mini_imagenet(root)
    assert read_mini_imagenet(root, splits=["test"])["test"].num_classes == 20

    test_csv.write_text(good + "extra.jpg,n99999999\n")
    with pytest.raises(ValueError, match=r"test\.csv:22: unknown label 'n99999999': not one of the 20 classes"):
        read_mini_imagenet(root, splits=["test"])
    test_csv.write_text(good + "extra.jpg,dog\n")
    with pytest.raises(ValueError, match=r"test\.csv:22: unknown label 'dog' \(expected a WordNet id"):
        read_mini_imagenet(root, splits=["test"])
    test_csv.write_text(good.replace("filename,label", "image,class"))
    with pytest.raises(ValueError, match=r"test\.csv:1: expected the header 'filename,label'"):
        read_mini_imagenet(root, splits=["test"])
    missing = f"{MINI_IMAGENET_WNIDS['test'][3]}00000000.jpg"
    (root / "images" / missing).unlink()
    test_csv.write_text(good)
    with pytest.raises(FileNotFoundError, match=rf"test\.csv lists {missing}, which is neither"):
        read_mini_imagenet(root, splits=["test"])
    test_csv.write_text("".join(line + "\n" for line in good.splitlines() if missing[:9] not in line))
    with pytest.raises(ValueError, match=rf"test\.csv: classes \['{missing[:9]}'\] of the Ravi & Larochelle"):
        read_mini_imagenet(root, splits=["test"])


def test_mini_imagenet_custom_split_and_disjointness(tmp_path):
    (tmp_path / "images").mkdir()
    for split, wnids in (("train", ["n00000001", "n00000002"]), ("test", ["n00000003", "n00000002"])):
        for w in wnids:
            Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "images" / f"{split}{w}.jpg")
        rows = "".join(f"{split}{w}.jpg,{w}\n" for w in wnids)
        (tmp_path / f"{split}.csv").write_text("filename,label\n" + rows)
    with pytest.raises(ValueError, match=r"train\.csv:2: unknown label 'n00000001'"):
        read_mini_imagenet(tmp_path, splits=["train"])
    assert read_mini_imagenet(tmp_path, splits=["train"], official=False)["train"].classes == [
        "n00000001",
        "n00000002",
    ]
    with pytest.raises(ValueError, match=r"test\.csv: class n00000002 is also in train\.csv"):
        read_mini_imagenet(tmp_path, splits=["train", "test"], official=False)


def test_mini_imagenet_not_found_says_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mini-imagenet", data_dir=tmp_path)
    message = str(info.value)
    assert "missing train.csv" in message and "no download source" in message
    assert "Ravi & Larochelle's split files" in message
