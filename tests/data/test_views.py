"""The view sampler: instance and same-label pairs, determinism per (seed, epoch)."""

from __future__ import annotations

import pytest
import torch

from hscl.data.views import ViewSampler


def test_instance_mode_repeats_the_image():
    labels = torch.arange(100) % 7
    batches = ViewSampler(labels, batch_size=16, pair_mode="instance", views=3, seed=1).batches(0)
    assert batches.shape == (100 // 16, 16, 3)
    assert torch.equal(batches[..., 0], batches[..., 1]) and torch.equal(batches[..., 0], batches[..., 2])
    assert batches[..., 0].flatten().unique().numel() == 96  # an epoch visits distinct images


def test_same_label_partners_share_the_label_and_differ():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=generator)
    labels[7] = 9  # a class with one image falls back to itself
    sampler = ViewSampler(labels, batch_size=50, pair_mode="same_label", seed=3)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        anchors, partners = batches[..., 0].flatten(), batches[..., 1].flatten()
        assert torch.equal(labels[anchors], labels[partners])
        single = anchors == 7
        assert torch.all(partners[single] == 7)
        assert torch.all(partners[~single] != anchors[~single])


def test_same_label_partner_is_uniform_over_the_class():
    labels = torch.tensor([0] * 4 + [1] * 4)
    sampler = ViewSampler(labels, batch_size=8, pair_mode="same_label", seed=0)
    counts = torch.zeros(8, 8)
    for epoch in range(400):
        b = sampler.batches(epoch)[0]
        counts[b[:, 0], b[:, 1]] += 1
    within = counts[:4, :4][~torch.eye(4, dtype=torch.bool)]
    assert within.min() > 0.8 * within.mean()  # each of the 3 other members about 1/3 of the time
    assert counts[:4, 4:].sum() == 0


def test_batches_depend_only_on_seed_and_epoch():
    labels = torch.arange(64) % 4
    a = ViewSampler(labels, batch_size=8, pair_mode="same_label", seed=5)
    b = ViewSampler(labels, batch_size=8, pair_mode="same_label", seed=5)
    assert torch.equal(a.batches(2), b.batches(2))
    assert not torch.equal(a.batches(2), a.batches(3))
    assert not torch.equal(a.batches(2), ViewSampler(labels, 8, "same_label", seed=6).batches(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pair_mode must be one of instance, same_label"):
        ViewSampler(torch.arange(4), 2, pair_mode="label")
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 4\]"):
        ViewSampler(torch.arange(4), 5)


# multi-hot label sets (N, C): a multi-label dataset such as fashion-mnist-mosaic


def _label_sets(n: int, classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, classes, generator=generator) < 0.3  # (N, C) bool; some rows hold no class


def test_instance_mode_takes_multi_hot_labels():
    labels = _label_sets(90, 6, 0)
    batches = ViewSampler(labels, batch_size=16, pair_mode="instance", views=2, seed=1).batches(0)
    assert batches.shape == (90 // 16, 16, 2)
    assert torch.equal(batches[..., 0], batches[..., 1])
    # the labels do not enter instance pairs: the anchors are those of integer labels with the same seed
    assert torch.equal(batches, ViewSampler(torch.zeros(90, dtype=torch.long), 16, "instance", seed=1).batches(0))


def test_same_label_partner_shares_a_class_with_the_anchor():
    labels = _label_sets(300, 5, 1)
    labels[:, 4] = False
    labels[11] = False
    labels[11, 4] = True  # the only image of class 4 and its only class
    empty = ~labels.any(1)  # images with no class (row 7 among them) fall back to themselves
    labels[7] = False
    empty[7] = True
    sampler = ViewSampler(labels, batch_size=50, pair_mode="same_label", views=3, seed=3)
    for epoch in range(4):
        batches = sampler.batches(epoch)
        anchors = batches[..., 0].flatten()
        for v in (1, 2):
            partners = batches[..., v].flatten()
            fallback = empty[anchors] | (anchors == 11)
            assert torch.all(partners[fallback] == anchors[fallback])
            keep = ~fallback
            assert torch.all((labels[anchors[keep]] & labels[partners[keep]]).any(1))  # >= 1 shared class
            assert torch.all(partners[keep] != anchors[keep])
            assert fallback.any() and keep.any()


def test_same_label_partner_draws_a_class_then_a_member_uniformly():
    # image 0 holds classes {0, 1}; class 0 has images {0, 1, 2}, class 1 has images {0, 3}
    labels = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 1]], dtype=torch.uint8)
    sampler = ViewSampler(labels, batch_size=4, pair_mode="same_label", seed=0)
    counts = torch.zeros(4)
    for epoch in range(1200):
        b = sampler.batches(epoch)[0]
        counts[b[b[:, 0] == 0, 1]] += 1
    share = counts / counts.sum()
    # class 0 (p 1/2) then image 1 or 2 (1/2 each): 1/4 each; class 1 (p 1/2) then image 3: 1/2
    assert share[0] == 0
    assert share[1:].tolist() == pytest.approx([0.25, 0.25, 0.5], abs=0.05)


def test_multi_hot_batches_depend_only_on_seed_and_epoch():
    labels = _label_sets(64, 4, 2)
    a = ViewSampler(labels, batch_size=8, pair_mode="same_label", seed=5)
    assert torch.equal(a.batches(2), ViewSampler(labels.clone(), 8, "same_label", seed=5).batches(2))
    assert not torch.equal(a.batches(2), a.batches(3))


def test_bad_multi_hot_labels():
    with pytest.raises(ValueError, match="bool or hold only 0 and 1"):
        ViewSampler(torch.full((4, 3), 2), 2, pair_mode="same_label")
    with pytest.raises(ValueError, match=r"labels must be \(N,\) class indices or \(N, C\) multi-hot"):
        ViewSampler(torch.zeros(4, 2, 2), 2)
