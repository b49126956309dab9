"""Graph contrastive pre-training for Table II of the H-SCL paper: the named objectives and their loop.

The objective itself, InfoGraph's local-global loss with the H-SCL paper's negatives and any hardening,
lives in :mod:`hscl.losses.local_global` (its docstring has the equations); this module names the four
Table II settings (:data:`GRAPH_METHODS`, derived from :data:`hscl.losses.METHODS`), wraps them as a
:class:`GraphObjective`, and pre-trains InfoGraph's GIN with one of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hscl.data.graphs import GraphBatch, GraphData
from hscl.engine.runtime.distributed import resolve_device, to_device
from hscl.hardening import Exponential, Hardening, Threshold
from hscl.losses.local_global import (
    ESTIMATORS,
    local_global_loss,
)
from hscl.losses.registry import METHODS
from hscl.models.gin import InfoGraphModel
from hscl.validation import check_real

__all__ = [
    "GRAPH_METHODS",
    "GraphObjective",
    "PretrainResult",
    "embed_graphs",
    "pretrain_graph_encoder",
]

#: method -> (negatives, hardened) for the methods with a graph form (the four settings of the H-SCL paper's
#: Table II; their negatives and hardening are read from the registry); the hardened ones take ``beta``
GRAPH_METHODS: dict[str, tuple[str, bool]] = {
    n: (METHODS[n].negatives, METHODS[n].hardened) for n in ("ucl", "h-ucl", "scl", "h-scl")
}


@dataclass(frozen=True)
class GraphObjective:
    """A named Table II objective: ``method`` in :data:`GRAPH_METHODS`; the hardened ones take ``beta``
    (exponential tilting) or ``hardening`` (any :mod:`hscl.hardening` object or callable), not both."""

    method: str = "ucl"
    beta: float = 0.0
    estimator: str = "jsd"
    detach_weights: bool = False
    hardening: Hardening | Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.method not in GRAPH_METHODS:
            raise ValueError(f"method must be one of {', '.join(GRAPH_METHODS)}, got {self.method!r}")
        check_real("beta", self.beta, 0.0)  # exp(beta * s) must be non-decreasing
        hardened = GRAPH_METHODS[self.method][1]
        if not hardened and self.beta != 0:
            raise ValueError(f"method {self.method!r} has no hardening; beta must be 0, got {self.beta}")
        if self.hardening is not None:
            if not hardened:
                raise ValueError(f"method {self.method!r} has no hardening; hardening must be None")
            if self.beta != 0:
                raise ValueError(f"give beta or hardening, not both; got beta={self.beta} and {self.hardening!r}")
            if not (isinstance(self.hardening, Hardening) or callable(self.hardening)):
                raise TypeError(f"hardening must be an hscl.hardening object or a callable, got {self.hardening!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")

    @property
    def supervised(self) -> bool:
        return GRAPH_METHODS[self.method][0] == "supervised"

    @property
    def label(self) -> str:
        """The row name in Table II, e.g. ``H-SCL(beta=2)`` (``H-SCL(tau=1.5)`` for a threshold)."""
        name = METHODS[self.method].label
        if not GRAPH_METHODS[self.method][1]:
            return name
        hardening = self.hardening
        if hardening is None:
            return f"{name}(beta={self.beta:g})"
        if type(hardening) is Exponential:
            return f"{name}(beta={hardening.beta:g})"
        if type(hardening) is Threshold:
            return f"{name}(tau={hardening.tau:g})"
        return f"{name}({getattr(hardening, '__name__', type(hardening).__name__)})"

    def __call__(self, local: Tensor, global_: Tensor, batch: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shape: local ``(n, d)``, global_ ``(G, d)``, batch ``(n,)``, labels ``(G,)``; returns a scalar."""
        return local_global_loss(
            local,
            global_,
            batch,
            labels if self.supervised else None,
            negatives=GRAPH_METHODS[self.method][0],
            beta=None if self.hardening is not None else self.beta,
            hardening=self.hardening,
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
    device: str | torch.device | None = "auto",
) -> PretrainResult:
    """Pre-train an :class:`InfoGraphModel` on graphs ``index`` of ``data`` (all graphs by default).

    Adam(lr), ``epochs`` passes over shuffled mini-batches of ``batch_size`` graphs (a final batch of a
    single graph is skipped: it has no negatives). Labels are read only for supervised objectives, and only
    those of the graphs in ``index``. Deterministic in ``seed`` on the CPU; on a GPU the GIN aggregation and the
    graph pooling sum with atomic adds (scatter), whose order varies, so repeated runs agree only to rounding.
    ``epochs=0`` returns the initialised model.
    ``progress(epoch, mean_loss)`` is called after each epoch. Trains on ``device`` (``"auto"``: a CUDA GPU
    when there is one, else the CPU): the model is initialised on the CPU from ``seed`` (the same weights on
    every device) and moved there; each mini-batch is assembled on the host and copied there.

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
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = InfoGraphModel(data.num_features, hidden, num_layers).to(device)
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
            batch = _batch_to(data.batch(chunk), device)
            local, global_ = model(batch)
            loss = objective(local, global_, batch.batch, batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach().double()  # summed on the device in float64 (as the float sum was)
            steps += 1
        losses.append(float(total) / max(steps, 1))
        if progress is not None:
            progress(epoch + 1, losses[-1])
    return PretrainResult(model, losses, time.perf_counter() - start)


@torch.no_grad()
def embed_graphs(model: InfoGraphModel, data: GraphData, batch_size: int = 512) -> Tensor:
    """Frozen graph summaries of every graph of ``data``: ``(G, model.feature_dim)`` float32, on the CPU (for
    scikit-learn) whatever the model's device (the batches are computed there)."""
    device = next(model.parameters()).device
    starts = range(0, len(data), batch_size)
    out = [
        model.embed(_batch_to(data.batch(torch.arange(s, min(s + batch_size, len(data)))), device)).cpu()
        for s in starts
    ]
    return torch.cat(out) if out else torch.zeros(0, model.feature_dim)


def _batch_to(batch: GraphBatch, device: torch.device) -> GraphBatch:
    """``batch`` with its tensors on ``device`` (itself on the CPU)."""
    if device.type == "cpu":
        return batch
    tensors = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **{k: to_device(v, device) for k, v in tensors.items() if isinstance(v, Tensor)})
