"""``hscl reproduce multilabel | small-batch | auto-beta``: experiments beyond the peers.

* ``multilabel``: UCL, SCL, H-SCL(beta) and SupCon pre-trained on ``fashion-mnist-mosaic`` (2 x 2 mosaics of
  Fashion-MNIST, labelled by the set of classes they show); the table gives the mAP and micro-F1 of a linear
  probe (one logistic regression per class) on the frozen encoder, and the kNN mAP.
* ``small-batch``: at batch 32 and 64, H-SCL(beta = 1) in a 2 x 2 design, no memory / a memory of 4096 past
  rows x M fixed at the batch's value (V*B - 2) / at the memory's (V*B + 4096 - 2), and SCL; the table gives
  each cell's M, the linear top-1 and the mean training step time (mean +- std over seeds), a second table the
  memory's and M's effects apart (paired over seeds).
* ``auto-beta``: H-SCL with beta from the paper's grid {0.1, 0.5, 1, 2, 5} at three temperatures against ONE
  default target of ``beta: auto``, chosen on validation data among candidates at one temperature
  (:mod:`hscl.experiments.auto_beta`, its own protocol and outputs).

A preset is one YAML file ``configs/extensions/<experiment>/<preset>.yaml`` (a user's ``--configs DIR`` is
looked in first, as ``DIR/extensions/<experiment>/<preset>.yaml``) holding ``experiment`` (its name),
``budget`` (one line naming the budget, printed with the table), ``seeds``, ``base`` (a run config shared by
every cell) and ``cells``: ``key -> {label, config}`` where ``config`` is merged into ``base``. ``--set``
overrides then apply to every cell, and ``train.seed`` is each seed in turn.

Every (cell, seed) is pre-trained into ``<out>/<cell>/seed<k>/`` and evaluated there (``eval.json``); a
finished cell is reused and an interrupted one resumed from its last checkpoint, so the command can be run
again after an interruption. The outputs (:mod:`hscl.experiments._extensions_outputs`) are
``results.json`` and, per experiment, a CSV table, a Markdown table and a PNG figure with its data as CSV.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hscl.engine.evaluation.probes import evaluate_task, mean_std
from hscl.engine.runtime.config import RunConfig, apply_overrides, config_from_dict, load_yaml, validate_config
from hscl.engine.runtime.paths import portable_path
from hscl.experiments import presets
from hscl.experiments._numerics import run_numerics, table_numerics

__all__ = [
    "EXPERIMENTS",
    "ExtensionPreset",
    "cell_config",
    "find_extension_preset",
    "list_extension_presets",
    "load_extension_preset",
    "m_used",
    "reproduce_extension",
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


def list_extension_presets(experiment: str, configs: str | Path | None = None) -> list[str]:
    """Names of the presets of ``experiment`` in ``configs`` (a user's folder) and in the package."""
    _check_experiment(experiment)
    names = set()
    for root in presets.preset_roots(configs):
        folder = root / "extensions" / experiment
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def find_extension_preset(experiment: str, preset: str, configs: str | Path | None = None) -> Path:
    """The YAML file of a preset, ``<root>/extensions/<experiment>/<preset>.yaml``, ``configs`` first."""
    _check_experiment(experiment)
    if not isinstance(preset, str) or not preset or "/" in preset or "\\" in preset or preset.startswith("."):
        raise ValueError(f"--preset {preset!r}: a preset is a plain name such as 'quick'")
    tried = []
    for root in presets.preset_roots(configs):
        path = root / "extensions" / experiment / f"{preset}.yaml"
        tried.append(str(path))
        if path.is_file():
            return path
    available = ", ".join(list_extension_presets(experiment, configs)) or "none found"
    raise ValueError(
        f"unknown preset {preset!r} for {experiment}; looked in {', '.join(tried)}; available: {available}"
    )


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


def _select(preset: ExtensionPreset, cells: list[str] | None) -> list[str]:
    if not cells:
        return list(preset.cells)
    unknown = [c for c in cells if c not in preset.cells]
    if unknown:
        raise ValueError(f"--methods: unknown cell(s) {', '.join(unknown)}; this preset has {', '.join(preset.cells)}")
    return [c for c in preset.cells if c in cells]


def reproduce_extension(
    experiment: str,
    preset: str = "quick",
    out_dir: str | Path | None = None,
    *,
    seeds: list[int] | None = None,
    cells: list[str] | None = None,
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    data_dir: str | None = None,
    select: str | None = None,
    workers: int = 1,
) -> dict:
    """Run the cells of an extension experiment's preset for each seed, then write its outputs.

    ``seeds`` replaces the preset's seeds, ``cells`` picks a subset of its cells (in the preset's order),
    ``overrides`` (``section.key=value``) apply to every cell. Returns the results (also ``results.json``).
    auto-beta only: ``select`` (the split choices are made on, default validation) and ``workers`` (cells trained
    at once) go to :func:`hscl.experiments.auto_beta.run_auto_beta`.
    """
    from hscl.engine.pretrain.datamodule import data_key
    from hscl.engine.pretrain.run import load_data
    from hscl.engine.runtime.runs import check_run_configs
    from hscl.experiments._extensions_outputs import write_outputs

    path = find_extension_preset(experiment, preset, config_dir)
    spec = load_extension_preset(path)
    if spec.experiment != experiment:
        raise ValueError(f"{path}: experiment is {spec.experiment!r}, not {experiment!r}")
    keys = _select(spec, cells)
    seeds = list(seeds) if seeds else list(spec.seeds)
    extra = list(overrides or [])
    if data_dir is not None:
        extra.append(f"data.data_dir={data_dir}")
    out_dir = Path(out_dir or f"runs/{experiment}-{preset}")
    if experiment == "auto-beta":
        from hscl.experiments.auto_beta import reproduce_auto_beta

        return reproduce_auto_beta(spec, path, preset, keys, seeds, extra, out_dir, select=select, workers=workers)
    if select is not None or workers != 1:
        raise ValueError(f"--select and --workers apply to auto-beta, not to {experiment}")
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = {(key, seed): cell_config(spec, key, extra, seed) for seed in seeds for key in keys}  # checked first
    check_run_configs({out_dir / key / f"seed{seed}": config for (key, seed), config in configs.items()})

    runs: dict[str, list[dict]] = {key: [] for key in keys}
    data_cache: dict = {}
    total = len(configs)
    for index, ((key, seed), config) in enumerate(configs.items(), 1):
        run_dir = out_dir / key / f"seed{seed}"
        done = _finished(run_dir)
        print(
            f"== [{index}/{total}] {spec.cells[key]['label']} (seed {seed}) -> {run_dir}"
            + (" (finished: read back)" if done is not None else ""),
            flush=True,
        )
        if done is not None:  # no data needed
            runs[key].append({**done, "numerics": run_numerics(run_dir)})
            continue
        key_data = data_key(config)
        if key_data not in data_cache:
            data_cache = {key_data: load_data(config)}  # one dataset in memory at a time
        runs[key].append({**run_cell(config, run_dir, data_cache[key_data]), "numerics": run_numerics(run_dir)})

    results: dict = {
        "experiment": experiment,
        "preset": preset,
        "config": portable_path(path, *presets.preset_roots(config_dir), out_dir),
        "budget": spec.budget,
        "seeds": seeds,
        "overrides": extra,
        "cells": {},
    }
    for key in keys:
        config = configs[(key, seeds[0])]
        entry = {
            "label": spec.cells[key]["label"],
            "method": config.loss.method,
            "loss": {k: v for k, v in vars(config.loss).items() if v is not None},
            "batch_size": config.train.batch_size,
            "M": m_used(config),
            "epochs": config.train.epochs,
            "dataset": config.data.dataset,
            "runs": runs[key],
        }
        for metric in EXPERIMENTS[experiment]:
            values = [r[metric] for r in runs[key] if isinstance(r.get(metric), (int, float))]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_std(values)
        entry["train_seconds_mean"] = mean_std([r.get("train_seconds", math.nan) for r in runs[key]])[0]
        results["cells"][key] = entry
    labels = {key: spec.cells[key]["label"] for key in keys}
    cells = {f"{labels[key]} seed {seed}": run["numerics"] for key in keys for seed, run in zip(seeds, runs[key])}
    results["numerics"] = table_numerics(cells, f"{experiment} ({preset}, {out_dir})")
    write_outputs(results, out_dir, configs[(keys[0], seeds[0])])
    return results
