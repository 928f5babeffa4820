"""Replay a trace with numpy for a batch of parameter vectors; moments and rewards.

Evaluation is level-scheduled: each op's level is one more than the deepest of its
operands, and the ops of one level and one type run as a single numpy expression over
``(ops, batch)``. Slots are renumbered so that every group writes one contiguous slice
of the value array. The x-program and the back substitution are level-scheduled the same
way, so a 200k-op trace costs a few thousand numpy calls per batch, not 200k Python steps
per θ.

Every group of the weight program applies the same IEEE operations in the same order as
the recorder's definition (n-ary sums strictly left to right, ``t + a·p`` with two
roundings), so a replay is bitwise equal to an elimination done directly at θ. The row
sums of the back substitution use ``numpy.add.reduceat``, whose order is fixed per row
and does not depend on the batch; results do not depend on the batch size or on how the
batch was split (a test checks this bitwise).

Then ``F(r)`` (``elimination.md`` §4, in the scaled form of :mod:`phasetrace.elimination`):
``ξ = r`` on transient vertices, the x-program, then back substitution
``x_v += (Σ_w r_vw·x_w) / σ_v`` (the sum left to right in row order);
moments by ``z_k = F(r ∘ z_{k−1})``, ``E[Y^k] = k!·z_k[start]``.
"""

from __future__ import annotations

import math

import numpy as np

from .elimination import ADD, CONST, DIV, FMA, LOAD, MUL, SUM, X_AXPY
from .errors import InvalidParameterError

#: Upper bound on the bytes of the slot-value array of one batch chunk. The whole
#: evaluation of a chunk (replay, then every F pass) reads from this one array.
CHUNK_BYTES = 256 * 1024**2


class Plan:
    """A trace compiled for batched numpy replay (built once per trace, then cached)."""

    def __init__(self, trace):
        arr = trace.arrays
        self.trace = trace
        self.n_vertices = trace.n_vertices
        self.n_params = trace.n_params
        starts = np.flatnonzero(arr["vertex_kind"] == 0)
        self.start = int(starts[0]) if starts.size else -1
        self.transient = (arr["vertex_kind"] == 1).astype(np.float64)
        self._build_program(arr)
        self._build_xprogram(arr)
        self._build_backsub(arr)

    # -- the weight program --------------------------------------------------------
    def _build_program(self, arr) -> None:
        code = arr["code"]
        n = code.shape[0]
        level = _levels(code, arr["a"], arr["b"], arr["c"], arr["sum_args"])
        arity = np.where(code == SUM, arr["b"], 0).astype(np.int64)
        # Inside a SUM group, longest sums first: the ops still adding at step j are a prefix.
        order = np.lexsort((-arity, code, level))
        new = np.empty(n, dtype=np.int64)
        new[order] = np.arange(n)
        self.n_slots = n
        self.slot_map = new
        a, b, c = arr["a"].astype(np.int64), arr["b"].astype(np.int64), arr["c"].astype(np.int64)
        sum_args = arr["sum_args"].astype(np.int64)
        self.groups = []
        for s, e in _runs(np.stack([level[order], code[order]], axis=1)):
            ops = order[s:e]
            cd = int(code[ops[0]])
            if cd in (LOAD, CONST):
                operands = (a[ops],)
            elif cd == SUM:
                counts = b[ops]  # decreasing
                operands = tuple(
                    new[sum_args[a[ops[: int((counts > j).sum())]] + j]]
                    for j in range(int(counts[0]))
                )
            elif cd == FMA:
                operands = (new[a[ops]], new[b[ops]], new[c[ops]])
            else:
                operands = (new[a[ops]], new[b[ops]])
            self.groups.append((cd, s, e, operands))
        self.input_base = arr["input_base"]
        self.input_coef = arr["input_coef"]
        self.consts = arr["consts"]
        sig = arr["sigma"].astype(np.int64)
        self.sigma_vertices = np.flatnonzero(sig >= 0)
        self.sigma_slots = new[sig[self.sigma_vertices]]

    def replay(self, thetas: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Slot values, shape (n_slots, B), in the plan's renumbered order."""
        B = thetas.shape[0]
        vals = np.empty((self.n_slots, B)) if out is None else out[:, :B]
        for cd, s, e, ops in self.groups:
            dst = vals[s:e]
            if cd == LOAD:
                self._load(dst, ops[0], thetas)
            elif cd == CONST:
                dst[:] = self.consts[ops[0]][:, None]
            elif cd == SUM:
                np.add(vals[ops[0]], vals[ops[1]], out=dst)  # strictly left to right
                for j in range(2, len(ops)):
                    dst[: len(ops[j])] += vals[ops[j]]
            elif cd == DIV:
                np.divide(vals[ops[0]], vals[ops[1]], out=dst)
            elif cd == MUL:
                np.multiply(vals[ops[0]], vals[ops[1]], out=dst)
            elif cd == FMA:
                np.multiply(vals[ops[1]], vals[ops[2]], out=dst)
                dst += vals[ops[0]]  # t + a·p: IEEE addition commutes exactly
            elif cd == ADD:
                np.add(vals[ops[0]], vals[ops[1]], out=dst)
        return vals

    def _load(self, out: np.ndarray, edges: np.ndarray, thetas: np.ndarray) -> None:
        """Rates ``base + c₀θ₀ + c₁θ₁ + …`` left to right, as :meth:`Edge.weight_at` does."""
        out[:] = self.input_base[edges][:, None]
        coef = self.input_coef[edges]
        for i in range(self.n_params):
            out += coef[:, i : i + 1] * thetas[None, :, i]
        if not out.min() > 0:  # also catches NaN
            self._raise_bad_rate(edges, out, thetas)

    def _raise_bad_rate(self, edges, out, thetas) -> None:
        e_i, b_i = np.argwhere(~(out > 0))[0]
        edge = int(edges[e_i])
        states = self.trace.states
        src = states[self.trace.arrays["input_src"][edge]].tolist()
        dst = states[self.trace.arrays["input_dst"][edge]].tolist()
        raise InvalidParameterError(
            f"edge state {src} -> state {dst}: rate {float(out[e_i, b_i])!r} at theta="
            f"{thetas[b_i].tolist()} is not > 0"
        )

    # -- the x-program ----------------------------------------------------------------
    def _build_xprogram(self, arr) -> None:
        kind = arr["x_kind"].tolist()
        xu = arr["x_u"].tolist()
        xv = arr["x_v"].tolist()
        vlev = [0] * self.n_vertices
        levels = []
        for kd, u, v in zip(kind, xu, xv, strict=True):
            lv = max(vlev[u], vlev[v]) + 1 if kd == X_AXPY else vlev[u] + 1
            vlev[u] = lv
            levels.append(lv)
        level = np.asarray(levels, dtype=np.int64)
        kinds = np.asarray(kind, dtype=np.int64)
        order = np.lexsort((kinds, level))
        coef = self.slot_map[arr["x_coef"].astype(np.int64)]
        u_arr = arr["x_u"].astype(np.int64)
        v_arr = arr["x_v"].astype(np.int64)
        self.x_groups = []
        for s, e in _runs(np.stack([level[order], kinds[order]], axis=1)):
            ops = order[s:e]
            self.x_groups.append((int(kinds[ops[0]]), u_arr[ops], v_arr[ops], coef[ops]))

    # -- back substitution --------------------------------------------------------------
    def _build_backsub(self, arr) -> None:
        ptr = arr["row_ptr"].astype(np.int64)
        dst = arr["row_dst"].astype(np.int64)
        n = self.n_vertices
        deg = np.diff(ptr)
        lev = [0] * n
        dst_l = dst.tolist()
        ptr_l = ptr.tolist()
        for v in range(n - 1, -1, -1):
            lo, hi = ptr_l[v], ptr_l[v + 1]
            if hi > lo:
                lev[v] = 1 + max(lev[w] for w in dst_l[lo:hi])
        level = np.asarray(lev, dtype=np.int64)
        row_slots = self.slot_map[arr["row_slot"].astype(np.int64)]
        # One step per level: gather the level's entries, multiply, sum each row left to
        # right (reduceat along axis 0), divide by σ, add to x_v.
        self.bs_steps = []
        has_row = np.flatnonzero(deg > 0)
        by_level = has_row[np.argsort(level[has_row], kind="stable")]
        for s, e in _runs(level[by_level][:, None]):
            vs = by_level[s:e]
            counts = deg[vs]
            ent = np.repeat(ptr[vs], counts) + _ramp(counts)
            self.bs_steps.append((vs, row_slots[ent], dst[ent], _segments(counts)))

    # -- F(r) -----------------------------------------------------------------------------
    def sigma(self, vals: np.ndarray) -> np.ndarray:
        """``σ_v`` per vertex and θ, shape (n_vertices, B); 1 where a vertex has no scale."""
        sigma = np.ones((self.n_vertices, vals.shape[1]))
        sigma[self.sigma_vertices] = vals[self.sigma_slots]
        return sigma

    def apply_F(self, r: np.ndarray, vals: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """``F(r)`` for ``r`` of shape (n_vertices, B); returns ``x`` (``U r`` on transients)."""
        x = r * self.transient[:, None]
        for kind, u, v, cs in self.x_groups:
            if kind == X_AXPY:
                x[u] += vals[cs] * x[v]
            else:
                x[u] /= vals[cs]
        for vs, rs, w, seg in self.bs_steps:
            prod = vals[rs] * x[w]
            total = np.add.reduceat(prod, seg, axis=0) if prod.shape[0] > 1 else prod
            x[vs] += total / sigma[vs]
        return x


def _runs(keys: np.ndarray):
    """``(start, end)`` of each run of equal rows in ``keys`` (shape (n, m))."""
    n = keys.shape[0]
    if n == 0:
        return []
    cuts = (np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1).tolist()
    return list(zip([0, *cuts], [*cuts, n], strict=True))


def _ramp(counts: np.ndarray) -> np.ndarray:
    """``[0, 1, …, c₀−1, 0, 1, …, c₁−1, …]`` for the given counts."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def _segments(counts: np.ndarray) -> np.ndarray:
    """Start offsets of consecutive segments of the given lengths (for ``reduceat``)."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _levels(code, a, b, c, sum_args) -> np.ndarray:
    """Level of each op: 0 for loads and constants, else 1 + the deepest operand."""
    n = code.shape[0]
    lev = [0] * n
    code_l, a_l, b_l, c_l = code.tolist(), a.tolist(), b.tolist(), c.tolist()
    sa = sum_args.tolist()
    for j in range(n):
        cd = code_l[j]
        if cd <= CONST:
            continue
        if cd == SUM:
            lo = a_l[j]
            lev[j] = 1 + max([lev[s] for s in sa[lo : lo + b_l[j]]])
        elif cd == FMA:
            lev[j] = 1 + max(lev[a_l[j]], lev[b_l[j]], lev[c_l[j]])
        else:
            lev[j] = 1 + max(lev[a_l[j]], lev[b_l[j]])
    return np.asarray(lev, dtype=np.int64)


# -- public helpers -------------------------------------------------------------------------
def _as_thetas(trace, theta) -> tuple[np.ndarray, bool]:
    th = np.asarray(theta, dtype=np.float64)
    single = th.ndim <= 1
    th = th.reshape(1, -1) if single else th
    if th.ndim != 2 or th.shape[1] != trace.n_params:
        raise InvalidParameterError(
            f"theta must have shape ({trace.n_params},) or (B, {trace.n_params}); got "
            f"{np.asarray(theta).shape}"
        )
    if not np.isfinite(th).all():
        raise InvalidParameterError("theta contains NaN or infinite values")
    return th, single


def _as_rewards(trace, rewards) -> np.ndarray:
    n = trace.n_vertices
    if rewards is None:
        return np.ones(n)
    if callable(rewards):
        return trace.rewards_from(rewards)
    r = np.asarray(rewards, dtype=np.float64)
    if r.shape != (n,):
        raise InvalidParameterError(
            f"rewards must have shape ({n},), one per vertex in trace.states order; got {r.shape}"
        )
    if not np.isfinite(r).all() or (r < 0).any():
        raise InvalidParameterError("rewards must be finite and >= 0")
    return r


def _evaluated_chunks(trace, thetas: np.ndarray):
    """Yield ``(slice, plan, vals, sigma)`` over the batch in memory-bounded chunks."""
    plan = trace._evaluator()
    B = thetas.shape[0]
    per = max(1, min(B, CHUNK_BYTES // max(8 * plan.n_slots, 1)))
    buf = np.empty((plan.n_slots, per))  # reused: fresh pages for every chunk cost more
    for s in range(0, B, per):
        sl = slice(s, min(B, s + per))
        vals = plan.replay(thetas[sl], out=buf)
        yield sl, plan, vals, plan.sigma(vals)


def moments(trace, theta, k: int = 1, rewards=None) -> np.ndarray:
    """Moments ``E[Y^j]``, ``j = 1..k``, for one θ (shape (k,)) or a batch (shape (B, k)).

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(5, state_space="lineages"))
    >>> moments(tr, [[1.0], [2.0]], k=1).ravel().tolist()   # 2(1 - 1/5) / c
    [1.6, 0.8]
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise InvalidParameterError(f"k must be a positive int, got {k!r}")
    th, single = _as_thetas(trace, theta)
    r = _as_rewards(trace, rewards)
    out = np.empty((th.shape[0], k))
    for sl, plan, vals, sigma in _evaluated_chunks(trace, th):
        z = np.ones((plan.n_vertices, sl.stop - sl.start))
        for j in range(1, k + 1):
            z = plan.apply_F(r[:, None] * z, vals, sigma)
            out[sl, j - 1] = math.factorial(j) * z[plan.start]
    return out[0] if single else out


def cross_moment(trace, theta, rewards_i, rewards_j) -> np.ndarray | float:
    """``E[Y_i Y_j] = F(r_i∘F(r_j))[S] + F(r_j∘F(r_i))[S]`` (``elimination.md`` §4).

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(4))
    >>> ones = [1.0] * tr.n_vertices
    >>> bool(abs(cross_moment(tr, [1.0], ones, ones) - tr.moments([1.0], k=2)[1]) < 1e-12)
    True
    """
    th, single = _as_thetas(trace, theta)
    ri, rj = _as_rewards(trace, rewards_i), _as_rewards(trace, rewards_j)
    out = np.empty(th.shape[0])
    for sl, plan, vals, sigma in _evaluated_chunks(trace, th):
        b = sl.stop - sl.start
        fi = plan.apply_F(np.repeat(ri[:, None], b, axis=1), vals, sigma)
        fj = plan.apply_F(np.repeat(rj[:, None], b, axis=1), vals, sigma)
        a1 = plan.apply_F(ri[:, None] * fj, vals, sigma)[plan.start]
        a2 = plan.apply_F(rj[:, None] * fi, vals, sigma)[plan.start]
        out[sl] = a1 + a2
    return out[0] if single else out
