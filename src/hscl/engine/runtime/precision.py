"""Numerical precision and determinism of a training run, decided per device, and the record of them.

``train.precision`` (checked in :mod:`hscl.engine.runtime.config`):

* ``auto`` -- a fixed rule of the hardware, never of the machine's load, so that every cell of a table trains
  in the same precision on one machine. CUDA: bf16-mixed where the GPU computes bf16 natively (compute
  capability >= 8.0), fp16-mixed with gradient scaling below; channels-last for convnets; TF32 tensor cores
  for float32 matmuls. CPU: bf16-mixed with channels-last where oneDNN has native bf16 (the CPU flags
  ``amx_bf16`` or ``avx512_bf16``, :func:`cpu_has_native_bf16`), float32 in the default memory format
  otherwise (AVX2 / AVX-512 without BF16 only emulate bf16, slower than float32).
* ``fastest`` -- CPU: times a few forward + backward steps in float32, float32 channels-last and (where oneDNN
  supports bf16) bf16 channels-last, and keeps the fastest; under load the choice can differ from run to run.
  CUDA: as ``auto`` (no timing).
* ``bf16`` / ``16`` (fp16-mixed, CUDA only) / ``32`` (float32): pinned; channels-last as under ``auto``
  (CPU: with bf16 only).

:func:`numerics_record` is the record every run writes of the numerics it used (precision, channels-last,
TF32, torch version, CPU / GPU model).

The loops hscl runs itself (fine-tuning, few-shot episodes) take the same rule through :func:`loop_precision`
(a :class:`LoopPrecision`: autocast dtype, channels-last, an fp16 gradient scaler) and run inside
:func:`loop_flags` (TF32 and cuDNN autotuning on CUDA, as training has them; restored after).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hscl.engine.runtime.config import PRECISION_SETTINGS

log = logging.getLogger("hscl")


#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic that oneDNN uses: AMX tiles, AVX512-BF16
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return None


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags (:data:`NATIVE_BF16_FLAGS`) of this CPU, sorted: from ``cpuinfo`` (the text of
    ``/proc/cpuinfo``; None: read it), or where there is no such file from torch's CPU capability helpers."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    if text is not None:
        flags = set()
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                flags.update(value.split())
        return sorted(flags.intersection(NATIVE_BF16_FLAGS))
    found = []
    for flag, helper in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        check = getattr(torch.cpu, helper, None)
        if check is not None and check():
            found.append(flag)
    return found


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (``amx_bf16`` or ``avx512_bf16`` among its flags; ``cpuinfo``:
    the text of ``/proc/cpuinfo``, None: read it): the CPU side of ``precision: auto``'s rule."""
    return bool(cpu_bf16_flags(cpuinfo))


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else :func:`platform.processor`)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    found = re.search(r"^model name\s*:\s*(.*)$", text or "", flags=re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or platform.machine() or "unknown")


def _has_conv(model: nn.Module | None) -> bool:
    return model is None or any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_precision(
    setting: str,
    model: nn.Module | None,
    sample: Tensor | None,
    device: torch.device,
    *,
    strategy: str = "auto",
    processes: int = 1,
    cpuinfo: str | None = None,
) -> tuple[str, bool]:
    """Lightning precision and channels_last for ``setting`` (:data:`PRECISION_SETTINGS`), by the rules of the
    module docstring: the one place hscl decides a precision.

    On CUDA (:func:`_cuda_precision`, no timing) it decides without initialising CUDA in this process when
    ``strategy`` forks the training processes from it (``ddp_fork``). ``sample`` (a batch of ``model``'s input)
    is needed only by ``fastest`` on the CPU; ``cpuinfo``: the text of ``/proc/cpuinfo`` (None: read it).
    """
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_SETTINGS)}, got {setting!r}")
    if device.type == "cuda":
        return _cuda_precision("auto" if setting == "fastest" else setting, model, fork=_will_fork(strategy, processes))
    if setting == "16":
        raise ValueError("train.precision=16 (fp16-mixed) is for CUDA GPUs; on the CPU use auto, bf16 or 32")
    native = cpu_has_native_bf16(cpuinfo)
    if setting == "bf16":
        if not native:
            warnings.warn(
                "bf16 requested but this CPU has no native bf16 (amx_bf16 / avx512_bf16); it will be slow",
                stacklevel=2,
            )
        return "bf16-mixed", _has_conv(model)
    if setting == "32" or (setting == "auto" and not native):
        return "32-true", False
    if setting == "auto":
        return "bf16-mixed", _has_conv(model)
    if processes > 1:  # fastest: a timing probe could choose differently in each process
        log.info("precision: fastest with %d processes decides by the auto rule (no timing)", processes)
        return resolve_precision("auto", model, sample, device, cpuinfo=cpuinfo)
    if model is None or sample is None:
        raise ValueError("precision 'fastest' on the CPU times the model: it needs the model and a sample batch")
    return _fastest(model, sample)


def _fastest(model: nn.Module, sample: Tensor) -> tuple[str, bool]:
    """``precision: fastest`` on the CPU: the fastest of float32, float32 channels-last and (where oneDNN
    supports bf16) bf16 channels-last, by timing a few forward + backward steps (:func:`_probe`)."""
    candidates = [("32-true", False), ("32-true", True)]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        candidates.append(("bf16-mixed", True))
    timings = {c: _probe(model, sample, bf16=c[0] == "bf16-mixed", channels_last=c[1]) for c in candidates}
    log.info(
        "precision probe (s/step): %s", {f"{p}{'+cl' if cl else ''}": round(t, 4) for (p, cl), t in timings.items()}
    )
    return min(timings, key=timings.get)


def _will_fork(strategy: str, processes: int) -> bool:
    """Whether Lightning will fork the training processes from this one: ``ddp_fork`` / ``ddp_notebook``, or
    "auto" with several devices in an interactive session (Lightning then picks ddp_fork)."""
    if strategy in ("ddp_fork", "ddp_notebook"):
        return True
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)  # Lightning's _IS_INTERACTIVE
    return strategy == "auto" and processes > 1 and interactive


def _cuda_capability(fork: bool) -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of this process's GPU (:func:`_cuda_properties`)."""
    found = _cuda_properties(fork)
    return None if found is None else found[0]


def _cuda_properties(fork: bool) -> tuple[tuple[int, int], str | None] | None:
    """Compute capability ``(major, minor)`` and name of this process's GPU (``LOCAL_RANK``; the first visible one when
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
        index = local if 0 <= local < count else 0
        return tuple(torch.cuda.get_device_capability(index)), _device_name(index)
    code = "import torch; print(torch.cuda.get_device_name(0)); print(*torch.cuda.get_device_capability(0))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        lines = done.stdout.strip().splitlines()
        major, minor = (int(v) for v in lines[-1].split()[-2:])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return (major, minor), (lines[-2].strip() if len(lines) > 1 else None)


def _device_name(index: int) -> str | None:
    try:
        return torch.cuda.get_device_name(index)
    except (RuntimeError, AssertionError, AttributeError):  # e.g. a test's fake GPU
        return None


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

    Set through torch's legacy switches (``torch.backends.cuda.matmul.allow_tf32``, ``cudnn.allow_tf32``), which
    newer torch mirrors into its per-backend ``fp32_precision`` settings: afterwards both APIs read back
    consistently (``torch.get_float32_matmul_precision()`` is ``"high"``), which inductor and Lightning rely on.
    Setting only the new ``fp32_precision`` would leave the legacy getters raising ("mix of the legacy and new
    APIs"). Nothing changes when float32 matmuls already use TF32 (e.g. the user chose ``"medium"``). Only the
    CUDA back-ends' settings change (``torch.set_float32_matmul_precision`` would also let oneDNN lower the CPU's
    float32 matmuls), so the CPU's numbers stay those of float32. Setting them does not initialise CUDA.
    """
    matmul = torch.backends.cuda.matmul
    if not _tf32_enabled():
        try:
            matmul.allow_tf32 = True
        except (AttributeError, RuntimeError):  # a torch without the legacy switch: the new API alone
            matmul.fp32_precision = "tf32"
    try:
        torch.backends.cudnn.allow_tf32 = True
    except (AttributeError, RuntimeError):
        torch.backends.cudnn.conv.fp32_precision = "tf32"


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


def numerics_record(
    precision: str,
    channels_last: bool,
    device: torch.device | str,
    *,
    setting: str | None = None,
    tf32: bool | None = None,
    strategy: str = "auto",
    processes: int = 1,
) -> dict:
    """The numerics a run used, as every hscl output records them: ``setting`` (the precision asked for, e.g.
    ``train.precision``; None when there is no choice), ``precision`` (Lightning's name of the one used:
    ``32-true``, ``bf16-mixed``, ``16-mixed``), ``channels_last``, ``tf32`` (TF32 tensor cores for float32
    matmuls / convolutions; None: read from torch's CUDA settings, always False on the CPU), ``torch`` (its
    version), ``device`` (``cpu`` / ``cuda``), ``cpu`` (model name), ``cpu_bf16_flags`` (its native-bf16
    flags), and on CUDA ``gpu`` (name) and ``gpu_capability`` (read without initialising CUDA in this process
    when ``strategy`` / ``processes`` fork the training processes from it, as :func:`resolve_precision`)."""
    device = torch.device(device)
    record = {
        "setting": setting,
        "precision": precision,
        "channels_last": bool(channels_last),
        "tf32": False if device.type != "cuda" else (_tf32_enabled() if tf32 is None else bool(tf32)),
        "torch": torch.__version__,
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_bf16_flags": cpu_bf16_flags(),
    }
    if device.type == "cuda":
        found = _cuda_properties(_will_fork(strategy, processes))
        record["gpu"] = None if found is None else found[1]
        record["gpu_capability"] = None if found is None else f"{found[0][0]}.{found[0][1]}"
    return record


# --------------------------------------------------------------------------------------------
# hand-written training loops: fine-tuning and few-shot episodes


@dataclass(frozen=True)
class LoopPrecision:
    """The numerics of a training loop hscl runs itself (fine-tuning, few-shot episodes), as
    :func:`loop_precision` decides them: ``precision`` (Lightning's name: ``32-true``, ``bf16-mixed``,
    ``16-mixed``), ``channels_last`` (model and inputs in NHWC) and the ``setting`` they came from."""

    precision: str = "32-true"
    channels_last: bool = False
    setting: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in _AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(_AUTOCAST_DTYPES)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (bf16 / fp16), None for float32."""
        return _AUTOCAST_DTYPES[self.precision]

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on ``device`` in :attr:`dtype`; nothing for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device | str):
        """A gradient scaler for fp16 (``16-mixed``); None otherwise (bf16 and float32 need none)."""
        if self.precision != "16-mixed":
            return None
        device_type = torch.device(device).type
        amp = getattr(torch, "amp", None)
        if amp is not None and hasattr(amp, "GradScaler"):  # torch >= 2.3
            return amp.GradScaler(device_type)
        return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")

    def inputs(self, x: Tensor) -> Tensor:
        """A batch in the memory format of the model (NHWC under channels_last, for 4-d images)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def record(self, device: torch.device | str) -> dict:
        """:func:`numerics_record` of this choice on ``device`` (TF32 on CUDA: :func:`loop_flags` turns it on)."""
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        return numerics_record(self.precision, self.channels_last, device, setting=self.setting, tf32=on_cuda)


_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}
#: the choice :func:`loop_precision_scope` hands to the loops run inside it
_SCOPE: ContextVar[LoopPrecision | None] = ContextVar("hscl_loop_precision", default=None)


def loop_precision(
    setting: str | LoopPrecision | None,
    model: nn.Module | None,
    device: torch.device,
    sample: Tensor | None = None,
) -> LoopPrecision:
    """The numerics of a fine-tuning / few-shot loop on ``device``, by :func:`resolve_precision`'s rule (the one
    chooser; ``train.precision``'s settings): ``setting`` one of :data:`PRECISION_SETTINGS`, a
    :class:`LoopPrecision` (taken as it is), or None: the choice of an enclosing :func:`loop_precision_scope`,
    else ``"auto"``. ``model`` returns ``(h, z)`` (the probe of ``fastest``, which also needs ``sample``, a batch
    of its input, on the CPU)."""
    if setting is None:
        scoped = _SCOPE.get()
        if scoped is not None:
            return scoped
        setting = "auto"
    if isinstance(setting, LoopPrecision):
        return setting
    precision, channels_last = resolve_precision(setting, model, sample, device)
    return LoopPrecision(precision, bool(channels_last), setting)


@contextlib.contextmanager
def loop_precision_scope(choice: LoopPrecision, device: torch.device | str) -> Iterator[LoopPrecision]:
    """Inside, loops called without a precision (``precision=None``) use ``choice``, and everything runs under
    its autocast on ``device`` (e.g. ``hscl reproduce schane``: one stored choice for every fine-tuning)."""
    token = _SCOPE.set(choice)
    try:
        with choice.autocast(device):
            yield choice
    finally:
        _SCOPE.reset(token)


@contextlib.contextmanager
def loop_flags(device: torch.device | str) -> Iterator[None]:
    """The process-wide switches of a training loop on ``device``, restored on exit: on CUDA TF32 tensor cores
    (:func:`enable_tf32`) and cuDNN autotuning (``cudnn.benchmark``, as training sets it when not
    deterministic); nothing on the CPU."""
    from hscl.engine.runtime.torch_flags import restored_torch_flags

    with restored_torch_flags():
        if torch.device(device).type == "cuda":
            enable_tf32()
            torch.backends.cudnn.benchmark = True
        yield


def _tf32_enabled() -> bool:
    """Whether torch's CUDA float32 matmuls use TF32 now (what :func:`enable_tf32` turns on)."""
    matmul = torch.backends.cuda.matmul
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:  # a mix of the legacy and the new API (set by someone else): the new one decides
        return getattr(matmul, "fp32_precision", "ieee") == "tf32"


def describe_numerics(record: dict) -> str:
    """One line of a record of :func:`numerics_record`, e.g. ``bf16-mixed (auto), channels-last; CPU Intel
    Xeon (amx_bf16, avx512_bf16); torch 2.5.1``."""
    setting = f" ({record['setting']})" if record.get("setting") else ""
    parts = [f"{record.get('precision', 'unknown')}{setting}"]
    if record.get("channels_last"):
        parts[0] += ", channels-last"
    if record.get("tf32"):
        parts[0] += ", TF32"
    if record.get("device") == "cuda":
        parts.append(f"GPU {record.get('gpu') or 'unknown'}")
    elif record.get("cpu"):
        flags = record.get("cpu_bf16_flags") or []
        parts.append(f"CPU {record['cpu']} ({', '.join(flags) if flags else 'no native bf16'})")
    if record.get("torch"):
        parts.append(f"torch {record['torch']}")
    return "; ".join(parts)
