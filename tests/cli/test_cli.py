"""The hscl command line."""

from __future__ import annotations

import argparse
import math
import re

import pytest
import torch

from hscl.cli import main
from hscl.losses import LOSSES


def test_demo_prints_the_six_methods(capsys):
    assert main(["losses", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    values = {}
    for method in LOSSES:
        row = re.search(rf"^{re.escape(method)}\s+.*?(\d+\.\d+)\s+(\d+\.\d+)", out, re.MULTILINE)
        assert row, method
        values[method] = (float(row.group(1)), float(row.group(2)))  # (digits, random)
    # random 128-d directions are near-orthogonal: every e^g is about 1 and UCL about log(1 + M), M = 2B - 2
    assert values["ucl"][1] == pytest.approx(math.log(2 * 64 - 1), abs=0.1)
    # the two views of a digit are closer than random pairs: the real batch's UCL loss is clearly lower
    assert values["ucl"][0] < values["ucl"][1] - 0.1
    assert "H-SCL >= SCL: True" in out and "H-UCL >= UCL: True" in out


def test_set_takes_scientific_notation(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 3e-4\n  epochs: 1e1\n")
    sets = ["--set", "train.weight_decay=5e-4", "--set", "loss.temperature=1E-1"]
    assert main(["train", "--config", str(config), *sets, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "weight_decay: 0.0005" in out and "temperature: 0.1" in out
    assert "epochs: 10\n" in out


def test_a_value_that_is_not_a_number_is_one_line_naming_the_key(capsys):
    assert main(["train", "--set", "train.lr=1e-3x", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hscl: error: config.train.lr must be a number, got '1e-3x'"
    assert main(["train", "--set", "train.epochs=1e-3", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == "hscl: error: config.train.epochs must be an integer, got 0.001"


# ---------------------------------------------------------------------------------------------------------------
# one line, never a traceback; arguments checked before the work starts; no empty folders left behind


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_yaml_syntax_error_or_an_empty_config_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  lr: [0.1\n")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    assert _one_line(capsys).startswith(f"hscl: error: config file '{bad}' is not valid YAML: ")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\n")
    assert main(["train", "--config", str(empty), "--print-config"]) == 2
    assert f"config file '{empty}' is empty" in _one_line(capsys)
    assert main(["train", "--set", "train.lr=[1,", "--print-config"]) == 2
    assert "override 'train.lr=[1,': the value is not valid YAML" in _one_line(capsys)


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    missing = str(tmp_path / "missing.ckpt")  # never read: the arguments are refused first
    assert main(["diagnose", missing, "--probe-size", "0"]) == 2
    assert _one_line(capsys) == "hscl: error: --probe-size must be >= 4 (probe samples, two views each), got 0"
    assert main(["diagnose", missing, "--tau", "0"]) == 2
    assert "--tau must be > 0" in _one_line(capsys)
    assert main(["evaluate", missing, "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path} is a folder" in _one_line(capsys)
    assert main(["evaluate", missing, "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in _one_line(capsys)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["train", "--out", str(a_file), "--epochs", "1"]) == 2
    assert f"--out {a_file} is a file, not a folder" in _one_line(capsys)
    assert main(["reproduce", "table1", "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert main(["report", str(a_file)]) == 2
    assert f"{a_file} is a file; hscl report takes the folder of a run" in _one_line(capsys)


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    for out in (tmp_path / "new", tmp_path):  # a folder that does not exist, an empty one
        assert main(["train", "--out", str(out), "--resume"]) == 2
        assert f"--resume: {out} holds no run to continue" in _one_line(capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_a_gpu_run_without_a_gpu_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--accelerator", "gpu", "--out", str(out), "--epochs", "1"]) == 2
    assert "train.accelerator=gpu (--accelerator gpu), but torch sees no CUDA GPU" in _one_line(capsys)
    assert not out.exists()


def test_a_data_dir_without_the_data_is_an_error_naming_what_was_looked_for(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    out = tmp_path / "run"
    for folder in (empty, tmp_path / "nowhere"):  # an empty folder, a missing one: never the default data instead
        assert main(["train", "--dataset", "mnist", "--data-dir", str(folder), "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert f"--data-dir {folder}: dataset 'mnist' is not there" in line
        assert "train-images-idx3-ubyte" in line and f"{folder / 'mnist'}" in line
        assert not out.exists()
    experiment = tmp_path / "table1"
    args = ["reproduce", "table1", "--out", str(experiment), "--data-dir", str(empty), "--set", "data.dataset=mnist"]
    assert main(args) == 2
    assert f"--data-dir {empty}: dataset 'mnist' is not there" in _one_line(capsys)
    assert not experiment.exists()  # a failed command leaves no empty run folders


def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import hscl.engine.pretrain.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hscl.engine.pretrain.run, "load_task", interrupted)
    assert main(["evaluate", str(tmp_path / "final.ckpt")]) == 130
    assert _one_line(capsys) == "hscl: interrupted"
    monkeypatch.setattr(hscl.engine.pretrain.run, "load_data", interrupted)  # reproduce's start-up
    out = tmp_path / "t1"
    assert main(["reproduce", "table1", "--out", str(out)]) == 130
    assert "run the same command again to continue" in _one_line(capsys)
    assert not out.exists()


def test_final_checkpoint_is_printed_by_rank_zero_only(tmp_path, capsys, monkeypatch):
    import hscl.engine.pretrain.run

    monkeypatch.setattr(hscl.engine.pretrain.run, "train", lambda config, out, resume=False: tmp_path / "final.ckpt")
    for local_rank, printed in (("1", False), ("0", True)):  # what Lightning's launcher gives its processes
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert main(["train", "--out", str(tmp_path / "run"), "--devices", "2"]) == 0
        assert ("final checkpoint:" in capsys.readouterr().out) == printed


def test_help_texts_hold_no_markup():
    from hscl.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    assert len(texts) == 10
    for text in texts:
        assert "`" not in text and ":func:" not in text and ":class:" not in text, text


def test_presets_lists_every_experiment(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for experiment in ("table1", "table2", "schane", "multilabel", "small-batch", "auto-beta"):
        assert re.search(rf"^  {experiment}: .*\bquick\b", out, re.MULTILINE), experiment
    assert "`" not in out


def test_a_finetuned_model_is_named_by_evaluate_and_diagnose(tmp_path, capsys):
    from hscl.engine.finetune.loop import FineTuneModel
    from hscl.models import build_model

    model = FineTuneModel(build_model("convnet", 1, projection_dim=8, hidden_dim=16, widths=(4, 4, 4, 4)), 3)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    for command in ("evaluate", "diagnose"):
        assert main([command, str(path)]) == 2
        line = _one_line(capsys)
        assert (
            f"{path}: the weights of a `hscl finetune` model (an encoder with a linear classifier of 3 classes)" in line
        )
        assert "final.ckpt of `hscl train`" in line
