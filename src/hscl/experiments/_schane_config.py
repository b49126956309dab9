"""The settings of ``hscl reproduce schane``: one YAML per preset (``configs/schane/<preset>.yaml``), checked.

A :class:`SchaneExperiment` starts either from hscl's own encoder, pre-trained by the experiment (``pretrain``,
an ``hscl train`` run config, on ``pretrain_classes``), or from a pre-trained :class:`~hscl.models.Backbone`
(``backbone``: ``efficientnet-lite0`` with its ImageNet weights, ``hf:PATH``, ...; nothing is pre-trained). Every
value is checked when the YAML is read, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hscl.engine.finetune.config import OBJECTIVES, FinetuneConfig
from hscl.engine.finetune.fewshot import FewShotConfig
from hscl.engine.runtime.config import DataConfig, RunConfig, config_from_dict
from hscl.validation import check_choice, check_int, check_real

__all__ = [
    "PRECISIONS",
    "AblationConfig",
    "BackboneConfig",
    "FullConfig",
    "SchaneExperiment",
    "find_experiment",
    "load_experiment",
]

#: ``precision``: "32" float32 (CPU: default memory format); "bf16" bf16 autocast (channels-last for a
#: convnet); "auto" bf16 where the hardware computes it natively (CPU: amx_bf16 / avx512_bf16; CUDA: compute
#: capability >= 8.0), else float32; "fastest" (CPU) the fastest of float32, float32 channels-last and bf16
#: channels-last, timed on the model (rules: :mod:`hscl.engine.runtime.precision`)
PRECISIONS = ("32", "bf16", "auto", "fastest")


@dataclass
class FullConfig:
    """Full fine-tuning in ``hscl reproduce schane``: every class of ``dataset`` (None: the experiment's data),
    on stratified subsets of its splits (None: the whole split), once per seed."""

    train_subset: int | None = 10000
    test_subset: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset: str | None = None

    def __post_init__(self) -> None:
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(f"full.{name}", getattr(self, name), 2))
        if not self.seeds:
            raise ValueError("full.seeds must list at least one seed")
        self.seeds = [check_int("full.seeds", s, 0) for s in self.seeds]


@dataclass
class BackboneConfig:
    """A pre-trained backbone (:func:`hscl.models.build_backbone`): ``name`` (``efficientnet-lite0``, ``hf:PATH``),
    ``input_size`` (the side images are resized to inside it; None: the weights' own), ``pretrained`` weights."""

    name: str = "efficientnet-lite0"
    input_size: int | None = None
    pretrained: bool = True

    def __post_init__(self) -> None:
        from hscl.models.backbones import BACKBONES, HF_PREFIX, backbone_names

        if not isinstance(self.name, str) or not (self.name in BACKBONES or self.name.startswith(HF_PREFIX)):
            raise ValueError(f"backbone.name must be one of {', '.join(backbone_names())}; got {self.name!r}")
        if self.input_size is not None:
            self.input_size = check_int("backbone.input_size", self.input_size, 8)


#: the episodes the ablation's best ``lam`` is chosen on (``ablation.select``)
SELECTIONS = ("validation", "test")


@dataclass
class AblationConfig:
    """SCHaNe's ``lam`` ablation: ``K = shots``-shot episodes (the few-shot ones) fine-tuned with
    ``(1 - lam) CE + lam L_SCHaNe`` for every ``lam`` in ``lams`` (``lam = 0`` is CE exactly).

    ``select``: the episodes the best ``lam`` is chosen on. ``"validation"`` (default): ``val_episodes``
    episodes (None: as many as the few-shot comparison) drawn from a stratified ``val_fraction`` of each held-out
    class's images (training and test splits pooled), which the test episodes (few-shot and ablation) then never
    draw from, so no image of a test episode takes part; the chosen ``lam``'s accuracy on the test episodes is
    reported. ``"test"``: the best mean over the test episodes themselves (the paper's protocol; optimistic).
    """

    lams: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9, 1.0])
    shots: int = 5
    select: str = "validation"
    val_episodes: int | None = None
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.lams:
            raise ValueError("ablation.lams must list at least one lam in [0, 1]")
        self.lams = [check_real("ablation.lams", lam, 0.0, 1.0) for lam in self.lams]
        if len(set(self.lams)) != len(self.lams):
            raise ValueError(f"ablation.lams must be distinct, got {self.lams}")
        self.shots = check_int("ablation.shots", self.shots, 1)
        self.select = check_choice("ablation.select", self.select, SELECTIONS)
        if self.val_episodes is not None:
            self.val_episodes = check_int("ablation.val_episodes", self.val_episodes, 1)
        self.val_fraction = check_real("ablation.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True)
        if self.val_fraction == 1.0:
            raise ValueError("ablation.val_fraction must lie in (0, 1): the rest of the images is the test episodes'")


@dataclass
class SchaneExperiment:
    """``hscl reproduce schane``: one YAML (``configs/schane/<preset>.yaml``).

    Either ``pretrain`` (an ``hscl train`` run config: hscl's encoder is pre-trained on ``pretrain_classes``,
    cached in ``<out>/pretrain``; the data is ``pretrain.data``) or ``backbone`` (a pre-trained backbone, nothing is
    pre-trained; the data is ``data``). Then ``objectives`` are compared by full fine-tuning on every class and by
    few-shot episodes on ``heldout_classes``, and with ``ablation`` SCHaNe's ``lam`` is varied on the episodes.

    ``precision``: see :data:`PRECISIONS` (the choice of "auto" is stored in ``<out>/precision.json`` and kept on
    resume). ``device``: ``"auto"`` (a CUDA GPU when there is one), ``"cpu"``, ``"cuda"``. ``threads``: torch
    threads for the whole experiment (None: torch's default).
    """

    name: str = "schane"
    data: DataConfig | None = None
    backbone: BackboneConfig | None = None
    pretrain_classes: list[int] | None = None
    heldout_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    pretrain_train_subset: int | None = None  # stratified, of the pre-training classes' images
    objectives: list[str] = field(default_factory=lambda: ["ce", "schane"])
    pretrain: RunConfig | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    full: FullConfig = field(default_factory=FullConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    ablation: AblationConfig | None = None
    embedding_points: int = 1000
    precision: str = "32"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backbone is not None:
            if self.pretrain is not None:
                raise ValueError("give either backbone (a pre-trained backbone) or pretrain (pre-train hscl's encoder)")
            if self.pretrain_classes:
                raise ValueError("pretrain_classes: nothing is pre-trained with a backbone; leave it out")
            self.pretrain_classes = []
            self.data = self.data or DataConfig()
        else:
            if self.data is not None:
                raise ValueError("data: the data of an experiment that pre-trains is pretrain.data; set that instead")
            self.pretrain = self.pretrain or RunConfig()
            self.pretrain_classes = [0, 1, 2, 3, 4] if self.pretrain_classes is None else self.pretrain_classes
            if not self.pretrain_classes:
                raise ValueError("pretrain_classes must list the classes to pre-train on")
        if self.threads is not None:
            self.threads = check_int("threads", self.threads, 1)
            if self.pretrain is not None:
                self.pretrain.train.threads = self.threads
        if not self.objectives:
            raise ValueError("objectives must list at least one of " + ", ".join(OBJECTIVES))
        for objective in self.objectives:
            check_choice("objectives", objective, OBJECTIVES)
        if not self.heldout_classes:
            raise ValueError("heldout_classes must list the classes the few-shot episodes draw from")
        overlap = sorted(set(self.pretrain_classes) & set(self.heldout_classes))
        if overlap:
            raise ValueError(f"heldout_classes must be disjoint from pretrain_classes; both hold {overlap}")
        self.embedding_points = check_int("embedding_points", self.embedding_points, 2)
        self.precision = check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {self.device!r}")

    @property
    def data_config(self) -> DataConfig:
        """The data of the experiment: ``data`` (with a backbone) or ``pretrain.data``."""
        return self.data if self.data is not None else self.pretrain.data

    def objective_config(self, objective: str, **changes) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, objective=objective, **changes)


def find_experiment(preset: str, extra: str | Path | None = None) -> Path:
    from hscl.experiments.presets import find_preset

    return find_preset("schane", preset, extra)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> SchaneExperiment:
    """Read a ``SchaneExperiment`` YAML and apply ``section.key=value`` overrides (e.g. ``fewshot.episodes=20``)."""
    from hscl.engine.runtime.config import apply_overrides, load_yaml, validate_config

    data = load_yaml(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level")
    experiment = config_from_dict(apply_overrides(data, list(overrides)), SchaneExperiment, "schane")
    if experiment.pretrain is not None:
        validate_config(experiment.pretrain)
    return experiment
