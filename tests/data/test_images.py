"""Dataset layer: readers on tiny files in each official format, resolution order, checked downloads from
file:// URLs, safe extraction, stratified subsets, and (when installed) the real Fashion-MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hscl.data import DATASETS, DatasetNotFoundError, ImageData, load_dataset
from hscl.data import images as im
from hscl.data.images import image_files
from hscl.data.images.specs import SPECS

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's data or cache, nor the real system paths, nor the network."""
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSCL_DATA", raising=False)
    missing = (tmp_path / "missing").as_uri()
    for name, spec in list(DATASETS.items()):
        downloads = tuple(dataclasses.replace(d, url=f"{missing}/{d.filename}") for d in spec.downloads)
        no_system = tuple(str(tmp_path / "no-system" / name) for _ in spec.system_paths)
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, downloads=downloads, system_paths=no_system))


# ---------------------------------------------------------------------------------------------------------------
# Writers of tiny files in the official formats
# ---------------------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(directory: Path, n_train=6, n_test=4, gz=False, marker=0, seed=0) -> dict:
    """Four idx files; image i of each split has value (i * 7 + marker) % 256 at pixel (3, 5)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 3, 5] = (np.arange(n) * 7 + marker) % 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)
        out[prefix] = (images, labels)
    return out


def cifar_pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) rows and the (N, 3, 32, 32) images they encode (planes R, G, B, each row-major)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    rows = np.concatenate([images[:, c].reshape(n, 1024) for c in range(3)], axis=1)
    return rows, images


def write_cifar10(directory: Path, per_batch=3, n_test=4) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    cifar_pickle(directory / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    train = []
    for b in range(1, 6):
        rows, images = cifar_rows(per_batch, seed=b)
        labels = [(b + i) % 10 for i in range(per_batch)]
        cifar_pickle(directory / f"data_batch_{b}", {b"batch_label": b"x", b"data": rows, b"labels": labels})
        train.append((images, labels))
    rows, _ = cifar_rows(n_test, seed=9)
    cifar_pickle(directory / "test_batch", {b"data": rows, b"labels": list(range(n_test))})
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])


def write_stl10(directory: Path, n_train=3, n_test=2, n_unlabeled=0) -> dict:
    """STL-10 binaries: images stored column-major, i.e. the file holds image.transpose(0, 1, 3, 2)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        if split == "unlabeled" and not n:
            continue
        images = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        (directory / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10 on disk
            (directory / f"{split}_y.bin").write_bytes(labels.tobytes())
        out[split] = images
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (directory / "class_names.txt").write_text("\n".join(names) + "\n")
    return out


def write_tiny_imagenet(root: Path) -> dict:
    """Two classes, three train images each (one greyscale), three val images; flat colours for JPEG checks."""
    wnids = ["n02", "n01"]  # not sorted on purpose: labels follow the sorted order
    (root / "train").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\n")
    colours = {"n01": (200, 30, 30), "n02": (20, 40, 220)}
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(3):
            image = Image.new("RGB", (64, 64), colours[wnid])
            if i == 2:
                image = image.convert("L")
            image.save(folder / f"{wnid}_{i}.JPEG", quality=95)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n01", "n02", "n01"]):
        Image.new("RGB", (64, 64), colours[wnid]).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return colours


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tar_gz(directory: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    return archive


# ---------------------------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gz(tmp_path, gz):
    written = write_idx_set(tmp_path / "m", gz=gz)
    data = im.read_mnist(tmp_path / "m")
    assert data.name == "mnist"
    assert data.train_images.shape == (6, 1, 28, 28) and data.test_images.shape == (4, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(written["train"][0]))
    assert torch.equal(data.test_labels, torch.from_numpy(written["t10k"][1]).long())
    assert data.classes == [str(d) for d in range(10)]
    assert (data.channels, data.size, data.num_classes) == (1, 28, 10)


def test_fashion_mnist_classes_and_dotted_names(tmp_path):
    write_idx_set(tmp_path / "f", gz=True)
    for f in (tmp_path / "f").iterdir():  # the original MNIST site's spelling: train-images.idx3-ubyte
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    data = im.read_fashion_mnist(tmp_path / "f")
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10
    assert data.train_images.shape == (6, 1, 28, 28)


def test_read_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {
        "magic": (b"\x00\x01" + good[2:], "bad idx magic"),
        "dtype": (b"\x00\x00\x07" + good[3:], "bad idx magic"),
        "truncated": (good[:-1], "truncated idx data"),
        "header": (good[:9], "truncated idx header"),
        "trailing": (good + b"\x00", "trailing bytes"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            im.read_idx(tmp_path / name)
    (tmp_path / "gz").write_bytes(gzip.compress(good))
    assert im.read_idx(tmp_path / "gz").shape == (2, 3, 3)


def test_idx_count_mismatch(tmp_path):
    write_idx_set(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="has 4 images but t10k-labels-idx1-ubyte has 3 labels"):
        im.read_mnist(tmp_path / "m")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------------------


def test_cifar10_planes_and_batches(tmp_path):
    images, labels = write_cifar10(tmp_path / "cifar-10-batches-py")
    data = im.read_cifar10(tmp_path)  # the parent folder works as well as the folder itself
    assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert data.train_labels.tolist() == labels.tolist()
    assert data.classes[:2] == ["airplane", "automobile"] and data.num_classes == 10
    # One explicit pixel: row byte 1024 + 32 * y + x is the green value at (y, x).
    rows, _ = cifar_rows(3, seed=1)
    assert int(data.train_images[0, 1, 4, 7]) == int(rows[0, 1024 + 32 * 4 + 7])
    assert int(data.train_images[2, 2, 31, 0]) == int(rows[2, 2048 + 32 * 31])


def test_cifar100_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    fine = [f"class{i:02d}".encode() for i in range(100)]
    cifar_pickle(root / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    rows, images = cifar_rows(5, seed=3)
    cifar_pickle(root / "train", {b"data": rows, b"fine_labels": [99, 0, 42, 7, 7], b"coarse_labels": [1] * 5})
    rows_t, _ = cifar_rows(2, seed=4)
    cifar_pickle(root / "test", {b"data": rows_t, b"fine_labels": [3, 4], b"coarse_labels": [0, 0]})
    data = im.read_cifar100(root)
    assert data.num_classes == 100 and data.classes[42] == "class42"
    assert data.train_labels.tolist() == [99, 0, 42, 7, 7]
    assert torch.equal(data.train_images, torch.from_numpy(images))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match="refusing to load"):
        im.read_cifar10(tmp_path / "c")


# ---------------------------------------------------------------------------------------------------------------
# STL-10
# ---------------------------------------------------------------------------------------------------------------


def test_stl10_column_major_pixel(tmp_path):
    root = tmp_path / "stl10_binary"
    written = write_stl10(root)
    # Overwrite image 1 of the train file with a single bright pixel at (c, y, x) = (2, 10, 70):
    # column-major means byte offset c * 96 * 96 + x * 96 + y within the image.
    c, y, x = 2, 10, 70
    raw = bytearray((root / "train_X.bin").read_bytes())
    start = 1 * 3 * 96 * 96
    raw[start : start + 3 * 96 * 96] = bytes(3 * 96 * 96)
    raw[start + c * 96 * 96 + x * 96 + y] = 255
    (root / "train_X.bin").write_bytes(bytes(raw))

    data = im.read_stl10(tmp_path)
    assert data.train_images.shape == (3, 3, 96, 96) and data.test_images.shape == (2, 3, 96, 96)
    assert data.train_images.is_contiguous()
    assert data.train_images[1].sum().item() == 255 and data.train_images[1, c, y, x].item() == 255
    assert torch.equal(data.train_images[0], torch.from_numpy(written["train"][0]))
    assert data.train_labels.tolist() == [0, 1, 2]  # 1..3 on disk
    assert data.classes[2] == "car" and data.unlabeled_images is None


def test_stl10_unlabeled_memmap_only_when_asked(tmp_path):
    root = tmp_path / "stl10_binary"
    written = write_stl10(root, n_unlabeled=4)
    data = load_dataset("stl10", data_dir=tmp_path, unlabeled=True)
    assert data.unlabeled_images.shape == (4, 3, 96, 96) and data.unlabeled_images.dtype == torch.uint8
    assert torch.equal(data.unlabeled_images[[3, 1]], torch.from_numpy(written["unlabeled"][[3, 1]]))
    assert load_dataset("stl10", data_dir=tmp_path).unlabeled_images is None
    (root / "unlabeled_X.bin").unlink()
    assert load_dataset("stl10", data_dir=tmp_path).train_images.shape[0] == 3
    with pytest.raises(DatasetNotFoundError, match=r"unlabeled_X\.bin"):
        load_dataset("stl10", data_dir=tmp_path, download=False, unlabeled=True)


def test_stl10_bad_labels(tmp_path):
    root = tmp_path / "s"
    write_stl10(root)
    (root / "test_y.bin").write_bytes(bytes([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.10"):
        im.read_stl10(root)


# ---------------------------------------------------------------------------------------------------------------
# TinyImageNet
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_imagenet_tree_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    colours = write_tiny_imagenet(root)
    cache = tmp_path / "tcache"
    data = im.read_tiny_imagenet(tmp_path, cache_dir=cache)
    assert data.train_images.shape == (6, 3, 64, 64) and data.test_images.shape == (3, 3, 64, 64)
    assert data.classes == ["goldfish", "European fire salamander"]  # sorted wnids n01, n02
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [0, 1, 0]
    mean = data.train_images.float().mean(dim=(2, 3))
    assert torch.allclose(mean[0], torch.tensor(colours["n01"], dtype=torch.float), atol=4)
    assert torch.allclose(mean[3], torch.tensor(colours["n02"], dtype=torch.float), atol=4)
    grey = data.train_images[2].float()  # the greyscale JPEG: three equal channels
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert (cache / "tiny-imagenet-200.npz").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    decode_all = image_files._decode_all
    monkeypatch.setattr(image_files, "_decode_all", no_decoding)
    again = im.read_tiny_imagenet(root, cache_dir=cache)
    assert torch.equal(again.train_images, data.train_images) and again.classes == data.classes
    monkeypatch.setattr(image_files, "_decode_all", decode_all)
    # Another file invalidates the cache.
    Image.new("RGB", (64, 64), colours["n02"]).save(root / "train" / "n02" / "images" / "n02_9.JPEG")
    assert im.read_tiny_imagenet(root, cache_dir=cache).train_images.shape[0] == 7


def test_tiny_imagenet_bad_annotation(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="bad line"):
        im.read_tiny_imagenet(root, cache=False)


# ---------------------------------------------------------------------------------------------------------------
# digits, image folders
# ---------------------------------------------------------------------------------------------------------------


def test_digits():
    data = load_dataset("digits")
    assert data.train_images.shape == (1198, 1, 8, 8) and data.test_images.shape == (599, 1, 8, 8)
    assert int(data.train_images.max()) == 255 and data.train_images.dtype == torch.uint8
    test, total = torch.bincount(data.test_labels), torch.bincount(torch.cat([data.train_labels, data.test_labels]))
    assert ((test - total / 3).abs() < 1).all()  # 1/3 of each class
    assert torch.equal(load_dataset("digits").test_labels, data.test_labels)  # fixed split


def write_pngs(folder: Path, n: int, value: int, mode="RGB", size=(6, 5)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        array = np.full(shape, value, dtype=np.uint8)
        array[0, 0] = i
        Image.fromarray(array, mode=mode).save(folder / f"img{i}.png")
        arrays.append(array)
    return arrays


def test_image_folder_train_test_layout(tmp_path):
    cats = write_pngs(tmp_path / "train" / "cat", 2, 100)
    write_pngs(tmp_path / "train" / "ant", 1, 50)
    write_pngs(tmp_path / "test" / "cat", 1, 101)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ["ant", "cat"] and data.name == f"folder:{tmp_path}"
    assert data.train_images.shape == (3, 3, 5, 6) and data.test_images.shape == (1, 3, 5, 6)
    assert data.train_labels.tolist() == [0, 1, 1] and data.test_labels.tolist() == [1]
    assert torch.equal(data.train_images[1], torch.from_numpy(cats[0]).permute(2, 0, 1))  # PNG is exact
    resized = im.read_image_folder(tmp_path, size=4, channels=1)
    assert resized.train_images.shape == (3, 1, 4, 4)


def test_image_folder_split_and_grey(tmp_path):
    write_pngs(tmp_path / "b", 10, 30, mode="L")
    write_pngs(tmp_path / "a", 5, 60, mode="L")
    data = im.read_image_folder(tmp_path)
    assert data.channels == 1 and data.classes == ["a", "b"]
    assert data.test_images.shape[0] == 3 and data.train_images.shape[0] == 12
    assert torch.bincount(data.test_labels).tolist() == [1, 2]
    assert im.read_image_folder(tmp_path, channels=3).channels == 3
    write_pngs(tmp_path / "c", 1, 90, mode="L", size=(7, 7))
    with pytest.raises(ValueError, match="different sizes"):
        im.read_image_folder(tmp_path)
    assert im.read_image_folder(tmp_path, size=8).train_images.shape[1:] == (1, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------------


def test_resolution_order(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "arg", marker=1)
    write_idx_set(tmp_path / "env" / "mnist", marker=2)  # <root>/<name> is accepted
    write_idx_set(tmp_path / "cache" / "mnist", marker=3, gz=True)
    monkeypatch.setenv("HSCL_DATA", str(tmp_path / "env"))

    def marker(data: ImageData) -> int:
        return int(data.train_images[0, 0, 3, 5])

    assert marker(load_dataset("mnist", data_dir=tmp_path / "arg")) == 1
    assert marker(load_dataset("mnist")) == 2
    monkeypatch.setenv("HSCL_DATA", str(tmp_path / "nowhere"))
    assert marker(load_dataset("mnist", data_dir=tmp_path / "empty", download=False)) == 3


def test_dataset_folder_name_in_root(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    monkeypatch.setenv("HSCL_DATA", os.pathsep.join([str(tmp_path / "x"), str(tmp_path / "data")]))
    assert load_dataset("CIFAR-10").train_images.shape == (15, 3, 32, 32)


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "arg")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for expected in [
        f"data_dir argument {tmp_path / 'arg'}: does not exist",
        f"$HSCL_DATA {tmp_path / 'env'}: ",
        "missing train-images-idx3-ubyte",
        f"system path {tmp_path / 'no-system' / 'fashion-mnist'}: does not exist",
        f"cache {tmp_path / 'cache' / 'fashion-mnist'}",
        "download failed: URLError",
        "--data-dir",
        "HSCL_DATA",
        "apt-get install dataset-fashion-mnist",
        "train-images-idx3-ubyte.gz (md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d)",
    ]:
        assert expected in message, (expected, message)
    assert len(info.value.tried) == 5
    with pytest.raises(DatasetNotFoundError, match=r"disabled \(download=False\)"):
        load_dataset("cifar100", download=False)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"valid names: .*cifar10.*tiny-imagenet.*folder:<path>"):
        load_dataset("imagenet")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("folder:/nonexistent/hscl-folder")


def test_registry_is_consistent():
    assert set(DATASETS) == {
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "stl10",
        "tiny-imagenet",
        "digits",
        "fashion-mnist-mosaic",
        "mnist-mosaic",
        "cifar-fs",
        "fc100",
        "mini-imagenet",
    }
    for name, spec in DATASETS.items():
        assert spec.name == name and callable(spec.reader)
        assert spec.channels in (1, 3) and spec.size > 0 and spec.num_classes >= 10
        assert all(len(d.md5) == 32 for d in spec.downloads)
        # files to look for come with a download, or (mini-imagenet: none exists) with a hint on providing them
        assert bool(spec.files) == bool(spec.downloads) or bool(spec.files and spec.hint)
        assert not spec.source or DATASETS[spec.source].downloads == spec.downloads


def test_registry_pairs_each_spec_with_its_reader():
    # the specs the readers consult (no readers: the spec module imports nothing else of hscl.data) and the
    # registry's entries are the same facts; only the registry knows the reader (isolated_env moved the
    # registry's downloads and system paths: those are compared by file name and count)
    assert set(SPECS) == set(DATASETS)
    for name, spec in SPECS.items():
        entry = DATASETS[name]
        assert spec.reader is None and callable(entry.reader)
        moved = {"reader": None, "downloads": spec.downloads, "system_paths": spec.system_paths}
        assert dataclasses.replace(entry, **moved) == spec
        assert [(d.filename, d.md5) for d in entry.downloads] == [(d.filename, d.md5) for d in spec.downloads]
        assert len(entry.system_paths) == len(spec.system_paths)
    assert DATASETS["cifar10"].reader is im.read_cifar10 and DATASETS["fashion-mnist-mosaic"].reader is (
        im.read_fashion_mnist_mosaic
    )


def test_data_roots_in_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_DATA", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    spec = SPECS["fashion-mnist"]
    assert spec.roots(tmp_path / "arg") == [
        ("data_dir argument", tmp_path / "arg", "not given"),
        ("$HSCL_DATA", tmp_path / "a", ""),
        ("$HSCL_DATA", tmp_path / "b", ""),
        ("system path", Path("/usr/share/datasets/fashion-mnist"), ""),
        ("cache", tmp_path / "cache" / "fashion-mnist", ""),
    ]
    monkeypatch.delenv("HSCL_DATA")
    # a derived dataset searches, and downloads into, the cache dir of the dataset whose files it reads
    assert SPECS["cifar-fs"].roots(None) == [
        ("data_dir argument", None, "not given"),
        ("$HSCL_DATA", None, "not set"),
        ("cache", tmp_path / "cache" / "cifar100", ""),
    ]
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found in .*missing data_batch_1"):
        SPECS["cifar10"].locate(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Downloads and archives
# ---------------------------------------------------------------------------------------------------------------


def test_download_cifar10_from_file_url(tmp_path, monkeypatch):
    images, _ = write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tar_gz(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    spec = DATASETS["cifar10"]
    download = dataclasses.replace(spec.downloads[0], url=archive.as_uri(), md5=md5_of(archive))
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(spec, downloads=(download,)))
    data = load_dataset("cifar10")
    assert torch.equal(data.train_images, torch.from_numpy(images))
    cache = tmp_path / "cache" / "cifar10"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no temp left
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    assert load_dataset("cifar10").train_images.shape[0] == 15  # now from the cache


def test_download_idx_and_zip(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "src", gz=True)
    spec = DATASETS["mnist"]
    downloads = tuple(
        dataclasses.replace(d, url=(tmp_path / "src" / d.filename).as_uri(), md5=md5_of(tmp_path / "src" / d.filename))
        for d in spec.downloads
    )
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, downloads=downloads))
    assert load_dataset("mnist").train_images.shape == (6, 1, 28, 28)
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()

    write_tiny_imagenet(tmp_path / "tsrc" / "tiny-imagenet-200")
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "tsrc").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "tsrc").as_posix())
    spec = DATASETS["tiny-imagenet"]
    download = dataclasses.replace(spec.downloads[0], url=archive.as_uri(), md5=md5_of(archive))
    monkeypatch.setitem(DATASETS, "tiny-imagenet", dataclasses.replace(spec, downloads=(download,)))
    data = load_dataset("tiny-imagenet")
    assert data.train_images.shape == (6, 3, 64, 64) and data.num_classes == 2
    assert (tmp_path / "cache" / "tiny-imagenet" / "tiny-imagenet-200.npz").is_file()


def test_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "file.bin"
    source.write_bytes(b"payload" * 1000)
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(im.ChecksumError, match="does not match"):
        im.download_file(source.as_uri(), target, md5="0" * 32)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    assert im.download_file(source.as_uri(), target, md5=md5_of(source)).read_bytes() == source.read_bytes()

    archive = tar_gz(write_and_return(tmp_path / "s" / "cifar-10-batches-py"), tmp_path / "c.tar.gz")
    spec = DATASETS["cifar10"]
    download = dataclasses.replace(spec.downloads[0], url=archive.as_uri(), md5="f" * 32)
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(spec, downloads=(download,)))
    with pytest.raises(DatasetNotFoundError, match="download failed: ChecksumError"):
        load_dataset("cifar10")
    assert list((tmp_path / "cache" / "cifar10").iterdir()) == []


def write_and_return(directory: Path) -> Path:
    write_cifar10(directory)
    return directory


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("name", "kind", "link", "message"),
    [
        ("../evil.txt", tarfile.REGTYPE, "", "escapes"),
        ("/tmp/hscl-evil.txt", tarfile.REGTYPE, "", "absolute"),
        ("data/link", tarfile.SYMTYPE, "/etc/passwd", "link"),
        ("data/hard", tarfile.LNKTYPE, "data/ok.txt", "link"),
        ("data/fifo", tarfile.FIFOTYPE, "", "special file"),
    ],
)
def test_unsafe_tar_rejected(tmp_path, name, kind, link, message):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_member(tar, "data/ok.txt")
        add_tar_member(tar, name, kind=kind, link=link)
    target = tmp_path / "target"
    with pytest.raises(im.UnsafeArchiveError, match=message):
        im.extract_archive(archive, target)
    assert list(target.iterdir()) == []  # nothing half-extracted, temp folder removed
    assert not (tmp_path / "evil.txt").exists()


def test_unsafe_zip_rejected(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "a")
        zf.writestr("ok/../../evil.txt", "evil")
    with pytest.raises(im.UnsafeArchiveError, match="escapes"):
        im.extract_archive(archive, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "target").iterdir()) == []
    link = zipfile.ZipInfo("ok/link")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(im.UnsafeArchiveError, match="link"):
        im.extract_archive(archive, tmp_path / "target")


# ---------------------------------------------------------------------------------------------------------------
# ImageData
# ---------------------------------------------------------------------------------------------------------------


def make_data(train_counts=(50, 30, 20), test_counts=(10, 6, 4)) -> ImageData:
    def split(counts):
        labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
        images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
        return images, labels

    return ImageData("toy", *split(train_counts), *split(test_counts), classes=["a", "b", "c"])


def test_subset_is_stratified_and_deterministic():
    data = make_data()
    sub = data.subset(train=10, test=5, seed=1)
    assert torch.bincount(sub.train_labels).tolist() == [5, 3, 2]
    assert torch.bincount(sub.test_labels).tolist() == [3, 1, 1]  # 2.5, 1.5, 1.0: ties -> larger class
    # Images keep their labels and their original order.
    index = sub.train_images[:, 0, 0, 0].long()
    assert torch.equal(data.train_labels[index], sub.train_labels) and bool((index.diff() > 0).all())
    again = data.subset(train=10, test=5, seed=1)
    assert torch.equal(again.train_images, sub.train_images) and torch.equal(again.test_images, sub.test_images)
    other = data.subset(train=10, seed=2)
    assert not torch.equal(other.train_images, sub.train_images)
    assert other.test_images.shape[0] == 20  # None keeps the split whole
    with pytest.raises(ValueError, match="cannot take 101"):
        data.subset(train=101)


def test_image_data_validation():
    data = make_data()
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(ImageData)}
    with pytest.raises(TypeError, match="uint8"):
        ImageData(**{**fields, "train_images": data.train_images.float()})
    with pytest.raises(TypeError, match="int64"):
        ImageData(**{**fields, "test_labels": data.test_labels.int()})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageData(**{**fields, "train_images": data.train_images[:, 0]})
    with pytest.raises(ValueError, match="labels for"):
        ImageData(**{**fields, "train_labels": data.train_labels[:-1]})
    with pytest.raises(ValueError, match="differ"):
        ImageData(**{**fields, "test_images": data.test_images.expand(-1, 3, -1, -1).clone()})
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ImageData(**{**fields, "classes": ["a", "b"]})
    assert "train=100" in repr(data)


# ---------------------------------------------------------------------------------------------------------------
# The real Fashion-MNIST from the Debian package
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_system_package(monkeypatch):
    spec = DATASETS["fashion-mnist"]
    monkeypatch.setitem(DATASETS, "fashion-mnist", dataclasses.replace(spec, system_paths=(str(SYSTEM_FASHION),)))
    data = load_dataset("fashion-mnist", download=False)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes[0] == "T-shirt/top" and int(data.train_images.max()) == 255
