"""Data-parallel training: the loss over the batch of ALL ranks, with exact gradients.

Under data parallelism (Lightning DDP: one process per device, gloo on CPU, NCCL on GPUs) each of
the ``W`` ranks holds ``B_k`` samples of one global batch of ``B = sum_k B_k`` samples, in rank order.
The contrastive losses of :mod:`hscl.losses` are not a sum of per-sample terms: every anchor's
negatives and positives are the other rows of the batch, and ``M = V*B - 2`` counts them. So the
loss a rank can compute on its own rows is a different (smaller-batch) loss. Here each rank
gathers the embeddings ``z`` (B_k, V, d) and labels (B_k,) of all ranks, so that every anchor sees
the negatives and positives of the whole global batch, and the training step is that of one
process on the concatenated batch:

* value: ``L(Z)``, the loss of the global batch ``Z`` (B, V, d), e.g. the mean over its valid
  (anchor, positive) pairs; the same number on every rank.
* gradient: ``dL / dtheta`` of one process on ``Z``.

How the gradient is assembled. Write ``L = sum_k L_k`` where ``L_k`` holds the pair terms whose
anchor is a row of rank ``k`` (each normalised by the global pair count). Rank ``k``'s rows enter
``L`` as anchors (in ``L_k``) and as positives / negatives of every other rank's anchors (in
``L_j``), so ``dL / dz_k = sum_j dL_j / dz_k``. Each rank evaluates ``L`` on the gathered batch in
which only its own slot is attached to the graph (the other ranks' rows are gathered values); its
backward therefore yields exactly ``dL / dz_k``, all of it, with no collective in the backward
(an all-gather with an all-reduce backward over per-rank ``L_k`` gives the same numbers). The
encoder gradient of rank ``k`` is ``dL / dz_k * dz_k / dtheta``, and the true gradient is their sum
over ranks; DDP all-reduces gradients by their MEAN (it divides by ``W``), so the returned loss
carries a gradient multiplied by ``W`` while its value stays ``L``.

Cost. Every rank evaluates all ``V*B`` anchors of the global loss: ``O((V*B)^2 d)`` per rank, with
``chunk_size`` bounding its memory to ``O(chunk_size * V*B)``. ``hscl.losses`` has no argument to
restrict the anchors to a subset of the rows, which is what would split that cost by ``W``;
benchmarks/bench_scaling.py measures it against the encoder's cost.

Batch normalisation in the encoder / head normalises over each rank's own rows unless the model
uses ``torch.nn.SyncBatchNorm`` (GPU only in PyTorch; see :func:`hscl.engine.pretrain.run.train`).

Devices (the end of this module): :func:`resolve_device` turns ``"auto"`` / ``"cpu"`` / ``"cuda:1"`` into a
device without creating a CUDA context; :func:`place` keeps a data set on a GPU when it fits there and
:func:`to_device` copies host batches through pinned memory.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "world_size",
    "rank",
    "launch_rank",
    "shard",
    "shard_sizes",
    "all_gather_rows",
    "gather_batch",
    "global_batch_loss",
    "resolve_device",
    "fits_on_device",
    "place",
    "same_device",
    "to_device",
]


def world_size() -> int:
    """Number of processes in the default process group (1 when torch.distributed is not in use)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 when torch.distributed is not in use)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launch_rank(devices_per_node: int = 1) -> int:
    """The global rank a launcher gave this process, read from the environment before the process
    group exists: ``RANK`` (torchrun) or ``SLURM_PROCID``, else Lightning's ``NODE_RANK`` and
    ``LOCAL_RANK`` (its launcher and multi-node runs set them). 0 for a plain single process."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0)) * int(devices_per_node) + int(os.environ.get("LOCAL_RANK", 0))


def shard(num_samples: int, num_shards: int | None = None, index: int | None = None) -> slice:
    """The contiguous samples of a global batch that rank ``index`` of ``num_shards`` processes.

    Shards follow ``torch.tensor_split``: sizes differ by at most one, and concatenating them in rank
    order gives back the global batch (which is what :func:`gather_batch` does).
    Defaults: the current process group.
    """
    num_shards = world_size() if num_shards is None else int(num_shards)
    index = rank() if index is None else int(index)
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"shard index must lie in [0, num_shards={num_shards}), got {index}")
    if num_samples < num_shards:
        raise ValueError(
            f"a batch of {num_samples} samples cannot be split over {num_shards} processes "
            "(each needs at least one); raise train.batch_size or use fewer devices"
        )
    size, extra = divmod(num_samples, num_shards)
    start = index * size + min(index, extra)
    return slice(start, start + size + (1 if index < extra else 0))


def shard_sizes(num_samples: int, num_shards: int | None = None) -> list[int]:
    """The sample count of every rank's shard of a global batch of ``num_samples`` (:func:`shard`), in rank
    order, computed on the host."""
    num_shards = world_size() if num_shards is None else int(num_shards)
    return [shard(num_samples, num_shards, k).stop - shard(num_samples, num_shards, k).start for k in range(num_shards)]


def _exchange_sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's ``rows``, in rank order: an all-reduce, read on the host."""
    counts = torch.zeros(world_size(), dtype=torch.long, device=device)
    counts[rank()] = rows
    dist.all_reduce(counts)  # (W,) rows of each rank
    return counts.tolist()


def all_gather_rows(x: Tensor, sizes: list[int] | None = None) -> list[Tensor]:
    """Every rank's ``x``, in rank order, as values (no gradient). Ranks may hold different row counts.

    ``sizes``: the row count of every rank when the caller knows it on the host (:func:`shard_sizes` of the
    global batch); None: exchanged with an all-reduce and read on the host (a synchronisation with the device).

    Shape: ``x`` ``(n_k, ...)`` (the trailing dimensions equal on all ranks) -> a list of ``W``
    tensors ``(n_j, ...)``.
    """
    W = world_size()
    if W == 1:
        return [x.detach()]
    if sizes is None:
        sizes = _exchange_sizes(x.shape[0], x.device)
    elif len(sizes) != W or sizes[rank()] != x.shape[0]:
        raise ValueError(
            f"sizes must give the rows of each of the {W} ranks ({x.shape[0]} on rank {rank()}), got {sizes}"
        )
    width = max(sizes)
    padded = x.detach()
    if x.shape[0] < width:  # all_gather needs one shape on every rank
        padded = torch.cat([padded, padded.new_zeros((width - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(W)]
    dist.all_gather(parts, padded.contiguous())
    return [part[:n] for part, n in zip(parts, sizes)]


def gather_batch(z: Tensor, labels: Tensor | None, sizes: list[int] | None = None) -> tuple[Tensor, Tensor | None]:
    """The global batch: all ranks' samples concatenated in rank order; this rank's slot stays ``z``.

    Only this rank's rows are attached to the autograd graph (the others are gathered values), so a
    backward through any function of the global batch gives this rank the complete derivative with
    respect to its own rows (see the module docstring). ``sizes``: every rank's sample count, when known on the
    host (:func:`all_gather_rows`).

    Shape: ``z`` ``(B_k, V, d)``, ``labels`` ``(B_k,)`` or None -> ``(B, V, d)``, ``(B,)`` or None.
    """
    if z.dim() < 1:
        raise ValueError(f"z must have a leading sample dimension, got shape {tuple(z.shape)}")
    if world_size() == 1:
        return z, labels
    if sizes is None:  # one exchange of the row counts, for both gathers
        sizes = _exchange_sizes(z.shape[0], z.device)
    parts = all_gather_rows(z, sizes)
    parts[rank()] = z  # (B_k, V, d), attached
    global_labels = None
    if labels is not None:
        if labels.shape[0] != z.shape[0]:
            raise ValueError(f"labels must have one entry per sample ({z.shape[0]}), got shape {tuple(labels.shape)}")
        global_labels = torch.cat(all_gather_rows(labels, sizes))  # (B,)
    return torch.cat(parts), global_labels


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward; multiplies the incoming gradient by ``factor`` in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def global_batch_loss(
    loss_fn: nn.Module,
    z: Tensor,
    labels: Tensor | None = None,
    *,
    gradients_averaged: bool = True,
    sizes: list[int] | None = None,
) -> Tensor:
    """``loss_fn`` on the batch of all ranks: the step of one process on the concatenated batch.

    Args:
        loss_fn: any loss of :mod:`hscl.losses` (or a callable ``loss_fn(z, labels) -> scalar``); its
            ``last_stats`` then describe the global batch, identical on every rank.
        z: this rank's embeddings.
        labels: this rank's class ids (or None).
        gradients_averaged: the data-parallel wrapper averages gradients over ranks (DDP does), so the
            gradient is multiplied by the world size to undo it; ``False`` when they are summed.
        sizes: every rank's sample count when the caller knows it on the host (:func:`shard_sizes` of the
            global batch): the gather then needs no exchange of counts and no host synchronisation.

    Shape:
        z: ``(B_k, V, d)``; labels: ``(B_k,)``; output: scalar, the value of the global batch's loss.

    With one process this is ``loss_fn(z, labels)``.
    """
    W = world_size()
    if W == 1:
        return loss_fn(z, labels)
    global_z, global_labels = gather_batch(z, labels, sizes)  # (B, V, d), (B,)
    loss = loss_fn(global_z, global_labels)
    if loss.dim() != 0:
        raise ValueError(
            f"global_batch_loss needs a scalar loss (reduction 'mean', 'sum' or 'anchor_mean'), got shape "
            f"{tuple(loss.shape)}"
        )
    return _ScaleGradient.apply(loss, float(W)) if gradients_averaged else loss


# --------------------------------------------------------------------------------------------
# devices


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device a pipeline runs on: ``"auto"`` (or None) is ``cuda`` when a GPU is present, else ``cpu``;
    any other value is taken as ``torch.device(device)`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    ``torch.cuda.device_count()`` (NVML-based when NVML is present) answers without creating a CUDA context,
    so calling this before a process forks leaves the forked children able to use CUDA.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.device_count() > 0 else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}") from err
    if out.type == "cuda" and torch.cuda.device_count() == 0:
        raise ValueError(f"device {device!r} was asked for but this machine has no CUDA GPU (torch sees none)")
    return out


#: fraction of a GPU's free memory a data set may take to be kept there (the rest is for the model)
DEVICE_DATA_FRACTION = 0.3


def fits_on_device(nbytes: int, device: torch.device, fraction: float = DEVICE_DATA_FRACTION) -> bool:
    """Whether ``nbytes`` of data may live on ``device`` for a whole run: at most ``fraction`` of the GPU's
    free memory (CIFAR-10/100 as uint8 is 150 MB, STL-10 with its unlabelled split 2.8 GB). False on the CPU."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def place(x: Tensor, device: torch.device) -> Tensor:
    """``x`` (a data set's uint8 images, labels) where its batches are read from: moved to ``device`` once when
    that is a GPU with room for it (:func:`fits_on_device`), else left where it is (the host); batches read
    from the host then go through :func:`to_device`. On the CPU ``x`` itself is returned."""
    if device.type != "cuda" or x.device == device:
        return x
    if fits_on_device(x.numel() * x.element_size(), device):
        return x.to(device)
    return x


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """A batch on ``device``: a host batch bound for a GPU is staged in pinned memory and copied with
    ``non_blocking=True`` (the copy overlaps the host's work); anything else is ``x.to(device)``."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` name the same device: ``cuda`` (the current GPU) is ``cuda:<current index>``,
    ``cpu`` is ``cpu:0``. Reads the current GPU (initialising CUDA) only to compare an index-less ``cuda`` with
    an indexed one."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index or a.type == "cpu":
        return True
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)
