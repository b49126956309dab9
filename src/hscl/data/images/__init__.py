"""Image datasets: readers for the official on-disk formats, a registry, resolution and checked downloads.

Every reader returns an :class:`ImageData` with uint8 images of shape (N, C, H, W) and int64 labels of
shape (N,) (multi-label datasets: bool multi-hot labels of shape (N, num_classes), ``data.multilabel``).
The formats:

* MNIST / Fashion-MNIST: four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), plain or gzipped. An idx file starts with two
  zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then one big-endian int32 per
  dimension, then the data in C order. Images 1x28x28.
* CIFAR-10 (python version, folder ``cifar-10-batches-py``): pickled dicts with bytes keys;
  ``b"data"`` is (N, 3072) uint8, 1024 red then 1024 green then 1024 blue values, each plane row-major
  32x32; ``b"labels"``; ``batches.meta`` holds ``b"label_names"``. Five training batches, one test batch.
* CIFAR-100 (python version, folder ``cifar-100-python``): files ``train``, ``test``, ``meta``, same data
  layout; the 100 fine labels (``b"fine_labels"``, ``b"fine_label_names"``) are used.
* STL-10 (binary version, folder ``stl10_binary``): ``*_X.bin`` are uint8 3x96x96 images stored column-major
  (each channel is written column after column), ``*_y.bin`` uint8 labels 1..10 (returned as 0..9),
  ``class_names.txt``; the 100000 ``unlabeled_X.bin`` images (2.7 GB) are memory-mapped on request.
* TinyImageNet (folder ``tiny-imagenet-200``): 200 classes of 64x64 JPEGs, ``train/<wnid>/images/*.JPEG``
  (500 per class) and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; the validation set is
  the test split (the official test images have no labels). Decoded arrays are cached in one ``.npz``.
* scikit-learn digits: 1797 8x8 grey images (values 0..16, scaled to 0..255), a fixed stratified split.
* A generic image folder: ``root/train/<class>/*`` and ``root/test/<class>/*``, or ``root/<class>/*``
  split 80/20.

Built from these files:

* ``fashion-mnist-mosaic``, ``mnist-mosaic`` (:mod:`~hscl.data.images.mosaic`): multi-label 2 x 2 mosaics of
  real images (1 x 56 x 56), labelled by the set of classes they show.
* The few-shot benchmarks (:mod:`~hscl.data.images.fewshot_splits`): CIFAR-FS and FC100 (class splits of the
  CIFAR-100 files) and miniImageNet (``train.csv`` / ``val.csv`` / ``test.csv`` over ``images/``), read as a
  :class:`FewShotBenchmark` of three splits with disjoint classes; ``load_dataset("cifar-fs")`` (``"fc100"``,
  ``"mini-imagenet"``) gives the test split's classes as episode data for :func:`hscl.engine.finetune.fewshot.few_shot`.

:func:`load_dataset` finds a dataset by name in the ``data_dir`` argument, ``$HSCL_DATA``, known system
locations, the cache directory (``$HSCL_CACHE/<name>``, default ``~/.cache/hscl/<name>``), and finally
downloads it from the official source with an md5 check.

The package: :mod:`~hscl.data.images.base` (:class:`ImageData`, errors), :mod:`~hscl.data.images.formats`
(idx, CIFAR, STL-10, digits), :mod:`~hscl.data.images.image_files` (TinyImageNet, image folders),
:mod:`~hscl.data.images.mosaic` (multi-label mosaics), :mod:`~hscl.data.images.fewshot_splits` (few-shot
benchmarks), :mod:`~hscl.data.images.download` (downloads, archives), :mod:`~hscl.data.images.specs` (what is
known about each dataset, where to look for it, the cache dir: imports nothing else of :mod:`hscl.data`, so the
readers look their folder up there) and, on top, :mod:`~hscl.data.images.registry` (:data:`DATASETS`: each spec
with its reader, :func:`load_dataset`).
"""

from hscl.data.images.base import (
    VALIDATION_SEED,
    ChecksumError,
    DatasetNotFoundError,
    ImageData,
    UnsafeArchiveError,
    holdout_indices,
    stratified_indices,
)
from hscl.data.images.download import download_file, extract_archive
from hscl.data.images.fewshot_splits import (
    CIFAR_FS_CLASSES,
    FC100_SUPERCLASSES,
    MINI_IMAGENET_WNIDS,
    FewShotBenchmark,
    FewShotSplit,
    read_cifar_fs,
    read_fc100,
    read_mini_imagenet,
)
from hscl.data.images.formats import (
    read_cifar10,
    read_cifar100,
    read_digits,
    read_fashion_mnist,
    read_idx,
    read_mnist,
    read_stl10,
)
from hscl.data.images.image_files import read_image_folder, read_tiny_imagenet
from hscl.data.images.mosaic import (
    Mosaics,
    make_mosaics,
    mosaic_dataset,
    read_fashion_mnist_mosaic,
    read_mnist_mosaic,
)
from hscl.data.images.registry import DATASETS, DatasetSpec, check_data_dir, holds_dataset, load_dataset
from hscl.data.images.specs import Download, cache_dir

__all__ = [
    "CIFAR_FS_CLASSES",
    "DATASETS",
    "FC100_SUPERCLASSES",
    "MINI_IMAGENET_WNIDS",
    "ChecksumError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Download",
    "FewShotBenchmark",
    "FewShotSplit",
    "ImageData",
    "Mosaics",
    "UnsafeArchiveError",
    "VALIDATION_SEED",
    "cache_dir",
    "download_file",
    "extract_archive",
    "holdout_indices",
    "load_dataset",
    "check_data_dir",
    "holds_dataset",
    "make_mosaics",
    "mosaic_dataset",
    "read_cifar10",
    "read_cifar100",
    "read_cifar_fs",
    "read_digits",
    "read_fashion_mnist",
    "read_fashion_mnist_mosaic",
    "read_fc100",
    "read_idx",
    "read_image_folder",
    "read_mini_imagenet",
    "read_mnist",
    "read_mnist_mosaic",
    "read_stl10",
    "read_tiny_imagenet",
    "stratified_indices",
]
