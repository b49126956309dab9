"""loss.beta: auto in the training engine: the warm-up at beta 1 and the moving average of the solved betas
(hscl.engine.pretrain.auto_beta), step by step against a recursion written here, their per-epoch means in metrics.csv,
the config keys, and the state a checkpoint keeps."""

from __future__ import annotations

import csv

import pytest
import torch

from helpers import TINY as TRAIN_TINY
from hscl.engine.pretrain import monitor as monitor_module
from hscl.engine.pretrain import task as task_module
from hscl.engine.pretrain.auto_beta import SmoothedAutoExponential
from hscl.engine.pretrain.loss_state import AUTO_STATE_KEY
from hscl.engine.pretrain.run import train
from hscl.engine.pretrain.task import build_loss
from hscl.engine.runtime.config import load_config
from hscl.hardening import AutoExponential
from hscl.losses import get_loss

TINY = [*TRAIN_TINY, "diagnostics.enabled=false", "train.knn_k=0"]


def _expected(solved: list[float], momentum: float, warmup: int) -> list[float]:
    """The betas used: 1 for ``warmup`` steps, then b = m b + (1 - m) s from 1 (or from the first s)."""
    used, average = [], None
    for step, s in enumerate(solved, 1):
        if step <= warmup:
            average = 1.0
        else:
            average = s if average is None else momentum * average + (1 - momentum) * s
        used.append(average)
    return used


def _batches(n):
    generator = torch.Generator().manual_seed(0)

    def draw():
        return torch.randn(16, 2, 6, generator=generator), torch.randint(0, 4, (16,), generator=generator)

    return [draw() for _ in range(n)]


@pytest.mark.parametrize("momentum,warmup", [(0.9, 3), (0.5, 0), (0.0, 2)])
def test_the_loss_uses_the_warm_up_then_the_moving_average(momentum, warmup):
    smoothed = get_loss("h-scl", hardening=SmoothedAutoExponential(0.6, momentum=momentum, warmup_steps=warmup))
    plain = get_loss("h-scl", hardening=AutoExponential(0.6))  # the same solutions, each used as it is
    used, solved = [], []
    for z, labels in _batches(7):
        loss = smoothed(z, labels)
        plain(z, labels)
        used.append(smoothed.hardening.beta)
        solved.append(plain.hardening.beta)
        assert smoothed.hardening.solved == pytest.approx(plain.hardening.solved, rel=1e-6)
        # the loss is H-SCL at the beta used
        torch.testing.assert_close(loss, get_loss("h-scl", beta=used[-1])(z, labels))
    assert used == pytest.approx(_expected(solved, momentum, warmup), rel=1e-6)
    assert len(set(solved)) == 7 and used[:warmup] == [1.0] * warmup
    assert smoothed.hardening.steps == 7


def test_state_round_trip_and_errors():
    auto = SmoothedAutoExponential(0.5, momentum=0.8, warmup_steps=1)
    for z, labels in _batches(3):
        get_loss("h-scl", hardening=auto)(z, labels)
    state = auto.state()
    assert state["steps"] == 3 and state["average"] == auto.beta and state["solved"] == auto.solved
    other = SmoothedAutoExponential(0.5, momentum=0.8, warmup_steps=1)
    other.load_state(state)
    z, labels = _batches(4)[-1]
    assert get_loss("h-scl", hardening=other)(z, labels) == get_loss("h-scl", hardening=auto)(z, labels)
    assert other.beta == auto.beta and "momentum=0.8" in repr(other)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        SmoothedAutoExponential(0.5, momentum=1.0)
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer >= 0"):
        SmoothedAutoExponential(0.5, warmup_steps=-1)


def test_config_keys_reach_the_loss_and_bad_values_are_one_line():
    config = load_config(None, ["loss.method=h-scl", "loss.beta=auto", "loss.auto_momentum=0.7",
                                "loss.auto_warmup_steps=5"])  # fmt: skip
    hardening = build_loss(config).hardening
    assert isinstance(hardening, SmoothedAutoExponential)
    assert (hardening.momentum, hardening.warmup_steps, hardening.max_beta) == (0.7, 5, 10.0)
    defaults = load_config(None, []).loss
    assert (defaults.auto_momentum, defaults.auto_warmup_steps) == (0.9, 20)
    for overrides, match in [
        (["loss.auto_momentum=1"], r"loss.auto_momentum must lie in \[0, 1\)"),
        (["loss.auto_momentum=-0.1"], r"loss.auto_momentum must lie in \[0, 1\)"),
        (["loss.auto_warmup_steps=-3"], r"loss.auto_warmup_steps must be >= 0"),
        (["loss.auto_warmup_steps=1.5"], r"loss.auto_warmup_steps must be an integer"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match) as info:
            load_config(None, ["loss.method=h-scl", "loss.beta=auto", *overrides])
        assert "\n" not in str(info.value)


def test_a_run_logs_the_epoch_means_and_checkpoints_the_state(monkeypatch, tmp_path):
    calls = []
    original = task_module.global_batch_loss

    def spy(loss_fn, z, labels=None, **kwargs):
        loss = original(loss_fn, z, labels, **kwargs)
        auto = monitor_module.auto_hardening(loss_fn)
        calls.append((auto.solved, auto.beta))
        return loss

    monkeypatch.setattr(task_module, "global_batch_loss", spy)
    extra = ["loss.method=h-scl", "loss.beta=auto", "loss.auto_momentum=0.6", "loss.auto_warmup_steps=4"]
    final = train(load_config(None, [*TINY, *extra, "train.epochs=2"]), tmp_path / "run")
    steps = 400 // 64
    solved, used = [s for s, _ in calls], [b for _, b in calls]
    assert len(calls) == 2 * steps and used == pytest.approx(_expected(solved, 0.6, 4), rel=1e-9)
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for epoch, row in enumerate(rows):
        part = slice(epoch * steps, (epoch + 1) * steps)
        assert float(row["beta"]) == pytest.approx(sum(used[part]) / steps, rel=1e-5)
        assert float(row["beta_solved"]) == pytest.approx(sum(solved[part]) / steps, rel=1e-5)
    saved = torch.load(final, map_location="cpu", weights_only=True)
    assert saved[AUTO_STATE_KEY] == {"beta": used[-1], "solved": solved[-1], "steps": 2 * steps, "average": used[-1]}
