"""Training: every registered method runs; SIGKILL mid-run + --resume reaches the same weights."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import LEARNS, TINY, assert_above_chance, assert_loss_fell, run_losses
from hscl.cli import main
from hscl.engine.pretrain.run import load_task, train
from hscl.engine.runtime.config import load_config
from hscl.losses import LOSSES


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", list(LOSSES))
def test_every_method_trains(method, tmp_path):
    extra = ["loss.beta=1.0"] if method in ("h-ucl", "h-scl", "schane") else []
    config = load_config(None, [*TINY, *LEARNS, f"loss.method={method}", "train.epochs=2", *extra])
    final = train(config, tmp_path / "run")
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert_loss_fell(run_losses(tmp_path / "run"), what=method)
    for row in rows:  # the kNN monitor scores the embeddings' classes
        assert_above_chance(float(row["knn_top1"]), 10, what=f"{method} kNN monitor, epoch {row['epoch']}")
    task, _ = load_task(final)
    assert not any(torch.isnan(p).any() for p in task.parameters())


def test_threshold_schedule_follows_eq4(tmp_path):
    config = load_config(None, [*TINY, "loss.method=h-scl", "loss.tau_schedule=[-0.5, 0.5]", "train.epochs=3"])
    train(config, tmp_path / "run")
    taus = [float(r["tau"]) for r in _rows(tmp_path / "run" / "metrics.csv")]
    cuts = [-0.5, 0.0, 0.5]  # l(epoch) from start to end over 3 epochs
    assert taus == pytest.approx([pytest.approx(2.718281828 ** (c / 0.5)) for c in cuts])


def test_refuses_to_overwrite_a_run(tmp_path):
    config = load_config(None, [*TINY, "loss.method=ucl", "train.epochs=1"])
    train(config, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path / "run")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hscl.cli", *args]


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    sets = []
    overrides = ["data.train_subset=1000", "train.batch_size=32", "train.epochs=4", "loss.method=h-scl"]
    for item in [*TINY, *LEARNS, *overrides]:
        sets += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_cli("train", *sets, "--out", str(reference)), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli("train", *sets, "--out", str(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "final.ckpt").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 3  # the checkpoint is from an early epoch: work remained

    result = subprocess.run(
        _cli("train", *sets, "--out", str(run), "--resume"), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    a = torch.load(reference / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    assert [int(r["epoch"]) for r in _rows(run / "metrics.csv")] == [1, 2, 3, 4]  # nothing lost, nothing twice
    ref_rows, run_rows = _rows(reference / "metrics.csv"), _rows(run / "metrics.csv")
    assert [r["loss"] for r in run_rows] == [r["loss"] for r in ref_rows]
    assert_loss_fell(run_losses(run))  # the resumed run learned
    # the geometry monitor's probe set and measurements are unaffected by the kill as well
    for key in ("assumption1", "loss_h_scl", "nc1", "effective_rank"):
        assert [r[key] for r in run_rows] == [r[key] for r in ref_rows], key
    spectrum_epochs = [line.split(",")[0] for line in (run / "spectrum.csv").read_text().splitlines()[1:]]
    assert spectrum_epochs == ["1", "2", "3", "4"]


def test_evaluate_cli_on_a_checkpoint(tmp_path, capsys):
    config = load_config(None, [*TINY, "loss.method=scl", "train.epochs=1"])
    final = train(config, tmp_path / "run")
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(final), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["linear_top1"] <= result["linear_top5"] <= 100
    assert_above_chance(result["linear_top1"], 10, what="linear probe")  # the probe learned the digits
    assert_above_chance(result["knn_top1"], 10, what="kNN")
    assert "linear top-1" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing.ckpt")]) == 2


def test_a_run_records_its_numerics(tmp_path):
    """train_summary.json holds the numerics record; precision auto is the CPU-flag rule, read here independently."""
    config = load_config(None, [*TINY, "loss.method=scl", "train.epochs=1", "train.precision=auto"])
    config.train.channels_last = None  # chosen with the precision
    train(config, tmp_path / "run")
    numerics = json.loads((tmp_path / "run" / "train_summary.json").read_text())["numerics"]
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
    if cpuinfo is not None:
        native = "amx_bf16" in cpuinfo.split() or "avx512_bf16" in cpuinfo.split()
        assert numerics["precision"] == ("bf16-mixed" if native else "32-true")
        assert numerics["channels_last"] is native  # a convnet: channels-last with bf16 only
    assert numerics["setting"] == "auto" and numerics["device"] == "cpu" and numerics["tf32"] is False
    assert numerics["torch"] == torch.__version__ and numerics["cpu"]
    stored = json.loads((tmp_path / "run" / "precision.json").read_text())
    assert (stored["precision"], stored["channels_last"]) == (numerics["precision"], numerics["channels_last"])


def test_reproduce_table1_on_a_tiny_preset(tmp_path, capsys):
    preset = tmp_path / "configs" / "table1" / "tiny"
    preset.mkdir(parents=True)
    for key, loss in [("ucl", "method: ucl"), ("h-scl-beta", "method: h-scl\n  beta: 1.0")]:
        (preset / f"{key}.yaml").write_text(f"loss:\n  {loss}\n  temperature: 0.1\ntrain:\n  epochs: 2\n")
    out = tmp_path / "out"
    args = ["reproduce", "table1", "--preset", "tiny", "--configs", str(tmp_path / "configs"), "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    text = (out / "results.json").read_text()
    results = json.loads(text)
    assert list(results["methods"]) == ["ucl", "h-scl-beta"]
    # every cell's numerics, one precision (pinned by --set train.precision=32), stated under the table
    assert [r["numerics"]["precision"] for e in results["methods"].values() for r in e["runs"]] == ["32-true"] * 2
    assert set(results["numerics"]["cells"]) == {"UCL seed 0", "H-SCL(beta) seed 0"}
    assert results["numerics"]["pinned"] and results["numerics"]["precision"] == "32-true"
    assert "Numerics: precision 32-true (32); CPU" in (out / "table1.md").read_text()
    assert "in all 2 cells (pinned)" in (out / "table1.md").read_text()
    # the configs by their place in the --configs folder, not the machine's absolute path
    assert [m["config"] for m in results["methods"].values()] == ["table1/tiny/ucl.yaml", "table1/tiny/h-scl-beta.yaml"]
    assert str(tmp_path) not in text
    for key, entry in results["methods"].items():  # every cell learned: its loss fell, its probe beats chance
        (run,) = entry["runs"]
        assert_loss_fell([point["loss"] for point in run["curve"]], what=key)
        assert_above_chance(entry["linear_top1_mean"], 10, what=f"{key} linear probe")
    for name in ("table1.csv", "table1.md", "fig1.png", "fig1.csv"):
        assert (out / name).stat().st_size > 0
    assert (out / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (out / "ucl" / "seed0" / "eval.json").read_text()
    assert main(args) == 0  # finished runs are reused, not retrained
    assert (out / "ucl" / "seed0" / "eval.json").read_text() == first
    assert "UCL" in capsys.readouterr().out
    # another setting into the same folder: refused before any work, naming the cell and what differs
    assert main([*args, "--set", "train.epochs=3"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"hscl: error: {out / 'ucl' / 'seed0'} holds a run of another config (train.epochs: 2 -> 3); it is not "
        "reused: choose another --out, or delete that folder to train it again\n"
    )
    assert "==" not in captured.out and (out / "ucl" / "seed0" / "eval.json").read_text() == first
    assert main(["reproduce", "table1", "--preset", "nope", "--configs", str(tmp_path / "configs")]) == 2
