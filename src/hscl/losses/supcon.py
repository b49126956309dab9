"""SupCon: Khosla et al.'s supervised contrastive loss L_out (SimCLR's NT-Xent without labels)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from hscl.losses import _compiled
from hscl.losses._checks import (
    _check_chunk_size,
    _check_labels,
    _check_z,
    _nonfinite_allowed,
    _ValueChecks,
)
from hscl.losses.base import _metric_learning_shape
from hscl.losses.core import _autocast_off, _make_spec, _rows, _synchronise
from hscl.losses.kernel import fused_loss
from hscl.losses.sets import NEGATIVE_SETS
from hscl.validation import check_positive_real

__all__ = ["SupCon", "supcon_loss"]


def supcon_loss(
    z: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Khosla et al.'s supervised contrastive loss L_out (SupCon); SimCLR's NT-Xent without labels.

    For each anchor ``r`` with at least one positive (same label, or same sample without labels)::

        loss(r) = -(temperature / base_temperature) * mean_{p in P(r)} log softmax_{s != r}(g(r, .))[p]

    and the result is the mean over those anchors. Every other row (positives included) is in the
    denominator. Implements eq. (2) of Khosla et al., NeurIPS 2020, arXiv 2004.11362. Computed by the
    fused log-space core of :func:`~hscl.losses.contrastive_loss` (``N(r)`` = every other row,
    ``beta = 0``, ``M = rows - 1``, pair term ``log M + log E(r) - g(r, p)``) with an analytic gradient.
    ``chunk_size`` processes the anchors in blocks of that many rows (memory ``O(chunk_size x rows)``,
    the same value and gradient).

    The family's definition on one screen is :func:`~hscl.losses.dense_contrastive_loss`; SupCon is its
    computation with those two changes (``N(r)`` = every other row, the linear pair term), ``M = rows - 1``
    and no hardening.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` or None; output: scalar.
    """
    checks = _ValueChecks()  # read with the call's one host synchronisation
    z = _check_z(z, allow_nonfinite=_nonfinite_allowed(z), checks=checks)
    temperature = check_positive_real("temperature", temperature)
    base_temperature = check_positive_real("base_temperature", base_temperature)
    chunk_size = _check_chunk_size(chunk_size)
    B, V, _ = z.shape
    labels = _check_labels(labels, B, z.device, None, checks)
    if labels is None and V < 2:
        raise ValueError(f"supcon_loss without labels needs V >= 2 views per sample, got V={V}")
    if _compiled.AVAILABLE and torch.compiler.is_compiling():  # one custom operator running this eager call
        args = (temperature, base_temperature, normalize, chunk_size)
        return _compiled.traced_call("supcon", z, labels, None, None, args)[0]
    rows = V * B
    # the fused core with P(r) = same label (or sample), N(r) = every other row, beta = 0, M = rows - 1
    # and the linear pair term log M + log E(r) - g(r,p) = -log softmax_{s != r}(g(r, .))[p]
    spec, layout, num_pos = _make_spec(
        z, labels, None, positives="labels" if labels is not None else "views", negatives=NEGATIVE_SETS["all"],
        M=max(rows - 1, 1), temperature=temperature, tau_plus=0.0, chunk=chunk_size or rows,
    )  # fmt: skip
    spec.pair = "linear"
    num_valid, _ = _synchronise(spec.valid.sum(), layout, checks, tables=True)  # the one host synchronisation
    with _autocast_off(z.device):
        Z, _ = _rows(z, None, normalize=False)  # the fused kernel normalises inside
        if num_valid == 0:
            warnings.warn(
                "supcon_loss: no anchor has a positive in this batch; the loss is 0", RuntimeWarning, stacklevel=2
            )
            return Z.sum() * 0.0
        # mean over anchors with a positive of the mean over their positives, times T / T_base
        weight = (temperature / base_temperature) / (num_pos.clamp(min=1).to(Z.dtype) * num_valid) * spec.valid
        return fused_loss(Z, weight, spec, layout, normalize=normalize)[0]


_compiled.register("supcon", supcon_loss)


class SupCon(nn.Module):
    """SupCon: the mean over anchors of ``-log softmax`` of their positives against all other rows (L_out).

    References: Khosla et al., Supervised Contrastive Learning, NeurIPS 2020, arXiv 2004.11362;
    without labels it is SimCLR's NT-Xent (Chen et al., arXiv 2002.05709).
    Implements eq. (2) of arXiv 2004.11362 (L_out, the mean over positives outside the log), scaled
    by ``temperature / base_temperature`` as in the authors' code (defaults 0.1 / 0.07); see
    :func:`supcon_loss`::

        loss(r) = -(temperature / base_temperature) * mean_{p in P(r)} log(exp(g(r,p)) / sum_{s != r} exp(g(r,s)))

    The family's definition on one screen is :func:`~hscl.losses.dense_contrastive_loss`; SupCon differs in
    two places (:func:`supcon_loss`): every other row is in the denominator, and the pair term is linear.

    Shape:
        z: ``(B, V, d)`` with labels ``(B,)`` (positives: other rows of the label) or None (positives:
        the other views, ``V >= 2``); or pytorch-metric-learning's ``(N, d)`` embeddings with labels
        ``(N,)`` (positives: other rows of the label; denominator: every other row), the call of
        ``pytorch_metric_learning.losses.SupConLoss``.
        output: scalar.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        normalize: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive_real("temperature", temperature)
        self.base_temperature = check_positive_real("base_temperature", base_temperature)
        self.normalize = bool(normalize)
        self.chunk_size = _check_chunk_size(chunk_size)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: z ``(B, V, d)`` with labels ``(B,)`` or None, or embeddings ``(N, d)`` with labels ``(N,)``."""
        if _metric_learning_shape(z, labels, type(self).__name__):
            z = z[:, None]  # (N, 1, d): each row its own instance
        return supcon_loss(
            z,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            normalize=self.normalize,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"normalize={self.normalize}, chunk_size={self.chunk_size}"
        )
