"""``hscl report FOLDER``: one self-contained HTML page of a run or an experiment folder."""

from __future__ import annotations

import argparse


def add_report(sub: argparse._SubParsersAction) -> None:
    """Declare ``hscl report``."""
    rep = sub.add_parser("report", help="one self-contained HTML page of a run or experiment directory")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output file (default <run_dir>/report.html)")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hscl.engine.evaluation.report import html_report

    if Path(args.run_dir).is_file():
        raise ValueError(
            f"{args.run_dir} is a file; hscl report takes the folder of a run or an experiment "
            f"(e.g. {Path(args.run_dir).parent})"
        )
    path = html_report(args.run_dir, args.out)
    print(f"written: {path}")
    return 0
