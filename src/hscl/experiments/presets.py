"""The one lookup of experiment presets: YAML files shipped inside the package, or a user's own folder.

The presets live in ``hscl/experiments/configs/`` and are package data, found through
``importlib.resources`` whether hscl is installed from a wheel, editable, or run from a clone. Every
command that takes ``--preset`` resolves it here; ``--configs DIR`` puts a user's folder (same layout:
``DIR/table1/<preset>/``, ``DIR/figures/<name>/``, ``DIR/table2/<preset>.yaml``,
``DIR/schane/<preset>.yaml``, ``DIR/extensions/<experiment>/<preset>.yaml``) in front of the packaged one.

Layout per suite:

- ``table1``: a folder per preset holding one run config per method (``ucl.yaml``, ``h-scl-beta.yaml``, ...).
- ``figures``: a folder per experiment holding ``base.yaml`` and ``runs.yaml``.
- ``table2`` and ``schane``: one YAML file per preset.
- ``extensions/<experiment>`` (``multilabel``, ``small-batch``, ``auto-beta``: the experiments of
  :mod:`hscl.experiments.extensions`, which checks the name): one YAML file per preset.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = [
    "NESTED_SUITES",
    "SUITES",
    "find_preset",
    "list_presets",
    "packaged_configs",
    "preset_roots",
    "resolve_config",
]

#: suite -> "dir" (a preset is a folder) or "file" (a preset is ``<name>.yaml``)
SUITES = {"table1": "dir", "figures": "dir", "table2": "file", "schane": "file"}

#: families of suites with one sub-folder per experiment: ``<family>/<experiment>`` is a suite of this kind
NESTED_SUITES = {"extensions": "file"}

#: files a ``figures`` preset folder must hold
_FIGURE_FILES = ("base.yaml", "runs.yaml")


def packaged_configs() -> Path:
    """The folder of presets shipped with the installed package."""
    root = resources.files("hscl.experiments").joinpath("configs")
    return Path(str(root))


def preset_roots(configs: str | Path | None = None) -> list[Path]:
    """Where presets are looked up, in order: ``configs`` (a user's folder) first, then the packaged ones."""
    roots = []
    if configs is not None:
        folder = Path(configs)
        if not folder.is_dir():
            raise ValueError(
                f"--configs {configs}: not a folder (expected DIR/table1/<preset>/, DIR/table2/<preset>.yaml, ...)"
            )
        roots.append(folder)
    roots.append(packaged_configs())
    return roots


def _kind(suite: str) -> str:
    """``"dir"`` or ``"file"``: how the presets of ``suite`` are stored; ValueError for an unknown suite."""
    if suite in SUITES:
        return SUITES[suite]
    family, _, experiment = suite.partition("/")
    if family in NESTED_SUITES and _is_plain(experiment):
        return NESTED_SUITES[family]
    allowed = [*SUITES, *(f"{family}/<experiment>" for family in NESTED_SUITES)]
    raise ValueError(f"unknown preset suite {suite!r}; allowed: {', '.join(allowed)}")


def _is_plain(name: object) -> bool:
    """A plain file name: no folder separator, not hidden, not empty."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _candidate(root: Path, suite: str, preset: str) -> Path:
    return root / suite / (preset if _kind(suite) == "dir" else f"{preset}.yaml")


def _is_preset(path: Path, suite: str) -> bool:
    if _kind(suite) == "file":
        return path.is_file()
    if suite == "figures":
        return all((path / name).is_file() for name in _FIGURE_FILES)
    return path.is_dir() and any(path.glob("*.yaml"))


def list_presets(suite: str, configs: str | Path | None = None) -> list[str]:
    """Names of the presets of ``suite`` found in ``configs`` and in the package."""
    kind = _kind(suite)
    names = set()
    for root in preset_roots(configs):
        folder = root / suite
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name if kind == "dir" else path.stem
            if _is_preset(path, suite) and (kind == "dir" or path.suffix == ".yaml"):
                names.add(name)
    return sorted(names)


def find_preset(suite: str, preset: str, configs: str | Path | None = None) -> Path:
    """The folder (``table1``, ``figures``) or YAML file (``table2``, ``schane``, ``extensions/<experiment>``)
    of a preset.

    Raises ``ValueError`` naming the places looked in and the presets available.
    """
    _kind(suite)
    if not _is_plain(preset):
        raise ValueError(f"--preset {preset!r}: a preset is a plain name such as 'quick'")
    tried = []
    for root in preset_roots(configs):
        path = _candidate(root, suite, preset)
        tried.append(str(path))
        if _is_preset(path, suite):
            return path
    available = ", ".join(list_presets(suite, configs)) or "none found"
    raise ValueError(f"unknown preset {preset!r} for {suite}; looked in {', '.join(tried)}; available: {available}")


def resolve_config(path: str | Path | None) -> Path | None:
    """A run config given to ``hscl train`` / ``hscl sweep``: a file, else a packaged one by its name.

    ``table1/quick/h-scl-beta`` (or with ``.yaml``) names
    ``hscl/experiments/configs/table1/quick/h-scl-beta.yaml`` of the installed package; a path that exists
    is used as it is. Raises ``ValueError`` when neither exists.
    """
    if path is None:
        return None
    given = Path(path)
    if given.is_file():
        return given
    root = packaged_configs()
    for candidate in (root / given, root / given.with_name(given.name + ".yaml")):
        if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
            return candidate
    raise ValueError(
        f"--config {path}: no such file, nor a packaged config of that name "
        f"(e.g. table1/quick/h-scl-beta; the packaged ones are under {root})"
    )
