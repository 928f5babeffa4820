"""Independent references for tests: the dense formula of elimination.md §1, written
without any phasetrace code path except ``Graph.to_matrices`` (itself tested against a
hand-built matrix)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def transient_states(graph) -> list[tuple[int, ...]]:
    """States of the transient vertices in the order ``to_matrices`` uses."""
    return [
        tuple(v.state().tolist())
        for v in graph.vertices()
        if not v.is_starting() and not v.is_absorbing()
    ]


def dense_moments(graph, theta, k, reward_fn=None) -> np.ndarray:
    """``E[Y^j] = j!·α (U Δ(r))^j 𝟙`` with ``U = (−S)⁻¹``, by ``numpy.linalg.solve``."""
    alpha, S = graph.to_matrices(theta)
    states = transient_states(graph)
    r = np.array([1.0 if reward_fn is None else reward_fn(s) for s in states])
    v = np.ones(len(states))
    out = []
    for j in range(1, k + 1):
        v = np.linalg.solve(-S, r * v)
        out.append(math.factorial(j) * alpha @ v)
    return np.array(out)


def dense_cross_moment(graph, theta, fi, fj) -> float:
    """``E[Y_i Y_j] = α U Δ(r_i) U r_j + α U Δ(r_j) U r_i``."""
    alpha, S = graph.to_matrices(theta)
    states = transient_states(graph)
    ri = np.array([fi(s) for s in states])
    rj = np.array([fj(s) for s in states])
    Uri = np.linalg.solve(-S, ri)
    Urj = np.linalg.solve(-S, rj)
    return float(alpha @ np.linalg.solve(-S, ri * Urj) + alpha @ np.linalg.solve(-S, rj * Uri))


def exact_expectation(graph, theta=()) -> Fraction:
    """``E[T] = α U 𝟙`` in exact rational arithmetic (Gauss–Jordan on Fractions).

    The matrix is built from the edge rates themselves: a float ``S`` would already have
    lost the small rates in its diagonal ``−λ`` (the very cancellation GTH avoids).
    """
    verts = [v for v in graph.vertices() if not v.is_starting() and not v.is_absorbing()]
    pos = {v.index: i for i, v in enumerate(verts)}
    n = len(verts)
    A = [[Fraction(0)] * n + [Fraction(1)] for _ in range(n)]
    for v in verts:
        i = pos[v.index]
        for e in v.edges():
            w = Fraction(e.weight_at(theta))
            A[i][i] += w
            if e.to.index in pos:
                A[i][pos[e.to.index]] -= w
    alpha = [Fraction(0)] * n
    for e in graph.starting_vertex().edges():
        if e.to.index in pos:
            alpha[pos[e.to.index]] = Fraction(e.weight)
    for col in range(n):
        piv = next(r for r in range(col, n) if A[r][col] != 0)
        A[col], A[piv] = A[piv], A[col]
        p = A[col][col]
        A[col] = [x / p for x in A[col]]
        for r in range(n):
            if r != col and A[r][col] != 0:
                f = A[r][col]
                A[r] = [x - f * y for x, y in zip(A[r], A[col], strict=True)]
    return sum((alpha[i] * A[i][n] for i in range(n)), Fraction(0))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
