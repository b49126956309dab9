"""What a sweep is: its grid, its points and their configs, where its study and runs live (:class:`Sweep`).

The modules of the sweep build on this one: the study (:mod:`hscl.engine.sweep.study`), its storage, the results
and the workers (:mod:`hscl.engine.sweep.run`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hscl.engine.runtime.config import RunConfig, load_config, load_yaml
from hscl.engine.sweep.storage import StorageSpec, parse_storage

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "GRID_ALIASES",
    "METRICS",
    "SELECTIONS",
    "STUDY_NAME",
    "Sweep",
    "grid_points",
    "parse_grid",
    "point_overrides",
    "point_slug",
]

#: the name of a sweep's study in its storage (several sweeps may share one database)
STUDY_NAME = "hscl-sweep"
#: short grid names -> config keys; ``tau_start`` / ``tau_end`` set ``loss.tau_schedule`` (eq. (4))
GRID_ALIASES = {
    "beta": "loss.beta",
    "tau": "loss.tau",
    "temperature": "loss.temperature",
    "tau_start": "loss.tau_schedule[0]",
    "tau_end": "loss.tau_schedule[1]",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
}
#: the metrics a default trial reports; the sweep maximises one of them
METRICS = ("linear_top1", "knn_top1", "linear_top5")
#: the split a sweep selects its best point on: the held-out part of the training split, or the test split
SELECTIONS = ("validation", "test")
#: ``eval.val_fraction`` of a sweep selecting on validation data when its config leaves it at 0
DEFAULT_VAL_FRACTION = 0.1
#: each hardening key clears the other two (a config may give only one)
_HARDENING_KEYS = ("loss.beta", "loss.tau", "loss.tau_schedule")


# --------------------------------------------------------------------------------------------
# the grid


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["beta=0.1,0.5", "tau_start=-0.5,-0.3"]`` -> ``{"beta": [0.1, 0.5], "tau_start": [-0.5, -0.3]}``.

    Names are the short aliases of :data:`GRID_ALIASES` or dotted config keys (``loss.temperature``);
    each value is a YAML scalar.
    """
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r} must look like NAME=V1,V2,... (e.g. beta=0.1,0.5,1,2,5)")
        name, text = (part.strip() for part in item.split("=", 1))
        if name not in GRID_ALIASES and "." not in name:
            raise ValueError(
                f"--grid name {name!r} is unknown; use one of {', '.join(GRID_ALIASES)} or a dotted config key "
                "such as loss.temperature"
            )
        if name in grid:
            raise ValueError(f"--grid {name} is given twice")
        try:
            values = [load_yaml(v) for v in text.split(",") if v.strip()]
        except yaml.YAMLError as err:
            raise ValueError(f"--grid {name}: values must be comma-separated scalars, got {text!r}") from err
        if not values:
            raise ValueError(f"--grid {name} has no values")
        for value in values:
            if not isinstance(value, (int, float, str, bool)) or value is None:
                raise ValueError(f"--grid {name}: {value!r} is not a number, string or boolean")
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values) and any(isinstance(v, float) for v in values):
            values = [float(v) for v in values]  # beta=0.1,0.5,1 -> one type: 0.1, 0.5, 1.0
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"--grid {name} repeats a value: {values}")
        grid[name] = values
    if not grid:
        raise ValueError("give at least one --grid NAME=V1,V2,...")
    if ("tau_start" in grid) != ("tau_end" in grid):
        given = "tau_start" if "tau_start" in grid else "tau_end"
        other = "tau_end" if given == "tau_start" else "tau_start"
        raise ValueError(f"--grid {given} needs --grid {other} too (they form loss.tau_schedule = [start, end])")
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first name varying slowest."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def point_overrides(point: dict) -> list[str]:
    """The ``key=value`` config overrides of one grid point (a hardening clears the other two kinds)."""
    out: list[str] = []
    point = dict(point)
    if "tau_start" in point:
        start, end = point.pop("tau_start"), point.pop("tau_end")
        point["loss.tau_schedule"] = [start, end]
    for name, value in point.items():
        key = GRID_ALIASES.get(name, name)
        if key in _HARDENING_KEYS:
            out += [f"{other}=null" for other in _HARDENING_KEYS if other != key]
        out.append(f"{key}={json.dumps(value)}")
    return out


def point_slug(point: dict) -> str:
    """A directory name for a point: ``beta=0.5``, ``tau_start=-0.5_tau_end=0.1``."""
    text = "_".join(f"{name}={value}" for name, value in point.items())
    return "".join(c if c.isalnum() or c in "=-_.+" else "-" for c in text)


# --------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Sweep:
    """One sweep: a base config, its overrides and a grid; where its study and runs live.

    Args:
        config: path of the YAML run config (None: the defaults).
        grid: ``{name: values}`` (see :func:`parse_grid`).
        out: folder of the runs (``<out>/trials/<point>``) and of the results.
        overrides: ``key=value`` overrides applied to every point before the point's own.
        storage: the Optuna storage of the study (see :func:`hscl.engine.sweep.study.parse_storage`):
            a SQLite file (default ``<out>/study.db``) or ``sqlite:///PATH`` for the workers of one machine;
            ``postgresql://USER@HOST/DB``, ``mysql+pymysql://USER@HOST/DB`` or ``journal:PATH`` (a file
            several machines mount) for workers on several machines. Every worker of a sweep gives the same.
        metric: the trial metric the sweep maximises (one of :data:`METRICS` for the default trial).
        select: ``"validation"`` (default): the best point is the one of the best ``val_<metric>`` (the trial's
            score on the held-out part of the training split; ``eval.val_fraction`` is set to
            :data:`DEFAULT_VAL_FRACTION` when the config leaves it at 0, noted in :attr:`notes`), reported with
            its test ``<metric>``; ``"test"``: the best test ``<metric>`` over the grid (the paper's protocol).
        trial: ``"module:function"`` of a trial function ``fn(config, run_dir) -> {metric: value}``;
            None: :func:`train_and_evaluate`.
        stale_after: seconds without a heartbeat after which a RUNNING trial of another machine is
            considered dead (trials of this machine are checked by their process id at once).
        heartbeat: seconds between heartbeats of a running trial.
        study_name: the study's name in the storage (several sweeps may share one database).
    """

    config: str | None
    grid: dict[str, list]
    out: str
    overrides: list[str] = field(default_factory=list)
    storage: str | None = None
    metric: str = "linear_top1"
    trial: str | None = None
    stale_after: float = 300.0
    heartbeat: float = 30.0
    study_name: str = STUDY_NAME
    select: str = "validation"
    #: what the sweep changed on its own (the validation hold-out), printed with its results
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be validation or test, got {self.select!r}")
        if not self.heartbeat > 0 or not self.stale_after > self.heartbeat:
            raise ValueError(
                f"heartbeat must be > 0 and stale_after > heartbeat, got heartbeat={self.heartbeat}, "
                f"stale_after={self.stale_after}"
            )
        if self.trial is None and self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        parse_storage(self.storage, self.out_dir / "study.db")  # a bad --storage fails here, naming its forms
        if self.select == "validation" and self.base_config().eval.val_fraction == 0:
            self.overrides = [*self.overrides, f"eval.val_fraction={DEFAULT_VAL_FRACTION}"]
            self.notes.append(
                f"selecting on validation data: eval.val_fraction={DEFAULT_VAL_FRACTION} ({DEFAULT_VAL_FRACTION:.0%} "
                "of the training split held out, stratified, the same images for every point); set "
                "eval.val_fraction to change it, or select on test for the paper's protocol"
            )

    @property
    def selection_key(self) -> str:
        """The trial metric the best point is chosen on: ``val_<metric>``, or ``<metric>`` when selecting on test."""
        return f"val_{self.metric}" if self.select == "validation" else self.metric

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def storage_spec(self) -> StorageSpec:
        return parse_storage(self.storage, self.out_dir / "study.db")

    @property
    def points(self) -> list[dict]:
        return grid_points(self.grid)

    def run_dir(self, point: dict) -> Path:
        return self.out_dir / "trials" / point_slug(point)

    def base_config(self) -> RunConfig:
        return load_config(self.config, list(self.overrides))

    def point_config(self, point: dict) -> RunConfig:
        """The validated config of one point (raises naming the bad value)."""
        try:
            config = load_config(self.config, [*self.overrides, *point_overrides(point)])
        except (ValueError, TypeError) as err:
            raise ValueError(f"grid point {point_slug(point)}: {err}") from err
        if config.train.devices * config.train.num_nodes > 1:
            raise ValueError(
                "a sweep trial runs in its worker's process (train.devices = train.num_nodes = 1); run points in "
                "parallel with --workers or more workers on the same --storage"
            )
        return config
