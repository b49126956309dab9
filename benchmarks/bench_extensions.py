"""Cost of the loss extensions on the CPU: the memory of past rows, automatic hardness, multi-hot labels.

What it measures (forward + backward of ``hscl.losses.get_loss("h-scl", ...)`` on ``z`` of shape ``(B, 2, 128)``,
float32, labels from 10 classes; the median of repeated calls, the two sides of every ratio timed alternately
in one process so that the load of a shared machine weighs on both alike):

* memory: batch 256 x 2 views (512 rows) with a memory of K = 4096 and 16384 rows against K = 0. Target: the
  memory adds at most ``K / rows`` times the loss's time, i.e. ``time(K) / time(0) <= 1 + K / rows``; the peak
  resident memory added by a call (sampled every millisecond) stays ``O(chunk x (rows + K))``.
* auto: 512 and 4096 rows, ``beta="auto"`` (AutoExponential at its default target) against ``beta`` fixed at the
  value it chooses (the same loss without the choice). Target: choosing beta costs at most 15% of the loss's
  forward + backward.
* multi-hot: 4096 rows, one-hot ``(B, 10)`` labels against the same labels as class ids (no target: the
  multi-hot sets are read off a mask instead of class tables).

Run from the repository root::

    .venv/bin/python benchmarks/bench_extensions.py              # about a minute
    .venv/bin/python benchmarks/bench_extensions.py --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from hscl.losses import get_loss

D = 128


def _cpu() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(amx_bf16|avx512_bf16)\b", text)))
    return f"{model.group(1) if model else platform.processor()} ({', '.join(flags) or 'no bf16 hardware'})"


def _inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 2, D, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return z, labels


def _call(loss_fn, z, labels):
    x = z.clone().requires_grad_(True)
    loss_fn(x, labels).backward()


def _paired(a, b, seconds: float, min_calls: int) -> tuple[float, float]:
    """Median seconds of ``a()`` and ``b()``, called alternately after one warm-up call each."""
    a(), b()
    ta, tb = [], []
    began = time.perf_counter()
    while len(ta) < min_calls or time.perf_counter() - began < seconds:
        for f, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        if len(ta) >= 50:
            break
    return statistics.median(ta), statistics.median(tb)


def _peak_added_mb(f) -> float:
    """Resident memory added at the peak of ``f()`` (sampled every millisecond), in MB."""
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        f()
    finally:
        done.set()
        thread.join()
    return (peak[0] - base) / 1e6


def _memory_loss(K: int, chunk: int | None):
    """An h-scl module whose memory is full with K rows (from earlier calls)."""
    loss_fn = get_loss("h-scl", beta=1.0, memory_size=K, chunk_size=chunk) if K else get_loss("h-scl", beta=1.0)
    if K:
        filled = 0
        while filled < K:
            z, labels = _inputs(2048, seed=1000 + filled)
            loss_fn.eval()  # fill without the cost of a gradient: eval mode does not enqueue, so enqueue directly
            loss_fn._enqueue(z, labels)
            filled += 4096
        loss_fn.eval()  # timed calls use the memory without changing it
    return loss_fn


def _auto_overhead(batch: int, seconds: float) -> dict:
    """Forward + backward of ``beta="auto"`` against the same loss at the beta it chose, ``(batch, 2, D)``."""
    z, labels = _inputs(batch)
    auto = get_loss("h-scl", beta="auto")
    _call(auto, z, labels)
    chosen = get_loss("h-scl", beta=auto.hardening.beta)  # the same loss with beta fixed: the rest is the choice
    tf, ta = _paired(lambda: _call(chosen, z, labels), lambda: _call(auto, z, labels), seconds, 5)
    return {
        "rows": 2 * batch,
        "ms_fixed": 1e3 * tf,
        "ms_auto": 1e3 * ta,
        "overhead": ta / tf - 1,
        "beta": auto.hardening.beta,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=2.0, help="least time per paired measurement")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"cpu": _cpu(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"CPU: {results['cpu']}; torch {results['torch']}, {results['threads']} threads\n")

    # memory
    z, labels = _inputs(256)
    rows = 512
    base = _memory_loss(0, None)
    print("### Memory (batch 256 x 2 views = 512 rows, h-scl beta = 1, chunk_size 256)\n")
    print("| K | ms (K = 0) | ms (K) | time(K) / time(0) | bound 1 + K / rows | peak MB added | verdict |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    results["memory"] = []
    for K in (4096, 16384):
        with_memory = _memory_loss(K, 256)
        t0, tk = _paired(lambda: _call(base, z, labels), lambda: _call(with_memory, z, labels), args.seconds, 5)  # noqa: B023
        peak = _peak_added_mb(lambda: _call(with_memory, z, labels))  # noqa: B023
        ratio, bound = tk / t0, 1 + K / rows
        verdict = "PASS" if ratio <= bound else "FAIL"
        results["memory"].append(
            {"K": K, "ms0": 1e3 * t0, "msK": 1e3 * tk, "ratio": ratio, "bound": bound, "peak_mb": peak}
        )
        print(f"| {K} | {1e3 * t0:.1f} | {1e3 * tk:.1f} | {ratio:.2f} | {bound:.1f} | {peak:.0f} | {verdict} |")

    # automatic hardness: at batch 256 (all 512 x 512 similarities enter the solve) and at 4096 rows (2**19 of them)
    results["auto"] = []
    print('\n### Automatic hardness (beta="auto", default target, vs the same loss at the beta it chose)\n')
    print("| rows | ms beta fixed | ms auto | overhead | chosen beta | target <= 15% |")
    print("|---:|---:|---:|---:|---:|---|")
    for batch in (256, 2048):
        row = _auto_overhead(batch, args.seconds)
        results["auto"].append(row)
        verdict = "PASS" if row["overhead"] <= 0.15 else "FAIL"
        cells = f"{row['ms_fixed']:.1f} | {row['ms_auto']:.1f} | {100 * row['overhead']:.1f}% | {row['beta']:.3f}"
        print(f"| {row['rows']} | {cells} | {verdict} |")

    # multi-hot labels
    one_hot = torch.nn.functional.one_hot(labels, 10).bool()
    fixed = get_loss("h-scl", beta=1.0)
    tc, tm = _paired(lambda: _call(fixed, z, labels), lambda: _call(fixed, z, one_hot), args.seconds, 5)
    results["multi_hot"] = {"rows": 4096, "ms_class_ids": 1e3 * tc, "ms_multi_hot": 1e3 * tm, "ratio": tm / tc}
    print("\n### Multi-hot labels (4096 rows, one-hot (B, 10) vs class ids (B,), h-scl beta = 1)\n")
    print("| ms class ids | ms multi-hot | ratio |")
    print("|---:|---:|---:|")
    print(f"| {1e3 * tc:.1f} | {1e3 * tm:.1f} | {tm / tc:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
