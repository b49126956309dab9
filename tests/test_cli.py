"""The hscl command line."""

from __future__ import annotations

import math
import re

import pytest

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
