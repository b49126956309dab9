"""The training data of a run: batches of ``B`` samples x ``V`` views, read on the host or the device.

Under DDP each rank reads only its own shard of the global batch; the sampler's indices are the same on
every rank (seeded per epoch), so the union of the shards is the one-process batch.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from hscl.data.images import VALIDATION_SEED, ImageData
from hscl.data.views import ViewSampler
from hscl.engine.runtime.config import RunConfig, config_to_dict
from hscl.engine.runtime.distributed import (
    place,
    shard,
    to_device,
    world_size,
)
from hscl.losses import get_method


def data_key(config: RunConfig) -> str:
    """What :func:`~hscl.engine.pretrain.run.load_data` depends on, as a key for callers that reuse one loaded dataset
    across runs: every ``data.*`` key, ``eval.val_fraction`` (the hold-out) and ``train.seed`` (the subsets are
    drawn with it). Two configs with the same key get the same splits."""
    import json

    return json.dumps(
        {"data": config_to_dict(config)["data"], "val_fraction": config.eval.val_fraction, "seed": config.train.seed},
        sort_keys=True,
        default=str,
    )


def split_data(data: ImageData, config: RunConfig) -> ImageData:
    """The splits of a run from its dataset: the validation hold-out, then the stratified subsets.

    With ``eval.val_fraction = f > 0``, ``round(f * n)`` images of the ``n``-image training split (``n`` =
    ``data.train_subset``, or the whole split) are held out as validation data (:meth:`ImageData.hold_out`,
    stratified, drawn from the whole training split with :data:`~hscl.data.images.VALIDATION_SEED`, so the same
    images for every training seed and every point of a sweep); the training subset of the remaining ``n -
    round(f * n)`` images is then drawn from the others with ``train.seed``, as without a hold-out. Pre-training,
    the kNN monitor, the diagnostics' probe set and the linear probe use the training split only.
    """
    dc, fraction = config.data, config.eval.val_fraction
    train_n = dc.train_subset
    if fraction > 0:
        total = len(data.train_labels) if train_n is None else train_n
        if total > len(data.train_labels):
            raise ValueError(f"data.train_subset={total} exceeds the {len(data.train_labels)} training images")
        held = round(total * fraction)
        if not 0 < held < total:
            raise ValueError(
                f"eval.val_fraction={fraction} of {total} training images holds out {held}; it must hold out at "
                "least one image and keep at least one"
            )
        data = data.hold_out(held, seed=VALIDATION_SEED)
        train_n = None if train_n is None else train_n - held
    if train_n is not None or dc.test_subset is not None:
        data = data.subset(train_n, dc.test_subset, seed=config.train.seed)
    return data


#: the methods whose batches pair two images of one class by default (the H-SCL paper's sampling for SCL and
#: H-SCL); every other method pairs two augmented views of one image (``"instance"``)
SAME_LABEL_PAIRS = ("scl", "h-scl")


def pair_mode_for(config: RunConfig) -> str:
    if config.data.pair_mode != "auto":
        return config.data.pair_mode
    return "same_label" if get_method(config.loss.method).name in SAME_LABEL_PAIRS else "instance"


class _EpochBatches(torch.utils.data.IterableDataset):
    """Yields ``(images (B_k, V, C, H, W) uint8, labels (B_k,) or (B_k, C))`` (the labels of the anchors, view 0:
    class ids, or the multi-hot label sets of a multi-label dataset) for the epoch ``epoch_fn()``: the global batch
    (``B_k = B``) with one process; under DDP this rank's shard of it (:func:`~hscl.engine.runtime.distributed.shard`),
    so that each rank reads (and copies to its device) only its own samples. The indices of every batch are
    drawn on the host from ``(seed, epoch)``; ``images`` / ``labels`` may live on the GPU: then the indices of
    the whole epoch are copied there once, through pinned memory without blocking (no host synchronisation
    per step)."""

    def __init__(self, images: Tensor, labels: Tensor, sampler: ViewSampler, epoch_fn) -> None:
        self.images, self.labels, self.sampler, self.epoch_fn = images, labels, sampler, epoch_fn

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        shards = world_size()  # read here: the process group exists by the time the batches are read
        batches = self.sampler.batches(self.epoch_fn())  # (num_batches, B, V)
        if shards > 1:
            batches = batches[:, shard(batches.shape[1], shards)]  # (num_batches, B_k, V): this rank's samples
        batches = to_device(batches, self.images.device)  # once per epoch; pinned and non-blocking to a GPU
        for index in batches:  # (B_k, V)
            yield self.images[index], self.labels[index[:, 0]]


class ViewsDataModule(L.LightningDataModule):
    """The training split as ``B x V`` view batches; the test split for the kNN monitor.

    Multi-label data (bool ``(N, C)`` labels) gives ``(B, C)`` label sets to the loss; its ``same_label`` pairs
    share at least one class (:class:`~hscl.data.views.ViewSampler`).
    """

    def __init__(self, data: ImageData, config: RunConfig) -> None:
        super().__init__()
        self.data = data
        self.config = config
        self.sampler = ViewSampler(
            data.train_labels,
            batch_size=min(config.train.batch_size, len(data.train_labels)),
            pair_mode=pair_mode_for(config),
            views=config.data.views,
            seed=config.train.seed,
        )

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def train_dataloader(self):
        # on a GPU the uint8 training set is copied to it once when it fits (CIFAR, STL-10), and each batch is
        # then gathered there; otherwise batches are gathered on the host and pinned, so that Lightning's
        # non_blocking copy to the device overlaps. On the CPU nothing changes.
        device = self._device()
        images, labels = place(self.data.train_images, device), place(self.data.train_labels, device)
        if labels.device != images.device:
            labels = self.data.train_labels.to(images.device)
        pin = device.type == "cuda" and images.device.type == "cpu"
        dataset = _EpochBatches(images, labels, self.sampler, self._epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin)
