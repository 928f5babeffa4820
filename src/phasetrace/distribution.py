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

The sparse products run in numba (compiled on first use and cached on disk); numba is
imported on the first call, not by ``import phasetrace``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._args import as_rewards, as_thetas, bad_rate_error
from .errors import InvalidParameterError
from .ops import VERTEX_START, VERTEX_TRANSIENT

__all__ = ["cdf", "pdf", "quantile", "sf"]

#: Default bound on the absolute error of :func:`cdf` and :func:`sf` (and of :func:`pdf`,
#: in its own units).
DEFAULT_TOL = 1e-10
#: Default limit on the number of uniformization steps (sparse products) of one call.
DEFAULT_MAX_STEPS = 10_000_000
#: Relative tolerance of :func:`quantile`'s root finder (on ``t``).
QUANTILE_RTOL = 1e-12

# Shares of the error budget ε: Poisson truncation, early stop of the sequence, and mass
# flushed to zero (entries below a threshold, so that dead vertices cost nothing).
_SHARE_POISSON = 0.4
_SHARE_STOP = 0.4
_SHARE_FLUSH = 0.1


# -- compiled kernels (numba, built on first use) ----------------------------------------
def _advance_py(ptr, dst, prob, diag, exitp, pi, scratch, state, m, a, e, k0, k1, stop, flush):
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


def _right_points_py(lams, eps):
    """The last Poisson term :func:`_mix_py` uses for each ``λt >= 0`` (the same walk)."""
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


def _mix_py(lams, eps, m, a, e, n_avail, exhausted, out):
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


_KERNELS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        from numba import njit

        jit = njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
        _KERNELS = (jit(_advance_py), jit(_right_points_py), jit(_mix_py))
    return _KERNELS


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


def _edge_rates(trace, theta: np.ndarray) -> np.ndarray:
    """Every edge's rate at one θ (``base + Σ coef_i·θ_i``, left to right, as ``LOAD``)."""
    arr = trace.arrays
    rates = arr["input_base"].copy()
    coef = arr["input_coef"]
    for i in range(trace.n_params):
        rates = rates + coef[:, i] * theta[i]
    bad = np.flatnonzero(~((rates > 0) & np.isfinite(rates)))
    if bad.size:
        raise bad_rate_error(trace, int(bad[0]), rates[bad[0]], theta)
    return rates


def _eliminate_zero_rewards(alpha, ptr, dst, rate, exit_rate, zero):
    """Remove the vertices ``zero`` (no time earned there) by exact state reduction (GTH).

    Eliminating ``z`` (in π order) reroutes every ``u → z`` through ``z``'s out-edges:
    ``u → w`` gains ``rate(u, z)·rate(z, w)/q_z``, the exit rate of ``u`` gains
    ``rate(u, z)·exit(z)/q_z``, and the initial mass of ``z`` moves to its targets (or
    out: an atom at 0). Self-loops are dropped (they change nothing in continuous time).
    Only products and sums of non-negative numbers: no cancellation, however stiff the
    rates. Sparse (rows are dicts): the cost grows with the fill, not with ``n²``.

    Returns ``(alpha, ptr, dst, rate, exit_rate, keep)`` over the kept vertices ``keep``.
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
        q = math.fsum(oz.values()) + s[z]
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
    new_rate = np.fromiter((x for r in rows for x in r.values()), np.float64, int(new_ptr[-1]))
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


# -- public functions ----------------------------------------------------------------------
def _prepare(trace, theta, rewards, tol, max_steps):
    th, single = as_thetas(trace, theta)
    r = None if rewards is None else as_rewards(trace, rewards)
    if not (isinstance(tol, int | float | np.floating) and tol > 0 and math.isfinite(tol)):
        raise InvalidParameterError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise InvalidParameterError(f"max_steps must be a positive int, got {max_steps!r}")
    return th, single, r


def _distribution(trace, t, theta, rewards, tol, max_steps, which: int):
    th, single, r = _prepare(trace, theta, rewards, tol, max_steps)
    try:
        tt = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"t is not an array of numbers: {exc}") from None
    flat = tt.ravel()
    out = np.empty((th.shape[0], flat.size))
    finite = np.isfinite(flat) & (flat >= 0)
    # Outside [0, ∞): before 0 nothing is absorbed; at ∞ everything is.
    edge = {0: (1.0, 0.0), 1: (0.0, 1.0), 2: (0.0, 0.0)}[which]
    for b in range(th.shape[0]):
        chain = _Chain(trace, th[b], r, tol, which == 2, max_steps)  # checks the rates
        res = out[b]
        res[np.isnan(flat)] = np.nan
        res[flat < 0] = edge[0]
        res[flat == np.inf] = edge[1]
        vals = chain.evaluate(flat[finite])[which]
        res[finite] = np.clip(vals, 0.0, 1.0) if which < 2 else np.maximum(vals, 0.0)
    out = out.reshape((th.shape[0], *tt.shape))
    return out[0][()] if single else out


def pdf(trace, t, theta, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
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
    return _distribution(trace, t, theta, rewards, tol, max_steps, 2)


def cdf(trace, t, theta, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
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
    return _distribution(trace, t, theta, rewards, tol, max_steps, 1)


def sf(trace, t, theta, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
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
    return _distribution(trace, t, theta, rewards, tol, max_steps, 0)


def quantile(trace, p, theta, *, rewards=None, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
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
    th, single, r = _prepare(trace, theta, rewards, tol, max_steps)
    try:
        pp = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"p is not an array of numbers: {exc}") from None
    flat = pp.ravel()
    if ((flat < 0) | (flat > 1)).any():
        bad = flat[(flat < 0) | (flat > 1)][0]
        raise InvalidParameterError(f"p must be in [0, 1]; got {float(bad)!r}")
    # One error budget for all p: tight enough to resolve the tails that are asked for.
    inner = flat[(flat > 0) & (flat < 1)]
    budget = min(tol, 1e-3 * float(np.minimum(inner, 1.0 - inner).min())) if inner.size else tol
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
    upper = p > 0.5

    def g(t):  # increasing in t, root at the quantile; and its derivative
        sf_, cdf_, pdf_ = chain.evaluate(np.array([t]))[:, 0]
        return ((1.0 - p) - sf_ if upper else cdf_ - p), pdf_

    g0, _ = g(0.0)
    if g0 >= 0:
        return 0.0
    lo, hi = 0.0, 1.0 / chain.lam
    while True:
        ghi, _ = g(hi)
        if ghi >= 0:
            break
        lo, hi = hi, 2.0 * hi
    t = 0.5 * (lo + hi)
    for _ in range(200):
        if hi - lo <= QUANTILE_RTOL * hi:
            break
        gt, dg = g(t)
        if gt == 0.0:
            return t
        if gt < 0:
            lo = t
        else:
            hi = t
        step = gt / dg if dg > 0 else math.inf
        newton = t - step
        if lo < newton < hi:
            if abs(step) <= QUANTILE_RTOL * t:
                return newton
            t = newton
        else:
            t = 0.5 * (lo + hi)
    return 0.5 * (lo + hi)
