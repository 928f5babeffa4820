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
  x_coef, row_ptr, row_dst, row_slot, sigma, unit_kind)``;
- ``ws = (F, e, d, hi, lo, h)``: the factors of one solve block at one lane
  (:func:`workspace`, filled by :func:`factor_block`);
- ``grads = (unit_gptr, src, dst, coef)``: parameterised edges grouped by unit.

Per unit, a taped unit is solved by :func:`solve_unit` (transposed:
:func:`solve_unit_transposed`), a solve block by :func:`factor_block` then
:func:`solve_block` (:func:`solve_block_transposed`); callers dispatch on
``unit_kind``. Loops over right-hand sides use views when there is one lane (the
compiler vectorises those, not indexed loops), and nothing in a per-edge loop calls
another function: a call passes every array with reference counting, which measured
several times the work of a short loop.

**Solve blocks** (``unit_kind``) are factorised at θ instead of replayed op by op: the
block's rates are scattered into a dense ``k × k`` matrix (one lane at a time), and a GTH LU
runs on it row by row (:func:`factor_block`): row ``i`` takes, for each earlier row ``t``
with a non-zero entry ``(i, t)`` in increasing ``t``, the multiplier ``a = R_it / d_t`` and
``R_iw += a·R_tw`` over row ``t``'s span, ``ε_i += a·ε_t``; its pivot is then
``d_i = Σ_{w > i} R_iw + ε_i`` (left to right), a sum of non-negative terms, so stiff
cycles lose no digits. Skipped entries are exact zeros, so every entry receives the same
operations in the same order as the dense right-looking elimination of the numpy
reference (:mod:`phasetrace.evaluate`): results are bitwise equal. The solves (forward
with the multipliers, back substitution with ``d``, and their transposes) run on the
same factors for every right-hand side.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from .ops import (  # noqa: F401 (compile-time constants)
    ADD,
    CONST,
    DIV,
    FMA,
    LOAD,
    MUL,
    SUM,
    UNIT_SOLVE,
    X_AXPY,
)

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
def workspace(tape):
    """The factor workspace ``(F, e, d, hi, lo, h)`` of one lane of the largest solve
    block (empty arrays when the trace has none)."""
    unit_ptr, unit_kind = tape[0], tape[13]
    kmax = 0
    for u in range(unit_kind.shape[0]):
        if unit_kind[u] == UNIT_SOLVE:
            kmax = max(kmax, unit_ptr[u + 1] - unit_ptr[u])
    F = np.empty(kmax * kmax)
    e = np.empty(kmax)
    d = np.empty(kmax)
    hi = np.empty(kmax, dtype=np.int64)
    lo = np.empty(kmax, dtype=np.int64)
    h = np.empty(kmax, dtype=np.int64)
    return F, e, d, hi, lo, h


@njit(**_JIT)
def factor_block(tape, u, vals, ws, L, ln):
    """Factorise solve block ``u`` at lane ``ln`` of ``vals`` (after :func:`replay_unit`).

    After the call ``F`` (row-major, ``k × k``) holds the multiplier ``a_iw`` at ``(i, w)``
    for ``w < i`` and the final row entry ``R_iw`` for ``w > i`` (the diagonal is scratch),
    ``d`` the pivots, ``hi[i]`` the last column of row ``i`` that can be non-zero and
    ``lo[i]`` its first. One lane at a time: a batch's matrices together would leave the
    caches, and each lane's factors serve all its solves before the next is factorised.
    """
    unit_ptr, row_ptr, row_dst, row_slot, sigma = tape[0], tape[9], tape[10], tape[11], tape[12]
    M, e, d, hi, lo, _ = ws
    first = unit_ptr[u]
    k = unit_ptr[u + 1] - first
    M[: k * k] = 0.0
    for i in range(k):  # assemble: rates in place, exit masses
        v = first + i
        lo[i] = i
        hi[i] = i
        for t in range(row_ptr[v], row_ptr[v + 1]):
            j = row_dst[t] - first
            M[i * k + j] = vals[row_slot[t] * L + ln]
            lo[i] = min(lo[i], j)
            hi[i] = max(hi[i], j)
        s = sigma[v]
        e[i] = vals[s * L + ln] if s >= 0 else 0.0
    for i in range(k):
        ri = i * k
        for t in range(lo[i], i):
            if M[ri + t] == 0.0:  # an exact zero: its updates would add exact zeros
                continue
            a = M[ri + t] / d[t]
            M[ri + t] = a
            e[i] = e[i] + a * e[t]
            # Views and a loop from 0: the compiler vectorises it (measured 8× faster
            # than indexing M directly).
            x = M[ri + t + 1 : ri + hi[t] + 1]
            y = M[t * k + t + 1 : t * k + hi[t] + 1]
            for w in range(x.shape[0]):
                x[w] = x[w] + a * y[w]
            hi[i] = max(hi[i], hi[t])
        row = M[ri + i + 1 : ri + hi[i] + 1]  # GTH: the pivot from non-negative terms
        acc = 0.0
        for w in range(row.shape[0]):
            acc = acc + row[w]
        d[i] = acc + e[i]


@njit(**_JIT)
def solve_block(tape, u, vals, ws, x, acc, R, L, ln):
    """``x ← F(x)`` at lane ``ln`` on solve block ``u`` (layout of :func:`solve_unit`), from
    that lane's factors (:func:`factor_block`): exits folded in, forward with the
    multipliers, back substitution with the pivots. Every sum runs in increasing column
    order, zeros included (exactly as the numpy reference)."""
    unit_ptr, exit_ptr, exit_dst, exit_slot = tape[0], tape[2], tape[3], tape[4]
    M, _, d, hi, lo, _ = ws
    first = unit_ptr[u]
    k = unit_ptr[u + 1] - first
    W = R * L
    for v in range(first, first + k):  # fold the exits: their values are final
        o = v * W + ln
        for e in range(exit_ptr[v], exit_ptr[v + 1]):
            a, w = vals[exit_slot[e] * L + ln], exit_dst[e] * W + ln
            if W == 1:
                x[o] = x[o] + a * x[w]
            elif L == 1:
                xo, xw = x[o : o + W], x[w : w + W]
                for r in range(W):
                    xo[r] = xo[r] + a * xw[r]
            else:
                for r in range(0, W, L):
                    x[o + r] = x[o + r] + a * x[w + r]
    if W == 1:  # one right-hand side, one θ: sums in a register
        for i in range(k):  # y_i += Σ_t a_it·y_t
            row = M[i * k + lo[i] : i * k + i]
            xs = x[first + lo[i] : first + i]
            total = x[first + i]
            for j in range(row.shape[0]):
                total = total + row[j] * xs[j]
            x[first + i] = total
        for i in range(k - 1, -1, -1):  # x_i = (y_i + Σ_w R_iw·x_w) / d_i
            row = M[i * k + i + 1 : i * k + hi[i] + 1]
            xs = x[first + i + 1 : first + hi[i] + 1]
            total = 0.0
            for j in range(row.shape[0]):
                total = total + row[j] * xs[j]
            x[first + i] = (x[first + i] + total) / d[i]
        return
    for i in range(k):  # the same for R right-hand sides (lane ln of each)
        o = (first + i) * W + ln
        for t in range(lo[i], i):
            a, w = M[i * k + t], (first + t) * W + ln
            if L == 1:
                xo, xw = x[o : o + R], x[w : w + R]
                for r in range(R):
                    xo[r] = xo[r] + a * xw[r]
            else:
                for r in range(R):
                    x[o + r * L] = x[o + r * L] + a * x[w + r * L]
    for i in range(k - 1, -1, -1):
        acc[:R] = 0.0
        for c in range(i + 1, hi[i] + 1):
            a, w = M[i * k + c], (first + c) * W + ln
            if L == 1:
                xw = x[w : w + R]
                for r in range(R):
                    acc[r] = acc[r] + a * xw[r]
            else:
                for r in range(R):
                    acc[r] = acc[r] + a * x[w + r * L]
        o = (first + i) * W + ln
        for r in range(R):
            x[o + r * L] = (x[o + r * L] + acc[r]) / d[i]


@njit(**_JIT)
def solve_block_transposed(tape, u, vals, ws, t, R, L, ln):
    """``t ← A⁻ᵀ t`` at lane ``ln`` on solve block ``u`` (layout and role of
    :func:`solve_unit_transposed`): ``Uᵀ`` then ``Lᵀ`` on that lane's factors, each a
    scatter in increasing row order, then the cotangents pushed into the exits."""
    unit_ptr, exit_ptr, exit_dst, exit_slot = tape[0], tape[2], tape[3], tape[4]
    M, _, d, hi, lo, _ = ws
    first = unit_ptr[u]
    k = unit_ptr[u + 1] - first
    W = R * L
    for i in range(k):  # Uᵀ z = t: z_i = t_i / d_i, then t_w += R_iw·z_i
        o = (first + i) * W + ln
        for r in range(R):
            t[o + r * L] = t[o + r * L] / d[i]
        if W == 1:
            row = M[i * k + i + 1 : i * k + hi[i] + 1]
            ts = t[first + i + 1 : first + hi[i] + 1]
            z = t[o]
            for j in range(row.shape[0]):
                ts[j] = ts[j] + row[j] * z
            continue
        for c in range(i + 1, hi[i] + 1):
            a, w = M[i * k + c], (first + c) * W + ln
            for r in range(R):
                t[w + r * L] = t[w + r * L] + a * t[o + r * L]
    for i in range(k - 1, -1, -1):  # Lᵀ y = z: y_i is final, then t_c += a_ic·y_i
        o = (first + i) * W + ln
        if W == 1:
            row = M[i * k + lo[i] : i * k + i]
            ts = t[first + lo[i] : first + i]
            y = t[o]
            for j in range(row.shape[0]):
                ts[j] = ts[j] + row[j] * y
            continue
        for c in range(lo[i], i):
            a, w = M[i * k + c], (first + c) * W + ln
            for r in range(R):
                t[w + r * L] = t[w + r * L] + a * t[o + r * L]
    for v in range(first, first + k):  # push the cotangents into the exits
        o = v * W + ln
        for e in range(exit_ptr[v], exit_ptr[v + 1]):
            a, w = vals[exit_slot[e] * L + ln], exit_dst[e] * W + ln
            for r in range(0, W, L):
                t[w + r] = t[w + r] + a * t[o + r]


@njit(**_JIT)
def solve_unit(tape, u, vals, x, acc, R, L):
    """``x ← F(x)`` on taped unit ``u`` for ``R`` right-hand sides at once.

    ``x`` holds vertex ``v``, right-hand side ``r``, lane ``ln`` at ``(v*R + r)*L + ln``:
    the right-hand sides of ``u``'s vertices and the final values of everything
    downstream. ``acc`` is scratch of length ``R·L``. (A solve block: :func:`solve_block`.)
    """
    unit_ptr, unit_xptr, exit_ptr, exit_dst, exit_slot = tape[:5]
    x_kind, x_u, x_v, x_coef, row_ptr, row_dst, row_slot, sigma = tape[5:13]
    W = R * L
    first, last = unit_ptr[u], unit_ptr[u + 1]
    for v in range(first, last):  # fold the exits: their values are final
        o = v * W
        for e in range(exit_ptr[v], exit_ptr[v + 1]):
            w, s = exit_dst[e] * W, exit_slot[e] * L
            if W == 1:
                x[o] = x[o] + vals[s] * x[w]
            elif L == 1:
                a, xo, xw = vals[s], x[o : o + W], x[w : w + W]
                for r in range(W):
                    xo[r] = xo[r] + a * xw[r]
            else:
                for r in range(0, W, L):
                    for ln in range(L):
                        x[o + r + ln] = x[o + r + ln] + vals[s + ln] * x[w + r + ln]
    for t in range(unit_xptr[u], unit_xptr[u + 1]):
        o, s = x_u[t] * W, x_coef[t] * L
        if x_kind[t] == X_AXPY:
            w = x_v[t] * W
            if W == 1:
                x[o] = x[o] + vals[s] * x[w]
            elif L == 1:
                a, xo, xw = vals[s], x[o : o + W], x[w : w + W]
                for r in range(W):
                    xo[r] = xo[r] + a * xw[r]
            else:
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
            if W == 1:
                acc[0] = acc[0] + vals[s] * x[w]
            elif L == 1:
                a, xw = vals[s], x[w : w + W]
                for r in range(W):
                    acc[r] = acc[r] + a * xw[r]
            else:
                for r in range(0, W, L):
                    for ln in range(L):
                        acc[r + ln] = acc[r + ln] + vals[s + ln] * x[w + r + ln]
        o, s = v * W, sigma[v] * L
        for r in range(0, W, L):
            for ln in range(L):
                x[o + r + ln] = x[o + r + ln] + acc[r + ln] / vals[s + ln]


@njit(**_JIT)
def solve_unit_transposed(tape, u, vals, t, q, R, L):
    """``t ← A⁻ᵀ t`` on taped unit ``u`` (layout of :func:`solve_unit`): its tape backwards.

    ``t`` holds, for ``u``'s vertices, their right-hand side plus the cotangents pushed
    by upstream units; the unit pushes its own into its exits' entries (absorbing
    vertices receive cotangents that nothing reads). ``q``: scratch of length ``R·L``.
    (A solve block: :func:`solve_block_transposed`.)
    """
    unit_ptr, unit_xptr, exit_ptr, exit_dst, exit_slot = tape[:5]
    x_kind, x_u, x_v, x_coef, row_ptr, row_dst, row_slot, sigma = tape[5:13]
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
def forward(prog, tape, rewards, seq, th, X, vals, full, fac, L):
    """Every pass of every reward sequence, unit by unit: ``X[j] = z_{j+1}`` with
    ``z_{j+1} = F(ρ_r∘z_j)``, ``ρ_r = rewards[:, seq[r, j]]``, ``z_0 = 1``, for all ``r``
    at once (layout of :func:`solve_unit`). ``rewards`` is vertex-major (V, M).

    ``vals`` is a one-unit buffer that each unit is replayed into, or with ``full`` every
    unit's values already (:func:`prepare_units`), unit ``u`` at ``unit_optr[u]·L``.
    ``fac``: every solve block's factors already (:func:`prepare_units`, one θ), or
    :func:`no_factors` to factorise each block right before its solve.
    Returns False if a rate was not a positive finite number.
    """
    R, k = seq.shape
    W = R * L
    unit_ptr = tape[0]
    acc = np.empty(W)
    unit_kind = tape[13]
    ws = workspace(tape)
    ok = True
    X[:] = 0.0  # absorbing vertices stay 0
    for u in range(unit_ptr.shape[0] - 2, -1, -1):
        uvals = _unit_values(prog, u, th, vals, full, L)
        if not full:
            ok = replay_unit(prog, u, th, uvals, L) & ok
        first, last = unit_ptr[u], unit_ptr[u + 1]
        if unit_kind[u] != UNIT_SOLVE:
            for j in range(k):
                xj = X[j]
                for v in range(first, last):  # the right-hand side ρ∘z_j (inline: per unit)
                    for r in range(R):
                        rv = rewards[v, seq[r, j]]
                        o = (v * R + r) * L
                        for ln in range(L):
                            xj[o + ln] = rv if j == 0 else rv * X[j - 1, o + ln]
                solve_unit(tape, u, uvals, xj, acc, R, L)
            continue
        for ln in range(L):  # a solve block: each lane's factors serve all its passes
            lws = _block_factors(tape, u, uvals, ws, fac, L, ln)
            for j in range(k):
                _right_hand_sides(rewards, seq, X, j, first, last, R, L, ln, ln + 1)
                solve_block(tape, u, uvals, lws, X[j], acc, R, L, ln)
    return ok


@njit(**_JIT)
def _right_hand_sides(rewards, seq, X, j, first, last, R, L, l0, l1):
    """``X[j] = ρ∘z_j`` (``z_0 = 1``) on vertices ``first:last`` and lanes ``l0:l1``."""
    xj = X[j]
    for v in range(first, last):
        for r in range(R):
            rv = rewards[v, seq[r, j]]
            o = (v * R + r) * L
            for ln in range(l0, l1):
                xj[o + ln] = rv if j == 0 else rv * X[j - 1, o + ln]


@njit(**_JIT)
def no_factors():
    """An empty factor bundle: blocks are factorised where they are solved."""
    z = np.empty(0)
    i = np.empty(0, dtype=np.int64)
    return z, z, i, i, i


@njit(**_JIT)
def factor_store(tape):
    """Empty buffers ``(F, d, hi, lo, fptr)`` for every solve block's factors at one θ:
    block ``u``'s matrix at ``F[fptr[u] : fptr[u + 1]]``, its pivots and spans at its
    vertices' positions."""
    unit_ptr, unit_kind = tape[0], tape[13]
    n = unit_kind.shape[0]
    fptr = np.zeros(n + 1, dtype=np.int64)
    for u in range(n):
        k = unit_ptr[u + 1] - unit_ptr[u]
        fptr[u + 1] = fptr[u] + (k * k if unit_kind[u] == UNIT_SOLVE else 0)
    V = unit_ptr[n]
    return (
        np.empty(fptr[n]),
        np.empty(V),
        np.empty(V, dtype=np.int64),
        np.empty(V, dtype=np.int64),
        fptr,
    )


@njit(**_JIT)
def _stored(fac, ws, u, first, last):
    """Block ``u``'s factors in ``fac`` as a workspace (scratch ``e``, ``h`` from ``ws``)."""
    F, d, hi, lo, fptr = fac
    return F[fptr[u] : fptr[u + 1]], ws[1], d[first:last], hi[first:last], lo[first:last], ws[5]


@njit(**_JIT)
def _block_factors(tape, u, uvals, ws, fac, L, ln):
    """Solve block ``u``'s factors at lane ``ln``: from ``fac`` when they were stored there
    (one θ), else factorised into ``ws`` now."""
    if fac[4].shape[0]:
        unit_ptr = tape[0]
        return _stored(fac, ws, u, unit_ptr[u], unit_ptr[u + 1])
    factor_block(tape, u, uvals, ws, L, ln)
    return ws


@njit(**_JIT)
def prepare_units(prog, tape, first, last, th, vals, fac):
    """Replay units ``first:last`` for one θ into ``vals`` (every unit at its own slots)
    and factorise their solve blocks into ``fac`` (:func:`factor_store`; none with
    :func:`no_factors`).

    Units are independent, so threads can prepare disjoint ranges at the same time.
    Returns False if a rate was not a positive finite number.
    """
    unit_optr, unit_ptr, unit_kind = prog[0], tape[0], tape[13]
    ws = workspace(tape)
    store = fac[4].shape[0] > 0
    ok = True
    for u in range(first, last):
        uvals = vals[unit_optr[u] : unit_optr[u + 1]]
        ok = replay_unit(prog, u, th, uvals, 1) & ok
        if store and unit_kind[u] == UNIT_SOLVE:
            lws = _stored(fac, ws, u, unit_ptr[u], unit_ptr[u + 1])
            factor_block(tape, u, uvals, lws, 1, 0)
    return ok


@njit(**_JIT)
def _unit_values(prog, u, th, vals, full, L):
    """Unit ``u``'s values: all of ``vals`` (a one-unit buffer), or its block of ``vals``."""
    if not full:
        return vals
    unit_optr = prog[0]
    return vals[unit_optr[u] * L : unit_optr[u + 1] * L]


@njit(**_JIT)
def block(th, b0, B, L):
    """θ ``b0 : b0 + L``, padded with copies of the last θ past ``B``."""
    out = np.empty((L, th.shape[1]))
    for ln in range(L):
        out[ln] = th[min(b0 + ln, B - 1)]
    return out


@njit(**_JIT)
def _moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, fac, L):
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
        if not forward(prog, tape, rewards, seq, thb, X, vals, full, fac, L):
            bad[b0 : b0 + L] = bad_rates(prog, thb)[: min(L, B - b0)]
        for ln in range(min(L, B - b0)):
            for r in range(R):
                for j in range(k):
                    out[b0 + ln, r, j] = fact[j] * X[j, (start * R + r) * L + ln]
    return bad


@njit(**_JIT)
def _jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, fac, L):
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
    unit_kind = tape[13]
    ws = workspace(tape)
    bad = np.full(B, -1, dtype=np.int64)
    for b0 in range(0, B, L):
        thb = block(th, b0, B, L)
        if not forward(prog, tape, rewards, seq, thb, X, vals, full, fac, L):
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
            if unit_kind[u] != UNIT_SOLVE:
                solve_unit_transposed(tape, u, uvals, y1, q, 1, L)
                for i in range(1, k):
                    cur = T[i - 1]
                    for v in range(first, last):  # ρ∘ȳ⁽ⁱ⁾ (inline: per unit)
                        for r in range(R):
                            rv = rewards[v, r]
                            o = (v * R + r) * L
                            for ln in range(L):
                                prev = y1[v * L + ln] if i == 1 else T[i - 2, o + ln]
                                cur[o + ln] = cur[o + ln] + rv * prev
                    solve_unit_transposed(tape, u, uvals, cur, q, R, L)
            else:
                for ln in range(L):  # a solve block: each lane's factors once
                    lws = _block_factors(tape, u, uvals, ws, fac, L, ln)
                    solve_block_transposed(tape, u, uvals, lws, y1, 1, L, ln)
                    for i in range(1, k):
                        _adjoint_right_hand_sides(rewards, y1, T, i, first, last, R, L, ln, ln + 1)
                        solve_block_transposed(tape, u, uvals, lws, T[i - 1], R, L, ln)
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
def _adjoint_right_hand_sides(rewards, y1, T, i, first, last, R, L, l0, l1):
    """``T[i − 1] += ρ_r∘ȳ⁽ⁱ⁾`` on vertices ``first:last`` and lanes ``l0:l1`` (``ȳ⁽¹⁾ = y1``,
    shared by every reward vector)."""
    cur = T[i - 1]
    for v in range(first, last):
        for r in range(R):
            rv = rewards[v, r]
            o = (v * R + r) * L
            for ln in range(l0, l1):
                prev = y1[v * L + ln] if i == 1 else T[i - 2, o + ln]
                cur[o + ln] = cur[o + ln] + rv * prev


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


def moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, fac, lanes):
    """:func:`_moments_chunk` for ``lanes`` in :data:`LANE_CHOICES`.

    Each lane count has its own compiled entry point, chosen here in Python: a first call
    compiles (or loads from numba's cache) only the specialisation it needs, so one θ
    never waits for the 16-lane code. ``vals``: a one-unit buffer of ``lanes`` θ, or
    (``full``, one θ) every unit's values from :func:`prepare_units`; ``fac``: the solve
    blocks' factors from it, or :func:`no_factors`.
    """
    if lanes == 1:
        return _moments_chunk_1(prog, tape, start, rewards, seq, fact, th, out, vals, full, fac)
    return _moments_chunk_16(prog, tape, start, rewards, seq, fact, th, out, vals)


@njit(**_JIT)
def _moments_chunk_1(prog, tape, start, rewards, seq, fact, th, out, vals, full, fac):
    return _moments_chunk(prog, tape, start, rewards, seq, fact, th, out, vals, full, fac, 1)


@njit(**_JIT)
def _moments_chunk_16(prog, tape, start, rewards, seq, fact, th, out, vals):
    return _moments_chunk(
        prog, tape, start, rewards, seq, fact, th, out, vals, False, no_factors(), 16
    )


def jacobian_chunk(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, fac, lanes):
    """:func:`_jacobian_chunk` for ``lanes`` in :data:`LANE_CHOICES` (as :func:`moments_chunk`)."""
    if lanes == 1:
        return _jacobian_chunk_1(
            prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, fac
        )
    return _jacobian_chunk_16(prog, tape, grads, start, rewards, fact, th, out, jac, vals)


@njit(**_JIT)
def _jacobian_chunk_1(prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, fac):
    return _jacobian_chunk(
        prog, tape, grads, start, rewards, fact, th, out, jac, vals, full, fac, 1
    )


@njit(**_JIT)
def _jacobian_chunk_16(prog, tape, grads, start, rewards, fact, th, out, jac, vals):
    return _jacobian_chunk(
        prog, tape, grads, start, rewards, fact, th, out, jac, vals, False, no_factors(), 16
    )


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
    ``vals`` (and a solve block factorised) right before its transposed solve. Returns
    the first bad edge per θ (−1 where every rate was a positive finite number), as
    :func:`_moments_chunk`.
    """
    B = th.shape[0]
    unit_ptr, unit_kind = tape[0], tape[13]
    q = np.empty(max(R, 1))
    ws = workspace(tape)
    bad = np.full(B, -1, dtype=np.int64)
    for b in range(B):
        thb = th[b : b + 1]
        tb = T[b]
        ok = True
        for u in range(unit_ptr.shape[0] - 1):
            ok = replay_unit(prog, u, thb, vals, 1) & ok
            if unit_kind[u] == UNIT_SOLVE:
                factor_block(tape, u, vals, ws, 1, 0)
                solve_block_transposed(tape, u, vals, ws, tb, R, 1, 0)
            else:
                solve_unit_transposed(tape, u, vals, tb, q, R, 1)
        if not ok:
            bad[b] = bad_rates(prog, thb)[0]
    return bad
