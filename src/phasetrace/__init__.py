"""phasetrace: exact moments of phase-type models from recorded elimination traces.

Describe a model as a :class:`Graph`, record its trace once with :func:`record_trace`
(or :func:`compute_trace`, which splits the work into SCC units, caches them and runs
them on the configured executor), then evaluate moments for any θ.

Nothing heavy is imported here: no JAX, Dask or joblib.
"""

from . import demography, distribution, inference, models
from .demography import EpochModel
from .distribution import (
    cdf,
    cdf_and_gradient,
    pdf,
    pdf_and_gradient,
    quantile,
    quantile_and_gradient,
    sf,
    sf_and_gradient,
)
from .errors import (
    ExecutorClosedError,
    ExecutorTimeoutError,
    InsufficientMemoryError,
    InvalidGraphError,
    InvalidParameterError,
    PhasetraceError,
    PrecisionWarning,
    SerializationError,
    StateSpaceTooLargeError,
    StrategyError,
    StrategyRejectedError,
    StrategyUnavailableError,
    TraceFormatError,
    UnitFailedError,
    WorkerCrashedError,
)
from .executors import available_strategies, get_executor, register_strategy
from .graph import Edge, Graph, Vertex
from .inference import fit, loglik, observed_sfs
from .pipeline import RunStats, compute_trace, compute_traces, last_run_stats
from .record import record_trace
from .settings import Settings, config, configure, get_settings, shutdown_executors
from .spectrum import jsfs, jsfs_function, sfs, sfs_function
from .trace import Trace

__version__ = "0.1.0"

__all__ = [
    "Edge",
    "EpochModel",
    "ExecutorClosedError",
    "ExecutorTimeoutError",
    "Graph",
    "InsufficientMemoryError",
    "InvalidGraphError",
    "InvalidParameterError",
    "PhasetraceError",
    "PrecisionWarning",
    "RunStats",
    "SerializationError",
    "Settings",
    "StateSpaceTooLargeError",
    "StrategyError",
    "StrategyRejectedError",
    "StrategyUnavailableError",
    "Trace",
    "TraceFormatError",
    "UnitFailedError",
    "Vertex",
    "WorkerCrashedError",
    "__version__",
    "available_strategies",
    "cdf",
    "cdf_and_gradient",
    "compute_trace",
    "compute_traces",
    "config",
    "configure",
    "demography",
    "distribution",
    "fit",
    "get_executor",
    "get_settings",
    "inference",
    "jsfs",
    "jsfs_function",
    "last_run_stats",
    "loglik",
    "models",
    "observed_sfs",
    "pdf",
    "pdf_and_gradient",
    "quantile",
    "quantile_and_gradient",
    "record_trace",
    "register_strategy",
    "sf",
    "sf_and_gradient",
    "sfs",
    "sfs_function",
    "shutdown_executors",
]
