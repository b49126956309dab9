"""Loading a pre-trained model for fine-tuning: an ``hscl train`` checkpoint or a plain ``state_dict`` file.

:func:`load_pretrained` reads the architecture off the checkpoint's run config, or off the tensor shapes
of a state_dict (see :func:`hscl.engine.finetune.loop.finetune` and :func:`hscl.engine.finetune.fewshot.few_shot`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hscl.data.augment import AugmentConfig, augment_preset, preset_for
from hscl.engine.runtime.config import RunConfig
from hscl.models import ENCODERS, NORMALIZATIONS, ContrastiveModel, build_model

__all__ = ["Pretrained", "load_pretrained"]


@dataclass
class Pretrained:
    """A pre-trained model and where it came from.

    Attributes:
        model: the :class:`ContrastiveModel` (eval mode).
        source: ``"hscl-checkpoint"`` (a checkpoint ``hscl train`` wrote), ``"state_dict"``, or ``"backbone"``
            (a pre-trained network of :func:`hscl.models.build_backbone`, ``hscl finetune --backbone``).
        config: the run config of an hscl checkpoint (None for a state_dict).
        architecture: the ``build_model`` arguments used.
        head_loaded: False when the file held only encoder weights (the projection head is then new).
    """

    model: ContrastiveModel
    source: str
    config: RunConfig | None
    architecture: dict
    head_loaded: bool = True

    def augment_config(self, channels: int, size: int, preset: str | None = None) -> AugmentConfig:
        """The fine-tuning augmentation: ``preset`` if given, else the pre-training run's, else by image type."""
        if preset is not None:
            return augment_preset(preset).with_overrides(None, size=size)
        if self.config is not None:
            from hscl.engine.pretrain.task import augment_config

            return augment_config(self.config, channels, size)
        return preset_for(channels, size)


def _tensor_mapping(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _plain_state(obj: object, path: Path) -> dict[str, Tensor]:
    """The model weights inside a loaded file: a state_dict, ``{"state_dict": ...}``, with any ``model.`` /
    ``module.`` prefix removed (a classifier fine-tuned by hscl is dropped)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and _tensor_mapping(obj["state_dict"]):
        obj = obj["state_dict"]
    if not _tensor_mapping(obj):
        raise ValueError(
            f"{path}: not an hscl checkpoint and not a state_dict (a mapping of parameter names to tensors)"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "model."):
        if any(k.startswith(prefix + "encoder.") for k in state) or all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _infer_architecture(encoder_state: Mapping[str, Tensor], path: Path) -> dict:
    """``build_model`` arguments read off the tensor shapes of an hscl encoder's state_dict."""
    if "features.0.weight" in encoder_state:
        widths, i = [], 0
        while f"features.{3 * i}.weight" in encoder_state:
            widths.append(int(encoder_state[f"features.{3 * i}.weight"].shape[0]))
            i += 1
        first = encoder_state["features.0.weight"]
        return {"encoder": "convnet", "in_channels": int(first.shape[1]), "widths": widths}
    if "stem.0.weight" in encoder_state:
        first = encoder_state["stem.0.weight"]
        name = "resnet50" if "layer1.0.conv3.weight" in encoder_state else "resnet18"
        stem = "cifar" if first.shape[-1] == 3 else "imagenet"
        return {"encoder": name, "in_channels": int(first.shape[1]), "stem": stem}
    raise ValueError(
        f"{path}: cannot tell the encoder from its parameter names (no features.0.weight / stem.0.weight): not "
        f"the state_dict of an hscl model (hscl.models.build_model with one of {', '.join(ENCODERS)})"
    )


def load_pretrained(
    path: str | Path,
    *,
    encoder: str | None = None,
    in_channels: int | None = None,
    widths: Sequence[int] | None = None,
    stem: str | None = None,
    projection_dim: int | None = None,
    hidden_dim: int | None = None,
    normalization: str | None = None,
    data_dir: str | None = None,
    device: str | torch.device | None = None,
) -> Pretrained:
    """A pre-trained model from any checkpoint ``hscl train`` wrote, or from a plain ``state_dict`` file.

    A state_dict may be that of a :class:`ContrastiveModel` (``encoder.*`` and ``head.*``), of a
    ``ContrastiveTask`` (``model.*``), of a model fine-tuned by hscl (the classifier is dropped), or of an
    encoder alone (the projection head is then freshly initialised). The architecture (encoder, input
    channels, convnet widths, ResNet stem, head sizes) is read off the tensor shapes; the keyword arguments
    override it (and must agree with the weights). ``normalization`` (no weights) defaults to ``"sphere"``.

    The file is read onto the CPU (a checkpoint written on any GPU loads anywhere); the model is then moved to
    ``device`` (None: it stays on the CPU; ``"auto"``: a CUDA GPU when there is one).
    """
    pretrained = _load_pretrained(
        Path(path), encoder, in_channels, widths, stem, projection_dim, hidden_dim, normalization, data_dir
    )
    if device is not None:
        from hscl.engine.runtime.distributed import resolve_device

        pretrained.model.to(resolve_device(device))
    return pretrained


def _load_pretrained(
    path: Path,
    encoder: str | None,
    in_channels: int | None,
    widths: Sequence[int] | None,
    stem: str | None,
    projection_dim: int | None,
    hidden_dim: int | None,
    normalization: str | None,
    data_dir: str | None,
) -> Pretrained:
    """:func:`load_pretrained` on the CPU."""
    from hscl.engine.runtime.checkpoints import load_checkpoint

    # weights-only; a file that is missing, damaged, not a checkpoint or a state_dict: CheckpointError (one line)
    obj = load_checkpoint(path, expect="weights")
    if isinstance(obj, Mapping) and "hyper_parameters" in obj and "state_dict" in obj:
        pretrained = _from_hscl_checkpoint(path, data_dir)
        if pretrained is not None:
            return pretrained
    state = _plain_state(obj, path)
    has_head = any(k.startswith("head.") for k in state)
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:  # an encoder's own state_dict
        encoder_state, state = state, {f"encoder.{k}": v for k, v in state.items()}
    try:
        arch = _infer_architecture(encoder_state, path)
    except ValueError:
        if encoder is None or in_channels is None:
            raise
        arch = {"encoder": encoder, "in_channels": in_channels}  # loading below says what does not fit
    if has_head and "head.net.0.weight" in state and "head.net.3.weight" in state:
        arch["hidden_dim"] = int(state["head.net.0.weight"].shape[0])
        arch["projection_dim"] = int(state["head.net.3.weight"].shape[0])
    for key, value in (
        ("encoder", encoder),
        ("in_channels", in_channels),
        ("widths", list(widths) if widths is not None else None),
        ("stem", stem),
        ("projection_dim", projection_dim),
        ("hidden_dim", hidden_dim),
    ):
        if value is not None:
            arch[key] = value
    arch["normalization"] = normalization or "sphere"
    if arch["normalization"] not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {arch['normalization']!r}")
    model = _build_from_state(arch, state, encoder_state, has_head, path)
    return Pretrained(model.eval(), "state_dict", None, arch, head_loaded=has_head)


def _from_hscl_checkpoint(path: Path, data_dir: str | None) -> Pretrained | None:
    """The model of a checkpoint ``hscl train`` wrote, built from its run config; None when that config cannot
    be rebuilt here (the caller then reads the checkpoint's state_dict like any other)."""
    from hscl.engine.pretrain.run import load_task

    try:
        task, config = load_task(path, data_dir=data_dir, device="cpu")
    except Exception:
        return None
    mc = config.model
    arch = {"encoder": mc.encoder, "in_channels": task.hparams["in_channels"], "widths": mc.widths}
    arch.update({"stem": mc.stem, "projection_dim": mc.projection_dim, "hidden_dim": mc.hidden_dim})
    arch["normalization"] = mc.normalization
    model = task.model.to(memory_format=torch.contiguous_format).eval()
    return Pretrained(model, "hscl-checkpoint", config, arch)


def _build_from_state(
    arch: dict, state: dict[str, Tensor], encoder_state: dict[str, Tensor], has_head: bool, path: Path
) -> ContrastiveModel:
    """``build_model(**arch)`` loaded (strictly) with ``state``, or with ``encoder_state`` when the file has no head."""
    encoder_kw = {k: arch[k] for k in ("widths", "stem") if arch.get(k) is not None}
    if arch["encoder"] == "convnet":
        encoder_kw.pop("stem", None)
    else:
        encoder_kw.pop("widths", None)
    model = build_model(
        arch["encoder"],
        arch["in_channels"],
        projection_dim=arch.get("projection_dim", 128),
        hidden_dim=arch.get("hidden_dim", 512),
        normalization=arch["normalization"],
        **encoder_kw,
    )
    try:
        if has_head:
            model.load_state_dict(state, strict=True)
        else:
            model.encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit {arch}: {str(err).splitlines()[0]}") from err
    return model
