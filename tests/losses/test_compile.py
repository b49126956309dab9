"""The losses inside ``torch.compile(fullgraph=True)``: every method (chunked, with a memory, with
``beta="auto"``, every reduction) gives the eager values and gradients, keeps its state (memory, automatic
beta) as in eager mode, and raises eager's errors. Mostly the ``aot_eager`` backend (AOTAutograd without
code generation: the same graph capture, fast to compile); one case goes through inductor."""

from __future__ import annotations

import math
import shutil

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


class _CountingAuto(AutoExponential):
    """An AutoExponential that counts its choices."""

    calls = 0

    def solve(self, g, negatives):
        self.calls += 1
        return super().solve(g, negatives)


@pytest.mark.parametrize("auto", [False, True], ids=["exponential", "auto"])
def test_reduction_none_pairs_and_their_weighted_gradient(auto):
    """A vector of data-dependent length (an unbacked size in the graph); its backward recomputes the call, with
    the beta the forward chose (an AutoExponential is not asked again)."""
    z, labels = _batch(dtype=torch.float32)

    def make(hardening):
        def fn(z, labels):
            loss, stats = contrastive_loss(
                z,
                labels,
                positives="labels",
                negatives="supervised",
                hardening=hardening,
                reduction="none",
                return_stats=True,
            )
            return loss, stats.pair_index

        return fn

    eager_hardening = _CountingAuto(0.5) if auto else Exponential(1.0)
    compiled_hardening = _CountingAuto(0.5) if auto else Exponential(1.0)
    eager, compiled = make(eager_hardening), _compiled(make(compiled_hardening))
    pairs = contrastive_loss(z, labels, positives="labels", negatives="supervised", reduction="none").shape[0]
    weights = torch.rand(pairs, generator=torch.Generator().manual_seed(1))
    expected = _value_and_grad(lambda z, y: eager(z, y)[0], z, labels, weights)  # each side's first call, then
    got = _value_and_grad(lambda z, y: compiled(z, y)[0], z, labels, weights)  # its second (beta moves on)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(compiled(z, labels)[1], eager(z, labels)[1])
    if auto:  # two calls each: the backward did not choose again
        assert compiled_hardening.calls == eager_hardening.calls == 2
        assert compiled_hardening.beta == eager_hardening.beta > 0


def test_a_memory_bank_keeps_its_state_under_compile():
    """memory_size: each training call uses the memory as it was, then enqueues its rows, as in eager mode; once
    warmed up and full, no step recompiles (ten steps: past Dynamo's limit of 8 if each step did)."""
    eager_fn = get_loss("h-scl", beta=1.0, memory_size=30, memory_warmup_steps=1)
    compiled_fn = get_loss("h-scl", beta=1.0, memory_size=30, memory_warmup_steps=1)
    compiled = _compiled(compiled_fn)
    for step in range(10):  # warm-up, a growing memory, then a full one (30 < 3 x 24 rows)
        z, labels = _batch(seed=step)
        expected, got = _value_and_grad(eager_fn, z, labels), _value_and_grad(compiled, z, labels)
        torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
        torch.testing.assert_close(compiled_fn.memory_z, eager_fn.memory_z, rtol=0, atol=0)
        assert torch.equal(compiled_fn.memory_labels, eager_fn.memory_labels)
        assert int(compiled_fn.memory_steps) == int(eager_fn.memory_steps) == step + 1


def test_functional_memory_auto_beta_and_a_callable_hardening():
    """The functional call with a memory, an AutoExponential object (its state moves call by call) and a plain
    callable hardening (the generic autograd path), in float32."""
    z, labels = _batch(dtype=torch.float32)
    memory = (torch.randn(10, 6), torch.randint(0, 3, (10,)))
    eager_auto, compiled_auto = AutoExponential(0.5), AutoExponential(0.5)

    def fn(hardening):
        def call(z, labels):
            return contrastive_loss(
                z, labels, positives="labels", negatives="supervised", hardening=hardening, memory=memory, chunk_size=7
            )

        return call

    for step in range(2):
        expected = _value_and_grad(fn(eager_auto), z + step, labels)
        got = _value_and_grad(_compiled(fn(compiled_auto)), z + step, labels)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert compiled_auto.beta == eager_auto.beta and compiled_auto.solved == eager_auto.solved
    hinge = lambda g: torch.relu(g) + 0.5  # noqa: E731
    expected = _value_and_grad(fn(hinge), z, labels)
    torch.testing.assert_close(_value_and_grad(_compiled(fn(hinge)), z, labels), expected, rtol=0, atol=0)


def test_supcon_function_metric_learning_shape_and_anchor_mean():
    z, labels = _batch()
    flat, flat_labels = z[:, 0], labels
    schane = get_loss("schane", beta=1.0)  # anchor_mean
    for fn, args in [(supcon_loss, (z, None)), (get_loss("supcon"), (flat, flat_labels)), (schane, (z, labels))]:
        torch.testing.assert_close(_value_and_grad(_compiled(fn), *args), _value_and_grad(fn, *args), rtol=0, atol=0)


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")), reason="inductor on the CPU needs a C++ compiler"
)
def test_inductor_float32():
    """The default backend (inductor) around the node, with a computation before and after it."""
    z, labels = _batch(dtype=torch.float32)
    loss_fn = get_loss("h-scl", beta=1.0)

    def step(z, labels):
        return 2.0 * loss_fn(torch.tanh(z), labels) + z.square().mean()

    expected = _value_and_grad(step, z, labels)
    torch.testing.assert_close(_value_and_grad(_compiled(step, "inductor"), z, labels), expected, rtol=1e-6, atol=1e-7)


def test_errors_and_warnings_are_eager_ones():
    """Bad values raise eager's error at run time (from inside the node); shapes raise while tracing (wrapped in
    Dynamo's error under fullgraph=True, with eager's message);
    a batch without a valid pair warns and gives an exact 0."""
    loss_fn = _compiled(get_loss("h-scl", beta=1.0))
    z, labels = _batch()
    z[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        loss_fn(z, labels)
    with pytest.raises(Exception, match=r"z must have shape \(B, V, d\)"):  # Dynamo's wrapper under fullgraph
        _compiled(contrastive_loss)(torch.randn(4, 3, 2, 1))
    z, _ = _batch()
    with pytest.warns(RuntimeWarning, match="no valid"):
        loss = loss_fn(z, torch.zeros(12, dtype=torch.long))
    assert loss.item() == 0.0
