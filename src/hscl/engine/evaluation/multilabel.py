"""Multi-label evaluation of frozen features: mean average precision, micro-F1, and a linear probe of one
logistic regression per class.

* Average precision of a class (the definition of ``sklearn.metrics.average_precision_score``): rank the
  samples by decreasing score; AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds k, with P_k
  and R_k the precision and recall of predicting positive every sample scored >= the k-th threshold (tied
  scores enter together). mAP is the unweighted mean over classes ("macro"); a class with no positive in the
  evaluated set has no defined AP and is left out of the mean (so mAP is over the classes that occur).
* Micro-F1: a sample is predicted positive for a class when its sigmoid probability is >= ``threshold``
  (0.5); the true positives, false positives and false negatives of all (sample, class) pairs are pooled:
  F1 = 2 TP / (2 TP + FP + FN), 0 when there is neither a positive nor a positive prediction.

Both are fractions in [0, 1]. Scores are logits (any monotone transform gives the same AP; thresholds
apply to ``sigmoid(logit)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["average_precision", "linear_probe_multilabel", "mean_average_precision", "micro_f1"]


def _check_pair(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("scores and targets must be torch.Tensors")
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must have one shape (N, C); got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if targets.dtype != torch.bool:
        if not bool(((targets == 0) | (targets == 1)).all()):
            raise ValueError("targets must be multi-hot: bool, or 0 / 1 values")
        targets = targets != 0
    return scores, targets.to(scores.device)


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of every class (column), NaN for a class without a positive.

    Shape: scores ``(N, C)`` float (logits or probabilities), targets ``(N, C)`` bool or 0/1 -> ``(C,)`` float64.
    """
    scores, targets = _check_pair(scores, targets)
    n = scores.shape[0]
    order = torch.argsort(scores.double(), dim=0, descending=True, stable=True)
    ranked = scores.double().gather(0, order)  # (N, C) scores, decreasing down each column
    hits = targets.gather(0, order).double()  # (N, C)
    true_pos = hits.cumsum(0)  # (N, C) TP among the top i + 1
    # the last row of each run of tied scores: a threshold; every row of a run is scored at the run's end
    is_end = torch.ones_like(ranked, dtype=torch.bool)
    is_end[:-1] = ranked[:-1] != ranked[1:]
    rows = torch.arange(n, device=scores.device)[:, None].expand_as(ranked)
    end_marker = torch.where(is_end, rows, torch.full_like(rows, n))
    run_end = torch.flip(torch.cummin(torch.flip(end_marker, [0]), 0).values, [0])  # (N, C) end row of each run
    precision_at_end = true_pos.gather(0, run_end) / (run_end + 1).double()  # (N, C)
    positives = hits.sum(0)  # (C,)
    # sum_k (R_k - R_{k-1}) P_k: each positive adds 1 / P to the recall at the end of its run
    ap = (hits * precision_at_end).sum(0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, math.nan))


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Macro mAP in [0, 1]: the mean AP over the classes with at least one positive (NaN if there is none).

    Shape: scores ``(N, C)``, targets ``(N, C)`` bool or 0/1.
    """
    ap = average_precision(scores, targets)
    present = ~torch.isnan(ap)
    return float(ap[present].mean()) if bool(present.any()) else math.nan


def micro_f1(logits: Tensor, targets: Tensor, threshold: float = 0.5) -> float:
    """Micro-averaged F1 in [0, 1] of the predictions ``sigmoid(logits) >= threshold``.

    Shape: logits ``(N, C)``, targets ``(N, C)`` bool or 0/1.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    logits, targets = _check_pair(logits, targets)
    predicted = torch.sigmoid(logits.float()) >= threshold
    true_pos = int((predicted & targets).sum())
    wrong = int((predicted ^ targets).sum())  # FP + FN
    return 2 * true_pos / (2 * true_pos + wrong) if true_pos + wrong else 0.0


def linear_probe_multilabel(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    l2: float = 1e-4,
    max_iter: int = 200,
    threshold: float = 0.5,
) -> dict[str, float]:
    """One logistic regression per class on frozen features: a linear layer ``F -> C`` trained full-batch with
    L-BFGS (strong Wolfe line search) on the mean binary cross-entropy with logits plus ``l2 / 2 * ||W||^2``.

    Features are standardised with the train mean and std; the layer starts at zero, so the result is
    deterministic (the objective is convex). Runs on the device of ``train_x`` (the other tensors are moved
    there). Returns ``{"mAP", "micro_f1", "train_mAP"}`` on the test (and train) set, fractions in [0, 1]; see
    :func:`mean_average_precision` and :func:`micro_f1` (at ``threshold``).

    Shape: train_x ``(N, F)``, train_y ``(N, C)`` bool or 0/1, test_x ``(Q, F)``, test_y ``(Q, C)``.
    """
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x and test_x must be (N, F) features of one F; got {tuple(train_x.shape)}, {tuple(test_x.shape)}"
        )
    if train_y.ndim != 2 or test_y.ndim != 2 or train_y.shape[1] != test_y.shape[1]:
        raise ValueError(
            f"train_y and test_y must be (N, C) multi-hot of one C; got {tuple(train_y.shape)}, {tuple(test_y.shape)}"
        )
    if train_y.shape[0] != train_x.shape[0] or test_y.shape[0] != test_x.shape[0]:
        raise ValueError("train_y / test_y must have one row per row of train_x / test_x")
    if not l2 >= 0 or not math.isfinite(l2):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    device = train_x.device
    train_x, test_x = train_x.float(), test_x.to(device).float()
    _, train_t = _check_pair(train_x.new_zeros(train_y.shape), train_y.to(device))
    _, test_t = _check_pair(test_x.new_zeros(test_y.shape), test_y.to(device))
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True).nan_to_num(1.0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    weight = torch.zeros(train_t.shape[1], train_x.shape[1], device=device, requires_grad=True)  # (C, F)
    bias = torch.zeros(train_t.shape[1], device=device, requires_grad=True)  # (C,)
    target = train_t.float()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = train_x @ weight.T + bias  # (N, C)
        loss = F.binary_cross_entropy_with_logits(logits, target) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_logits = train_x @ weight.T + bias
        test_logits = test_x @ weight.T + bias
    return {
        "mAP": mean_average_precision(test_logits, test_t),
        "micro_f1": micro_f1(test_logits, test_t, threshold),
        "train_mAP": mean_average_precision(train_logits, train_t),
    }
