"""The plot of a sweep: accuracy against the grid (PNG, with its data as CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hscl.engine.report import write_table

if TYPE_CHECKING:
    from hscl.engine.sweep import Sweep


def _plot(sweep: Sweep, rows: list[dict], metric_names: list[str]) -> Path:
    """Accuracy against the first grid parameter; one line per value of the others (if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sweep.grid)
    x_name, others = names[0], names[1:]
    if len(names) == 2 and {"tau_start", "tau_end"} == set(names):
        x_name, others = "tau_end", ["tau_start"]
    # top-1 accuracies (top-5 sits near 100% and would flatten them), and the maximised metric
    accuracy = [m for m in metric_names if m in ("linear_top1", "knn_top1") or m == sweep.metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    data_rows = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["state"] == "complete":
            groups.setdefault(tuple(r[o] for o in others), []).append(r)
    numeric = all(isinstance(r[x_name], (int, float)) for r in rows)
    styles = {"linear_top1": "-", "knn_top1": "--", "linear_top5": ":"}
    for index, (group, members) in enumerate(groups.items()):
        members.sort(key=lambda r: r[x_name] if numeric else str(r[x_name]))
        xs = [r[x_name] for r in members]
        suffix = ", ".join(f"{o}={v}" for o, v in zip(others, group))
        for metric in accuracy:  # one colour per group, one line style per metric
            ys = [r[metric] for r in members]
            label = metric + (f" ({suffix})" if suffix else "")
            shown = xs if numeric else [str(x) for x in xs]
            color = f"C{index}" if len(groups) > 1 else f"C{accuracy.index(metric)}"
            ax.plot(shown, ys, marker="o", color=color, linestyle=styles.get(metric, "-"), label=label)
            data_rows += [[label, x, y] for x, y in zip(xs, ys)]
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r[sweep.metric])
    ax.plot(
        [best[x_name] if numeric else str(best[x_name])],
        [best[sweep.metric]],
        marker="*",
        markersize=14,
        color="black",
        linestyle="none",
        label=f"best ({sweep.metric})",
    )
    values = [r[x_name] for r in rows]
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(sorted(values))
        ax.set_xticklabels([f"{v:g}" for v in sorted(values)])
    ax.set_xlabel(x_name)
    ax.set_ylabel("test accuracy (%)")
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
