"""The engine: Lightning training, graph pre-training, fine-tuning, evaluation, sweeps and reports.

One sub-package per job, each ``__init__`` its public API: ``runtime`` (config, precision, devices and
processes, checkpoints, run folders), ``pretrain``, ``evaluation``, ``finetune``, ``sweep``. It needs the full
set of dependencies (Lightning, kornia, scikit-learn, matplotlib, optuna); the library layer (``hscl``,
``hscl.losses``, ``hscl.hardening``, ``hscl.geometry``) does not import it.

The modules of the engine's earlier flat layout (``hscl.engine.train``, ``hscl.engine.config``, ...) still
import, for one release, as their new modules with a :class:`DeprecationWarning` (:data:`MOVED`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: old module (``hscl.engine.<name>``) -> its module now (``hscl.engine.<room>.<module>``)
MOVED = {
    "auto_beta": "pretrain.auto_beta",
    "checkpoints": "runtime.checkpoints",
    "config": "runtime.config",
    "datamodule": "pretrain.datamodule",
    "distributed": "runtime.distributed",
    "episodes": "finetune.episodes",
    "evaluate": "evaluation.probes",
    "fewshot": "finetune.fewshot",
    "finetune_config": "finetune.config",
    "graph_train": "pretrain.graph_train",
    "monitor": "pretrain.monitor",
    "multilabel": "evaluation.multilabel",
    "paths": "runtime.paths",
    "precision": "runtime.precision",
    "pretrained": "finetune.pretrained",
    "progress": "runtime.progress",
    "report": "evaluation.report",
    "runs": "runtime.runs",
    "torch_flags": "runtime.torch_flags",
    "train": "pretrain.run",
}


class _MovedLoader(importlib.abc.Loader):
    """Loads an old name as the module it moved to (the same module object, not a copy)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return None  # a blank module, replaced in exec_module

    def exec_module(self, module) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.target}; the old name will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        # the import system returns what sys.modules holds for the name after exec_module
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(f"{__name__}.{MOVED[name]}"))


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
