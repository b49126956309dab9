"""The engine's earlier flat modules (``hscl.engine.train``, ``hscl.engine.config``, ...) import for one release as
the modules they moved to, with a DeprecationWarning naming the new place."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from hscl.engine import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_is_its_new_module(old):
    new = importlib.import_module(f"hscl.engine.{MOVED[old]}")
    sys.modules.pop(f"hscl.engine.{old}", None)  # imported by an earlier test: import it afresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"hscl.engine.{old}")
    assert module is new
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages == [
        f"hscl.engine.{old} moved to hscl.engine.{MOVED[old]}; the old name will be removed in the next release"
    ]


def test_every_new_module_exists_and_no_old_file_is_left():
    from pathlib import Path

    engine = Path(importlib.import_module("hscl.engine").__file__).parent
    for old, new in MOVED.items():
        assert (engine / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (engine / f"{old}.py").exists(), f"engine/{old}.py is both moved and present"


def test_from_import_of_an_old_name_in_a_fresh_interpreter():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    from hscl.engine.train import train\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
        "warnings.simplefilter('ignore')\n"
        "from hscl.engine.train import train\nfrom hscl.engine.pretrain.run import train as new\nprint(train is new)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "warned: hscl.engine.train moved to hscl.engine.pretrain.run; the old name will be removed in the next release",
        "True",
    ]
