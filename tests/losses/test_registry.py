"""One contract test over every registered loss, and the presets' definitions."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hscl import hardening as hd
from hscl.losses import (
    LOSSES,
    METHODS,
    ContrastiveLoss,
    Method,
    available_losses,
    contrastive_loss,
    get_loss,
    get_method,
    loss_kwargs,
)


@pytest.mark.parametrize("method", available_losses())
def test_every_registered_loss(method):
    torch.manual_seed(0)
    encoder = torch.nn.Linear(10, 8)
    x = torch.randn(20, 2, 10)
    labels = torch.randint(0, 4, (20,))
    loss_fn = get_loss(method)
    assert isinstance(loss_fn, torch.nn.Module) and isinstance(loss_fn, LOSSES[method])
    loss = loss_fn(encoder(x), labels)
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert get_loss(method.upper().replace("-", "_")).__class__ is loss_fn.__class__  # "H_SCL" works too
    repr(loss_fn)


def test_presets_are_the_core_with_fixed_modes():
    torch.manual_seed(1)
    z = torch.randn(16, 2, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    kw = {"temperature": 0.3}
    expected = {
        ("ucl", ()): contrastive_loss(z, y, positives="views", negatives="unsupervised", **kw),
        ("h-ucl", ("beta", 2.0)): contrastive_loss(z, y, hardening=hd.Exponential(2.0), **kw),
        ("h-ucl", ("tau", 1.1)): contrastive_loss(z, y, hardening=hd.Threshold(1.1), **kw),
        ("scl", ()): contrastive_loss(z, y, positives="labels", negatives="supervised", **kw),
        ("h-scl", ("beta", 0.5)): contrastive_loss(
            z, y, positives="labels", negatives="supervised", hardening=hd.Exponential(0.5), **kw
        ),
        ("h-scl", ("tau", 0.9)): contrastive_loss(
            z, y, positives="labels", negatives="supervised", hardening=hd.Threshold(0.9), **kw
        ),
        ("schane", ("beta", 1.0)): contrastive_loss(
            z,
            y,
            positives="labels",
            negatives="supervised",
            hardening=hd.Exponential(1.0),
            M="count",
            reduction="anchor_mean",
            **kw,
        ),
    }
    for (method, extra), value in expected.items():
        extra_kw = {extra[0]: extra[1]} if extra else {}
        torch.testing.assert_close(get_loss(method, **extra_kw, **kw)(z, y), value, rtol=1e-13, atol=0)


def test_default_hardening_is_beta_one_and_hardening_is_reassignable():
    loss_fn = get_loss("h-scl")
    assert loss_fn.hardening == hd.Exponential(1.0)
    schedule = hd.linear_threshold(-0.5, -0.1, 10, 0.5)
    z, y = torch.randn(12, 2, 4), torch.randint(0, 3, (12,))
    for epoch in (1, 10):
        loss_fn.hardening = schedule.hardening(epoch)
        loss_fn(z, y)
        assert loss_fn.last_stats.num_kept.sum() <= loss_fn.last_stats.num_negatives.sum()


def test_preset_keywords_reach_the_core():
    z, y = torch.randn(40, 2, 4), torch.randint(0, 3, (40,))
    loss_fn = get_loss("h-scl", beta=1.0, temperature=0.5, chunk_size=7, M=10.0, reduction="none")
    per_pair = loss_fn(z, y)
    assert per_pair.shape == (loss_fn.last_stats.num_pairs,)
    ref = contrastive_loss(
        z, y, positives="labels", negatives="supervised", hardening=hd.Exponential(1.0), M=10.0, reduction="none"
    )
    torch.testing.assert_close(per_pair, ref, rtol=1e-5, atol=1e-6)


def test_user_subclass_of_hardening_takes_the_generic_path():
    class Cubic(hd.Hardening):  # a user hardening that inherits the base class but not its log-linear form
        def __call__(self, g):
            return (g + 3.0).clamp(min=0.0) ** 3

    z, y = torch.randn(10, 2, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    ours = contrastive_loss(z, y, positives="labels", negatives="supervised", hardening=Cubic())
    as_function = contrastive_loss(
        z, y, positives="labels", negatives="supervised", hardening=lambda g: (g + 3.0).clamp(min=0.0) ** 3
    )
    torch.testing.assert_close(ours, as_function, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------------ registry


def test_methods_are_the_one_list():
    assert list(METHODS) == ["ucl", "h-ucl", "scl", "h-scl", "supcon", "schane"]
    assert LOSSES == {name: method.loss for name, method in METHODS.items()}
    assert available_losses() == list(METHODS)
    assert [m.label for m in METHODS.values()] == ["UCL", "H-UCL", "SCL", "H-SCL", "SupCon", "SCHaNe"]
    assert [name for name, m in METHODS.items() if m.supervised] == ["scl", "h-scl", "supcon", "schane"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["ucl"].hardened = True


def test_entries_hold_only_facts_about_the_loss_given_by_keyword():
    """How experiments show a method or the engine trains it is not in the registry; no entry is positional."""
    facts = ["name", "label", "loss", "positives", "negatives", "hardened", "reference"]
    assert [f.name for f in dataclasses.fields(Method)] == facts
    assert all(f.kw_only for f in dataclasses.fields(Method))
    with pytest.raises(TypeError, match="positional"):
        Method("ucl", "UCL", METHODS["ucl"].loss, "views", "unsupervised", False, "Chen et al.")
    as_keywords = Method(**{name: getattr(METHODS["scl"], name) for name in facts})
    assert as_keywords == METHODS["scl"]


def test_moved_fields_name_their_new_home():
    """The presentation fields an earlier release kept on Method fail in one line that says where they live now,
    and each named home holds what the field said."""
    import copy
    import pickle

    from hscl.engine.finetune.config import DEFINED_WITH_CE
    from hscl.engine.pretrain.datamodule import SAME_LABEL_PAIRS
    from hscl.engine.pretrain.graph_train import GRAPH_METHODS
    from hscl.experiments.methods import TABLE1

    homes = {"table1": TABLE1, "pairs": SAME_LABEL_PAIRS, "graph": GRAPH_METHODS, "with_ce": DEFINED_WITH_CE}
    for field, home in homes.items():
        with pytest.raises(AttributeError, match=rf"Method\.{field} .*read hscl\.") as caught:
            getattr(METHODS["h-scl"], field)
        assert "h-scl" in home or field == "with_ce", (field, home)
        module, _, name = str(caught.value).split("read ")[1].split(" ")[0].rpartition(".")
        assert getattr(importlib.import_module(module), name) is home
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = METHODS["ucl"].nonsense
    assert copy.deepcopy(METHODS["ucl"]) == METHODS["ucl"] == pickle.loads(pickle.dumps(METHODS["ucl"]))


@pytest.mark.parametrize("name", list(METHODS))
def test_each_entry_describes_its_class(name):
    method = METHODS[name]
    assert method.name == name and "arXiv" in method.reference
    parameters = inspect.signature(method.loss.__init__).parameters
    assert method.hardened == all(p in parameters for p in ("beta", "tau", "hardening"))
    loss_fn = method.loss()
    if method.negatives is None:  # supcon: every other row is in the denominator
        assert not isinstance(loss_fn, ContrastiveLoss)
    else:
        assert (loss_fn.positives, loss_fn.negatives) == (method.positives, method.negatives)
        assert (loss_fn.hardening is not None) == method.hardened
    doc = method.loss.__doc__
    assert "arXiv" in doc and "Implements eq." in doc and "Shape:" in doc


def test_get_method_normalises_and_explains():
    assert get_method(" H_SCL ") is METHODS["h-scl"]
    assert get_method("SupCon") is METHODS["supcon"]
    with pytest.raises(ValueError, match="unknown loss method 'hcl'; valid methods: ucl, h-ucl, scl, h-scl, supcon"):
        get_method("hcl")
    with pytest.raises(TypeError, match="method must be a string"):
        get_method(None)


def test_loss_kwargs_keeps_what_the_class_accepts():
    options = {"beta": 2.0, "tau": None, "temperature": 0.3, "M": None, "tau_plus": 0.1, "epochs": 5}
    assert loss_kwargs("h-scl", options) == {"beta": 2.0, "temperature": 0.3}
    assert loss_kwargs("UCL", options) == {"temperature": 0.3, "tau_plus": 0.1}
    assert loss_kwargs("supcon", options) == {"temperature": 0.3}
    for name in METHODS:
        get_loss(name, **loss_kwargs(name, options))  # always a valid construction


def test_method_files_do_not_import_the_registry():
    """Adding a method is one file + one entry: the method files never import the registry (no cycles)."""
    for method in METHODS.values():
        source = Path(sys.modules[method.loss.__module__].__file__).read_text()
        assert "registry" not in source, method.loss.__module__


def test_import_hscl_needs_only_torch():
    """``import hscl`` / ``import hscl.losses`` load neither Lightning, the engine, the experiments nor PyG."""
    code = (
        "import sys, hscl, hscl.losses\n"
        "heavy = ('lightning', 'pytorch_lightning', 'hscl.engine', 'hscl.experiments', 'torch_geometric')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
