"""Throughput of fine-tuning EfficientNet-Lite0 with SCHaNe on the CPU: images/s at 64, 96 and 224 px, fp32 and bf16.

What it measures: complete fine-tuning steps exactly as ``hscl finetune --backbone efficientnet-lite0`` and
``hscl reproduce schane --preset pretrained`` run them (:func:`hscl.engine.finetune.loop.train_step`): a batch of
``B`` uint8 Fashion-MNIST images (28 x 28 grey; random images when the data set is not on disk) augmented
twice on the fly (``V = 2`` views, the ``grey28`` preset with the identity normalisation a Backbone takes), the
backbone (``build_backbone("efficientnet-lite0", input_size=S)``, ImageNet weights; it repeats the grey channel,
resizes to ``S`` and normalises inside) in training mode, the zero-initialised linear head, the SCHaNe objective
``(1 - lam) CE + lam L_SCHaNe`` with lam = 0.9, beta = 1, temperature 0.5 on the features, backward, and the
Adam step. Images/s counts both views: ``steps * B * V / seconds``.

Four ways to run the same step, all in one process on the same images and initial weights:

* ``fp32``: float32, the default (contiguous) memory format;
* ``fp32 cl``: float32 with the model in ``channels_last`` (oneDNN's preferred layout for convolutions);
* ``bf16``, ``bf16 cl``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``; a win only where the
  CPU computes bf16 natively (AMX or AVX512-BF16, named in the output).

Protocol: each (size, mode) gets ``--warmup`` untimed steps once, then ``--repeats`` rounds each time every
(size, mode) in turn for ``--steps`` steps (round-robin, so a burst of load from another process weighs on every
mode alike); the median over rounds is reported. Each timed window also records the CPU that other processes
took (``psutil``: all busy CPU time minus this process's), as a share of the machine: on a shared machine a high
share means the numbers are slower than the hardware's.

Run from the repository root::

    .venv/bin/python benchmarks/bench_finetune.py                       # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_finetune.py --sizes 64,96 --threads 1 --json /tmp/bench_finetune.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import psutil
import torch

from hscl.data.augment import Augment, preset_for
from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.loop import FineTuneModel, FinetuneObjective, backbone_input, make_optimizer, train_step
from hscl.models import build_backbone

#: mode -> (bf16 autocast, channels_last)
MODES = {"fp32": (False, False), "fp32 cl": (False, True), "bf16": (True, False), "bf16 cl": (True, True)}


def _cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(amx_bf16|avx512_bf16)\b", text)))
    return {"model": model.group(1).strip() if model else platform.processor(), "bf16_flags": flags}


def _images(batch: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``batch`` uint8 images ``(B, 1, 28, 28)`` and labels: Fashion-MNIST's first ones, else random."""
    try:
        from hscl.data.images import load_dataset

        data = load_dataset("fashion-mnist")
        return data.train_images[:batch].clone(), data.train_labels[:batch].clone(), "fashion-mnist"
    except (OSError, ValueError, RuntimeError):
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return images, torch.arange(batch) % 10, "random"


class _Step:
    """One (size, mode): its own model, optimiser and augmentation, from the same initial weights."""

    def __init__(self, size: int, mode: str, config: FinetuneConfig) -> None:
        self.bf16, channels_last = MODES[mode]
        backbone = build_backbone("efficientnet-lite0", input_size=size)
        torch.manual_seed(0)
        self.model = FineTuneModel(backbone, 10, config.embedding).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.objective = FinetuneObjective.from_config(config)
        self.optimizer = make_optimizer(self.model, config)
        self.augment = Augment(backbone_input(backbone, preset_for(1, 28)))
        self.views = config.views

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            train_step(self.model, self.objective, self.optimizer, self.augment, images, labels, self.views)


def _busy(times) -> float:
    return sum(getattr(times, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _timed(step: _Step, images, labels, steps: int) -> tuple[float, float]:
    """Seconds per step over ``steps`` steps, and the share of the machine's CPU other processes took meanwhile."""
    me = psutil.Process()
    busy0, own0, began = _busy(psutil.cpu_times()), sum(me.cpu_times()[:2]), time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    wall = time.perf_counter() - began
    other = _busy(psutil.cpu_times()) - busy0 - (sum(me.cpu_times()[:2]) - own0)
    return wall / steps, max(other, 0.0) / (wall * (psutil.cpu_count() or 1))


def _table(results: list[dict], sizes: list[int], modes: list[str]) -> str:
    header = ["input (px)", *[f"{m} (img/s)" for m in modes]]
    fp32 = [m for m in modes if not MODES[m][0]]
    bf16 = [m for m in modes if MODES[m][0]]
    if fp32 and bf16:
        header.append("best bf16 / best fp32")
    header.append("others' CPU share")
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for size in sizes:
        cells = {r["mode"]: r for r in results if r["size"] == size}
        row = [str(size), *[f"{cells[m]['images_per_s']:.1f}" for m in modes]]
        if fp32 and bf16:
            best = max(cells[m]["images_per_s"] for m in bf16) / max(cells[m]["images_per_s"] for m in fp32)
            row.append(f"{best:.2f}x")
        row.append(f"{100 * statistics.mean(cells[m]['other_cpu'] for m in modes):.0f}%")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 8 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= 8 (e.g. 64,96,224), got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_int_list, default=[64, 96, 224], help="input sides in px (default 64,96,224)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)} (default: all)"
    )
    parser.add_argument("--batch", type=int, default=32, help="images per step B (each in 2 views; default 32)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per (size, mode) (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {', '.join(unknown) or 'empty list'}; allowed: {', '.join(MODES)}")
    if min(args.batch, args.steps, args.repeats) < 1 or args.batch < 2 or args.warmup < 0:
        parser.error("--batch must be >= 2, --steps and --repeats >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = _cpu()
    images, labels, source = _images(args.batch)
    config = FinetuneConfig(objective="schane", lam=0.9, beta=1.0, temperature=0.5, embedding="features", views=2)
    flags = ", ".join(cpu["bf16_flags"]) or "no native bf16"
    print(
        f"CPU: {cpu['model']} ({flags}); {psutil.cpu_count()} logical CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    )
    print(
        f"EfficientNet-Lite0 (ImageNet weights) fine-tuning step: {args.batch} {source} images x 2 views, SCHaNe "
        f"(lam 0.9, beta 1), forward + backward + Adam; median of {args.repeats} rounds of {args.steps} steps\n",
        flush=True,
    )
    cells = {(s, m): _Step(s, m, config) for s in args.sizes for m in modes}
    for (size, mode), step in cells.items():
        for _ in range(args.warmup):
            step(images, labels)
        print(f"  warmed up {size} px {mode}", flush=True)
    seconds: dict = {key: [] for key in cells}
    others: dict = {key: [] for key in cells}
    for r in range(args.repeats):
        for key, step in cells.items():
            per_step, other = _timed(step, images, labels, args.steps)
            seconds[key].append(per_step)
            others[key].append(other)
        print(f"  round {r + 1}/{args.repeats} done", flush=True)
    results = []
    for (size, mode), values in seconds.items():
        per_step = statistics.median(values)
        results.append(
            {
                "size": size,
                "mode": mode,
                "bf16": MODES[mode][0],
                "channels_last": MODES[mode][1],
                "seconds_per_step": per_step,
                "images_per_s": args.batch * config.views / per_step,
                "per_round_images_per_s": [args.batch * config.views / v for v in values],
                "other_cpu": statistics.mean(others[(size, mode)]),
            }
        )
    table = _table(results, args.sizes, modes)
    print(f"\n{table}\n")
    print("img/s counts both views; others' CPU share: CPU time other processes took during the timed steps.")
    if args.json:
        record = {
            "cpu": cpu,
            "logical_cpus": psutil.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "views": config.views,
            "images": source,
            "steps": args.steps,
            "repeats": args.repeats,
            "results": results,
            "table_markdown": table,
        }
        args.json.write_text(json.dumps(record, indent=2))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
