"""A small CPU-sized convolutional encoder for 28x28 grey and 32x32 colour images.

Four blocks of conv3x3 -> BatchNorm -> ReLU with widths 32, 64, 128, 256; the first block keeps the resolution
and each of the next three halves it with a stride-2 convolution (28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4, i.e.
1/8 of the input), then global average pooling gives 256-d features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvNet", "convnet"]


class ConvNet(nn.Module):
    """Small convnet encoder.

    Args:
        in_channels: image channels (1 for grey, 3 for colour).
        widths: output channels of the blocks; the first block has stride 1, all later ones stride 2.

    Shapes: ``forward(x)``: ``(B, in_channels, H, W) -> (B, feature_dim)`` with ``feature_dim = widths[-1]``
    (256 by default).
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        self.reset_parameters()

    @property
    def first_conv(self) -> nn.Conv2d:
        """The first convolution (the first layer an input reaches)."""
        return self.features[0]

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out, ReLU) convolutions, batch norm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, feature_dim)``."""
        return torch.flatten(self.pool(self.features(x)), 1)


def convnet(in_channels: int = 1, *, widths: Sequence[int] = (32, 64, 128, 256)) -> ConvNet:
    """The small convnet: ``(B, in_channels, H, W) -> (B, 256)`` with the default widths."""
    return ConvNet(in_channels, widths)
