"""The coalescent state space of a demographic :class:`~._spec.Structure`, as one Graph.

:func:`build_state_space` explores the states breadth first on whole arrays (no Python
call per state or edge) and returns a :class:`StateSpace`: the graph, which states each
interval can hold (``support``), the boundary maps between intervals (``maps``) and
reward vectors for the spectra.

**Kinds.** A lineage has a *type*; a state counts the lineages of each type in each deme,
``s[k·T + t]`` for deme ``k`` and type ``t`` (length ``d·T``):

- ``"lineages"``: one type (``T = 1``): lineage counts per deme. For ``T_MRCA``.
- ``"blocks"``: type ``t`` = a lineage subtending ``t + 1`` samples (``T = n``, all
  samples pooled), as :func:`phasetrace.models.structured_coalescent` does. For the SFS.
- ``"joint"``: type = the vector ``(a_1 … a_S)`` of a lineage's descendants in each
  sampled population (``structure.sampled`` order, ``0 <= a_j <= n_j``, not all 0). Type
  ``t`` is the vector whose C-order flat index in an array of shape
  ``(n_1 + 1, …, n_S + 1)`` is ``t + 1`` (the all-zero vector, index 0, is no type), so
  ``T = Π(n_j + 1) − 1`` and the last type is the full one. For the joint SFS.

The chain starts with every sample a singleton in its deme and is absorbed when one
lineage is left (in whichever deme: several absorbing vertices).

**Rates in interval i.** Two lineages of types ``a``, ``b`` in deme ``k`` merge (if
``exists[i, k]``) into type ``a + b`` at rate ``c_k·s_ka·s_kb`` (``c_k·C(s_ka, 2)`` when
``a == b``); a lineage of type ``a`` moves ``k → l`` (if ``migration[i, k, l]``) at rate
``m_kl·s_ka``. θ has ``d + len(pairs)`` entries: ``θ[k] = c_k`` (pairwise coalescence
rate in deme ``k``) and ``θ[d + j] = m`` of ``pairs[j]``, ``pairs`` the sorted ``(k, l)``
with ``migration[:, k, l].any()``. Edge coefficients are the counts above (base 0). The
graph holds the union of every interval's transitions from the states of its support, so
the engine sets to 0 the parameters that are off in an interval.

**Supports.** ``support[0]``: the states reachable from the start under interval 0's
moves; ``support[i + 1]``: the closure under interval ``i + 1``'s moves of the image of
``support[i]`` by boundary map ``i``. The events of one boundary form one composed map
(no vertex is made for a state that exists only between two of them).

**Maps.** :class:`MapTerms`: the probability of ``src → dst`` is a polynomial in the
proportions: symbol ``j < n_proportions`` is ``p_j`` (what :attr:`Move.index` points to),
and each move with ``stay`` adds one symbol, its stay probability ``1 − Σ p`` over its
index. Lineages move independently, so a term's coefficient is a product of multinomials
(a pulse moving ``j_a`` of the ``s_a`` type-``a`` lineages: ``Π_a C(s_a, j_a)``). Absorbed
states map to themselves.

**Caution: vertices without out-edges.** A state with two or more lineages in demes that
cannot meet during the only intervals whose support holds it (e.g. one lineage in each
of two isolated demes before they merge) has no out-edges in the graph, yet is not
absorbed: its mass waits for the next boundary. Use :attr:`StateSpace.absorbing` (one
lineage left), not the graph's out-degree, to tell absorbed states; in the last interval
every such state is refused (the coalescent would never end).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameterError, StateSpaceTooLargeError
from ..graph import Graph
from ._estimate import estimate
from ._explore import Explorer, make_types
from ._spec import Move, Structure

KINDS = ("lineages", "blocks", "joint")
#: The limit on the number of states is the ``max_states`` setting
#: (:func:`phasetrace.configure`, ``PHASETRACE_MAX_STATES``; default 1,000,000), shared
#: with the built-in block-counting models. IM 7 + 7 joint (126,132 states, about 1 s and
#: 0.8 GB at peak to build) and 8 + 8 (489,069 states, 4.2 GB at peak) pass.
#: Default limit on the terms of one boundary map (about 30 bytes each when kept). One
#: pulse on IM 7 + 7 joint makes 1.6 M; two pulses at one time (A → B, then B → A) 25 M.
DEFAULT_MAX_MAP_TERMS = 50_000_000


@dataclass(frozen=True, eq=False)
class MapTerms:
    """A boundary map as polynomial terms over vertices of the state space's graph.

    ``P(src → dst) = Σ coef · Π_j symbol_j^exps[:, j]`` over the terms of that pair;
    rows sum to 1 at admissible proportions (``Σ p <= 1`` for a pulse, ``= 1`` for an
    admixed founding).

    Attributes
    ----------
    src, dst : ndarray of int64, shape (K,)
        Vertices (graph numbering).
    coef : ndarray of float64, shape (K,)
    exps : ndarray of int16, shape (K, n_symbols)
    n_proportions : int
        Symbols ``0 … n_proportions − 1`` are the proportions ``p_j``.
    stay_index : tuple of tuple of int
        Symbol ``n_proportions + j`` is ``1 − Σ p[stay_index[j]]``: the stay probability
        of the ``j``-th move with ``stay`` at this boundary.
    n_vertices : int
    """

    src: np.ndarray
    dst: np.ndarray
    coef: np.ndarray
    exps: np.ndarray
    n_proportions: int
    stay_index: tuple[tuple[int, ...], ...]
    n_vertices: int

    @property
    def n_symbols(self) -> int:
        return self.n_proportions + len(self.stay_index)

    def symbol_values(self, proportions) -> np.ndarray:
        """Symbol values from the proportions ``p`` (length ``n_proportions``)."""
        p = np.asarray(proportions, np.float64).reshape(-1)
        if p.size != self.n_proportions:
            raise InvalidParameterError(f"{self.n_proportions} proportions expected, got {p.size}")
        stay = [1.0 - p[list(ix)].sum() for ix in self.stay_index]
        return np.concatenate([p, np.asarray(stay, np.float64)])

    def matrix(self, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The map at these symbol values as a sparse triple ``(src, dst, prob)``.

        One entry per distinct ``(src, dst)`` (terms summed), sorted by ``(src, dst)``.

        Examples
        --------
        >>> import numpy as np
        >>> m = MapTerms(np.array([1, 1]), np.array([2, 3]), np.array([1.0, 1.0]),
        ...              np.array([[1, 0], [0, 1]]), 1, ((0,),), 4)
        >>> m.matrix(m.symbol_values([0.25]))[2].tolist()
        [0.25, 0.75]
        """
        v = np.asarray(values, np.float64).reshape(-1)
        if v.size != self.n_symbols:
            raise InvalidParameterError(f"{self.n_symbols} symbol values expected, got {v.size}")
        prob = self.coef * np.prod(v[None, :] ** self.exps, axis=1)
        key = self.src * self.n_vertices + self.dst
        uk, inv = np.unique(key, return_inverse=True)
        return uk // self.n_vertices, uk % self.n_vertices, np.bincount(inv, prob, uk.size)


@dataclass(frozen=True, eq=False)
class StateSpace:
    """A coalescent state space over all intervals of a demographic structure.

    Attributes
    ----------
    graph : Graph
        Vertex 0 is the start; vertex 1 the sampled configuration.
    kind : str
    structure : Structure
    pairs : tuple of (int, int)
        The migration pairs; ``θ[d + j]`` is the rate of ``pairs[j]``.
    support : ndarray of bool, shape (I, n_vertices)
        The states interval ``i`` can hold (closed under its moves; the start in none).
    maps : tuple of MapTerms
        ``maps[i]``: the composed map of the boundary between intervals ``i`` and
        ``i + 1``, from every state of ``support[i]`` into ``support[i + 1]``.
    absorbing : ndarray of bool, shape (n_vertices,)
        One lineage left (see the module note on vertices without out-edges).
    type_vectors : ndarray of int64, shape (T, S), or None
        Joint types: the descendants in each sampled population (kind "joint").
    type_sizes : ndarray of int64, shape (T,), or None
        Samples below each type (kinds "blocks" and "joint").
    """

    graph: Graph
    kind: str
    structure: Structure
    pairs: tuple[tuple[int, int], ...]
    support: np.ndarray
    maps: tuple[MapTerms, ...]
    absorbing: np.ndarray
    type_vectors: np.ndarray | None
    type_sizes: np.ndarray | None

    @property
    def n_vertices(self) -> int:
        return int(self.support.shape[1])

    @property
    def n_params(self) -> int:
        return self.structure.n_demes + len(self.pairs)

    def parameter_names(self) -> list[str]:
        """``c<k>`` per deme, then ``m<k>_<l>`` per migration pair."""
        return [f"c{k}" for k in range(self.structure.n_demes)] + [
            f"m{a}_{b}" for a, b in self.pairs
        ]

    def tmrca_rewards(self) -> np.ndarray:
        """(n_vertices,): 1 on every state with two or more lineages, 0 elsewhere."""
        r = (~self.absorbing).astype(np.float64)
        r[0] = 0.0
        return r

    def _counts_per_type(self) -> np.ndarray:
        if self.kind == "lineages":
            raise InvalidParameterError(
                "lineage counts do not track which samples a lineage holds; build the state "
                "space with kind 'blocks' (SFS) or 'joint' (joint SFS)"
            )
        d, T = self.structure.n_demes, self.type_sizes.size
        return self.graph.arrays().states.reshape(-1, d, T).sum(axis=1)

    def sfs_rewards(self) -> np.ndarray:
        """(n − 1, n_vertices): row ``i − 1`` counts the lineages subtending ``i`` samples.

        With these rewards, ``E[Y]`` is the expected total length of branches subtending
        ``i`` of the ``n`` samples (pooled over populations).
        """
        counts = self._counts_per_type()
        n = int(sum(self.structure.samples))
        out = np.zeros((n + 1, counts.shape[0]))
        np.add.at(out, self.type_sizes, counts.T.astype(np.float64))
        return out[1:n]

    def jsfs_rewards(self) -> np.ndarray:
        """(Π(n_j + 1), n_vertices): rows in C order over ``(a_1 … a_S)``.

        Row ``(a_1 … a_S)`` counts the lineages with exactly ``a_j`` descendants in sampled
        population ``j``; the all-zero and the full rows are zero. This is the layout of
        tskit's ``allele_frequency_spectrum(sample_sets, mode="branch", polarised=True,
        span_normalise=False)`` flattened.
        """
        if self.kind != "joint":
            raise InvalidParameterError(
                f"jsfs_rewards needs kind 'joint', this state space is {self.kind!r}"
            )
        counts = self._counts_per_type()
        out = np.zeros((counts.shape[1] + 1, counts.shape[0]))
        out[1:-1] = counts[:, :-1].T
        return out


def estimate_states(structure: Structure, kind: str) -> int:
    """The number of states :func:`build_state_space` would make, without making them.

    Per interval, the number of multisets of (type, deme) whose types add up to the
    samples, where a type can only be in demes that every population it holds reaches by
    then (a dynamic programme over types, no enumeration); summed over intervals with
    distinct reach patterns. An upper bound on the vertices (start excluded): exact for
    one panmictic deme and for demes that exchange migrants freely; larger where
    migration is one-way or a deme holds lineages only in part of an interval's life.

    Examples
    --------
    >>> import numpy as np
    >>> from phasetrace.demography._spec import Structure
    >>> one = Structure((10,), (0,), np.ones((1, 1), bool), np.zeros((1, 1, 1), bool), (), 0)
    >>> estimate_states(one, "blocks")      # the partitions of 10
    42
    """
    _check_kind(kind)
    _check_structure(structure)
    return estimate(structure, kind)


def build_state_space(
    structure: Structure,
    kind: str,
    *,
    max_states: int | None = None,
    max_map_terms: int = DEFAULT_MAX_MAP_TERMS,
) -> StateSpace:
    """The state space of ``structure`` of the given kind (see the module docstring).

    Parameters
    ----------
    structure : Structure
    kind : {"lineages", "blocks", "joint"}
    max_states : int, keyword-only
        Refuse (before enumerating) when :func:`estimate_states` exceeds it; default: the
        ``max_states`` setting.
    max_map_terms : int, keyword-only
        Refuse a boundary map with more terms (checked while it is composed).

    Returns
    -------
    StateSpace

    Raises
    ------
    StateSpaceTooLargeError
        For a model past ``max_states`` (the message gives the estimate and what to use
        instead).
    InvalidParameterError
        For an unknown kind, a malformed structure, a map past ``max_map_terms``, and
        lineages that can never meet in the last interval.

    Examples
    --------
    Two demes, 2 + 1 samples, migration both ways; at ``T_1`` both move into deme 2:

    >>> import numpy as np
    >>> from phasetrace.demography._spec import Move, Structure
    >>> mig = np.zeros((2, 3, 3), bool)
    >>> mig[0, 0, 1] = mig[0, 1, 0] = True
    >>> s = Structure(samples=(2, 1, 0), sampled=(0, 1),
    ...               exists=np.array([[1, 1, 0], [0, 0, 1]], bool), migration=mig,
    ...               boundaries=((Move(0, (2,), (), False), Move(1, (2,), (), False)),),
    ...               n_proportions=0)
    >>> sp = build_state_space(s, "lineages")
    >>> sp.parameter_names()
    ['c0', 'c1', 'c2', 'm0_1', 'm1_0']
    >>> sp.support.sum(axis=1).tolist()   # 1 … 3 lineages in demes 0, 1; then 3, 2, 1 in
    [9, 5]
    >>> # deme 2, and the two absorbed states of interval 0, which map to themselves
    """
    _check_kind(kind)
    _check_structure(structure)
    from ..settings import resolve_setting

    limit = resolve_setting("max_states") if max_states is None else max_states
    for name, value in (("max_states", limit), ("max_map_terms", max_map_terms)):
        if value is None and name == "max_states":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InvalidParameterError(f"{name} must be an int >= 1, got {value!r}")
    guess = estimate(structure, kind)
    if limit is not None and guess > limit:
        raise StateSpaceTooLargeError(_too_many(guess, kind, limit), estimate=guess, limit=limit)
    types = make_types(structure, kind)
    ex = Explorer(structure, types, limit if limit is not None else 2**62, max_map_terms)
    start = types.start.astype(ex.dtype)[None, :]
    ex.add(start, *ex.hash(start))
    n_intervals = structure.n_intervals
    members, edge_blocks, raw_maps = [], [], []
    seeds = np.zeros(1, np.int64)
    for i in range(n_intervals):
        ids, edges = ex.close(seeds, i)
        members.append(ids)
        edge_blocks.append(edges)
        if i < n_intervals - 1:
            raw = ex.boundary(ids, structure.boundaries[i], structure.n_proportions)
            raw_maps.append(raw)
            seeds = np.unique(raw[1])
    n = ex.n
    absorbing = ex.states.sum(axis=1, dtype=np.int64) == 1
    _check_last_interval(ex, members[-1], ex.rule_edges(n_intervals - 1), absorbing)
    ex.forget_edges()
    flat = [e for block in edge_blocks for e in block]
    del edge_blocks  # only `flat` holds the edge blocks now: _graph frees them
    graph = _graph(ex, flat)
    support = np.zeros((n_intervals, n + 1), bool)
    for i, ids in enumerate(members):
        support[i, ids + 1] = True
    for raw in raw_maps:  # store ids → vertices (the start is vertex 0), in place
        np.add(raw[0], 1, out=raw[0])
        np.add(raw[1], 1, out=raw[1])
    maps = tuple(
        MapTerms(s, t, c, x, structure.n_proportions, stay, n + 1) for s, t, c, x, stay in raw_maps
    )
    return StateSpace(
        graph=graph,
        kind=kind,
        structure=structure,
        pairs=tuple(ex.pairs),
        support=support,
        maps=maps,
        absorbing=np.concatenate([[False], absorbing]),
        type_vectors=types.vectors,
        type_sizes=None if kind == "lineages" else types.sizes,
    )


def _graph(ex: Explorer, edges: list) -> Graph:
    """The graph over every state found, from the edge blocks of all intervals."""
    src, dst, count, param = (np.concatenate(a) for a in zip(*edges, strict=True))
    edges.clear()  # the blocks are no longer needed: free them before the big arrays
    n = ex.n
    # Intervals with different moves can share one (a coalescence): keep each pair once.
    _, first = np.unique(src * n + dst, return_index=True)
    src, dst, count, param = src[first], dst[first], count[first], param[first]
    coef = np.zeros((src.size, ex.d + len(ex.pairs)))
    coef[np.arange(src.size), param] = count
    return Graph.from_arrays(
        ex.states,  # small ints: from_arrays makes its int64 copy (no second one here)
        src,
        dst,
        np.zeros(src.size),
        coef,
        initial=([0], [1.0]),
        n_params=coef.shape[1],
    )


def _too_many(guess: int, kind: str, max_states: int) -> str:
    return (
        f"this model needs about {guess:,} states for kind {kind!r}, more than "
        f"max_states={max_states:,}. Use kind 'lineages' for T_MRCA alone, the large-n SFS "
        "when all samples are in one panmictic deme, or fewer samples; or raise the limit "
        "if the memory allows (from_demes(..., max_states=...), "
        "phasetrace.configure(max_states=...) or PHASETRACE_MAX_STATES)"
    )


def _check_last_interval(ex: Explorer, ids: np.ndarray, edges, absorbing) -> None:
    """Every state of the last (unbounded) interval must be able to reach absorption."""
    good = absorbing.copy()
    s, t = edges
    while True:
        new = good[t] & ~good[s]
        if not new.any():
            break
        good[s[new]] = True
    stuck = ids[~good[ids]]
    if stuck.size:
        per_deme = ex.states[stuck[0]].reshape(ex.d, ex.T).sum(axis=1, dtype=np.int64)
        where = {k: int(c) for k, c in enumerate(per_deme.tolist()) if c}
        raise InvalidParameterError(
            f"in the last interval (unbounded) lineages can never all meet: from {where} "
            "(lineages per deme) no sequence of coalescences and migrations leaves one "
            "lineage, so the coalescent would never end"
        )


# -- checking the structure -------------------------------------------------------------
def _check_kind(kind) -> None:
    if kind not in KINDS:
        raise InvalidParameterError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_structure(s: Structure) -> None:
    if not isinstance(s, Structure):
        raise InvalidParameterError(f"expected a Structure, got {type(s).__name__}")
    samples = list(s.samples)
    if not samples or any(
        isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0 for x in samples
    ):
        raise InvalidParameterError(f"samples must be counts >= 0 per deme, got {samples}")
    d = len(samples)
    if sum(samples) < 2:
        raise InvalidParameterError(f"the coalescent needs 2 or more samples, got {samples}")
    sampled = list(s.sampled)
    if len(set(sampled)) != len(sampled) or any(not 0 <= k < d for k in sampled):
        raise InvalidParameterError(f"sampled must list distinct demes 0 … {d - 1}: {sampled}")
    missing = [k for k in range(d) if samples[k] and k not in sampled]
    if missing:
        raise InvalidParameterError(f"demes {missing} have samples but are not in sampled")
    exists, mig = np.asarray(s.exists), np.asarray(s.migration)
    if exists.dtype != bool or exists.ndim != 2 or exists.shape[1] != d or not exists.shape[0]:
        raise InvalidParameterError(f"exists must be bool (I, {d}), got {exists.shape}")
    n_int = exists.shape[0]
    if mig.dtype != bool or mig.shape != (n_int, d, d):
        raise InvalidParameterError(f"migration must be bool ({n_int}, {d}, {d}), got {mig.shape}")
    if mig[:, np.arange(d), np.arange(d)].any():
        raise InvalidParameterError("migration: a deme cannot migrate into itself")
    if len(s.boundaries) != n_int - 1:
        raise InvalidParameterError(
            f"{n_int} intervals need {n_int - 1} boundaries, got {len(s.boundaries)}"
        )
    np_ = s.n_proportions
    if isinstance(np_, bool) or not isinstance(np_, numbers.Integral) or np_ < 0:
        raise InvalidParameterError(f"n_proportions must be an int >= 0, got {np_!r}")
    for b, events in enumerate(s.boundaries):
        for mv in events:
            _check_move(mv, b, d, np_)


def _check_move(mv: Move, b: int, d: int, n_prop: int) -> None:
    where = f"boundary {b}: {mv}"
    if not isinstance(mv, Move):
        raise InvalidParameterError(f"boundary {b}: expected a Move, got {type(mv).__name__}")
    targets, index = list(mv.targets), list(mv.index)
    if not 0 <= mv.source < d or not targets or any(not 0 <= t < d for t in targets):
        raise InvalidParameterError(f"{where}: demes must be in 0 … {d - 1}")
    if mv.source in targets or len(set(targets)) != len(targets):
        raise InvalidParameterError(f"{where}: targets must be distinct and not the source")
    if not index:
        if len(targets) != 1 or mv.stay:
            raise InvalidParameterError(
                f"{where}: only a single-target move without stay may omit its proportions"
            )
    elif len(index) != len(targets) or any(not 0 <= j < n_prop for j in index):
        raise InvalidParameterError(
            f"{where}: index needs one proportion (0 … {n_prop - 1}) per target"
        )
