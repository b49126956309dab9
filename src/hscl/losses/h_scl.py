"""H-SCL: supervised contrastive learning with hard negative samples, the H-SCL paper's method."""

from __future__ import annotations

from hscl.losses._checks import HardeningLike, MLike
from hscl.losses.base import ContrastiveLoss, _resolve_hardening

__all__ = ["HSCL"]


class HSCL(ContrastiveLoss):
    """H-SCL: SCL with the negatives of other labels tilted toward the hard ones by ``eta(g)``.

    Reference: Jiang, Nguyen, Ishwar, Aeron, Supervised Contrastive Learning with Hard Negative
    Samples, arXiv 2209.00078. Implements eq. (3) of that paper with ``q = q_H-SCL`` (Definition 1):
    ``beta=`` for H-SCL(beta), ``eta(t) = exp(beta t)`` (default ``beta = 1``); ``tau=`` for
    H-SCL(tau), ``eta(t) = 1[exp(t) >= tau]`` (scheduled per epoch by eq. (4), see
    :func:`~hscl.hardening.linear_threshold`); or ``hardening=``. An anchor whose negatives all fail
    the threshold falls back to ``w = 1`` (counted in ``last_stats.fallback``). Deviation: by
    default the gradient flows through ``w``, as in the reference code; ``detach_weights=True`` stops it.

    For each row ``r`` and each ``p in P(r)`` (other rows of its label), with N(r) the rows of other labels::

        E(r)       = sum_{s in N(r)} w(r,s) exp(g(r,s)) / sum_{s in N(r)} w(r,s),   w = eta(g)
        loss(r, p) = log(1 + M * exp(-g(r, p)) * E(r))

    and the loss is the mean over all valid pairs ``(r, p)``.

    Its definition on one screen (the computation, step by step, with shapes) is
    :func:`~hscl.losses.dense_contrastive_loss` with ``positives="labels", negatives="supervised"`` and the hardening.

    Shape:
        z: ``(B, V, d)`` with labels ``(B,)``, or ``(N, d)`` embeddings with labels ``(N,)``.
        output: scalar, or ``(num_pairs,)`` for ``reduction="none"``.
    """

    def __init__(
        self,
        *,
        beta: float | None = None,
        tau: float | None = None,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        M: MLike = None,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            positives="labels",
            negatives="supervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M=M,
            normalize=normalize,
            detach_weights=detach_weights,
            reduction=reduction,
            chunk_size=chunk_size,
            memory_size=memory_size,
            memory_warmup_steps=memory_warmup_steps,
        )
