"""Phase-type graphs: construction, validation, canonical serialization, dense matrices.

A :class:`Graph` is a continuous-time Markov chain drawn as vertices (integer state
vectors) and weighted edges (rates). One starting vertex (state all zeros) carries the
initial distribution on its out-edges; vertices without out-edges are absorbing. An edge
is either constant (``weight``) or parameterized: ``weight + coefficients · θ``.

Rules (``elimination.md`` §1) are checked where they can be broken: a bad edge is refused
by ``add_edge`` and whole-graph rules by :meth:`Graph.validate`, which
:func:`phasetrace.record_trace` runs before any work. Nothing is silently fixed.

Parallel edges are **rejected**: add the rates yourself, or use
:meth:`Graph.from_callback`, which documents that it sums duplicate transitions.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidGraphError

#: Tolerance on ``|Σα − 1|`` for the initial distribution.
INITIAL_SUM_TOL = 1e-12
_JSON_FORMAT = "phasetrace.graph"
_JSON_VERSION = 1

# An edge as stored: (base weight, coefficients tuple or None for a constant edge).
_EdgeData = tuple[float, tuple[float, ...] | None]


@dataclass(frozen=True, slots=True)
class Edge:
    """An out-edge as seen by users: target vertex, base weight, coefficients or ``None``."""

    to: Vertex
    weight: float
    coefficients: tuple[float, ...] | None

    @property
    def parameterized(self) -> bool:
        """Whether the weight depends on θ."""
        return self.coefficients is not None

    def weight_at(self, theta: Sequence[float]) -> float:
        """The rate at ``theta``: ``weight + coefficients · theta`` (left to right)."""
        w = self.weight
        if self.coefficients is not None:
            for c, t in zip(self.coefficients, theta, strict=True):
                w = w + c * t
        return w


class Vertex:
    """A handle on one vertex of a :class:`Graph` (cheap; compare with ``==``)."""

    __slots__ = ("_graph", "_index")

    def __init__(self, graph: Graph, index: int):
        self._graph = graph
        self._index = index

    @property
    def index(self) -> int:
        """Position in :meth:`Graph.vertices` (creation order; the start is 0)."""
        return self._index

    def state(self) -> np.ndarray:
        """The state vector (a fresh int64 array)."""
        return np.array(self._graph._states[self._index], dtype=np.int64)

    def edges(self) -> list[Edge]:
        """Out-edges in the order they were added."""
        g = self._graph
        return [Edge(Vertex(g, t), b, c) for t, (b, c) in g._out[self._index].items()]

    def is_starting(self) -> bool:
        return self._index == 0

    def is_absorbing(self) -> bool:
        """True for a vertex other than the start with no out-edges."""
        return self._index != 0 and not self._graph._out[self._index]

    def add_edge(self, to: Vertex, weight: float) -> None:
        """Add a constant edge ``self → to`` with rate ``weight > 0``.

        Examples
        --------
        >>> g = Graph(state_length=1)
        >>> a = g.find_or_create_vertex([1])
        >>> g.starting_vertex().add_edge(a, 1.0)
        >>> a.add_edge(g.find_or_create_vertex([2]), 0.5)
        """
        self._graph._add_edge(self._index, to, weight, None)

    def add_edge_parameterized(
        self, to: Vertex, weight: float, coefficients: Sequence[float]
    ) -> None:
        """Add an edge whose rate is ``weight + coefficients · θ``.

        ``coefficients`` must have length ``n_params``; the rate must be ``> 0`` at every θ
        the trace is evaluated at (checked then).

        Examples
        --------
        >>> g = Graph(state_length=1, n_params=2)
        >>> a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
        >>> g.starting_vertex().add_edge(a, 1.0)
        >>> a.add_edge_parameterized(b, 0.0, [0.0, 3.0])   # rate 3·θ₁
        """
        self._graph._add_edge(self._index, to, weight, coefficients)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vertex)
            and other._graph is self._graph
            and other._index == self._index
        )

    def __hash__(self) -> int:
        return hash((id(self._graph), self._index))

    def __repr__(self) -> str:
        return f"Vertex({list(self._graph._states[self._index])})"


class Graph:
    """A continuous phase-type model as a graph of states and rates.

    Parameters
    ----------
    state_length : int
        Length of every state vector. The starting vertex has the all-zero state.
    n_params : int, default 0
        Length of θ for parameterized edges.

    Examples
    --------
    Kingman coalescent with three lineages, pairwise coalescence rate 1
    (``E[T_MRCA] = 2(1 − 1/3)``):

    >>> import phasetrace as pt
    >>> g = pt.Graph(state_length=1)
    >>> v3, v2, v1 = (g.find_or_create_vertex([k]) for k in (3, 2, 1))
    >>> g.starting_vertex().add_edge(v3, 1.0)
    >>> v3.add_edge(v2, 3.0); v2.add_edge(v1, 1.0)
    >>> float(pt.record_trace(g).expectation([]))  # doctest: +ELLIPSIS
    1.333333333333...
    """

    def __init__(self, state_length: int, n_params: int = 0):
        if not isinstance(state_length, int | np.integer) or state_length < 1:
            raise ValueError(f"state_length must be a positive int, got {state_length!r}")
        if not isinstance(n_params, int | np.integer) or n_params < 0:
            raise ValueError(f"n_params must be a non-negative int, got {n_params!r}")
        self.state_length = int(state_length)
        self.n_params = int(n_params)
        start = (0,) * self.state_length
        self._states: list[tuple[int, ...]] = [start]
        self._index: dict[tuple[int, ...], int] = {start: 0}
        self._out: list[dict[int, _EdgeData]] = [{}]
        # Bumped by every change, so derived data (the pipeline's decomposition) can be
        # reused while the graph is unchanged.
        self._version = 0

    # -- construction -------------------------------------------------------------------
    def starting_vertex(self) -> Vertex:
        """The starting vertex (state all zeros); its out-edges are the initial distribution."""
        return Vertex(self, 0)

    def _key(self, state: Iterable[int]) -> tuple[int, ...]:
        key = tuple(int(s) for s in state)
        if len(key) != self.state_length:
            raise InvalidGraphError(
                f"state {list(key)} has length {len(key)}, "
                f"expected state_length={self.state_length}"
            )
        return key

    def find_vertex(self, state: Iterable[int]) -> Vertex | None:
        """The vertex with this state, or ``None``."""
        i = self._index.get(self._key(state))
        return None if i is None else Vertex(self, i)

    def find_or_create_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex with this state, created (without edges) if it does not exist."""
        key = self._key(state)
        i = self._index.get(key)
        if i is None:
            i = len(self._states)
            self._version += 1
            self._states.append(key)
            self._index[key] = i
            self._out.append({})
        return Vertex(self, i)

    def vertices(self) -> list[Vertex]:
        """All vertices in creation order; the starting vertex is first."""
        return [Vertex(self, i) for i in range(len(self._states))]

    def __len__(self) -> int:
        return len(self._states)

    @property
    def n_edges(self) -> int:
        return sum(len(o) for o in self._out)

    def _describe(self, i: int) -> str:
        return "start" if i == 0 else f"state {list(self._states[i])}"

    def _add_edge(self, src: int, to: Vertex, weight: float, coefficients) -> None:
        if not isinstance(to, Vertex) or to._graph is not self:
            raise InvalidGraphError(
                f"edge from {self._describe(src)}: target is not a vertex of this graph"
            )
        dst = to._index
        where = f"edge {self._describe(src)} -> {self._describe(dst)}"
        if dst == src:
            raise InvalidGraphError(f"{where}: self-loops are not allowed (they change nothing)")
        if dst == 0:
            raise InvalidGraphError(
                f"{where}: the starting vertex cannot have in-edges (the all-zero state is "
                "reserved for it; shift your states if one of them is all zeros)"
            )
        if dst in self._out[src]:
            raise InvalidGraphError(
                f"{where}: a parallel edge; this edge exists already (add the rates into one edge)"
            )
        try:
            base = float(weight)
        except (TypeError, ValueError):
            raise InvalidGraphError(f"{where}: weight {weight!r} is not a number") from None
        if not math.isfinite(base):
            raise InvalidGraphError(f"{where}: weight {base!r} is not finite")
        coefs = None
        if coefficients is not None:
            coefs = self._check_coefficients(where, src, coefficients)
        if coefs is None and base <= 0.0:
            raise InvalidGraphError(f"{where}: weight {base!r} must be > 0")
        self._out[src][dst] = (base, coefs)
        self._version += 1

    def _check_coefficients(self, where: str, src: int, coefficients) -> tuple[float, ...]:
        if src == 0:
            raise InvalidGraphError(
                f"{where}: the initial distribution must be constant; use add_edge"
            )
        coefs = tuple(float(c) for c in np.asarray(coefficients, dtype=float).ravel())
        if len(coefs) != self.n_params:
            raise InvalidGraphError(
                f"{where}: {len(coefs)} coefficients given, the graph has n_params={self.n_params}"
            )
        if not all(math.isfinite(c) for c in coefs):
            raise InvalidGraphError(f"{where}: coefficients {list(coefs)} must be finite")
        return coefs

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole-graph rules of ``elimination.md`` §1.

        Raises
        ------
        InvalidGraphError
            If the initial distribution does not sum to 1, or a transient vertex cannot
            reach an absorbing vertex. The message names the vertex state.
        """
        start = self._out[0]
        if not start:
            raise InvalidGraphError(
                "start: the starting vertex has no out-edges (no initial distribution)"
            )
        total = math.fsum(b for b, _ in start.values())
        if abs(total - 1.0) > INITIAL_SUM_TOL:
            raise InvalidGraphError(
                f"start: initial distribution sums to {total!r}, not 1; for a defect add an "
                "explicit edge from the start to an absorbing vertex"
            )
        stuck = self._vertices_not_reaching_absorption()
        if stuck:
            shown = ", ".join(str(list(self._states[i])) for i in stuck[:5])
            more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
            raise InvalidGraphError(
                f"state {shown}{more}: transient vertex cannot reach an absorbing vertex "
                "(a closed class without exit; (-S) is singular)"
            )

    def _vertices_not_reaching_absorption(self) -> list[int]:
        n = len(self._states)
        parents: list[list[int]] = [[] for _ in range(n)]
        for u, out in enumerate(self._out):
            for w in out:
                parents[w].append(u)
        seen = [False] * n
        queue = deque(i for i in range(1, n) if not self._out[i])
        for i in queue:
            seen[i] = True
        while queue:
            w = queue.popleft()
            for u in parents[w]:
                if not seen[u]:
                    seen[u] = True
                    queue.append(u)
        return sorted((i for i in range(1, n) if not seen[i]), key=lambda i: self._states[i])

    # -- canonical serialization -------------------------------------------------------
    def canonical_order(self) -> list[int]:
        """Vertex indices: the start first, then the rest sorted by state."""
        rest = sorted(range(1, len(self._states)), key=self._states.__getitem__)
        return [0, *rest]

    def to_json(self) -> str:
        """Canonical JSON: equal graphs give equal strings, whatever their creation order.

        Vertices are listed start first, then by state; edges by (source, target) position.
        Floats are written with Python's shortest round-trip ``repr``: nothing is lost.

        Examples
        --------
        >>> import phasetrace as pt
        >>> g = pt.models.kingman(3)
        >>> pt.Graph.from_json(g.to_json()).to_json() == g.to_json()
        True
        """
        order = self.canonical_order()
        pos = {old: new for new, old in enumerate(order)}
        edges = []
        for old in order:
            for t, (b, c) in sorted(self._out[old].items(), key=lambda kv: pos[kv[0]]):
                edges.append([pos[old], pos[t], b, None if c is None else list(c)])
        doc = {
            "format": _JSON_FORMAT,
            "version": _JSON_VERSION,
            "state_length": self.state_length,
            "n_params": self.n_params,
            "vertices": [list(self._states[i]) for i in order],
            "edges": edges,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Graph:
        """Rebuild a graph written by :meth:`to_json` (vertices in canonical order)."""
        try:
            doc = json.loads(text)
            if doc.get("format") != _JSON_FORMAT or doc.get("version") != _JSON_VERSION:
                raise InvalidGraphError(
                    f"not a phasetrace graph document of version {_JSON_VERSION}: "
                    f"format={doc.get('format')!r} version={doc.get('version')!r}"
                )
            g = cls(int(doc["state_length"]), int(doc["n_params"]))
            verts = [g.find_or_create_vertex(s) for s in doc["vertices"]]
            if verts[0].index != 0:
                raise InvalidGraphError("the first vertex of a graph document must be the start")
            for src, dst, base, coefs in doc["edges"]:
                g._add_edge(src, verts[dst], base, coefs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, InvalidGraphError):
                raise
            raise InvalidGraphError(f"malformed graph document: {exc}") from exc
        return g

    def content_key(self) -> str:
        """sha256 (hex) of :meth:`to_json`: a name for this graph's content."""
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- builders ----------------------------------------------------------------------
    @classmethod
    def from_callback(
        cls,
        callback: Callable[[tuple[int, ...]], Iterable[tuple[Sequence[int], Any]]],
        initial: Sequence[int] | Sequence[tuple[Sequence[int], float]],
        n_params: int = 0,
    ) -> Graph:
        """Build a graph by breadth-first exploration of a state space.

        Parameters
        ----------
        callback : callable
            ``callback(state)`` (a tuple of ints) returns ``[(next_state, rate), ...]`` where
            ``rate`` is a number (constant edge) or a pair ``(base, coefficients)``
            (parameterized). An empty list makes ``state`` absorbing. Several transitions
            to the same ``next_state`` are **summed** into one edge (bases and coefficients).
        initial : state or list of (state, probability)
            Where the chain starts.
        n_params : int
            Length of θ.

        Examples
        --------
        Kingman coalescent on the number of lineages, θ = (coalescence rate,):

        >>> import phasetrace as pt
        >>> def step(s):
        ...     k = s[0]
        ...     return [] if k == 1 else [((k - 1,), (0.0, [k * (k - 1) / 2]))]
        >>> g = pt.Graph.from_callback(step, [4], n_params=1)
        >>> float(pt.record_trace(g).expectation([1.0]))  # 2(1 - 1/4)
        1.5
        """
        pairs = _initial_pairs(initial)
        g = cls(len(pairs[0][0]), n_params)
        queue: deque[tuple[int, ...]] = deque()
        for state, prob in pairs:
            v = g.find_or_create_vertex(state)
            g.starting_vertex().add_edge(v, prob)
            queue.append(tuple(int(s) for s in state))
        seen = set(queue)
        while queue:
            state = queue.popleft()
            v = g.find_vertex(state)
            for nxt, (base, coefs) in _merge_transitions(callback(state), n_params).items():
                w = g.find_or_create_vertex(nxt)
                if coefs is None:
                    v.add_edge(w, base)
                else:
                    v.add_edge_parameterized(w, base, coefs)
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        return g

    @classmethod
    def from_matrices(cls, alpha: Sequence[float], S: Any) -> Graph:
        """Build a constant graph from an initial vector ``alpha`` and sub-intensity matrix ``S``.

        Transient state ``i`` gets the state vector ``[i + 1]``; one absorbing vertex with
        state ``[len(alpha) + 1]`` receives the exit rates ``−S·1`` and the defect
        ``1 − Σα``. Exit rates and the defect below ``1e-13`` (relative to the row's
        scale) are treated as zero; clearly negative ones are an error.

        Examples
        --------
        >>> import numpy as np, phasetrace as pt
        >>> g = pt.Graph.from_matrices([1.0, 0.0], np.array([[-3.0, 3.0], [0.0, -1.0]]))
        >>> float(pt.record_trace(g).expectation([]))
        1.3333333333333333
        """
        a = np.asarray(alpha, dtype=float)
        m = np.asarray(S, dtype=float)
        n = a.shape[0]
        if a.ndim != 1 or m.shape != (n, n):
            raise InvalidGraphError(f"alpha must be (n,) and S (n, n); got {a.shape} and {m.shape}")
        g = cls(state_length=1)
        verts = [g.find_or_create_vertex([i + 1]) for i in range(n)]
        absorbing = g.find_or_create_vertex([n + 1])
        start = g.starting_vertex()
        for i in range(n):
            if a[i] != 0:
                start.add_edge(verts[i], a[i])
        defect = 1.0 - math.fsum(a)
        if defect > 1e-13:
            start.add_edge(absorbing, defect)
        for i in range(n):
            for j in range(n):
                if i != j and m[i, j] != 0:
                    verts[i].add_edge(verts[j], m[i, j])
            exit_rate = -math.fsum(m[i])
            scale = max(abs(m[i, i]), 1e-300)
            if exit_rate > 1e-13 * scale:
                verts[i].add_edge(absorbing, exit_rate)
            elif exit_rate < -1e-13 * scale:
                raise InvalidGraphError(
                    f"state [{i + 1}]: row {i} of S sums to {-exit_rate!r} > 0 (negative exit rate)"
                )
        return g

    def to_matrices(self, theta: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
        """``(alpha, S)`` at ``theta`` over the transient vertices, in :meth:`vertices` order.

        Transient vertices are all but the start and the absorbing ones.

        Examples
        --------
        >>> import phasetrace as pt
        >>> alpha, S = pt.models.kingman(3, state_space="lineages").to_matrices([1.0])
        >>> S.tolist()
        [[-3.0, 3.0], [0.0, -1.0]]
        """
        theta = self._check_theta(theta)
        transient = [i for i in range(1, len(self._states)) if self._out[i]]
        pos = {v: k for k, v in enumerate(transient)}
        alpha = np.zeros(len(transient))
        for t, (b, _) in self._out[0].items():
            if t in pos:
                alpha[pos[t]] = b
        S = np.zeros((len(transient), len(transient)))
        for i in transient:
            for t, (b, c) in self._out[i].items():
                w = Edge(Vertex(self, t), b, c).weight_at(theta)
                S[pos[i], pos[i]] -= w
                if t in pos:
                    S[pos[i], pos[t]] = w
        return alpha, S

    def _check_theta(self, theta: Sequence[float]) -> np.ndarray:
        th = np.asarray(theta, dtype=float).ravel()
        if th.shape[0] != self.n_params:
            from .errors import InvalidParameterError

            raise InvalidParameterError(
                f"theta has length {th.shape[0]}, expected n_params={self.n_params}"
            )
        return th

    def __repr__(self) -> str:
        return (
            f"Graph(state_length={self.state_length}, n_params={self.n_params}, "
            f"vertices={len(self)}, edges={self.n_edges})"
        )


def _initial_pairs(initial) -> list[tuple[tuple[int, ...], float]]:
    items = list(initial)
    if (
        items
        and isinstance(items[0], Sequence | np.ndarray)
        and len(items[0]) == 2
        and isinstance(items[0][0], Sequence | np.ndarray)
    ):
        return [(tuple(int(s) for s in st), float(p)) for st, p in items]
    return [(tuple(int(s) for s in items), 1.0)]


def _merge_transitions(transitions, n_params: int) -> dict:
    merged: dict[tuple[int, ...], tuple[float, tuple[float, ...] | None]] = {}
    for nxt, rate in transitions:
        key = tuple(int(s) for s in nxt)
        if (
            isinstance(rate, tuple | list)
            and len(rate) == 2
            and not isinstance(rate[1], float | int)
        ):
            base, coefs = float(rate[0]), tuple(float(c) for c in rate[1])
        else:
            base, coefs = float(rate), None
        if key in merged:
            b0, c0 = merged[key]
            if c0 is None and coefs is None:
                merged[key] = (b0 + base, None)
            else:
                c0 = c0 or (0.0,) * n_params
                c1 = coefs or (0.0,) * n_params
                merged[key] = (b0 + base, tuple(x + y for x, y in zip(c0, c1, strict=True)))
        else:
            merged[key] = (base, coefs)
    return merged
