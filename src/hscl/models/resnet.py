"""ResNet-18 / ResNet-50 encoders without a classifier.

Written from the architecture of He et al. (2016), "Deep Residual Learning for Image Recognition", with the
stride of a bottleneck block on its 3x3 convolution (the common "v1.5" variant). Two stems:

* ``stem="cifar"``: a 3x3 convolution with stride 1 and no max-pool, the SimCLR set-up for 32-96 px images;
* ``stem="imagenet"``: the original 7x7 convolution with stride 2 followed by a 3x3 max-pool with stride 2.

The network ends with global average pooling: ``forward(x)`` maps ``(B, in_channels, H, W)`` to
``(B, feature_dim)`` with ``feature_dim`` 512 (ResNet-18) or 2048 (ResNet-50).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["STEMS", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]

STEMS = ("cifar", "imagenet")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else a strided 1x1 projection followed by batch norm."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(_conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34). ``(B, in_planes, H, W) ->
    (B, planes, H / stride, W / stride)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a residual connection (ResNet-50).
    ``(B, in_planes, H, W) -> (B, 4 * planes, H / stride, W / stride)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet trunk with global average pooling and no classifier.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages, e.g. ``(2, 2, 2, 2)``.
        in_channels: image channels (1 for grey, 3 for colour).
        stem: ``"cifar"`` (3x3 stride-1 conv, no max-pool) or ``"imagenet"`` (7x7 stride-2 conv + max-pool).
        zero_init_residual: start the last batch norm of every block at weight 0, so each residual branch is
            initially the identity (Goyal et al., 2017).

    Shapes: ``forward(x)``: ``(B, in_channels, H, W) -> (B, feature_dim)``; ``feature_dim = 512 * block.expansion``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        in_channels: int = 3,
        *,
        stem: str = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        self.stem_type = stem
        width = 64
        if stem == "cifar":
            conv = nn.Conv2d(self.in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            conv = nn.Conv2d(self.in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), pool)

        stages = []
        in_planes = width
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(int(n_blocks)):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.reset_parameters(zero_init_residual)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The stem convolution (the first layer an input reaches)."""
        return self.stem[0]

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """Kaiming-normal (fan-out, ReLU) convolutions; batch norm weight 1 and bias 0, or weight 0 for the last
        batch norm of each residual branch when ``zero_init_residual``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, feature_dim)``."""
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


def resnet18(in_channels: int = 3, *, stem: str = "cifar", zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 trunk (BasicBlock, [2, 2, 2, 2]): ``(B, in_channels, H, W) -> (B, 512)``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, stem=stem, zero_init_residual=zero_init_residual)


def resnet50(in_channels: int = 3, *, stem: str = "cifar", zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 trunk (Bottleneck, [3, 4, 6, 3]): ``(B, in_channels, H, W) -> (B, 2048)``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, stem=stem, zero_init_residual=zero_init_residual)
