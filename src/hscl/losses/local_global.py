"""InfoGraph's local-global objective for graphs (Table II of the H-SCL paper), with any hardening.

The unsupervised baseline is InfoGraph's local-global objective (Sun et al., ICLR 2020, arXiv 1908.01000,
eq. (4)-(5)): a node ("patch") of graph ``i`` and the summary of graph ``i`` form a positive pair; the node
and the summaries of the other graphs in the batch form negative pairs. With ``l_n`` the local head's output
for node ``n`` (of graph ``b(n)``) and ``m_j`` the global head's output for graph ``j``, the score is
``s(n, j) = l_n . m_j``. The H-SCL paper (Jiang et al., arXiv 2209.00078, Sec. V-C) changes only the
negatives:

==========  =====================================================  ================================
method      negatives N(n) of node n                                weight of negative j
==========  =====================================================  ================================
``ucl``     graphs j != b(n) in the batch                           1
``h-ucl``   graphs j != b(n)                                        w(n, j), below
``scl``     graphs j with label y_j != y_b(n)                       1
``h-scl``   graphs j with y_j != y_b(n)                             w(n, j)
==========  =====================================================  ================================

Hardening (Definition 1, any ``eta`` of :mod:`hscl.hardening` applied to the score), normalised to mean 1
per anchor::

    w(n, j) = |N(n)| * eta(s(n, j)) / sum_{k in N(n)} eta(s(n, k)),   j in N(n)

``beta=`` is the shortcut for exponential tilting ``eta(t) = exp(beta t)``, the H-SCL paper's choice: a
negative weighs more the MORE similar it is to the anchor (a harder negative), ``beta = 0`` gives weight 1
everywhere, and the weights of an anchor always average 1 (the estimator keeps its scale).
``Threshold(tau)`` keeps the negatives with ``exp(s) >= tau`` (there is no temperature here); an anchor
none of whose negatives passes falls back to ``w = 1``, as in :func:`~hscl.losses.contrastive_loss`. A
user callable ``eta(s) -> weights`` must return non-negative finite weights of the same shape.

Estimators (``estimator=``):

* ``"jsd"`` (InfoGraph's default; Nowozin et al.'s f-GAN form of the Jensen-Shannon divergence)::

      E_pos = (1/#nodes)  sum_n  [log 2 - softplus(-s(n, b(n)))]
      E_neg = (1/#anchors) sum_{n: N(n) != {}} (1/|N(n)|) sum_{j in N(n)} w(n, j) [softplus(s(n, j)) - log 2]
      loss  = E_neg - E_pos

  With ``ucl`` every node has ``G - 1`` negatives and this is exactly InfoGraph's loss.
* ``"infonce"``: per anchor with at least one negative, the weighted InfoNCE of Robinson et al. (ICLR 2021)::

      loss(n) = -s(n, b(n)) + log(exp(s(n, b(n))) + sum_{j in N(n)} w(n, j) exp(s(n, j)))

  averaged over those anchors; computed as a log-sum-exp.

By default the gradient flows through the weights (as in the reference codes); ``detach_weights=True``
treats them as constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.hardening import Exponential, Hardening, check_hardening, is_log_linear
from hscl.losses._checks import _callable_weights

__all__ = ["ESTIMATORS", "graph_negative_mask", "local_global_loss", "log_negative_weights", "negative_weights"]

ESTIMATORS = ("jsd", "infonce")

_LOG2 = math.log(2.0)

GraphHardening = Hardening | Callable[[Tensor], Tensor]


def _graph_hardening(beta: float | None, hardening: GraphHardening | None) -> GraphHardening:
    """The graph objective's ``eta``: ``hardening``, or ``Exponential(beta)`` (``beta = 0`` when neither is given)."""
    if hardening is None:
        return Exponential(0.0 if beta is None else beta)
    if beta is not None:
        raise ValueError(f"give at most one of beta= and hardening=; got beta={beta!r} and hardening={hardening!r}")
    return check_hardening(hardening)


def graph_negative_mask(batch: Tensor, num_graphs: int, labels: Tensor | None = None) -> Tensor:
    """Negatives of each node: the other graphs (``labels=None``), or the graphs of another label.

    Shape: batch ``(n,)`` graph of each node, labels ``(num_graphs,)`` -> mask ``(n, num_graphs)`` bool.
    """
    graphs = torch.arange(num_graphs, device=batch.device)
    mask = batch[:, None] != graphs[None, :]  # (n, G): j != b(n)
    if labels is not None:
        if labels.shape != (num_graphs,):
            raise ValueError(f"labels must have shape ({num_graphs},) (one per graph), got {tuple(labels.shape)}")
        mask &= labels[batch][:, None] != labels[None, :]
    return mask


def negative_weights(
    scores: Tensor, negative_mask: Tensor, beta: float | None = None, *, hardening: GraphHardening | None = None
) -> Tensor:
    """Hardening weights ``w(n, j) = |N(n)| eta(s(n, j)) / sum_{k in N(n)} eta(s(n, k))``, 0 off the kept set.

    With ``beta`` (exponential tilting) that is ``|N(n)| softmax_{j in N(n)}(beta * s(n, j))``. Each row with
    negatives has weights of mean 1 over its negatives, non-decreasing in the score; rows without negatives
    are all 0. ``beta = 0`` gives 1 on every negative.

    Shape: scores ``(n, G)``, negative_mask ``(n, G)`` bool -> ``(n, G)``.
    """
    return log_negative_weights(scores, negative_mask, beta, hardening=hardening).exp()


def log_negative_weights(
    scores: Tensor, negative_mask: Tensor, beta: float | None = None, *, hardening: GraphHardening | None = None
) -> Tensor:
    """``log w(n, j)`` of :func:`negative_weights` (``-inf`` where ``w = 0``), without underflow for large beta.

    Shape: scores ``(n, G)``, negative_mask ``(n, G)`` bool -> ``(n, G)``.
    """
    eta = _graph_hardening(beta, hardening)
    if scores.shape != negative_mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and negative_mask {tuple(negative_mask.shape)} must match")
    count = negative_mask.sum(1, keepdim=True)  # (n, 1) |N(n)|
    has = count > 0
    if not is_log_linear(eta):  # the closed form below needs eta(s) = exp(beta s) 1[s >= log_threshold]
        return _log_callable_weights(scores, negative_mask, eta, count)
    kept = negative_mask
    if eta.log_threshold != -math.inf:
        kept = negative_mask & (scores >= eta.log_threshold)
        fallback = has & ~kept.any(1, keepdim=True)  # (n, 1) no negative passes: w = 1
        kept = torch.where(fallback, negative_mask, kept)
    logits = (eta.beta * scores).masked_fill(~kept, -math.inf).masked_fill(~has, 0.0)
    log_probs = torch.log_softmax(logits, dim=1)  # rows without negatives: uniform, masked below
    log_w = log_probs + count.clamp(min=1).to(scores.dtype).log()
    return log_w.masked_fill(~kept, -math.inf)


def _log_callable_weights(scores: Tensor, negative_mask: Tensor, eta: Callable, count: Tensor) -> Tensor:
    """``log w`` for a user callable ``eta(s) -> weights``: checked, normalised to mean 1, fallback to 1."""
    w = _callable_weights(eta, scores, negative_mask)  # (n, G) weights on N(n), checked
    support = w > 0
    fallback = (count > 0) & ~support.any(1, keepdim=True)  # (n, 1) every weight 0: w = 1
    w = torch.where(fallback & negative_mask, 1.0, w)
    support = torch.where(fallback, negative_mask, support)
    total = w.sum(1, keepdim=True)  # (n, 1), > 0 on rows with negatives
    log_w = torch.log(torch.where(support, w, 1.0)) - torch.log(torch.where(total > 0, total, 1.0))
    log_w = log_w + count.clamp(min=1).to(scores.dtype).log()
    return log_w.masked_fill(~support, -math.inf)


def local_global_loss(
    local: Tensor,
    global_: Tensor,
    batch: Tensor,
    labels: Tensor | None = None,
    *,
    negatives: str = "unsupervised",
    beta: float | None = None,
    hardening: GraphHardening | None = None,
    estimator: str = "jsd",
    detach_weights: bool = False,
) -> Tensor:
    """The local-global objective of UCL / H-UCL / SCL / H-SCL (see the module docstring).

    Implements InfoGraph's eq. (4)-(5) (arXiv 1908.01000) with the tilted negatives of eq. (3) of
    arXiv 2209.00078.

    Args:
        local: local-head outputs of the nodes.
        global_: global-head outputs of the graphs.
        batch: int64, the graph of each node.
        labels: graph labels; required for ``negatives="supervised"``.
        negatives: ``"unsupervised"`` (other graphs) or ``"supervised"`` (graphs of another label).
        beta: exponential tilting ``>= 0``, the shortcut for ``hardening=Exponential(beta)``; 0 or None
            (with no ``hardening``) is no hardening.
        hardening: any hardening of :mod:`hscl.hardening` (``Exponential``, ``Threshold``) or a callable
            ``eta(s) -> weights``; at most one of ``beta`` and ``hardening``.
        estimator: ``"jsd"`` or ``"infonce"``.
        detach_weights: treat the hardening weights as constants.

    Shape:
        local: ``(n, d)``; global_: ``(G, d)``; batch: ``(n,)``; labels: ``(G,)``; output: scalar.

    A batch in which no node has a negative (one graph, or one label with supervised negatives) contributes
    only its positive term (JSD) or an exact 0 attached to the graph (InfoNCE).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if negatives not in ("unsupervised", "supervised"):
        raise ValueError(f"negatives must be 'unsupervised' or 'supervised', got {negatives!r}")
    if local.dim() != 2 or global_.dim() != 2 or local.shape[1] != global_.shape[1]:
        raise ValueError(f"local (n, d) and global_ (G, d) must share d, got {tuple(local.shape)}, "
                         f"{tuple(global_.shape)}")  # fmt: skip
    if batch.shape != (local.shape[0],):
        raise ValueError(f"batch must have shape ({local.shape[0]},) (one graph id per node), got {tuple(batch.shape)}")
    if negatives == "supervised" and labels is None:
        raise ValueError("negatives='supervised' (SCL, H-SCL) needs labels, one per graph")
    eta = _graph_hardening(beta, hardening)
    num_graphs = global_.shape[0]
    scores = local @ global_.T  # (n, G) s(n, j)
    mask = graph_negative_mask(batch, num_graphs, labels if negatives == "supervised" else None)
    log_w = log_negative_weights(scores.detach() if detach_weights else scores, mask, hardening=eta)  # (n, G)
    count = mask.sum(1)  # (n,)
    valid = count > 0
    positive = scores.gather(1, batch[:, None]).squeeze(1)  # (n,) s(n, b(n))
    if estimator == "jsd":
        e_pos = (_LOG2 - F.softplus(-positive)).mean()
        per_anchor = (log_w.exp() * (F.softplus(scores) - _LOG2)).sum(1) / count.clamp(min=1)  # (n,)
        e_neg = per_anchor[valid].mean() if bool(valid.any()) else scores.new_zeros(())
        return e_neg - e_pos
    terms = torch.cat([positive[:, None], scores + log_w], 1)  # (n, 1 + G)
    per_anchor = torch.logsumexp(terms, 1) - positive  # (n,)
    if not bool(valid.any()):
        return scores.sum() * 0.0
    return per_anchor[valid].mean()
