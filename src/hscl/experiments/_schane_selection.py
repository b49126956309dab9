"""The choice of SCHaNe's ``lam`` in ``hscl reproduce schane``'s ablation: on validation episodes or on the test ones.

Validation episodes (``ablation.select: validation``, the default) are drawn from the held-out classes' *training*
images only: a stratified ``ablation.val_fraction`` of them is the query pool, the rest the support pool
(:func:`validation_episode_data`), so no test image is seen by the choice. Every ``lam`` runs on the same
validation episodes (same initial weights and augmentation draws, as the test episodes); the ``lam`` of the best
mean validation accuracy is chosen and its accuracy on the test episodes reported. ``select: test`` chooses the
best mean over the test episodes themselves (the paper's protocol), and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from hscl.data.augment import AugmentConfig
from hscl.data.images import ImageData, holdout_indices
from hscl.engine.fewshot import few_shot
from hscl.models import Backbone, ContrastiveModel

__all__ = ["choose_lam", "validation_episode_data"]


def validation_episode_data(
    data: ImageData, classes: list[int], fraction: float, shots: int = 1, queries: int = 1
) -> ImageData:
    """The episode data of the validation episodes: the training images of ``classes`` only, a stratified
    ``fraction`` of them (:func:`~hscl.data.images.holdout_indices`, the fixed validation seed) as the query
    pool (its "test" split) and the others as the support pool (its "training" split). Every class must keep at
    least ``shots`` support and ``queries`` query images (else a ``ValueError`` naming ``ablation.val_fraction``)."""
    among = torch.nonzero(torch.isin(data.train_labels, torch.tensor(classes))).flatten()
    labels = data.train_labels[among]
    held = round(fraction * len(among))
    if not 0 < held < len(among):
        raise ValueError(
            f"ablation.val_fraction={fraction} of the held-out classes' {len(among)} training images holds out "
            f"{held}; the validation episodes need a query pool and a support pool"
        )
    kept, pool = (among[torch.from_numpy(i)] for i in holdout_indices(labels, held))
    for cls in classes:
        n_support, n_query = int((data.train_labels[kept] == cls).sum()), int((data.train_labels[pool] == cls).sum())
        if n_support < shots or n_query < queries:
            raise ValueError(
                f"ablation.val_fraction={fraction} leaves class {cls} {n_support} support and {n_query} query images "
                f"of its {n_support + n_query} training images for the validation episodes, fewer than {shots} + "
                f"{queries}; change ablation.val_fraction or choose lam on test (--select test)"
            )
    return ImageData(
        name=f"{data.name} (validation episodes: held-out classes' training images)",
        train_images=data.train_images[kept],
        train_labels=data.train_labels[kept],
        test_images=data.train_images[pool],
        test_labels=data.train_labels[pool],
        classes=list(data.classes),
    )


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
    """Choose the best ``lam`` of the ablation's ``cells`` (``{"lam", "accuracy": [per test episode]}``).

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
    val_data = validation_episode_data(data, experiment.heldout_classes, ab.val_fraction, ab.shots, fs.queries)
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
