"""The one list of contrastive methods: facts about each loss (its class, sets, hardening, paper).

Adding a method is one file (its module class) plus one entry in :data:`METHODS`, built with keywords. The
method files never import this module. How a method is used is decided where it is used: which Table I
cells show it in :mod:`hscl.experiments.methods`; how a training batch pairs images for it, whether it has a
graph form and how fine-tuning names it in the engine (its data module, graph pre-training and fine-tuning
settings).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from hscl.losses.h_scl import HSCL
from hscl.losses.h_ucl import HUCL
from hscl.losses.schane import SCHaNe
from hscl.losses.scl import SCL
from hscl.losses.supcon import SupCon
from hscl.losses.ucl import UCL

__all__ = ["LOSSES", "METHODS", "Method", "available_losses", "get_loss", "get_method", "loss_kwargs"]


@dataclass(frozen=True, kw_only=True)
class Method:
    """One contrastive method: its module class, how it chooses positives and negatives, and its paper.

    Only facts about the loss; every field is given by keyword. ``label`` is the method's name as its paper
    writes it ("H-SCL", "SupCon", "SCHaNe"), a fact like ``reference``: tables compose their cells from it.
    """

    name: str  # "h-scl"
    label: str  # "H-SCL": the paper's name for it
    loss: type[nn.Module]  # the module class
    positives: str  # "views" | "labels"
    negatives: str | None  # "unsupervised" | "supervised"; None for supcon (all other rows)
    hardened: bool  # takes beta= / tau= / hardening=
    reference: str  # e.g. "Jiang et al., arXiv 2209.00078"

    def __getattr__(self, name: str):
        # called only for a missing attribute: the presentation fields that moved out of the registry say where
        if name in _MOVED_FIELDS:
            raise AttributeError(f"Method.{name} is no longer a fact of the loss registry; read {_MOVED_FIELDS[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def supervised(self) -> bool:
        """Whether the method needs labels (label positives or supervised negatives)."""
        return self.positives == "labels" or self.negatives == "supervised"


#: fields an earlier release kept on :class:`Method` that describe how experiments use a method, and where they live
_MOVED_FIELDS = {
    "table1": "hscl.experiments.methods.TABLE1 (the Table I cells)",
    "pairs": "hscl.engine.pretrain.datamodule.SAME_LABEL_PAIRS (methods whose batches pair same-label images)",
    "graph": "hscl.engine.pretrain.graph_train.GRAPH_METHODS (the graph objectives)",
    "with_ce": "hscl.engine.finetune.config.DEFINED_WITH_CE (objectives that include cross-entropy)",
}
_H_SCL = "Jiang et al., arXiv 2209.00078"
_METHODS = (
    Method(
        name="ucl",
        label="UCL",
        loss=UCL,
        positives="views",
        negatives="unsupervised",
        hardened=False,
        reference="Chen et al. (SimCLR), arXiv 2002.05709",
    ),
    Method(
        name="h-ucl",
        label="H-UCL",
        loss=HUCL,
        positives="views",
        negatives="unsupervised",
        hardened=True,
        reference="Robinson et al., arXiv 2010.04592",
    ),
    Method(
        name="scl",
        label="SCL",
        loss=SCL,
        positives="labels",
        negatives="supervised",
        hardened=False,
        reference=_H_SCL,
    ),
    Method(
        name="h-scl",
        label="H-SCL",
        loss=HSCL,
        positives="labels",
        negatives="supervised",
        hardened=True,
        reference=_H_SCL,
    ),
    Method(
        name="supcon",
        label="SupCon",
        loss=SupCon,
        positives="labels",
        negatives=None,
        hardened=False,
        reference="Khosla et al., arXiv 2004.11362",
    ),
    Method(
        name="schane",
        label="SCHaNe",
        loss=SCHaNe,
        positives="labels",
        negatives="supervised",
        hardened=True,
        reference="Long et al., arXiv 2308.14893",
    ),
)

#: method name -> :class:`Method`, in the order ucl, h-ucl, scl, h-scl, supcon, schane
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}

#: method name -> module class; the CLI, configs and tests iterate over this registry
LOSSES: dict[str, type[nn.Module]] = {name: m.loss for name, m in METHODS.items()}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name`` (case-insensitive, ``"_"`` read as ``"-"``: ``"H_SCL"`` works)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, one of {', '.join(METHODS)}; got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown loss method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[key]


def available_losses() -> list[str]:
    return list(METHODS)


def _init_parameters(cls: type[nn.Module]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def get_loss(method: str, **kwargs) -> nn.Module:
    """The loss module for ``method`` (one of :data:`METHODS`), built with ``kwargs``.

    Example: ``get_loss("h-scl", beta=1.0, temperature=0.5, chunk_size=1024)(z, labels)``.
    """
    entry = get_method(method)
    allowed = _init_parameters(entry.loss)
    if "auto_target" in kwargs and "beta" in allowed:  # loss.auto_target of a run config: the automatic hardening
        kwargs = _auto_hardening(entry.name, dict(kwargs))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"get_loss({entry.name!r}) got unexpected keyword(s) {', '.join(unknown)}; it accepts {', '.join(allowed)}"
        )
    return entry.loss(**kwargs)


def _auto_hardening(name: str, kwargs: dict) -> dict:
    """``beta="auto", auto_target=t`` as ``hardening=AutoExponential(t)``; ``auto_target`` alone is refused."""
    from hscl.hardening import AutoExponential

    target = kwargs.pop("auto_target")
    if kwargs.get("beta") != "auto":
        raise TypeError(
            f"get_loss({name!r}): auto_target applies to beta='auto' (the automatic hardening), got "
            f"beta={kwargs.get('beta')!r}; pass beta='auto', auto_target={target!r}"
        )
    kwargs.pop("beta")
    if kwargs.get("hardening") is not None:
        raise ValueError(f"get_loss({name!r}): give at most one of beta=, tau=, hardening=; got beta, hardening")
    kwargs["hardening"] = AutoExponential(target)
    return kwargs


def loss_kwargs(method: str, options: Mapping[str, object]) -> dict:
    """The entries of ``options`` that ``method``'s class accepts (by its ``__init__``), ``None`` values dropped.

    Example: ``loss_kwargs("scl", {"beta": 1.0, "temperature": 0.5, "M": None}) == {"temperature": 0.5}``.
    """
    allowed = set(_init_parameters(get_method(method).loss))
    return {key: value for key, value in options.items() if key in allowed and value is not None}
