"""hscl sweep on a PostgreSQL server: workers in separate processes, one SIGKILLed mid-trial.

The module starts a real PostgreSQL server (the Debian package ``postgresql``; ``make postgres``
installs it) in a temporary folder on 127.0.0.1 and a free port, and stops it after its tests, whatever
their outcome. As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
The tests are skipped only when PostgreSQL is not installed and cannot be installed here.

The trials are ``fake_trial`` of test_sweep.py (no training): the workers are ``hscl sweep`` processes
that import it by name.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from hscl.engine.sweep import storage as _sweep_storage
from hscl.engine.sweep.spec import Sweep
from hscl.engine.sweep.storage import _clock
from hscl.engine.sweep.study import _fail_stale, _machine, _open_study, _study_lock

TESTS = Path(__file__).parent
SRC = TESTS.parents[2] / "src"
BETAS = [0.1, 0.5, 1.0, 2.0, 5.0]


# --------------------------------------------------------------------------------------------
# the server


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not found:
        return None
    return Path(max(found, key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)).parent


def _install_postgres() -> str | None:
    """Install the Debian package ``postgresql`` (as root); the reason it could not be, or None."""
    if os.geteuid() != 0:
        return "not root, so the Debian package postgresql cannot be installed (run `make postgres` as root)"
    if shutil.which("apt-get") is None:
        return "no apt-get to install the Debian package postgresql"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            "apt-get update -qq && apt-get install -y -qq postgresql",
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return "apt-get install postgresql took more than 15 minutes"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return f"apt-get install postgresql failed: {tail[-1] if tail else done.returncode}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """A PostgreSQL server in a temporary folder; :meth:`database` creates a fresh database and gives its URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hscl-pg-"))
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.run_as: dict = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the postgres user
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "HOME": str(self.root)}
        data, sockets = self.root / "data", self.root / "sockets"
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
            **self.run_as,
        )
        subprocess.run(["mkdir", "-m", "700", sockets], check=True, env=env, **self.run_as)
        self.log = self.root / "server.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(bin_dir / "postgres", "-D", data, "-k", sockets, "-h", "127.0.0.1", "-p", str(self.port)),
                    *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
                    *("-c", "max_connections=60", "-c", "shared_buffers=16MB"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                **self.run_as,
            )
        deadline = time.time() + 60
        while True:
            try:
                self._connect("postgres").close()
                break
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def _connect(self, database: str):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database, connect_timeout=5)

    def database(self, name: str) -> str:
        """The URL of a new database, as a user writes it: ``postgresql://`` (hscl picks the installed driver)."""
        conn = self._connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, no waiting for clients
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _postgres_bin()
    if bin_dir is None:
        reason = _install_postgres()
        bin_dir = _postgres_bin()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL is not installed and could not be: {reason or 'no postgres binary after install'}")
    server = None
    try:
        server = _Server(bin_dir)
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_TEST_LOG", str(tmp_path / "log.txt"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parents[1]), str(SRC), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.delenv("HSCL_TEST_HANG", raising=False)
    return {**os.environ}


def _sweep_args(tmp_path: Path, storage: str, *extra: str) -> list[str]:
    config = tmp_path / "base.yaml"
    config.write_text("name: fake\nloss:\n  method: h-scl\n  beta: 1.0\n")
    grid = "beta=" + ",".join(str(b) for b in BETAS)
    out = str(tmp_path / "sweep")
    return [
        *("sweep", str(config), "--grid", grid, "--out", out),
        *("--trial", "test_sweep:fake_trial", "--storage", storage, *extra),
    ]


def _with_driver(url: str) -> str:
    """The URL for Optuna directly (SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3)."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _log(tmp_path: Path) -> list[tuple[str, float, int]]:
    lines = (tmp_path / "log.txt").read_text().splitlines()
    return [(kind, float(beta), int(pid)) for kind, beta, pid in (line.split() for line in lines)]


# --------------------------------------------------------------------------------------------
# the tests


def test_two_workers_one_killed_mid_trial_every_point_completes_once(tmp_path, env, postgres):
    """Two ``hscl sweep`` processes share a study on the server; the one that runs beta = 1 hangs there and is
    SIGKILLed. Before the kill its trial is relabelled as owned by a worker of another machine, so that the
    survivor cannot see that the process is gone and must find out the way a worker on another machine
    does: by the age of the trial's heartbeat on the database server's clock (--stale-after 4)."""
    url = postgres.database("sweep_kill")
    args = [sys.executable, "-m", "hscl.cli", *_sweep_args(tmp_path, url, "--stale-after", "4")]
    worker_env = {**env, "HSCL_TEST_HANG": "1.0", "HSCL_TEST_WAIT_FOR_PARTNER": "1", "HSCL_TEST_SLEEP": "0.2"}
    outputs = [tmp_path / f"worker{i}.txt" for i in range(2)]
    procs = []
    try:
        for output in outputs:
            with output.open("wb") as handle:
                procs.append(subprocess.Popen(args, env=worker_env, stdout=handle, stderr=subprocess.STDOUT))
        marker = tmp_path / "sweep" / "trials" / "beta=1.0" / "hung"
        deadline = time.time() + 60
        while not marker.exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "no worker reached the point where it hangs:\n" + outputs[0].read_text()
        time.sleep(0.1)
        victim_pid = int(marker.read_text())
        (victim,) = [p for p in procs if p.pid == victim_pid]
        (survivor,) = [p for p in procs if p is not victim]

        study = optuna.load_study(study_name="hscl-sweep", storage=_with_driver(url))
        storage = study._storage
        (hung,) = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.params == {"beta": 1.0}]
        worker = {**hung.user_attrs["worker"], "machine": "elsewhere/boot/1"}
        storage.set_trial_user_attr(hung._trial_id, "worker", worker)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        assert survivor.wait(timeout=90) == 0, outputs[procs.index(survivor)].read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    trials = optuna.load_study(study_name="hscl-sweep", storage=_with_driver(url)).get_trials()
    complete = Counter(t.params["beta"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == dict.fromkeys(BETAS, 1)  # every point exactly one COMPLETE trial
    (stale,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stale.params == {"beta": 1.0} and stale.user_attrs["failure"] == "stale"
    assert stale.user_attrs["failure_reason"].startswith("no heartbeat from elsewhere for ")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    log = _log(tmp_path)
    assert Counter(beta for kind, beta, _ in log if kind == "start") == {0.1: 1, 0.5: 1, 1.0: 2, 2.0: 1, 5.0: 1}
    assert Counter(beta for kind, beta, _ in log if kind == "end") == dict.fromkeys(BETAS, 1)
    assert {pid for kind, beta, pid in log if kind == "start" and beta != 1.0} >= {survivor.pid}
    assert len({pid for _, _, pid in log}) == 2  # both workers ran points
    result = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert result["complete"] and result["best"]["beta"] == 1.0
    assert [p["failed_attempts"] for p in result["points"]] == [0, 0, 1, 0, 0]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["storage"] == url


def test_heartbeats_are_judged_by_the_servers_clock(tmp_path, postgres, monkeypatch):
    """Workers on several machines need not agree on the time: heartbeats are stamped and judged with the
    database server's clock, so a worker whose own clock is an hour ahead fails only the silent trial."""
    url = postgres.database("sweep_clock")
    sweep = Sweep(config=None, grid={"beta": [1.0]}, out=str(tmp_path), storage=url, stale_after=30.0, heartbeat=5.0)
    with _study_lock(sweep):
        study, storage = _open_study(sweep)
    server_now = _clock(storage)()
    assert abs(server_now - time.time()) < 60  # the server's clock, read through SQL
    numbers = {}
    for name, beat in {"silent": server_now - 100, "beating": server_now - 2}.items():
        trial = study.ask()
        trial.set_user_attr("worker", {"machine": "elsewhere/boot/1", "pid": 1, "start": None})
        trial.set_user_attr("heartbeat", beat)
        numbers[trial.number] = name
    skewed = time.time() + 3600.0
    monkeypatch.setattr(_sweep_storage.time, "time", lambda: skewed)  # this machine's clock an hour ahead
    assert {numbers[n] for n in _fail_stale(study, storage, sweep)} == {"silent"}
    states = {numbers[t.number]: t.state for t in study.get_trials()}
    assert states == {"silent": TrialState.FAIL, "beating": TrialState.RUNNING}
    assert _machine() != "elsewhere/boot/1"


def test_the_claim_lock_is_held_by_the_server_and_freed_when_its_holder_dies(tmp_path, env, postgres):
    """The lock under which points are claimed is an advisory lock in PostgreSQL: exclusive between
    processes (on any machine), and released by the server as soon as a killed holder's connection drops."""
    url = postgres.database("sweep_lock")
    sweep = Sweep(config=None, grid={"beta": [1.0]}, out=str(tmp_path), storage=url)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from hscl.engine.sweep.spec import Sweep\n"
            "from hscl.engine.sweep.study import _study_lock\n"
            f"sweep = Sweep(config=None, grid={{'beta': [1.0]}}, out={str(tmp_path)!r}, storage={url!r})\n"
            "with _study_lock(sweep):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        taken = threading.Event()

        def take() -> None:
            with _study_lock(sweep):
                taken.set()

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        assert not taken.wait(1.0)  # another process holds it
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert taken.wait(20.0)  # freed with the dead holder's connection
        thread.join()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
