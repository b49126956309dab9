"""The choice of SCHaNe's lam in ``hscl reproduce schane``: validation episodes from a share of the held-out classes'
images that the test episodes never draw, the validation-best lam reported with its test accuracy; ``--select test``
labelled."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

import hscl.experiments._schane_selection as selection
from hscl.cli import main
from hscl.data.images import ImageData
from hscl.experiments._schane_config import find_experiment, load_experiment
from hscl.experiments._schane_outputs import _ablation_table, _selection_text, _summarise_ablation


def _id_data(per_class: int = 40, classes: int = 10) -> ImageData:
    """Images (1, 2, 2) whose pixels spell their id: training ids 0.., test ids 10000.. (so a test image shows)."""

    def split(offset: int):
        ids = torch.arange(per_class * classes) + offset
        images = torch.stack([ids // 256 % 256, ids % 256, ids // 65536, torch.zeros_like(ids)], 1)
        return images.to(torch.uint8).reshape(-1, 1, 2, 2), torch.arange(per_class * classes) % classes

    (train_x, train_y), (test_x, test_y) = split(0), split(10000)
    return ImageData("ids", train_x, train_y, test_x, test_y, [str(c) for c in range(classes)])


def _ids(images: torch.Tensor) -> set[int]:
    flat = images.reshape(-1, 4).long()
    return {int(a) * 256 + int(b) + 65536 * int(c) for a, b, c, _ in flat}


def test_validation_images_are_a_stratified_share_of_all_images_that_the_test_episodes_never_draw(experiment):
    data = _id_data()
    heldout = [5, 6, 7, 8, 9]
    val, rest = selection.validation_split(data, heldout, 0.25, shots=5, queries=10)
    val_ids, rest_ids = _ids(val.train_images) | _ids(val.test_images), _ids(rest.train_images) | _ids(rest.test_images)
    pooled_labels = {
        **dict(enumerate(data.train_labels.tolist())),
        **{10000 + i: y for i, y in enumerate(data.test_labels.tolist())},
    }
    assert not val_ids & rest_ids and val_ids | rest_ids == set(pooled_labels)  # disjoint, every image once
    assert {pooled_labels[i] for i in val_ids} == set(heldout)  # only held-out classes give validation images
    labels = torch.cat([val.train_labels, val.test_labels]).tolist()
    assert Counter(labels) == dict.fromkeys(heldout, 20)  # stratified: 25% of the 80 (40 + 40) images per class
    assert min(val_ids) < 10000 <= max(val_ids)  # from both splits: all the images of a class take part
    assert _ids(selection.validation_episode_data(data, heldout, 0.25, shots=5, queries=10).test_images) == _ids(
        val.test_images
    )  # the fixed validation seed
    with pytest.raises(ValueError, match=r"ablation\.val_fraction=0\.25 leaves class 5 20 validation images"):
        selection.validation_split(data, heldout, 0.25, shots=5, queries=16)
    # the test episodes draw from the rest when lam is chosen on validation, from everything when chosen on test
    experiment.ablation = dataclasses.replace(experiment.ablation, val_fraction=0.25)
    pool = selection.test_episode_pool(dataclasses.replace(experiment, heldout_classes=heldout), data)
    assert _ids(pool.train_images) | _ids(pool.test_images) == rest_ids
    experiment.ablation = dataclasses.replace(experiment.ablation, select="test")
    assert selection.test_episode_pool(experiment, data) is data


#: test-episode accuracies per lam (3 episodes), and the validation accuracies the fake episodes give
TEST = {0.0: [60.0, 62.0, 64.0], 0.5: [70.0, 70.0, 70.0], 0.9: [80.0, 82.0, 84.0], 1.0: [20.0, 20.0, 20.0]}
VALIDATION = {0.0: 50.0, 0.5: 75.0, 0.9: 65.0, 1.0: 20.0}  # best: 0.5, not the test-best 0.9


def _cells() -> list[dict]:
    return [{"lam": lam, "source": "ablation", "accuracy": list(acc)} for lam, acc in TEST.items()]


@pytest.fixture
def experiment():
    return load_experiment(find_experiment("pretrained"), ["fewshot.episodes=3", "fewshot.queries=5"])


def test_lam_is_chosen_on_the_validation_episodes_and_reported_on_test(experiment, monkeypatch, tmp_path):
    seen = {}

    def fake_few_shot(model, data, classes, configs, fewshot, **kwargs):
        seen.update(data=data, configs=configs, fewshot=fewshot, out_dir=kwargs["out_dir"])
        lam_of = {name: config.lam for name, config in configs.items()}
        rows = [{"episode": e, "accuracy": {n: VALIDATION[lam] + e for n, lam in lam_of.items()}} for e in range(3)]
        return {fewshot.shots[0]: rows}

    monkeypatch.setattr(selection, "few_shot", fake_few_shot)
    cells = _cells()
    chosen = selection.choose_lam(experiment, None, _id_data(), None, cells, tmp_path, torch.device("cpu"), False)
    assert chosen["selected_on"] == "validation" and chosen["lam"] == 0.5
    assert chosen["test_top1_mean"] == 70.0 and chosen["val_top1_mean"] == 76.0  # 75 + mean(0, 1, 2)
    assert sorted(config.lam for config in seen["configs"].values()) == sorted(TEST)  # every lam on validation
    assert seen["fewshot"].shots == [5] and seen["out_dir"] == Path(tmp_path) / "ablation-validation"
    seen_ids = _ids(seen["data"].test_images) | _ids(seen["data"].train_images)
    pool = selection.test_episode_pool(experiment, _id_data())
    assert seen_ids and not seen_ids & (_ids(pool.test_images) | _ids(pool.train_images))  # no test-episode image
    summary = _summarise_ablation({"shots": 5, "ways": 5, "episodes": 3, "lams": cells, "selection": chosen})
    header, rows = _ablation_table(summary)
    assert "validation top-1 (%)" in header and rows[1][-1] == "**selected (validation)**"
    assert [row[-1] for row in rows].count("") == 3
    text = _selection_text(summary)
    assert "lam chosen on 3 validation episodes" in text and "lam = 0.5" in text and "test accuracy 70.00%" in text


def test_select_test_chooses_the_test_best_lam_and_says_so(experiment, monkeypatch, tmp_path):
    monkeypatch.setattr(selection, "few_shot", lambda *a, **k: pytest.fail("no validation episodes on test"))
    experiment.ablation = dataclasses.replace(experiment.ablation, select="test")
    cells = _cells()
    chosen = selection.choose_lam(experiment, None, _id_data(), None, cells, tmp_path, torch.device("cpu"), False)
    assert chosen == {"selected_on": "test", "lam": 0.9, "test_top1_mean": 82.0}
    summary = _summarise_ablation({"shots": 5, "ways": 5, "episodes": 3, "lams": cells, "selection": chosen})
    header, rows = _ablation_table(summary)
    assert "validation top-1 (%)" not in header and rows[2][-1] == "**selected (test)**"
    assert _selection_text(summary).startswith("lam chosen on the TEST episodes (the paper's protocol")


def test_select_is_checked_and_refused_where_nothing_is_chosen(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"ablation\.select must be one of 'validation', 'test', got 'train'"):
        load_experiment(find_experiment("pretrained"), ["ablation.select=train"])
    assert main(["reproduce", "table1", "--select", "test", "--out", str(tmp_path / "t")]) == 2
    assert "--select applies to schane, auto-beta; table1 chooses no best point" in capsys.readouterr().err
    assert main(["reproduce", "schane", "--preset", "quick", "--select", "test", "--out", str(tmp_path / "s")]) == 2
    assert "the schane preset 'quick' has no ablation" in capsys.readouterr().err
