"""The hscl command line: pre-training, evaluation and the paper's experiments.

* ``hscl train``: pre-train one configuration (YAML and/or flags); ``--resume`` continues it.
* ``hscl evaluate CHECKPOINT``: linear probe + kNN on frozen features of any hscl checkpoint.
* ``hscl reproduce table1 --preset quick``: the paper's Table I and Fig. 1 (``make demo``).
* ``hscl reproduce table2 --dataset molecules``: Table II, graph contrastive learning (GIN) + SVM.
* ``hscl losses``: the six methods' losses on a real batch (scikit-learn digits, two augmented
  views, a fixed random projection to 128-d) next to random embeddings, with their timings.

A bad input is one line on stderr and exit code 2, Ctrl-C one line and exit code 130 (:func:`main`); a failed
command leaves no empty output folder behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hscl import __version__
from hscl.cli.diagnose import add_diagnose
from hscl.cli.evaluate import add_evaluate
from hscl.cli.finetune import add_finetune
from hscl.cli.losses import add_losses
from hscl.cli.presets import add_presets
from hscl.cli.report import add_report
from hscl.cli.reproduce import add_reproduce
from hscl.cli.sweep import add_sweep
from hscl.cli.train import add_train

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


#: the commands whose ``--out`` is a folder they write into
_OUT_FOLDERS = ("train", "sweep", "reproduce", "finetune")


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input (config, argument, checkpoint file) is one line on stderr and exit code 2,
    Ctrl-C one line (what was saved, how to continue) and exit code 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out) if args.command in _OUT_FOLDERS and getattr(args, "out", None) else None
    new_out = out is not None and not out.exists()
    try:
        if out is not None and out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a folder: name a folder to write into")
        return args.func(args)
    except KeyboardInterrupt as err:
        print(f"hscl: {_interrupted(args, err)}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        # a checkpoint / weights file (CheckpointError), a config, an argument: one line naming what is wrong
        print(f"hscl: error: {err}", file=sys.stderr)
        return 2
    finally:
        if new_out:
            _remove_empty_folders(out)


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    """The line Ctrl-C prints: what was saved and how to continue."""
    from hscl.engine.runtime.runs import TrainingInterrupted

    if args.command == "reproduce":
        return (
            "interrupted; run the same command again to continue (finished runs are reused, an interrupted one "
            "resumes from its last checkpoint)"
        )
    if isinstance(err, TrainingInterrupted) and args.command == "train":
        if err.epochs_done == 0:
            return f"interrupted before the first epoch ended; nothing was saved in {err.run_dir}"
        return (
            f"interrupted; {err.run_dir}/checkpoints/last.ckpt holds epoch {err.epochs_done} of {err.epochs}: "
            "continue with the same command and --resume"
        )
    return "interrupted"


def _remove_empty_folders(root: Path) -> None:
    """Remove ``root`` and the folders under it that hold no file (a command that failed made them)."""
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(Path(entry[0]).parts)):
        try:
            Path(folder).rmdir()  # only an empty folder goes
        except OSError:
            pass
