"""Encoders, projection head, the contrastive model, and pre-trained backbones.

``build_model("resnet50", 3)`` gives the SimCLR / H-SCL set-up: a ResNet-50 trunk with a CIFAR stem
(``(B, 3, H, W) -> (B, 2048)``), the head 2048 -> 512 -> BN -> ReLU -> 128 and outputs on the unit sphere.
``build_backbone("efficientnet-lite0")`` gives a pre-trained image backbone with its input contract attached
(:mod:`hscl.models.backbones`; ``hf:PATH`` for a local HuggingFace model, which imports transformers only then).
"""

from __future__ import annotations

import torch
from torch import nn

from hscl.models.backbones import BACKBONES, Backbone, backbone_names, build_backbone
from hscl.models.convnet import ConvNet, convnet
from hscl.models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from hscl.models.encoders import ENCODERS, build_encoder
from hscl.models.heads import NORMALIZATIONS, OutputNormalization, ProjectionHead, normalize_output
from hscl.models.resnet import STEMS, BasicBlock, Bottleneck, ResNet, resnet18, resnet50

__all__ = [
    "BACKBONES",
    "ENCODERS",
    "NORMALIZATIONS",
    "STEMS",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "ContrastiveModel",
    "ConvNet",
    "EfficientNetLite0",
    "OutputNormalization",
    "ProjectionHead",
    "ResNet",
    "backbone_names",
    "build_backbone",
    "build_encoder",
    "build_model",
    "convnet",
    "efficientnet_lite0",
    "normalize_output",
    "resnet18",
    "resnet50",
]


class ContrastiveModel(nn.Module):
    """Encoder + projection head + output normalisation.

    Attributes:
        encoder: ``(B, C, H, W) -> (B, feature_dim)``.
        head: ``(B, feature_dim) -> (B, out_dim)``.
        normalization: ``OutputNormalization`` applied to the head's output (``mode`` in ``NORMALIZATIONS``).
        feature_dim, out_dim: the widths of ``h`` and ``z``.

    ``forward(x)`` returns ``(h, z)``: ``h`` the encoder features ``(B, feature_dim)`` (what linear probes and
    k-NN evaluation use) and ``z`` the normalised projection ``(B, out_dim)`` (what the contrastive loss uses).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, normalization: str | OutputNormalization = "sphere"):
        super().__init__()
        if not hasattr(encoder, "feature_dim"):
            raise ValueError("encoder must have a feature_dim attribute")
        self.encoder = encoder
        self.head = head
        self.normalization = (
            normalization if isinstance(normalization, OutputNormalization) else OutputNormalization(normalization)
        )
        self.feature_dim = int(encoder.feature_dim)
        self.out_dim = int(getattr(head, "out_dim", 0)) or None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features only: ``(B, C, H, W) -> (B, feature_dim)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W) -> (h (B, feature_dim), z (B, out_dim))``."""
        h = self.encoder(x)
        z = self.normalization(self.head(h))
        return h, z


def build_model(
    encoder: str,
    in_channels: int,
    *,
    projection_dim: int = 128,
    hidden_dim: int = 512,
    normalization: str = "sphere",
    **encoder_kw,
) -> ContrastiveModel:
    """Encoder ``encoder`` (see ``ENCODERS``) + ``ProjectionHead(feature_dim, hidden_dim, projection_dim)`` +
    output normalisation ``normalization`` (``"sphere"``, ``"ball"`` or ``"none"``).

    ``forward(x)``: ``(B, in_channels, H, W) -> (h (B, feature_dim), z (B, projection_dim))``.
    """
    norm = OutputNormalization(normalization)  # validate before building a large encoder
    enc = build_encoder(encoder, in_channels, **encoder_kw)
    head = ProjectionHead(enc.feature_dim, hidden_dim, projection_dim)
    return ContrastiveModel(enc, head, norm)
