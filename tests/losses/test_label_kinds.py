"""What a label tensor means: (B,) and (B, 1) class ids, (B, C > 1) or bool multi-hot; negative ids refused; a batch
with no negative is the same defined 0 in every shape."""

from __future__ import annotations

import warnings

import pytest
import torch

from hscl.hardening import AutoExponential
from hscl.losses import contrastive_loss, get_loss, supcon_loss
from hscl.losses.registry import METHODS

KW = {"positives": "labels", "negatives": "supervised"}


def _batch(seed: int = 0, B: int = 12, V: int = 2, d: int = 5, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(B, V, d, generator=generator, dtype=torch.float64)
    return z, torch.randint(0, classes, (B,), generator=generator)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_column_of_class_ids_is_the_class_ids(method):
    # binary labels as a column (B, 1) of integers: the same loss and gradient as the (B,) class ids
    z, labels = _batch(1, classes=2)
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    loss_fn = get_loss(method)
    column, flat = loss_fn(a, labels[:, None]), loss_fn(b, labels)
    torch.testing.assert_close(column, flat, rtol=0, atol=0)
    column.backward()
    flat.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    # the (N, d) call shape as well
    rows = torch.cat(z.unbind(1))
    torch.testing.assert_close(loss_fn(rows, labels.repeat(2)[:, None]), loss_fn(rows, labels.repeat(2)))


def test_a_bool_column_is_multi_hot_of_one_class():
    # bool is the explicit multi-hot kind: rows with False hold no class (as the all-zero row of (B, 2) multi-hot)
    z, labels = _batch(2, classes=2)
    member = labels == 1
    two_columns = torch.stack([member, torch.zeros_like(member)], 1)
    torch.testing.assert_close(contrastive_loss(z, member[:, None], **KW), contrastive_loss(z, two_columns, **KW))
    assert not torch.allclose(contrastive_loss(z, member[:, None], **KW), contrastive_loss(z, labels, **KW))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda z, y: contrastive_loss(z, y[:, None].double(), **KW), r"labels of shape \(B, 1\) = \(12, 1\)"),
        (lambda z, y: contrastive_loss(z, torch.ones(5, 3, dtype=torch.bool), **KW), r"\(B, C\) = \(12, C\)"),
        (lambda z, y: contrastive_loss(z, torch.ones(12, 3, 1, dtype=torch.long), **KW), r"got shape \(12, 3, 1\)"),
        (lambda z, y: contrastive_loss(z, torch.where(y == 0, -1, y), **KW), r"class ids >= 0.*4 negative"),
        (lambda z, y: get_loss("h-scl")(z, y - 3), r"class ids >= 0"),
        (lambda z, y: supcon_loss(z, torch.where(y == 0, -1, y)), r"class ids >= 0"),
        (lambda z, y: get_loss("scl")(torch.cat(z.unbind(1)), torch.where(y == 0, -1, y).repeat(2)), r">= 0"),
        (lambda z, y: get_loss("scl", auto_target=0.3), r"unexpected keyword\(s\) auto_target"),
        (lambda z, y: get_loss("h-scl", beta=1.0, auto_target=0.3), r"auto_target applies to beta='auto'"),
    ],
)
def test_labels_that_are_not_class_ids_or_multi_hot_are_refused(call, match):
    z, labels = _batch(3)
    labels[:4] = 0  # four samples of class 0
    labels[4:] = labels[4:].clamp(min=1)
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call(z, labels)
    assert "\n" not in str(info.value)


def test_get_loss_takes_the_automatic_target():
    loss_fn = get_loss("h-scl", beta="auto", auto_target=0.3)
    assert isinstance(loss_fn.hardening, AutoExponential) and loss_fn.hardening.target == 0.3
    z, labels = _batch(4)
    reference = get_loss("h-scl", hardening=AutoExponential(0.3))
    torch.testing.assert_close(loss_fn(z, labels), reference(z, labels), rtol=0, atol=0)


def _one_warning(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = call()
    assert [type(w.message) for w in caught] == [RuntimeWarning], [str(w.message) for w in caught]
    return loss


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(
    "shape", ["one sample (B, V, d)", "one sample (N, d)", "two rows of one class (N, d)", "one class (B, V, d)"]
)
def test_a_batch_without_negatives_is_an_exact_zero_on_the_graph(method, shape):
    # the last batch of a loop may hold one sample (or one class): every method, both call shapes, the same 0
    if method == "supcon" and shape != "one sample (N, d)":
        pytest.skip("SupCon's denominator holds the positives: only a lone row has no term")
    if METHODS[method].negatives == "unsupervised" and shape == "one class (B, V, d)":
        pytest.skip("unsupervised negatives: the other samples of the class are negatives")
    z = {
        "one sample (B, V, d)": torch.randn(1, 2, 4),
        "one sample (N, d)": torch.randn(1, 4),
        "two rows of one class (N, d)": torch.randn(2, 4),  # unsupervised: M = N - 2 = 0, every term log 1
        "one class (B, V, d)": torch.randn(6, 2, 4),
    }[shape].requires_grad_(True)
    labels = torch.zeros(z.shape[0], dtype=torch.long)
    loss_fn = get_loss(method)
    loss = _one_warning(lambda: loss_fn(z, labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
