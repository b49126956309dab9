"""The Optuna study of a sweep: storage, the lock between workers, claims, heartbeats, stale trials.

Bookkeeping. Every trial lives in an Optuna study (``<out>/study.db``, SQLite). A worker claims a
grid point under an exclusive file lock next to the database (``study.db.lock``): it reads the
study, marks stale trials failed, picks the first point with neither a COMPLETE nor a live RUNNING
trial, and creates that point's trial, all before releasing the lock, so no two workers ever run
the same point and a finished point is never run again. While a trial runs, a thread stamps a
heartbeat on it. A RUNNING trial is stale when the worker that owns it is gone: on this machine,
its process no longer exists (a kill, a crash, a reboot); on another machine, its heartbeat is
older than ``stale_after`` seconds. A stale trial is marked FAIL (``failure = "stale"``) and its
point is claimed again, its training resuming from the point's last checkpoint. So any number of
workers (``--workers N``, or the same command started in other shells on this machine) share one
study, and an interrupted sweep resumes where it stopped with no point lost or run twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hscl.engine.config import config_to_dict

if TYPE_CHECKING:
    from hscl.engine.sweep import Sweep

STUDY_NAME = "hscl-sweep"
#: config settings that do not change a trial's result: they may differ between workers and runs
_NOT_IDENTITY = (("train", "progress"), ("train", "threads"), ("data", "data_dir"))


def point_key(point: dict) -> str:
    """The identity of a grid point in the study (canonical JSON)."""
    return json.dumps(point, sort_keys=True)


def _machine() -> str:
    """This machine (and PID namespace): processes on it can be checked by id."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (to tell it from a later process with the same id)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime in clock ticks after boot


def _process_alive(pid: int, start: str | None) -> bool:
    if start is not None and Path("/proc").is_dir():
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_identity() -> dict:
    pid = os.getpid()
    return {"machine": _machine(), "pid": pid, "start": _process_start(pid)}


def _lock_path(sweep: Sweep) -> Path:
    return Path(f"{sweep.db_path}.lock")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock between processes (released by the kernel if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_study(sweep: Sweep):
    """The study of ``sweep`` (created on first use), and its storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep.db_path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{sweep.db_path.resolve()}", engine_kwargs={"connect_args": {"timeout": 120}}
    )
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),  # each trial's parameters are fixed by its point
        load_if_exists=True,
    )
    base = json.loads(json.dumps(config_to_dict(sweep.base_config())))
    for section, key in _NOT_IDENTITY:  # settings that do not change a trial's result
        base[section].pop(key, None)
    attrs = study.user_attrs
    if "base_config" not in attrs:
        study.set_user_attr("base_config", base)
        study.set_user_attr("metric", sweep.metric)
        study.set_user_attr("trial", sweep.trial or "hscl.engine.sweep:train_and_evaluate")
    else:
        if attrs["base_config"] != base:
            changed = sorted(_diff_keys(attrs["base_config"], base))
            raise ValueError(
                f"the study in {sweep.db_path} was run with another base config (differs in {', '.join(changed)}); "
                "use another --out / --storage, or the same config and --set options"
            )
        if attrs.get("metric") != sweep.metric:
            raise ValueError(f"the study in {sweep.db_path} maximises {attrs.get('metric')!r}, not {sweep.metric!r}")
    return study, storage


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _is_stale(trial, now: float, stale_after: float, machine: str) -> str | None:
    """Why a RUNNING trial is stale (its worker is gone), or None while its worker lives."""
    worker = trial.user_attrs.get("worker")
    if worker is None:  # not claimed by this module (e.g. created by hand): judge by age alone
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return "no worker recorded" if now - started > stale_after else None
    if worker["machine"] == machine:
        if not _process_alive(worker["pid"], worker.get("start")):
            return f"worker process {worker['pid']} on this machine is gone"
        return None
    beat = trial.user_attrs.get("heartbeat", 0.0)
    if now - beat > stale_after:
        return f"no heartbeat from {worker['machine'].split('/')[0]} for {now - beat:.0f} s"
    return None


def _trial_id(storage, study, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def _fail_stale(study, storage, sweep: Sweep) -> list[int]:
    """Mark the stale RUNNING trials FAIL (``failure="stale"``); returns their numbers."""
    from optuna.trial import TrialState

    now, machine, failed = time.time(), _machine(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _is_stale(trial, now, sweep.stale_after, machine)
        if reason is None:
            continue
        trial_id = _trial_id(storage, study, trial.number)
        storage.set_trial_user_attr(trial_id, "failure", "stale")
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _status(study, points: list[dict]) -> dict[str, dict]:
    """Per point key: its COMPLETE trial (or None), whether one is RUNNING, and its failures."""
    from optuna.trial import TrialState

    status = {point_key(p): {"point": p, "complete": None, "running": False, "failures": []} for p in points}
    for trial in study.get_trials(deepcopy=False):
        entry = status.get(trial.user_attrs.get("point"))
        if entry is None:
            continue
        if trial.state == TrialState.COMPLETE:
            entry["complete"] = trial
        elif trial.state == TrialState.RUNNING:
            entry["running"] = True
        elif trial.state == TrialState.FAIL:
            entry["failures"].append(trial)
    return status


class _Heartbeat:
    """Stamps ``heartbeat = time.time()`` on a running trial every ``interval`` seconds."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial was finished (e.g. judged stale) or the database is busy: retry later
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _distribution(value, values: list):
    """The Optuna distribution a grid value is recorded under: numbers as a single-valued range (the
    ranges of a parameter may differ between trials, so the grid may grow between runs), others as a
    categorical over the grid's values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(value, bool) or isinstance(value, str):
        return CategoricalDistribution(values)
    if isinstance(value, int):
        return IntDistribution(value, value)
    return FloatDistribution(value, value)


def _claim(sweep: Sweep, study, storage, skip: set[str]):
    """Under the lock: fail stale trials, pick a pending point, create its RUNNING trial.

    Returns ``(trial, point)``, or ``(None, n_running)`` when no point is pending (``n_running``
    points still run in other workers).
    """
    from optuna.trial import TrialState

    with _locked(_lock_path(sweep)):
        _fail_stale(study, storage, sweep)
        for stray in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            # enqueued but never asked: its claimer died inside this section (ask below would pop it)
            trial_id = _trial_id(storage, study, stray.number)
            storage.set_trial_user_attr(trial_id, "failure", "stray")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        status = _status(study, sweep.points)
        pending = [
            e["point"] for key, e in status.items() if e["complete"] is None and not e["running"] and key not in skip
        ]
        if not pending:
            return None, sum(e["running"] for e in status.values())
        point = pending[0]
        study.enqueue_trial(point)
        trial = study.ask({name: _distribution(value, sweep.grid[name]) for name, value in point.items()})
        if trial.params != point:  # the enqueued point, nothing else, was popped
            raise RuntimeError(f"optuna gave the trial {trial.params}, expected the grid point {point}")
        now = time.time()
        trial.set_user_attr("point", point_key(point))
        trial.set_user_attr("run_dir", str(sweep.run_dir(point)))
        trial.set_user_attr("worker", _worker_identity())
        trial.set_user_attr("heartbeat", now)
        return trial, point
