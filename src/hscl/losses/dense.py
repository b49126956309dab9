"""The loss family on one screen: :func:`dense_contrastive_loss`, the definition of eq. (3).

Plain ``(N, columns)`` masks and log-sum-exps, autograd for the gradient, memory ``O(N x columns)``.
:func:`~hscl.losses.contrastive_loss` computes the same numbers block by block with an analytic gradient
(and checks its input); the tests hold the two equal over every option.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.hardening import Hardening

__all__ = ["dense_contrastive_loss"]


def dense_contrastive_loss(
    z: Tensor,
    labels: Tensor | None = None,
    *,
    positives: str = "views",
    negatives: str = "unsupervised",
    hardening=None,
    temperature: float = 0.5,
    M: float | str | None = None,
    tau_plus: float = 0.0,
    reduction: str = "mean",
    normalize: bool = True,
    detach_weights: bool = False,
    memory: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """The H-SCL family loss, eq. (3) of arXiv 2209.00078, written as its definition.

    For each anchor row ``r``, its positives ``P(r)`` and negatives ``N(r)``, with ``g = z_r . z_s / temperature``
    and ``w = eta(g)`` (the hardening)::

        log E(r)  = logsumexp_{s in N(r)}(g(r,s) + log w(r,s)) - logsumexp_{s in N(r)} log w(r,s)
        loss(r,p) = softplus(log M(r) + log E(r) - g(r,p))        # = log(1 + M e^{-g(r,p)} E(r))

    ``tau_plus > 0`` replaces ``log M + log E`` by Robinson et al.'s debiased
    ``log Ng = log M + max(log(E - tau_plus e^{g(r,p)}) - log(1 - tau_plus), -1 / temperature)``.
    A hardening that keeps no negative of ``r`` falls back to ``w = 1``. The arguments mean what they mean
    for :func:`~hscl.losses.contrastive_loss` (see it, and the loss page, for the sets): UCL, H-UCL, SCL,
    H-SCL and SCHaNe's loss are choices of them. SupCon (:func:`~hscl.losses.supcon_loss`) is not: it takes
    ``N(r)`` = every other row and the linear pair term ``log M + log E(r) - g(r,p)``.

    This function does not check its input and keeps every ``(N, columns)`` matrix for autograd: train with
    :func:`~hscl.losses.contrastive_loss` (the same values and gradients within rounding), read this one.

    Shape:
        z: ``(B, V, d)``; labels: ``(B,)`` class ids or ``(B, C)`` multi-hot; memory: ``((K, d), (K,) | (K, C)
        | None)``; output: scalar, or ``(num_pairs,)`` in row-major ``(r, p)`` order for ``reduction="none"``.
    """
    B, V, d = z.shape
    N = V * B
    # 1. rows view-major (row r = v * B + i is view v of sample i); the K memory rows are extra columns only
    Z = z.transpose(0, 1).reshape(N, d)  # (N, d)
    Zm = z.new_zeros(0, d) if memory is None else memory[0].detach().to(z.dtype)  # (K, d), no gradient
    if normalize:
        Z, Zm = F.normalize(Z, dim=1), F.normalize(Zm, dim=1)
    cols = N + Zm.shape[0]
    g = Z @ torch.cat([Z, Zm]).T / temperature  # (N, cols) g(r, s)

    # 2. the sets: instances (memory row k is instance B + k) and classes as 0/1 columns Y (cols, C)
    instance = torch.cat([torch.arange(N) % B, B + torch.arange(cols - N)]).to(z.device)  # (cols,)
    Y = g.new_zeros(cols, 0)  # no labels: no classes
    if labels is not None:
        mem_labels = None if memory is None else memory[1]
        if labels.dim() == 1:  # class ids -> one-hot over the classes of the batch and the memory
            ids = labels if mem_labels is None else torch.cat([labels, mem_labels])
            onehot = F.one_hot(torch.unique(ids, return_inverse=True)[1])  # (B [+ K], C)
            labels, mem_labels = onehot[:B], None if mem_labels is None else onehot[B:]
        Y_mem = labels.new_zeros(cols - N, labels.shape[1]) if mem_labels is None else mem_labels  # no class
        Y = torch.cat([labels.repeat(V, 1), Y_mem]).to(g.dtype)
    same = instance[:N, None] == instance[None, :]  # (N, cols) the same sample (r itself included)
    share = same | (Y[:N] @ Y.T > 0)  # (N, cols) the same sample or a shared class
    not_self = ~torch.eye(N, cols, dtype=torch.bool, device=z.device)  # (N, cols) s != r
    pos = (same if positives == "views" else share) & not_self  # (N, cols) P(r)
    neg = ~same if negatives == "unsupervised" else ~share  # (N, cols) N(r)

    # 3. log w = log eta(g) on N(r), -inf elsewhere; a row left without any weight falls back to w = 1
    h = g.detach() if detach_weights else g
    if hardening is None:
        log_w = torch.zeros_like(g)
    elif isinstance(hardening, Hardening) and hardening.log_linear:  # exp(beta g) 1[g >= log_threshold]
        log_w = torch.where(h >= hardening.log_threshold, hardening.beta * h, -math.inf)
    else:  # any eta(g): the log of its weights, -inf (and no gradient) where a weight is 0
        w = hardening(h)
        log_w = torch.where(w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).log(), -math.inf)
    log_w = log_w.masked_fill(~neg, -math.inf)  # (N, cols)
    log_w = torch.where(neg & torch.isinf(log_w).all(1, keepdim=True), 0.0, log_w)  # the fallback

    # 4. the valid anchors (P(r) and N(r) non-empty; M = cols - 2 > 0 when M is None), and only them
    valid = pos.any(1) & neg.any(1) & (M is not None or cols > 2)  # (N,)
    if not valid.any():  # an exact 0 attached to the graph
        zero = z.sum() * 0.0
        return zero[None][:0] if reduction == "none" else zero
    g, pos, neg, log_w = g[valid], pos[valid], neg[valid], log_w[valid]  # (n, cols), n valid anchors

    # 5. log E(r), the log of the tilted mean of exp(g) over N(r), and log M(r)
    log_E = (torch.logsumexp(g + log_w, 1) - torch.logsumexp(log_w, 1))[:, None]  # (n, 1)
    count = neg.sum(1, keepdim=True).to(g.dtype) if M == "count" else None  # (n, 1) |N(r)|
    log_M = count.log() if count is not None else math.log(cols - 2 if M is None else M)

    # 6. the pair terms x(r, p) = log M + log E(r) - g(r, p) (debiased: log Ng(r, p) - g(r, p)), all columns
    if tau_plus:
        a = tau_plus * torch.exp(g - log_E)  # (n, cols) tau_plus e^g / E
        below = a < 1  # E - tau_plus e^g > 0
        log_E = log_E + torch.log1p(-torch.where(below, a, 0.0)) - math.log1p(-tau_plus)
        log_E = torch.where(below, log_E, -math.inf).clamp_min(-1.0 / temperature)  # (n, cols)
    x = log_M + log_E - g  # (n, cols)
    loss = torch.where(pos, torch.logaddexp(x, torch.zeros_like(x)), 0.0)  # softplus(x) on P(r), (n, cols)

    # 7. the reduction over the valid pairs
    if reduction == "none":
        return loss[pos]  # (num_pairs,) row-major (r, p)
    if reduction == "anchor_mean":  # the mean over each anchor's positives, then over the anchors
        return (loss.sum(1) / pos.sum(1)).mean()
    return loss.sum() / (pos.sum() if reduction == "mean" else 1)
