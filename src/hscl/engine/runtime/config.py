"""Run configuration: typed dataclasses loaded from YAML and ``key=value`` overrides.

A misspelled key fails loudly (naming the key and listing the valid ones); the resolved config is
saved with every run. Numbers may be written in scientific notation in YAML files and ``--set`` overrides
(``lr: 3e-4``, ``train.lr=1e-3``; :func:`load_yaml` reads them as floats, which YAML 1.1 does not): a float
field takes any number; an int field takes an integral one (``epochs: 1e2`` is 100) and refuses a fraction
(``1e-3``, ``1.5e0``); a value that is not a number is refused with an error naming the key.

Defaults are the H-SCL paper's image set-up (Sec. V-A): Adam, lr 1e-3,
weight decay 1e-6, batch 512, temperature (gamma) 0.5, M = rows - 2, 200 epochs, 128-d head.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "EvalConfig",
    "DiagnosticsConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "YamlLoader",
    "load_yaml",
]

#: the values of ``train.precision`` (their rules: :mod:`hscl.engine.runtime.precision`)
PRECISION_SETTINGS = ("auto", "fastest", "bf16", "16", "32")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # the image data set (hscl.data.images.registry.DATASETS)
    data_dir: str | None = None  # folder holding the data set (None: its default location); must hold it
    #: stratified subsets of the splits (None: the whole split)
    train_subset: int | None = None
    test_subset: int | None = None  # as train_subset, for the test split
    #: "instance" (V augmentations of one image), "same_label" (the second view is another image of
    #: the class), or "auto" (same_label for scl / h-scl, instance otherwise)
    pair_mode: str = "auto"
    views: int = 2  # augmented views per sample, V >= 2
    #: augmentation preset name (None: chosen from channels and size) and field overrides
    augment: str | None = None
    augment_overrides: dict[str, Any] = field(default_factory=dict)  # fields of the preset to change


@dataclass
class ModelConfig:
    encoder: str = "resnet50"  # the encoder network (hscl.models.ENCODERS)
    projection_dim: int = 128  # width d of the embeddings z the loss sees
    hidden_dim: int = 512  # hidden width of the projection head (encoder -> hidden -> d)
    normalization: str = "sphere"  # the output normalisation: unit sphere, unit ball, or none
    stem: str | None = None  # resnets: "cifar" (default) or "imagenet"
    widths: list[int] | None = None  # convnet: channels of its four blocks (default 32, 64, 128, 256)


@dataclass
class LossConfig:
    method: str = "h-scl"  # the loss (hscl.losses.METHODS)
    temperature: float = 0.5  # gamma: the similarities are divided by it
    #: exponential tilting exp(beta g), beta >= 0; or "auto": beta chosen at every step by
    #: hscl.hardening.AutoExponential(auto_target) (its per-epoch mean is logged as the "beta" column)
    beta: float | typing.Literal["auto"] | None = None
    tau: float | None = None  # threshold hardening 1[e^g >= tau], tau > 0 (hscl.hardening.Threshold)
    #: eq. (4): linear threshold schedule (start, end) cosine cuts; overrides tau
    tau_schedule: list[float] | None = None
    M: float | str | None = None  # eq. (3)'s M: None (rows - 2), a number, or "count" (|N(r)|)
    tau_plus: float = 0.0  # class prior of the debiasing (ucl, h-ucl; 0: none)
    chunk_size: int | None = None  # anchors per block: O(chunk x rows) memory (None: all at once)
    base_temperature: float | None = None  # supcon only
    #: rows of past batches kept as extra candidates (a FIFO of the K most recent rows, detached, with their
    #: labels; never anchors); 0: no memory. ucl, h-ucl, scl, h-scl and schane take it
    memory_size: int = 0
    #: training steps (loss calls) before the memory is used; it fills during them
    memory_warmup_steps: int = 0
    #: beta: auto: the target mean over anchors of ESS(e^{(1+beta) g}) / ESS(e^g), in (0, 1] (1: beta = 0;
    #: smaller: harder); see hscl.hardening.AutoExponential
    auto_target: float = 0.5
    #: beta: auto: the beta used is the EMA over steps of the solved ones, in [0, 1) (0: each step's own)
    auto_momentum: float = 0.9
    #: beta: auto: training steps at beta = 1 before the automatic choice takes over (hscl.engine.pretrain.auto_beta)
    auto_warmup_steps: int = 20


@dataclass
class TrainConfig:
    epochs: int = 200  # pre-training epochs, >= 1
    batch_size: int = 512  # the global batch (samples; rows = views x samples), >= 2
    lr: float = 1e-3  # Adam's learning rate, > 0
    weight_decay: float = 1e-6  # Adam's weight decay
    seed: int = 0  # seed of the weights, the augmentations and the batches
    #: "auto" (a rule of the hardware, not of its load -- CPU: bf16-mixed where it has native bf16, amx_bf16 or
    #: avx512_bf16, else 32; CUDA: bf16-mixed on GPUs with native bf16, compute capability >= 8.0, else fp16-mixed
    #: with gradient scaling), "fastest" (CPU: the fastest of a few timed steps; CUDA: as auto), "bf16", "16"
    #: (fp16-mixed, CUDA only), "32" (float32; TF32 tensor cores on CUDA); see hscl.engine.runtime.precision
    precision: str = "auto"
    channels_last: bool | None = None  # None: with the precision (CPU: with bf16; CUDA: on, for convnets)
    #: Lightning's deterministic flag. None (auto): True on the CPU (--resume reaches the very weights of an
    #: uninterrupted run), False on GPUs (cuDNN autotuning and non-deterministic kernels: faster; a resumed run
    #: continues from the exact saved state but is not bit-identical to an uninterrupted one)
    deterministic: bool | None = None
    #: weighted kNN monitor on encoder features, every epoch (0 disables)
    knn_k: int = 200
    knn_train: int = 10000  # training images the kNN monitor searches
    knn_test: int = 2000  # test images it classifies
    threads: int | None = None  # torch's CPU threads (None: torch's default)
    progress: bool = True  # progress bars on the terminal
    #: data-parallel training (Lightning): processes = devices x num_nodes, each holding a shard of the
    #: global batch of batch_size samples; the loss gathers all shards (hscl.engine.runtime.distributed)
    accelerator: str = "cpu"  # "cpu" (DDP over gloo) or "gpu" (NCCL, SyncBatchNorm)
    devices: int = 1  # processes per node (CPU) or GPUs per node
    num_nodes: int = 1  # machines, each running devices processes
    strategy: str = "auto"  # Lightning strategy: auto (DDP when devices x num_nodes > 1), ddp, ddp_spawn, ddp_fork


@dataclass
class EvalConfig:
    """``eval``: the linear probe (``linear_epochs``, ``linear_lr``, ``linear_batch_size``), the kNN's ``knn_k``,
    and ``val_fraction``, the share of the training split held out as validation data (0: none)."""

    linear_epochs: int = 60  # epochs of the linear probe on frozen encoder features
    linear_lr: float = 1e-3  # its learning rate
    linear_batch_size: int = 1024  # its batch size
    knn_k: int = 200  # neighbours of the final weighted kNN classifier
    #: share of the training split held out as validation data (stratified, the same images for every training
    #: seed: :func:`hscl.engine.pretrain.datamodule.split_data`); excluded from pre-training and from the probe's
    #: training
    #: data, it gives the ``val_*`` metrics of :func:`hscl.engine.evaluation.probes.evaluate_task`. 0: none
    val_fraction: float = 0.0


@dataclass
class DiagnosticsConfig:
    """Per-epoch geometry diagnostics (:mod:`hscl.geometry`) on a fixed, seeded probe set."""

    enabled: bool = True  # compute the diagnostics (false: skip them)
    #: samples in the probe set (a stratified subset of the training split, two augmented views each)
    probe_size: int = 512
    #: hardening for the loss quartet / Assumption 1 / alphas; default: the run's own hardening
    #: (the threshold in force that epoch under a schedule), or exponential tilting beta = 1
    beta: float | None = None
    tau: float | None = None  # or a threshold tau > 0 (at most one of beta and tau)
    #: evaluate every this many epochs (and always at the last one)
    every: int = 1


@dataclass
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


#: a decimal number as text, scientific notation included: 3, -0.5, .5, 1e-3, 5E-4, +1e3, 2.5e+1
_NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _number(value: Any) -> int | float | None:
    """``value`` as an int or float: a number (not a bool), or a string spelling a decimal number, such as
    ``"1e-3"`` (YAML 1.1, hence ``yaml.safe_load``, reads ``1e-3`` as a string); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML / command-line value to ``annotation``, or raise naming ``where``.

    A float field takes any number, or a string spelling one (``"1e-3"``, ``"5E-4"``, ``"-2.5e-1"``). An int
    field takes an integer, or a number / numeric string with an integral value (``1e2`` -> 100, ``1E4`` ->
    10000); a fractional value (``1e-3``, ``1.5e0``, ``0.5``) is refused. Anything else raises naming the key.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"{where}: {value!r} is not a valid value ({'; '.join(errors)})")
    if origin is typing.Literal:  # e.g. loss.beta: "auto"
        allowed = typing.get_args(annotation)
        if isinstance(value, str) and value in allowed:
            return value
        raise ValueError(f"{where} must be {' or '.join(map(str, allowed))}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return config_from_dict(value, annotation, where)
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        number = _number(value)
        if isinstance(number, float):
            # 1e2 or 100.0 (integral, exactly representable) -> 100; 1e-3 or 1.5e0 -> refused
            if math.isfinite(number) and number.is_integer() and abs(number) <= 2**53:
                return int(number)
            number = None
        if number is None:
            raise TypeError(f"{where} must be an integer, got {value!r}")
        return number
    if annotation is float:
        number = _number(value)
        if number is None:
            raise TypeError(f"{where} must be a number, got {value!r}")
        return float(number)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. precision 32 from YAML / the command line
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        return value
    return value


def config_from_dict(data: dict | None, cls=RunConfig, where: str = "config"):
    """Build ``cls`` from a nested mapping; unknown keys raise ``ValueError``."""
    data = data or {}
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types_)}")
    kwargs = {name: _coerce(value, types_[name], f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads scientific notation as a float, as YAML 1.2 does.

    YAML 1.1 (PyYAML) resolves a float only with a dot and a signed exponent (``1.0e-3``), so ``1e-3``,
    ``5E-4`` and ``1e3`` load as strings; here they (and ``+1e3``, ``-2.5e-1``) load as floats. Everything
    else is the safe loader's: no Python objects are built.
    """


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` with :class:`YamlLoader`: ``load_yaml("lr: 1e-3") == {"lr": 0.001}``."""
    return yaml.load(stream, Loader=YamlLoader)  # a SafeLoader subclass: builds no Python objects


def _parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (``5``, ``0.5``, ``1e-3``, ``null``, ``[-0.5, 0.1]``)."""
    return load_yaml(text)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: what is wrong and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides to a nested mapping (a copy)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = _parse_value(text)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults) and apply ``key=value`` overrides; validated."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = load_yaml(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(err)}") from None
        if data is None:  # an empty file (or only comments): most likely not what was meant to run
            raise ValueError(
                f"config file {str(path)!r} is empty (no keys); write the keys to change, or leave out --config "
                "to run the defaults"
            )
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    config = config_from_dict(data)
    validate_config(config)
    return config


def validate_config(config: RunConfig) -> None:
    """Checks that need more than types: choices and ranges, with clear messages."""
    from hscl.losses import METHODS

    if config.loss.method not in METHODS:
        raise ValueError(f"loss.method {config.loss.method!r} is unknown; valid: {', '.join(METHODS)}")
    if config.data.pair_mode not in ("auto", "instance", "same_label"):
        raise ValueError(f"data.pair_mode must be auto, instance or same_label, got {config.data.pair_mode!r}")
    if config.data.views < 2:
        raise ValueError(f"data.views must be >= 2, got {config.data.views}")
    if config.train.epochs < 1:
        raise ValueError(f"train.epochs must be >= 1, got {config.train.epochs}")
    if config.train.batch_size < 2:
        raise ValueError(f"train.batch_size must be >= 2, got {config.train.batch_size}")
    if config.train.precision not in PRECISION_SETTINGS:
        allowed = ", ".join(PRECISION_SETTINGS)
        raise ValueError(f"train.precision must be one of {allowed}, got {config.train.precision!r}")
    if config.train.precision == "16" and config.train.accelerator != "gpu":
        raise ValueError("train.precision=16 (fp16-mixed) needs train.accelerator=gpu; on the CPU use auto, bf16 or 32")
    if not config.train.lr > 0:
        raise ValueError(f"train.lr must be > 0, got {config.train.lr}")
    tc = config.train
    if tc.accelerator not in ("cpu", "gpu"):
        raise ValueError(f"train.accelerator must be cpu or gpu, got {tc.accelerator!r}")
    if tc.devices < 1 or tc.num_nodes < 1:
        raise ValueError(f"train.devices and train.num_nodes must be >= 1, got {tc.devices} and {tc.num_nodes}")
    if tc.strategy not in ("auto", "ddp", "ddp_spawn", "ddp_fork"):
        raise ValueError(f"train.strategy must be auto, ddp, ddp_spawn or ddp_fork, got {tc.strategy!r}")
    if tc.batch_size < tc.devices * tc.num_nodes:
        raise ValueError(
            f"train.batch_size ({tc.batch_size}) is the global batch, split over devices x num_nodes = "
            f"{tc.devices * tc.num_nodes} processes; it must be at least that"
        )
    _validate_loss_extensions(config)
    if config.loss.tau_schedule is not None and len(config.loss.tau_schedule) != 2:
        raise ValueError(f"loss.tau_schedule must be [start, end], got {config.loss.tau_schedule}")
    given = [k for k in ("beta", "tau", "tau_schedule") if getattr(config.loss, k) is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of loss.beta, loss.tau, loss.tau_schedule; got {', '.join(given)}")
    if not 0 <= config.eval.val_fraction < 1:
        raise ValueError(
            f"eval.val_fraction must lie in [0, 1) (0: no validation split), got {config.eval.val_fraction}"
        )
    dc = config.diagnostics
    if dc.probe_size < 4:
        raise ValueError(f"diagnostics.probe_size must be >= 4, got {dc.probe_size}")
    if dc.every < 1:
        raise ValueError(f"diagnostics.every must be >= 1, got {dc.every}")
    if dc.beta is not None and dc.tau is not None:
        raise ValueError("give at most one of diagnostics.beta and diagnostics.tau")
    if dc.beta is not None and dc.beta < 0:
        raise ValueError(f"diagnostics.beta must be >= 0, got {dc.beta}")
    if dc.tau is not None and not dc.tau > 0:
        raise ValueError(f"diagnostics.tau must be > 0, got {dc.tau}")
    if config.model.normalization not in ("sphere", "ball", "none"):
        raise ValueError(f"model.normalization must be sphere, ball or none, got {config.model.normalization!r}")
    from hscl.losses import loss_kwargs

    for key in ("tau_plus", "base_temperature"):  # options only some methods take
        value = getattr(config.loss, key)
        if value and not loss_kwargs(config.loss.method, {key: value}):
            raise ValueError(f"loss.{key} does not apply to method {config.loss.method!r}")
    if given and not METHODS[config.loss.method].hardened:
        raise ValueError(f"loss.{given[0]} is a hardening; method {config.loss.method!r} has none")


def _validate_loss_extensions(config: RunConfig) -> None:
    """``loss.beta`` (a number >= 0 or ``auto``), ``loss.auto_*`` and the memory keys."""
    from hscl.losses import METHODS, loss_kwargs

    lc = config.loss
    if isinstance(lc.beta, float) and not (math.isfinite(lc.beta) and lc.beta >= 0):
        raise ValueError(f"loss.beta must be a number >= 0 or auto, got {lc.beta}")
    if not (math.isfinite(lc.auto_target) and 0 < lc.auto_target <= 1):
        raise ValueError(f"loss.auto_target must lie in (0, 1], got {lc.auto_target}")
    if not (math.isfinite(lc.auto_momentum) and 0 <= lc.auto_momentum < 1):
        raise ValueError(f"loss.auto_momentum must lie in [0, 1) (0: no smoothing), got {lc.auto_momentum}")
    if lc.auto_warmup_steps < 0:
        raise ValueError(f"loss.auto_warmup_steps must be >= 0 (training steps at beta 1), got {lc.auto_warmup_steps}")
    if lc.memory_size < 0:
        raise ValueError(f"loss.memory_size must be >= 0 (0: no memory), got {lc.memory_size}")
    if lc.memory_warmup_steps < 0:
        raise ValueError(f"loss.memory_warmup_steps must be >= 0, got {lc.memory_warmup_steps}")
    if lc.memory_warmup_steps and not lc.memory_size:
        raise ValueError("loss.memory_warmup_steps needs a memory: set loss.memory_size > 0")
    if lc.memory_size and not loss_kwargs(lc.method, {"memory_size": lc.memory_size}):
        takes = [name for name in METHODS if loss_kwargs(name, {"memory_size": 1})]
        raise ValueError(
            f"loss.memory_size does not apply to method {lc.method!r}; methods with a memory: "
            f"{', '.join(takes) or 'none in this version of hscl.losses'}"
        )
