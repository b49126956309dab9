"""SCHaNe fine-tuning: a pre-trained encoder + a linear classifier, full data or N-way K-shot episodes.

A pre-trained :class:`~hscl.models.ContrastiveModel` (encoder ``h = f(x)``, projection head
``z = head(h)``) gets a linear classifier on the encoder features, ``logits = W h + b``, and is
fine-tuned end to end with one of three objectives on a batch of ``B`` images x ``V`` augmented views:

==============  ===================================================================================
``ce``          ``L = CE(logits, y)``
``schane``      ``L = (1 - lam) * CE(logits, y) + lam * L_SCHaNe(z, y)`` (Long et al., SCHaNe)
``supcon+ce``   ``L = (1 - lam) * CE(logits, y) + lam * L_SupCon(z, y)`` (Gunel et al., ICLR 2021)
==============  ===================================================================================

``CE`` is the mean over all ``B * V`` rows. ``L_SCHaNe`` is :class:`hscl.losses.SCHaNe`: for each row
``r``, positives ``P(r)`` are all other rows of its class (its other views included), negatives
``N(r)`` all rows of other classes, weighted by ``exp(beta * g)`` normalised to mean 1 over ``N(r)``::

    loss(r, p) = -log( e^{g(r,p)} / (e^{g(r,p)} + sum_{k in N(r)} w(r,k) e^{g(r,k)}) ),
    w(r, k)    = |N(r)| exp(beta g(r,k)) / sum_{k' in N(r)} exp(beta g(r,k')),   g = z_r . z_s / temperature

averaged over ``P(r)`` per anchor, then over anchors. ``L_SupCon`` is Khosla et al.'s ``L_out`` with
``base_temperature = temperature`` (no rescaling), the form Gunel et al. mix with CE for fine-tuning.
The contrastive term is computed on the projection ``z`` (``embedding="projection"``, default) or on
the encoder features ``h`` themselves (``embedding="features"``); both are L2-normalised inside the loss.
``lam = 0`` skips the contrastive term: the objective is then exactly cross-entropy.

Few-shot, as in SCHaNe's few-shot experiments: N-way K-shot episodes on classes held out from
pre-training. Each episode draws ``ways`` classes, ``shots`` training images of each (support) and
``queries`` test images of each (query set), fine-tunes a copy of the pre-trained model with a fresh
linear head on the support set for ``steps`` full-batch steps, and scores the queries. Every
objective sees the same episodes, the same initial weights and the same augmentation draws, so their
accuracies are paired.

The linear head starts at zero (weights and bias): every objective starts from the same point, with
``CE = log(C)``. Reference: Long et al., "When hard negative sampling meets supervised contrastive
learning", arXiv 2308.14893 (SCHaNe); Khosla et al., NeurIPS 2020; Gunel et al., ICLR 2021.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.data.augment import Augment, AugmentConfig, EvalTransform, augment_preset, preset_for
from hscl.data.images import ImageData
from hscl.data.views import epoch_generator
from hscl.engine.config import RunConfig, config_from_dict, config_to_dict
from hscl.losses import get_loss
from hscl.models import ENCODERS, NORMALIZATIONS, ContrastiveModel, build_model

__all__ = [
    "BN_MODES",
    "EMBEDDINGS",
    "OBJECTIVES",
    "FewShotConfig",
    "FineTuneModel",
    "FinetuneConfig",
    "FinetuneObjective",
    "FinetuneResult",
    "Pretrained",
    "SchaneExperiment",
    "accuracy",
    "embedding_isotropy",
    "few_shot",
    "finetune",
    "load_pretrained",
    "mean_ci95",
    "paired_ci95",
    "reproduce_schane",
    "run_episode",
    "sample_episode",
    "select_classes",
]

OBJECTIVES = ("ce", "schane", "supcon+ce")
EMBEDDINGS = ("projection", "features")
#: "train": batch norm uses batch statistics and updates its running averages while fine-tuning;
#: "frozen": batch norm keeps the pre-trained running statistics (its affine weights still train)
BN_MODES = ("train", "frozen")
OBJECTIVE_LABELS = {"ce": "CE", "schane": "SCHaNe", "supcon+ce": "SupCon+CE"}


# --------------------------------------------------------------------------------------------
# configuration


def _check_real(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run (full data) and of the per-episode fine-tuning.

    Attributes:
        objective: ``"ce"``, ``"schane"`` or ``"supcon+ce"``.
        lam: weight of the contrastive term, ``(1 - lam) CE + lam L``; SCHaNe recommends 0.9. Ignored by ``ce``.
        beta: exponential tilting of the negatives (SCHaNe's hardness), ``>= 0``.
        temperature: gamma in ``g = z_r . z_s / gamma``.
        embedding: the contrastive term on the projection ``z`` (``"projection"``) or on ``h`` (``"features"``).
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
    embedding: str = "projection"
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
        self.objective = _check_choice("objective", self.objective, OBJECTIVES)
        self.lam = _check_real("lam", self.lam, 0.0, 1.0)
        self.beta = _check_real("beta", self.beta, 0.0, math.inf)
        self.temperature = _check_real("temperature", self.temperature, 0.0, math.inf, low_open=True)
        self.embedding = _check_choice("embedding", self.embedding, EMBEDDINGS)
        self.epochs = _check_int("epochs", self.epochs, 1)
        self.batch_size = _check_int("batch_size", self.batch_size, 2)
        self.views = _check_int("views", self.views, 1)
        self.lr = _check_real("lr", self.lr, 0.0, math.inf, low_open=True)
        self.weight_decay = _check_real("weight_decay", self.weight_decay, 0.0, math.inf)
        if self.head_lr is not None:
            self.head_lr = _check_real("head_lr", self.head_lr, 0.0, math.inf, low_open=True)
        self.bn = _check_choice("bn", self.bn, BN_MODES)
        self.seed = _check_int("seed", self.seed, 0)


@dataclass
class FewShotConfig:
    """N-way K-shot episodes.

    Attributes:
        ways: classes per episode ``N`` (drawn from the held-out classes).
        shots: support images per class ``K``; one set of episodes per value.
        queries: query images per class (from the test split).
        episodes: episodes per ``K``.
        steps: full-batch fine-tuning steps on the support set of an episode.
        lr, bn: the per-episode optimiser learning rate and batch-norm mode (see :class:`FinetuneConfig`).
        seed: the episodes follow from ``(seed, K, episode)``.
    """

    ways: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    queries: int = 15
    episodes: int = 100
    steps: int = 30
    lr: float = 1e-3
    bn: str = "frozen"
    seed: int = 0

    def __post_init__(self) -> None:
        self.ways = _check_int("ways", self.ways, 2)
        if not self.shots:
            raise ValueError("shots must list at least one K >= 1")
        self.shots = [_check_int("shots", k, 1) for k in self.shots]
        self.queries = _check_int("queries", self.queries, 1)
        self.episodes = _check_int("episodes", self.episodes, 1)
        self.steps = _check_int("steps", self.steps, 1)
        self.lr = _check_real("lr", self.lr, 0.0, math.inf, low_open=True)
        self.bn = _check_choice("bn", self.bn, BN_MODES)
        self.seed = _check_int("seed", self.seed, 0)


# --------------------------------------------------------------------------------------------
# model and objective


class FineTuneModel(nn.Module):
    """A pre-trained contrastive model with a linear classifier on its encoder features.

    ``forward(x)`` returns ``(logits, h, z)``: ``(B, num_classes)``, the encoder features ``(B, F)``
    and the embedding of the contrastive term, ``(B, d)`` (the normalised projection, or ``h``).
    The classifier starts at zero.
    """

    def __init__(self, model: ContrastiveModel, num_classes: int, embedding: str = "projection") -> None:
        super().__init__()
        self.model = model
        self.embedding = _check_choice("embedding", embedding, EMBEDDINGS)
        self.classifier = nn.Linear(model.feature_dim, _check_int("num_classes", num_classes, 2))
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.model.encoder(x)  # (B, F)
        logits = self.classifier(h)  # (B, C)
        if self.embedding == "features":
            return logits, h, h
        return logits, h, self.model.normalization(self.model.head(h))  # z: (B, d)


class FinetuneObjective(nn.Module):
    """``(1 - lam) * CE + lam * L`` with ``L`` the SCHaNe or SupCon term; plain CE for ``"ce"``.

    ``forward(logits, z, labels)`` returns ``(loss, parts)`` with ``parts = {"ce": ..., "contrastive": ...}``
    (detached; ``contrastive`` is None when not computed).

    Shape:
        logits: ``(B, V, C)``, row ``[i, v]`` is view ``v`` of sample ``i``; z: ``(B, V, d)``; labels: ``(B,)``.
    """

    def __init__(
        self, objective: str = "schane", *, lam: float = 0.9, beta: float = 1.0, temperature: float = 0.5
    ) -> None:
        super().__init__()
        self.objective = _check_choice("objective", objective, OBJECTIVES)
        self.lam = _check_real("lam", lam, 0.0, 1.0)
        self.contrastive: nn.Module | None = None
        if objective == "schane":
            self.contrastive = get_loss("schane", beta=beta, temperature=temperature)
        elif objective == "supcon+ce":
            self.contrastive = get_loss("supcon", temperature=temperature, base_temperature=temperature)

    @classmethod
    def from_config(cls, config: FinetuneConfig) -> FinetuneObjective:
        return cls(config.objective, lam=config.lam, beta=config.beta, temperature=config.temperature)

    def forward(self, logits: Tensor, z: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        if logits.dim() != 3 or z.dim() != 3 or logits.shape[:2] != z.shape[:2]:
            raise ValueError(
                f"logits must have shape (B, V, C) and z (B, V, d) with the same B, V; got {tuple(logits.shape)} "
                f"and {tuple(z.shape)}"
            )
        B, V, C = logits.shape
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
        ce = F.cross_entropy(logits.reshape(B * V, C), labels.repeat_interleave(V))  # rows i * V + v
        if self.contrastive is None or self.lam == 0.0:
            return ce, {"ce": ce.detach(), "contrastive": None}
        con = self.contrastive(z, labels)
        return (1.0 - self.lam) * ce + self.lam * con, {"ce": ce.detach(), "contrastive": con.detach()}

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, lam={self.lam}"


def make_optimizer(model: FineTuneModel, config: FinetuneConfig) -> torch.optim.Adam:
    """Adam over the pre-trained model (``lr``) and the linear head (``head_lr``, default ``lr``)."""
    groups = [
        {"params": list(model.model.parameters()), "lr": config.lr},
        {"params": list(model.classifier.parameters()), "lr": config.head_lr or config.lr},
    ]
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def _set_train_mode(model: nn.Module, bn: str) -> None:
    model.train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_step(
    model: FineTuneModel,
    objective: FinetuneObjective,
    optimizer: torch.optim.Optimizer,
    augment: nn.Module,
    images: Tensor,
    labels: Tensor,
    views: int,
) -> tuple[float, dict]:
    """One optimiser step on ``images`` ``(B, C, H, W)`` uint8 with labels ``(B,)``, each in ``views`` views.

    The augmentation draws from the global RNG (seed it before the call for reproducibility).
    """
    B = images.shape[0]
    x = augment(images.repeat(views, 1, 1, 1))  # (V*B, C, S, S), view-major: row v * B + i
    logits, _, z = model(x)
    logits = logits.view(views, B, -1).transpose(0, 1)  # (B, V, C)
    z = z.view(views, B, -1).transpose(0, 1)  # (B, V, d)
    loss, parts = objective(logits, z, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), parts


@torch.no_grad()
def predict(model: FineTuneModel, images: Tensor, transform: nn.Module, batch_size: int = 1024) -> Tensor:
    """Logits of uint8 ``images`` ``(N, C, H, W)`` in eval mode. Shape: ``(N, num_classes)``."""
    was_training = model.training
    model.eval()
    out = [model(transform(images[s : s + batch_size]))[0] for s in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def embed(model: FineTuneModel, images: Tensor, transform: nn.Module, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Encoder features ``h`` ``(N, F)`` and normalised projection ``z`` ``(N, d)`` in eval mode."""
    was_training = model.training
    model.eval()
    hs, zs = [], []
    for s in range(0, images.shape[0], batch_size):
        h = model.model.encoder(transform(images[s : s + batch_size]))
        hs.append(h)
        zs.append(model.model.normalization(model.model.head(h)))
    model.train(was_training)
    return torch.cat(hs), torch.cat(zs)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in %. Shape: logits ``(N, C)``, labels ``(N,)``."""
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


# --------------------------------------------------------------------------------------------
# loading a pre-trained model


@dataclass
class Pretrained:
    """A pre-trained model and where it came from.

    Attributes:
        model: the :class:`ContrastiveModel` (eval mode).
        source: ``"hscl-checkpoint"`` (a checkpoint ``hscl train`` wrote) or ``"state_dict"``.
        config: the run config of an hscl checkpoint (None for a state_dict).
        architecture: the ``build_model`` arguments used.
        head_loaded: False when the file held only encoder weights (the projection head is then new).
    """

    model: ContrastiveModel
    source: str
    config: RunConfig | None
    architecture: dict
    head_loaded: bool = True

    def augment_config(self, channels: int, size: int, preset: str | None = None) -> AugmentConfig:
        """The fine-tuning augmentation: ``preset`` if given, else the pre-training run's, else by image type."""
        if preset is not None:
            return augment_preset(preset).with_overrides(None, size=size)
        if self.config is not None:
            from hscl.engine.train import augment_config

            return augment_config(self.config, channels, size)
        return preset_for(channels, size)


def _tensor_mapping(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _plain_state(obj: object, path: Path) -> dict[str, Tensor]:
    """The model weights inside a loaded file: a state_dict, ``{"state_dict": ...}``, with any ``model.`` /
    ``module.`` prefix removed (a classifier fine-tuned by hscl is dropped)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and _tensor_mapping(obj["state_dict"]):
        obj = obj["state_dict"]
    if not _tensor_mapping(obj):
        raise ValueError(
            f"{path}: not an hscl checkpoint and not a state_dict (a mapping of parameter names to tensors)"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "model."):
        if any(k.startswith(prefix + "encoder.") for k in state) or all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _infer_architecture(encoder_state: Mapping[str, Tensor], path: Path) -> dict:
    """``build_model`` arguments read off the tensor shapes of an hscl encoder's state_dict."""
    if "features.0.weight" in encoder_state:
        widths, i = [], 0
        while f"features.{3 * i}.weight" in encoder_state:
            widths.append(int(encoder_state[f"features.{3 * i}.weight"].shape[0]))
            i += 1
        first = encoder_state["features.0.weight"]
        return {"encoder": "convnet", "in_channels": int(first.shape[1]), "widths": widths}
    if "stem.0.weight" in encoder_state:
        first = encoder_state["stem.0.weight"]
        name = "resnet50" if "layer1.0.conv3.weight" in encoder_state else "resnet18"
        stem = "cifar" if first.shape[-1] == 3 else "imagenet"
        return {"encoder": name, "in_channels": int(first.shape[1]), "stem": stem}
    raise ValueError(
        f"{path}: cannot tell the encoder from its parameter names (no features.0.weight / stem.0.weight): not "
        f"the state_dict of an hscl model (hscl.models.build_model with one of {', '.join(ENCODERS)})"
    )


def load_pretrained(
    path: str | Path,
    *,
    encoder: str | None = None,
    in_channels: int | None = None,
    widths: Sequence[int] | None = None,
    stem: str | None = None,
    projection_dim: int | None = None,
    hidden_dim: int | None = None,
    normalization: str | None = None,
    data_dir: str | None = None,
) -> Pretrained:
    """A pre-trained model from any checkpoint ``hscl train`` wrote, or from a plain ``state_dict`` file.

    A state_dict may be that of a :class:`ContrastiveModel` (``encoder.*`` and ``head.*``), of a
    ``ContrastiveTask`` (``model.*``), of a model fine-tuned by hscl (the classifier is dropped), or of an
    encoder alone (the projection head is then freshly initialised). The architecture (encoder, input
    channels, convnet widths, ResNet stem, head sizes) is read off the tensor shapes; the keyword arguments
    override it (and must agree with the weights). ``normalization`` (no weights) defaults to ``"sphere"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a Lightning checkpoint holds more than tensors (hyper-parameters)
        obj = None
    if obj is None or (isinstance(obj, Mapping) and "hyper_parameters" in obj and "state_dict" in obj):
        from hscl.engine.train import load_task

        try:
            task, config = load_task(path, data_dir=data_dir)
        except Exception as err:
            if obj is None:
                raise ValueError(f"{path}: neither an hscl checkpoint nor a state_dict ({err})") from err
        else:
            mc = config.model
            arch = {"encoder": mc.encoder, "in_channels": task.hparams["in_channels"], "widths": mc.widths}
            arch.update({"stem": mc.stem, "projection_dim": mc.projection_dim, "hidden_dim": mc.hidden_dim})
            arch["normalization"] = mc.normalization
            model = task.model.to(memory_format=torch.contiguous_format).eval()
            return Pretrained(model, "hscl-checkpoint", config, arch)
    state = _plain_state(obj, path)
    has_head = any(k.startswith("head.") for k in state)
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:  # an encoder's own state_dict
        encoder_state, state = state, {f"encoder.{k}": v for k, v in state.items()}
    try:
        arch = _infer_architecture(encoder_state, path)
    except ValueError:
        if encoder is None or in_channels is None:
            raise
        arch = {"encoder": encoder, "in_channels": in_channels}  # loading below says what does not fit
    if has_head and "head.net.0.weight" in state and "head.net.3.weight" in state:
        arch["hidden_dim"] = int(state["head.net.0.weight"].shape[0])
        arch["projection_dim"] = int(state["head.net.3.weight"].shape[0])
    for key, value in (
        ("encoder", encoder),
        ("in_channels", in_channels),
        ("widths", list(widths) if widths is not None else None),
        ("stem", stem),
        ("projection_dim", projection_dim),
        ("hidden_dim", hidden_dim),
    ):
        if value is not None:
            arch[key] = value
    arch["normalization"] = normalization or "sphere"
    if arch["normalization"] not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {arch['normalization']!r}")
    encoder_kw = {k: arch[k] for k in ("widths", "stem") if arch.get(k) is not None}
    if arch["encoder"] == "convnet":
        encoder_kw.pop("stem", None)
    else:
        encoder_kw.pop("widths", None)
    model = build_model(
        arch["encoder"],
        arch["in_channels"],
        projection_dim=arch.get("projection_dim", 128),
        hidden_dim=arch.get("hidden_dim", 512),
        normalization=arch["normalization"],
        **encoder_kw,
    )
    try:
        if has_head:
            model.load_state_dict(state, strict=True)
        else:
            model.encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit {arch}: {str(err).splitlines()[0]}") from err
    return Pretrained(model.eval(), "state_dict", None, arch, head_loaded=has_head)


# --------------------------------------------------------------------------------------------
# data


def select_classes(data: ImageData, classes: Sequence[int]) -> ImageData:
    """The images of ``classes`` only, relabelled ``0 .. len(classes) - 1`` in the given order."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be distinct class ids, got {classes}")
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad:
        raise ValueError(f"classes {bad} are not classes of {data.name} (0 .. {data.num_classes - 1})")
    lookup = torch.full((data.num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))

    def take(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        keep = lookup[labels] >= 0
        return images[keep], lookup[labels[keep]]

    train_images, train_labels = take(data.train_images, data.train_labels)
    test_images, test_labels = take(data.test_images, data.test_labels)
    return ImageData(
        f"{data.name}[{','.join(map(str, classes))}]",
        train_images,
        train_labels,
        test_images,
        test_labels,
        [data.classes[c] for c in classes],
    )


# --------------------------------------------------------------------------------------------
# full fine-tuning


@dataclass
class FinetuneResult:
    """Test accuracy and curve of one fine-tuning run; ``model`` is the fine-tuned model."""

    test_top1: float
    history: list[dict]
    train_seconds: float
    model: FineTuneModel | None = None
    test_correct: Tensor | None = None  # (N_test,) bool: per-image correctness

    def as_dict(self) -> dict:
        return {"test_top1": self.test_top1, "history": self.history, "train_seconds": self.train_seconds}


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def finetune(
    pretrained: ContrastiveModel,
    data: ImageData,
    config: FinetuneConfig,
    *,
    augment: AugmentConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune a copy of ``pretrained`` with a linear head on ``data``'s training split; score its test split.

    Each epoch visits the training images in an order drawn from ``(seed, epoch)`` (the last incomplete
    batch is dropped); the augmentation's draws follow from ``(seed, epoch, step)``. With ``out_dir``, the
    state is saved atomically after every epoch to ``out_dir/finetune_last.pt``; ``resume=True`` continues
    from it and reaches the same weights as an uninterrupted run, ``resume=False`` refuses to overwrite it.
    """
    from tqdm.auto import tqdm

    augment = augment or preset_for(data.channels, data.size)
    if config.augment is not None:
        augment = augment_preset(config.augment).with_overrides(None, size=data.size)
    state_file = Path(out_dir) / "finetune_last.pt" if out_dir is not None else None
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        if state_file.exists() and not resume:
            raise FileExistsError(
                f"{state_file.parent} already holds a fine-tuning run (finetune_last.pt); pass --resume to continue "
                "it or choose another --out directory"
            )
    torch.manual_seed(config.seed)
    model = FineTuneModel(copy.deepcopy(pretrained), data.num_classes, config.embedding)
    objective = FinetuneObjective.from_config(config)
    train_aug, eval_tf = Augment(augment), EvalTransform(augment)
    n = int(data.train_labels.numel())
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    history: list[dict] = []
    start_epoch, seconds = 0, 0.0
    resolved = dataclasses.asdict(config)
    if state_file is not None and resume and state_file.exists():
        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        if saved["config"] != resolved:
            raise ValueError(
                f"{state_file}: was written with another fine-tuning config {saved['config']}; this run uses "
                f"{resolved}; choose another --out directory"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, history, seconds = saved["epoch"], saved["history"], saved["seconds"]
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        _set_train_mode(model, config.bn)
        order = torch.randperm(n, generator=epoch_generator(config.seed, epoch))
        losses, ces, cons = [], [], []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"fine-tune {config.objective} epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            index = order[step * batch : (step + 1) * batch]
            torch.manual_seed(int(epoch_generator(config.seed, epoch, 1 + step).initial_seed()))
            loss, parts = train_step(
                model, objective, optimizer, train_aug, data.train_images[index], data.train_labels[index], config.views
            )
            scheduler.step()
            losses.append(loss)
            ces.append(float(parts["ce"]))
            if parts["contrastive"] is not None:
                cons.append(float(parts["contrastive"]))
            bar.set_postfix(loss=f"{loss:.3f}")
        seconds += time.perf_counter() - began
        logits = predict(model, data.test_images, eval_tf)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": sum(losses) / len(losses),
                "ce": sum(ces) / len(ces),
                "contrastive": sum(cons) / len(cons) if cons else None,
                "test_top1": accuracy(logits, data.test_labels),
                "seconds": seconds,
            }
        )
        if state_file is not None:
            _atomic_save(
                {
                    "config": resolved,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "seconds": seconds,
                },
                state_file,
            )
    logits = predict(model, data.test_images, eval_tf)
    correct = logits.argmax(1) == data.test_labels
    return FinetuneResult(accuracy(logits, data.test_labels), history, seconds, model.eval(), correct)


# --------------------------------------------------------------------------------------------
# few-shot episodes


@dataclass
class Episode:
    """One N-way K-shot episode: indices into a split and labels ``0 .. ways - 1``."""

    classes: list[int]  # the original class of each episode label
    support_index: Tensor  # (ways * shots,) into the training split
    support_labels: Tensor  # (ways * shots,)
    query_index: Tensor  # (ways * queries,) into the test split
    query_labels: Tensor  # (ways * queries,)


def sample_episode(
    train_labels: Tensor,
    test_labels: Tensor,
    classes: Sequence[int],
    *,
    ways: int,
    shots: int,
    queries: int,
    generator: torch.Generator,
) -> Episode:
    """Draw ``ways`` of ``classes``, ``shots`` training and ``queries`` test images of each, without replacement."""
    classes = [int(c) for c in classes]
    if ways > len(classes):
        raise ValueError(f"ways={ways} exceeds the {len(classes)} held-out classes {classes}")
    chosen = [classes[int(i)] for i in torch.randperm(len(classes), generator=generator)[:ways]]
    sup, sup_y, qry, qry_y = [], [], [], []
    for label, cls in enumerate(chosen):
        for pool, take, out, out_y, split in (
            (train_labels, shots, sup, sup_y, "training"),
            (test_labels, queries, qry, qry_y, "test"),
        ):
            members = torch.nonzero(pool == cls).flatten()
            if members.numel() < take:
                raise ValueError(f"class {cls} has {members.numel()} {split} images, fewer than the {take} needed")
            out.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
            out_y.append(torch.full((take,), label, dtype=torch.long))
    return Episode(chosen, torch.cat(sup), torch.cat(sup_y), torch.cat(qry), torch.cat(qry_y))


def run_episode(
    pretrained: ContrastiveModel,
    support_images: Tensor,
    support_labels: Tensor,
    query_images: Tensor,
    query_labels: Tensor,
    config: FinetuneConfig,
    *,
    steps: int,
    augment: AugmentConfig,
    seed: int,
) -> float:
    """Fine-tune a copy of ``pretrained`` on one support set for ``steps`` full-batch steps; query accuracy (%).

    Shapes: support ``(ways * K, C, H, W)`` uint8 and ``(ways * K,)``; queries likewise. The augmentation
    draws and everything else random follow from ``seed`` alone.
    """
    ways = int(support_labels.max()) + 1
    model = FineTuneModel(copy.deepcopy(pretrained), ways, config.embedding)
    objective = FinetuneObjective.from_config(config)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    train_aug = Augment(augment)
    _set_train_mode(model, config.bn)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # 1-shot with one view: no positives, the contrastive term is 0
        warnings.filterwarnings("ignore", message=".*no valid.*|.*no anchor.*")
        for _ in range(steps):
            train_step(model, objective, optimizer, train_aug, support_images, support_labels, config.views)
            scheduler.step()
    return accuracy(predict(model, query_images, EvalTransform(augment)), query_labels)


def _episode_seed(seed: int, shots: int, episode: int) -> int:
    return int(epoch_generator(seed, shots, 1 + episode).initial_seed())


def few_shot(
    pretrained: ContrastiveModel,
    data: ImageData,
    classes: Sequence[int],
    configs: Mapping[str, FinetuneConfig],
    fewshot: FewShotConfig,
    *,
    augment: AugmentConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[int, list[dict]]:
    """Paired few-shot evaluation: for each K in ``fewshot.shots``, ``fewshot.episodes`` episodes, each run
    with every config of ``configs`` (name -> config) on the same support / query sets and seeds.

    Returns ``{K: [{"episode": e, "classes": [...], "accuracy": {name: %}}, ...]}``. With ``out_dir``, each
    finished episode is appended to ``out_dir/<K>shot.jsonl``; ``resume=True`` skips the episodes found
    there, ``resume=False`` refuses to overwrite them.
    """
    from tqdm.auto import tqdm

    augment = augment or preset_for(data.channels, data.size)
    # what an episode's result depends on besides (K, episode): rows of another setting are never mixed in
    setting = {
        "objectives": {name: dataclasses.asdict(c) for name, c in configs.items()},
        "fewshot": {k: v for k, v in dataclasses.asdict(fewshot).items() if k not in ("shots", "episodes")},
        "classes": [int(c) for c in classes],
        "data": data.name,
    }
    setting = json.loads(json.dumps(setting))
    if out_dir is not None:
        out_dir = Path(out_dir)
        setting_file = out_dir / "setting.json"
        if setting_file.exists():
            if not resume:
                raise FileExistsError(
                    f"{out_dir} holds few-shot episodes of an earlier run; pass --resume to continue it or choose "
                    "another --out directory"
                )
            if json.loads(setting_file.read_text()) != setting:
                raise ValueError(
                    f"{out_dir} holds episodes of another setting ({setting_file}); this run is {setting}; choose "
                    "another output directory"
                )
        out_dir.mkdir(parents=True, exist_ok=True)
        setting_file.write_text(json.dumps(setting, indent=2))
    results: dict[int, list[dict]] = {}
    for shots in fewshot.shots:
        log_file = out_dir / f"{shots}shot.jsonl" if out_dir is not None else None
        done: dict[int, dict] = {}
        if log_file is not None and log_file.exists():
            for line in log_file.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the line being written when a run was killed
                    continue
                done[row["episode"]] = row
            log_file.write_text("".join(json.dumps(row) + "\n" for row in done.values()))
        bar = tqdm(range(fewshot.episodes), desc=f"{fewshot.ways}-way {shots}-shot episodes", disable=not progress)
        for e in bar:
            if e in done:
                continue
            seed = _episode_seed(fewshot.seed, shots, e)
            episode = sample_episode(
                data.train_labels,
                data.test_labels,
                classes,
                ways=fewshot.ways,
                shots=shots,
                queries=fewshot.queries,
                generator=torch.Generator().manual_seed(seed),
            )
            sup_x, qry_x = data.train_images[episode.support_index], data.test_images[episode.query_index]
            row = {"episode": e, "classes": episode.classes, "accuracy": {}}
            for name, config in configs.items():
                row["accuracy"][name] = run_episode(
                    pretrained,
                    sup_x,
                    episode.support_labels,
                    qry_x,
                    episode.query_labels,
                    config,
                    steps=fewshot.steps,
                    augment=augment,
                    seed=seed,
                )
            done[e] = row
            if log_file is not None:
                with log_file.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            bar.set_postfix({n: f"{sum(r['accuracy'][n] for r in done.values()) / len(done):.1f}" for n in configs})
        results[shots] = [done[e] for e in range(fewshot.episodes)]
    return results


# --------------------------------------------------------------------------------------------
# statistics


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, ``n - 1`` degrees of freedom).

    The half-width is NaN for fewer than two values.
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    from scipy import stats

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def paired_ci95(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired samples and the half-width of its 95% CI (see :func:`mean_ci95`)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    return mean_ci95([x - y for x, y in zip(a, b)])


# --------------------------------------------------------------------------------------------
# embedding quality


def embedding_isotropy(x: Tensor) -> float:
    """:func:`hscl.geometry.isotropy` of the L2-normalised rows of ``x`` ``(N, d)`` (the cosine geometry the
    contrastive term sees; encoder features have arbitrary norms)."""
    from hscl.geometry import isotropy

    return float(isotropy(F.normalize(x.double(), dim=1)))


def tsne_figure(
    path: str | Path,
    embeddings: Mapping[str, Tensor],
    labels: Tensor,
    class_names: Sequence[str],
    seed: int = 0,
    title: str | None = None,
) -> None:
    """Side-by-side t-SNE maps (scikit-learn) of ``{name: (N, d) embeddings}``, coloured by class; PNG + CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from hscl.engine.report import write_table

    fig, axes = plt.subplots(1, len(embeddings), figsize=(5.2 * len(embeddings), 4.8), dpi=120, squeeze=False)
    rows = []
    cmap = plt.get_cmap("tab10")
    for ax, (name, x) in zip(axes[0], embeddings.items()):
        x = F.normalize(x.double(), dim=1).numpy()
        points = TSNE(n_components=2, init="pca", perplexity=30.0, random_state=seed).fit_transform(x)
        for c, cname in enumerate(class_names):
            mask = (labels == c).numpy()
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(c % 10), label=cname)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        rows += [[name, float(p[0]), float(p[1]), int(y)] for p, y in zip(points, labels.tolist())]
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    write_table(Path(path).with_suffix(".csv"), ["model", "tsne_x", "tsne_y", "label"], rows)


# --------------------------------------------------------------------------------------------
# hscl reproduce schane


@dataclass
class FullConfig:
    """Full fine-tuning in ``hscl reproduce schane``: every class of the data set."""

    train_subset: int | None = 10000
    test_subset: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class SchaneExperiment:
    """``hscl reproduce schane``: one YAML (``configs/schane/<preset>.yaml``).

    Pre-train on ``pretrain_classes`` (a :class:`RunConfig`, cached in ``<out>/pretrain``), then compare
    ``objectives`` by full fine-tuning on every class and by few-shot episodes on ``heldout_classes``.
    """

    name: str = "schane"
    pretrain_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    heldout_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    pretrain_train_subset: int | None = None  # stratified, of the pre-training classes' images
    objectives: list[str] = field(default_factory=lambda: ["ce", "schane"])
    pretrain: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    full: FullConfig = field(default_factory=FullConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    embedding_points: int = 1000
    #: torch threads for the whole experiment (None: torch's default); overrides pretrain.train.threads
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None:
            self.threads = _check_int("threads", self.threads, 1)
            self.pretrain.train.threads = self.threads
        if not self.objectives:
            raise ValueError("objectives must list at least one of " + ", ".join(OBJECTIVES))
        for objective in self.objectives:
            _check_choice("objectives", objective, OBJECTIVES)
        overlap = sorted(set(self.pretrain_classes) & set(self.heldout_classes))
        if overlap:
            raise ValueError(f"heldout_classes must be disjoint from pretrain_classes; both hold {overlap}")

    def objective_config(self, objective: str, **changes) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, objective=objective, **changes)


def find_experiment(preset: str, extra: str | Path | None = None) -> Path:
    from hscl.experiments.presets import find_preset

    return find_preset("schane", preset, extra)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> SchaneExperiment:
    """Read a ``SchaneExperiment`` YAML and apply ``section.key=value`` overrides (e.g. ``fewshot.episodes=20``)."""
    import yaml

    from hscl.engine.config import apply_overrides, validate_config

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level")
    experiment = config_from_dict(apply_overrides(data, list(overrides)), SchaneExperiment, "schane")
    validate_config(experiment.pretrain)
    return experiment


def _binomial_ci(correct: Tensor) -> tuple[float, float]:
    """Accuracy (%) and its 95% CI half-width over test images (normal approximation)."""
    n = correct.numel()
    p = float(correct.float().mean())
    return 100.0 * p, 100.0 * 1.959964 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _pretrain(experiment: SchaneExperiment, data: ImageData, out_dir: Path) -> Path:
    from hscl.engine.train import run_paths, train

    paths = run_paths(out_dir)
    if paths.final.exists():
        print(f"== pre-training: cached {paths.final}", flush=True)
        return paths.final
    pre = select_classes(data, experiment.pretrain_classes)
    if experiment.pretrain_train_subset is not None:
        pre = pre.subset(experiment.pretrain_train_subset, None, seed=experiment.pretrain.train.seed)
    print(f"== pre-training {experiment.pretrain.loss.method} on {pre} -> {out_dir}", flush=True)
    return train(experiment.pretrain, out_dir, resume=True, data=pre)


def reproduce_schane(
    out_dir: str | Path,
    *,
    preset: str = "quick",
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    data_dir: str | None = None,
    config_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """CE vs SCHaNe (and any other ``objectives``): full fine-tuning and few-shot, table + figures + data.

    Resumable: the pre-training, every (objective, seed) fine-tuning run and every few-shot episode are
    stored in ``out_dir`` when finished and skipped on a rerun.
    """
    from hscl.data.images import load_dataset
    from hscl.engine.report import markdown_table, write_json, write_table

    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = list(overrides)
    if data_dir is not None:
        extra.append(f"pretrain.data.data_dir={data_dir}")
    experiment = load_experiment(find_experiment(preset, config_dir), extra)
    if seeds:
        experiment.full.seeds = [int(s) for s in seeds]
    (out_dir / "experiment.json").write_text(json.dumps(config_to_dict(experiment), indent=2))
    if experiment.threads is not None:
        torch.set_num_threads(experiment.threads)
    dc = experiment.pretrain.data
    data = load_dataset(dc.dataset, data_dir=dc.data_dir)

    stage_seconds: dict[str, float] = {}  # wall clock of each stage in this invocation (cached stages: ~0)
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stage_seconds[stage] = now - mark
        mark = now

    # 1. pre-training on the pre-training classes (cached)
    final = _pretrain(experiment, data, out_dir / "pretrain")
    lap("pretrain")
    pretrained = load_pretrained(final)
    augment = pretrained.augment_config(data.channels, data.size, experiment.finetune.augment)

    # 2. full fine-tuning on every class
    full_data = data
    if experiment.full.train_subset is not None or experiment.full.test_subset is not None:
        full_data = data.subset(experiment.full.train_subset, experiment.full.test_subset, seed=0)
    full: dict[str, list[dict]] = {}
    correct: dict[str, list[Tensor]] = {}
    for objective in experiment.objectives:
        full[objective], correct[objective] = [], []
        for seed in experiment.full.seeds:
            run_dir = out_dir / "full" / objective / f"seed{seed}"
            result_file = run_dir / "result.json"
            if result_file.exists() and (run_dir / "test_correct.pt").exists():
                full[objective].append(json.loads(result_file.read_text()))
                correct[objective].append(torch.load(run_dir / "test_correct.pt", weights_only=True))
                continue
            print(f"== full fine-tuning {objective} (seed {seed}) on {full_data} -> {run_dir}", flush=True)
            config = experiment.objective_config(objective, seed=seed)
            result = finetune(
                pretrained.model, full_data, config, augment=augment, out_dir=run_dir, resume=True, progress=progress
            )
            torch.save(result.model.state_dict(), run_dir / "model.pt")
            torch.save(result.test_correct, run_dir / "test_correct.pt")
            record = {**result.as_dict(), "seed": seed, "objective": objective}
            result_file.write_text(json.dumps(record, indent=2))
            full[objective].append(record)
            correct[objective].append(result.test_correct)
    lap("full")

    # 3. few-shot episodes on the held-out classes
    fs = experiment.fewshot
    configs = {o: experiment.objective_config(o, lr=fs.lr, bn=fs.bn) for o in experiment.objectives}
    print(
        f"== few-shot: {fs.ways}-way K-shot, K in {fs.shots}, {fs.episodes} episodes each, held-out classes "
        f"{[data.classes[c] for c in experiment.heldout_classes]}",
        flush=True,
    )
    episodes = few_shot(
        pretrained.model,
        data,
        experiment.heldout_classes,
        configs,
        fs,
        augment=augment,
        out_dir=out_dir / "fewshot",
        resume=True,
        progress=progress,
    )
    lap("fewshot")

    # 4. embedding quality of the fine-tuned models (first seed): isotropy and t-SNE
    embedding = _embedding_quality(experiment, full_data, augment, out_dir)
    lap("embedding")

    # 5. tables and figures
    results = _summarise(experiment, data, full_data, full, correct, episodes, embedding)
    results["seconds"] = time.perf_counter() - began
    results["stage_seconds"] = stage_seconds
    header, rows, csv_rows = _table(results, experiment.objectives)
    table = markdown_table(header, rows)
    results["table_markdown"] = table
    write_json(out_dir / "results.json", results)
    write_table(
        out_dir / "schane.csv", ["setting", "objective", "top1_mean", "ci95", "diff_vs_ce", "diff_ci95"], csv_rows
    )
    title = (
        f"SCHaNe vs CE ({experiment.name}): {dc.dataset}; pre-trained with {experiment.pretrain.loss.method} on "
        f"classes {experiment.pretrain_classes}; accuracy in %, mean with 95% CI"
    )
    (out_dir / "schane.md").write_text(f"{title}\n\n{table}\n")
    _fewshot_figure(out_dir / "fewshot.png", results, experiment.objectives)
    print(f"\n{title}\n\n{table}\n")
    print(f"written: {out_dir}/results.json, schane.csv, schane.md, fewshot.png, fewshot.csv, tsne.png, tsne.csv")
    return results


def _embedding_quality(experiment: SchaneExperiment, data: ImageData, augment: AugmentConfig, out_dir: Path) -> dict:
    """Isotropy of the test-set features ``h`` and projections ``z`` of each fine-tuned model (first seed), and
    a t-SNE map of the features; cached in ``out_dir/embedding.json``."""
    from hscl.data.images import stratified_indices

    cache = out_dir / "embedding.json"
    if cache.exists() and (out_dir / "tsne.png").exists():
        return json.loads(cache.read_text())
    seed = experiment.full.seeds[0]
    n = min(experiment.embedding_points, int(data.test_labels.numel()))
    index = torch.from_numpy(stratified_indices(data.test_labels, n, (seed, 11)))
    images, labels = data.test_images[index], data.test_labels[index]
    pretrained = load_pretrained(out_dir / "pretrain" / "final.ckpt").model
    transform = EvalTransform(augment)
    features: dict[str, Tensor] = {}
    result: dict = {"points": n, "seed": seed, "isotropy_features": {}, "isotropy_projection": {}}
    for objective in experiment.objectives:
        model = FineTuneModel(copy.deepcopy(pretrained), data.num_classes, experiment.finetune.embedding)
        state = torch.load(out_dir / "full" / objective / f"seed{seed}" / "model.pt", weights_only=True)
        model.load_state_dict(state)
        h, z = embed(model, images, transform)
        result["isotropy_features"][objective] = embedding_isotropy(h)
        result["isotropy_projection"][objective] = embedding_isotropy(z)
        features[OBJECTIVE_LABELS[objective]] = h
    title = f"t-SNE of the encoder features h of {n} test images after full fine-tuning (seed {seed})"
    tsne_figure(out_dir / "tsne.png", features, labels, data.classes, seed=seed, title=title)
    cache.write_text(json.dumps(result, indent=2))
    return result


def _summarise(experiment, data, full_data, full, correct, episodes, embedding) -> dict:
    objectives = experiment.objectives
    base = "ce" if "ce" in objectives else None
    summary: dict = {
        "experiment": config_to_dict(experiment),
        "dataset": data.name,
        "full": {"classes": full_data.num_classes, "train_images": int(full_data.train_labels.numel())},
        "fewshot": {},
        "embedding": embedding,
    }
    full_summary = summary["full"]
    full_summary["test_images"] = int(full_data.test_labels.numel())
    for objective in objectives:
        pooled = torch.cat(correct[objective])
        top1, ci = _binomial_ci(pooled)
        per_seed = [r["test_top1"] for r in full[objective]]
        full_summary[objective] = {
            "top1_mean": top1,
            "ci95": ci,
            "per_seed": per_seed,
            "seed_mean_ci95": mean_ci95(per_seed),
            "train_seconds": [r["train_seconds"] for r in full[objective]],
            "history": [r["history"] for r in full[objective]],
        }
        if base is not None and objective != base:
            diff = (torch.cat(correct[objective]).double() - torch.cat(correct[base]).double()) * 100.0
            mean, half = mean_ci95(diff.tolist())
            full_summary[objective]["diff_vs_ce"], full_summary[objective]["diff_ci95"] = mean, half
    for shots, rows in episodes.items():
        entry: dict = {"episodes": len(rows), "ways": experiment.fewshot.ways}
        for objective in objectives:
            accs = [r["accuracy"][objective] for r in rows]
            mean, half = mean_ci95(accs)
            entry[objective] = {"top1_mean": mean, "ci95": half}
            if base is not None and objective != base:
                d_mean, d_half = paired_ci95(accs, [r["accuracy"][base] for r in rows])
                wins = sum(r["accuracy"][objective] > r["accuracy"][base] for r in rows)
                losses = sum(r["accuracy"][objective] < r["accuracy"][base] for r in rows)
                entry[objective].update({"diff_vs_ce": d_mean, "diff_ci95": d_half, "wins": wins, "losses": losses})
        summary["fewshot"][str(shots)] = entry
    return summary


def _fmt(mean: float, half: float | None, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if half is None or math.isnan(half) else f"{text} ± {half:.2f}"


def _table(results: dict, objectives: list[str]) -> tuple[list[str], list[list[str]], list[list]]:
    others = [o for o in objectives if o != "ce"] if "ce" in objectives else []
    header = ["setting", *[f"{OBJECTIVE_LABELS[o]} top-1 (%)" for o in objectives]]
    header += [f"{OBJECTIVE_LABELS[o]} − CE (points)" for o in others]
    rows, csv_rows = [], []
    full = results["full"]
    settings = [(f"full fine-tuning ({full['classes']} classes, {full['train_images']} images)", full)]
    ways = results["experiment"]["fewshot"]["ways"]
    settings += [(f"{ways}-way {k}-shot ({v['episodes']} episodes)", v) for k, v in results["fewshot"].items()]
    for name, entry in settings:
        row = [name] + [_fmt(entry[o]["top1_mean"], entry[o]["ci95"]) for o in objectives]
        row += [_fmt(entry[o]["diff_vs_ce"], entry[o]["diff_ci95"], signed=True) for o in others]
        rows.append(row)
        for o in objectives:
            csv_rows.append(
                [
                    name,
                    o,
                    entry[o]["top1_mean"],
                    entry[o]["ci95"],
                    entry[o].get("diff_vs_ce"),
                    entry[o].get("diff_ci95"),
                ]
            )
    emb = results["embedding"]
    for key, label in (("isotropy_features", "features h"), ("isotropy_projection", "projection z")):
        row = [f"isotropy of test {label} (↑)"] + [f"{emb[key][o]:.3f}" for o in objectives]
        row += [f"{emb[key][o] - emb[key]['ce']:+.3f}" for o in others]
        rows.append(row)
        for o in objectives:
            csv_rows.append([f"isotropy {label}", o, emb[key][o], None, None, None])
    return header, rows, csv_rows


def _fewshot_figure(path: Path, results: dict, objectives: list[str]) -> None:
    """Few-shot accuracy against K with 95% CI error bars, one line per objective (PNG + CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from hscl.engine.report import write_table

    shots = sorted(int(k) for k in results["fewshot"])
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    rows = []
    for i, objective in enumerate(objectives):
        means = [results["fewshot"][str(k)][objective]["top1_mean"] for k in shots]
        halves = [results["fewshot"][str(k)][objective]["ci95"] for k in shots]
        offset = (i - (len(objectives) - 1) / 2) * 0.08  # keep the error bars apart
        ax.errorbar(
            [k * (1 + offset) for k in shots],
            means,
            yerr=halves,
            marker="o",
            capsize=3,
            label=OBJECTIVE_LABELS[objective],
        )
        rows += [[objective, k, m, h] for k, m, h in zip(shots, means, halves)]
    ways = results["experiment"]["fewshot"]["ways"]
    ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([str(k) for k in shots])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("shots per class K")
    ax.set_ylabel("query accuracy (%)")
    ax.set_title(f"{ways}-way K-shot on held-out classes (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    write_table(Path(path).with_suffix(".csv"), ["objective", "shots", "top1_mean", "ci95"], rows)


# --------------------------------------------------------------------------------------------
# hscl finetune


def _int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from err


def run_cli(args) -> int:
    """``hscl finetune CHECKPOINT ...`` (see ``hscl finetune --help``): full fine-tuning, or ``--few-shot``."""
    from hscl.data.images import load_dataset

    pretrained = load_pretrained(
        args.checkpoint,
        encoder=args.encoder,
        in_channels=args.in_channels,
        widths=_int_list(args.widths, "--widths"),
        stem=args.stem,
        projection_dim=args.projection_dim,
        hidden_dim=args.hidden_dim,
        normalization=args.normalization,
        data_dir=args.data_dir,
    )
    run = pretrained.config
    dataset = args.dataset or (run.data.dataset if run is not None else "fashion-mnist")
    data_dir = args.data_dir or (run.data.data_dir if run is not None and dataset == run.data.dataset else None)
    data = load_dataset(dataset, data_dir=data_dir)
    if data.channels != pretrained.architecture["in_channels"]:
        raise ValueError(
            f"{dataset} has {data.channels}-channel images but the model takes {pretrained.architecture['in_channels']}"
            "; pass --dataset or --in-channels"
        )
    classes = _int_list(args.classes, "--classes")
    augment = pretrained.augment_config(data.channels, data.size, args.augment)
    config = FinetuneConfig(
        objective=args.objective,
        lam=args.lam,
        beta=args.beta,
        temperature=args.temperature,
        embedding=args.embedding,
        epochs=args.epochs,
        batch_size=args.batch_size,
        views=args.views,
        lr=args.lr,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        bn=args.bn or ("frozen" if args.few_shot else "train"),
        seed=args.seed,
    )
    out = Path(args.out or f"runs/finetune-{args.objective}{'-fewshot' if args.few_shot else ''}")
    head = "" if pretrained.head_loaded else " (encoder weights only: new projection head)"
    print(f"hscl finetune: {pretrained.source} {args.checkpoint}{head}: {pretrained.architecture}")
    record: dict = {
        "checkpoint": str(args.checkpoint),
        "source": pretrained.source,
        "architecture": pretrained.architecture,
        "config": dataclasses.asdict(config),
    }
    if args.few_shot:
        pool = classes if classes is not None else list(range(data.num_classes))
        fewshot = FewShotConfig(
            ways=args.ways,
            shots=_int_list(args.shots, "--shots"),
            queries=args.queries,
            episodes=args.episodes,
            steps=args.steps,
            lr=config.lr,
            bn=config.bn,
            seed=args.seed,
        )
        print(f"{fewshot.ways}-way K-shot episodes on {[data.classes[c] for c in pool]} of {data.name} -> {out}")
        episodes = few_shot(
            pretrained.model,
            data,
            pool,
            {config.objective: config},
            fewshot,
            augment=augment,
            out_dir=out,
            resume=args.resume,
            progress=not args.no_progress,
        )
        record["fewshot"] = dataclasses.asdict(fewshot)
        record["results"] = {}
        for shots, rows in episodes.items():
            mean, half = mean_ci95([r["accuracy"][config.objective] for r in rows])
            record["results"][str(shots)] = {"top1_mean": mean, "ci95": half, "episodes": len(rows)}
            print(
                f"{fewshot.ways}-way {shots}-shot {OBJECTIVE_LABELS[config.objective]}: {_fmt(mean, half)} % "
                f"(mean, 95% CI over {len(rows)} episodes)"
            )
    else:
        if classes is not None:
            data = select_classes(data, classes)
        if args.train_subset is not None or args.test_subset is not None:
            data = data.subset(args.train_subset, args.test_subset, seed=args.seed)
        print(f"fine-tuning {OBJECTIVE_LABELS[config.objective]} on {data} -> {out}")
        result = finetune(
            pretrained.model,
            data,
            config,
            augment=augment,
            out_dir=out,
            resume=args.resume,
            progress=not args.no_progress,
        )
        torch.save(result.model.state_dict(), out / "model.pt")
        top1, half = _binomial_ci(result.test_correct)
        record.update(result.as_dict())
        record["test_top1_ci95"] = half
        record["data"] = repr(data)
        print(
            f"{OBJECTIVE_LABELS[config.objective]}: test top-1 {_fmt(top1, half)} % (95% CI over "
            f"{result.test_correct.numel()} test images); weights: {out / 'model.pt'}"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    print(f"written: {out / 'result.json'}")
    return 0
