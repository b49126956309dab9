"""One precision per table: the numerics record of every cell of an ``hscl reproduce`` table, and the check
that they agree.

Every cell (a trained run) records the numerics it used (:func:`hscl.engine.runtime.precision.numerics_record`, in its
``train_summary.json``). :func:`table_numerics` gathers them; a table whose cells trained in different
precisions is refused, naming the cells and their precisions, unless every cell's precision was pinned
(``train.precision`` bf16, 16 or 32, by the preset or by ``--set``), in which case the table says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from hscl.engine.runtime.precision import describe_numerics

__all__ = ["PINNED_SETTINGS", "numerics_footer", "run_numerics", "table_numerics"]

#: the precision settings that pin a precision (``auto`` and ``fastest`` choose one)
PINNED_SETTINGS = ("bf16", "16", "32")


def run_numerics(run_dir: str | Path) -> dict:
    """The numerics record of a finished training run: ``train_summary.json``'s ``numerics``; for a run written
    before hscl recorded them, what ``precision.json`` holds (``setting`` None: unknown, so not pinned)."""
    run_dir = Path(run_dir)
    summary = run_dir / "train_summary.json"
    if summary.exists():
        stored = json.loads(summary.read_text())
        if "numerics" in stored:
            return stored["numerics"]
    choice = run_dir / "precision.json"
    if choice.exists():
        stored = json.loads(choice.read_text())
        return {"setting": None, "precision": stored.get("precision"), "channels_last": stored.get("channels_last")}
    return {"setting": None, "precision": None}


def table_numerics(cells: dict[str, dict], what: str = "this table") -> dict:
    """The numerics of a table from ``{cell name: numerics record}``: ``precision`` (the one precision, or
    ``"pinned per cell"``), ``pinned`` (every cell's setting was bf16, 16 or 32), ``by_precision`` (precision
    -> cells), ``cells`` (the records) and ``label`` (one line for the table's title).

    Raises ValueError (one line naming the cells and their precisions) when the cells trained in different
    precisions and not every cell pinned its precision.
    """
    if not cells:
        raise ValueError(f"{what}: no cells to build a table from")
    by_precision: dict[str, list[str]] = {}
    for name, record in cells.items():
        by_precision.setdefault(str(record.get("precision") or "unknown"), []).append(name)
    pinned = all(record.get("setting") in PINNED_SETTINGS for record in cells.values())
    listing = "; ".join(f"{precision}: {', '.join(names)}" for precision, names in by_precision.items())
    if len(by_precision) > 1 and not pinned:
        raise ValueError(
            f"{what}: its cells trained in different precisions ({listing}); a table needs one precision: rerun "
            "into a new --out with one (e.g. --set train.precision=32), or pin each cell's train.precision"
        )
    first = next(iter(cells.values()))
    if len(by_precision) == 1:
        precision = next(iter(by_precision))
        label = f"precision {describe_numerics(first)} in all {len(cells)} cells"
        if pinned:
            label += " (pinned)"
        machines = {record.get("gpu") or record.get("cpu") for record in cells.values()}
        if len(machines) > 1:
            label += f", on {len(machines)} machines (results.json names each cell's)"
    else:
        precision = "pinned per cell"
        label = f"precision pinned per cell, not one for the table ({listing})"
    return {
        "precision": precision,
        "pinned": pinned,
        "by_precision": by_precision,
        "cells": cells,
        "label": label,
    }


def numerics_footer(numerics: dict) -> str:
    """The Markdown line a table ends with: its precision (:func:`table_numerics`'s ``label``)."""
    return f"Numerics: {numerics['label']}."
