"""InfoGraph's graph encoder (GIN) and its local / global discriminator heads.

Reference: Sun, Hoffmann, Verma, Tang. InfoGraph: Unsupervised and Semi-supervised Graph-Level
Representation Learning via Mutual Information Maximization. ICLR 2020 (Sec. 3.2, the encoder of
Xu et al.'s GIN, ICLR 2019). The H-SCL paper's Table II uses this encoder: 3 GIN layers of width 32.

Layer ``k``: ``h^(k) = BN(ReLU(GINConv_k(h^(k-1))))`` with ``GINConv_k`` the sum aggregation
``MLP_k((1 + eps) h_v + sum_{u in N(v)} h_u)`` and ``MLP_k = Linear -> ReLU -> Linear``. The patch (node)
representation is ``[h^(1) | ... | h^(L)]`` and the graph summary ``[sum_v h^(1)_v | ... | sum_v h^(L)_v]``,
both of width ``L * hidden``. The summary is the embedding that the SVM classifies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GINEncoder", "FeedForwardHead", "InfoGraphModel"]


def _pyg():
    try:
        from torch_geometric.nn import GINConv, global_add_pool
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the GIN encoder needs torch_geometric; pip install -c constraints.txt -e '.[graph]'"
        ) from err
    return GINConv, global_add_pool


class GINEncoder(nn.Module):
    """``num_layers`` GIN layers with batch norm; every layer's output sum-pooled and concatenated.

    Args:
        in_features: node feature width ``F``.
        hidden: width of every layer (the paper: 32).
        num_layers: GIN layers (the paper: 3).

    ``forward(x, edge_index, batch, num_graphs)``:
        x ``(n, F)`` node features, edge_index ``(2, e)``, batch ``(n,)`` graph of each node ->
        (graph summaries ``(num_graphs, num_layers * hidden)``, node patches ``(n, num_layers * hidden)``).
    """

    def __init__(self, in_features: int, hidden: int = 32, num_layers: int = 3):
        super().__init__()
        for arg, value in (("in_features", in_features), ("hidden", hidden), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        GINConv, self._pool = _pyg()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for k in range(num_layers):
            width_in = in_features if k == 0 else hidden
            mlp = nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.convs.append(GINConv(mlp))
            self.norms.append(nn.BatchNorm1d(hidden))
        self.in_features = in_features
        self.hidden = hidden
        self.num_layers = num_layers
        self.feature_dim = num_layers * hidden

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        layers = []
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = norm(torch.relu(conv(h, edge_index)))  # (n, hidden)
            layers.append(h)
        patches = torch.cat(layers, 1)  # (n, L * hidden)
        summary = torch.cat([self._pool(h, batch, size=num_graphs) for h in layers], 1)  # (G, L * hidden)
        return summary, patches


class FeedForwardHead(nn.Module):
    """InfoGraph's discriminator head: three ``Linear -> ReLU`` blocks plus a linear shortcut, ``(*, d) -> (*, d)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU()
        )
        self.shortcut = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + self.shortcut(x)


class InfoGraphModel(nn.Module):
    """GIN encoder + local head (for patches) + global head (for summaries).

    ``forward(batch)`` takes a :class:`hscl.data.graphs.GraphBatch` and returns
    ``(local (n, d), global (num_graphs, d))`` with ``d = num_layers * hidden``: the discriminator inputs whose
    inner products score node-graph pairs. :meth:`embed` returns the frozen summaries ``(num_graphs, d)``.
    """

    def __init__(self, in_features: int, hidden: int = 32, num_layers: int = 3):
        super().__init__()
        self.encoder = GINEncoder(in_features, hidden, num_layers)
        self.local_head = FeedForwardHead(self.encoder.feature_dim)
        self.global_head = FeedForwardHead(self.encoder.feature_dim)
        self.feature_dim = self.encoder.feature_dim

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        summary, patches = self.encoder(batch.x, batch.edge_index, batch.batch, batch.num_graphs)
        return self.local_head(patches), self.global_head(summary)

    @torch.no_grad()
    def embed(self, batch) -> Tensor:
        """Graph summaries of the encoder in eval mode (batch-norm running statistics): ``(num_graphs, d)``."""
        was_training = self.training
        self.eval()
        summary, _ = self.encoder(batch.x, batch.edge_index, batch.batch, batch.num_graphs)
        self.train(was_training)
        return summary
