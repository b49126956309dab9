"""H-UCL: unsupervised contrastive learning with hard negatives (Robinson et al., ICLR 2021)."""

from __future__ import annotations

from hscl.losses._checks import HardeningLike, MLike
from hscl.losses.base import ContrastiveLoss, _resolve_hardening

__all__ = ["HUCL"]


class HUCL(ContrastiveLoss):
    """H-UCL: UCL with the unsupervised negatives tilted toward the hard ones by ``eta(g)``.

    References: Robinson, Chuang, Sra, Jegelka, Contrastive Learning with Hard Negative Samples,
    ICLR 2021, arXiv 2010.04592; Jiang et al., H-SCL, arXiv 2209.00078.
    Implements eq. (3) of arXiv 2209.00078 with ``q = q_H-UCL`` (Definition 1): the negatives of
    UCL reweighted by ``w = eta(g)``; ``beta=`` gives Robinson et al.'s exponential tilting
    ``eta(t) = exp(beta t)`` (default ``beta = 1``), ``tau=`` a threshold, ``hardening=`` any
    hardening. ``tau_plus > 0`` is Robinson et al.'s debiased estimator. Deviation: by default the
    gradient flows through ``w`` (as both reference codes do); ``detach_weights=True`` stops it.

    For each row ``r`` and each other view ``p`` of its sample, with N(r) the rows of other samples::

        E(r)       = sum_{s in N(r)} w(r,s) exp(g(r,s)) / sum_{s in N(r)} w(r,s),   w = eta(g)
        loss(r, p) = log(1 + M * exp(-g(r, p)) * E(r))

    and the loss is the mean over all pairs ``(r, p)``.

    Its definition on one screen (the computation, step by step, with shapes) is
    :func:`~hscl.losses.dense_contrastive_loss` with ``positives="views", negatives="unsupervised"`` and the hardening.

    Shape:
        z: ``(B, V, d)``, ``V >= 2``; labels: ignored (or ``(N, d)`` embeddings with labels ``(N,)``,
        see :class:`~hscl.losses.ContrastiveLoss`).
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
        tau_plus: float = 0.0,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            positives="views",
            negatives="unsupervised",
            hardening=_resolve_hardening(beta, tau, hardening, 1.0),
            temperature=temperature,
            M=M,
            tau_plus=tau_plus,
            normalize=normalize,
            detach_weights=detach_weights,
            reduction=reduction,
            chunk_size=chunk_size,
            memory_size=memory_size,
            memory_warmup_steps=memory_warmup_steps,
        )
