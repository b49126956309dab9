"""The images of ``benchmarks/gpu_check.py``: CIFAR-10 when it is on disk, else a synthetic CIFAR-shaped set whose
classes are learnable but not trivially (the ``data`` row checks it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpu_check_common import CLASSES, failure

#: the synthetic images: x = PATTERN * grating(class frequency and angle, random phase) + COLOUR * class colour
#: + NUISANCE * smooth random colour field + CAST * random colour cast + PIXEL * pixel noise, squashed by tanh
PATTERN, COLOUR, NUISANCE, CAST, PIXEL = 0.8, 0.6, 0.8, 0.4, 0.2
#: the data row fails when raw pixels alone classify the test images better than this (the set is trivial)
MAX_PIXEL_KNN = 95.0


def synthetic_cifar(train: int, test: int, seed: int = 0):
    """CIFAR-shaped data: uint8 ``(N, 3, 32, 32)`` images of 10 classes. A class is a sinusoidal grating (its own
    frequency, 1.5 to 6 cycles per image, and angle) and a faint colour; each image has its own phase, a jittered
    angle, a smooth random colour field, a colour cast and pixel noise stronger than the class colour. The
    grating's random phase hides the class from pixel-wise comparison (~2/3 of the test images are classified
    by kNN on raw pixels), a convolutional network sees it."""
    from hscl.data.images import ImageData

    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(CLASSES, 3, generator=generator) * 2 - 1
    freqs = torch.linspace(1.5, 6.0, CLASSES)[torch.randperm(CLASSES, generator=generator)]
    angles = torch.rand(CLASSES, generator=generator) * math.pi
    side = torch.arange(32) / 32
    yy, xx = torch.meshgrid(side, side, indexing="ij")

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % CLASSES
        labels = labels[torch.randperm(n, generator=generator)]
        images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
        for start in range(0, n, 5000):
            y = labels[start : start + 5000]
            m = y.numel()
            theta = (angles[y] + 0.15 * torch.randn(m, generator=generator))[:, None, None]
            phase = (2 * math.pi * torch.rand(m, generator=generator))[:, None, None]
            wave = torch.cos(2 * math.pi * freqs[y][:, None, None] * (xx * theta.cos() + yy * theta.sin()) + phase)
            field = F.interpolate(
                torch.randn(m, 3, 4, 4, generator=generator), size=32, mode="bilinear", align_corners=False
            )
            x = PATTERN * wave[:, None] + COLOUR * colours[y][:, :, None, None] + NUISANCE * field
            x = x + CAST * torch.randn(m, 3, 1, 1, generator=generator)
            x = x + PIXEL * torch.randn(m, 3, 32, 32, generator=generator)
            images[start : start + m] = ((torch.tanh(x) * 0.5 + 0.5) * 255).round().to(torch.uint8)
        return images, labels

    train_images, train_labels = split(train)
    test_images, test_labels = split(test)
    names = [f"class{k}" for k in range(CLASSES)]
    return ImageData("synthetic-cifar", train_images, train_labels, test_images, test_labels, names)


def load_images(sizes):
    """CIFAR-10 from disk (no download) when it is there, else the synthetic set; returns (data, description)."""
    from hscl.data.images import DatasetNotFoundError, load_dataset

    try:
        data = load_dataset("cifar10", download=False)
    except DatasetNotFoundError:
        data = synthetic_cifar(sizes.train, sizes.test)
        return (
            data,
            f"synthetic uint8 32x32x3, 10 classes, {sizes.train} train / {sizes.test} test (CIFAR-10 not on disk)",
        )
    train, test = min(sizes.train, len(data.train_labels)), min(sizes.test, len(data.test_labels))
    data = data.subset(train, test, seed=0)
    return data, f"CIFAR-10 from disk, {train} train / {test} test"


def distinct_fraction(images: torch.Tensor) -> float:
    """The fraction of distinct images among ``images`` ``(N, ...)`` uint8 (a random float64 projection of each
    image as its key: distinct images collide with probability ~0)."""
    flat = images.flatten(1).double()
    keys = flat @ torch.randn(flat.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return torch.unique(keys).numel() / images.shape[0]


def pixel_knn(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k=20):
    """Top-1 (%) of a k-nearest-neighbour vote (cosine similarity of the centred raw pixels)."""
    train_f, test_f = train_x.flatten(1).float(), test_x.flatten(1).float()
    mean = train_f.mean(0)
    train_f, test_f = F.normalize(train_f - mean, dim=1), F.normalize(test_f - mean, dim=1)
    neighbours = (test_f @ train_f.T).topk(min(k, train_f.shape[0]), dim=1).indices
    classes = int(train_y.max()) + 1
    votes = F.one_hot(train_y[neighbours], classes).sum(1)
    return 100.0 * float((votes.argmax(1) == test_y).float().mean())


def data_row(data, sizes) -> tuple[str, str, dict]:
    """The ``data`` check: the training images are distinct, and raw pixels do not already classify them
    (kNN on pixels below :data:`MAX_PIXEL_KNN`, on the kNN monitor's subsets), so a trained model has to learn."""
    distinct = distinct_fraction(data.train_images)
    n, m = min(sizes.knn_train, len(data.train_labels)), min(sizes.knn_test, len(data.test_labels))
    knn = pixel_knn(data.train_images[:n], data.train_labels[:n], data.test_images[:m], data.test_labels[:m])
    chance = 100.0 / data.num_classes
    key = f"{distinct:.1%} distinct training images, kNN on raw pixels {knn:.1f}% (chance {chance:.0f}%)"
    metrics = {"distinct_fraction": distinct, "pixel_knn_top1": knn, "chance": chance, "name": data.name}
    if distinct < 0.99:
        raise failure(f"only {distinct:.1%} of the training images are distinct", key, metrics)
    if knn > MAX_PIXEL_KNN:
        raise failure(
            f"raw pixels classify {knn:.1f}% of the test images (> {MAX_PIXEL_KNN:g}%): trivial", key, metrics
        )
    return "cpu", key, metrics
