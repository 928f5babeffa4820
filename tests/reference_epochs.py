"""Independent references for time-inhomogeneous ("epochs") models.

Nothing here calls phasetrace except :func:`full_generator`, which reads a Graph's edge
arrays (``Graph.arrays()``) to build its generator. Every other helper works on explicit
numpy matrices, pure-Python state spaces, or mpmath.

Conventions (as in the epochs design):

- A model is ``E`` epochs. ``generators[e]`` is the full ``(V, V)`` generator of epoch
  ``e`` (every state, absorbing ones included; rows of states that cannot move are zero,
  the diagonal is minus the row sum). ``durations`` are the ``E − 1`` lengths of the bounded
  epochs (the last epoch is unbounded). ``maps[e]`` (or ``None``: identity) is a row-stochastic
  ``(V, V)`` matrix applied to the probability mass at the end of bounded epoch ``e``.
- Rewards ``r ≥ 0`` per state; ``Y = ∫ r(X_t) dt`` over the whole time to absorption.
- Moments across epochs carry ``v_j(t) = E[Y_t^j / j!; X_t = ·]``, ``j = 0 … k``, through each
  bounded epoch with the Van Loan block matrix ``G`` (the epoch's generator on the diagonal
  blocks, ``diag(r)`` on the superdiagonal), apply the map at each boundary, and finish with
  the time-homogeneous dense formula in the last epoch:
  ``E[Y^k] = k! Σ_j v_j · μ_{k−j}``, ``μ_i = (U diag(r))^i 𝟙`` on that epoch's transient
  states, ``U = (−S)⁻¹``, ``μ_0 = 𝟙``.

``method="expm"`` forms ``exp(Gτ)`` with :func:`scipy.linalg.expm` (the plain reference;
cubic in ``(k + 1)·V``); ``method="action"`` applies it to the carried vectors with
:func:`scipy.sparse.linalg.expm_multiply` (Al-Mohy & Higham), for state spaces of a
thousand states and more, where a dense exponential of the block matrix takes minutes.
Tests check the two against each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# ---------------------------------------------------------------------------------------
# A phasetrace Graph as dense matrices
# ---------------------------------------------------------------------------------------


def full_generator(graph, phi: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alpha, Q, absorbing)`` of a phasetrace Graph at parameters ``phi``.

    Vertex 0 (the start) is not a state: matrix index ``i`` is graph vertex ``i + 1``, over
    all other vertices, absorbing ones included (their rows are zero). Edge rates are
    ``base + coef · phi``; the start's out-edges give ``alpha``. ``absorbing`` marks the
    vertices without out-edges.

    Examples
    --------
    >>> import phasetrace as pt
    >>> alpha, Q, absorbing = full_generator(pt.models.kingman(3, "lineages"), [1.0])
    >>> alpha.tolist(), Q.tolist(), absorbing.tolist()
    ([1.0, 0.0, 0.0], [[-3.0, 3.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 0.0]], [False, False, True])
    """
    a = graph.arrays()
    phi = np.asarray(phi, dtype=float).reshape(-1)
    if phi.shape[0] != a.coef.shape[1]:
        raise ValueError(f"phi has length {phi.shape[0]}, the graph has {a.coef.shape[1]} params")
    rates = a.base + a.coef @ phi
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError("negative or non-finite edge rate at this phi")
    n = a.ptr.shape[0] - 1
    src = np.repeat(np.arange(n), np.diff(a.ptr))
    V = n - 1
    alpha = np.zeros(V)
    Q = np.zeros((V, V))
    for s, d, w in zip(src.tolist(), a.dst.tolist(), rates.tolist(), strict=True):
        if d == 0:
            raise ValueError("an edge leads into the starting vertex")
        if s == 0:
            alpha[d - 1] += w
        else:
            Q[s - 1, d - 1] += w
    np.fill_diagonal(Q, 0.0)
    Q -= np.diag(Q.sum(axis=1))
    absorbing = np.diff(a.ptr)[1:] == 0
    return alpha, Q, absorbing


# ---------------------------------------------------------------------------------------
# Carrying vectors through epochs (Van Loan)
# ---------------------------------------------------------------------------------------


def _check_model(alpha, generators, durations, maps):
    alpha = np.asarray(alpha, dtype=float)
    V = alpha.shape[0]
    gens = [np.asarray(Q, dtype=float) for Q in generators]
    if not gens:
        raise ValueError("need at least one generator (the last, unbounded epoch)")
    for Q in gens:
        if Q.shape != (V, V):
            raise ValueError(f"generator of shape {Q.shape}, expected {(V, V)}")
        off = Q - np.diag(np.diag(Q))
        if np.any(off < 0) or np.max(np.abs(Q.sum(axis=1))) > 1e-9 * max(1.0, np.abs(Q).max()):
            raise ValueError("a generator needs non-negative off-diagonal rates and zero row sums")
    durations = [float(d) for d in durations]
    if len(durations) != len(gens) - 1 or any(d < 0 for d in durations):
        raise ValueError("need len(generators) - 1 non-negative durations")
    if maps is None:
        maps = [None] * len(durations)
    maps = list(maps)
    if len(maps) != len(durations):
        raise ValueError("need one map (or None) per bounded epoch")
    for M in maps:
        if M is not None:
            M = np.asarray(M, dtype=float)
            if M.shape != (V, V) or np.any(M < 0) or np.max(np.abs(M.sum(1) - 1)) > 1e-12:
                raise ValueError("a map must be a row-stochastic (V, V) matrix")
    maps = [None if M is None else np.asarray(M, dtype=float) for M in maps]
    return alpha, gens, durations, maps


def _carry(vs, Q, links, tau, method):
    """``[v_0 … v_{B−1}] · exp(G τ)`` for the block matrix ``G`` with ``Q`` on every diagonal
    block and ``diag(r)`` at block ``(a, b)`` for each link ``(a, b, r)``."""
    B, V = len(vs), Q.shape[0]
    if tau == 0.0:
        return [v.copy() for v in vs]
    if method == "expm":
        from scipy.linalg import expm

        G = np.zeros((B * V, B * V))
        for b in range(B):
            G[b * V : (b + 1) * V, b * V : (b + 1) * V] = Q
        for a, b, r in links:
            G[a * V : (a + 1) * V, b * V : (b + 1) * V] += np.diag(r)
        out = np.concatenate(vs) @ expm(G * tau)
    elif method == "action":
        import scipy.sparse as sp
        from scipy.sparse.linalg import expm_multiply

        blocks = [[None] * B for _ in range(B)]
        Qs = sp.csr_matrix(Q)
        for b in range(B):
            blocks[b][b] = Qs
        for a, b, r in links:
            blocks[a][b] = sp.diags(r) if blocks[a][b] is None else blocks[a][b] + sp.diags(r)
        G = sp.bmat(blocks, format="csr")
        out = expm_multiply((G * tau).T.tocsr(), np.concatenate(vs))
    else:
        raise ValueError(f"method must be 'expm' or 'action', got {method!r}")
    return [out[b * V : (b + 1) * V] for b in range(B)]


def _through_bounded_epochs(alpha, gens, durations, maps, n_blocks, links_fn, method):
    vs = [alpha.copy()] + [np.zeros_like(alpha) for _ in range(n_blocks - 1)]
    for Q, tau, M in zip(gens[:-1], durations, maps, strict=True):
        vs = _carry(vs, Q, links_fn(), tau, method)
        if M is not None:
            vs = [v @ M for v in vs]
    return vs


def _last_epoch_solver(Q, rewards, v0):
    """``(transient mask, solve)`` for the last epoch, with ``solve(b) = U b`` on its
    transient states (zero elsewhere).

    A state that cannot move in the last epoch keeps its mass forever: reward there would
    be infinite, so it is refused where mass can sit.
    """
    trans = np.any(Q != 0, axis=1)
    stuck = (~trans) & (v0 > 0) & np.any(np.atleast_2d(rewards) > 0, axis=0)
    if np.any(stuck):
        raise ValueError(
            f"states {np.flatnonzero(stuck).tolist()} hold mass, earn reward and cannot move "
            "in the last epoch: infinite reward"
        )
    S = Q[np.ix_(trans, trans)]

    def solve(b):
        out = np.zeros(Q.shape[0])
        out[trans] = np.linalg.solve(-S, b[trans])
        return out

    return trans, solve


def epoch_moments(
    alpha,
    generators: Sequence[np.ndarray],
    durations: Sequence[float],
    maps,
    rewards,
    k: int,
    *,
    method: str = "expm",
) -> np.ndarray:
    """``E[Y_r^j]``, ``j = 1 … k``, for each reward vector ``r`` (rows of ``rewards``).

    Parameters
    ----------
    alpha : (V,) initial distribution
    generators : E full (V, V) generators, one per epoch (the last one unbounded)
    durations : E − 1 lengths of the bounded epochs
    maps : E − 1 row-stochastic (V, V) matrices or None (identity), applied at the end of
        each bounded epoch; ``None`` for no maps at all
    rewards : (R, V) or (V,) non-negative rewards
    k : highest moment
    method : "expm" or "action" (see the module docstring)

    Returns
    -------
    ndarray (R, k): row ``r``, column ``j − 1`` is ``E[Y_r^j]``.

    Examples
    --------
    >>> # rate 1 on [0, 1), rate 2 after: E[T] = (1 - e^-1) + e^-1 / 2
    >>> Q = lambda a: np.array([[-a, a], [0.0, 0.0]])
    >>> m = epoch_moments([1.0, 0.0], [Q(1.0), Q(2.0)], [1.0], None, [1.0, 0.0], 1)
    >>> bool(abs(m[0, 0] - (1 - np.exp(-1) / 2)) < 1e-14)
    True
    """
    alpha, gens, durations, maps = _check_model(alpha, generators, durations, maps)
    R = np.atleast_2d(np.asarray(rewards, dtype=float))
    if R.shape[1] != alpha.shape[0] or np.any(R < 0):
        raise ValueError("rewards must be non-negative, shape (R, V)")
    if k < 1:
        raise ValueError("k must be >= 1")
    out = np.zeros((R.shape[0], k))
    for row, r in enumerate(R):

        def links(r=r):
            return [(j, j + 1, r) for j in range(k)]

        vs = _through_bounded_epochs(alpha, gens, durations, maps, k + 1, links, method)
        _, solve = _last_epoch_solver(gens[-1], r, vs[0])
        mus = [np.ones_like(alpha)]
        for _ in range(k):
            # μ_i = U (r ∘ μ_{i−1}) on the last epoch's transient states, 0 elsewhere
            mus.append(solve(r * mus[-1]))
        for m in range(1, k + 1):
            total = sum(vs[j] @ mus[m - j] for j in range(m + 1))
            out[row, m - 1] = math.factorial(m) * total
    return out


def epoch_cross_moment(
    alpha, generators, durations, maps, r_i, r_j, *, method: str = "expm"
) -> float:
    """``E[Y_i Y_j]`` across epochs.

    Carries ``v_ab = E[Y_i^a Y_j^b; X_t]`` for ``a, b ∈ {0, 1}``
    (``d v_11 = v_11 Q + v_01 diag(r_i) + v_10 diag(r_j)``), then in the last epoch
    ``E[Y_i Y_j] = v_11·𝟙 + v_10·U r_j + v_01·U r_i + v_00·(U(r_i∘U r_j) + U(r_j∘U r_i))``.

    Examples
    --------
    >>> Q = lambda a: np.array([[-a, a], [0.0, 0.0]])
    >>> r = [1.0, 0.0]
    >>> m2 = epoch_moments([1.0, 0.0], [Q(1.0), Q(2.0)], [0.5], None, r, 2)[0, 1]
    >>> bool(abs(epoch_cross_moment([1.0, 0.0], [Q(1.0), Q(2.0)], [0.5], None, r, r) - m2) < 1e-14)
    True
    """
    alpha, gens, durations, maps = _check_model(alpha, generators, durations, maps)
    ri = np.asarray(r_i, dtype=float)
    rj = np.asarray(r_j, dtype=float)
    if ri.shape != alpha.shape or rj.shape != alpha.shape or np.any(ri < 0) or np.any(rj < 0):
        raise ValueError("rewards must be non-negative vectors of length V")
    # blocks: 0 = v_00, 1 = v_10, 2 = v_01, 3 = v_11
    links = lambda: [(0, 1, ri), (0, 2, rj), (1, 3, rj), (2, 3, ri)]  # noqa: E731
    v00, v10, v01, v11 = _through_bounded_epochs(alpha, gens, durations, maps, 4, links, method)
    _, solve = _last_epoch_solver(gens[-1], np.vstack([ri, rj]), v00)
    Uri, Urj = solve(ri), solve(rj)
    mu_ij = solve(ri * Urj) + solve(rj * Uri)
    return float(v11.sum() + v10 @ Urj + v01 @ Uri + v00 @ mu_ij)


# ---------------------------------------------------------------------------------------
# Distribution functions
# ---------------------------------------------------------------------------------------


def _absorbing_mask(gens, absorbing):
    if absorbing is None:
        # absorbing = never moves in any epoch
        return ~np.any(np.stack([np.any(Q != 0, axis=1) for Q in gens]), axis=0)
    return np.asarray(absorbing, dtype=bool)


def _v0_at(alpha, gens, durations, maps, t, method):
    """``(v_0(t), epoch of t)`` for each t (epochs are right-continuous: a map applies at
    its boundary time)."""
    t = np.asarray(t, dtype=float)
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("t must be finite and >= 0")
    starts = np.concatenate([[0.0], np.cumsum(durations)])
    v_start = [alpha]
    for Q, tau, M in zip(gens[:-1], durations, maps, strict=True):
        v = _carry([v_start[-1]], Q, [], tau, method)[0]
        v_start.append(v if M is None else v @ M)
    out = np.zeros(t.shape + alpha.shape)
    epochs = np.zeros(t.shape, dtype=int)
    for idx in np.ndindex(t.shape):
        # the last epoch whose start is <= t (empty bounded epochs are skipped over)
        e = int(np.searchsorted(starts, t[idx], side="right")) - 1
        out[idx] = _carry([v_start[e]], gens[e], [], float(t[idx] - starts[e]), method)[0]
        epochs[idx] = e
    return out, epochs


def epoch_sf(
    alpha, generators, durations, maps, t, *, absorbing=None, method: str = "expm"
) -> np.ndarray:
    """``P(T > t)``: the mass on non-absorbing states at ``t`` (array of t).

    ``absorbing`` defaults to the states that cannot move in any epoch.

    Examples
    --------
    >>> Q = lambda a: np.array([[-a, a], [0.0, 0.0]])
    >>> sf = epoch_sf([1.0, 0.0], [Q(1.0), Q(2.0)], [1.0], None, [0.5, 2.0])
    >>> bool(np.allclose(sf, [np.exp(-0.5), np.exp(-1 - 2.0)], rtol=1e-14))
    True
    """
    alpha, gens, durations, maps = _check_model(alpha, generators, durations, maps)
    v, _ = _v0_at(alpha, gens, durations, maps, t, method)
    return v[..., ~_absorbing_mask(gens, absorbing)].sum(axis=-1)


def epoch_cdf(
    alpha, generators, durations, maps, t, *, absorbing=None, method: str = "expm"
) -> np.ndarray:
    """``P(T ≤ t) = 1 − P(T > t)``."""
    return 1.0 - epoch_sf(alpha, generators, durations, maps, t, absorbing=absorbing, method=method)


def epoch_pdf(
    alpha, generators, durations, maps, t, *, absorbing=None, method: str = "expm"
) -> np.ndarray:
    """Density of T: ``v_0(t) · (exit rates to absorbing states)`` in the epoch of ``t``
    (the right limit at a boundary)."""
    alpha, gens, durations, maps = _check_model(alpha, generators, durations, maps)
    absorb = _absorbing_mask(gens, absorbing)
    exits = np.stack([Q[:, absorb].sum(axis=1) * ~absorb for Q in gens])
    v, epochs = _v0_at(alpha, gens, durations, maps, t, method)
    return np.einsum("...v,...v->...", v, exits[epochs])


def epoch_quantile(
    alpha, generators, durations, maps, p: float, *, absorbing=None, method: str = "expm"
) -> float:
    """The smallest ``t`` with ``P(T ≤ t) ≥ p`` (root of the CDF by Brent's method)."""
    from scipy.optimize import brentq

    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")

    def f(t):
        cdf = epoch_cdf(alpha, generators, durations, maps, [t], absorbing=absorbing, method=method)
        return float(cdf[0]) - p

    if f(0.0) >= 0.0:
        return 0.0
    hi = 1.0
    while f(hi) < 0.0:
        hi *= 2.0
        if hi > 1e12:
            raise ValueError(f"P(T <= t) stays below {p}: defective distribution?")
    return float(brentq(f, 0.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))


# ---------------------------------------------------------------------------------------
# Rates that change continuously (epochs.md §4): fine piecewise-constant reference
# ---------------------------------------------------------------------------------------


def epoch_moments_variable(
    alpha,
    generator_fn: Callable[[float], np.ndarray],
    t_end: float,
    n_steps: int,
    rewards,
    k: int,
    *,
    last_generator: np.ndarray | None = None,
    method: str = "expm",
) -> np.ndarray:
    """Moments for a generator ``Q(t)`` that varies on ``[0, t_end)`` and is constant after.

    ``[0, t_end)`` is cut into ``n_steps`` sub-epochs of length ``h``, each with the
    generator at its midpoint (error ``O(h²)``, in even powers of ``h``: use
    :func:`richardson` on ``n`` and ``2n`` steps for ``O(h⁴)``). The last epoch uses
    ``last_generator`` (default ``generator_fn(t_end)``).

    Examples
    --------
    >>> Q = lambda t: np.array([[-np.exp(t), np.exp(t)], [0.0, 0.0]])   # rate e^t
    >>> m = [epoch_moments_variable([1, 0], Q, 1.0, n, [1, 0], 1)[0, 0] for n in (50, 100)]
    >>> import scipy.integrate as si
    >>> exact = si.quad(lambda t: np.exp(-np.expm1(min(t, 1.0)) - np.e * max(t - 1, 0)), 0, 30)[0]
    >>> bool(abs(richardson(m[0], m[1]) - exact) < 1e-9)
    True
    """
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    h = float(t_end) / n_steps
    gens = [np.asarray(generator_fn((i + 0.5) * h), dtype=float) for i in range(n_steps)]
    last = generator_fn(float(t_end)) if last_generator is None else last_generator
    gens.append(np.asarray(last, dtype=float))
    return epoch_moments(alpha, gens, [h] * n_steps, None, rewards, k, method=method)


def richardson(coarse, fine, order: int = 2):
    """Richardson extrapolation of a step-``h`` and a step-``h/2`` result with error
    ``O(h^order)``: ``(2^order·fine − coarse)/(2^order − 1)``."""
    f = 2.0**order
    return (f * np.asarray(fine) - np.asarray(coarse)) / (f - 1.0)


# ---------------------------------------------------------------------------------------
# One deme: block-counting state space (pure Python)
# ---------------------------------------------------------------------------------------


def block_counting_states(n: int) -> list[tuple[int, ...]]:
    """All block-counting states of ``n`` samples (partitions of ``n``): ``s[i]`` is the
    number of lineages subtending ``i + 1`` samples. The sample state ``(n, 0, …)`` first,
    then the others in decreasing lexicographic order; the MRCA ``(0, …, 0, 1)`` is last.

    Examples
    --------
    >>> block_counting_states(3)
    [(3, 0, 0), (1, 1, 0), (0, 0, 1)]
    """
    seen = {(n,) + (0,) * (n - 1)}
    todo = list(seen)
    while todo:
        s = todo.pop()
        for nxt, _ in _block_merges(s):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return sorted(seen, reverse=True)


def _block_merges(s):
    """``(next state, number of pairs)`` for every merge of two lineages."""
    out = []
    sizes = [i for i, c in enumerate(s) if c]
    for x, i in enumerate(sizes):
        for j in sizes[x:]:
            pairs = s[i] * (s[i] - 1) // 2 if i == j else s[i] * s[j]
            if pairs:
                nxt = list(s)
                nxt[i] -= 1
                nxt[j] -= 1
                nxt[i + j + 1] += 1
                out.append((tuple(nxt), pairs))
    return out


def block_counting_generator(states: Sequence[tuple[int, ...]], rate: float) -> np.ndarray:
    """Full generator over ``states`` with pairwise coalescence rate ``rate``."""
    index = {s: i for i, s in enumerate(states)}
    Q = np.zeros((len(states), len(states)))
    for s in states:
        for nxt, pairs in _block_merges(s):
            Q[index[s], index[nxt]] += pairs * rate
    Q -= np.diag(Q.sum(axis=1))
    return Q


# ---------------------------------------------------------------------------------------
# Two sampled demes and their ancestor: joint block counting (pure Python, slow, plain)
# ---------------------------------------------------------------------------------------

DEMES = ("A", "B", "ancestor")


@dataclass(frozen=True)
class JointBlockSpace:
    """Joint block-counting states of two sampled demes A, B and an ancestral deme.

    Layout. A lineage's *type* is ``(a, b)``: the numbers of its sampled descendants in A and
    in B. ``types`` lists every type except ``(0, 0)`` in lexicographic order. A state is a
    tuple of length ``3·len(types)``: ``state[d·len(types) + t]`` is the number of lineages
    of type ``types[t]`` in deme ``d`` (0 = A, 1 = B, 2 = ancestor). ``states`` are sorted
    (as tuples) and matrix index ``i`` is ``states[i]``; ``start`` is the index of the
    sample state (``samples[0]`` lineages of type (1, 0) in A, ``samples[1]`` of type (0, 1)
    in B). The absorbing states are those with a single lineage (of type ``samples``).
    """

    samples: tuple[int, int]
    types: tuple[tuple[int, int], ...]
    states: tuple[tuple[int, ...], ...]
    start: int

    @property
    def n_states(self) -> int:
        return len(self.states)

    def index(self) -> dict[tuple[int, ...], int]:
        return {s: i for i, s in enumerate(self.states)}

    def alpha(self) -> np.ndarray:
        a = np.zeros(self.n_states)
        a[self.start] = 1.0
        return a

    def lineages(self) -> np.ndarray:
        """Number of lineages in each state."""
        return np.array([sum(s) for s in self.states], dtype=float)

    def absorbing(self) -> np.ndarray:
        return self.lineages() == 1

    def tmrca_reward(self) -> np.ndarray:
        """1 while two or more lineages remain: ``Y = T_MRCA``."""
        return (self.lineages() >= 2).astype(float)

    def type_count(self, a: int, b: int) -> np.ndarray:
        """Reward: lineages of type ``(a, b)`` in any deme (``E[Y]`` is the joint-SFS entry
        ``(a, b)`` in branch length, tskit layout)."""
        t = self.types.index((a, b))
        T = len(self.types)
        return np.array([sum(s[d * T + t] for d in range(3)) for s in self.states], dtype=float)

    def generator(self, sizes, migration=None) -> np.ndarray:
        """Full generator for one epoch.

        ``sizes[d]``: size of deme ``d`` (pairwise coalescence rate ``1/size``), or ``None``
        where the deme does not exist (no coalescence there). ``migration[(d, e)]``: rate
        per lineage of a move from deme ``d`` to deme ``e`` (backwards in time).
        """
        index = self.index()
        Q = np.zeros((self.n_states, self.n_states))
        for s in self.states:
            for nxt, rate in _joint_moves(s, self.types, sizes, migration or {}):
                Q[index[s], index[nxt]] += rate
        Q -= np.diag(Q.sum(axis=1))
        return Q

    def split_map(self, into: int = 2, sources=(0, 1)) -> np.ndarray:
        """Deterministic boundary map: every lineage of the ``sources`` demes moves to deme
        ``into`` (a population split, backwards in time)."""
        index = self.index()
        M = np.zeros((self.n_states, self.n_states))
        for s in self.states:
            M[index[s], index[_move_all(s, len(self.types), sources, into)]] = 1.0
        return M


def _joint_moves(s, types, sizes, migration):
    """``(next state, rate)`` for every coalescence and migration from state ``s``.

    A single lineage is the MRCA: the process has ended, so it does not migrate either.
    """
    T = len(types)
    out = []
    if sum(s) == 1:
        return out
    for d in range(3):
        if sizes[d] is None:
            continue
        rate = 1.0 / sizes[d]
        present = [x for x in range(T) if s[d * T + x]]  # skipping zero counts: speed only
        for i, x in enumerate(present):
            for y in present[i:]:
                cx, cy = s[d * T + x], s[d * T + y]
                pairs = cx * (cx - 1) // 2 if x == y else cx * cy
                if pairs == 0:
                    continue
                merged = (types[x][0] + types[y][0], types[x][1] + types[y][1])
                nxt = list(s)
                nxt[d * T + x] -= 1
                nxt[d * T + y] -= 1
                nxt[d * T + types.index(merged)] += 1
                out.append((tuple(nxt), pairs * rate))
    for (d, e), m in migration.items():
        if m == 0:
            continue
        for x in range(T):
            c = s[d * T + x]
            if c:
                nxt = list(s)
                nxt[d * T + x] -= 1
                nxt[e * T + x] += 1
                out.append((tuple(nxt), c * m))
    return out


def _move_all(s, T, sources, into):
    nxt = list(s)
    for d in sources:
        for x in range(T):
            nxt[into * T + x] += nxt[d * T + x]
            nxt[d * T + x] = 0
    return tuple(nxt)


def joint_block_state_space(
    samples: tuple[int, int] = (4, 4), split: bool = True
) -> JointBlockSpace:
    """The joint block-counting states reachable from the samples.

    Epoch-0 moves are coalescence within A and within B and migration both ways between
    them; with ``split``, the states reached when every lineage of A and B then moves to the
    ancestor, and everything reachable from those by coalescence in the ancestor, are added.

    Examples
    --------
    >>> sp = joint_block_state_space((1, 1))
    >>> sp.types
    ((0, 1), (1, 0), (1, 1))
    >>> sp.n_states   # {a, b}, {a | b}, {b | a}, {ab}, ab in A, ab in B; ancestor: {a, b}, {ab}
    8
    """
    nA, nB = samples
    if nA < 0 or nB < 0 or nA + nB < 1:
        raise ValueError("samples must be two non-negative counts, not both zero")
    types = tuple((a, b) for a in range(nA + 1) for b in range(nB + 1) if (a, b) != (0, 0))
    T = len(types)
    start = [0] * (3 * T)
    if nA:
        start[types.index((1, 0))] = nA
    if nB:
        start[T + types.index((0, 1))] = nB
    start = tuple(start)
    epoch0 = _closure({start}, types, (1, 1, None), {(0, 1): 1, (1, 0): 1})
    seen = set(epoch0)
    if split:
        moved = {_move_all(s, T, (0, 1), 2) for s in epoch0}
        seen |= _closure(moved, types, (None, None, 1), {})
    states = tuple(sorted(seen))
    return JointBlockSpace(samples=(nA, nB), types=types, states=states, start=states.index(start))


def _closure(initial, types, sizes, migration):
    seen = set(initial)
    todo = list(initial)
    while todo:
        s = todo.pop()
        for nxt, _ in _joint_moves(s, types, sizes, migration):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def im_model(samples=(4, 4), size_a=1.0, size_b=1.0, size_anc=1.0, m=0.5, t_split=1.0):
    """Isolation with migration in coalescent units, on :func:`joint_block_state_space`:
    ``(space, alpha, generators, durations, maps)``."""
    sp = joint_block_state_space(samples)
    q0 = sp.generator((size_a, size_b, None), {(0, 1): m, (1, 0): m})
    q1 = sp.generator((None, None, size_anc))
    return sp, sp.alpha(), [q0, q1], [t_split], [sp.split_map()]


# ---------------------------------------------------------------------------------------
# One deme, many samples: exact E[T_k] under piecewise-constant size (mpmath)
# ---------------------------------------------------------------------------------------


def tavare_coefficients(n: int) -> dict[tuple[int, int], Fraction]:
    """``ρ[k, j]`` with ``P(K(u) = k | K(0) = n) = Σ_{j=k}^{n} ρ[k, j]·e^{−j(j−1)u/2}`` for
    Kingman's lineage-count chain at pairwise rate 1 (Tavaré 1984), ``2 ≤ k ≤ n``, exactly:

    ``ρ[k, j] = (2j − 1)(−1)^{j−k} k_{(j−1)} n_{[j]} / (k! (j − k)! n_{(j)})`` with rising
    ``x_{(m)} = x(x+1)…(x+m−1)`` and falling ``x_{[m]} = x(x−1)…(x−m+1)`` factorials.

    Examples
    --------
    >>> rho = tavare_coefficients(3)
    >>> rho[3, 3], rho[2, 2], rho[2, 3]   # e^{-3u}; (3/2)(e^{-u} - e^{-3u})
    (Fraction(1, 1), Fraction(3, 2), Fraction(-3, 2))
    """
    f = math.factorial
    rho = {}
    for k in range(2, n + 1):
        for j in range(k, n + 1):
            rising_k = f(k + j - 2) // f(k - 1)
            falling_n = f(n) // f(n - j)
            rising_n = f(n + j - 1) // f(n - 1)
            rho[k, j] = Fraction(
                (2 * j - 1) * (-1) ** (j - k) * rising_k * falling_n,
                f(k) * f(j - k) * rising_n,
            )
    return rho


def _mpf(x, mp):
    if isinstance(x, Fraction):
        return mp.mpf(x.numerator) / x.denominator
    if isinstance(x, str):
        return mp.mpf(x)
    return mp.mpf(x)  # ints and floats convert exactly


def _epoch_clock(sizes, boundaries, mp):
    sizes = [_mpf(s, mp) for s in sizes]
    bounds = [_mpf(b, mp) for b in boundaries]
    if len(bounds) != len(sizes) - 1:
        raise ValueError("need len(sizes) - 1 boundaries")
    starts = [mp.mpf(0), *bounds]
    if any(s <= 0 for s in sizes) or any(starts[i + 1] <= starts[i] for i in range(len(bounds))):
        raise ValueError("sizes must be > 0 and boundaries increasing and > 0")
    # u-clock: u(t) = ∫_0^t ds / size(s); epoch e spans [u_starts[e], u_starts[e] + du[e])
    du = [(starts[e + 1] - starts[e]) / sizes[e] for e in range(len(bounds))]
    u_starts = [mp.mpf(0)]
    for d in du:
        u_starts.append(u_starts[-1] + d)
    return sizes, u_starts, du


def default_dps(n: int) -> int:
    """Working precision for :func:`kingman_epoch_times`: the decimal size of the largest
    Tavaré coefficient (the cancellation in the alternating sums is bounded by it) plus 50."""
    rho = tavare_coefficients(n)
    big = max(abs(x) for x in rho.values())
    return int(math.log10(big.numerator) - math.log10(big.denominator)) + 50


def kingman_epoch_times(n: int, sizes, boundaries, dps: int | None = None) -> list:
    """``E[T_k]``, the expected total time with ``k`` lineages, for ``n`` samples in one deme
    whose size is ``sizes[e]`` on epoch ``e`` (pairwise coalescence rate ``1/size``);
    ``boundaries`` are the ``E − 1`` epoch start times ``t_1 < … < t_{E−1}``.

    Time rescaling: the lineage count is Kingman's chain on the clock
    ``u(t) = ∫_0^t ds/size(s)``, so ``E[T_k] = Σ_j ρ[k, j] Σ_e size_e ∫ e^{−λ_j u} du`` over
    epoch ``e``'s u-interval, ``λ_j = j(j−1)/2``. Numbers may be floats (taken exactly),
    ints, Fractions or decimal strings. ``dps`` defaults to :func:`default_dps`.

    Returns
    -------
    list of mpmath.mpf of length n + 1: entry ``k`` is ``E[T_k]`` (entries 0 and 1 are 0).

    Examples
    --------
    >>> et = kingman_epoch_times(4, [1], [])
    >>> [float(x) for x in et[2:]]   # 2/(k(k-1))
    [1.0, 0.3333333333333333, 0.16666666666666666]
    """
    import mpmath

    if n < 2:
        raise ValueError("n must be >= 2")
    rho = tavare_coefficients(n)
    with mpmath.workdps(default_dps(n) if dps is None else dps):
        sz, u_starts, du = _epoch_clock(sizes, boundaries, mpmath.mp)
        integral = {}
        for j in range(2, n + 1):
            lam = mpmath.mpf(j * (j - 1) // 2)
            acc = mpmath.mpf(0)
            for e in range(len(sz)):
                # size_e · ∫_{u_e}^{u_e + du_e} e^{−λu} du  (last epoch: du = ∞)
                head = mpmath.exp(-lam * u_starts[e]) / lam
                tail = -mpmath.expm1(-lam * du[e]) if e < len(du) else mpmath.mpf(1)
                acc += sz[e] * head * tail
            integral[j] = acc
        out = [mpmath.mpf(0), mpmath.mpf(0)]
        for k in range(2, n + 1):
            out.append(
                mpmath.fsum(_mpf(rho[k, j], mpmath.mp) * integral[j] for j in range(k, n + 1))
            )
        return [+x for x in out]


def kingman_epoch_cdf(n: int, sizes, boundaries, t, dps: int | None = None):
    """``P(T_MRCA ≤ t) = 1 − Σ_{k ≥ 2} P(K(u(t)) = k)`` on the same clock (mpmath)."""
    import mpmath

    rho = tavare_coefficients(n)
    with mpmath.workdps(default_dps(n) if dps is None else dps):
        sz, u_starts, du = _epoch_clock(sizes, boundaries, mpmath.mp)
        t = _mpf(t, mpmath.mp)
        starts = [mpmath.mpf(0)]
        for e in range(len(du)):
            starts.append(starts[-1] + du[e] * sz[e])
        e = max(i for i, s in enumerate(starts) if s <= t)
        u = u_starts[e] + (t - starts[e]) / sz[e]
        alive = mpmath.fsum(
            _mpf(rho[k, j], mpmath.mp) * mpmath.exp(-mpmath.mpf(j * (j - 1) // 2) * u)
            for k in range(2, n + 1)
            for j in range(k, n + 1)
        )
        return +(1 - alive)


def sfs_from_times(n: int, ET) -> list:
    """Expected SFS from the ``E[T_k]`` (Griffiths–Tavaré):
    ``E[ξ_i] = Σ_{k=2}^{n−i+1} k·E[T_k]·C(n−i−1, k−2)/C(n−1, k−1)``, ``i = 1 … n−1``
    (entry ``i − 1`` of the returned list), in the current mpmath precision.

    Examples
    --------
    >>> [float(x) for x in sfs_from_times(4, kingman_epoch_times(4, [1], []))]   # 2/i
    [2.0, 1.0, 0.6666666666666666]
    """
    import mpmath

    out = []
    for i in range(1, n):
        terms = []
        for k in range(2, n - i + 2):
            w = Fraction(math.comb(n - i - 1, k - 2), math.comb(n - 1, k - 1))
            terms.append(k * _mpf(w, mpmath.mp) * ET[k])
        out.append(mpmath.fsum(terms))
    return out


# ---------------------------------------------------------------------------------------
# msprime cross-check
# ---------------------------------------------------------------------------------------


def msprime_mean_tmrca_and_sfs(
    demography, samples: dict[str, int], replicates: int, seed: int, *, ploidy: int = 2
) -> dict[str, np.ndarray]:
    """Means and standard errors over msprime replicates (one tree each, no recombination).

    Parameters
    ----------
    demography : msprime.Demography or demes.Graph (converted with
        ``msprime.Demography.from_demes``); times in generations, sizes in individuals
    samples : haploid sample genomes per population name, e.g. ``{"A": 4, "B": 4}``
        (sampled at time 0 as ``msprime.SampleSet(n, population=name, ploidy=1)``)
    replicates, seed : number of replicates and ``random_seed``
    ploidy : ploidy of the individuals (``2``: pairwise rate ``1/(2N)`` per generation)

    Returns
    -------
    dict with ``tmrca``, ``tmrca2`` (``E[T²]``), ``sfs`` (pooled branch-mode AFS over all
    samples, polarised, entries 0 … n) and ``joint_sfs`` (branch-mode AFS with one sample
    set per population in ``samples`` order, tskit layout), each a ``(mean, se)`` pair, in
    generations.
    """
    import msprime

    try:
        import demes

        if isinstance(demography, demes.Graph):
            demography = msprime.Demography.from_demes(demography)
    except ImportError:  # pragma: no cover - demes is in the test extras
        pass
    sample_sets = [msprime.SampleSet(n, population=p, ploidy=1) for p, n in samples.items()]
    sims = msprime.sim_ancestry(
        samples=sample_sets,
        demography=demography,
        ploidy=ploidy,
        sequence_length=1,
        recombination_rate=0,
        num_replicates=replicates,
        random_seed=seed,
    )
    t1, t2, pooled, joint = [], [], [], []
    for ts in sims:
        tree = ts.first()
        if tree.num_roots != 1:
            raise RuntimeError("a replicate did not reach a single MRCA")
        tm = tree.time(tree.root)
        t1.append(tm)
        t2.append(tm * tm)
        pooled.append(ts.allele_frequency_spectrum(mode="branch", polarised=True))
        by_pop = [ts.samples(population=_pop_id(ts, p)) for p in samples]
        joint.append(ts.allele_frequency_spectrum(by_pop, mode="branch", polarised=True))

    def mean_se(x):
        x = np.asarray(x, dtype=float)
        return x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])

    return {
        "tmrca": mean_se(t1),
        "tmrca2": mean_se(t2),
        "sfs": mean_se(pooled),
        "joint_sfs": mean_se(joint),
    }


def _pop_id(ts, name):
    for pop in ts.populations():
        if pop.metadata and pop.metadata.get("name") == name:
            return pop.id
    raise ValueError(f"no population named {name!r}")
