"""Numerical precision and determinism of a training run, decided per device.

CPU: ``precision: auto`` times a few training steps in float32, float32 with channels-last and (where the
CPU has native bf16) bf16 autocast, and keeps the fastest; the choice is written to ``precision.json`` and
reused on resume. CUDA: bf16-mixed only with native bf16 (compute capability >= 8.0), fp16-mixed with
gradient scaling otherwise, TF32 matmuls for float32, channels-last for convnets; decided without
initialising CUDA in a process that will fork.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings

import torch
from torch import Tensor, nn

log = logging.getLogger("hscl")


def resolve_precision(
    setting: str,
    model: nn.Module | None,
    sample: Tensor | None,
    device: torch.device,
    *,
    strategy: str = "auto",
    processes: int = 1,
) -> tuple[str, bool]:
    """Lightning precision and channels_last for ``setting`` ("auto", "bf16", "16", "32").

    On CUDA (:func:`_cuda_precision`, no timing): "auto" is bf16-mixed where the GPU computes bf16 natively
    (compute capability >= 8.0: A100, RTX 30xx, H100, ...), else fp16-mixed ("16-mixed", with Lightning's
    gradient scaler: T4, V100, RTX 20xx); "32" is float32 with TF32 tensor cores (:func:`enable_tf32`);
    channels_last for a convnet. It decides without initialising CUDA in this process when ``strategy`` forks
    the training processes from it (``ddp_fork``).

    "auto" on CPU times a few forward+backward steps of this model in float32, float32 with
    channels_last, and (when oneDNN supports bf16 here) bf16 autocast with channels_last, and picks
    the fastest: bf16 is only a win where the CPU has native bf16 (AMX / AVX512-BF16).
    """
    if device.type == "cuda":
        return _cuda_precision(setting, model, fork=_will_fork(strategy, processes))
    if setting == "16":
        raise ValueError("train.precision=16 (fp16-mixed) is for CUDA GPUs; on the CPU use auto, bf16 or 32")
    supported = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if setting == "bf16":
        if not supported:
            warnings.warn("bf16 requested but this CPU has no bf16 support in oneDNN; it will be slow", stacklevel=2)
        return "bf16-mixed", True
    candidates = [("32-true", False), ("32-true", True)]
    if setting == "auto" and supported:
        candidates.append(("bf16-mixed", True))
    timings = {c: _probe(model, sample, bf16=c[0] == "bf16-mixed", channels_last=c[1]) for c in candidates}
    log.info(
        "precision probe (s/step): %s", {f"{p}{'+cl' if cl else ''}": round(t, 4) for (p, cl), t in timings.items()}
    )
    if setting == "32":
        return "32-true", timings[("32-true", True)] < timings[("32-true", False)]
    return min(timings, key=timings.get)


def _will_fork(strategy: str, processes: int) -> bool:
    """Whether Lightning will fork the training processes from this one: ``ddp_fork`` / ``ddp_notebook``, or
    "auto" with several devices in an interactive session (Lightning then picks ddp_fork)."""
    if strategy in ("ddp_fork", "ddp_notebook"):
        return True
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)  # Lightning's _IS_INTERACTIVE
    return strategy == "auto" and processes > 1 and interactive


def _cuda_capability(fork: bool) -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of this process's GPU (``LOCAL_RANK``; the first visible one when
    the training processes are yet to be forked: the GPUs of a node are assumed alike), or None when it cannot
    be read.

    Why the care: ``torch.cuda.get_device_capability`` initialises CUDA (it creates the driver context). A
    process that has done so and then forks gives children whose CUDA cannot be initialised ("Cannot
    re-initialize CUDA in forked subprocess"), which is what ``--strategy ddp_fork`` does right after this
    decision. ``torch.cuda.device_count()`` asks NVML (the driver's management library) before CUDA is
    initialised, and creates no context. So when the training processes will be forked from this one, the
    capability is read in a short-lived child interpreter (spawned, not forked; it inherits
    CUDA_VISIBLE_DEVICES) and this process never touches CUDA; otherwise it is read here (Lightning initialises
    CUDA in this process anyway).
    """
    count = torch.cuda.device_count()
    if count == 0:
        return None
    if not fork:
        # this process's own GPU (torchrun / SLURM / Lightning's DDP children set LOCAL_RANK): no process reads
        # a property of (and so opens a context on) a GPU that another process trains on
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
        return tuple(torch.cuda.get_device_capability(local if 0 <= local < count else 0))
    code = "import torch; print(*torch.cuda.get_device_capability(0))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        major, minor = (int(v) for v in done.stdout.split()[-2:])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return major, minor


def _cuda_precision(setting: str, model: nn.Module | None, fork: bool) -> tuple[str, bool]:
    """The CUDA precision of ``setting`` and channels_last (True for a model with 2-d convolutions: NHWC is
    what cuDNN's tensor-core kernels take, with no layout transposes around every convolution).

    ``torch.cuda.is_bf16_supported()`` is not used: it is True on T4 / V100 (compute capability 7.x), which
    only emulate bf16, slower than fp16; native bf16 starts with compute capability 8.0 (Ampere).
    """
    channels_last = model is None or any(isinstance(m, nn.Conv2d) for m in model.modules())
    if setting == "32":
        return "32-true", channels_last  # with TF32 tensor cores (ContrastiveTask.on_fit_start)
    if setting == "16":
        return "16-mixed", channels_last
    capability = _cuda_capability(fork)
    native_bf16 = capability is not None and capability >= (8, 0)
    if setting == "bf16":
        if capability is not None and not native_bf16:
            warnings.warn(
                f"bf16 requested but this GPU (compute capability {capability[0]}.{capability[1]}) has no native "
                "bf16 (needs >= 8.0); it will be slow; train.precision=auto picks fp16-mixed here",
                stacklevel=3,
            )
        return "bf16-mixed", channels_last
    # auto; capability unknown (the probe failed): fp16 with gradient scaling runs on every CUDA GPU
    return ("bf16-mixed" if native_bf16 else "16-mixed"), channels_last


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (Ampere and later; no effect before).

    Only the CUDA back-ends' settings change (``torch.set_float32_matmul_precision`` would also let oneDNN
    lower the CPU's float32 matmuls), so the CPU's numbers stay those of float32. Setting them does not
    initialise CUDA.
    """
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = "tf32"  # torch >= 2.9
        conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_deterministic(setting: bool | None, device: torch.device) -> bool:
    """``train.deterministic``: an explicit True / False, or None (auto): True on the CPU (a resumed run
    repeats an uninterrupted one bit for bit), False on a GPU (cuDNN picks its fastest kernels, some of them
    non-deterministic; a resumed run continues from the exact saved state but its later steps can differ from
    an uninterrupted run in the last bits)."""
    return (device.type == "cpu") if setting is None else bool(setting)


def _probe(model: nn.Module, sample: Tensor, bf16: bool, channels_last: bool, steps: int = 3) -> float:
    import copy

    probe = copy.deepcopy(model).train()
    x = sample
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, z = probe(x)
            loss = z.float().square().mean()
        loss.backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])
