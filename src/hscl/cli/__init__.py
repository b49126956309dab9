"""The ``hscl`` command line.

* ``hscl train``: pre-train one configuration (YAML and/or flags); ``--resume`` continues it.
* ``hscl evaluate CHECKPOINT``: linear probe + kNN on frozen features of any hscl checkpoint.
* ``hscl reproduce table1 --preset quick``: the paper's Table I and Fig. 1 (``make demo``).
* ``hscl reproduce table2 --dataset molecules``: Table II, graph contrastive learning (GIN) + SVM.
* ``hscl losses``: the six methods' losses on a real batch (scikit-learn digits, two augmented
  views, a fixed random projection to 128-d) next to random embeddings, with their timings.
"""

from __future__ import annotations

import argparse
import sys

from hscl import __version__
from hscl.cli.finetune import add_finetune
from hscl.cli.losses import add_losses
from hscl.cli.reproduce import add_reproduce
from hscl.cli.train import add_diagnose, add_evaluate, add_presets, add_report, add_sweep, add_train
from hscl.engine.checkpoints import CheckpointError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``hscl`` parser: one sub-parser per command, each declared by its module's ``add_<command>``."""
    parser = argparse.ArgumentParser(prog="hscl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hscl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_train,
        add_sweep,
        add_evaluate,
        add_reproduce,
        add_diagnose,
        add_finetune,
        add_report,
        add_presets,
        add_losses,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input (config, argument, checkpoint file) is one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CheckpointError as err:  # a checkpoint / weights file: one line naming the file and what is wrong
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2
