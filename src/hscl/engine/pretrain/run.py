"""Pre-training with Lightning: encoder -> head -> loss, checkpoint every epoch, exact resume.

The path of one step: a batch of ``B x V`` uint8 images (indices from :class:`ViewSampler`) ->
batched kornia augmentation on the training device -> encoder features ``h`` -> projection ``z``
(normalised) -> :mod:`hscl.losses`. A callback writes one CSV row per epoch (loss, lr, kNN top-1
monitor, throughput) and an atomic ``last.ckpt``, keeping the one before as ``previous.ckpt``
(:mod:`hscl.engine.pretrain.monitor`); the global RNG is reseeded from ``(seed, epoch, step)`` at each step and
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

from hscl.data.images import ImageData, check_data_dir, holds_dataset, load_dataset
from hscl.engine.pretrain.datamodule import ViewsDataModule, split_data
from hscl.engine.pretrain.loss_state import check_task_weights, restore_loss_state
from hscl.engine.pretrain.monitor import _callbacks
from hscl.engine.pretrain.task import ContrastiveTask
from hscl.engine.runtime.checkpoints import CheckpointError, check_resumable, load_checkpoint
from hscl.engine.runtime.config import RunConfig, config_to_dict
from hscl.engine.runtime.distributed import (
    launch_rank,
    resolve_device,
)
from hscl.engine.runtime.precision import numerics_record, resolve_deterministic, resolve_precision
from hscl.engine.runtime.progress import EpochProgress
from hscl.engine.runtime.runs import (
    RunPaths,
    after_failure,
    check_accelerator,
    check_run_config,
    restore_sigint,
    run_paths,
)
from hscl.engine.runtime.torch_flags import restores_torch_flags

__all__ = ["load_data", "load_task", "train"]

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
    """The run's dataset, split per its config (:func:`~hscl.engine.pretrain.datamodule.split_data`); an explicit
    ``data.data_dir`` must hold it (:func:`~hscl.data.images.check_data_dir`)."""
    check_data_dir(config.data.dataset, config.data.data_dir)
    return split_data(load_dataset(config.data.dataset, data_dir=config.data.data_dir), config)


@restores_torch_flags
def train(config: RunConfig, out_dir: str | Path, resume: bool = False, data: ImageData | None = None) -> Path:
    """Pre-train per ``config`` into ``out_dir``; returns the path of the final checkpoint.

    The process-wide torch settings the run changes (deterministic algorithms, cuDNN autotuning, TF32, the
    thread count) are restored when it returns (:mod:`hscl.engine.runtime.torch_flags`).

    ``resume=True`` continues from ``out_dir/checkpoints/last.ckpt`` when it exists, after loading it
    weights-only and checking it fits this config; a damaged one raises
    :class:`~hscl.engine.runtime.checkpoints.CheckpointError` naming ``checkpoints/previous.ckpt`` (the checkpoint
    of the epoch before, kept for that case) when it is good; a ``last.ckpt`` of another config (loss, data,
    model, ...: :func:`~hscl.engine.runtime.runs.config_differences`) raises
    :class:`~hscl.engine.runtime.runs.RunConfigError`.
    Ctrl-C raises :class:`~hscl.engine.runtime.runs.TrainingInterrupted`; a failed call removes the folder it created
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
        from hscl.engine.evaluation.report import plot_diagnostics

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
    checkpointing (:mod:`hscl.engine.pretrain.monitor` writes ``last.ckpt``)."""
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
    data_dir: str | None = None,
    device: str | torch.device | None = "auto",
) -> tuple[ContrastiveTask, RunConfig]:
    """A trained task from any checkpoint hscl wrote (``final.ckpt`` or ``checkpoints/last.ckpt``), in eval mode
    on ``device`` (``"auto"``: a CUDA GPU when there is one, else the CPU; see
    :func:`~hscl.engine.runtime.distributed.resolve_device`), so that evaluation and diagnostics run there.

    ``data_dir`` points at the dataset when it is not where the run found it. The file is loaded weights-only
    (onto the CPU first: a checkpoint written on ``cuda:3`` loads anywhere); one that is missing, damaged or of
    another model raises :class:`~hscl.engine.runtime.checkpoints.CheckpointError`.
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
