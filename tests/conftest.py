"""Shared fixtures: the tests import the loop references from tests/reference.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, from every sub-folder

#: torch.cuda.device_count() asks NVML and creates no CUDA context (tests that fork stay able to use CUDA)
HAS_CUDA = torch.cuda.device_count() > 0


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")]),
    ]
)
def device(request) -> torch.device:
    """Run a test on every device: the CPU always, a CUDA GPU where there is one (those cases carry the
    ``gpu`` marker: ``pytest -m gpu`` selects them, and they are skipped without a GPU)."""
    return torch.device(request.param)


@pytest.fixture(params=["one-tile", "row-tiles", "row-max-shift"])
def label_layout(request, monkeypatch):
    """Run a test with each way the fused loss lays out a block of anchors: its column tables in one
    tile (the default at test sizes), split into one tile per row (what large classes get), and the
    log-sum-exp shifted by each row's max instead of the constant 1 / temperature."""
    from hscl.losses import _fused, _layout

    if request.param == "row-tiles":
        monkeypatch.setattr(_layout, "_PAIR_TILE_ELEMENTS", 1)  # read from _layout's globals at call time
    elif request.param == "row-max-shift":
        monkeypatch.setattr(_fused, "_CONSTANT_SHIFT_LIMIT", {})
    return request.param
