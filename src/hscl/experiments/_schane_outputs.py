"""The outputs of ``hscl reproduce schane``: the summary with confidence intervals, the table, the few-shot figure.

Accuracies are in %; every interval is a 95% confidence interval: over test images (normal approximation)
for full fine-tuning, over episodes (Student t, paired against CE) for few-shot.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from hscl.engine.config import config_to_dict
from hscl.engine.fewshot import mean_ci95, paired_ci95
from hscl.engine.finetune import OBJECTIVE_LABELS


def _binomial_ci(correct: Tensor) -> tuple[float, float]:
    """Accuracy (%) and its 95% CI half-width over test images (normal approximation)."""
    n = correct.numel()
    p = float(correct.float().mean())
    return 100.0 * p, 100.0 * 1.959964 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _summarise(experiment, data, full_data, full, correct, episodes, embedding) -> dict:
    objectives = experiment.objectives
    base = "ce" if "ce" in objectives else None
    summary: dict = {
        "experiment": config_to_dict(experiment),
        "dataset": data.name,
        "full": {"classes": full_data.num_classes, "train_images": int(full_data.train_labels.numel())},
        "fewshot": {},
        "embedding": embedding,
    }
    full_summary = summary["full"]
    full_summary["test_images"] = int(full_data.test_labels.numel())
    for objective in objectives:
        pooled = torch.cat(correct[objective])
        top1, ci = _binomial_ci(pooled)
        per_seed = [r["test_top1"] for r in full[objective]]
        full_summary[objective] = {
            "top1_mean": top1,
            "ci95": ci,
            "per_seed": per_seed,
            "seed_mean_ci95": mean_ci95(per_seed),
            "train_seconds": [r["train_seconds"] for r in full[objective]],
            "history": [r["history"] for r in full[objective]],
        }
        if base is not None and objective != base:
            diff = (torch.cat(correct[objective]).double() - torch.cat(correct[base]).double()) * 100.0
            mean, half = mean_ci95(diff.tolist())
            full_summary[objective]["diff_vs_ce"], full_summary[objective]["diff_ci95"] = mean, half
    for shots, rows in episodes.items():
        entry: dict = {"episodes": len(rows), "ways": experiment.fewshot.ways}
        for objective in objectives:
            accs = [r["accuracy"][objective] for r in rows]
            mean, half = mean_ci95(accs)
            entry[objective] = {"top1_mean": mean, "ci95": half}
            if base is not None and objective != base:
                d_mean, d_half = paired_ci95(accs, [r["accuracy"][base] for r in rows])
                wins = sum(r["accuracy"][objective] > r["accuracy"][base] for r in rows)
                losses = sum(r["accuracy"][objective] < r["accuracy"][base] for r in rows)
                entry[objective].update({"diff_vs_ce": d_mean, "diff_ci95": d_half, "wins": wins, "losses": losses})
        summary["fewshot"][str(shots)] = entry
    return summary


def _fmt(mean: float, half: float | None, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if half is None or math.isnan(half) else f"{text} ± {half:.2f}"


def _table(results: dict, objectives: list[str]) -> tuple[list[str], list[list[str]], list[list]]:
    others = [o for o in objectives if o != "ce"] if "ce" in objectives else []
    header = ["setting", *[f"{OBJECTIVE_LABELS[o]} top-1 (%)" for o in objectives]]
    header += [f"{OBJECTIVE_LABELS[o]} − CE (points)" for o in others]
    rows, csv_rows = [], []
    full = results["full"]
    settings = [(f"full fine-tuning ({full['classes']} classes, {full['train_images']} images)", full)]
    ways = results["experiment"]["fewshot"]["ways"]
    settings += [(f"{ways}-way {k}-shot ({v['episodes']} episodes)", v) for k, v in results["fewshot"].items()]
    for name, entry in settings:
        row = [name] + [_fmt(entry[o]["top1_mean"], entry[o]["ci95"]) for o in objectives]
        row += [_fmt(entry[o]["diff_vs_ce"], entry[o]["diff_ci95"], signed=True) for o in others]
        rows.append(row)
        for o in objectives:
            csv_rows.append(
                [
                    name,
                    o,
                    entry[o]["top1_mean"],
                    entry[o]["ci95"],
                    entry[o].get("diff_vs_ce"),
                    entry[o].get("diff_ci95"),
                ]
            )
    emb = results["embedding"]
    for key, label in (("isotropy_features", "features h"), ("isotropy_projection", "projection z")):
        row = [f"isotropy of test {label} (↑)"] + [f"{emb[key][o]:.3f}" for o in objectives]
        row += [f"{emb[key][o] - emb[key]['ce']:+.3f}" for o in others]
        rows.append(row)
        for o in objectives:
            csv_rows.append([f"isotropy {label}", o, emb[key][o], None, None, None])
    return header, rows, csv_rows


def _fewshot_figure(path: Path, results: dict, objectives: list[str]) -> None:
    """Few-shot accuracy against K with 95% CI error bars, one line per objective (PNG + CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from hscl.engine.report import write_table

    shots = sorted(int(k) for k in results["fewshot"])
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    rows = []
    for i, objective in enumerate(objectives):
        means = [results["fewshot"][str(k)][objective]["top1_mean"] for k in shots]
        halves = [results["fewshot"][str(k)][objective]["ci95"] for k in shots]
        offset = (i - (len(objectives) - 1) / 2) * 0.08  # keep the error bars apart
        ax.errorbar(
            [k * (1 + offset) for k in shots],
            means,
            yerr=halves,
            marker="o",
            capsize=3,
            label=OBJECTIVE_LABELS[objective],
        )
        rows += [[objective, k, m, h] for k, m, h in zip(shots, means, halves)]
    ways = results["experiment"]["fewshot"]["ways"]
    ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([str(k) for k in shots])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("shots per class K")
    ax.set_ylabel("query accuracy (%)")
    ax.set_title(f"{ways}-way K-shot on held-out classes (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    write_table(Path(path).with_suffix(".csv"), ["objective", "shots", "top1_mean", "ci95"], rows)
