"""``hscl reproduce auto-beta``: the choices on validation (fake cells whose validation and test rankings differ),
the verdict's tolerance, the protocol's checks, reuse only of runs of the same resolved config, and the command end
to end at a tiny budget (two worker processes, then read back without training)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from test_extensions import TINY, _csv, _no_training

from hscl.cli import main
from hscl.engine.runtime.config import config_to_dict
from hscl.experiments.auto_beta import check_reusable, choose_target, judge, protocol_of, summarize
from hscl.experiments.extensions import ExtensionPreset, cell_config, find_extension_preset, load_extension_preset


def _cell(val, test, test_std=0.1, beta=1.0, target=None):
    loss = {"beta": "auto", "auto_target": target} if target is not None else {"beta": beta}
    return {"loss": loss, "val_linear_top1_mean": val, "linear_top1_mean": test, "linear_top1_std": test_std}


def test_the_target_and_the_grid_point_are_chosen_on_validation_not_on_test():
    cells = {
        "auto-0.3": _cell(80.0, 83.0, target=0.3),  # best on test
        "auto-0.7": _cell(82.0, 81.0, target=0.7),  # best on validation
        "auto-0.9": _cell(math.nan, 99.0, target=0.9),  # no validation number: never chosen on it
    }
    assert choose_target(cells, list(cells)) == "auto-0.7"
    assert choose_target(cells, ["auto-0.3", "auto-0.7"], "test") == "auto-0.3"
    grid = {"beta-0.5": _cell(79.0, 82.0, test_std=0.2), "beta-1": _cell(81.0, 81.3, test_std=0.3)}
    verdict = judge({**grid, **cells}, list(grid), "auto-0.7")
    assert verdict["grid_selected"] == "beta-1" and verdict["grid_test_best"] == "beta-0.5"
    assert verdict["gap_points"] == pytest.approx(81.3 - 81.0)
    assert verdict["tolerance"] == 0.5 and verdict["within"] and verdict["selected_on"] == "validation"
    on_test = judge({**grid, **cells}, list(grid), "auto-0.7", "test")
    assert on_test["grid_selected"] == "beta-0.5" and on_test["gap_points"] == pytest.approx(1.0)
    assert not on_test["within"]
    with pytest.raises(ValueError, match=r"no cell among auto-0.9 has a finite val_linear_top1"):
        choose_target(cells, ["auto-0.9"])


def test_the_tolerance_is_the_pooled_seed_std_when_it_exceeds_half_a_point():
    cells = {"beta-1": _cell(81.0, 81.0, test_std=0.9), "auto-0.5": _cell(80.0, 80.3, test_std=0.5, target=0.5)}
    verdict = judge(cells, ["beta-1"], "auto-0.5")
    pooled = math.sqrt((0.9**2 + 0.5**2) / 2)  # 0.728
    assert verdict["pooled_std"] == pytest.approx(pooled) and verdict["tolerance"] == pytest.approx(pooled)
    assert verdict["within"]  # 0.7 points below, within 0.728
    cells["auto-0.5"]["linear_top1_mean"] = 80.2
    assert not judge(cells, ["beta-1"], "auto-0.5")["within"]  # 0.8 points below
    cells["auto-0.5"]["linear_top1_mean"] = 85.0
    assert judge(cells, ["beta-1"], "auto-0.5")["within"]  # above the grid: within


def test_summaries_over_seeds():
    runs = [
        {"linear_top1": 80.0, "val_linear_top1": 70.0, "final_beta": 2.0, "final_beta_solved": None},
        {"linear_top1": 82.0, "val_linear_top1": 74.0, "final_beta": 4.0, "final_beta_solved": None},
    ]
    out = summarize(runs)
    assert out["linear_top1_mean"] == 81.0 and out["linear_top1_std"] == pytest.approx(math.sqrt(2))
    assert out["val_linear_top1_mean"] == 72.0 and out["final_beta_mean"] == 3.0
    assert math.isnan(out["final_beta_solved_mean"])


def test_protocol_checks():
    preset = load_extension_preset(find_extension_preset("auto-beta", "quick"))
    protocol = protocol_of(preset, list(preset.cells))
    assert protocol.temperatures == (0.2, 0.5, 1.0) and protocol.select_temperature == 0.5
    assert protocol.grid == ("beta-0.1", "beta-0.5", "beta-1", "beta-2", "beta-5")
    assert protocol.candidates == ("auto-0.3", "auto-0.5", "auto-0.7", "auto-0.85")
    bad = copy.deepcopy(preset)
    bad.protocol = {"temperatures": [0.5], "select_temperature": 0.2}
    with pytest.raises(ValueError, match=r"protocol.select_temperature must be one of"):
        protocol_of(bad, list(bad.cells))
    bad.protocol = {"temperature": [0.5]}
    with pytest.raises(ValueError, match=r"protocol: unknown key\(s\) temperature"):
        protocol_of(bad, list(bad.cells))
    bad.protocol = {"temperatures": [0.5, -1]}
    with pytest.raises(ValueError, match=r"protocol.temperatures must be a non-empty list of numbers > 0"):
        protocol_of(bad, list(bad.cells))
    with pytest.raises(ValueError, match=r"at least one grid cell .* and one candidate"):
        protocol_of(preset, ["beta-1", "beta-2"])


def test_a_run_is_reused_only_for_the_same_resolved_config(tmp_path):
    preset = load_extension_preset(find_extension_preset("auto-beta", "quick"))
    config = cell_config(preset, "auto-0.5", ["loss.temperature=0.2"], 1)
    run = tmp_path / "run"
    assert not check_reusable(run, config)  # nothing there yet
    run.mkdir()
    recorded = {**config_to_dict(config), "git_revision": "abc"}
    recorded["train"]["threads"] = 7  # a runtime key: not a difference
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert check_reusable(run, config)
    grid = cell_config(preset, "beta-1", [], 1)
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(grid)))
    assert check_reusable(run, cell_config(preset, "beta-1", ["loss.auto_warmup_steps=3"], 1))  # not used at beta 1
    with pytest.raises(ValueError, match=r"differs in loss.auto_momentum, loss.auto_target, .*loss.beta"):
        check_reusable(run, config)
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    other = cell_config(preset, "auto-0.7", ["loss.temperature=0.5"], 1)
    with pytest.raises(ValueError, match=r"holds a run of another config \(it differs in loss.auto_target, loss.te"):
        check_reusable(run, other)


@pytest.fixture(scope="module")
def fashion_mnist():
    from hscl.data.images import DatasetNotFoundError, load_dataset

    try:
        load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not on disk (Debian package dataset-fashion-mnist)")


def test_end_to_end_at_a_tiny_budget(fashion_mnist, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["reproduce", "auto-beta", "--out", str(out), "--seeds", "0"]
    args += ["--methods", "beta-1,beta-5,auto-0.3,auto-0.85"]
    for item in [*TINY, "data.train_subset=120", "train.batch_size=40", "loss.auto_warmup_steps=1"]:
        args += ["--set", item]
    assert main([*args, "--workers", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert str(tmp_path) not in (out / "results.json").read_text()  # paths relative to the run folder
    assert results["selected_on"] == "validation" and results["config"] == "extensions/auto-beta/quick.yaml"
    cells = results["cells"]
    assert list(cells) == ["t0.2", "t0.5", "t1"]
    at_half = cells["t0.5"]
    target = results["target"]["key"]
    # the default target: the candidate with the best validation top-1 at 0.5, from the runs' own numbers
    assert target == max(["auto-0.3", "auto-0.85"], key=lambda k: at_half[k]["runs"][0]["val_linear_top1"])
    assert set(cells["t0.2"]) == set(cells["t1"]) == {"beta-1", "beta-5", target}
    for tag, verdict in results["verdicts"].items():
        grid = max(["beta-1", "beta-5"], key=lambda k: cells[tag][k]["runs"][0]["val_linear_top1"])
        gap = cells[tag][grid]["runs"][0]["linear_top1"] - cells[tag][target]["runs"][0]["linear_top1"]
        assert verdict["grid_selected"] == grid and verdict["gap_points"] == pytest.approx(gap)
        assert verdict["tolerance"] == 0.5 and verdict["within"] == (gap <= 0.5)  # one seed: no std
        run = cells[tag][target]["runs"][0]
        assert run["final_beta"] == run["curve"][-1]["beta"] and run["numerics"]["precision"] == "32-true"
        assert run["final_beta_solved"] == run["curve"][-1]["beta_solved"] > 0
    assert results["within_everywhere"] == all(v["within"] for v in results["verdicts"].values())
    text = (out / "auto_beta.md").read_text()
    assert "choices on validation" in text and "grid point selected on validation" in text
    assert results["numerics"]["precision"] == "32-true" and "Numerics: precision" in text
    assert ("NOT within" in text) == (not results["within_everywhere"])
    rows = _csv(out / "auto_beta.csv")
    assert len(rows) == 3 * 2 + 2 + 2 and {r["temperature"] for r in rows} == {"0.2", "0.5", "1.0"}
    trajectory = _csv(out / "beta_trajectory.csv")
    assert {(r["temperature"], r["series"]) for r in trajectory} >= {("0.2", "used"), ("1.0", "solved")}
    assert (out / "beta_trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the paper's protocol on the same runs (a target chosen on test may add its cells at 0.2 and 1.0)
    assert main([*args, "--select", "test"]) == 0
    on_test = json.loads((out / "results.json").read_text())
    assert on_test["selected_on"] == "test" and "choices on test (the paper's protocol)" in on_test["title"]
    assert on_test["target"]["key"] == max(["auto-0.3", "auto-0.85"], key=lambda k: at_half[k]["linear_top1_mean"])
    calls = _no_training(monkeypatch)
    assert main(args) == 0 and not calls  # every cell read back in this process
    assert json.loads((out / "results.json").read_text())["verdicts"] == results["verdicts"]
    assert main([*args, "--set", "train.lr=0.002"]) == 2 and not calls  # another config: refused, nothing trained
    assert main([*args, "--set", "eval.val_fraction=0"]) == 2  # no validation split to choose on
    assert main(["reproduce", "small-batch", "--workers", "2"]) == 2


def test_preset_type_keeps_the_protocol_optional():
    assert ExtensionPreset(experiment="auto-beta", base={}, cells={}).protocol == {}
