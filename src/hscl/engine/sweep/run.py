"""Grid sweeps: one trial per grid point, recorded in an Optuna study (SQLite, PostgreSQL, MySQL or a journal file).

The H-SCL paper picks its hyper-parameters by grid search (Sec. V-A): beta in {0.1, 0.5, 1, 2, 5}
for H-SCL(beta), and the start / end of the threshold schedule of eq. (4) in {-0.5, -0.3, -0.1} x
{-0.1, 0, 0.1} for H-SCL(tau). ``hscl sweep CONFIG --grid beta=0.1,0.5,1,2,5`` runs each point of
the product of the ``--grid`` options as one trial: pre-training (:func:`hscl.engine.pretrain.run.train`, resumed
from its checkpoint when the point was interrupted) then linear-probe and kNN evaluation.

Any number of workers share one Optuna study (``<out>/study.db``, SQLite, by default; a PostgreSQL or
MySQL database for workers on several machines) and an interrupted sweep resumes where it stopped, with
no point lost or run twice: see :mod:`hscl.engine.sweep.study`.

When every point is complete, the sweep writes ``sweep_results.{csv,json,md}`` (the metrics per
point and the best point) and ``accuracy_vs_<parameter>.png`` (with its data as ``.csv``).

Which split selects the best point (``select``): ``"validation"`` (default) holds part of the training split out
(``eval.val_fraction``; set to :data:`DEFAULT_VAL_FRACTION` when the config leaves it at 0, and said so), picks
the point of the best validation ``val_<metric>`` and reports that point's test ``<metric>``: a test accuracy
no choice has seen. ``"test"`` is the paper's protocol, the best ``<metric>`` over the grid on the test split
(an optimistic number); every output says which it was (``selected_on`` in the JSON, the title, the best line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from hscl.engine.runtime.config import RunConfig
from hscl.engine.sweep.gpus import _visible_gpu, worker_gpus
from hscl.engine.sweep.results import write_results
from hscl.engine.sweep.spec import Sweep, point_slug
from hscl.engine.sweep.study import (
    _claim,
    _finish,
    _Heartbeat,
    _open_study,
    _status,
    _study_lock,
    point_key,
)

__all__ = ["run_sweep", "run_worker", "summary", "train_and_evaluate", "trial_function"]


# --------------------------------------------------------------------------------------------
# the default trial: pre-train, then evaluate


TrialFn = Callable[[RunConfig, Path], dict]

_DATA_CACHE: dict = {}


def train_and_evaluate(config: RunConfig, run_dir: Path) -> dict:
    """Pre-train ``config`` into ``run_dir`` (resuming its checkpoint) and evaluate the encoder.

    Returns the linear probe's top-1 / top-5 and the kNN top-1 on the test split (in %), with
    ``eval.val_fraction > 0`` the same on the held-out validation images (``val_*``), and the seconds spent;
    also written to ``run_dir/eval.json`` (a finished point is not evaluated twice).
    """
    from hscl.engine.evaluation.probes import evaluate_task
    from hscl.engine.pretrain.run import load_data, load_task, run_paths, train
    from hscl.engine.runtime.runs import train_seconds

    paths = run_paths(run_dir)
    eval_file = Path(run_dir) / "eval.json"
    if eval_file.exists() and paths.final.exists():
        return json.loads(eval_file.read_text())
    dc = config.data
    key = (dc.dataset, dc.data_dir, dc.train_subset, dc.test_subset, config.train.seed, config.eval.val_fraction)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(config)
    data = _DATA_CACHE[key]
    if not paths.final.exists():
        train(config, run_dir, resume=True, data=data)
    task, _ = load_task(paths.final)
    # the epochs' training time, summed across resumes (an interrupted trial counts its epochs before too)
    result = {**evaluate_task(task, data, config), "train_seconds": train_seconds(run_dir)}
    eval_file.write_text(json.dumps(result, indent=2))
    return result


#: what a launcher (torchrun, srun, Lightning's multi-node variables) tells a process about a distributed job;
#: a trial is one process on one device, so its Trainer and writer must not read them (``srun hscl sweep`` would
#: otherwise make Lightning expect ``--ntasks`` processes, and tasks other than 0 would not write their runs)
_LAUNCHER_VARIABLES = (
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE"),
    *("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"),
    *("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES"),
)


@contextlib.contextmanager
def _single_process_env():
    """Hide the launcher's distributed-job variables from a trial (restored after it)."""
    saved = {key: os.environ.pop(key) for key in _LAUNCHER_VARIABLES if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def run_worker(sweep: Sweep, *, trial_fn: TrialFn | None = None, progress: bool = True, poll: float = 1.0) -> int:
    """Run pending points of ``sweep`` until every point is complete (or failed in this worker).

    Returns the number of trials this worker completed. Points running in other live workers are
    waited for (and taken over if their worker dies), so when this returns the sweep is finished
    unless some point failed with an error.
    """
    from optuna.trial import TrialState
    from tqdm import tqdm

    fn = trial_fn or trial_function(sweep)
    points = sweep.points
    for point in points:  # every point's config is valid before anything runs
        sweep.point_config(point)
    with _study_lock(sweep):
        study, storage = _open_study(sweep)
    errored: set[str] = set()
    done = 0
    bar = None
    if progress:
        complete = sum(e["complete"] is not None for e in _status(study, points).values())
        bar = tqdm(total=len(points), initial=complete, desc=f"sweep {sweep.out_dir.name}", unit="point")
    try:
        while True:
            trial_id, point = _claim(sweep, study, storage, errored)
            if trial_id is None:
                if point == 0:  # nothing pending, nothing running elsewhere
                    break
                time.sleep(poll)  # points run in other workers: wait for them (or for them to turn stale)
                continue
            config = sweep.point_config(point)
            run_dir = sweep.run_dir(point)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "point.json").write_text(json.dumps(point))
            with _Heartbeat(storage, trial_id, sweep.heartbeat):
                try:
                    with _single_process_env():
                        metrics = fn(config, run_dir)
                except KeyboardInterrupt:
                    _finish(storage, trial_id, TrialState.FAIL, failure="interrupted")
                    raise
                except Exception as err:  # a broken point must not stop the others
                    reason = f"{type(err).__name__}: {err}"[:2000]
                    _finish(storage, trial_id, TrialState.FAIL, failure="error", failure_reason=reason)
                    errored.add(point_key(point))
                    print(f"hscl sweep: point {point_slug(point)} failed: {type(err).__name__}: {err}", flush=True)
                    continue
            _check_trial_metrics(sweep, metrics)
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if not _finish(storage, trial_id, TrialState.COMPLETE, clean[sweep.selection_key], metrics=clean):
                # judged stale while it ran (its heartbeats did not reach the storage): another worker owns the
                # point now, and a point has one COMPLETE trial
                print(f"hscl sweep: point {point_slug(point)} was taken over by another worker", flush=True)
                continue
            done += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{point_slug(point)}: {sweep.selection_key} {clean[sweep.selection_key]:.2f}")
    finally:
        if bar is not None:
            bar.close()
    return done


def _check_trial_metrics(sweep: Sweep, metrics: dict) -> None:
    """The trial returned the test metric, and the validation one when the sweep selects on it."""
    for key in dict.fromkeys((sweep.metric, sweep.selection_key)):
        if key not in metrics:
            hint = (
                "; selecting on validation needs the trial's score on the held-out images (eval.val_fraction > 0, "
                "the val_* keys of evaluate_task), or select on test"
                if key != sweep.metric
                else ""
            )
            raise ValueError(f"the trial function returned {sorted(metrics)}, without the metric {key!r}{hint}")


# --------------------------------------------------------------------------------------------
# entry point


def _worker_main(sweep: Sweep, threads: int | None, gpu: str | None = None) -> None:
    if gpu is not None:  # this worker's GPU, before anything starts CUDA in the process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_worker(sweep, progress=False)


def _watch(sweep: Sweep, procs: list, progress: bool, poll: float = 0.5) -> None:
    """Wait for the worker processes, with a progress bar over the study's complete points."""
    from tqdm import tqdm

    with _study_lock(sweep):
        study, _ = _open_study(sweep)
    points = sweep.points
    bar = tqdm(total=len(points), desc=f"sweep {sweep.out_dir.name}", unit="point", disable=not progress)
    while True:
        alive = any(proc.is_alive() for proc in procs)
        complete = sum(e["complete"] is not None for e in _status(study, points).values())
        bar.update(complete - bar.n)
        if not alive:
            break
        time.sleep(poll)
    bar.close()
    for proc in procs:
        proc.join()


def run_sweep(
    sweep: Sweep, *, workers: int = 1, trial_fn: TrialFn | None = None, progress: bool = True, gpus: list | None = None
) -> dict:
    """Run the sweep with ``workers`` processes sharing its study, then write the results.

    With one worker the trials run in this process. Other workers may be started at any time with the
    same arguments (here or in other shells): they share the study. The workers spread over the GPUs
    (:func:`worker_gpus`: ``gpus``, or worker ``i`` on GPU ``i mod n``). Returns :func:`write_results`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    assignment = worker_gpus(workers, gpus)
    if gpus is not None or (workers > 1 and assignment[0] is not None):
        print(f"hscl sweep: worker GPUs (CUDA_VISIBLE_DEVICES) {', '.join(map(str, assignment))}", flush=True)
    for point in sweep.points:
        sweep.point_config(point)
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    saved = {**dataclasses.asdict(sweep), "storage": sweep.storage_spec.label}  # no database password on disk
    (sweep.out_dir / "sweep.json").write_text(json.dumps(saved, indent=2))
    if workers == 1:
        with _visible_gpu(assignment[0] if gpus is not None else None):
            run_worker(sweep, trial_fn=trial_fn, progress=progress)
    else:
        if trial_fn is not None:
            raise ValueError("with several workers the trial function is given by name (Sweep.trial)")
        import multiprocessing

        with _study_lock(sweep):  # the storage works (one line if not) and its tables exist before the workers
            _open_study(sweep)
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=_worker_main, args=(sweep, threads, gpu)) for gpu in assignment]
        for proc in procs:
            proc.start()
        try:
            _watch(sweep, procs, progress)
        except KeyboardInterrupt:  # the workers got the signal too: they mark their trials and stop
            for proc in procs:
                proc.join()
            raise
        if any(proc.exitcode != 0 for proc in procs):
            codes = [proc.exitcode for proc in procs]
            raise RuntimeError(f"sweep workers exited with codes {codes}; run the same command again to resume")
    result = write_results(sweep)
    return result


def summary(result: dict) -> str:
    """The printed summary of a sweep's results."""
    lines = [result["title"], "", result["table_markdown"], "", result["best_text"]]
    if not result["complete"]:
        lines.append("(incomplete: run the same command again to finish the remaining points)")
    if result.get("plot"):
        lines.append(f"written: sweep_results.csv/.json/.md, {Path(result['plot']).name} (+ .csv)")
    return "\n".join(lines)


def trial_function(sweep: Sweep) -> TrialFn:
    """The sweep's trial function: its ``trial`` (``module:function``), else :func:`train_and_evaluate`."""
    if sweep.trial is None:
        return train_and_evaluate
    module, _, name = sweep.trial.partition(":")
    if not module or not name:
        raise ValueError(f"trial must look like module:function, got {sweep.trial!r}")
    return getattr(importlib.import_module(module), name)
