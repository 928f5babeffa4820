"""phasetrace: exact moments of phase-type models from recorded elimination traces.

Describe a model as a :class:`Graph`, record its trace once with :func:`record_trace`
(or :func:`compute_trace`, which splits the work into SCC units, caches them and runs
them on the configured executor), then evaluate moments for any θ.

Nothing heavy is imported here: no JAX, Dask or joblib.
"""

from . import models
from .errors import (
    InvalidGraphError,
    InvalidParameterError,
    PhasetraceError,
    StrategyError,
    StrategyRejectedError,
    StrategyUnavailableError,
    TraceFormatError,
    UnitFailedError,
    WorkerCrashedError,
)
from .graph import Edge, Graph, Vertex
from .record import record_trace
from .trace import Trace

__version__ = "0.1.0"

__all__ = [
    "Edge",
    "Graph",
    "InvalidGraphError",
    "InvalidParameterError",
    "PhasetraceError",
    "StrategyError",
    "StrategyRejectedError",
    "StrategyUnavailableError",
    "Trace",
    "TraceFormatError",
    "UnitFailedError",
    "Vertex",
    "WorkerCrashedError",
    "__version__",
    "models",
    "record_trace",
]
