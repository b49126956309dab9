"""hscl.hardening: Definition 1 and the schedule of eq. (4)."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import Exponential, Threshold, linear_threshold


def test_exponential_is_exp_beta_g_and_non_decreasing():
    g = torch.linspace(-5, 5, 101, dtype=torch.float64)
    w = Exponential(0.7)(g)
    torch.testing.assert_close(w, torch.exp(0.7 * g))
    assert torch.all(w[1:] >= w[:-1]) and torch.all(w > 0)
    assert torch.equal(Exponential(0.0)(g), torch.ones_like(g))


def test_threshold_keeps_exp_g_at_least_tau():
    tau = 1.7
    g = torch.tensor([math.log(tau) - 1e-9, math.log(tau), math.log(tau) + 1e-9, -3.0, 4.0], dtype=torch.float64)
    assert Threshold(tau)(g).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert Threshold(tau).log_threshold == pytest.approx(math.log(tau))


def test_linear_threshold_follows_eq4():
    start, end, epochs, temperature = -0.5, 0.1, 7, 0.5
    schedule = linear_threshold(start, end, epochs, temperature)
    for epoch in range(1, epochs + 1):
        cut = start + (epoch - 1) / (epochs - 1) * (end - start)
        assert schedule(epoch) == pytest.approx(math.exp(cut / temperature))
        assert schedule.cosine(epoch) == pytest.approx(cut)
        assert schedule.hardening(epoch).tau == pytest.approx(schedule(epoch))
    assert schedule(1) == pytest.approx(math.exp(-1.0))
    assert schedule(epochs) == pytest.approx(math.exp(0.2))
    assert linear_threshold(-0.3, 0.0, 1, 0.5)(1) == pytest.approx(math.exp(-0.6))


def test_threshold_schedule_keeps_negatives_by_cosine():
    # tau(epoch) = exp(l / temperature) keeps exactly the negatives with cosine >= l
    temperature = 0.5
    schedule = linear_threshold(-0.3, 0.1, 5, temperature)
    cosines = torch.linspace(-1, 1, 401, dtype=torch.float64)[:-1] + 0.0025  # no grid point sits on a cut
    for epoch in range(1, 6):
        kept = schedule.hardening(epoch)(cosines / temperature).bool()
        assert torch.equal(kept, cosines >= schedule.cosine(epoch))


def test_one_hardening_check_for_losses_geometry_and_graphs():
    """The losses, the geometry diagnostics and the graph objectives refuse a bad hardening with the same line,
    and a log-linear hardening with an out-of-range beta is refused before the fused path reads it."""
    from hscl.geometry import diagnose
    from hscl.hardening import Hardening, check_hardening, is_log_linear
    from hscl.losses import HSCL
    from hscl.losses.local_global import negative_weights

    z, labels = torch.randn(6, 2, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    calls = {
        "loss": lambda h: HSCL(hardening=h),
        "geometry": lambda h: diagnose(z, labels, h),
        "graph": lambda h: negative_weights(torch.randn(3, 2), torch.ones(3, 2, dtype=torch.bool), hardening=h),
    }
    for where, call in calls.items():
        with pytest.raises(TypeError, match=r"^hardening must be None, hscl\.hardening\.Exponential") as caught:
            call(3)
        assert "got int" in str(caught.value), where

    class Broken(Hardening):
        beta = -1.0  # declares log-linearity with a beta the fused path cannot use

    assert is_log_linear(Broken()) and not is_log_linear(lambda g: g) and not is_log_linear(None)
    with pytest.raises(ValueError, match=r"beta must be a finite real >= 0, got beta=-1\.0"):
        check_hardening(Broken())
    assert check_hardening(None) is None
