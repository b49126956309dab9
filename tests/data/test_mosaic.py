"""Multi-label mosaics: every tile is the source image it claims, labels are the union of the tiles' classes,
the draw is deterministic and varied; multi-hot labels in ImageData; the registry entries; real Fashion-MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hscl.data import DATASETS, ImageData, load_dataset
from hscl.data.images import make_mosaics, mosaic_dataset, read_fashion_mnist_mosaic, stratified_indices

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
CORNERS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, column) of tiles 0..3


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's data or cache, nor the real system paths, nor the network."""
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSCL_DATA", raising=False)
    missing = (tmp_path / "missing").as_uri()
    for name, spec in list(DATASETS.items()):
        downloads = tuple(dataclasses.replace(d, url=f"{missing}/{d.filename}") for d in spec.downloads)
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, downloads=downloads, system_paths=()))


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_marked_idx(directory: Path, n_train=120, n_test=40) -> None:
    """Four gzipped idx files. Image i of a split carries i in pixel (0, 0) and its split in pixel (0, 1)
    (0 train, 255 test); classes cycle with a few images of class 9 only in the train split."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n, mark in (("train", n_train, 0), ("t10k", n_test, 255)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 0, 1] = mark
        labels = (np.arange(n) * 7 % (10 if prefix == "train" else 9)).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def tiles_of(mosaic: torch.Tensor) -> list[torch.Tensor]:
    """The four (C, H, W) tiles of a (C, 2H, 2W) mosaic, row-major."""
    h, w = mosaic.shape[1] // 2, mosaic.shape[2] // 2
    return [mosaic[:, r * h : (r + 1) * h, c * w : (c + 1) * w] for r, c in CORNERS]


def check_mosaics(mosaic_images, mosaic_labels, tiles, source_images, source_labels) -> None:
    """Each tile equals the source image it claims; the label row is the union of the tiles' classes."""
    for m in range(mosaic_images.shape[0]):
        for t, tile in enumerate(tiles_of(mosaic_images[m])):
            assert torch.equal(tile, source_images[int(tiles[m, t])]), (m, t)
        present = {int(source_labels[int(i)]) for i in tiles[m]}
        assert set(torch.nonzero(mosaic_labels[m]).flatten().tolist()) == present, m


# ---------------------------------------------------------------------------------------------------------------
# make_mosaics
# ---------------------------------------------------------------------------------------------------------------


def toy_split(n=200, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 6, 5), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return images, labels


def test_tiles_are_their_sources_and_labels_their_union():
    images, labels = toy_split()
    result = make_mosaics(images, labels, 10, 300, seed=3)
    assert result.images.shape == (300, 1, 12, 10) and result.images.dtype == torch.uint8
    assert result.labels.shape == (300, 10) and result.labels.dtype == torch.bool
    assert result.tiles.shape == (300, 4) and result.tiles.dtype == torch.int64
    check_mosaics(result.images, result.labels, result.tiles, images, labels)


def test_the_draw_is_deterministic_and_varied():
    images, labels = toy_split()
    first = make_mosaics(images, labels, 10, 4000, seed=(1, 0))
    again = make_mosaics(images, labels, 10, 4000, seed=(1, 0))
    assert torch.equal(first.tiles, again.tiles) and torch.equal(first.images, again.images)
    assert not torch.equal(make_mosaics(images, labels, 10, 4000, seed=(1, 1)).tiles, first.tiles)
    # 1..4 distinct classes, equally often; every class and most images are used
    sizes = Counter(first.labels.sum(1).tolist())
    assert sorted(sizes) == [1, 2, 3, 4] and all(abs(c / 4000 - 0.25) < 0.03 for c in sizes.values()), sizes
    per_class = first.labels.float().mean(0)
    assert float(per_class.min()) > 0.18 and float(per_class.max()) < 0.32  # each class in 2.5/10 of the mosaics
    assert len(set(first.tiles.flatten().tolist())) > 190
    # the number of tiles showing each present class: a class shown once when k = 4, all four tiles when k = 1
    one_class = first.labels.sum(1) == 1
    assert bool((labels[first.tiles[one_class]] == labels[first.tiles[one_class]][:, :1]).all())


def test_fewer_classes_than_tiles():
    images, labels = toy_split(n=30, classes=3)
    result = make_mosaics(images, labels, 5, 200, seed=0)  # 3 classes present of 5
    check_mosaics(result.images, result.labels, result.tiles, images, labels)
    assert set(result.labels.sum(1).tolist()) == {1, 2, 3} and not bool(result.labels[:, 3:].any())


def test_make_mosaics_checks_its_inputs():
    images, labels = toy_split()
    with pytest.raises(ValueError, match="count must be a positive int"):
        make_mosaics(images, labels, 10, 0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        make_mosaics(images, labels, 5, 3)
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        make_mosaics(images, labels.int(), 10, 3)
    with pytest.raises(TypeError, match="uint8"):
        make_mosaics(images.float(), labels, 10, 3)


# ---------------------------------------------------------------------------------------------------------------
# the dataset and the registry
# ---------------------------------------------------------------------------------------------------------------


def test_mosaic_dataset_draws_each_split_from_its_own_split(tmp_path):
    write_marked_idx(tmp_path / "fashion-mnist")
    data = load_dataset("fashion-mnist-mosaic", data_dir=tmp_path, train_size=80, test_size=30, seed=5)
    base = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.name == "fashion-mnist-mosaic" and data.multilabel and data.classes == base.classes
    assert data.train_images.shape == (80, 1, 56, 56) and data.test_images.shape == (30, 1, 56, 56)
    for images, labels, source, source_labels, mark in (
        (data.train_images, data.train_labels, base.train_images, base.train_labels, 0),
        (data.test_images, data.test_labels, base.test_images, base.test_labels, 255),
    ):
        # which source image each tile is, read off its markers
        claimed = torch.tensor([[int(t[0, 0, 0]) for t in tiles_of(m)] for m in images])
        assert all(int(t[0, 0, 1]) == mark for m in images for t in tiles_of(m))  # from its own split only
        check_mosaics(images, labels, claimed, source, source_labels)
    assert not bool(data.test_labels[:, 9].any())  # class 9 has no test images
    # the documented streams: default_rng([seed, 0]) for train, [seed, 1] for test
    expected = make_mosaics(base.test_images, base.test_labels, 10, 30, seed=[5, 1])
    assert torch.equal(expected.images, data.test_images) and torch.equal(expected.labels, data.test_labels)
    default = load_dataset("FASHION_MNIST_MOSAIC", data_dir=tmp_path)  # default sizes: those of the base splits
    assert default.train_images.shape[0] == 120 and default.test_images.shape[0] == 40


def test_mnist_mosaic_and_errors(tmp_path):
    write_marked_idx(tmp_path / "mnist")
    data = load_dataset("mnist-mosaic", data_dir=tmp_path, train_size=10, test_size=10)
    assert data.classes == [str(d) for d in range(10)] and data.size == 56
    assert DATASETS["mnist-mosaic"].size == 56 and DATASETS["fashion-mnist-mosaic"].num_classes == 10
    with pytest.raises(ValueError, match="train_size must be a positive int"):
        load_dataset("mnist-mosaic", data_dir=tmp_path, train_size=0)
    with pytest.raises(ValueError, match="already multi-label"):
        mosaic_dataset(data)


def test_derived_datasets_share_the_cache_of_their_source(tmp_path):
    write_marked_idx(tmp_path / "cache" / "fashion-mnist")  # where a fashion-mnist download goes
    data = load_dataset("fashion-mnist-mosaic", download=False, train_size=4, test_size=4)
    assert data.train_labels.shape == (4, 10)


# ---------------------------------------------------------------------------------------------------------------
# multi-hot labels in ImageData
# ---------------------------------------------------------------------------------------------------------------


def multilabel_data(n_train=60, n_test=20) -> ImageData:
    images, labels = toy_split(n=100)
    train = make_mosaics(images, labels, 10, n_train, seed=0)
    test = make_mosaics(images, labels, 10, n_test, seed=1)
    return ImageData("toy", train.images, train.labels, test.images, test.labels, [str(d) for d in range(10)])


def test_image_data_carries_multi_hot_labels():
    data = multilabel_data()
    assert data.multilabel and data.num_classes == 10 and "multilabel" in repr(data)
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(ImageData)}
    with pytest.raises(TypeError, match=r"multi-hot labels .* must have dtype torch.bool"):
        ImageData(**{**fields, "train_labels": data.train_labels.long()})
    with pytest.raises(ValueError, match="has 9 columns for 10 classes"):
        ImageData(**{**fields, "test_labels": data.test_labels[:, :9]})
    with pytest.raises(ValueError, match="both be class indices"):
        ImageData(**{**fields, "test_labels": data.test_labels.long().argmax(1)})
    with pytest.raises(ValueError, match=r"has 59 labels for 60 images"):
        ImageData(**{**fields, "train_labels": data.train_labels[:-1]})


def test_stratified_indices_use_label_sets_as_strata():
    data = multilabel_data(n_train=400)
    rows = [tuple(r) for r in data.train_labels.int().tolist()]
    strata = {key: k for k, key in enumerate(sorted(set(rows)))}
    as_ids = np.array([strata[r] for r in rows])
    assert np.array_equal(stratified_indices(data.train_labels, 100, 7), stratified_indices(as_ids, 100, 7))
    sub = data.subset(train=100, test=10, seed=7)
    assert sub.multilabel and sub.train_labels.shape == (100, 10)
    index = stratified_indices(data.train_labels, 100, (7, 0))
    assert torch.equal(sub.train_images, data.train_images[index])
    counts_all, counts_sub = Counter(rows), Counter(tuple(r) for r in sub.train_labels.int().tolist())
    for key, count in counts_sub.items():  # each label set keeps its share, up to rounding
        assert abs(count - counts_all[key] / 4) < 1


# ---------------------------------------------------------------------------------------------------------------
# the real Fashion-MNIST from the Debian package
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_mosaics():
    from hscl.data.images import read_fashion_mnist

    base = read_fashion_mnist(SYSTEM_FASHION)
    data = read_fashion_mnist_mosaic(SYSTEM_FASHION, train_size=500, test_size=200, seed=0)
    assert data.train_images.shape == (500, 1, 56, 56) and data.test_labels.shape == (200, 10)
    for images, labels, source, source_labels, stream in (
        (data.train_images, data.train_labels, base.train_images, base.train_labels, 0),
        (data.test_images, data.test_labels, base.test_images, base.test_labels, 1),
    ):
        drawn = make_mosaics(source, source_labels, 10, images.shape[0], seed=[0, stream])
        assert torch.equal(drawn.images, images) and torch.equal(drawn.labels, labels)
        check_mosaics(images, labels, drawn.tiles, source, source_labels)
    assert set(data.train_labels.sum(1).tolist()) == {1, 2, 3, 4}
