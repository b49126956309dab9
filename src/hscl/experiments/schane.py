"""``hscl reproduce schane`` (SCHaNe vs CE): pre-train, fine-tune, few-shot, outputs.

One YAML (``configs/schane/<preset>.yaml``, a :class:`SchaneExperiment`): pre-train on some classes
(cached), compare the fine-tuning ``objectives`` of :mod:`hscl.engine.finetune` by full fine-tuning on
every class and by the few-shot episodes of :mod:`hscl.engine.fewshot` on the held-out classes, then
write ``results.json``, ``schane.csv``, ``schane.md``, ``fewshot.png`` and ``tsne.png`` (each figure
with its data as ``.csv``). Reference: Long et al., arXiv 2308.14893 (SCHaNe).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hscl.data.augment import AugmentConfig, EvalTransform
from hscl.data.images import ImageData
from hscl.engine.config import RunConfig, config_from_dict, config_to_dict
from hscl.engine.fewshot import FewShotConfig, embedding_isotropy, few_shot, tsne_figure
from hscl.engine.finetune import (
    OBJECTIVE_LABELS,
    OBJECTIVES,
    FinetuneConfig,
    FineTuneModel,
    _check_choice,
    _check_int,
    embed,
    finetune,
    select_classes,
)
from hscl.engine.pretrained import load_pretrained
from hscl.experiments._schane_outputs import _fewshot_figure, _summarise, _table
from hscl.models import ContrastiveModel

__all__ = ["FullConfig", "SchaneExperiment", "find_experiment", "load_experiment", "reproduce_schane"]


@dataclass
class FullConfig:
    """Full fine-tuning in ``hscl reproduce schane``: every class of the data set."""

    train_subset: int | None = 10000
    test_subset: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class SchaneExperiment:
    """``hscl reproduce schane``: one YAML (``configs/schane/<preset>.yaml``).

    Pre-train on ``pretrain_classes`` (a :class:`RunConfig`, cached in ``<out>/pretrain``), then compare
    ``objectives`` by full fine-tuning on every class and by few-shot episodes on ``heldout_classes``.
    """

    name: str = "schane"
    pretrain_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    heldout_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    pretrain_train_subset: int | None = None  # stratified, of the pre-training classes' images
    objectives: list[str] = field(default_factory=lambda: ["ce", "schane"])
    pretrain: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    full: FullConfig = field(default_factory=FullConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    embedding_points: int = 1000
    #: torch threads for the whole experiment (None: torch's default); overrides pretrain.train.threads
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None:
            self.threads = _check_int("threads", self.threads, 1)
            self.pretrain.train.threads = self.threads
        if not self.objectives:
            raise ValueError("objectives must list at least one of " + ", ".join(OBJECTIVES))
        for objective in self.objectives:
            _check_choice("objectives", objective, OBJECTIVES)
        overlap = sorted(set(self.pretrain_classes) & set(self.heldout_classes))
        if overlap:
            raise ValueError(f"heldout_classes must be disjoint from pretrain_classes; both hold {overlap}")

    def objective_config(self, objective: str, **changes) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, objective=objective, **changes)


def find_experiment(preset: str, extra: str | Path | None = None) -> Path:
    from hscl.experiments.presets import find_preset

    return find_preset("schane", preset, extra)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> SchaneExperiment:
    """Read a ``SchaneExperiment`` YAML and apply ``section.key=value`` overrides (e.g. ``fewshot.episodes=20``)."""
    from hscl.engine.config import apply_overrides, load_yaml, validate_config

    data = load_yaml(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level")
    experiment = config_from_dict(apply_overrides(data, list(overrides)), SchaneExperiment, "schane")
    validate_config(experiment.pretrain)
    return experiment


def _pretrain(experiment: SchaneExperiment, data: ImageData, out_dir: Path) -> Path:
    from hscl.engine.train import run_paths, train

    paths = run_paths(out_dir)
    if paths.final.exists():
        print(f"== pre-training: cached {paths.final}", flush=True)
        return paths.final
    pre = select_classes(data, experiment.pretrain_classes)
    if experiment.pretrain_train_subset is not None:
        pre = pre.subset(experiment.pretrain_train_subset, None, seed=experiment.pretrain.train.seed)
    print(f"== pre-training {experiment.pretrain.loss.method} on {pre} -> {out_dir}", flush=True)
    return train(experiment.pretrain, out_dir, resume=True, data=pre)


def reproduce_schane(
    out_dir: str | Path,
    *,
    preset: str = "quick",
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    data_dir: str | None = None,
    config_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """CE vs SCHaNe (and any other ``objectives``): full fine-tuning and few-shot, table + figures + data.

    Resumable: the pre-training, every (objective, seed) fine-tuning run and every few-shot episode are
    stored in ``out_dir`` when finished and skipped on a rerun.
    """
    from hscl.data.images import load_dataset

    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = list(overrides)
    if data_dir is not None:
        extra.append(f"pretrain.data.data_dir={data_dir}")
    experiment = load_experiment(find_experiment(preset, config_dir), extra)
    if seeds:
        experiment.full.seeds = [int(s) for s in seeds]
    (out_dir / "experiment.json").write_text(json.dumps(config_to_dict(experiment), indent=2))
    if experiment.threads is not None:
        torch.set_num_threads(experiment.threads)
    dc = experiment.pretrain.data
    data = load_dataset(dc.dataset, data_dir=dc.data_dir)

    stage_seconds: dict[str, float] = {}  # wall clock of each stage in this invocation (cached stages: ~0)
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stage_seconds[stage] = now - mark
        mark = now

    # 1. pre-training on the pre-training classes (cached)
    final = _pretrain(experiment, data, out_dir / "pretrain")
    lap("pretrain")
    pretrained = load_pretrained(final)
    augment = pretrained.augment_config(data.channels, data.size, experiment.finetune.augment)

    # 2. full fine-tuning on every class
    full_data = data
    if experiment.full.train_subset is not None or experiment.full.test_subset is not None:
        full_data = data.subset(experiment.full.train_subset, experiment.full.test_subset, seed=0)
    full, correct = _full_finetuning(experiment, pretrained.model, full_data, augment, out_dir, progress)
    lap("full")

    # 3. few-shot episodes on the held-out classes
    episodes = _fewshot_episodes(experiment, pretrained.model, data, augment, out_dir, progress)
    lap("fewshot")

    # 4. embedding quality of the fine-tuned models (first seed): isotropy and t-SNE
    embedding = _embedding_quality(experiment, full_data, augment, out_dir)
    lap("embedding")

    # 5. tables and figures
    results = _summarise(experiment, data, full_data, full, correct, episodes, embedding)
    results["seconds"] = time.perf_counter() - began
    results["stage_seconds"] = stage_seconds
    _write_schane_outputs(experiment, results, out_dir)
    return results


def _full_finetuning(
    experiment: SchaneExperiment,
    model: ContrastiveModel,
    full_data: ImageData,
    augment: AugmentConfig,
    out_dir: Path,
    progress: bool,
) -> tuple[dict[str, list[dict]], dict[str, list[Tensor]]]:
    """Full fine-tuning of ``model`` with every (objective, seed), each stored in ``out_dir/full/<objective>/
    seed<seed>`` and read back from there on a rerun; the records and per-test-image correctness of each."""
    full: dict[str, list[dict]] = {}
    correct: dict[str, list[Tensor]] = {}
    for objective in experiment.objectives:
        full[objective], correct[objective] = [], []
        for seed in experiment.full.seeds:
            run_dir = out_dir / "full" / objective / f"seed{seed}"
            result_file = run_dir / "result.json"
            if result_file.exists() and (run_dir / "test_correct.pt").exists():
                full[objective].append(json.loads(result_file.read_text()))
                correct[objective].append(torch.load(run_dir / "test_correct.pt", weights_only=True))
                continue
            print(f"== full fine-tuning {objective} (seed {seed}) on {full_data} -> {run_dir}", flush=True)
            config = experiment.objective_config(objective, seed=seed)
            result = finetune(
                model, full_data, config, augment=augment, out_dir=run_dir, resume=True, progress=progress
            )
            torch.save(result.model.state_dict(), run_dir / "model.pt")
            torch.save(result.test_correct, run_dir / "test_correct.pt")
            record = {**result.as_dict(), "seed": seed, "objective": objective}
            result_file.write_text(json.dumps(record, indent=2))
            full[objective].append(record)
            correct[objective].append(result.test_correct)
    return full, correct


def _fewshot_episodes(
    experiment: SchaneExperiment,
    model: ContrastiveModel,
    data: ImageData,
    augment: AugmentConfig,
    out_dir: Path,
    progress: bool,
) -> dict[int, list[dict]]:
    """The few-shot episodes of every objective on the held-out classes (resumable, in ``out_dir/fewshot``)."""
    fs = experiment.fewshot
    configs = {o: experiment.objective_config(o, lr=fs.lr, bn=fs.bn) for o in experiment.objectives}
    print(
        f"== few-shot: {fs.ways}-way K-shot, K in {fs.shots}, {fs.episodes} episodes each, held-out classes "
        f"{[data.classes[c] for c in experiment.heldout_classes]}",
        flush=True,
    )
    return few_shot(
        model,
        data,
        experiment.heldout_classes,
        configs,
        fs,
        augment=augment,
        out_dir=out_dir / "fewshot",
        resume=True,
        progress=progress,
    )


def _write_schane_outputs(experiment: SchaneExperiment, results: dict, out_dir: Path) -> None:
    """``results.json``, ``schane.csv``, ``schane.md`` and ``fewshot.png`` (+ ``.csv``); prints the table."""
    from hscl.engine.report import markdown_table, write_json, write_table

    header, rows, csv_rows = _table(results, experiment.objectives)
    table = markdown_table(header, rows)
    results["table_markdown"] = table
    write_json(out_dir / "results.json", results)
    write_table(
        out_dir / "schane.csv", ["setting", "objective", "top1_mean", "ci95", "diff_vs_ce", "diff_ci95"], csv_rows
    )
    title = (
        f"SCHaNe vs CE ({experiment.name}): {experiment.pretrain.data.dataset}; pre-trained with "
        f"{experiment.pretrain.loss.method} on classes {experiment.pretrain_classes}; accuracy in %, mean with 95% CI"
    )
    (out_dir / "schane.md").write_text(f"{title}\n\n{table}\n")
    _fewshot_figure(out_dir / "fewshot.png", results, experiment.objectives)
    print(f"\n{title}\n\n{table}\n")
    print(f"written: {out_dir}/results.json, schane.csv, schane.md, fewshot.png, fewshot.csv, tsne.png, tsne.csv")


def _embedding_quality(experiment: SchaneExperiment, data: ImageData, augment: AugmentConfig, out_dir: Path) -> dict:
    """Isotropy of the test-set features ``h`` and projections ``z`` of each fine-tuned model (first seed), and
    a t-SNE map of the features; cached in ``out_dir/embedding.json``."""
    from hscl.data.images import stratified_indices

    cache = out_dir / "embedding.json"
    if cache.exists() and (out_dir / "tsne.png").exists():
        return json.loads(cache.read_text())
    seed = experiment.full.seeds[0]
    n = min(experiment.embedding_points, int(data.test_labels.numel()))
    index = torch.from_numpy(stratified_indices(data.test_labels, n, (seed, 11)))
    images, labels = data.test_images[index], data.test_labels[index]
    pretrained = load_pretrained(out_dir / "pretrain" / "final.ckpt").model
    transform = EvalTransform(augment)
    features: dict[str, Tensor] = {}
    result: dict = {"points": n, "seed": seed, "isotropy_features": {}, "isotropy_projection": {}}
    for objective in experiment.objectives:
        model = FineTuneModel(copy.deepcopy(pretrained), data.num_classes, experiment.finetune.embedding)
        state = torch.load(out_dir / "full" / objective / f"seed{seed}" / "model.pt", weights_only=True)
        model.load_state_dict(state)
        h, z = embed(model, images, transform)
        result["isotropy_features"][objective] = embedding_isotropy(h)
        result["isotropy_projection"][objective] = embedding_isotropy(z)
        features[OBJECTIVE_LABELS[objective]] = h
    title = f"t-SNE of the encoder features h of {n} test images after full fine-tuning (seed {seed})"
    tsne_figure(out_dir / "tsne.png", features, labels, data.classes, seed=seed, title=title)
    cache.write_text(json.dumps(result, indent=2))
    return result
