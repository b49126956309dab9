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
memory). Few-shot episodes are in :mod:`hscl.engine.finetune.fewshot`, loading a pre-trained model in
:mod:`hscl.engine.finetune.pretrained`, the ``hscl reproduce schane`` experiment in :mod:`hscl.experiments.schane`.
Reference: Long et al., "When hard negative sampling meets supervised contrastive learning", arXiv
2308.14893 (SCHaNe); Khosla et al., NeurIPS 2020; Gunel et al., ICLR 2021.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
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
from hscl.engine.finetune.config import (
    _OBJECTIVE_METHOD,
    OBJECTIVES,
    FinetuneConfig,
    is_backbone,
    resolve_embedding,
)
from hscl.engine.finetune.state import (
    _atomic_save,
    _finetune_state_file,
    _read_finetune_state,
    _restore_finetune_state,
)
from hscl.engine.runtime.distributed import place, resolve_device, to_device
from hscl.engine.runtime.precision import LoopPrecision, loop_flags, loop_precision
from hscl.losses import METHODS, get_loss, loss_kwargs
from hscl.models import Backbone, ContrastiveModel, OutputNormalization, ProjectionHead
from hscl.validation import check_choice, check_int, check_real

__all__ = [
    "BACKBONE_HEAD",
    "FineTuneModel",
    "FinetuneObjective",
    "FinetuneResult",
    "accuracy",
    "backbone_input",
    "embed",
    "finetune",
    "make_optimizer",
    "predict",
    "resolve_loop_precision",
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
        self.classifier = nn.Linear(model.feature_dim, check_int("num_classes", num_classes, 2))
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
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.lam = check_real("lam", lam, 0.0, 1.0)
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
    *,
    numerics: LoopPrecision | None = None,
    scaler=None,
) -> tuple[Tensor, dict]:
    """One optimiser step on ``images`` ``(B, C, H, W)`` uint8 with labels ``(B,)``, each in ``views`` views;
    returns the loss (detached, on the device: reading it is the caller's host synchronisation) and its parts.

    Runs on the model's device (``images`` and ``labels`` are moved there; ``augment`` must be there), in the
    precision of ``numerics`` (:class:`~hscl.engine.runtime.precision.LoopPrecision`: autocast and channels-last inputs;
    None: as the caller set up) with ``scaler`` (a gradient scaler, for fp16) when given. The augmentation draws
    from the global RNG (seed it before the call for reproducibility).
    """
    device = next(model.parameters()).device
    images, labels = to_device(images, device), to_device(labels, device)
    B = images.shape[0]
    x = augment(images.repeat(views, 1, 1, 1))  # (V*B, C, S, S), view-major: row v * B + i
    with numerics.autocast(device) if numerics is not None else contextlib.nullcontext():
        logits, _, z = model(numerics.inputs(x) if numerics is not None else x)
        logits = logits.view(views, B, -1).transpose(0, 1)  # (B, V, C)
        z = z.view(views, B, -1).transpose(0, 1)  # (B, V, d)
        loss, parts = objective(logits, z, labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), parts


@torch.no_grad()
def predict(
    model: FineTuneModel,
    images: Tensor,
    transform: nn.Module,
    batch_size: int = 1024,
    *,
    numerics: LoopPrecision | None = None,
) -> Tensor:
    """Logits of uint8 ``images`` ``(N, C, H, W)`` in eval mode, on the model's device, in the precision of
    ``numerics`` when given. Shape: ``(N, num_classes)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with numerics.autocast(device) if numerics is not None else contextlib.nullcontext():
        for s in range(0, images.shape[0], batch_size):
            x = transform(to_device(images[s : s + batch_size], device))
            out.append(model(numerics.inputs(x) if numerics is not None else x)[0])
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
    numerics: dict | None = None  # what the run computed in (hscl.engine.runtime.precision.numerics_record)

    def as_dict(self) -> dict:
        return {"test_top1": self.test_top1, "history": self.history, "train_seconds": self.train_seconds}


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
    precision: str | LoopPrecision | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``pretrained`` with a linear head on ``data``'s training split; score its test split.

    Runs on ``device`` (``"auto"``: a CUDA GPU when there is one, else the CPU); the returned model is there.
    ``pretrained`` is a ContrastiveModel or a :class:`Backbone` (see :class:`FineTuneModel`; its augmentation
    output stays in ``[0, 1]``, :func:`backbone_input`); ``config.embedding`` None is resolved for it.

    ``precision``: a setting of ``train.precision`` (``auto``, ``fastest``, ``bf16``, ``16``, ``32``; decided by
    the rule of training, :func:`hscl.engine.runtime.precision.resolve_precision`: on CUDA bf16 / fp16 autocast and
    channels-last), a :class:`~hscl.engine.runtime.precision.LoopPrecision`, or None: the choice of an enclosing
    :func:`~hscl.engine.runtime.precision.loop_precision_scope`, else ``auto``. On CUDA TF32 and cuDNN autotuning are on
    while it runs (:func:`~hscl.engine.runtime.precision.loop_flags`, restored after). ``FinetuneResult.numerics``
    records the choice.

    Each epoch visits the training images in an order drawn from ``(seed, epoch)`` (the last incomplete
    batch is dropped); the augmentation's draws follow from ``(seed, epoch, step)``. With ``out_dir``, the
    state is saved atomically after every epoch to ``out_dir/finetune_last.pt``; ``resume=True`` continues
    from it (in the numerics it started with) and reaches the same weights as an uninterrupted run,
    ``resume=False`` refuses to overwrite it.
    """
    augment = augment or preset_for(data.channels, data.size)
    if config.augment is not None:
        augment = augment_preset(config.augment).with_overrides(None, size=data.size)
    augment, config = backbone_input(pretrained, augment), config.resolved(pretrained)
    state_file = _finetune_state_file(out_dir, resume)
    saved = _read_finetune_state(state_file, resume, dataclasses.asdict(config))
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    model = FineTuneModel(copy.deepcopy(pretrained), data.num_classes, config.embedding).to(device)
    objective = FinetuneObjective.from_config(config)
    train_aug, eval_tf = Augment(augment).to(device), EvalTransform(augment).to(device)
    if saved is not None and "numerics" in saved:  # a resumed run keeps the numerics it started with
        precision = LoopPrecision(**saved["numerics"])
    rows = min(config.batch_size, len(data.train_labels)) * config.views
    numerics = resolve_loop_precision(precision, model, eval_tf, data.train_images[:rows], device)
    if numerics.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the training images and labels on the GPU once when they fit; else batches go through pinned memory
    train = place(data.train_images, device), place(data.train_labels, device)
    steps_per_epoch = len(data.train_labels) // min(config.batch_size, len(data.train_labels))
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    scaler = numerics.grad_scaler(device)
    history, start_epoch, seconds = [], 0, 0.0
    if saved is not None:
        start_epoch, history, seconds = _restore_finetune_state(saved, model, optimizer, scheduler, scaler)
    with loop_flags(device):
        for epoch in range(start_epoch, config.epochs):
            began = time.perf_counter()
            sums = _finetune_epoch(
                model, objective, (optimizer, scheduler, scaler), train_aug, train, config, epoch, numerics, progress
            )
            seconds += time.perf_counter() - began
            logits = predict(model, data.test_images, eval_tf, numerics=numerics)
            history.append({"epoch": epoch + 1, **sums, "test_top1": accuracy(logits, data.test_labels)})
            history[-1]["seconds"] = seconds
            if state_file is not None:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                state["scheduler"], state["scaler"] = scheduler.state_dict(), scaler and scaler.state_dict()
                state["numerics"] = dataclasses.asdict(numerics)
                meta = {"config": dataclasses.asdict(config), "epoch": epoch + 1, "history": history}
                _atomic_save({**meta, **state, "seconds": seconds}, state_file)
        logits = predict(model, data.test_images, eval_tf, numerics=numerics)
    correct = (logits.argmax(1) == data.test_labels.to(logits.device)).cpu()
    record = numerics.record(device)
    return FinetuneResult(accuracy(logits, data.test_labels), history, seconds, model.eval(), correct, record)


def resolve_loop_precision(precision, model: nn.Module, transform: nn.Module, images: Tensor, device) -> LoopPrecision:
    """The numerics (``precision``: a setting, a LoopPrecision or None) of fine-tuning ``model`` (a
    :class:`FineTuneModel`, or the pre-trained ContrastiveModel / Backbone) on ``device`` (a torch.device):
    :func:`hscl.engine.runtime.precision.loop_precision`, the rule of training.
    ``precision="fastest"`` on the CPU times the model on ``transform(images)`` (uint8 training images as the
    steps see them, as many as a step's rows); no other setting reads them."""
    model, sample = model.model if isinstance(model, FineTuneModel) else model, None  # forward: (h, z)
    if precision == "fastest" and device.type == "cpu":
        sample = transform(to_device(images, device))
        if isinstance(model, Backbone):  # wrapped as fine-tuning wraps it, without touching the global RNG
            with torch.random.fork_rng(devices=[]):
                model = FineTuneModel(model, 2).model
    return loop_precision(precision, model, device, sample)


def _finetune_epoch(
    model: FineTuneModel,
    objective: FinetuneObjective,
    optimization: tuple,
    train_aug: nn.Module,
    train: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    epoch: int,
    numerics: LoopPrecision,
    progress: bool,
) -> dict:
    """One epoch of steps over ``train`` = (uint8 images, labels) in the order of ``(seed, epoch)``, with
    ``optimization`` = (optimizer, scheduler, gradient scaler or None); the means of the loss, CE and
    contrastive term (None where not computed) over its steps.

    Host synchronisations: none per step. The order is drawn on the host and copied to the images' device
    once (pinned, non-blocking); the step values stay on the device and are read once, at the end."""
    from tqdm.auto import tqdm

    optimizer, scheduler, scaler = optimization
    train_images, train_labels = train
    n = int(train_labels.numel())
    batch = min(config.batch_size, n)
    _set_train_mode(model, config.bn)
    order = torch.randperm(n, generator=epoch_generator(config.seed, epoch))
    order = to_device(order[: (n // batch) * batch].view(n // batch, batch), train_images.device)
    values = []  # (loss, ce[, contrastive]) of each step, on the device
    bar = tqdm(
        range(n // batch),
        desc=f"fine-tune {config.objective} epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        leave=False,
    )
    for step in bar:
        index = order[step]
        torch.manual_seed(int(epoch_generator(config.seed, epoch, 1 + step).initial_seed()))
        images, labels = train_images[index], train_labels[index]
        loss, parts = train_step(
            model, objective, optimizer, train_aug, images, labels, config.views, numerics=numerics, scaler=scaler
        )
        scheduler.step()
        con = parts["contrastive"]
        values.append(torch.stack([loss.float(), parts["ce"].float(), *([] if con is None else [con.float()])]))
        if progress and (step + 1) % 50 == 0:  # a host synchronisation every 50 steps, for the bar only
            bar.set_postfix(loss=f"{float(loss):.3f}")
    rows = torch.stack(values).T.tolist()  # the epoch's one read of the step values
    means = [sum(column) / len(column) for column in rows]
    return {"loss": means[0], "ce": means[1], "contrastive": means[2] if len(means) > 2 else None}
