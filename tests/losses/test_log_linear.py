"""The fused path is chosen by a capability: a :class:`Hardening` that declares ``log_linear`` takes it (subclasses
of the built-ins, a user's own), one that defines a new ``eta`` without declaring it does not; both give the
values and gradients of the definition (:func:`dense_contrastive_loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from hscl.hardening import Exponential, Hardening, Threshold
from hscl.losses import contrastive_loss, core, dense_contrastive_loss, local_global
from reference import random_graph_problem


@dataclass(frozen=True)
class Scaled(Exponential):
    """A subclass that keeps Exponential's eta: still log-linear."""

    scale: float = 1.0


class Shifted(Threshold):
    """A subclass of Threshold with its own way of giving tau, and its eta kept."""

    def __init__(self, cosine: float, temperature: float) -> None:
        super().__init__(math.exp(cosine / temperature))


class MyTilt(Hardening):
    """A user's hardening that declares the form: eta(g) = exp(beta g) 1[g >= log_threshold]."""

    log_linear = True

    def __init__(self, beta: float, log_threshold: float) -> None:
        self.beta, self.log_threshold = beta, log_threshold

    def __call__(self, g):
        return torch.exp(self.beta * g) * (g >= self.log_threshold).to(g.dtype)


class Sigmoid(Exponential):
    """A subclass with a new eta that does not declare the form: not log-linear."""

    def __call__(self, g):
        return torch.sigmoid(self.beta * g)


def _spy(monkeypatch):
    """Count the calls of the fused and the generic path of contrastive_loss."""
    calls = {"fused": 0, "generic": 0}
    fused, generic = core.fused_loss, core.generic_loss

    def count(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(core, "fused_loss", count("fused", fused))
    monkeypatch.setattr(core, "generic_loss", count("generic", generic))
    return calls


def _problem():
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(8, 2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    return z, torch.tensor([0, 1, 0, 2, 1, 0, 2, 1])


def test_the_declaration():
    assert Hardening.log_linear and Exponential.log_linear and Threshold.log_linear
    assert Scaled.log_linear and Shifted.log_linear and MyTilt.log_linear
    assert not Sigmoid.log_linear  # a new __call__ resets it unless the class declares it


@pytest.mark.parametrize(
    "hardening, path",
    [
        (Scaled(0.8, scale=2.0), "fused"),
        (Shifted(0.2, 0.5), "fused"),
        (MyTilt(1.3, 0.1), "fused"),
        (MyTilt(0.0, -math.inf), "fused"),
        (Sigmoid(2.0), "generic"),
        (Exponential(0.8), "fused"),
    ],
)
@pytest.mark.parametrize("positives, negatives", [("views", "unsupervised"), ("labels", "supervised")])
def test_log_linear_hardenings_take_the_fused_path(monkeypatch, hardening, path, positives, negatives):
    calls = _spy(monkeypatch)
    z, labels = _problem()
    kw = dict(positives=positives, negatives=negatives, hardening=hardening, temperature=0.5)
    loss = contrastive_loss(z, labels, **kw)
    assert calls == {"fused": int(path == "fused"), "generic": int(path == "generic")}
    (grad,) = torch.autograd.grad(loss, z)
    want = dense_contrastive_loss(z, labels, **kw)
    (want_grad,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_a_declared_form_equals_its_builtin():
    """A user's declared hardening gives the very numbers of the built-in of the same form."""
    z, labels = _problem()
    kw = dict(positives="labels", negatives="supervised", temperature=0.5)
    mine = contrastive_loss(z, labels, hardening=MyTilt(0.0, math.log(1.5)), **kw)
    builtin = contrastive_loss(z, labels, hardening=Threshold(1.5), **kw)
    assert torch.equal(mine, builtin)


@pytest.mark.parametrize(
    "beta, log_threshold, match",
    [(-1.0, -math.inf, "beta"), (math.inf, -math.inf, "beta"), ("1", 0.0, "beta"), (1.0, math.nan, "log_threshold")],
)
def test_a_bad_declared_form_is_an_error(beta, log_threshold, match):
    z, labels = _problem()
    hardening = MyTilt(0.0, 0.0)
    hardening.beta, hardening.log_threshold = beta, log_threshold
    with pytest.raises(ValueError, match=f"log-linear hardening's {match}"):
        contrastive_loss(z, labels, hardening=hardening)


def test_the_graph_objective_uses_the_closed_form_for_declared_hardenings(monkeypatch):
    """local_global takes its closed form (not the checked callable path) for a subclass, with the same values."""
    called = []
    monkeypatch.setattr(
        local_global,
        "_log_callable_weights",
        lambda *args: called.append(1) or pytest.fail("the callable path was taken"),
    )
    local, global_, batch, labels = random_graph_problem(0)
    scores = local @ global_.T
    mask = local_global.graph_negative_mask(batch, global_.shape[0], labels)
    got = local_global.log_negative_weights(scores, mask, hardening=Scaled(1.5))
    want = local_global.log_negative_weights(scores, mask, hardening=Exponential(1.5))
    assert not called
    torch.testing.assert_close(got, want)
