"""``hscl reproduce table1``: the H-SCL paper's Table I and Fig. 1 from one folder of configs.

A preset is a folder ``configs/table1/<preset>/`` with one YAML run config per method (a cell of
Table I). Each (method, seed) is pre-trained into ``<out>/<method>/seed<k>/`` (finished runs are
skipped, interrupted ones resumed), evaluated with the linear probe and kNN on frozen encoder
features, and the suite writes ``results.json``, ``table1.csv``, ``table1.md`` and ``fig1.png``
(kNN top-1 on the test split per epoch, with its data as ``fig1.csv``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hscl.engine.evaluation.probes import evaluate_task, mean_std
from hscl.engine.evaluation.report import fmt_mean_std, markdown_table, plot_curves, write_json, write_table
from hscl.engine.runtime.config import RunConfig, load_config
from hscl.engine.runtime.paths import portable_path
from hscl.experiments import presets
from hscl.experiments._numerics import numerics_footer, run_numerics, table_numerics
from hscl.experiments.methods import TABLE1_CELLS

__all__ = ["find_preset", "list_presets", "reproduce_table1"]


def list_presets(suite: str = "table1", extra: str | Path | None = None) -> list[str]:
    return presets.list_presets(suite, extra)


def find_preset(preset: str, suite: str = "table1", extra: str | Path | None = None) -> dict[str, Path]:
    """``{method key: config path}`` of a preset, in Table I's order."""
    folder = presets.find_preset(suite, preset, extra)
    files = {p.stem: p for p in folder.glob("*.yaml")}
    unknown = sorted(set(files) - set(TABLE1_CELLS))
    if unknown:
        raise ValueError(f"{folder}: unexpected config(s) {unknown}; expected names among {list(TABLE1_CELLS)}")
    return {key: files[key] for key in TABLE1_CELLS if key in files}


def _run_one(config: RunConfig, run_dir: Path, data) -> dict:
    """Pre-train (or resume) one cell and evaluate it; a finished cell of this config is read back from its
    ``eval.json``, one of another config refused (:func:`~hscl.engine.runtime.runs.check_run_config`). ``train_seconds``
    sums the epochs' training time, across resumes (:func:`~hscl.engine.runtime.runs.train_seconds`)."""
    from hscl.engine.pretrain.run import load_task, train
    from hscl.engine.runtime.runs import check_run_config, read_metrics, run_paths, train_seconds

    paths = run_paths(run_dir)
    check_run_config(run_dir, config)
    eval_file = run_dir / "eval.json"
    if eval_file.exists() and paths.final.exists():
        return json.loads(eval_file.read_text())
    if not paths.final.exists():
        train(config, run_dir, resume=True, data=data)
    task, _ = load_task(paths.final)
    result = evaluate_task(task, data, config)
    result["train_seconds"] = train_seconds(run_dir)
    result["curve"] = [
        {"epoch": int(r["epoch"]), "knn_top1": float(r["knn_top1"]), "loss": float(r["loss"])}
        for r in read_metrics(paths.metrics)
    ]
    eval_file.write_text(json.dumps(result, indent=2))
    return result


def reproduce_table1(
    preset: str,
    out_dir: str | Path,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    data_dir: str | None = None,
    methods: list[str] | None = None,
) -> dict:
    """Run a Table I preset; returns the results (also written to ``out_dir``)."""
    from hscl.engine.pretrain.datamodule import data_key
    from hscl.engine.pretrain.run import load_data
    from hscl.engine.runtime.runs import check_run_configs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = find_preset(preset, "table1", config_dir)
    if methods:
        unknown = sorted(set(methods) - set(files))
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; this preset has {list(files)}")
        files = {k: v for k, v in files.items() if k in methods}
    seeds = seeds or [0]
    extra = list(overrides or [])
    if data_dir is not None:
        extra.append(f"data.data_dir={data_dir}")
    configs = {key: load_config(path, extra) for key, path in files.items()}
    # every cell's config, checked against what its folder holds before any of them trains
    check_run_configs(
        {out_dir / k / f"seed{s}": load_config(files[k], [*extra, f"train.seed={s}"]) for k in configs for s in seeds}
    )
    results: dict = {"preset": preset, "seeds": seeds, "methods": {}}
    data_cache: dict = {}
    for key, base in configs.items():
        per_seed = []
        for seed in seeds:
            config = load_config(files[key], [*extra, f"train.seed={seed}"])
            key_data = data_key(config)  # the seed draws the subsets: one dataset per seed
            if key_data not in data_cache:
                data_cache = {key_data: load_data(config)}
            print(f"== {TABLE1_CELLS[key]} (seed {seed}) -> {out_dir / key / f'seed{seed}'}", flush=True)
            run = _run_one(config, out_dir / key / f"seed{seed}", data_cache[key_data])
            per_seed.append({**run, "numerics": run_numerics(out_dir / key / f"seed{seed}")})
        results["methods"][key] = {
            "label": TABLE1_CELLS[key],
            "config": portable_path(files[key], *presets.preset_roots(config_dir), out_dir),
            "loss": {k: v for k, v in vars(base.loss).items() if v is not None},
            "runs": per_seed,
            **{
                f"{metric}_{stat}": value
                for metric in ("linear_top1", "linear_top5", "knn_top1")
                for stat, value in zip(("mean", "std"), mean_std([r[metric] for r in per_seed]))
            },
        }
    cells = {
        f"{entry['label']} seed {seed}": run["numerics"]
        for entry in results["methods"].values()
        for seed, run in zip(seeds, entry["runs"])
    }
    results["numerics"] = table_numerics(cells, f"Table I ({preset}, {out_dir})")
    _write_outputs(results, out_dir, next(iter(configs.values())))
    return results


def _write_outputs(results: dict, out_dir: Path, any_config: RunConfig) -> None:
    header = ["method", "linear top-1 (%)", "linear top-5 (%)", "kNN top-1 (%)", "train s / run"]
    rows, csv_rows, curves = [], [], {}
    for key, entry in results["methods"].items():
        train_s = sum(r.get("train_seconds", math.nan) for r in entry["runs"]) / len(entry["runs"])
        rows.append(
            [
                entry["label"],
                fmt_mean_std(entry["linear_top1_mean"], entry["linear_top1_std"]),
                fmt_mean_std(entry["linear_top5_mean"], entry["linear_top5_std"]),
                fmt_mean_std(entry["knn_top1_mean"], entry["knn_top1_std"]),
                f"{train_s:.0f}",
            ]
        )
        csv_rows.append(
            [
                key,
                entry["label"],
                entry["linear_top1_mean"],
                entry["linear_top1_std"],
                entry["linear_top5_mean"],
                entry["linear_top5_std"],
                entry["knn_top1_mean"],
                entry["knn_top1_std"],
                len(entry["runs"]),
            ]
        )
        curve = entry["runs"][0]["curve"]
        curves[entry["label"]] = ([c["epoch"] for c in curve], [c["knn_top1"] for c in curve])
    table = markdown_table(header, rows)
    dc, tc = any_config.data, any_config.train
    title = (
        f"Table I ({results['preset']}): {dc.dataset}, {any_config.model.encoder}, {tc.epochs} epochs, "
        f"batch {tc.batch_size}, seeds {results['seeds']}"
    )
    results["table_markdown"] = table
    results["title"] = title
    write_json(out_dir / "results.json", results)
    write_table(
        out_dir / "table1.csv",
        [
            "key",
            "method",
            "linear_top1_mean",
            "linear_top1_std",
            "linear_top5_mean",
            "linear_top5_std",
            "knn_top1_mean",
            "knn_top1_std",
            "seeds",
        ],
        csv_rows,
    )
    footer = numerics_footer(results["numerics"])
    (out_dir / "table1.md").write_text(f"{title}\n\n{table}\n\n{footer}\n")
    plot_curves(
        out_dir / "fig1.png",
        curves,
        xlabel="epoch",
        ylabel="test kNN top-1 (%)",
        title=f"Fig. 1 ({results['preset']}): test accuracy per epoch (kNN monitor, seed {results['seeds'][0]})",
    )
    files = "results.json, table1.csv, table1.md, fig1.png, fig1.csv"
    print(f"\n{title}\n\n{table}\n\n{footer}\n\nwritten: {out_dir}/{files}")
