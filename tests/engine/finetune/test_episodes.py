"""N-way K-shot episodes: support and queries drawn from all the images of a class (the papers' protocol), class
sets that differ between episodes, the pooled image index, and the linear head fitted when an objective trains
none (SCHaNe at lam = 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hscl.engine.finetune.fewshot as fewshot_module
from hscl.data.augment import preset_for
from hscl.data.images import ImageData, load_dataset
from hscl.engine.finetune.config import FinetuneConfig
from hscl.engine.finetune.episodes import episode_images, fit_linear_head, fits_head, sample_episode
from hscl.engine.finetune.fewshot import FewShotConfig, few_shot, run_episode
from hscl.engine.finetune.loop import FineTuneModel, embed
from hscl.models import build_backbone

#: a toy data set: 6 classes, 5 training and 3 test images each; image k (pooled: training then test) is filled
#: with the value k, so an image tells which one it is
CLASSES, N_TRAIN, N_TEST = 6, 5, 3


@pytest.fixture(scope="module")
def toy() -> ImageData:
    train_labels = torch.arange(CLASSES).repeat(N_TRAIN)
    test_labels = torch.arange(CLASSES).repeat(N_TEST)
    ids = torch.arange(CLASSES * (N_TRAIN + N_TEST), dtype=torch.uint8)
    images = ids.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    n = CLASSES * N_TRAIN
    return ImageData("toy", images[:n], train_labels, images[n:], test_labels, [str(c) for c in range(CLASSES)])


def _pooled_labels(data: ImageData) -> torch.Tensor:
    return torch.cat([data.train_labels, data.test_labels])


def test_episodes_are_disjoint_and_stratified():
    digits = load_dataset("digits")
    pooled = _pooled_labels(digits)
    pool = [5, 6, 7, 8, 9]
    for draw in ("all", "split"):
        ep = sample_episode(
            digits.train_labels, digits.test_labels, pool, ways=3, shots=4, queries=6, generator=torch.Generator(),
            draw=draw,
        )  # fmt: skip
        assert len(ep.classes) == 3 and set(ep.classes) <= set(pool)
        both = torch.cat([ep.support_index, ep.query_index])
        assert both.unique().numel() == 12 + 18  # no image twice, none both support and query
        for label, cls in enumerate(ep.classes):
            assert (pooled[ep.support_index[ep.support_labels == label]] == cls).all()
            assert (pooled[ep.query_index[ep.query_labels == label]] == cls).all()
            assert int((ep.support_labels == label).sum()) == 4 and int((ep.query_labels == label).sum()) == 6
        if draw == "split":
            n_train = digits.train_labels.numel()
            assert (ep.support_index < n_train).all() and (ep.query_index >= n_train).all()
    with pytest.raises(ValueError, match="ways=6 exceeds"):
        sample_episode(digits.train_labels, digits.test_labels, pool, ways=6, shots=1, queries=1,
                       generator=torch.Generator())  # fmt: skip
    with pytest.raises(ValueError, match="fewer than the 1000 needed"):
        sample_episode(digits.train_labels, digits.test_labels, pool, ways=2, shots=990, queries=10,
                       generator=torch.Generator())  # fmt: skip
    with pytest.raises(ValueError, match="training images, fewer than the 1000 needed"):
        sample_episode(digits.train_labels, digits.test_labels, pool, ways=2, shots=1000, queries=1,
                       generator=torch.Generator(), draw="split")  # fmt: skip
    with pytest.raises(ValueError, match="draw must be one of 'all', 'split', got 'test'"):
        FewShotConfig(draw="test")


def test_episode_images_index_the_pooled_splits(toy):
    index = torch.tensor([0, 29, 30, 47, 3, 35])  # training 0, 29; test 0, 17; training 3; test 5
    expected = torch.cat([toy.train_images, toy.test_images])[index]
    assert torch.equal(episode_images(toy, index), expected)
    assert episode_images(toy, index)[:, 0, 0, 0].tolist() == index.tolist()


def _drawn(toy: ImageData, fewshot: FewShotConfig, monkeypatch) -> list[dict]:
    """Run :func:`few_shot` with the fine-tuning replaced by a recorder of the images each episode got."""
    seen: list[dict] = []

    def record(pretrained, support_images, support_labels, query_images, query_labels, config, **kwargs):
        seen.append({"support": support_images[:, 0, 0, 0].tolist(), "query": query_images[:, 0, 0, 0].tolist()})
        return 0.0

    monkeypatch.setattr(fewshot_module, "run_episode", record)
    backbone = build_backbone("convnet", pretrained=False, in_channels=1, widths=[4, 4, 4, 4])
    rows = few_shot(
        backbone, toy, range(CLASSES), {"ce": FinetuneConfig(objective="ce")}, fewshot,
        augment=preset_for(1, 8), progress=False, device="cpu",
    )  # fmt: skip
    for row, images in zip(rows[fewshot.shots[0]], seen):
        images["classes"] = row["classes"]
    return seen


def test_episodes_draw_from_all_images_of_a_class_and_their_class_sets_differ(toy, monkeypatch):
    """Over many episodes of few_shot's own seeding, every image of every class is drawn as a support image and as
    a query image (test images as supports, training images as queries too), and the class sets vary."""
    fewshot = FewShotConfig(ways=3, shots=[2], queries=3, episodes=300, steps=1)
    episodes = _drawn(toy, fewshot, monkeypatch)
    assert len(episodes) == 300
    labels = _pooled_labels(toy)
    n_pooled = labels.numel()
    support = {k for e in episodes for k in e["support"]}
    query = {k for e in episodes for k in e["query"]}
    assert support == query == set(range(n_pooled))  # all 48 images, both roles
    for e in episodes:
        assert not set(e["support"]) & set(e["query"])  # disjoint within an episode
        assert {int(labels[k]) for k in e["support"] + e["query"]} == set(e["classes"])
    class_sets = {frozenset(e["classes"]) for e in episodes}
    assert len(class_sets) == math.comb(CLASSES, 3)  # every one of the 20 three-class sets occurs

    split = _drawn(toy, FewShotConfig(ways=3, shots=[2], queries=3, episodes=50, steps=1, draw="split"), monkeypatch)
    n_train = CLASSES * N_TRAIN
    assert all(k < n_train for e in split for k in e["support"]) and all(
        k >= n_train for e in split for k in e["query"]
    )


def test_the_pretrained_preset_episodes_differ_in_their_classes():
    """Fashion-MNIST's 10 classes, 5-way: the class sets of the preset's episodes (few_shot's seeding) vary; the
    expected number of distinct sets among n draws from C(10, 5) = 252 is 252 (1 - (251 / 252)^n)."""
    from hscl.engine.finetune.fewshot import _episode_seed
    from hscl.experiments._schane_config import find_experiment, load_experiment

    experiment = load_experiment(find_experiment("pretrained"))
    fs = experiment.fewshot
    assert fs.draw == "all" and fs.episodes >= 100 and len(experiment.heldout_classes) == 10 and fs.ways == 5
    labels = torch.arange(10).repeat(30)  # the class sets depend on the number of classes only
    for shots in fs.shots:
        sets = [
            frozenset(
                sample_episode(
                    labels, labels, experiment.heldout_classes, ways=fs.ways, shots=shots, queries=fs.queries,
                    generator=torch.Generator().manual_seed(_episode_seed(fs.seed, shots, e)),
                ).classes
            )
            for e in range(fs.episodes)
        ]  # fmt: skip
        expected = 252 * (1 - (251 / 252) ** fs.episodes)
        assert abs(len(set(sets)) - expected) < 0.15 * expected, (len(set(sets)), expected)


def test_fits_head_only_without_a_cross_entropy_term():
    assert fits_head(FinetuneConfig(objective="schane", lam=1.0))
    assert not fits_head(FinetuneConfig(objective="schane", lam=0.9))
    assert not fits_head(FinetuneConfig(objective="ce", lam=1.0))  # plain CE ignores lam


def test_fit_linear_head_is_the_l2_logistic_regression_of_the_features():
    """The fitted head gives the class probabilities of scikit-learn's multinomial logistic regression with the
    same penalty: mean CE + wd ||W||^2 is, times n, sum CE + n wd ||W||^2, i.e. sklearn's C = 1 / (2 n wd)."""
    from sklearn.linear_model import LogisticRegression

    from hscl.data.augment import EvalTransform

    digits = load_dataset("digits")
    torch.manual_seed(0)
    backbone = build_backbone("convnet", pretrained=False, in_channels=1, widths=[4, 8, 8, 16])
    model = FineTuneModel(backbone, 3, "features").eval()
    pick = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:10] for c in (1, 4, 7)])
    images, labels = digits.train_images[pick], torch.arange(3).repeat_interleave(10)
    transform = EvalTransform(preset_for(1, 8))
    weight_decay = 1e-3
    fit_linear_head(model, images, labels, transform, weight_decay=weight_decay)
    h, _ = embed(model, images, transform)
    ours = torch.softmax(model.classifier(h), 1).detach().numpy()
    reference = LogisticRegression(C=1 / (2 * len(labels) * weight_decay), tol=1e-10, max_iter=10000)
    reference.fit(h.double().numpy(), labels.numpy())
    np.testing.assert_allclose(ours, reference.predict_proba(h.double().numpy()), atol=2e-3)
    assert (ours.argmax(1) == labels.numpy()).mean() > 0.6  # chance: 1 / 3


def test_an_episode_at_lam_one_scores_with_a_fitted_head_not_the_untrained_one(monkeypatch):
    """Without the fitted head, lam = 1 leaves the zero head untouched and every query lands in the first class
    (chance); with it, the episode scores well above chance on separable digit classes."""
    digits = load_dataset("digits")
    torch.manual_seed(0)
    backbone = build_backbone("convnet", pretrained=False, in_channels=1, widths=[4, 8, 8, 16])
    ep = sample_episode(
        digits.train_labels, digits.test_labels, [0, 1, 6], ways=3, shots=5, queries=20,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    args = (episode_images(digits, ep.support_index), ep.support_labels)
    args += (episode_images(digits, ep.query_index), ep.query_labels)
    config = FinetuneConfig(objective="schane", lam=1.0, bn="frozen", lr=1e-3)
    kwargs = {"steps": 3, "augment": preset_for(1, 8), "seed": 0, "device": "cpu"}
    fitted = run_episode(backbone, *args, config, **kwargs)
    monkeypatch.setattr(fewshot_module, "fits_head", lambda config: False)
    untrained = run_episode(backbone, *args, config, **kwargs)
    assert untrained == pytest.approx(100 / 3)
    assert fitted > 60.0, fitted
