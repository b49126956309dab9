"""Data layer: image datasets in their official on-disk formats (MNIST, Fashion-MNIST, CIFAR-10/100, STL-10,
TinyImageNet, scikit-learn digits, image folders), resolved from local folders, system packages, a cache, or
a checked download; multi-label mosaics and the few-shot benchmarks' splits (CIFAR-FS, FC100, miniImageNet)
built from them; see :mod:`hscl.data.images`."""

from hscl.data.images import (
    DATASETS,
    DatasetNotFoundError,
    FewShotBenchmark,
    ImageData,
    load_dataset,
    mosaic_dataset,
    read_cifar_fs,
    read_fc100,
    read_mini_imagenet,
)

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "FewShotBenchmark",
    "ImageData",
    "load_dataset",
    "mosaic_dataset",
    "read_cifar_fs",
    "read_fc100",
    "read_mini_imagenet",
]
