"""How many states a state space will have, counted without building it.

For each interval, which demes the lineages of each sampled population can be in
(``R[j, k]``: reachable from population ``j``'s deme by that interval's migrations and the
moves of the boundaries before it). A lineage that holds samples of populations ``J``
can only be in a deme every ``j ∈ J`` reaches, so the states of an interval are among the
"coloured partitions": multisets of (type, deme) whose types sum to the sample vector.
Their number is the coefficient of ``x^n`` in ``Π_a (1 − x^a)^(−D_a)``, ``D_a`` the number
of demes type ``a`` can be in: a dynamic programme over types on an array of the shape of
the joint spectrum. The estimate is the sum over the maximal reach patterns of the
intervals (a pattern below another allows a subset of its states): an upper bound on the
vertices built, since every support lies in its interval's set and the vertices are the
union of the supports.
"""

from __future__ import annotations

import math

import numpy as np

from ._spec import Structure

#: Joint types beyond which the programme is not run (its cost grows like types²); the
#: estimate is then a lower bound, the product of the numbers of partitions of each
#: population's samples (all reachable at time 0 while the populations stay apart),
#: which is already astronomical there.
_DP_TYPE_LIMIT = 1 << 14


def estimate(structure: Structure, kind: str) -> int:
    samples = np.asarray(structure.samples, np.int64)
    pops = [k for k in structure.sampled if samples[k] > 0]
    n_pop = samples[pops]
    distinct = {R.tobytes(): R for R in _reach(structure, pops)}.values()
    # A pattern below another (each population reaches fewer demes) allows a subset of
    # its states: only the maximal ones count.
    patterns = [R for R in distinct if not any((R <= Q).all() and (R != Q).any() for Q in distinct)]
    if kind == "joint" and math.prod(int(x) + 1 for x in n_pop) > _DP_TYPE_LIMIT:
        return _as_int(math.prod(_colored_partitions(np.ones(int(x), np.int64)) for x in n_pop))
    count = {"lineages": _lineages, "blocks": _blocks, "joint": _joint}[kind]
    return _as_int(sum(count(R, n_pop) for R in patterns))


def _reach(structure: Structure, pops: list[int]) -> list[np.ndarray]:
    """Per interval, (P, d) bool: demes the lineages of population j can be in."""
    d = structure.n_demes
    R = np.zeros((len(pops), d), bool)
    R[np.arange(len(pops)), pops] = True
    out = []
    for i in range(structure.n_intervals):
        mig = np.asarray(structure.migration[i], bool).astype(np.int64)
        while True:
            nxt = R | ((R.astype(np.int64) @ mig) > 0)
            if (nxt == R).all():
                break
            R = nxt
        out.append(R.copy())
        if i < structure.n_intervals - 1:
            for mv in structure.boundaries[i]:
                held = R[:, mv.source].copy()
                for t in mv.targets:
                    R[:, t] |= held
                if not mv.stay:
                    R[:, mv.source] = False
    return out


def _components(R: np.ndarray) -> list[np.ndarray]:
    """Groups of populations whose lineages can share a deme (directly or through others)."""
    link = (R.astype(np.int64) @ R.T.astype(np.int64)) > 0
    while True:
        nxt = (link.astype(np.int64) @ link.astype(np.int64)) > 0
        if (nxt == link).all():
            break
        link = nxt
    groups = {link[j].tobytes(): np.flatnonzero(link[j]) for j in range(R.shape[0])}
    return list(groups.values())


def _lineages(R: np.ndarray, n_pop: np.ndarray) -> float:
    out = 1.0
    for c in _components(R):
        n_c, d_c = int(n_pop[c].sum()), int(R[c].any(axis=0).sum())
        out *= math.comb(n_c + d_c, d_c) - 1  # 1 … n_c lineages over d_c demes
    return out


def _blocks(R: np.ndarray, n_pop: np.ndarray) -> float:
    out = 1.0
    for c in _components(R):
        n_c = int(n_pop[c].sum())
        capacity = (n_pop[c][:, None] * R[c]).sum(axis=0)  # samples that can reach each deme
        colors = (capacity[None, :] >= np.arange(1, n_c + 1)[:, None]).sum(axis=1)
        out *= _colored_partitions(colors)
    return out


def _colored_partitions(colors: np.ndarray) -> float:
    """[x^n] Π_m (1 − x^m)^(−colors[m−1]), n = len(colors)."""
    n = colors.size
    f = np.zeros(n + 1)
    f[0] = 1.0
    for m in range(1, n + 1):
        D = int(colors[m - 1])
        if D:
            g = f.copy()
            for t in range(1, n // m + 1):
                g[t * m :] += math.comb(t + D - 1, D - 1) * f[: n + 1 - t * m]
            f = g
    return float(f[n])


def _joint(R: np.ndarray, n_pop: np.ndarray) -> float:
    shape = tuple(int(x) + 1 for x in n_pop)
    vectors = np.stack(np.unravel_index(np.arange(1, math.prod(shape)), shape), axis=1)
    held = (vectors > 0)[:, :, None]  # (types, pops, 1)
    colors = (~held | R[None, :, :]).all(axis=1).sum(axis=1)
    f = np.zeros(shape)
    f[(0,) * len(shape)] = 1.0
    for a, D in zip(vectors.tolist(), colors.tolist(), strict=True):
        if not D:
            continue
        g = f.copy()
        t = 1
        while all(t * x <= n for x, n in zip(a, n_pop.tolist(), strict=True)):
            hi = tuple(slice(t * x, None) for x in a)
            lo = tuple(slice(0, s - t * x) for x, s in zip(a, shape, strict=True))
            g[hi] += math.comb(t + D - 1, D - 1) * f[lo]
            t += 1
        f = g
    return float(f[tuple(int(x) for x in n_pop)])


def _as_int(x: float) -> int:
    return round(x) if math.isfinite(x) else 10**308
