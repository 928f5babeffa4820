"""Moments across epochs on one graph: the engine under :class:`EpochModel` and the
demographic models.

Time is a sequence of **pieces** (spans with constant rates: an epoch, or part of one when
rates change inside it) and **maps** between them (a row-stochastic matrix that moves the
probability mass at an instant). For every θ of a batch the engine carries the row
vectors ``v_j = E[Y_t^j/j!; X_t = ·]`` through the bounded pieces by uniformization
(:mod:`phasetrace.uniformization`) and finishes with the last, unbounded piece on a recorded
trace: with ``U = (−S)⁻¹`` of the last epoch,

    E[Y^m]/m! = s_{m−1}·r + v_m·𝟙,   s_0 = v_0 U,   s_i = (s_{i−1}∘r + v_i) U,

so every moment of every reward vector costs transposed solves on the trace only
(:func:`phasetrace.kernel.transposed_solve`), and ``v_m·𝟙`` for the top order is the
integral of the level below, accumulated during the sweeps. Derivatives are forward
tangents in the caller's directions (``D`` of them): each piece receives the
derivatives of its parameter vector, of its length and of its maps' entries, and the
last piece uses ``d s_i = (d s_{i−1}∘r + d v_i + s_i·dS) U``.

Everything here works on a vertex numbering of the graph (``graph.arrays()``, vertex 0
the start) and knows nothing of populations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._args import bad_rate_error, edge_rates, zero_rate_plan
from ..errors import InvalidGraphError, InvalidParameterError
from ..graph import Graph
from ..ops import VERTEX_TRANSIENT

#: Default bound on the relative truncation error of uniformization.
DEFAULT_TOL = 1e-10
#: Between sub-spans, entries below ``FLUSH·tol/n_vertices`` times their vector's largest
#: entry are dropped (at most ``FLUSH·tol`` of its size in all), so that the
#: uniformization rate can follow the mass downstream.
FLUSH = 1e-3
#: Steps of the first sub-span of a stiff piece; each next one covers as much time as
#: all before it, so the rate can follow the mass to slower states.
FIRST_STEPS = 64.0
#: A piece (or its rest) that needs at most this many steps is done in one sub-span.
ONE_GO_STEPS = 512.0
#: Refuse a piece that needs more uniformization steps than this (per θ)...
DEFAULT_MAX_STEPS = 50_000_000
#: ... or more than this many edge visits (steps × (vertices + edges) of its epoch): a
#: stiff epoch (fast rates over a long time) is refused in about a minute, not hours.
MAX_WORK = 3e10


@dataclass(frozen=True)
class MapTerms:
    """A boundary map as a sum of monomial terms in a few symbols.

    The probability of moving from vertex ``src[t]`` to ``dst[t]`` is the sum over its
    terms of ``coef[t]·Π_s sym_s^exps[t, s]``; symbols are proportions (pulses,
    admixture) whose values and derivatives the caller gives at evaluation. A constant
    map has no symbols (``exps`` of shape (T, 0)).
    """

    src: np.ndarray
    dst: np.ndarray
    coef: np.ndarray
    exps: np.ndarray

    @property
    def n_symbols(self) -> int:
        return int(self.exps.shape[1])

    def values(self, sym: np.ndarray, dsym: np.ndarray | None):
        """Term values (B, T) and their derivatives (B, D, T) at symbol values (B, S)
        with derivatives ``dsym`` (B, S, D)."""
        B = sym.shape[0]
        T, S = self.exps.shape
        val = np.broadcast_to(self.coef, (B, T)).copy()
        parts = []
        for s in range(S):
            e = self.exps[:, s]
            part = sym[:, s : s + 1] ** e[None, :]
            parts.append(part)
            val *= part
        if dsym is None:
            return val, None
        D = dsym.shape[2]
        dval = np.zeros((B, D, T))
        for s in range(S):
            e = self.exps[:, s]
            if not e.any():
                continue
            others = np.broadcast_to(self.coef, (B, T)).copy()
            for s2 in range(S):
                if s2 != s:
                    others *= parts[s2]
            deriv = others * e[None, :] * sym[:, s : s + 1] ** np.maximum(e - 1, 0)[None, :]
            dval += deriv[:, None, :] * dsym[:, s, :, None]
        return val, dval


@dataclass
class Piece:
    """A span of constant rates: epoch ``epoch``'s edges at ``phi`` (B, P) for ``tau``
    (B,) units of time (``None``: the last, unbounded piece). ``dphi`` (B, P, D) and
    ``dtau`` (B, D) are the derivatives in the caller's directions (or ``None``)."""

    epoch: int
    phi: np.ndarray
    tau: np.ndarray | None = None
    dphi: np.ndarray | None = None
    dtau: np.ndarray | None = None


@dataclass
class MapStep:
    """Boundary map ``boundary`` applied at an instant, with symbol values ``sym``
    (B, S) and their derivatives ``dsym`` (B, S, D) (or ``None``)."""

    boundary: int
    sym: np.ndarray
    dsym: np.ndarray | None = None


@dataclass
class _EpochEdges:
    """The edges that can carry mass in one epoch, as CSR rows over all vertices, and
    the same edges by target (``cptr``/``csrc``; ``cperm`` maps them to CSR positions)."""

    ptr: np.ndarray
    dst: np.ndarray
    edge: np.ndarray  # index into the graph's edge arrays
    support: np.ndarray
    cptr: np.ndarray
    csrc: np.ndarray
    cperm: np.ndarray


class EpochEngine:
    """The structural part of a time-inhomogeneous model on ``graph`` (no θ).

    Parameters
    ----------
    graph : Graph
        One graph (states and edge pattern) for every epoch; its ``n_params`` is the
        length of each epoch's parameter vector.
    n_epochs : int
        Number of epochs ``E``.
    maps : sequence of MapTerms or None
        ``E − 1`` boundary maps (``None``: no map at that boundary).
    active : ndarray of bool (E, n_params), optional
        Which parameters can be nonzero in each epoch (default: all). Edges whose rate
        is structurally 0 in an epoch are left out of it.
    supports : ndarray of bool (E, n_vertices), optional
        Vertices that can hold mass in each epoch (default: computed from the start,
        the active edges and the maps).
    absorbing : ndarray of bool (n_vertices,), optional
        Where the chain has ended (no time counts there). Default: the vertices without
        out-edges; give it when a state that has not ended is left only through maps
        (two lineages in separate demes that only a later split brings together).
    """

    def __init__(
        self, graph: Graph, n_epochs: int, maps=None, *, active=None, supports=None, absorbing=None
    ):
        graph.validate()
        arr = graph.arrays()
        self.graph = graph
        self.n_vertices = V = arr.states.shape[0]
        self.n_params = P = graph.n_params
        self.n_epochs = E = int(n_epochs)
        if E < 1:
            raise InvalidParameterError(f"n_epochs must be >= 1, got {n_epochs!r}")
        self.maps = list(maps) if maps is not None else [None] * (E - 1)
        if len(self.maps) != E - 1:
            raise InvalidParameterError(f"{len(self.maps)} maps given for {E - 1} boundaries")
        self.active = np.ones((E, P), bool) if active is None else np.asarray(active, bool)
        if self.active.shape != (E, P):
            raise InvalidParameterError(f"active must have shape {(E, P)}, got {self.active.shape}")
        src = np.repeat(np.arange(V), np.diff(arr.ptr))
        self._src = src
        start_edges = np.arange(arr.ptr[0], arr.ptr[1])
        self.alpha = np.zeros(V)
        np.add.at(self.alpha, arr.dst[start_edges], arr.base[start_edges])
        self._base = arr.base
        self._coef = arr.coef
        self._arr_dst = arr.dst
        lives = [self._live_edges(e) for e in range(E)]
        self.supports = (
            self._supports(lives) if supports is None else np.asarray(supports, dtype=bool)
        )
        self.epochs = [self._epoch_edges(lives[e], self.supports[e]) for e in range(E)]
        if absorbing is None:
            absorbing = np.diff(arr.ptr) == 0
        self.absorbing = np.asarray(absorbing, dtype=bool) & (np.arange(V) > 0)
        self._last = None

    # -- structure -------------------------------------------------------------------
    def _live_edges(self, e: int) -> np.ndarray:
        """Edges (not the start's) whose rate can be > 0 in epoch ``e``."""
        coef = self._coef[:, self.active[e]]
        live = (self._base != 0) | (coef != 0).any(axis=1)
        live[self._src == 0] = False
        return live

    def _supports(self, lives) -> np.ndarray:
        V = self.n_vertices
        out = np.zeros((self.n_epochs, V), dtype=bool)
        seed = self.alpha > 0
        for e in range(self.n_epochs):
            live = lives[e]
            out[e] = _forward_closure(V, self._src[live], self._arr_dst[live], seed)
            if e < self.n_epochs - 1:
                m = self.maps[e]
                if m is None:
                    seed = out[e].copy()
                else:
                    seed = np.zeros(V, dtype=bool)
                    seed[m.dst[out[e][m.src]]] = True
        return out

    def _epoch_edges(self, live: np.ndarray, support: np.ndarray) -> _EpochEdges:
        keep = np.flatnonzero(live & support[self._src])
        V = self.n_vertices
        ptr = np.searchsorted(self._src[keep], np.arange(V + 1)).astype(np.int64)
        dst = self._arr_dst[keep].astype(np.int64)
        cperm = np.argsort(dst, kind="stable")  # by target, sources ascending within one
        cptr = np.searchsorted(dst[cperm], np.arange(V + 1)).astype(np.int64)
        csrc = self._src[keep][cperm].astype(np.int64)
        return _EpochEdges(ptr, dst, keep, support, cptr, csrc, cperm.astype(np.int64))

    # -- the last epoch ----------------------------------------------------------------
    def last_trace(self):
        """The trace of the last epoch's graph (its support and active edges), recorded
        on first use (and cached as every trace: :func:`phasetrace.compute_trace`).
        Returns ``(trace, position of each vertex in the trace or −1)``."""
        if self._last is None:
            self._last = self._record_last()
        return self._last

    def _record_last(self):
        from ..pipeline import compute_trace

        arr = self.graph.arrays()
        last = self.epochs[-1]
        support = last.support.copy()
        support[0] = False
        verts = np.flatnonzero(support)
        if not verts.size:
            raise InvalidGraphError("the last epoch holds no mass")
        new = np.full(self.n_vertices, -1, dtype=np.int64)
        new[verts] = np.arange(verts.size)
        e = last.edge
        coef = self._coef[e] * self.active[-1][None, :]
        transient = verts[~self.absorbing[verts]]
        stuck = transient[last.ptr[transient + 1] == last.ptr[transient]]
        if stuck.size:
            raise InvalidGraphError(
                f"state {arr.states[stuck[0]].tolist()} can hold mass in the last (unbounded) "
                "epoch but has no transition there: the absorption time is infinite"
            )
        if not transient.size:
            raise InvalidGraphError("the last epoch has no transient state")
        g = Graph.from_arrays(
            arr.states[verts],
            new[self._src[e]],
            new[self._arr_dst[e]],
            self._base[e],
            coef,
            initial=(new[transient], np.full(transient.size, 1.0 / transient.size)),
            n_params=self.n_params,
        )
        try:
            g.validate()
        except InvalidGraphError as exc:
            raise InvalidGraphError(
                f"in the last (unbounded) epoch, {exc}: the absorption time is infinite"
            ) from None
        trace = compute_trace(g)
        pos = np.full(self.n_vertices, -1, dtype=np.int64)
        pos[verts] = _match_rows(trace.states, arr.states[verts])
        return trace, pos

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(
        self,
        steps,
        rewards: np.ndarray,
        k: int,
        *,
        n_directions: int = 0,
        tol: float = DEFAULT_TOL,
        max_steps: int = DEFAULT_MAX_STEPS,
    ):
        """Moments ``E[Y_r^m]``, ``m = 1 … k``, for the schedule ``steps`` (pieces and
        maps in time order, ending with the unbounded piece of the last epoch).

        Returns ``(moments (B, R, k), derivatives (B, R, k, D))`` (the second ``None``
        when ``n_directions == 0``).
        """
        rewards = self._rewards(rewards)
        D, K = int(n_directions), int(k)
        W, dW, integ, dinteg, last = self._sweep_all(steps, rewards, K, D, tol, max_steps)
        return self._finish(last, rewards, K, W, dW, integ, dinteg, D)

    def occupation(
        self,
        steps,
        *,
        n_directions: int = 0,
        tol: float = DEFAULT_TOL,
        max_steps: int = DEFAULT_MAX_STEPS,
    ):
        """The expected total time spent in each vertex: ``(B, V)``, and its derivatives
        ``(B, V, D)`` (``None`` without directions). ``E[Y] = occupation·r`` for any
        rewards ``r``: one pass serves every reward vector, however many."""
        V = self.n_vertices
        D = int(n_directions)
        W, dW, integ, dinteg, last = self._sweep_all(steps, np.zeros((0, V)), 1, D, tol, max_steps)
        trace, pos, _, to_trace, solve = self._last_epoch(last, W)
        s0 = solve(to_trace(W[:, :1]))[:, 0]  # v_0 U on the trace's vertices
        keep = (pos >= 0) & ~self.absorbing
        keep[0] = False
        occ = integ[:, 0].copy()
        occ[:, keep] += s0[:, pos[keep]]
        if not D:
            return occ, None
        dphi = self._last_dphi(last, W.shape[0], D)
        seeds = to_trace(dW[:, :, 0]) + _trace_dS(trace, dphi)(s0[:, None, :])[:, :, 0]
        ds0 = solve(seeds)  # (B, D, Vt)
        docc = np.swapaxes(dinteg[:, :, 0], 1, 2).copy()
        docc[:, keep, :] += np.swapaxes(ds0[:, :, pos[keep]], 1, 2)
        return occ, docc

    def _rewards(self, rewards) -> np.ndarray:
        rewards = np.ascontiguousarray(rewards, dtype=np.float64)
        V = rewards.shape[1]
        if self.n_vertices != V:
            raise InvalidParameterError(f"rewards have {V} columns, the graph {self.n_vertices}")
        return np.where(self.absorbing[None, :] | (np.arange(V) == 0)[None, :], 0.0, rewards)

    def _sweep_all(self, steps, rewards, K: int, D: int, tol: float, max_steps: int):
        """Carry the state through every bounded piece and map of ``steps``; returns the
        vectors at the start of the last piece, their integrals, and that piece."""
        from .. import uniformization as sw

        R, V = rewards.shape
        B = steps[0].phi.shape[0]
        nvec = 1 + (K - 1) * R
        nint = 1 if K == 1 else R
        W = np.zeros((B, nvec, V))
        W[:, 0] = self.alpha
        dW = np.zeros((B, D, nvec, V))
        integ = np.zeros((B, nint, V))
        dinteg = np.zeros((B, D, nint, V))
        eps = tol * 1e-3
        for step in steps[:-1]:
            if isinstance(step, MapStep):
                W, dW = self._apply_map(step, W, dW, D)
                continue
            ep = self.epochs[step.epoch]
            rate, q, drate, dq, dlive = self._rates(step, ep, D)
            tau = np.asarray(step.tau, dtype=np.float64)
            if not (np.isfinite(tau).all() and (tau >= 0).all()):
                raise InvalidParameterError(f"epoch lengths must be finite and >= 0: {tau}")
            dtau = np.zeros((B, D)) if step.dtau is None else np.asarray(step.dtau, np.float64)
            limit = self._step_limit(ep, max_steps)
            done = sw.sweep_batch(
                ep.ptr, ep.dst, ep.cptr, ep.csrc, ep.cperm, rate, q, drate, dq, dlive, rewards, K,
                tau, dtau, W, dW, integ, dinteg, eps, FLUSH * tol / V, FIRST_STEPS, ONE_GO_STEPS,
                limit,
            )  # fmt: skip
            if (done < 0).any():
                b = int(np.flatnonzero(done < 0)[0])
                raise InvalidParameterError(
                    f"epoch {step.epoch} needs more than {limit:,} uniformization steps at "
                    f"θ #{b}: its fastest rates times its length are too large (a stiff "
                    f"epoch; the limit is max_steps={max_steps:,} or {MAX_WORK:.0e} edge "
                    "visits, whichever is smaller); raise max_steps, or check θ"
                )
        last = steps[-1]
        if not isinstance(last, Piece) or last.tau is not None or last.epoch != self.n_epochs - 1:
            raise InvalidParameterError("the schedule must end with the last epoch, unbounded")
        return W, dW, integ, dinteg, last

    def _step_limit(self, ep: _EpochEdges, max_steps: int) -> int:
        """Steps allowed per piece of this epoch: ``max_steps``, or less where the work
        per step is large (:data:`MAX_WORK`)."""
        per_step = int(ep.support.sum()) + int(ep.dst.size)
        return int(min(max_steps, max(10_000, MAX_WORK // max(per_step, 1))))

    def _rates(self, step: Piece, ep: _EpochEdges, D: int):
        phi = np.asarray(step.phi, dtype=np.float64)
        coef = self._coef[ep.edge]
        rate = _linear(self._base[ep.edge], coef, phi)
        bad = ~(np.isfinite(rate) & (rate >= 0))
        if bad.any():
            b, e = np.argwhere(bad)[0]
            raise InvalidParameterError(
                f"epoch {step.epoch}: the rate of edge {self._edge_name(ep.edge[e])} is "
                f"{rate[b, e]!r} at θ #{b} (rates must be finite and >= 0)"
            )
        q = _row_sums(rate, ep.ptr)
        B = phi.shape[0]
        if D and step.dphi is not None:
            dphi = np.asarray(step.dphi, dtype=np.float64)
            drate = np.ascontiguousarray(
                np.stack([_linear(0.0, coef, dphi[:, :, d]) for d in range(D)], axis=1)
            )
            dq = np.stack([_row_sums(drate[:, d], ep.ptr) for d in range(D)], axis=1)
            dlive = (dphi != 0).any(axis=1)
        else:
            drate = np.zeros((B, D, ep.edge.size))
            dq = np.zeros((B, D, self.n_vertices))
            dlive = np.zeros((B, D), dtype=bool)
        return np.ascontiguousarray(rate), q, drate, np.ascontiguousarray(dq), dlive

    def _edge_name(self, e: int) -> str:
        states = self.graph.arrays().states
        return f"{states[self._src[e]].tolist()} -> {states[self._arr_dst[e]].tolist()}"

    def _apply_map(self, step: MapStep, W, dW, D: int):
        from .. import uniformization as sw

        m = self.maps[step.boundary]
        if m is None:
            return W, dW
        sym = np.asarray(step.sym, dtype=np.float64).reshape(W.shape[0], m.n_symbols)
        dsym = None
        if D:
            dsym = (
                np.zeros((W.shape[0], m.n_symbols, D))
                if step.dsym is None
                else np.asarray(step.dsym, dtype=np.float64)
            )
        val, dval = m.values(sym, dsym)
        if dval is None:
            dval = np.zeros((W.shape[0], D, val.shape[1]))
        out = np.zeros_like(W)
        dout = np.zeros_like(dW)
        sw.apply_map_batch(m.src, m.dst, val, np.ascontiguousarray(dval), W, dW, out, dout)
        return out, dout

    def _last_epoch(self, last: Piece, W):
        """The last epoch's trace and what moving vectors onto it and solving needs."""
        from .. import kernel

        trace, pos = self.last_trace()
        B = W.shape[0]
        kind = trace.arrays["vertex_kind"]
        Vt = trace.n_vertices
        inside = pos >= 0
        transient_t = kind == VERTEX_TRANSIENT
        outside_mass = W[:, 0, ~inside].sum(axis=1) if (~inside).any() else np.zeros(B)
        stray = outside_mass - W[:, 0, ~inside & self.absorbing].sum(axis=1)
        if (np.abs(stray) > 1e-12).any():
            raise InvalidParameterError(
                "internal error: probability mass outside the last epoch's states "
                f"({float(np.abs(stray).max()):.3g})"
            )
        phi = np.asarray(last.phi, dtype=np.float64)

        def to_trace(x):  # (..., V) on graph vertices → (..., Vt), transient only
            out = np.zeros((*x.shape[:-1], Vt))
            out[..., pos[inside]] = x[..., inside]
            out[..., ~transient_t] = 0.0
            return out

        def solve(seeds):  # (B, n, Vt) → seeds·U
            out, bad = kernel.transposed_solve(trace, phi, seeds)
            if (bad >= 0).any():
                self._bad_last(trace, phi, bad)
            return out

        return trace, pos, phi, to_trace, solve

    def _last_dphi(self, last: Piece, B: int, D: int) -> np.ndarray:
        if last.dphi is None:
            return np.zeros((B, self.n_params, D))
        return np.asarray(last.dphi, dtype=np.float64)

    def _finish(self, last: Piece, rewards, K, W, dW, integ, dinteg, D):
        trace, pos, phi, to_trace, solve = self._last_epoch(last, W)
        B = W.shape[0]
        R = rewards.shape[0]
        rew_t = to_trace(rewards[None])[0]  # (R, Vt)

        sums = W.sum(axis=2)  # v_m·𝟙 of every carried vector
        moments = np.empty((B, R, K))
        s_prev = solve(to_trace(W[:, :1]))  # s_0 = v_0 U: (B, 1, Vt)
        levels = [s_prev]
        for m in range(1, K + 1):
            # E[Y^m]/m! = s_{m−1}·r + v_m·𝟙
            sr = _dots(s_prev, rew_t)
            top = sums[:, 1 + (m - 1) * R : 1 + m * R] if m < K else _dots(integ, rewards)
            moments[:, :, m - 1] = (sr + top) * math.factorial(m)
            if m < K:
                base = s_prev if m > 1 else np.repeat(s_prev, R, axis=1)
                seeds = base * rew_t[None] + to_trace(W[:, 1 + (m - 1) * R : 1 + m * R])
                s_prev = solve(seeds)
                levels.append(s_prev)
        if not D:
            return moments, None
        return moments, self._finish_tangents(
            trace, pos, phi, last, rewards, rew_t, K, W, dW, dinteg, levels, to_trace, solve
        )

    def _finish_tangents(
        self, trace, pos, phi, last, rewards, rew_t, K, W, dW, dinteg, levels, to_trace, solve
    ):
        B, D = dW.shape[:2]
        R = rewards.shape[0]
        dphi = self._last_dphi(last, B, D)
        s_dS = _trace_dS(trace, dphi)  # callable: s (B, n, Vt) → (B, D, n, Vt)
        dsums = dW.sum(axis=3)  # (B, D, nvec)
        jac = np.empty((B, R, K, D))
        # level 0: ds_0 = (dv_0 + s_0·dS) U, per direction
        dv0 = to_trace(dW[:, :, 0])  # (B, D, Vt)
        seeds = dv0 + s_dS(levels[0])[:, :, 0]
        ds_prev = solve(seeds)  # (B, D, Vt): one "right-hand side" per direction
        ds_prev = ds_prev[:, :, None, :]  # (B, D, 1, Vt)
        for m in range(1, K + 1):
            dsr = np.stack([_dots(ds_prev[:, d], rew_t) for d in range(D)], axis=1)
            if m < K:
                dtop = dsums[:, :, 1 + (m - 1) * R : 1 + m * R]
            else:
                dtop = np.stack([_dots(dinteg[:, d], rewards) for d in range(D)], axis=1)
            jac[:, :, m - 1, :] = np.swapaxes(dsr + dtop, 1, 2) * math.factorial(m)
            if m < K:
                base = ds_prev if m > 1 else np.repeat(ds_prev, R, axis=2)
                dv = to_trace(dW[:, :, 1 + (m - 1) * R : 1 + m * R])
                seeds = base * rew_t[None, None] + dv + s_dS(levels[m])
                flat = solve(seeds.reshape(B, D * R, -1))
                ds_prev = flat.reshape(B, D, R, -1)
        return jac

    # -- the distribution of the absorption time ----------------------------------------
    def survival(
        self,
        steps,
        times: np.ndarray,
        *,
        n_directions: int = 0,
        tol: float = DEFAULT_TOL,
        max_steps: int = DEFAULT_MAX_STEPS,
    ):
        """``P(T > t)`` and the density of ``T`` at sorted finite ``times >= 0``, for ONE θ
        (``steps`` built for a batch of 1), with their derivatives in ``n_directions``.

        Returns ``(sf, cdf, pdf)`` (each (T,)) and ``(dsf, dcdf, dpdf)`` (each (T, D),
        ``None`` without directions). ``cdf`` is the absorbed mass itself (not ``1 − sf``),
        so small values keep their relative accuracy. A time on a boundary belongs to the
        later epoch.
        """
        from .. import uniformization as sw

        D = int(n_directions)
        V = self.n_vertices
        no_rewards = np.zeros((0, V))
        W = np.zeros((1, 1, V))
        W[0, 0] = self.alpha
        dW = np.zeros((1, D, 1, V))
        integ = np.zeros((1, 1, V))
        dinteg = np.zeros((1, D, 1, V))
        eps = tol * 1e-3
        T = times.shape[0]
        sf, cdf, pdf = np.empty(T), np.empty(T), np.empty(T)
        dsf, dcdf, dpdf = np.zeros((T, D)), np.zeros((T, D)), np.zeros((T, D))
        transient = ~self.absorbing
        transient[0] = False
        now = 0.0
        dstart = np.zeros(D)  # derivative of the current piece's start time
        i = 0
        for step in steps:
            if isinstance(step, MapStep):
                W, dW = self._apply_map(step, W, dW, D)
                continue
            ep = self.epochs[step.epoch]
            rate, q, drate, dq, dlive = self._rates(step, ep, D)
            exit_rate, dexit = self._exit_rates(ep, rate, drate)
            end = np.inf if step.tau is None else now + float(np.asarray(step.tau).ravel()[0])
            dtau0 = np.zeros((1, D))
            while True:
                stop_at_time = i < T and times[i] < end
                target = times[i] if stop_at_time else end
                if target > now and np.isfinite(target):
                    done = sw.sweep_batch(
                        ep.ptr, ep.dst, ep.cptr, ep.csrc, ep.cperm, rate, q, drate, dq, dlive,
                        no_rewards, 1, np.array([target - now]), dtau0, W, dW, integ, dinteg,
                        eps, FLUSH * tol / V,
                        FIRST_STEPS, ONE_GO_STEPS, self._step_limit(ep, max_steps),
                    )  # fmt: skip
                    if done[0] < 0:
                        raise InvalidParameterError(
                            f"the distribution at t = {target:.6g} needs more than "
                            f"max_steps={max_steps} uniformization steps; raise max_steps"
                        )
                    now = target
                if not stop_at_time:
                    break
                w = W[0, 0]
                sf[i] = w[transient].sum()
                cdf[i] = w[self.absorbing].sum()
                pdf[i] = w @ exit_rate[0]
                if D:
                    # t is fixed: a later start of this piece leaves less of it before t
                    flow = self._generator_times(ep, rate, q, W)[0, 0]
                    dw = dW[0, :, 0] - dstart[:, None] * flow[None, :]
                    dsf[i] = dw[:, transient].sum(axis=1)
                    dcdf[i] = dw[:, self.absorbing].sum(axis=1)
                    dpdf[i] = dw @ exit_rate[0] + dexit[0] @ w
                i += 1
            if step.tau is not None and D and step.dtau is not None:
                # the piece's length: the state at its end moves along v·G
                dtau = np.asarray(step.dtau, dtype=np.float64)[0]
                dW += dtau[None, :, None, None] * self._generator_times(ep, rate, q, W)
                dstart += dtau
            if i == T:
                break
        if not D:
            return (sf, cdf, pdf), None
        return (sf, cdf, pdf), (dsf, dcdf, dpdf)

    def _exit_rates(self, ep: _EpochEdges, rate, drate):
        """Each vertex's total rate into absorbing vertices (B, V), and its derivatives."""
        to_abs = self.absorbing[ep.dst]
        ptr = ep.ptr
        exit_rate = _row_sums(np.where(to_abs[None, :], rate, 0.0), ptr)
        D = drate.shape[1]
        dexit = (
            np.stack(
                [_row_sums(np.where(to_abs[None, :], drate[:, d], 0.0), ptr) for d in range(D)], 1
            )
            if D
            else np.zeros((rate.shape[0], 0, self.n_vertices))
        )
        return exit_rate, dexit

    def _generator_times(self, ep: _EpochEdges, rate, q, W):
        from .. import uniformization as sw

        out = np.zeros_like(W[0])
        no_rewards = np.zeros((0, W.shape[2]))
        sw.apply_generator(ep.ptr, ep.dst, rate[0], q[0], no_rewards, 0, 1, W[0], out)
        return out[None]

    def _bad_last(self, trace, phi, bad) -> None:
        b = int(np.flatnonzero(bad >= 0)[0])
        rates = edge_rates(trace, phi[b : b + 1])[0]
        plan = zero_rate_plan(trace, phi[b], rates)
        if isinstance(plan, InvalidParameterError):
            raise InvalidParameterError(f"in the last (unbounded) epoch: {plan}") from None
        e = int(bad[b])
        raise bad_rate_error(trace, e, float(rates[e]), phi[b])


def _trace_dS(trace, dphi: np.ndarray):
    """``s ↦ s·dS_d`` for row vectors on the trace's vertices, in every direction ``d``:
    ``dS_d`` is the derivative of the sub-intensity matrix for ``dφ[:, :, d]``."""
    arr = trace.arrays
    kind = arr["vertex_kind"]
    src = arr["input_src"]
    dst = arr["input_dst"]
    keep = np.flatnonzero(kind[src] == VERTEX_TRANSIENT)
    src, dst = src[keep], dst[keep]
    coef = np.asarray(arr["input_coef"], dtype=np.float64).reshape(-1, trace.n_params)[keep]
    drate = np.einsum("ep,bpd->bde", coef, dphi)  # (B, D, E)
    to_transient = kind[dst] == VERTEX_TRANSIENT
    Vt = trace.n_vertices

    def apply(s):  # (B, n, Vt) → (B, D, n, Vt)
        B, n, _ = s.shape
        D = drate.shape[1]
        out = np.zeros((B, D, n, Vt))
        flow = s[:, None, :, src] * drate[:, :, None, :]  # (B, D, n, E)
        for b in range(B):
            for d in range(D):
                for j in range(n):
                    f = flow[b, d, j]
                    out[b, d, j] -= np.bincount(src, weights=f, minlength=Vt)
                    out[b, d, j] += np.bincount(
                        dst[to_transient], weights=f[to_transient], minlength=Vt
                    )
        return out

    return apply


def _linear(base, coef: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``base + Σ_p coef[:, p]·φ[:, p]``, left to right, for each θ of ``phi`` (B, P):
    the same bits for a θ alone or in a batch (a matrix product may not give them)."""
    out = np.broadcast_to(np.asarray(base, dtype=np.float64), (phi.shape[0], coef.shape[0]))
    out = out.copy()
    for p in range(coef.shape[1]):
        if coef[:, p].any():
            out += coef[None, :, p] * phi[:, p : p + 1]
    return out


def _dots(x: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``out[b, r] = x[b, r or 0]·rewards[r]`` for ``x`` (B, 1 or R, V): one vector for
    every reward (level 0) or one per reward. One θ at a time, so a batch gives the
    bits of its θ alone."""
    B, n, _ = x.shape
    out = np.empty((B, rewards.shape[0]))
    for b in range(B):
        if n == 1:
            out[b] = rewards @ x[b, 0]
        else:
            out[b] = np.einsum("rv,rv->r", x[b], rewards)
    return out


def _row_sums(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Sums of ``values[..., ptr[u]:ptr[u+1]]`` for every row ``u`` (exact reduceat)."""
    out = np.zeros((*values.shape[:-1], ptr.size - 1))
    rows = np.flatnonzero(ptr[1:] > ptr[:-1])
    if rows.size:
        out[..., rows] = np.add.reduceat(values, ptr[rows], axis=-1)
    return out


def _forward_closure(V: int, src: np.ndarray, dst: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Vertices reachable from ``seed`` over the edges ``src → dst``."""
    order = np.argsort(src, kind="stable")
    s, d = src[order], dst[order]
    ptr = np.searchsorted(s, np.arange(V + 1))
    seen = seed.copy()
    frontier = np.flatnonzero(seed)
    while frontier.size:
        starts, ends = ptr[frontier], ptr[frontier + 1]
        lens = ends - starts
        if not lens.sum():
            break
        idx = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        nxt = np.unique(d[idx])
        nxt = nxt[~seen[nxt]]
        seen[nxt] = True
        frontier = nxt
    return seen


def _match_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in ``table`` of each row of ``rows`` (all present)."""
    t = np.ascontiguousarray(table, dtype=np.int64)
    r = np.ascontiguousarray(rows, dtype=np.int64)
    tv = t.view(np.dtype((np.void, t.dtype.itemsize * t.shape[1]))).ravel()
    rv = r.view(np.dtype((np.void, r.dtype.itemsize * r.shape[1]))).ravel()
    order = np.argsort(tv)
    found = np.searchsorted(tv[order], rv)
    idx = order[np.minimum(found, order.size - 1)]
    if not (tv[idx] == rv).all():
        raise RuntimeError("internal error: a state of the last epoch is not in its trace")
    return idx
