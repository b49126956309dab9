"""Graph-level contrastive objectives (Table II of the H-SCL paper) and their pre-training loop.

The unsupervised baseline is InfoGraph's local-global objective (Sun et al., ICLR 2020, eq. (4)-(5)):
a node ("patch") of graph ``i`` and the summary of graph ``i`` form a positive pair; the node and the
summaries of the other graphs in the batch form negative pairs. With ``l_n`` the local head's output
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

Hardening (exponential tilting, Definition 1 with ``eta(t) = exp(beta t)``), normalised to mean 1 per anchor::

    w(n, j) = |N(n)| * exp(beta * s(n, j)) / sum_{k in N(n)} exp(beta * s(n, k)),   j in N(n)

so a negative weighs more the MORE similar it is to the anchor (a harder negative), ``beta = 0`` gives
weight 1 everywhere, and the weights of an anchor always average 1 (the estimator keeps its scale).

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
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.data.graphs import GraphData
from hscl.models.gin import InfoGraphModel

__all__ = [
    "ESTIMATORS",
    "GRAPH_METHODS",
    "GraphObjective",
    "PretrainResult",
    "embed_graphs",
    "graph_negative_mask",
    "local_global_loss",
    "log_negative_weights",
    "negative_weights",
    "pretrain_graph_encoder",
]

ESTIMATORS = ("jsd", "infonce")

#: method -> (negatives, hardened); the hardened ones take ``beta``
GRAPH_METHODS: dict[str, tuple[str, bool]] = {
    "ucl": ("unsupervised", False),
    "h-ucl": ("unsupervised", True),
    "scl": ("supervised", False),
    "h-scl": ("supervised", True),
}

_LOG2 = math.log(2.0)


def _check_beta(beta: object) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0 (exp(beta * s) must be non-decreasing), got {beta!r}")
    return float(beta)


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


def negative_weights(scores: Tensor, negative_mask: Tensor, beta: float) -> Tensor:
    """Hardening weights ``w(n, j) = |N(n)| softmax_{j in N(n)}(beta * s(n, j))``, 0 off the mask.

    Each row with negatives has weights of mean 1 over its negatives, increasing with the score;
    rows without negatives are all 0. ``beta = 0`` gives 1 on every negative.

    Shape: scores ``(n, G)``, negative_mask ``(n, G)`` bool -> ``(n, G)``.
    """
    return log_negative_weights(scores, negative_mask, beta).exp()


def log_negative_weights(scores: Tensor, negative_mask: Tensor, beta: float) -> Tensor:
    """``log w(n, j)`` of :func:`negative_weights` (``-inf`` off the mask), without underflow for large beta.

    Shape: scores ``(n, G)``, negative_mask ``(n, G)`` bool -> ``(n, G)``.
    """
    beta = _check_beta(beta)
    if scores.shape != negative_mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and negative_mask {tuple(negative_mask.shape)} must match")
    count = negative_mask.sum(1, keepdim=True)  # (n, 1) |N(n)|
    has = count > 0
    logits = (beta * scores).masked_fill(~negative_mask, -math.inf).masked_fill(~has, 0.0)
    log_probs = torch.log_softmax(logits, dim=1)  # rows without negatives: uniform, masked below
    log_w = log_probs + count.clamp(min=1).to(scores.dtype).log()
    return log_w.masked_fill(~negative_mask, -math.inf)


def local_global_loss(
    local: Tensor,
    global_: Tensor,
    batch: Tensor,
    labels: Tensor | None = None,
    *,
    negatives: str = "unsupervised",
    beta: float = 0.0,
    estimator: str = "jsd",
    detach_weights: bool = False,
) -> Tensor:
    """The local-global objective of UCL / H-UCL / SCL / H-SCL (see the module docstring).

    Args:
        local: ``(n, d)`` local-head outputs of the nodes.
        global_: ``(G, d)`` global-head outputs of the graphs.
        batch: ``(n,)`` int64, the graph of each node.
        labels: ``(G,)`` graph labels; required for ``negatives="supervised"``.
        negatives: ``"unsupervised"`` (other graphs) or ``"supervised"`` (graphs of another label).
        beta: exponential tilting ``>= 0``; 0 is no hardening.
        estimator: ``"jsd"`` or ``"infonce"``.
        detach_weights: treat the hardening weights as constants.

    Returns a scalar. A batch in which no node has a negative (one graph, or one label with supervised
    negatives) contributes only its positive term (JSD) or an exact 0 attached to the graph (InfoNCE).
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
    num_graphs = global_.shape[0]
    scores = local @ global_.T  # (n, G) s(n, j)
    mask = graph_negative_mask(batch, num_graphs, labels if negatives == "supervised" else None)
    log_w = log_negative_weights(scores.detach() if detach_weights else scores, mask, beta)  # (n, G)
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


@dataclass(frozen=True)
class GraphObjective:
    """A named Table II objective: ``method`` in :data:`GRAPH_METHODS`, ``beta`` for the hardened ones."""

    method: str = "ucl"
    beta: float = 0.0
    estimator: str = "jsd"
    detach_weights: bool = False

    def __post_init__(self) -> None:
        if self.method not in GRAPH_METHODS:
            raise ValueError(f"method must be one of {', '.join(GRAPH_METHODS)}, got {self.method!r}")
        _check_beta(self.beta)
        if not GRAPH_METHODS[self.method][1] and self.beta != 0:
            raise ValueError(f"method {self.method!r} has no hardening; beta must be 0, got {self.beta}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")

    @property
    def supervised(self) -> bool:
        return GRAPH_METHODS[self.method][0] == "supervised"

    @property
    def label(self) -> str:
        """The row name in Table II, e.g. ``H-SCL(beta=2)``."""
        name = self.method.upper()
        return f"{name}(beta={self.beta:g})" if GRAPH_METHODS[self.method][1] else name

    def __call__(self, local: Tensor, global_: Tensor, batch: Tensor, labels: Tensor | None = None) -> Tensor:
        return local_global_loss(
            local,
            global_,
            batch,
            labels if self.supervised else None,
            negatives=GRAPH_METHODS[self.method][0],
            beta=self.beta,
            estimator=self.estimator,
            detach_weights=self.detach_weights,
        )


@dataclass
class PretrainResult:
    model: InfoGraphModel
    losses: list[float]
    seconds: float


def pretrain_graph_encoder(
    data: GraphData,
    objective: GraphObjective,
    *,
    index: Tensor | None = None,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 0.01,
    hidden: int = 32,
    num_layers: int = 3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Pre-train an :class:`InfoGraphModel` on graphs ``index`` of ``data`` (all graphs by default).

    Adam(lr), ``epochs`` passes over shuffled mini-batches of ``batch_size`` graphs (a final batch of a
    single graph is skipped: it has no negatives). Labels are read only for supervised objectives, and only
    those of the graphs in ``index``. Deterministic in ``seed``; ``epochs=0`` returns the initialised model.
    ``progress(epoch, mean_loss)`` is called after each epoch.

    A small plain loop rather than Lightning: one Table II cell trains up to 100 tiny models (10 folds x 10
    repetitions), each in seconds, where a Trainer's set-up would cost more than the training.
    """
    for arg, value, minimum in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    index = torch.arange(len(data)) if index is None else torch.as_tensor(index, dtype=torch.long)
    if index.numel() < 2:
        raise ValueError(f"pre-training needs at least 2 graphs, got {index.numel()}")
    torch.manual_seed(seed)
    model = InfoGraphModel(data.num_features, hidden, num_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = index[torch.randperm(index.numel(), generator=generator)]
        total, steps = 0.0, 0
        for first in range(0, order.numel(), batch_size):
            chunk = order[first : first + batch_size]
            if chunk.numel() < 2:
                continue
            batch = data.batch(chunk)
            local, global_ = model(batch)
            loss = objective(local, global_, batch.batch, batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        losses.append(total / max(steps, 1))
        if progress is not None:
            progress(epoch + 1, losses[-1])
    return PretrainResult(model, losses, time.perf_counter() - start)


@torch.no_grad()
def embed_graphs(model: InfoGraphModel, data: GraphData, batch_size: int = 512) -> Tensor:
    """Frozen graph summaries of every graph of ``data``: ``(G, model.feature_dim)`` float32."""
    starts = range(0, len(data), batch_size)
    out = [model.embed(data.batch(torch.arange(s, min(s + batch_size, len(data))))) for s in starts]
    return torch.cat(out) if out else torch.zeros(0, model.feature_dim)
