"""What every job of the engine runs on: the run config, the precision rule, devices and processes,
checkpoints, run folders and progress.

The rooms above (``pretrain``, ``evaluation``, ``finetune``, ``sweep``) import from here; nothing here imports
them.
"""

from hscl.engine.runtime.checkpoints import CheckpointError, load_checkpoint
from hscl.engine.runtime.config import RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from hscl.engine.runtime.distributed import global_batch_loss, launch_rank, resolve_device, shard
from hscl.engine.runtime.precision import LoopPrecision, numerics_record, resolve_precision
from hscl.engine.runtime.runs import RunPaths, TrainingInterrupted, run_paths

__all__ = [
    "CheckpointError",
    "LoopPrecision",
    "RunConfig",
    "RunPaths",
    "TrainingInterrupted",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "global_batch_loss",
    "launch_rank",
    "load_checkpoint",
    "load_config",
    "numerics_record",
    "resolve_device",
    "resolve_precision",
    "run_paths",
    "shard",
]
