"""``hscl reproduce table2``: Table II of the H-SCL paper, graph classification with frozen GIN embeddings.

Protocol (one dataset, one method variant, repetition ``r``):

1. The graphs are split by ``StratifiedKFold(folds, shuffle=True, random_state=r)``; every variant sees the
   same splits (a paired comparison).
2. Pre-training (:func:`hscl.engine.pretrain.graph_train.pretrain_graph_encoder`, Adam, InfoGraph's GIN + heads):

   * SCL and H-SCL use labels, so they are pre-trained once PER FOLD on that fold's training graphs only;
     the test fold's labels never reach the encoder (``folds`` models per repetition).
   * UCL and H-UCL use no labels. By default (``eval.unsupervised_pretrain: all``) they are pre-trained once
     per repetition on all graphs, InfoGraph's transductive protocol (no label is seen);
     ``unsupervised_pretrain: fold`` pre-trains them per fold too.
3. The frozen encoder embeds every graph (the concatenated sum-pooled layer outputs); an SVM (scikit-learn
   ``SVC``, RBF kernel on standardised features, :func:`svm_accuracy`) is fitted on the training fold with
   ``C`` chosen from ``eval.C`` (``1e-3 .. 1e3``) by an inner stratified ``inner_folds``-fold
   cross-validation on the training fold only, and scored on the test fold.

Every (dataset, variant, repetition, fold) accuracy is appended to ``<out>/units.jsonl`` as soon as it is
known, so an interrupted run resumes where it stopped; the embeddings of an all-graph pre-training are
kept in ``<out>/embeddings/``. At the end ``results.json``, ``table2.csv``, ``table2.md`` and
``table2.png`` (bars with error bars) are written, and the table is printed. A cell is
``mean ± std`` of the ``folds x repeats`` test-fold accuracies (in %); ``results.json`` also gives the
standard deviation of the per-repetition means.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from hscl.data.graphs import GraphData, load_graph_dataset
from hscl.engine.evaluation.report import fmt_mean_std, markdown_table, write_json, write_table
from hscl.engine.pretrain.graph_train import GraphObjective, embed_graphs, pretrain_graph_encoder
from hscl.engine.runtime.config import config_to_dict
from hscl.experiments._numerics import numerics_footer, table_numerics
from hscl.experiments._table2_config import (
    SVM_KERNELS,
    Table2Config,
    UntrainedGIN,
    _variant_key,
    find_table2_preset,
    load_table2_config,
    table2_variants,
    validate_table2_config,
)

__all__ = [
    "PAPER_TABLE2_HSCL",
    "Table2Config",
    "UntrainedGIN",
    "find_table2_preset",
    "load_table2_config",
    "reproduce_table2",
    "svm_accuracy",
    "table2_variants",
]

#: the paper's Table II accuracies (%) of H-SCL(beta), by TU dataset name
PAPER_TABLE2_HSCL: dict[str, float] = {
    "MUTAG": 87.2,
    "ENZYMES": 50.7,
    "PTC_MR": 57.7,
    "IMDB-BINARY": 73.0,
    "IMDB-MULTI": 50.1,
}
_SHORT = {"PTC_MR": "PTC", "IMDB-BINARY": "IMDB-B", "IMDB-MULTI": "IMDB-M"}


def svm_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    C: list[float],
    inner_folds: int = 5,
    kernel: str = "rbf",
    seed: int = 0,
) -> tuple[float, float]:
    """Test accuracy (%) of an SVM whose ``C`` is chosen by inner stratified CV on the training part only.

    Features are standardised with the training part's mean and standard deviation; the kernel is
    ``"rbf"`` (``exp(-gamma |x - x'|^2)`` with scikit-learn's ``gamma="scale"``, i.e. ``1 / (F var)`` of the
    standardised training features) or ``"linear"``. The kernel matrix is computed once and handed to
    ``SVC(kernel="precomputed")`` for every ``C`` and inner split (2.5x faster than refitting the kernel
    per fit; the same SVMs). Returns ``(accuracy, chosen C)``.

    Shape: train_x ``(N, F)``, train_y ``(N,)``, test_x ``(Q, F)``, test_y ``(Q,)``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    if kernel not in SVM_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(SVM_KERNELS)}, got {kernel!r}")
    mean = train_x.mean(0, keepdims=True)
    std = train_x.std(0, keepdims=True)
    std[std == 0] = 1.0
    train_s, test_s = (train_x - mean) / std, (test_x - mean) / std
    if kernel == "rbf":
        variance = float(train_s.var()) or 1.0
        gamma = 1.0 / (train_s.shape[1] * variance)

        def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
            return np.exp(-gamma * np.maximum(sq, 0.0))
    else:

        def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return a @ b.T

    counts = np.bincount(train_y)
    splits = max(2, min(inner_folds, int(counts[counts > 0].min())))
    search = GridSearchCV(
        SVC(kernel="precomputed"),
        {"C": list(C)},
        cv=StratifiedKFold(splits, shuffle=True, random_state=seed),
        scoring="accuracy",
        n_jobs=1,
    )
    search.fit(gram(train_s, train_s), train_y)
    accuracy = 100.0 * float((search.predict(gram(test_s, train_s)) == test_y).mean())
    return accuracy, float(search.best_params_["C"])


# ----------------------------------------------------------------------------------------------- the run


def _signature(config: Table2Config) -> dict:
    """The settings that make units comparable; a resumed run must share them."""
    ev = config.eval
    return {
        "model": config_to_dict(config.model),
        "train": {k: v for k, v in config_to_dict(config.train).items() if k != "threads"},
        "eval": {"folds": ev.folds, "inner_folds": ev.inner_folds, "C": ev.C, "kernel": ev.kernel,
                 "unsupervised_pretrain": ev.unsupervised_pretrain},
    }  # fmt: skip


class _Units:
    """The append-only record of finished (dataset, variant, repeat, fold) units."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[tuple, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by an interruption
                    self.done[(row["dataset"], row["variant"], row["repeat"], row["fold"])] = row

    def has(self, *key) -> bool:
        return key in self.done

    def add(self, row: dict) -> None:
        key = (row["dataset"], row["variant"], row["repeat"], row["fold"])
        self.done[key] = row
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


def _check_signature(out_dir: Path, config: Table2Config) -> None:
    path = out_dir / "signature.json"
    signature = _signature(config)
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(signature)):
            raise ValueError(
                f"{out_dir} holds results of other settings ({path}); use another --out or delete it. "
                f"previous: {previous}; now: {signature}"
            )
    else:
        write_json(path, signature)


def _pretrain_and_embed(data: GraphData, objective, config: Table2Config, index, seed: int):
    untrained = isinstance(objective, UntrainedGIN)
    result = pretrain_graph_encoder(
        data,
        GraphObjective("ucl") if untrained else objective,
        index=index,
        epochs=0 if untrained else config.train.epochs,
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        hidden=config.model.hidden,
        num_layers=config.model.num_layers,
        seed=seed,
    )
    embeddings = embed_graphs(result.model, data).numpy().astype(np.float64)
    return embeddings, result


def _final_loss(result) -> float:
    return result.losses[-1] if result.losses else math.nan  # nan: no pre-training (the untrained row)


def _run_dataset(name, data, config, variants, units, out_dir, bar) -> None:
    from sklearn.model_selection import StratifiedKFold

    from hscl.engine.runtime.distributed import resolve_device
    from hscl.engine.runtime.precision import numerics_record

    numerics = numerics_record("32-true", False, resolve_device("auto"))  # graph pre-training: float32 always

    y = data.y.numpy()
    ev = config.eval
    smallest = int(np.bincount(y).min())
    if smallest < ev.folds:
        raise ValueError(f"{name}: the smallest class has {smallest} graphs, fewer than eval.folds={ev.folds}")
    for repeat in range(ev.repeats):
        splits = list(StratifiedKFold(ev.folds, shuffle=True, random_state=repeat).split(np.zeros(len(y)), y))
        for objective in variants:
            key = _variant_key(objective)
            todo = [f for f in range(ev.folds) if not units.has(name, key, repeat, f)]
            if not todo:
                continue
            shared = None
            if not objective.supervised and ev.unsupervised_pretrain == "all":
                cache = out_dir / "embeddings" / name / key / f"repeat{repeat}.npz"
                if cache.is_file():
                    with np.load(cache) as stored:
                        shared = (stored["embeddings"], float(stored["seconds"]), float(stored["final_loss"]))
                else:
                    bar.set_postfix_str(f"{name} {objective.label} r{repeat} pre-training on all graphs")
                    emb, result = _pretrain_and_embed(data, objective, config, None, seed=1000 * repeat + 999)
                    shared = (emb, result.seconds, _final_loss(result))
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    part = cache.with_suffix(".part.npz")
                    np.savez(part, embeddings=emb, seconds=result.seconds, final_loss=shared[2])
                    part.replace(cache)
            for fold in todo:
                train_idx, test_idx = splits[fold]
                bar.set_postfix_str(f"{name} {objective.label} r{repeat} fold {fold + 1}/{ev.folds}")
                if shared is not None:
                    emb, seconds, final_loss = shared
                    seconds = seconds / ev.folds  # one pre-training shared by the folds
                else:
                    emb, result = _pretrain_and_embed(
                        data, objective, config, torch.as_tensor(train_idx), seed=1000 * repeat + fold
                    )
                    seconds, final_loss = result.seconds, _final_loss(result)
                start = time.perf_counter()
                accuracy, chosen_c = svm_accuracy(
                    emb[train_idx], y[train_idx], emb[test_idx], y[test_idx],
                    C=ev.C, inner_folds=ev.inner_folds, kernel=ev.kernel, seed=1000 * repeat + fold,
                )  # fmt: skip
                units.add(
                    {
                        "dataset": name,
                        "variant": key,
                        "label": objective.label,
                        "method": objective.method,
                        "beta": objective.beta,
                        "repeat": repeat,
                        "fold": fold,
                        "accuracy": accuracy,
                        "C": chosen_c,
                        "pretrain_seconds": seconds,
                        "svm_seconds": time.perf_counter() - start,
                        "final_loss": None if math.isnan(final_loss) else final_loss,
                        "train_graphs": len(train_idx) if objective.supervised or shared is None else len(y),
                        "numerics": numerics,
                    }
                )
                bar.update(1)


def _summarise(config: Table2Config, variants, units: _Units, dataset_names: list[str]) -> dict:
    table: dict = {}
    for name in dataset_names:
        table[name] = {}
        for objective in variants:
            key = _variant_key(objective)
            rows = [r for (d, v, _, _), r in units.done.items() if d == name and v == key]
            rows = [r for r in rows if r["repeat"] < config.eval.repeats and r["fold"] < config.eval.folds]
            accs = [r["accuracy"] for r in rows]
            per_repeat = {}
            for r in rows:
                per_repeat.setdefault(r["repeat"], []).append(r["accuracy"])
            repeat_means = [float(np.mean(v)) for v in per_repeat.values()]
            table[name][key] = {
                "label": objective.label,
                "method": objective.method,
                "beta": objective.beta,
                "mean": float(np.mean(accs)) if accs else math.nan,
                "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "std_of_repeat_means": float(np.std(repeat_means, ddof=1)) if len(repeat_means) > 1 else None,
                "n_folds": len(accs),
                "n_repeats": len(per_repeat),
                "C_chosen": sorted(r["C"] for r in rows),
                "pretrain_seconds": float(sum(r["pretrain_seconds"] for r in rows)),
                "svm_seconds": float(sum(r["svm_seconds"] for r in rows)),
                "accuracies": sorted([r["repeat"], r["fold"], r["accuracy"]] for r in rows),
                "numerics": _cell_numerics(rows),
            }
    return table


def _cell_numerics(rows: list[dict]) -> dict:
    """The numerics record of a cell's units: the first unit's (all are float32; a unit stored before hscl
    recorded numerics counts as unknown), with a precision of ``"mixed"`` when units differ in it."""
    records = [r.get("numerics") or {"setting": None, "precision": None} for r in rows]
    if not records:
        return {"setting": None, "precision": None}
    if len({r.get("precision") for r in records}) > 1:
        return {**records[0], "precision": "mixed"}
    return records[0]


def _paired(a: dict, b: dict) -> tuple[float, float, int, int]:
    """Accuracy of ``a`` minus ``b`` on the (repeat, fold) units both have (the same test folds):
    mean difference, its standard deviation, units where ``a`` is higher, units compared."""
    acc_b = {(r, f): v for r, f, v in b["accuracies"]}
    diffs = [v - acc_b[(r, f)] for r, f, v in a["accuracies"] if (r, f) in acc_b]
    if not diffs:
        return math.nan, math.nan, 0, 0
    std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    return float(np.mean(diffs)), std, sum(d > 0 for d in diffs), len(diffs)


def _short(name: str) -> str:
    return _SHORT.get(name, name)


def _write_outputs(out_dir: Path, config: Table2Config, variants, table: dict, describe: dict, seconds: float):
    names = list(table)
    header = ["method", *[_short(n) for n in names]]
    rows = []
    for objective in variants:
        key = _variant_key(objective)
        rows.append([objective.label, *[fmt_mean_std(table[n][key]["mean"], table[n][key]["std"]) for n in names]])
    if any(n in PAPER_TABLE2_HSCL for n in names):
        rows.append(
            ["paper: H-SCL(beta)", *[f"{PAPER_TABLE2_HSCL[n]:.1f}" if n in PAPER_TABLE2_HSCL else "-" for n in names]]
        )
    markdown = markdown_table(header, rows)
    verdicts = []
    for n in names:
        entries = table[n]
        best_key = max(entries, key=lambda k: entries[k]["mean"])
        hscl = {k: e for k, e in entries.items() if e["method"] == "h-scl"}
        others = {k: e for k, e in entries.items() if e["method"] != "h-scl"}
        line = f"{_short(n)}: best {entries[best_key]['label']} ({entries[best_key]['mean']:.2f})"
        if hscl and others:
            hk = max(hscl, key=lambda k: hscl[k]["mean"])
            ok = max(others, key=lambda k: others[k]["mean"])
            gap, gap_std, wins, count = _paired(hscl[hk], others[ok])
            line += (
                f"; best H-SCL {hscl[hk]['label']} {hscl[hk]['mean']:.2f} vs best other {others[ok]['label']} "
                f"{others[ok]['mean']:.2f}: paired difference {gap:+.2f} ± {gap_std:.2f} points over the same "
                f"{count} test folds, higher on {wins} of them"
            )
        verdicts.append(line)
    tc, ev = config.train, config.eval
    title = (
        f"Table II ({config.name}): SVM accuracy (%) on frozen GIN embeddings, mean ± std over "
        f"{ev.folds} folds x {ev.repeats} repetition(s); {tc.epochs} epochs, batch {tc.batch_size}, "
        f"lr {tc.lr:g}, {tc.estimator.upper()} estimator"
    )
    numerics = table_numerics(
        {f"{e['label']}, {_short(n)}": e["numerics"] for n in names for e in table[n].values()}, f"Table II ({out_dir})"
    )
    results = {
        "title": title,
        "numerics": numerics,
        "config": config_to_dict(config),
        "datasets": describe,
        "table": table,
        "table_markdown": markdown,
        "verdicts": verdicts,
        "paper_hscl_beta": {n: PAPER_TABLE2_HSCL[n] for n in names if n in PAPER_TABLE2_HSCL},
        "seconds_this_invocation": seconds,
    }
    write_json(out_dir / "results.json", results)
    csv_rows = [
        [n, e["label"], e["method"], e["beta"], e["mean"], e["std"], e["std_of_repeat_means"], e["n_folds"],
         e["n_repeats"], e["pretrain_seconds"], e["svm_seconds"]]
        for n in names for e in table[n].values()
    ]  # fmt: skip
    write_table(
        out_dir / "table2.csv",
        ["dataset", "method", "key", "beta", "accuracy_mean", "accuracy_std", "std_of_repeat_means", "folds",
         "repeats", "pretrain_seconds", "svm_seconds"],
        csv_rows,
    )  # fmt: skip
    footer = "\n".join(f"- {v}" for v in verdicts) + f"\n\n{numerics_footer(numerics)}\n"
    (out_dir / "table2.md").write_text(f"{title}\n\n{markdown}\n\n{footer}")
    _bar_plot(out_dir / "table2.png", variants, table, title)
    print(f"\n{title}\n\n{markdown}\n")
    for v in verdicts:
        print(v)
    print(f"\nwritten: {out_dir}/results.json, table2.csv, table2.md, table2.png, units.jsonl")
    return results


def _bar_plot(path: Path, variants, table: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    keys = [_variant_key(o) for o in variants]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(names) + 0.5 * len(keys)), 4.4), dpi=120)
    x = np.arange(len(names))
    for i, (objective, key) in enumerate(zip(variants, keys)):
        means = [table[n][key]["mean"] for n in names]
        stds = [table[n][key]["std"] for n in names]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=objective.label)
    for j, n in enumerate(names):
        if n in PAPER_TABLE2_HSCL:
            ax.hlines(PAPER_TABLE2_HSCL[n], j - 0.4, j + 0.4, colors="k", linestyles="--", linewidth=1)
    lows = [
        table[n][k]["mean"] - table[n][k]["std"] for n in names for k in keys if not math.isnan(table[n][k]["mean"])
    ]
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 5), 100)
    ax.set_xticks(x, [_short(n) for n in names])
    ax.set_ylabel("SVM test accuracy (%)")
    ax.set_title(
        title.split(":")[0] + (" (dashed: paper's H-SCL(beta))" if any(n in PAPER_TABLE2_HSCL for n in names) else "")
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reproduce_table2(config: Table2Config, out_dir: str | Path) -> dict:
    """Run (or resume) a Table II configuration into ``out_dir``; returns the results (also written there)."""
    from tqdm.auto import tqdm

    validate_table2_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_signature(out_dir, config)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    variants = table2_variants(config)
    units = _Units(out_dir / "units.jsonl")
    start = time.perf_counter()
    datasets, describe = {}, {}
    for name in config.datasets:
        data = load_graph_dataset(name, config.data_dir)
        datasets[data.name] = data
        describe[data.name] = data.describe()
        print(describe[data.name], flush=True)
    ev = config.eval
    total = len(datasets) * len(variants) * ev.repeats * ev.folds
    done = sum(
        units.has(n, _variant_key(o), r, f)
        for n in datasets for o in variants for r in range(ev.repeats) for f in range(ev.folds)
    )  # fmt: skip
    if done:
        print(f"resuming: {done} of {total} (dataset, method, repetition, fold) units already in {units.path}")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    try:
        with tqdm(total=total, initial=done, desc="table2 units", unit="fold") as bar:
            for name, data in datasets.items():
                _run_dataset(name, data, config, variants, units, out_dir, bar)
    finally:
        torch.set_num_threads(threads)
    table = _summarise(config, variants, units, list(datasets))
    return _write_outputs(out_dir, config, variants, table, describe, time.perf_counter() - start)
