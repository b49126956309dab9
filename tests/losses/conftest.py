"""Fixtures of the loss tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["one-tile", "row-tiles", "row-max-shift", "symmetric-blocks"])
def label_layout(request, monkeypatch):
    """Run a test with each way the fused loss lays out its anchors: the default (on the CPU a whole batch takes
    the symmetric kernel in one block; with a memory, a threshold or a chunk size, the block kernel with its
    column tables in one tile), the block kernel with one tile per row (what large classes get), the block
    kernel with the log-sum-exp shifted by each row's max instead of the constant 1 / temperature, and the
    symmetric kernel in blocks of a few rows (what large batches get)."""
    from hscl.losses import kernel, sets, symmetric

    if request.param == "row-tiles":
        monkeypatch.setattr(sets, "_PAIR_TILE_ELEMENTS", 1)  # read from the module's globals at call time
        monkeypatch.setattr(symmetric, "_SYMMETRIC_ELEMENTS", 0)  # the block kernel
    elif request.param == "row-max-shift":
        monkeypatch.setattr(kernel, "_CONSTANT_SHIFT_LIMIT", {})
    elif request.param == "symmetric-blocks":
        monkeypatch.setattr(symmetric, "_SYMMETRIC_BLOCK_ELEMENTS", 150)  # blocks of 150 // rows rows, at least 1
    return request.param
