"""The outputs of ``hscl reproduce auto-beta`` (:mod:`hscl.experiments.auto_beta`): ``results.json``,
``auto_beta.csv`` / ``auto_beta.md`` (per temperature the grid rows, the candidates, the default target's row, which
split selected what, the beta of the last epoch; the verdicts) and ``beta_trajectory.png`` / ``.csv`` (the beta
used and solved per epoch at each temperature, the selected grid beta beside it). Paths are relative to the run
folder."""

from __future__ import annotations

import math
from pathlib import Path

from hscl.engine.evaluation.report import fmt_mean_std, markdown_table, write_json, write_table
from hscl.experiments._numerics import numerics_footer

__all__ = ["write_auto_beta"]


def _ms(cell: dict, metric: str, digits: int = 2) -> str:
    mean, std = cell.get(f"{metric}_mean", math.nan), cell.get(f"{metric}_std", math.nan)
    if mean is None or not math.isfinite(mean):
        return "-"
    return fmt_mean_std(mean, std if std is not None and math.isfinite(std) else None, digits)


def _split(select: str) -> str:
    return "validation" if select == "validation" else "test (the paper's protocol)"


def _roles(results: dict, tag: str, key: str) -> str:
    """What this cell is at this temperature: grid point selected, test-best grid point, candidate, target."""
    protocol, verdict, target = results["protocol"], results["verdicts"][tag], results["target"]["key"]
    select = results["selected_on"]
    roles = []
    if key == verdict["grid_selected"]:
        roles.append(f"grid point selected on {select}")
    if key == verdict["grid_test_best"] and select != "test":
        roles.append("best grid point on test (not used)")
    if key == target:
        roles.append(f"default target (chosen on {select} at temperature {protocol['select_temperature']:g})")
    elif key in protocol["candidates"]:
        roles.append("candidate target")
    return "; ".join(roles)


def _beta(cell: dict) -> str:
    if cell["loss"].get("beta") != "auto":
        return f"{cell['loss']['beta']:g}"
    used = _ms(cell, "final_beta", 3)
    solved = cell.get("final_beta_solved_mean")
    return used + (f" (solved {solved:.3f})" if solved is not None and math.isfinite(solved) else "")


def _rows(results: dict) -> tuple[list[list], list[list]]:
    """The Markdown rows and the CSV rows of the main table, temperature by temperature."""
    md, csv = [], []
    for tag, cells in results["cells"].items():
        for key, cell in cells.items():
            roles = _roles(results, tag, key)
            md.append(
                [
                    f"{cell['temperature']:g}",
                    cell["label"],
                    _ms(cell, "val_linear_top1"),
                    _ms(cell, "linear_top1"),
                    _ms(cell, "knn_top1"),
                    _beta(cell),
                    roles,
                ]
            )
            loss = cell["loss"]
            csv.append(
                [cell["temperature"], key, cell["label"], loss.get("beta"), loss.get("auto_target", "")]
                + [cell.get(f"{m}_{s}") for m in _CSV_METRICS for s in ("mean", "std")]
                + [len(cell["runs"]), roles]
            )
    return md, csv


_CSV_METRICS = ("val_linear_top1", "linear_top1", "knn_top1", "final_beta", "final_beta_solved", "train_seconds")


def _verdict_rows(results: dict) -> list[list]:
    rows = []
    for tag, v in results["verdicts"].items():
        cells = results["cells"][tag]
        grid, auto = cells[v["grid_selected"]], cells[v["target"]]
        rows.append(
            [
                f"{v['temperature']:g}",
                f"{grid['label']} ({_ms(grid, 'linear_top1')})",
                f"{auto['label']} ({_ms(auto, 'linear_top1')})",
                f"{v['gap_points']:+.2f}",
                f"{v['tolerance']:.2f}",
                "within" if v["within"] else "NOT within",
            ]
        )
    return rows


def _verdict_text(results: dict) -> str:
    target, protocol = results["target"], results["protocol"]
    select = _split(results["selected_on"])
    candidates = results["cells"][f"t{protocol['select_temperature']:g}"]
    listed = ", ".join(f"{candidates[k]['loss']['auto_target']:g}" for k in protocol["candidates"])
    failed = [f"{v['temperature']:g}" for v in results["verdicts"].values() if not v["within"]]
    text = (
        f"Default target: {target['auto_target']:g}, the candidate ({listed}) with the best mean {select} linear "
        f"top-1 at temperature {protocol['select_temperature']:g}. At each temperature the grid point is the one "
        f"with the best mean {select} linear top-1; the comparison is by TEST linear top-1 (gap = grid minus auto), "
        f"within when the gap is at most max({protocol['verdict_points']:g} points, the pooled standard deviation "
        "over seeds of the two cells). "
    )
    if not failed:
        return text + "Verdict: the one default target is within at every temperature."
    return text + f"Verdict: the default target is NOT within at temperature(s) {', '.join(failed)}."


def _figure(results: dict, out_dir: Path) -> None:
    """Beta used (solid) and solved (dashed) per epoch, mean over seeds, for the default target at each
    temperature, and the selected grid beta (dotted); the data as ``beta_trajectory.csv``."""
    from hscl.engine.evaluation.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    rows = []
    target = results["target"]["key"]
    for index, (tag, cells) in enumerate(results["cells"].items()):
        cell, color = cells[target], f"C{index}"
        t = cell["temperature"]
        for series, style in (("beta", "-"), ("beta_solved", "--")):
            per_epoch: dict[int, list[float]] = {}
            for run in cell["runs"]:
                for point in run.get("curve", []):
                    if series in point:
                        per_epoch.setdefault(int(point["epoch"]), []).append(point[series])
            epochs = sorted(per_epoch)
            ys = [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
            name = "used" if series == "beta" else "solved"
            ax.plot(epochs, ys, style, color=color, marker="o", markersize=3, label=f"T={t:g}, {name}")
            rows += [[t, name, e, y] for e, y in zip(epochs, ys)]
        grid = cells[results["verdicts"][tag]["grid_selected"]]["loss"]["beta"]
        ax.axhline(grid, color=color, linestyle=":", linewidth=1, label=f"T={t:g}, selected grid beta")
        rows.append([t, "selected grid beta", "", grid])
    ax.set_xlabel("epoch")
    ax.set_ylabel("beta (epoch mean, mean over seeds)")
    ax.set_title(f"auto beta ({results.get('preset', '')}): target {results['target']['auto_target']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "beta_trajectory.png")
    plt.close(fig)
    write_table(out_dir / "beta_trajectory.csv", ["temperature", "series", "epoch", "beta"], rows)


def _title(results: dict) -> str:
    s = results.get("setup", {})
    budget = f" Budget: {results['budget']}." if results.get("budget") else ""
    return (
        f"Automatic beta ({results.get('preset', '')}): {s.get('dataset')}, {s.get('encoder')}, {s.get('epochs')} "
        f"epochs, batch {s.get('batch_size')}, seeds {results['seeds']}; choices "
        f"on {_split(results['selected_on'])} (eval.val_fraction {s.get('val_fraction')} of the training split "
        f"held out).{budget}"
    )


def write_auto_beta(results: dict, out_dir: Path) -> None:
    """Write the experiment's files into ``out_dir`` and print its tables."""
    md, csv = _rows(results)
    header = ["temperature", "hardening", "val linear top-1 (%)", "test linear top-1 (%)", "kNN top-1 (%)"]
    header += ["beta (last epoch)", "selected"]
    table = markdown_table(header, md)
    verdicts = markdown_table(
        ["temperature", "grid point (test top-1)", "auto (test top-1)", "gap (points)", "tolerance", "verdict"],
        _verdict_rows(results),
    )
    csv_header = ["temperature", "key", "label", "beta", "auto_target"]
    csv_header += [f"{m}_{s}" for m in _CSV_METRICS for s in ("mean", "std")] + ["seeds", "selected"]
    write_table(out_dir / "auto_beta.csv", csv_header, csv)
    _figure(results, out_dir)
    title = _title(results)
    notes = [
        _verdict_text(results),
        "beta (last epoch): the last epoch's mean beta used (after the engine's warm-up and moving average), mean "
        "± std over seeds, with the mean solved beta; the figure shows both per epoch.",
    ]
    if results.get("overrides"):
        notes.append(f"Overrides of every cell: {', '.join(results['overrides'])}.")
    notes.append(numerics_footer(results["numerics"]))
    text = "\n\n".join([title, table, verdicts, *notes])
    (out_dir / "auto_beta.md").write_text(text + "\n")
    results["title"], results["table_markdown"], results["verdict_markdown"] = title, table, verdicts
    results["files"] = ["results.json", "auto_beta.csv", "auto_beta.md", "beta_trajectory.png", "beta_trajectory.csv"]
    write_json(out_dir / "results.json", results)
    print(f"\n{text}\n\nwritten: {out_dir}/{{{', '.join(results['files'])}}}")
