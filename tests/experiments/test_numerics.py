"""One precision per table: a reproduce table records every cell's numerics and refuses to mix precisions
unless every cell pinned its precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hscl.experiments import table1 as table1_module
from hscl.experiments._numerics import numerics_footer, run_numerics, table_numerics


def _record(precision: str, setting: str | None, cpu: str = "AMD EPYC 7B12") -> dict:
    return {
        "setting": setting,
        "precision": precision,
        "channels_last": precision == "bf16-mixed",
        "tf32": False,
        "torch": "2.5.1",
        "device": "cpu",
        "cpu": cpu,
        "cpu_bf16_flags": [],
    }


def test_one_precision_passes_and_is_stated():
    cells = {"UCL seed 0": _record("32-true", "auto"), "SCL seed 0": _record("32-true", "auto")}
    got = table_numerics(cells)
    assert got["precision"] == "32-true" and not got["pinned"]
    assert got["by_precision"] == {"32-true": ["UCL seed 0", "SCL seed 0"]}
    assert numerics_footer(got) == (
        "Numerics: precision 32-true (auto); CPU AMD EPYC 7B12 (no native bf16); torch 2.5.1 in all 2 cells."
    )


def test_mixed_precisions_are_refused_naming_the_cells():
    cells = {
        "UCL seed 0": _record("bf16-mixed", "auto"),
        "H-SCL(beta) seed 0": _record("32-true", "fastest"),
        "SCL seed 0": _record("bf16-mixed", "auto"),
    }
    with pytest.raises(ValueError) as caught:
        table_numerics(cells, "Table I (quick)")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Table I (quick): its cells trained in different precisions")
    assert "bf16-mixed: UCL seed 0, SCL seed 0; 32-true: H-SCL(beta) seed 0" in message
    # one pinned cell is not enough: the others chose theirs
    cells["H-SCL(beta) seed 0"] = _record("32-true", "32")
    with pytest.raises(ValueError, match="different precisions"):
        table_numerics(cells)
    # a cell of a run that recorded nothing is unknown, not silently equal
    with pytest.raises(ValueError, match="unknown: old"):
        table_numerics({"new": _record("32-true", "auto"), "old": {"setting": None, "precision": None}})


def test_pinned_precisions_pass_and_the_table_says_so():
    same = table_numerics({"a": _record("32-true", "32"), "b": _record("32-true", "32")})
    assert same["pinned"] and same["label"].endswith("in all 2 cells (pinned)")
    mixed = table_numerics({"a": _record("bf16-mixed", "bf16"), "b": _record("32-true", "32")})
    assert mixed["pinned"] and mixed["precision"] == "pinned per cell"
    assert mixed["label"] == "precision pinned per cell, not one for the table (bf16-mixed: a; 32-true: b)"
    machines = table_numerics({"a": _record("32-true", "32", "CPU one"), "b": _record("32-true", "32", "CPU two")})
    assert "on 2 machines" in machines["label"]


def test_run_numerics_reads_the_summary_or_an_older_runs_precision_json(tmp_path):
    new, old, empty = tmp_path / "new", tmp_path / "old", tmp_path / "empty"
    for folder in (new, old, empty):
        folder.mkdir()
    record = _record("bf16-mixed", "auto")
    (new / "train_summary.json").write_text(json.dumps({"precision": "bf16-mixed", "numerics": record}))
    assert run_numerics(new) == record
    (old / "train_summary.json").write_text(json.dumps({"precision": "32-true"}))
    (old / "precision.json").write_text(json.dumps({"precision": "32-true", "channels_last": True}))
    assert run_numerics(old) == {"setting": None, "precision": "32-true", "channels_last": True}
    assert run_numerics(empty)["precision"] is None


def _fake_table1(monkeypatch, tmp_path: Path, numerics: dict[str, dict]) -> tuple[list, Path]:
    """A Table I preset of two cells whose runs are faked: each writes the given numerics record."""
    preset = tmp_path / "configs" / "table1" / "fake"
    preset.mkdir(parents=True)
    for key, loss in [("ucl", "method: ucl"), ("scl", "method: scl")]:
        (preset / f"{key}.yaml").write_text(f"loss:\n  {loss}\ntrain:\n  epochs: 1\n")

    def fake_run(config, run_dir, data):
        run_dir.mkdir(parents=True, exist_ok=True)
        record = numerics[config.loss.method]
        (run_dir / "train_summary.json").write_text(json.dumps({"numerics": record}))
        curve = [{"epoch": 1, "knn_top1": 50.0, "loss": 1.0}]
        return {"linear_top1": 50.0, "linear_top5": 90.0, "knn_top1": 48.0, "train_seconds": 1.0, "curve": curve}

    monkeypatch.setattr(table1_module, "_run_one", fake_run)
    monkeypatch.setattr("hscl.engine.pretrain.run.load_data", lambda config: None)
    return [("fake",), {"config_dir": tmp_path / "configs"}], tmp_path / "out"


def test_table1_refuses_cells_of_different_precisions(monkeypatch, tmp_path):
    numerics = {"ucl": _record("bf16-mixed", "fastest"), "scl": _record("32-true", "fastest")}
    (args, kwargs), out = _fake_table1(monkeypatch, tmp_path, numerics)
    with pytest.raises(ValueError, match=r"bf16-mixed: UCL seed 0; 32-true: SCL seed 0"):
        table1_module.reproduce_table1(*args, out, **kwargs)
    assert not (out / "table1.md").exists()  # no table built


def test_table1_with_pinned_precisions_is_built_and_labelled(monkeypatch, tmp_path):
    numerics = {"ucl": _record("bf16-mixed", "bf16"), "scl": _record("32-true", "32")}
    (args, kwargs), out = _fake_table1(monkeypatch, tmp_path, numerics)
    results = table1_module.reproduce_table1(*args, out, **kwargs)
    assert results["numerics"]["pinned"] and results["numerics"]["cells"]["UCL seed 0"] == numerics["ucl"]
    assert [r["numerics"] for r in results["methods"]["scl"]["runs"]] == [numerics["scl"]]
    text = (out / "table1.md").read_text()
    assert text.rstrip().endswith(
        "Numerics: precision pinned per cell, not one for the table (bf16-mixed: UCL seed 0; 32-true: SCL seed 0)."
    )
    assert json.loads((out / "results.json").read_text())["numerics"]["precision"] == "pinned per cell"
