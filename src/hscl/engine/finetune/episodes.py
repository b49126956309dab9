"""N-way K-shot episodes: which images an episode draws, and the linear head fitted after fine-tuning when the
objective trains none (:mod:`hscl.engine.finetune.fewshot` runs the episodes).

By the protocol of the few-shot papers (e.g. Bertinetto et al. 2019 on CIFAR-FS, Long et al. 2023 for SCHaNe), an
episode draws its classes from the held-out ones and its support and query images from ALL the images of each
chosen class, anew for every episode: :func:`sample_episode` with ``draw="all"`` pools a class's training and
test images and draws both sets from the pool, disjoint. ``draw="split"`` (support from the training split, queries
from the test split) is kept for comparisons with earlier runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.data.images import ImageData
from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.loop import FineTuneModel, embed
from hscl.validation import check_choice

__all__ = ["DRAWS", "Episode", "episode_images", "fit_linear_head", "fits_head", "sample_episode"]

#: where an episode's images come from: "all": support and queries from all the images of each class (training
#: and test splits pooled, the few-shot papers' protocol); "split": support from the training split, queries from
#: the test split
DRAWS = ("all", "split")


@dataclass
class Episode:
    """One N-way K-shot episode: indices into the pooled images (the training split's ``0 .. n_train - 1``, then
    the test split's ``n_train ..``; :func:`episode_images`) and labels ``0 .. ways - 1``."""

    classes: list[int]  # the original class of each episode label
    support_index: Tensor  # (ways * shots,) into the pooled images
    support_labels: Tensor  # (ways * shots,)
    query_index: Tensor  # (ways * queries,) into the pooled images
    query_labels: Tensor  # (ways * queries,)


def sample_episode(
    train_labels: Tensor,
    test_labels: Tensor,
    classes: Sequence[int],
    *,
    ways: int,
    shots: int,
    queries: int,
    generator: torch.Generator,
    draw: str = "all",
) -> Episode:
    """Draw ``ways`` of ``classes`` and ``shots`` support and ``queries`` query images of each, without replacement.

    ``draw="all"``: both sets from all the images of the class (training then test split, pooled), disjoint.
    ``draw="split"``: the support from the training split, the queries from the test split. Indices are into the
    pooled images (test images offset by ``len(train_labels)``).
    """
    draw = check_choice("draw", draw, DRAWS)
    classes = [int(c) for c in classes]
    if ways > len(classes):
        raise ValueError(f"ways={ways} exceeds the {len(classes)} held-out classes {classes}")
    chosen = [classes[int(i)] for i in torch.randperm(len(classes), generator=generator)[:ways]]
    n_train = int(train_labels.numel())
    pooled = torch.cat([train_labels.flatten(), test_labels.flatten()])
    sup, qry = [], []
    for cls in chosen:
        members = torch.nonzero(pooled == cls).flatten()
        if draw == "all":
            pools = [(members, shots + queries, "")]
        else:
            pools = [(members[members < n_train], shots, " training"), (members[members >= n_train], queries, " test")]
        drawn = []
        for pool, take, split in pools:
            if pool.numel() < take:
                raise ValueError(f"class {cls} has {pool.numel()}{split} images, fewer than the {take} needed")
            drawn.append(pool[torch.randperm(pool.numel(), generator=generator)[:take]])
        drawn = torch.cat(drawn)
        sup.append(drawn[:shots])
        qry.append(drawn[shots:])
    labels = torch.arange(ways)
    return Episode(
        chosen, torch.cat(sup), labels.repeat_interleave(shots), torch.cat(qry), labels.repeat_interleave(queries)
    )


def episode_images(data: ImageData, index: Tensor) -> Tensor:
    """The images at ``index`` into the pooled images of ``data`` (training split, then test split), in order."""
    n_train = int(data.train_labels.numel())
    in_test = index >= n_train
    out = torch.empty((index.numel(), *data.train_images.shape[1:]), dtype=data.train_images.dtype)
    out[~in_test] = data.train_images[index[~in_test]]
    out[in_test] = data.test_images[index[in_test] - n_train]
    return out


def fits_head(config: FinetuneConfig) -> bool:
    """Whether an episode fits the linear head after fine-tuning: when the objective has no cross-entropy term
    (a contrastive objective at ``lam = 1``), so that the jointly trained head received no gradient."""
    return config.objective != "ce" and config.lam == 1.0


def fit_linear_head(
    model: FineTuneModel,
    images: Tensor,
    labels: Tensor,
    transform: nn.Module,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> None:
    """Fit ``model.classifier`` on the frozen encoder features of ``images`` (``transform``ed, eval mode), in place.

    Multinomial logistic regression: mean cross-entropy plus ``weight_decay * ||W||^2`` (the bias unpenalised),
    minimised from zero by L-BFGS in float32 (no autocast); a strictly convex problem, so the head is its unique
    minimiser. Shapes: images ``(N, C, H, W)`` uint8, labels ``(N,)`` in ``0 .. num_classes - 1``.
    """
    h, _ = embed(model, images, transform)
    device = h.device
    with torch.autocast(device.type, enabled=False), torch.enable_grad():
        h, labels = h.detach().float(), labels.to(device)
        head = model.classifier
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        optimizer = torch.optim.LBFGS(
            head.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(h), labels) + weight_decay * head.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
