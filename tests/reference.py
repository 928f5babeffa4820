"""Independent references for tests: the dense formula of docs/algorithm.md, written
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


def within_uniformization_limit(graph, theta, times, max_steps: int) -> np.ndarray:
    """The ``times`` with ``λ·t <= max_steps / 2`` (``λ`` the largest exit rate of the
    dense matrix). Uniformization refuses larger ``λ·t`` unless the mass is absorbed
    first, by design; random graphs reach it (a mean of 3e4 with λ = 76 needed 1.8e7
    steps at 8 means), and the tests of that refusal are separate."""
    _, S = graph.to_matrices(theta)
    lam = float(np.max(-np.diag(S))) if S.size else 0.0
    times = np.asarray(times, dtype=float)
    return times[times * lam <= max_steps / 2]


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


def _exact_system(graph, theta):
    """``(alpha, A = −S, states)`` as Fractions, built from the edge rates themselves.

    A float ``S`` would already have lost the small rates in its diagonal ``−λ`` (the very
    cancellation GTH avoids), so the exact reference starts from the rates.
    """
    verts = [v for v in graph.vertices() if not v.is_starting() and not v.is_absorbing()]
    pos = {v.index: i for i, v in enumerate(verts)}
    n = len(verts)
    A = [[Fraction(0)] * n for _ in range(n)]
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
    return alpha, A, [tuple(v.state().tolist()) for v in verts]


def _lu(A):
    """Doolittle LU with row pivoting on Fractions: returns (LU, perm)."""
    n = len(A)
    LU = [row[:] for row in A]
    perm = list(range(n))
    for col in range(n):
        piv = next(r for r in range(col, n) if LU[r][col] != 0)
        LU[col], LU[piv] = LU[piv], LU[col]
        perm[col], perm[piv] = perm[piv], perm[col]
        p = LU[col][col]
        for r in range(col + 1, n):
            if LU[r][col] != 0:
                f = LU[r][col] / p
                LU[r][col] = f
                row_r, row_c = LU[r], LU[col]
                for c in range(col + 1, n):
                    if row_c[c]:
                        row_r[c] -= f * row_c[c]
    return LU, perm


def _solve(LU, perm, b):
    n = len(LU)
    y = [b[perm[i]] for i in range(n)]
    for i in range(n):
        y[i] -= sum((LU[i][j] * y[j] for j in range(i) if LU[i][j]), Fraction(0))
    for i in range(n - 1, -1, -1):
        y[i] = (
            y[i] - sum((LU[i][j] * y[j] for j in range(i + 1, n) if LU[i][j]), Fraction(0))
        ) / LU[i][i]
    return y


def exact_moments(graph, theta, k, reward_fn=None) -> list[Fraction]:
    """The dense formula ``E[Y^j] = j!·α (U Δ(r))^j 𝟙`` in exact rational arithmetic."""
    alpha, A, states = _exact_system(graph, theta)
    LU, perm = _lu(A)
    r = [Fraction(1) if reward_fn is None else Fraction(float(reward_fn(s))) for s in states]
    v = [Fraction(1)] * len(states)
    out = []
    for j in range(1, k + 1):
        v = _solve(LU, perm, [ri * vi for ri, vi in zip(r, v, strict=True)])
        out.append(
            math.factorial(j) * sum((a * x for a, x in zip(alpha, v, strict=True)), Fraction(0))
        )
    return out


def exact_expectation(graph, theta=()) -> Fraction:
    """``E[T] = α U 𝟙`` in exact rational arithmetic."""
    return exact_moments(graph, theta, 1)[0]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _exact_derivative_of_S(graph, p):
    """``∂S/∂θ_p`` over the transient vertices, as Fractions (edges' coefficients)."""
    verts = [v for v in graph.vertices() if not v.is_starting() and not v.is_absorbing()]
    pos = {v.index: i for i, v in enumerate(verts)}
    n = len(verts)
    dS = [[Fraction(0)] * n for _ in range(n)]
    for v in verts:
        i = pos[v.index]
        for e in v.edges():
            c = Fraction(e.coefficients[p]) if e.coefficients is not None else Fraction(0)
            dS[i][i] -= c
            if e.to.index in pos:
                dS[i][pos[e.to.index]] += c
    return dS


def _dot(row, vec) -> Fraction:
    return sum((a * b for a, b in zip(row, vec, strict=True) if a), Fraction(0))


def exact_moment_gradients(graph, theta, k, reward_fn=None) -> list[list[Fraction]]:
    """``∂E[Y^j]/∂θ_p`` (j = 1..k, p = 1..n_params) of the dense formula, exactly.

    ``z_j = U(r∘z_{j−1})`` with ``U = (−S)⁻¹`` and ``dU = U dS U`` give
    ``dz_j = U(dS z_j + r∘dz_{j−1})``, ``dz_0 = 0``; ``∂E[Y^j] = j!·α dz_j``.
    """
    alpha, A, states = _exact_system(graph, theta)
    LU, perm = _lu(A)
    n = len(states)
    r = [Fraction(1) if reward_fn is None else Fraction(float(reward_fn(s))) for s in states]
    out = [[Fraction(0)] * graph.n_params for _ in range(k)]
    for p in range(graph.n_params):
        dS = _exact_derivative_of_S(graph, p)
        z = [Fraction(1)] * n
        dz = [Fraction(0)] * n
        for j in range(1, k + 1):
            z = _solve(LU, perm, [ri * zi for ri, zi in zip(r, z, strict=True)])
            dSz = [
                sum((a * b for a, b in zip(row, z, strict=True) if a), Fraction(0)) for row in dS
            ]
            rhs = [a + ri * b for a, ri, b in zip(dSz, r, dz, strict=True)]
            dz = _solve(LU, perm, rhs)
            total = sum((a * x for a, x in zip(alpha, dz, strict=True)), Fraction(0))
            out[j - 1][p] = math.factorial(j) * total
    return out
