"""Options that several ``hscl`` commands share: ``--json``, ``--device``."""

from __future__ import annotations

import argparse


def check_json(path: str | None) -> None:
    """``--json FILE`` names a file in an existing folder: checked before the work starts."""
    from pathlib import Path

    if path is None:
        return
    if Path(path).is_dir():
        raise ValueError(f"--json {path} is a folder; name a file to write to (e.g. {Path(path) / 'result.json'})")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"--json {path}: the folder {Path(path).parent} does not exist")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N"
    )
