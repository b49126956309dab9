"""The registry of hscl's own encoders: :data:`ENCODERS` and :func:`build_encoder` (below
:mod:`hscl.models.backbones`, which offers them as backbones, and :mod:`hscl.models`, which builds the
contrastive model on them)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hscl.models.convnet import convnet
from hscl.models.resnet import resnet18, resnet50

__all__ = ["ENCODERS", "build_encoder"]

#: Encoder constructors ``(in_channels, **kw) -> nn.Module``; every encoder has a ``feature_dim`` attribute and
#: maps ``(B, in_channels, H, W)`` to ``(B, feature_dim)``.
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "convnet": convnet,
}


def build_encoder(name: str, in_channels: int, **kw) -> nn.Module:
    """Build the registered encoder ``name`` (see ``ENCODERS``) for ``in_channels``-channel images.

    Extra keywords go to the constructor (``stem``, ``zero_init_residual`` for the ResNets, ``widths`` for the
    convnet). Raises ValueError for an unknown name.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](in_channels, **kw)
