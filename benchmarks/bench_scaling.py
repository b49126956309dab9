"""Scaling on this CPU: data-parallel training throughput, and the loss's cost as the global batch grows.

What it measures
----------------
1. Training throughput with 1 and 2 processes: ``hscl train`` (Lightning; with ``--devices 2 --strategy
   ddp`` two processes over gloo, the global batch split between them and the loss computed on the
   gathered global batch, :mod:`hscl.engine.runtime.distributed`) on Fashion-MNIST 28x28 (``--train-subset`` images,
   stratified) with the quick preset's convnet (widths 16, 32, 64, 128), H-SCL(beta=1), global batch
   ``--batch`` samples x 2 views, float32, no kNN monitor, no diagnostics. Each run does ``--epochs``
   epochs; the throughput is that of the last epoch (the first includes start-up), from the run's
   metrics.csv: ``steps * batch * 2 / epoch seconds`` (images, both views) and half that (samples).
   Lightning gives each of the 2 processes ``cores / 2`` torch threads; the single process uses all cores.
2. The loss alone, as each DDP rank evaluates it (:func:`hscl.engine.runtime.distributed.global_batch_loss` evaluates
   the loss of the whole global batch on every rank): forward + backward of H-SCL(beta=1) (temperature
   0.5, M = rows - 2) on random embeddings ``(B, 2, 128)`` with 10 classes, for growing global batches
   ``B``, unchunked and with ``chunk_size`` anchors per block, with ``--loss-threads`` torch threads (default
   1, what each of the 2 ranks has on this 2-core machine). Time: median of ``--repeats`` calls after the
   first (untimed) one. Peak memory: in a fresh process per configuration, the highest RSS during the first
   call (sampled every millisecond, and the kernel's ru_maxrss) minus the RSS before it.

Every measurement records the load average and, over its window, the share of the CPUs used by other
processes and the hypervisor's steal (from /proc/stat), because this machine's 2 cores are shared.

Run from the repository root::

    .venv/bin/python benchmarks/bench_scaling.py --markdown benchmarks/bench_scaling_results.md
    .venv/bin/python benchmarks/bench_scaling.py --quick          # smoke test (small sizes)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# load of the machine


def _cpu_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


class LoadWindow:
    """CPU shares over a window: ours (this process and every descendant, sampled every 0.1 s so that
    processes not waited for by us, such as Lightning's DDP ranks, count too), others', and steal."""

    def __enter__(self):
        import psutil

        self.load_start = os.getloadavg()[0]
        self.cpu = _cpu_times()
        self.me = psutil.Process()
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds, first / last
        self.first: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            seconds = times.user + times.system
            self.first.setdefault(key, seconds if proc is self.me or key in self.seen else 0.0)
            self.seen[key] = seconds

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        busy, steal, total = (b - a for a, b in zip(self.cpu, _cpu_times()))
        ticks = os.sysconf("SC_CLK_TCK")
        total_seconds = total / ticks
        ours = sum(self.seen[key] - self.first[key] for key in self.seen)
        self.ours = ours / total_seconds if total_seconds else float("nan")
        self.others = max(0.0, busy / ticks - ours) / total_seconds if total_seconds else float("nan")
        self.steal = steal / total if total else float("nan")
        self.load_end = os.getloadavg()[0]

    def describe(self) -> str:
        return (
            f"load {self.load_start:.1f}->{self.load_end:.1f}, ours {100 * self.ours:.0f}%, "
            f"others {100 * self.others:.0f}%, steal {100 * self.steal:.0f}%"
        )


# --------------------------------------------------------------------------------------------
# 1. training throughput with 1 and 2 processes


def train_throughput(processes: int, threads: int | None, args) -> dict:
    sets = [
        "data.dataset=fashion-mnist",
        f"data.train_subset={args.train_subset}",
        "data.test_subset=1000",
        "model.encoder=convnet",
        "model.widths=[16, 32, 64, 128]",
        "loss.method=h-scl",
        "loss.beta=1.0",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.knn_k=0",
        "train.precision=32",
        "train.channels_last=false",
        "train.progress=false",
        "diagnostics.enabled=false",
    ]
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if threads is not None:
        sets.append(f"train.threads={threads}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "hscl.cli", "train", "--out", tmp, "--devices", str(processes)]
        if processes > 1:
            cmd += ["--strategy", "ddp"]
        for item in sets:
            cmd += ["--set", item]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        with LoadWindow() as window:
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"hscl train failed:\n{result.stderr[-3000:]}")
        with (Path(tmp) / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        summary = json.loads((Path(tmp) / "train_summary.json").read_text())
    last = rows[-1]
    images = float(last["images_per_s"])
    return {
        "processes": processes,
        "threads": threads,
        "images_per_s": images,
        "samples_per_s": images / 2,
        "epoch_seconds": float(last["epoch_seconds"]),
        "all_epochs_images_per_s": [float(r["images_per_s"]) for r in rows],
        "wall_seconds": wall,
        "loss_last_epoch": float(last["loss"]),
        "processes_recorded": summary.get("processes"),
        "load": window.describe(),
    }


# --------------------------------------------------------------------------------------------
# 2. the loss's time and memory against the global batch


_LOSS_WORKER = r"""
import json, resource, statistics, sys, threading, time
import psutil, torch
from hscl.losses import get_loss

batch, chunk, repeats, threads = (json.loads(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
generator = torch.Generator().manual_seed(0)
z = torch.randn(batch, 2, 128, generator=generator)
labels = torch.randint(0, 10, (batch,), generator=generator)
loss_fn = get_loss("h-scl", beta=1.0, temperature=0.5, chunk_size=chunk)
process = psutil.Process()
baseline = process.memory_info().rss
peak = [baseline]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.001)

sampler = threading.Thread(target=sample, daemon=True)
maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sampler.start()

def step():
    x = z.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = loss_fn(x, labels)
    loss.backward()
    return time.perf_counter() - start

first = step()
stop.set()
sampler.join()
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak_rss = max(peak[0], maxrss if maxrss > maxrss_before else 0)
times = [step() for _ in range(repeats)]
print(json.dumps({"seconds": statistics.median(times), "first": first, "peak_bytes": peak_rss - baseline}))
"""


def loss_cost(batch: int, chunk: int | None, args) -> dict:
    threads = args.loss_threads
    with LoadWindow() as window:
        result = subprocess.run(
            [sys.executable, "-c", _LOSS_WORKER, str(batch), json.dumps(chunk), str(args.repeats), str(threads)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"loss worker failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {"batch": batch, "chunk_size": chunk, **out, "load": window.describe()}


# --------------------------------------------------------------------------------------------
# report


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="global batch (samples) of the training runs")
    parser.add_argument("--train-subset", type=int, default=5120, help="Fashion-MNIST training images")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training run (the last one is timed)")
    parser.add_argument("--runs", type=int, default=2, help="training runs per process count (median reported)")
    parser.add_argument("--loss-batches", default="512,1024,2048,4096", help="global batches B of the loss table")
    parser.add_argument("--chunk", type=int, default=256, help="chunk_size of the chunked loss column")
    parser.add_argument("--repeats", type=int, default=5, help="timed loss calls (median)")
    parser.add_argument(
        "--loss-threads", type=int, default=1, help="torch threads of the loss table (1: what each of 2 ranks has here)"
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes")
    parser.add_argument("--markdown", help="also write the report to this file")
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_subset, args.epochs, args.runs, args.loss_batches, args.repeats = 1024, 2, 1, "256,512", 1

    lines = [
        "# Scaling benchmark (benchmarks/bench_scaling.py)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"Python {platform.python_version()}; command: `python benchmarks/bench_scaling.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
    ]
    print("\n".join(lines), flush=True)
    raw: dict = {"training": [], "loss": []}

    training_rows = []
    base = None
    cores = os.cpu_count() or 1
    # (processes, torch threads per process): None lets Lightning choose (cores / processes under DDP)
    setups = [(1, None), (1, 1), (2, None)]
    for processes, threads in setups:
        runs = []
        for run in range(args.runs):
            r = train_throughput(processes, threads, args)
            runs.append(r)
            print(
                f"  train, {processes} x {threads or 'default'} threads, run {run + 1}: {r['images_per_s']:.0f} "
                f"images/s ({r['load']})",
                flush=True,
            )
        raw["training"] += runs
        images = statistics.median(r["images_per_s"] for r in runs)
        base = base or images
        training_rows.append(
            [
                processes,
                threads or (cores if processes == 1 else max(1, cores // processes)),
                f"{images / 2:.0f}",
                f"{images:.0f}",
                f"{images / base:.2f}",
                ", ".join(f"{r['images_per_s']:.0f}" for r in runs),
                "; ".join(r["load"] for r in runs),
            ]
        )
    section = [
        f"## Training throughput: Fashion-MNIST, convnet (16, 32, 64, 128), H-SCL(beta=1), global batch "
        f"{args.batch} x 2 views, {args.train_subset} images, epoch {args.epochs} of {args.epochs}",
        "",
        _table(
            [
                "processes",
                "threads each",
                "samples/s",
                "images/s",
                "vs first row",
                "images/s per run",
                "machine during the runs",
            ],
            training_rows,
        ),
        "",
    ]
    print("\n".join(section), flush=True)
    lines += section

    loss_rows = []
    for batch in (int(b) for b in args.loss_batches.split(",")):
        full = loss_cost(batch, None, args)
        chunked = loss_cost(batch, args.chunk, args)
        raw["loss"] += [full, chunked]
        loss_rows.append(
            [
                batch,
                2 * batch,
                f"{1000 * full['seconds']:.0f}",
                f"{full['peak_bytes'] / 2**20:.0f}",
                f"{1000 * chunked['seconds']:.0f}",
                f"{chunked['peak_bytes'] / 2**20:.0f}",
                f"{full['load']}; {chunked['load']}",
            ]
        )
        print(f"  loss B={batch}: {loss_rows[-1][2:6]}", flush=True)
    section = [
        f"## The loss per rank: H-SCL(beta=1) forward + backward on the global batch (B, 2, 128), 10 classes, "
        f"{args.loss_threads} threads",
        "",
        _table(
            [
                "global batch B",
                "rows 2B",
                "ms",
                "peak MB",
                f"ms, chunk_size={args.chunk}",
                f"peak MB, chunk_size={args.chunk}",
                "machine (unchunked; chunked)",
            ],
            loss_rows,
        ),
        "",
    ]
    print("\n".join(section), flush=True)
    lines += section
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
