"""The configuration of ``hscl reproduce table2``: :class:`Table2Config` (YAML presets under
``configs/table2/``), its checks, and the method variants (rows) of the table. See :mod:`hscl.experiments.table2`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hscl.engine.pretrain.graph_train import ESTIMATORS, GRAPH_METHODS, GraphObjective
from hscl.engine.runtime.config import apply_overrides, config_from_dict, load_yaml

__all__ = [
    "SVM_KERNELS",
    "GraphEvalSection",
    "GraphModelSection",
    "GraphTrainSection",
    "Table2Config",
    "UntrainedGIN",
    "find_table2_preset",
    "load_table2_config",
    "table2_variants",
    "validate_table2_config",
]

SVM_KERNELS = ("rbf", "linear")


@dataclass
class GraphModelSection:
    hidden: int = 32
    num_layers: int = 3


@dataclass
class GraphTrainSection:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.01
    estimator: str = "jsd"
    detach_weights: bool = False
    #: torch intra-op threads while training (tiny models: 1 is fastest, and fair on a shared machine)
    threads: int = 1


@dataclass
class GraphEvalSection:
    folds: int = 10
    repeats: int = 10
    inner_folds: int = 5
    C: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3])
    kernel: str = "rbf"
    unsupervised_pretrain: str = "all"


@dataclass
class Table2Config:
    """A Table II run: datasets x method variants, the pre-training and the SVM protocol."""

    name: str = "table2"
    datasets: list[str] = field(default_factory=lambda: ["molecules"])
    methods: list[str] = field(default_factory=lambda: list(GRAPH_METHODS))
    #: the beta grid of the hardened methods; each beta is its own row
    betas: list[float] = field(default_factory=lambda: [1.0, 2.0, 10.0])
    data_dir: str | None = None
    model: GraphModelSection = field(default_factory=GraphModelSection)
    train: GraphTrainSection = field(default_factory=GraphTrainSection)
    eval: GraphEvalSection = field(default_factory=GraphEvalSection)


def _positive_int(where: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")


def validate_table2_config(config: Table2Config) -> None:
    if not config.datasets:
        raise ValueError("datasets must list at least one dataset")
    valid = [*GRAPH_METHODS, UntrainedGIN.method]
    unknown = sorted(set(config.methods) - set(valid))
    if unknown or not config.methods:
        raise ValueError(f"methods: unknown {unknown or '(empty)'}; valid: {', '.join(valid)}")
    if any(m in GRAPH_METHODS and GRAPH_METHODS[m][1] for m in config.methods) and not config.betas:
        raise ValueError("betas must list at least one beta for the hardened methods (h-ucl, h-scl)")
    for beta in config.betas:
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"betas must be finite numbers >= 0, got {beta}")
    _positive_int("model.hidden", config.model.hidden)
    _positive_int("model.num_layers", config.model.num_layers)
    _positive_int("train.epochs", config.train.epochs)
    _positive_int("train.batch_size", config.train.batch_size, 2)
    _positive_int("train.threads", config.train.threads)
    if not config.train.lr > 0:
        raise ValueError(f"train.lr must be > 0, got {config.train.lr}")
    if config.train.estimator not in ESTIMATORS:
        raise ValueError(f"train.estimator must be one of {', '.join(ESTIMATORS)}, got {config.train.estimator!r}")
    _positive_int("eval.folds", config.eval.folds, 2)
    _positive_int("eval.repeats", config.eval.repeats)
    _positive_int("eval.inner_folds", config.eval.inner_folds, 2)
    if not config.eval.C or any(not (math.isfinite(c) and c > 0) for c in config.eval.C):
        raise ValueError(f"eval.C must be a non-empty list of numbers > 0, got {config.eval.C}")
    if config.eval.kernel not in SVM_KERNELS:
        raise ValueError(f"eval.kernel must be one of {', '.join(SVM_KERNELS)}, got {config.eval.kernel!r}")
    if config.eval.unsupervised_pretrain not in ("all", "fold"):
        raise ValueError(
            f"eval.unsupervised_pretrain must be 'all' or 'fold', got {config.eval.unsupervised_pretrain!r}"
        )


def find_table2_preset(preset: str, config_dir: str | Path | None = None) -> Path:
    """``table2/<preset>.yaml`` from ``config_dir`` (a user's folder) or the packaged presets."""
    from hscl.experiments.presets import find_preset

    return find_preset("table2", preset, config_dir)


def load_table2_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Table2Config:
    """A YAML Table II config (or the defaults) with ``key=value`` overrides; misspelled keys raise."""
    data: dict = {}
    if path is not None:
        data = load_yaml(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a table2 config must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    config = config_from_dict(data, Table2Config, "table2 config")
    validate_table2_config(config)
    return config


@dataclass(frozen=True)
class UntrainedGIN:
    """A reference row, ``untrained``: the same GIN at its random initialisation (no pre-training), embedded
    and classified under the same SVM protocol. It shows what the pre-training objectives add."""

    method: str = "untrained"
    beta: float = 0.0
    supervised: bool = False
    label: str = "untrained GIN"


def table2_variants(config: Table2Config) -> list[GraphObjective | UntrainedGIN]:
    """One objective per row of the table: each method, the hardened ones once per beta."""
    out: list[GraphObjective | UntrainedGIN] = []
    for method in config.methods:
        if method == UntrainedGIN.method:
            out.append(UntrainedGIN())
            continue
        betas = config.betas if GRAPH_METHODS[method][1] else [0.0]
        for beta in betas:
            out.append(GraphObjective(method, float(beta), config.train.estimator, config.train.detach_weights))
    return out


def _variant_key(objective: GraphObjective | UntrainedGIN) -> str:
    hardened = objective.method in GRAPH_METHODS and GRAPH_METHODS[objective.method][1]
    return f"{objective.method}-b{objective.beta:g}" if hardened else objective.method
