"""Time-inhomogeneous models: epochs, boundary maps, demographic models read from demes.

Nothing here imports ``demes`` (or anything heavy) at import time.
"""

from .engine import MapTerms
from .epochs import EpochModel, TimeModel

__all__ = ["EpochModel", "MapTerms", "TimeModel"]
