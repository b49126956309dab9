"""Grid sweeps: one trial per point in a resumable Optuna study (SQLite on one machine, a server across
machines), workers spread over the visible GPUs, results selected on validation."""

from hscl.engine.sweep.run import run_sweep, summary, train_and_evaluate
from hscl.engine.sweep.spec import METRICS, Sweep, parse_grid

__all__ = ["METRICS", "Sweep", "parse_grid", "run_sweep", "summary", "train_and_evaluate"]
