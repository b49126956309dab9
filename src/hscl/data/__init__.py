"""Data layer: image datasets in their official on-disk formats (MNIST, Fashion-MNIST, CIFAR-10/100, STL-10,
TinyImageNet, scikit-learn digits, image folders), resolved from local folders, system packages, a cache, or
a checked download; see :mod:`hscl.data.images`."""

from hscl.data.images import DATASETS, DatasetNotFoundError, ImageData, load_dataset

__all__ = ["DATASETS", "DatasetNotFoundError", "ImageData", "load_dataset"]
