"""A training step under ``torch.compile`` (model + hscl loss, ``fullgraph=True``) against eager, on the CPU or a GPU.

What it measures
----------------
Milliseconds per complete training step (forward, loss, backward, Adam step) of the Table I quick setting:
``build_model("convnet", 1, widths=(16, 32, 64, 128))`` (projection 128, hidden 512, sphere output) on a fixed
batch of ``B`` Fashion-MNIST-sized grey images (28x28, random values: no data loading or augmentation, so the
step is model + loss only) with two views per sample (``2B`` images), ``get_loss(method, ...)`` on
``z.view(B, 2, -1)``, ``torch.optim.Adam(lr=1e-3, weight_decay=1e-6)``. Variants, each from the same initial
weights:

* ``eager``: the plain step.
* ``compiled``: ``torch.compile(forward_and_loss, fullgraph=True)`` (inductor), the loss inside the graph as
  its custom operator; backward and the optimiser step as usual.
* ``compiled model, eager loss``: only the model compiled (what a user without a compilable loss would do),
  for the loss node's share.

A second table times the loss alone (forward + backward on fixed unit rows ``(B, 2, 128)``), eager and
compiled with ``fullgraph=True``: the cost of the custom operator around the eager loss.

Protocol: before timing, the compiled loss value and gradient on the first batch are compared with eager's
(same weights; the first call compiles, its time is reported). Each variant then runs ``--warmup`` untimed
steps (default 3), then ``--steps`` x ``--repeats`` rounds (default 15 x 3) each time one step of every
variant, in a rotating order, so that a changing load of the machine falls on all variants alike; the
median (and the minimum) ms per step is reported. Run it on an idle machine: the numbers are wall-clock.

Run from the repository root::

    .venv/bin/python benchmarks/bench_compile.py            # B = 256, H-SCL(beta=1)
    .venv/bin/python benchmarks/bench_compile.py --quick    # smoke test: B = 32, 2 steps
    .venv/bin/python benchmarks/bench_compile.py --method h-ucl --beta 0.5 --batch 128
    python benchmarks/bench_compile.py --device cuda              # on a CUDA GPU (float32, torch's defaults)

On a GPU every timed call ends with ``torch.cuda.synchronize()``, so the times are the device's.

Output: a Markdown table (ms per step, speed-up over eager, compile time) with the CPU model (and the GPU's name)
and torch version.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import time

import torch

from hscl.losses import get_loss
from hscl.models import build_model


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _variant(name: str, model: torch.nn.Module, loss_fn: torch.nn.Module, B: int):
    """``(model, step(x, labels) -> loss)`` for one variant, on a copy of ``model``."""
    model = copy.deepcopy(model)

    def forward_and_loss(x, labels):
        _, z = model(x)
        return loss_fn(z.view(B, 2, -1), labels)

    if name == "compiled":
        forward_and_loss = torch.compile(forward_and_loss, fullgraph=True)
    elif name == "compiled model, eager loss":
        compiled_model = torch.compile(model, fullgraph=True)

        def forward_and_loss(x, labels):
            _, z = compiled_model(x)
            return loss_fn(z.view(B, 2, -1), labels)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)

    def step(x, labels):
        optimizer.zero_grad(set_to_none=True)
        loss = forward_and_loss(x, labels)
        loss.backward()
        optimizer.step()
        return loss

    return model, forward_and_loss, step


def _check(variants: dict, x, labels) -> list[str]:
    """Loss and gradient of each variant against eager's on the first batch (same weights, before any step)."""
    lines = []
    ref_model, ref_fn, _ = variants["eager"]
    ref_loss = ref_fn(x, labels)
    ref_grads = torch.autograd.grad(ref_loss, list(ref_model.parameters()))
    for name, (model, fn, _) in variants.items():
        if name == "eager":
            continue
        start = time.perf_counter()
        loss = fn(x, labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        seconds = time.perf_counter() - start
        loss, ref = float(loss.detach()), float(ref_loss.detach())
        num = sum(float((a - b).square().sum()) for a, b in zip(grads, ref_grads, strict=True)) ** 0.5
        den = sum(float(b.square().sum()) for b in ref_grads) ** 0.5
        lines.append(
            f"{name}: loss {loss:.7f} vs eager {ref:.7f} (rel. diff {abs(loss - ref) / abs(ref):.1e}), "
            f"gradient rel. diff {num / den:.1e}; "
            f"first call (compilation) {seconds:.1f} s"
        )
    return lines


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rounds(steps: dict, rounds: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """``warmup`` untimed calls of each ``steps[name]()``, then ``rounds`` rounds of one timed call of each, in a
    rotating order (a changing load of the machine falls on every variant alike): ms per call, each call waited
    for on a GPU."""
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = time.perf_counter()
            steps[name]()
            _synchronize(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def _table(times: dict[str, list[float]], what: str) -> None:
    eager_ms = statistics.median(times["eager"])
    print(f"\n| {what} | median ms | min ms | speed-up over eager (medians) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {eager_ms / median:.2f}x |")


def _loss_only(loss_fn, B: int, rounds: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """The loss alone (forward + backward on fixed unit rows ``(B, 2, 128)``): eager, compiled (inductor)."""
    z0 = torch.nn.functional.normalize(torch.randn(B, 2, 128), dim=-1).to(device)
    labels = torch.randint(0, 10, (B,)).to(device)
    compiled = torch.compile(loss_fn, fullgraph=True)

    def run(fn):
        z = z0.clone().requires_grad_(True)
        fn(z, labels).backward()

    return _rounds({"eager": lambda: run(loss_fn), "compiled": lambda: run(compiled)}, rounds, warmup, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="h-scl", help="hscl loss method (default h-scl)")
    parser.add_argument("--beta", default="1.0", help='hardening beta, a number or "auto" (default 1.0)')
    parser.add_argument("--batch", type=int, default=None, help="samples per batch B (default 256; 32 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and repeat (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant and repeat (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds of the variants (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: B=32, 2 steps, 1 repeat")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_compile: --device cuda needs a CUDA GPU, but torch {torch.__version__} sees none")
    device = torch.device(args.device)
    B = args.batch or (32 if args.quick else 256)
    steps = args.steps or (2 if args.quick else 15)
    repeats = args.repeats or (1 if args.quick else 3)
    beta = args.beta if args.beta == "auto" else float(args.beta)

    torch.manual_seed(0)
    model = build_model("convnet", 1, widths=(16, 32, 64, 128), projection_dim=128, hidden_dim=512).to(device)
    loss_fn = get_loss(args.method, beta=beta, temperature=0.5) if beta != 0 else get_loss(args.method)
    x = torch.rand(2 * B, 1, 28, 28).to(device)  # sample-major: rows 2i and 2i+1 are the two views of sample i
    labels = torch.randint(0, 10, (B,)).to(device)
    names = ["eager", "compiled", "compiled model, eager loss"]
    variants = {name: _variant(name, model, loss_fn, B) for name in names}
    load = os.getloadavg()[0]
    checks = _check(variants, x, labels)
    times = _rounds(
        {name: functools.partial(variants[name][2], x, labels) for name in names}, steps * repeats, args.warmup, device
    )
    loss_times = _loss_only(loss_fn, B, 2 * steps * repeats, args.warmup, device)
    load_end = os.getloadavg()[0]

    print(f"# bench_compile: a {args.method} training step, compiled vs eager\n")
    on = (
        f"GPU: {torch.cuda.get_device_name(device)} (float32, torch's default TF32 settings); "
        if device.type == "cuda"
        else ""
    )
    print(
        f"{on}CPU: {_cpu_model()}; {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; 1-min load average {load:.2f} at start, {load_end:.2f} at the end.\n"
    )
    print(
        f"Step: convnet(16,32,64,128) + {args.method}(beta={args.beta}, temperature 0.5), batch {B} x 2 views "
        f"(28x28 grey), Adam; {args.warmup} warm-up steps, then {steps * repeats} rounds of one timed step per "
        "variant (rotating order).\n"
    )
    for line in checks:
        print(f"- {line}")
    _table(times, "training step")
    _table(loss_times, f"the loss alone, forward + backward, ({B}, 2, 128), {2 * steps * repeats} rounds")


if __name__ == "__main__":
    main()
