"""Seeded random graphs with cycles and several non-trivial SCCs."""

from __future__ import annotations

import numpy as np

from ..graph import Graph


def random_graph(
    n_vertices: int = 20,
    n_sccs: int = 4,
    n_params: int = 2,
    seed: int = 0,
    extra_edges: float = 1.0,
    p_parameterized: float = 0.5,
) -> Graph:
    """A random phase-type graph made of rings (non-trivial SCCs) wired forward.

    Transient vertices are split into ``n_sccs`` groups; each group of two or more is a
    directed ring (so it is strongly connected) with about ``extra_edges`` random chords
    per vertex. Edges also lead forward to later groups and to two absorbing vertices,
    and every group has at least one exit, so every transient vertex reaches absorption.
    The start spreads its mass over a few vertices. About ``p_parameterized`` of the edges
    have rate ``base + coefficients·θ`` with ``base, coefficients >= 0`` and a positive
    rate at any θ > 0.

    States are ``[group, position]`` for transient vertices and ``[n_sccs + 1, j]`` for the
    absorbing ones.

    Examples
    --------
    >>> g = random_graph(12, n_sccs=3, seed=1)
    >>> g.validate()
    """
    rng = np.random.default_rng(seed)
    n_sccs = max(1, min(n_sccs, n_vertices))
    sizes = np.bincount(rng.integers(0, n_sccs, n_vertices - n_sccs), minlength=n_sccs) + 1
    g = Graph(state_length=2, n_params=n_params)
    groups = [
        [g.find_or_create_vertex([gi + 1, j]) for j in range(s)] for gi, s in enumerate(sizes)
    ]
    absorbing = [g.find_or_create_vertex([n_sccs + 1, j]) for j in range(2)]

    def add(u, v):
        if v == u or v in {e.to for e in u.edges()}:
            return
        base = float(rng.uniform(0.05, 3.0))
        if n_params and rng.random() < p_parameterized:
            coefs = rng.uniform(0.0, 2.0, n_params) * (rng.random(n_params) < 0.7)
            coefs[rng.integers(n_params)] += 0.1
            u.add_edge_parameterized(v, base if rng.random() < 0.5 else 0.0, coefs)
        else:
            u.add_edge(v, base)

    for gi, grp in enumerate(groups):
        later = [v for grp2 in groups[gi + 1 :] for v in grp2] + absorbing
        if len(grp) > 1:
            for j, u in enumerate(grp):
                add(u, grp[(j + 1) % len(grp)])
            for _ in range(round(extra_edges * len(grp))):
                add(grp[rng.integers(len(grp))], grp[rng.integers(len(grp))])
        add(grp[rng.integers(len(grp))], later[rng.integers(len(later))])
        for u in grp:
            if rng.random() < 0.4:
                add(u, later[rng.integers(len(later))])
    first = [v for grp in groups for v in grp]
    picks = rng.choice(len(first), size=min(3, len(first)), replace=False)
    w = rng.uniform(0.2, 1.0, len(picks))
    w /= w.sum()
    w[-1] = 1.0 - w[:-1].sum()
    start = g.starting_vertex()
    for i, p in zip(picks, w, strict=True):
        start.add_edge(first[int(i)], float(p))
    return g
