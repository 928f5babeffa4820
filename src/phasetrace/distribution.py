"""Distribution functions of the absorption time: density, CDF, survival, quantiles.

For the absorption time ``T`` of the chain (or a reward-transformed ``Y = ∫ r(X_t) dt``
with rewards ``r >= 0``) at parameters θ:

* :func:`pdf` — ``f(t) = α exp(S t) s`` with ``s = −S·𝟙`` the exit rates,
* :func:`cdf` — ``F(t) = P(T <= t) = 1 − α exp(S t) 𝟙``,
* :func:`sf` — the survival function ``1 − F(t)``,
* :func:`quantile` — the smallest ``t`` with ``F(t) >= p``.

Method: **uniformization** on the sparse graph (``docs/distribution.md``). With ``λ`` the
largest total exit rate and ``P = I + S/λ`` (a sub-stochastic matrix),

    α exp(S t) = Σ_k Pois(k; λt)·α Pᵏ,

a sum of non-negative terms: no cancellation, and a rigorous bound on what truncating it
leaves out. One sequence of sparse products ``π_k = α Pᵏ`` serves every time point: only
three scalars per step are kept (``π_k·𝟙``, ``π_k·s/λ`` and the absorbed mass), and each
time point mixes them with its own Poisson weights, computed from the mode outward
(Fox–Glynn), so nothing underflows even when ``λt`` is in the millions.

The truncation error of every value is at most ``tol`` (default ``1e-10``), by a rigorous
bound; floating-point rounding adds at most about ``K·(d + 3)·2⁻⁵³`` (``K`` steps, ``d``
the largest in-degree), in practice far less. The cost is about ``λ·t_max`` sparse
products: stiff models (rates far apart) at late times are expensive, and a call that
would need more than ``max_steps`` products is refused with a message saying so.

Derivatives in θ: :func:`sf_and_gradient`, :func:`cdf_and_gradient`,
:func:`pdf_and_gradient` and :func:`quantile_and_gradient` also return ``∂/∂θ``, exact
up to the same kind of rigorous truncation bound (``tol`` per entry). They hold ``λ``
fixed (the expansion holds for every ``λ >= max q``) and propagate the tangents
``π'_k = π'_{k−1} P + π_{k−1} P'`` with the sequence; quantiles by the implicit function
theorem. :func:`phasetrace.jax.distribution_fn` makes them JAX functions.

The sparse products run in numba (compiled on first use and cached on disk); numba is
imported on the first call, not by ``import phasetrace``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._args import as_probabilities, as_rewards, as_thetas, as_times, zero_rate_plan
from .errors import InvalidParameterError
from .ops import VERTEX_START, VERTEX_TRANSIENT

__all__ = [
    "cdf",
    "cdf_and_gradient",
    "pdf",
    "pdf_and_gradient",
    "quantile",
    "quantile_and_gradient",
    "sf",
    "sf_and_gradient",
]

#: Default bound on the absolute error of :func:`cdf` and :func:`sf` (and of :func:`pdf`,
#: in its own units).
DEFAULT_TOL = 1e-10
#: Default limit on the number of uniformization steps (sparse products) of one call.
DEFAULT_MAX_STEPS = 10_000_000
#: Relative tolerance of :func:`quantile`'s root finder (on ``t``).
QUANTILE_RTOL = 1e-12
#: Newton or bisection steps a quantile may take once bracketed (bisection alone closes
#: any bracket of positive floats to QUANTILE_RTOL in about 100).
QUANTILE_MAX_ITERATIONS = 400
#: The distribution function's absolute error cannot be bounded below this.
_SMALLEST_BUDGET = 1e-300

# Shares of the error budget ε: Poisson truncation, early stop of the sequence, and mass
# flushed to zero (entries below a threshold, so that dead vertices cost nothing).
_SHARE_POISSON = 0.4
_SHARE_STOP = 0.4
_SHARE_FLUSH = 0.1


def _kernels():
    from . import uniformization as impl

    return impl.advance, impl.right_points, impl.mix


def _grad_kernels():
    from . import uniformization as impl

    return impl.tangent, impl.grad_right_points, impl.mix_grad


# -- the chain at one θ ------------------------------------------------------------------
class _Structure:
    """Index arrays of a trace that do not depend on θ (kept on the trace)."""

    def __init__(self, trace):
        arr = trace.arrays
        kind = arr["vertex_kind"]
        src = arr["input_src"].astype(np.int64)
        dst = arr["input_dst"].astype(np.int64)
        self.transient = np.flatnonzero(kind == VERTEX_TRANSIENT)
        n = self.transient.size
        pos = np.full(kind.shape[0], -1, dtype=np.int64)
        pos[self.transient] = np.arange(n)
        from_start = kind[src] == VERTEX_START
        from_trans = kind[src] == VERTEX_TRANSIENT
        to_trans = kind[dst] == VERTEX_TRANSIENT
        self.n = n
        self.alpha_edges = np.flatnonzero(from_start & to_trans)
        self.alpha_pos = pos[dst[self.alpha_edges]]
        internal = np.flatnonzero(from_trans & to_trans)
        internal = internal[np.argsort(pos[src[internal]], kind="stable")]
        self.int_edges = internal
        self.int_src = pos[src[internal]]
        self.int_dst = pos[dst[internal]]
        self.ptr = np.searchsorted(self.int_src, np.arange(n + 1)).astype(np.int64)
        self.exit_edges = np.flatnonzero(from_trans & ~to_trans)
        self.exit_src = pos[src[self.exit_edges]]


def _structure(trace) -> _Structure:
    st = trace.__dict__.get("_distribution_structure")
    if st is None:
        st = trace.__dict__["_distribution_structure"] = _Structure(trace)
    return st


def _edge_rates(trace, theta: np.ndarray, keep_zeros: bool | None = False) -> np.ndarray:
    """Every edge's rate at one θ (``base + Σ coef_i·θ_i``, left to right, as ``LOAD``).

    A rate of exactly 0 is allowed as for the moments (:func:`phasetrace._args.zero_rate_plan`):
    each state reached over rates > 0 must be able to reach absorption. Zero rates out of
    states that are never reached are then set to 1, which changes nothing reached and
    keeps every division by a positive number; with ``keep_zeros`` they stay 0, for the
    gradient, whose tangents do run through those states (uniformization needs no
    division by a state's rate). ``keep_zeros=None``: the safe rates, for a gradient that
    needs them (zero rewards), refused where a tangent would run through a changed rate.
    """
    arr = trace.arrays
    rates = arr["input_base"].copy()
    coef = arr["input_coef"]
    for i in range(trace.n_params):
        rates = rates + coef[:, i] * theta[i]
    plan = zero_rate_plan(trace, theta, rates)
    if plan is None:
        return rates
    if isinstance(plan, InvalidParameterError):
        raise plan
    if keep_zeros is None and plan.undefined.any():  # a tangent would meet a changed rate
        raise plan.undefined_error
    return rates if keep_zeros else plan.rates


def _eliminate_zero_rewards(alpha, ptr, dst, rate, exit_rate, zero, fsum=math.fsum):
    """Remove the vertices ``zero`` (no time earned there) by exact state reduction (GTH).

    Eliminating ``z`` (in π order) reroutes every ``u → z`` through ``z``'s out-edges:
    ``u → w`` gains ``rate(u, z)·rate(z, w)/q_z``, the exit rate of ``u`` gains
    ``rate(u, z)·exit(z)/q_z``, and the initial mass of ``z`` moves to its targets (or
    out: an atom at 0). Self-loops are dropped (they change nothing in continuous time).
    Only products and sums of non-negative numbers: no cancellation, however stiff the
    rates. Sparse (rows are dicts): the cost grows with the fill, not with ``n²``.

    Returns ``(alpha, ptr, dst, rate, exit_rate, keep)`` over the kept vertices ``keep``.
    The arrays may be complex (with ``fsum`` for complex numbers): see
    :func:`_eliminate_zero_rewards_derivatives`.
    """
    n = alpha.shape[0]
    dst_l, rate_l, ptr_l = dst.tolist(), rate.tolist(), ptr.tolist()
    out = [
        dict(zip(dst_l[lo:hi], rate_l[lo:hi], strict=True)) for lo, hi in itertools.pairwise(ptr_l)
    ]
    inn: list[set[int]] = [set() for _ in range(n)]
    for v in range(n):
        for w in out[v]:
            inn[w].add(v)
    s = exit_rate.tolist()
    a = alpha.tolist()
    for z in np.flatnonzero(zero).tolist():
        oz = out[z]
        q = fsum(oz.values()) + s[z]
        for w in oz:
            inn[w].discard(z)
        p = {w: r / q for w, r in oz.items()}
        ps = s[z] / q
        if a[z]:
            for w, pw in p.items():
                a[w] += a[z] * pw
            a[z] = 0.0
        for u in inn[z]:
            ou = out[u]
            r_uz = ou.pop(z)
            for w, pw in p.items():
                if w == u:
                    continue
                if w in ou:
                    ou[w] += r_uz * pw
                else:
                    ou[w] = r_uz * pw
                    inn[w].add(u)
            s[u] += r_uz * ps
        inn[z] = set()
        out[z] = {}
    keep = np.flatnonzero(~zero)
    new = np.full(n, -1, dtype=np.int64)
    new[keep] = np.arange(keep.size)
    rows = [out[v] for v in keep.tolist()]
    new_ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    new_dst = new[np.fromiter((w for r in rows for w in r), np.int64, int(new_ptr[-1]))]
    new_rate = np.fromiter((x for r in rows for x in r.values()), rate.dtype, int(new_ptr[-1]))
    return np.asarray(a)[keep], new_ptr, new_dst, new_rate, np.asarray(s)[keep], keep


class _Chain:
    """The uniformized chain at one θ and the growing sequence of its scalar terms."""

    def __init__(self, trace, theta, rewards, budget: float, pdf_scale: bool, max_steps: int):
        """The chain at ``theta``; ``budget`` bounds the absolute error of sf and cdf (of
        the pdf divided by ``max(1, largest exit rate)`` when ``pdf_scale``)."""
        st = _structure(trace)
        rates = _edge_rates(trace, theta)
        n = st.n
        alpha = np.zeros(n)
        np.add.at(alpha, st.alpha_pos, rates[st.alpha_edges])
        ptr, dst, rate = st.ptr, st.int_dst, rates[st.int_edges]
        exit_rate = np.bincount(st.exit_src, weights=rates[st.exit_edges], minlength=n)
        if rewards is not None:
            r = rewards[st.transient]
            zero = r == 0.0
            if zero.any():
                alpha, ptr, dst, rate, exit_rate, keep = _eliminate_zero_rewards(
                    alpha, ptr, dst, rate, exit_rate, zero
                )
                r = r[keep]
                n = keep.size
            src = np.repeat(np.arange(n), np.diff(ptr))
            rate = rate / r[src]
            exit_rate = exit_rate / r
        src = np.repeat(np.arange(n), np.diff(ptr))
        q = np.bincount(src, weights=rate, minlength=n) + exit_rate
        lam = float(q.max()) if n else 1.0
        self.lam = lam
        self.s_max = float(exit_rate.max()) if n else 0.0
        self.ptr = np.ascontiguousarray(ptr, dtype=np.int64)
        self.dst = np.ascontiguousarray(dst, dtype=np.int64)
        self.prob = rate / lam
        self.diag = np.maximum(lam - q, 0.0) / lam  # λ − q exact when q >= λ/2 (Sterbenz)
        self.exitp = exit_rate / lam
        self.pi = alpha.copy()
        self.scratch = np.zeros(n)
        nz = np.flatnonzero(alpha)
        self.state = np.array([nz[0] if nz.size else 0, nz[-1] + 1 if nz.size else 0, 0.0, 0.0])
        self.max_steps = max_steps
        self.n = n
        self.eps = max(budget / (max(1.0, self.s_max) if pdf_scale else 1.0), 1e-300)
        self.stop = _SHARE_STOP * self.eps
        self.flush = _SHARE_FLUSH * self.eps / (max(n, 1) * max_steps)
        cap = 1024
        self.m = np.empty(cap)
        self.a = np.empty(cap)
        self.e = np.empty(cap)
        self.m[0] = alpha.sum()
        self.a[0] = 1.0 - self.m[0]  # the atom at 0: defect of α (and zero-reward paths)
        self.e[0] = float(alpha @ self.exitp)
        self.n_avail = 1
        self.exhausted = bool(self.m[0] <= self.stop)

    def extend(self, k_needed: int, lam_t: float) -> None:
        """Make terms ``0 .. k_needed`` available, unless the sequence is exhausted first.

        Refuses (after trying ``max_steps`` steps) when neither happens within the limit.
        """
        advance = _kernels()[0]
        target = min(k_needed, self.max_steps)
        while not self.exhausted and self.n_avail <= target:
            if self.m.shape[0] <= self.n_avail:  # grow the buffers geometrically
                cap = min(2 * self.m.shape[0], target + 1)
                for name in ("m", "a", "e"):
                    buf = np.empty(cap)
                    buf[: self.n_avail] = getattr(self, name)[: self.n_avail]
                    setattr(self, name, buf)
            upto = min(target + 1, self.m.shape[0])
            got = advance(
                self.ptr,
                self.dst,
                self.prob,
                self.diag,
                self.exitp,
                self.pi,
                self.scratch,
                self.state,
                self.m,
                self.a,
                self.e,
                self.n_avail,
                upto,
                self.stop,
                self.flush,
            )
            self.exhausted = got < upto
            self.n_avail = got
        if not self.exhausted and self.n_avail <= k_needed:
            raise InvalidParameterError(
                f"uniformization needs more than max_steps={self.max_steps} steps to reach "
                f"λ·t = {lam_t:.6g} (λ = {self.lam:.6g}, the largest exit rate) within tol. "
                "The model is too stiff at this θ for these times: raise max_steps, or "
                "evaluate at earlier times"
            )

    def evaluate(self, t: np.ndarray) -> np.ndarray:
        """``(sf, cdf, pdf)`` at the finite times ``t >= 0``: shape (3, len(t))."""
        _, right_points, mix = _kernels()
        with np.errstate(over="ignore"):
            lams = np.ascontiguousarray(t * self.lam, dtype=np.float64)
        eps = _SHARE_POISSON * self.eps
        out = np.empty((3, lams.shape[0]))
        if lams.size:
            # λt beyond max_steps needs more terms than allowed: only an exhausted
            # sequence can serve it (mix then bounds the Poisson mass below it).
            small = lams <= self.max_steps
            k_needed, at = -1, 0.0
            if small.any():
                rp = right_points(lams[small], eps)
                i = int(np.argmax(rp))
                k_needed, at = int(rp[i]), float(lams[small][i])
            if not small.all():
                k_needed, at = self.max_steps + 1, float(lams[~small].max())
            self.extend(k_needed, at)
            bad = mix(lams, eps, self.m, self.a, self.e, self.n_avail, self.exhausted, out)
            if bad >= 0:  # pragma: no cover - right_points and mix walk the same window
                raise RuntimeError(f"internal error: Poisson window at λt={lams[bad]!r}")
        out[2] *= self.lam
        return out


#: Imaginary step of :func:`_eliminate_zero_rewards_derivatives`.
_COMPLEX_STEP = 1e-20


def _complex_fsum(values) -> complex:
    values = list(values)
    return complex(math.fsum(v.real for v in values), math.fsum(v.imag for v in values))


def _eliminate_zero_rewards_derivatives(
    alpha, dalpha, ptr, dst, rate, drate, exit_rate, dexit, zero
):
    """:func:`_eliminate_zero_rewards` and the derivatives in θ of what it returns.

    ``dalpha`` (P, n), ``drate`` (P, edges) and ``dexit`` (P, n) are the derivatives of
    its inputs. The derivatives are taken by complex steps: the elimination is run once
    per parameter on ``x + i·h·∂x/∂θ_p`` (``h = 1e-20``), and ``Im/h`` is the directional
    derivative, exact up to ``O(h²)`` relative (nothing is subtracted to get it, unlike a
    finite difference). Every operation of the elimination (sums, products, quotients)
    is analytic, and which edges fill in depends on the graph only, so every run has the
    same sparsity. Returns ``(alpha, dalpha, ptr, dst, rate, drate, exit_rate, dexit,
    keep)``, the values being those of the real elimination.
    """
    a0, ptr0, dst0, rate0, s0, keep = _eliminate_zero_rewards(
        alpha, ptr, dst, rate, exit_rate, zero
    )
    n_par = dalpha.shape[0]
    h = _COMPLEX_STEP
    da = np.zeros((n_par, keep.size))
    dr = np.zeros((n_par, rate0.size))
    ds = np.zeros((n_par, keep.size))
    for p in range(n_par):
        a_c, ptr_c, dst_c, rate_c, s_c, _ = _eliminate_zero_rewards(
            alpha + 1j * h * dalpha[p],
            ptr,
            dst,
            rate + 1j * h * drate[p],
            exit_rate + 1j * h * dexit[p],
            zero,
            fsum=_complex_fsum,
        )
        if not (np.array_equal(ptr_c, ptr0) and np.array_equal(dst_c, dst0)):
            raise RuntimeError("internal error: the complex-step elimination changed the graph")
        da[p], dr[p], ds[p] = a_c.imag / h, rate_c.imag / h, s_c.imag / h
    return a0, da, ptr0, dst0, rate0, dr, s0, ds, keep


# Shares of the gradient's error budget: Poisson truncation (two sides), early stop, and
# the entries flushed from π and from its tangents (see docs/distribution.md).
_GRAD_SHARE_SIDE = 0.2
_GRAD_SHARE_STOP = 0.4
_GRAD_SHARE_FLUSH = 0.05
#: Far times (λt beyond every stored term) are covered by the flush bound up to this many
#: times ``max_steps`` (see docs/distribution.md, *Gradients*).
_GRAD_FAR_STEPS = 1000


class _TangentChain:
    """The derivatives in θ of the scalar sequences of :class:`_Chain`, at one θ.

    ``λ`` is held fixed at its value at θ: ``α e^{St} = Σ_k Pois(k; λt)·α Pᵏ`` holds for
    every ``λ >= max q``, so differentiating the right-hand side with ``λ`` fixed gives the
    exact derivative, ``Σ_k Pois(k; λt)·π'_k`` with ``π'_k = π'_{k−1} P + π_{k−1} P'``.
    Built for one set of times ``t`` (finite, >= 0): the flush thresholds depend on the
    latest one.
    """

    def __init__(self, trace, theta, rewards, tol, pdf_scale, max_steps, t):
        st = _structure(trace)
        zero_rewards = rewards is not None and bool(
            (rewards[_structure(trace).transient] == 0).any()
        )
        # Eliminating a zero-reward state divides by its rate: keep the safe rates then.
        rates = _edge_rates(trace, theta, keep_zeros=None if zero_rewards else True)
        n_par = trace.n_params
        coef = np.asarray(trace.arrays["input_coef"], dtype=np.float64).reshape(rates.size, n_par)
        n = st.n
        alpha = np.zeros(n)
        np.add.at(alpha, st.alpha_pos, rates[st.alpha_edges])
        dalpha = np.zeros((n_par, n))
        ptr, dst, rate = st.ptr, st.int_dst, rates[st.int_edges]
        drate = np.ascontiguousarray(coef[st.int_edges].T)
        exit_rate = np.bincount(st.exit_src, weights=rates[st.exit_edges], minlength=n)
        dexit = np.zeros((n_par, n))
        for p in range(n_par):
            np.add.at(dalpha[p], st.alpha_pos, coef[st.alpha_edges, p])
            dexit[p] = np.bincount(st.exit_src, weights=coef[st.exit_edges, p], minlength=n)
        if rewards is not None:
            r = rewards[st.transient]
            zero = r == 0.0
            if zero.any():
                alpha, dalpha, ptr, dst, rate, drate, exit_rate, dexit, keep = (
                    _eliminate_zero_rewards_derivatives(
                        alpha, dalpha, ptr, dst, rate, drate, exit_rate, dexit, zero
                    )
                )
                r = r[keep]
                n = keep.size
            src = np.repeat(np.arange(n), np.diff(ptr))
            rate, drate = rate / r[src], drate / r[src]
            exit_rate, dexit = exit_rate / r, dexit / r
        src = np.repeat(np.arange(n), np.diff(ptr))
        q = np.bincount(src, weights=rate, minlength=n) + exit_rate
        dq = np.zeros((n_par, n))
        absrow = np.zeros((n_par, n))
        for p in range(n_par):
            dq[p] = np.bincount(src, weights=drate[p], minlength=n) + dexit[p]
            absrow[p] = np.bincount(src, weights=np.abs(drate[p]), minlength=n) + np.abs(dq[p])
        lam = float(q.max()) if n else 1.0
        self.lam = lam
        self.n = n
        self.n_par = n_par
        self.max_steps = max_steps
        s_max = float(exit_rate.max()) if n else 0.0
        #: ``C_p``: the largest row sum of ``|∂S/∂θ_p|``, so ``‖P'_p‖_∞ = C_p/λ``.
        self.c = absrow.max(axis=1) if n else np.zeros(n_par)
        cex = np.abs(dexit).max(axis=1) if n else np.zeros(n_par)
        self.ptr = np.ascontiguousarray(ptr, dtype=np.int64)
        self.dst = np.ascontiguousarray(dst, dtype=np.int64)
        self.prob = rate / lam
        self.dprob = np.ascontiguousarray((drate / lam).T)  # parameter last, as below
        self.diag = np.maximum(lam - q, 0.0) / lam
        self.ddiag = np.ascontiguousarray((-dq / lam).T)
        self.exitp = exit_rate / lam
        self.dexitp = np.ascontiguousarray((dexit / lam).T)
        self.pi = alpha.copy()
        self.g = np.ascontiguousarray(dalpha.T)
        self.scratch = np.zeros(n)
        self.gscratch = np.zeros((n, n_par))
        self.acc = np.zeros((3, n_par))
        self.flushed_g = np.zeros(n_par)
        live = np.flatnonzero((alpha != 0) | (dalpha != 0).any(axis=0))
        lo, hi = (int(live[0]), int(live[-1]) + 1) if live.size else (0, 0)
        self.state = np.array([lo, hi, 0.0])
        # Error targets: tol for sf/cdf, tol·max(1, s_max) for the pdf (as the values).
        scale = max(1.0, s_max) if pdf_scale else 1.0
        self.eps = max(tol / scale, 1e-300)
        target = tol * scale
        m0 = float(alpha.sum())
        a_p = np.abs(dalpha).sum(axis=1)  # |π'_0|₁ = |α'_p|₁
        d_p = self.c * m0 / lam  # |π'_k|₁ <= |α'_p|₁ + k·C_p·m_0/λ
        if pdf_scale:
            a_p, d_p = s_max * a_p + cex * m0, s_max * d_p
        # Bounds on the terms in units of the target (+1: the computed terms' own error).
        self.bound_a = float(a_p.max() / target) + 1.0 if n_par else 1.0
        self.bound_d = float(d_p.max() / target) if n_par else 0.0
        self.stop_g = _GRAD_SHARE_STOP * self.eps
        # The latest step a window can need (K), and the flush thresholds that keep the
        # flushed entries' effect below the flush shares up to there.
        lams = np.ascontiguousarray(np.asarray(t, dtype=np.float64) * lam)
        small = lams <= max_steps
        k_lim = 1.0
        if small.any():
            right = _grad_kernels()[1](lams[small], self.bound_a, self.bound_d, _GRAD_SHARE_SIDE)
            k_lim = float(right.max()) + 1.0
        if not small.all():
            k_lim = max(k_lim, min(float(lams[~small].max()), _GRAD_FAR_STEPS * max_steps))
        k_run = min(k_lim, max_steps + 1.0)
        nn = max(n, 1)
        c_max = float(self.c.max()) if n_par else 0.0
        cex_max = float(cex.max()) if n_par else 0.0
        self.flush_g = _GRAD_SHARE_FLUSH * self.eps / (nn * k_run)
        self.flush = (
            _GRAD_SHARE_FLUSH * self.eps / (nn * k_run * max(1.0, c_max * k_lim / lam, cex_max))
        )
        self.k_lim = k_lim
        cap = 1024
        self.dm = np.empty((cap, n_par))
        self.de = np.empty((cap, n_par))
        self.dm[0] = dalpha.sum(axis=1)
        self.de[0] = dalpha @ self.exitp + alpha @ self.dexitp
        self.n_avail = 1
        self.exhausted = bool(
            not (alpha > 0).any() and (np.abs(dalpha).sum(axis=1) <= self.stop_g).all()
        )
        if self.exhausted:  # nothing moves: π and its tangents are (already) negligible
            self.state[:2] = 0
        self.times = lams

    def flush_bound(self) -> tuple[float, np.ndarray]:
        """``(F, η)``: the π mass and the tangent magnitudes (per θ_p) flushed so far."""
        return float(self.state[2]), self.flushed_g.copy()

    def extend(self, k_needed: int, lam_t: float) -> None:
        """As :meth:`_Chain.extend`, for the tangent sequences."""
        tangent = _grad_kernels()[0]
        target = min(k_needed, self.max_steps)
        while not self.exhausted and self.n_avail <= target:
            if self.dm.shape[0] <= self.n_avail:
                cap = min(2 * self.dm.shape[0], target + 1)
                for name in ("dm", "de"):
                    buf = np.empty((cap, self.n_par))
                    buf[: self.n_avail] = getattr(self, name)[: self.n_avail]
                    setattr(self, name, buf)
            upto = min(target + 1, self.dm.shape[0])
            got = tangent(
                self.ptr, self.dst, self.prob, self.dprob, self.diag, self.ddiag, self.exitp,
                self.dexitp, self.pi, self.g, self.scratch, self.gscratch, self.acc, self.state,
                self.flushed_g, self.dm, self.de, self.n_avail, upto, self.stop_g, self.flush,
                self.flush_g,
            )  # fmt: skip
            self.exhausted = got < upto
            self.n_avail = got
        if not self.exhausted and self.n_avail <= k_needed:
            raise InvalidParameterError(
                f"the gradient needs more than max_steps={self.max_steps} uniformization "
                f"steps to reach λ·t = {lam_t:.6g} (λ = {self.lam:.6g}, the largest exit "
                "rate) within tol. The model is too stiff at this θ for these times: raise "
                "max_steps, or evaluate at earlier times"
            )

    def evaluate(self) -> np.ndarray:
        """``(∂sf/∂θ, ∂pdf/∂θ)`` at the times given to the constructor: (2, n_par, len(t))."""
        _, right_points, mix = _grad_kernels()
        lams = self.times
        out = np.zeros((2, self.n_par, lams.shape[0]))
        if lams.size and self.n_par:
            small = lams <= self.max_steps
            k_needed, at = -1, 0.0
            if small.any():
                rp = right_points(lams[small], self.bound_a, self.bound_d, _GRAD_SHARE_SIDE)
                i = int(np.argmax(rp))
                k_needed, at = int(rp[i]), float(lams[small][i])
            if not small.all():
                k_needed, at = self.max_steps + 1, float(lams[~small].max())
            self.extend(k_needed, at)
            bad = mix(
                lams, self.bound_a, self.bound_d, _GRAD_SHARE_SIDE, self.dm, self.de,
                self.n_avail, self.exhausted, out,
            )  # fmt: skip
            if bad >= 0:  # pragma: no cover - right_points and mix walk the same window
                raise RuntimeError(f"internal error: Poisson window at λt={lams[bad]!r}")
        out[1] *= self.lam
        return out


# -- public functions ----------------------------------------------------------------------
def _prepare(trace, theta, rewards, tol, max_steps):
    if theta is None:
        raise InvalidParameterError("theta is required (a trace has no default parameters)")
    th, single = as_thetas(trace, theta)
    r = None if rewards is None else as_rewards(trace, rewards)
    if not (isinstance(tol, int | float | np.floating) and tol > 0 and math.isfinite(tol)):
        raise InvalidParameterError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise InvalidParameterError(f"max_steps must be a positive int, got {max_steps!r}")
    return th, single, r


#: Values before 0 and at ∞ of (sf, cdf, pdf): before 0 nothing is absorbed, at ∞ all is.
_EDGES = {0: (1.0, 0.0), 1: (0.0, 1.0), 2: (0.0, 0.0)}


def _one_theta(trace, flat, theta, r, tol, max_steps, which, gradient=False, dt=False):
    """Values of kind ``which`` (0 sf, 1 cdf, 2 pdf) at the times ``flat`` (1-d), at one
    θ; with ``gradient`` also their derivatives in θ (len(flat), n_params), with ``dt``
    their derivatives in ``t`` (sf and cdf only: ``∓pdf``). Returns ``(values, grad, dt)``
    (``None`` for what was not asked)."""
    finite = np.isfinite(flat) & (flat >= 0)
    nan = np.isnan(flat)
    chain = _Chain(trace, theta, r, tol, which == 2, max_steps)  # checks the rates
    res = np.empty(flat.size)
    res[nan] = np.nan
    res[flat < 0] = _EDGES[which][0]
    res[flat == np.inf] = _EDGES[which][1]
    all3 = chain.evaluate(flat[finite])
    vals = all3[which]
    res[finite] = np.clip(vals, 0.0, 1.0) if which < 2 else np.maximum(vals, 0.0)
    grad = ddt = None
    if gradient and not trace.n_params:
        grad = np.zeros((flat.size, 0))
    elif gradient:
        tangent = _TangentChain(trace, theta, r, tol, which == 2, max_steps, flat[finite])
        d = tangent.evaluate()
        grad = np.zeros((flat.size, trace.n_params))
        grad[nan] = np.nan
        grad[finite] = {0: d[0], 1: -d[0], 2: d[1]}[which].T
    if dt:
        ddt = np.zeros(flat.size)
        ddt[nan] = np.nan
        ddt[finite] = np.maximum(all3[2], 0.0) * (-1.0 if which == 0 else 1.0)
    return res, grad, ddt


def _distribution(trace, t, theta, rewards, tol, max_steps, which: int):
    th, single, r = _prepare(trace, theta, rewards, tol, max_steps)
    tt = as_times(t)
    flat = tt.ravel()
    out = np.empty((th.shape[0], flat.size))
    for b in range(th.shape[0]):
        out[b] = _one_theta(trace, flat, th[b], r, tol, max_steps, which)[0]
    out = out.reshape((th.shape[0], *tt.shape))
    return out[0][()] if single else out


def _distribution_and_gradient(trace, t, theta, rewards, tol, max_steps, which: int):
    th, single, r = _prepare(trace, theta, rewards, tol, max_steps)
    tt = as_times(t)
    flat = tt.ravel()
    n_par = trace.n_params
    out = np.empty((th.shape[0], flat.size))
    grad = np.empty((th.shape[0], flat.size, n_par))
    for b in range(th.shape[0]):
        out[b], grad[b], _ = _one_theta(trace, flat, th[b], r, tol, max_steps, which, gradient=True)
    out = out.reshape((th.shape[0], *tt.shape))
    grad = grad.reshape((th.shape[0], *tt.shape, n_par))
    return (out[0][()], grad[0]) if single else (out, grad)


def _time_model(obj) -> bool:
    """Whether ``obj`` is a time-inhomogeneous model (its own distribution functions)."""
    from .demography.epochs import TimeModel

    return isinstance(obj, TimeModel)


def pdf(trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Density ``f(t) = α exp(S t) s`` of the absorption time (or of ``Y = ∫ r(X_t) dt``).

    Parameters
    ----------
    trace : Trace
        A recorded trace (:func:`phasetrace.record_trace`).
    t : array_like
        Times, any shape. Negative times and ``inf`` give 0; NaN gives NaN.
    theta : array_like, shape (n_params,) or (B, n_params)
        One parameter vector, or a batch.
    rewards : None, callable or array_like (n_vertices,), optional
        Reward rate per vertex in ``trace.states`` order (or a function of the state), as
        in :meth:`Trace.moments`: the distribution of ``Y = ∫ r(X_t) dt``. Rewards must be
        ``>= 0``; vertices with reward 0 are eliminated exactly first (their passage takes
        no reward-time), which may leave an atom at 0 (see :func:`cdf`).
    tol : float, default 1e-10
        Bound on the absolute truncation error, in units of the largest exit rate when
        that exceeds 1 (the density's own scale).
    max_steps : int, default 10_000_000
        Refuse a call that needs more uniformization steps (about ``λ·max(t)``).

    Returns
    -------
    ndarray or float
        Shape ``t.shape`` for one θ, ``(B, *t.shape)`` for a batch (a scalar for one θ
        and a scalar ``t``). At ``t = 0`` this is the right limit ``α s``.

    Raises
    ------
    InvalidParameterError
        For a bad θ, rewards, ``tol`` or ``max_steps``, a θ at which a rate is not
        positive (the message names the edge), or a call that needs more than
        ``max_steps`` steps.

    Examples
    --------
    Two lineages coalescing at rate θ₀ = 2: ``T ~ Exp(2)``, ``f(t) = 2 e^{−2t}``.

    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> pdf(tr, [0.0, 0.5], [2.0]).round(10).tolist()
    [2.0, 0.7357588823]
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.pdf(trace, t, theta, rewards=rewards)
    return _distribution(trace, t, theta, rewards, tol, max_steps, 2)


def cdf(trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Distribution function ``F(t) = P(T <= t) = 1 − α exp(S t) 𝟙``.

    ``F(0)`` is the atom at 0: the initial mass on absorbing vertices (a defect), plus,
    with rewards, the probability of reaching absorption through zero-reward vertices
    only. Parameters, return shapes and errors as in :func:`pdf`; the absolute error is
    at most ``tol`` (plus rounding). The lower tail is computed from the absorbed mass
    itself, so small values of ``F`` keep their relative accuracy.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> round(float(cdf(tr, 0.5, [2.0])), 10)            # 1 − e^{−1}
    0.6321205588
    >>> cdf(tr, [0.5, 1.0], [[1.0], [2.0]]).shape        # a batch of θ: (B, T)
    (2, 2)
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.cdf(trace, t, theta, rewards=rewards)
    return _distribution(trace, t, theta, rewards, tol, max_steps, 1)


def sf(trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Survival function ``P(T > t) = α exp(S t) 𝟙 = 1 − F(t)``.

    Parameters, return shapes and errors as in :func:`pdf`; the absolute error is at
    most ``tol`` (plus rounding), and the upper tail keeps its relative accuracy down to
    about ``tol``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> round(float(sf(tr, 0.5, [2.0])), 10)             # e^{−1}
    0.3678794412
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.sf(trace, t, theta, rewards=rewards)
    return _distribution(trace, t, theta, rewards, tol, max_steps, 0)


def quantile(trace, p, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Quantiles: the smallest ``t >= 0`` with ``F(t) >= p``.

    Brackets the root by doubling, then refines it by Newton steps on :func:`cdf`
    (:func:`sf` for ``p > 1/2``, which is accurate in the upper tail), safeguarded by
    bisection, to a relative width of ``1e-12``. The result's accuracy is limited by the
    distribution function's, about ``tol / f(t)``; the truncation tolerance is tightened
    to ``min(p, 1 − p)/1000`` where that is smaller, so both tails stay resolved.

    Parameters
    ----------
    p : array_like
        Probabilities in ``[0, 1]``, any shape. ``p <= F(0)`` (the atom at 0) gives 0,
        ``p = 1`` gives ``inf`` (0 when ``T = 0`` surely), NaN gives NaN.
    trace, theta, rewards, tol, max_steps
        As in :func:`pdf`.

    Returns
    -------
    ndarray or float
        Shape ``p.shape`` for one θ, ``(B, *p.shape)`` for a batch.

    Raises
    ------
    InvalidParameterError
        As :func:`pdf`, and for a ``p`` outside ``[0, 1]``.

    Examples
    --------
    The median of ``Exp(2)`` is ``ln 2 / 2``:

    >>> import math, phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> bool(abs(quantile(tr, 0.5, [2.0]) - math.log(2) / 2) < 1e-11)
    True
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.quantile(trace, p, theta, rewards=rewards)
    th, single, r = _prepare(trace, theta, rewards, tol, max_steps)
    pp = as_probabilities(p)
    flat = pp.ravel()
    # One error budget for all p: tight enough to resolve the tails that are asked for.
    inner = flat[(flat > 0) & (flat < 1)]
    budget = min(tol, 1e-3 * float(np.minimum(inner, 1.0 - inner).min())) if inner.size else tol
    if budget < _SMALLEST_BUDGET:
        smallest = float(inner.min())
        raise InvalidParameterError(
            f"p={smallest!r} is too small to resolve: a quantile needs the distribution "
            f"function to within p/1000, and its error bound cannot go below "
            f"{_SMALLEST_BUDGET} (give p >= {1000 * _SMALLEST_BUDGET:g})"
        )
    out = np.empty((th.shape[0], flat.size))
    for b in range(th.shape[0]):
        chain = _Chain(trace, th[b], r, budget, False, max_steps)
        for i, pi in enumerate(flat.tolist()):
            if math.isnan(pi):
                out[b, i] = np.nan
            elif pi == 1.0:  # F < 1 at every finite t, unless T = 0 surely
                out[b, i] = np.inf if chain.m[0] > 0 else 0.0
            else:
                out[b, i] = _quantile_one(chain, pi)
    out = out.reshape((th.shape[0], *pp.shape))
    return out[0][()] if single else out


def _quantile_one(chain: _Chain, p: float) -> float:
    """The smallest ``t`` with ``F(t) >= p``, for ``F(0) < p < 1``.

    The tail that is asked for is matched in log scale: ``log F(t) = log p`` in
    ``u = log t`` for ``p <= 1/2`` (near 0, ``F(t) ≈ c·t^k`` is a line there, so Newton
    steps land at once however small ``p`` is), ``log P(T > t) = log(1 − p)`` in ``t``
    above (an exponential tail is a line there). Newton steps are kept inside a bracket
    and replaced by bisection when they leave it; a search that does not close the
    bracket to a relative width of ``QUANTILE_RTOL`` raises rather than return a guess.
    """
    upper = p > 0.5

    def g(x: float) -> tuple[float, float]:
        """Increasing in ``x`` with its root at the quantile, and its derivative."""
        t = x if upper else math.exp(x)
        sf_, cdf_, pdf_ = chain.evaluate(np.array([t]))[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            if upper:  # −log P(T > t) rises with t; its slope is the hazard f/S
                return (log_target - _log(sf_), pdf_ / sf_ if sf_ > 0 else math.inf)
            return (_log(cdf_) - log_target, t * pdf_ / cdf_ if cdf_ > 0 else math.inf)

    def tail_reached(t: float) -> bool:
        sf_, cdf_, _ = chain.evaluate(np.array([t]))[:, 0]
        return (1.0 - p) >= sf_ if upper else cdf_ >= p

    if tail_reached(0.0):
        return 0.0
    log_target = math.log1p(-p) if upper else math.log(p)
    # Bracket [lo, hi] in t: from 1/λ, up by doubling, or down by squared factors (2,
    # 4, 16, 256, ...: a dozen steps reach the smallest float).
    t0 = 1.0 / chain.lam
    if tail_reached(t0):
        hi, factor = t0, 2.0
        while True:
            lo = max(hi / factor, _TINIEST)
            if not tail_reached(lo):
                break
            if lo == _TINIEST:  # at or below the smallest positive float
                return lo
            hi, factor = lo, min(factor * factor, 2.0**256)
    else:
        lo, hi = t0, 2.0 * t0
        while not tail_reached(hi):
            lo, hi = hi, 2.0 * hi
            if not math.isfinite(hi):
                raise InvalidParameterError(
                    f"the quantile at p={p!r} lies beyond the largest float: F(t) < p at "
                    f"every t up to {lo:.6g}"
                )
    # Safeguarded Newton in x (log t below the median, t above).
    x_lo, x_hi = (lo, hi) if upper else (math.log(lo), math.log(hi))
    x = x_hi
    for _ in range(QUANTILE_MAX_ITERATIONS):
        t_lo, t_hi = (x_lo, x_hi) if upper else (math.exp(x_lo), math.exp(x_hi))
        if t_hi - t_lo <= QUANTILE_RTOL * t_hi:
            return 0.5 * (t_lo + t_hi)
        gx, dg = g(x)
        if gx == 0.0:
            return x if upper else math.exp(x)
        if gx < 0:
            x_lo = x
        else:
            x_hi = x
        step = gx / dg if 0 < dg < math.inf else math.inf
        newton = x - step
        if x_lo < newton < x_hi:
            t = newton if upper else math.exp(newton)
            if abs(step) <= QUANTILE_RTOL * (abs(newton) if upper else 1.0):
                return t
            x = newton
        else:
            x = 0.5 * (x_lo + x_hi)
    raise InvalidParameterError(
        f"the quantile at p={p!r} did not converge in {QUANTILE_MAX_ITERATIONS} steps (it "
        f"lies between {math.exp(x_lo) if not upper else x_lo:.17g} and "
        f"{math.exp(x_hi) if not upper else x_hi:.17g}); the distribution function is "
        "not resolved finely enough there: lower tol"
    )


_TINIEST = math.ulp(0.0)  # the smallest positive float


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


# -- derivatives in θ ----------------------------------------------------------------------
def sf_and_gradient(
    trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS
):
    """:func:`sf` and its derivatives ``∂ P(T > t)/∂θ``.

    The derivatives are exact up to a truncation error of at most ``tol`` per entry (by
    a rigorous bound, plus rounding; ``docs/distribution.md``, *Gradients*). They hold
    the uniformization rate ``λ`` fixed and propagate the tangents
    ``π'_k = π'_{k−1}P + π_{k−1}P'`` alongside ``π_k``: about ``n_params + 1`` times the
    sparse work of the values, over up to about 2.5 times the steps when the times reach
    past the point where the mass has run out (the tangents must run out too).

    Parameters
    ----------
    trace, t, theta, rewards, tol, max_steps
        As in :func:`sf`. With rewards, the derivatives are carried through the
        elimination of the zero-reward states (complex-step differentiation of it).

    Returns
    -------
    (values, gradient)
        ``values`` exactly as :func:`sf` returns them (the same bits); ``gradient`` has the
        shape of ``values`` plus a trailing axis ``(n_params,)``. It is 0 at times ``< 0``
        and at ``∞``, NaN at NaN.

    Raises
    ------
    InvalidParameterError
        As :func:`sf` (the message says "the gradient" when only the derivatives would
        need more than ``max_steps`` steps).

    Examples
    --------
    ``T ~ Exp(θ)``: ``P(T > t) = e^{−θt}`` and ``∂/∂θ = −t·e^{−θt}``.

    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> value, grad = sf_and_gradient(tr, [0.5, 1.0], [2.0])
    >>> grad.shape
    (2, 1)
    >>> grad[:, 0].round(10).tolist()   # −0.5·e^{−1}, −e^{−2}
    [-0.1839397206, -0.1353352832]
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.sf(trace, t, theta, rewards=rewards, gradient=True)
    return _distribution_and_gradient(trace, t, theta, rewards, tol, max_steps, 0)


def cdf_and_gradient(
    trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS
):
    """:func:`cdf` and its derivatives ``∂F(t)/∂θ = −∂ P(T > t)/∂θ``.

    Parameters, returns (``values`` exactly as :func:`cdf`), error bound and cost as in
    :func:`sf_and_gradient`.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> F, dF = cdf_and_gradient(tr, 0.5, [[2.0], [1.0]])   # a batch: (B,), (B, n_params)
    >>> dF.round(10).tolist()                               # t·e^{−θt}
    [[0.1839397206], [0.3032653299]]
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.cdf(trace, t, theta, rewards=rewards, gradient=True)
    return _distribution_and_gradient(trace, t, theta, rewards, tol, max_steps, 1)


def pdf_and_gradient(
    trace, t, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS
):
    """:func:`pdf` and its derivatives ``∂f(t)/∂θ``.

    As :func:`sf_and_gradient` (``values`` exactly as :func:`pdf`); the truncation error
    of each derivative is at most ``tol·max(1, largest exit rate)``, the density's scale.

    Examples
    --------
    ``f(t) = θe^{−θt}``, ``∂f/∂θ = (1 − θt)·e^{−θt}``:

    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> f, df = pdf_and_gradient(tr, 0.25, [2.0])
    >>> round(float(df[0]), 10)
    0.3032653299
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.pdf(trace, t, theta, rewards=rewards, gradient=True)
    return _distribution_and_gradient(trace, t, theta, rewards, tol, max_steps, 2)


def quantile_and_gradient(
    trace, p, theta=None, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS
):
    """:func:`quantile` and its derivatives ``∂q/∂θ``, by the implicit function theorem.

    ``F(q(θ); θ) = p`` gives ``∂q/∂θ = −(∂F/∂θ)(q) / f(q)``. Where ``q`` is 0 (``p`` at or
    below the atom at 0) or ``∞`` (``p = 1``) the derivative is taken as 0; where the
    density at ``q`` is 0 it is not finite (``±inf``, or NaN). The error is about
    ``(tol + |∂q/∂θ|·tol')/f(q)`` with ``tol'`` the density's error: large where the
    density is small (the far tails).

    Returns
    -------
    (q, gradient)
        ``q`` exactly as :func:`quantile`; ``gradient`` of shape ``q.shape + (n_params,)``.

    Examples
    --------
    For ``Exp(θ)``, ``q = −ln(1 − p)/θ`` and ``∂q/∂θ = −q/θ``:

    >>> import math, phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    >>> q, dq = quantile_and_gradient(tr, 0.5, [2.0])
    >>> bool(abs(dq[0] + math.log(2) / 4) < 1e-9)
    True
    """
    if _time_model(trace):
        from .demography import timedist

        return timedist.quantile_and_gradient(trace, p, theta, rewards=rewards)
    q = quantile(trace, p, theta, rewards=rewards, tol=tol, max_steps=max_steps)
    th, _, r = _prepare(trace, theta, rewards, tol, max_steps)
    qq = np.asarray(q, dtype=np.float64).reshape(th.shape[0], -1)
    n_par = trace.n_params
    grad = np.zeros((*qq.shape, n_par))
    for b in range(th.shape[0]):
        qb = qq[b]
        grad[b, np.isnan(qb)] = np.nan
        inner = np.flatnonzero((qb > 0) & (qb < np.inf))
        if not inner.size:
            continue
        _, dsf, _ = _one_theta(trace, qb[inner], th[b], r, tol, max_steps, 0, gradient=True)
        dens = _one_theta(trace, qb[inner], th[b], r, tol, max_steps, 2)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            grad[b, inner] = dsf / dens[:, None]  # −(∂F/∂θ)/f with ∂F = −∂sf
    shape = np.shape(q)
    grad = grad.reshape((*shape, n_par))
    return q, grad
