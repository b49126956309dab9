"""How outputs name files: never by the measuring machine's absolute path.

A ``results.json`` is read on other machines, next to the repository it is published in; a path such as
``/tmp/x/src/hscl/experiments/configs/table1/quick/ucl.yaml`` says where one machine kept its files and nothing
a reader can use. :func:`portable_path` gives what outputs record instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRESETS", "portable_path"]

#: the presets shipped inside the package (``hscl/experiments/configs``)
PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def portable_path(path: str | os.PathLike, *roots: str | os.PathLike) -> str:
    """The name an output records for ``path`` (``/`` separators), relative to the first folder holding it of:

    - the presets shipped with hscl: ``table1/quick/ucl.yaml``, a name ``hscl train --config`` accepts as it is;
    - ``roots``, in order (a ``--configs`` folder of presets, the folder of the run that writes the output);
    - the working directory.

    A path in none of them is named by its file name alone.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a non-empty str or os.PathLike, got {path!r}")
    resolved = Path(path).resolve()
    for root in (PRESETS, *roots, Path.cwd()):
        base = Path(root).resolve()
        if resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix() or "."
    return resolved.name
