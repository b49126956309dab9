"""The Optuna study of a sweep: storage, the lock between workers, claims, heartbeats, stale trials.

Storage. ``--storage`` takes any Optuna storage (:func:`parse_storage`): a SQLite file (the default,
``<out>/study.db``), a PostgreSQL or MySQL server (``postgresql://user@host/db``), or an Optuna journal
file (``journal:PATH``). SQLite serves the workers of one machine; a database server, or a journal file on
a file system that several machines mount, serves workers on any number of machines.

Bookkeeping. A worker claims a grid point under an exclusive lock between all the study's workers: a
file lock next to the SQLite file (``study.db.lock``, released by the kernel if its holder dies), a
transaction-scoped advisory lock in the database server (PostgreSQL ``pg_advisory_xact_lock``, MySQL
``GET_LOCK``: released by the server when the holder's connection ends, and by an idle timeout if its
machine vanishes), or Optuna's NFS-safe lock next to a journal file. Under the lock it reads the study,
marks stale trials failed, picks the first point with neither a COMPLETE nor a live RUNNING trial, and
creates that point's RUNNING trial (its point, worker and first heartbeat recorded in the same storage
call) before releasing the lock, so no two workers ever run the same point and a finished point is never
run again. While a trial runs, a thread stamps a heartbeat on it, read from the database server's clock
for a server storage (the workers' clocks need not agree). A RUNNING trial is stale when the worker that
owns it is gone: on this machine, its process no longer exists (a kill, a crash, a reboot); on another
machine, its heartbeat is older than ``stale_after`` seconds. A stale trial is marked FAIL
(``failure = "stale"``) and its point is claimed again, its training resuming from the point's last
checkpoint when the run folder is shared. A worker that was judged stale but was only cut off (a network
partition) cannot complete its trial afterwards: the storage refuses to update a finished trial, so its
result is discarded and every point ends with exactly one COMPLETE trial. So any number of workers
(``--workers N``, the same command in other shells or on other machines) share one study, and an
interrupted sweep resumes where it stopped with no point lost or run twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hscl.engine.runtime.config import config_to_dict

if TYPE_CHECKING:
    from hscl.engine.sweep.spec import Sweep

from hscl.engine.sweep.storage import (
    _clock,
    _locked,
    _make_storage,
    _server_locked,
)

#: config settings that do not change a trial's result: they may differ between workers and runs
_NOT_IDENTITY = (("train", "progress"), ("train", "threads"), ("data", "data_dir"))


@contextlib.contextmanager
def _study_lock(sweep: Sweep):
    """The lock under which workers open the study and claim points (see the module docstring)."""
    spec = sweep.storage_spec
    if spec.kind == "sqlite":
        with _locked(Path(f"{spec.target}.lock")):
            yield
    elif spec.kind == "journal":
        from optuna.storages.journal import JournalFileSymlinkLock

        Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        # NFS-safe (a symlink); a lock left by a dead holder is broken after the grace period
        lock = JournalFileSymlinkLock(f"{spec.target}.claim", grace_period=int(max(30.0, sweep.heartbeat)))
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
    else:
        with _server_locked(spec, sweep.study_name, max(60.0, sweep.stale_after)):
            yield


def point_key(point: dict) -> str:
    """The identity of a grid point in the study (canonical JSON)."""
    return json.dumps(point, sort_keys=True)


# --------------------------------------------------------------------------------------------
# workers


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


# --------------------------------------------------------------------------------------------
# the study


def _open_study(sweep: Sweep):
    """The study of ``sweep`` (created on first use), and its storage.

    With a server storage, call it under :func:`_study_lock`: it may create the database's tables.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = sweep.storage_spec
    storage = _make_storage(spec)
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),  # each trial's parameters are fixed by its point
        load_if_exists=True,
    )
    base = json.loads(json.dumps(config_to_dict(sweep.base_config())))
    for section, key in _NOT_IDENTITY:  # settings that do not change a trial's result
        base[section].pop(key, None)
    attrs = study.user_attrs
    where = f"the study {sweep.study_name!r} in {spec.label}"
    if "base_config" not in attrs:
        study.set_user_attr("base_config", base)
        study.set_user_attr("metric", sweep.metric)
        study.set_user_attr("trial", sweep.trial or "hscl.engine.sweep:train_and_evaluate")
    else:
        if attrs["base_config"] != base:
            changed = sorted(_diff_keys(attrs["base_config"], base))
            raise ValueError(
                f"{where} was run with another base config (differs in {', '.join(changed)}); "
                "use another --out / --storage / --study, or the same config and --set options"
            )
        if attrs.get("metric") != sweep.metric:
            raise ValueError(f"{where} maximises {attrs.get('metric')!r}, not {sweep.metric!r}")
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


def _finish(storage, trial_id: int, state, value: float | None = None, **attrs) -> bool:
    """Set ``attrs`` then ``state`` on a trial; False (nothing changed) when another worker finished it
    first, e.g. judged it stale: the storage refuses to update a finished trial, atomically."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for key, attr in attrs.items():
            storage.set_trial_user_attr(trial_id, key, attr)
        storage.set_trial_state_values(trial_id, state, None if value is None else [value])
    except UpdateFinishedTrialError:
        return False
    return True


def _fail_stale(study, storage, sweep: Sweep) -> list[int]:
    """Mark the stale RUNNING trials FAIL (``failure="stale"``); returns their numbers."""
    from optuna.trial import TrialState

    now, machine, failed = _clock(storage)(), _machine(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _is_stale(trial, now, sweep.stale_after, machine)
        if reason is None:
            continue
        trial_id = _trial_id(storage, study, trial.number)
        if _finish(storage, trial_id, TrialState.FAIL, failure="stale", failure_reason=reason):
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
    """Stamps ``heartbeat`` (seconds by :func:`_clock`) on a running trial every ``interval`` seconds."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._clock = _clock(storage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", self._clock())
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

    Returns ``(trial_id, point)``, or ``(None, n_running)`` when no point is pending (``n_running``
    points still run in other workers).
    """
    from optuna.trial import FrozenTrial, TrialState

    with _study_lock(sweep):
        _fail_stale(study, storage, sweep)
        for stray in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            # enqueued but never asked (a study of an earlier hscl whose claimer died): not a point's trial
            _finish(storage, _trial_id(storage, study, stray.number), TrialState.FAIL, failure="stray")
        status = _status(study, sweep.points)
        pending = [
            e["point"] for key, e in status.items() if e["complete"] is None and not e["running"] and key not in skip
        ]
        if not pending:
            return None, sum(e["running"] for e in status.values())
        point = pending[0]
        # one storage call creates the RUNNING trial with its point, owner and first heartbeat
        template = FrozenTrial(
            number=-1,
            trial_id=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=dict(point),
            distributions={name: _distribution(value, sweep.grid[name]) for name, value in point.items()},
            user_attrs={
                "point": point_key(point),
                "run_dir": str(sweep.run_dir(point)),
                "worker": _worker_identity(),
                "heartbeat": _clock(storage)(),
            },
            system_attrs={},
            intermediate_values={},
        )
        trial_id = storage.create_new_trial(storage.get_study_id_from_name(study.study_name), template_trial=template)
        return trial_id, point
