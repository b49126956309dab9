"""Reading checkpoint and weights files safely, with one clear line when a file is not what it should be.

Every command that reads a file of weights (``hscl evaluate``, ``hscl diagnose``, ``hscl finetune``,
``hscl train --resume``) goes through :func:`load_checkpoint`, which

1. checks that the file exists and is a PyTorch file (the zip archive ``torch.save`` writes, complete and with
   matching CRCs, or a legacy pickle stream), without unpickling anything;
2. loads it weights-only (``torch.load(..., weights_only=True)``): tensors and plain Python values only, so
   a file whose pickle would build other objects (and could run code doing so) is refused, never executed;
3. checks that it holds what the command needs (``expect``): a checkpoint of ``hscl train``, one that can be
   resumed, a state_dict, or a fine-tuning state.

A file that fails raises :class:`CheckpointError` (a ``ValueError``) with one line naming the file and what is
wrong; the command line prints it and exits with code 2. :func:`check_weights` says in one line how a
state_dict does not fit a model (missing, unexpected, differently shaped tensors).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "MissingCheckpointError",
    "EXPECT",
    "check_file",
    "load_checkpoint",
    "check_weights",
    "keep_previous",
    "check_resumable",
]

#: what ``load_checkpoint(..., expect=...)`` checks the content for
EXPECT = {
    "task": "a checkpoint of `hscl train` (final.ckpt or checkpoints/last.ckpt)",
    "resume": "a checkpoint of `hscl train` with its training state (checkpoints/last.ckpt)",
    "weights": "a checkpoint of `hscl train` or the state_dict of an hscl image model",
    "finetune": "the state of an interrupted `hscl finetune` run (finetune_last.pt)",
    "any": "a PyTorch file",
}

#: the hyper-parameters a ContrastiveTask is rebuilt from
TASK_HPARAMS = ("config", "in_channels", "image_size", "num_classes")
#: what Lightning needs to continue a fit
RESUME_KEYS = ("epoch", "global_step", "loops", "optimizer_states")
FINETUNE_KEYS = ("config", "model", "optimizer", "scheduler", "epoch", "history", "seconds")


class CheckpointError(ValueError):
    """A checkpoint / weights file that cannot be used; the message is one line naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``, as callers of the loaders caught before)."""


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _what_it_is(head: bytes) -> str:
    """A guess at what a file that is not a PyTorch file holds, from its first bytes."""
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON"
    if stripped[:5].lower() in (b"<?xml", b"<html", b"<!doc"):
        return "it looks like HTML / XML"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file"
    if head.startswith(b"\x93NUMPY"):
        return "it is a NumPy .npy file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8].hex(' ')}"
    if all(c.isprintable() or c.isspace() for c in text):
        return "it is a text file"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def check_file(path: str | Path) -> Path:
    """Check, without unpickling anything, that ``path`` is a complete PyTorch file; returns it as a Path.

    The zip archive of ``torch.save`` must be whole (its directory at the end is what a truncated copy or an
    interrupted write loses) and every member must match its CRC.
    """
    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise CheckpointError(
                f"{path}: truncated or damaged ({size} bytes): the zip archive torch writes is incomplete "
                f"({_one_line(err)}); was the copy or the write interrupted?"
            ) from err
        if bad is not None:
            raise CheckpointError(f"{path}: damaged: the member {bad} does not match its checksum (CRC)")
        if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
            raise CheckpointError(f"{path}: a zip archive, but not a PyTorch file (no data.pkl inside)")
        return path
    if head[:1] == b"\x80":  # a pickle stream: torch's legacy format (or a plain pickle)
        return path
    raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_what_it_is(head)})")


def _safe_globals() -> list:
    """The few non-builtin types a Lightning checkpoint may hold besides tensors (plain containers)."""
    extra: list = []
    try:
        from lightning.fabric.utilities.data import AttributeDict

        extra.append(AttributeDict)
    except ImportError:  # pragma: no cover - Lightning is a dependency of the engine
        pass
    return extra


def _weights_only_load(path: Path, map_location: Any) -> Any:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before, plain types only
    try:
        with allow(_safe_globals()) if allow else contextlib.nullcontext(), warnings.catch_warnings():
            # a plain pickle stream of protocol > 2: torch warns before refusing or reading it
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "weights_only" in message or "Weights only load failed" in message:
            found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global[: ]+([\w.]+)", message)
            what = f" (it needs {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: it holds pickled Python objects{what}, and building them could run code; "
                "hscl loads checkpoints weights-only (tensors and plain values)"
            ) from err
        raise CheckpointError(f"{path}: damaged: cannot be unpickled ({_one_line(err)})") from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: truncated or damaged: torch cannot read it ({_one_line(err)})") from err


def _tensor_map(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _graph_hint(state: Mapping) -> str:
    keys = [str(k) for k in state]
    if any(".convs." in f".{k}" or "global_head." in k or "local_head." in k for k in keys):
        return " (the parameter names of a graph model, GIN / InfoGraph, not of an image model)"
    return ""


def _keys(obj: Mapping, n: int = 4) -> str:
    keys = list(obj)
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def _kind(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"a mapping with keys {_keys(obj)}" if obj else "an empty mapping"
    return f"a {type(obj).__name__}"


def _finetuned(state: Mapping) -> bool:
    """Whether ``state`` is the ``model.pt`` of ``hscl finetune``: an hscl model under ``model.`` and a linear
    ``classifier``."""
    keys = [str(k) for k in state]
    return "classifier.weight" in keys and any(k.startswith("model.encoder.") for k in keys)


def _check_task(obj: object, path: Path) -> None:
    if _tensor_map(obj) and _finetuned(obj):
        raise CheckpointError(
            f"{path}: the weights of a `hscl finetune` model (an encoder with a linear classifier of "
            f"{obj['classifier.weight'].shape[0]} classes), not a checkpoint of `hscl train`: its test accuracy is in "
            "result.json beside it; evaluate and diagnose take a pre-training checkpoint (final.ckpt of `hscl train`)"
        )
    if _tensor_map(obj):
        raise CheckpointError(
            f"{path}: a state_dict of {len(obj)} tensors ({_keys(obj, 3)}){_graph_hint(obj)}, not a checkpoint "
            "of `hscl train` (it has no run config); `hscl finetune` takes state_dicts of hscl image models"
        )
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "hyper_parameters" not in obj:
        raise CheckpointError(
            f"{path}: a PyTorch file, but not a checkpoint of `hscl train`: it holds {_kind(obj)} "
            "(expected state_dict and hyper_parameters)"
        )
    hparams = obj["hyper_parameters"]
    missing = [k for k in TASK_HPARAMS if not isinstance(hparams, Mapping) or k not in hparams]
    if missing:
        raise CheckpointError(
            f"{path}: a Lightning checkpoint of another model: its hyper_parameters lack {', '.join(missing)} "
            "(a checkpoint of `hscl train` records its run config there)"
        )
    if not isinstance(hparams["config"], Mapping):
        raise CheckpointError(f"{path}: its hyper_parameters.config is {_kind(hparams['config'])}, not a run config")
    if not _tensor_map(obj["state_dict"]):
        raise CheckpointError(f"{path}: its state_dict is {_kind(obj['state_dict'])}, not a mapping of tensors")


def _check_content(obj: object, path: Path, expect: str) -> None:
    if expect == "any":
        return
    if expect in ("task", "resume"):
        _check_task(obj, path)
        if expect == "resume":
            missing = [k for k in RESUME_KEYS if k not in obj]
            if missing:
                raise CheckpointError(
                    f"{path}: holds weights but not the training state a resume needs (no {', '.join(missing)})"
                )
        return
    if expect == "weights":
        if isinstance(obj, Mapping) and "hyper_parameters" in obj and "state_dict" in obj:
            _check_task(obj, path)
            return
        state = obj["state_dict"] if isinstance(obj, Mapping) and _tensor_map(obj.get("state_dict")) else obj
        if not _tensor_map(state):
            raise CheckpointError(
                f"{path}: a PyTorch file, but neither a checkpoint of `hscl train` nor a state_dict: it holds "
                f"{_kind(obj)}"
            )
        hint = _graph_hint(state)
        if hint:
            raise CheckpointError(f"{path}: not the weights of an hscl image model{hint}")
        return
    if expect == "finetune":
        missing = [k for k in FINETUNE_KEYS if not isinstance(obj, Mapping) or k not in obj]
        if missing:
            raise CheckpointError(
                f"{path}: not the state of a fine-tuning run: it holds {_kind(obj)} (no {', '.join(missing)})"
            )
        return
    raise ValueError(f"expect must be one of {', '.join(EXPECT)}, got {expect!r}")


def load_checkpoint(path: str | Path, *, expect: str = "task", map_location: Any = "cpu") -> Any:
    """Load ``path`` weights-only after checking it is a whole PyTorch file holding ``expect``.

    ``expect``: ``"task"`` (a checkpoint of ``hscl train``: ``state_dict`` + ``hyper_parameters`` with the run
    config), ``"resume"`` (the same, with the optimizer and loop state Lightning resumes from), ``"weights"``
    (such a checkpoint, or a state_dict of tensors), ``"finetune"`` (``finetune_last.pt``), ``"any"``.
    Raises :class:`CheckpointError` (one line naming the file) when the file is missing, not a checkpoint,
    truncated or damaged, holds pickled objects other than tensors and plain values, or holds something else.
    """
    if expect not in EXPECT:
        raise ValueError(f"expect must be one of {', '.join(EXPECT)}, got {expect!r}")
    path = check_file(path)
    obj = _weights_only_load(path, map_location)
    _check_content(obj, path, expect)
    return obj


def check_weights(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str = "the model") -> None:
    """Raise :class:`CheckpointError` saying in one line how ``state`` does not fit ``model`` (strict)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    raise CheckpointError(f"{path}: the weights do not fit {what}{_graph_hint(state)}: {'; '.join(parts)}")


def keep_previous(paths) -> None:
    """Keep a run's current ``last.ckpt``, when whole, as ``previous.ckpt`` before it is replaced (``paths``:
    a :class:`hscl.engine.pretrain.run.RunPaths`): a hard link (no copy: the new ``last.ckpt`` is a new file) or,
    where links are not supported, a copy."""
    if not paths.last.exists():
        return
    try:
        check_file(paths.last)
    except CheckpointError:
        return  # damaged: previous.ckpt keeps the last good one
    tmp = paths.previous.with_suffix(".ckpt.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(paths.last, tmp)
    except OSError:
        shutil.copyfile(paths.last, tmp)
    os.replace(tmp, paths.previous)


def check_resumable(paths) -> dict:
    """The loaded ``last.ckpt`` of a run, or :class:`CheckpointError` saying it is damaged and naming the last
    good checkpoint kept (``previous.ckpt``) if there is one."""
    try:
        return load_checkpoint(paths.last, expect="resume")
    except CheckpointError as err:
        hint = "no other checkpoint is kept"
        if paths.previous.exists():
            try:
                good = load_checkpoint(paths.previous, expect="resume")
            except CheckpointError:
                hint = f"{paths.previous} is damaged too"
            else:
                hint = (
                    f"the last good checkpoint is {paths.previous} (end of epoch {good['epoch'] + 1}): copy it over "
                    f"last.ckpt (cp {paths.previous} {paths.last}) and --resume again"
                )
        raise CheckpointError(f"cannot resume: {err}; {hint}") from err
