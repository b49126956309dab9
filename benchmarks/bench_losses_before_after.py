"""bench_losses before / after: each configuration timed on two source trees of hscl in one run, alternating.

For every (rows, method) it runs ``bench_losses.py``'s worker (a fresh process, forward + backward, the median of
at least ``--repeats`` calls and 1 s) with ``PYTHONPATH=<before>``, then with ``PYTHONPATH=<after>``, and again,
``--rounds`` times (before, after, before, after, ...), so that a change of load on a shared machine weighs on
both sides alike. A side's time is the median over its rounds; ``h-scl / floor`` is the h-scl worker's own
paired ratio (both timed alternately in one process). Both sides run this benchmark's code; only the library
differs, and each worker reports the ``hscl`` it imported.

Run from the repository root, with the old version checked out beside it, e.g.::

    git worktree add ../hscl-before <commit>
    .venv/bin/python benchmarks/bench_losses_before_after.py --before ../hscl-before/src --threads 1
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from bench_losses import DISPLAY, METHODS, _mb, _parse_classes, _parse_rows, machine_line, parser, run_config

ROOT = Path(__file__).resolve().parents[1]
AFTER = str(ROOT / "src")
COMPARED = ("floor", "h-scl", "scl", "supcon", "h-scl-chunked")
NAMES = ("before", "after")


def _side(results: list[dict]) -> dict:
    """The median time over a side's rounds, its largest peak memory, its paired ratio and where hscl came from."""
    ok = [r for r in results if "median_ms" in r]
    if not ok:
        return {"error": (results[0].get("error") or results[0].get("skipped", "?")) if results else "not run"}
    side = {"median_ms": statistics.median(r["median_ms"] for r in ok), "peak_bytes": max(r["peak_bytes"] for r in ok)}
    ratios = [r["paired_ratio"] for r in ok if "paired_ratio" in r]
    if ratios:
        side["paired_ratio"] = statistics.median(ratios)
    side["hscl"] = sorted({r["hscl"] for r in ok if "hscl" in r})
    return side


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--before", required=True, help="the source folder of the old hscl (its src/)")
    p.add_argument("--after", default=AFTER, help=f"the source folder of the new hscl (default {AFTER})")
    p.add_argument("--rounds", type=int, default=2, help="before / after pairs per configuration")
    args = p.parse_args(argv)
    rows_list = args.rows or _parse_rows("4096,8192")
    classes = (args.classes or _parse_classes("10"))[0]
    methods = tuple(args.methods.split(",")) if args.methods else COMPARED
    if any(m not in METHODS for m in methods) or args.rounds < 1:
        p.error(f"--methods from {', '.join(METHODS)}; --rounds >= 1")
    print(machine_line(args), flush=True)
    print(f"\nbefore: {_relative(args.before)}\nafter: {_relative(args.after)}", flush=True)
    print(f"classes C = {classes}; {args.rounds} rounds of (before, after) per configuration\n", flush=True)
    sides: dict[tuple[int, str], dict[str, dict]] = {}
    for rows in rows_list:
        for method in methods:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for name, src in (("before", args.before), ("after", args.after)):
                    runs[name].append(run_config(method, rows, classes, args, src=os.path.abspath(src)))
            sides[rows, method] = {name: _side(results) for name, results in runs.items()}
            line = ", ".join(f"{n} {s.get('median_ms', float('nan')):.1f} ms" for n, s in sides[rows, method].items())
            print(f"  [{DISPLAY[method]:>13} rows={rows:>5}] {line}", file=sys.stderr, flush=True)
    print("| rows (2B) | method | before ms | after ms | after / before | before MB | after MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (rows, method), s in sides.items():
        before, after = s["before"], s["after"]
        change = "-"
        if "median_ms" in before and "median_ms" in after:
            change = f"{after['median_ms'] / before['median_ms']:.2f}x"
        cells = [str(rows), DISPLAY[method], _ms(before), _ms(after), change, _mb(before), _mb(after)]
        print("| " + " | ".join(cells) + " |")
    print("\n| rows (2B) | h-scl / floor before | h-scl / floor after |")
    print("|---:|---:|---:|")
    for rows in rows_list:
        s = sides.get((rows, "h-scl"))
        if s is not None:
            cells = [f"{s[n]['paired_ratio']:.2f}x" if "paired_ratio" in s[n] else "-" for n in ("before", "after")]
            print(f"| {rows} | {cells[0]} | {cells[1]} |")
    imported = {n: sorted({_relative(p) for s in sides.values() for p in s[n].get("hscl", [])}) for n in NAMES}
    print(f"\nhscl imported by the workers: before {imported['before']}, after {imported['after']}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end {load:.2f}")
    return 0


def _relative(path: str) -> str:
    """``path`` relative to the repository root (results hold no absolute path of a machine)."""
    return os.path.relpath(os.path.abspath(path), ROOT)


def _ms(side: dict) -> str:
    return f"{side['median_ms']:.1f}" if "median_ms" in side else "err"


if __name__ == "__main__":
    sys.exit(main())
