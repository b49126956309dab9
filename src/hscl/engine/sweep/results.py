"""The results of a sweep: one row per grid point (JSON, CSV, Markdown) and its plot (PNG, data as CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hscl.engine.evaluation.report import markdown_table, write_json, write_table
from hscl.engine.runtime.paths import portable_path
from hscl.engine.sweep.spec import METRICS, point_slug
from hscl.engine.sweep.study import (
    _fail_stale,
    _open_study,
    _status,
    _study_lock,
)

if TYPE_CHECKING:
    from hscl.engine.sweep.spec import Sweep


def _plot(sweep: Sweep, rows: list[dict], metric_names: list[str]) -> Path:
    """Accuracy against the first grid parameter; one line per value of the others (if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sweep.grid)
    x_name, others = names[0], names[1:]
    if len(names) == 2 and {"tau_start", "tau_end"} == set(names):
        x_name, others = "tau_end", ["tau_start"]
    # top-1 accuracies (top-5 sits near 100% and would flatten them), the maximised metric and the one selected on
    keys = ("linear_top1", "knn_top1", sweep.metric, sweep.selection_key)
    accuracy = [m for m in metric_names if m in keys]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    data_rows = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["state"] == "complete":
            groups.setdefault(tuple(r[o] for o in others), []).append(r)
    numeric = all(isinstance(r[x_name], (int, float)) for r in rows)
    styles = {"linear_top1": "-", "knn_top1": "--", "linear_top5": ":", sweep.selection_key: "-."}
    for index, (group, members) in enumerate(groups.items()):
        members.sort(key=lambda r: r[x_name] if numeric else str(r[x_name]))
        xs = [r[x_name] for r in members]
        suffix = ", ".join(f"{o}={v}" for o, v in zip(others, group))
        for metric in accuracy:  # one colour per group, one line style per metric
            ys = [r[metric] for r in members]
            label = _series_label(metric) + (f" ({suffix})" if suffix else "")
            shown = xs if numeric else [str(x) for x in xs]
            color = f"C{index}" if len(groups) > 1 else f"C{accuracy.index(metric)}"
            ax.plot(shown, ys, marker="o", color=color, linestyle=styles.get(metric, "-"), label=label)
            data_rows += [[label, x, y] for x, y in zip(xs, ys)]
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r[sweep.selection_key])
    ax.plot(
        [best[x_name] if numeric else str(best[x_name])],
        [best[sweep.metric]],
        marker="*",
        markersize=14,
        color="black",
        linestyle="none",
        label=f"selected on {sweep.select} ({sweep.selection_key}): its test {sweep.metric}",
    )
    values = [r[x_name] for r in rows]
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(sorted(values))
        ax.set_xticklabels([f"{v:g}" for v in sorted(values)])
    ax.set_xlabel(x_name)
    ax.set_ylabel("accuracy (%)")
    base = sweep.base_config()
    ax.set_title(f"{base.name}: accuracy against {x_name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = sweep.out_dir / f"accuracy_vs_{x_name}.png"
    fig.savefig(path)
    plt.close(fig)
    write_table(path.with_suffix(".csv"), ["series", x_name, "accuracy"], data_rows)
    return path


def _series_label(metric: str) -> str:
    """``val_linear_top1`` -> ``linear_top1 (validation)``; a test metric -> ``linear_top1 (test)``."""
    return f"{metric[4:]} (validation)" if metric.startswith("val_") else f"{metric} (test)"


def _selection_text(sweep: Sweep, base) -> str:
    """How the best point was chosen, for the title."""
    if sweep.select == "test":
        return (
            f"best point selected on TEST {sweep.metric} (the paper's protocol: best over the grid on the test "
            "split; optimistic)"
        )
    return (
        f"best point selected on validation {sweep.selection_key} (eval.val_fraction={base.eval.val_fraction:g} of "
        f"the training split held out), reported with its test {sweep.metric}"
    )


# --------------------------------------------------------------------------------------------
# results


def _point_rows(sweep: Sweep, status: dict) -> list[dict]:
    """One row per grid point: its values, the metrics of its complete trial (if any), its state."""
    rows = []
    for entry in status.values():
        trial = entry["complete"]
        metrics = trial.user_attrs.get("metrics", {}) if trial is not None else {}
        rows.append(
            {
                **entry["point"],
                **metrics,
                "state": "complete" if trial is not None else ("running" if entry["running"] else "pending"),
                "trial": trial.number if trial is not None else None,
                "failed_attempts": len(entry["failures"]),
                "run_dir": sweep.run_dir(entry["point"]).relative_to(sweep.out_dir).as_posix(),
            }
        )
    return rows


def _best_text(sweep: Sweep, best: dict | None, slug: str) -> str:
    """The line naming the best point, the split it was selected on and its test metric."""
    if best is None:
        return f"best (selected on {sweep.select}): - (no point complete)"
    if sweep.select == "validation":
        return (
            f"best (selected on validation {sweep.selection_key} {best[sweep.selection_key]:.2f}): {slug}; "
            f"its test {sweep.metric} {best[sweep.metric]:.2f}"
        )
    protocol = f"selected on TEST {sweep.metric}, the paper's protocol"
    return f"best ({protocol}): {slug}; test {sweep.metric} {best[sweep.metric]:.2f}"


def write_results(sweep: Sweep) -> dict:
    """The results table (metric per point, best point) and the plot of the metrics against the grid."""

    with _study_lock(sweep):
        study, storage = _open_study(sweep)
        _fail_stale(study, storage, sweep)
    names = list(sweep.grid)
    rows = _point_rows(sweep, _status(study, sweep.points))
    finished = [r for r in rows if r["state"] == "complete"]
    best = max(finished, key=lambda r: r[sweep.selection_key]) if finished else None
    candidates = (*(f"val_{m}" for m in METRICS), *METRICS, "train_seconds")
    metric_names = [m for m in candidates if any(m in r for r in rows)]
    for key in (sweep.metric, sweep.selection_key):
        if key not in metric_names:
            metric_names.insert(0, key)
    header = [*names, *metric_names, "state", "failed attempts", "best"]
    table_rows = [
        [
            *(r[n] for n in names),
            *(f"{r[m]:.2f}" if m in r else "-" for m in metric_names),
            r["state"],
            r["failed_attempts"],
            f"**best ({sweep.select})**" if r is best else "",
        ]
        for r in rows
    ]
    table = markdown_table(header, table_rows)
    base = sweep.base_config()
    title = (
        f"Sweep of {base.name} ({base.loss.method}) over {', '.join(names)}: {base.data.dataset}, "
        f"{base.model.encoder}, {base.train.epochs} epochs, batch {base.train.batch_size}; "
        f"{_selection_text(sweep, base)}"
    )
    result = {
        "title": title,
        "config": portable_path(sweep.config, sweep.out_dir) if sweep.config else None,
        "overrides": sweep.overrides,
        "grid": sweep.grid,
        "metric": sweep.metric,
        "selected_on": sweep.select,
        "selection_metric": sweep.selection_key,
        "val_fraction": base.eval.val_fraction,
        "notes": list(sweep.notes),
        "best": best,
        "best_test": best[sweep.metric] if best else None,
        "points": rows,
        "complete": len(finished) == len(rows),
        "table_markdown": table,
    }
    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep_results.json", result)
    write_table(
        out / "sweep_results.csv",
        [*names, *metric_names, "state", "trial", "failed_attempts"],
        [
            [
                *(r[n] for n in names),
                *(r.get(m, "") for m in metric_names),
                r["state"],
                r["trial"],
                r["failed_attempts"],
            ]
            for r in rows
        ],
    )
    best_text = _best_text(sweep, best, point_slug({n: best[n] for n in names}) if best else "")
    (out / "sweep_results.md").write_text(f"{title}\n\n{table}\n\n{best_text}\n")
    result["plot"] = str(_plot(sweep, rows, metric_names)) if finished else None
    result["best_text"] = best_text
    return result
