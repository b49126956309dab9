"""The hscl command line."""

from __future__ import annotations

import re

from hscl.cli import main
from hscl.losses import LOSSES


def test_demo_prints_the_six_methods(capsys):
    assert main(["losses", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    for method in LOSSES:
        row = re.search(rf"^{re.escape(method)}\s+.*?(\d+\.\d+)\s+(\d+\.\d+)", out, re.MULTILINE)
        assert row, method
        assert float(row.group(1)) > 0
    assert "H-SCL >= SCL: True" in out and "H-UCL >= UCL: True" in out
