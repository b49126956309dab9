"""Evaluation: kNN against a brute-force loop, the linear probe on data with a known answer."""

from __future__ import annotations

import math

import torch

from hscl.engine.evaluation.probes import knn_accuracy, linear_probe, mean_std


def _knn_loop(bank, bank_labels, queries, query_labels, k, t):
    correct = 0
    for q, y in zip(queries, query_labels):
        sims = [float(q @ b / (q.norm() * b.norm())) for b in bank]
        order = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        votes = {}
        for i in order:
            votes[int(bank_labels[i])] = votes.get(int(bank_labels[i]), 0.0) + math.exp(sims[i] / t)
        correct += max(votes, key=votes.get) == int(y)
    return 100.0 * correct / len(queries)


def test_knn_matches_loop():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 5, generator=generator)
    bank_labels = torch.randint(0, 4, (60,), generator=generator)
    queries = torch.randn(25, 5, generator=generator)
    query_labels = torch.randint(0, 4, (25,), generator=generator)
    for k in (1, 7, 60):
        ours = knn_accuracy(bank, bank_labels, queries, query_labels, k=k, t=0.1)
        assert ours == _knn_loop(bank, bank_labels, queries, query_labels, k, 0.1)


def test_linear_probe_separates_separable_classes():
    generator = torch.Generator().manual_seed(1)
    centers = torch.randn(6, 16, generator=generator) * 4
    y_train = torch.randint(0, 6, (600,), generator=generator)
    y_test = torch.randint(0, 6, (200,), generator=generator)
    x_train = centers[y_train] + torch.randn(600, 16, generator=generator)
    x_test = centers[y_test] + torch.randn(200, 16, generator=generator)
    result = linear_probe(x_train, y_train, x_test, y_test, epochs=30, lr=1e-2, batch_size=128)
    assert result.top1 > 97 and result.top5 == 100.0
    noise = linear_probe(torch.randn(600, 16), y_train, torch.randn(200, 16), y_test, epochs=10)
    assert noise.top1 < 40  # chance is 1/6


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
