"""Pre-training: the Lightning task and data module of an image run, its per-epoch monitor, the automatic
hardness's smoothing, and graph pre-training (InfoGraph)."""

from hscl.engine.pretrain.graph_train import GraphObjective, embed_graphs, pretrain_graph_encoder
from hscl.engine.pretrain.run import load_data, load_task, train

__all__ = ["GraphObjective", "embed_graphs", "load_data", "load_task", "pretrain_graph_encoder", "train"]
