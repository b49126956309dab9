"""Shared fixtures. The tests import the loop references from tests/reference.py and the learning checks and
the tiny run config from tests/helpers.py (plain modules: a second conftest.py in a sub-folder would shadow
names imported from this one)."""

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
