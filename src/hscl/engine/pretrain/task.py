"""The Lightning task of a pre-training run: encoder -> projection head -> loss, and what it is built from
(the loss of a run config, its threshold schedule, its augmentation).

One step: a batch of ``B x V`` uint8 images -> batched kornia augmentation on the training device -> encoder
features ``h`` -> projection ``z`` (normalised) -> :mod:`hscl.losses`; the global RNG is reseeded from
``(seed, epoch, step)`` at each step, so a resumed run reaches the weights of an uninterrupted one.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from hscl.data.augment import Augment, AugmentConfig, EvalTransform, augment_preset, preset_for
from hscl.data.views import epoch_generator
from hscl.engine.evaluation.probes import extract_features
from hscl.engine.pretrain.loss_state import (
    auto_hardening,
    restore_loss_state,
    save_loss_state,
)
from hscl.engine.runtime.config import RunConfig
from hscl.engine.runtime.distributed import (
    global_batch_loss,
    rank,
    shard_sizes,
    world_size,
)
from hscl.engine.runtime.precision import enable_tf32
from hscl.hardening import linear_threshold
from hscl.losses import get_loss, get_method, loss_kwargs
from hscl.models import build_model

__all__ = ["ContrastiveTask", "augment_config", "build_loss", "threshold_schedule"]


def augment_config(config: RunConfig, channels: int, size: int) -> AugmentConfig:
    """The augmentation of a run: the named preset, or the one for the data's channels and size."""
    overrides = dict(config.data.augment_overrides)
    if config.data.augment:
        return augment_preset(config.data.augment, overrides)
    return preset_for(channels, size, overrides)


def build_loss(config: RunConfig) -> nn.Module:
    """The loss module of a run: the registered method with the options of ``config.loss`` that it takes.

    ``loss.beta: auto`` gives ``SmoothedAutoExponential(loss.auto_target)`` with ``loss.auto_momentum`` and
    ``loss.auto_warmup_steps`` (:mod:`hscl.engine.pretrain.auto_beta`); ``loss.memory_size > 0`` a memory of that many
    past rows, used after ``loss.memory_warmup_steps`` loss calls (the module keeps it in its buffers, so the
    run's checkpoints hold it and a resumed run continues with it).
    """
    lc = config.loss
    method = get_method(lc.method)
    hardening: dict = {}
    if method.hardened:
        if lc.tau_schedule is not None:
            hardening["tau"] = threshold_schedule(config)(1)
        elif lc.tau is not None:
            hardening["tau"] = lc.tau
        elif lc.beta == "auto":
            from hscl.engine.pretrain.auto_beta import SmoothedAutoExponential

            hardening["hardening"] = SmoothedAutoExponential(
                lc.auto_target, momentum=lc.auto_momentum, warmup_steps=lc.auto_warmup_steps
            )
        elif lc.beta is not None:
            hardening["beta"] = lc.beta
    memory = {"memory_size": lc.memory_size, "memory_warmup_steps": lc.memory_warmup_steps} if lc.memory_size else {}
    options = {
        "temperature": lc.temperature,
        "base_temperature": lc.base_temperature,
        # the model already normalises its output; the loss re-normalises only on the sphere, so that
        # "ball" and "none" (the geometry paper's settings) reach the loss as they are
        "normalize": config.model.normalization == "sphere",
        "chunk_size": lc.chunk_size,
        "M": lc.M,
        "tau_plus": lc.tau_plus or None,
        **hardening,
        **memory,
    }
    return get_loss(method.name, **loss_kwargs(method.name, options))


def threshold_schedule(config: RunConfig):
    start, end = config.loss.tau_schedule
    return linear_threshold(start, end, config.train.epochs, config.loss.temperature)


class ContrastiveTask(L.LightningModule):
    """Encoder + projection head trained with one loss of :mod:`hscl.losses`."""

    def __init__(self, config: dict, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        from hscl.engine.runtime.config import config_from_dict

        self.config: RunConfig = config_from_dict(config)
        mc = self.config.model
        encoder_kw: dict = {"stem": mc.stem} if mc.stem is not None else {}
        if mc.widths is not None:
            encoder_kw["widths"] = tuple(mc.widths)
        self.model = build_model(
            mc.encoder,
            in_channels,
            projection_dim=mc.projection_dim,
            hidden_dim=mc.hidden_dim,
            normalization=mc.normalization,
            **encoder_kw,
        )
        self.loss_fn = build_loss(self.config)
        aug = augment_config(self.config, in_channels, image_size)
        self.augment = Augment(aug)  # training views, batched on the device
        self.eval_transform = EvalTransform(aug)  # features for kNN / linear evaluation
        self.channels_last = False
        self._schedule = threshold_schedule(self.config) if self.config.loss.tau_schedule else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_loss_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # Lightning calls it before it loads the weights
        restore_loss_state(self, checkpoint)

    def configure_optimizers(self):
        tc = self.config.train
        return torch.optim.Adam(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def on_fit_start(self) -> None:
        # in every process (DDP children included: spawned ones do not inherit global flags), on the device
        if self.device.type == "cuda":
            enable_tf32()

    def on_train_epoch_start(self) -> None:
        if self._schedule is not None:
            self.loss_fn.hardening = self._schedule.hardening(self.current_epoch + 1)

    def training_step(self, batch, batch_idx):
        # (B, V, C, H, W) uint8, (B,): the global batch with one process; under DDP this rank's shard of it
        # (ViewsDataModule reads only those samples) and the loss gathers the other ranks' embeddings
        images, labels = batch  # labels (B_k,) class ids or (B_k, C) multi-hot
        B, V = images.shape[:2]
        # the augmentation's random draws (kornia uses the global RNG) follow from (seed, epoch, step)
        # alone, whatever else consumed the RNG before: a resumed run repeats them exactly
        torch.manual_seed(
            int(epoch_generator(self.config.train.seed, self.current_epoch, 1 + batch_idx).initial_seed())
            + rank() * 2**40  # each rank draws its own augmentations
        )
        x = self.augment(images.flatten(0, 1))  # (B_k*V, C, S, S), sample-major
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, z = self.model(x)  # (B_k*V, d)
        # the loss of the global batch (B, V, d) and, under DDP, gradients that average to its gradient (the
        # shard sizes follow from the global batch size on the host: no exchange of counts)
        loss = global_batch_loss(self.loss_fn, z.view(B, V, -1), labels, sizes=self._shard_sizes())
        self.log("loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=B)
        stats = getattr(self.loss_fn, "last_stats", None)
        if stats is not None and self._schedule is not None:  # on the device: Lightning reads it once per epoch
            fallbacks = stats.fallback.sum() / stats.valid.sum().clamp(min=1)
            self.log("fallback_fraction", fallbacks.float(), on_step=False, on_epoch=True, batch_size=B)
        auto = auto_hardening(self.loss_fn)
        if auto is not None:  # the beta used at this step and the step's solution; epoch means go to metrics.csv
            self.log("beta", float(auto.beta), on_step=False, on_epoch=True, batch_size=B)
            if auto.solved is not None:
                self.log("beta_solved", float(auto.solved), on_step=False, on_epoch=True, batch_size=B)
        return loss

    def _shard_sizes(self) -> list[int] | None:  # every rank's samples of the global batch (None: 1 process)
        sampler = getattr(getattr(self._trainer, "datamodule", None), "sampler", None)
        return None if world_size() == 1 or sampler is None else shard_sizes(sampler.batch_size)

    def encode(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Encoder features of uint8 images with the evaluation transform. Shape: ``(N, F)``."""
        return extract_features(
            self.model.encoder,
            images,
            self.eval_transform,
            batch_size=batch_size,
            channels_last=self.channels_last,
            dtype=self._autocast_dtype,
        )

    @property
    def _autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the run's precision (bf16 / fp16 under "bf16-mixed" / "16-mixed"), else None."""
        trainer = self._trainer  # None for a task loaded for evaluation: float32 features
        precision = str(trainer.precision) if trainer is not None else ""
        if "bf16" in precision:
            return torch.bfloat16
        if precision.startswith("16"):
            return torch.float16
        return None
