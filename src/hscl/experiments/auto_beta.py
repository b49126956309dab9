"""``hscl reproduce auto-beta``: does ONE default target of ``beta: auto`` match the beta grid at every temperature?

The preset (``configs/extensions/auto-beta/<preset>.yaml``, the format of :mod:`hscl.experiments.extensions`)
names grid cells (``loss.beta`` a number) and candidate cells (``loss.beta: auto`` with a ``loss.auto_target``),
and a ``protocol``: ``temperatures`` and ``select_temperature``. The protocol:

1. every grid cell and every candidate at ``select_temperature``, for every seed;
2. the default target: the candidate with the best mean selection accuracy there;
3. every grid cell and that one target at the other temperatures;
4. at each temperature, the verdict: the grid point with the best mean selection accuracy, against the target's
   cell, by TEST linear top-1 (mean over seeds): the target is *within* when it is at most
   ``max(0.5 points, the pooled standard deviation over seeds of the two cells)`` below the grid point.

The selection accuracy is the validation linear top-1 (``val_linear_top1``: the run holds ``eval.val_fraction``
of its training split out, the preset 0.1) by default; ``select="test"`` chooses on the test linear top-1 instead
(the paper's protocol, labelled so in every output). The test-best grid point is reported beside either.

Every (temperature, cell, seed) trains into ``<out>/t<temperature>/<cell>/seed<k>/``; a finished one is reused
when the resolved config it recorded (``config.yaml``) equals this one's, apart from :data:`RUNTIME_KEYS` (and
:data:`AUTO_KEYS` at a fixed beta); an
interrupted one is resumed; a folder holding a run of another config is an error. ``workers > 1`` trains that
many cells at once in separate processes. Outputs: :mod:`hscl.experiments._auto_beta_outputs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from hscl.engine.evaluation.probes import mean_std
from hscl.engine.runtime.config import RunConfig, config_to_dict
from hscl.experiments._extensions_cells import ExtensionPreset, cell_config, run_cell
from hscl.experiments._numerics import run_numerics, table_numerics

__all__ = [
    "RUNTIME_KEYS",
    "SELECT",
    "Protocol",
    "choose_target",
    "judge",
    "protocol_of",
    "reproduce_auto_beta",
    "run_auto_beta",
]

#: the splits a choice may be made on: validation (the default) or test (the paper's protocol)
SELECT = ("validation", "test")
#: the verdict's tolerance in points (or the pooled seed standard deviation when larger)
VERDICT_POINTS = 0.5
#: config keys that do not change a run's numbers: a finished run that differs only in them is reused
RUNTIME_KEYS = (("train", "threads"), ("train", "progress"), ("data", "data_dir"))


@dataclass(frozen=True)
class Protocol:
    """The experiment's plan: the temperatures, the one the target is chosen at, the grid and candidate cells."""

    temperatures: tuple[float, ...]
    select_temperature: float
    grid: tuple[str, ...]
    candidates: tuple[str, ...]


def protocol_of(preset: ExtensionPreset, keys: list[str]) -> Protocol:
    """The protocol of a preset, for its cells ``keys`` (grid: a numeric ``loss.beta``; candidates: ``auto``)."""
    spec = dict(preset.protocol or {})
    unknown = set(spec) - {"temperatures", "select_temperature"}
    if unknown:
        raise ValueError(
            f"protocol: unknown key(s) {', '.join(sorted(unknown))}; valid: temperatures, select_temperature"
        )
    temperatures = spec.get("temperatures", [0.5])
    if not isinstance(temperatures, list) or not temperatures or not all(_positive(t) for t in temperatures):
        raise ValueError(f"protocol.temperatures must be a non-empty list of numbers > 0, got {temperatures!r}")
    select_t = spec.get("select_temperature", temperatures[0])
    if select_t not in temperatures:
        raise ValueError(
            f"protocol.select_temperature must be one of protocol.temperatures {temperatures}, got {select_t!r}"
        )
    beta = {key: (preset.cells[key].get("config") or {}).get("loss", {}).get("beta") for key in keys}
    grid = tuple(k for k in keys if _positive(beta[k]) or beta[k] == 0)
    candidates = tuple(k for k in keys if beta[k] == "auto")
    if not grid or not candidates:
        raise ValueError(
            f"auto-beta needs at least one grid cell (loss.beta a number) and one candidate (loss.beta: auto); "
            f"the cells chosen are {', '.join(keys)}"
        )
    return Protocol(tuple(float(t) for t in temperatures), float(select_t), grid, candidates)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _tag(temperature: float) -> str:
    return f"t{temperature:g}"


def summarize(runs: list[dict]) -> dict:
    """Means and standard deviations over seeds of a cell's runs."""
    out: dict = {}
    for metric in ("linear_top1", "val_linear_top1", "knn_top1", "final_beta", "final_beta_solved", "train_seconds"):
        values = [r[metric] for r in runs if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        out[f"{metric}_mean"], out[f"{metric}_std"] = mean_std(values)
    return out


def _metric(select: str) -> str:
    return "val_linear_top1" if select == "validation" else "linear_top1"


def _best(cells: dict[str, dict], keys, metric: str) -> str:
    """The key with the largest mean ``metric`` (the first on a tie; NaN never wins)."""
    scored = [
        (cells[k][f"{metric}_mean"], -i, k) for i, k in enumerate(keys) if math.isfinite(cells[k][f"{metric}_mean"])
    ]
    if not scored:
        raise ValueError(f"no cell among {', '.join(keys)} has a finite {metric}: nothing to choose from")
    return max(scored)[2]


def choose_target(cells: dict[str, dict], candidates, select: str = "validation") -> str:
    """The candidate (key of ``cells``, each a :func:`summarize` with a ``loss``) with the best mean selection
    accuracy: ``val_linear_top1`` for ``select="validation"``, ``linear_top1`` for ``"test"``."""
    return _best(cells, candidates, _metric(select))


def judge(
    cells: dict[str, dict], grid, target: str, select: str = "validation", points: float = VERDICT_POINTS
) -> dict:
    """The verdict at one temperature: the selected grid point against the ``target`` cell by test top-1.

    ``cells``: key -> :func:`summarize` output. Returns the selected grid key (on ``select``), the test-best grid
    key, the gap (grid minus target, in points), the tolerance ``max(points, sqrt((s_grid^2 + s_auto^2) / 2))``
    and ``within`` (gap <= tolerance)."""
    chosen = _best(cells, grid, _metric(select))
    g, a = cells[chosen], cells[target]
    gap = g["linear_top1_mean"] - a["linear_top1_mean"]
    stds = [s if math.isfinite(s) else 0.0 for s in (g["linear_top1_std"], a["linear_top1_std"])]
    pooled = math.sqrt((stds[0] ** 2 + stds[1] ** 2) / 2)
    tolerance = max(points, pooled)
    return {
        "selected_on": select,
        "grid_selected": chosen,
        "grid_test_best": _best(cells, grid, "linear_top1"),
        "target": target,
        "gap_points": gap,
        "pooled_std": pooled,
        "tolerance": tolerance,
        "within": bool(gap <= tolerance),
    }


# ------------------------------------------------------------------------------------------------------------
# running the cells


#: the keys of ``beta: auto`` alone: a run at a fixed beta is the same run whatever they hold
AUTO_KEYS = ("auto_target", "auto_momentum", "auto_warmup_steps")


def _comparable(data: dict) -> dict:
    data = yaml.safe_load(yaml.safe_dump(data))  # the types config.yaml reads back as
    data.pop("git_revision", None)
    for section, key in RUNTIME_KEYS:
        data.get(section, {}).pop(key, None)
    loss = data.get("loss", {})
    if loss.get("beta") != "auto":
        for key in AUTO_KEYS:
            loss.pop(key, None)
    return data


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def check_reusable(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a run (finished or not) of ``config``: False for an empty or new folder, True when
    its ``config.yaml`` equals ``config`` (apart from :data:`RUNTIME_KEYS`); a run of another config raises."""
    recorded = run_dir / "config.yaml"
    if not recorded.exists():
        return False
    differ = _differences(_comparable(yaml.safe_load(recorded.read_text())), _comparable(config_to_dict(config)))
    if differ:
        raise ValueError(
            f"{run_dir} holds a run of another config (it differs in {', '.join(differ[:6])}); remove the folder or "
            "choose another --out"
        )
    return True


def _train_one(config_data: dict, run_dir: str) -> dict:
    """One cell in a worker process: load its data, train (or resume) and evaluate it."""
    from hscl.engine.pretrain.run import load_data
    from hscl.engine.runtime.config import config_from_dict

    config = config_from_dict(config_data, RunConfig, "auto-beta cell")
    return run_cell(config, Path(run_dir), load_data(config))


def _with_record(result: dict, run_dir: Path) -> dict:
    """A cell's result with the last epoch's mean solved beta and the numerics it trained in."""
    solved = [p["beta_solved"] for p in result.get("curve", []) if "beta_solved" in p]
    return {**result, "final_beta_solved": solved[-1] if solved else None, "numerics": run_numerics(run_dir)}


def run_cells(jobs: list[tuple[str, RunConfig, Path]], workers: int = 1) -> dict[str, dict]:
    """Train and evaluate (or read back) each ``(name, config, run_dir)``; returns name -> result."""
    for _, config, run_dir in jobs:  # every folder checked before anything trains
        check_reusable(run_dir, config)
    results: dict[str, dict] = {}
    total = len(jobs)
    if workers <= 1:
        from hscl.engine.pretrain.datamodule import data_key
        from hscl.engine.pretrain.run import load_data

        cache: dict = {}
        for index, (name, config, run_dir) in enumerate(jobs, 1):
            print(f"== [{index}/{total}] {name} -> {run_dir.name}", flush=True)
            key = data_key(config)
            finished = (run_dir / "eval.json").exists() and (run_dir / "final.ckpt").exists()
            if not finished and key not in cache:
                cache = {key: load_data(config)}  # one dataset in memory at a time
            results[name] = _with_record(run_cell(config, run_dir, cache.get(key)), run_dir)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, config_to_dict(c), str(d)): (name, d) for name, c, d in jobs}
        for index, future in enumerate(as_completed(futures), 1):
            name, run_dir = futures[future]
            results[name] = _with_record(future.result(), run_dir)
            print(f"== [{index}/{total}] {name} done", flush=True)
    return results


# ------------------------------------------------------------------------------------------------------------
# the experiment


def run_auto_beta(
    preset: ExtensionPreset,
    keys: list[str],
    seeds: list[int],
    overrides: list[str],
    out_dir: Path,
    *,
    select: str = "validation",
    workers: int = 1,
) -> dict:
    """Run the protocol (module docstring) and return the results (cells per temperature, the choices, the
    verdicts); :func:`hscl.experiments._auto_beta_outputs.write_auto_beta` writes them."""
    if select not in SELECT:
        raise ValueError(f"--select must be validation or test, got {select!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    protocol = protocol_of(preset, keys)

    def config(key: str, t: float, seed: int) -> RunConfig:
        return cell_config(preset, key, [*overrides, f"loss.temperature={t}"], seed)

    if select == "validation" and cell_config(preset, keys[0], overrides, seeds[0]).eval.val_fraction <= 0:
        raise ValueError("auto-beta chooses on validation data: set eval.val_fraction > 0 (or pass --select test)")
    probe = config(keys[0], protocol.temperatures[0], seeds[0])
    setup = {
        "dataset": probe.data.dataset,
        "train_subset": probe.data.train_subset,
        "val_fraction": probe.eval.val_fraction,
        "encoder": probe.model.encoder,
        "epochs": probe.train.epochs,
        "batch_size": probe.train.batch_size,
    }
    select_t = protocol.select_temperature
    others = [t for t in protocol.temperatures if t != select_t]
    first = [(key, select_t) for key in (*protocol.grid, *protocol.candidates)]
    cells = _run_stage(preset, first, seeds, config, out_dir, workers, {})
    at_select = {k: cells[_tag(protocol.select_temperature)][k] for k in protocol.candidates}
    target = choose_target(at_select, protocol.candidates, select)
    second = [(key, t) for t in others for key in (*protocol.grid, target)]
    cells = _run_stage(preset, second, seeds, config, out_dir, workers, cells)
    cells = {_tag(t): cells[_tag(t)] for t in protocol.temperatures}  # in the protocol's order
    verdicts = {
        _tag(t): {"temperature": t, **judge(cells[_tag(t)], protocol.grid, target, select)}
        for t in protocol.temperatures
    }
    numerics = {  # one precision in the whole table (or every cell pinned), else a one-line error
        f"T={c['temperature']:g} {c['label']} seed {seed}": run["numerics"]
        for by_key in cells.values()
        for c in by_key.values()
        for seed, run in zip(seeds, c["runs"])
    }
    return {
        "experiment": "auto-beta",
        "selected_on": select,
        "protocol": {
            "temperatures": list(protocol.temperatures),
            "select_temperature": protocol.select_temperature,
            "grid": list(protocol.grid),
            "candidates": list(protocol.candidates),
            "verdict_points": VERDICT_POINTS,
        },
        "seeds": seeds,
        "overrides": overrides,
        "setup": setup,
        "target": {
            "key": target,
            "auto_target": cells[_tag(protocol.select_temperature)][target]["loss"]["auto_target"],
        },
        "cells": cells,
        "verdicts": verdicts,
        "within_everywhere": all(v["within"] for v in verdicts.values()),
        "numerics": table_numerics(numerics, f"auto-beta ({out_dir.name})"),
    }


def _run_stage(preset: ExtensionPreset, pairs, seeds, config, out_dir: Path, workers: int, cells: dict) -> dict:
    """Run ``(cell key, temperature)`` pairs for every seed and add their summaries to ``cells`` (by ``t<T>``)."""
    jobs = [
        (f"{_tag(t)}/{key}/seed{seed}", config(key, t, seed), out_dir / _tag(t) / key / f"seed{seed}")
        for key, t in pairs
        for seed in seeds
    ]
    results = run_cells(jobs, workers)
    for key, t in pairs:
        runs = [results[f"{_tag(t)}/{key}/seed{seed}"] for seed in seeds]
        resolved = config(key, t, seeds[0])
        loss = {k: v for k, v in vars(resolved.loss).items() if v is not None}
        cells.setdefault(_tag(t), {})[key] = {
            "key": key,
            "label": preset.cells[key]["label"],
            "temperature": t,
            "loss": loss,
            "runs": runs,
            "run_dirs": [f"{_tag(t)}/{key}/seed{seed}" for seed in seeds],
            **summarize(runs),
        }
    return cells


def reproduce_auto_beta(
    preset: ExtensionPreset,
    path: Path,
    name: str,
    keys: list[str],
    seeds: list[int],
    overrides: list[str],
    out_dir: Path,
    *,
    select: str | None = None,
    workers: int = 1,
) -> dict:
    """:func:`run_auto_beta`, then the outputs in ``out_dir``; the results record the preset by name, never by
    a machine's path."""
    from hscl.experiments._auto_beta_outputs import write_auto_beta

    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_auto_beta(preset, keys, seeds, overrides, out_dir, select=select or "validation", workers=workers)
    results.update(preset=name, config=f"extensions/auto-beta/{path.name}", budget=preset.budget)
    write_auto_beta(results, out_dir)
    return results
