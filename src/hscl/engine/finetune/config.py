"""The settings of fine-tuning: the objectives derived from the registry of methods, and FinetuneConfig.

The objective names are ``"ce"`` (plain cross-entropy) and, for every registered method, ``"<name>+ce"``
(``(1 - lam) * CE + lam * L``), or the method's own name when it is defined together with cross-entropy
(``"schane"``). Every value is checked at construction with a message naming the setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from hscl.losses import METHODS
from hscl.validation import check_choice, check_int, check_real

#: the methods defined together with cross-entropy (SCHaNe's ``(1 - lam) * CE + lam * L``): their fine-tuning
#: objective is called by the method's own name; any other method fine-tunes as ``"<name>+ce"``
DEFINED_WITH_CE = ("schane",)


def _objective(method) -> tuple[str, str]:
    """(objective name, label) of fine-tuning with CE plus ``method``'s loss."""
    if method.name in DEFINED_WITH_CE:  # defined with CE already (SCHaNe)
        return method.name, method.label
    return f"{method.name}+ce", f"{method.label}+CE"


#: fine-tuning objective -> its label: plain ``"ce"``, and CE plus each registered method's loss
#: (``"schane"``, ``"supcon+ce"``, ``"h-scl+ce"``, ...), derived from :data:`hscl.losses.METHODS`
OBJECTIVE_LABELS: dict[str, str] = {"ce": "CE", **dict(_objective(m) for m in METHODS.values())}
OBJECTIVES = tuple(OBJECTIVE_LABELS)
#: objective name -> the registered method whose loss it adds to CE
_OBJECTIVE_METHOD = {_objective(m)[0]: m.name for m in METHODS.values()}
EMBEDDINGS = ("projection", "features")
#: "train": batch norm uses batch statistics and updates its running averages while fine-tuning;
#: "frozen": batch norm keeps the pre-trained running statistics (its affine weights still train)
BN_MODES = ("train", "frozen")


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run (full data) and of the per-episode fine-tuning.

    Attributes:
        objective: ``"ce"``, ``"schane"``, ``"supcon+ce"`` or ``"<method>+ce"`` (:data:`OBJECTIVES`).
        lam: weight of the contrastive term, ``(1 - lam) CE + lam L``; SCHaNe recommends 0.9. Ignored by ``ce``.
        beta: exponential tilting of the negatives (SCHaNe's hardness), ``>= 0``.
        temperature: gamma in ``g = z_r . z_s / gamma``.
        embedding: the contrastive term on the projection ``z`` (``"projection"``) or on the features ``h``
            (``"features"``); None: ``"features"`` for a :class:`~hscl.models.Backbone` (what SCHaNe does; a
            ``"projection"`` gives it a fresh head ``feature_dim -> 512 -> 128`` on the sphere) and ``"projection"``
            for an hscl :class:`~hscl.models.ContrastiveModel` (its pre-trained head). :meth:`resolved` fills it in.
        epochs: passes over the training set (full fine-tuning).
        batch_size: images per step ``B`` (each seen in ``views`` augmentations).
        views: augmented views per image ``V``; with ``V >= 2`` every image has a positive (its other view).
        lr, weight_decay: Adam, with a cosine schedule over all steps.
        head_lr: learning rate of the new linear head (None: ``lr``); a zero head learns slowly at ``lr`` 1e-3.
        bn: ``"train"`` or ``"frozen"`` (see ``BN_MODES``).
        augment: augmentation preset name (None: the pre-training run's, else the one for the images).
        seed: batches, augmentation draws and the linear head follow from it.
    """

    objective: str = "schane"
    lam: float = 0.9
    beta: float = 1.0
    temperature: float = 0.5
    embedding: str | None = None
    epochs: int = 10
    batch_size: int = 256
    views: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-6
    head_lr: float | None = 1e-2
    bn: str = "train"
    augment: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.objective = check_choice("objective", self.objective, OBJECTIVES)
        self.lam = check_real("lam", self.lam, 0.0, 1.0)
        self.beta = check_real("beta", self.beta, 0.0, math.inf)
        self.temperature = check_real("temperature", self.temperature, 0.0, math.inf, low_open=True)
        if self.embedding is not None:
            self.embedding = check_choice("embedding", self.embedding, EMBEDDINGS)
        self.epochs = check_int("epochs", self.epochs, 1)
        self.batch_size = check_int("batch_size", self.batch_size, 2)
        self.views = check_int("views", self.views, 1)
        self.lr = check_real("lr", self.lr, 0.0, math.inf, low_open=True)
        self.weight_decay = check_real("weight_decay", self.weight_decay, 0.0, math.inf)
        if self.head_lr is not None:
            self.head_lr = check_real("head_lr", self.head_lr, 0.0, math.inf, low_open=True)
        self.bn = check_choice("bn", self.bn, BN_MODES)
        self.seed = check_int("seed", self.seed, 0)

    def resolved(self, model: nn.Module) -> FinetuneConfig:
        """This config with ``embedding`` chosen for ``model`` when None (see :func:`resolve_embedding`)."""
        return dataclasses.replace(self, embedding=resolve_embedding(self.embedding, model))


def is_backbone(model: nn.Module) -> bool:
    """Whether ``model`` is a :class:`~hscl.models.Backbone` (or a ContrastiveModel built around one)."""
    from hscl.models import Backbone

    return isinstance(model, Backbone) or isinstance(getattr(model, "encoder", None), Backbone)


def resolve_embedding(embedding: str | None, model: nn.Module) -> str:
    """``embedding`` (checked), or by default ``"features"`` for a Backbone and ``"projection"`` otherwise."""
    if embedding is not None:
        return check_choice("embedding", embedding, EMBEDDINGS)
    return "features" if is_backbone(model) else "projection"
