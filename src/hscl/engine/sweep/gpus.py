"""Which GPU each worker process of a sweep runs on: worker ``i`` on GPU ``i mod n`` of the visible ones, or of
``--gpus`` (:func:`worker_gpus`), set as the worker's ``CUDA_VISIBLE_DEVICES`` before it starts CUDA."""

from __future__ import annotations

import contextlib
import os

__all__ = ["worker_gpus"]


def worker_gpus(workers: int, gpus: list[int] | None = None) -> list[str | None]:
    """The GPU of each of ``workers`` worker processes, as the value of its ``CUDA_VISIBLE_DEVICES``: worker
    ``i`` gets ``gpus[i % len(gpus)]`` (``gpus``: indices of the GPUs this process sees; None: all of them, so
    worker ``i`` runs on GPU ``i mod n``). An index is mapped through this process's own ``CUDA_VISIBLE_DEVICES``
    when it is set. Every entry is None on a machine without a GPU. Counting the GPUs does not initialise CUDA.
    """
    import torch

    count = torch.cuda.device_count()
    if gpus is None:
        if count == 0:
            return [None] * workers
        gpus = list(range(count))
    if not gpus or any(isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < count for g in gpus):
        raise ValueError(f"--gpus must list GPU indices in [0, {count}) (torch sees {count} GPU(s)), got {gpus}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else [str(g) for g in range(count)]
    return [names[gpus[i % len(gpus)]] for i in range(workers)]


@contextlib.contextmanager
def _visible_gpu(gpu: str | None):
    """``CUDA_VISIBLE_DEVICES=gpu`` inside (nothing for None); set before CUDA starts in the process."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        yield
    finally:
        if gpu is not None:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
