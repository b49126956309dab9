"""The monitors of a training run (Lightning callbacks): the epoch logger and the geometry monitor.

:class:`EpochLogger` writes one ``metrics.csv`` row per epoch (loss, lr, kNN top-1 monitor, throughput) and
an atomic ``checkpoints/last.ckpt``, keeping the one before as ``previous.ckpt``. :class:`GeometryMonitor`
measures the loss quartet (Lemma 1 / Fig. 5), Assumption 1
(Fig. 4), the alphas, neural and dimensional collapse and the spectrum on a seeded probe batch of the training
split; its row goes into ``metrics.csv`` (through the training run's epoch logger) and the spectrum (the
eigenvalues of Cov(z), columns ``sv1..``: they are its singular values too) into ``spectrum.csv``.
``hscl diagnose`` runs the same measurement on a checkpoint.

Extensions: with an automatic hardening (``loss.beta: auto``) the ``beta`` column is the epoch's
mean of the beta chosen at each step; with a memory (``loss.memory_size``) ``memory_rows`` is the number of rows
it holds at the end of the epoch. On a multi-label dataset (multi-hot labels) the kNN monitor reports
``knn_mAP`` (weighted-kNN class scores, :func:`~hscl.engine.evaluation.probes.knn_scores`) instead of ``knn_top1``, and
the geometry monitor measures only what needs no class (spectrum, effective rank, alignment, uniformity,
isotropy, norms): the loss quartet, Assumption 1, the alphas and neural collapse are defined for one class per
sample, so their columns stay empty (NaN) and ``diag_hardening`` says why.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor, nn

from hscl.data.images import ImageData
from hscl.engine.evaluation.probes import knn_accuracy, knn_mean_average_precision
from hscl.engine.pretrain.loss_state import auto_hardening, memory_rows
from hscl.engine.runtime.checkpoints import check_file, keep_previous
from hscl.engine.runtime.config import RunConfig
from hscl.engine.runtime.runs import RunPaths, read_metrics

if TYPE_CHECKING:
    from hscl.engine.pretrain.task import ContrastiveTask

__all__ = [
    "METRIC_FIELDS",
    "EpochLogger",
    "DIAGNOSTIC_FIELDS",
    "diagnostics_hardening",
    "describe_hardening",
    "probe_set",
    "measure_geometry",
    "GeometryMonitor",
]


METRIC_FIELDS = [
    "epoch",
    "loss",
    "lr",
    "knn_top1",
    "images_per_s",
    "epoch_seconds",
    "tau",
    "fallback_fraction",
    # the extensions: the epoch's mean auto-chosen beta, the memory's rows, the multi-label kNN monitor, step time
    "beta",
    "beta_solved",  # beta: auto: the epoch's mean solution (beta is the mean used: after warm-up and EMA)
    "memory_rows",
    "knn_mAP",
    "step_seconds",
]


class EpochLogger(L.Callback):
    """One CSV row per epoch, the kNN monitor, and an atomic ``last.ckpt``."""

    def __init__(
        self, paths: RunPaths, data: ImageData, config: RunConfig, geometry: GeometryMonitor | None = None
    ) -> None:
        self.paths = paths
        self.config = config
        self.geometry = geometry
        self.fields = METRIC_FIELDS + (DIAGNOSTIC_FIELDS if geometry is not None else [])
        tc = config.train
        self.monitor = None
        if tc.knn_k > 0:
            train_sub = data.subset(min(tc.knn_train, len(data.train_labels)), None, seed=tc.seed + 7)
            test_sub = data.subset(None, min(tc.knn_test, len(data.test_labels)), seed=tc.seed + 7)
            self.monitor = (train_sub.train_images, train_sub.train_labels, test_sub.test_images, test_sub.test_labels)
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # under DDP rank 0 alone writes the files
            return
        if self.monitor is not None and pl_module.device.type == "cuda":  # copied to the GPU once, if it fits
            from hscl.engine.runtime.distributed import place

            self.monitor = tuple(place(t, pl_module.device) for t in self.monitor)
        # drop rows of epochs that will be re-run (an interrupted run resumes at its checkpoint)
        start_epoch = trainer.current_epoch
        rows = read_metrics(self.paths.metrics) if self.paths.metrics.exists() else []
        rows = [r for r in rows if int(r["epoch"]) <= start_epoch]
        with self.paths.metrics.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._start
        extra: dict = {}
        if self.geometry is not None and self.geometry.latest is not None:
            extra = self.geometry.latest  # measured this epoch, before this callback; not training time
            seconds -= extra.get("diagnostics_seconds", 0.0)
        metrics = trainer.callback_metrics
        steps = len(trainer.train_dataloader) if trainer.train_dataloader is not None else 0
        images = steps * self.config.train.batch_size * self.config.data.views
        loss_fn = pl_module.loss_fn
        auto = auto_hardening(loss_fn) is not None
        rows = memory_rows(loss_fn)
        row = {
            "epoch": trainer.current_epoch + 1,
            "loss": float(metrics.get("loss", math.nan)),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "knn_top1": math.nan,
            "images_per_s": images / seconds if seconds > 0 else math.nan,
            "epoch_seconds": seconds,
            "tau": getattr(loss_fn.hardening, "tau", "") if hasattr(loss_fn, "hardening") and not auto else "",
            "fallback_fraction": float(metrics["fallback_fraction"]) if "fallback_fraction" in metrics else "",
            "beta": float(metrics["beta"]) if auto and "beta" in metrics else "",
            "beta_solved": float(metrics["beta_solved"]) if auto and "beta_solved" in metrics else "",
            "memory_rows": rows if rows is not None else "",
            "knn_mAP": "",
            "step_seconds": seconds / steps if steps else math.nan,
            **extra,
        }
        if self.monitor is not None and trainer.is_global_zero:
            train_x, train_y, test_x, test_y = self.monitor
            with torch.no_grad():
                bank = pl_module.encode(train_x)
                queries = pl_module.encode(test_x)
            if train_y.ndim == 2:  # multi-hot label sets: the mAP of the kNN class scores, in %
                row["knn_mAP"] = knn_mean_average_precision(bank, train_y, queries, test_y, k=self.config.train.knn_k)
                pl_module.log("knn_mAP", row["knn_mAP"], prog_bar=True)
            else:
                row["knn_top1"] = knn_accuracy(bank, train_y, queries, test_y, k=self.config.train.knn_k)
                pl_module.log("knn_top1", row["knn_top1"], prog_bar=True)
        if trainer.is_global_zero:
            with self.paths.metrics.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        # atomic: a kill during the write leaves the previous last.ckpt intact
        self.paths.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.last.with_suffix(".ckpt.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it (a collective); rank 0 writes
        if trainer.is_global_zero:
            check_file(tmp)  # the archive just written is whole (raises on a failing disk)
            keep_previous(self.paths)
            os.replace(tmp, self.paths.last)


def _callbacks(paths: RunPaths, data: ImageData, config: RunConfig) -> list:
    geometry = GeometryMonitor(paths, data, config) if config.diagnostics.enabled else None
    return ([geometry] if geometry else []) + [EpochLogger(paths, data, config, geometry)]


#: columns the geometry monitor adds to metrics.csv (see :func:`hscl.geometry.diagnose`)
DIAGNOSTIC_FIELDS = [
    "diag_hardening",
    "loss_ucl",
    "loss_h_ucl",
    "loss_scl",
    "loss_h_scl",
    "assumption1",
    "assumption1_excluded",
    "alpha_h_ucl",
    "alpha_h_scl",
    "alpha_hcol",
    "nc1",
    "nc2_cos_std",
    "nc2_etf",
    "nc2_norm_cv",
    "ncc_accuracy",
    "effective_rank",
    "effective_rank_cov",
    "dims_99",
    "alignment",
    "uniformity",
    "isotropy",
    "mean_norm",
    "feature_effective_rank",
    "diagnostics_seconds",
]


def diagnostics_hardening(config: RunConfig, loss_fn: nn.Module | None = None):
    """The hardening the diagnostics tilt with: ``diagnostics.beta`` / ``diagnostics.tau`` when set,
    else the run's own (the threshold in force this epoch under a schedule; for ``beta: auto``, exponential
    tilting with the beta chosen at the last step), else beta = 1."""
    from hscl.hardening import Exponential, Threshold

    dc = config.diagnostics
    if dc.beta is not None:
        return Exponential(dc.beta)
    if dc.tau is not None:
        return Threshold(dc.tau)
    auto = auto_hardening(loss_fn)
    if auto is not None:  # beta: auto: the beta it chose at the last step, while it is a usable one
        beta = float(getattr(auto, "beta", math.nan))
        return Exponential(beta) if math.isfinite(beta) and beta > 0 else Exponential(1.0)
    own = getattr(loss_fn, "hardening", None) if loss_fn is not None else None
    if isinstance(own, (Exponential, Threshold)) and not (isinstance(own, Exponential) and own.beta == 0):
        return own
    return Exponential(1.0)


def describe_hardening(hardening) -> str:
    from hscl.hardening import Exponential, Threshold

    if isinstance(hardening, Exponential):
        return f"beta={hardening.beta:g}"
    if isinstance(hardening, Threshold):
        return f"tau={hardening.tau:.6g}"
    return type(hardening).__name__


def probe_set(task: ContrastiveTask, data: ImageData, config: RunConfig) -> tuple[Tensor, Tensor]:
    """The fixed probe batch of the diagnostics: a stratified subset of the training split with two
    augmented views each, drawn from ``train.seed`` only (the same for every epoch and on resume).

    Returns float images ``(P * 2, C, S, S)`` (sample-major) and labels ``(P,)``, on the CPU whatever the
    device of the task: the views are drawn by a CPU copy of the task's augmentation from the CPU's RNG, so the
    probe set is the same on every device (:func:`measure_geometry` moves it to the model).
    """
    n = min(config.diagnostics.probe_size, len(data.train_labels))
    probe = data.subset(n, None, seed=config.train.seed + 11)
    images = probe.train_images.cpu()
    augment = task.augment
    if any(b.device.type != "cpu" for b in augment.buffers()):
        augment = copy.deepcopy(augment).cpu()  # the task's stays on its device
    with torch.random.fork_rng(devices=[]):  # the CPU's RNG alone, restored after: no CUDA state is touched
        torch.default_generator.manual_seed(config.train.seed + 13)  # = torch.manual_seed, for the CPU only
        x = augment(torch.stack([images, images], 1).flatten(0, 1))
    return x, probe.train_labels.clone().cpu()


@torch.no_grad()
def measure_geometry(task: ContrastiveTask, x: Tensor, labels: Tensor, hardening) -> tuple[dict, Tensor]:
    """Every diagnostic of :func:`hscl.geometry.diagnose` for the model on the probe ``x``, plus the
    effective rank of the encoder features. Returns (metrics row, eigenvalues of z's covariance).

    The forward runs on the model's device (``x`` is moved there) under the run's autocast; the float64
    diagnostics then run on a CPU copy of the embeddings (a GPU's float64 is slow, and some of its kernels
    have no deterministic version).
    """
    from hscl.geometry import diagnose, spectrum

    model = task.model
    device = next(model.parameters()).device
    dtype = task._autocast_dtype
    was_training = model.training
    model.eval()
    try:
        x = x.to(device)
        if task.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            h, z = model(x)
        h, z = h.float().cpu(), z.float().cpu()
    finally:
        model.train(was_training)
    labels = labels.cpu()
    lc = task.config.loss
    P = labels.shape[0]
    if labels.ndim == 2:  # multi-hot label sets: only the diagnostics that need no class
        metrics, values = _label_free_diagnostics(z.view(P, 2, -1), task.config.model.normalization == "sphere")
        metrics["feature_effective_rank"] = spectrum(h).effective_rank
        metrics["diag_hardening"] = MULTILABEL_NOTE
        return metrics, values
    metrics, values = diagnose(
        z.view(P, 2, -1),
        labels,
        hardening,
        temperature=lc.temperature,
        M=lc.M if isinstance(lc.M, (int, float)) else None,
        normalize=task.config.model.normalization == "sphere",
    )
    metrics["feature_effective_rank"] = spectrum(h).effective_rank
    metrics["diag_hardening"] = describe_hardening(hardening)
    return metrics, values


#: the ``diag_hardening`` entry of a multi-label run: why its class-based columns are empty
MULTILABEL_NOTE = "multi-label: class-based diagnostics skipped"

#: the columns of :data:`DIAGNOSTIC_FIELDS` that need one class per sample
CLASS_DIAGNOSTICS = (
    "loss_ucl",
    "loss_h_ucl",
    "loss_scl",
    "loss_h_scl",
    "assumption1",
    "assumption1_excluded",
    "alpha_h_ucl",
    "alpha_h_scl",
    "alpha_hcol",
    "nc1",
    "nc2_cos_std",
    "nc2_etf",
    "nc2_norm_cv",
    "ncc_accuracy",
)


def _label_free_diagnostics(z: Tensor, normalize: bool) -> tuple[dict, Tensor]:
    """The diagnostics of :func:`hscl.geometry.diagnose` that use no label, the others NaN.

    Shape: z ``(P, 2, d)``; returns (metrics row, covariance eigenvalues ``(d,)``).
    """
    from hscl.geometry import alignment, isotropy, spectrum, uniformity

    z64 = z.to(torch.float64)
    rows = z64.transpose(0, 1).reshape(-1, z64.shape[-1])  # view-major, as diagnose
    spec = spectrum(rows)
    metrics: dict = dict.fromkeys(CLASS_DIAGNOSTICS, math.nan)
    metrics.update(spec.as_dict())
    metrics["alignment"] = alignment(z64, normalize=normalize)
    metrics["uniformity"] = uniformity(z64, normalize=normalize)
    metrics["isotropy"] = isotropy(rows)
    metrics["mean_norm"] = float(rows.norm(dim=1).mean())
    return metrics, spec.eigenvalues


class GeometryMonitor(L.Callback):
    """Evaluates :mod:`hscl.geometry` on a fixed probe set at the end of every ``diagnostics.every``
    epochs (and the last): the loss quartet (Lemma 1 / Fig. 5), the fraction of anchors satisfying
    Assumption 1 (Fig. 4), the alphas, NC1 / NC2 / NCC, the spectrum and effective rank, alignment,
    uniformity and isotropy. The row goes to metrics.csv (through :class:`EpochLogger`, which must
    come after this callback) and the spectrum to ``spectrum.csv``."""

    def __init__(self, paths: RunPaths, data: ImageData, config: RunConfig) -> None:
        self.paths = paths
        self.data = data
        self.config = config
        self.probe: tuple[Tensor, Tensor] | None = None
        self.latest: dict | None = None

    @property
    def spectrum_path(self) -> Path:
        return self.paths.root / "spectrum.csv"

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # under DDP rank 0 alone measures and writes
            return
        x, labels = probe_set(pl_module, self.data, self.config)
        self.probe = (x.to(pl_module.device), labels)  # on the model's device once, for every epoch
        start_epoch = trainer.current_epoch
        rows = []
        if self.spectrum_path.exists():
            with self.spectrum_path.open(newline="") as handle:
                rows = [r for r in csv.reader(handle)][1:]
        rows = [r for r in rows if int(r[0]) <= start_epoch]
        dim = self.config.model.projection_dim
        with self.spectrum_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch"] + [f"sv{k + 1}" for k in range(dim)])
            writer.writerows(rows)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        every = self.config.diagnostics.every
        if not trainer.is_global_zero or (epoch % every and epoch != self.config.train.epochs):
            self.latest = None
            return
        start = time.perf_counter()
        x, labels = self.probe
        hardening = diagnostics_hardening(self.config, pl_module.loss_fn)
        metrics, values = measure_geometry(pl_module, x, labels, hardening)
        metrics["diagnostics_seconds"] = time.perf_counter() - start
        self.latest = metrics
        with self.spectrum_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([epoch] + [f"{float(v):.9g}" for v in values])
