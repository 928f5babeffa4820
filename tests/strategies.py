"""Hypothesis strategies: random cyclic graphs with several non-trivial SCCs."""

from __future__ import annotations

from hypothesis import strategies as st

import phasetrace as pt

rates = st.floats(min_value=0.05, max_value=20.0, allow_nan=False, allow_infinity=False)


@st.composite
def cyclic_graphs(draw, max_vertices: int = 30, n_params: int = 2, min_sccs: int = 2):
    """A graph of rings (each a non-trivial SCC) with chords, wired forward to absorption.

    Edges are constant or parameterized (``base + c·θ`` with ``c >= 0`` and a positive
    rate for θ > 0), so the same graph is valid at every positive θ.
    """
    n_groups = draw(st.integers(min_sccs, 5))
    sizes = [draw(st.integers(2, max(2, max_vertices // n_groups))) for _ in range(n_groups)]
    g = pt.Graph(state_length=2, n_params=n_params)
    groups = [
        [g.find_or_create_vertex([gi + 1, j]) for j in range(s)] for gi, s in enumerate(sizes)
    ]
    sinks = [g.find_or_create_vertex([n_groups + 1, j]) for j in range(draw(st.integers(1, 2)))]
    existing: set[tuple[int, int]] = set()

    def add(u, v):
        key = (u.index, v.index)
        if u == v or key in existing:
            return
        existing.add(key)
        if n_params and draw(st.booleans()):
            coefs = [draw(st.sampled_from([0.0, 0.5, 1.0, 2.5])) for _ in range(n_params)]
            coefs[draw(st.integers(0, n_params - 1))] += draw(rates)
            u.add_edge_parameterized(v, draw(st.sampled_from([0.0, 0.3])), coefs)
        else:
            u.add_edge(v, draw(rates))

    for gi, grp in enumerate(groups):
        later = [v for other in groups[gi + 1 :] for v in other] + sinks
        for j, u in enumerate(grp):
            add(u, grp[(j + 1) % len(grp)])  # a ring: strongly connected
        for _ in range(draw(st.integers(0, len(grp)))):
            add(grp[draw(st.integers(0, len(grp) - 1))], grp[draw(st.integers(0, len(grp) - 1))])
        exits = draw(st.integers(1, len(grp)))
        for _ in range(exits):
            add(
                grp[draw(st.integers(0, len(grp) - 1))], later[draw(st.integers(0, len(later) - 1))]
            )
    firsts = [grp[0] for grp in groups]
    n_init = draw(st.integers(1, len(firsts)))
    weights = [draw(st.floats(0.1, 1.0)) for _ in range(n_init)]
    total = sum(weights)
    probs = [w / total for w in weights[:-1]]
    probs.append(1.0 - sum(probs))
    for v, p in zip(firsts[:n_init], probs, strict=True):
        g.starting_vertex().add_edge(v, p)
    return g


thetas = st.lists(st.floats(0.1, 5.0), min_size=2, max_size=2)
