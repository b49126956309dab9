"""``hscl reproduce multilabel | small-batch | auto-beta``: the packaged presets check out, each command runs end
to end at a tiny budget and writes its files, a finished cell is not trained again (auto-beta's protocol, choices
and verdict: test_auto_beta.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from hscl.cli import main
from hscl.experiments.extensions import (
    EXPERIMENTS,
    cell_config,
    find_extension_preset,
    list_extension_presets,
    load_extension_preset,
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
    import hscl.engine.train as train_module

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
        cells = {(c.train.batch_size, c.loss.method, c.loss.memory_size) for c in configs.values()}
        assert cells == {(b, m, k) for b in (32, 64) for m, k in (("h-scl", 0), ("h-scl", 4096), ("scl", 0))}
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
    with pytest.raises(ValueError, match=r"unknown preset 'nope' for auto-beta.*available: mine, quick"):
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
    assert memory["linear_top1_mean"] == pytest.approx(sum(top1) / 2)
    assert memory["linear_top1_std"] == pytest.approx(abs(top1[0] - top1[1]) / math.sqrt(2))
    assert all(r["step_seconds"] > 0 and r["curve"][0]["memory_rows"] == 2 * 64 for r in memory["runs"])
    table = (out / "small_batch.md").read_text()
    assert "| 32 | H-SCL(beta=1) + memory 4096 | 4096 |" in table and "| 64 | SCL | 0 |" in table
    assert "step (ms)" in table
    assert (out / "top1_vs_batch.png").exists() and (out / "small_batch.csv").exists()

    # an interrupted cell (its last checkpoint, no final one) is resumed; the finished ones are read back
    cell = out / "b64-scl" / "seed1"
    (cell / "final.ckpt").unlink()
    (cell / "eval.json").unlink()
    import hscl.engine.train as train_module

    resumed = []
    original = train_module.train

    def spy(config, run_dir, **kwargs):
        resumed.append((Path(run_dir), kwargs["resume"]))
        return original(config, run_dir, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    assert main(args) == 0
    assert resumed == [(cell, True)]
    assert (cell / "eval.json").exists()
