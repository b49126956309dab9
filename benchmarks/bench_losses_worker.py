"""The worker of ``benchmarks/bench_losses.py``: one configuration (method, rows, classes) timed in its own process.

It builds ``z`` and the labels, runs the loss once on a tiny batch (to initialise the thread pool and autograd
without touching the measured sizes), records the baseline RSS, then runs two full-size forward + backward calls
while a background thread samples RSS every millisecond; with the sampler stopped, it times at least
``repeats`` calls and keeps going until 1 s has passed (at most 50 calls). A method with a partner (the other
side of a target ratio) alternates its calls with the partner's. ``bench_losses.py --worker`` runs it.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import threading
import time

import psutil
import torch

DIM = 128
CHUNK = 1024
MIN_TIMING_S = 1.0  # keep timing a configuration for at least this long ...
MAX_REPEATS = 50  # ... up to this many calls
#: the ratios of the targets are timed in one process, alternating the two calls, so that a change
#: of load on a shared machine hits both sides alike
PARTNER = {"h-scl": "floor", "supcon": "pml-supcon"}


# --------------------------------------------------------------------------------------------
# worker: one configuration, in its own process


def _make_loss(method: str):
    """A callable ``fn(z, labels) -> scalar loss`` for ``method``."""
    if method.startswith("pml-"):
        from pytorch_metric_learning import losses as pml_losses

        if method == "pml-supcon":
            pml = pml_losses.SupConLoss(temperature=0.1)

            def fn(z, labels):
                return pml(torch.cat(z.unbind(1)), labels.repeat(2))

        else:
            pml = pml_losses.NTXentLoss(temperature=0.5)

            def fn(z, labels):
                ids = torch.arange(z.shape[0], device=z.device).repeat(2)
                return pml(torch.cat(z.unbind(1)), ids)

        return fn

    if method == "floor":
        buffers: dict = {}

        def fn(z, labels):
            Z = torch.nn.functional.normalize(torch.cat(z.detach().unbind(1)), dim=1)  # (rows, d)
            S = buffers.get(Z.shape[0])
            if S is None:
                S = buffers[Z.shape[0]] = torch.empty(Z.shape[0], Z.shape[0])
            torch.mm(Z, Z.T, out=S).exp_()
            return S @ Z

        return fn

    from hscl.losses import get_loss

    if method == "h-scl":
        return get_loss("h-scl", beta=1.0)
    if method == "h-scl-chunked":
        return get_loss("h-scl", beta=1.0, chunk_size=CHUNK)
    return get_loss(method)


class _RssSampler(threading.Thread):
    """Samples the process RSS every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = self.process.memory_info().rss
            self.samples += 1
            if rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _step(fn, z: torch.Tensor, labels: torch.Tensor) -> float:
    """One forward + backward; returns its wall-clock seconds."""
    z.grad = None
    t0 = time.perf_counter()
    loss = fn(z, labels)
    if loss.requires_grad:
        loss.backward()
    elapsed = time.perf_counter() - t0
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError("non-finite loss")
    return elapsed


def run_worker(method: str, rows: int, classes: int, repeats: int, seed: int, interval: float) -> dict:
    batch = rows // 2
    fn = _make_loss(method)
    gen = torch.Generator().manual_seed(seed)

    # warm-up of the library / thread pool / autograd on a tiny batch, before the baseline
    tiny = torch.randn(8, 2, DIM, generator=gen).requires_grad_()
    _step(fn, tiny, torch.randint(0, classes, (8,), generator=gen))
    del tiny

    z = torch.randn(batch, 2, DIM, generator=gen).requires_grad_()
    labels = torch.randint(0, classes, (batch,), generator=gen)
    gc.collect()
    baseline = psutil.Process().memory_info().rss

    # memory pass: the first full-size call (it allocates everything a call needs) and one more,
    # with the RSS sampler running; the sampler is off during timing so it does not compete for cores
    sampler = _RssSampler(interval)
    sampler.start()
    try:
        warmup = _step(fn, z, labels)
        _step(fn, z, labels)
    finally:
        sampler.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    # timing pass: at least `repeats` calls and at least MIN_TIMING_S seconds (this VM has CPU steal);
    # with a partner (the other side of a target ratio), its calls alternate with these
    partner = PARTNER.get(method)
    partner_fn = _make_loss(partner) if partner else None
    if partner_fn is not None:
        _step(partner_fn, z, labels)
    times: list[float] = []
    partner_times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - started < MIN_TIMING_S and len(times) < MAX_REPEATS):
        times.append(_step(fn, z, labels))
        if partner_fn is not None:
            partner_times.append(_step(partner_fn, z, labels))
    peak = max(sampler.peak, maxrss)
    hscl = sys.modules.get("hscl")
    paired = {"hscl": hscl.__file__} if hscl is not None else {}  # which source tree ran
    if partner_times:
        paired |= {
            "partner": partner,
            "partner_median_ms": statistics.median(partner_times) * 1e3,
            "paired_ratio": statistics.median(times) / statistics.median(partner_times),
        }
    return {
        **paired,
        "method": method,
        "rows": rows,
        "classes": classes,
        "dim": DIM,
        "threads": torch.get_num_threads(),
        "repeats": len(times),
        "warmup_s": warmup,
        "times_s": times,
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "baseline_rss": baseline,
        "sampled_peak_rss": sampler.peak,
        "ru_maxrss": maxrss,
        "rss_samples": sampler.samples,
        "peak_bytes": max(peak - baseline, 0),
    }
