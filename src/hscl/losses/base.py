"""The module form of the core: :class:`ContrastiveLoss`, and the two call shapes every loss module accepts.

Call shapes (both for :class:`ContrastiveLoss`, its presets and :class:`~hscl.losses.SupCon`):

* ``loss_fn(z, labels)`` with ``z`` of shape ``(B, V, d)``: ``V`` views of ``B`` samples, the
  layout of ``docs/losses.md`` ("Input layout"); ``labels (B,)`` where the method needs them.
* ``loss_fn(embeddings, labels)`` with ``embeddings`` of shape ``(N, d)`` and ``labels (N,)``:
  pytorch-metric-learning's call. There is no instance structure: the positives of a row are the
  other rows of its label (for every method, ``"views"`` ones included); the negatives are every
  other row for unsupervised methods and the rows of another label for supervised ones. It is the
  core with each row its own instance (``z = embeddings[:, None]``, ``V = 1``) and label positives,
  so ``M = None`` still means ``N - 2``.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.hardening import AutoExponential, Exponential, Threshold, check_hardening
from hscl.losses._checks import (
    HardeningLike,
    MLike,
    _check_chunk_size,
    _check_M,
    _check_tau_plus,
)
from hscl.losses.core import NEGATIVES, POSITIVES, REDUCTIONS, LossStats, contrastive_loss
from hscl.validation import check_choice, check_positive_real

__all__ = ["ContrastiveLoss"]


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _resolve_hardening(beta, tau, hardening, default_beta: float | None) -> HardeningLike:
    given = [name for name, v in (("beta", beta), ("tau", tau), ("hardening", hardening)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of beta=, tau=, hardening=; got {', '.join(given)}")
    if isinstance(beta, str):
        if beta != "auto":
            raise ValueError(f'beta must be a number >= 0 or "auto" (AutoExponential(0.5)), got beta={beta!r}')
        return AutoExponential(0.5)
    if beta is not None:
        return Exponential(beta)
    if tau is not None:
        return Threshold(tau)
    if hardening is not None:
        return check_hardening(hardening)
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
    reassigned between steps (e.g. a threshold schedule per epoch). The computation, step by step with
    shapes, is :func:`~hscl.losses.dense_contrastive_loss` (the definition; the same values and gradients).

    With ``memory_size=K > 0`` the module keeps a memory of the ``K`` most recent rows (first in, first out;
    detached, normalised like the loss's rows, with their labels): each forward in training mode uses the
    memory as it was before the call (once ``memory_warmup_steps`` forwards have filled it) and then enqueues
    the call's ``V*B`` rows; in eval mode the memory is used but not changed. ``memory`` returns
    ``(z, labels)`` or None, ``reset_memory()`` empties it; it is saved in the ``state_dict``. Under
    ``torch.compile`` the memory keeps these semantics; each of its sizes while it fills compiles once.

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
        memory_size: int = 0,
        memory_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.positives = check_choice("positives", positives, POSITIVES)
        self.negatives = check_choice("negatives", negatives, NEGATIVES)
        self.hardening = check_hardening(hardening)
        self.temperature = check_positive_real("temperature", temperature)
        self.M = _check_M(M)
        self.tau_plus = _check_tau_plus(tau_plus, negatives)
        self.normalize = bool(normalize)
        self.detach_weights = bool(detach_weights)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.memory_size = _check_count("memory_size", memory_size)
        self.memory_warmup_steps = _check_count("memory_warmup_steps", memory_warmup_steps)
        self.last_stats: LossStats | None = None
        # the memory: the most recent rows (oldest first), their labels, and the forwards seen (saved in
        # the state dict, so that a resumed run continues with the same memory)
        self.register_buffer("memory_z", torch.zeros(0, 0))
        self.register_buffer("memory_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("memory_steps", torch.zeros((), dtype=torch.long))
        self._steps = 0  # the forwards seen, counted up to memory_warmup_steps only (a constant afterwards, so
        # that torch.compile, which specialises on it, does not recompile every step)

    @property
    def memory(self) -> tuple[Tensor, Tensor | None] | None:
        """``(z (K', d), labels (K',) / (K', C) or None)``, oldest row first, or None while empty."""
        if self.memory_z.shape[0] == 0:
            return None
        labels = self.memory_labels if self.memory_labels.shape[0] == self.memory_z.shape[0] else None
        return self.memory_z, labels

    def reset_memory(self) -> None:
        """Empty the memory and restart its warm-up."""
        self.memory_z = self.memory_z.new_zeros(0, 0)
        self.memory_labels = self.memory_labels.new_zeros(0, dtype=torch.long)
        self.memory_steps.zero_()
        self._steps = 0

    def _enqueue(self, z: Tensor, labels: Tensor | None) -> None:
        """Append the call's ``V*B`` rows (view-major, detached, normalised like the loss's) and drop the oldest
        beyond ``memory_size``."""
        B, V, d = z.shape
        rows = z.detach().transpose(0, 1).reshape(V * B, d)
        rows = rows.to(torch.float64 if rows.dtype == torch.float64 else torch.float32)
        if self.normalize:
            rows = F.normalize(rows, dim=1)
        held = self.memory_z.shape[0]
        if held and self.memory_z.shape[1] != d:
            raise ValueError(f"memory holds rows of dimension {self.memory_z.shape[1]}, got z of d={d}; reset_memory()")
        new_labels = None
        if labels is not None:
            labels = labels.to(rows.device)
            new_labels = labels.repeat(V, 1) if labels.dim() == 2 else labels.repeat(V)
        has_labels = self.memory_labels.shape[0] == held and held > 0
        if held and has_labels != (new_labels is not None):
            raise ValueError("memory: labels were given in some calls and not in others; call reset_memory() first")
        if has_labels and (
            new_labels.dim() != self.memory_labels.dim() or new_labels.shape[1:] != self.memory_labels.shape[1:]
        ):
            raise ValueError(
                f"memory holds labels of shape (K, ...) = {tuple(self.memory_labels.shape)}, got labels of shape "
                f"{tuple(labels.shape)}; call reset_memory() first"
            )
        K = self.memory_size
        if held and self.memory_z.device != rows.device:  # e.g. loaded on the CPU, training on a GPU
            self.memory_z, self.memory_labels = self.memory_z.to(rows.device), self.memory_labels.to(rows.device)
        self.memory_z = (torch.cat([self.memory_z, rows]) if held else rows)[-K:].clone()
        if new_labels is not None:
            self.memory_labels = (torch.cat([self.memory_labels, new_labels]) if held else new_labels)[-K:].clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the memory's shape is the saved one (it grows until it is full)
        for name in ("memory_z", "memory_labels"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = min(int(self.memory_steps), self.memory_warmup_steps)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: z ``(B, V, d)`` with labels ``(B,)``, or embeddings ``(N, d)`` with labels ``(N,)``."""
        positives = self.positives
        if _metric_learning_shape(z, labels, type(self).__name__):
            z, positives = z[:, None], "labels"  # (N, 1, d): each row its own instance
        memory = None
        if self.memory_size and self._steps >= self.memory_warmup_steps and self.memory is not None:
            z_mem, labels_mem = self.memory  # as it was before this call, on z's device
            memory = (z_mem.to(z.device), None if labels_mem is None else labels_mem.to(z.device))
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
            memory=memory,
            return_stats=True,
        )
        if self.memory_size and self.training:  # the memory changes in training mode only
            self._enqueue(z, None if labels is None else (labels != 0 if labels.dim() == 2 else labels.long()))
            self._steps = min(self._steps + 1, self.memory_warmup_steps)
            self.memory_steps += 1
        return loss

    def extra_repr(self) -> str:
        return (
            f"positives={self.positives!r}, negatives={self.negatives!r}, hardening={self.hardening!r}, "
            f"temperature={self.temperature}, M={self.M!r}, tau_plus={self.tau_plus}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"
            + (
                f", memory_size={self.memory_size}, memory_warmup_steps={self.memory_warmup_steps}"
                if self.memory_size
                else ""
            )
        )
