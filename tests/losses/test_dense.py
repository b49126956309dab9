"""The fused kernel (:func:`contrastive_loss`) against the definition (:func:`dense_contrastive_loss`) over the
whole option grid, values and gradients in float64; the definition against the loops of tests/reference.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import hscl.losses
from hscl.hardening import AutoExponential, Exponential, Threshold
from hscl.losses import contrastive_loss, dense_contrastive_loss
from reference import reference_loss

B, V, D, K, TEMPERATURE = 7, 2, 5, 3, 0.3  # 1 / 0.3 is not a float32: a constant rounded to float32 shows
#: the cosine cut of the threshold: high enough that some anchors keep no negative and fall back, not all
CUT = 0.7


def _poly_eta(g):
    return (g - 0.6 / TEMPERATURE).clamp(min=0.0) ** 2  # zero below cosine 0.6: weights of 0, some anchors fall back


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny (14 x 17) problems: torch's thread pool only costs time there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HARDENINGS = {
    "none": lambda: None,
    "exp0": lambda: Exponential(0.0),  # the fused kernel's beta = 0 branch
    "exp1": lambda: Exponential(1.0),  # its beta = 1 branch
    "exp": lambda: Exponential(0.7),  # the general branch
    "threshold": lambda: Threshold(math.exp(CUT / TEMPERATURE)),
    "auto": lambda: AutoExponential(0.6),  # beta chosen by the fused call, then read by the definition
    "callable": lambda: _poly_eta,  # the generic (autograd) path
}
MS = [None, 3.5, "count"]
REDUCTIONS = ["mean", "sum", "none", "anchor_mean"]
LABEL_KINDS = ["ids", "multi-hot"]
CHUNKS = [None, 4]
MEMORIES = [False, True]


def _problem(label_kind: str, memory: bool, seed: int = 0):
    """z (B, V, D) requiring grad, labels (ids with a lone class, or multi-hot with a row of no class) and a
    memory (K rows; with ids, one without labels half the time is covered by the reference test)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, D, generator=generator, dtype=torch.float64).requires_grad_()
    if label_kind == "ids":
        labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
        mem_labels = torch.tensor([1, 4, 0])
    else:
        labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]]).bool()
        mem_labels = torch.tensor([[0, 1, 0], [0, 0, 0], [1, 0, 1]]).bool()
    mem = (torch.randn(K, D, generator=generator, dtype=torch.float64), mem_labels) if memory else None
    return z, labels, mem


def _grid(negatives: str):
    taus = [0.0, 0.2] if negatives == "unsupervised" else [0.0]  # debiasing: unsupervised negatives only
    return list(itertools.product(MS, REDUCTIONS, taus, LABEL_KINDS, CHUNKS, MEMORIES))


def _value_and_grad(fn, z, labels, **kw):
    loss = fn(z, labels, **kw)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)  # tells pairs apart
    (grad,) = torch.autograd.grad((loss * weights).sum(), z)
    return loss.detach(), grad


def _assert_close(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("hardening", list(HARDENINGS))
@pytest.mark.parametrize("negatives", ["unsupervised", "supervised"])
@pytest.mark.parametrize("positives", ["views", "labels"])
def test_fused_equals_dense_over_the_grid(positives, negatives, hardening):
    """Every combination of positives x negatives x hardening x M x reduction x tau_plus x label kind x
    chunking x memory: the same values and gradients in float64."""
    fallbacks = 0
    for M, reduction, tau_plus, label_kind, chunk, memory in _grid(negatives):
        z, labels, mem = _problem(label_kind, memory)
        eta = HARDENINGS[hardening]()
        kw = dict(positives=positives, negatives=negatives, hardening=eta, temperature=TEMPERATURE, M=M)
        kw.update(tau_plus=tau_plus, reduction=reduction, memory=mem)
        loss, grad = _value_and_grad(contrastive_loss, z, labels, **kw, chunk_size=chunk)
        if isinstance(eta, AutoExponential):
            assert eta.beta > 0  # the call chose a tilt; the definition uses the same one
        want, want_grad = _value_and_grad(dense_contrastive_loss, z, labels, **kw)  # no chunks: one matrix
        case = f"M={M} reduction={reduction} tau_plus={tau_plus} labels={label_kind} chunk={chunk} memory={memory}"
        assert loss.shape == want.shape, case
        _assert_close(loss, want, f"value, {case}")
        _assert_close(grad, want_grad, f"gradient, {case}")
        if hardening in ("threshold", "callable"):
            fallbacks += int(contrastive_loss(z, labels, **kw, return_stats=True)[1].num_fallbacks)
    if hardening in ("threshold", "callable"):
        assert fallbacks > 0  # the grid reaches the fallback to w = 1


@pytest.mark.parametrize("detach_weights", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("hardening", ["exp", "threshold", "callable"])
def test_fused_equals_dense_detached_and_unnormalised(hardening, normalize, detach_weights):
    for positives, negatives in [("views", "unsupervised"), ("labels", "supervised")]:
        z, labels, mem = _problem("ids", True, seed=1)
        z = (0.6 * z).detach().requires_grad_()  # un-normalised rows of norm about 1
        kw = dict(positives=positives, negatives=negatives, hardening=HARDENINGS[hardening](), memory=mem)
        kw.update(temperature=TEMPERATURE, normalize=normalize, detach_weights=detach_weights)
        loss, grad = _value_and_grad(contrastive_loss, z, labels, **kw)
        want, want_grad = _value_and_grad(dense_contrastive_loss, z, labels, **kw)
        _assert_close(loss, want, f"value, {positives}/{negatives}")
        _assert_close(grad, want_grad, f"gradient, {positives}/{negatives}")


CASES = [
    dict(positives="views", negatives="unsupervised", hardening=None, reduction="mean"),
    dict(positives="views", negatives="unsupervised", hardening=Exponential(1.5), tau_plus=0.1, M=6.0),
    dict(positives="labels", negatives="supervised", hardening=Threshold(math.exp(0.6 / 0.5)), reduction="none"),
    dict(positives="labels", negatives="supervised", hardening=Exponential(1.0), M="count", reduction="anchor_mean"),
    dict(positives="labels", negatives="unsupervised", hardening=_poly_eta, reduction="sum", detach_weights=True),
]


@pytest.mark.parametrize("memory", [None, "labelled", "unlabelled"])
@pytest.mark.parametrize("label_kind", LABEL_KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_dense_equals_the_reference_loops(case, label_kind, memory):
    """The definition against tests/reference.py (one anchor and one pair at a time), values and gradients."""
    z, labels, mem = _problem(label_kind, memory is not None, seed=2)
    if memory == "unlabelled":
        mem = (mem[0], None)
    kw = dict(CASES[case], temperature=0.5, memory=mem)
    want, want_grad = _value_and_grad(reference_loss, z, labels, **kw)
    got, grad = _value_and_grad(dense_contrastive_loss, z, labels, **kw)
    _assert_close(got, want, "value")
    _assert_close(grad, want_grad, "gradient")


def test_no_valid_pair_is_an_attached_zero():
    z = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long)  # one class: no supervised negative
    loss = dense_contrastive_loss(z, labels, positives="labels", negatives="supervised")
    assert loss.item() == 0.0 and loss.requires_grad
    assert dense_contrastive_loss(z, labels, positives="labels", negatives="supervised", reduction="none").shape == (0,)


def test_dense_is_public_and_the_methods_point_to_it():
    assert hscl.losses.dense_contrastive_loss is dense_contrastive_loss
    for cls in (hscl.losses.UCL, hscl.losses.HUCL, hscl.losses.SCL, hscl.losses.HSCL, hscl.losses.SCHaNe):
        assert "dense_contrastive_loss" in cls.__doc__, cls.__name__
    assert "dense_contrastive_loss" in hscl.losses.SupCon.__doc__
    assert "dense_contrastive_loss" in hscl.losses.supcon_loss.__doc__
    assert "dense_contrastive_loss" in contrastive_loss.__doc__


@pytest.mark.parametrize("kernel", ["symmetric-blocks", "block"])
@pytest.mark.parametrize("negatives", ["unsupervised", "supervised"])
@pytest.mark.parametrize("positives", ["views", "labels"])
def test_each_fused_kernel_equals_dense(positives, negatives, kernel, monkeypatch):
    """The two fused kernels on the options both serve (no memory, integer labels, beta 0 or 1, no threshold, the
    scalar reductions): the symmetric one in blocks of two rows (it takes these calls whole by default, in one
    block at this size), and the block one."""
    from hscl.losses import kernel as kernel_module
    from hscl.losses import symmetric

    if kernel == "block":
        monkeypatch.setattr(symmetric, "_SYMMETRIC_ELEMENTS", 0)
    else:
        monkeypatch.setattr(symmetric, "_SYMMETRIC_BLOCK_ELEMENTS", 2 * B * V)  # blocks of 2 of the 14 rows
    calls = []
    monkeypatch.setattr(kernel_module, "symmetric_loss", lambda *a: calls.append(1) or symmetric.symmetric_loss(*a))
    taus = [0.0, 0.2] if negatives == "unsupervised" else [0.0]
    grid = itertools.product(["none", "exp0", "exp1"], MS, ["mean", "sum", "anchor_mean"], taus, [False, True])
    for hardening, M, reduction, tau_plus, detach in grid:
        z, labels, _ = _problem("ids", False, seed=3)
        kw = dict(positives=positives, negatives=negatives, hardening=HARDENINGS[hardening](), temperature=TEMPERATURE)
        kw.update(M=M, tau_plus=tau_plus, reduction=reduction, detach_weights=detach)
        loss, grad = _value_and_grad(contrastive_loss, z, labels, **kw)
        want, want_grad = _value_and_grad(dense_contrastive_loss, z, labels, **kw)
        case = f"hardening={hardening} M={M} reduction={reduction} tau_plus={tau_plus} detach={detach}"
        _assert_close(loss, want, f"value, {case}")
        _assert_close(grad, want_grad, f"gradient, {case}")
    assert len(calls) == (0 if kernel == "block" else 3 * len(MS) * 3 * len(taus) * 2)


def test_the_definition_fits_on_one_screen():
    """dense_contrastive_loss stays a readable definition: at most 60 lines of code (docstring, comments and
    blank lines aside), one numbered comment per step."""
    import ast
    import inspect

    import hscl.losses.dense as dense

    source = inspect.getsource(dense)
    function = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
    lines = source.splitlines()[function.body[1].lineno - 1 : function.end_lineno]  # body[0]: the docstring
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    steps = [line.strip() for line in lines if line.strip()[:3] in {f"# {k}" for k in range(1, 10)}]
    assert len(code) <= 60, f"dense_contrastive_loss has {len(code)} lines of code (at most 60)"
    assert [s[2] for s in steps] == [str(k) for k in range(1, len(steps) + 1)] and len(steps) >= 5, steps
