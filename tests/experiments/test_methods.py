"""How the experiments group and label the registered methods: the H-SCL paper's Table I, unchanged."""

from __future__ import annotations

import pytest

from hscl.experiments.methods import TABLE1, TABLE1_CELLS, TABLE1_ORDER, table1_cell
from hscl.geometry import QUARTET
from hscl.losses import METHODS


def test_table1_order_and_labels_are_the_papers():
    assert list(TABLE1_ORDER.items()) == [
        ("ucl", "UCL"),
        ("h-ucl", "H-UCL"),
        ("scl", "SCL"),
        ("h-scl-beta", "H-SCL(beta)"),
        ("h-scl-tau", "H-SCL(tau)"),
    ]


def test_every_cell_a_preset_may_hold():
    assert list(TABLE1_CELLS.items()) == [
        ("ucl", "UCL"),
        ("h-ucl", "H-UCL"),
        ("h-ucl-beta", "H-UCL(beta)"),
        ("h-ucl-tau", "H-UCL(tau)"),
        ("scl", "SCL"),
        ("h-scl", "H-SCL"),
        ("h-scl-beta", "H-SCL(beta)"),
        ("h-scl-tau", "H-SCL(tau)"),
        ("supcon", "SupCon"),
        ("schane", "SCHaNe"),
        ("schane-beta", "SCHaNe(beta)"),
        ("schane-tau", "SCHaNe(tau)"),
    ]


def test_a_cell_is_named_from_the_method_and_its_variant():
    assert table1_cell("H_SCL", "tau") == ("h-scl-tau", "H-SCL(tau)")
    assert table1_cell("supcon") == ("supcon", "SupCon")
    with pytest.raises(ValueError, match=r"variant must be one of \('',\) for 'scl', got 'beta'"):
        table1_cell("scl", "beta")
    with pytest.raises(ValueError, match=r"variant must be one of \('', 'beta', 'tau'\) for 'h-ucl', got 'exp'"):
        table1_cell("h-ucl", "exp")
    with pytest.raises(ValueError, match="unknown loss method 'hcl'"):
        table1_cell("hcl")


def test_table1_shows_lemma1s_four_settings():
    """Table I's methods are the paper's quartet (geometry keeps its own constant: the library does not import
    the experiments); by their facts: unsupervised or supervised negatives, each plain and hardened."""
    assert tuple(TABLE1) == QUARTET == ("ucl", "h-ucl", "scl", "h-scl")
    facts = [(METHODS[m].positives, METHODS[m].negatives, METHODS[m].hardened) for m in QUARTET]
    assert facts == [
        ("views", "unsupervised", False),
        ("views", "unsupervised", True),
        ("labels", "supervised", False),
        ("labels", "supervised", True),
    ]
