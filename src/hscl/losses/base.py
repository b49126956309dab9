"""The module form of the core: :class:`ContrastiveLoss`, and the two call shapes every loss module accepts.

Call shapes (both for :class:`ContrastiveLoss`, its presets and :class:`~hscl.losses.SupCon`):

* ``loss_fn(z, labels)`` with ``z`` of shape ``(B, V, d)``: ``V`` views of ``B`` samples, the
  layout of ``LOSSES.md``; ``labels (B,)`` where the method needs them.
* ``loss_fn(embeddings, labels)`` with ``embeddings`` of shape ``(N, d)`` and ``labels (N,)``:
  pytorch-metric-learning's call. There is no instance structure: the positives of a row are the
  other rows of its label (for every method, ``"views"`` ones included); the negatives are every
  other row for unsupervised methods and the rows of another label for supervised ones. It is the
  core with each row its own instance (``z = embeddings[:, None]``, ``V = 1``) and label positives,
  so ``M = None`` still means ``N - 2``.
"""

from __future__ import annotations

from torch import Tensor, nn

from hscl.hardening import Exponential, Threshold
from hscl.losses._checks import (
    HardeningLike,
    MLike,
    _check_choice,
    _check_chunk_size,
    _check_hardening,
    _check_M,
    _check_positive_real,
    _check_tau_plus,
)
from hscl.losses.core import NEGATIVES, POSITIVES, REDUCTIONS, LossStats, contrastive_loss

__all__ = ["ContrastiveLoss"]


def _resolve_hardening(beta, tau, hardening, default_beta: float | None) -> HardeningLike:
    given = [name for name, v in (("beta", beta), ("tau", tau), ("hardening", hardening)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of beta=, tau=, hardening=; got {', '.join(given)}")
    if beta is not None:
        return Exponential(beta)
    if tau is not None:
        return Threshold(tau)
    if hardening is not None:
        return _check_hardening(hardening)
    return Exponential(default_beta) if default_beta is not None else None


def _metric_learning_shape(z: object, labels: Tensor | None, loss: str) -> bool:
    """Whether ``z`` is pytorch-metric-learning's ``(N, d)`` embeddings; they need ``labels (N,)``."""
    if not isinstance(z, Tensor) or z.dim() != 2:
        return False
    if labels is None:
        raise ValueError(
            f"{loss}: embeddings of shape (N, d) = {tuple(z.shape)} need labels of shape (N,) (rows of one label "
            "are positives of each other); pass views as z of shape (B, V, d) to use them without labels"
        )
    return True


class ContrastiveLoss(nn.Module):
    """:func:`~hscl.losses.contrastive_loss` as a module; hyper-parameters are validated at construction.

    Implements eq. (3) of arXiv 2209.00078 with the sets, hardening, ``M`` and reduction given here
    (see :func:`~hscl.losses.contrastive_loss` for each argument). After each forward,
    ``last_stats`` holds the :class:`~hscl.losses.LossStats` of that batch. ``hardening`` may be
    reassigned between steps (e.g. a threshold schedule per epoch).

    Shape:
        z: ``(B, V, d)`` with labels ``(B,)`` (or None when neither set uses labels), or
        pytorch-metric-learning's ``(N, d)`` with labels ``(N,)``: then the positives of a row are
        the other rows of its label and, for ``negatives="unsupervised"``, its negatives are all
        other rows (each row is its own instance).
        output: scalar, or ``(num_pairs,)`` for ``reduction="none"``.
    """

    def __init__(
        self,
        *,
        positives: str,
        negatives: str,
        hardening: HardeningLike = None,
        temperature: float = 0.5,
        M: MLike = None,
        tau_plus: float = 0.0,
        normalize: bool = True,
        detach_weights: bool = False,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.positives = _check_choice("positives", positives, POSITIVES)
        self.negatives = _check_choice("negatives", negatives, NEGATIVES)
        self.hardening = _check_hardening(hardening)
        self.temperature = _check_positive_real("temperature", temperature)
        self.M = _check_M(M)
        self.tau_plus = _check_tau_plus(tau_plus, negatives)
        self.normalize = bool(normalize)
        self.detach_weights = bool(detach_weights)
        self.reduction = _check_choice("reduction", reduction, REDUCTIONS)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.last_stats: LossStats | None = None

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: z ``(B, V, d)`` with labels ``(B,)``, or embeddings ``(N, d)`` with labels ``(N,)``."""
        positives = self.positives
        if _metric_learning_shape(z, labels, type(self).__name__):
            z, positives = z[:, None], "labels"  # (N, 1, d): each row its own instance
        loss, self.last_stats = contrastive_loss(
            z,
            labels,
            positives=positives,
            negatives=self.negatives,
            hardening=self.hardening,
            temperature=self.temperature,
            M=self.M,
            tau_plus=self.tau_plus,
            normalize=self.normalize,
            detach_weights=self.detach_weights,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            return_stats=True,
        )
        return loss

    def extra_repr(self) -> str:
        return (
            f"positives={self.positives!r}, negatives={self.negatives!r}, hardening={self.hardening!r}, "
            f"temperature={self.temperature}, M={self.M!r}, tau_plus={self.tau_plus}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"
        )
