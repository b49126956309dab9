"""SCHaNe's contrastive term: H-SCL(beta) with ``M = |N(r)|``, averaged per anchor."""

from __future__ import annotations

from hscl.losses._checks import HardeningLike
from hscl.losses.base import ContrastiveLoss, _resolve_hardening

__all__ = ["SCHaNe"]


class SCHaNe(ContrastiveLoss):
    """SCHaNe: hard-negative supervised contrastive loss with ``M = |N(r)|``, mean per anchor then over anchors.

    Reference: Long et al., SCHaNe, arXiv 2308.14893 (fine-tuning with
    ``(1 - lam) * CE + lam * SCHaNe``, see :mod:`hscl.engine.finetune.loop`); Jiang et al., arXiv 2209.00078.
    Implements eq. (3) of arXiv 2209.00078 with ``q = q_H-SCL`` and SCHaNe's two choices: ``M`` is
    the number of negatives of the anchor, and each anchor's pair losses are averaged before the
    anchors are (``reduction="anchor_mean"``). ``beta`` defaults to 1.

    For each row ``r`` with P(r) the other rows of its label and N(r) the rows of other labels::

        E(r)    = sum_{s in N(r)} w(r,s) exp(g(r,s)) / sum_{s in N(r)} w(r,s),   w = exp(beta g)
        loss(r) = mean_{p in P(r)} log(1 + |N(r)| * exp(-g(r, p)) * E(r))

    and the loss is the mean of ``loss(r)`` over the anchors with a positive and a negative.

    Its definition on one screen (the computation, step by step, with shapes) is
    :func:`~hscl.losses.dense_contrastive_loss` with ``positives="labels", negatives="supervised",
    M="count", reduction="anchor_mean"`` and the hardening.

    Shape:
        z: ``(B, V, d)`` with labels ``(B,)``, or ``(N, d)`` embeddings with labels ``(N,)``.
        output: scalar.
    """

    def __init__(
        self,
        *,
        beta: float | None = None,
        tau: float | None = None,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        normalize: bool = True,
        detach_weights: bool = False,
        chunk_size: int | None = None,
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M="count",
            normalize=normalize,
            detach_weights=detach_weights,
            reduction="anchor_mean",
            chunk_size=chunk_size,
            memory_size=memory_size,
            memory_warmup_steps=memory_warmup_steps,
        )
