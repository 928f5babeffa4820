"""The compiled replay kernel: numba functions over flat arrays (imported only on demand).

**Unit by unit.** A unit's ops read only that unit's slots, and its solve reads only its
own slots and the final values of its exits. So the kernel replays unit ``u`` into a
small buffer right before solving it (units in reverse π order, sinks first) and runs
all ``k`` moment passes and all reward vectors on it before moving on: one unit's values
stay in the fastest caches, and memory does not grow with the trace.

**θ innermost, lanes fixed at compile time.** A block of ``L`` parameter vectors is
evaluated together: slot ``s`` (local to its unit) of θ ``ln`` at ``vals[s*L + ln]``,
vertex ``v`` at ``x[v*L + ln]``. The entry points make ``L`` a compile-time constant
(``numba.literally``), so every op is a fixed-length loop the compiler unrolls or
vectorises, ``L = 1`` is plain scalar code, and each ``L`` is its own cached
specialisation. A partial block is padded with copies of its last θ, whose results are
dropped.

The functions perform exactly the IEEE operations of the numpy reference
(:mod:`phasetrace.evaluate`), in the same order, with no contraction into fused
multiply-adds (numba does not contract without ``fastmath``): results are bitwise equal.

**Gradients** use the adjoint of the linear solves, not reverse-mode differentiation of
the weight program: with ``A = Λ − W`` (the system ``F`` solves), ``z_j = A⁻¹(r∘z_{j−1})``,

    ∂(e_Sᵀ z_j)/∂w_vw = Σ_{i=1..j} ȳ⁽ⁱ⁾_v·(z_{j+1−i,w} − z_{j+1−i,v}),
    ȳ⁽¹⁾ = A⁻ᵀ e_S,  ȳ⁽ⁱ⁺¹⁾ = A⁻ᵀ (r∘ȳ⁽ⁱ⁾),

and ``A⁻ᵀ`` is the same tape run backwards, units in π order (cotangents flow downstream).
A gradient costs two replays, ``k`` forward and ``k`` transposed solves, whatever the
number of parameters; the weight program itself is never differentiated.

Array bundles (tuples, so the signatures stay short), all slots local to their unit:

- ``prog = (unit_optr, unit_eptr, code, a, b, c, consts, sum_args, base, coef_t)``,
  ``coef_t`` of shape (P, E); a unit's first ops are its edges' rates, in edge order;
- ``tape = (unit_ptr, unit_xptr, exit_ptr, exit_dst, exit_slot, x_kind, x_u, x_v,
  x_coef, row_ptr, row_dst, row_slot, sigma)``;
- ``grads = (unit_gptr, src, dst, coef)``: parameterised edges grouped by unit.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from .ops import ADD, CONST, DIV, FMA, LOAD, MUL, SUM, X_AXPY  # noqa: F401 (compile-time constants)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def replay_unit(prog, u, th, vals, L):
    """Fill ``vals`` with unit ``u``'s slots for the θ block ``th`` (L, P).

    Returns False if a rate is not a positive finite number (then :func:`bad_rates`
    tells which).
    """
    unit_optr, unit_eptr, code, a, b, c, consts, sum_args, base, coef_t = prog
    P = th.shape[1]
    o0, e0, e1 = unit_optr[u], unit_eptr[u], unit_eptr[u + 1]
    # The unit's first ops are its edges' rates, in edge order (LOAD, or CONST for a
    # constant edge, whose coefficients are 0): base + c₀θ₀ + c₁θ₁ + …, left to right.
    for e in range(e0, e1):
        o = (e - e0) * L
        for ln in range(L):
            vals[o + ln] = base[e]
    for i in range(P):
        for e in range(e0, e1):
            o, cf = (e - e0) * L, coef_t[i, e]
            for ln in range(L):
                vals[o + ln] = vals[o + ln] + cf * th[ln, i]
    ok = True
    for o in range((e1 - e0) * L):
        ok = ok & (vals[o] > 0.0) & (vals[o] < np.inf)
    for j in range(o0 + e1 - e0, unit_optr[u + 1]):
        cd = code[j]
        o = (j - o0) * L
        # Slices rather than vals[o + ln]: the compiler vectorises fixed-length loops over
        # views (measured 3× faster at 16 lanes), and they cost nothing at one lane.
        out = vals[o : o + L]
        if cd == FMA:
            xa, xb, xc = vals[a[j] * L :], vals[b[j] * L :], vals[c[j] * L :]
            for ln in range(L):
                out[ln] = xa[ln] + xb[ln] * xc[ln]
        elif cd == SUM:
            s0 = a[j]
            xa = vals[sum_args[s0] * L :]
            for ln in range(L):
                out[ln] = xa[ln]
            for t in range(s0 + 1, s0 + b[j]):
                xa = vals[sum_args[t] * L :]
                for ln in range(L):
                    out[ln] = out[ln] + xa[ln]
        elif cd == DIV:
            xa, xb = vals[a[j] * L :], vals[b[j] * L :]
            for ln in range(L):
                out[ln] = xa[ln] / xb[ln]
        elif cd == MUL:
            xa, xb = vals[a[j] * L :], vals[b[j] * L :]
            for ln in range(L):
                out[ln] = xa[ln] * xb[ln]
        elif cd == CONST:
            v = consts[a[j]]
            for ln in range(L):
                out[ln] = v
        elif cd == ADD:
            xa, xb = vals[a[j] * L :], vals[b[j] * L :]
            for ln in range(L):
                out[ln] = xa[ln] + xb[ln]
    return ok


@njit(**_JIT)
def solve_unit(tape, u, vals, x, acc, R, L):
    """``x ← F(x)`` on unit ``u`` for ``R`` right-hand sides at once.

    ``x`` holds vertex ``v``, right-hand side ``r``, lane ``ln`` at ``(v*R + r)*L + ln``:
    the right-hand sides of ``u``'s vertices and the final values of everything
    downstream. ``acc`` is scratch of length ``R·L``.
    """
    unit_ptr, unit_xptr, exit_ptr, exit_dst, exit_slot = tape[:5]
    x_kind, x_u, x_v, x_coef, row_ptr, row_dst, row_slot, sigma = tape[5:]
    W = R * L
    first, last = unit_ptr[u], unit_ptr[u + 1]
    for v in range(first, last):  # fold the exits: their values are final
        o = v * W
        for e in range(exit_ptr[v], exit_ptr[v + 1]):
            w, s = exit_dst[e] * W, exit_slot[e] * L
            for r in range(0, W, L):
                for ln in range(L):
                    x[o + r + ln] = x[o + r + ln] + vals[s + ln] * x[w + r + ln]
    for t in range(unit_xptr[u], unit_xptr[u + 1]):
        o, s = x_u[t] * W, x_coef[t] * L
        if x_kind[t] == X_AXPY:
            w = x_v[t] * W
            for r in range(0, W, L):
                for ln in range(L):
                    x[o + r + ln] = x[o + r + ln] + vals[s + ln] * x[w + r + ln]
        else:
            for r in range(0, W, L):
                for ln in range(L):
                    x[o + r + ln] = x[o + r + ln] / vals[s + ln]
    for v in range(last - 1, first - 1, -1):  # back substitution
        r0, r1 = row_ptr[v], row_ptr[v + 1]
        if r1 == r0:
            continue
        acc[:W] = 0.0
        for e in range(r0, r1):
            w, s = row_dst[e] * W, row_slot[e] * L
            for r in range(0, W, L):
                for ln in range(L):
                    acc[r + ln] = acc[r + ln] + vals[s + ln] * x[w + r + ln]
        o, s = v * W, sigma[v] * L
        for r in range(0, W, L):
            for ln in range(L):
                x[o + r + ln] = x[o + r + ln] + acc[r + ln] / vals[s + ln]


@njit(**_JIT)
def solve_unit_transposed(tape, u, vals, t, q, R, L):
    """``t ← A⁻ᵀ t`` on unit ``u`` (layout of :func:`solve_unit`): its tape backwards.

    ``t`` holds, for ``u``'s vertices, their right-hand side plus the cotangents pushed
    by upstream units; the unit pushes its own into its exits' entries (absorbing
    vertices receive cotangents that nothing reads). ``q``: scratch of length ``R·L``.
    """
    unit_ptr, unit_xptr, exit_ptr, exit_dst, exit_slot = tape[:5]
    x_kind, x_u, x_v, x_coef, row_ptr, row_dst, row_slot, sigma = tape[5:]
    W = R * L
    first, last = unit_ptr[u], unit_ptr[u + 1]
    for v in range(first, last):  # back substitution, reversed
        r0, r1 = row_ptr[v], row_ptr[v + 1]
        if r1 == r0:
            continue
        o, s = v * W, sigma[v] * L
        for r in range(0, W, L):
            for ln in range(L):
                q[r + ln] = t[o + r + ln] / vals[s + ln]
        for e in range(r0, r1):
            w, s = row_dst[e] * W, row_slot[e] * L
            for r in range(0, W, L):
                for ln in range(L):
                    t[w + r + ln] = t[w + r + ln] + vals[s + ln] * q[r + ln]
    for i in range(unit_xptr[u + 1] - 1, unit_xptr[u] - 1, -1):  # x-program, reversed
        o, s = x_u[i] * W, x_coef[i] * L
        if x_kind[i] == X_AXPY:
            w = x_v[i] * W
            for r in range(0, W, L):
                for ln in range(L):
                    t[w + r + ln] = t[w + r + ln] + vals[s + ln] * t[o + r + ln]
        else:
            for r in range(0, W, L):
                for ln in range(L):
                    t[o + r + ln] = t[o + r + ln] / vals[s + ln]
    for v in range(first, last):  # exit folds, reversed
        o = v * W
        for e in range(exit_ptr[v], exit_ptr[v + 1]):
            w, s = exit_dst[e] * W, exit_slot[e] * L
            for r in range(0, W, L):
                for ln in range(L):
                    t[w + r + ln] = t[w + r + ln] + vals[s + ln] * t[o + r + ln]


@njit(**_JIT)
def forward(prog, tape, rewards, seq, th, X, vals, full, L):
    """Every pass of every reward sequence, unit by unit: ``X[j] = z_{j+1}`` with
    ``z_{j+1} = F(ρ_r∘z_j)``, ``ρ_r = rewards[:, seq[r, j]]``, ``z_0 = 1``, for all ``r``
    at once (layout of :func:`solve_unit`). ``rewards`` is vertex-major (V, M).

    ``vals`` is a one-unit buffer that each unit is replayed into, or with ``full`` every
    unit's values already (:func:`replay_units`), unit ``u`` at ``unit_optr[u]·L``.
    Returns False if a rate was not a positive finite number.
    """
    R, k = seq.shape
    W = R * L
    unit_ptr = tape[0]
    acc = np.empty(W)
    ok = True
    X[:] = 0.0  # absorbing vertices stay 0
    for u in range(unit_ptr.shape[0] - 2, -1, -1):
        uvals = _unit_values(prog, u, th, vals, full, L)
        if not full:
            ok = replay_unit(prog, u, th, uvals, L) & ok
        first, last = unit_ptr[u], unit_ptr[u + 1]
        for j in range(k):
            xj = X[j]
            for v in range(first, last):  # the right-hand side ρ∘z_j
                for r in range(R):
                    rv = rewards[v, seq[r, j]]
                    o = (v * R + r) * L
                    for ln in range(L):
                        xj[o + ln] = rv if j == 0 else rv * X[j - 1, o + ln]
            solve_unit(tape, u, uvals, xj, acc, R, L)
    return ok


@njit(**_JIT)
def _unit_values(prog, u, th, vals, full, L):
    """Unit ``u``'s values: all of ``vals`` (a one-unit buffer), or its block of ``vals``."""
    if not full:
        return vals
    unit_optr = prog[0]
    return vals[unit_optr[u] * L : unit_optr[u + 1] * L]


@njit(**_JIT)
def replay_units(prog, first, last, th, vals):
    """Replay units ``first:last`` for one θ into ``vals`` (every unit at its own slots).

    Units are independent, so threads can replay disjoint ranges at the same time.
    Returns False if a rate was not a positive finite number.
    """
    unit_optr = prog[0]
    ok = True
    for u in range(first, last):
        ok = replay_unit(prog, u, th, vals[unit_optr[u] : unit_optr[u + 1]], 1) & ok
    return ok


@njit(**_JIT)
def block(th, b0, B, L):
    """θ ``b0 : b0 + L``, padded with copies of the last θ past ``B``."""
    out = np.empty((L, th.shape[1]))
    for ln in range(L):
        out[ln] = th[min(b0 + ln, B - 1)]
    return out


@njit(**_JIT)
def _moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, L):
    """``out[b, r, j] = fact[j]·z_{j+1}[S]`` (see :func:`forward`) for every θ of ``th``.

    With ``seq[r, j] = r`` and ``fact[j] = (j+1)!`` that is ``E[Y_r^(j+1)]``. Returns
    the first bad edge per θ (−1 where all rates were positive and finite).
    """
    numba.literally(L)
    B = th.shape[0]
    R, k = seq.shape
    V = rewards.shape[0]
    X = np.empty((k, V * R * L))
    bad = np.full(B, -1, dtype=np.int64)
    for b0 in range(0, B, L):
        thb = block(th, b0, B, L)
        if not forward(prog, tape, rewards, seq, thb, X, vals, full, L):
            bad[b0 : b0 + L] = bad_rates(prog, thb)[: min(L, B - b0)]
        for ln in range(min(L, B - b0)):
            for r in range(R):
                for j in range(k):
                    out[b0 + ln, r, j] = fact[j] * X[j, (start * R + r) * L + ln]
    return bad


@njit(**_JIT)
def _jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, L):
    """Moments ``E[Y_r^(j+1)]`` and ``jac[b, r, j, p] = ∂E[Y_r^(j+1)]/∂θ_p``.

    Forward passes as :func:`forward`; then, units in π order, the adjoint chain
    ``ȳ⁽¹⁾ = A⁻ᵀ e_S`` (one vector, shared by every reward) and ``ȳ⁽ⁱ⁺¹⁾ =
    A⁻ᵀ(ρ_r∘ȳ⁽ⁱ⁾)`` (all rewards at once), and each unit's parameterised edges.
    """
    numba.literally(L)
    B, P = th.shape
    V, R = rewards.shape
    k = fact.shape[0]
    W = R * L
    unit_ptr = tape[0]
    unit_gptr = grads[0]
    seq = np.empty((R, k), dtype=np.int64)
    for r in range(R):
        seq[r, :] = r
    X = np.empty((k, V * W))
    y1 = np.empty(V * L)  # ȳ⁽¹⁾
    T = np.empty((max(k - 1, 1), V * W))  # T[i - 1] accumulates ȳ⁽ⁱ⁺¹⁾, i >= 1
    G = np.empty((R, k, L, P))
    q = np.empty(W)
    bad = np.full(B, -1, dtype=np.int64)
    for b0 in range(0, B, L):
        thb = block(th, b0, B, L)
        if not forward(prog, tape, rewards, seq, thb, X, vals, full, L):
            bad[b0 : b0 + L] = bad_rates(prog, thb)[: min(L, B - b0)]
        y1[:] = 0.0
        T[:] = 0.0
        G[:] = 0.0
        for ln in range(L):
            y1[start * L + ln] = 1.0
        for u in range(unit_ptr.shape[0] - 1):  # cotangents flow downstream: π order
            uvals = _unit_values(prog, u, thb, vals, full, L)
            if not full:
                replay_unit(prog, u, thb, uvals, L)
            first, last = unit_ptr[u], unit_ptr[u + 1]
            solve_unit_transposed(tape, u, uvals, y1, q, 1, L)
            for i in range(1, k):
                cur = T[i - 1]
                for v in range(first, last):
                    for r in range(R):
                        rv = rewards[v, r]
                        o = (v * R + r) * L
                        for ln in range(L):
                            prev = y1[v * L + ln] if i == 1 else T[i - 2, o + ln]
                            cur[o + ln] = cur[o + ln] + rv * prev
                solve_unit_transposed(tape, u, uvals, cur, q, R, L)
            e0, e1 = unit_gptr[u], unit_gptr[u + 1]
            for r in range(R):
                for j in range(k):  # Σ_i ȳ⁽ⁱ⁺¹⁾_v·(z_{j−i,w} − z_{j−i,v}), scaled by (j+1)!
                    g = G[r, j]
                    edge_gradient(grads, e0, e1, y1, 1, 0, X[j], R, r, fact[j], g, L)
                    for i in range(1, j + 1):
                        edge_gradient(grads, e0, e1, T[i - 1], R, r, X[j - i], R, r, fact[j], g, L)
        for ln in range(min(L, B - b0)):
            for r in range(R):
                for j in range(k):
                    out[b0 + ln, r, j] = fact[j] * X[j, (start * R + r) * L + ln]
                    for p in range(P):
                        jac[b0 + ln, r, j, p] = G[r, j, ln, p]
    return bad


@njit(**_JIT)
def edge_gradient(grads, e0, e1, y, yR, yr, z, R, r, scale, g, L):
    """``g[ln, p] += scale·Σ_e coef[e, p]·y_src·(z_dst − z_src)`` over the parameterised
    edges ``e0:e1``; ``y`` is read at ``(v*yR + yr)*L + ln``, ``z`` at ``(v*R + r)*L + ln``."""
    _, src, dst, coef = grads
    P = coef.shape[1]
    for e in range(e0, e1):
        v, w = src[e], dst[e]
        oy, ov, ow = (v * yR + yr) * L, (v * R + r) * L, (w * R + r) * L
        for ln in range(L):
            d = scale * (y[oy + ln] * (z[ow + ln] - z[ov + ln]))
            for p in range(P):
                g[ln, p] += coef[e, p] * d


#: The lane counts the entry points are compiled for (one θ; a block of a batch).
LANE_CHOICES = (1, 16)


def moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, lanes):
    """:func:`_moments_chunk` for ``lanes`` in :data:`LANE_CHOICES`.

    Each lane count has its own compiled entry point, chosen here in Python: a first call
    compiles (or loads from numba's cache) only the specialisation it needs, so one θ
    never waits for the 16-lane code. ``vals``: a one-unit buffer of ``lanes`` θ, or
    (``full``, one θ) every unit's values from :func:`replay_units`.
    """
    if lanes == 1:
        return _moments_chunk_1(prog, tape, start, rewards, seq, fact, th, out, vals, full)
    return _moments_chunk_16(prog, tape, start, rewards, seq, fact, th, out, vals)


@njit(**_JIT)
def _moments_chunk_1(prog, tape, start, rewards, seq, fact, th, out, vals, full):
    return _moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, 1)


@njit(**_JIT)
def _moments_chunk_16(prog, tape, start, rewards, seq, fact, th, out, vals):
    return _moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, False, 16)


def jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, lanes):
    """:func:`_jacobian_chunk` for ``lanes`` in :data:`LANE_CHOICES` (as :func:`moments_chunk`)."""
    if lanes == 1:
        return _jacobian_chunk_1(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full)
    return _jacobian_chunk_16(prog, tape, grads, start, rewards, fact, th, out, jac, vals)


@njit(**_JIT)
def _jacobian_chunk_1(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full):
    return _jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, 1)


@njit(**_JIT)
def _jacobian_chunk_16(prog, tape, grads, start, rewards, fact, th, out, jac, vals):
    return _jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, False, 16)


@njit(**_JIT)
def bad_rates(prog, th):
    """For each θ of ``th`` (B, P): the first edge whose rate is not a positive finite
    number, or −1. Only run when :func:`replay_unit` reported one."""
    base, coef_t = prog[8], prog[9]
    out = np.full(th.shape[0], -1, dtype=np.int64)
    for b in range(th.shape[0]):
        for e in range(base.shape[0]):
            v = base[e]
            for i in range(th.shape[1]):
                v = v + coef_t[i, e] * th[b, i]
            if not (v > 0.0 and v < np.inf):
                out[b] = e
                break
    return out


@njit(**_JIT)
def transposed_chunk(prog, tape, th, T, vals, R):
    """``T[b] ← A⁻ᵀ T[b]`` for every θ ``b`` of ``th`` (B, P): ``T`` is (B, V·R), vertex
    ``v`` and right-hand side ``r`` at ``v*R + r``, so ``T[b]`` holds row vectors ``s`` and
    becomes ``s·U`` (``U = (−S)⁻¹`` on transient vertices; see the module docstring).

    Units in π order (cotangents flow downstream), each replayed into the one-unit buffer
    ``vals`` right before its transposed solve. Returns the first bad edge per θ (−1
    where every rate was a positive finite number), as :func:`_moments_chunk`.
    """
    B = th.shape[0]
    unit_ptr = tape[0]
    q = np.empty(max(R, 1))
    bad = np.full(B, -1, dtype=np.int64)
    for b in range(B):
        thb = th[b : b + 1]
        tb = T[b]
        ok = True
        for u in range(unit_ptr.shape[0] - 1):
            ok = replay_unit(prog, u, thb, vals, 1) & ok
            solve_unit_transposed(tape, u, vals, tb, q, R, 1)
        if not ok:
            bad[b] = bad_rates(prog, thb)[0]
    return bad
