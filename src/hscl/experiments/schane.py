"""``hscl reproduce schane`` (SCHaNe vs CE): a pre-trained model, full fine-tuning, few-shot, lam ablation, outputs.

One YAML (``configs/schane/<preset>.yaml``, a :class:`SchaneExperiment`). The pre-trained model is either hscl's
own encoder, pre-trained by the experiment on some classes (``pretrain``; cached), or a pre-trained backbone
(``backbone``: EfficientNet-Lite0 with its ImageNet weights, a HuggingFace model from ``hf:PATH``; nothing is
pre-trained). From its weights the fine-tuning ``objectives`` of :mod:`hscl.engine.finetune.loop` are compared by full
fine-tuning on every class and by the few-shot episodes of :mod:`hscl.engine.finetune.fewshot` on the held-out classes;
with ``ablation`` SCHaNe's ``lam`` is varied on the ``K``-shot episodes, the best ``lam`` chosen on validation
episodes of the held-out classes' training images (``ablation.select: test``: on the test episodes). Written:
``results.json``, ``schane.csv``, ``schane.md``, ``fewshot.png``, ``tsne.png``, ``ablation.png`` (each figure with
its data as ``.csv``).
Reference: Long et al., arXiv 2308.14893 (SCHaNe).

Presets: ``quick`` (pre-trains a small convnet on Fashion-MNIST, 2 CPU cores), ``pretrained`` (EfficientNet-Lite0,
ImageNet weights, on Fashion-MNIST, 3 fine-tuning seeds and 100 episodes, about 90 minutes on 2 CPU cores),
``cifar-fs-vit`` (a ViT / BEiT from
``hf:PATH`` on CIFAR-FS and CIFAR-100, for a GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from hscl.data.augment import AugmentConfig, EvalTransform
from hscl.data.images import ImageData
from hscl.engine.finetune.config import OBJECTIVE_LABELS
from hscl.engine.finetune.episodes import fits_head
from hscl.engine.finetune.fewshot import embedding_isotropy, few_shot, tsne_figure
from hscl.engine.finetune.loop import FineTuneModel, backbone_input, embed, finetune, select_classes
from hscl.engine.runtime.config import config_to_dict
from hscl.experiments._schane_config import (
    AblationConfig,
    BackboneConfig,
    FullConfig,
    SchaneExperiment,
    find_experiment,
    load_experiment,
)
from hscl.experiments._schane_outputs import ISOTROPY_FORMS, binomial_ci, fmt_ci, write_schane_outputs
from hscl.experiments._schane_selection import choose_lam, test_episode_pool
from hscl.models import Backbone, ContrastiveModel

__all__ = [
    "AblationConfig",
    "BackboneConfig",
    "FullConfig",
    "SchaneExperiment",
    "binomial_ci",
    "fmt_ci",
    "find_experiment",
    "load_experiment",
    "reproduce_schane",
]


def reproduce_schane(
    out_dir: str | Path,
    *,
    preset: str = "quick",
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    data_dir: str | None = None,
    config_dir: str | Path | None = None,
    progress: bool = True,
    select: str | None = None,
) -> dict:
    """CE vs SCHaNe (and any other ``objectives``): full fine-tuning, few-shot, the lam ablation; tables + figures.

    ``select`` (``"validation"`` or ``"test"``; None: the preset's ``ablation.select``) sets the episodes the
    ablation's best ``lam`` is chosen on.

    Resumable: the pre-training, the precision choice, every (objective, seed) fine-tuning run and every few-shot
    episode of every objective (and ablation cell) are stored in ``out_dir`` when finished and skipped on a rerun
    (a fine-tuning run stored with other settings is refused, naming the folder).
    """
    from hscl.data.images import check_data_dir, load_dataset
    from hscl.engine.runtime.distributed import resolve_device

    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(find_experiment(preset, config_dir), overrides)
    dc = experiment.data_config
    if data_dir is not None:
        dc.data_dir = data_dir
    if seeds:
        experiment.full.seeds = [int(s) for s in seeds]
    if select is not None:
        if experiment.ablation is None:
            raise ValueError(f"--select chooses the lam of the ablation; the schane preset {preset!r} has no ablation")
        experiment.ablation = dataclasses.replace(experiment.ablation, select=select)  # checked again
    (out_dir / "experiment.json").write_text(json.dumps(config_to_dict(experiment), indent=2))
    if experiment.threads is not None:
        torch.set_num_threads(experiment.threads)
    device = resolve_device(experiment.device)
    check_data_dir(dc.dataset, dc.data_dir)  # an explicit --data-dir must hold the data
    data = load_dataset(dc.dataset, data_dir=dc.data_dir)

    stage_seconds: dict[str, float] = {}  # wall clock of each stage in this invocation (cached stages: ~0)
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stage_seconds[stage] = now - mark
        mark = now

    # 1. the pre-trained model: pre-trained here on the pre-training classes (cached), or a backbone
    model, augment = _pretrained_model(experiment, data, out_dir)
    lap("pretrain")
    precision = _stored_precision(experiment, model, data, augment, device, out_dir)
    if precision["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    lap("precision")

    with _autocast(device, precision):
        # 2. full fine-tuning on every class
        full_data = _full_data(experiment, data)
        full, correct = _full_finetuning(experiment, model, full_data, augment, out_dir, device, progress)
        lap("full")

        # 3. few-shot episodes on the held-out classes (without the images lam is chosen on)
        pool = test_episode_pool(experiment, data)
        episodes = _fewshot_episodes(experiment, model, pool, augment, out_dir, device, progress)
        lap("fewshot")

        # 4. the lam ablation on the K-shot episodes
        ablation = _lam_ablation(experiment, model, data, augment, episodes, out_dir, device, progress, pool=pool)
        lap("ablation")

        # 5. embedding quality of the fine-tuned models (first seed): isotropy and t-SNE
        embedding = _embedding_quality(experiment, model, full_data, augment, out_dir)
        lap("embedding")

    # 6. tables and figures
    results = write_schane_outputs(
        experiment,
        out_dir,
        data=data,
        full_data=full_data,
        full=full,
        correct=correct,
        episodes=episodes,
        ablation=ablation,
        embedding=embedding,
        precision=precision,
        seconds=time.perf_counter() - began,
        stage_seconds=stage_seconds,
    )
    return results


# --------------------------------------------------------------------------------------------
# the pre-trained model, its precision


def _pretrained_model(
    experiment: SchaneExperiment, data: ImageData, out_dir: Path
) -> tuple[ContrastiveModel | Backbone, AugmentConfig]:
    """The model every objective starts from, and the fine-tuning augmentation (before :func:`backbone_input`)."""
    from hscl.data.augment import augment_preset, preset_for
    from hscl.engine.finetune.pretrained import load_pretrained

    if experiment.backbone is None:
        pretrained = load_pretrained(_pretrain(experiment, data, out_dir / "pretrain"))
        return pretrained.model, pretrained.augment_config(data.channels, data.size, experiment.finetune.augment)
    from hscl.models import build_backbone

    bc = experiment.backbone
    try:
        backbone = build_backbone(bc.name, pretrained=bc.pretrained, input_size=bc.input_size)
    except ModuleNotFoundError as err:  # the weights' or the model's package: one line with the pip command
        raise ValueError(str(err)) from None
    print(f"== pre-trained model: {backbone.name} ({backbone.feature_dim}-d features, {backbone.input_size} px)")
    augment = preset_for(data.channels, data.size)
    if experiment.finetune.augment is not None:
        augment = augment_preset(experiment.finetune.augment).with_overrides(None, size=data.size)
    return backbone, augment


def _pretrain(experiment: SchaneExperiment, data: ImageData, out_dir: Path) -> Path:
    from hscl.engine.pretrain.run import run_paths, train
    from hscl.engine.runtime.runs import check_run_config

    paths = run_paths(out_dir)
    check_run_config(out_dir, experiment.pretrain)  # a pre-training of another config is not reused
    if paths.final.exists():
        print(f"== pre-training: cached {paths.final}", flush=True)
        return paths.final
    pre = select_classes(data, experiment.pretrain_classes)
    if experiment.pretrain_train_subset is not None:
        pre = pre.subset(experiment.pretrain_train_subset, None, seed=experiment.pretrain.train.seed)
    print(f"== pre-training {experiment.pretrain.loss.method} on {pre} -> {out_dir}", flush=True)
    return train(experiment.pretrain, out_dir, resume=True, data=pre)


def _stored_precision(
    experiment: SchaneExperiment,
    model: nn.Module,
    data: ImageData,
    augment: AugmentConfig,
    device: torch.device,
    out_dir: Path,
) -> dict:
    """``{"setting", "device", "autocast": "bf16" | None, "channels_last": bool, "label", "numerics"}``, stored in
    ``precision.json``.

    :func:`hscl.engine.runtime.precision.loop_precision` decides, by the rule of a training run (``"auto"``: bf16
    where the hardware computes it natively, a rule with no timing; ``"fastest"`` on the CPU times a few forward +
    backward steps of a fine-tuning batch). fp16 (old GPUs) is not used: the fine-tuning steps have no gradient scaler;
    float32 runs instead. ``numerics``: :func:`~hscl.engine.runtime.precision.numerics_record`. A rerun keeps the stored
    choice (every finished cell was computed with it) and refuses another setting.
    """
    from hscl.engine.runtime.precision import enable_tf32, loop_precision, numerics_record

    path = out_dir / "precision.json"
    key = {"setting": experiment.precision, "device": device.type}
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in key} != key:
            raise ValueError(
                f"{out_dir} holds a run with precision {stored.get('setting')} on {stored.get('device')} "
                f"({path}); this run asks for {experiment.precision} on {device.type}; choose another --out"
            )
        if stored["autocast"] is None and device.type == "cuda":
            enable_tf32()
        print(f"== precision: {stored['label']} (stored in {path})", flush=True)
        return stored
    probe, sample = model, None
    if isinstance(model, Backbone):  # as fine-tuning wraps it: (h, z), z = h or a new projection head
        probe = FineTuneModel(model, 2, experiment.finetune.resolved(model).embedding).model
    if experiment.precision == "fastest" and device.type == "cpu":  # the one setting that times steps
        rows = experiment.finetune.batch_size * experiment.finetune.views
        transform = EvalTransform(backbone_input(model, augment))
        sample = transform(data.train_images[:rows]).to(device)
        probe = copy.deepcopy(probe).to(device)
    choice = loop_precision(experiment.precision, probe, device, sample)  # the rule of every fine-tuning loop
    chosen, channels_last = ("32-true" if choice.precision == "16-mixed" else choice.precision), choice.channels_last
    if chosen == "32-true" and device.type == "cuda":
        enable_tf32()
    autocast = "bf16" if chosen == "bf16-mixed" else None
    label = f"{'bf16 autocast' if autocast else 'float32'}{', channels-last' if channels_last else ''}"
    numerics = numerics_record(chosen, channels_last, device, setting=experiment.precision)
    stored = {**key, "autocast": autocast, "channels_last": bool(channels_last), "label": label, "numerics": numerics}
    path.write_text(json.dumps(stored, indent=2))
    print(f"== precision: {label} ({experiment.precision} on {device.type})", flush=True)
    return stored


def _autocast(device: torch.device, precision: dict):
    """The stored choice for every fine-tuning and few-shot call inside (they are given no precision of their
    own), and bf16 autocast on ``device`` when chosen (:func:`hscl.engine.runtime.precision.loop_precision_scope`)."""
    from hscl.engine.runtime.precision import LoopPrecision, loop_precision_scope

    used = "bf16-mixed" if precision["autocast"] == "bf16" else "32-true"
    return loop_precision_scope(LoopPrecision(used, precision["channels_last"], precision["setting"]), device)


# --------------------------------------------------------------------------------------------
# full fine-tuning, few-shot, ablation


def _full_data(experiment: SchaneExperiment, data: ImageData) -> ImageData:
    """The data of full fine-tuning: ``full.dataset`` (else the experiment's data), on stratified subsets."""
    from hscl.data.images import load_dataset

    full = experiment.full
    full_data = data
    if full.dataset is not None and full.dataset != experiment.data_config.dataset:
        full_data = load_dataset(full.dataset, data_dir=experiment.data_config.data_dir)
    if full.train_subset is not None or full.test_subset is not None:
        full_data = full_data.subset(full.train_subset, full.test_subset, seed=0)
    return full_data


def _full_finetuning(
    experiment: SchaneExperiment,
    model: ContrastiveModel | Backbone,
    full_data: ImageData,
    augment: AugmentConfig,
    out_dir: Path,
    device: torch.device,
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
            config = experiment.objective_config(objective, seed=seed)
            setting = {"config": dataclasses.asdict(config.resolved(model)), "data": repr(full_data)}
            result_file = run_dir / "result.json"
            if result_file.exists() and (run_dir / "test_correct.pt").exists():
                record = json.loads(result_file.read_text())
                stored = {k: record.get(k, setting[k]) for k in setting}
                if stored != setting:
                    raise ValueError(
                        f"{run_dir} holds a fine-tuning run with other settings ({stored}); this run is {setting}; "
                        "choose another --out"
                    )
                full[objective].append(record)
                correct[objective].append(
                    torch.load(run_dir / "test_correct.pt", map_location="cpu", weights_only=True)
                )
                continue
            print(f"== full fine-tuning {objective} (seed {seed}) on {full_data} -> {run_dir}", flush=True)
            result = finetune(
                model,
                full_data,
                config,
                augment=augment,
                out_dir=run_dir,
                resume=True,
                progress=progress,
                device=device,
            )
            torch.save(result.model.state_dict(), run_dir / "model.pt")
            torch.save(result.test_correct, run_dir / "test_correct.pt")
            record = {**result.as_dict(), "seed": seed, "objective": objective, **setting}
            result_file.write_text(json.dumps(record, indent=2))
            full[objective].append(record)
            correct[objective].append(result.test_correct)
    return full, correct


def _fewshot_episodes(
    experiment: SchaneExperiment,
    model: ContrastiveModel | Backbone,
    data: ImageData,
    augment: AugmentConfig,
    out_dir: Path,
    device: torch.device,
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
        device=device,
    )


def _lam_ablation(
    experiment: SchaneExperiment,
    model: ContrastiveModel | Backbone,
    data: ImageData,
    augment: AugmentConfig,
    episodes: dict[int, list[dict]],
    out_dir: Path,
    device: torch.device,
    progress: bool,
    pool: ImageData | None = None,
) -> dict | None:
    """SCHaNe with every ``lam`` of ``ablation.lams`` on the ``ablation.shots``-shot episodes (the same episodes,
    initial weights and augmentation draws as the few-shot comparison, drawn from ``pool``, default
    :func:`~hscl.experiments._schane_selection.test_episode_pool`; ``data`` is the whole data, for the validation).

    A cell the few-shot comparison already ran is taken from it: ``lam = 0`` is CE exactly (the contrastive term
    is skipped), ``lam = finetune.lam`` is its SCHaNe. The others run in ``out_dir/ablation`` (resumable). At
    ``lam = 1`` there is no CE term to train the linear head, so its head is fitted after the fine-tuning steps
    (:func:`~hscl.engine.finetune.episodes.fits_head`; ``"head": "fitted"``, else ``"joint"``). Returns
    ``{"shots", "ways", "episodes", "lams": [{"lam", "source", "accuracy": [per episode], "head"}], "selection"}``
    (None without ``ablation``): the best ``lam`` chosen on validation episodes (each cell then also has
    ``val_accuracy``) or, with ``ablation.select: test``, on the test episodes (:func:`choose_lam`).
    """
    ab = experiment.ablation
    if ab is None:
        return None
    fs = experiment.fewshot
    main = episodes.get(ab.shots)
    reused: dict[float, str] = {}
    if main is not None:
        for lam in ab.lams:
            if lam == 0.0 and "ce" in experiment.objectives:
                reused[lam] = "ce"
            elif lam == experiment.finetune.lam and "schane" in experiment.objectives:
                reused[lam] = "schane"
    names = {lam: f"schane-lam{lam:g}" for lam in ab.lams if lam not in reused}
    rows: list[dict] = []
    if names:
        configs = {n: experiment.objective_config("schane", lam=lam, lr=fs.lr, bn=fs.bn) for lam, n in names.items()}
        print(f"== lam ablation: SCHaNe with lam in {sorted(names)} on the {ab.shots}-shot episodes", flush=True)
        rows = few_shot(
            model,
            pool if pool is not None else test_episode_pool(experiment, data),
            experiment.heldout_classes,
            configs,
            dataclasses.replace(fs, shots=[ab.shots]),
            augment=augment,
            out_dir=out_dir / "ablation",
            resume=True,
            progress=progress,
            device=device,
        )[ab.shots]
    if main is not None and rows and [r["classes"] for r in rows] != [r["classes"] for r in main]:
        raise RuntimeError("the ablation's episodes differ from the few-shot comparison's; they must be the same")
    cells = []
    for lam in ab.lams:
        if lam in reused:
            source, accuracy = reused[lam], [r["accuracy"][reused[lam]] for r in main]
        else:
            source, accuracy = "ablation", [r["accuracy"][names[lam]] for r in rows]
        fitted = fits_head(experiment.objective_config("ce" if source == "ce" else "schane", lam=lam))
        cells.append({"lam": lam, "source": source, "accuracy": accuracy, "head": "fitted" if fitted else "joint"})
    selection = choose_lam(experiment, model, data, augment, cells, out_dir, device, progress)
    return {"shots": ab.shots, "ways": fs.ways, "episodes": fs.episodes, "lams": cells, "selection": selection}


# --------------------------------------------------------------------------------------------
# embedding quality


def _embedding_quality(
    experiment: SchaneExperiment,
    model: ContrastiveModel | Backbone,
    data: ImageData,
    augment: AugmentConfig,
    out_dir: Path,
) -> dict:
    """Isotropy of the test-set features ``h`` and contrastive embeddings ``z`` of each fine-tuned model (first
    seed), and a t-SNE map of the features; cached in ``out_dir/embedding.json``."""
    from hscl.data.images import stratified_indices

    seed = experiment.full.seeds[0]
    n = min(experiment.embedding_points, int(data.test_labels.numel()))
    embedding = experiment.finetune.resolved(model).embedding
    key = {"points": n, "seed": seed, "objectives": list(experiment.objectives), "data": repr(data)}
    key["isotropy"] = ISOTROPY_FORMS  # a cache from before both forms were recorded is recomputed
    cache = out_dir / "embedding.json"
    if cache.exists() and (out_dir / "tsne.png").exists():
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in key} == key:
            return stored
    index = torch.from_numpy(stratified_indices(data.test_labels, n, (seed, 11)))
    images, labels = data.test_images[index], data.test_labels[index]
    transform = EvalTransform(backbone_input(model, augment)).to(next(model.parameters()).device)
    features: dict[str, Tensor] = {}
    result: dict = {**key, "embedding": embedding}
    result |= {f"isotropy_{part}{form}": {} for part in ("features", "projection") for form in ("", "_symmetric")}
    for objective in experiment.objectives:
        tuned = FineTuneModel(copy.deepcopy(model), data.num_classes, embedding)
        state = torch.load(
            out_dir / "full" / objective / f"seed{seed}" / "model.pt", map_location="cpu", weights_only=True
        )
        tuned.load_state_dict(state)
        h, z = embed(tuned, images, transform)
        for form, symmetric in (("", False), ("_symmetric", True)):
            result[f"isotropy_features{form}"][objective] = embedding_isotropy(h, symmetric=symmetric)
            result[f"isotropy_projection{form}"][objective] = embedding_isotropy(z, symmetric=symmetric)
        features[OBJECTIVE_LABELS[objective]] = h.float()
    title = f"t-SNE of the encoder features h of {n} test images after full fine-tuning (seed {seed})"
    tsne_figure(out_dir / "tsne.png", features, labels, data.classes, seed=seed, title=title)
    cache.write_text(json.dumps(result, indent=2))
    return result
