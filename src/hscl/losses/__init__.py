"""The loss family: UCL, H-UCL, SCL, H-SCL, SupCon and SCHaNe over one log-space core."""

from hscl.losses.core import *  # noqa: F403
from hscl.losses.core import __all__  # noqa: F401
