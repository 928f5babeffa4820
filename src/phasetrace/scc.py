"""Strongly connected components, the elimination order π, and work units.

The order (docs/algorithm.md) is intrinsic to the graph's content: SCCs in a
topological order of the condensation, ties broken by the smallest state in each SCC
(the start's SCC first), vertices inside an SCC sorted by state, absorbing vertices
last sorted by state. Creation order and object ids never matter, so the same SCC in
two graphs yields the same :class:`WorkUnit` bytes and key.

A work unit is one SCC: its vertices (local ids ``0..k-1`` in π order), each with its
complete out-edge list; targets outside the SCC are *exit labels* ``k..k+e-1``, sorted
by state and treated as absorbing by the recorder. No upstream information is needed.
The graph algorithms themselves (Tarjan, Kahn) are in :mod:`phasetrace._graphalgo`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, _canonical_order

UNIT_MAGIC = b"PTUNIT\x00\x01"
KIND_TRANSIENT = 0
KIND_START = 1


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
    edges : tuple of ndarray, optional
        ``(vptr, dst, base, coef)``: every unit's edges together, in unit order (each
        unit's ``dst``, ``base`` and ``coef`` are slices of these), and the edge range of
        each π position, ``vptr[v] : vptr[v + 1]``. None: gather them from the units.
    """

    order: np.ndarray
    states: np.ndarray
    units: list[WorkUnit]
    first: np.ndarray
    exits: list[np.ndarray]
    n_params: int
    edges: tuple | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.order.shape[0])


def decompose(graph: Graph) -> Decomposition:
    """Cut a graph into work units in the canonical order π.

    Works on :meth:`Graph.arrays` with compiled graph algorithms (Tarjan, Kahn) and numpy,
    so a graph of a million edges decomposes in a fraction of a second.

    Examples
    --------
    >>> import phasetrace as pt
    >>> d = decompose(pt.models.two_island(3))
    >>> [u.n_internal for u in d.units]
    [1, 4, 3]
    """
    from ._graphalgo import scc_labels, topological_order

    arr = graph.arrays()
    n = arr.states.shape[0]
    rank = np.empty(n, dtype=np.int64)  # position in state order, the start first
    rank[_canonical_order(arr.states)] = np.arange(n)
    label, n_comp = scc_labels(arr.ptr, arr.dst)
    key = np.full(n_comp, n, dtype=np.int64)  # a component's smallest rank
    np.minimum.at(key, label, rank)
    absorbing = np.diff(arr.ptr) == 0
    absorbing[0] = False
    comps = topological_order(label, n_comp, arr.ptr, arr.dst, key)
    comps = comps[~np.isin(comps, label[absorbing])]
    cpos = np.full(n_comp, -1, dtype=np.int64)  # unit of each component
    cpos[comps] = np.arange(comps.size)
    unit_of = cpos[label]  # −1 for absorbing vertices
    inner = np.flatnonzero(~absorbing)
    inner = inner[np.lexsort((rank[inner], unit_of[inner]))]
    order = np.concatenate([inner, np.flatnonzero(absorbing)[np.argsort(rank[absorbing])]])
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    sizes = np.bincount(unit_of[inner], minlength=comps.size)
    first = np.cumsum(sizes) - sizes
    units, exits, edges = _make_units(graph, arr, unit_of, rank, pos, first, sizes)
    return Decomposition(
        order=order,
        states=arr.states[order].copy(),
        units=units,
        first=first.astype(np.int64),
        exits=exits,
        n_params=graph.n_params,
        edges=edges,
    )


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` by sorting (numpy's hash-based unique measured 100× slower on
    millions of int64 here).

    Examples
    --------
    >>> sorted_unique(np.array([3, 1, 3, 2])).tolist()
    [1, 2, 3]
    """
    s = np.sort(a)
    if s.size == 0:
        return s
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def _make_units(graph: Graph, arr, unit_of, rank, pos, first, sizes):
    """One :class:`WorkUnit` per component: local ids, edges sorted by local target."""
    src = arr.src
    keep = unit_of[src] >= 0  # edges out of absorbing vertices: there are none
    e_idx = np.flatnonzero(keep)
    u = unit_of[src[e_idx]]
    w = arr.dst[e_idx]
    local_src = pos[src[e_idx]] - first[u]
    internal = unit_of[w] == u
    local_dst = np.where(internal, pos[w] - first[u], 0)
    # Exit targets: per unit, the distinct targets sorted by state get ids k, k+1, ...
    n = rank.shape[0]
    ex = ~internal
    codes = u[ex] * n + rank[w[ex]]
    uniq = sorted_unique(codes)
    uniq_unit = uniq // n
    unit_start = np.searchsorted(uniq_unit, np.arange(sizes.size + 1))
    j = np.searchsorted(uniq, codes) - unit_start[u[ex]]
    local_dst[ex] = sizes[u[ex]] + j
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)  # vertex of each rank
    exit_pos = pos[by_rank[uniq % n]]
    srt = np.lexsort((local_dst, local_src, u))
    e_idx, u, local_src, local_dst = e_idx[srt], u[srt], local_src[srt], local_dst[srt]
    edge_start = np.searchsorted(u, np.arange(sizes.size + 1)).tolist()
    # Every unit's arrays are slices of these (gathered once, in unit order).
    p = graph.n_params
    base = np.ascontiguousarray(arr.base[e_idx])
    coef = np.ascontiguousarray(arr.coef[e_idx]).reshape(e_idx.size, p)
    out_deg = np.bincount(first[u] + local_src, minlength=int(sizes.sum()))
    vptr = np.concatenate([[0], np.cumsum(out_deg)]).astype(np.int64)  # by π position
    firsts, ks = first.tolist(), sizes.tolist()
    n_exits = np.diff(unit_start).tolist()
    exit_pos = exit_pos.astype(np.int64)
    units, exits = [], []
    for c in range(sizes.size):
        lo, hi, f, k = edge_start[c], edge_start[c + 1], firsts[c], ks[c]
        units.append(
            WorkUnit(
                kind=KIND_START if c == 0 else KIND_TRANSIENT,  # the start comes first in π
                n_internal=k,
                n_exits=n_exits[c],
                n_params=p,
                ptr=vptr[f : f + k + 1] - lo,
                dst=local_dst[lo:hi],
                base=base[lo:hi],
                coef=coef[lo:hi],
            )
        )
        exits.append(exit_pos[unit_start[c] : unit_start[c + 1]])
    return units, exits, (vptr, local_dst, base, coef)
