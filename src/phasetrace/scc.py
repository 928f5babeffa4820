"""Strongly connected components, the elimination order π, and work units.

The order (``elimination.md`` §5) is intrinsic to the graph's content: SCCs in a
topological order of the condensation, ties broken by the smallest state in each SCC
(the start's SCC first), vertices inside an SCC sorted by state, absorbing vertices
last sorted by state. Creation order and object ids never matter, so the same SCC in
two graphs yields the same :class:`WorkUnit` bytes and key.

A work unit is one SCC: its vertices (local ids ``0..k-1`` in π order), each with its
complete out-edge list; targets outside the SCC are *exit labels* ``k..k+e-1``, sorted
by state and treated as absorbing by the recorder. No upstream information is needed.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph

UNIT_MAGIC = b"PTUNIT\x00\x01"
KIND_TRANSIENT = 0
KIND_START = 1


def strongly_connected_components(successors: list[list[int]]) -> list[list[int]]:
    """Tarjan's algorithm with explicit stacks (no recursion limit).

    Parameters
    ----------
    successors : list of list of int
        ``successors[v]`` are the targets of ``v``'s out-edges.

    Returns
    -------
    list of list of int
        The components, in reverse topological order of the condensation (sinks first).

    Examples
    --------
    >>> strongly_connected_components([[1], [0, 2], []])
    [[2], [0, 1]]
    """
    n = len(successors)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] != -1:
            continue
        # Each frame is (vertex, position of the next successor to look at).
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, i = work[-1]
            succ = successors[v]
            if i < len(succ):
                work[-1] = (v, i + 1)
                w = succ[i]
                if index[w] == -1:  # tree arc: descend
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:  # arc back into the current component
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:  # propagate the low-link to the parent frame
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:  # v is the root of a component
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                components.append(sorted(comp))
    return components


@dataclass(frozen=True, eq=False)
class WorkUnit:
    """One SCC's elimination input, in canonical form.

    Attributes
    ----------
    kind : int
        ``KIND_START`` for the starting vertex (its row is the initial distribution and is
        not normalised), else ``KIND_TRANSIENT``.
    n_internal, n_exits, n_params : int
    ptr : ndarray (n_internal + 1,) int64
        Edge ranges per local vertex.
    dst : ndarray (m,) int64
        Local target of each edge (exits are ``>= n_internal``), increasing within a vertex.
    base : ndarray (m,) float64
    coef : ndarray (m, n_params) float64
        Rate of edge ``e`` is ``base[e] + Σ_i coef[e, i]·θ_i`` (zeros for a constant edge).
    """

    kind: int
    n_internal: int
    n_exits: int
    n_params: int
    ptr: np.ndarray
    dst: np.ndarray
    base: np.ndarray
    coef: np.ndarray
    _bytes: list = field(default_factory=list, repr=False, compare=False)

    @property
    def n_edges(self) -> int:
        return int(self.dst.shape[0])

    def to_bytes(self) -> bytes:
        """Canonical bytes: a fixed header then the arrays little-endian."""
        if not self._bytes:
            head = UNIT_MAGIC + struct.pack(
                "<5q", self.kind, self.n_internal, self.n_exits, self.n_params, self.n_edges
            )
            body = b"".join(
                np.ascontiguousarray(a, dtype=dt).tobytes()
                for a, dt in (
                    (self.ptr, "<i8"),
                    (self.dst, "<i8"),
                    (self.base, "<f8"),
                    (self.coef, "<f8"),
                )
            )
            self._bytes.append(head + body)
        return self._bytes[0]

    @property
    def key(self) -> str:
        """sha256 (hex) of :meth:`to_bytes`: equal content, equal key, in any process."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkUnit:
        """Inverse of :meth:`to_bytes`."""
        if data[:8] != UNIT_MAGIC:
            raise ValueError("not a phasetrace work unit (bad magic)")
        kind, k, e, p, m = struct.unpack_from("<5q", data, 8)
        off = 8 + 40
        arrays = []
        for count, dt in ((k + 1, "<i8"), (m, "<i8"), (m, "<f8"), (m * p, "<f8")):
            arrays.append(np.frombuffer(data, dtype=dt, count=count, offset=off))
            off += 8 * count
        if off != len(data):
            raise ValueError(f"work unit has {len(data) - off} trailing bytes")
        ptr, dst, base, coef = arrays
        return cls(kind, k, e, p, ptr, dst, base, coef.reshape(m, p), [bytes(data)])


@dataclass(frozen=True, eq=False)
class Decomposition:
    """A graph cut into work units along the order π.

    Attributes
    ----------
    order : ndarray (N,) int64
        ``order[p]`` is the creation index (``graph.vertices()``) of the vertex at π position p.
    states : ndarray (N, state_length) int64
        States in π order.
    units : list of WorkUnit
        Non-absorbing SCCs in π order; unit ``u`` covers positions ``first[u]:first[u]+k``.
    first : ndarray (n_units,) int64
    exits : list of ndarray
        π positions of each unit's exit labels.
    n_params : int
    """

    order: np.ndarray
    states: np.ndarray
    units: list[WorkUnit]
    first: np.ndarray
    exits: list[np.ndarray]
    n_params: int

    @property
    def n_vertices(self) -> int:
        return int(self.order.shape[0])


def decompose(graph: Graph) -> Decomposition:
    """Cut a graph into work units in the canonical order π (``elimination.md`` §5).

    Examples
    --------
    >>> import phasetrace as pt
    >>> d = decompose(pt.models.two_island(3))
    >>> [u.n_internal for u in d.units]
    [1, 4, 3]
    """
    states = graph._states
    outs = graph._out
    n = len(states)
    successors = [list(o) for o in outs]
    comps = strongly_connected_components(successors)
    comps = [c for c in comps if not (len(c) == 1 and c[0] != 0 and not outs[c[0]])]
    ordered = _topological_order(comps, successors, states)
    absorbing = sorted((i for i in range(1, n) if not outs[i]), key=states.__getitem__)
    order = [v for comp in ordered for v in comp] + absorbing
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    units, first, exits = [], [], []
    p0 = 0
    for comp in ordered:
        unit, exit_pos = _make_unit(graph, comp, pos)
        units.append(unit)
        first.append(p0)
        exits.append(exit_pos)
        p0 += len(comp)
    state_arr = np.array([states[i] for i in order], dtype=np.int64).reshape(n, graph.state_length)
    return Decomposition(
        order=np.asarray(order, dtype=np.int64),
        states=state_arr,
        units=units,
        first=np.asarray(first, dtype=np.int64),
        exits=exits,
        n_params=graph.n_params,
    )


def _topological_order(comps, successors, states) -> list[list[int]]:
    """Kahn's algorithm on the condensation; ready SCCs leave by smallest state."""
    comp_of = {}
    for ci, comp in enumerate(comps):
        for v in comp:
            comp_of[v] = ci
        comp.sort(key=states.__getitem__)
    indeg = [0] * len(comps)
    dag: list[set[int]] = [set() for _ in comps]
    for ci, comp in enumerate(comps):
        for v in comp:
            for w in successors[v]:
                cj = comp_of.get(w)
                if cj is not None and cj != ci and cj not in dag[ci]:
                    dag[ci].add(cj)
                    indeg[cj] += 1

    # The start's SCC sorts before everything (it has no in-edges, so it is ready at once).
    def rank(ci):
        comp = comps[ci]
        return (0 if comp[0] == 0 else 1, states[comp[0]])

    heap = [(rank(ci), ci) for ci in range(len(comps)) if indeg[ci] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, ci = heapq.heappop(heap)
        out.append(comps[ci])
        for cj in dag[ci]:
            indeg[cj] -= 1
            if indeg[cj] == 0:
                heapq.heappush(heap, (rank(cj), cj))
    return out


def _make_unit(graph: Graph, comp: list[int], pos: np.ndarray) -> tuple[WorkUnit, np.ndarray]:
    states = graph._states
    outs = graph._out
    local = {v: i for i, v in enumerate(comp)}
    exit_vs = sorted({w for v in comp for w in outs[v] if w not in local}, key=states.__getitem__)
    k = len(comp)
    for j, w in enumerate(exit_vs):
        local[w] = k + j
    p = graph.n_params
    ptr = [0]
    dst, base, coef = [], [], []
    zeros = (0.0,) * p
    for v in comp:
        for w, (b, c) in sorted(outs[v].items(), key=lambda kv: local[kv[0]]):
            dst.append(local[w])
            base.append(b)
            coef.append(zeros if c is None else c)
        ptr.append(len(dst))
    m = len(dst)
    unit = WorkUnit(
        kind=KIND_START if comp == [0] else KIND_TRANSIENT,
        n_internal=k,
        n_exits=len(exit_vs),
        n_params=p,
        ptr=np.asarray(ptr, dtype=np.int64),
        dst=np.asarray(dst, dtype=np.int64),
        base=np.asarray(base, dtype=np.float64),
        coef=np.asarray(coef, dtype=np.float64).reshape(m, p),
    )
    return unit, pos[exit_vs].astype(np.int64) if exit_vs else np.zeros(0, dtype=np.int64)
