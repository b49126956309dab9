"""Shared fixtures: the tests import the loop references from tests/reference.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, from every sub-folder


@pytest.fixture(params=["gather", "blocks"])
def label_layout(request, monkeypatch):
    """Run a test with both layouts of label structure in the fused loss: gathered column tables
    (classes of at most 256 rows) and contiguous class blocks (larger classes)."""
    from hscl.losses import _fused

    if request.param == "blocks":
        monkeypatch.setattr(_fused, "_GATHER_MAX_CLASS_ROWS", 0)  # read from _fused's globals at call time
    return request.param
