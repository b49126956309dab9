"""The loss rows of ``benchmarks/gpu_check.py``: at each size a floor, PML's SupConLoss, then hscl's H-SCL, SCL and
SupCon, each forward + backward timed, its peak memory measured and its value and gradient checked against the
float64 reference of ``gpu_check_reference.py`` (and SupCon's against PML's on the same inputs); at the smallest
size also the three hscl losses with 3 labels in 4 chunks, where the fused kernel splits each block of anchors
into several tiles.

A row FAILS when a check fails: a non-finite value or gradient, a relative error to the float64 reference above
:data:`TOLERANCE`, a SupCon / PML difference above :data:`PML_TOLERANCE`, or (on CUDA, where the allocator's peak is
exact) a peak above the memory budget that chose its ``chunk_size``. The time as a multiple of the floor and of
PML's is reported, not checked.
"""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from gpu_check_common import CLASSES, DIM, MB, SkipError, current, failure, free_bytes, one_line, size_text, sync
from gpu_check_reference import LOSS_PARAMS, reference_chunk, reference_loss, rows_of

HSCL_METHODS = ("h-scl", "scl", "supcon")
PML_TEMPERATURE = 0.1
#: working memory per (anchor x row) entry of a forward + backward, in bytes, to choose chunk_size and skips
#: (generous: on an H200 h-scl took ~11, supcon ~7, PML's SupConLoss ~45)
BYTES_PER_PAIR = {"h-scl": 24, "scl": 24, "supcon": 40, "pml-supcon": 64}
MIN_CHUNK = 64
#: the largest relative error to the float64 reference, by the float32 matmul precision of the device (a probe
#: decides: "ieee" float32, or "reduced" (TF32 / bf16 inputs, the CUDA setting that training turns on)); on an
#: AMD EPYC (ieee) 8192 rows gave ~1e-7 (loss) and ~5e-7 (gradient); TF32 inputs, emulated, ~4e-4 (gradient)
TOLERANCE = {"ieee": {"loss": 1e-5, "grad": 1e-4}, "reduced": {"loss": 2e-3, "grad": 1e-2}}
#: the largest relative difference between hscl's SupCon (times base_temperature / temperature) and PML's
PML_TOLERANCE = {"ieee": {"loss": 1e-5, "grad": 1e-4}, "reduced": {"loss": 2e-3, "grad": 2e-2}}


def loss_names(rows: tuple[int, ...]) -> list[str]:
    """The names of the loss rows, in the order they run."""
    names = []
    for r in rows:
        names += [f"floor {r}"] + [f"loss {m} {r}" for m in ("pml-supcon", *HSCL_METHODS)]
        if r == rows[0]:
            names += [f"loss {m} {r} 3-class" for m in HSCL_METHODS]
    return names


def matmul_mode(device: torch.device) -> str:
    """``"ieee"`` when a float32 matmul on ``device`` keeps float32's mantissa, else ``"reduced"`` (TF32 or bf16
    inputs, or torch's flags allow TF32): ``1 + 2**-15`` needs 15 mantissa bits, TF32 keeps 10 and bf16 7."""
    a = torch.full((1024, DIM), 1.0 + 2.0**-15, device=device)  # the shape of the losses' products
    value = float((a @ torch.ones(DIM, 1024, device=device))[0, 0])
    return "ieee" if value == DIM * (1.0 + 2.0**-15) and not _tf32_flag(device) else "reduced"


def _tf32_flag(device: torch.device) -> bool:
    """Whether torch's settings allow TF32 float32 matmuls on CUDA (either API; False where reading one fails)."""
    if device.type != "cuda":
        return False
    matmul = torch.backends.cuda.matmul
    for read in (lambda: matmul.fp32_precision == "tf32", lambda: bool(matmul.allow_tf32)):
        try:
            if read():
                return True
        except (AttributeError, RuntimeError):
            pass
    return False


def plan_chunk(method: str, rows: int, budget: float) -> int | None:
    """hscl's ``chunk_size`` for a memory budget: None when the unchunked estimate fits, else the largest power of
    two whose estimate fits (at least :data:`MIN_CHUNK`)."""
    per_row = BYTES_PER_PAIR[method] * rows
    if per_row * rows <= budget:
        return None
    chunk = 2 ** int(math.log2(max(budget / per_row, 1)))
    if chunk < MIN_CHUNK:
        raise SkipError(f"the {size_text(budget)} budget leaves chunk_size {chunk} < {MIN_CHUNK} at {rows} rows")
    return chunk


def floor_chunk(rows: int, budget: float) -> int:
    """Rows per block of the floor: the largest power of two whose float32 (block x rows) matrix fits."""
    fit = max(1, int(budget // (4 * rows)))
    return min(rows, 2 ** int(math.log2(fit)))


def loss_inputs(rows: int, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` ``(rows / 2, 2, DIM)`` float32 requiring grad and labels ``(rows / 2,)`` of ``classes`` labels."""
    torch.manual_seed(rows + classes)
    z = torch.randn(rows // 2, 2, DIM, device=device).requires_grad_(True)
    return z, torch.randint(0, classes, (rows // 2,), device=device)


def make_loss(method: str, chunk_size: int | None):
    """``fn(z, labels) -> loss`` with z ``(B, 2, d)`` and labels ``(B,)``."""
    if method == "pml-supcon":
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=PML_TEMPERATURE)
        return lambda z, labels: pml(rows_of(z), labels.repeat(2))
    from hscl.losses import get_loss

    kwargs = dict(LOSS_PARAMS[method])
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    return get_loss(method, **kwargs)


def relative(a, b) -> float:
    """``|a - b| / |b|`` for numbers, the Frobenius-norm ratio for tensors (in float64)."""
    if isinstance(a, torch.Tensor):
        return float((a.double() - b.double()).norm() / b.double().norm())
    return abs(a - b) / abs(b)


class _RssSampler(threading.Thread):
    """The largest RSS of this process, sampled every millisecond while running."""

    def __init__(self) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return self.peak - self.baseline


def _trim_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim``), so that the RSS increase of the
    next call is its own peak rather than hidden by memory freed earlier in this process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class LossBench:
    """The loss rows of one device; the floor and PML rows of a size leave their numbers for the hscl rows."""

    def __init__(self, device: torch.device, sizes) -> None:
        self.device = device
        self.sizes = sizes
        self.floors: dict[int, float] = {}  # rows -> floor ms
        self.pml: dict[int, dict] = {}  # rows -> PML's inputs, value, gradient and ms

    def _fresh(self) -> None:
        from hscl.losses import release_workspace

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        release_workspace()
        _trim_heap()

    def _warm(self, call) -> tuple[torch.Tensor, float]:
        """One call (the warm-up) with its peak memory: on CUDA ``max_memory_allocated`` above what was allocated
        before, on the CPU the peak RSS increase."""
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            value = call()
            sync(self.device)
            return value, torch.cuda.max_memory_allocated(self.device) - base
        sampler = _RssSampler()
        sampler.start()
        try:
            value = call()
        finally:
            peak = sampler.stop()
        return value, peak

    def _time(self, call) -> list[float]:
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - began < self.sizes.min_timing_s and len(times) < 20):
            start = time.perf_counter()
            call()
            sync(self.device)
            times.append(time.perf_counter() - start)
        return times

    def floor(self, rows: int) -> tuple[str, str, dict]:
        """The least a (rows x rows) loss with a gradient does: ``S = Z Z^T``, ``exp(S)``, ``S @ Z`` on normalised
        float32 rows, in blocks of rows when the (rows x rows) matrix would not fit in the memory budget."""
        self._fresh()
        chunk = floor_chunk(rows, self.sizes.loss_memory_budget)
        z, _ = loss_inputs(rows, CLASSES, self.device)
        Z = F.normalize(rows_of(z.detach()), dim=1)
        S = torch.empty(chunk, rows, device=self.device)
        out = torch.empty_like(Z)

        def call():
            for a in range(0, rows, chunk):
                b = min(rows, a + chunk)
                block = torch.mm(Z[a:b], Z.T, out=S[: b - a]).exp_()
                torch.mm(block, Z, out=out[a:b])
            return out

        self._warm(call)
        if not bool(torch.isfinite(out).all()):
            raise failure("non-finite floor output")
        ms = 1000 * statistics.median(self._time(call))
        self.floors[rows] = ms
        key = f"{ms:.1f} ms" + (f", blocks of {chunk} rows" if chunk < rows else "")
        return str(current(self.device)), key, {"rows": rows, "median_ms": ms, "chunk": chunk}

    def pml_row(self, rows: int) -> tuple[str, str, dict]:
        """pytorch-metric-learning's SupConLoss; its value and gradient stay for hscl's SupCon row."""
        try:
            import pytorch_metric_learning  # noqa: F401
        except ImportError as err:
            raise SkipError(f"pytorch-metric-learning is not installed ({err})") from err
        self._fresh()
        need, free = BYTES_PER_PAIR["pml-supcon"] * rows * rows, free_bytes(self.device)
        if need > (1.0 if self.device.type == "cuda" else 0.5) * free:
            raise SkipError(
                f"too large: PML SupConLoss needs ~{size_text(need)} at {rows} rows, {size_text(free)} free"
            )
        z, labels = loss_inputs(rows, CLASSES, self.device)
        fn = make_loss("pml-supcon", None)
        try:
            value, peak, times = self._run(fn, z, labels)
        except torch.OutOfMemoryError as err:
            raise SkipError(f"OOM at {rows} rows ({one_line(err, 80)})") from err
        finally:
            self._fresh()
        ms = 1000 * statistics.median(times)
        self.pml[rows] = {"z": z, "labels": labels, "value": float(value), "grad": z.grad.detach().clone(), "ms": ms}
        metrics = self._metrics(rows, None, times, peak, float(value))
        return (
            str(current(self.device)),
            f"{ms:.1f} ms, {peak / MB:.0f} MB" + self._vs_floor(rows, ms, metrics),
            metrics,
        )

    def _run(self, fn, z, labels) -> tuple[torch.Tensor, float, list[float]]:
        def call():
            z.grad = None
            loss = fn(z, labels)
            loss.backward()
            return loss

        value, peak = self._warm(call)
        if not (bool(torch.isfinite(value.detach())) and bool(torch.isfinite(z.grad).all())):
            raise failure(f"non-finite loss or gradient ({float(value):.4g})")
        grad = z.grad.detach().clone()
        times = self._time(call)
        z.grad = grad
        return value.detach(), peak, times

    def _metrics(self, rows: int, chunk: int | None, times: list[float], peak: float, value: float) -> dict:
        return {
            "rows": rows,
            "dim": DIM,
            "chunk_size": chunk,
            "median_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times),
            "calls": len(times),
            "peak_mb": peak / MB,
            "peak_kind": "cuda max_memory_allocated" if self.device.type == "cuda" else "peak RSS increase",
            "loss": value,
        }

    def _vs_floor(self, rows: int, ms: float, metrics: dict) -> str:
        floor = self.floors.get(rows)
        if not floor:
            return ""
        metrics["ratio_to_floor"] = ms / floor
        return f", {ms / floor:.2f}x floor"

    def hscl_row(self, method: str, rows: int, classes: int = CLASSES, chunk: int | None = None) -> tuple:
        """hscl's ``method`` at ``rows``: timed, its peak memory against the budget, its value and gradient against
        the float64 reference (SupCon's also against PML's on the same inputs). ``chunk`` None: from the budget."""
        self._fresh()
        budget = self.sizes.loss_memory_budget
        chunk = plan_chunk(method, rows, budget) if chunk is None else chunk
        need = BYTES_PER_PAIR[method] * (chunk or rows) * rows
        if need > free_bytes(self.device):
            raise SkipError(f"too large: ~{size_text(need)} needed, {size_text(free_bytes(self.device))} free")
        pml = self.pml.get(rows) if classes == CLASSES else None
        z, labels = (pml["z"], pml["labels"]) if pml else loss_inputs(rows, classes, self.device)
        value, peak, times = self._run(make_loss(method, chunk), z, labels)
        mode = matmul_mode(self.device)
        metrics = self._metrics(rows, chunk, times, peak, float(value))
        metrics.update(classes=classes, memory_budget_mb=budget / MB, float32_matmul=mode, tolerance=TOLERANCE[mode])
        ms = metrics["median_ms"]
        key = f"{ms:.1f} ms, {peak / MB:.0f} MB" + (f", chunk_size={chunk}" if chunk else "")
        problems = []
        if self.device.type == "cuda" and peak > budget:
            problems.append(f"peak {size_text(peak)} above the {size_text(budget)} budget")
        problems += self._against_reference(method, z, labels, float(value), metrics)
        if pml:
            problems += self._against_pml(method, pml, float(value), z.grad, metrics)
            metrics["ratio_to_pml"] = ms / pml["ms"]
            key += f", {ms / pml['ms']:.2f}x PML"
        key += self._vs_floor(rows, ms, metrics)
        self._fresh()
        if problems:
            raise failure("; ".join(problems), key, metrics)
        return str(current(self.device)), key, metrics

    def _against_reference(self, method: str, z, labels, value: float, metrics: dict) -> list[str]:
        memory = min(self.sizes.reference_memory, 0.25 * free_bytes(self.device))
        chunk = reference_chunk(z.shape[0] * 2, memory)
        ref_value, ref_grad = reference_loss(method, z, labels, chunk)
        loss_err, grad_err = relative(value, ref_value), relative(z.grad, ref_grad)
        metrics.update(ref_loss=ref_value, ref_chunk=chunk, ref_loss_rel_err=loss_err, ref_grad_rel_err=grad_err)
        tol = metrics["tolerance"]
        if loss_err <= tol["loss"] and grad_err <= tol["grad"]:
            return []
        limits = f"(max {tol['loss']:g} / {tol['grad']:g})"
        return [f"float64 reference: loss error {loss_err:.1e}, grad error {grad_err:.1e} {limits}"]

    def _against_pml(self, method: str, pml: dict, value: float, grad, metrics: dict) -> list[str]:
        if method != "supcon":
            return []
        params = LOSS_PARAMS["supcon"]
        scale = params["base_temperature"] / params["temperature"]  # PML's SupConLoss has no T / T_base factor
        loss_diff, grad_diff = relative(value * scale, pml["value"]), relative(grad * scale, pml["grad"])
        tol = PML_TOLERANCE[metrics["float32_matmul"]]
        metrics.update(pml_loss_rel_diff=loss_diff, pml_grad_rel_diff=grad_diff, pml_tolerance=tol)
        if "ref_loss" in metrics:  # PML itself against the float64 reference, for the record
            metrics["pml_ref_loss_rel_err"] = relative(pml["value"], metrics["ref_loss"] * scale)
        if loss_diff <= tol["loss"] and grad_diff <= tol["grad"]:
            return []
        return [f"PML SupConLoss: loss differs {loss_diff:.1e} (max {tol['loss']:g}), grad {grad_diff:.1e}"]
