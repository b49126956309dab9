"""Validation data: ``eval.val_fraction`` holds out part of the training split; evaluation scores it (``val_*``);
``hscl sweep`` selects on it (``--select validation``, default) or on the test split (``--select test``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY
from hscl.cli import main
from hscl.data.images import VALIDATION_SEED, ImageData, holdout_indices, stratified_indices
from hscl.engine.evaluation.multilabel import linear_probe_multilabel
from hscl.engine.evaluation.probes import evaluate_task, knn_accuracy, knn_mean_average_precision, linear_probe
from hscl.engine.pretrain.datamodule import ViewsDataModule, split_data
from hscl.engine.pretrain.run import load_data, load_task, train
from hscl.engine.runtime.config import RunConfig, load_config
from hscl.engine.sweep.run import run_sweep
from hscl.engine.sweep.spec import DEFAULT_VAL_FRACTION, Sweep

CLASSES = 3


def _id_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (1, 4, 4) whose first two pixels spell their index (so an image names itself), the rest a
    class pattern plus noise (separable classes); labels ``index % 3``."""
    labels = torch.arange(n) % CLASSES
    centres = torch.tensor([[40.0], [128.0], [215.0]])
    pixels = centres[labels] + 12 * torch.randn(n, 16, generator=generator)
    images = pixels.clamp(0, 255).round().to(torch.uint8).reshape(n, 1, 4, 4)
    ids = torch.arange(n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (ids // 256).to(torch.uint8), (ids % 256).to(torch.uint8)
    return images, labels


def _ids(images: torch.Tensor) -> set[int]:
    flat = images.reshape(-1, *images.shape[-3:])
    return {int(a) * 256 + int(b) for a, b in zip(flat[:, 0, 0, 0], flat[:, 0, 0, 1])}


def _data(n_train: int = 600, n_test: int = 150) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    train_images, train_labels = _id_images(n_train, generator)
    test_images, test_labels = _id_images(n_test, generator)
    return ImageData("ids", train_images, train_labels, test_images, test_labels, ["a", "b", "c"])


def _config(*overrides: str) -> RunConfig:
    base = ["train.batch_size=32", "eval.linear_epochs=20", "eval.linear_lr=0.01", "eval.knn_k=5"]
    return load_config(None, [*base, *overrides])


# --------------------------------------------------------------------------------------------
# the split


def test_holdout_indices_are_stratified_deterministic_and_disjoint():
    labels = np.repeat([0, 1, 2, 3], [50, 100, 150, 100])  # 400 items, unequal classes
    kept, held = holdout_indices(labels, 40)
    assert not set(kept) & set(held)  # no index both trains and validates
    assert sorted([*kept, *held]) == list(range(400))
    assert Counter(labels[held].tolist()) == {0: 5, 1: 10, 2: 15, 3: 10}  # each class its share
    again_kept, again_held = holdout_indices(labels, 40)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert np.array_equal(held, stratified_indices(labels, 40, VALIDATION_SEED))
    assert not np.array_equal(held, holdout_indices(labels, 40, seed=VALIDATION_SEED + 1)[1])


def test_split_holds_out_the_same_images_for_every_training_seed_and_never_trains_on_them():
    data = _data()
    splits = {
        seed: split_data(data, _config("data.train_subset=300", "eval.val_fraction=0.2", f"train.seed={seed}"))
        for seed in (0, 5)
    }
    val_ids = _ids(splits[0].val_images)
    assert len(val_ids) == 60 and _ids(splits[5].val_images) == val_ids  # round(0.2 * 300), whatever the seed
    assert Counter(splits[0].val_labels.tolist()) == {0: 20, 1: 20, 2: 20}
    assert _ids(splits[0].train_images) != _ids(splits[5].train_images)  # the training subset follows the seed
    for seed, split in splits.items():
        assert split.train_labels.shape[0] == 240 and not _ids(split.train_images) & val_ids
        assert torch.equal(split.test_images, data.test_images)
        # what pre-training reads: every batch of an epoch, all views
        config = _config("data.train_subset=300", "eval.val_fraction=0.2", f"train.seed={seed}")
        seen = set()
        for images, _ in ViewsDataModule(split, config).train_dataloader():
            seen |= _ids(images)
        assert seen and seen <= _ids(split.train_images) and not seen & val_ids
    whole = split_data(data, _config("eval.val_fraction=0.1"))
    assert (whole.train_labels.shape[0], whole.val_labels.shape[0]) == (540, 60)
    assert not _ids(whole.train_images) & _ids(whole.val_images)
    assert split_data(data, _config()).val_images is None  # val_fraction 0: no hold-out, nothing changes
    assert torch.equal(split_data(data, _config()).train_images, data.train_images)


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_val_fraction_outside_0_1_is_one_line_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^eval.val_fraction must lie in \[0, 1\)"):
        _config(f"eval.val_fraction={value}")


def test_a_hold_out_of_nothing_is_refused():
    with pytest.raises(ValueError, match=r"eval\.val_fraction=0\.001 of 300 training images holds out 0;"):
        split_data(_data(), _config("data.train_subset=300", "eval.val_fraction=0.001"))


# --------------------------------------------------------------------------------------------
# evaluation


class _FlatTask:
    """A frozen "encoder": the pixels as features."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()


def test_evaluate_task_scores_the_held_out_images_as_an_independent_probe_does():
    config = _config("eval.val_fraction=0.25")
    data = split_data(_data(), config)
    result = evaluate_task(_FlatTask(), data, config)
    train_x, val_x, test_x = (x.flatten(1).float() for x in (data.train_images, data.val_images, data.test_images))
    ec, seed = config.eval, config.train.seed
    kwargs = {"epochs": ec.linear_epochs, "lr": ec.linear_lr, "batch_size": ec.linear_batch_size, "seed": seed}
    on_val = linear_probe(train_x, data.train_labels, val_x, data.val_labels, **kwargs)
    on_test = linear_probe(train_x, data.train_labels, test_x, data.test_labels, **kwargs)
    assert result["val_linear_top1"] == on_val.top1 and result["val_linear_top5"] == on_val.top5
    assert result["linear_top1"] == on_test.top1 and result["linear_top5"] == on_test.top5  # unchanged test keys
    assert result["val_knn_top1"] == knn_accuracy(train_x, data.train_labels, val_x, data.val_labels, k=ec.knn_k)
    assert result["knn_top1"] == knn_accuracy(train_x, data.train_labels, test_x, data.test_labels, k=ec.knn_k)
    assert result["val_size"] == 150 and data.train_labels.shape[0] == 450
    assert result["val_linear_top1"] >= 100 / CLASSES + 30  # separable classes: the probe learned them
    assert "val_linear_top1" not in evaluate_task(_FlatTask(), _data(), _config())  # no hold-out, no val keys


def test_evaluate_task_multilabel_gives_validation_map():
    generator = torch.Generator().manual_seed(3)

    def split(n: int):
        labels = torch.rand(n, CLASSES, generator=generator) < 0.5
        pixels = 60 + 120 * labels.float() + 15 * torch.randn(n, CLASSES, generator=generator)
        return pixels.clamp(0, 255).round().to(torch.uint8).reshape(n, 1, 1, CLASSES), labels

    (train_images, train_labels), (test_images, test_labels) = split(400), split(100)
    data = ImageData("sets", train_images, train_labels, test_images, test_labels, ["a", "b", "c"])
    config = _config("eval.val_fraction=0.2")
    data = split_data(data, config)
    result = evaluate_task(_FlatTask(), data, config)
    train_x, val_x = data.train_images.flatten(1).float(), data.val_images.flatten(1).float()
    probe = linear_probe_multilabel(train_x, data.train_labels, val_x, data.val_labels)
    assert result["val_linear_mAP"] == 100.0 * probe["mAP"]
    assert result["val_linear_micro_f1"] == 100.0 * probe["micro_f1"]
    knn = knn_mean_average_precision(train_x, data.train_labels, val_x, data.val_labels, k=config.eval.knn_k)
    assert result["val_knn_mAP"] == knn and result["val_size"] == 80
    assert result["val_linear_mAP"] > 90 and "linear_mAP" in result


def test_a_run_with_a_hold_out_is_evaluated_on_the_same_images_from_its_checkpoint(tmp_path, capsys):
    config = load_config(None, [*TINY, "loss.method=scl", "train.epochs=1", "eval.val_fraction=0.1"])
    data = load_data(config)
    assert (data.train_labels.shape[0], data.val_labels.shape[0]) == (360, 40)  # 10% of the 400-image subset
    final = train(config, tmp_path / "run", data=data)
    task, saved = load_task(final, device="cpu")
    assert saved.eval.val_fraction == 0.1  # the checkpoint's config carries the hold-out
    expected = evaluate_task(task, data, config)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(final), "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    for key in ("val_linear_top1", "val_linear_top5", "val_knn_top1", "linear_top1", "knn_top1"):
        assert result[key] == expected[key]
    assert "validation (40 images held out of the training split): linear_top1" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the sweep's choice

#: per beta: (validation accuracy, test accuracy); the validation-best point (0.5) is not the test-best one (2.0)
SCORES = {0.5: (85.0, 75.0), 1.0: (80.0, 78.0), 2.0: (70.0, 90.0)}


def scored_trial(config, run_dir: Path) -> dict:
    """Fixed accuracies per beta, and the hold-out the sweep asked for."""
    val, test = SCORES[config.loss.beta]
    return {"val_linear_top1": val, "linear_top1": test, "val_fraction": config.eval.val_fraction}


def _base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text("name: scored\nloss:\n  method: h-scl\n  beta: 1.0\n")
    return path


def test_sweep_selects_the_validation_best_point_and_reports_its_test_accuracy(tmp_path):
    sweep = Sweep(config=str(_base(tmp_path)), grid={"beta": list(SCORES)}, out=str(tmp_path / "sweep"))
    assert sweep.select == "validation" and sweep.notes and "eval.val_fraction=0.1" in sweep.notes[0]
    result = run_sweep(sweep, trial_fn=scored_trial, progress=False)
    assert result["selected_on"] == "validation" and result["selection_metric"] == "val_linear_top1"
    assert result["best"]["beta"] == 0.5 and result["best_test"] == 75.0  # not the test-best 90 of beta = 2
    assert all(p["val_fraction"] == DEFAULT_VAL_FRACTION for p in result["points"])  # set, and said so
    assert "selected on validation val_linear_top1" in result["title"]
    best = "best (selected on validation val_linear_top1 85.00): beta=0.5; its test linear_top1 75.00"
    assert result["best_text"] == best
    saved = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert saved["selected_on"] == "validation" and saved["best"]["beta"] == 0.5
    markdown = (tmp_path / "sweep" / "sweep_results.md").read_text()
    assert "| 0.5 | 85.00 | 75.00 | complete | 0 | **best (validation)** |" in markdown


def test_a_finished_sweep_selects_again_on_test_without_running_anything(tmp_path):
    base, out = str(_base(tmp_path)), str(tmp_path / "sweep")
    run_sweep(Sweep(config=base, grid={"beta": list(SCORES)}, out=out), trial_fn=scored_trial, progress=False)
    again = Sweep(config=base, grid={"beta": list(SCORES)}, out=out, select="test", overrides=["eval.val_fraction=0.1"])
    result = run_sweep(
        again, trial_fn=lambda config, run_dir: pytest.fail("a finished point ran again"), progress=False
    )
    assert result["selected_on"] == "test" and result["best"]["beta"] == 2.0 and result["best_test"] == 90.0


def test_select_test_picks_the_test_best_point_and_says_so(tmp_path, capsys):
    args = ["sweep", str(_base(tmp_path)), "--grid", "beta=0.5,1,2", "--out", str(tmp_path / "sweep")]
    assert main([*args, "--trial", "test_validation:scored_trial", "--select", "test"]) == 0
    out = capsys.readouterr().out
    assert "best (selected on TEST linear_top1, the paper's protocol): beta=2.0; test linear_top1 90.00" in out
    assert "selecting on validation data" not in out  # no hold-out was added
    result = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert result["selected_on"] == "test" and result["best"]["beta"] == 2.0 and result["best_test"] == 90.0
    assert all(p["val_fraction"] == 0.0 for p in result["points"])  # the paper's protocol trains on it all
    assert "selected on TEST linear_top1 (the paper's protocol" in result["title"]
    assert "**best (test)**" in (tmp_path / "sweep" / "sweep_results.md").read_text()


def test_a_trial_without_validation_metrics_is_refused_when_selecting_on_them(tmp_path):
    sweep = Sweep(config=str(_base(tmp_path)), grid={"beta": [1.0]}, out=str(tmp_path / "sweep"))
    with pytest.raises(ValueError, match="without the metric 'val_linear_top1'; selecting on validation needs"):
        run_sweep(sweep, trial_fn=lambda config, run_dir: {"linear_top1": 1.0}, progress=False)
    with pytest.raises(ValueError, match="select must be validation or test"):
        Sweep(config=None, grid={"beta": [1.0]}, out=str(tmp_path / "other"), select="train")
