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
overrides then apply to every cell, and ``train.seed`` is each seed in turn. The presets are found by
:mod:`hscl.experiments.presets` (suite ``extensions/<experiment>``); reading them, a cell's config and one cell's
run live in :mod:`hscl.experiments._extensions_cells`, below this module, auto-beta and the outputs.

Every (cell, seed) is pre-trained into ``<out>/<cell>/seed<k>/`` and evaluated there (``eval.json``); a
finished cell is reused and an interrupted one resumed from its last checkpoint, so the command can be run
again after an interruption. The outputs (:mod:`hscl.experiments._extensions_outputs`) are
``results.json`` and, per experiment, a CSV table, a Markdown table and a PNG figure with its data as CSV.
"""

from __future__ import annotations

import math
from pathlib import Path

from hscl.engine.evaluation.probes import mean_std
from hscl.engine.runtime.paths import portable_path
from hscl.experiments import presets
from hscl.experiments._extensions_cells import (
    EXPERIMENTS,
    ExtensionPreset,
    _finished,
    cell_config,
    find_extension_preset,
    list_extension_presets,
    load_extension_preset,
    m_used,
    run_cell,
)
from hscl.experiments._extensions_outputs import write_outputs
from hscl.experiments._numerics import run_numerics, table_numerics
from hscl.experiments.auto_beta import reproduce_auto_beta

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
