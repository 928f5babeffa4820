"""What workers run: canonical bytes in, trace arrays out. Imports numpy only (never JAX).

A payload is ``("unit", WorkUnit bytes)`` or ``("graph", canonical graph JSON bytes)``.
The result is a dict of plain numpy arrays: cheap to pickle back and to cache.
"""

from __future__ import annotations

import numpy as np

from .elimination import record_unit
from .scc import WorkUnit

#: Changes whenever the recorder's output for the same input could change; part of cache keys.
RECORDER_VERSION = "phasetrace-recorder/3"


def record_payload(payload: tuple[str, bytes]) -> dict[str, np.ndarray]:
    """Record one work item (a unit, or a whole graph) and return its arrays."""
    kind, data = payload
    if kind == "unit":
        return record_unit(WorkUnit.from_bytes(data))
    if kind == "graph":
        from .graph import Graph
        from .record import record_trace

        return dict(record_trace(Graph.from_json(data)).arrays)
    raise ValueError(f"unknown work item kind {kind!r}")
