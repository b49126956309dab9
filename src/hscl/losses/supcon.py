"""SupCon: Khosla et al.'s supervised contrastive loss L_out (SimCLR's NT-Xent without labels)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.losses._checks import _check_labels, _check_positive_real, _check_z
from hscl.losses.base import _metric_learning_shape
from hscl.losses.core import _autocast_off, _compute_dtype

__all__ = ["SupCon", "supcon_loss"]


def supcon_loss(
    z: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    normalize: bool = True,
) -> Tensor:
    """Khosla et al.'s supervised contrastive loss L_out (SupCon); SimCLR's NT-Xent without labels.

    For each anchor ``r`` with at least one positive (same label, or same sample without labels)::

        loss(r) = -(temperature / base_temperature) * mean_{p in P(r)} log softmax_{s != r}(g(r, .))[p]

    and the result is the mean over those anchors. Every other row (positives included) is in the
    denominator. Implements eq. (2) of Khosla et al., NeurIPS 2020, arXiv 2004.11362.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` or None; output: scalar.
    """
    z = _check_z(z)
    temperature = _check_positive_real("temperature", temperature)
    base_temperature = _check_positive_real("base_temperature", base_temperature)
    B, V, d = z.shape
    labels = _check_labels(labels, B, z.device, None)
    if labels is None and V < 2:
        raise ValueError(f"supcon_loss without labels needs V >= 2 views per sample, got V={V}")
    rows = V * B
    with _autocast_off(z.device):
        Z = z.transpose(0, 1).reshape(rows, d).to(_compute_dtype(z))
        if normalize:
            Z = F.normalize(Z, dim=1)
        ids = (labels if labels is not None else torch.arange(B, device=z.device)).repeat(V)
        same = ids[:, None] == ids[None, :]  # (N, N)
        eye = torch.eye(rows, dtype=torch.bool, device=z.device)
        same &= ~eye
        num_pos = same.sum(1)
        has = num_pos > 0
        if not bool(has.any()):
            warnings.warn(
                "supcon_loss: no anchor has a positive in this batch; the loss is 0", RuntimeWarning, stacklevel=2
            )
            return Z.sum() * 0.0
        logits = (Z @ Z.T / temperature).masked_fill(eye, -math.inf)  # (N, N)
        log_norm = torch.logsumexp(logits, 1)  # (N,)
        pos_logit_sum = torch.where(same, logits, 0.0).sum(1)
        mean_log_prob = (pos_logit_sum - num_pos * log_norm) / num_pos.clamp(min=1)
        per_anchor = -(temperature / base_temperature) * mean_log_prob
        return per_anchor[has].mean()


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

    def __init__(self, *, temperature: float = 0.1, base_temperature: float = 0.07, normalize: bool = True) -> None:
        super().__init__()
        self.temperature = _check_positive_real("temperature", temperature)
        self.base_temperature = _check_positive_real("base_temperature", base_temperature)
        self.normalize = bool(normalize)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: z ``(B, V, d)`` with labels ``(B,)`` or None, or embeddings ``(N, d)`` with labels ``(N,)``."""
        if _metric_learning_shape(z, labels, type(self).__name__):
            z = z[:, None]  # (N, 1, d): each row its own instance
        return supcon_loss(
            z, labels, temperature=self.temperature, base_temperature=self.base_temperature, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"
