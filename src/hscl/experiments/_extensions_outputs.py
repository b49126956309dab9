"""The outputs of the extension experiments (:mod:`hscl.experiments.extensions`): ``results.json``, a CSV and
a Markdown table, a PNG figure with its data as CSV (auto-beta: :mod:`hscl.experiments._auto_beta_outputs`)."""

from __future__ import annotations

import math
from pathlib import Path

from hscl.engine.evaluation.probes import mean_std
from hscl.engine.evaluation.report import fmt_mean_std, markdown_table, plot_curves, write_json, write_table
from hscl.engine.runtime.config import RunConfig
from hscl.experiments._extensions_cells import EXPERIMENTS
from hscl.experiments._numerics import numerics_footer

__all__ = ["memory_m_effects", "write_outputs"]


def _ms(entry: dict, metric: str, digits: int = 2, scale: float = 1.0) -> str:
    mean, std = entry.get(f"{metric}_mean"), entry.get(f"{metric}_std")
    if mean is None or not math.isfinite(mean):
        return "-"
    return fmt_mean_std(mean * scale, None if std is None or not math.isfinite(std) else std * scale, digits)


def _csv_rows(results: dict, metrics: tuple[str, ...]) -> tuple[list[str], list[list]]:
    header = ["key", "label", "method", "batch_size", "memory_size", "M", "M_during_warmup", "beta"]
    header += [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["train_seconds_mean", "seeds"]
    rows = []
    for key, e in results["cells"].items():
        loss, m = e["loss"], e.get("M", {})
        row = [key, e["label"], e["method"], e["batch_size"], loss.get("memory_size", 0)]
        row += [m.get("value", ""), m.get("during_warmup", ""), loss.get("beta", "")]
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


def _m_text(entry: dict) -> str:
    """The M column: the fixed value, or ``during warm-up → after`` when the default M changes with the memory."""
    m = entry.get("M")
    if not m:
        return "-"

    def text(value) -> str:
        return "|N(r)|" if value == "count" else f"{value:g}"

    if m["during_warmup"] == m["value"]:
        return text(m["value"])
    return f"{text(m['during_warmup'])} → {text(m['value'])}"


#: the comparisons of the 2 x 2 design (memory x M) at one batch size: name -> ((memory?, large M?) minus (...))
_EFFECTS = {
    "memory, M of the batch": ((True, False), (False, False)),
    "memory, M of the memory": ((True, True), (False, True)),
    "M, no memory": ((False, True), (False, False)),
    "M, with memory": ((True, True), (True, False)),
    "both (memory and its M)": ((True, True), (False, False)),
}


def memory_m_effects(results: dict, metrics: tuple[str, ...] = ("linear_top1", "knn_top1")) -> list[dict]:
    """The memory's and M's effects apart, from every complete 2 x 2 design among the cells.

    A design: four cells of one batch size, method and beta with explicit numeric M, two memory sizes (0 and K) and
    two values of M, each pair present. Each effect (:data:`_EFFECTS`) is the difference of two cells, paired by
    seed (the runs of a cell are in the order of ``results["seeds"]``): ``{metric}_mean`` / ``{metric}_std`` over
    the per-seed differences (points), with the cells' keys and the two Ms.
    """
    groups: dict[tuple, dict[tuple, tuple[str, dict]]] = {}
    for key, entry in results["cells"].items():
        m = entry.get("M") or {}
        if not m.get("explicit") or isinstance(m.get("value"), str):
            continue
        group = (entry["batch_size"], entry["method"], entry["loss"].get("beta"))
        groups.setdefault(group, {})[(_memory(entry), m["value"])] = (key, entry)
    effects = []
    for (batch, method, beta), cells in groups.items():
        memories, ms = sorted({k for k, _ in cells}), sorted({v for _, v in cells})
        if len(memories) != 2 or memories[0] != 0 or len(ms) != 2 or len(cells) != 4:
            continue
        pick = {(mem > 0, m == ms[1]): cell for (mem, m), cell in cells.items()}
        for name, (first, second) in _EFFECTS.items():
            (key_a, a), (key_b, b) = pick[first], pick[second]
            out = {"batch_size": batch, "method": method, "beta": beta, "effect": name, "cells": [key_a, key_b]}
            out.update({"memory_size": memories[1], "M_batch": ms[0], "M_memory": ms[1]})
            for metric in metrics:
                diffs = [ra[metric] - rb[metric] for ra, rb in zip(a["runs"], b["runs"])]
                out[f"{metric}_mean"], out[f"{metric}_std"] = mean_std(diffs)
            effects.append(out)
    return effects


def _signed(mean: float, std: float) -> str:
    """A difference in points with its sign, ``+0.14 ± 0.30`` (no ± for a single seed)."""
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.2f}" if not std or not math.isfinite(std) else f"{mean:+.2f} ± {std:.2f}"


def _small_batch(results: dict, out_dir: Path, config: RunConfig):
    header = ["batch", "method", "memory", "M", "linear top-1 (%)", "kNN top-1 (%)", "step (ms)", "train s / run"]
    rows, curves = [], {}
    cells = sorted(results["cells"].values(), key=lambda e: e["batch_size"])  # stable: the preset's order within
    for entry in cells:
        rows.append(
            [
                entry["batch_size"],
                entry["label"],
                _memory(entry),
                _m_text(entry),
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
    table = markdown_table(header, rows)
    results["effects"] = memory_m_effects(results)
    notes = [
        "M: the weight of the negatives in eq. (3), log(1 + M exp(-g) E(r)); a single value is fixed for the whole "
        "run (set in the preset, also during the memory's warm-up); 'a → b' is the default M, V*B - 2 during the "
        "memory's warm-up and V*B + K - 2 once it is in use.",
        "Step time: a training epoch's time over its steps, averaged over the epochs after the first; mean ± std "
        "over seeds, like the accuracies.",
    ]
    if results["effects"]:
        effect_rows = [
            [
                e["batch_size"],
                f"{e['effect']} (M {e['M_batch']:g} / {e['M_memory']:g})",
                f"{e['cells'][0]} − {e['cells'][1]}",
                _signed(e["linear_top1_mean"], e["linear_top1_std"]),
                _signed(e["knn_top1_mean"], e["knn_top1_std"]),
            ]
            for e in results["effects"]
        ]
        effect_header = ["batch", "effect of", "cells", "linear top-1 (points)", "kNN top-1 (points)"]
        table += "\n\nEffects apart (differences paired by seed, mean ± std over seeds):\n\n"
        table += markdown_table(effect_header, effect_rows)
    return "small_batch", table, _title(results, config, "Small batches"), "top1_vs_batch", notes
