"""Executors: where phasetrace's work units run (in-process, local process pools, clusters).

Importing this package imports no strategy module, and so neither loky, JAX nor Dask;
strategies are loaded by name on first use (see :mod:`phasetrace.executors.registry`).

Examples
--------
>>> from phasetrace.executors import get_executor, work_items
>>> with get_executor("sequential") as ex:
...     ex.map_items(len, work_items(["ab", "c"]))
[2, 1]
"""

from phasetrace.executors.base import (
    Executor,
    RemoteTraceback,
    WorkItem,
    available_cpus,
    resolve_n_workers,
    work_items,
)
from phasetrace.executors.registry import (
    StrategyInfo,
    available_strategies,
    get_executor,
    known_strategies,
    register_strategy,
    unregister_strategy,
    validate_strategy,
)

__all__ = [
    "Executor",
    "RemoteTraceback",
    "StrategyInfo",
    "WorkItem",
    "available_cpus",
    "available_strategies",
    "get_executor",
    "known_strategies",
    "register_strategy",
    "resolve_n_workers",
    "unregister_strategy",
    "validate_strategy",
    "work_items",
]
