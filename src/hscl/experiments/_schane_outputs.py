"""The outputs of ``hscl reproduce schane``: the summary with confidence intervals, the tables (with the paper's
reported gains beside the measured ones), the few-shot and lam-ablation figures, ``results.json``.

Accuracies are in %; every interval is a 95% confidence interval: for full fine-tuning over the training seeds
(Student t, paired against CE by seed; with two or more seeds) and over the test images of all seeds pooled (normal
approximation; paired by image), over episodes (Student t, paired against CE / lam = 0) for few-shot and the
ablation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from hscl.engine.finetune.config import OBJECTIVE_LABELS
from hscl.engine.finetune.fewshot import mean_ci95, paired_ci95
from hscl.engine.runtime.config import config_to_dict

#: what the SCHaNe paper reports for SCHaNe against CE fine-tuning of BEiT-3 (base), in top-1 points: the largest
#: gains over its few-shot benchmarks and over its full fine-tuning data sets, as its abstract states them
#: (Long et al., "When hard negative sampling meets supervised contrastive learning", arXiv 2308.14893v1)
PAPER = {
    "source": "Long et al., arXiv 2308.14893v1 (abstract)",
    "backbone": "BEiT-3 base",
    "fewshot_gain_up_to": 3.32,
    "full_gain_up_to": 3.41,
    "imagenet_1k_top1": 86.14,
}

#: the two forms of :func:`hscl.geometry.isotropy` the outputs report (key suffix -> definition); the first is
#: the score of Mu and Viswanath (2018) that the SCHaNe paper reports
ISOTROPY_FORMS = {
    "": "Mu and Viswanath: min_c Z(c) / max_c Z(c), Z(c) = sum_i exp(c . x_i), over the eigenvectors c of X^T X "
    "(each with its largest entry positive), on the L2-normalised rows x_i",
    "_symmetric": "sign-symmetric: the same over the eigenvectors and their negatives (never above the first)",
}


def binomial_ci(correct: Tensor) -> tuple[float, float]:
    """Accuracy (%) and its 95% CI half-width over test images (normal approximation)."""
    n = correct.numel()
    p = float(correct.float().mean())
    return 100.0 * p, 100.0 * 1.959964 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def fmt_ci(mean: float, half: float | None, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if half is None or math.isnan(half) else f"{text} ± {half:.2f}"


# --------------------------------------------------------------------------------------------
# summary


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
    full_summary["dataset"] = full_data.name
    full_summary["test_images"] = int(full_data.test_labels.numel())
    for objective in objectives:
        pooled = torch.cat(correct[objective])
        top1, ci = binomial_ci(pooled)
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
            # paired by training seed: the same seed's CE run
            per_seed_diff = [a - b for a, b in zip(per_seed, [r["test_top1"] for r in full[base]])]
            full_summary[objective]["diff_per_seed"] = per_seed_diff
            full_summary[objective]["seed_diff_ci95"] = mean_ci95(per_seed_diff)
    for shots, rows in episodes.items():
        entry: dict = {"episodes": len(rows), "ways": experiment.fewshot.ways}
        entry["class_sets"] = len({frozenset(r["classes"]) for r in rows})  # distinct sets of an episode's classes
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


def _summarise_ablation(ablation: dict) -> dict:
    """Mean and 95% CI of every ``lam``, and its paired difference to ``lam = 0`` (CE) when that is a cell."""
    base = next((c for c in ablation["lams"] if c["lam"] == 0.0), None)
    cells = []
    for cell in ablation["lams"]:
        mean, half = mean_ci95(cell["accuracy"])
        out = {"lam": cell["lam"], "source": cell["source"], "head": cell.get("head"), "top1_mean": mean, "ci95": half}
        if base is not None and cell is not base:
            d_mean, d_half = paired_ci95(cell["accuracy"], base["accuracy"])
            wins = sum(a > b for a, b in zip(cell["accuracy"], base["accuracy"]))
            losses = sum(a < b for a, b in zip(cell["accuracy"], base["accuracy"]))
            out.update({"diff_vs_lam0": d_mean, "diff_ci95": d_half, "wins": wins, "losses": losses})
        out["accuracy"] = cell["accuracy"]
        if "val_accuracy" in cell:  # the validation episodes the lam was chosen on
            out["val_top1_mean"], out["val_ci95"] = mean_ci95(cell["val_accuracy"])
            out["val_accuracy"] = cell["val_accuracy"]
        out["selected"] = cell["lam"] == ablation["selection"]["lam"]
        cells.append(out)
    summary = {k: v for k, v in ablation.items() if k != "lams"} | {"chance": 100.0 / ablation["ways"], "lams": cells}
    return summary | {"selected_on": ablation["selection"]["selected_on"]}


def _selection_text(ablation: dict) -> str:
    """Which episodes chose the best lam, and the chosen lam's test accuracy."""
    sel = ablation["selection"]
    if sel["selected_on"] == "test":
        return (
            f"lam chosen on the TEST episodes (the paper's protocol; optimistic): lam = {sel['lam']:g}, "
            f"{sel['test_top1_mean']:.2f}% on them"
        )
    return (
        f"lam chosen on {sel['val_episodes']} validation episodes (drawn from {sel['val_fraction']:.0%} of each "
        "held-out class's images, set aside: the test episodes never draw them): lam = "
        f"{sel['lam']:g}, {sel['val_top1_mean']:.2f}% on them; its test accuracy {sel['test_top1_mean']:.2f}%"
    )


# --------------------------------------------------------------------------------------------
# tables


def _paper_cell(setting: str) -> str:
    gain = PAPER["full_gain_up_to"] if setting == "full" else PAPER["fewshot_gain_up_to"]
    return f"up to +{gain:.2f}"


def _table(results: dict, objectives: list[str]) -> tuple[list[str], list[list[str]], list[list]]:
    others = [o for o in objectives if o != "ce"] if "ce" in objectives else []
    paper = "ce" in objectives and "schane" in objectives
    header = ["setting", *[f"{OBJECTIVE_LABELS[o]} top-1 (%)" for o in objectives]]
    header += [f"{OBJECTIVE_LABELS[o]} − CE (points)" for o in others]
    if paper:
        header.append(f"paper: SCHaNe − CE ({PAPER['backbone']})")
    rows, csv_rows = [], []
    settings = _full_settings(results["full"], objectives)
    ways = results["experiment"]["fewshot"]["ways"]
    for k, v in results["fewshot"].items():
        sets = f", {v['class_sets']} class sets" if "class_sets" in v else ""
        settings.append(("fewshot", f"{ways}-way {k}-shot ({v['episodes']} episodes{sets})", v))
    for kind, name, entry in settings:
        row = [name] + [fmt_ci(entry[o]["top1_mean"], entry[o]["ci95"]) for o in objectives]
        row += [fmt_ci(entry[o]["diff_vs_ce"], entry[o]["diff_ci95"], signed=True) for o in others]
        if paper:
            row.append(_paper_cell(kind))
        rows.append(row)
        for o in objectives:
            e = entry[o]
            csv_rows.append([name, o, e["top1_mean"], e["ci95"], e.get("diff_vs_ce"), e.get("diff_ci95")])
    emb = results["embedding"]
    parts = [("features", "features h")]
    if emb.get("embedding", "projection") == "projection":  # with embedding "features", z is h
        parts.append(("projection", "projection z"))
    # results from before both forms were recorded (no "isotropy" entry) hold the sign-symmetric form alone
    forms = (("", "Mu-Viswanath"), ("_symmetric", "sym.")) if "isotropy" in emb else (("", "sym."),)
    for (part, label), (form, name) in [(p, f) for p in parts for f in forms]:
        key = f"isotropy_{part}{form}"
        row = [f"isotropy of test {label} (↑), {name}"] + [f"{emb[key][o]:.3f}" for o in objectives]
        row += [f"{emb[key][o] - emb[key]['ce']:+.3f}" for o in others]
        if paper:
            row.append("more isotropic (reported)" if name == "Mu-Viswanath" else "—")
        rows.append(row)
        for o in objectives:
            csv_rows.append([f"isotropy {label}, {name}", o, emb[key][o], None, None, None])
    return header, rows, csv_rows


def _full_settings(full: dict, objectives: list[str]) -> list[tuple[str, str, dict]]:
    """The full fine-tuning rows: with two or more training seeds, the mean over seeds with the 95% CI over seeds
    (Student t; differences paired by seed), then the CI over the test images of all seeds pooled; with one seed
    the latter only. Each row ``("full", name, {objective: {top1_mean, ci95, diff_vs_ce, diff_ci95}})``."""
    seeds = len(full[objectives[0]]["per_seed"])
    what = f"full fine-tuning ({full['classes']} classes, {full['train_images']} images"
    images = f"{full['test_images']} test images" + (f" x {seeds} seeds" if seeds > 1 else "")
    rows = []
    if seeds > 1:
        by_seed = {}
        for o in objectives:
            e = full[o]
            mean, half = e["seed_mean_ci95"]
            by_seed[o] = {"top1_mean": mean, "ci95": half}
            if "seed_diff_ci95" in e:
                by_seed[o]["diff_vs_ce"], by_seed[o]["diff_ci95"] = e["seed_diff_ci95"]
        rows.append(("full", f"{what}; CI over {seeds} training seeds)", by_seed))
    rows.append(("full", f"{what}; CI over {images})", full))
    return rows


def _ablation_table(ablation: dict) -> tuple[list[str], list[list[str]]]:
    ways, shots = ablation["ways"], ablation["shots"]
    on_val = ablation["selected_on"] == "validation"
    header = ["lam", "from", *(["validation top-1 (%)"] if on_val else []), f"{ways}-way {shots}-shot top-1 (%)"]
    header += ["− lam = 0 (points)", "wins / losses vs lam = 0", "chosen"]
    rows = []
    for cell in ablation["lams"]:
        source = {"ce": "CE cells", "schane": "SCHaNe cells", "ablation": "ablation run"}[cell["source"]]
        if cell.get("head") == "fitted":
            source += ", head fitted after"
        diff = fmt_ci(cell["diff_vs_lam0"], cell["diff_ci95"], signed=True) if "diff_vs_lam0" in cell else "—"
        record = f"{cell['wins']} / {cell['losses']}" if "wins" in cell else "—"
        val = [fmt_ci(cell["val_top1_mean"], cell["val_ci95"])] if on_val else []
        chosen = f"**selected ({ablation['selected_on']})**" if cell["selected"] else ""
        rows.append([f"{cell['lam']:g}", source, *val, fmt_ci(cell["top1_mean"], cell["ci95"]), diff, record, chosen])
    return header, rows


def _ablation_note(ablation: dict) -> str:
    note = (
        f"lam = 0 is cross-entropy exactly (the contrastive term is skipped); {ablation['episodes']} episodes, the "
        "same episodes, initial weights and augmentation draws for every lam."
    )
    at_one = next((c for c in ablation["lams"] if c["lam"] == 1.0), None)
    if at_one is not None and at_one.get("head") == "fitted":
        note += (
            " At lam = 1 the CE term has weight 0, so a jointly trained linear head (initialised at zero) would get no "
            f"gradient and put every query in the first class (chance, {ablation['chance']:.2f}%); that cell's head "
            "is instead fitted after the fine-tuning steps, by L2-penalised logistic regression on the frozen "
            "fine-tuned features of the support images. Every other lam trains its head jointly."
        )
    elif at_one is not None and abs(at_one["top1_mean"] - ablation["chance"]) < 1e-6:
        note += (
            f" At lam = 1 the CE term has weight 0, so the linear head (initialised at zero) receives no gradient "
            f"and predicts the first class for every query: chance level, {ablation['chance']:.2f}%."
        )
    return note


# --------------------------------------------------------------------------------------------
# figures


def _fewshot_figure(path: Path, results: dict, objectives: list[str]) -> None:
    """Few-shot accuracy against K with 95% CI error bars, one line per objective (PNG + CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from hscl.engine.evaluation.report import write_table

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


def _ablation_figure(path: Path, ablation: dict) -> None:
    """Accuracy against lam with 95% CI error bars and the chance level (PNG + CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hscl.engine.evaluation.report import write_table

    cells = ablation["lams"]
    lams = [c["lam"] for c in cells]
    means = [c["top1_mean"] for c in cells]
    halves = [0.0 if math.isnan(c["ci95"]) else c["ci95"] for c in cells]
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    ax.errorbar(lams, means, yerr=halves, marker="o", capsize=3, label="(1 − lam) CE + lam SCHaNe, test episodes")
    if ablation["selected_on"] == "validation":
        val = [c["val_top1_mean"] for c in cells]
        ax.plot(lams, val, marker="s", linestyle="-.", label="validation episodes (lam chosen on these)")
    chosen = next(c for c in cells if c["selected"])
    label = f"chosen on {ablation['selected_on']}: lam = {chosen['lam']:g} (its test accuracy)"
    ax.plot([chosen["lam"]], [chosen["top1_mean"]], marker="*", markersize=14, color="black", ls="none", label=label)
    ax.axhline(ablation["chance"], color="grey", linestyle=":", label=f"chance ({ablation['chance']:.0f}%)")
    ax.set_xticks(lams)
    ax.set_xticklabels([f"{lam:g}" for lam in lams])
    ax.set_xlabel("lam (weight of the SCHaNe term; 0 = CE)")
    ax.set_ylabel("query accuracy (%)")
    ax.set_title(
        f"lam ablation: {ablation['ways']}-way {ablation['shots']}-shot, {ablation['episodes']} test episodes; "
        f"lam chosen on {ablation['selected_on']}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    header = [
        "lam",
        "source",
        "head",
        "top1_mean",
        "ci95",
        "diff_vs_lam0",
        "diff_ci95",
        "val_top1_mean",
        "val_ci95",
        "selected",
    ]
    rows = [[c.get(k) for k in header] for c in cells]
    write_table(Path(path).with_suffix(".csv"), header, rows)


# --------------------------------------------------------------------------------------------
# everything


def _machine(precision: dict) -> dict:
    """The machine and numerics of the fine-tuning (``precision.json``, written by ``schane._choose_precision``;
    one stored before hscl recorded its numerics is described as this machine now)."""
    from hscl.engine.runtime.precision import numerics_record

    numerics = precision.get("numerics")
    if numerics is None:
        used = "bf16-mixed" if precision.get("autocast") == "bf16" else "32-true"
        numerics = numerics_record(used, precision["channels_last"], precision["device"])
    return {
        "cpu": numerics["cpu"],
        "bf16_flags": numerics["cpu_bf16_flags"],
        "torch": numerics["torch"],
        "threads": torch.get_num_threads(),
        "device": precision["device"],
        "precision": precision["label"],
        "numerics": numerics,
    }


def _invocations(previous: Path, seconds: float, stage_seconds: dict) -> list[dict]:
    """The wall clock of every invocation that worked on this output folder (a resumed run adds one), oldest first."""
    import json
    import time

    earlier = []
    if previous.exists():
        try:
            earlier = json.loads(previous.read_text()).get("invocations", [])
        except (OSError, ValueError):  # a damaged file from a killed run: its timings are lost, nothing else
            earlier = []
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return [*earlier, {"finished": now, "seconds": seconds, "stage_seconds": stage_seconds}]


def _protocol_note(experiment, results: dict) -> str:
    """How the numbers were made: the seeds of full fine-tuning, where the episodes' classes and images came from."""
    fs, full = experiment.fewshot, results["full"]
    seeds = experiment.full.seeds
    images = (
        "support and query images from all the images of each class (training and test splits pooled), disjoint"
        if fs.draw == "all"
        else "support images from the training split, query images from the test split"
    )
    ab = experiment.ablation
    if ab is not None and ab.select == "validation":
        images += f" (except the {ab.val_fraction:g} of each class's images set aside for choosing lam)"
    return (
        f"Full fine-tuning: training seeds {seeds}, each scored on the same {full['test_images']} test images. "
        f"Few-shot: each episode draws {fs.ways} of the {len(experiment.heldout_classes)} held-out classes "
        f"and {images}; 'class sets' counts the distinct sets of classes among the episodes."
    )


def _title(experiment) -> str:
    dataset = experiment.data_config.dataset
    if experiment.backbone is not None:
        bc = experiment.backbone
        origin = f"{bc.name} ({'pre-trained weights' if bc.pretrained else 'random init'}, {bc.input_size or 'its'} px)"
    else:
        origin = f"pre-trained with {experiment.pretrain.loss.method} on classes {experiment.pretrain_classes}"
    return f"SCHaNe vs CE ({experiment.name}): {dataset}; {origin}; accuracy in %, mean with 95% CI"


def write_schane_outputs(
    experiment,
    out_dir: Path,
    *,
    data,
    full_data,
    full: dict,
    correct: dict,
    episodes: dict,
    ablation: dict | None,
    embedding: dict,
    precision: dict,
    seconds: float,
    stage_seconds: dict,
) -> dict:
    """``results.json``, ``schane.csv``, ``schane.md``, ``fewshot.png`` (+ ``.csv``), and with an ablation
    ``ablation.png`` (+ ``.csv``); prints the tables. Returns the results."""
    from hscl.engine.evaluation.report import markdown_table, write_json, write_table

    results = _summarise(experiment, data, full_data, full, correct, episodes, embedding)
    header, rows, csv_rows = _table(results, experiment.objectives)
    table = markdown_table(header, rows)
    results["table_markdown"] = table
    results["paper"] = PAPER
    results["machine"] = _machine(precision)
    from hscl.experiments._numerics import numerics_footer, run_numerics, table_numerics

    # every objective's cells are fine-tuned under the one stored choice (precision.json); the pre-training's own
    cells = {OBJECTIVE_LABELS[o]: results["machine"]["numerics"] for o in experiment.objectives}
    results["numerics"] = table_numerics(cells, f"SCHaNe ({experiment.name}, {out_dir})")
    if experiment.backbone is None:
        results["pretrain_numerics"] = run_numerics(out_dir / "pretrain")
    results["seconds"] = seconds
    results["stage_seconds"] = stage_seconds
    results["invocations"] = _invocations(out_dir / "results.json", seconds, stage_seconds)
    results["seconds_all_invocations"] = sum(i["seconds"] for i in results["invocations"])
    title = _title(experiment)
    text = f"{title}\n\n{table}\n"
    if "isotropy" in embedding:
        text += "\nIsotropy: Mu-Viswanath = " + ISOTROPY_FORMS[""] + "; sym. = " + ISOTROPY_FORMS["_symmetric"] + ".\n"
    text += f"\n{_protocol_note(experiment, results)}\n\n{numerics_footer(results['numerics'])}\n"
    written = ["results.json", "schane.csv", "schane.md", "fewshot.png", "fewshot.csv", "tsne.png", "tsne.csv"]
    if ablation is not None:
        results["ablation"] = _summarise_ablation(ablation)
        ablation_table = markdown_table(*_ablation_table(results["ablation"]))
        results["ablation"]["table_markdown"] = ablation_table
        selection = _selection_text(results["ablation"])
        results["ablation"]["selection_text"] = selection
        text += f"\nlam ablation of SCHaNe ({selection})\n\n{ablation_table}\n\n{_ablation_note(results['ablation'])}\n"
        _ablation_figure(out_dir / "ablation.png", results["ablation"])
        written += ["ablation.png", "ablation.csv"]
    text += f"\nPaper (for comparison, other backbone and data): {PAPER['source']}: SCHaNe − CE up to "
    text += f"+{PAPER['fewshot_gain_up_to']} points few-shot, +{PAPER['full_gain_up_to']} full fine-tuning.\n"
    write_json(out_dir / "results.json", results)
    write_table(
        out_dir / "schane.csv", ["setting", "objective", "top1_mean", "ci95", "diff_vs_ce", "diff_ci95"], csv_rows
    )
    (out_dir / "schane.md").write_text(text)
    _fewshot_figure(out_dir / "fewshot.png", results, experiment.objectives)
    print(f"\n{text}")
    print(f"written in {out_dir}: {', '.join(written)}")
    return results
