"""SCL: the H-SCL paper's supervised contrastive baseline, eq. (3) without hardening."""

from __future__ import annotations

from hscl.losses._checks import MLike
from hscl.losses.base import ContrastiveLoss

__all__ = ["SCL"]


class SCL(ContrastiveLoss):
    """SCL: every other row of the same label is a positive, every row of another label a negative.

    Reference: Jiang, Nguyen, Ishwar, Aeron, Supervised Contrastive Learning with Hard Negative
    Samples, arXiv 2209.00078. Implements eq. (3) of that paper with ``q = q_SCL`` (no hardening).
    Not Khosla et al.'s SupCon (see :class:`~hscl.losses.SupCon`): positives are not in the
    denominator, and ``M`` (default ``V*B - 2``) scales the mean over the negatives.

    For each row ``r`` and each ``p in P(r)`` (other rows of its label), with N(r) the rows of other labels::

        loss(r, p) = log(1 + M * exp(-g(r, p)) * mean_{s in N(r)} exp(g(r, s))),   g = z_r . z_s / temperature

    and the loss is the mean over all valid pairs ``(r, p)``.

    Its definition on one screen (the computation, step by step, with shapes) is
    :func:`~hscl.losses.dense_contrastive_loss` with ``positives="labels", negatives="supervised"``.

    Shape:
        z: ``(B, V, d)`` with labels ``(B,)``, or ``(N, d)`` embeddings with labels ``(N,)``.
        output: scalar, or ``(num_pairs,)`` for ``reduction="none"``.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        M: MLike = None,
        normalize: bool = True,
        reduction: str = "mean",
        chunk_size: int | None = None,
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            temperature=temperature,
            M=M,
            normalize=normalize,
            reduction=reduction,
            chunk_size=chunk_size,
            memory_size=memory_size,
            memory_warmup_steps=memory_warmup_steps,
        )
