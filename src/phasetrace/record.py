"""``record_trace``: the whole graph recorded unit by unit in this process."""

from __future__ import annotations

from .elimination import check_recording_memory, estimated_ops, record_unit
from .graph import Graph
from .scc import decompose
from .trace import Trace, stitch


def record_trace(graph: Graph) -> Trace:
    """Record the elimination trace of ``graph`` in this process (``docs/algorithm.md``).

    The graph is validated first. The result depends only on the graph's content:
    the same graph gives the same trace, bit for bit, in any process.

    Raises
    ------
    InvalidGraphError
        For a graph that breaks a rule of the model.
    InsufficientMemoryError
        Before recording, if the recording would need more memory than is free.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.two_island(5))
    >>> tr.moments([1.0, 0.5], k=2).round(6).tolist()
    [3.404788, 19.243986]
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"record_trace expects a phasetrace.Graph, got {type(graph).__name__}")
    graph.validate()
    d = decompose(graph)
    ops = [estimated_ops(u) for u in d.units]
    what = f"a graph of {len(graph):,} states"
    check_recording_memory(sum(ops), len(ops), [max(ops, default=0)], what)
    return stitch(d, [record_unit(u) for u in d.units])
