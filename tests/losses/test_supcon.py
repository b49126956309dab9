"""SupCon (Khosla L_out): loop reference and agreement with pytorch-metric-learning."""

from __future__ import annotations

import pytest
import torch

from hscl.losses import get_loss, supcon_loss
from reference import reference_supcon

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_labels", [True, False])
def test_supcon_matches_loop(seed, with_labels, label_layout):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(12, 2, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=generator) if with_labels else None
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    ours = supcon_loss(a, labels, temperature=0.2, base_temperature=0.07)
    ref = reference_supcon(b, labels, temperature=0.2, base_temperature=0.07)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 10, 50])
@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_agrees_with_pytorch_metric_learning(classes, views):
    # PML's SupConLoss: cosine similarity, -mean log-softmax over positives, averaged over anchors with
    # a positive; it has no base_temperature, so the definitions coincide for base_temperature = temperature
    generator = torch.Generator().manual_seed(classes * 10 + views)
    B, temperature = 64, 0.1
    z = torch.randn(B, views, 16, generator=generator)
    labels = torch.randint(0, classes, (B,), generator=generator)
    a = z.clone().requires_grad_(True)
    ours = get_loss("supcon", temperature=temperature, base_temperature=temperature)(a, labels)
    b = z.clone().requires_grad_(True)
    theirs = pml_losses.SupConLoss(temperature=temperature)(torch.cat(b.unbind(1)), labels.repeat(views))
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_ucl_is_ntxent_plus_log_m_shift_free_form():
    # UCL with M = |N(r)| equals NT-Xent's -log(e^{g_p} / (e^{g_p} + sum_neg e^{g_n})) (V = 2, one positive)
    generator = torch.Generator().manual_seed(0)
    B = 32
    z = torch.randn(B, 2, 16, generator=generator)
    ours = get_loss("ucl", temperature=0.5, M="count")(z)
    theirs = pml_losses.NTXentLoss(temperature=0.5)(torch.cat(z.unbind(1)), torch.arange(B).repeat(2))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 24])
def test_supcon_chunked_matches_loop(with_labels, chunk_size):
    generator = torch.Generator().manual_seed(chunk_size)
    z = torch.randn(12, 2, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=generator) if with_labels else None
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    ours = get_loss("supcon", temperature=0.2, chunk_size=chunk_size)(a, labels)
    ref = reference_supcon(b, labels, temperature=0.2, base_temperature=0.07)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_supcon_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_size must be None or an integer >= 1"):
        get_loss("supcon", chunk_size=0)
