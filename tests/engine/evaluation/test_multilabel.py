"""Multi-label metrics against scikit-learn, and the multi-label linear probe on separable and on random labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from hscl.engine.evaluation.multilabel import (
    average_precision,
    linear_probe_multilabel,
    mean_average_precision,
    micro_f1,
)


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro AP over the classes with a positive, one sklearn call per class."""
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    return float(np.mean(aps))


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7))
    if ties:  # many tied scores, within and across classes
        scores = np.round(scores * 2) / 2
    targets = rng.random((200, 7)) < np.linspace(0.05, 0.6, 7)
    targets[:, 3] = False  # a class without positives: skipped
    targets[:, 5] = True  # a class of positives only: AP 1
    ours = average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets))
    for c in range(7):
        if c == 3:
            assert math.isnan(float(ours[c]))
        else:
            assert float(ours[c]) == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-9)
    assert mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(
        sklearn_map(scores, targets), abs=1e-9
    )
    # 0/1 targets of any dtype give the same result as bool
    as_int = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets.astype(np.uint8)))
    assert as_int == pytest.approx(sklearn_map(scores, targets), abs=1e-9)


def test_average_precision_small_cases_by_hand():
    # ranking + - + : precision 1 at recall 1/2, 2/3 at recall 1 -> AP = (1 + 2/3) / 2
    ap = average_precision(torch.tensor([[3.0], [2.0], [1.0]]), torch.tensor([[1], [0], [1]]))
    assert float(ap[0]) == pytest.approx(5 / 6)
    # all scores tied: one threshold, precision = prevalence
    ap = average_precision(torch.zeros(4, 1), torch.tensor([[1], [0], [0], [1]]))
    assert float(ap[0]) == pytest.approx(0.5)
    assert math.isnan(mean_average_precision(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool)))


def test_micro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 5)).astype(np.float32)
    logits[0, 0] = 0.0  # sigmoid exactly 0.5: predicted positive
    targets = rng.random((300, 5)) < 0.3
    predicted = 1 / (1 + np.exp(-logits.astype(np.float64))) >= 0.5
    expected = f1_score(targets, predicted, average="micro")
    assert micro_f1(torch.from_numpy(logits), torch.from_numpy(targets)) == pytest.approx(expected, abs=1e-12)
    predicted_07 = 1 / (1 + np.exp(-logits.astype(np.float64))) >= 0.7
    assert micro_f1(torch.from_numpy(logits), torch.from_numpy(targets), threshold=0.7) == pytest.approx(
        f1_score(targets, predicted_07, average="micro"), abs=1e-12
    )
    # nothing positive and nothing predicted: 0 (sklearn's zero_division=0)
    assert micro_f1(torch.full((4, 3), -5.0), torch.zeros(4, 3, dtype=torch.bool)) == 0.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match=r"one shape \(N, C\)"):
        mean_average_precision(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="multi-hot"):
        micro_f1(torch.zeros(3, 2), torch.full((3, 2), 2))
    with pytest.raises(ValueError, match="threshold"):
        micro_f1(torch.zeros(3, 2), torch.zeros(3, 2), threshold=1.0)


def separable_task(n: int, seed: int, classes=6, dim=16):
    """Features whose first ``classes`` coordinates are +-1 (+ small noise) exactly where the class is present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, classes, generator=g) < 0.35
    x = torch.randn(n, dim, generator=g)
    x[:, :classes] = labels.float() * 2 - 1 + 0.1 * torch.randn(n, classes, generator=g)
    return x, labels


def test_probe_on_separable_features_is_perfect():
    train_x, train_y = separable_task(400, 0)
    test_x, test_y = separable_task(300, 1)
    result = linear_probe_multilabel(train_x, train_y, test_x, test_y)
    assert result["mAP"] > 0.999 and result["micro_f1"] > 0.99 and result["train_mAP"] > 0.999
    again = linear_probe_multilabel(train_x, train_y, test_x, test_y)
    assert again == result  # deterministic


def test_probe_on_random_labels_is_at_chance():
    g = torch.Generator().manual_seed(2)
    prevalence = torch.tensor([0.1, 0.3, 0.5, 0.2])
    train_x, test_x = torch.randn(1000, 8, generator=g), torch.randn(2000, 8, generator=g)
    train_y = torch.rand(1000, 4, generator=g) < prevalence
    test_y = torch.rand(2000, 4, generator=g) < prevalence
    result = linear_probe_multilabel(train_x, train_y, test_x, test_y)
    chance = float(test_y.float().mean(0).mean())  # the expected AP of a random ranking is the prevalence
    assert abs(result["mAP"] - chance) < 0.04, (result, chance)


def test_probe_checks_its_inputs():
    x, y = separable_task(20, 0)
    with pytest.raises(ValueError, match=r"\(N, C\) multi-hot"):
        linear_probe_multilabel(x, y[:, 0], x, y)
    with pytest.raises(ValueError, match="one row per row"):
        linear_probe_multilabel(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="l2"):
        linear_probe_multilabel(x, y, x, y, l2=-1.0)
