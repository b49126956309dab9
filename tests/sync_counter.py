"""Counting host synchronisations on the CPU (tests import it: tests/ is on sys.path, see conftest.py).

On a GPU every read of a tensor's value on the host waits for the device's queue to drain. On the CPU they are
counted by patching every Python-level way a value reaches the host (``item``, ``tolist``, ``int`` / ``float``
/ ``bool`` / ``index`` of a tensor) and the ops whose output size depends on the values (``nonzero``,
``unique``, ``masked_select``, one-argument ``where``, indexing with a boolean mask, ``repeat_interleave`` with
tensor repeats and no ``output_size``). Reads inside torch's C++ code are not seen (none synchronise on the
CPU); the ``gpu`` tests count those with CUDA's own sync debug mode.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

#: Tensor methods that read values on the host
_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")
#: ops whose output size depends on the values (a host read on a GPU)
_SIZED = ("nonzero", "unique", "masked_select")


class SyncCounter:
    """Counts the host reads of the tensors' values while active (see the module docstring)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, within: str | None = None) -> None:
        """``within``: count only the reads made by code under this folder (e.g. hscl's sources: not those of
        the optimiser, whose step counters live on the host, or of kornia)."""
        self.within = within
        self.count = 0
        self.where: list[str] = []
        self.active = False
        self.depth = 0
        self._monkeypatch = monkeypatch

    def _hit(self, name: str) -> None:
        if self.active:
            self.count += 1
            self.where.append(name)

    def install(self) -> SyncCounter:
        mp, counter = self._monkeypatch, self

        def wrap(owner, name, counts=lambda *a, **k: True):
            original = getattr(owner, name)

            def patched(*args, **kwargs):
                mine = counter.within is None or sys._getframe(1).f_code.co_filename.startswith(counter.within)
                if counter.depth == 0 and mine and counts(*args, **kwargs):
                    counter._hit(f"{getattr(owner, '__name__', owner)}.{name}")
                counter.depth += 1  # a read inside a counted one (Tensor.unique calls torch.unique) is the same
                try:
                    return original(*args, **kwargs)
                finally:
                    counter.depth -= 1

            mp.setattr(owner, name, patched)

        for name in _READS:
            wrap(torch.Tensor, name)
        for name in _SIZED:
            wrap(torch.Tensor, name)
            wrap(torch, name)
        wrap(torch, "where", lambda *args, **kwargs: len(args) + len(kwargs) == 1)

        # indexing with a boolean mask is seen by a torch-function mode while counting: patching
        # Tensor.__getitem__ on the class would leave its sequence slot behind after the undo, and
        # torch.tensor([0-d tensors]) would then take each tensor for a sequence
        self._mode = _MaskIndexMode(self)

        def tensor_repeats(*args, **kwargs):
            repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
            return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None

        wrap(torch.Tensor, "repeat_interleave", tensor_repeats)
        wrap(torch, "repeat_interleave", tensor_repeats)
        return self

    @contextlib.contextmanager
    def counting(self):
        self.count, self.where, self.active = 0, [], True
        mode = getattr(self, "_mode", None)
        try:
            with mode if mode is not None else contextlib.nullcontext():
                yield self
        finally:
            self.active = False


class _MaskIndexMode(TorchFunctionMode):
    """Counts ``tensor[mask]`` (a boolean or uint8 index: its output size depends on the values)."""

    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and len(args) == 2:
            parts = args[1] if isinstance(args[1], tuple) else (args[1],)
            masked = any(isinstance(p, torch.Tensor) and p.dtype in (torch.bool, torch.uint8) for p in parts)
            within = self.counter.within
            mine = within is None or sys._getframe(1).f_code.co_filename.startswith(within)
            if masked and mine and self.counter.depth == 0:
                self.counter._hit("Tensor.__getitem__")
        return func(*args, **kwargs)
