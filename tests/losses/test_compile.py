"""The losses inside ``torch.compile(fullgraph=True)``: every method (chunked, with a memory, with
``beta="auto"``, every reduction) gives the eager values and gradients, keeps its state (memory, automatic
beta) as in eager mode, and raises eager's errors. Mostly the ``aot_eager`` backend (AOTAutograd without
code generation: the same graph capture, fast to compile); one case goes through inductor."""

from __future__ import annotations

import math

import pytest
import torch

from hscl.hardening import AutoExponential, Exponential
from hscl.losses import METHODS, contrastive_loss, get_loss, supcon_loss

pytestmark = pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.compile support: torch >= 2.4")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own graphs: forward's code object is shared by every loss module, and a run of
    many configurations would reach Dynamo's recompile limit (a hard error under fullgraph=True)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batch(B=12, V=2, d=6, classes=3, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=dtype)
    labels = torch.randint(0, classes, (B,), generator=generator)
    return z, labels


def _value_and_grad(fn, z, labels, weights=None):
    z = z.clone().requires_grad_(True)
    loss = fn(z, labels)
    (loss * weights if weights is not None else loss).sum().backward()
    return loss.detach(), z.grad


def _compiled(fn, backend="aot_eager"):
    return torch.compile(fn, fullgraph=True, backend=backend)


#: (method, loss kwargs): every registered method, its hardenings, chunked, the automatic beta
CASES = [(name, {}) for name in METHODS]
CASES += [(name, {"beta": 1.0}) for name, m in METHODS.items() if m.hardened]
CASES += [("h-scl", {"tau": math.exp(0.5)}), ("h-scl", {"beta": 2.0, "chunk_size": 5}), ("supcon", {"chunk_size": 5})]
CASES += [("h-ucl", {"beta": 0.5, "tau_plus": 0.1}), ("h-scl", {"beta": "auto"}), ("scl", {"reduction": "sum"})]


@pytest.mark.parametrize(("method", "kwargs"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_every_method_compiles_with_eager_values_and_gradients(method, kwargs):
    z, labels = _batch()
    eager_fn, compiled_fn = get_loss(method, **kwargs), get_loss(method, **kwargs)
    compiled = _compiled(compiled_fn)
    for step in range(2):  # the second call runs the cached graph (and, for "auto", starts from the first's beta)
        z_step = z + 0.1 * step
        expected = _value_and_grad(eager_fn, z_step, labels)
        got = _value_and_grad(compiled, z_step, labels)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-15, atol=0)
    if kwargs.get("beta") == "auto":  # the object's state moved as in eager mode
        assert compiled_fn.hardening.beta == eager_fn.hardening.beta > 0
    if hasattr(eager_fn, "last_stats"):
        for field in ("num_kept", "valid", "log_tilted_mean", "anchor_loss"):
            torch.testing.assert_close(getattr(compiled_fn.last_stats, field), getattr(eager_fn.last_stats, field))
