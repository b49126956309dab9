"""Overhead of the per-epoch geometry diagnostics on the default run.

Trains the default run (the packaged ``table1/quick/h-scl-beta``: Fashion-MNIST, 10k images, the
small convnet, batch 256) for a few epochs with the geometry monitor on, and prints per epoch the
training time (the peer, measured in the same run) next to the monitor's time and their ratio.
Then times the monitor's parts on the same probe set: the probe forward pass and the metrics.

    .venv/bin/python benchmarks/bench_diagnostics.py [--epochs 3] [--probe-size 512]

Target: diagnostics under 5% of the epoch time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hscl.engine.pretrain.monitor import diagnostics_hardening, measure_geometry, probe_set
from hscl.engine.pretrain.run import load_data, load_task, train
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.runs import read_metrics
from hscl.experiments.presets import resolve_config
from hscl.geometry import diagnose


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="table1/quick/h-scl-beta", help="a run config: a file, or a packaged one by name"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probe-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="timings of the monitor's parts")
    args = parser.parse_args(argv)

    overrides = [f"train.epochs={args.epochs}", f"diagnostics.probe_size={args.probe_size}", "train.progress=false"]
    config = load_config(resolve_config(args.config), overrides)
    print(
        f"default run: {args.config} with {' '.join(overrides)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average at start {_load()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        final = train(config, out)
        rows = read_metrics(out / "metrics.csv")
        print()
        print("| epoch | training s (peer) | diagnostics s | overhead | kNN monitor included in training s? |")
        print("|---:|---:|---:|---:|---|")
        ratios = []
        for r in rows:
            train_s, diag_s = float(r["epoch_seconds"]), float(r["diagnostics_seconds"])
            ratios.append(diag_s / train_s)
            print(f"| {r['epoch']} | {train_s:.2f} | {diag_s:.3f} | {100 * diag_s / train_s:.2f}% | no |")
        # the parts, on the trained model and the same probe set
        task, cfg = load_task(final)
        data = load_data(cfg)
        x, labels = probe_set(task, data, cfg)
        hardening = diagnostics_hardening(cfg, task.loss_fn)
        forward, metrics_s, total = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                task.model.eval()
                _, z = task.model(x)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            diagnose(z.view(labels.shape[0], 2, -1), labels, hardening)
            metrics_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            measure_geometry(task, x, labels, hardening)
            total.append(time.perf_counter() - start)
    median_train = statistics.median(float(r["epoch_seconds"]) for r in rows)
    print()
    print(f"monitor parts (median of {args.repeats}, probe {labels.shape[0]} x 2 views, float64 metrics):")
    print("| part | seconds | share of a median training epoch |")
    print("|---|---:|---:|")
    for name, values in (
        ("probe forward (eval mode)", forward),
        ("metrics (hscl.geometry.diagnose)", metrics_s),
        ("whole monitor (measure_geometry)", total),
    ):
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {100 * med / median_train:.2f}% |")
    worst = max(ratios)
    print(f"\nload average at end {_load()}")
    verdict = "PASS" if worst < 0.05 else "FAIL"
    print(
        f"{verdict}: diagnostics overhead per epoch < 5% of the epoch time "
        f"(worst epoch {100 * worst:.2f}%, median {100 * statistics.median(ratios):.2f}%)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
