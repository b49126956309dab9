"""SCHaNe fine-tuning: a pre-trained encoder + a linear classifier, fine-tuned on a labelled data set.

A pre-trained :class:`~hscl.models.ContrastiveModel` (encoder ``h = f(x)``, projection head
``z = head(h)``) or a pre-trained :class:`~hscl.models.Backbone` (``h = f(x)``; :func:`hscl.models.build_backbone`:
EfficientNet-Lite0, a HuggingFace model, ...) gets a linear classifier on the features, ``logits = W h + b``, and
is fine-tuned end to end with one objective on a batch of ``B`` images x ``V`` augmented views:

==============  ===================================================================================
``ce``          ``L = CE(logits, y)``
``schane``      ``L = (1 - lam) * CE(logits, y) + lam * L_SCHaNe(z, y)`` (Long et al., SCHaNe)
``supcon+ce``   ``L = (1 - lam) * CE(logits, y) + lam * L_SupCon(z, y)`` (Gunel et al., ICLR 2021)
``<m>+ce``      ``L = (1 - lam) * CE(logits, y) + lam * L_m(z, y)`` for any other registered method ``m``
==============  ===================================================================================

``CE`` is the mean over all ``B * V`` rows. ``L_SCHaNe`` is :class:`hscl.losses.SCHaNe`: for each row
``r``, positives ``P(r)`` are all other rows of its class (its other views included), negatives
``N(r)`` all rows of other classes, weighted by ``exp(beta * g)`` normalised to mean 1 over ``N(r)``::

    loss(r, p) = -log( e^{g(r,p)} / (e^{g(r,p)} + sum_{k in N(r)} w(r,k) e^{g(r,k)}) ),
    w(r, k)    = |N(r)| exp(beta g(r,k)) / sum_{k' in N(r)} exp(beta g(r,k')),   g = z_r . z_s / temperature

averaged over ``P(r)`` per anchor, then over anchors. ``L_SupCon`` is Khosla et al.'s ``L_out`` with
``base_temperature = temperature`` (no rescaling), the form Gunel et al. mix with CE for fine-tuning.
The contrastive term is computed on the projection ``z`` (``embedding="projection"``, the default for a
ContrastiveModel; a Backbone gets a fresh head ``feature_dim -> 512 -> 128`` on the sphere) or on the features
``h`` themselves (``embedding="features"``, the default for a Backbone, as in SCHaNe); both are L2-normalised
inside the loss. A Backbone takes images in ``[0, 1]`` and resizes and normalises them itself: the augmentation's
own normalisation is replaced by the identity (mean 0, std 1) for it.
``lam = 0`` skips the contrastive term: the objective is then exactly cross-entropy.

The linear head starts at zero (weights and bias): every objective starts from the same point, with
``CE = log(C)``. Everything runs on ``device`` (``"auto"``: a CUDA GPU when there is one): the model and
the training images are moved there once (the images when they fit; else each batch is copied through pinned
memory). Few-shot episodes are in :mod:`hscl.engine.fewshot`, loading a pre-trained model in
:mod:`hscl.engine.pretrained`, the ``hscl reproduce schane`` experiment in :mod:`hscl.experiments.schane`.
Reference: Long et al., "When hard negative sampling meets supervised contrastive learning", arXiv
2308.14893 (SCHaNe); Khosla et al., NeurIPS 2020; Gunel et al., ICLR 2021.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.data.augment import Augment, AugmentConfig, EvalTransform, augment_preset, preset_for
from hscl.data.images import ImageData
from hscl.data.views import epoch_generator
from hscl.engine.distributed import place, resolve_device, to_device
from hscl.engine.finetune_config import (  # noqa: F401 (re-exported: callers import them from here)
    _OBJECTIVE_METHOD,
    BN_MODES,
    EMBEDDINGS,
    OBJECTIVE_LABELS,
    OBJECTIVES,
    FinetuneConfig,
    _check_choice,
    _check_int,
    _check_real,
    _objective,
    is_backbone,
    resolve_embedding,
)
from hscl.engine.pretrained import Pretrained, load_pretrained
from hscl.losses import METHODS, get_loss, loss_kwargs
from hscl.models import Backbone, ContrastiveModel, OutputNormalization, ProjectionHead

__all__ = [
    "BACKBONE_HEAD",
    "BN_MODES",
    "EMBEDDINGS",
    "OBJECTIVES",
    "FineTuneModel",
    "FinetuneConfig",
    "FinetuneObjective",
    "FinetuneResult",
    "Pretrained",
    "accuracy",
    "backbone_input",
    "embed",
    "finetune",
    "load_pretrained",
    "make_optimizer",
    "predict",
    "select_classes",
    "train_step",
]


# --------------------------------------------------------------------------------------------
# model and objective

#: the projection head a Backbone gets with ``embedding="projection"``: feature_dim -> 512 -> 128 (SimCLR's widths)
BACKBONE_HEAD = {"hidden_dim": 512, "out_dim": 128}


class FineTuneModel(nn.Module):
    """A pre-trained model with a linear classifier on its encoder features.

    ``model``: a :class:`ContrastiveModel`, or a :class:`Backbone`, which is wrapped in one: with
    ``embedding="projection"`` with a fresh ``ProjectionHead(feature_dim, 512, 128)`` on the sphere
    (:data:`BACKBONE_HEAD`, drawn from torch's global RNG), with ``"features"`` with no head. ``embedding`` None:
    see :func:`resolve_embedding`.

    ``forward(x)`` returns ``(logits, h, z)``: ``(B, num_classes)``, the encoder features ``(B, F)``
    and the embedding of the contrastive term, ``(B, d)`` (the normalised projection, or ``h``).
    The classifier starts at zero.
    """

    def __init__(self, model: ContrastiveModel | Backbone, num_classes: int, embedding: str | None = None) -> None:
        super().__init__()
        self.embedding = resolve_embedding(embedding, model)
        if isinstance(model, Backbone):
            if self.embedding == "projection":
                model = ContrastiveModel(model, ProjectionHead(model.feature_dim, **BACKBONE_HEAD), "sphere")
            else:
                model = ContrastiveModel(model, nn.Identity(), OutputNormalization("none"))
        self.model = model
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
        method = _OBJECTIVE_METHOD.get(self.objective)
        if method is not None:  # beta only where the method hardens; SupCon's base temperature = temperature
            options = {"temperature": temperature, "base_temperature": temperature}
            if METHODS[method].hardened:
                options["beta"] = beta
            self.contrastive = get_loss(method, **loss_kwargs(method, options))

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


def backbone_input(pretrained: nn.Module, augment: AugmentConfig) -> AugmentConfig:
    """``augment`` with the identity normalisation (mean 0, std 1) when ``pretrained`` is a Backbone, whose input
    is the unnormalised ``[0, 1]`` image (it normalises with its own statistics); else ``augment`` itself."""
    if not is_backbone(pretrained):
        return augment
    return augment.with_overrides(None, mean=(0.0,) * augment.channels, std=(1.0,) * augment.channels)


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

    Runs on the model's device (``images`` and ``labels`` are moved there; ``augment`` must be there). The
    augmentation draws from the global RNG (seed it before the call for reproducibility).
    """
    device = next(model.parameters()).device
    images, labels = to_device(images, device), to_device(labels, device)
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
    """Logits of uint8 ``images`` ``(N, C, H, W)`` in eval mode, on the model's device. Shape: ``(N, num_classes)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(transform(to_device(images[s : s + batch_size], device)))[0]
        for s in range(0, images.shape[0], batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def embed(model: FineTuneModel, images: Tensor, transform: nn.Module, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Encoder features ``h`` ``(N, F)`` and normalised projection ``z`` ``(N, d)`` in eval mode, on the model's
    device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hs, zs = [], []
    for s in range(0, images.shape[0], batch_size):
        h = model.model.encoder(transform(to_device(images[s : s + batch_size], device)))
        hs.append(h)
        zs.append(model.model.normalization(model.model.head(h)))
    model.train(was_training)
    return torch.cat(hs), torch.cat(zs)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in %. Shape: logits ``(N, C)``, labels ``(N,)`` (on any device)."""
    return 100.0 * float((logits.argmax(1) == labels.to(logits.device)).float().mean())


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
    pretrained: ContrastiveModel | Backbone,
    data: ImageData,
    config: FinetuneConfig,
    *,
    augment: AugmentConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = "auto",
) -> FinetuneResult:
    """Fine-tune a copy of ``pretrained`` with a linear head on ``data``'s training split; score its test split.

    Runs on ``device`` (``"auto"``: a CUDA GPU when there is one, else the CPU); the returned model is there.
    ``pretrained`` is a ContrastiveModel or a :class:`Backbone` (see :class:`FineTuneModel`; its augmentation
    output stays in ``[0, 1]``, :func:`backbone_input`); ``config.embedding`` None is resolved for it.

    Each epoch visits the training images in an order drawn from ``(seed, epoch)`` (the last incomplete
    batch is dropped); the augmentation's draws follow from ``(seed, epoch, step)``. With ``out_dir``, the
    state is saved atomically after every epoch to ``out_dir/finetune_last.pt``; ``resume=True`` continues
    from it and reaches the same weights as an uninterrupted run, ``resume=False`` refuses to overwrite it.
    """
    augment = augment or preset_for(data.channels, data.size)
    if config.augment is not None:
        augment = augment_preset(config.augment).with_overrides(None, size=data.size)
    augment, config = backbone_input(pretrained, augment), config.resolved(pretrained)
    state_file = _finetune_state_file(out_dir, resume)
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    model = FineTuneModel(copy.deepcopy(pretrained), data.num_classes, config.embedding).to(device)
    objective = FinetuneObjective.from_config(config)
    train_aug, eval_tf = Augment(augment).to(device), EvalTransform(augment).to(device)
    # the training images and labels on the GPU once when they fit; else batches go through pinned memory
    train_images, train_labels = place(data.train_images, device), place(data.train_labels, device)
    n = int(data.train_labels.numel())
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    history: list[dict] = []
    start_epoch, seconds = 0, 0.0
    resolved = dataclasses.asdict(config)
    if state_file is not None and resume and state_file.exists():
        start_epoch, history, seconds = _load_finetune_state(state_file, resolved, model, optimizer, scheduler)
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        losses, ces, cons = _finetune_epoch(
            model,
            objective,
            optimizer,
            scheduler,
            train_aug,
            (train_images, train_labels),
            config,
            epoch,
            batch,
            progress,
        )
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
    correct = (logits.argmax(1) == data.test_labels.to(logits.device)).cpu()
    return FinetuneResult(accuracy(logits, data.test_labels), history, seconds, model.eval(), correct)


def _finetune_state_file(out_dir: str | Path | None, resume: bool) -> Path | None:
    """``out_dir/finetune_last.pt`` (None without ``out_dir``); refuses to overwrite one unless resuming."""
    if out_dir is None:
        return None
    state_file = Path(out_dir) / "finetune_last.pt"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    if state_file.exists() and not resume:
        raise FileExistsError(
            f"{state_file.parent} already holds a fine-tuning run (finetune_last.pt); pass --resume to continue "
            "it or choose another --out directory"
        )
    return state_file


def _load_finetune_state(
    state_file: Path,
    resolved: dict,
    model: FineTuneModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict], float]:
    """Restore model, optimizer and scheduler from ``state_file``; returns ``(epoch, history, seconds)``."""
    from hscl.engine.checkpoints import load_checkpoint

    saved = load_checkpoint(state_file, expect="finetune")  # weights-only; a damaged file: one line
    if saved["config"] != resolved:
        raise ValueError(
            f"{state_file}: was written with another fine-tuning config {saved['config']}; this run uses "
            f"{resolved}; choose another --out directory"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return saved["epoch"], saved["history"], saved["seconds"]


def _finetune_epoch(
    model: FineTuneModel,
    objective: FinetuneObjective,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_aug: nn.Module,
    train: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    epoch: int,
    batch: int,
    progress: bool,
) -> tuple[list[float], list[float], list[float]]:
    """One epoch of ``batch``-image steps over ``train`` = (uint8 images, labels) in the order of ``(seed, epoch)``;
    the loss, CE and contrastive term of each step (the last only where computed)."""
    from tqdm.auto import tqdm

    train_images, train_labels = train
    n = int(train_labels.numel())
    _set_train_mode(model, config.bn)
    order = torch.randperm(n, generator=epoch_generator(config.seed, epoch))
    losses, ces, cons = [], [], []
    bar = tqdm(
        range(n // batch),
        desc=f"fine-tune {config.objective} epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        leave=False,
    )
    for step in bar:
        index = order[step * batch : (step + 1) * batch].to(train_images.device)
        torch.manual_seed(int(epoch_generator(config.seed, epoch, 1 + step).initial_seed()))
        loss, parts = train_step(
            model, objective, optimizer, train_aug, train_images[index], train_labels[index], config.views
        )
        scheduler.step()
        losses.append(loss)
        ces.append(float(parts["ce"]))
        if parts["contrastive"] is not None:
            cons.append(float(parts["contrastive"]))
        bar.set_postfix(loss=f"{loss:.3f}")
    return losses, ces, cons
