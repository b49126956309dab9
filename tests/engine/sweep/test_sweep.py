"""hscl.engine.sweep.run: grid parsing, the shared Optuna study, kill-and-resume, concurrent workers, a real sweep.

The bookkeeping tests run a tiny trial function (``fake_trial`` below, imported by name by the
worker processes) whose accuracy peaks at beta = 1; it appends to a log file so that the tests can
count how often each point was started and finished.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import assert_above_chance, assert_loss_fell, run_losses
from hscl.cli import main
from hscl.engine.sweep.run import run_sweep
from hscl.engine.sweep.spec import STUDY_NAME, Sweep, grid_points, parse_grid, point_overrides
from hscl.engine.sweep.study import _fail_stale, _machine, _open_study

TESTS = Path(__file__).parent
BETAS = [0.1, 0.5, 1.0, 2.0, 5.0]


def fake_trial(config, run_dir: Path) -> dict:
    """Accuracy ``90 - log(beta)^2`` (on validation one point lower); hangs once at the point ``$HSCL_TEST_HANG``
    (to be killed there)."""
    log = Path(os.environ["HSCL_TEST_LOG"])
    beta = config.loss.beta
    with log.open("a") as handle:
        handle.write(f"start {beta} {os.getpid()}\n")
    hang = os.environ.get("HSCL_TEST_HANG")
    if hang is not None and float(hang) == beta and not (run_dir / "hung").exists():
        (run_dir / "hung").write_text(str(os.getpid()))
        time.sleep(600)
    partner = os.environ.get("HSCL_TEST_WAIT_FOR_PARTNER")
    deadline = time.time() + 60
    while partner and time.time() < deadline:  # hold the first point until a second worker has started one
        if len({line.split()[2] for line in log.read_text().splitlines()}) >= 2:
            break
        time.sleep(0.05)
    time.sleep(float(os.environ.get("HSCL_TEST_SLEEP", "0")))
    with log.open("a") as handle:
        handle.write(f"end {beta} {os.getpid()}\n")
    test = {"linear_top1": 90.0 - math.log(beta) ** 2, "knn_top1": 80.0 - math.log(beta) ** 2}
    return {**test, **{f"val_{key}": value - 1.0 for key, value in test.items()}}


def env_trial(config, run_dir: Path) -> dict:
    """Records the distributed-launcher variables the trial sees."""
    seen = {key: os.environ.get(key) for key in ("RANK", "SLURM_PROCID", "SLURM_NTASKS", "CUDA_VISIBLE_DEVICES")}
    (run_dir / "env.json").write_text(json.dumps(seen))
    return {"linear_top1": 1.0, "val_linear_top1": 1.0}


def gpu_trial(config, run_dir: Path) -> dict:
    """Records the GPU its worker was given (``CUDA_VISIBLE_DEVICES``), then runs ``fake_trial``."""
    (run_dir / "gpu.json").write_text(json.dumps({"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    return fake_trial(config, run_dir)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text("name: fake\nloss:\n  method: h-scl\n  beta: 1.0\n")
    return path


def _sweep_args(tmp_path: Path, grid: str = "beta=0.1,0.5,1,2,5", *extra: str) -> list[str]:
    return [
        "sweep",
        str(_config(tmp_path)),
        "--grid",
        grid,
        "--out",
        str(tmp_path / "sweep"),
        "--trial",
        "test_sweep:fake_trial",
        *extra,
    ]


def _trials(tmp_path: Path) -> list:
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    return study.get_trials(deepcopy=False)


def _log(tmp_path: Path) -> list[tuple[str, float, int]]:
    lines = (tmp_path / "log.txt").read_text().splitlines()
    return [(kind, float(beta), int(pid)) for kind, beta, pid in (line.split() for line in lines)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_TEST_LOG", str(tmp_path / "log.txt"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.delenv("HSCL_TEST_HANG", raising=False)
    return {**os.environ}


# --------------------------------------------------------------------------------------------
# the grid


def test_parse_grid_and_points():
    grid = parse_grid(["tau_start=-0.5,-0.3", "tau_end=-0.1,0,0.1"])
    assert grid == {"tau_start": [-0.5, -0.3], "tau_end": [-0.1, 0.0, 0.1]}  # one type per parameter
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"tau_start": -0.5, "tau_end": -0.1}
    assert points[-1] == {"tau_start": -0.3, "tau_end": 0.1}
    assert parse_grid(["beta=0.1,1,5"]) == {"beta": [0.1, 1.0, 5.0]}
    assert parse_grid(["train.batch_size=64,128"]) == {"train.batch_size": [64, 128]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["beta"], "must look like NAME=V1,V2"),
        (["gamma=0.1"], "unknown; use one of"),
        (["beta=0.1,0.1"], "repeats a value"),
        (["beta=0.1", "beta=0.5"], "given twice"),
        (["tau_start=-0.5"], "needs --grid tau_end"),
        (["beta=null"], "is not a number"),
        (["beta=[1, 2]"], "comma-separated scalars"),
        ([], "at least one --grid"),
    ],
)
def test_parse_grid_rejects_bad_input(items, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(items)


def test_point_overrides_set_one_hardening():
    assert point_overrides({"beta": 2.0}) == ["loss.tau=null", "loss.tau_schedule=null", "loss.beta=2.0"]
    assert point_overrides({"tau_start": -0.5, "tau_end": 0.1}) == [
        "loss.beta=null",
        "loss.tau=null",
        "loss.tau_schedule=[-0.5, 0.1]",
    ]
    assert point_overrides({"loss.temperature": 0.1}) == ["loss.temperature=0.1"]


def test_tau_grid_on_a_beta_config_gives_valid_configs(tmp_path):
    sweep = Sweep(config=str(_config(tmp_path)), grid=parse_grid(["tau_start=-0.5", "tau_end=0.1"]), out=str(tmp_path))
    config = sweep.point_config(grid_points(sweep.grid)[0])
    assert config.loss.beta is None and config.loss.tau_schedule == [-0.5, 0.1]


def test_a_bad_point_fails_before_anything_runs(tmp_path, env, capsys):
    args = _sweep_args(tmp_path, "batch_size=64,1")
    assert main(args) == 2  # train.batch_size must be >= 2: named, before any trial
    assert "grid point batch_size=1: train.batch_size must be >= 2" in capsys.readouterr().err
    assert main([*_sweep_args(tmp_path), "--set", "train.devices=2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "log.txt").exists()


# --------------------------------------------------------------------------------------------
# the study


def test_sweep_writes_the_table_best_point_and_plot(tmp_path, env, capsys):
    assert main(_sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "best (selected on validation val_linear_top1 89.00): beta=1.0; its test linear_top1 90.00" in out
    result = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert result["complete"] and result["best"]["beta"] == 1.0
    assert [p["beta"] for p in result["points"]] == BETAS
    for point in result["points"]:
        assert point["linear_top1"] == pytest.approx(90.0 - math.log(point["beta"]) ** 2)
    assert (tmp_path / "sweep" / "accuracy_vs_beta.png").stat().st_size > 0
    plotted = (tmp_path / "sweep" / "accuracy_vs_beta.csv").read_text().splitlines()
    assert len(plotted) == 1 + 3 * len(BETAS)  # linear and kNN (test), and the linear selected on, per point
    row = "| 1.0 | 89.00 | 79.00 | 90.00 | 80.00 | complete | 0 | **best (validation)** |"
    assert row in (tmp_path / "sweep" / "sweep_results.md").read_text()
    # a second run finds every point complete: no trial runs again
    assert main(_sweep_args(tmp_path)) == 0
    assert len(_trials(tmp_path)) == len(BETAS)
    assert Counter(kind for kind, _, _ in _log(tmp_path)) == {"start": 5, "end": 5}


def test_sweep_results_name_the_preset_and_paths_relative_to_the_sweep(tmp_path, env):
    """A packaged config is recorded by its name, each point's folder relative to the sweep's, whatever --out is."""
    out = tmp_path / "elsewhere" / "sweep"
    args = ["sweep", "table1/quick/h-scl-beta", "--grid", "beta=0.5,2", "--out", str(out)]
    assert main([*args, "--trial", "test_sweep:fake_trial"]) == 0
    text = (out / "sweep_results.json").read_text()
    result = json.loads(text)
    assert result["config"] == "table1/quick/h-scl-beta.yaml"
    assert [p["run_dir"] for p in result["points"]] == ["trials/beta=0.5", "trials/beta=2.0"]
    assert all((out / p["run_dir"] / "point.json").is_file() for p in result["points"])
    assert str(tmp_path) not in text and str(Path.cwd()) not in text


def test_sigkill_mid_trial_then_resume_loses_and_repeats_nothing(tmp_path, env):
    hang_env = {**env, "HSCL_TEST_HANG": "1.0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hscl.cli", *_sweep_args(tmp_path)],
        env=hang_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = tmp_path / "sweep" / "trials" / "beta=1.0" / "hung"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the worker never reached the point where it hangs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = Counter(t.state for t in _trials(tmp_path))
    assert states == {TrialState.COMPLETE: 2, TrialState.RUNNING: 1}  # killed mid-trial: RUNNING forever

    assert main(_sweep_args(tmp_path)) == 0  # resume (same command)
    trials = _trials(tmp_path)
    by_point = Counter(json.loads(t.user_attrs["point"])["beta"] for t in trials if t.state == TrialState.COMPLETE)
    assert by_point == dict.fromkeys(BETAS, 1)  # every point exactly once
    (stale,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stale.params == {"beta": 1.0} and stale.user_attrs["failure"] == "stale"
    assert "is gone" in stale.user_attrs["failure_reason"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    starts = Counter(beta for kind, beta, _ in _log(tmp_path) if kind == "start")
    ends = Counter(beta for kind, beta, _ in _log(tmp_path) if kind == "end")
    assert starts == {0.1: 1, 0.5: 1, 1.0: 2, 2.0: 1, 5.0: 1}  # only the killed point ran again
    assert ends == dict.fromkeys(BETAS, 1)
    result = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert result["complete"] and result["best"]["beta"] == 1.0
    assert [p["failed_attempts"] for p in result["points"]] == [0, 0, 1, 0, 0]


def test_two_workers_share_one_study_without_duplicates(tmp_path, env, monkeypatch):
    monkeypatch.setenv("HSCL_TEST_WAIT_FOR_PARTNER", "1")
    assert main(_sweep_args(tmp_path, "beta=0.1,0.5,1,2,5,10", "--workers", "2")) == 0
    log = _log(tmp_path)
    assert Counter(beta for kind, beta, _ in log if kind == "start") == dict.fromkeys([*BETAS, 10.0], 1)
    assert len({pid for _, _, pid in log}) == 2  # both workers ran points
    assert Counter(t.state for t in _trials(tmp_path)) == {TrialState.COMPLETE: 6}


def test_workers_spread_over_the_gpus(monkeypatch):
    import torch

    from hscl.engine.sweep.gpus import worker_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # a machine with 3 GPUs
    assert worker_gpus(5) == ["0", "1", "2", "0", "1"]  # worker i on GPU i mod 3
    assert worker_gpus(3, [2, 0]) == ["2", "0", "2"]  # --gpus 2,0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # indices name the GPUs this process sees
    assert worker_gpus(2) == ["4", "6"] and worker_gpus(2, [2]) == ["7", "7"]
    for bad in ([3], [], [-1], [True]):
        with pytest.raises(ValueError, match=r"--gpus must list GPU indices in \[0, 3\)"):
            worker_gpus(2, bad)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert worker_gpus(2) == [None, None]  # no GPU: nothing is set
    with pytest.raises(ValueError, match="torch sees 0 GPU"):
        worker_gpus(2, [0])


def test_two_workers_run_on_two_gpus(tmp_path, env, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("HSCL_TEST_WAIT_FOR_PARTNER", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # the parent assigns; each worker only reads its env
    args = _sweep_args(tmp_path, "beta=0.1,0.5,1,2", "--workers", "2", "--trial", "test_sweep:gpu_trial")
    assert main(args) == 0
    assert "worker GPUs (CUDA_VISIBLE_DEVICES) 0, 1" in capsys.readouterr().out
    seen = [json.loads(f.read_text()) for f in (tmp_path / "sweep" / "trials").glob("*/gpu.json")]
    by_worker = {entry["pid"]: set() for entry in seen}
    for entry in seen:
        by_worker[entry["pid"]].add(entry["gpu"])
    assert len(seen) == 4 and len(by_worker) == 2  # both workers ran points
    assert sorted(gpu for gpus in by_worker.values() for gpu in gpus) == ["0", "1"]  # one GPU each, distinct


def test_stale_trials_of_other_machines_by_heartbeat(tmp_path):
    sweep = Sweep(config=None, grid={"beta": [1.0]}, out=str(tmp_path), stale_after=60.0, heartbeat=5.0)
    study, storage = _open_study(sweep)
    now = time.time()
    numbers = {}
    for name, (machine, beat) in {
        "silent elsewhere": ("other-host/boot/1", now - 120),
        "beating elsewhere": ("other-host/boot/1", now - 10),
        "alive here": (_machine(), now - 1000),  # this process: alive, whatever its heartbeat
        "dead here": (_machine(), now),
    }.items():
        trial = study.ask()
        pid = os.getpid() if name == "alive here" else 2**22 + 17  # beyond pid_max's default: no process
        trial.set_user_attr("worker", {"machine": machine, "pid": pid, "start": None})
        trial.set_user_attr("heartbeat", beat)
        numbers[trial.number] = name
    failed = {numbers[n] for n in _fail_stale(study, storage, sweep)}
    assert failed == {"silent elsewhere", "dead here"}
    states = {numbers[t.number]: t.state for t in study.get_trials(deepcopy=False)}
    assert states["beating elsewhere"] == TrialState.RUNNING and states["alive here"] == TrialState.RUNNING


@pytest.mark.parametrize(
    ("storage", "why"),
    [
        ("redis://localhost/0", "unknown kind of storage 'redis'"),
        ("postgresql://user:secret@localhost", "names no database"),
        ("sqlite://", "SQLite needs a file"),
        ("journal:", "journal file is missing"),
        ("postgresql:localhost/db", "not a storage URL"),
    ],
)
def test_a_bad_storage_is_one_line_naming_the_allowed_forms(tmp_path, env, capsys, storage, why):
    assert main([*_sweep_args(tmp_path), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hscl: error: --storage ") and why in err
    assert "postgresql://USER" in err and "sqlite:///PATH" in err and "journal:PATH" in err
    assert "secret" not in err  # a password is never printed
    assert not (tmp_path / "log.txt").exists()


@pytest.mark.parametrize("form", ["sqlite:///{path}/s.db", "journal:{path}/s.journal", "{path}/s.db"])
def test_storage_forms_run_the_sweep(tmp_path, env, form):
    storage = form.format(path=tmp_path / "store")
    assert main(_sweep_args(tmp_path, "beta=0.5,1", "--storage", storage)) == 0
    assert main(_sweep_args(tmp_path, "beta=0.5,1", "--storage", storage)) == 0  # resumed: nothing runs again
    assert Counter(kind for kind, _, _ in _log(tmp_path)) == {"start": 2, "end": 2}
    assert not (tmp_path / "sweep" / "study.db").exists()
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["storage"].endswith(("s.db", "s.journal"))


def test_a_trial_under_srun_or_torchrun_is_one_process(tmp_path, monkeypatch):
    """``srun hscl sweep`` / torchrun tell each worker about a job of many tasks; a trial is one process on one
    device, so it must not see them (its Trainer would expect SLURM_NTASKS processes)."""
    launcher = {"RANK": "3", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "CUDA_VISIBLE_DEVICES": "3"}
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    sweep = Sweep(config=str(_config(tmp_path)), grid={"beta": [1.0]}, out=str(tmp_path / "sweep"))
    assert run_sweep(sweep, trial_fn=env_trial, progress=False)["complete"]
    seen = json.loads((tmp_path / "sweep" / "trials" / "beta=1.0" / "env.json").read_text())
    assert seen == {"RANK": None, "SLURM_PROCID": None, "SLURM_NTASKS": None, "CUDA_VISIBLE_DEVICES": "3"}
    assert all(os.environ[key] == value for key, value in launcher.items())  # restored after the trial


def test_another_base_config_on_the_same_study_is_refused(tmp_path, env):
    assert main(_sweep_args(tmp_path, "beta=1")) == 0
    assert main([*_sweep_args(tmp_path, "beta=1"), "--set", "loss.temperature=0.2"]) == 2


# --------------------------------------------------------------------------------------------
# a real sweep: pre-training and evaluation per point


def test_real_sweep_trains_and_evaluates_each_point(tmp_path):
    tiny = [
        "data.dataset=digits",
        "data.train_subset=300",
        "data.test_subset=100",
        "model.encoder=convnet",
        "model.widths=[8, 8, 16, 16]",
        "model.hidden_dim=32",
        "model.projection_dim=8",
        "train.epochs=2",
        "loss.temperature=0.1",  # helpers.LEARNS: a loss that falls by a factor in 2 tiny epochs
        "train.batch_size=50",
        "train.knn_k=0",
        "train.precision=32",
        "train.channels_last=false",
        "train.progress=false",
        "diagnostics.enabled=false",
        "eval.linear_epochs=3",
        "eval.linear_lr=0.05",  # 6 steps an epoch at a rate that learns the digits (1e-3 stays at chance)
        "eval.linear_batch_size=50",
        "eval.knn_k=10",
    ]
    sweep = Sweep(config=None, grid={"beta": [0.5, 2.0]}, out=str(tmp_path / "real"), overrides=tiny)
    result = run_sweep(sweep, progress=False)
    assert result["complete"]
    for point in result["points"]:
        run = sweep.out_dir / point["run_dir"]  # recorded relative to the sweep's folder
        assert (run / "final.ckpt").exists() and (run / "eval.json").exists()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["loss"]["beta"] == point["beta"] and saved["loss"]["method"] == "h-scl"
        assert saved["eval"]["val_fraction"] == 0.1  # selecting on validation: 30 of the 300 images held out
        assert_loss_fell(run_losses(run), what=f"beta={point['beta']}")  # each point learned
        for key in ("linear_top1", "knn_top1", "val_linear_top1"):  # its probes learned the digits
            assert_above_chance(point[key], 10, what=f"beta={point['beta']} {key}")
        assert json.loads((run / "eval.json").read_text())["linear_top1"] == point["linear_top1"]
        assert point["val_size"] == 30
    assert result["best"]["val_linear_top1"] == max(p["val_linear_top1"] for p in result["points"])
    assert result["selected_on"] == "validation" and result["best_test"] == result["best"]["linear_top1"]
