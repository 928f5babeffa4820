"""Joint block counting on two islands: the state space of the joint site-frequency spectrum.

``a`` samples are taken in deme 0 and ``b`` in deme 1. A lineage subtends ``i`` of the
first samples and ``j`` of the second (its *type* ``(i, j)``) and sits in one of the two
demes; the state counts the lineages of each type in each deme. Two lineages in the same
deme coalesce at rate ``c`` (their types add up), a lineage migrates to the other deme at
rate ``m`` while two or more lineages are left, and the chain is absorbed when one lineage
is left. θ = (c, m). The reward of the JSFS entry ``(i, j)`` is the number of lineages of
type ``(i, j)`` (both demes): ``E[Y_ij]`` is the expected total length of the branches
subtending exactly ``i`` and ``j`` samples.

The state space is enumerated breadth first on whole arrays of states (no Python loop per
state), independently of :func:`phasetrace.models.structured_coalescent`, and the graph is
made with :meth:`phasetrace.Graph.from_arrays`. It is a benchmark model (the published
ptdalgorithms benchmark is 7 + 7: 123,134 states), not part of the package.
"""

from __future__ import annotations

import numpy as np


def types(a: int, b: int) -> list[tuple[int, int]]:
    """Lineage types ``(i, j)``, ``(0, 0)`` excluded, in a fixed order."""
    return [(i, j) for i in range(a + 1) for j in range(b + 1) if (i, j) != (0, 0)]


def _moves(a: int, b: int):
    """(kind, u, v, delta, param) arrays: kind 0 pairs within one type, 1 across types,
    2 migration. Positions are ``deme·T + type``."""
    ts = types(a, b)
    index = {t: n for n, t in enumerate(ts)}
    T = len(ts)
    kinds, us, vs, deltas, params = [], [], [], [], []
    for k in range(2):
        for x in range(T):
            for y in range(x, T):
                s = (ts[x][0] + ts[y][0], ts[x][1] + ts[y][1])
                if s not in index:
                    continue
                delta = np.zeros(2 * T, np.int64)
                delta[k * T + x] -= 1
                delta[k * T + y] -= 1
                delta[k * T + index[s]] += 1
                kinds.append(0 if x == y else 1)
                us.append(k * T + x)
                vs.append(k * T + y)
                deltas.append(delta)
                params.append(0)
        for x in range(T):
            delta = np.zeros(2 * T, np.int64)
            delta[k * T + x] -= 1
            delta[(1 - k) * T + x] += 1
            kinds.append(2)
            us.append(k * T + x)
            vs.append(k * T + x)
            deltas.append(delta)
            params.append(1)
    return (
        np.array(kinds),
        np.array(us),
        np.array(vs),
        np.array(deltas),
        np.array(params),
    )


def _counts(states, kinds, u, v) -> np.ndarray:
    su = states[:, u].astype(np.float64)
    sv = states[:, v].astype(np.float64)
    alive = (states.sum(axis=1) >= 2)[:, None]
    return np.where(
        kinds == 0, su * (su - 1) / 2, np.where(kinds == 1, su * sv, np.where(alive, su, 0.0))
    )


def _keys(states: np.ndarray) -> np.ndarray:
    s = np.ascontiguousarray(states, dtype=np.uint8)
    return s.view(np.dtype((np.void, s.shape[1]))).ravel()


def joint_blocks(a: int, b: int):
    """The graph (θ = (c, m)) of joint block counting with ``a`` + ``b`` samples."""
    import phasetrace as pt

    T = len(types(a, b))
    kinds, u, v, delta, param = _moves(a, b)
    start = np.zeros(2 * T, np.int64)
    start[types(a, b).index((1, 0))] = a
    start[T + types(a, b).index((0, 1))] = b
    seen = _keys(start[None, :])
    frontier = start[None, :]
    step = max(1, (1 << 22) // delta.shape[0])
    while frontier.shape[0]:
        parts = []
        for lo in range(0, frontier.shape[0], step):
            blk = frontier[lo : lo + step]
            rows, moves = np.nonzero(_counts(blk, kinds, u, v) > 0)
            parts.append(_keys(blk[rows] + delta[moves]))
        cand = np.unique(np.concatenate(parts))
        pos = np.minimum(np.searchsorted(seen, cand), seen.size - 1)
        new = cand[seen[pos] != cand]
        seen = np.sort(np.concatenate([seen, new]))
        frontier = np.frombuffer(new.tobytes(), np.uint8).reshape(-1, 2 * T).astype(np.int64)
    states = np.frombuffer(seen.tobytes(), np.uint8).reshape(-1, 2 * T).astype(np.int64)
    src, dst, coef = [], [], []
    for lo in range(0, states.shape[0], step):
        counts = _counts(states[lo : lo + step], kinds, u, v)
        rows, moves = np.nonzero(counts > 0)
        src.append(rows + lo)
        dst.append(np.searchsorted(seen, _keys(states[rows + lo] + delta[moves])))
        c = np.zeros((rows.size, 2))
        c[np.arange(rows.size), param[moves]] = counts[rows, moves]
        coef.append(c)
    src, dst, coef = np.concatenate(src), np.concatenate(dst), np.concatenate(coef)
    init = np.searchsorted(seen, _keys(start[None, :]))
    return pt.Graph.from_arrays(
        states, src, dst, np.zeros(src.size), coef, initial=(init, [1.0]), n_params=2
    )


def jsfs_rewards(trace, a: int, b: int) -> np.ndarray:
    """Reward vectors (R, n_vertices), one per JSFS entry ``(i, j)`` other than ``(0, 0)`` and
    ``(a, b)``: the number of lineages of that type in either deme."""
    ts = types(a, b)
    T = len(ts)
    keep = [n for n, t in enumerate(ts) if t != (a, b)]
    st = trace.states
    return np.stack([(st[:, n] + st[:, T + n]).astype(np.float64) for n in keep])
