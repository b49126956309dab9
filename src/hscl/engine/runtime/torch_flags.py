"""The process-wide torch settings a training run changes, saved and put back when it returns.

A run sets global switches of torch: Lightning's ``Trainer(deterministic=True)`` turns on
``torch.use_deterministic_algorithms`` (and sets ``CUBLAS_WORKSPACE_CONFIG``), ``benchmark=`` sets
``torch.backends.cudnn.benchmark``, hscl turns TF32 on for CUDA float32 matmuls and convolutions
(:func:`hscl.engine.runtime.precision.enable_tf32`) and ``train.threads`` sets the thread count. Left on, they slow
down or change later work in the same process (e.g. ``hscl reproduce schane``: pre-training, then fine-tuning
with deterministic kernels). :func:`restored_torch_flags` snapshots them all and restores them on exit;
:func:`restores_torch_flags` is the same as a decorator.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ["restored_torch_flags", "restores_torch_flags", "snapshot_torch_flags"]

F = TypeVar("F", bound=Callable)

#: environment variables Lightning sets with its deterministic flag
_ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG",)


def _tf32_state() -> dict:
    """CUDA's TF32 switches: the legacy ones when they read back, else (torch >= 2.9 after a mix of the legacy
    and the new API by someone else) the new per-backend ``fp32_precision`` settings."""
    matmul = torch.backends.cuda.matmul
    try:
        return {"matmul_precision": torch.get_float32_matmul_precision(), "cudnn": torch.backends.cudnn.allow_tf32}
    except RuntimeError:  # the legacy getter refuses a mixed state
        conv = getattr(torch.backends.cudnn, "conv", None)
        return {"matmul_fp32": matmul.fp32_precision, "conv_fp32": getattr(conv, "fp32_precision", None)}


def snapshot_torch_flags() -> dict:
    """The process-wide settings a training run can change (see the module docstring), as a dict."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "tf32": _tf32_state(),
        "threads": torch.get_num_threads(),
        "environment": {key: os.environ.get(key) for key in _ENVIRONMENT},
    }


def _restore_tf32(saved: dict) -> None:
    matmul = torch.backends.cuda.matmul
    if "matmul_fp32" in saved:  # a mixed state: put the new API's values back as they were
        matmul.fp32_precision = saved["matmul_fp32"]
        if saved["conv_fp32"] is not None:
            torch.backends.cudnn.conv.fp32_precision = saved["conv_fp32"]
        return
    if _tf32_state() == saved:
        return
    # the global setting as it read: torch mirrors it into every backend's, so both APIs read back consistently
    torch.set_float32_matmul_precision(saved["matmul_precision"])
    torch.backends.cudnn.allow_tf32 = saved["cudnn"]


def restore_torch_flags(saved: dict) -> None:
    """Put back the settings of :func:`snapshot_torch_flags`."""
    torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["deterministic_warn_only"])
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    _restore_tf32(saved["tf32"])
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    for key, value in saved["environment"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def restored_torch_flags() -> Iterator[dict]:
    """Snapshot the settings of :func:`snapshot_torch_flags`; restore them on exit (also on an exception)."""
    saved = snapshot_torch_flags()
    try:
        yield saved
    finally:
        restore_torch_flags(saved)


def restores_torch_flags(fn: F) -> F:
    """Decorator: ``fn`` runs inside :func:`restored_torch_flags`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with restored_torch_flags():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
