"""The choice of SCHaNe's ``lam`` in ``hscl reproduce schane``'s ablation: on validation episodes or on the test ones.

Validation episodes (``ablation.select: validation``, the default) are drawn from a stratified
``ablation.val_fraction`` of each held-out class's images (the training and test splits pooled, the fixed
validation seed; :func:`validation_split`), which the test episodes then never draw from
(:func:`test_episode_pool`): no image a test episode holds takes part in the choice. Every ``lam`` runs on the same
validation episodes (same initial weights and augmentation draws, as the test episodes); the ``lam`` of the best
mean validation accuracy is chosen and its accuracy on the test episodes reported. ``select: test`` chooses the
best mean over the test episodes themselves (the paper's protocol), and says so; the test episodes then draw
from all the images of each class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from hscl.data.augment import AugmentConfig
from hscl.data.images import ImageData, holdout_indices
from hscl.engine.finetune.fewshot import few_shot
from hscl.models import Backbone, ContrastiveModel

__all__ = ["choose_lam", "test_episode_pool", "validation_episode_data", "validation_split"]


def validation_split(
    data: ImageData, classes: list[int], fraction: float, shots: int = 1, queries: int = 1, draw: str = "all"
) -> tuple[ImageData, ImageData]:
    """``(validation, rest)``: a stratified ``fraction`` of the images of ``classes`` (the training and test splits
    pooled; :func:`~hscl.data.images.holdout_indices` with the fixed validation seed) for the validation episodes,
    and ``data`` without them for the test episodes. Each image keeps its split (training images as "train", test
    images as "test"), so either draw of :func:`hscl.engine.finetune.episodes.sample_episode` works on both parts.
    Every class
    must keep enough validation images for an episode, ``shots + queries`` (``draw="split"``: ``shots`` training
    and ``queries`` test images), else a ``ValueError`` naming ``ablation.val_fraction``."""
    n_train = int(data.train_labels.numel())
    pooled = torch.cat([data.train_labels, data.test_labels])
    among = torch.nonzero(torch.isin(pooled, torch.tensor(classes))).flatten()
    held = round(fraction * len(among))
    if not 0 < held < len(among):
        raise ValueError(
            f"ablation.val_fraction={fraction} of the held-out classes' {len(among)} images holds out {held}; the "
            "validation and the test episodes both need images"
        )
    picked = among[torch.from_numpy(holdout_indices(pooled[among], held)[1])]
    chosen = torch.zeros(len(pooled), dtype=torch.bool)
    chosen[picked] = True
    in_train, in_test = chosen[:n_train], chosen[n_train:]
    for cls in classes:
        n_tr, n_te = int((data.train_labels[in_train] == cls).sum()), int((data.test_labels[in_test] == cls).sum())
        if (n_tr + n_te < shots + queries) if draw == "all" else (n_tr < shots or n_te < queries):
            raise ValueError(
                f"ablation.val_fraction={fraction} leaves class {cls} {n_tr + n_te} validation images ({n_tr} "
                f"training, {n_te} test), fewer than {shots} support + {queries} query images; change "
                "ablation.val_fraction or choose lam on test (--select test)"
            )
    validation = ImageData(
        name=f"{data.name} (validation episodes: {fraction:g} of the held-out classes' images)",
        train_images=data.train_images[in_train],
        train_labels=data.train_labels[in_train],
        test_images=data.test_images[in_test],
        test_labels=data.test_labels[in_test],
        classes=list(data.classes),
    )
    rest = ImageData(
        name=f"{data.name} (test episodes: without the {fraction:g} for validation)",
        train_images=data.train_images[~in_train],
        train_labels=data.train_labels[~in_train],
        test_images=data.test_images[~in_test],
        test_labels=data.test_labels[~in_test],
        classes=list(data.classes),
    )
    return validation, rest


def validation_episode_data(
    data: ImageData, classes: list[int], fraction: float, shots: int = 1, queries: int = 1, draw: str = "all"
) -> ImageData:
    """The validation part of :func:`validation_split`: the images the validation episodes draw from."""
    return validation_split(data, classes, fraction, shots, queries, draw)[0]


def test_episode_pool(experiment, data: ImageData) -> ImageData:
    """The images the test episodes (the few-shot comparison and the ablation) draw from: ``data`` without the
    validation images when ``lam`` is chosen on validation (:func:`validation_split`), else ``data``."""
    ab, fs = experiment.ablation, experiment.fewshot
    if ab is None or ab.select != "validation":
        return data
    return validation_split(data, experiment.heldout_classes, ab.val_fraction, ab.shots, fs.queries, fs.draw)[1]


def choose_lam(
    experiment,
    model: ContrastiveModel | Backbone,
    data: ImageData,
    augment: AugmentConfig,
    cells: list[dict],
    out_dir: Path,
    device: torch.device,
    progress: bool,
) -> dict:
    """Choose the best ``lam`` of the ablation's ``cells`` (``{"lam", "accuracy": [per test episode]}``); ``data`` is
    the whole data (the validation images are taken from it, :func:`validation_episode_data`).

    With ``ablation.select: validation`` every cell gets ``val_accuracy`` (per validation episode, run in
    ``out_dir/ablation-validation``, resumable). Returns ``{"selected_on", "lam", "test_top1_mean"}`` with, on
    validation, ``val_top1_mean``, ``val_episodes`` and ``val_fraction``.
    """
    ab, fs = experiment.ablation, experiment.fewshot
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    if ab.select == "test":
        best = max(cells, key=lambda c: mean(c["accuracy"]))
        return {"selected_on": "test", "lam": best["lam"], "test_top1_mean": mean(best["accuracy"])}
    episodes = ab.val_episodes or fs.episodes
    names = {cell["lam"]: f"schane-lam{cell['lam']:g}" for cell in cells}
    configs = {name: experiment.objective_config("schane", lam=lam, lr=fs.lr, bn=fs.bn) for lam, name in names.items()}
    val_data = validation_episode_data(data, experiment.heldout_classes, ab.val_fraction, ab.shots, fs.queries, fs.draw)
    print(
        f"== lam ablation, validation: {episodes} {ab.shots}-shot episodes on {val_data} for every lam",
        flush=True,
    )
    rows = few_shot(
        model,
        val_data,
        experiment.heldout_classes,
        configs,
        dataclasses.replace(fs, shots=[ab.shots], episodes=episodes),
        augment=augment,
        out_dir=out_dir / "ablation-validation",
        resume=True,
        progress=progress,
        device=device,
    )[ab.shots]
    for cell in cells:
        cell["val_accuracy"] = [r["accuracy"][names[cell["lam"]]] for r in rows]
    best = max(cells, key=lambda c: mean(c["val_accuracy"]))
    return {
        "selected_on": "validation",
        "lam": best["lam"],
        "val_top1_mean": mean(best["val_accuracy"]),
        "test_top1_mean": mean(best["accuracy"]),
        "val_episodes": episodes,
        "val_fraction": ab.val_fraction,
    }
