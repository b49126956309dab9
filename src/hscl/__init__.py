"""hscl: contrastive representation learning with hard negative sampling (UCL, H-UCL, SCL, H-SCL,
SupCon, SCHaNe), with the pipelines that reproduce the H-SCL paper's experiments."""

from hscl.hardening import AutoExponential, Exponential, LinearThreshold, Threshold, linear_threshold
from hscl.losses import (
    HSCL,
    HUCL,
    LOSSES,
    METHODS,
    SCL,
    UCL,
    ContrastiveLoss,
    LossStats,
    SCHaNe,
    SupCon,
    contrastive_loss,
    get_loss,
    supcon_loss,
)

__version__ = "0.1.0"

__all__ = [
    "HSCL",
    "AutoExponential",
    "HUCL",
    "LOSSES",
    "METHODS",
    "SCL",
    "UCL",
    "ContrastiveLoss",
    "Exponential",
    "LinearThreshold",
    "LossStats",
    "SCHaNe",
    "SupCon",
    "Threshold",
    "__version__",
    "contrastive_loss",
    "get_loss",
    "linear_threshold",
    "supcon_loss",
]
