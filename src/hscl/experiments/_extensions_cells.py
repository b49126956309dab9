"""The extension experiments' presets and cells, below :mod:`hscl.experiments.extensions` (which runs them),
:mod:`hscl.experiments.auto_beta` and :mod:`hscl.experiments._extensions_outputs` (which use them).

:data:`EXPERIMENTS` (each experiment's metrics), :class:`ExtensionPreset` and its lookup through
:mod:`hscl.experiments.presets` (suite ``extensions/<experiment>``), a cell's run config (:func:`cell_config`)
and its M (:func:`m_used`), and one cell pre-trained and evaluated (:func:`run_cell`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hscl.engine.evaluation.probes import evaluate_task
from hscl.engine.runtime.config import RunConfig, apply_overrides, config_from_dict, load_yaml, validate_config
from hscl.experiments import presets

__all__ = [
    "EXPERIMENTS",
    "ExtensionPreset",
    "cell_config",
    "find_extension_preset",
    "list_extension_presets",
    "load_extension_preset",
    "m_used",
    "run_cell",
]

#: experiment -> the metrics averaged over seeds for its table (keys of a cell's runs)
EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "multilabel": ("linear_mAP", "linear_micro_f1", "knn_mAP", "linear_train_mAP"),
    "small-batch": ("linear_top1", "linear_top5", "knn_top1", "step_seconds"),
    "auto-beta": ("linear_top1", "linear_top5", "knn_top1", "final_beta"),
}

#: the per-epoch columns of ``metrics.csv`` a run's ``curve`` keeps
_CURVE_KEYS = ("loss", "knn_top1", "knn_mAP", "beta", "beta_solved", "memory_rows", "step_seconds", "epoch_seconds")


@dataclass
class ExtensionPreset:
    """One preset of an extension experiment (the YAML file's keys)."""

    experiment: str
    base: dict[str, Any]
    cells: dict[str, Any]
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: str = ""
    #: auto-beta: temperatures and select_temperature (see hscl.experiments.auto_beta)
    protocol: dict[str, Any] = field(default_factory=dict)


def _check_experiment(experiment: str) -> str:
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown extension experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    return experiment


def _suite(experiment: str) -> str:
    """The preset suite of an extension experiment (:mod:`hscl.experiments.presets`)."""
    return f"extensions/{_check_experiment(experiment)}"


def list_extension_presets(experiment: str, configs: str | Path | None = None) -> list[str]:
    """Names of the presets of ``experiment`` in ``configs`` (a user's folder) and in the package."""
    return presets.list_presets(_suite(experiment), configs)


def find_extension_preset(experiment: str, preset: str, configs: str | Path | None = None) -> Path:
    """The YAML file of a preset, ``<root>/extensions/<experiment>/<preset>.yaml``, ``configs`` first
    (:func:`hscl.experiments.presets.find_preset` of the suite ``extensions/<experiment>``)."""
    return presets.find_preset(_suite(experiment), preset, configs)


def load_extension_preset(path: str | Path) -> ExtensionPreset:
    """Read and check a preset file: known keys, a mapping per cell with ``label`` and ``config``."""
    path = Path(path)
    data = load_yaml(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must hold a mapping at the top level")
    preset = config_from_dict(data, ExtensionPreset, str(path))
    _check_experiment(preset.experiment)
    if not preset.cells:
        raise ValueError(f"{path}: cells must name at least one cell")
    for key, cell in preset.cells.items():
        if not isinstance(cell, dict) or set(cell) - {"label", "config"} or "label" not in cell:
            raise ValueError(f"{path}: cells.{key} must be a mapping with a label and an optional config")
        if not isinstance(cell.get("config", {}), dict):
            raise ValueError(f"{path}: cells.{key}.config must be a mapping of run config keys")
    if not preset.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in preset.seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers, got {preset.seeds!r}")
    return preset


def _merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, section by section (a copy)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def cell_config(preset: ExtensionPreset, key: str, overrides: list[str] | None = None, seed: int = 0) -> RunConfig:
    """The validated run config of cell ``key`` for ``seed``: base, the cell's config, ``overrides``, the seed."""
    data = _merge(preset.base, preset.cells[key].get("config") or {})
    data.setdefault("name", f"{preset.experiment}-{key}")
    data = apply_overrides(data, [*(overrides or []), f"train.seed={seed}"])
    config = config_from_dict(data, RunConfig, f"{preset.experiment} cell {key}")
    validate_config(config)
    return config


def m_used(config: RunConfig) -> dict:
    """The M of a cell's loss (eq. (3): ``log(1 + M exp(-g(r, p)) E(r))``, the weight of the negatives against the
    positive), as ``{"explicit": bool, "value": M, "during_warmup": M}``.

    An explicit ``loss.M`` (a number) is the value at every step. None (the default): ``V*B - 2`` over the rows of
    the global batch, and with a memory of ``K`` rows ``V*B + K - 2`` once the memory is in use and full (``value``),
    ``V*B - 2`` during its ``memory_warmup_steps`` (``during_warmup``). ``"count"``: ``|N(r)|`` per anchor (both
    values ``"count"``).
    """
    lc = config.loss
    if isinstance(lc.M, str):
        return {"explicit": True, "value": lc.M, "during_warmup": lc.M}
    if lc.M is not None:
        return {"explicit": True, "value": float(lc.M), "during_warmup": float(lc.M)}
    rows = config.data.views * config.train.batch_size
    return {"explicit": False, "value": float(rows + lc.memory_size - 2), "during_warmup": float(rows - 2)}


def _curve(rows: list[dict]) -> list[dict]:
    """The per-epoch numbers of a run's ``metrics.csv`` (empty cells left out)."""
    out = []
    for row in rows:
        point: dict = {"epoch": int(row["epoch"])}
        for key in _CURVE_KEYS:
            text = row.get(key, "")
            if text not in ("", None):
                point[key] = float(text)
        out.append(point)
    return out


def _step_seconds(curve: list[dict]) -> float:
    """Mean training step time of a run: each epoch's time over its steps, averaged over the epochs after the
    first (which includes the start-up), or the first alone for a one-epoch run."""
    values = [p["step_seconds"] for p in curve if math.isfinite(p.get("step_seconds", math.nan))]
    values = values[1:] or values
    return sum(values) / len(values) if values else math.nan


def _finished(run_dir: Path) -> dict | None:
    """The results of a finished cell (its ``eval.json`` beside ``final.ckpt``), else None."""
    eval_file = run_dir / "eval.json"
    if eval_file.exists() and (run_dir / "final.ckpt").exists():
        return json.loads(eval_file.read_text())
    return None


def run_cell(config: RunConfig, run_dir: Path, data) -> dict:
    """Pre-train (or resume) one cell into ``run_dir`` and evaluate it; a finished cell is read back from
    its ``eval.json``. Returns :func:`~hscl.engine.evaluation.probes.evaluate_task`'s metrics plus ``train_seconds``,
    ``step_seconds``, ``final_beta`` (the last epoch's mean chosen beta, for ``beta: auto``) and the ``curve``.

    ``train_seconds`` is the sum of the epochs' training time (``epoch_seconds`` of ``metrics.csv``: the kNN
    monitor and the diagnostics excluded), so a resumed cell counts its epochs before the interruption too;
    ``wall_seconds`` is this call's wall-clock time (training, resumed or not, and evaluation)."""
    from hscl.engine.pretrain.run import load_task, train
    from hscl.engine.runtime.runs import read_metrics, run_paths

    paths = run_paths(run_dir)
    finished = _finished(run_dir)
    if finished is not None:
        return finished
    eval_file = run_dir / "eval.json"
    start = time.perf_counter()
    if not paths.final.exists():
        train(config, run_dir, resume=True, data=data)
    task, _ = load_task(paths.final)
    result = evaluate_task(task, data, config)
    curve = _curve(read_metrics(paths.metrics))
    result["train_seconds"] = sum(p.get("epoch_seconds", 0.0) for p in curve)
    result["wall_seconds"] = time.perf_counter() - start
    result["step_seconds"] = _step_seconds(curve)
    betas = [p["beta"] for p in curve if "beta" in p]
    result["final_beta"] = betas[-1] if betas else (config.loss.beta if isinstance(config.loss.beta, float) else None)
    result["curve"] = curve
    eval_file.write_text(json.dumps(result, indent=2))
    return result
