"""Batched GPU/CPU image augmentation with kornia for contrastive learning.

Everything works on whole batches ``(B, C, H, W)`` on the tensor's device; randomness comes from torch's global
RNG (kornia samples its parameters with it), so ``torch.manual_seed`` makes a call reproducible.

* ``AugmentConfig``: the augmentation pipeline's settings; ``augment_preset(name)`` / ``preset_for(channels, size)``
  give the presets, ``config.with_overrides({...})`` changes fields (unknown keys are rejected).
* ``Augment(config)``: random resized crop -> horizontal flip -> colour jitter -> grayscale -> Gaussian blur ->
  Gaussian noise -> per-channel normalisation; uint8 or float-in-[0, 1] input, float32 ``(B, C, size, size)`` out.
* ``EvalTransform(config)`` / ``eval_transform(config)``: no augmentation, only conversion, a resize when the
  size differs and normalisation, for feature extraction and evaluation.

Presets (normalisation statistics are the commonly used per-pixel train-set values; override ``mean``/``std``
for another data set):

=========  =====================================================================================================
grey28     28x28 grey (Fashion-MNIST): crop scale (0.5, 1), flip, brightness/contrast jitter 0.4 with p 0.8, no
           grayscale, no blur, Gaussian noise std 0.05; mean 0.2860, std 0.3530.
colour32   SimCLR CIFAR set-up: crop scale (0.2, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
           no blur; CIFAR-10 statistics.
colour64   TinyImageNet: colour32 plus Gaussian blur with p 0.5, sigma (0.1, 2.0); TinyImageNet statistics.
colour96   STL-10: like colour64; STL-10 statistics.
=========  =====================================================================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PRESETS",
    "Augment",
    "AugmentConfig",
    "EvalTransform",
    "Normalize",
    "augment_preset",
    "eval_transform",
    "preset_for",
    "to_float_image",
]


def _tuple(value: Any, name: str, length: int | None = None) -> tuple[float, ...]:
    if isinstance(value, int | float):
        value = (value,)
    try:
        out = tuple(float(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}") from err
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} values, got {len(out)}: {out}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _probability(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


@dataclass
class AugmentConfig:
    """Settings of the augmentation pipeline.

    Attributes:
        size: output side length (square output ``size x size``).
        channels: image channels, 1 (grey) or 3 (RGB).
        crop_scale: area fraction range of the random resized crop; ``(1, 1)`` with ``crop_ratio=(1, 1)`` keeps
            the whole (square) image.
        crop_ratio: aspect ratio range of the crop.
        flip_p: probability of a horizontal flip.
        jitter: colour jitter strengths ``(brightness, contrast, saturation, hue)``; saturation and hue are ignored
            for grey images (they need 3 channels).
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grayscale (ignored for grey images).
        blur_p: probability of a Gaussian blur (0 for small images).
        blur_sigma: range of the blur's standard deviation in pixels.
        blur_kernel: odd blur kernel side; ``None`` means about 10% of ``size`` (at least 3), as in SimCLR.
        noise_std: standard deviation of additive Gaussian noise on the [0, 1] scale (0 = off); the result is
            clamped back to [0, 1].
        mean, std: per-channel normalisation, ``(x - mean) / std``; ``None`` means 0.5 for every channel.
    """

    size: int
    channels: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    noise_std: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or int(self.size) != self.size or int(self.size) < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        self.size = int(self.size)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        self.channels = int(self.channels)
        self.crop_scale = _tuple(self.crop_scale, "crop_scale", 2)
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        self.crop_ratio = _tuple(self.crop_ratio, "crop_ratio", 2)
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        self.flip_p = _probability(self.flip_p, "flip_p")
        self.jitter = _tuple(self.jitter, "jitter", 4)
        if any(v < 0 for v in self.jitter) or self.jitter[3] > 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        self.jitter_p = _probability(self.jitter_p, "jitter_p")
        self.grayscale_p = _probability(self.grayscale_p, "grayscale_p")
        self.blur_p = _probability(self.blur_p, "blur_p")
        self.blur_sigma = _tuple(self.blur_sigma, "blur_sigma", 2)
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        if self.blur_kernel is not None:
            k = self.blur_kernel
            if isinstance(k, bool) or int(k) != k or int(k) < 1 or int(k) % 2 == 0:
                raise ValueError(f"blur_kernel must be a positive odd int or None, got {k!r}")
            self.blur_kernel = int(k)
        self.noise_std = float(self.noise_std)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        self.mean = (0.5,) * self.channels if self.mean is None else _tuple(self.mean, "mean", self.channels)
        self.std = (0.5,) * self.channels if self.std is None else _tuple(self.std, "std", self.channels)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def blur_kernel_size(self) -> int:
        """The blur kernel side actually used: ``blur_kernel`` or the odd number nearest below 10% of ``size``
        (at least 3)."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)

    def with_overrides(self, overrides: Mapping[str, Any] | None = None, **kw: Any) -> AugmentConfig:
        """A copy with the fields in ``overrides`` (a dict, e.g. from a YAML file) and ``kw`` replaced.

        Raises ValueError naming an unknown key and listing the valid ones; the new values are validated.
        """
        changes = {**(dict(overrides) if overrides else {}), **kw}
        valid = self.field_names()
        for key in changes:
            if key not in valid:
                raise ValueError(f"unknown augmentation option {key!r}; valid options: {', '.join(valid)}")
        return dataclasses.replace(self, **changes)


_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_TINY_IMAGENET = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))
_STL10 = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
_FASHION_MNIST = ((0.2860,), (0.3530,))

#: Preset settings by name; ``augment_preset(name)`` builds a fresh ``AugmentConfig`` from them.
PRESETS: dict[str, dict[str, Any]] = {
    "grey28": dict(
        size=28,
        channels=1,
        crop_scale=(0.5, 1.0),
        jitter=(0.4, 0.4, 0.0, 0.0),
        grayscale_p=0.0,
        blur_p=0.0,
        noise_std=0.05,
        mean=_FASHION_MNIST[0],
        std=_FASHION_MNIST[1],
    ),
    "colour32": dict(size=32, channels=3, blur_p=0.0, mean=_CIFAR10[0], std=_CIFAR10[1]),
    "colour64": dict(size=64, channels=3, blur_p=0.5, mean=_TINY_IMAGENET[0], std=_TINY_IMAGENET[1]),
    "colour96": dict(size=96, channels=3, blur_p=0.5, mean=_STL10[0], std=_STL10[1]),
}


def augment_preset(name: str, overrides: Mapping[str, Any] | None = None) -> AugmentConfig:
    """The preset ``name`` (``"grey28"``, ``"colour32"``, ``"colour64"``, ``"colour96"``) as a new
    ``AugmentConfig``, with optional field ``overrides`` (unknown keys raise ValueError)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return AugmentConfig(**PRESETS[name]).with_overrides(overrides)


def preset_for(channels: int, size: int, overrides: Mapping[str, Any] | None = None) -> AugmentConfig:
    """The preset matching the images: grey -> ``grey28``; colour -> ``colour32`` up to 32 px, ``colour64`` up to
    64 px, else ``colour96``. ``size`` replaces the preset's size; ``overrides`` are applied last."""
    if channels == 1:
        name = "grey28"
    elif channels == 3:
        name = "colour32" if size <= 32 else "colour64" if size <= 64 else "colour96"
    else:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return augment_preset(name).with_overrides(overrides, size=size)


def to_float_image(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1] (same device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channel(s), got input of shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating point images, got {x.dtype}")
    return x.float()


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with ``mean``/``std`` as buffers (they follow ``.to(device)``).
    ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.tensor(_tuple(mean, "mean"), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(_tuple(std, "std"), dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean and std must have the same length, got {mean_t.numel()} and {std_t.numel()}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be > 0, got {tuple(std_t.flatten().tolist())}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"


def _as_config(config: AugmentConfig | str) -> AugmentConfig:
    if isinstance(config, str):
        return augment_preset(config)
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"expected an AugmentConfig or a preset name, got {type(config).__name__}")
    return config


class Augment(nn.Module):
    """The training augmentation of ``config`` (an ``AugmentConfig`` or a preset name).

    ``forward(x)``: ``(B, C, H, W)`` uint8 or float in [0, 1] -> float32 ``(B, C, size, size)``, augmented
    independently per image and normalised. Runs batched on ``x``'s device, in float32 even under autocast. It
    augments in eval mode too (use ``EvalTransform`` for the deterministic path).
    """

    def __init__(self, config: AugmentConfig | str) -> None:
        super().__init__()
        cfg = _as_config(config)
        self.config = cfg
        s = cfg.size
        ops: list[nn.Module] = [
            # "resample" crops with one batched affine warp (no per-image slicing) and, with align_corners=False,
            # reproduces the input exactly for a full crop.
            K.RandomResizedCrop(
                (s, s), scale=cfg.crop_scale, ratio=cfg.crop_ratio, cropping_mode="resample", align_corners=False
            )
        ]
        if cfg.flip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.flip_p))
        brightness, contrast, saturation, hue = cfg.jitter
        if cfg.channels == 1:
            saturation = hue = 0.0
        if cfg.jitter_p > 0 and max(brightness, contrast, saturation, hue) > 0:
            ops.append(K.ColorJitter(brightness, contrast, saturation, hue, p=cfg.jitter_p))
        if cfg.channels == 3 and cfg.grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=cfg.grayscale_p))
        if cfg.blur_p > 0:
            k = cfg.blur_kernel_size
            ops.append(K.RandomGaussianBlur((k, k), cfg.blur_sigma, p=cfg.blur_p))
        if cfg.noise_std > 0:
            ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=1.0))
        self.transforms = nn.Sequential(*ops)
        self.normalize = Normalize(cfg.mean, cfg.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 / float in [0, 1] -> float32 ``(B, C, size, size)``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = to_float_image(x, self.config.channels)
            x = self.transforms(x)
            if self.config.noise_std > 0:
                x = x.clamp(0.0, 1.0)
            return self.normalize(x)

    def views(self, x: torch.Tensor, n: int = 2) -> tuple[torch.Tensor, ...]:
        """``n`` independently augmented views of ``x`` from one batched call: a tuple of ``n`` float32
        tensors ``(B, C, size, size)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self(x.repeat(n, 1, 1, 1)).chunk(n, dim=0)


class EvalTransform(nn.Module):
    """The evaluation / feature-extraction path of ``config``: no augmentation.

    ``forward(x)``: ``(B, C, H, W)`` uint8 or float in [0, 1] -> float32 ``(B, C, size, size)``, bilinearly
    resized (antialiased when shrinking) only if ``(H, W) != (size, size)``, then normalised. Deterministic.
    """

    def __init__(self, config: AugmentConfig | str) -> None:
        super().__init__()
        cfg = _as_config(config)
        self.config = cfg
        self.normalize = Normalize(cfg.mean, cfg.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = to_float_image(x, self.config.channels)
            s = self.config.size
            if x.shape[-2:] != (s, s):
                shrink = x.shape[-2] > s or x.shape[-1] > s
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)
            return self.normalize(x)


def eval_transform(config: AugmentConfig | str) -> EvalTransform:
    """``EvalTransform(config)``: conversion, resize when needed, normalisation; no augmentation."""
    return EvalTransform(config)
