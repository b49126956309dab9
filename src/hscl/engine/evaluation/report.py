"""Tables and figures; everything a figure shows is also written as data next to it."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

__all__ = ["write_table", "markdown_table", "plot_curves", "fmt_mean_std", "plot_diagnostics", "html_report", "pyplot"]


def fmt_mean_std(mean: float, std: float | None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or std == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table; a ``|`` inside a cell (``mean |z|``) is written ``\\|`` so that it stays in its cell."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(row) for row in rows)])


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
    logy: bool = False,
) -> None:
    """Line plot of ``{label: (x, y)}`` to a PNG (and the same data as ``<path>.csv``); ``logy``: a log y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floats(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the rows where ``key`` holds a number."""
    xs, ys = [], []
    for row in rows:
        text = row.get(key, "")
        if text in ("", None):
            continue
        value = float(text)
        if math.isfinite(value):
            xs.append(int(row["epoch"]))
            ys.append(value)
    return xs, ys


#: the figures :func:`plot_diagnostics` draws, file name -> what it shows
DIAGNOSTIC_FIGURES = {
    "fig4_assumption1.png": "fraction of probe anchors satisfying Assumption 1, per epoch (the paper's Fig. 4)",
    "fig5_losses.png": "UCL, H-UCL, SCL and H-SCL on the probe set, same positives and M (the paper's Fig. 5)",
    "spectrum.png": "eigenvalues of the embedding covariance per epoch, and the effective rank (both conventions)",
    "collapse.png": "NC1, NC2 (distance to the simplex ETF) and nearest-class-mean accuracy per epoch",
}


def plot_diagnostics(run_dir: str | Path) -> list[Path]:
    """Draw the geometry figures of a run from its ``metrics.csv`` and ``spectrum.csv`` into
    ``<run_dir>/figures/``; returns the paths written (none when the run has no diagnostics). A multi-label run
    (class-based columns empty, see :mod:`hscl.engine.pretrain.monitor`) gets the spectrum figure only."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.exists():
        return []
    with metrics_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "assumption1" not in rows[0]:
        return []
    with_classes = bool(_floats(rows, "loss_ucl")[0])
    if not with_classes and not _floats(rows, "effective_rank")[0]:
        return []
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    out = run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    hardening = next((r.get("diag_hardening") for r in reversed(rows) if r.get("diag_hardening")), "")

    def finish(fig, name: str) -> None:
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)

    if with_classes:
        finish(_assumption1_figure(plt, rows, hardening), "fig4_assumption1.png")
        finish(_losses_figure(plt, rows, hardening), "fig5_losses.png")
    finish(_spectrum_figure(plt, rows, run_dir / "spectrum.csv"), "spectrum.png")
    if with_classes:
        finish(_collapse_figure(plt, rows), "collapse.png")
    return written


def _assumption1_figure(plt, rows: list[dict], hardening: str):
    """The fraction of anchors satisfying Assumption 1, per epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(*_floats(rows, "assumption1"), marker="o", markersize=3, color="C3")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of anchors")
    ax.set_title(f"Assumption 1: E_Hcol[e^g] >= E_H-SCL[e^g] ({hardening})")
    return fig


def _losses_figure(plt, rows: list[dict], hardening: str):
    """The four losses of Lemma 1 on the probe set, per epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, label in (("loss_ucl", "UCL"), ("loss_h_ucl", "H-UCL"), ("loss_scl", "SCL"), ("loss_h_scl", "H-SCL")):
        ax.plot(*_floats(rows, key), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss on the probe set")
    ax.set_title(f"Lemma 1: the four losses, same positives and M ({hardening})", fontsize=10)
    ax.text(
        0.01,
        0.01,
        "measured: H-SCL <= H-UCL (Lemma 1); by construction: SCL <= H-SCL, UCL <= H-UCL",
        transform=ax.transAxes,
        fontsize=7,
        color="grey",
    )
    ax.legend()
    return fig


def _spectrum_figure(plt, rows: list[dict], spectrum_path: Path):
    """The embedding spectrum of each epoch (from ``spectrum.csv``, when there) and the effective rank."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.0), dpi=110)
    if spectrum_path.exists():
        with spectrum_path.open(newline="") as handle:
            spec = [[float(v) for v in r] for r in list(csv.reader(handle))[1:]]
        cmap = plt.get_cmap("viridis")
        for i, row in enumerate(spec):
            values = [max(v, 1e-12) for v in row[1:]]
            colour = cmap(i / max(len(spec) - 1, 1))
            left.semilogy(range(1, len(values) + 1), values, color=colour, label=f"epoch {int(row[0])}")
        if 0 < len(spec) <= 8:
            left.legend(fontsize=7, ncol=2)
    left.set_xlabel("index")
    left.set_ylabel("singular value of Cov(z)")
    left.set_title("embedding spectrum (light = late)")
    right.plot(*_floats(rows, "effective_rank"), marker="o", markersize=3, label="z: over singular values s")
    cov = _floats(rows, "effective_rank_cov")
    if cov[0]:  # runs from before both conventions were recorded have none
        right.plot(*cov, marker="^", markersize=3, ls="--", label="z: over covariance eigenvalues s²")
    right.plot(*_floats(rows, "dims_99"), marker="s", markersize=3, label="z: dims for 99% variance")
    right.set_xlabel("epoch")
    right.set_ylabel("dimensions")
    right.set_title("effective rank")
    right.legend()
    return fig


def _collapse_figure(plt, rows: list[dict]):
    """Neural collapse per epoch: NC1, NC2 and nearest-class-mean accuracy."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    axes[0].semilogy(*_floats(rows, "nc1"), marker="o", markersize=3)
    axes[0].set_title("NC1 = Tr(S_W S_B^+)/C")
    axes[1].plot(*_floats(rows, "nc2_etf"), marker="o", markersize=3, label="|cos + 1/(C-1)|")
    axes[1].plot(*_floats(rows, "nc2_norm_cv"), marker="s", markersize=3, label="std/mean of norms")
    axes[1].set_title("NC2: distance to the simplex ETF")
    axes[1].legend()
    axes[2].plot(*_floats(rows, "ncc_accuracy"), marker="o", markersize=3)
    axes[2].set_title("nearest-class-mean accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
    return fig


# --------------------------------------------------------------------------------------------
# the HTML report


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1180px;
       color: #1d232a; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccd; }
h3 { margin-top: 1.4em; } .meta { color: #667; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef1f6; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } pre { background: #f5f6f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #e3e5ea; }
figcaption { color: #556; font-size: 0.9em; }
"""


def _esc(text: object) -> str:
    import html

    return html.escape(str(text))


_CELL = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe not escaped as \|
_EDGES = re.compile(r"^\||(?<!\\)\|$")  # the pipes that open and close a row


def _markdown_blocks(text: str) -> str:
    """The Markdown this project writes (a title paragraph and pipe tables) as HTML."""
    out, table = [], []

    def flush() -> None:
        if not table:
            return
        cells = [[c.strip().replace("\\|", "|") for c in _CELL.split(_EDGES.sub("", line.strip()))] for line in table]
        body = [row for row in cells[1:] if not all(set(c) <= set("-: ") for c in row)]
        head = "".join(f"<th>{_esc(c)}</th>" for c in cells[0])
        rows = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in body)
        out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{_esc(line)}</p>")
    flush()
    return "\n".join(out)


def _csv_table(path: Path, max_rows: int = 400) -> str:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return "<p>(empty)</p>"
    header, body = rows[0], rows[1:]
    note = f"<p class='meta'>first {max_rows} of {len(body)} rows</p>" if len(body) > max_rows else ""

    def cell(text: str) -> str:
        try:
            value = float(text)
        except ValueError:
            return _esc(text)
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"

    head = "".join(f"<th>{_esc(c)}</th>" for c in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in body[:max_rows])
    return f'{note}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table></div>'


def html_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page of a run or experiment directory: its config, every Markdown
    table it wrote, its per-epoch metrics, and every PNG figure under it (embedded as data URIs,
    so the page opens anywhere without the folder). Draws a run's diagnostics figures first when
    they are missing. Returns the page's path (default ``<run_dir>/report.html``)."""
    import base64
    import datetime

    from hscl import __version__

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    for metrics in [run_dir / "metrics.csv", *sorted(run_dir.glob("*/metrics.csv"))]:
        if metrics.exists() and not (metrics.parent / "figures").exists():
            plot_diagnostics(metrics.parent)
    sections: list[str] = []
    config = run_dir / "config.yaml"
    if config.exists():
        sections.append(f"<h2>Config</h2><pre>{_esc(config.read_text())}</pre>")
    tables = sorted(run_dir.glob("*.md"))
    if tables:
        sections.append("<h2>Tables</h2>")
        for path in tables:
            sections.append(f"<h3>{_esc(path.name)}</h3>{_markdown_blocks(path.read_text())}")
    evaluation = run_dir / "eval.json"
    if evaluation.exists():
        data = json.loads(evaluation.read_text())
        scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in scalars.items())
        sections.append(f"<h2>Evaluation</h2><table><tbody>{rows}</tbody></table>")
    if (run_dir / "metrics.csv").exists():
        sections.append(f"<h2>Per-epoch metrics</h2>{_csv_table(run_dir / 'metrics.csv')}")
    figures = sorted(run_dir.rglob("*.png"), key=lambda p: (len(p.relative_to(run_dir).parts), str(p)))
    if figures:
        sections.append(f"<h2>Figures ({len(figures)})</h2>")
        group = None
        for path in figures:
            rel = path.relative_to(run_dir)
            folder = str(rel.parent) if str(rel.parent) != "." else ""
            if folder != group:
                group = folder
                if folder:
                    sections.append(f"<h3>{_esc(folder)}</h3>")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            caption = DIAGNOSTIC_FIGURES.get(path.name, "")
            sections.append(
                f'<figure><img alt="{_esc(rel)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_esc(rel)}{' — ' + _esc(caption) if caption else ''}</figcaption></figure>"
            )
    if not sections:
        raise ValueError(f"{run_dir} holds nothing to report (no config.yaml, tables, metrics.csv or figures)")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>hscl report: {_esc(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>hscl report: {_esc(run_dir.resolve().name)}</h1>"
        f"<p class='meta'>{_esc(run_dir.resolve())} · generated {stamp} by hscl {__version__}</p>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    out = Path(out) if out is not None else run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
