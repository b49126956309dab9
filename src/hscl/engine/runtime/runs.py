"""What a run folder holds and what may reuse it: the resolved config is the key.

A run folder records the config it was trained with (``config.yaml``, and each checkpoint's
``hyper_parameters.config``). ``hscl train --resume`` and every ``hscl reproduce`` experiment, which reuses
finished cells and resumes interrupted ones, compare it with the config asked for now: any difference in a key
that changes what the run computes is refused in one line listing the keys (:class:`RunConfigError`). Only
:data:`EXECUTION_KEYS` (where the data is, how many processes, progress display) may differ.

:func:`train_seconds` is a run's training time summed over its epochs (``epoch_seconds`` of ``metrics.csv``), so
a run resumed after an interruption counts its epochs before the interruption too.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hscl.engine.runtime.config import RunConfig, config_from_dict, config_to_dict, load_yaml

__all__ = [
    "RunPaths",
    "run_paths",
    "TrainingInterrupted",
    "EXECUTION_KEYS",
    "RunConfigError",
    "config_differences",
    "recorded_config",
    "check_run_config",
    "check_run_configs",
    "train_seconds",
    "check_accelerator",
    "after_failure",
]


@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def previous(self) -> Path:
        """The checkpoint before ``last.ckpt`` (one epoch older), kept in case ``last.ckpt`` gets damaged."""
        return self.checkpoints / "previous.ckpt"

    @property
    def final(self) -> Path:
        return self.root / "final.ckpt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"


def run_paths(root: str | Path) -> RunPaths:
    return RunPaths(Path(root))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during :func:`hscl.engine.pretrain.run.train`: the run folder and the epochs its
    ``checkpoints/last.ckpt`` holds (0: none finished, nothing to resume)."""

    def __init__(self, run_dir: Path, epochs_done: int, epochs: int) -> None:
        super().__init__(f"{run_dir}: interrupted after {epochs_done} of {epochs} epochs")
        self.run_dir, self.epochs_done, self.epochs = run_dir, epochs_done, epochs


#: keys that say where and how a run executes, not what it computes: a resume or a reuse may change them
EXECUTION_KEYS = frozenset(
    {
        "name",
        "data.data_dir",
        "train.progress",
        "train.threads",
        "train.accelerator",
        "train.devices",
        "train.num_nodes",
        "train.strategy",
        "train.deterministic",
    }
)


class RunConfigError(ValueError):
    """A run folder holds a run of another config; the message is one line listing the differing keys."""


def _flat(data: Mapping, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "augment_overrides":
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_differences(recorded: Mapping, config: RunConfig) -> list[str]:
    """``"key: recorded -> now"`` for every key outside :data:`EXECUTION_KEYS` where ``recorded`` (a run's config
    as a mapping: ``config.yaml`` or a checkpoint's ``hyper_parameters.config``) and ``config`` differ. Keys the
    recorded config lacks (written by an older hscl) take their defaults; entries that are not config sections
    (``git_revision``) are ignored."""
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        then = config_to_dict(config_from_dict({k: v for k, v in recorded.items() if k in sections}))
    except (TypeError, ValueError) as err:
        return [f"its recorded config is not one this hscl reads ({err})"]
    before, now = _flat(then), _flat(config_to_dict(config))
    return [
        f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
        for key in now
        if key not in EXECUTION_KEYS and before.get(key) != now.get(key)
    ]


def recorded_config(run_dir: str | Path) -> dict | None:
    """The config a run folder was trained with (its ``config.yaml``), or None when it has none."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    data = load_yaml(path.read_text())
    return data if isinstance(data, dict) else None


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "final.ckpt").exists() or (run_dir / "checkpoints" / "last.ckpt").exists()


def check_run_config(
    run_dir: str | Path, config: RunConfig, recorded: Mapping | None = None, resume: bool = False
) -> None:
    """Raise :class:`RunConfigError` when ``run_dir`` holds a run (a checkpoint) of a config other than
    ``config`` (see :func:`config_differences`); ``recorded`` overrides the folder's ``config.yaml``. ``resume``:
    the message of ``hscl train --resume``."""
    run_dir = Path(run_dir)
    if recorded is None:
        if not _holds_run(run_dir):
            return
        recorded = recorded_config(run_dir)
        if recorded is None:
            return
    differences = config_differences(recorded, config)
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        if resume:
            raise RunConfigError(
                f"cannot resume {run_dir}: it was trained with another config ({shown}); resume it with its own "
                "settings (its config.yaml), or train this config into another --out"
            )
        raise RunConfigError(
            f"{run_dir} holds a run of another config ({shown}); it is not reused: choose another --out, or "
            "delete that folder to train it again"
        )


def check_run_configs(runs: Mapping[Path, RunConfig]) -> None:
    """:func:`check_run_config` of every ``run folder -> config`` of an experiment, before any of them runs."""
    for run_dir, config in runs.items():
        check_run_config(run_dir, config)


def train_seconds(run_dir: str | Path) -> float:
    """The training time of a run: its epochs' ``epoch_seconds`` summed (``metrics.csv``; the kNN monitor and the
    diagnostics excluded), across resumes; NaN without a ``metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return math.nan
    values = [float(row["epoch_seconds"]) for row in read_metrics(path) if row.get("epoch_seconds") not in ("", None)]
    return sum(values) if values else math.nan


def check_accelerator(config: RunConfig) -> None:
    """``train.accelerator: gpu`` needs CUDA GPUs, ``train.devices`` of them: checked before a run folder exists."""
    import torch

    tc = config.train
    if tc.accelerator != "gpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            "train.accelerator=gpu (--accelerator gpu), but torch sees no CUDA GPU (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}); train on the CPU with --accelerator cpu"
        )
    if tc.devices > torch.cuda.device_count():
        raise ValueError(
            f"train.devices={tc.devices} GPUs asked for, but this machine has {torch.cuda.device_count()}; "
            "lower --devices"
        )


def restore_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt again (Lightning ignores SIGINT after it stopped a fit on one)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _epochs_done(paths: RunPaths) -> int:
    if not paths.last.exists() or not paths.metrics.exists():
        return 0
    return max((int(row["epoch"]) for row in read_metrics(paths.metrics)), default=0)


def after_failure(paths: RunPaths, config: RunConfig, created: bool, err: BaseException) -> None:
    """After :func:`~hscl.engine.pretrain.run.train` failed with ``err``: remove the run folder when this call
    created it
    and no checkpoint was written (a failed command leaves no empty run folder), then raise ``err``, or for Ctrl-C
    :class:`TrainingInterrupted` (which says what can be resumed)."""
    from hscl.engine.runtime.distributed import launch_rank

    if created and not paths.last.exists() and launch_rank(config.train.devices) == 0:
        shutil.rmtree(paths.root, ignore_errors=True)
    if isinstance(err, KeyboardInterrupt) and not isinstance(err, TrainingInterrupted):
        raise TrainingInterrupted(paths.root, _epochs_done(paths), config.train.epochs) from None
    raise err


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.csv`` (one per epoch), as dicts of strings."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))
