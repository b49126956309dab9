"""The Configuration page's tables, generated from the run config dataclasses of ``hscl.engine.runtime.config``.

Every ``--set`` key (``section.key``) of :class:`hscl.engine.runtime.config.RunConfig` is listed with its type, its
default (the dataclass's), the values it allows and its meaning. The meaning is the field's comment in
``src/hscl/engine/runtime/config.py``: the ``#:`` lines above the field, a ``#`` comment at the end of its line, or a
string right below it; a section's introduction is its class docstring. The allowed values of a choice come from
the constants the code checks against (``hscl.losses.METHODS``, ``PRECISION_SETTINGS``, the encoder, dataset and
augmentation registries) or, for the few choices and ranges written out in ``validate_config``, from
:data:`CHOICES` and :data:`RANGES` (the tests load every value listed here, and a value on the wrong side of
each bound, through ``load_config``).

The MkDocs hook (``docs/hooks.py``) replaces the line ``<!-- config-reference -->`` of a page by
:func:`render`, so the page is rebuilt from the code at every build and cannot drift from it;
``python docs/config_reference.py`` prints the same Markdown.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path

#: the choices that ``validate_config`` spells out in place (the others come from the code's registries)
CHOICES = {
    "data.pair_mode": ("auto", "instance", "same_label"),
    "model.normalization": ("sphere", "ball", "none"),
    "train.accelerator": ("cpu", "gpu"),
    "train.strategy": ("auto", "ddp", "ddp_spawn", "ddp_fork"),
}

#: the ranges ``validate_config`` checks, as (operator, bound) pairs (the tests try a value on each side)
RANGES = {
    "data.views": ((">=", 2),),
    "loss.beta": ((">=", 0),),
    "loss.memory_size": ((">=", 0),),
    "loss.memory_warmup_steps": ((">=", 0),),
    "loss.auto_target": ((">", 0), ("<=", 1)),
    "loss.auto_momentum": ((">=", 0), ("<", 1)),
    "loss.auto_warmup_steps": ((">=", 0),),
    "train.epochs": ((">=", 1),),
    "train.batch_size": ((">=", 2),),
    "train.lr": ((">", 0),),
    "train.devices": ((">=", 1),),
    "train.num_nodes": ((">=", 1),),
    "eval.val_fraction": ((">=", 0), ("<", 1)),
    "diagnostics.probe_size": ((">=", 4),),
    "diagnostics.every": ((">=", 1),),
    "diagnostics.beta": ((">=", 0),),
    "diagnostics.tau": ((">", 0),),
}
#: a Sphinx role (:func:`x`), shown on the page as code
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def registry_choices() -> dict[str, tuple[str, ...]]:
    """The choices read from the code's own registries and constants."""
    from hscl.data.augment import PRESETS
    from hscl.data.images import DATASETS
    from hscl.engine.runtime.config import PRECISION_SETTINGS
    from hscl.losses import METHODS
    from hscl.models import ENCODERS

    return {
        "loss.method": tuple(METHODS),
        "train.precision": tuple(PRECISION_SETTINGS),
        "model.encoder": tuple(ENCODERS),
        "data.dataset": tuple(DATASETS),
        "data.augment": tuple(PRESETS),
    }


def field_comments(cls) -> dict[str, str]:
    """The comment of each field of dataclass ``cls``, read from its source: ``#:`` lines above the field, a
    trailing ``#`` comment, and a string statement right below it, joined in that order."""
    lines, _ = inspect.getsourcelines(cls)  # a top-level class, decorator included
    tree = ast.parse("".join(lines))
    body = tree.body[0].body
    comments: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, row = [], node.lineno - 2  # 0-based index of the line above the field
        while row >= 0 and lines[row].strip().startswith("#:"):
            above.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        parts = [" ".join(above)] if above else []
        tail = re.search(r"\s#\s*(.*)$", lines[node.end_lineno - 1].rstrip())
        if tail:
            parts.append(tail.group(1))
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            parts.append(inspect.cleandoc(after.value.value))
        comments[node.target.id] = _ROLE.sub(r"`\1`", "; ".join(parts)).replace("``", "`")
    return comments


def type_text(annotation) -> str:
    """An annotation as the page shows it: ``int``, ``float | "auto" | null``, ``list[int] | null``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(f'"{v}"' for v in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in typing.get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def value_text(value) -> str:
    """A default as it is written in YAML and ``--set``: ``null``, ``true``, ``0.001``, ``[32, 64]``, ``{}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def allowed_text(key: str, annotation, choices: dict[str, tuple[str, ...]]) -> str:
    """The values ``key`` allows: its choices, ``true`` / ``false``, or what its type takes."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    null = " or null" if type(None) in options else ""
    if key in choices:
        return ", ".join(choices[key]) + null
    if annotation is bool or (options and bool in options):
        return "true, false" + null
    words = {"int": "integer", "float": "number", "str": "string", "null": "null", '"auto"': "auto"}
    text = " or ".join(words.get(part, part) for part in type_text(annotation).split(" | "))
    if key in RANGES:
        number = "integer" if "integer" in text else "number"
        text = text.replace(number, f"{number} " + " and ".join(f"{op} {bound}" for op, bound in RANGES[key]), 1)
    return text


def rows() -> list[tuple[str, str, str, str, str]]:
    """``(key, type, default, allowed, meaning)`` for every ``--set`` key, in the dataclasses' order."""
    from hscl.engine.runtime.config import RunConfig, _field_types

    choices = {**CHOICES, **registry_choices()}
    out = []
    defaults = RunConfig()
    for section in dataclasses.fields(RunConfig):
        cls = type(getattr(defaults, section.name))
        if not dataclasses.is_dataclass(cls):
            continue
        comments, annotations = field_comments(cls), _field_types(cls)
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            default = value_text(getattr(getattr(defaults, section.name), f.name))
            annotation = annotations[f.name]
            out.append((key, type_text(annotation), default, allowed_text(key, annotation, choices), comments[f.name]))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The Markdown of the reference: one table per section (``data``, ``model``, ...), with its introduction."""
    from hscl.engine.runtime.config import RunConfig

    defaults = RunConfig()
    parts = [f"`name` (string, default `{defaults.name}`): the run's name, used in its folder and reports.\n"]
    table = rows()
    for section in dataclasses.fields(RunConfig):
        cls = type(getattr(defaults, section.name))
        if not dataclasses.is_dataclass(cls):
            continue
        # a dataclass without a docstring gets a generated one, its signature: not an introduction
        intro = inspect.cleandoc(cls.__doc__) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__) else ""
        parts.append(f"## `{section.name}`\n")
        if intro:
            parts.append(_ROLE.sub(r"`\1`", intro).replace("``", "`") + "\n")
        parts.append("| key | type | default | allowed | meaning |\n|---|---|---|---|---|")
        for key, type_, default, allowed, meaning in table:
            if key.startswith(section.name + "."):
                cells = (f"`{key}`", f"`{_cell(type_)}`", f"`{_cell(default)}`", _cell(allowed), _cell(meaning))
                parts[-1] += "\n| " + " | ".join(cells) + " |"
        parts[-1] += "\n"
    return "\n".join(parts)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    print(render())
