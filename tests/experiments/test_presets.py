"""The one preset lookup: packaged YAML files found through importlib.resources, a user's folder first."""

from __future__ import annotations

from pathlib import Path

import pytest

from hscl.cli import main
from hscl.experiments.extensions import EXPERIMENTS, find_extension_preset, list_extension_presets
from hscl.experiments.methods import TABLE1_CELLS, TABLE1_ORDER
from hscl.experiments.presets import SUITES, find_preset, list_presets, packaged_configs, resolve_config
from hscl.experiments.table1 import find_preset as find_table1
from hscl.losses import METHODS


def test_packaged_presets_live_inside_the_package():
    root = packaged_configs()
    assert root.is_dir() and root.parent == Path(__import__("hscl.experiments").experiments.__file__).parent
    assert list_presets("table1") == ["cifar10", "cifar100", "quick", "stl10", "tiny-imagenet"]
    assert list_presets("figures") == ["collapse", "fig4-fig5"]
    assert list_presets("table2") == ["paper", "quick"]
    assert list_presets("schane") == ["cifar-fs-vit", "pretrained", "quick"]
    assert find_preset("table2", "quick") == root / "table2" / "quick.yaml"


def test_a_users_folder_comes_first_and_adds_presets(tmp_path):
    (tmp_path / "table2").mkdir()
    (tmp_path / "table2" / "quick.yaml").write_text("name: mine\n")
    (tmp_path / "table2" / "mine.yaml").write_text("name: mine\n")
    assert find_preset("table2", "quick", tmp_path) == tmp_path / "table2" / "quick.yaml"
    assert list_presets("table2", tmp_path) == ["mine", "paper", "quick"]


@pytest.mark.parametrize(
    ("suite", "preset", "configs", "message"),
    [
        ("table9", "quick", None, "unknown preset suite 'table9'"),
        ("table1", "nope", None, "unknown preset 'nope' for table1; .* available: cifar10, cifar100, quick"),
        ("table1", "../table2", None, "a preset is a plain name"),
        ("table2", "quick", "/no/such/folder", "--configs /no/such/folder: not a folder"),
        ("extensions", "quick", None, r"unknown preset suite 'extensions'; allowed: .*extensions/<experiment>"),
        ("extensions/../table2", "quick", None, "unknown preset suite 'extensions/../table2'"),
        ("extensions/multilabel", "nope", None, "unknown preset 'nope' for extensions/multilabel; .* available: quick"),
    ],
)
def test_bad_preset_names_are_named(suite, preset, configs, message):
    with pytest.raises(ValueError, match=message):
        find_preset(suite, preset, configs)


def test_extension_presets_are_one_suite_per_experiment(tmp_path):
    # the extension experiments' presets, extensions/<experiment>/<preset>.yaml, go through the same lookup
    root = packaged_configs()
    for experiment in EXPERIMENTS:
        suite = f"extensions/{experiment}"
        assert list_presets(suite) == ["quick"] == list_extension_presets(experiment)
        assert find_preset(suite, "quick") == root / "extensions" / experiment / "quick.yaml"
        assert find_extension_preset(experiment, "quick") == find_preset(suite, "quick")
    folder = tmp_path / "extensions" / "small-batch"
    folder.mkdir(parents=True)
    (folder / "quick.yaml").write_text("experiment: small-batch\n")
    (folder / "notes.txt").write_text("not a preset\n")
    assert find_extension_preset("small-batch", "quick", tmp_path) == folder / "quick.yaml"
    assert list_extension_presets("small-batch", tmp_path) == ["quick"]
    assert list_extension_presets("multilabel", tmp_path) == ["quick"]  # no folder of its own there
    with pytest.raises(ValueError, match=r"unknown extension experiment 'large-batch'; valid: multilabel"):
        find_extension_preset("large-batch", "quick")


def test_table1_cells_come_from_the_registry(tmp_path):
    """The paper's cells in its order; any registered method (and hardening variant) may be a cell."""
    assert list(TABLE1_ORDER) == ["ucl", "h-ucl", "scl", "h-scl-beta", "h-scl-tau"]
    assert set(TABLE1_ORDER) <= set(TABLE1_CELLS) and all(m in TABLE1_CELLS for m in METHODS)
    folder = tmp_path / "table1" / "mine"
    folder.mkdir(parents=True)
    for name in ("supcon", "scl", "h-ucl-tau"):
        (folder / f"{name}.yaml").write_text(f"loss: {{method: {name.removesuffix('-tau')}}}\n")
    assert list(find_table1("mine", extra=tmp_path)) == ["h-ucl-tau", "scl", "supcon"]  # the registry's order
    (folder / "focal.yaml").write_text("loss: {method: scl}\n")
    with pytest.raises(ValueError, match=r"unexpected config\(s\) \['focal'\]"):
        find_table1("mine", extra=tmp_path)


def test_run_configs_resolve_by_name(tmp_path):
    root = packaged_configs()
    assert resolve_config("table1/quick/scl") == root / "table1" / "quick" / "scl.yaml"
    assert resolve_config("table1/quick/scl.yaml") == root / "table1" / "quick" / "scl.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    assert resolve_config(own) == own and resolve_config(None) is None
    for bad in ("table1/quick/nope", "../../../pyproject.toml"):
        with pytest.raises(ValueError, match="no such file, nor a packaged config"):
            resolve_config(bad)


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {suite}: " in out for suite in SUITES) and "table1/quick/h-scl-beta" in out
    assert main(["presets", "table1/quick/h-scl-beta"]) == 0
    assert "method: h-scl" in capsys.readouterr().out
    assert main(["presets", "table1/quick/nope"]) == 2
    err = capsys.readouterr().err
    assert "no such file, nor a packaged config" in err and "Traceback" not in err
