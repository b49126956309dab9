"""The loss family: UCL, H-UCL, SCL, H-SCL, SupCon and SCHaNe over one log-space core.

``dense.py`` is the definition on one screen (:func:`dense_contrastive_loss`, eq. (3) of arXiv 2209.00078);
``core.py`` is the functional contract and entry point of the fused computation (:func:`contrastive_loss`);
one file per method holds its class; ``registry.py`` is the one list of methods;
``local_global.py`` is InfoGraph's node-graph objective with any hardening (Table II).
"""

from hscl.losses.base import ContrastiveLoss
from hscl.losses.buffers import release_workspace
from hscl.losses.core import LossStats, contrastive_loss
from hscl.losses.dense import dense_contrastive_loss
from hscl.losses.h_scl import HSCL
from hscl.losses.h_ucl import HUCL
from hscl.losses.local_global import local_global_loss
from hscl.losses.registry import LOSSES, METHODS, Method, available_losses, get_loss, get_method, loss_kwargs
from hscl.losses.schane import SCHaNe
from hscl.losses.scl import SCL
from hscl.losses.supcon import SupCon, supcon_loss
from hscl.losses.ucl import UCL

__all__ = [
    "HSCL",
    "HUCL",
    "LOSSES",
    "METHODS",
    "SCL",
    "UCL",
    "ContrastiveLoss",
    "LossStats",
    "Method",
    "SCHaNe",
    "SupCon",
    "available_losses",
    "contrastive_loss",
    "dense_contrastive_loss",
    "get_loss",
    "get_method",
    "local_global_loss",
    "loss_kwargs",
    "release_workspace",
    "supcon_loss",
]
