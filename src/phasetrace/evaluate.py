"""The numpy reference evaluator: a trace replayed op by op, written to be read.

This is the definition the compiled kernel (:mod:`phasetrace.kernel`) is tested against,
bit for bit: the same IEEE operations in the same order. It loops over ops in Python and
over θ with numpy, so it is slow on large traces; :meth:`Trace.moments` uses the kernel.

Replay (the weight program, op format in :mod:`phasetrace.ops`) gives every slot's value
at θ. Then ``F(b)`` solves ``(Λ − W) x = b`` (``x = U b`` on transient vertices, ``x_S = α U
b``) under the block schedule: units in reverse π order (sinks first), and in each unit

1. ``ξ_v = b_v + Σ_exits w_vw·x_w`` (left to right; the exits' values are final),
2. the unit's x-program (``AXPY``: ``ξ_u += s·ξ_v``; ``DIV``: ``ξ_u /= s``),
3. back substitution for ``v`` in reverse π: ``x_v += (Σ_w r_vw·x_w) / σ_v``, the sum
   left to right from 0.

A solve block (``unit_kind``) replaces steps 2 and 3 by a factorisation of its matrix at
θ (:func:`block_factors`: the dense GTH elimination, no pivoting, each pivot summed from
non-negative terms) and the two triangular solves (:func:`solve_block`).

Moments: ``z₀ = 1``, ``z_j = F(r ∘ z_{j−1})``, ``E[Y^j] = j!·z_j[S]``; with ``r ≡ 1`` these
are ``E[T^j]``. The rewards are zero at the start and at absorbing vertices.
"""

from __future__ import annotations

import math

import numpy as np

from ._args import (
    ZeroRatePlan,
    as_k,
    as_rewards,
    as_thetas,
    edge_rates,
    transient_rewards,
    zero_rate_plan,
)
from .ops import ADD, CONST, DIV, FMA, LOAD, MUL, SUM, UNIT_SOLVE, X_AXPY


def slot_values(trace, thetas: np.ndarray, rates: np.ndarray | None = None) -> np.ndarray:
    """Every slot of the weight program at each θ: shape (n_ops, B).

    ``rates`` (B, n_edges), when given, are the edge rates to load (see
    :func:`evaluation_rates`); else they are computed from θ. Raises
    :class:`~phasetrace.errors.InvalidParameterError` for a θ that cannot be evaluated.
    """
    arr = trace.arrays
    code, a, b, c = (arr[n].tolist() for n in ("code", "a", "b", "c"))
    sum_args, consts = arr["sum_args"].tolist(), arr["consts"]
    if rates is None:
        rates = evaluation_rates(trace, thetas)
    vals = np.empty((len(code), thetas.shape[0]))
    for j, cd in enumerate(code):
        if cd == LOAD:
            v = rates[:, a[j]]
        elif cd == CONST:
            v = consts[a[j]]
        elif cd == SUM:
            args = sum_args[a[j] : a[j] + b[j]]
            v = vals[args[0]]
            for s in args[1:]:
                v = v + vals[s]
        elif cd == DIV:
            v = vals[a[j]] / vals[b[j]]
        elif cd == MUL:
            v = vals[a[j]] * vals[b[j]]
        elif cd == FMA:
            v = vals[a[j]] + vals[b[j]] * vals[c[j]]
        elif cd == ADD:
            v = vals[a[j]] + vals[b[j]]
        else:
            raise ValueError(f"unknown opcode {cd} at op {j}")
        vals[j] = v
    return vals


def evaluation_rates(trace, thetas: np.ndarray) -> np.ndarray:
    """The edge rates (B, n_edges) to replay at each θ, as the kernel uses them.

    ``base + coef·θ`` (left to right). A θ at which some rates are exactly 0 is evaluated
    with the rates of :func:`~phasetrace._args.zero_rate_plan` (the zero out-edges of
    vertices that cannot matter set to 1); a θ that cannot be evaluated raises
    :class:`~phasetrace.errors.InvalidParameterError`.
    """
    rates = edge_rates(trace, thetas)
    for i in np.flatnonzero(~((rates > 0) & (rates < np.inf)).all(axis=1)).tolist():
        plan = zero_rate_plan(trace, thetas[i], rates[i])
        if isinstance(plan, ZeroRatePlan):
            rates[i] = plan.rates
        elif plan is not None:
            raise plan  # an InvalidParameterError
    return rates


def apply_F(trace, vals: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``x = F(rhs)`` for ``rhs`` of shape (n_vertices, B) (zero at start and absorbing)."""
    arr = trace.arrays
    unit_ptr, unit_xptr = arr["unit_ptr"].tolist(), arr["unit_xptr"].tolist()
    exit_ptr, exit_dst, exit_slot = (arr[n].tolist() for n in ("exit_ptr", "exit_dst", "exit_slot"))
    row_ptr, row_dst, row_slot = (arr[n].tolist() for n in ("row_ptr", "row_dst", "row_slot"))
    x_kind, x_u, x_v, x_coef = (arr[n].tolist() for n in ("x_kind", "x_u", "x_v", "x_coef"))
    sigma = arr["sigma"].tolist()
    unit_kind = arr["unit_kind"].tolist()
    x = np.zeros_like(rhs)
    for unit in range(len(unit_ptr) - 2, -1, -1):
        first, last = unit_ptr[unit], unit_ptr[unit + 1]
        for v in range(first, last):  # 1. fold the exits into the right-hand side
            acc = rhs[v]
            for e in range(exit_ptr[v], exit_ptr[v + 1]):
                acc = acc + vals[exit_slot[e]] * x[exit_dst[e]]
            x[v] = acc
        if unit_kind[unit] == UNIT_SOLVE:  # 2–3. a solve block: factorise, then solve
            x[first:last] = solve_block(*block_factors(trace, vals, unit), x[first:last])
            continue
        for t in range(unit_xptr[unit], unit_xptr[unit + 1]):  # 2. the x-program
            if x_kind[t] == X_AXPY:
                x[x_u[t]] = x[x_u[t]] + vals[x_coef[t]] * x[x_v[t]]
            else:
                x[x_u[t]] = x[x_u[t]] / vals[x_coef[t]]
        for v in range(last - 1, first - 1, -1):  # 3. back substitution
            if row_ptr[v + 1] > row_ptr[v]:
                acc = np.zeros(rhs.shape[1])
                for e in range(row_ptr[v], row_ptr[v + 1]):
                    acc = acc + vals[row_slot[e]] * x[row_dst[e]]
                x[v] = x[v] + acc / vals[sigma[v]]
    return x


def block_factors(trace, vals: np.ndarray, unit: int):
    """The GTH LU of solve block ``unit`` at every θ of ``vals`` (n_ops, B).

    Returns ``(M, d)``: ``M`` of shape (k, k, B) holds the multipliers ``a_it`` below the
    diagonal and the final rows ``R_iw`` above it (the diagonal is not used); ``d`` (k, B)
    the pivots. Right-looking and dense: pivot ``t`` takes ``d_t = Σ_{w > t} R_tw + ε_t``
    (left to right from 0), then every later row ``i`` gets ``a_it = R_it / d_t``,
    ``R_iw += a_it·R_tw`` (``w > t``) and ``ε_i += a_it·ε_t``.
    """
    arr = trace.arrays
    first, last = (int(x) for x in arr["unit_ptr"][unit : unit + 2])
    k, B = last - first, vals.shape[1]
    R = np.zeros((k, k, B))
    eps = np.zeros((k, B))
    for i in range(k):
        v = first + i
        lo, hi = arr["row_ptr"][v], arr["row_ptr"][v + 1]
        R[i, arr["row_dst"][lo:hi] - first] = vals[arr["row_slot"][lo:hi]]
        if arr["sigma"][v] >= 0:
            eps[i] = vals[arr["sigma"][v]]
    d = np.empty((k, B))
    for t in range(k):
        acc = np.zeros(B)
        for w in range(t + 1, k):
            acc = acc + R[t, w]
        d[t] = acc + eps[t]
        a = R[t + 1 :, t] / d[t]
        R[t + 1 :, t] = a
        eps[t + 1 :] = eps[t + 1 :] + a * eps[t]
        R[t + 1 :, t + 1 :] = R[t + 1 :, t + 1 :] + a[:, None, :] * R[t, t + 1 :][None, :, :]
    return R, d


def solve_block(M: np.ndarray, d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A⁻¹ b`` for a solve block's factors (:func:`block_factors`), ``b`` of shape (k, B):
    ``y_i = b_i + Σ_{t < i} a_it·y_t`` (t increasing), then, for ``i`` decreasing,
    ``x_i = (y_i + Σ_{w > i} R_iw·x_w) / d_i`` (the sum left to right from 0)."""
    k = b.shape[0]
    y = b.copy()
    for t in range(k - 1):
        y[t + 1 :] = y[t + 1 :] + M[t + 1 :, t] * y[t]
    x = y
    for i in range(k - 1, -1, -1):
        acc = np.zeros(b.shape[1])
        for w in range(i + 1, k):
            acc = acc + M[i, w] * x[w]
        x[i] = (x[i] + acc) / d[i]
    return x


def moments(trace, theta, k: int = 1, rewards=None) -> np.ndarray:
    """Moments ``E[Y^j]``, ``j = 1..k``, for one θ (shape (k,)) or a batch (shape (B, k)).

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(5, state_space="lineages"))
    >>> moments(tr, [[1.0], [2.0]], k=1).ravel().tolist()   # 2(1 - 1/5) / c
    [1.6, 0.8]
    """
    k = as_k(k)
    th, single = as_thetas(trace, theta)
    r = transient_rewards(trace, as_rewards(trace, rewards))[:, None]
    vals = slot_values(trace, th)
    start = int(np.flatnonzero(trace.arrays["vertex_kind"] == 0)[0])
    z = np.ones((trace.n_vertices, th.shape[0]))
    out = np.empty((th.shape[0], k))
    for j in range(1, k + 1):
        z = apply_F(trace, vals, r * z)
        out[:, j - 1] = math.factorial(j) * z[start]
    return out[0] if single else out


def cross_moment(trace, theta, rewards_i, rewards_j) -> np.ndarray | float:
    """``E[Y_i Y_j] = F(r_i∘F(r_j))[S] + F(r_j∘F(r_i))[S]``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(4))
    >>> ones = [1.0] * tr.n_vertices
    >>> bool(abs(cross_moment(tr, [1.0], ones, ones) - tr.moments([1.0], k=2)[1]) < 1e-12)
    True
    """
    th, single = as_thetas(trace, theta)
    ri = transient_rewards(trace, as_rewards(trace, rewards_i))[:, None]
    rj = transient_rewards(trace, as_rewards(trace, rewards_j))[:, None]
    vals = slot_values(trace, th)
    start = int(np.flatnonzero(trace.arrays["vertex_kind"] == 0)[0])
    ones = np.ones((trace.n_vertices, th.shape[0]))
    fi = apply_F(trace, vals, ri * ones)
    fj = apply_F(trace, vals, rj * ones)
    out = apply_F(trace, vals, ri * fj)[start] + apply_F(trace, vals, rj * fi)[start]
    return out[0] if single else out
