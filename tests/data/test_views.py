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
