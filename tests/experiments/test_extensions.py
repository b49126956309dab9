"""``hscl reproduce multilabel | small-batch | auto-beta``: the packaged presets check out, each command runs end
to end at a tiny budget and writes its files, a finished cell is not trained again (auto-beta's protocol, choices
and verdict: test_auto_beta.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from helpers import assert_above_chance
from hscl.cli import main
from hscl.experiments import _extensions_outputs as outputs
from hscl.experiments.extensions import (
    EXPERIMENTS,
    cell_config,
    find_extension_preset,
    list_extension_presets,
    load_extension_preset,
    m_used,
)

#: a tiny budget for every cell: 1 epoch, a small model, small subsets, short probes
TINY = [
    "data.train_subset=64",
    "data.test_subset=32",
    "model.widths=[8, 16, 16, 32]",
    "model.hidden_dim=64",
    "model.projection_dim=16",
    "train.epochs=1",
    "train.knn_train=64",
    "train.knn_test=32",
    "train.knn_k=10",
    "train.precision=32",
    "train.channels_last=false",  # both pinned: no timing probe
    "train.progress=false",
    "eval.linear_epochs=2",
    "eval.linear_lr=0.05",  # 2 steps an epoch at a rate that fits the 64 images in 4 (1e-3 stays at chance)
    "eval.linear_batch_size=32",
    "diagnostics.enabled=false",
]


@pytest.fixture(scope="module")
def fashion_mnist():
    from hscl.data.images import DatasetNotFoundError, load_dataset

    try:
        load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not on disk (Debian package dataset-fashion-mnist)")


def _args(experiment: str, out: Path, *extra: str) -> list[str]:
    args = ["reproduce", experiment, "--preset", "quick", "--out", str(out), *extra]
    for item in TINY:
        args += ["--set", item]
    return args


def _csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _no_training(monkeypatch) -> list:
    """Make any training call fail the test; returns the list of calls (resumed cells go through it)."""
    import hscl.engine.pretrain.run as train_module

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(train_module, "train", refuse)
    return calls


# -- the presets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_packaged_quick_presets_resolve_for_every_cell_and_seed(experiment):
    assert "quick" in list_extension_presets(experiment)
    preset = load_extension_preset(find_extension_preset(experiment, "quick"))
    assert preset.experiment == experiment and preset.budget
    configs = {(k, s): cell_config(preset, k, [], s) for k in preset.cells for s in preset.seeds}
    assert all(c.train.seed == s for (_, s), c in configs.items())
    assert len({c.model.widths and tuple(c.model.widths) for c in configs.values()}) == 1  # one model
    if experiment == "multilabel":
        assert {c.loss.method for c in configs.values()} == {"ucl", "scl", "h-scl", "supcon"}
        assert {c.data.dataset for c in configs.values()} == {"fashion-mnist-mosaic"}
    if experiment == "small-batch":
        assert len(preset.seeds) == 3
        # a 2 x 2 design per batch: memory (0 / 4096) x M fixed at the batch's value 2B - 2 or the memory's
        # 2B + 4096 - 2 (two views per image), and SCL at the batch's M; M is explicit in every cell
        cells = {(c.train.batch_size, c.loss.method, c.loss.memory_size, c.loss.M) for c in configs.values()}
        expected = set()
        for b in (32, 64):
            expected |= {(b, "h-scl", k, m) for k in (0, 4096) for m in (2 * b - 2, 2 * b + 4096 - 2)}
            expected.add((b, "scl", 0, 2 * b - 2))
        assert cells == expected and all(c.data.views == 2 for c in configs.values())
    if experiment == "auto-beta":
        assert len(preset.seeds) == 3
        loss = [c.loss for (_, s), c in configs.items() if s == 0]
        assert sorted(lc.beta for lc in loss if lc.beta != "auto") == [0.1, 0.5, 1.0, 2.0, 5.0]
        assert sorted(lc.auto_target for lc in loss if lc.beta == "auto") == [0.3, 0.5, 0.7, 0.85]
        assert preset.protocol == {"temperatures": [0.2, 0.5, 1.0], "select_temperature": 0.5}
        assert {(c.eval.val_fraction, c.train.precision) for c in configs.values()} == {(0.1, "32")}


def test_a_bad_preset_is_refused_naming_the_key(tmp_path):
    folder = tmp_path / "extensions" / "auto-beta"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text("experiment: auto-beta\nbase: {}\ncells: {a: {label: A}}\nsed: [1]\n")
    with pytest.raises(ValueError, match=r"unknown key.*sed"):
        load_extension_preset(find_extension_preset("auto-beta", "mine", tmp_path))
    (folder / "mine.yaml").write_text("experiment: auto-beta\nbase: {}\ncells: {a: {label: A, loss: {}}}\n")
    with pytest.raises(ValueError, match=r"cells\.a must be a mapping with a label"):
        load_extension_preset(find_extension_preset("auto-beta", "mine", tmp_path))
    (folder / "mine.yaml").write_text("experiment: auto-beta\nbase: {train: {epoch: 3}}\ncells: {a: {label: A}}\n")
    preset = load_extension_preset(find_extension_preset("auto-beta", "mine", tmp_path))
    with pytest.raises(ValueError, match=r"unknown key.*epoch"):
        cell_config(preset, "a")
    with pytest.raises(ValueError, match=r"unknown preset 'nope' for extensions/auto-beta.*available: mine, quick"):
        find_extension_preset("auto-beta", "nope", tmp_path)
    assert main(["reproduce", "auto-beta", "--preset", "nope"]) == 2
    assert main(["reproduce", "auto-beta", "--methods", "beta-7", "--out", str(tmp_path / "o")]) == 2


# -- end to end at a tiny budget --------------------------------------------------------------------------------


def test_multilabel_end_to_end_and_resume(fashion_mnist, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = _args("multilabel", out, "--methods", "ucl,h-scl-beta", "--set", "train.batch_size=32")
    assert main(args) == 0
    text = (out / "results.json").read_text()
    results = json.loads(text)
    assert results["experiment"] == "multilabel" and list(results["cells"]) == ["ucl", "h-scl-beta"]
    assert results["config"] == "extensions/multilabel/quick.yaml" and str(tmp_path) not in text
    for entry in results["cells"].values():
        run = entry["runs"][0]
        assert run["multilabel"] and 0 <= run["linear_mAP"] <= 100 and 0 <= run["linear_micro_f1"] <= 100
        # one step of pre-training cannot show a fall; the probe does learn its 64 mosaics (a random scorer's mAP
        # is the classes' mean share of images, about 34 % for four digits of ten)
        assert run["linear_train_mAP"] >= 100 * (1 - 0.9**4) + 30, run["linear_train_mAP"]
        assert entry["linear_mAP_mean"] == run["linear_mAP"] and entry["linear_mAP_std"] == 0
        assert "knn_mAP" in run["curve"][0]
    table = (out / "multilabel.md").read_text()
    assert "| UCL |" in table and "| H-SCL(beta=1) |" in table and "linear mAP (%)" in table
    numerics = results["numerics"]  # every cell's record; one precision, pinned by --set train.precision=32
    assert set(numerics["cells"]) == {"UCL seed 0", "H-SCL(beta=1) seed 0"} and numerics["precision"] == "32-true"
    assert [e["runs"][0]["numerics"]["setting"] for e in results["cells"].values()] == ["32", "32"]
    assert "Numerics: precision 32-true (32); CPU" in table and "in all 2 cells (pinned)" in table
    rows = _csv(out / "multilabel.csv")
    assert [r["key"] for r in rows] == ["ucl", "h-scl-beta"] and float(rows[0]["linear_micro_f1_mean"]) >= 0
    assert (out / "knn_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "knn_map.csv").exists()
    assert "linear mAP" in capsys.readouterr().out

    first = (out / "ucl" / "seed0" / "eval.json").read_text()
    calls = _no_training(monkeypatch)
    assert main(args) == 0  # every cell finished: read back, nothing trained
    assert not calls and (out / "ucl" / "seed0" / "eval.json").read_text() == first
    assert main([*args, "--set", "train.epochs=3"]) == 2  # another setting: refused before anything trains
    err = capsys.readouterr().err
    assert f"{out / 'ucl' / 'seed0'} holds a run of another config (train.epochs: " in err and not calls
    assert main(["report", str(out)]) == 0
    assert "linear mAP (%)" in (out / "report.html").read_text()


def test_small_batch_seeds_subset_and_resume_of_an_interrupted_cell(fashion_mnist, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = _args("small-batch", out, "--methods", "b32-h-scl-memory,b64-scl", "--seeds", "0,1")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and list(results["cells"]) == ["b32-h-scl-memory", "b64-scl"]
    memory = results["cells"]["b32-h-scl-memory"]
    assert memory["batch_size"] == 32 and memory["loss"]["memory_size"] == 4096 and len(memory["runs"]) == 2
    top1 = [r["linear_top1"] for r in memory["runs"]]
    for run in (r for cell in results["cells"].values() for r in cell["runs"]):  # the probe learned its 64 images
        assert_above_chance(run["linear_train_top1"], 10, what="the probe's training top-1")
    assert memory["linear_top1_mean"] == pytest.approx(sum(top1) / 2)
    assert memory["linear_top1_std"] == pytest.approx(abs(top1[0] - top1[1]) / math.sqrt(2))
    assert all(r["step_seconds"] > 0 and r["curve"][0]["memory_rows"] == 2 * 64 for r in memory["runs"])
    assert memory["M"] == {"explicit": True, "value": 4158.0, "during_warmup": 4158.0}  # 2 * 32 + 4096 - 2
    assert results["cells"]["b64-scl"]["M"]["value"] == 126.0 and results["effects"] == []  # no 2 x 2 design here
    table = (out / "small_batch.md").read_text()
    assert "| 32 | H-SCL(beta=1) + memory 4096 | 4096 | 4158 |" in table and "| 64 | SCL | 0 | 126 |" in table
    assert "step (ms)" in table and "Effects apart" not in table
    rows = {r["key"]: r for r in _csv(out / "small_batch.csv")}
    assert rows["b32-h-scl-memory"]["M"] == "4158.0" and rows["b64-scl"]["M_during_warmup"] == "126.0"
    assert (out / "top1_vs_batch.png").exists() and (out / "small_batch.csv").exists()

    # an interrupted cell (its last checkpoint, no final one) is resumed; the finished ones are read back
    cell = out / "b64-scl" / "seed1"
    (cell / "final.ckpt").unlink()
    (cell / "eval.json").unlink()
    import hscl.engine.pretrain.run as train_module

    resumed = []
    original = train_module.train

    def spy(config, run_dir, **kwargs):
        resumed.append((Path(run_dir), kwargs["resume"]))
        return original(config, run_dir, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    assert main(args) == 0
    assert resumed == [(cell, True)]
    assert (cell / "eval.json").exists()


def test_m_used_by_a_cell_explicit_default_and_with_a_memory():
    preset = load_extension_preset(find_extension_preset("small-batch", "quick"))
    config = cell_config(preset, "b32-h-scl-memory-m-batch")
    assert m_used(config) == {"explicit": True, "value": 62.0, "during_warmup": 62.0}
    default = cell_config(preset, "b64-h-scl-memory", ["loss.M=null"])  # the default: the rows, memory counted
    assert m_used(default) == {"explicit": False, "value": 2 * 64 + 4096 - 2.0, "during_warmup": 2 * 64 - 2.0}
    assert outputs._m_text({"M": m_used(default)}) == "126 → 4222"
    assert m_used(cell_config(preset, "b32-scl", ["loss.M=null"]))["value"] == 62.0
    assert m_used(cell_config(preset, "b32-scl", ["loss.M=count"]))["value"] == "count"


def _fake_cell(batch: int, memory: int, M: float | None, top1: list[float], method: str = "h-scl") -> dict:
    views_rows = 2 * batch
    m = {"explicit": M is not None, "value": M or views_rows + memory - 2.0, "during_warmup": M or views_rows - 2.0}
    runs = [{"linear_top1": v, "knn_top1": v - 1.0} for v in top1]
    loss = {"method": method, "beta": 1.0, "memory_size": memory}
    return {"label": method, "method": method, "batch_size": batch, "loss": loss, "M": m, "runs": runs}


def test_memory_and_m_effects_are_paired_differences_over_seeds(tmp_path):
    cells = {
        "n-small": _fake_cell(32, 0, 62.0, [80.0, 81.0, 82.0]),
        "n-large": _fake_cell(32, 0, 4158.0, [81.0, 81.5, 83.0]),
        "m-small": _fake_cell(32, 4096, 62.0, [80.5, 82.0, 81.0]),
        "m-large": _fake_cell(32, 4096, 4158.0, [82.0, 83.0, 84.5]),
        "scl": _fake_cell(32, 0, 62.0, [70.0, 71.0, 72.0], method="scl"),  # another method: no design
        "default": _fake_cell(64, 4096, None, [1.0, 2.0, 3.0]),  # the default M: not a fixed-M cell
    }
    effects = {e["effect"]: e for e in outputs.memory_m_effects({"cells": cells})}
    assert set(effects) == set(outputs._EFFECTS) and all(e["batch_size"] == 32 for e in effects.values())

    def paired(a: str, b: str) -> tuple[float, float]:
        d = [x["linear_top1"] - y["linear_top1"] for x, y in zip(cells[a]["runs"], cells[b]["runs"])]
        mean = sum(d) / 3
        return mean, math.sqrt(sum((v - mean) ** 2 for v in d) / 2)

    for name, (a, b) in {
        "memory, M of the batch": ("m-small", "n-small"),  # differences 0.5, 1, -1
        "memory, M of the memory": ("m-large", "n-large"),
        "M, no memory": ("n-large", "n-small"),
        "M, with memory": ("m-large", "m-small"),
        "both (memory and its M)": ("m-large", "n-small"),
    }.items():
        e = effects[name]
        assert e["cells"] == [a, b] and (e["M_batch"], e["M_memory"], e["memory_size"]) == (62.0, 4158.0, 4096)
        assert (e["linear_top1_mean"], e["linear_top1_std"]) == pytest.approx(paired(a, b))
        assert e["knn_top1_mean"] == pytest.approx(paired(a, b)[0])  # kNN = linear - 1 in both cells
    assert effects["memory, M of the batch"]["linear_top1_mean"] == pytest.approx(0.5 / 3)

    # the page: every cell's M, and the effects table
    for entry in cells.values():
        for metric in EXPERIMENTS["small-batch"]:
            values = [r.get(metric, 0.03) for r in entry["runs"]]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = sum(values) / 3, 0.0
        entry["train_seconds_mean"] = 1.0
    results = {"experiment": "small-batch", "preset": "quick", "seeds": [0, 1, 2], "cells": cells}
    preset = load_extension_preset(find_extension_preset("small-batch", "quick"))
    outputs.write_outputs(results, tmp_path, cell_config(preset, "b32-h-scl"))
    text = (tmp_path / "small_batch.md").read_text()
    assert "| 32 | h-scl | 4096 | 62 | 81.17 |" in text and "| 64 | h-scl | 4096 | 126 → 4222 |" in text
    assert "| 32 | memory, M of the batch (M 62 / 4158) | m-small − n-small | +0.17 ± 1.04 | +0.17 ± 1.04 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["effects"][0]["cells"] == ["m-small", "n-small"]
    del cells["m-small"]  # an incomplete design gives no effects
    assert outputs.memory_m_effects({"cells": cells}) == []
