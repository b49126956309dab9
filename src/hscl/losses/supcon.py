"""SupCon: Khosla et al.'s supervised contrastive loss L_out (SimCLR's NT-Xent without labels)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from hscl.losses import _compiled
from hscl.losses._checks import (
    _check_chunk_size,
    _check_labels,
    _check_positive_real,
    _check_z,
    _nonfinite_allowed,
    _ValueChecks,
)
from hscl.losses.base import _metric_learning_shape
from hscl.losses.core import _autocast_off, _compute_dtype, _fused_loss, _relation, _set_sizes, _Spec
from hscl.losses.sets import _finish_layout, _label_groups, _make_layout

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

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` or None; output: scalar.
    """
    checks = _ValueChecks()  # read with the call's one host synchronisation
    z = _check_z(z, allow_nonfinite=_nonfinite_allowed(z), checks=checks)
    temperature = _check_positive_real("temperature", temperature)
    base_temperature = _check_positive_real("base_temperature", base_temperature)
    chunk_size = _check_chunk_size(chunk_size)
    B, V, d = z.shape
    labels = _check_labels(labels, B, z.device, None, checks)
    if labels is None and V < 2:
        raise ValueError(f"supcon_loss without labels needs V >= 2 views per sample, got V={V}")
    if _compiled.AVAILABLE and torch.compiler.is_compiling():  # one custom operator running this eager call
        args = (temperature, base_temperature, normalize, chunk_size)
        return _compiled.traced_call("supcon", z, labels, None, None, args)[0]
    rows, device, dtype = V * B, z.device, _compute_dtype(z)
    # the fused core with P(r) = same label (or sample), N(r) = every other row, beta = 0, M = rows - 1
    # and the linear pair term log M + log E(r) - g(r,p) = -log softmax_{s != r}(g(r, .))[p]
    positives = "labels" if labels is not None else "views"
    relation = _relation(B, V, labels, None, labels is not None, dtype, device)
    groups = _label_groups(relation.labels) if relation.labels is not None else None
    share_count = relation.share_counts(rows) if relation.multi is not None else None  # multi-hot labels
    num_pos, num_neg = _set_sizes(V, relation, groups, share_count, positives, "all")
    valid = (num_pos > 0) & (num_neg > 0)
    spec = _Spec(
        batch=B,
        views=V,
        rows=rows,
        cols=rows,
        relation=relation,
        positives=positives,
        negatives="all",
        inv_t=1.0 / temperature,
        tau_plus=0.0,
        instance=torch.arange(rows, device=device) % B,
        valid=valid,
        log_M=torch.full((rows,), math.log(max(rows - 1, 1)), dtype=dtype, device=device),
        num_neg=num_neg,
        chunk=chunk_size or rows,
        pair="linear",
    )
    layout = _make_layout(spec, relation, groups, share_count)
    sizes = torch.stack([valid.sum(), *layout.shape_t, *checks.flags()]).tolist()  # the one host synchronisation
    num_valid, largest, classes = sizes[:3]
    checks.verify(sizes[3:])
    _finish_layout(layout, largest, classes)
    with _autocast_off(device):
        Z = z.transpose(0, 1).reshape(rows, d).to(dtype)  # (N, d), row r = v*B + i
        if num_valid == 0:
            warnings.warn(
                "supcon_loss: no anchor has a positive in this batch; the loss is 0", RuntimeWarning, stacklevel=2
            )
            return Z.sum() * 0.0
        # mean over anchors with a positive of the mean over their positives, times T / T_base
        row_weight = (temperature / base_temperature) / (num_pos.clamp(min=1).to(dtype) * num_valid) * valid
        loss, _ = _fused_loss(Z, row_weight, spec, layout, None, False, False, normalize)
        return loss


class SupCon(nn.Module):
    """SupCon: the mean over anchors of ``-log softmax`` of their positives against all other rows (L_out).

    References: Khosla et al., Supervised Contrastive Learning, NeurIPS 2020, arXiv 2004.11362;
    without labels it is SimCLR's NT-Xent (Chen et al., arXiv 2002.05709).
    Implements eq. (2) of arXiv 2004.11362 (L_out, the mean over positives outside the log), scaled
    by ``temperature / base_temperature`` as in the authors' code (defaults 0.1 / 0.07); see
    :func:`supcon_loss`::

        loss(r) = -(temperature / base_temperature) * mean_{p in P(r)} log(exp(g(r,p)) / sum_{s != r} exp(g(r,s)))

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
        self.temperature = _check_positive_real("temperature", temperature)
        self.base_temperature = _check_positive_real("base_temperature", base_temperature)
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
