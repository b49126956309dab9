"""AutoExponential (docs/losses.md, "Automatic hardness"): the ratio rho_r(beta) = ESS(e^{(1+beta) g}) / ESS(e^g) and
the chosen beta against float64 loops written here from the definition (no code shared with hscl.hardening), the
loss at the chosen beta against the loop reference of tests/reference.py, and the solve's lack of host syncs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hscl.hardening import AutoExponential, Exponential, ess_beta, ess_ratio
from hscl.losses import contrastive_loss, get_loss
from reference import _rows, reference_loss


def _batch(seed, B=10, V=2, d=5, classes=3):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=torch.float64)
    return z, torch.randint(0, classes, (B,), generator=generator)


def _loop_ess(values):
    """ESS of weights exp(v) for a list of floats, by log-sum-exp in float64 (finite at any scale)."""
    top = max(values)
    s1 = sum(math.exp(v - top) for v in values)
    s2 = sum(math.exp(2 * (v - top)) for v in values)
    return s1 * s1 / s2


def _loop_ratio(g, negatives, beta):
    """mean over anchors with |N(r)| >= 2 of ESS(exp((1+beta) g)) / ESS(exp(g)), one anchor at a time."""
    ratios = []
    for r in range(g.shape[0]):
        values = [float(g[r, s]) for s in range(g.shape[1]) if negatives[r, s]]
        if len(values) < 2:
            continue
        ratios.append(_loop_ess([(1 + beta) * v for v in values]) / _loop_ess(values))
    return sum(ratios) / len(ratios)


def _loop_beta(g, negatives, target, cap=10.0):
    """The root by plain bisection on the loop ratio (the cap when the ratio there is still >= target)."""
    if _loop_ratio(g, negatives, cap) >= target:
        return cap
    lo, hi = 0.0, cap
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _loop_ratio(g, negatives, mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def _similarities(seed, a=12, n=15, temperature=0.5, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, 6, generator=generator, dtype=torch.float64), dim=1)
    z = torch.nn.functional.normalize(z + spread * torch.randn(n, 6, generator=generator, dtype=torch.float64), dim=1)
    g = z[:a] @ z.T / temperature
    negatives = torch.rand(a, n, generator=generator) < 0.8
    negatives[0] = False  # no negative: left out
    negatives[1] = False
    negatives[1, 3] = True  # one negative: rho = 1 for every beta, left out
    return g, negatives


@pytest.mark.parametrize("temperature", [0.05, 0.2, 0.5, 1.0])
def test_ratio_matches_the_loop_is_one_at_zero_and_decreases(temperature):
    g, negatives = _similarities(1, temperature=temperature)
    assert float(ess_ratio(g, negatives, 0.0)) == 1.0  # exactly: the same terms at beta = 0
    assert float(ess_ratio(g.float(), negatives, 0.0)) == 1.0
    betas = [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0]
    values = [float(ess_ratio(g, negatives, b)) for b in betas]
    assert all(a > b for a, b in itertools.pairwise(values))
    for beta, value in zip(betas, values):
        assert value == pytest.approx(_loop_ratio(g, negatives, beta), rel=1e-12)
    # the old measure ESS(e^{beta g}) / |N(r)| is below 1 at beta = 0 only through the temperature; this one is not
    assert _loop_ratio(g, negatives, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("temperature", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.85])
def test_solved_beta_matches_a_float64_bisection(temperature, target):
    g, negatives = _similarities(2, temperature=temperature, spread=0.6)
    want = _loop_beta(g, negatives, target)
    got = ess_beta(g, negatives, target, iterations=10)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # the default: 6 Newton / bisection steps from beta = 1, with no previous solution to start from
    assert float(ess_beta(g, negatives, target)) == pytest.approx(want, rel=1e-5, abs=1e-8)
    got32 = ess_beta(g.float(), negatives, target)
    assert got32.dtype == torch.float32 and float(got32) == pytest.approx(want, rel=1e-4, abs=1e-6)
    if want < 10.0:
        assert _loop_ratio(g, negatives, float(got)) == pytest.approx(target, abs=1e-10)


def test_trivial_targets_the_cap_and_batches_without_two_negatives():
    g, negatives = _similarities(3)
    assert float(ess_beta(g, negatives, 1.0)) == 0.0
    flat = torch.zeros(3, 4, dtype=torch.float64)  # equal similarities: rho = 1 for every beta, out of reach
    assert float(ess_beta(flat, torch.ones(3, 4, dtype=torch.bool), 0.5, max_beta=7.0)) == 7.0
    one = torch.eye(4, dtype=torch.bool)  # one negative per anchor: no anchor counts
    assert float(ess_beta(torch.randn(4, 4, dtype=torch.float64), one, 0.5)) == 0.0
    assert float(ess_ratio(torch.randn(4, 4, dtype=torch.float64), one, 3.0)) == 1.0
    # a target the cap does reach is solved below it
    want = _loop_beta(g, negatives, 0.5, cap=50.0)
    assert float(ess_beta(g, negatives, 0.5, max_beta=50.0, iterations=30)) == pytest.approx(want, rel=1e-9)


def test_bf16_and_a_small_temperature_stay_finite():
    z, labels = _batch(4, B=16, d=8)
    hardening = AutoExponential(0.85)  # at temperature 0.05 the ratio of these rows is 0.69 at the cap
    loss = contrastive_loss(z.bfloat16(), labels, hardening=hardening, temperature=0.05)
    assert math.isfinite(float(loss)) and 0 < hardening.beta < hardening.max_beta
    # the same choice from the float64 loop over the bf16 rows (the loss computes in float32)
    Z = _rows(z.bfloat16().float(), True)
    g = Z @ Z.T / 0.05
    negatives = (torch.arange(32) % 16)[:, None] != (torch.arange(32) % 16)[None, :]
    assert hardening.beta == pytest.approx(_loop_beta(g, negatives, 0.85), rel=1e-4)
    # similarities of 1 / 0.01: e^{(1 + beta) g} overflows every float, the log-space ratio does not
    big = torch.randn(6, 9, dtype=torch.float32) * 100.0
    assert math.isfinite(float(ess_ratio(big, torch.ones(6, 9, dtype=torch.bool), 9.0)))
    assert math.isfinite(float(ess_beta(big.bfloat16(), torch.ones(6, 9, dtype=torch.bool), 0.5)))


@pytest.mark.parametrize("target", [0.3, 0.7])
@pytest.mark.parametrize("positives,negatives", [("views", "unsupervised"), ("labels", "supervised")])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_the_loss_is_h_scl_at_the_solved_beta_with_a_memory(target, positives, negatives, chunk_size):
    z, labels = _batch(5, B=12)
    generator = torch.Generator().manual_seed(6)
    z_mem = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    memory = (z_mem, torch.randint(0, 3, (7,), generator=generator))
    hardening = AutoExponential(target)
    kw = {"positives": positives, "negatives": negatives, "temperature": 0.5, "memory": memory}
    a = z.clone().requires_grad_(True)
    loss = contrastive_loss(a, labels, hardening=hardening, chunk_size=chunk_size, **kw)
    # the solve sees N(r) as the loss does: the memory's rows are candidates, never anchors
    Z = torch.cat([_rows(z, True), torch.nn.functional.normalize(memory[0], dim=1)])
    g = Z[:24] @ Z.T / 0.5
    instance = [r % 12 for r in range(24)] + [12 + k for k in range(7)]
    label = [int(labels[r % 12]) for r in range(24)] + [int(x) for x in memory[1]]
    neg = torch.tensor(
        [
            [instance[s] != instance[r] and (negatives == "unsupervised" or label[s] != label[r]) for s in range(31)]
            for r in range(24)
        ]
    )
    assert hardening.beta == hardening.solved == pytest.approx(_loop_beta(g, neg, target), rel=1e-6)
    b = z.clone().requires_grad_(True)
    ref = reference_loss(b, labels, hardening=Exponential(hardening.beta), **kw)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    loss.backward()
    ref.backward()  # no gradient through the choice: the gradient is H-SCL(beta)'s
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-11)


def test_multi_hot_labels_use_their_negatives():
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(10, 2, 5, generator=generator, dtype=torch.float64)
    labels = torch.rand(10, 3, generator=generator) < 0.4
    hardening = AutoExponential(0.5)
    contrastive_loss(z, labels, positives="labels", negatives="supervised", hardening=hardening)
    Z = _rows(z, True)
    g = Z @ Z.T / 0.5
    multi = labels.repeat(2, 1)
    neg = ~((multi[:, None, :] & multi[None, :, :]).any(2))  # no class in common (a row without a class: all)
    neg &= (torch.arange(20) % 10)[:, None] != (torch.arange(20) % 10)[None, :]
    assert hardening.beta == pytest.approx(_loop_beta(g, neg, 0.5), rel=1e-6)


def test_the_solver_samples_anchor_groups_beyond_its_budget():
    z, labels = _batch(8, B=40)
    hardening = AutoExponential(0.5, max_entries=8 * 80)  # 8 anchors of 80 columns: 8 groups of one
    contrastive_loss(z, labels, hardening=hardening)
    Z = _rows(z, True)
    g = Z @ Z.T / 0.5
    instance = torch.arange(80) % 40
    rows = [round(i * (80 - 1) / 7) for i in range(8)]
    neg = instance[rows][:, None] != instance[None, :]
    assert hardening.beta == pytest.approx(_loop_beta(g[rows], neg, 0.5), rel=1e-6)


def test_the_solve_reads_nothing_back_and_a_loss_call_reads_once(monkeypatch):
    g, negatives = _similarities(9)

    def refuse(*args, **kwargs):
        raise AssertionError("a host synchronisation inside the solve")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, refuse)
        solution = ess_beta(g, negatives, 0.5)
        ratio = ess_ratio(g, negatives, solution)
    assert float(ratio) == pytest.approx(0.5, abs=1e-9)
    # a whole loss call: the automatic hardening reads one number more than the same loss at a fixed beta
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__", "__int__")}

    def counting(name):
        def call(self, *args, **kwargs):
            counts["n"] += 1
            return originals[name](self, *args, **kwargs)

        return call

    z, labels = _batch(10, B=16)

    def syncs(hardening):
        counts["n"] = 0
        with monkeypatch.context() as patch:
            for name in originals:
                patch.setattr(torch.Tensor, name, counting(name))
            contrastive_loss(z, labels, hardening=hardening)
        return counts["n"]

    auto = AutoExponential(0.5)
    assert syncs(auto) == syncs(Exponential(1.0)) == 1  # the solution rides on the loss's one read
    assert auto.beta > 0 and auto.beta == auto.solved
    solution = auto.solve(*_similarities(9))  # solve reads nothing back; choose reads the solution once
    assert auto.choose(*_similarities(9)) == pytest.approx(float(solution), rel=1e-6)


def test_module_state_warm_start_and_errors():
    loss_fn = get_loss("h-scl", beta="auto")
    assert isinstance(loss_fn.hardening, AutoExponential) and loss_fn.hardening.max_beta == 10.0
    assert loss_fn.hardening.beta == 0.0 and loss_fn.hardening.solved is None
    z, labels = _batch(11)
    loss_fn(z, labels)
    first = loss_fn.hardening.state()
    assert first["beta"] == first["solved"] > 0
    other = AutoExponential(loss_fn.hardening.target)
    other.load_state(first)
    assert other.state() == first and "beta=" in repr(other)
    with pytest.raises(ValueError, match=r"target must be in \(0, 1\]"):
        AutoExponential(0.0)
    with pytest.raises(ValueError, match=r"max_beta must be > 0"):
        AutoExponential(0.5, max_beta=0)
    with pytest.raises(ValueError, match=r"iterations must be an integer >= 1, got iterations=0"):
        AutoExponential(0.5, iterations=0)
    with pytest.raises(ValueError, match=r"max_entries must be an integer >= 1"):
        AutoExponential(0.5, max_entries=1.5)
