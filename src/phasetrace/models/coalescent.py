"""Coalescent models as phase-type graphs."""

from __future__ import annotations

import numpy as np

from ..graph import Graph
from ..settings import UNSET
from ._size import block_states, check_size


def kingman(n: int, state_space: str = "blocks", *, max_states: int | None = UNSET) -> Graph:
    """The Kingman coalescent of ``n`` samples; θ = (pairwise coalescence rate,).

    Parameters
    ----------
    n : int
        Sample size, ``n >= 2``.
    state_space : {"blocks", "lineages"}
        ``"blocks"``: the block-counting state space; state ``s`` has length ``n`` and
        ``s[i]`` is the number of lineages that subtend ``i + 1`` samples (start
        ``[n, 0, …, 0]``, absorbing ``[0, …, 0, 1]``). The number of states is the number
        of partitions of ``n`` (627 for n=20, 1958 for n=25): use it for site-frequency
        rewards, ``r(s) = s[i]`` gives the total length of branches subtending ``i + 1``
        samples, with ``E = 2/(i + 1)`` at rate 1.
        ``"lineages"``: state ``[k]`` is the number of lineages (``n`` states), for large n.
    max_states : int or None, keyword-only
        Refuse to build more states than this (default: the configured ``max_states``,
        1,000,000 unless set; None: no limit). The block-counting state space is counted
        before it is built.

    Raises
    ------
    StateSpaceTooLargeError
        Before building anything, when the state space has more than ``max_states``
        states (``kingman(100)`` blocks: 190,569,293).

    Notes
    -----
    Two lineages of sizes ``i`` and ``j`` merge at rate ``θ₀·s_i·s_j`` (``θ₀·C(s_i, 2)`` when
    ``i == j``). ``E[T_MRCA] = 2(1 − 1/n)/θ₀``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> round(float(pt.record_trace(kingman(10)).expectation([1.0])), 12)   # 2(1 - 1/10)
    1.8
    """
    if n < 2:
        raise ValueError(f"kingman needs n >= 2 samples, got {n}")
    if state_space == "lineages":
        return Graph.from_callback(_lineage_step, [n], n_params=1)
    if state_space != "blocks":
        raise ValueError(f"state_space must be 'blocks' or 'lineages', got {state_space!r}")
    check_size(
        block_states(n) + 1,
        f"kingman({n}, state_space='blocks')",
        f"the partitions of {n}, and the start",
        f"for moments of the time to the MRCA use state_space='lineages' ({n} states)",
        max_states,
    )
    return Graph.from_callback(_block_step, [n] + [0] * (n - 1), n_params=1)


def _lineage_step(state):
    k = state[0]
    return [] if k <= 1 else [((k - 1,), (0.0, [k * (k - 1) / 2]))]


def _block_step(state):
    if sum(state) <= 1:
        return []
    out = []
    sizes = [i for i, a in enumerate(state) if a > 0]
    for x, i in enumerate(sizes):
        for j in sizes[x:]:
            pairs = state[i] * (state[i] - 1) / 2 if i == j else state[i] * state[j]
            if pairs <= 0:
                continue
            nxt = list(state)
            nxt[i] -= 1
            nxt[j] -= 1
            nxt[i + j + 1] += 1
            out.append((tuple(nxt), (0.0, [pairs])))
    return out


def two_island(n: int) -> Graph:
    """Structured coalescent of ``n`` lineages in two demes; θ = (c, m).

    State ``[a, b]``: ``a`` lineages in deme 1, ``b`` in deme 2. All lineages start in
    deme 1 (``[n, 0]``). From ``[a, b]``: coalescence in deme 1 at rate ``c·C(a, 2)`` to
    ``[a−1, b]``, in deme 2 at ``c·C(b, 2)`` to ``[a, b−1]``; migration at rate ``m`` per
    lineage each way: ``m·a`` to ``[a−1, b+1]``, ``m·b`` to ``[a+1, b−1]``. The states
    ``[1, 0]`` and ``[0, 1]`` (one lineage left) are absorbing. Vertices: 231 for n=20,
    1326 for n=50, 5151 for n=100 (start included).

    Examples
    --------
    >>> import phasetrace as pt
    >>> round(float(pt.record_trace(two_island(5)).expectation([1.0, 0.5])), 8)
    3.40478788
    """
    if n < 2:
        raise ValueError(f"two_island needs n >= 2 lineages, got {n}")
    # Every state with 1 <= a + b <= n is reachable from [n, 0] (by migration).
    s = np.repeat(np.arange(1, n + 1), np.arange(2, n + 2))  # a + b, level by level
    b = np.arange(s.size) - np.repeat(
        np.cumsum(np.arange(2, n + 2)) - np.arange(2, n + 2), np.arange(2, n + 2)
    )
    a = s - b

    def index(a, b):  # row of state [a, b]: levels s = 1..n of s + 1 states each
        t = a + b
        return (t - 1) * (t + 2) // 2 + b

    moves = [  # (applies, target a, target b, coefficient on c, coefficient on m)
        (a >= 2, a - 1, b, a * (a - 1) / 2, 0 * a),
        (b >= 2, a, b - 1, b * (b - 1) / 2, 0 * b),
        ((a >= 1) & (s >= 2), a - 1, b + 1, 0 * a, a),
        ((b >= 1) & (s >= 2), a + 1, b - 1, 0 * b, b),
    ]
    src, dst, coef = [], [], []
    for ok, ta, tb, cc, cm in moves:
        rows = np.flatnonzero(ok)
        src.append(rows)
        dst.append(index(ta[rows], tb[rows]))
        coef.append(np.stack([cc[rows], cm[rows]], axis=1).astype(np.float64))
    src, dst, coef = np.concatenate(src), np.concatenate(dst), np.concatenate(coef)
    return Graph.from_arrays(
        np.stack([a, b], axis=1),
        src,
        dst,
        np.zeros(src.size),
        coef,
        initial=([index(n, 0)], [1.0]),
    )
