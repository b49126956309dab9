"""How the experiments group and label the registered methods: the H-SCL paper's Table I.

The registry (:data:`hscl.losses.METHODS`) holds facts about each loss: its class, its positives and
negatives, whether it takes a hardening, its paper's name for it and its reference. Which methods a table
shows, in which order and under which label are the experiments' choices, made here.

A Table I cell is a method under one hardening variant: ``""`` the method as it is, ``"beta"`` its
exponential tilting, ``"tau"`` its threshold hardening. Its config file stem is ``<name>`` or
``<name>-<variant>`` (``h-scl-beta.yaml``) and its label ``<label>`` or ``<label>(<variant>)``
(``H-SCL(beta)``).
"""

from __future__ import annotations

from hscl.losses import METHODS, get_method

__all__ = ["HARDENING_VARIANTS", "TABLE1", "TABLE1_CELLS", "TABLE1_ORDER", "table1_cell"]

#: the hardening variants a hardened method's cell may take: exponential tilting, threshold
HARDENING_VARIANTS = ("beta", "tau")

#: the H-SCL paper's Table I, in its order: method -> the variants it shows (the paper reports H-UCL as
#: Robinson et al.'s, and H-SCL with both hardenings)
TABLE1: dict[str, tuple[str, ...]] = {"ucl": ("",), "h-ucl": ("",), "scl": ("",), "h-scl": HARDENING_VARIANTS}


def table1_cell(method: str, variant: str = "") -> tuple[str, str]:
    """(config file stem, table label) of ``method`` under ``variant``: ``("h-scl-beta", "H-SCL(beta)")``."""
    entry = get_method(method)
    allowed = ("", *HARDENING_VARIANTS) if entry.hardened else ("",)
    if variant not in allowed:
        raise ValueError(f"variant must be one of {allowed} for {entry.name!r}, got {variant!r}")
    if not variant:
        return entry.name, entry.label
    return f"{entry.name}-{variant}", f"{entry.label}({variant})"


#: every cell a Table I preset may hold (config stem -> label), in the registry's order: each method as it
#: is, and each hardened method with ``-beta`` (exponential tilting) or ``-tau`` (threshold)
TABLE1_CELLS: dict[str, str] = dict(
    table1_cell(name, variant)
    for name, method in METHODS.items()
    for variant in (("", *HARDENING_VARIANTS) if method.hardened else ("",))
)

#: the paper's Table I (config stem -> label), in its order
TABLE1_ORDER: dict[str, str] = dict(
    table1_cell(name, variant) for name, variants in TABLE1.items() for variant in variants
)
