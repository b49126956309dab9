"""``hscl reproduce fig4-fig5`` and ``hscl reproduce collapse``: the geometry experiments.

* fig4-fig5 (H-SCL paper, Sec. IV): four H-SCL runs (threshold tau = e^-0.5 and e^-0.1,
  exponential tilting beta = 1 and 2); the geometry monitor measures, after every epoch and on a
  fixed probe set, the fraction of anchors satisfying Assumption 1 (Fig. 4) and the four losses of
  Lemma 1 with the same positives and M (Fig. 5).
* collapse (arXiv 2311.05139): SCL, H-SCL, UCL, H-UCL x output normalisation sphere / ball / none,
  projection output of dimension C - 1; each run is classified as approaching neural collapse,
  collapsing dimensionally, or neither, from its last epoch's NC1, NC2 and effective rank, under both
  conventions of the effective rank, and marked borderline where they disagree or a value is near a
  threshold (:mod:`hscl.experiments._collapse_verdict`).

Runs live in ``<out>/<run key>/``; a finished run is skipped and an interrupted one resumed, so
rerunning the command after a kill loses nothing. Configs: ``configs/figures/<experiment>/``.
"""

from __future__ import annotations

import math
from pathlib import Path

from hscl.engine.evaluation.report import markdown_table, write_json, write_table
from hscl.engine.runtime.config import RunConfig, load_config, load_yaml
from hscl.experiments._collapse_verdict import (
    COLLAPSE_RULES,
    CONVENTIONS,
    collapse_rule_text,
    collapse_verdict,
    collapse_verdicts,
)
from hscl.experiments._numerics import numerics_footer, run_numerics, table_numerics

__all__ = ["reproduce_fig4_fig5", "reproduce_collapse", "collapse_verdict", "collapse_verdicts", "COLLAPSE_RULES"]


def _experiment_dir(name: str, config_dir: str | Path | None) -> Path:
    from hscl.experiments.presets import find_preset

    return find_preset("figures", name, config_dir)


def _train_run(config: RunConfig, run_dir: Path, data) -> tuple[list[dict], float]:
    """Train (or resume, or skip when finished) one run; returns its metrics rows and train seconds (summed over
    its epochs, across resumes). A folder holding a run of another config is refused."""
    from hscl.engine.pretrain.run import train
    from hscl.engine.runtime.runs import check_run_config, read_metrics, run_paths, train_seconds

    paths = run_paths(run_dir)
    check_run_config(run_dir, config)
    if not paths.final.exists():
        train(config, run_dir, resume=True, data=data)
    return read_metrics(paths.metrics), train_seconds(run_dir)


def _last_value(rows: list[dict], key: str) -> float:
    for row in reversed(rows):
        text = row.get(key, "")
        if text not in ("", None):
            return float(text)
    return math.nan


def _load_data_cached(config: RunConfig, cache: dict):
    from hscl.engine.pretrain.datamodule import data_key
    from hscl.engine.pretrain.run import load_data

    key = data_key(config)
    if key not in cache:
        cache.clear()
        cache[key] = load_data(config)
    return cache[key]


# --------------------------------------------------------------------------------------------
# Fig. 4 and Fig. 5


def reproduce_fig4_fig5(
    out_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    data_dir: str | None = None,
) -> dict:
    """Train the four H-SCL runs and draw Fig. 4 and Fig. 5; returns the results (also written)."""
    folder = _experiment_dir("fig4-fig5", config_dir)
    runs = load_yaml((folder / "runs.yaml").read_text())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = list(overrides or []) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cache: dict = {}
    results: dict = {"experiment": "fig4-fig5", "runs": {}}
    for key, spec in runs.items():
        config = load_config(folder / "base.yaml", [*spec.get("set", []), *extra, f"name=fig4-fig5-{key}"])
        if not config.diagnostics.enabled:
            raise ValueError("fig4-fig5 needs the geometry monitor: do not set diagnostics.enabled=false")
        print(f"== {spec['label']} -> {out_dir / key}", flush=True)
        rows, seconds = _train_run(config, out_dir / key, _load_data_cached(config, cache))
        curve = [
            {k: (float(r[k]) if r.get(k) not in ("", None) else math.nan) for k in _CURVE_KEYS}
            | {"epoch": int(r["epoch"])}
            for r in rows
        ]
        last = curve[-1]
        results["runs"][key] = {
            "label": spec["label"],
            "hardening": rows[-1].get("diag_hardening", ""),
            "assumption1_last": last["assumption1"],
            "loss_ucl": last["loss_ucl"],
            "loss_h_ucl": last["loss_h_ucl"],
            "loss_scl": last["loss_scl"],
            "loss_h_scl": last["loss_h_scl"],
            "lemma1_ok": last["loss_h_scl"] <= last["loss_h_ucl"],
            "knn_top1": last["knn_top1"],
            "train_seconds": seconds,
            "curve": curve,
            "numerics": run_numerics(out_dir / key),
        }
    cells = {r["label"]: r["numerics"] for r in results["runs"].values()}
    results["numerics"] = table_numerics(cells, f"fig4-fig5 ({out_dir})")
    _write_fig4_fig5(results, out_dir, config)
    return results


_CURVE_KEYS = ("assumption1", "loss_ucl", "loss_h_ucl", "loss_scl", "loss_h_scl", "knn_top1", "loss")

#: written under the fig4-fig5 table: which orderings of the four losses are identities and which one is measured
FIG5_ORDERINGS = (
    "L_SCL <= L_H-SCL and L_UCL <= L_H-UCL hold by construction (a non-decreasing hardening with the same positives "
    "and M: Chebyshev's sum inequality), at every epoch of every run. L_H-SCL <= L_H-UCL is measured: Lemma 1 "
    "implies it only for the anchors that satisfy Assumption 1."
)


def _write_fig4_fig5(results: dict, out_dir: Path, config: RunConfig) -> None:
    header = [
        "run",
        "hardening (probe)",
        "Assumption 1 holds (last epoch)",
        "L_UCL",
        "L_H-UCL",
        "L_SCL",
        "L_H-SCL",
        "L_H-SCL <= L_H-UCL (Lemma 1, measured)",
        "kNN top-1 (%)",
    ]
    rows, csv_rows = [], []
    for key, r in results["runs"].items():
        cells = [
            r["label"],
            r["hardening"],
            f"{100 * r['assumption1_last']:.1f}%",
            f"{r['loss_ucl']:.4f}",
            f"{r['loss_h_ucl']:.4f}",
            f"{r['loss_scl']:.4f}",
            f"{r['loss_h_scl']:.4f}",
            "yes" if r["lemma1_ok"] else "no",
            f"{r['knn_top1']:.2f}",
        ]
        rows.append(cells)
        for point in r["curve"]:
            csv_rows.append([key, r["label"]] + [point["epoch"]] + [point[k] for k in _CURVE_KEYS])
    table = markdown_table(header, rows)
    dc, tc = config.data, config.train
    title = (
        f"Fig. 4 / Fig. 5 check: {dc.dataset} ({dc.train_subset or 'all'} train images), {config.model.encoder}, "
        f"{tc.epochs} epochs, batch {tc.batch_size}, probe {config.diagnostics.probe_size} x 2 views"
    )
    results["title"], results["table_markdown"], results["orderings"] = title, table, FIG5_ORDERINGS
    write_json(out_dir / "results.json", results)
    write_table(out_dir / "fig4_fig5.csv", ["key", "label", "epoch", *_CURVE_KEYS], csv_rows)
    footer = numerics_footer(results["numerics"])
    (out_dir / "fig4_fig5.md").write_text(f"{title}\n\n{table}\n\n{FIG5_ORDERINGS}\n\n{footer}\n")

    _plot_fig4_fig5(results, out_dir)
    written = "results.json, fig4_fig5.csv, fig4_fig5.md, fig4.png, fig5.png"
    print(f"\n{title}\n\n{table}\n\n{FIG5_ORDERINGS}\n\nwritten: {out_dir}/{written}")


def _plot_fig4_fig5(results: dict, out_dir: Path) -> None:
    """``fig4.png`` (Assumption 1 per epoch, a curve per run) and ``fig5.png`` (the four losses, a panel per run)."""
    from hscl.engine.evaluation.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results["runs"].values():
        ax.plot(
            [p["epoch"] for p in r["curve"]], [p["assumption1"] for p in r["curve"]], marker="o", ms=3, label=r["label"]
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of anchors satisfying Assumption 1")
    ax.set_title("Fig. 4: Assumption 1 on the probe set")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "fig4.png")
    plt.close(fig)

    n = len(results["runs"])
    cols = 2 if n > 1 else 1
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(5.2 * cols, 3.6 * ((n + cols - 1) // cols)), dpi=110
    )
    axes = list(getattr(axes, "flat", [axes]))
    for ax, r in zip(axes, results["runs"].values()):
        epochs = [p["epoch"] for p in r["curve"]]
        for k, label in (("loss_ucl", "UCL"), ("loss_h_ucl", "H-UCL"), ("loss_scl", "SCL"), ("loss_h_scl", "H-SCL")):
            ax.plot(epochs, [p[k] for p in r["curve"]], marker="o", ms=2.5, label=label)
        ax.set_title(r["label"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (probe set)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(
        "Fig. 5: the four losses, same positives and M. Measured: L_H-SCL <= L_H-UCL (Lemma 1, under Assumption 1); "
        "by construction: L_SCL <= L_H-SCL, L_UCL <= L_H-UCL",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out_dir / "fig5.png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# neural vs dimensional collapse


def reproduce_collapse(
    out_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    data_dir: str | None = None,
    methods: list[str] | None = None,
    normalizations: list[str] | None = None,
) -> dict:
    """Train method x normalisation runs and classify each run's geometry; returns the results."""
    folder = _experiment_dir("collapse", config_dir)
    grid = load_yaml((folder / "runs.yaml").read_text())
    method_specs: dict = grid["methods"]
    norms: list = list(grid["normalizations"])
    if methods:
        unknown = sorted(set(methods) - set(method_specs))
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; collapse has {list(method_specs)}")
        method_specs = {k: v for k, v in method_specs.items() if k in methods}
    if normalizations:
        unknown = sorted(set(normalizations) - set(norms))
        if unknown:
            raise ValueError(f"--normalizations: unknown {unknown}; allowed {norms}")
        norms = [n for n in norms if n in normalizations]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = list(overrides or []) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cache: dict = {}
    results: dict = {"experiment": "collapse", "rules": COLLAPSE_RULES, "conventions": CONVENTIONS, "runs": {}}
    config = None
    for method, spec in method_specs.items():
        for norm in norms:
            key = f"{method}-{norm}"
            config = load_config(
                folder / "base.yaml",
                [*spec.get("set", []), f"model.normalization={norm}", *extra, f"name=collapse-{key}"],
            )
            data = _load_data_cached(config, cache)
            C = data.num_classes
            print(f"== {spec['label']}, {norm} -> {out_dir / key}", flush=True)
            rows, seconds = _train_run(config, out_dir / key, data)
            rows = _with_both_ranks(rows, out_dir / key)
            last = {k: _last_value(rows, k) for k in _COLLAPSE_KEYS}
            first = {k: _last_value(rows[:1], k) for k in _COLLAPSE_KEYS}
            results["runs"][key] = {
                "method": method,
                "label": spec["label"],
                "normalization": norm,
                "num_classes": C,
                "projection_dim": config.model.projection_dim,
                "first": first,
                "last": last,
                **collapse_verdicts(last, C).as_dict(),
                "train_seconds": seconds,
                "curve": [{"epoch": int(r["epoch"]), **{k: _last_value([r], k) for k in _COLLAPSE_KEYS}} for r in rows],
                "spectrum_last": _last_spectrum(out_dir / key),
                "numerics": run_numerics(out_dir / key),
            }
    if config is None:
        raise ValueError("nothing to run: the method / normalisation selection is empty")
    cells = {f"{r['label']}, {r['normalization']}": r["numerics"] for r in results["runs"].values()}
    results["numerics"] = table_numerics(cells, f"collapse ({out_dir})")
    results["rule"] = collapse_rule_text(C)
    _write_collapse(results, out_dir, config)
    return results


_COLLAPSE_KEYS = (
    "nc1",
    "nc2_etf",
    "nc2_norm_cv",
    "ncc_accuracy",
    "effective_rank",
    "effective_rank_cov",
    "dims_99",
    "knn_top1",
    "mean_norm",
)


def _spectra(run_dir: Path) -> dict[int, list[float]]:
    """The covariance eigenvalues of each measured epoch, from the run's ``spectrum.csv``."""
    path = run_dir / "spectrum.csv"
    lines = [line for line in path.read_text().splitlines()[1:] if line.strip()] if path.exists() else []
    return {int(line.split(",")[0]): [float(v) for v in line.split(",")[1:]] for line in lines}


def _last_spectrum(run_dir: Path) -> list[float]:
    spectra = _spectra(run_dir)
    return spectra[max(spectra)] if spectra else []


def _with_both_ranks(rows: list[dict], run_dir: Path) -> list[dict]:
    """Rows of ``metrics.csv`` with both effective ranks. A row written before ``effective_rank_cov`` existed
    holds the covariance-eigenvalue convention in ``effective_rank``: it moves there, and ``effective_rank``
    is recomputed over the singular values ``sqrt(eigenvalue)`` of that epoch's ``spectrum.csv`` row."""
    import torch

    from hscl.geometry import effective_rank

    spectra, out = None, []
    for row in rows:
        if row.get("effective_rank_cov", "") in ("", None) and row.get("effective_rank", "") not in ("", None):
            spectra = _spectra(run_dir) if spectra is None else spectra
            values = spectra.get(int(row["epoch"]))
            singular = (
                effective_rank(torch.tensor(values, dtype=torch.float64).clamp(min=0).sqrt()) if values else math.nan
            )
            row = {**row, "effective_rank_cov": row["effective_rank"], "effective_rank": singular}
        out.append(row)
    return out


def _write_collapse(results: dict, out_dir: Path, config: RunConfig) -> None:
    table, csv_rows = _collapse_table(results)
    dc, tc = config.data, config.train
    title = (
        f"Neural vs dimensional collapse: {dc.dataset} ({dc.train_subset or 'all'} train images), "
        f"{config.model.encoder}, projection dim {config.model.projection_dim}, {tc.epochs} epochs, Adam lr {tc.lr}; "
        f"probe {config.diagnostics.probe_size} x 2 views, last epoch. Verdict: {results['rule']}"
    )
    results["title"], results["table_markdown"] = title, table
    write_json(out_dir / "results.json", results)
    header = ["key", "method", "normalization", *_COLLAPSE_KEYS, "verdict_s", "verdict_s2", "verdict", "borderline"]
    write_table(out_dir / "collapse.csv", header, csv_rows)
    notes = [
        f"- {r['label']}, {r['normalization']}: " + "; ".join(r["borderline_reasons"])
        for r in results["runs"].values()
        if r["borderline"]
    ]
    borderline = "\n\nBorderline runs:\n\n" + "\n".join(notes) if notes else ""
    (out_dir / "collapse.md").write_text(f"{title}\n\n{table}{borderline}\n\n{numerics_footer(results['numerics'])}\n")
    _plot_collapse(results, out_dir)
    print(
        f"\n{title}\n\n{table}{borderline}\n\nwritten: {out_dir}/results.json, collapse.csv, collapse.md, "
        "collapse_nc1.png, collapse_nc2.png, collapse_erank.png, collapse_spectrum.png"
    )


def _collapse_table(results: dict) -> tuple[str, list[list]]:
    """The markdown table of the collapse runs (last epoch, NC1 from the first) and the rows of ``collapse.csv``.

    ``s``: the effective rank over the singular values of the centred embeddings; ``s²``: over the covariance
    eigenvalues."""
    header = [
        "method",
        "normalisation",
        "NC1 (first -> last)",
        "NC2 ETF distance",
        "NCC acc (%)",
        "eff. rank s / (C-1)",
        "eff. rank s² / (C-1)",
        "dims 99%",
        "mean norm of z",
        "kNN top-1 (%)",
        "verdict (s)",
        "verdict (s²)",
        "verdict",
    ]
    rows, csv_rows = [], []
    for key, r in results["runs"].items():
        f, last, by = r["first"], r["last"], r["verdict_by_convention"]
        rows.append(
            [
                r["label"],
                r["normalization"],
                f"{f['nc1']:.3g} -> {last['nc1']:.3g}",
                f"{last['nc2_etf']:.3f}",
                f"{100 * last['ncc_accuracy']:.1f}",
                f"{last['effective_rank']:.2f} / {r['num_classes'] - 1}",
                f"{last['effective_rank_cov']:.2f} / {r['num_classes'] - 1}",
                f"{last['dims_99']:.0f}",
                f"{last['mean_norm']:.3g}",
                f"{last['knn_top1']:.2f}",
                by["effective_rank"],
                by["effective_rank_cov"],
                r["verdict"],
            ]
        )
        verdicts = [by["effective_rank"], by["effective_rank_cov"], r["verdict"], r["borderline"]]
        csv_rows.append([key, r["method"], r["normalization"], *[last[k] for k in _COLLAPSE_KEYS], *verdicts])
    return markdown_table(header, rows), csv_rows


def _plot_collapse(results: dict, out_dir: Path) -> None:
    """``collapse_nc1.png``, ``collapse_erank.png`` (both conventions), ``collapse_nc2.png`` (curves per epoch)
    and ``collapse_spectrum.png`` (last epoch), one panel per normalisation."""
    from hscl.engine.evaluation.report import pyplot

    plt = pyplot()
    norms = list(dict.fromkeys(r["normalization"] for r in results["runs"].values()))
    C = next(iter(results["runs"].values()))["num_classes"]
    for name, keys, ylabel, log in (
        ("collapse_nc1.png", ("nc1",), "NC1 = Tr(S_W S_B^+)/C", True),
        ("collapse_erank.png", ("effective_rank", "effective_rank_cov"), "effective rank of z", False),
        ("collapse_nc2.png", ("nc2_etf",), "NC2: mean |cos + 1/(C-1)|", False),
    ):
        fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms), 3.8), dpi=110, squeeze=False)
        for ax, norm in zip(axes[0], norms):
            for i, r in enumerate(r for r in results["runs"].values() if r["normalization"] == norm):
                for key, style in zip(keys, ("-", "--")):
                    xs = [p["epoch"] for p in r["curve"] if math.isfinite(p[key])]
                    ys = [p[key] for p in r["curve"] if math.isfinite(p[key])]
                    label = r["label"] + ("" if len(keys) == 1 else (" (s)" if style == "-" else " (s²)"))
                    plot = ax.semilogy if log else ax.plot
                    plot(xs, ys, style, color=f"C{i}", marker="o", ms=2.5, label=label)
            if len(keys) == 2:
                ax.axhline(C - 1, color="grey", ls=":", lw=1, label="C - 1")
                threshold = COLLAPSE_RULES["dimensional_erank_fraction"] * (C - 1)
                ax.axhline(threshold, color="black", ls="-.", lw=1, label=f"threshold {threshold:g}")
                band = COLLAPSE_RULES["borderline_tolerance"] * threshold
                ax.axhspan(threshold - band, threshold + band, color="grey", alpha=0.12, label="borderline band")
            ax.set_title(f"normalisation: {norm}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel + (": s solid, s² dashed" if len(keys) == 2 else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7 if len(keys) == 2 else 8)
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms), 3.8), dpi=110, squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for r in results["runs"].values():
            if r["normalization"] == norm and r["spectrum_last"]:
                values = [max(v, 1e-12) for v in r["spectrum_last"]]
                ax.semilogy(range(1, len(values) + 1), values, marker="o", ms=3, label=r["label"])
        ax.set_title(f"last-epoch spectrum, {norm}")
        ax.set_xlabel("index")
        ax.set_ylabel("eigenvalue of Cov(z) = s² / N")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "collapse_spectrum.png")
    plt.close(fig)
