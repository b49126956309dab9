"""Benchmark hscl's contrastive losses against pytorch-metric-learning (PML) on CPU.

What it measures
----------------
For every (method, rows, classes) configuration, forward + backward of the loss on an embedding
tensor ``z`` of shape ``(B, 2, d)`` (``B`` samples x 2 views, ``d = 128``, float32, ``rows = 2B``)
with labels drawn uniformly from ``[0, classes)``:

* ``h-scl``          ``hscl.losses.get_loss("h-scl", beta=1.0)(z, labels)``
* ``scl``            ``get_loss("scl")(z, labels)``
* ``supcon``         ``get_loss("supcon")(z, labels)``
* ``pml-supcon``     ``pytorch_metric_learning.losses.SupConLoss(temperature=0.1)(emb, labels.repeat(2))``
* ``pml-ntxent``     ``pytorch_metric_learning.losses.NTXentLoss(temperature=0.5)(emb, arange(B).repeat(2))``
* ``h-scl chunked``  ``get_loss("h-scl", beta=1.0, chunk_size=1024)(z, labels)``
* ``floor``          the least any (rows x rows) loss with a gradient does:
                     ``S = Z @ Z.T`` (into a reused buffer), ``S.exp_()``, ``S @ Z`` on the
                     normalised rows ``Z`` of shape ``(rows, d)``; no autograd. ``h-scl / floor``
                     is h-scl's forward + backward time over it.

The two ratios of the targets (``h-scl / floor``, ``supcon / pml-supcon``) are timed in one
process, the two calls alternating (the ``h-scl`` worker also times ``floor``, the ``supcon`` worker
``pml-supcon``), so that the load of a shared machine weighs on both sides alike; the other columns
come from separate processes.

with ``emb = torch.cat(z.unbind(1))`` of shape ``(2B, d)`` (view-major, like hscl's own rows).

Each configuration runs in a fresh subprocess (``--worker``, ``benchmarks/bench_losses_worker.py``) so that
allocations of one method do not influence another. The worker builds ``z`` and the labels, runs the loss once
on a tiny batch (to initialise the thread pool and autograd without touching the measured sizes), records the
baseline RSS, then runs two full-size forward + backward calls while a background thread samples
RSS every millisecond. The reported peak memory is ``max(sampled peak RSS, ru_maxrss) - baseline``,
i.e. the resident memory *added* by the loss. With the sampler stopped, it then times at least
``--repeats`` calls and keeps going until 1 s has passed (at most 50 calls); time is the median
``time.perf_counter`` wall clock (the minimum is in the JSON). Shared virtual machines have CPU
steal, hence the many repeats. The thread count is torch's default (all cores).

hscl keeps reusable per-thread (chunk x rows) buffers between calls on CPU (freed by
``hscl.losses.release_workspace()``), so memory retained after a call is not comparable across
libraries; the peak is what matters and is what is reported.

Run from the repository root::

    .venv/bin/python benchmarks/bench_losses.py              # full run (several minutes)
    .venv/bin/python benchmarks/bench_losses.py --quick      # smoke: rows 512,1024,2048, C=10, no large
    .venv/bin/python benchmarks/bench_losses.py --rows 1024,4096 --classes 10 --repeats 5 --json out.json
    .venv/bin/python benchmarks/bench_losses.py --targets   # the targets: rows 4096,8192, C=10, floor/h-scl/supcon/PML

The output is Markdown: one table per number of classes, a large-batch table for chunked h-scl
(16384 and 32768 rows, C=10; PML is skipped there as it needs several O(rows^2) buffers), and a
block of PASS/FAIL targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import psutil
import torch

from bench_losses_worker import CHUNK, DIM, MIN_TIMING_S, run_worker

DEFAULT_ROWS = (512, 1024, 2048, 4096, 8192)
DEFAULT_CLASSES = (10, 100)
QUICK_ROWS = (512, 1024, 2048)
QUICK_CLASSES = (10,)
LARGE_ROWS = (16384, 32768)
LARGE_CLASSES = 10
METHODS = ("floor", "h-scl", "scl", "supcon", "pml-supcon", "pml-ntxent", "h-scl-chunked")
TARGET_METHODS = ("floor", "h-scl", "supcon", "pml-supcon")
TARGET_ROWS = (4096, 8192)
FLOOR_RATIO = 1.5  # target: h-scl forward + backward within 1.5x of the floor at 8192 rows, C = 10 (any thread count)
SUPCON_RATIO = 0.3  # target: supcon forward + backward at most 0.3x PML's SupConLoss at 4096 rows
DISPLAY = {m: m.replace("-chunked", " chunked") for m in METHODS}

# Rough upper bounds of the working memory per (anchor x row) element, in bytes, used only to skip
# configurations that could not fit in RAM (no swap on the target machine). Deliberately generous
# (measured: ~13 for h-scl/scl, ~21 for supcon, ~45 for pml-supcon, ~18 per chunk x rows for chunked).
_BYTES_PER_PAIR = {
    "floor": 8,
    "h-scl": 24,
    "scl": 24,
    "supcon": 40,
    "pml-supcon": 64,
    "pml-ntxent": 64,
    "h-scl-chunked": 24,
}
# PML's NTXentLoss compares every positive pair with every negative pair
# (``a2.unsqueeze(0) == a1.unsqueeze(1)``, a rows x rows*(rows-2) mask, then several float copies of
# it): memory grows like rows^3. Measured ~17 bytes per element at 512 rows (2.3 GB).
_NTXENT_BYTES_PER_TRIPLE = 24
_MEMORY_FRACTION = 0.7  # skip when the estimate exceeds this fraction of the available RAM

MB = 1e6
GIB = 2**30


# --------------------------------------------------------------------------------------------
# driver


def estimated_bytes(method: str, rows: int) -> float:
    block = min(CHUNK, rows) if method == "h-scl-chunked" else rows
    estimate = _BYTES_PER_PAIR[method] * block * rows + 64 * rows * DIM
    if method == "pml-ntxent":
        estimate += _NTXENT_BYTES_PER_TRIPLE * rows * rows * max(rows - 2, 0)
    return estimate


def run_config(method: str, rows: int, classes: int, args, src: str | None = None) -> dict:
    """One configuration in a fresh worker process; ``src``: the source folder its ``hscl`` is imported from
    (default: whatever the interpreter imports)."""
    base = {"method": method, "rows": rows, "classes": classes}
    estimate = estimated_bytes(method, rows)
    available = psutil.virtual_memory().available
    if estimate > _MEMORY_FRACTION * available:
        reason = f"estimated {estimate / GIB:.1f} GiB > {_MEMORY_FRACTION:.0%} of {available / GIB:.1f} GiB free"
        if method == "pml-ntxent":
            reason += " (PML NTXentLoss builds a rows x rows*(rows-2) pair mask: O(rows^3) memory)"
        return {**base, "skipped": reason}
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        str(rows),
        str(classes),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
        "--sample-interval-ms",
        str(args.sample_interval_ms),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = None
    if src is not None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timeout after {args.timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {**base, "error": f"exit {proc.returncode}: {tail}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {**base, "error": "no JSON in worker output"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(r: dict | None) -> str:
    if r is None:
        return "-"
    if "median_ms" in r:
        return f"{r['median_ms']:.1f}"
    return "skip" if "skipped" in r else "err"


def _mb(r: dict | None) -> str:
    if r is None:
        return "-"
    if "peak_bytes" in r:
        return f"{r['peak_bytes'] / MB:.0f}"
    return "skip" if "skipped" in r else "err"


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if a and b and "median_ms" in a and "median_ms" in b and b["median_ms"] > 0:
        return a["median_ms"] / b["median_ms"]
    return None


def _paired_ratio(a: dict | None, b: dict | None) -> float | None:
    """``a``'s time over its partner's, both timed alternately in ``a``'s process; else from two runs."""
    if a and "paired_ratio" in a:
        return a["paired_ratio"]
    return _ratio(a, b)


def _parse_rows(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 2 or v % 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive even integers, got {text!r}")
    return values


def _parse_classes(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=_parse_rows, default=None, help="comma-separated 2B values (even)")
    parser.add_argument("--classes", type=_parse_classes, default=None, help="comma-separated numbers of classes")
    parser.add_argument(
        "--repeats", type=int, default=7, help="at least this many timed calls (and >= 1 s) after the warm-up"
    )
    parser.add_argument("--quick", action="store_true", help="rows 512,1024,2048, classes 10, no large-batch section")
    parser.add_argument("--no-large", action="store_true", help="skip the large-batch chunked h-scl section")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="the targets only: rows 4096,8192, classes 10, methods floor,h-scl,supcon,pml-supcon",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in the workers (default: torch's, all cores)"
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--sample-interval-ms", type=float, default=1.0, help="RSS sampling period")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "ROWS", "CLASSES"), help=argparse.SUPPRESS)
    return parser


def machine_line(args) -> str:
    """The torch version, threads, CPU model, timing rule and load average, for the head of an output."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"torch {torch.__version__} | threads {args.threads or torch.get_num_threads()} | CPU: {_cpu_model()} "
        f"({os.cpu_count()} logical) | python {platform.python_version()} | d={DIM}, float32, 2 views | "
        f"timing: >= {args.repeats} calls and >= {MIN_TIMING_S:.0f} s per configuration, after warm-up | "
        f"load average at start {load:.2f}"
    )


def _print_tables(table: dict, rows_list, classes_list) -> None:
    header = (
        "| rows (2B) | floor ms | h-scl ms | h-scl / floor | h-scl MB | scl ms | supcon ms | pml-supcon ms "
        "| supcon / pml-supcon | pml-supcon MB | pml-ntxent ms | h-scl chunked ms | h-scl chunked MB "
        "| h-scl / pml-supcon (time) |"
    )
    for classes in classes_list:
        print(f"\n### C = {classes} classes\n")
        print(header)
        print("|" + "---:|" * 14)
        for rows in rows_list:
            g = {m: table.get((m, rows, classes)) for m in METHODS}
            ratio = _ratio(g["h-scl"], g["pml-supcon"])
            floor_ratio = _paired_ratio(g["h-scl"], g["floor"])
            supcon_ratio = _paired_ratio(g["supcon"], g["pml-supcon"])
            cells = [str(rows), _ms(g["floor"]), _ms(g["h-scl"])]
            cells += ["-" if floor_ratio is None else f"{floor_ratio:.2f}x", _mb(g["h-scl"]), _ms(g["scl"])]
            cells += [_ms(g["supcon"]), _ms(g["pml-supcon"])]
            cells += ["-" if supcon_ratio is None else f"{supcon_ratio:.2f}x", _mb(g["pml-supcon"])]
            cells += [_ms(g["pml-ntxent"]), _ms(g["h-scl-chunked"]), _mb(g["h-scl-chunked"])]
            cells += ["-" if ratio is None else f"{ratio:.2f}x"]
            print("| " + " | ".join(cells) + " |", flush=True)


def _large_section(args, results: list) -> dict[int, dict]:
    large_results: dict[int, dict] = {}
    for rows in LARGE_ROWS:
        r = run_config("h-scl-chunked", rows, LARGE_CLASSES, args)
        r["section"] = "large"
        results.append(r)
        large_results[rows] = r
        status = r.get("error") or r.get("skipped") or f"{_ms(r)} ms, {_mb(r)} MB"
        print(f"  [h-scl chunked rows={rows:>5} C={LARGE_CLASSES}] {status}", file=sys.stderr, flush=True)
    print(f"\n### Large batch: h-scl chunked (chunk_size={CHUNK}), C = {LARGE_CLASSES}, forward + backward\n")
    print("| rows (2B) | time ms | peak MB | peak GiB |")
    print("|---:|---:|---:|---:|")
    for rows, r in large_results.items():
        gib = f"{r['peak_bytes'] / GIB:.2f}" if "peak_bytes" in r else _mb(r)
        print(f"| {rows} | {_ms(r)} | {_mb(r)} | {gib} |")
    print("\n(PML skipped here: it needs several O(rows^2) buffers.)")
    return large_results


def _targets(table: dict, large_results: dict, rows_list, classes_list) -> list[tuple[str, bool | None, str]]:
    checks: list[tuple[str, bool | None, str]] = []
    name = "(a) h-scl time <= 0.5 x pml-supcon at every 2B >= 2048"
    ratios = [
        (rows, classes, _ratio(table.get(("h-scl", rows, classes)), table.get(("pml-supcon", rows, classes))))
        for classes in classes_list
        for rows in rows_list
        if rows >= 2048
    ]
    measured = [x for x in ratios if x[2] is not None]
    if not measured:
        checks.append((name, None, "not measured"))
    else:
        worst = max(measured, key=lambda x: x[2])
        detail = f"worst ratio {worst[2]:.2f} at rows={worst[0]}, C={worst[1]}"
        if len(measured) < len(ratios):
            detail += f"; {len(ratios) - len(measured)} configuration(s) missing"
        checks.append((name, len(measured) == len(ratios) and all(x[2] <= 0.5 for x in measured), detail))
    name = "(b) unchunked h-scl peak at 8192 rows < 1.5 GB"
    peaks = [(c, table.get(("h-scl", 8192, c))) for c in classes_list if 8192 in rows_list]
    vals = [(c, r.get("peak_bytes")) for c, r in peaks if r is not None]
    if not vals:
        checks.append((name, None, "not measured"))
    else:
        detail = ", ".join(f"C={c}: {'n/a' if v is None else f'{v / 1e9:.3f} GB'}" for c, v in vals)
        checks.append((name, all(v is not None and v < 1.5e9 for _, v in vals), detail))
    name = "(c) chunked h-scl peak at 32768 rows < 2 GiB (fwd+bwd)"
    r32 = large_results.get(32768)
    if r32 is None:
        checks.append((name, None, "not measured"))
    else:
        v = r32.get("peak_bytes")
        detail = "n/a: " + (r32.get("error") or r32.get("skipped", "")) if v is None else f"{v / GIB:.3f} GiB"
        checks.append((name, v is not None and v < 2 * GIB, detail))
    for name, num, den, rows, limit in (
        (f"(d) h-scl forward+backward <= {FLOOR_RATIO:g} x floor at 8192 rows", "h-scl", "floor", 8192, FLOOR_RATIO),
        (f"(e) supcon forward+backward <= {SUPCON_RATIO:g} x pml-supcon at 4096 rows", "supcon", "pml-supcon", 4096,
         SUPCON_RATIO),
    ):  # fmt: skip
        found = [(c, _paired_ratio(table.get((num, rows, c)), table.get((den, rows, c)))) for c in classes_list]
        found = [(c, x) for c, x in found if x is not None]
        if not found:
            checks.append((name, None, f"not measured (needs --rows {rows} with {num} and {den})"))
        else:
            detail = ", ".join(f"C={c}: {x:.2f}x" for c, x in found)
            checks.append((name, all(x <= limit for _, x in found), detail))
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser().error("--repeats and --threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        method, rows, classes = args.worker[0], int(args.worker[1]), int(args.worker[2])
        if method not in METHODS:
            parser().error(f"unknown method {method!r}")
        result = run_worker(method, rows, classes, args.repeats, args.seed, args.sample_interval_ms / 1e3)
        print(json.dumps(result), flush=True)
        return 0

    rows_list = args.rows or (TARGET_ROWS if args.targets else QUICK_ROWS if args.quick else DEFAULT_ROWS)
    classes_list = args.classes or (QUICK_CLASSES if args.quick or args.targets else DEFAULT_CLASSES)
    methods = tuple(args.methods.split(",")) if args.methods else TARGET_METHODS if args.targets else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser().error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    print(machine_line(args), flush=True)
    print(
        "\nTime: median wall clock of forward+backward (ms). Memory: peak RSS added by the loss in a fresh "
        "process, MB = 1e6 bytes. hscl keeps reusable per-thread buffers between calls "
        "(hscl.losses.release_workspace() frees them), so the peak is what matters. "
        "h-scl / floor and supcon / pml-supcon: both sides timed alternately in one process.",
        flush=True,
    )
    results: list[dict] = []
    table: dict[tuple[str, int, int], dict] = {}
    for classes in classes_list:
        for rows in rows_list:
            for method in methods:
                r = table[method, rows, classes] = run_config(method, rows, classes, args)
                results.append(r)
                status = r.get("error") or r.get("skipped") or f"{_ms(r)} ms, {_mb(r)} MB"
                print(f"  [{DISPLAY[method]:>13} rows={rows:>5} C={classes:>3}] {status}", file=sys.stderr, flush=True)
    _print_tables(table, rows_list, classes_list)
    notes = [r for r in results if "skipped" in r or "error" in r]
    if notes:
        print("\nskip / err:")
        for r in notes:
            print(f"- {DISPLAY[r['method']]} rows={r['rows']} C={r['classes']}: {r.get('skipped') or r.get('error')}")
    large = not (args.quick or args.no_large or args.targets)
    large_results = _large_section(args, results) if large else {}
    print("\n### Targets\n")
    checks = _targets(table, large_results, rows_list, classes_list)
    for name, ok, detail in checks:
        print(f"- {'SKIP' if ok is None else ('PASS' if ok else 'FAIL')} {name}: {detail}")
    if args.json:
        payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model(), "dim": DIM}
        payload |= {"repeats": args.repeats, "results": results}
        payload["targets"] = [{"name": n, "pass": ok, "detail": d} for n, ok, d in checks]
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
        print(f"\n(results written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
