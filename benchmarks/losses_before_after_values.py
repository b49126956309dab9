"""Loss values and gradients of two source trees of hscl on one option grid, compared.

A restructuring must not move a number: this runs the same grid (every method through ``contrastive_loss``,
``supcon_loss``, the registry's losses and the graph objective; hardenings, M, tau_plus, reductions, chunking,
multi-hot labels, a memory) under an older tree and this one, each in its own process, and prints the largest
differences of the values and of the gradients, in float64 and float32.

    .venv/bin/python benchmarks/losses_before_after_values.py --before ../before/src

``--before`` is the ``src`` folder of the older tree (``mkdir ../before && git archive <commit> src | tar -x -C
../before``).
Only the public API is called, with keywords. Left out on purpose: what changed by design since the older trees
(``beta="auto"``, whose definition changed; batches of one or two rows, now the defined 0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BATCHES = (12, 400)  # one block, and several blocks of the kernels (800 rows)


def _grid():
    """(name, callable(z, labels, memory) -> loss) over the options, built from the hscl on sys.path."""
    from hscl import Exponential, Threshold, contrastive_loss, get_loss, supcon_loss
    from hscl.losses import local_global_loss

    hardenings = {
        "none": None,
        "exp(0.5)": Exponential(beta=0.5),
        "exp(2)": Exponential(beta=2.0),
        "thr(0.8)": Threshold(tau=0.8),
        "user sigmoid": lambda g: torch.sigmoid(3 * g) + 0.1,  # any non-decreasing eta: the generic path
    }
    cases = []
    for pos, neg in [("views", "unsupervised"), ("views", "supervised"), ("labels", "supervised")]:
        for hname, h in hardenings.items():
            for M in [None, 7.0, "count"]:
                for tau_plus in [0.0, 0.1] if neg == "unsupervised" else [0.0]:
                    for reduction in ["mean", "sum", "none", "anchor_mean"]:
                        for chunk in [None, 5]:
                            kw = dict(positives=pos, negatives=neg, hardening=h, temperature=0.3, M=M)
                            kw.update(tau_plus=tau_plus, reduction=reduction, chunk_size=chunk)
                            name = f"contrastive {pos}/{neg} {hname} M={M} tau+={tau_plus} {reduction} chunk={chunk}"
                            cases.append((name, lambda z, y, m, kw=kw: contrastive_loss(z, y, **kw)))
    for h in ["none", "exp(2)", "thr(0.8)"]:  # a memory (labelled rows) and multi-hot labels
        kw = dict(positives="labels", negatives="supervised", hardening=hardenings[h], temperature=0.3)
        cases.append((f"memory {h}", lambda z, y, m, kw=kw: contrastive_loss(z, y, memory=m, **kw)))
        cases.append((f"multi-hot {h}", lambda z, y, m, kw=kw: contrastive_loss(z, _multi_hot(y), **kw)))
    for chunk in [None, 5]:
        cases.append((f"supcon_loss chunk={chunk}", lambda z, y, m, c=chunk: supcon_loss(z, y, chunk_size=c)))
        cases.append((f"simclr (no labels) chunk={chunk}", lambda z, y, m, c=chunk: supcon_loss(z, None, chunk_size=c)))
    for method, kw in [
        ("ucl", {}),
        ("h-ucl", {"beta": 1.0}),
        ("scl", {}),
        ("h-scl", {"beta": 1.0}),
        ("h-scl", {"tau": 1.2}),
        ("supcon", {}),
        ("schane", {"beta": 1.0}),
    ]:
        loss = get_loss(method, temperature=0.5, **kw)
        cases.append((f"get_loss({method!r}, {kw})", lambda z, y, m, f=loss: f(z, y)))
    for neg in ["unsupervised", "supervised"]:
        for beta in [None, 1.0]:
            for est in ["jsd", "infonce"]:
                name = f"local_global {neg} beta={beta} {est}"
                cases.append((name, lambda z, y, m, n=neg, b=beta, e=est: _graph(local_global_loss, z, y, n, b, e)))
    return cases


def _multi_hot(y):
    hot = torch.nn.functional.one_hot(y, 4).bool()
    return hot | torch.nn.functional.one_hot((y + 1) % 4, 4).bool()  # two classes per sample


def _graph(fn, z, y, negatives, beta, estimator):
    B = z.shape[0]
    local = z.reshape(-1, z.shape[-1])  # (2B, d): 2 nodes per graph
    batch = torch.arange(B).repeat_interleave(2)
    return fn(local, z[:, 0], batch, y, negatives=negatives, beta=beta, estimator=estimator)


def _worker(out: str) -> None:
    """Run the grid with the hscl on sys.path; save values and gradients (tensors only)."""
    import hscl

    results = {"hscl": [hscl.__file__]}
    for dtype, B in [(t, b) for t in (torch.float64, torch.float32) for b in BATCHES]:
        g = torch.Generator().manual_seed(0)
        z0 = torch.randn(B, 2, 16, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (B,), generator=g)
        mem = (torch.randn(6, 16, generator=g, dtype=torch.float64).to(dtype), torch.randint(0, 4, (6,), generator=g))
        for name, fn in _grid():
            z = z0.to(dtype).requires_grad_(True)
            value = fn(z, y, mem)
            value = value[0] if isinstance(value, tuple) else value
            (grad,) = torch.autograd.grad(value.sum(), z)
            results[f"{dtype} | B={B} {name}"] = [value.detach(), grad]
    torch.save(results, out)


def _run(src: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", out], env=env, check=True)
    return torch.load(out, map_location="cpu", weights_only=True)


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if b.numel() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the older tree's src folder")
    parser.add_argument("--after", default=str(HERE.parent / "src"), help="this tree's src folder (default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = _run(args.before, f"{tmp}/before.pt")
        after = _run(args.after, f"{tmp}/after.pt")
    print(f"before: {os.path.relpath(before.pop('hscl')[0])}\nafter:  {os.path.relpath(after.pop('hscl')[0])}")
    if set(before) != set(after):
        raise SystemExit(f"the grids differ: {sorted(set(before) ^ set(after))[:5]}")
    sizes = " and ".join(map(str, BATCHES))
    print(f"{len(before) // 2} configurations per dtype (batches of {sizes} samples, 2 views, d = 16)")
    print("values and gradients of z; relative difference = max |after - before| / max |before|\n")
    print("| dtype | configurations | values: max rel. diff | worst | gradients: max rel. diff | worst |")
    print("|---|---:|---:|---|---:|---|")
    verdicts = []
    for dtype in ["torch.float64", "torch.float32"]:
        keys = [k for k in before if k.startswith(dtype)]
        dv = {k: _rel(after[k][0], before[k][0]) for k in keys}
        dg = {k: _rel(after[k][1], before[k][1]) for k in keys}
        kv, kg = max(dv, key=dv.get), max(dg, key=dg.get)
        cut = len(dtype) + 3
        print(f"| {dtype[6:]} | {len(keys)} | {dv[kv]:.1e} | {kv[cut:]} | {dg[kg]:.1e} | {kg[cut:]} |")
        for what, worst in (("values", dv[kv]), ("gradients", dg[kg])):
            verdicts.append(f"{dtype[6:]} {what}: {'within' if worst <= 1e-6 else 'NOT within'} 1e-6 ({worst:.1e})")
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker(sys.argv[sys.argv.index("--worker") + 1])
    else:
        main()
