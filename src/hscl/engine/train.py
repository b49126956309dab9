"""Pre-training with Lightning: encoder -> head -> loss, checkpoint every epoch, exact resume.

The path of one step: a batch of ``B x V`` uint8 images (indices from :class:`ViewSampler`) ->
batched kornia augmentation on the training device -> encoder features ``h`` -> projection ``z``
(normalised) -> :mod:`hscl.losses`. A callback writes one CSV row per epoch (loss, lr, kNN top-1
monitor, throughput) and an atomic ``last.ckpt``, keeping the one before as ``previous.ckpt``
(:mod:`hscl.engine.monitor`); the global RNG is reseeded from ``(seed, epoch, step)`` at each step and
the batches follow from ``(seed, epoch)``, so ``--resume`` after an interruption reaches the same final
weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from hscl.data.augment import Augment, AugmentConfig, EvalTransform, augment_preset, preset_for
from hscl.data.images import ImageData, check_data_dir, holds_dataset, load_dataset
from hscl.data.views import epoch_generator
from hscl.engine.checkpoints import CheckpointError, check_resumable, load_checkpoint
from hscl.engine.config import RunConfig, config_to_dict
from hscl.engine.datamodule import ViewsDataModule, split_data
from hscl.engine.distributed import (
    global_batch_loss,
    launch_rank,
    rank,
    resolve_device,
    shard_sizes,
    world_size,
)
from hscl.engine.evaluate import extract_features
from hscl.engine.monitor import (  # noqa: F401 (re-exported: callers import them from here)
    DIAGNOSTIC_FIELDS,
    METRIC_FIELDS,
    EpochLogger,
    GeometryMonitor,
    _callbacks,
    auto_hardening,
    check_task_weights,
    describe_hardening,
    diagnostics_hardening,
    measure_geometry,
    probe_set,
    read_metrics,
    restore_loss_state,
    save_loss_state,
)
from hscl.engine.precision import enable_tf32, numerics_record, resolve_deterministic, resolve_precision
from hscl.engine.progress import EpochProgress
from hscl.engine.runs import RunPaths, after_failure, check_accelerator, check_run_config, restore_sigint, run_paths
from hscl.engine.torch_flags import restores_torch_flags
from hscl.hardening import linear_threshold
from hscl.losses import get_loss, get_method, loss_kwargs
from hscl.models import build_model

__all__ = [
    "ContrastiveTask",
    "ViewsDataModule",
    "train",
    "resolve_precision",
    "resolve_deterministic",
    "enable_tf32",
    "load_task",
    "run_paths",
]

log = logging.getLogger("hscl")


class _DropLitLoggerTip(logging.Filter):
    """Lightning (2.6) prints an advertisement for its cloud logger at the start of every run; hscl drops it, and
    Lightning's note on Ctrl-C (``hscl`` says in one line what was saved and how to resume)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "litlogger" not in message.lower() and "Detected KeyboardInterrupt" not in message


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropLitLoggerTip())


# --------------------------------------------------------------------------------------------
# the task


def augment_config(config: RunConfig, channels: int, size: int) -> AugmentConfig:
    """The augmentation of a run: the named preset, or the one for the data's channels and size."""
    overrides = dict(config.data.augment_overrides)
    if config.data.augment:
        return augment_preset(config.data.augment, overrides)
    return preset_for(channels, size, overrides)


def build_loss(config: RunConfig) -> nn.Module:
    """The loss module of a run: the registered method with the options of ``config.loss`` that it takes.

    ``loss.beta: auto`` gives ``SmoothedAutoExponential(loss.auto_target)`` with ``loss.auto_momentum`` and
    ``loss.auto_warmup_steps`` (:mod:`hscl.engine.auto_beta`); ``loss.memory_size > 0`` a memory of that many
    past rows, used after ``loss.memory_warmup_steps`` loss calls (the module keeps it in its buffers, so the
    run's checkpoints hold it and a resumed run continues with it).
    """
    lc = config.loss
    method = get_method(lc.method)
    hardening: dict = {}
    if method.hardened:
        if lc.tau_schedule is not None:
            hardening["tau"] = threshold_schedule(config)(1)
        elif lc.tau is not None:
            hardening["tau"] = lc.tau
        elif lc.beta == "auto":
            from hscl.engine.auto_beta import SmoothedAutoExponential

            hardening["hardening"] = SmoothedAutoExponential(
                lc.auto_target, momentum=lc.auto_momentum, warmup_steps=lc.auto_warmup_steps
            )
        elif lc.beta is not None:
            hardening["beta"] = lc.beta
    memory = {"memory_size": lc.memory_size, "memory_warmup_steps": lc.memory_warmup_steps} if lc.memory_size else {}
    options = {
        "temperature": lc.temperature,
        "base_temperature": lc.base_temperature,
        # the model already normalises its output; the loss re-normalises only on the sphere, so that
        # "ball" and "none" (the geometry paper's settings) reach the loss as they are
        "normalize": config.model.normalization == "sphere",
        "chunk_size": lc.chunk_size,
        "M": lc.M,
        "tau_plus": lc.tau_plus or None,
        **hardening,
        **memory,
    }
    return get_loss(method.name, **loss_kwargs(method.name, options))


def threshold_schedule(config: RunConfig):
    start, end = config.loss.tau_schedule
    return linear_threshold(start, end, config.train.epochs, config.loss.temperature)


class ContrastiveTask(L.LightningModule):
    """Encoder + projection head trained with one loss of :mod:`hscl.losses`."""

    def __init__(self, config: dict, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        from hscl.engine.config import config_from_dict

        self.config: RunConfig = config_from_dict(config)
        mc = self.config.model
        encoder_kw: dict = {"stem": mc.stem} if mc.stem is not None else {}
        if mc.widths is not None:
            encoder_kw["widths"] = tuple(mc.widths)
        self.model = build_model(
            mc.encoder,
            in_channels,
            projection_dim=mc.projection_dim,
            hidden_dim=mc.hidden_dim,
            normalization=mc.normalization,
            **encoder_kw,
        )
        self.loss_fn = build_loss(self.config)
        aug = augment_config(self.config, in_channels, image_size)
        self.augment = Augment(aug)  # training views, batched on the device
        self.eval_transform = EvalTransform(aug)  # features for kNN / linear evaluation
        self.channels_last = False
        self._schedule = threshold_schedule(self.config) if self.config.loss.tau_schedule else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_loss_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # Lightning calls it before it loads the weights
        restore_loss_state(self, checkpoint)

    def configure_optimizers(self):
        tc = self.config.train
        return torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def on_fit_start(self) -> None:
        # in every process (DDP children included: spawned ones do not inherit global flags), on the device
        if self.device.type == "cuda":
            enable_tf32()

    def on_train_epoch_start(self) -> None:
        if self._schedule is not None:
            self.loss_fn.hardening = self._schedule.hardening(self.current_epoch + 1)

    def training_step(self, batch, batch_idx):
        # (B, V, C, H, W) uint8, (B,): the global batch with one process; under DDP this rank's shard of it
        # (ViewsDataModule reads only those samples) and the loss gathers the other ranks' embeddings
        images, labels = batch  # labels (B_k,) class ids or (B_k, C) multi-hot
        B, V = images.shape[:2]
        # the augmentation's random draws (kornia uses the global RNG) follow from (seed, epoch, step)
        # alone, whatever else consumed the RNG before: a resumed run repeats them exactly
        torch.manual_seed(
            int(epoch_generator(self.config.train.seed, self.current_epoch, 1 + batch_idx).initial_seed())
            + rank() * 2**40  # each rank draws its own augmentations
        )
        x = self.augment(images.flatten(0, 1))  # (B_k*V, C, S, S), sample-major
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, z = self.model(x)  # (B_k*V, d)
        # the loss of the global batch (B, V, d) and, under DDP, gradients that average to its gradient (the
        # shard sizes follow from the global batch size on the host: no exchange of counts)
        loss = global_batch_loss(self.loss_fn, z.view(B, V, -1), labels, sizes=self._shard_sizes())
        self.log("loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=B)
        stats = getattr(self.loss_fn, "last_stats", None)
        if stats is not None and self._schedule is not None:  # on the device: Lightning reads it once per epoch
            fallbacks = stats.fallback.sum() / stats.valid.sum().clamp(min=1)
            self.log("fallback_fraction", fallbacks.float(), on_step=False, on_epoch=True, batch_size=B)
        auto = auto_hardening(self.loss_fn)
        if auto is not None:  # the beta used at this step and the step's solution; epoch means go to metrics.csv
            self.log("beta", float(auto.beta), on_step=False, on_epoch=True, batch_size=B)
            if auto.solved is not None:
                self.log("beta_solved", float(auto.solved), on_step=False, on_epoch=True, batch_size=B)
        return loss

    def _shard_sizes(self) -> list[int] | None:  # every rank's samples of the global batch (None: 1 process)
        sampler = getattr(getattr(self._trainer, "datamodule", None), "sampler", None)
        return None if world_size() == 1 or sampler is None else shard_sizes(sampler.batch_size)

    def encode(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Encoder features of uint8 images with the evaluation transform. Shape: ``(N, F)``."""
        return extract_features(
            self.model.encoder,
            images,
            self.eval_transform,
            batch_size=batch_size,
            channels_last=self.channels_last,
            dtype=self._autocast_dtype,
        )

    @property
    def _autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the run's precision (bf16 / fp16 under "bf16-mixed" / "16-mixed"), else None."""
        trainer = self._trainer  # None for a task loaded for evaluation: float32 features
        precision = str(trainer.precision) if trainer is not None else ""
        if "bf16" in precision:
            return torch.bfloat16
        if precision.startswith("16"):
            return torch.float16
        return None

    @property
    def _bf16(self) -> bool:
        return self._autocast_dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------
# entry point


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_data(config: RunConfig) -> ImageData:
    """The run's dataset, split per its config (:func:`~hscl.engine.datamodule.split_data`); an explicit
    ``data.data_dir`` must hold it (:func:`~hscl.data.images.check_data_dir`)."""
    check_data_dir(config.data.dataset, config.data.data_dir)
    return split_data(load_dataset(config.data.dataset, data_dir=config.data.data_dir), config)


@restores_torch_flags
def train(config: RunConfig, out_dir: str | Path, resume: bool = False, data: ImageData | None = None) -> Path:
    """Pre-train per ``config`` into ``out_dir``; returns the path of the final checkpoint.

    The process-wide torch settings the run changes (deterministic algorithms, cuDNN autotuning, TF32, the
    thread count) are restored when it returns (:mod:`hscl.engine.torch_flags`).

    ``resume=True`` continues from ``out_dir/checkpoints/last.ckpt`` when it exists, after loading it
    weights-only and checking it fits this config; a damaged one raises
    :class:`~hscl.engine.checkpoints.CheckpointError` naming ``checkpoints/previous.ckpt`` (the checkpoint
    of the epoch before, kept for that case) when it is good; a ``last.ckpt`` of another config (loss, data,
    model, ...: :func:`~hscl.engine.runs.config_differences`) raises :class:`~hscl.engine.runs.RunConfigError`.
    Ctrl-C raises :class:`~hscl.engine.runs.TrainingInterrupted`; a failed call removes the folder it created
    when no checkpoint was written.
    """
    check_accelerator(config)
    if data is None:  # an explicit data.data_dir (--data-dir) must hold the data: never read it from elsewhere
        check_data_dir(config.data.dataset, config.data.data_dir)
    created = not Path(out_dir).exists()
    try:
        return _train(config, out_dir, resume, data)
    except BaseException as err:
        after_failure(run_paths(out_dir), config, created, err)  # raises err, or TrainingInterrupted for Ctrl-C
        raise


def _train(config: RunConfig, out_dir: str | Path, resume: bool, data: ImageData | None) -> Path:
    import yaml

    paths = run_paths(out_dir)
    resumed = _open_run(paths, config, resume)
    data = data if data is not None else load_data(config)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    resolved = config_to_dict(config)
    tc = config.train
    writer = launch_rank(tc.devices) == 0  # under DDP every process runs this function; one writes
    if writer:
        paths.config.write_text(yaml.safe_dump({**resolved, "git_revision": _git_revision()}, sort_keys=False))

    task = ContrastiveTask(resolved, data.channels, data.size, data.num_classes)
    device = torch.device("cuda" if tc.accelerator == "gpu" else "cpu")
    processes = tc.devices * tc.num_nodes
    precision, channels_last = _choose_precision(config, task, data, paths, resume, writer, processes, device)
    if resumed is not None:  # a checkpoint of another model: say so before Lightning fails to load it
        check_task_weights(task, resumed["state_dict"], paths.last, "the model of this config")
        del resumed
    task.channels_last = channels_last
    if channels_last:
        task.model = task.model.to(memory_format=torch.channels_last)

    trainer = _build_trainer(config, paths, data, precision, processes, device)
    ckpt = str(paths.last) if resume and paths.last.exists() else None  # checked by check_resumable above
    _fit(trainer, task, data, config, ckpt)
    trainer.save_checkpoint(paths.final, weights_only=False)
    if config.diagnostics.enabled and trainer.is_global_zero:
        from hscl.engine.report import plot_diagnostics

        plot_diagnostics(paths.root)
    if trainer.is_global_zero:  # what the run computed in (TF32 on CUDA: ContrastiveTask.on_fit_start)
        numerics = numerics_record(precision, channels_last, device, setting=tc.precision, tf32=device.type == "cuda",
                                   strategy=tc.strategy, processes=processes)  # fmt: skip
        (paths.root / "train_summary.json").write_text(
            json.dumps(
                {
                    "precision": precision,
                    "channels_last": channels_last,
                    "deterministic": resolve_deterministic(tc.deterministic, device),
                    "epochs": tc.epochs,
                    "processes": processes,
                    "numerics": numerics,
                },
                indent=2,
            )
        )
    return paths.final


def _open_run(paths: RunPaths, config: RunConfig, resume: bool) -> dict | None:
    """Create the run directory, refuse to overwrite a run unless resuming, set the thread count; returns the
    checked ``last.ckpt`` to resume from (None for a new run)."""
    if paths.root.exists() and not paths.root.is_dir():
        raise FileExistsError(f"{paths.root} is a file, not a folder: name a folder for the run (--out)")
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.last.exists() and not resume:
        raise FileExistsError(
            f"{paths.root} already holds a run (checkpoints/last.ckpt); pass --resume to continue it or choose "
            "another --out directory"
        )
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    # --resume: last.ckpt is read weights-only and checked first; a damaged one names previous.ckpt
    resumed = check_resumable(paths) if resume and (paths.last.exists() or paths.previous.exists()) else None
    if resumed is not None:  # the run continues only with the config it started with
        check_run_config(paths.root, config, recorded=resumed["hyper_parameters"]["config"], resume=True)
    return resumed


def _choose_precision(
    config: RunConfig,
    task: ContrastiveTask,
    data: ImageData,
    paths: RunPaths,
    resume: bool,
    writer: bool,
    processes: int,
    device: torch.device,
) -> tuple[str, bool]:
    """Lightning precision and channels_last of the run, recorded in ``precision.json``; a resumed run keeps
    the numerics it started with."""
    tc = config.train
    choice_file = paths.root / "precision.json"
    if resume and choice_file.exists():  # a resumed run keeps the numerics it started with
        choice = json.loads(choice_file.read_text())
        return choice["precision"], choice["channels_last"]
    sample = None
    if device.type == "cpu" and tc.precision == "fastest" and processes == 1:  # the one setting that times steps
        sample = task.augment(data.train_images[: min(64, len(data.train_labels))])
    precision, channels_last = resolve_precision(
        tc.precision, task.model, sample, device, strategy=tc.strategy, processes=processes
    )
    if tc.channels_last is not None:
        channels_last = tc.channels_last
    if writer:
        choice_file.write_text(json.dumps({"precision": precision, "channels_last": channels_last}))
    return precision, channels_last


def _build_trainer(
    config: RunConfig, paths: RunPaths, data: ImageData, precision: str, processes: int, device: torch.device
) -> L.Trainer:
    """The Lightning trainer of a run: TensorBoard logging when installed, hscl's callbacks, no Lightning
    checkpointing (:mod:`hscl.engine.monitor` writes ``last.ckpt``)."""
    tc = config.train
    deterministic = resolve_deterministic(tc.deterministic, device)
    logger = False
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(paths.root), name="tensorboard", version="")
    except ImportError:
        pass
    return L.Trainer(
        max_epochs=tc.epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        sync_batchnorm=processes > 1 and device.type == "cuda",  # PyTorch's SyncBatchNorm is GPU-only
        use_distributed_sampler=False,  # each step shards the global batch (ContrastiveTask.training_step)
        precision=precision,
        logger=logger,
        callbacks=_callbacks(paths, data, config) + ([EpochProgress()] if tc.progress else []),
        enable_checkpointing=False,
        enable_progress_bar=tc.progress,
        enable_model_summary=False,
        deterministic=deterministic,
        # cuDNN autotuning where determinism is not asked for (a GPU's default); None: Lightning's default (off)
        benchmark=None if deterministic else device.type == "cuda",
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def _fit(trainer: L.Trainer, task: ContrastiveTask, data: ImageData, config: RunConfig, ckpt: str | None) -> None:
    """``trainer.fit`` from ``ckpt`` (None: from scratch), without the warnings a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
        # under DDP the logged loss is already that of the global batch, identical on every rank
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # Lightning 2.6's own use of a torch pytree API that newer torch deprecates; nothing a user can act on
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        try:
            trainer.fit(task, datamodule=ViewsDataModule(data, config), ckpt_path=ckpt, **_weights_only(trainer))
        except SystemExit:  # Lightning's answer to Ctrl-C: it stops the fit, ignores SIGINT, and exits
            if not trainer.interrupted:
                raise
            restore_sigint()
            raise KeyboardInterrupt from None


def _weights_only(trainer: L.Trainer) -> dict:
    """``weights_only=True`` for ``Trainer.fit`` where Lightning takes it (2.4+); older ones load with torch's
    default, weights-only since torch 2.6, and the file has passed :func:`check_resumable` either way."""
    import inspect

    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def load_task(
    checkpoint: str | Path,
    data: ImageData | None = None,
    data_dir: str | None = None,
    device: str | torch.device | None = "auto",
) -> tuple[ContrastiveTask, RunConfig]:
    """A trained task from any checkpoint hscl wrote (``final.ckpt`` or ``checkpoints/last.ckpt``), in eval mode
    on ``device`` (``"auto"``: a CUDA GPU when there is one, else the CPU; see
    :func:`~hscl.engine.distributed.resolve_device`), so that evaluation and diagnostics run there.

    ``data_dir`` points at the dataset when it is not where the run found it. The file is loaded weights-only
    (onto the CPU first: a checkpoint written on ``cuda:3`` loads anywhere); one that is missing, damaged or of
    another model raises :class:`~hscl.engine.checkpoints.CheckpointError`.
    """
    device = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, expect="task")
    hparams = {k: ckpt["hyper_parameters"][k] for k in ("config", "in_channels", "image_size", "num_classes")}
    try:
        task = ContrastiveTask(**hparams)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{checkpoint}: its run config cannot be rebuilt here ({err})") from err
    check_task_weights(task, ckpt["state_dict"], checkpoint, f"the {task.config.model.encoder} model of its run config")
    restore_loss_state(task, ckpt)
    task.load_state_dict(ckpt["state_dict"], strict=True)
    config = task.config
    if data_dir is not None:
        config.data.data_dir = data_dir
    elif not holds_dataset(config.data.dataset, config.data.data_dir):  # recorded on another machine: search
        config.data.data_dir = None
    task.to(device)
    if device.type == "cuda":  # NHWC convolutions on the GPU (encode / measure_geometry follow the flag)
        task.channels_last = True
        task.model.to(memory_format=torch.channels_last)
    task.eval()
    return task, config
