"""The engine of the extensions: multi-label training and evaluation, loss.memory_size / memory_warmup_steps,
loss.beta: auto (per-epoch beta, memory fill), and exact resume with a memory and an automatic beta."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import LEARNS, assert_above_chance, assert_loss_fell, run_losses
from helpers import TINY as TRAIN_TINY
from hscl.data.images import load_dataset
from hscl.data.images.mosaic import mosaic_dataset
from hscl.engine.evaluation.probes import evaluate_task, knn_mean_average_precision, knn_scores
from hscl.engine.evaluation.report import html_report
from hscl.engine.pretrain import monitor as monitor_module
from hscl.engine.pretrain import task as task_module
from hscl.engine.pretrain.loss_state import AUTO_BETA_KEY, AUTO_STATE_KEY
from hscl.engine.pretrain.monitor import MULTILABEL_NOTE
from hscl.engine.pretrain.run import load_task, train
from hscl.engine.pretrain.task import build_loss
from hscl.engine.runtime.checkpoints import CheckpointError
from hscl.engine.runtime.config import load_config
from hscl.hardening import AutoExponential

TINY = [*TRAIN_TINY, "diagnostics.probe_size=64"]  # the tiny run of test_train, with a smaller probe


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mosaics():
    """A small real multi-label set: 2 x 2 mosaics (16 x 16) of scikit-learn's digits, bool (N, 10) labels."""
    return mosaic_dataset(load_dataset("digits"), train_size=320, test_size=160, seed=0)


@pytest.fixture
def loss_calls(monkeypatch):
    """Every (labels, beta after the call) of the training loss, recorded around global_batch_loss."""
    calls = []
    original = task_module.global_batch_loss

    def spy(loss_fn, z, labels=None, **kwargs):
        loss = original(loss_fn, z, labels, **kwargs)
        auto = monitor_module.auto_hardening(loss_fn)
        calls.append((None if labels is None else labels.clone(), None if auto is None else float(auto.beta)))
        return loss

    monkeypatch.setattr(task_module, "global_batch_loss", spy)
    return calls


# -- multi-label ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scl", "ucl"])
def test_multilabel_run_gives_label_sets_to_the_loss_and_reports_map(method, mosaics, loss_calls, tmp_path):
    config = load_config(None, [*TINY, *LEARNS, f"loss.method={method}", "train.epochs=2"])
    final = train(config, tmp_path / "run", data=mosaics)
    assert loss_calls and all(labels.shape == (64, 10) for labels, _ in loss_calls)  # (B, C) label sets
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert_loss_fell(run_losses(tmp_path / "run"), what=method)
    # a scorer that ignores the images ranks a class's images at random: its AP is the class's share of images
    chance = 100 * mosaics.test_labels.float().mean(0)
    for row in rows:
        assert float(row["knn_mAP"]) >= float(chance.mean()) + 30 and math.isnan(float(row["knn_top1"]))
        assert row["diag_hardening"] == MULTILABEL_NOTE
        assert all(math.isnan(float(row[k])) for k in monitor_module.CLASS_DIAGNOSTICS)  # skipped, not made up
        assert float(row["effective_rank"]) > 1 and math.isfinite(float(row["uniformity"]))
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figures == ["spectrum.png"]  # the class-free figure only

    task, _ = load_task(final)
    result = evaluate_task(task, mosaics, config)
    assert result["multilabel"] is True and "linear_top1" not in result
    for key in ("linear_mAP", "linear_micro_f1", "linear_train_mAP", "knn_mAP"):
        assert 0 <= result[key] <= 100, key
    for key in ("linear_mAP", "linear_train_mAP", "knn_mAP"):  # the probes learn the classes the mosaics show
        assert result[key] >= float(chance.mean()) + 30, (key, result[key], float(chance.mean()))
    (tmp_path / "run" / "eval.json").write_text(json.dumps(result))
    page = html_report(tmp_path / "run").read_text()
    assert "linear_mAP" in page and "knn_mAP" in page


def test_same_label_pairs_of_a_multilabel_run_share_a_class(mosaics):
    from hscl.engine.pretrain.datamodule import ViewsDataModule

    config = load_config(None, [*TINY, "loss.method=h-scl"])
    module = ViewsDataModule(mosaics, config)
    assert module.sampler.pair_mode == "same_label"
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape[:2] == (64, 2) and labels.shape == (64, 10) and labels.dtype == torch.bool
    index = module.sampler.batches(0)[0]
    shared = (mosaics.train_labels[index[:, 0]] & mosaics.train_labels[index[:, 1]]).any(1)
    assert bool(shared.all())


def test_knn_scores_match_a_loop():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40, 6, generator=generator), torch.randn(9, 6, generator=generator)
    bank_labels = torch.rand(40, 4, generator=generator) < 0.4
    k, t = 7, 0.1
    scores = knn_scores(bank, bank_labels, queries, k=k, t=t)
    for q in range(9):
        sims = [float(queries[q] @ b / (queries[q].norm() * b.norm())) for b in bank]
        nearest = sorted(range(40), key=lambda i: -sims[i])[:k]
        weights = {i: math.exp(sims[i] / t) for i in nearest}
        for c in range(4):
            expected = sum(w for i, w in weights.items() if bank_labels[i, c]) / sum(weights.values())
            assert float(scores[q, c]) == pytest.approx(expected, rel=1e-4)
    # a query equal to a bank row whose label set is unique ranks that set first: mAP 100
    perfect = knn_mean_average_precision(bank, bank_labels, bank[:5], bank_labels[:5], k=1)
    assert perfect == pytest.approx(100.0)


# -- config keys ----------------------------------------------------------------------------------------------


def test_config_keys_reach_the_loss():
    config = load_config(
        None, ["loss.method=h-scl", "loss.beta=auto", "loss.auto_target=0.25", "loss.memory_size=128",
               "loss.memory_warmup_steps=3"]
    )  # fmt: skip
    loss_fn = build_loss(config)
    assert isinstance(loss_fn.hardening, AutoExponential) and loss_fn.hardening.target == 0.25
    assert (loss_fn.memory_size, loss_fn.memory_warmup_steps) == (128, 3)
    assert build_loss(load_config(None, ["loss.method=scl"])).memory_size == 0
    assert load_config(None, []).loss.auto_target == 0.5


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["loss.beta=often"], "loss.beta: 'often' is not a valid value"),
        (["loss.beta=-0.5"], "loss.beta must be a number >= 0 or auto"),
        (["loss.auto_target=0"], r"loss.auto_target must lie in \(0, 1\]"),
        (["loss.auto_target=1.5"], r"loss.auto_target must lie in \(0, 1\]"),
        (["loss.memory_size=-1"], "loss.memory_size must be >= 0"),
        (["loss.memory_size=8", "loss.memory_warmup_steps=-2"], "loss.memory_warmup_steps must be >= 0"),
        (["loss.memory_warmup_steps=5"], "loss.memory_warmup_steps needs a memory"),
        (["loss.method=supcon", "loss.memory_size=8"], "loss.memory_size does not apply to method 'supcon'"),
        (["loss.method=scl", "loss.beta=auto"], "loss.beta is a hardening; method 'scl' has none"),
        (["loss.beta=auto", "loss.tau=1.2"], "give at most one of loss.beta, loss.tau"),
        (["loss.memory_size=1.5"], "loss.memory_size must be an integer"),
    ],
)
def test_bad_extension_keys_are_refused_in_one_line(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        load_config(None, ["loss.method=h-scl", *overrides])
    assert "\n" not in str(info.value)


# -- per-epoch logging ----------------------------------------------------------------------------------------


def test_auto_beta_epoch_mean_and_memory_fill_are_logged(loss_calls, tmp_path):
    extra = ["loss.method=h-scl", "loss.beta=auto", "loss.memory_size=300", "loss.memory_warmup_steps=4"]
    config = load_config(None, [*TINY, *extra, "train.epochs=2", "diagnostics.enabled=false"])
    final = train(config, tmp_path / "run")
    rows = _rows(tmp_path / "run" / "metrics.csv")
    steps = 400 // 64  # 6 steps of 64 samples x 2 views = 128 rows each
    betas = [beta for _, beta in loss_calls]
    assert len(betas) == 2 * steps and all(b > 0 for b in betas)
    for epoch, row in enumerate(rows):
        assert float(row["beta"]) == pytest.approx(sum(betas[epoch * steps : (epoch + 1) * steps]) / steps, rel=1e-5)
        assert int(row["memory_rows"]) == 300  # full after 3 steps of 128 rows
        assert row["tau"] == "" and float(row["step_seconds"]) > 0
    task, _ = load_task(final)
    z, labels = task.loss_fn.memory
    assert z.shape == (300, 16) and labels.shape == (300,)
    assert int(task.loss_fn.memory_steps) == 2 * steps
    assert task.loss_fn.hardening.beta == pytest.approx(betas[-1])  # the checkpoint keeps the last chosen beta


def test_fixed_beta_run_leaves_the_new_columns_empty(tmp_path):
    config = load_config(
        None, [*TINY, "loss.method=h-scl", "loss.beta=1", "train.epochs=1", "diagnostics.enabled=false"]
    )
    train(config, tmp_path / "run")
    (row,) = _rows(tmp_path / "run" / "metrics.csv")
    assert row["beta"] == "" and row["memory_rows"] == "" and row["knn_mAP"] == ""
    assert_above_chance(float(row["knn_top1"]), 10, what="kNN monitor")


# -- exact resume ---------------------------------------------------------------------------------------------


class _InterruptedError(RuntimeError):
    pass


def test_interrupted_run_with_memory_and_auto_beta_resumes_exactly(monkeypatch, tmp_path):
    extra = ["loss.method=h-scl", "loss.beta=auto", "loss.memory_size=200", "loss.memory_warmup_steps=3"]
    extra.append("loss.auto_warmup_steps=4")  # the moving average runs in the resumed epochs
    config = load_config(None, [*TINY, *extra, "train.epochs=3", "train.knn_k=0", "diagnostics.enabled=false"])
    reference = train(config, tmp_path / "reference")

    original = monitor_module.EpochLogger.on_train_epoch_end

    def interrupt_after_first_epoch(self, trainer, pl_module):
        original(self, trainer, pl_module)  # last.ckpt of epoch 1 is written
        if trainer.current_epoch == 0:
            raise _InterruptedError("killed after epoch 1")

    monkeypatch.setattr(monitor_module.EpochLogger, "on_train_epoch_end", interrupt_after_first_epoch)
    with pytest.raises(_InterruptedError):
        train(config, tmp_path / "killed")
    assert not (tmp_path / "killed" / "final.ckpt").exists()
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["state_dict"]["loss_fn.memory_z"].shape == (200, 16)  # the memory is in the checkpoint
    monkeypatch.setattr(monitor_module.EpochLogger, "on_train_epoch_end", original)
    resumed = train(config, tmp_path / "killed", resume=True)

    a = torch.load(reference, map_location="cpu", weights_only=True)
    b = torch.load(resumed, map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=0, atol=0, msg=key)
    assert b[AUTO_BETA_KEY] == a[AUTO_BETA_KEY] and b[AUTO_STATE_KEY] == a[AUTO_STATE_KEY]
    ref_rows, run_rows = _rows(tmp_path / "reference" / "metrics.csv"), _rows(tmp_path / "killed" / "metrics.csv")
    assert [r["epoch"] for r in run_rows] == ["1", "2", "3"]
    for key in ("loss", "beta", "beta_solved", "memory_rows"):
        assert [r[key] for r in run_rows] == [r[key] for r in ref_rows], key


def test_a_checkpoint_from_before_the_memory_still_loads(tmp_path):
    config = load_config(None, [*TINY, "loss.method=scl", "train.epochs=1", "diagnostics.enabled=false"])
    final = train(config, tmp_path / "run")
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if ".memory_" not in k}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    task, _ = load_task(old)
    assert task.loss_fn.memory is None
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("model.encoder")}
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match="missing"):
        load_task(old)


def test_ddp_multilabel_run_with_memory_and_auto_beta(tmp_path):
    """Two gloo processes: the (B_k, C) label sets are gathered, every rank enqueues the global rows."""
    import os
    import subprocess
    import sys

    from hscl.data.images import DatasetNotFoundError

    try:
        load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not on disk (Debian package dataset-fashion-mnist)")
    sets = []
    for item in [
        *[t for t in TINY if not t.startswith(("data.", "train.batch_size"))],
        "data.dataset=fashion-mnist-mosaic",
        "data.train_subset=128",
        "data.test_subset=64",
        "train.batch_size=32",
        "train.epochs=1",
        "loss.method=h-scl",
        "loss.beta=auto",
        "loss.memory_size=192",
        "loss.memory_warmup_steps=1",
    ]:
        sets += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "hscl.cli", "train", *sets, "--devices", "2", "--strategy", "ddp", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = _rows(out / "metrics.csv")
    assert int(row["memory_rows"]) == 192 and float(row["beta"]) > 0 and 0 < float(row["knn_mAP"]) <= 100
    final = torch.load(out / "final.ckpt", map_location="cpu", weights_only=True)
    assert final["state_dict"]["loss_fn.memory_z"].shape == (192, 16)
    assert final["state_dict"]["loss_fn.memory_labels"].shape == (192, 10)  # the label sets of the global rows
    assert int(final["state_dict"]["loss_fn.memory_steps"]) == 128 // 32
