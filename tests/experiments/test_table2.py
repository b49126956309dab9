"""``hscl reproduce table2`` on a TU-format fixture: outputs, resume, protocol checks and the CLI."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("torch_geometric")

from hscl.cli import main
from hscl.experiments._table2_config import Table2Config, find_table2_preset, load_table2_config, table2_variants
from hscl.experiments.table2 import reproduce_table2


def _write_tu(raw, name: str, count: int = 20) -> None:
    """Cycles (label 2) and stars (label 5) of 4..6 nodes with 2 node labels, in the TU text format."""
    raw.mkdir(parents=True)
    a, indicator, node_labels, labels = [], [], [], []
    offset = 0
    for g in range(count):
        n = 4 + g % 3
        pairs = [(i, (i + 1) % n) for i in range(n)] if g % 2 == 0 else [(0, i) for i in range(1, n)]
        for i, j in pairs:
            a += [f"{offset + i + 1}, {offset + j + 1}", f"{offset + j + 1}, {offset + i + 1}"]
        indicator += [str(g + 1)] * n
        node_labels += [str(k % 2) for k in range(n)]
        labels.append("2" if g % 2 == 0 else "5")
        offset += n
    files = {"A": a, "graph_indicator": indicator, "node_labels": node_labels, "graph_labels": labels}
    for part, lines in files.items():
        (raw / f"{name}_{part}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def tu_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSCL_DATA", raising=False)
    _write_tu(tmp_path / "tu" / "TINY" / "raw", "TINY")
    return tmp_path / "tu"


def _config(tu_dir, **eval_kw) -> Table2Config:
    overrides = [
        "datasets=[tu:TINY]",
        "methods=[ucl, h-scl]",
        "betas=[1.0, 10.0]",
        f"data_dir={tu_dir}",
        "model.hidden=8",
        "train.epochs=2",
        "train.batch_size=8",
        "eval.folds=2",
        "eval.repeats=1",
        "eval.inner_folds=2",
        "eval.C=[0.1, 10.0]",
        *[f"eval.{k}={v}" for k, v in eval_kw.items()],
    ]
    return load_table2_config(None, overrides)


def test_reproduce_writes_the_table_and_resumes(tu_dir, tmp_path, monkeypatch, capsys):
    config = _config(tu_dir)
    out = tmp_path / "run"
    results = reproduce_table2(config, out)
    variants = [o.label for o in table2_variants(config)]
    assert variants == ["UCL", "H-SCL(beta=1)", "H-SCL(beta=10)"]
    units = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    assert len(units) == 3 * 2  # variants x folds
    # supervised variants pre-train on the training fold only; UCL once on all 20 graphs
    assert {u["train_graphs"] for u in units if u["method"] == "h-scl"} == {10}
    assert {u["train_graphs"] for u in units if u["method"] == "ucl"} == {20}
    cell = results["table"]["TINY"]["h-scl-b10"]
    accs = [u["accuracy"] for u in units if u["variant"] == "h-scl-b10"]
    assert cell["mean"] == pytest.approx(sum(accs) / 2) and cell["n_folds"] == 2
    with (out / "table2.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == variants
    assert (out / "table2.png").stat().st_size > 1000 and (out / "table2.md").is_file()
    # graph pre-training runs in float32: every unit and cell records it, the table states it
    assert {u["numerics"]["precision"] for u in units} == {"32-true"} and cell["numerics"]["precision"] == "32-true"
    assert results["numerics"]["precision"] == "32-true" and len(results["numerics"]["cells"]) == 3
    assert "Numerics: precision 32-true; CPU" in (out / "table2.md").read_text()
    printed = capsys.readouterr().out
    assert "| method | TINY |" in printed and "H-SCL(beta=10)" in printed and " ± " in printed

    # resume: every unit is recorded, so nothing is trained again
    def fail(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr("hscl.experiments.table2.pretrain_graph_encoder", fail)
    monkeypatch.setattr("hscl.experiments.table2.svm_accuracy", fail)
    again = reproduce_table2(config, out)
    assert again["table"] == results["table"]
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        reproduce_table2(load_table2_config(None, [*_overrides_of(config), "train.epochs=3"]), out)


def _overrides_of(config: Table2Config) -> list[str]:
    return [
        "datasets=[tu:TINY]",
        f"data_dir={config.data_dir}",
        "methods=[ucl, h-scl]",
        "betas=[1.0, 10.0]",
        "model.hidden=8",
        "train.batch_size=8",
        "eval.folds=2",
        "eval.repeats=1",
        "eval.inner_folds=2",
        "eval.C=[0.1, 10.0]",
    ]


def test_interrupted_run_continues_after_the_last_unit(tu_dir, tmp_path, monkeypatch):
    import hscl.experiments.table2 as gr

    config = _config(tu_dir)
    out = tmp_path / "run"
    real = gr.svm_accuracy
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # during UCL's second fold
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gr, "svm_accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce_table2(config, out)
    assert len((out / "units.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(gr, "svm_accuracy", real)
    pretrained = []
    real_pretrain = gr.pretrain_graph_encoder
    monkeypatch.setattr(gr, "pretrain_graph_encoder", lambda *a, **k: pretrained.append(1) or real_pretrain(*a, **k))
    reproduce_table2(config, out)
    assert len((out / "units.jsonl").read_text().splitlines()) == 6
    assert len(pretrained) == 4  # H-SCL(beta=1, 10) x folds 0, 1; UCL's embeddings come from the cache


def test_config_checks():
    with pytest.raises(ValueError, match="unknown key"):
        load_table2_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match="methods"):
        load_table2_config(None, ["methods=[supcon]"])
    with pytest.raises(ValueError, match=r"eval\.folds"):
        load_table2_config(None, ["eval.folds=1"])
    with pytest.raises(ValueError, match="estimator"):
        load_table2_config(None, ["train.estimator=dv"])
    quick = load_table2_config(find_table2_preset("quick"))
    assert quick.datasets == ["molecules"] and quick.betas == [1.0, 2.0, 10.0]
    assert quick.methods == ["untrained", "ucl", "h-ucl", "scl", "h-scl"]
    paper = load_table2_config(find_table2_preset("paper"))
    assert paper.datasets == ["MUTAG", "ENZYMES", "PTC_MR", "IMDB-BINARY", "IMDB-MULTI"]
    assert (paper.train.epochs, paper.train.batch_size, paper.train.lr) == (200, 128, 0.01)
    assert (paper.eval.folds, paper.eval.repeats, paper.model.hidden, paper.model.num_layers) == (10, 10, 32, 3)
    with pytest.raises(ValueError, match=r"unknown preset .nope. for table2"):
        find_table2_preset("nope")


def test_cli_table2(tu_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["reproduce", "table2", "--dataset", "tu:TINY", "--data-dir", str(tu_dir), "--methods", "untrained,scl",
            "--epochs", "1", "--folds", "2", "--repeats", "1", "--out", str(out),
            "--set", "eval.inner_folds=2", "--set", "model.hidden=4"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| SCL |" in printed and "| untrained GIN |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["train"]["epochs"] == 1 and list(results["table"]["TINY"]) == ["untrained", "scl"]
    units = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    assert {u["final_loss"] for u in units if u["variant"] == "untrained"} == {None}  # never trained
    assert main(["reproduce", "table2", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "methods" in capsys.readouterr().err
