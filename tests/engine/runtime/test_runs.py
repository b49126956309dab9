"""A run folder's config is its key: --resume and reproduce refuse another config in one line; Ctrl-C says what to
resume; times add up across resumes; one progress line per epoch, 1-based, on rank 0."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest

from hscl.cli import main
from hscl.engine.pretrain.task import ContrastiveTask
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.progress import EpochProgress

TINY = [
    "data.dataset=digits",
    "data.train_subset=96",
    "data.test_subset=48",
    "model.encoder=convnet",
    "model.widths=[4, 8, 8, 8]",
    "model.hidden_dim=16",
    "model.projection_dim=8",
    "train.batch_size=32",
    "train.knn_train=48",
    "train.knn_test=24",
    "train.knn_k=5",
    "train.precision=32",
    "train.channels_last=false",
    "eval.linear_epochs=1",
    "diagnostics.enabled=false",
]
SETS = [arg for item in TINY for arg in ("--set", item)]


def _epoch_lines(out: str) -> list[str]:
    return [line.split("  ")[0] for line in out.splitlines() if line.startswith("Epoch")]


def _stop_at(monkeypatch, epoch: int, error: BaseException) -> None:
    """The training step raises ``error`` at the first step of ``epoch`` (0-based)."""
    step = ContrastiveTask.training_step

    def training_step(self, batch, batch_idx):
        if self.current_epoch == epoch:
            raise error
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ContrastiveTask, "training_step", training_step)


@pytest.mark.parametrize("error,code", [(KeyboardInterrupt(), 130), (ValueError("a broken step"), 2)])
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(error, code, tmp_path, capsys, monkeypatch):
    _stop_at(monkeypatch, 0, error)
    out = tmp_path / "run"
    assert main(["train", *SETS, "--method", "ucl", "--epochs", "2", "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    if code == 130:
        assert err == f"hscl: interrupted before the first epoch ended; nothing was saved in {out}\n"
    else:
        assert err == "hscl: error: a broken step\n"
    assert not out.exists()


def test_resume_continues_only_its_own_config_and_times_add_up(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    command = ["train", *SETS, "--method", "scl", "--epochs", "2", "--out", str(out)]
    with monkeypatch.context() as patch:
        _stop_at(patch, 1, KeyboardInterrupt())  # Ctrl-C in the second epoch
        assert main(command) == 130
    captured = capsys.readouterr()
    assert captured.err == (
        f"hscl: interrupted; {out}/checkpoints/last.ckpt holds epoch 1 of 2: continue with the same command and "
        "--resume\n"
    )
    assert _epoch_lines(captured.out) == ["Epoch 1/2"]  # 1-based, once, nothing left of the interrupted epoch

    # another loss and other data: refused in one line listing both, the run untouched
    changed = [*command, "--method", "h-scl", "--set", "data.train_subset=64", "--resume"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"hscl: error: cannot resume {out}: it was trained with another config (")
        and err.count("\n") == 1
    )
    assert "data.train_subset: 96 -> 64" in err and "loss.method: 'scl' -> 'h-scl'" in err
    assert "h-scl" not in (out / "config.yaml").read_text()

    assert main([*command, "--resume"]) == 0
    captured = capsys.readouterr()
    assert _epoch_lines(captured.out) == ["Epoch 2/2"]
    assert captured.out.count("final checkpoint:") == 1
    with (out / "metrics.csv").open() as handle:
        seconds = {int(r["epoch"]): float(r["epoch_seconds"]) for r in csv.DictReader(handle)}
    assert list(seconds) == [1, 2] and all(s > 0 for s in seconds.values())

    # Table I's cell of this run: its train time is both epochs', the one before the interruption included
    from hscl.engine.pretrain.run import load_data
    from hscl.experiments.table1 import _run_one

    config = load_config(None, [*TINY, "loss.method=scl", "train.epochs=2"])
    result = _run_one(config, out, load_data(config))
    assert result["train_seconds"] == pytest.approx(seconds[1] + seconds[2])
    assert json.loads((out / "eval.json").read_text())["train_seconds"] == result["train_seconds"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """What a terminal shows: each line as left by its last carriage return."""
    return [line.split("\r")[-1].rstrip() for line in text.split("\n")]


@pytest.mark.parametrize("terminal", [True, False])
def test_one_progress_line_per_epoch_on_rank_zero(terminal):
    stream = _Terminal() if terminal else io.StringIO()
    bar = EpochProgress(stream, refresh_seconds=0.0)
    trainer = SimpleNamespace(
        current_epoch=0, max_epochs=2, is_global_zero=True, num_training_batches=3, progress_bar_metrics={}
    )
    bar._trainer = trainer
    for epoch in range(2):
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer, None)
        for step in range(3):
            bar.on_train_batch_end(trainer, None, None, None, step)
        trainer.progress_bar_metrics = {"loss": 4.25 - epoch, "knn_top1": 30.0 + epoch}
        bar.on_train_epoch_end(trainer, None)
    bar.on_train_end(trainer, None)
    screen = _screen(stream.getvalue())
    assert screen[-1] == "" and [line.split("  ")[0] for line in screen[:-1]] == ["Epoch 1/2", "Epoch 2/2"]
    assert "3 steps" in screen[0] and "loss 4.25" in screen[0] and "knn_top1 31" in screen[1]
    assert ("step 3/3" in stream.getvalue()) == terminal  # the running epoch is redrawn on a terminal only

    quiet = io.StringIO()
    other = EpochProgress(quiet, refresh_seconds=0.0)
    other._trainer = trainer = SimpleNamespace(**{**vars(trainer), "is_global_zero": False})
    other.on_train_epoch_start(trainer, None)
    other.on_train_batch_end(trainer, None, None, None, 0)
    other.on_train_epoch_end(trainer, None)
    assert quiet.getvalue() == ""  # under DDP only rank 0 shows progress
