"""The structured coalescent: samples in several demes, coalescence within demes, migration.

:func:`structured_coalescent` builds the model on lineage counts per deme or on block
counts per deme (for site-frequency spectra, see :func:`phasetrace.sfs`);
:func:`structured_parameters` names the entries of its θ. With one deme it is the Kingman
coalescent (:func:`~phasetrace.models.kingman`, same states and rates); with two demes,
every sample in the first and symmetric migration, it is
:func:`~phasetrace.models.two_island`.

The state space is explored breadth first on whole arrays of states at once (no Python
loop per state or edge) and the graph is made with :meth:`Graph.from_arrays`, so tens of
thousands of states build in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..graph import Graph
from ..settings import UNSET
from ._size import block_states, check_size

MIGRATION_SCHEMES = ("symmetric", "pairwise", "directed")
COALESCENCE_SCHEMES = ("shared", "per_deme")


def structured_coalescent(
    samples: Sequence[int],
    migration="symmetric",
    *,
    coalescence="shared",
    state_space: str = "lineages",
    max_states: int | None = UNSET,
) -> Graph:
    """The structured coalescent of ``samples[k]`` lineages sampled in deme ``k``.

    There are ``d = len(samples)`` demes. Lineages coalesce in pairs within a deme and
    move between demes one at a time; the chain is absorbed when one lineage is left
    (in whichever deme it is). θ is the coalescence parameters followed by the migration
    parameters: ``θ = (c…, m…)``; :func:`structured_parameters` names them.

    Parameters
    ----------
    samples : sequence of int
        Number of sampled lineages in each deme, each ``>= 0``, at least 2 in total
        (``samples=(3, 2)``: three in deme 0, two in deme 1).
    migration : {"symmetric", "pairwise", "directed"} or array_like of int, shape (d, d)
        Which parameter is the migration rate from deme ``i`` to deme ``j``: every lineage
        in deme ``i`` moves to deme ``j`` at rate ``m_ij`` (so a deme with ``a``
        lineages sends one to ``j`` at rate ``a·m_ij``). Rates are per lineage and per
        target deme, backwards in time.

        ``"symmetric"``: one parameter ``m``, ``m_ij = m`` for every ``i ≠ j`` (the island
        model: a lineage leaves its deme at total rate ``(d − 1)·m``; pass
        ``m = M/(d − 1)`` for a total emigration rate ``M``).
        ``"pairwise"``: one parameter per unordered pair, ``m_ij = m_ji``, in the order
        ``(0, 1), (0, 2), …, (0, d−1), (1, 2), …`` — ``d(d − 1)/2`` parameters.
        ``"directed"``: one parameter per ordered pair ``(i, j)``, ``i ≠ j``, row by row:
        ``(0, 1), …, (0, d−1), (1, 0), (1, 2), …`` — ``d(d − 1)`` parameters.
        A matrix ``P`` of ints: ``P[i, j] = p`` makes ``m_ij`` the migration parameter
        ``p`` (counted from 0 within the migration parameters, which number
        ``P.max() + 1``; every index below that must be used), ``-1`` means no
        migration from ``i`` to ``j``; the diagonal must be ``-1``.

        With one deme there is no migration parameter, whatever the scheme.
    coalescence : {"shared", "per_deme"} or sequence of int, keyword-only
        Which parameter is the pairwise coalescence rate ``c_k`` in deme ``k``: each pair of
        lineages in deme ``k`` coalesces at rate ``c_k`` (``c_k = 1/N_k`` for a deme of
        relative size ``N_k``). ``"shared"``: one ``c`` for every deme (θ₀);
        ``"per_deme"``: ``c_0, …, c_{d−1}`` (θ₀ … θ_{d−1}); a sequence of ``d`` ints
        maps each deme to a coalescence parameter (0-based; every index from 0 to its
        maximum must be used; ``[0, 0, 1]``: demes 0 and 1 share ``c_0``).
    state_space : {"lineages", "blocks"}, keyword-only
        ``"lineages"``: state ``[a_0, …, a_{d−1}]``, the number of lineages in each deme
        (length ``d``; start ``samples``; absorbing ``e_k``, one lineage in deme ``k``).
        ``"blocks"``: the block-counting state of every deme side by side, length
        ``d·n`` with ``n = sum(samples)``: ``s[k·n + i]`` is the number of lineages in deme
        ``k`` that subtend ``i + 1`` samples (start ``s[k·n] = samples[k]``; absorbing:
        ``s[k·n + n − 1] = 1``). Use it for site-frequency spectra
        (:func:`phasetrace.sfs`): ``r(s) = Σ_k s[k·n + i]`` is the total length of
        branches subtending ``i + 1`` samples.
    max_states : int or None, keyword-only
        Refuse to build more states than this (default: the configured ``max_states``,
        1,000,000 unless set; None: no limit). The block state space is counted before
        it is built (``(5, 5, 5)``: 35,582 states; ``(8, 8, 8)``: 1,762,463).

    Returns
    -------
    Graph
        Only the states reachable from the start; ``n_params`` is the number of
        coalescence parameters plus the number of migration parameters.

    Raises
    ------
    ValueError
        For negative or non-integer sample counts, fewer than two samples in total, an
        unknown scheme or state space, a migration matrix of the wrong shape, with a bad
        index or a non-``-1`` diagonal, a coalescence map of the wrong length, parameter
        indices with gaps, and a migration pattern under which two lineages can never
        meet (then the coalescent would never end).
    StateSpaceTooLargeError
        Before building anything, for a block state space of more than ``max_states``
        states.

    Notes
    -----
    From lineage counts ``a``: coalescence in deme ``k`` at rate ``c_k·C(a_k, 2)`` to
    ``a − e_k``; migration ``i → j`` at rate ``m_ij·a_i`` to ``a − e_i + e_j``. From block
    counts: two lineages of sizes ``i + 1`` and ``j + 1`` in deme ``k`` merge at rate
    ``c_k·s_ki·s_kj`` (``c_k·C(s_ki, 2)`` when ``i == j``); a lineage of size ``i + 1``
    moves ``k → l`` at rate ``m_kl·s_ki``. Nothing migrates once one lineage is left.

    Sizes (states besides the start, all samples in one deme, symmetric migration): the
    lineage state space of ``d`` demes and ``n`` samples has ``C(n + d, d) − 1`` states
    (5,455 for d = 3, n = 30); the block state space grows much faster (185 for d = 2,
    n = 8; 2,665 for d = 2, n = 14; 12,230 for d = 2, n = 18; 2,640 for d = 3, n = 10).

    Two lineages in the same deme of the symmetric island model coalesce after
    ``E[T] = d/c`` whatever ``m`` is; from different demes, after ``d/c + 1/(2m)``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> g = structured_coalescent((2, 0, 0))                 # θ = (c, m)
    >>> round(float(pt.record_trace(g).expectation([1.0, 0.7])), 12)   # d/c
    3.0
    >>> structured_parameters(3, "pairwise", coalescence="per_deme")
    ['c0', 'c1', 'c2', 'm01', 'm02', 'm12']
    >>> g = structured_coalescent((3, 2), "directed", state_space="blocks")
    >>> g.state_length, g.n_params
    (10, 3)
    """
    n_per, coal, mig, n_coal, n_mig = _check(samples, migration, coalescence, state_space)
    d = n_per.size
    n = int(n_per.sum())
    if state_space == "lineages":
        start = n_per
        limits = np.full(d, n)
        kinds, u, v, delta, param = _lineage_moves(d, coal, mig, n_coal)
    else:
        check_size(
            block_states(n, d) + 1,
            f"structured_coalescent({tuple(int(x) for x in n_per)}, state_space='blocks')",
            f"the partitions of {n} samples into lineages in {d} deme(s), and the start",
            "for moments of the time to the MRCA use state_space='lineages' (at most "
            f"{math.comb(n + d, d):,} states)",
            max_states,
        )
        start = np.zeros(d * n, np.int64)
        start[np.arange(d) * n] = n_per
        limits = np.tile(n // np.arange(1, n + 1), d)  # at most n/(i + 1) blocks of size i + 1
        kinds, u, v, delta, param = _block_moves(d, n, coal, mig, n_coal)
    codec = _Codec(limits)
    keys = _explore(start, kinds, u, v, delta, codec)
    states = codec.decode(keys)
    src, dst, coef = [], [], []
    step = max(1, (1 << 22) // max(1, delta.shape[0]))  # bound the (states, moves) table
    for lo in range(0, states.shape[0], step):
        counts = _counts(states[lo : lo + step], kinds, u, v)
        rows, moves = np.nonzero(counts > 0)
        src.append(rows + lo)
        dst.append(codec.lookup(keys, states[rows + lo] + delta[moves]))
        c = np.zeros((rows.size, n_coal + n_mig))
        c[np.arange(rows.size), param[moves]] = counts[rows, moves]
        coef.append(c)
    rows, dst, coef = np.concatenate(src), np.concatenate(dst), np.concatenate(coef)
    return Graph.from_arrays(
        states,
        rows,
        dst,
        np.zeros(rows.size),
        coef,
        initial=(codec.lookup(keys, start[None, :]), [1.0]),
        n_params=n_coal + n_mig,
    )


def structured_parameters(n_demes: int, migration="symmetric", *, coalescence="shared"):
    """Names of θ's entries for :func:`structured_coalescent` with these schemes.

    Coalescence parameters come first (``"c"`` shared, ``"c0"``, ``"c1"``, … otherwise),
    then migration parameters: ``"m"`` (symmetric), ``"mij"`` for the pair or ordered
    pair ``(i, j)`` (``"pairwise"``, ``"directed"``), ``"m[p]"`` for a matrix (the
    parameter ``p``, shared by every pair that maps to it). Demes past 9 are written
    ``m10_11``-style with an underscore.

    Examples
    --------
    >>> structured_parameters(2)
    ['c', 'm']
    >>> structured_parameters(3, "directed")
    ['c', 'm01', 'm02', 'm10', 'm12', 'm20', 'm21']
    >>> structured_parameters(2, [[-1, 0], [-1, -1]], coalescence=[0, 1])
    ['c0', 'c1', 'm[0]']
    """
    d = _as_count(n_demes, "n_demes")
    if d < 1:
        raise ValueError(f"n_demes must be >= 1, got {d}")
    n_coal = _coalescence_map(coalescence, d)[1]
    n_mig = _migration_map(migration, d)[1]
    if isinstance(coalescence, str) and coalescence == "shared":
        names = ["c"]
    else:
        names = [f"c{p}" for p in range(n_coal)]
    sep = "_" if d > 10 else ""
    if isinstance(migration, str) and migration == "symmetric":
        names += ["m"] * min(n_mig, 1)
    elif isinstance(migration, str):
        pairs = [(i, j) for i in range(d) for j in range(d) if i != j]
        if migration == "pairwise":
            pairs = [(i, j) for i, j in pairs if i < j]
        names += [f"m{i}{sep}{j}" for i, j in pairs]
    else:
        names += [f"m[{p}]" for p in range(n_mig)]
    return names


# -- checking the arguments -----------------------------------------------------------------
def _as_count(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        raise ValueError(f"{name} must be an int, got {x!r}")
    return int(x)


def _check(samples, migration, coalescence, state_space):
    if state_space not in ("lineages", "blocks"):
        raise ValueError(f"state_space must be 'lineages' or 'blocks', got {state_space!r}")
    if isinstance(samples, int | np.integer) and not isinstance(samples, bool):
        raise ValueError(
            f"samples must be a sequence with one count per deme (e.g. ({samples},) for one "
            f"deme), got {samples!r}"
        )
    try:
        items = list(samples)
    except TypeError:
        raise ValueError(f"samples must be a sequence of ints, got {samples!r}") from None
    if not items:
        raise ValueError("samples must name at least one deme")
    n_per = np.array([_as_count(x, "every sample count") for x in items], dtype=np.int64)
    if (n_per < 0).any():
        raise ValueError(f"sample counts must be >= 0, got {n_per.tolist()}")
    if n_per.sum() < 2:
        raise ValueError(f"the coalescent needs at least 2 samples in total, got {n_per.tolist()}")
    d = n_per.size
    coal, n_coal = _coalescence_map(coalescence, d)
    mig, n_mig = _migration_map(migration, d)
    _check_meeting(n_per, mig)
    return n_per, coal, mig, n_coal, n_mig


def _contiguous(indices: np.ndarray, what: str) -> int:
    """The number of parameters ``max + 1``; every index from 0 to the maximum must occur."""
    used = np.unique(indices[indices >= 0])
    if used.size and (used != np.arange(used.size)).any():
        missing = sorted(set(range(int(used.max()) + 1)) - set(used.tolist()))
        raise ValueError(
            f"{what}: parameter indices must be 0, 1, … with none skipped; {missing} are not used"
        )
    return int(used.size)


def _coalescence_map(coalescence, d: int) -> tuple[np.ndarray, int]:
    """Deme → coalescence parameter, and the number of coalescence parameters."""
    if isinstance(coalescence, str):
        if coalescence == "shared":
            return np.zeros(d, np.int64), 1
        if coalescence == "per_deme":
            return np.arange(d, dtype=np.int64), d
        raise ValueError(
            f"coalescence must be one of {COALESCENCE_SCHEMES} or a sequence of parameter "
            f"indices, got {coalescence!r}"
        )
    c = _index_array(coalescence, "coalescence")
    if c.shape != (d,):
        raise ValueError(f"coalescence must give one parameter index per deme ({d}), got {c.shape}")
    if (c < 0).any():
        raise ValueError(f"coalescence parameter indices must be >= 0, got {c.tolist()}")
    return c, _contiguous(c, "coalescence")


def _migration_map(migration, d: int) -> tuple[np.ndarray, int]:
    """(d, d) matrix: ordered pair → migration parameter (-1: none), and their number."""
    off = ~np.eye(d, dtype=bool)
    if isinstance(migration, str):
        m = np.full((d, d), -1, np.int64)
        if migration == "symmetric":
            m[off] = 0
        elif migration == "directed":
            m[off] = np.arange(d * (d - 1))
        elif migration == "pairwise":
            i, j = np.triu_indices(d, 1)
            m[i, j] = m[j, i] = np.arange(i.size)
        else:
            raise ValueError(
                f"migration must be one of {MIGRATION_SCHEMES} or a (d, d) matrix of parameter "
                f"indices, got {migration!r}"
            )
        return m, int(m.max()) + 1
    m = _index_array(migration, "migration")
    if m.shape != (d, d):
        raise ValueError(
            f"migration matrix must have shape ({d}, {d}) for {d} demes, got {m.shape}"
        )
    if (m[~off] != -1).any():
        raise ValueError("migration matrix: the diagonal must be -1 (no migration to itself)")
    if (m < -1).any():
        raise ValueError("migration matrix: entries must be parameter indices >= 0 or -1")
    return m, _contiguous(m, "migration matrix")


def _index_array(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be integers: {exc}") from None
    if a.dtype == bool or (a.size and a.dtype.kind not in "iuf"):
        raise ValueError(f"{name} must be integers, got {values!r}")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise ValueError(f"{name} must be integers, got {values!r}")
    return a.astype(np.int64)


def _check_meeting(n_per: np.ndarray, mig: np.ndarray) -> None:
    """Refuse a migration pattern under which two lineages can never meet.

    A lineage from deme ``a`` only visits ``R(a)``, the demes reachable from ``a``. Two
    lineages can sit in demes ``i`` and ``j`` at once when ``i ∈ R(a)``, ``j ∈ R(b)`` for
    the demes ``a``, ``b`` of two different samples; they (and so every lineage that holds
    them) can merge only if some deme is reachable from both. The condition is also
    sufficient: a merged lineage is again in a deme reachable from the starts of both.
    """
    d = n_per.size
    reach = (mig >= 0) | np.eye(d, dtype=bool)
    for _ in range(d):  # transitive closure
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    meet = (reach.astype(np.int64) @ reach.T.astype(np.int64)) > 0  # common deme reachable
    occupied = np.flatnonzero(n_per > 0)
    for a in occupied:
        for b in occupied:
            if a == b and n_per[a] < 2:
                continue
            bad = np.argwhere(reach[a][:, None] & reach[b][None, :] & ~meet)
            if bad.size:
                i, j = bad[0]
                raise ValueError(
                    f"with this migration pattern lineages in demes {i} and {j} (reachable "
                    f"from samples in demes {a} and {b}) can never meet, so the coalescent "
                    "would never end"
                )


# -- the moves ------------------------------------------------------------------------------
# A move is (kind, u, v, delta, param): from state s it leads to s + delta with rate
# θ[param]·count, where count is C(s_u, 2) (kind 0), s_u·s_v (kind 1, u ≠ v) or s_u as
# long as two or more lineages are left (kind 2, migration).
_PAIR_SAME, _PAIR, _MIGRATE = 0, 1, 2


def _lineage_moves(d, coal, mig, n_coal):
    moves = [(_PAIR_SAME, k, k, {k: -1}, coal[k]) for k in range(d)]
    moves += [
        (_MIGRATE, i, i, {i: -1, j: +1}, n_coal + mig[i, j])
        for i in range(d)
        for j in range(d)
        if mig[i, j] >= 0
    ]
    return _move_arrays(moves, d)


def _block_moves(d, n, coal, mig, n_coal):
    moves = []
    for k in range(d):
        for i in range(n):
            for j in range(i, n - i - 1):  # sizes i + 1 and j + 1 make i + j + 2 <= n
                at = k * n
                delta = {at + i: -1, at + j: -1, at + i + j + 1: +1}
                if i == j:
                    delta = {at + i: -2, at + i + j + 1: +1}
                kind = _PAIR_SAME if i == j else _PAIR
                moves.append((kind, at + i, at + j, delta, coal[k]))
    for a in range(d):
        for b in range(d):
            if mig[a, b] >= 0:
                for i in range(n - 1):  # a lineage of all n samples is absorbing
                    delta = {a * n + i: -1, b * n + i: +1}
                    moves.append((_MIGRATE, a * n + i, a * n + i, delta, n_coal + mig[a, b]))
    return _move_arrays(moves, d * n)


def _move_arrays(moves, length):
    kinds = np.array([m[0] for m in moves], np.int64)
    u = np.array([m[1] for m in moves], np.int64)
    v = np.array([m[2] for m in moves], np.int64)
    delta = np.zeros((len(moves), length), np.int64)
    for t, m in enumerate(moves):
        for pos, change in m[3].items():
            delta[t, pos] = change
    param = np.array([m[4] for m in moves], np.int64)
    return kinds, u, v, delta, param


def _counts(states, kinds, u, v) -> np.ndarray:
    """(N, T): the combinatorial factor of move t from state s (0 where it cannot happen).

    In both state spaces an entry counts lineages, so a row's sum is the number left.
    """
    su = states[:, u].astype(np.float64)
    sv = states[:, v].astype(np.float64)
    alive = (states.sum(axis=1) >= 2)[:, None]
    return np.where(
        kinds == _PAIR_SAME,
        su * (su - 1) / 2,
        np.where(kinds == _PAIR, su * sv, np.where(alive, su, 0.0)),
    )


def _explore(start, kinds, u, v, delta, codec, chunk: int = 1 << 22) -> np.ndarray:
    """Keys (sorted) of every state reachable from ``start``, breadth first.

    The frontier is expanded by all moves at once; candidate states are deduplicated and
    checked against the states seen so far on their keys (sorted int64 or bytes).
    """
    seen = codec.encode(start[None, :])
    frontier = start[None, :]
    step = max(1, chunk // max(1, delta.shape[0]))
    while frontier.shape[0]:
        parts = []
        for lo in range(0, frontier.shape[0], step):
            block = frontier[lo : lo + step]
            rows, moves = np.nonzero(_counts(block, kinds, u, v) > 0)
            parts.append(codec.encode(block[rows] + delta[moves]))
        cand = np.unique(np.concatenate(parts))
        pos = np.searchsorted(seen, cand)
        new = cand[seen[np.minimum(pos, seen.size - 1)] != cand]
        seen = np.insert(seen, np.searchsorted(seen, new), new)
        frontier = codec.decode(new)
    return seen


# Keys pack a state into one int64 (mixed radix) when every state fits, else its bytes.
_PACK_LIMIT = 2**62


class _Codec:
    """States ↔ sortable keys; packed int64 keys sort like the states (lexicographically)."""

    def __init__(self, limits: np.ndarray):
        radix = [int(x) + 1 for x in limits]
        self.length = len(radix)
        self.packed = math.prod(radix) < _PACK_LIMIT
        if self.packed:
            self.radix = np.array(radix, np.int64)
            self.weights = np.ones(len(radix), np.int64)
            for c in range(len(radix) - 2, -1, -1):
                self.weights[c] = self.weights[c + 1] * radix[c + 1]

    def encode(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self.packed:
            return rows @ self.weights
        return rows.view(np.dtype((np.void, 8 * self.length))).ravel()

    def decode(self, keys: np.ndarray) -> np.ndarray:
        if self.packed:
            return (keys[:, None] // self.weights) % self.radix
        return np.ascontiguousarray(keys).view(np.int64).reshape(-1, self.length)

    def lookup(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Position in the sorted ``keys`` of each state in ``rows`` (all present)."""
        q = self.encode(rows)
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        if (keys[pos] != q).any():
            raise AssertionError("structured_coalescent: a move left the explored state space")
        return pos
