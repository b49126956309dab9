"""The outputs of the extension experiments (:mod:`hscl.experiments.extensions`): ``results.json``, a CSV and
a Markdown table, a PNG figure with its data as CSV (auto-beta: :mod:`hscl.experiments._auto_beta_outputs`)."""

from __future__ import annotations

import math
from pathlib import Path

from hscl.engine.config import RunConfig
from hscl.engine.report import fmt_mean_std, markdown_table, plot_curves, write_json, write_table
from hscl.experiments._numerics import numerics_footer

__all__ = ["write_outputs"]


def _ms(entry: dict, metric: str, digits: int = 2, scale: float = 1.0) -> str:
    mean, std = entry.get(f"{metric}_mean"), entry.get(f"{metric}_std")
    if mean is None or not math.isfinite(mean):
        return "-"
    return fmt_mean_std(mean * scale, None if std is None or not math.isfinite(std) else std * scale, digits)


def _csv_rows(results: dict, metrics: tuple[str, ...]) -> tuple[list[str], list[list]]:
    header = ["key", "label", "method", "batch_size", "memory_size", "beta"]
    header += [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["train_seconds_mean", "seeds"]
    rows = []
    for key, e in results["cells"].items():
        loss = e["loss"]
        row = [key, e["label"], e["method"], e["batch_size"], loss.get("memory_size", 0), loss.get("beta", "")]
        row += [e[f"{m}_{s}"] for m in metrics for s in ("mean", "std")]
        rows.append([*row, e["train_seconds_mean"], len(e["runs"])])
    return header, rows


def _title(results: dict, config: RunConfig, what: str) -> str:
    dc, tc = config.data, config.train
    budget = f" Budget: {results['budget']}." if results.get("budget") else ""
    return (
        f"{what} ({results['preset']}): {dc.dataset}, {config.model.encoder}, {tc.epochs} epochs, "
        f"seeds {results['seeds']}.{budget}"
    )


def write_outputs(results: dict, out_dir: Path, config: RunConfig) -> None:
    """Write the experiment's files into ``out_dir`` and print its table."""
    writer = {"multilabel": _multilabel, "small-batch": _small_batch}[results["experiment"]]
    stem, table, title, figure, notes = writer(results, out_dir, config)
    from hscl.experiments.extensions import EXPERIMENTS

    header, rows = _csv_rows(results, EXPERIMENTS[results["experiment"]])
    write_table(out_dir / f"{stem}.csv", header, rows)
    notes.append(
        "train s / run: the training time of a run's epochs summed (the kNN monitor, the diagnostics and the "
        "evaluation excluded), mean over seeds."
    )
    if results.get("overrides"):
        notes.append(f"Overrides of every cell: {', '.join(results['overrides'])}.")
    if results.get("numerics"):
        notes.append(numerics_footer(results["numerics"]))
    text = "\n\n".join([title, table, *notes])
    (out_dir / f"{stem}.md").write_text(text + "\n")
    results["title"], results["table_markdown"] = title, table
    write_json(out_dir / "results.json", results)
    files = f"results.json, {stem}.csv, {stem}.md, {figure}.png, {figure}.csv"
    print(f"\n{text}\n\nwritten: {out_dir}/{files}")


def _train_s(entry: dict) -> str:
    value = entry.get("train_seconds_mean", math.nan)
    return f"{value:.0f}" if math.isfinite(value) else "-"


def _multilabel(results: dict, out_dir: Path, config: RunConfig):
    header = ["method", "linear mAP (%)", "linear micro-F1 (%)", "kNN mAP (%)", "train mAP (%)", "train s / run"]
    rows, curves = [], {}
    for entry in results["cells"].values():
        rows.append(
            [
                entry["label"],
                _ms(entry, "linear_mAP"),
                _ms(entry, "linear_micro_f1"),
                _ms(entry, "knn_mAP"),
                _ms(entry, "linear_train_mAP"),
                _train_s(entry),
            ]
        )
        curve = [p for p in entry["runs"][0]["curve"] if "knn_mAP" in p]
        curves[entry["label"]] = ([p["epoch"] for p in curve], [p["knn_mAP"] for p in curve])
    plot_curves(
        out_dir / "knn_map.png",
        curves,
        xlabel="epoch",
        ylabel="test kNN mAP (%)",
        title=f"multi-label ({results['preset']}): kNN mAP per epoch (seed {results['seeds'][0]})",
    )
    notes = [
        "Linear probe: one logistic regression per class on the frozen encoder features (L-BFGS); mAP over the "
        f"classes, micro-F1 at probability 0.5; kNN: weighted {config.eval.knn_k}-NN class scores."
    ]
    return "multilabel", markdown_table(header, rows), _title(results, config, "Multi-label"), "knn_map", notes


def _memory(entry: dict) -> int:
    return int(entry["loss"].get("memory_size", 0) or 0)


def _small_batch(results: dict, out_dir: Path, config: RunConfig):
    header = ["batch", "method", "memory", "linear top-1 (%)", "kNN top-1 (%)", "step (ms)", "train s / run"]
    rows, curves = [], {}
    cells = sorted(results["cells"].values(), key=lambda e: e["batch_size"])  # stable: the preset's order within
    for entry in cells:
        rows.append(
            [
                entry["batch_size"],
                entry["label"],
                _memory(entry),
                _ms(entry, "linear_top1"),
                _ms(entry, "knn_top1"),
                _ms(entry, "step_seconds", digits=1, scale=1000.0),
                _train_s(entry),
            ]
        )
        xs, ys = curves.setdefault(entry["label"], ([], []))
        xs.append(entry["batch_size"])
        ys.append(entry["linear_top1_mean"])
    plot_curves(
        out_dir / "top1_vs_batch.png",
        curves,
        xlabel="batch size",
        ylabel="linear top-1 (%), mean over seeds",
        title=f"small batches ({results['preset']}): linear top-1 against the batch size",
    )
    notes = [
        "Step time: a training epoch's time over its steps, averaged over the epochs after the first; mean ± std "
        "over seeds, like the accuracies."
    ]
    return "small_batch", markdown_table(header, rows), _title(results, config, "Small batches"), "top1_vs_batch", notes
