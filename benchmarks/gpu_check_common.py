"""What the parts of ``benchmarks/gpu_check.py`` share: the sizes of its two forms, its rows, a watch on the
modules that run (which device, which dtype) and small device helpers."""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

DIM = 128
CLASSES = 10
GB = 1e9
MB = 1e6


@dataclass(frozen=True)
class Sizes:
    """The sizes of one form of the check (full: a GPU; quick: the CPU / CI)."""

    train: int
    test: int
    encoder: str
    widths: list[int] | None
    hidden_dim: int
    projection_dim: int
    batch_size: int
    knn_train: int
    knn_test: int
    linear_epochs: int
    probe_size: int
    finetune_train: int | None
    finetune_batch: int
    ways: int
    shots: tuple[int, ...]
    queries: int
    episodes: int
    steps: int
    graph_epochs: int
    svm_C: tuple[float, ...]
    svm_inner_folds: int
    loss_rows: tuple[int, ...]
    min_timing_s: float
    loss_memory_budget: float  # bytes an hscl loss may take (forward + backward): its chunk_size follows
    reference_memory: float  # bytes for one block of anchors of the float64 reference (autograd included)
    multitile_classes: int  # the classes of the extra rows that make the fused loss split blocks into tiles
    ddp_timeout_s: float  # the 2-GPU child run, both ranks killed after this


FULL = Sizes(
    train=50000,
    test=10000,
    encoder="resnet18",
    widths=None,
    hidden_dim=512,
    projection_dim=128,
    batch_size=512,
    knn_train=10000,
    knn_test=2000,
    linear_epochs=10,
    probe_size=512,
    finetune_train=None,
    finetune_batch=256,
    ways=5,
    shots=(1, 5),
    queries=15,
    episodes=10,
    steps=30,
    graph_epochs=20,
    svm_C=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0),
    svm_inner_folds=5,
    loss_rows=(8192, 32768, 65536),
    min_timing_s=1.0,
    loss_memory_budget=2 * GB,
    reference_memory=8 * GB,
    multitile_classes=3,
    ddp_timeout_s=240.0,
)

QUICK = Sizes(
    train=1024,
    test=512,
    encoder="convnet",
    widths=[8, 16, 16, 32],
    hidden_dim=64,
    projection_dim=16,
    batch_size=64,
    knn_train=512,
    knn_test=256,
    linear_epochs=20,
    probe_size=64,
    finetune_train=256,
    finetune_batch=64,
    ways=2,
    shots=(5,),
    queries=20,
    episodes=5,
    steps=10,
    graph_epochs=1,
    svm_C=(0.1, 1.0, 10.0),
    svm_inner_folds=3,
    loss_rows=(512, 1024, 2048),
    min_timing_s=0.3,
    loss_memory_budget=16 * MB,
    reference_memory=32 * MB,
    multitile_classes=3,
    ddp_timeout_s=120.0,
)


# --------------------------------------------------------------------------------------------
# rows of the table


class SkipError(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


class CheckFailedError(Exception):
    """Raised by a check whose numbers say it failed (a wrong value, a wrong device, a missed bound)."""


@dataclass
class Row:
    check: str
    device: str
    status: str
    seconds: float
    key: str
    metrics: dict = field(default_factory=dict)


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checks:
    """Runs checks, each a function returning ``(device, key number, metrics)``, and collects their rows;
    ``on_row`` (e.g. rewriting the JSON) is called after each row."""

    def __init__(self, on_row: Callable[[list[Row]], None] | None = None) -> None:
        self.rows: list[Row] = []
        self.on_row = on_row

    def run(self, name: str, device: str, fn: Callable[[], tuple[str, str, dict]]) -> Row:
        start = time.perf_counter()
        try:
            where, key, metrics = fn()
            row = Row(name, where, "ok", 0.0, key, metrics)
        except SkipError as skip:
            row = Row(name, device, f"skipped: {skip}", 0.0, "-")
        except Exception as err:  # a check that fails is a row, not the end of the run
            print(f"--- {name} FAILED:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            metrics = getattr(err, "metrics", {})
            key = getattr(err, "key", "-")
            row = Row(name, device, f"FAILED: {one_line(err)}", 0.0, key, metrics)
        row.seconds = time.perf_counter() - start
        self._add(row)
        return row

    def skip(self, name: str, device: str, reason: str) -> None:
        self._add(Row(name, device, f"skipped: {reason}", 0.0, "-"))

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"[{row.status.split(':')[0]}] {row.check} ({row.seconds:.1f} s) {row.key}", file=sys.stderr, flush=True)
        if row.status.startswith("FAILED"):
            print(f"    {row.status}", file=sys.stderr, flush=True)
        if self.on_row is not None:
            self.on_row(self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status.startswith("FAILED")]


def failure(message: str, key: str = "-", metrics: dict | None = None) -> CheckFailedError:
    """A :class:`CheckFailedError` that keeps the row's key number and metrics (they still reach the table)."""
    err = CheckFailedError(message)
    err.key, err.metrics = key, metrics or {}
    return err


# --------------------------------------------------------------------------------------------
# which devices and dtypes the modules ran on


class ModuleWatch:
    """Counts ``(device, dtype)`` of the outputs of every ``Conv2d`` and ``Linear`` that runs in this process
    while the watch is open (a global forward hook: it sees models built and copied inside the pipelines), and
    the rank and size of the torch.distributed process group they ran in, if any."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()
        self.world: tuple[int, int] | None = None  # (rank, world size) of a process group the modules ran in
        self._handle = None

    def _hook(self, module, args, output) -> None:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(output, torch.Tensor):
            self.seen[(str(output.device), str(output.dtype).removeprefix("torch."))] += 1
            if self.world is None and torch.distributed.is_available() and torch.distributed.is_initialized():
                self.world = (torch.distributed.get_rank(), torch.distributed.get_world_size())

    def __enter__(self) -> ModuleWatch:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @property
    def devices(self) -> set[str]:
        return {device for device, _ in self.seen}

    @property
    def dtypes(self) -> set[str]:
        return {dtype for _, dtype in self.seen}

    def describe(self) -> str:
        return ", ".join(f"{n} on {d} in {t}" for (d, t), n in sorted(self.seen.items())) or "no module ran"


# --------------------------------------------------------------------------------------------
# device helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def size_text(nbytes: float) -> str:
    if nbytes >= GB:
        return f"{nbytes / GB:.{0 if nbytes >= 10 * GB else 1}f} GB"
    return f"{nbytes / MB:.0f} MB"


def current(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def native_bf16(device: torch.device) -> bool | None:
    """Whether this CUDA GPU computes bf16 natively (compute capability >= 8.0); None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device.index or 0)[0] >= 8
