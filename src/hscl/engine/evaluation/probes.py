"""Evaluation of a frozen encoder: linear probe and weighted kNN on features extracted once.

Linear evaluation (the H-SCL paper's protocol): freeze the encoder, extract the features of the
train and test splits once (no augmentation re-passes), train a linear classifier on the train
features, report top-1 / top-5 on the test split. kNN: cosine similarity, the ``k`` nearest train
features vote with weight ``exp(sim / 0.1)`` (Wu et al. 2018, the usual SSL monitor).

Multi-label data (multi-hot label sets ``(N, C)``, e.g. ``fashion-mnist-mosaic``): top-1 / top-5 and the kNN
vote need one class per sample, so :func:`evaluate_task` reports instead the mAP and micro-F1 of one logistic
regression per class on the frozen features (:func:`hscl.engine.evaluation.multilabel.linear_probe_multilabel`) and
the mAP
of the weighted-kNN class scores (:func:`knn_scores`), all in %.

Validation: a run with ``eval.val_fraction > 0`` holds part of its training split out (never trained on, neither
by pre-training nor by the probe); :func:`evaluate_task` scores the same probe and kNN bank on it too, as the
``val_*`` keys, which is what a sweep or an ablation should choose its best point on. The test keys stay.

Devices: features stay on the encoder's device, and the probe and the kNN run on the device of the
features they are given (labels are moved there), so a model on a GPU is evaluated on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ProbeResult",
    "evaluate_task",
    "extract_features",
    "knn_accuracy",
    "knn_mean_average_precision",
    "knn_scores",
    "linear_probe",
    "mean_std",
]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: Tensor,
    transform,
    *,
    batch_size: int = 512,
    channels_last: bool = False,
    bf16: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Encoder features of uint8 ``images`` after ``transform`` (normalise / resize), on the encoder's device.

    ``dtype``: the autocast dtype of the forward (``torch.bfloat16`` / ``torch.float16``; ``bf16=True`` is
    ``dtype=torch.bfloat16``), None for float32. ``images`` may be on any device; each batch is copied to the
    encoder's (through pinned memory from the host to a GPU).

    Shape: images ``(N, C, H, W)`` uint8 -> features ``(N, F)`` float32.
    """
    from hscl.engine.runtime.distributed import to_device

    dtype = dtype or (torch.bfloat16 if bf16 else None)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = transform(to_device(images[start : start + batch_size], device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)


def knn_accuracy(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, *, k: int = 200, t: float = 0.1
) -> float:
    """Weighted kNN top-1 accuracy (in %) of ``queries`` against a memory ``bank``.

    Shape: bank ``(N, F)``, bank_labels ``(N,)``, queries ``(Q, F)``, query_labels ``(Q,)``. Runs on the
    bank's device (the other tensors are moved there).
    """
    device = bank.device
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.to(device).float(), dim=1)
    bank_labels, query_labels = bank_labels.to(device).long(), query_labels.to(device).long()
    k = min(k, bank.shape[0])
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    correct = torch.zeros((), dtype=torch.long, device=device)  # read once at the end: no sync per chunk
    for start in range(0, queries.shape[0], 1024):
        sim = queries[start : start + 1024] @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], classes, device=device)
        votes.scatter_add_(1, bank_labels[top_idx], torch.exp(top_sim / t))
        correct += (votes.argmax(1) == query_labels[start : start + 1024]).sum()
    return 100.0 * int(correct) / max(queries.shape[0], 1)


@torch.no_grad()
def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, *, k: int = 200, t: float = 0.1) -> Tensor:
    """Weighted-kNN class scores: for each query, the share of the ``exp(sim / t)`` weight of its ``k`` nearest
    bank rows (cosine similarity) that falls on rows holding each class, in [0, 1].

    Shape: bank ``(N, F)``, bank_labels ``(N,)`` class ids or ``(N, C)`` multi-hot (bool or 0/1), queries
    ``(Q, F)`` -> ``(Q, C)`` (``C = max id + 1`` for class ids). Runs on the bank's device.
    """
    device = bank.device
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.to(device).float(), dim=1)
    bank_labels = bank_labels.to(device)
    if bank_labels.ndim == 1:
        bank_labels = F.one_hot(bank_labels.long(), int(bank_labels.max()) + 1)
    targets = (bank_labels != 0).float()  # (N, C)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], 1024):
        top_sim, top_idx = (queries[start : start + 1024] @ bank.T).topk(k, dim=1)  # (q, k)
        weight = torch.exp((top_sim - top_sim[:, :1]) / t)  # (q, k), shifted by the row max: no overflow
        out.append(torch.einsum("qk,qkc->qc", weight, targets[top_idx]) / weight.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.zeros(0, targets.shape[1], device=device)


def knn_mean_average_precision(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, *, k: int = 200, t: float = 0.1
) -> float:
    """mAP (in %) of the weighted-kNN class scores of ``queries`` (:func:`knn_scores`) against their multi-hot
    ``query_labels`` (:func:`hscl.engine.evaluation.multilabel.mean_average_precision`).

    Shape: bank ``(N, F)``, bank_labels ``(N, C)``, queries ``(Q, F)``, query_labels ``(Q, C)``.
    """
    from hscl.engine.evaluation.multilabel import mean_average_precision

    scores = knn_scores(bank, bank_labels, queries, k=k, t=t)
    return 100.0 * mean_average_precision(scores, query_labels.to(scores.device))


@dataclass
class ProbeResult:
    """Accuracies (in %) of one linear probe; ``val_top1`` / ``val_top5`` on a validation set, when it got one."""

    top1: float
    top5: float
    train_top1: float
    val_top1: float | None = None
    val_top5: float | None = None

    def as_dict(self) -> dict:
        out = {"top1": self.top1, "top5": self.top5, "train_top1": self.train_top1}
        if self.val_top1 is not None:
            out.update(val_top1=self.val_top1, val_top5=self.val_top5)
        return out


def _top_k(logits: Tensor, labels: Tensor, classes: int) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (in %) of ``logits (N, classes)`` against ``labels (N,)``."""
    top1 = 100.0 * float((logits.argmax(1) == labels).float().mean())
    top5_idx = logits.topk(min(5, classes), dim=1).indices
    return top1, 100.0 * float((top5_idx == labels[:, None]).any(1).float().mean())


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    epochs: int = 60,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    batch_size: int = 1024,
    seed: int = 0,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
) -> ProbeResult:
    """Train ``nn.Linear`` on standardised frozen features with Adam (cosine schedule).

    Shape: train_x ``(N, F)``, train_y ``(N,)``, test_x ``(Q, F)``, test_y ``(Q,)``, optionally val_x ``(P, F)``,
    val_y ``(P,)``: the same head is then also scored on them (``val_top1`` / ``val_top5``). Runs on the device
    of ``train_x`` (the head is created there, the other tensors are moved there); the head's initial weights
    and the batch order come from CPU generators seeded with ``seed``, the same on every device.
    """
    device = train_x.device
    test_x = test_x.to(device)
    train_y, test_y = train_y.to(device), test_y.to(device)
    generator = torch.Generator().manual_seed(seed)
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True).clamp(min=1e-6)
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    if val_x is not None:
        val_x, val_y = (val_x.to(device) - mean) / std, val_y.to(device)
        classes = max(classes, int(val_y.max()) + 1 if val_y.numel() else 0)
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], classes).to(device)  # initialised on the CPU: the same weights anywhere
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(train_x.shape[0] / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for _ in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator).to(device)
        for start in range(0, train_x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        top1, top5 = _top_k(head(test_x), test_y, classes)
        train_top1 = 100.0 * float((head(train_x).argmax(1) == train_y).float().mean())
        val_top1, val_top5 = _top_k(head(val_x), val_y, classes) if val_x is not None else (None, None)
    return ProbeResult(top1=top1, top5=top5, train_top1=train_top1, val_top1=val_top1, val_top5=val_top5)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def evaluate_task(task, data, config) -> dict:
    """Linear probe and kNN of a trained task (``task.encode``) on its data's train / test splits.

    ``config`` is the run's RunConfig: ``config.eval`` sets the probe, ``config.train.seed`` its seed.
    Returns ``linear_top1``, ``linear_top5``, ``linear_train_top1`` and ``knn_top1`` (in %); on multi-label
    data (multi-hot labels) ``linear_mAP``, ``linear_micro_f1``, ``linear_train_mAP`` and ``knn_mAP`` (in %)
    instead, with ``multilabel: True``. Both carry ``feature_dim`` and ``eval_seconds``.

    With a validation split (``data.val_images``, held out of the training split by ``eval.val_fraction``: see
    :func:`~hscl.engine.pretrain.datamodule.split_data`) the same probe and kNN bank (fitted on the training split only)
    are also scored on it: ``val_linear_top1``, ``val_linear_top5``, ``val_knn_top1`` (multi-label:
    ``val_linear_mAP``, ``val_linear_micro_f1``, ``val_knn_mAP``), with ``val_size``. Choose on these; the test
    keys are unchanged.
    """
    start = time.perf_counter()
    val_images = getattr(data, "val_images", None)
    with torch.no_grad():
        train_x = task.encode(data.train_images)
        test_x = task.encode(data.test_images)
        val_x = task.encode(val_images) if val_images is not None else None
    ec = config.eval
    if data.train_labels.ndim == 2:
        out = _evaluate_multilabel(train_x, test_x, data, ec.knn_k)
        if val_x is not None:
            out.update(_val_prefixed(_evaluate_multilabel(train_x, val_x, data, ec.knn_k, val=True), val_x))
        return {**out, "eval_seconds": time.perf_counter() - start}
    val_y = data.val_labels if val_x is not None else None
    probe = linear_probe(
        train_x,
        data.train_labels,
        test_x,
        data.test_labels,
        epochs=ec.linear_epochs,
        lr=ec.linear_lr,
        batch_size=ec.linear_batch_size,
        seed=config.train.seed,
        val_x=val_x,
        val_y=val_y,
    )
    out = {
        "linear_top1": probe.top1,
        "linear_top5": probe.top5,
        "linear_train_top1": probe.train_top1,
        "knn_top1": knn_accuracy(train_x, data.train_labels, test_x, data.test_labels, k=ec.knn_k),
        "feature_dim": int(train_x.shape[1]),
    }
    if val_x is not None:
        knn = knn_accuracy(train_x, data.train_labels, val_x, val_y, k=ec.knn_k)
        out.update(
            _val_prefixed({"linear_top1": probe.val_top1, "linear_top5": probe.val_top5, "knn_top1": knn}, val_x)
        )
    return {**out, "eval_seconds": time.perf_counter() - start}


def _val_prefixed(metrics: dict, val_x: Tensor) -> dict:
    """``{"val_<key>": value}`` of the metrics scored on the validation split, with ``val_size``."""
    keep = ("linear_top1", "linear_top5", "knn_top1", "linear_mAP", "linear_micro_f1", "knn_mAP")
    return {**{f"val_{k}": v for k, v in metrics.items() if k in keep}, "val_size": int(val_x.shape[0])}


def _evaluate_multilabel(train_x: Tensor, test_x: Tensor, data, knn_k: int, val: bool = False) -> dict:
    """The multi-label metrics of :func:`evaluate_task` (in %): the logistic probe is deterministic (L-BFGS from
    zero weights, :func:`~hscl.engine.evaluation.multilabel.linear_probe_multilabel` with its defaults). ``test_x``
    holds the
    features of the test split, or with ``val`` those of the validation split."""
    from hscl.engine.evaluation.multilabel import linear_probe_multilabel

    labels = data.val_labels if val else data.test_labels
    probe = linear_probe_multilabel(train_x, data.train_labels, test_x, labels)
    return {
        "multilabel": True,
        "linear_mAP": 100.0 * probe["mAP"],
        "linear_micro_f1": 100.0 * probe["micro_f1"],
        "linear_train_mAP": 100.0 * probe["train_mAP"],
        "knn_mAP": knn_mean_average_precision(train_x, data.train_labels, test_x, labels, k=knn_k),
        "feature_dim": int(train_x.shape[1]),
    }
