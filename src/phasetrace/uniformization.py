"""Uniformization: every Poisson-weighted sweep of the package, compiled with numba.

One module for the distribution functions of traces and for time-inhomogeneous models
(one copy of the Poisson weights, bounds and tangent recursions). It imports numba, so
it is imported on first use, never by ``import phasetrace``.

**Scalar sequences at many times** (the distribution functions of a trace,
:mod:`phasetrace.distribution`): :func:`advance` extends ``π_k = π_{k−1} P`` keeping three
scalars per step, :func:`right_points` and :func:`mix` mix them with each time's Poisson
weights (Fox–Glynn, from the mode outward); :func:`tangent`, :func:`grad_right_points`
and :func:`mix_grad` do the same for their derivatives in θ, with ``Λ`` held fixed.

**Vectors across spans of constant rates** (time-inhomogeneous models,
:mod:`phasetrace.demography.engine`): for one θ, with ``G`` the Van Loan generator of the
piece (``S`` on the diagonal blocks, the rewards on the superdiagonal) and ``Λ`` at least
every exit rate that the mass can meet, the row vector ``[v_0 … v_{K−1}]`` evolves as

    v(h) = Σ_n Pois(n; Λh)·w⁽ⁿ⁾,   w⁽ⁿ⁾ = w⁽ⁿ⁻¹⁾(I + G/Λ),   w⁽⁰⁾ = v(0),

and its integral as ``∫₀ʰ v(s) ds = Λ⁻¹ Σ_n P(N > n)·w⁽ⁿ⁾`` (``N ~ Pois(Λh)``): sums of
non-negative terms (no cancellation). One step of the sequence is
``w_m ← w_m P + (w_{m−1}∘r)/Λ`` with ``P = I + S/Λ``, a sparse product per vector
(:func:`sweep_one`, :func:`sweep_batch`; weights from :func:`poisson_window`).

**Adaptive rate.** A span is cut into sub-spans. At the start of each, entries that are
negligible (below ``flush`` times their vector's largest entry) are set to 0, and ``Λ``
is the largest exit rate among the states the remaining mass can reach (the downstream
closure of the occupied states): in a coalescent, once the mass has left the states with
many lineages, their large rates stop setting the step. A span that needs few steps is
done in one sub-span; otherwise each sub-span covers as much time as all before it, so
their number grows with the logarithm of the work.

**Tangents.** Forward-mode derivatives in ``D`` directions with ``Λ`` and the sub-spans
held fixed (the identities hold for every ``Λ`` at least the rates, so this is the exact
derivative of the computed series): ``w'_m ← w'_m P + w_m P'_d + (w'_{m−1}∘r)/Λ``, with
``P'_d`` the derivative of ``S/Λ`` in direction ``d``.

Vector layout (per θ): ``W[j, v]``; ``j = 0`` is level 0 (the probability mass, shared by
every reward vector) and ``j = 1 + (m − 1)·R + r`` is level ``m`` for reward ``r``
(``m = 1 … K − 1``). The integral accumulated is that of the top level ``K − 1``: one
vector when ``K = 1`` (level 0), else ``R``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def poisson_window(lam, eps, extra):
    """Poisson weights ``p[n] = Pois(n; λ)`` and tails ``T[n] = P(N > n)``, ``n = 0 … M``.

    ``M`` is the first point right of the mode where the remaining tail is at most
    ``eps`` (relative), plus ``extra`` (levels of the Van Loan sequence grow like
    polynomials of that degree in ``n``, and ``Σ_{n>M} p_n·n^m/λ^m`` is the tail of a
    Poisson at ``M − m``). Weights are computed from the mode outward and normalised
    over the window, so nothing underflows for large ``λ``; entries left of the point
    where the left tail falls below ``eps`` are 0.
    """
    if lam <= 0.0:
        p = np.zeros(extra + 1)
        t = np.zeros(extra + 1)
        p[0] = 1.0
        return p, t
    mode = int(lam)
    half = 0.5 * eps
    # rightwards from the mode
    right = mode
    w = 1.0
    total = 1.0
    while True:
        rho = lam / (right + 2.0)
        w_next = w * lam / (right + 1.0)
        if right + 2.0 > lam and w_next / (1.0 - rho) <= half * total:
            break
        w = w_next
        total += w
        right += 1
    m_last = right + extra
    p = np.zeros(m_last + 1)
    p[mode] = 1.0
    w = 1.0
    for n in range(mode + 1, m_last + 1):
        w = w * lam / n
        p[n] = w
    # leftwards from the mode
    w = 1.0
    n = mode
    while n > 0:
        rho = n / lam
        if n < mode and w * rho / (1.0 - rho) <= half * total:
            break
        w = w * n / lam
        n -= 1
        p[n] = w
        total += w
    s = 0.0
    for i in range(m_last + 1):
        s += p[i]
    t = np.zeros(m_last + 1)
    acc = 0.0
    for i in range(m_last, -1, -1):
        p[i] = p[i] / s
        t[i] = acc
        acc += p[i]
    return p, t


@njit(**_JIT)
def _closure(ptr, dst, seed_mask, mark, stack):
    """Vertices reachable from those with ``seed_mask`` (itself included): their number
    ``c``, listed in ``stack[:c]`` and flagged in ``mark`` (cleared by the caller)."""
    c = 0
    for v in range(seed_mask.shape[0]):
        if seed_mask[v]:
            mark[v] = True
            stack[c] = v
            c += 1
    i = 0
    while i < c:
        v = stack[i]
        i += 1
        for e in range(ptr[v], ptr[v + 1]):
            w = dst[e]
            if not mark[w]:
                mark[w] = True
                stack[c] = w
                c += 1
    return c


@njit(**_JIT)
def _step(ptr, dst, keep, f, lam_inv, rew, R, K, act, n_act, cur, nxt):
    """``nxt = cur·(I + G/Λ)`` on the active vertices (all vectors, layout above);
    ``keep = 1 − q/Λ`` per vertex, ``f = rate/Λ`` per edge."""
    nvec = cur.shape[0]
    for i in range(n_act):
        u = act[i]
        k = keep[u]
        nxt[0, u] = cur[0, u] * k
        for m in range(1, K):
            for r in range(R):
                j = 1 + (m - 1) * R + r
                below = cur[0, u] if m == 1 else cur[j - R, u]
                nxt[j, u] = cur[j, u] * k + below * rew[r, u] * lam_inv
    for i in range(n_act):
        u = act[i]
        for e in range(ptr[u], ptr[u + 1]):
            w = dst[e]
            fe = f[e]
            for j in range(nvec):
                nxt[j, w] += cur[j, u] * fe


@njit(**_JIT)
def _step_tangent(ptr, dst, keep, f, dkeep, df, lam_inv, rew, R, K, act, n_act, cur, dcur, dnxt):
    """``dnxt = dcur·(I + G/Λ) + cur·P'`` for one direction (``dkeep = −q'/Λ``,
    ``df = rate'/Λ``)."""
    nvec = cur.shape[0]
    for i in range(n_act):
        u = act[i]
        k = keep[u]
        dk = dkeep[u]
        dnxt[0, u] = dcur[0, u] * k + cur[0, u] * dk
        for m in range(1, K):
            for r in range(R):
                j = 1 + (m - 1) * R + r
                below = dcur[0, u] if m == 1 else dcur[j - R, u]
                dnxt[j, u] = dcur[j, u] * k + cur[j, u] * dk + below * rew[r, u] * lam_inv
    for i in range(n_act):
        u = act[i]
        for e in range(ptr[u], ptr[u + 1]):
            w = dst[e]
            fe = f[e]
            dfe = df[e]
            for j in range(nvec):
                dnxt[j, w] += dcur[j, u] * fe + cur[j, u] * dfe


@njit(**_JIT)
def _span_simple(cptr, csrc, keep, fc, act, n_act, p, t, lam_inv, w, integ, cur, nxt):
    """One sub-span for the common case: level 0 only, no tangents (``w`` and ``integ``
    are rows of ``W`` and of the integral).

    Each active vertex pulls over its incoming edges (``cptr``/``csrc``, rates ``fc`` in
    that order: sources ascending, so the sums add the same terms in the same order as
    pushing would), writing its own entry once: sequential writes, and the bits of the
    push form.
    """
    cur[:] = 0.0  # sources outside the active set hold no mass
    nxt[:] = 0.0
    for i in range(n_act):
        u = act[i]
        x = w[u]
        cur[u] = x
        w[u] = p[0] * x
        integ[u] += t[0] * lam_inv * x
    for n in range(1, p.shape[0]):
        for i in range(n_act):
            v = act[i]
            acc = cur[v] * keep[v]
            for e in range(cptr[v], cptr[v + 1]):
                acc += cur[csrc[e]] * fc[e]
            nxt[v] = acc
        pn = p[n]
        tn = t[n] * lam_inv
        for i in range(n_act):
            u = act[i]
            x = nxt[u]
            w[u] += pn * x
            integ[u] += tn * x
        cur, nxt = nxt, cur


@njit(**_JIT)
def _span_tangent1(cptr, csrc, keep, fc, dkeep, dfc, act, n_act, p, t, lam_inv, w, integ, dw,
                   dinteg):  # fmt: skip
    """One sub-span of level 0 with tangents in ``L`` directions at once, pulling as
    :func:`_span_simple` does.

    ``dw`` (V, L) and ``dinteg`` (V, L) are the tangents of ``w`` and of the integral,
    direction last, so one pass over the edges serves every direction; ``dkeep`` (V, L)
    and ``dfc`` (E, L, incoming order) likewise.
    """
    V = w.shape[0]
    L = dw.shape[1]
    cur = np.zeros(V)
    nxt = np.zeros(V)
    dcur = np.zeros((V, L))
    dnxt = np.zeros((V, L))
    acc = np.empty(L)
    p0 = p[0]
    t0 = t[0] * lam_inv
    for i in range(n_act):
        u = act[i]
        x = w[u]
        cur[u] = x
        w[u] = p0 * x
        integ[u] += t0 * x
        for d in range(L):
            y = dw[u, d]
            dcur[u, d] = y
            dw[u, d] = p0 * y
            dinteg[u, d] += t0 * y
    for n in range(1, p.shape[0]):
        for i in range(n_act):
            v = act[i]
            k = keep[v]
            x = cur[v]
            a = x * k
            for d in range(L):
                acc[d] = dcur[v, d] * k + x * dkeep[v, d]
            for e in range(cptr[v], cptr[v + 1]):
                u = csrc[e]
                y = cur[u]
                fe = fc[e]
                a += y * fe
                for d in range(L):
                    acc[d] += dcur[u, d] * fe + y * dfc[e, d]
            nxt[v] = a
            for d in range(L):
                dnxt[v, d] = acc[d]
        pn = p[n]
        tn = t[n] * lam_inv
        for i in range(n_act):
            u = act[i]
            x = nxt[u]
            w[u] += pn * x
            integ[u] += tn * x
            for d in range(L):
                y = dnxt[u, d]
                dw[u, d] += pn * y
                dinteg[u, d] += tn * y
        cur, nxt = nxt, cur
        dcur, dnxt = dnxt, dcur


@njit(**_JIT)
def apply_generator(ptr, dst, rate, q, rew, R, K, x, out):
    """``out = x·G`` (all vectors): the derivative of the state in the span's length."""
    nvec = x.shape[0]
    V = x.shape[1]
    for u in range(V):
        out[0, u] = -x[0, u] * q[u]
        for m in range(1, K):
            for r in range(R):
                j = 1 + (m - 1) * R + r
                below = x[0, u] if m == 1 else x[j - R, u]
                out[j, u] = -x[j, u] * q[u] + below * rew[r, u]
    for u in range(V):
        for e in range(ptr[u], ptr[u + 1]):
            w = dst[e]
            for j in range(nvec):
                out[j, w] += x[j, u] * rate[e]


@njit(**_JIT)
def _flush(x, flush):
    """Set entries below ``flush`` times the largest magnitude of their row to 0."""
    for j in range(x.shape[0]):
        big = 0.0
        for u in range(x.shape[1]):
            a = abs(x[j, u])
            if a > big:
                big = a
        cut = flush * big
        for u in range(x.shape[1]):
            if abs(x[j, u]) < cut:
                x[j, u] = 0.0


@njit(**_JIT)
def sweep_one(
    ptr, dst, cptr, csrc, cperm, rate, q, drate, dq, dlive, rew, K, tau, dtau, W, dW, integ,
    dinteg, eps, flush, h0, one_go, max_steps,
):  # fmt: skip
    """Advance one θ through a span of length ``tau`` (see the module docstring).

    ``W`` (nvec, V) and ``integ`` (nint, V) in place; tangents ``dW`` (D, nvec, V) and
    ``dinteg``
    (D, nint, V) for the directions ``d`` with ``dlive[d]`` or a nonzero tangent (others
    stay 0). ``drate`` (D, E), ``dq`` (D, V): derivatives of the rates; ``dtau`` (D,):
    of the span's length. Returns the number of sequence steps taken, or −1 when more
    than ``max_steps`` would be needed.
    """
    nvec, V = W.shape
    D = dW.shape[0]
    R = rew.shape[0]
    top0 = 0 if K == 1 else 1 + (K - 2) * R  # first vector of the integrated level
    nint = integ.shape[0]
    live = np.zeros(D, dtype=np.bool_)
    for d in range(D):
        live[d] = dlive[d]
        if not live[d]:
            for j in range(nvec):
                for u in range(V):
                    if dW[d, j, u] != 0.0:
                        live[d] = True
                        break
                if live[d]:
                    break
    cur = np.empty((nvec, V))
    nxt = np.empty((nvec, V))
    acc = np.empty((nvec, V))
    iacc = np.empty((nint, V))
    dcur = np.empty((D, nvec, V))
    dnxt = np.empty((nvec, V))
    dacc = np.empty((D, nvec, V))
    diacc = np.empty((D, nint, V))
    mark = np.zeros(V, dtype=np.bool_)
    occ = np.zeros(V, dtype=np.bool_)
    act = np.empty(V, dtype=np.int64)
    keep = np.empty(V)
    dkeep = np.empty((D, V))
    E = dst.shape[0]
    f = np.empty(E)
    df = np.empty((D, E))
    any_live = False
    for d in range(D):
        any_live = any_live or live[d]
    simple = nvec == 1 and nint == 1 and not any_live
    fused = nvec == 1 and nint == 1 and any_live
    n_live = 0
    for d in range(D):
        if live[d]:
            n_live += 1
    live_ids = np.empty(n_live, dtype=np.int64)
    j = 0
    for d in range(D):
        if live[d]:
            live_ids[j] = d
            j += 1
    nf = n_live if fused else 0
    dkeep_l = np.empty((V, nf))
    fc = np.empty(E if (simple or fused) else 0)
    dfc = np.empty((E if fused else 0, nf))
    dw_l = np.empty((V, nf))
    dinteg_l = np.empty((V, nf))
    steps = 0
    remaining = tau
    elapsed = 0.0
    while remaining > 0.0:
        _flush(W, flush)
        for d in range(D):
            if live[d]:
                _flush(dW[d], flush)
        for u in range(V):
            o = False
            for j in range(nvec):
                if W[j, u] != 0.0:
                    o = True
                    break
            if not o:
                for d in range(D):
                    if live[d]:
                        for j in range(nvec):
                            if dW[d, j, u] != 0.0:
                                o = True
                                break
                    if o:
                        break
            occ[u] = o
        n_act = _closure(ptr, dst, occ, mark, act)
        act[:n_act] = np.sort(act[:n_act])  # memory order: rows and edges stream
        lam = 0.0
        for i in range(n_act):
            u = act[i]
            mark[u] = False
            if q[u] > lam:
                lam = q[u]
        # Λ = 0: nothing moves, but rewards still accrue; any Λ > 0 is exact then.
        if lam <= 0.0:
            lam = 1.0 / remaining
        if lam * remaining <= one_go:
            h = remaining  # little work left: splitting would cost more tails than it saves
        else:  # stiff: double the time covered, so Λ can follow the mass downstream
            h = min(remaining, max(elapsed, h0 / lam))
            if remaining - h < 1e-12 * tau:  # no sliver of a sub-span at the end
                h = remaining
        lam_t = lam * h
        p, t = poisson_window(lam_t, eps, K + 1)
        n_last = p.shape[0] - 1
        if steps + n_last > max_steps:
            return -1
        lam_inv = 1.0 / lam
        for i in range(n_act):
            u = act[i]
            keep[u] = 1.0 - q[u] * lam_inv
            for e in range(ptr[u], ptr[u + 1]):
                f[e] = rate[e] * lam_inv
            for d in range(D):
                if live[d]:
                    dkeep[d, u] = -dq[d, u] * lam_inv
                    for e in range(ptr[u], ptr[u + 1]):
                        df[d, e] = drate[d, e] * lam_inv
            if fused:
                for j in range(n_live):
                    dkeep_l[u, j] = dkeep[live_ids[j], u]
        if simple or fused:  # rates in incoming order for the pulling paths
            for i in range(n_act):
                v = act[i]
                for e in range(cptr[v], cptr[v + 1]):
                    fc[e] = rate[cperm[e]] * lam_inv
                    for j in range(nf):
                        dfc[e, j] = drate[live_ids[j], cperm[e]] * lam_inv
        steps += n_last
        remaining -= h
        elapsed += h
        if fused:  # tangents direction-last while the sub-span runs
            for j in range(n_live):
                d = live_ids[j]
                for u in range(V):
                    dw_l[u, j] = dW[d, 0, u]
                    dinteg_l[u, j] = dinteg[d, 0, u]
            _span_tangent1(
                cptr, csrc, keep, fc, dkeep_l, dfc, act, n_act, p, t, lam_inv, W[0], integ[0],
                dw_l, dinteg_l,
            )  # fmt: skip
            for j in range(n_live):
                d = live_ids[j]
                for u in range(V):
                    dW[d, 0, u] = dw_l[u, j]
                    dinteg[d, 0, u] = dinteg_l[u, j]
            continue
        if simple:
            _span_simple(
                cptr, csrc, keep, fc, act, n_act, p, t, lam_inv, W[0], integ[0], cur[0], nxt[0]
            )
            continue
        for i in range(n_act):
            u = act[i]
            for j in range(nvec):
                cur[j, u] = W[j, u]
                acc[j, u] = p[0] * W[j, u]
            for j in range(nint):
                iacc[j, u] = t[0] * lam_inv * W[top0 + j, u]
            for d in range(D):
                if live[d]:
                    for j in range(nvec):
                        dcur[d, j, u] = dW[d, j, u]
                        dacc[d, j, u] = p[0] * dW[d, j, u]
                    for j in range(nint):
                        diacc[d, j, u] = t[0] * lam_inv * dW[d, top0 + j, u]
        for n in range(1, n_last + 1):
            for d in range(D):  # tangents first: they read cur before it advances
                if live[d]:
                    _step_tangent(
                        ptr, dst, keep, f, dkeep[d], df[d], lam_inv, rew, R, K, act, n_act,
                        cur, dcur[d], dnxt,
                    )  # fmt: skip
                    pn = p[n]
                    tn = t[n] * lam_inv
                    for i in range(n_act):
                        u = act[i]
                        for j in range(nvec):
                            x = dnxt[j, u]
                            dcur[d, j, u] = x
                            dacc[d, j, u] += pn * x
                        for j in range(nint):
                            diacc[d, j, u] += tn * dcur[d, top0 + j, u]
            _step(ptr, dst, keep, f, lam_inv, rew, R, K, act, n_act, cur, nxt)
            pn = p[n]
            tn = t[n] * lam_inv
            for i in range(n_act):
                u = act[i]
                for j in range(nvec):
                    x = nxt[j, u]
                    cur[j, u] = x
                    acc[j, u] += pn * x
                for j in range(nint):
                    iacc[j, u] += tn * cur[top0 + j, u]
        for i in range(n_act):
            u = act[i]
            for j in range(nvec):
                W[j, u] = acc[j, u]
            for j in range(nint):
                integ[j, u] += iacc[j, u]
            for d in range(D):
                if live[d]:
                    for j in range(nvec):
                        dW[d, j, u] = dacc[d, j, u]
                    for j in range(nint):
                        dinteg[d, j, u] += diacc[d, j, u]
    # the span's length: d/dτ v(τ) = v(τ)·G, d/dτ ∫ v_top = v_top(τ)
    any_dtau = False
    for d in range(D):
        if dtau[d] != 0.0:
            any_dtau = True
    if any_dtau:
        apply_generator(ptr, dst, rate, q, rew, R, K, W, nxt)
        for d in range(D):
            g = dtau[d]
            if g != 0.0:
                for j in range(nvec):
                    for u in range(V):
                        dW[d, j, u] += g * nxt[j, u]
                for j in range(nint):
                    for u in range(V):
                        dinteg[d, j, u] += g * W[top0 + j, u]
    return steps


#: θ evaluated side by side in the lane path of :func:`sweep_batch`.
LANES = 8


@njit(**_JIT)
def sweep_batch(
    ptr, dst, cptr, csrc, cperm, rate, q, drate, dq, dlive, rew, K, tau, dtau, W, dW, integ,
    dinteg, eps, flush, h0, one_go, max_steps,
):  # fmt: skip
    """:func:`sweep_one` for every θ of a batch (leading axis ``B`` on every per-θ
    array). Returns the steps taken per θ (−1: over ``max_steps``).

    Level 0 without tangents (expectations, occupation times) runs :data:`LANES` θ side
    by side when each needs only one sub-span (small models): every θ keeps its own
    rate, weights and active vertices and gets the bits it gets alone.
    """
    B = W.shape[0]
    out = np.full(B, -2, dtype=np.int64)
    plain = W.shape[1] == 1 and integ.shape[1] == 1 and K == 1 and B > 1
    for b in range(B):
        if not plain:
            break
        for d in range(dW.shape[1]):
            if dlive[b, d]:
                plain = False
    if plain:
        for b0 in range(0, B, LANES):
            b1 = min(B, b0 + LANES)
            _lanes(ptr, dst, rate, q, tau, W, integ, eps, flush, one_go, max_steps, b0, b1, out)
    for b in range(B):
        if out[b] != -2:
            continue
        out[b] = sweep_one(
            ptr, dst, cptr, csrc, cperm, rate[b], q[b], drate[b], dq[b], dlive[b], rew, K,
            tau[b], dtau[b], W[b], dW[b], integ[b], dinteg[b], eps, flush, h0, one_go, max_steps,
        )  # fmt: skip
    return out


@njit(**_JIT)
def _lanes(ptr, dst, rate, q, tau, W, integ, eps, flush, one_go, max_steps, b0, b1, out):
    """θ ``b0:b1`` in one pass when each fits one sub-span (else ``out`` stays −2 for it):
    the operations of :func:`sweep_one` on each θ, interleaved."""
    V = W.shape[2]
    E = dst.shape[0]
    L = b1 - b0
    mark = np.zeros(V, dtype=np.bool_)
    occ = np.zeros(V, dtype=np.bool_)
    act = np.empty(V, dtype=np.int64)
    union = np.zeros(V, dtype=np.bool_)
    ok = np.zeros(L, dtype=np.bool_)
    lam = np.zeros(L)
    keep = np.ones((V, L))
    f = np.zeros((E, L))
    windows = []
    n_max = 0
    for j in range(L):
        b = b0 + j
        if tau[b] <= 0.0:
            out[b] = 0
            continue
        _flush(W[b], flush)
        for u in range(V):
            occ[u] = W[b, 0, u] != 0.0
        n_act = _closure(ptr, dst, occ, mark, act)
        lam_j = 0.0
        for i in range(n_act):
            u = act[i]
            mark[u] = False
            if q[b, u] > lam_j:
                lam_j = q[b, u]
        if lam_j <= 0.0:
            lam_j = 1.0 / tau[b]
        if lam_j * tau[b] > one_go:
            continue  # stiff: the scalar path splits it into sub-spans
        lam_inv = 1.0 / lam_j
        for i in range(n_act):
            u = act[i]
            union[u] = True
            keep[u, j] = 1.0 - q[b, u] * lam_inv
            for e in range(ptr[u], ptr[u + 1]):
                f[e, j] = rate[b, e] * lam_inv
        ok[j] = True
        lam[j] = lam_j
    for j in range(L):
        if ok[j]:
            p, t = poisson_window(lam[j] * tau[b0 + j], eps, 2)
            windows.append((j, p, t))
            if p.shape[0] > n_max:
                n_max = p.shape[0]
    if not windows:
        return
    pw = np.zeros((n_max, L))
    tw = np.zeros((n_max, L))
    for j, p, t in windows:
        if p.shape[0] - 1 > max_steps:
            out[b0 + j] = -1
            continue
        for n in range(p.shape[0]):
            pw[n, j] = p[n]
            tw[n, j] = t[n] * (1.0 / lam[j])  # as t[n]·Λ⁻¹ in the scalar path
        out[b0 + j] = p.shape[0] - 1
    n_union = 0
    for u in range(V):
        if union[u]:
            act[n_union] = u
            n_union += 1
    w = np.zeros((V, L))
    ig = np.zeros((V, L))
    for j in range(L):
        if out[b0 + j] > 0:
            for i in range(n_union):
                u = act[i]
                w[u, j] = W[b0 + j, 0, u]
                ig[u, j] = integ[b0 + j, 0, u]
    _span_lanes(ptr, dst, keep, f, act, n_union, pw, tw, w, ig)
    for j in range(L):
        if out[b0 + j] > 0:
            for i in range(n_union):
                u = act[i]
                W[b0 + j, 0, u] = w[u, j]
                integ[b0 + j, 0, u] = ig[u, j]


@njit(**_JIT)
def _span_lanes(ptr, dst, keep, f, act, n_act, p, t, w, integ):
    """:func:`_span_simple` for ``L`` θ side by side (arrays with the lane last; ``t``
    already divided by each lane's rate). A lane's weights past its window are 0."""
    V, L = w.shape
    cur = np.empty((V, L))
    nxt = np.empty((V, L))
    for i in range(n_act):
        u = act[i]
        for j in range(L):
            x = w[u, j]
            cur[u, j] = x
            w[u, j] = p[0, j] * x
            integ[u, j] += t[0, j] * x
    for n in range(1, p.shape[0]):
        for i in range(n_act):
            u = act[i]
            for j in range(L):
                nxt[u, j] = cur[u, j] * keep[u, j]
        for i in range(n_act):
            u = act[i]
            for e in range(ptr[u], ptr[u + 1]):
                v = dst[e]
                for j in range(L):
                    nxt[v, j] += cur[u, j] * f[e, j]
        for i in range(n_act):
            u = act[i]
            for j in range(L):
                x = nxt[u, j]
                w[u, j] += p[n, j] * x
                integ[u, j] += t[n, j] * x
        cur, nxt = nxt, cur


@njit(**_JIT)
def apply_map_batch(src, dst, val, dval, W, dW, out, dout):
    """``out = W·M`` and ``dout = dW·M + W·M'`` for sparse maps given as terms.

    ``val`` (B, T): the value of each term ``src → dst``; ``dval`` (B, D, T): its
    derivatives. ``W`` (B, nvec, V), ``dW`` (B, D, nvec, V); ``out``/``dout`` zeroed by
    the caller.
    """
    B, nvec, _ = W.shape
    D = dW.shape[1]
    T = src.shape[0]
    for b in range(B):
        for k in range(T):
            u = src[k]
            w = dst[k]
            f = val[b, k]
            for j in range(nvec):
                x = W[b, j, u]
                out[b, j, w] += x * f
                for d in range(D):
                    dout[b, d, j, w] += dW[b, d, j, u] * f + x * dval[b, d, k]


# -- scalar sequences: the distribution functions of a trace -----------------------------
@njit(**_JIT)
def advance(ptr, dst, prob, diag, exitp, pi, scratch, state, m, a, e, k0, k1, stop, flush):
    """Steps ``k0 .. k1 − 1`` of ``π_k = π_{k−1} P`` (``pi`` holds ``π_{k0−1}``).

    Writes ``m[k] = π_k·𝟙``, ``e[k] = π_k·(s/λ)`` (the mass absorbed in the next step) and
    ``a[k] = a[k − 1] + e[k − 1]`` (the mass absorbed by step ``k``, Kahan-summed).
    ``state`` is ``[lo, hi, kahan compensation, flushed mass]``: ``pi`` is zero outside
    ``lo:hi``. Entries below ``flush`` are set to zero (their sum is added to the flushed
    mass). Returns the number of terms now available: ``k1``, or ``k + 1`` at the first
    ``k`` with ``m[k] <= stop`` (the sequence is then exhausted).
    """
    lo = int(state[0])
    hi = int(state[1])
    comp = state[2]
    flushed = state[3]
    for k in range(k0, k1):
        new_lo = lo
        new_hi = hi
        for w in range(lo, hi):
            scratch[w] = diag[w] * pi[w]
        for v in range(lo, hi):
            x = pi[v]
            if x == 0.0:
                continue
            for j in range(ptr[v], ptr[v + 1]):
                w = dst[j]
                scratch[w] += x * prob[j]
                if w < new_lo:
                    new_lo = w
                if w >= new_hi:
                    new_hi = w + 1
        total = 0.0
        ex = 0.0
        first = new_hi
        last = new_lo
        for w in range(new_lo, new_hi):
            y = scratch[w]
            scratch[w] = 0.0
            if y < flush:
                flushed += y
                y = 0.0
            else:
                if w < first:
                    first = w
                last = w + 1
                total += y
                ex += y * exitp[w]
            pi[w] = y
        if first >= last:
            first = 0
            last = 0
        lo = first
        hi = last
        m[k] = total
        e[k] = ex
        # a[k] = a[k - 1] + e[k - 1], compensated
        yk = e[k - 1] - comp
        tk = a[k - 1] + yk
        comp = (tk - a[k - 1]) - yk
        a[k] = tk
        if total <= stop:
            state[0] = lo
            state[1] = hi
            state[2] = comp
            state[3] = flushed
            return k + 1
    state[0] = lo
    state[1] = hi
    state[2] = comp
    state[3] = flushed
    return k1


@njit(**_JIT)
def right_points(lams, eps):
    """The last Poisson term :func:`mix` uses for each ``λt >= 0`` (the same walk)."""
    out = np.empty(lams.shape[0], dtype=np.int64)
    half = 0.5 * eps
    for i in range(lams.shape[0]):
        lam = lams[i]
        mode = int(lam)  # floor: λt >= 0
        total = 0.0
        w = 1.0
        k = mode
        while True:
            total += w
            if k == 0:
                break
            rho = k / lam
            if k < mode and w * rho / (1.0 - rho) <= half * total:
                break
            w *= rho
            k -= 1
        w = 1.0
        k = mode
        while lam > 0.0:
            k += 1
            w *= lam / k
            total += w
            rho = lam / (k + 1)
            if w * rho / (1.0 - rho) <= half * total:
                break
        out[i] = k
    return out


@njit(**_JIT)
def mix(lams, eps, m, a, e, n_avail, exhausted, out):
    """``out[:, i] = Σ_k Pois(k; λt_i)·(m_k, a_k, e_k)``, truncated with a relative tail
    bound ``eps`` (``eps/2`` on each side of the mode), weights normalised over the window.

    Terms from ``n_avail`` on are ``(0, 1, 0)`` when ``exhausted`` (else they must not be
    needed). Returns −1 on success, or the index of a ``λt`` that needs unavailable terms.
    """
    half = 0.5 * eps
    log_half = math.log(half)
    for i in range(lams.shape[0]):
        lam = lams[i]
        # Far past an exhausted sequence: P(N <= n_avail) <= e^{-λ}(eλ/n)^n (Chernoff)
        # bounds the weight of the terms that are not (0, 1, 0).
        far = exhausted and lam > n_avail
        if far and (lam == np.inf or n_avail * (1.0 + math.log(lam / n_avail)) - lam <= log_half):
            out[0, i] = 0.0
            out[1, i] = 1.0
            out[2, i] = 0.0
            continue
        mode = int(lam)  # floor: λt >= 0
        total = 0.0
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        w = 1.0
        k = mode
        while True:  # the mode, then leftwards: w_{k-1} = w_k·k/λt
            total += w
            if k < n_avail:
                s0 += w * m[k]
                s1 += w * a[k]
                s2 += w * e[k]
            elif exhausted:
                s1 += w
            else:
                return i
            if k == 0:
                break
            rho = k / lam
            if k < mode and w * rho / (1.0 - rho) <= half * total:
                break
            w *= rho
            k -= 1
        w = 1.0
        k = mode
        while lam > 0.0:  # rightwards: w_{k+1} = w_k·λt/(k+1)
            k += 1
            w *= lam / k
            total += w
            if k < n_avail:
                s0 += w * m[k]
                s1 += w * a[k]
                s2 += w * e[k]
            elif exhausted:
                s1 += w
            else:
                return i
            rho = lam / (k + 1)
            if w * rho / (1.0 - rho) <= half * total:
                break
        out[0, i] = s0 / total
        out[1, i] = s1 / total
        out[2, i] = s2 / total
    return -1


@njit(**_JIT)
def tangent(
    ptr, dst, prob, dprob, diag, ddiag, exitp, dexitp, pi, g, scratch, gscratch, acc, state,
    flushed_g, dm, de, k0, k1, stop_g, flush, flush_g,
):  # fmt: skip
    """Steps ``k0 .. k1 − 1`` of ``π_k = π_{k−1} P`` and of its tangents
    ``G_k[:, p] = G_{k−1}[:, p] P + π_{k−1} P'_p`` (``pi``, ``g`` hold step ``k0 − 1``).

    Arrays over vertices or edges carry the parameter last (``g[v, p]``): ``P'_p`` is
    ``dprob[:, p]`` on the edges and ``ddiag[:, p]`` on the diagonal. Writes
    ``dm[k, p] = G_k[:, p]·𝟙`` and ``de[k, p] = G_k[:, p]·exitp + π_k·dexitp[:, p]`` (the
    derivatives of ``m_k`` and ``e_k``). ``state`` is ``[lo, hi, flushed π mass]``: ``pi``
    and ``g`` are zero outside ``lo:hi``. Entries of ``π`` below ``flush`` and of ``G``
    below ``flush_g`` in magnitude are set to zero (``flushed_g[p]`` adds up the
    magnitudes dropped from ``G[:, p]``). Returns ``k1``, or ``k + 1`` at the first ``k``
    at which ``π_k`` is zero and every ``|G_k[:, p]|₁ <= stop_g`` (the sequence is then
    exhausted).
    """
    n_par = g.shape[1]
    lo = int(state[0])
    hi = int(state[1])
    flushed = state[2]
    for k in range(k0, k1):
        new_lo = lo
        new_hi = hi
        for w in range(lo, hi):
            x = pi[w]
            dw = diag[w]
            scratch[w] = dw * x
            for p in range(n_par):
                gscratch[w, p] = dw * g[w, p] + ddiag[w, p] * x
        for v in range(lo, hi):
            x = pi[v]
            live = x != 0.0
            if not live:
                for p in range(n_par):
                    if g[v, p] != 0.0:
                        live = True
                        break
            if not live:
                continue
            for j in range(ptr[v], ptr[v + 1]):
                w = dst[j]
                pj = prob[j]
                scratch[w] += x * pj
                for p in range(n_par):
                    gscratch[w, p] += g[v, p] * pj + x * dprob[j, p]
                if w < new_lo:
                    new_lo = w
                if w >= new_hi:
                    new_hi = w + 1
        for p in range(n_par):
            acc[0, p] = 0.0  # G·𝟙
            acc[1, p] = 0.0  # G·exitp + π·dexitp
            acc[2, p] = 0.0  # |G|₁
        first = new_hi
        last = new_lo
        alive_pi = False
        for w in range(new_lo, new_hi):
            y = scratch[w]
            scratch[w] = 0.0
            if y < flush:
                flushed += y
                y = 0.0
            pi[w] = y
            alive = y != 0.0
            if alive:
                alive_pi = True
            ew = exitp[w]
            for p in range(n_par):
                gy = gscratch[w, p]
                gscratch[w, p] = 0.0
                if abs(gy) < flush_g:
                    flushed_g[p] += abs(gy)
                    gy = 0.0
                else:
                    alive = True
                g[w, p] = gy
                acc[0, p] += gy
                acc[1, p] += gy * ew + y * dexitp[w, p]
                acc[2, p] += abs(gy)
            if alive:
                if w < first:
                    first = w
                last = w + 1
        if first >= last:
            first = 0
            last = 0
        lo = first
        hi = last
        done = not alive_pi
        for p in range(n_par):
            dm[k, p] = acc[0, p]
            de[k, p] = acc[1, p]
            if acc[2, p] > stop_g:
                done = False
        if done:
            state[0] = lo
            state[1] = hi
            state[2] = flushed
            return k + 1
    state[0] = lo
    state[1] = hi
    state[2] = flushed
    return k1


@njit(**_JIT)
def grad_right_points(lams, bound_a, bound_d, side):
    """The last Poisson term :func:`mix_grad` uses for each ``λt >= 0`` (the same walk)."""
    out = np.zeros(lams.shape[0], dtype=np.int64)
    for i in range(lams.shape[0]):
        lam = lams[i]
        if lam == 0.0:
            continue
        total = 1.0
        w = 1.0
        k = int(lam)
        while True:
            k += 1
            w *= lam / k
            total += w
            rho = lam / (k + 1)
            if 2.0 * w * rho / (1.0 - rho) * (bound_a + bound_d * (k + 1)) <= side * total:
                break
        out[i] = k
    return out


@njit(**_JIT)
def mix_grad(lams, bound_a, bound_d, side, dm, de, n_avail, exhausted, out):
    """``out[0, :, i] = Σ_k Pois(k; λt_i)·dm_k`` and ``out[1, :, i]`` the same of ``de``.

    The window ``[L, R]`` is chosen for sequences bounded by ``|x_k| <= a + d·k`` (in
    units of the target error): normalising over the window and leaving out the tails
    moves the sum by at most ``2·(a + d·(R + 1))·(tail weight)/(window weight)``, and
    each side is walked until its part is at most ``side`` (so ``2·side`` in all). The
    right side is walked first (its bound fixes ``R``). Terms from ``n_avail`` on are zero
    when ``exhausted``. Returns −1, or the index of a ``λt`` that needs unavailable terms.
    """
    n_par = dm.shape[1]
    for i in range(lams.shape[0]):
        lam = lams[i]
        for p in range(n_par):
            out[0, p, i] = 0.0
            out[1, p, i] = 0.0
        if lam == 0.0:
            for p in range(n_par):
                out[0, p, i] = dm[0, p]
                out[1, p, i] = de[0, p]
            continue
        if exhausted and lam > n_avail:
            # the weight of the stored terms is P(N < n_avail) <= e^{-λ}(eλ/n)^n (Chernoff)
            if lam == np.inf:
                continue
            nn = float(n_avail)
            log_chi = nn * (1.0 + math.log(lam / nn)) - lam
            if log_chi + math.log(bound_a + bound_d * nn) <= math.log(side):
                continue
        mode = int(lam)  # floor: λt > 0
        total = 1.0
        w = 1.0
        k = mode
        if k < n_avail:
            for p in range(n_par):
                out[0, p, i] += dm[k, p]
                out[1, p, i] += de[k, p]
        elif not exhausted:
            return i
        while True:  # rightwards: w_{k+1} = w_k·λt/(k+1)
            k += 1
            w *= lam / k
            total += w
            if k < n_avail:
                for p in range(n_par):
                    out[0, p, i] += w * dm[k, p]
                    out[1, p, i] += w * de[k, p]
            elif not exhausted:
                return i
            rho = lam / (k + 1)
            if 2.0 * w * rho / (1.0 - rho) * (bound_a + bound_d * (k + 1)) <= side * total:
                break
        edge = 2.0 * (bound_a + bound_d * (k + 1))
        w = 1.0
        k = mode
        while k > 0:  # leftwards: w_{k-1} = w_k·k/λt
            rho = k / lam
            if k < mode and w * rho / (1.0 - rho) * edge <= side * total:
                break
            w *= rho
            k -= 1
            total += w
            if k < n_avail:
                for p in range(n_par):
                    out[0, p, i] += w * dm[k, p]
                    out[1, p, i] += w * de[k, p]
            elif not exhausted:
                return i
        for p in range(n_par):
            out[0, p, i] /= total
            out[1, p, i] /= total
    return -1
