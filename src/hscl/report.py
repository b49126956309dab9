"""Tables and figures; everything a figure shows is also written as data next to it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = ["write_table", "markdown_table", "plot_curves", "fmt_mean_std"]


def fmt_mean_std(mean: float, std: float | None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or std == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_table(path: str | Path, header: list[str], rows: list[list]) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_json(path: str | Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=float))


def plot_curves(
    path: str | Path,
    curves: dict[str, tuple[list[float], list[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """Line plot of ``{label: (x, y)}`` to a PNG (and the same data as ``<path>.csv``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    rows = []
    for label, (x, y) in curves.items():
        rows += [[label, xi, yi] for xi, yi in zip(x, y)]
    write_table(Path(path).with_suffix(".csv"), ["series", xlabel, ylabel], rows)
