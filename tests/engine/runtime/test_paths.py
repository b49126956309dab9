"""hscl.engine.runtime.paths.portable_path: what an output records instead of a machine's absolute path."""

from __future__ import annotations

from pathlib import Path

import pytest

import hscl
from hscl.engine.runtime.paths import PRESETS, portable_path
from hscl.experiments.presets import find_preset, packaged_configs


def test_the_packaged_presets_are_named_as_hscl_train_takes_them():
    assert PRESETS == packaged_configs().resolve() == Path(hscl.__file__).resolve().parent / "experiments" / "configs"
    path = find_preset("table1", "quick") / "ucl.yaml"
    assert path.is_absolute() and path.is_file()
    assert portable_path(path) == "table1/quick/ucl.yaml"
    assert portable_path(str(path), "/elsewhere") == "table1/quick/ucl.yaml"  # the package comes first


def test_roots_in_order_then_the_working_directory_then_the_name(tmp_path, monkeypatch):
    configs, run, home = tmp_path / "configs", tmp_path / "run", tmp_path / "home"
    for folder in (configs / "table1" / "tiny", run / "ucl", home / "data"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(home)
    assert portable_path(configs / "table1" / "tiny" / "ucl.yaml", configs, run) == "table1/tiny/ucl.yaml"
    assert portable_path(run / "ucl" / "seed0", configs, run) == "ucl/seed0"
    assert portable_path(tmp_path / "run" / ".." / "run" / "x.json", run) == "x.json"  # resolved first
    assert portable_path("data/x.csv") == "data/x.csv"  # relative to the working directory
    assert portable_path(home / "data" / "x.csv") == "data/x.csv"
    assert portable_path(run, run) == "."
    outside = tmp_path / "elsewhere" / "base.yaml"
    assert portable_path(outside, configs, run) == "base.yaml"
    assert not any(portable_path(p, run).startswith("/") for p in (outside, run / "a", configs / "b"))


@pytest.mark.parametrize("bad", [None, "", 3])
def test_bad_paths_are_refused(bad):
    with pytest.raises(ValueError, match=r"path must be a non-empty str or os\.PathLike"):
        portable_path(bad)
