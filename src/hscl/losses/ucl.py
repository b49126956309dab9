"""UCL: SimCLR's unsupervised contrastive loss in the form of eq. (3) of the H-SCL paper."""

from __future__ import annotations

from hscl.losses._checks import MLike
from hscl.losses.base import ContrastiveLoss

__all__ = ["UCL"]


class UCL(ContrastiveLoss):
    """UCL: InfoNCE with the other views as positives and every other sample as a negative.

    References: Chen et al., SimCLR, arXiv 2002.05709; Jiang et al., H-SCL, arXiv 2209.00078.
    Implements eq. (3) of arXiv 2209.00078 with ``q = q_UCL`` (no hardening): the large-k limit of
    InfoNCE, so unlike SimCLR's NT-Xent the positive is not in the denominator and ``M`` (default
    ``V*B - 2``) scales the mean over the negatives. ``tau_plus > 0`` gives the debiased estimator
    of Chuang et al. / Robinson et al. (arXiv 2010.04592).

    For each row ``r`` and each other view ``p`` of its sample, with N(r) the rows of other samples::

        loss(r, p) = log(1 + M * exp(-g(r, p)) * mean_{s in N(r)} exp(g(r, s))),   g = z_r . z_s / temperature

    and the loss is the mean over all pairs ``(r, p)``.

    Its definition on one screen (the computation, step by step, with shapes) is
    :func:`~hscl.losses.dense_contrastive_loss` with ``positives="views", negatives="unsupervised"``.

    Shape:
        z: ``(B, V, d)``, ``V >= 2``; labels: ignored (or ``(N, d)`` embeddings with labels ``(N,)``,
        see :class:`~hscl.losses.ContrastiveLoss`).
        output: scalar, or ``(num_pairs,)`` for ``reduction="none"``.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        M: MLike = None,
        tau_plus: float = 0.0,
        normalize: bool = True,
        reduction: str = "mean",
        chunk_size: int | None = None,
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            positives="views",
            negatives="unsupervised",
            temperature=temperature,
            M=M,
            tau_plus=tau_plus,
            normalize=normalize,
            reduction=reduction,
            chunk_size=chunk_size,
            memory_size=memory_size,
            memory_warmup_steps=memory_warmup_steps,
        )
