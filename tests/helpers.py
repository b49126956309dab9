"""What the tests that train share: the learning checks and a run config small enough for a test."""

from __future__ import annotations

import csv
import math
from pathlib import Path

# --------------------------------------------------------------------------------------------
# tests that train assert that they learned


#: the most the last epoch's mean training loss may be as a fraction of the first epoch's, in a test that asserts
#: that a run learned. The tiny runs that assert it (digits, Fashion-MNIST; temperature 0.1; 2-3 epochs) fall to
#: 0.71-0.90 of their first epoch; the same runs with lr 1e-9 or no gradient (no learning) stay at 0.98-1.01.
LOSS_FALL = 0.93

#: the contrastive runs that assert ``LOSS_FALL``: a temperature of 0.1 (0.5 is the papers') gives the loss the
#: range to fall by a factor within 2 tiny epochs; at 0.5 it falls by 1-3 %, as much as a run that does not learn
#: moves by chance
LEARNS = ["loss.temperature=0.1"]


def assert_loss_fell(losses, factor: float = LOSS_FALL, what: str = "the training loss") -> None:
    """The last of ``losses`` (per-epoch means, first to last) is finite and at most ``factor`` times the first."""
    values = [float(v) for v in losses]
    assert len(values) >= 2, f"{what}: {len(values)} epoch(s), need 2 to see it fall"
    assert all(math.isfinite(v) for v in values) and values[0] > 0, f"{what}: {values}"
    assert values[-1] <= factor * values[0], (
        f"{what} did not learn: {values[0]:.4f} in the first epoch, {values[-1]:.4f} in the last "
        f"(ratio {values[-1] / values[0]:.3f} > {factor})"
    )


def run_losses(run_dir: str | Path) -> list[float]:
    """The per-epoch ``loss`` column of a run's ``metrics.csv``."""
    with (Path(run_dir) / "metrics.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def assert_above_chance(accuracy: float, classes: int, points: float = 30.0, what: str = "top-1") -> None:
    """``accuracy`` (in %) is at least chance (100 / classes) + ``points``: the classifier learned the classes."""
    chance = 100.0 / classes
    assert accuracy >= chance + points, f"{what} {accuracy:.2f}% is below chance ({chance:.1f}%) + {points} points"


#: a run config small enough for a test: digits, a small convnet, float32, no progress bar
TINY = [
    "data.dataset=digits",
    "data.train_subset=400",
    "data.test_subset=200",
    "model.encoder=convnet",
    "model.widths=[8, 16, 16, 32]",
    "model.hidden_dim=64",
    "model.projection_dim=16",
    "train.batch_size=64",
    "train.knn_train=200",
    "train.knn_test=100",
    "train.knn_k=20",
    "train.precision=32",
    "train.channels_last=false",
    "train.progress=false",
    "eval.linear_epochs=5",
    "eval.linear_lr=0.05",  # 4 steps an epoch at a rate that lets 20 steps learn the digits (1e-3 stays at chance)
    "eval.linear_batch_size=128",
]
