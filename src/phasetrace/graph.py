"""Phase-type graphs: construction, validation, canonical serialization, dense matrices.

A :class:`Graph` is a continuous-time Markov chain drawn as vertices (integer state
vectors) and weighted edges (rates). One starting vertex (state all zeros) carries the
initial distribution on its out-edges; vertices without out-edges are absorbing. An edge
is either constant (``weight``) or parameterized: ``weight + coefficients · θ``.

The starting vertex is not a state of the chain: it spends no time and has no in-edges,
so the all-zero state is **reserved** for it, and every way of building a graph refuses
it as an ordinary state (a queue that starts empty, ``[0] → [1] → [2]``, would otherwise
silently lose its first step). Shift the encoding instead (store ``n + 1`` for ``n``), or
add a component that is 1 in every state.

Input is checked, not coerced: state entries must be integers (Python or numpy ints, or
floats with an integral value) in the int64 range, rates and coefficients real numbers
(not strings or booleans); anything else is an :class:`InvalidGraphError` naming the
state or edge. Sizes (``state_length``, ``n_params``) of the wrong type are a
``TypeError``.

Rules (``docs/algorithm.md``, "The model") are checked where they can be broken: a bad
edge is refused by ``add_edge`` and whole-graph rules by :meth:`Graph.validate`, which
:func:`phasetrace.record_trace` runs before any work. Nothing is silently fixed.

Parallel edges are **rejected**: add the rates yourself, or use
:meth:`Graph.from_callback`, which documents that it sums duplicate transitions.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidGraphError

#: Tolerance on ``|Σα − 1|`` for the initial distribution.
INITIAL_SUM_TOL = 1e-12
#: Largest ``state_length`` and ``n_params`` a :class:`Graph` accepts (far beyond any model
#: that fits in memory; a larger value is a mistake, refused before anything is allocated).
MAX_STATE_LENGTH = 1 << 20
MAX_PARAMS = 1 << 20
#: Largest document :meth:`Graph.from_json` reads (characters of a str, or bytes).
MAX_JSON_BYTES = 1 << 30
#: :meth:`Graph.from_json` refuses a document whose dense coefficient table (edges ×
#: n_params, 8 bytes each) has more entries than this many per byte of the document, plus
#: ``_JSON_COEF_FREE``: a small document cannot make it allocate gigabytes.
_JSON_COEF_PER_BYTE = 16
_JSON_COEF_FREE = 1 << 20
_JSON_FORMAT = "phasetrace.graph"
_JSON_VERSION = 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

#: Why the all-zero state cannot be an ordinary state (used in every message about it).
_START_RESERVED = (
    "the all-zero state is reserved for the starting vertex, which is not a state of the "
    "chain: it only carries the initial distribution (its out-edges) and spends no time. "
    "To model a chain that starts in an all-zero state, shift your state encoding (store "
    "n + 1 for n) or add a component that is 1 in every state, and make that state the "
    "initial one"
)

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


@dataclass(frozen=True, eq=False)
class GraphArrays:
    """A graph as arrays (read-only), vertices in creation order, the start first.

    Attributes
    ----------
    states : ndarray (N, state_length) int64
    ptr : ndarray (N + 1,) int64
        The out-edges of vertex ``v`` are ``ptr[v] : ptr[v + 1]``, in the order they were
        added.
    dst : ndarray (E,) int64
        Target vertex of each edge.
    base : ndarray (E,) float64
        Constant rate, or the base of a parameterized rate.
    coef : ndarray (E, n_params) float64
        Coefficients of a parameterized rate (zeros for a constant edge).
    param : ndarray (E,) bool
        Whether the edge was added as parameterized.
    """

    states: np.ndarray
    ptr: np.ndarray
    dst: np.ndarray
    base: np.ndarray
    coef: np.ndarray
    param: np.ndarray

    def __post_init__(self):
        for a in (self.states, self.ptr, self.dst, self.base, self.coef, self.param):
            a.flags.writeable = False

    @property
    def src(self) -> np.ndarray:
        """Source vertex of each edge."""
        return np.repeat(np.arange(self.ptr.shape[0] - 1), np.diff(self.ptr))


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
        return np.array(self._graph._state(self._index), dtype=np.int64)

    def edges(self) -> list[Edge]:
        """Out-edges in the order they were added."""
        g = self._graph
        return [Edge(Vertex(g, t), b, c) for t, (b, c) in g._out[self._index].items()]

    def is_starting(self) -> bool:
        return self._index == 0

    def is_absorbing(self) -> bool:
        """True for a vertex other than the start with no out-edges."""
        return self._index != 0 and self._graph._out_degree(self._index) == 0

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

        ``coefficients`` must have length ``n_params``; the rate must be finite and
        ``>= 0`` at every θ the trace is evaluated at (checked then). A rate of exactly 0
        contributes nothing; a reachable state whose every rate is 0 is an error then.

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
        return f"Vertex({list(self._graph._state(self._index))})"


class Graph:
    """A continuous phase-type model as a graph of states and rates.

    Parameters
    ----------
    state_length : int
        Length of every state vector, 1 to :data:`MAX_STATE_LENGTH`. The starting vertex
        has the all-zero state, which no other vertex may have.
    n_params : int, default 0
        Length of θ for parameterized edges, 0 to :data:`MAX_PARAMS`.

    Raises
    ------
    TypeError
        If ``state_length`` or ``n_params`` is not an int (a bool or a float is not).
    ValueError
        If one is out of range.

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
        self.state_length = _size_arg(state_length, "state_length", 1, MAX_STATE_LENGTH)
        self.n_params = _size_arg(n_params, "n_params", 0, MAX_PARAMS)
        start = (0,) * self.state_length
        # Two representations: Python structures (what the vertex/edge API edits) and
        # arrays (what validation, decomposition and keys read). Either may be missing
        # and is built from the other on first use; a change drops the arrays.
        self._states_list: list[tuple[int, ...]] | None = [start]
        self._index_dict: dict[tuple[int, ...], int] | None = {start: 0}
        self._out_list: list[dict[int, _EdgeData]] | None = [{}]
        self._arrays: GraphArrays | None = None
        # Bumped by every change, so derived data (the pipeline's decomposition) can be
        # reused while the graph is unchanged.
        self._version = 0

    # -- the two representations ---------------------------------------------------------
    @property
    def _states(self) -> list[tuple[int, ...]]:
        if self._states_list is None:
            self._states_list = list(map(tuple, self._arrays.states.tolist()))
        return self._states_list

    @property
    def _index(self) -> dict[tuple[int, ...], int]:
        if self._index_dict is None:
            self._index_dict = {s: i for i, s in enumerate(self._states)}
        return self._index_dict

    @property
    def _out(self) -> list[dict[int, _EdgeData]]:
        if self._out_list is None:
            self._out_list = _out_lists(self._arrays)
        return self._out_list

    def _state(self, i: int) -> tuple[int, ...]:
        if self._states_list is None:
            return tuple(self._arrays.states[i].tolist())
        return self._states_list[i]

    def _out_degree(self, i: int) -> int:
        if self._out_list is None:
            return int(self._arrays.ptr[i + 1] - self._arrays.ptr[i])
        return len(self._out_list[i])

    def _changed(self) -> None:
        """Before an edit: make the Python structures current and drop the arrays."""
        _ = self._states, self._index, self._out
        self._arrays = None
        self._version += 1

    def arrays(self) -> GraphArrays:
        """The graph as arrays (built once per change; read-only).

        Examples
        --------
        >>> import phasetrace as pt
        >>> a = pt.models.kingman(3, state_space="lineages").arrays()
        >>> a.states.tolist(), a.dst.tolist()
        ([[0], [3], [2], [1]], [1, 2, 3])
        """
        if self._arrays is None:
            self._arrays = _arrays_from_lists(self._states, self._out, self.n_params)
        return self._arrays

    # -- construction -------------------------------------------------------------------
    def starting_vertex(self) -> Vertex:
        """The starting vertex (state all zeros); its out-edges are the initial distribution."""
        return Vertex(self, 0)

    def _key(self, state: Iterable[int]) -> tuple[int, ...]:
        key = _state_tuple(state)
        if len(key) != self.state_length:
            raise InvalidGraphError(
                f"state {list(key)} has length {len(key)}, "
                f"expected state_length={self.state_length}"
            )
        return key

    def find_vertex(self, state: Iterable[int]) -> Vertex | None:
        """The vertex with this state, or ``None`` (the all-zero state is the start's)."""
        i = self._index.get(self._key(state))
        return None if i is None else Vertex(self, i)

    def find_or_create_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex with this state, created (without edges) if it does not exist.

        ``state`` is a sequence of ``state_length`` integers (Python or numpy integers,
        or floats with an integral value), each in the int64 range. The all-zero state is
        refused: it belongs to the starting vertex (:meth:`starting_vertex`), which is
        not a state of the chain.

        Raises
        ------
        InvalidGraphError
            For an entry that is not an integer or out of range, a state of another
            length, or the all-zero state.
        """
        key = self._key(state)
        if not any(key):
            raise InvalidGraphError(f"state {list(key)}: {_START_RESERVED}")
        i = self._index.get(key)
        if i is None:
            self._changed()
            i = len(self._states)
            self._states.append(key)
            self._index[key] = i
            self._out.append({})
        return Vertex(self, i)

    def vertices(self) -> list[Vertex]:
        """All vertices in creation order; the starting vertex is first."""
        return [Vertex(self, i) for i in range(len(self))]

    def __len__(self) -> int:
        if self._states_list is None:
            return int(self._arrays.states.shape[0])
        return len(self._states_list)

    @property
    def n_edges(self) -> int:
        if self._out_list is None:
            return int(self._arrays.dst.shape[0])
        return sum(len(o) for o in self._out_list)

    def _describe(self, i: int) -> str:
        return "start" if i == 0 else f"state {list(self._state(i))}"

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
                f"{where}: the starting vertex cannot have in-edges ({_START_RESERVED})"
            )
        if dst in self._out[src]:
            raise InvalidGraphError(
                f"{where}: a parallel edge; this edge exists already (add the rates into one edge)"
            )
        base = _weight(weight, where)
        coefs = None
        if coefficients is not None:
            coefs = self._check_coefficients(where, src, coefficients)
        if coefs is None and base <= 0.0:
            raise InvalidGraphError(f"{where}: weight {base!r} must be > 0")
        self._changed()
        self._out[src][dst] = (base, coefs)

    def _check_coefficients(self, where: str, src: int, coefficients) -> tuple[float, ...]:
        if src == 0:
            raise InvalidGraphError(
                f"{where}: the initial distribution must be constant; use add_edge"
            )
        coefs = _coefficients(coefficients, where)
        if len(coefs) != self.n_params:
            raise InvalidGraphError(
                f"{where}: {len(coefs)} coefficients given, the graph has n_params={self.n_params}"
            )
        if not all(math.isfinite(c) for c in coefs):
            raise InvalidGraphError(f"{where}: coefficients {list(coefs)} must be finite")
        return coefs

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole-graph rules: an initial distribution summing to 1, and every
        transient vertex able to reach an absorbing one (else ``(−S)`` is singular).

        Raises
        ------
        InvalidGraphError
            If a rule is broken. The message names the vertex state.
        """
        arr = self.arrays()
        start = slice(int(arr.ptr[0]), int(arr.ptr[1]))
        if start.stop == start.start:
            raise InvalidGraphError(
                "start: the starting vertex has no out-edges (no initial distribution)"
            )
        total = math.fsum(arr.base[start].tolist())
        if abs(total - 1.0) > INITIAL_SUM_TOL:
            raise InvalidGraphError(
                f"start: initial distribution sums to {total!r}, not 1; for a defect add an "
                "explicit edge from the start to an absorbing vertex"
            )
        stuck = self._vertices_not_reaching_absorption(arr)
        if stuck.size:
            shown = ", ".join(str(s) for s in arr.states[stuck[:5]].tolist())
            more = f" and {stuck.size - 5} more" if stuck.size > 5 else ""
            raise InvalidGraphError(
                f"state {shown}{more}: transient vertex cannot reach an absorbing vertex "
                "(a closed class without exit; (-S) is singular)"
            )

    @staticmethod
    def _vertices_not_reaching_absorption(arr: GraphArrays) -> np.ndarray:
        from ._graphalgo import reaches

        absorbing = np.diff(arr.ptr) == 0
        absorbing[0] = False
        seen = reaches(arr.ptr, arr.dst, absorbing)
        seen[0] = True  # the start earns no time; its targets are checked themselves
        stuck = np.flatnonzero(~seen)
        return stuck[_state_order(arr.states[stuck])] if stuck.size else stuck[:0]

    # -- canonical serialization -------------------------------------------------------
    def canonical_order(self) -> list[int]:
        """Vertex indices: the start first, then the rest sorted by state."""
        return _canonical_order(self.arrays().states).tolist()

    def _canonical(self) -> tuple[GraphArrays, np.ndarray, np.ndarray]:
        """Arrays, canonical vertex order, and edges sorted by (source, target) position."""
        arr = self.arrays()
        order = _canonical_order(arr.states)
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        src, dst = pos[arr.src], pos[arr.dst]
        edges = np.lexsort((dst, src))
        return arr, order, edges

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
        arr, order, edges = self._canonical()
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        src, dst = pos[arr.src][edges].tolist(), pos[arr.dst][edges].tolist()
        base, param = arr.base[edges].tolist(), arr.param[edges].tolist()
        coef = arr.coef[edges].tolist()
        doc = {
            "format": _JSON_FORMAT,
            "version": _JSON_VERSION,
            "state_length": self.state_length,
            "n_params": self.n_params,
            "vertices": arr.states[order].tolist(),
            "edges": [
                [s, d, b, c if p else None]
                for s, d, b, c, p in zip(src, dst, base, coef, param, strict=True)
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Graph:
        """Rebuild a graph written by :meth:`to_json`.

        The document is checked entry by entry before anything is built, and every
        problem is reported with its place (``edges[3][1]: -1 is not a vertex index``):
        vertex indices are ints in range, states are rows of ``state_length`` ints in the
        int64 range (the first all zeros, the start; no other all-zero or repeated row),
        rates and coefficients are finite numbers (a boolean is not a number, a float is
        not an index), and ``n_params`` equals the length of every coefficient list.

        Sizes read from the document are checked against its own content before any
        allocation: ``state_length`` must equal the length of the vertex rows, and the
        dense coefficient table (edges × ``n_params``) may not exceed a fixed multiple of
        the document's size. Documents above :data:`MAX_JSON_BYTES` are refused unread.

        Raises
        ------
        InvalidGraphError
            For anything but a valid graph document.
        TypeError
            If ``text`` is neither ``str`` nor bytes.
        """
        if isinstance(text, memoryview):
            text = text.tobytes()
        if not isinstance(text, str | bytes | bytearray):
            raise TypeError(f"Graph.from_json expects str or bytes, got {type(text).__name__}")
        if len(text) > MAX_JSON_BYTES:
            raise InvalidGraphError(
                f"graph document of {len(text)} bytes, above the limit of {MAX_JSON_BYTES} "
                "(phasetrace.graph.MAX_JSON_BYTES)"
            )
        try:
            doc = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise InvalidGraphError(
                "malformed graph document: nested too deeply (a graph document nests 4 levels)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise InvalidGraphError(f"malformed graph document: {_cut(str(exc), 200)}") from None
        return _graph_from_document(cls, doc, len(text))

    def content_key(self) -> str:
        """sha256 (hex) of the graph's canonical content: equal graphs, equal keys.

        Computed from arrays in canonical order (vertices by state, edges by position), so
        it costs about what sorting the graph costs, and nothing depends on creation
        order.

        Examples
        --------
        >>> import phasetrace as pt
        >>> pt.models.kingman(5).content_key() == pt.models.kingman(5).content_key()
        True
        """
        import hashlib

        arr, order, edges = self._canonical()
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        h = hashlib.sha256(b"phasetrace.graph/%d" % _JSON_VERSION)
        h.update(np.array([self.state_length, self.n_params, order.size, edges.size]).tobytes())
        for part in (
            arr.states[order],
            pos[arr.src][edges],
            pos[arr.dst][edges],
            arr.base[edges],
            arr.coef[edges],
            arr.param[edges],
        ):
            h.update(np.ascontiguousarray(part).astype(part.dtype.newbyteorder("<")).tobytes())
        return h.hexdigest()

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
            A ``next_state`` of all zeros is refused before the callback sees it (that
            state is the starting vertex's; shift the encoding).
        initial : state or list of (state, probability)
            Where the chain starts (not the all-zero state).
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
        n_params = _size_arg(n_params, "n_params", 0, MAX_PARAMS)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        pairs = _initial_pairs(initial)
        index: dict[tuple[int, ...], int] = {}
        for state, _ in pairs:
            if not any(state):
                raise InvalidGraphError(f"initial state {list(state)}: {_START_RESERVED}")
            index.setdefault(state, len(index))
        states = list(index)
        src: list[int] = []
        dst: list[int] = []
        base: list[float] = []
        coef: list[tuple[float, ...] | None] = []
        i = 0
        while i < len(states):  # breadth first: the list grows while we walk it
            transitions = callback(states[i])
            for nxt, (b, c) in _merge_transitions(states[i], transitions, n_params).items():
                j = index.get(nxt)
                if j is None:
                    if not any(nxt):  # before the callback sees it
                        raise InvalidGraphError(
                            f"state {list(nxt)}, reached from state {list(states[i])}: "
                            f"{_START_RESERVED}"
                        )
                    j = index[nxt] = len(states)
                    states.append(nxt)
                src.append(i)
                dst.append(j)
                base.append(b)
                coef.append(c)
            i += 1
        return cls._from_lists(states, src, dst, base, coef, pairs, index, n_params)

    @classmethod
    def _from_lists(cls, states, src, dst, base, coef, pairs, index, n_params) -> Graph:
        """:meth:`from_arrays` for a builder's lists; ``coef`` entries ``None`` are constant."""
        param = np.array([c is not None for c in coef], dtype=bool)
        zeros = (0.0,) * n_params
        coefs = [zeros if c is None else c for c in coef]
        for c in coefs:
            if len(c) != n_params:
                raise InvalidGraphError(
                    f"{len(c)} coefficients given, the graph has n_params={n_params}"
                )
        lengths = {len(s) for s in states}
        if len(lengths) != 1:
            raise InvalidGraphError(f"states have different lengths {sorted(lengths)}")
        initial = ([index[s] for s, _ in pairs], [p for _, p in pairs])
        return cls._build(
            _int_array(states, "states").reshape(len(states), -1),
            np.asarray(src, dtype=np.int64),
            np.asarray(dst, dtype=np.int64),
            np.asarray(base, dtype=np.float64),
            np.asarray(coefs, dtype=np.float64).reshape(len(coefs), n_params),
            param,
            initial,
            n_params,
        )

    @classmethod
    def from_arrays(
        cls,
        states,
        src,
        dst,
        weights,
        coefficients=None,
        *,
        initial,
        n_params: int | None = None,
    ) -> Graph:
        """Build a graph from arrays of transitions, with no Python loop per edge.

        Parameters
        ----------
        states : array_like of int, shape (N, state_length)
            The states of the vertices other than the start, one per row, all distinct
            (the all-zero state is the start's).
        src, dst : array_like of int, shape (E,)
            Each transition's source and target: rows of ``states``.
        weights : array_like of float, shape (E,)
            The constant rate, or the base of a parameterized rate.
        coefficients : array_like of float, shape (E, n_params), optional
            The rate of edge ``e`` is ``weights[e] + coefficients[e] · θ``; an edge whose
            coefficients are all zero is a constant edge (its weight must be > 0).
        initial : (indices, probabilities)
            Where the chain starts: rows of ``states`` and their probabilities.
        n_params : int, optional
            Length of θ (default: the number of columns of ``coefficients``, else 0).

        Returns
        -------
        Graph

        Raises
        ------
        InvalidGraphError
            For duplicate states, an index out of range, a self-loop, a parallel edge, a
            non-finite or non-positive constant rate; the message names the states.

        Examples
        --------
        The Kingman coalescent on lineage counts 4 → 3 → 2 → 1 (θ = coalescence rate):

        >>> import numpy as np, phasetrace as pt
        >>> k = np.arange(4, 0, -1)                      # states [4], [3], [2], [1]
        >>> g = pt.Graph.from_arrays(
        ...     k[:, None], src=[0, 1, 2], dst=[1, 2, 3], weights=np.zeros(3),
        ...     coefficients=(k[:3] * (k[:3] - 1) / 2)[:, None], initial=([0], [1.0]))
        >>> float(pt.record_trace(g).expectation([1.0]))   # 2(1 - 1/4)
        1.5
        """
        st = _int_array(states, "states")
        if st.ndim != 2 or st.shape[1] < 1:
            raise InvalidGraphError(f"states must be (N, state_length); got shape {st.shape}")
        w = _float_array(weights, "weights")
        if w.ndim != 1:
            raise InvalidGraphError(f"weights must be (E,); got shape {w.shape}")
        if n_params is not None:
            n_params = _size_arg(n_params, "n_params", 0, MAX_PARAMS)
        if coefficients is None:
            p = 0 if n_params is None else n_params
            coef = np.zeros((w.shape[0], p))
        else:
            coef = _float_array(coefficients, "coefficients")
            coef = coef.reshape(w.shape[0], -1) if coef.ndim == 1 and n_params == 1 else coef
            if coef.ndim != 2 or coef.shape[0] != w.shape[0]:
                raise InvalidGraphError(
                    f"coefficients must be (E, n_params) with E={w.shape[0]}; got {coef.shape}"
                )
            p = coef.shape[1] if n_params is None else n_params
            if coef.shape[1] != p:
                raise InvalidGraphError(f"coefficients have {coef.shape[1]} columns, n_params={p}")
        try:
            idx, probs = initial
        except (TypeError, ValueError):
            raise InvalidGraphError(
                f"initial must be (indices, probabilities); got {_short(initial)}"
            ) from None
        idx, probs = _int_array(idx, "initial indices"), _float_array(probs, "probabilities")
        if idx.ndim != 1 or probs.ndim != 1:
            raise InvalidGraphError(
                f"initial indices and probabilities must be 1-d; got shapes {idx.shape} and "
                f"{probs.shape}"
            )
        return cls._build(
            st,
            _int_array(src, "src"),
            _int_array(dst, "dst"),
            w,
            coef,
            coef.any(axis=1),
            (idx.tolist(), probs),
            p,
        )

    @classmethod
    def _build(cls, states, src, dst, base, coef, param, initial, n_params) -> Graph:
        """Check transitions given as arrays and make the graph (start = vertex 0)."""
        n, length = states.shape
        where = _ArrayPlaces(states)
        if src.shape != dst.shape or src.shape != base.shape or src.ndim != 1:
            raise InvalidGraphError(
                f"src, dst and weights must have one equal length; got {src.shape}, "
                f"{dst.shape}, {base.shape}"
            )
        for name, a in (("src", src), ("dst", dst)):
            bad = np.flatnonzero((a < 0) | (a >= n))
            if bad.size:
                raise InvalidGraphError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a row of states")
        _check_states(states, where)
        loops = np.flatnonzero(src == dst)
        if loops.size:
            raise InvalidGraphError(
                f"edge {where(src[loops[0]])} -> itself: self-loops are not allowed"
            )
        pairs = src * n + dst
        order = np.argsort(pairs, kind="stable")
        dup = np.flatnonzero(pairs[order][1:] == pairs[order][:-1])
        if dup.size:
            e = order[dup[0]]
            raise InvalidGraphError(
                f"edge {where(src[e])} -> {where(dst[e])}: a parallel edge (add the rates "
                "into one edge)"
            )
        _check_rates(base, coef, param, src, dst, where)
        idx, probs = initial
        probs = np.asarray(probs, dtype=np.float64)
        if len(idx) != probs.shape[0] or not len(idx):
            raise InvalidGraphError("initial: give one probability per starting state")
        if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= n:
            raise InvalidGraphError(f"initial: indices {idx} must be distinct rows of states")
        if not (np.isfinite(probs).all() and (probs > 0).all()):
            raise InvalidGraphError(f"initial: probabilities {probs.tolist()} must be > 0")
        # Vertex 0 is the start; user row i is vertex i + 1. Edges grouped by source.
        order = np.argsort(src, kind="stable")
        all_src = np.concatenate([np.zeros(len(idx), np.int64), src[order] + 1])
        arrays = GraphArrays(
            states=np.concatenate([np.zeros((1, length), np.int64), states]),
            ptr=np.searchsorted(all_src, np.arange(n + 2)).astype(np.int64),
            dst=np.concatenate([np.asarray(idx, np.int64) + 1, dst[order] + 1]),
            base=np.concatenate([probs, base[order]]),
            coef=np.concatenate([np.zeros((len(idx), n_params)), coef[order]]),
            param=np.concatenate([np.zeros(len(idx), bool), param[order]]),
        )
        g = cls(length, n_params)
        g._states_list = g._index_dict = g._out_list = None
        g._arrays = arrays
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
    """``from_callback``'s ``initial``: one state, or ``(state, probability)`` pairs."""
    if isinstance(initial, str | bytes | bytearray) or not isinstance(initial, Iterable):
        raise InvalidGraphError(f"initial state {_short(initial)} is not a sequence of integers")
    items = list(initial)
    if (
        items
        and isinstance(items[0], Sequence | np.ndarray)
        and len(items[0]) == 2
        and isinstance(items[0][0], Sequence | np.ndarray)
    ):
        pairs = []
        for item in items:
            if not (isinstance(item, Sequence | np.ndarray) and len(item) == 2):
                raise InvalidGraphError(
                    f"initial: {_short(item)} is not a (state, probability) pair"
                )
            state = _state_tuple(item[0])
            pairs.append((state, _number(item[1], f"initial {list(state)}: probability")))
        return pairs
    return [(_state_tuple(items), 1.0)]


def _merge_transitions(source: tuple[int, ...], transitions, n_params: int) -> dict:
    """A callback's ``[(next_state, rate), ...]`` for ``source``, checked and summed by target."""
    if isinstance(transitions, str | bytes) or not isinstance(transitions, Iterable):
        raise InvalidGraphError(
            f"state {list(source)}: the callback returned {_short(transitions)}, expected a "
            "list of (next_state, rate) pairs"
        )
    merged: dict[tuple[int, ...], tuple[float, tuple[float, ...] | None]] = {}
    for item in transitions:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise InvalidGraphError(
                f"state {list(source)}: the callback returned {_short(item)} among its "
                "transitions, expected a (next_state, rate) pair"
            )
        nxt, rate = item
        key = _state_tuple(nxt)
        rate_type = type(rate)
        if rate_type is float and math.isfinite(rate):  # the common cases first
            base, coefs = rate, None
        elif (
            (rate_type is tuple or rate_type is list)
            and len(rate) == 2
            and type(rate[0]) is float
            and math.isfinite(rate[0])
            and type(rate[1]) is list
        ):
            base, coefs = rate[0], _coefficients(rate[1], source, key)
        elif (
            isinstance(rate, tuple | list)
            and len(rate) == 2
            and not isinstance(rate[1], numbers.Number)
        ):
            base, coefs = _weight(rate[0], source, key), _coefficients(rate[1], source, key)
        else:
            base, coefs = _weight(rate, source, key), None
        if key in merged:
            b0, c0 = merged[key]
            if c0 is None and coefs is None:
                merged[key] = (b0 + base, None)
            else:
                c0 = c0 or (0.0,) * n_params
                c1 = coefs or (0.0,) * n_params
                if len(c0) != len(c1):
                    raise InvalidGraphError(
                        f"{_edge_name(source, key)}: {len(c1)} coefficients given, the graph "
                        f"has n_params={n_params}"
                    )
                merged[key] = (b0 + base, tuple(x + y for x, y in zip(c0, c1, strict=True)))
        else:
            merged[key] = (base, coefs)
    return merged


# -- checking what users hand in --------------------------------------------------------------
def _py(x):
    """A numpy scalar as the Python number it holds (for readable messages)."""
    return x.item() if isinstance(x, np.generic) else x


def _short(x, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters, for messages (safe for huge ints too)."""
    try:
        text = repr(_py(x))
    except ValueError:  # an int beyond Python's digit limit for str()
        text = f"<{type(x).__name__} too large to show>"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(x) -> str:
    """'a list', 'an int', 'null': the JSON-ish kind of a value, for messages."""
    if x is None:
        return "null"
    name = type(x).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def _size_arg(value, name: str, lo: int, hi: int) -> int:
    """``state_length``/``n_params`` of the API: an int (not a bool) in ``[lo, hi]``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {_short(value)} ({type(value).__name__})")
    value = int(value)
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if value > hi:
        raise ValueError(
            f"{name}={value} is above the limit of {hi} (phasetrace.graph.MAX_"
            f"{'STATE_LENGTH' if name == 'state_length' else 'PARAMS'})"
        )
    return value


_INTS = frozenset((int,))


def _state_tuple(state) -> tuple[int, ...]:
    """A state as a tuple of Python ints in the int64 range; never truncated.

    Accepted entries: Python and numpy integers (bools count as 0/1) and floats with an
    integral value. Anything else is an :class:`InvalidGraphError` naming the entry.
    """
    if type(state) is tuple:
        items = state
    elif isinstance(state, np.ndarray) and state.ndim == 1:
        items = tuple(state.tolist())
    elif isinstance(state, str | bytes | bytearray | np.ndarray) or not isinstance(state, Iterable):
        raise InvalidGraphError(f"state {_short(state)} is not a sequence of integers")
    else:
        items = tuple(state)
    if set(map(type, items)) <= _INTS and (
        not items or (min(items) >= _I64_MIN and max(items) <= _I64_MAX)
    ):
        return items
    return tuple(_state_entry(v, items) for v in items)


def _state_entry(v, items) -> int:
    if isinstance(v, bool | np.bool_):
        return int(v)
    integral = isinstance(v, int | np.integer) or (
        isinstance(v, float | np.floating) and math.isfinite(v) and float(v).is_integer()
    )
    if integral:
        out = int(v)
    else:
        shown = _short([_py(x) for x in items], 80)
        raise InvalidGraphError(f"state {shown}: entry {_short(v)} is not an integer")
    if not _I64_MIN <= out <= _I64_MAX:
        shown = _short([_py(x) for x in items], 80)
        raise InvalidGraphError(f"state {shown}: entry {_short(out)} is out of int64 range")
    return out


def _number(value, what: str) -> float:
    """A rate or probability as a float; ``inf`` for an int too large for a float."""
    if type(value) is float:
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidGraphError(f"{what} {_short(value)} is not a number")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _edge_name(source: tuple[int, ...], target: tuple[int, ...]) -> str:
    return f"edge state {list(source)} -> state {list(target)}"


def _weight(weight, where, target=None) -> float:
    """A finite rate as a float. ``where`` names the edge, or is its source state (a
    tuple) with ``target`` (the name is only built for a message)."""
    if type(weight) is float and math.isfinite(weight):
        return weight
    if target is not None:
        where = _edge_name(where, target)
    base = _number(weight, f"{where}: weight")
    if not math.isfinite(base):
        raise InvalidGraphError(f"{where}: weight {_short(weight)} is not finite")
    return base


_PLAIN_NUMBERS = frozenset((float, int))


def _coefficients(coefficients, where, target=None) -> tuple[float, ...]:
    """Coefficients as a tuple of floats: a flat sequence of real numbers (not bools).
    ``where`` and ``target`` as for :func:`_weight`."""
    if type(coefficients) in (list, tuple) and set(map(type, coefficients)) <= _PLAIN_NUMBERS:
        try:  # the common case
            return tuple(map(float, coefficients))
        except OverflowError:
            pass
    if target is not None:
        where = _edge_name(where, target)
    bad = isinstance(coefficients, str | bytes)
    if not bad:
        try:
            arr = np.asarray(coefficients)
        except (TypeError, ValueError, OverflowError):
            bad = True
        else:
            bad = arr.ndim != 1 or (arr.size > 0 and arr.dtype.kind not in "iuf")
    if bad:
        raise InvalidGraphError(
            f"{where}: coefficients {_short(coefficients)} must be a flat sequence of numbers"
        )
    return tuple(arr.astype(np.float64).tolist())


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed in a graph document (rates must be finite)")


def _doc_fail(message: str):
    raise InvalidGraphError(f"malformed graph document: {message}")


def _doc_int(doc: dict, name: str, lo: int) -> int:
    value = doc[name]
    if type(value) is not int:
        _doc_fail(f"{name}: {_short(value)} is not an int")
    if value < lo:
        _doc_fail(f"{name}: {value} must be >= {lo}")
    return value


def _doc_number(value, place: str) -> float:
    if type(value) is float:
        out = value
    elif type(value) is int:
        try:
            out = float(value)
        except OverflowError:
            out = math.inf
    else:
        _doc_fail(f"{place}: {_short(value)} is not a number")
    if not math.isfinite(out):
        _doc_fail(f"{place}: {_short(value)} is not a finite number")
    return out


def _doc_states(vertices: list, length: int) -> tuple[list[tuple[int, ...]], dict]:
    states: list[tuple[int, ...]] = []
    index: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(vertices):
        if type(row) is not list:
            _doc_fail(f"vertices[{i}]: {_kind(row)}, expected a list of {length} ints")
        if len(row) != length:
            _doc_fail(f"vertices[{i}]: {len(row)} entries, state_length is {length}")
        if not all(type(v) is int for v in row):
            j = next(j for j, v in enumerate(row) if type(v) is not int)
            _doc_fail(f"vertices[{i}][{j}]: {_short(row[j])} is not an int")
        if min(row) < _I64_MIN or max(row) > _I64_MAX:
            j = next(j for j, v in enumerate(row) if not _I64_MIN <= v <= _I64_MAX)
            _doc_fail(f"vertices[{i}][{j}]: {_short(row[j])} is out of int64 range")
        key = tuple(row)
        if i == 0 and any(key):
            _doc_fail(f"vertices[0]: the first vertex must be the start (all zeros), got {row}")
        if i > 0 and not any(key):
            _doc_fail(f"vertices[{i}]: {_START_RESERVED}")
        j = index.setdefault(key, i)
        if j != i:
            _doc_fail(f"vertices[{i}]: state {_short(row, 80)} appears twice (also vertices[{j}])")
        states.append(key)
    return states, index


def _doc_edge(edge, e: int, n: int, n_params: int):
    if type(edge) is not list or len(edge) != 4:
        what = f"{len(edge)} items" if type(edge) is list else _kind(edge)
        _doc_fail(f"edges[{e}]: {what}, expected [source, target, weight, coefficients]")
    src, dst, weight, coefs = edge
    for k, v in ((0, src), (1, dst)):
        if type(v) is not int:
            _doc_fail(f"edges[{e}][{k}]: {_short(v)} is not an int (a vertex index)")
        if not 0 <= v < n:
            _doc_fail(f"edges[{e}][{k}]: {_short(v)} is not a vertex index (0 to {n - 1})")
    base = _doc_number(weight, f"edges[{e}][2]")
    if coefs is None:
        return src, dst, base, None
    if type(coefs) is not list:
        _doc_fail(f"edges[{e}][3]: {_kind(coefs)}, expected a list of n_params numbers or null")
    if len(coefs) != n_params:
        _doc_fail(f"edges[{e}][3]: {len(coefs)} coefficients, n_params is {n_params}")
    return src, dst, base, [_doc_number(c, f"edges[{e}][3][{k}]") for k, c in enumerate(coefs)]


def _graph_from_document(cls, doc, size: int) -> Graph:
    """Check a parsed graph document completely, then build the graph (``from_json``)."""
    if type(doc) is not dict:
        _doc_fail(f"the top level is {_kind(doc)}, expected an object")
    fmt, version = doc.get("format"), doc.get("version")
    if fmt != _JSON_FORMAT or type(version) is not int or version != _JSON_VERSION:
        raise InvalidGraphError(
            f"not a phasetrace graph document of version {_JSON_VERSION}: "
            f"format={_short(fmt)} version={_short(version)}"
        )
    for name in ("state_length", "n_params", "vertices", "edges"):
        if name not in doc:
            _doc_fail(f"{name!r} is missing")
    length = _doc_int(doc, "state_length", 1)
    n_params = _doc_int(doc, "n_params", 0)
    vertices, edges = doc["vertices"], doc["edges"]
    for name, value in (("vertices", vertices), ("edges", edges)):
        if type(value) is not list:
            _doc_fail(f"{name}: {_kind(value)}, expected a list")
    if not vertices:
        _doc_fail("vertices: empty; the first vertex must be the start")
    # Sizes against the document's own content, before anything is allocated.
    if type(vertices[0]) is list and len(vertices[0]) != length:
        _doc_fail(f"state_length is {length} but vertices[0] has {len(vertices[0])} entries")
    if length > MAX_STATE_LENGTH:
        _doc_fail(f"state_length: {length} is above the limit of {MAX_STATE_LENGTH}")
    if n_params > MAX_PARAMS:
        _doc_fail(f"n_params: {n_params} is above the limit of {MAX_PARAMS}")
    dense = len(edges) * n_params
    if dense > _JSON_COEF_PER_BYTE * size + _JSON_COEF_FREE:
        _doc_fail(
            f"n_params is {n_params} with {len(edges)} edges: a coefficient table of {dense} "
            f"entries is out of proportion to this {size}-byte document"
        )
    states, index = _doc_states(vertices, length)
    checked = [_doc_edge(edge, e, len(states), n_params) for e, edge in enumerate(edges)]
    g = cls(length, n_params)
    g._states_list, g._index_dict, g._out_list = states, index, [{} for _ in states]
    for e, (src, dst, base, coefs) in enumerate(checked):
        try:
            g._add_edge(src, Vertex(g, dst), base, coefs)
        except InvalidGraphError as exc:
            _doc_fail(f"edges[{e}]: {exc}")
    return g


# -- arrays ---------------------------------------------------------------------------------
def _state_order(states: np.ndarray) -> np.ndarray:
    """Indices that sort the rows of ``states`` lexicographically (as tuples sort)."""
    if states.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort(states.T[::-1])


def _canonical_order(states: np.ndarray) -> np.ndarray:
    """The start (vertex 0) first, then every other vertex by state."""
    return np.concatenate([[0], 1 + _state_order(states[1:])]).astype(np.int64)


def _arrays_from_lists(states, outs, n_params: int) -> GraphArrays:
    ptr = np.zeros(len(outs) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(o) for o in outs])
    zeros = (0.0,) * n_params
    dst = [t for o in outs for t in o]
    data = [d for o in outs for d in o.values()]
    return GraphArrays(
        states=np.array(states, dtype=np.int64).reshape(len(states), -1),
        ptr=ptr,
        dst=np.array(dst, dtype=np.int64),
        base=np.array([b for b, _ in data], dtype=np.float64),
        coef=np.array([zeros if c is None else c for _, c in data], dtype=np.float64).reshape(
            len(data), n_params
        ),
        param=np.array([c is not None for _, c in data], dtype=bool),
    )


def _out_lists(arr: GraphArrays) -> list[dict[int, _EdgeData]]:
    dst, base = arr.dst.tolist(), arr.base.tolist()
    coef, param = arr.coef.tolist(), arr.param.tolist()
    ptr = arr.ptr.tolist()
    return [
        {dst[e]: (base[e], tuple(coef[e]) if param[e] else None) for e in range(ptr[v], ptr[v + 1])}
        for v in range(len(ptr) - 1)
    ]


class _ArrayPlaces:
    """Names a row of a user's ``states`` array in error messages."""

    def __init__(self, states: np.ndarray):
        self.states = states

    def __call__(self, row: int) -> str:
        return f"state {self.states[int(row)].tolist()}"


def _int_array(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidGraphError(f"{name} must be an array of integers: {exc}") from None
    if a.size and a.dtype.kind not in "iu":
        raise InvalidGraphError(f"{name} must be integers (int64); got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise InvalidGraphError(f"{name}: values above {np.iinfo(np.int64).max} do not fit int64")
    return a.astype(np.int64)


def _float_array(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidGraphError(f"{name} must be an array of numbers: {exc}") from None
    if a.size and a.dtype.kind not in "iuf":
        raise InvalidGraphError(f"{name} must be numbers (float64); got dtype {a.dtype}")
    return a.astype(np.float64)


def _check_states(states: np.ndarray, where: _ArrayPlaces) -> None:
    zero = np.flatnonzero(~states.any(axis=1))
    if zero.size:
        raise InvalidGraphError(f"{where(zero[0])}: {_START_RESERVED}")
    twice = _repeated_row(states)
    if twice >= 0:
        raise InvalidGraphError(f"{where(twice)}: appears twice in states")


def _repeated_row(states: np.ndarray) -> int:
    """A row that occurs earlier in ``states`` too, or −1.

    Rows are hashed to 64 bits (a fixed random linear form, wrapping) and only rows with
    equal hashes are compared: one pass over the matrix and one sort of ``N`` integers,
    instead of a lexicographic sort over every column (a wide block state space has
    hundreds of columns).
    """
    n = states.shape[0]
    if n < 2:
        return -1
    weights = np.random.default_rng(0x5EED).integers(1, 2**63, states.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = states.astype(np.uint64, copy=False) @ (weights | np.uint64(1))
    order = np.argsort(h, kind="stable")
    hs = h[order]
    starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]]))
    sizes = np.diff(np.concatenate([starts, [n]]))
    first = -1
    for g in np.flatnonzero(sizes > 1).tolist():  # equal hashes: compare the rows
        seen: dict[bytes, int] = {}
        for row in sorted(order[starts[g] : starts[g] + sizes[g]].tolist()):
            key = states[row].tobytes()
            if key in seen and (first < 0 or row < first):
                first = row
            seen.setdefault(key, row)
    return first


def _check_rates(base, coef, param, src, dst, where: _ArrayPlaces) -> None:
    bad = np.flatnonzero(~np.isfinite(base) | ~np.isfinite(coef).all(axis=1))
    if bad.size:
        e = bad[0]
        raise InvalidGraphError(
            f"edge {where(src[e])} -> {where(dst[e])}: rate {float(base[e])!r} + "
            f"{coef[e].tolist()}·θ is not finite"
        )
    bad = np.flatnonzero(~param & ~(base > 0))
    if bad.size:
        e = bad[0]
        raise InvalidGraphError(
            f"edge {where(src[e])} -> {where(dst[e])}: weight {float(base[e])!r} must be > 0"
        )
