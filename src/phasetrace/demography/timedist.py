"""Distribution functions of the absorption time of a time-inhomogeneous model.

``P(T > t)`` is the mass on transient states at ``t``, carried through the epochs by the
same uniformization sweeps as the moments (:meth:`~.engine.EpochEngine.survival`);
the density is that mass times the exit rates of the epoch ``t`` falls in. These are the
functions :func:`phasetrace.sf`, :func:`phasetrace.cdf`, :func:`phasetrace.pdf` and
:func:`phasetrace.quantile` call when given a model instead of a trace. Rewards are not
supported here (``Y = ∫ r dt`` accrues on another clock than the epochs).
"""

from __future__ import annotations

import math

import numpy as np

from .._args import as_probabilities, as_times
from ..errors import InvalidParameterError

#: Relative width at which :func:`quantile` stops.
QUANTILE_RTOL = 1e-12
#: Iterations :func:`quantile` allows before it gives up with an error.
QUANTILE_MAX_ITER = 400


def _no_rewards(rewards) -> None:
    if rewards is not None:
        raise InvalidParameterError(
            "distribution functions of a time-inhomogeneous model are those of the "
            "absorption time T; rewards are not supported (use moments for Y = ∫ r dt)"
        )


def _one(model, theta_row: np.ndarray, flat: np.ndarray, gradient: bool):
    """``(values (3, n), derivatives (3, n, P))`` of (sf, cdf, pdf) at the times ``flat``
    (any order, may hold NaN and ±inf)."""
    n = flat.size
    P = model.n_params
    vals = np.full((3, n), np.nan)
    ders = np.zeros((3, n, P))
    vals[:, flat < 0] = np.array([[1.0], [0.0], [0.0]])
    vals[:, flat == np.inf] = np.array([[0.0], [1.0], [0.0]])
    ders[:, np.isnan(flat)] = np.nan
    inner = np.flatnonzero(np.isfinite(flat) & (flat >= 0))
    if inner.size:
        order = inner[np.argsort(flat[inner], kind="stable")]
        times = flat[order]
        tot = dtot = 0.0
        for weight, steps, n_dir in model._schedules(theta_row[None, :], gradient):
            v, d = model.engine.survival(
                steps,
                times,
                n_directions=n_dir if gradient else 0,
                tol=model.tol,
                max_steps=model.max_steps,
            )
            tot = tot + weight * np.array(v)
            if gradient:
                dtot = dtot + weight * np.array(d)
        vals[:2, order] = np.clip(tot[:2], 0.0, 1.0)
        vals[2, order] = np.maximum(tot[2], 0.0)
        if gradient:
            ders[:, order] = dtot
    return vals, ders


def _evaluate(model, t, theta, which: str, gradient: bool):
    th, single = model._thetas(theta)
    tt = as_times(t)
    flat = tt.ravel()
    B = th.shape[0]
    out = np.empty((B, flat.size))
    grad = np.empty((B, flat.size, model.n_params))
    which_row = {"sf": 0, "cdf": 1, "pdf": 2}[which]
    for b in range(B):
        vals, ders = _one(model, th[b], flat, gradient)
        out[b] = vals[which_row]
        if gradient:
            grad[b] = ders[which_row]
    out = out.reshape((B, *tt.shape))
    grad = grad.reshape((B, *tt.shape, model.n_params))
    if not gradient:
        return out[0][()] if single else out
    return (out[0][()], grad[0]) if single else (out, grad)


def sf(model, t, theta=None, *, rewards=None, gradient: bool = False):
    """``P(T > t)`` of a time-inhomogeneous model (see :func:`phasetrace.sf`)."""
    _no_rewards(rewards)
    return _evaluate(model, t, theta, "sf", gradient)


def cdf(model, t, theta=None, *, rewards=None, gradient: bool = False):
    """``P(T <= t)`` of a time-inhomogeneous model (see :func:`phasetrace.cdf`)."""
    _no_rewards(rewards)
    return _evaluate(model, t, theta, "cdf", gradient)


def pdf(model, t, theta=None, *, rewards=None, gradient: bool = False):
    """The density of ``T`` of a time-inhomogeneous model (see :func:`phasetrace.pdf`)."""
    _no_rewards(rewards)
    return _evaluate(model, t, theta, "pdf", gradient)


def quantile(model, p, theta=None, *, rewards=None):
    """The smallest ``t`` with ``P(T <= t) >= p`` (see :func:`phasetrace.quantile`).

    Brackets by doubling from the mean, then safeguarded Newton steps on the CDF (the
    survival function above the median). Raises
    :class:`~phasetrace.errors.InvalidParameterError` if it cannot reach a relative width
    of 1e-12 within :data:`QUANTILE_MAX_ITER` evaluations.
    """
    _no_rewards(rewards)
    th, single = model._thetas(theta)
    pp = as_probabilities(p)
    flat = pp.ravel()
    out = np.empty((th.shape[0], flat.size))
    for b in range(th.shape[0]):
        mean = float(model.moments(th[b], 1)[0])
        for i, pi in enumerate(flat.tolist()):
            out[b, i] = _quantile_one(model, th[b], pi, mean)
    out = out.reshape((th.shape[0], *pp.shape))
    return out[0][()] if single else out


def quantile_and_gradient(model, p, theta=None, *, rewards=None):
    """:func:`quantile` and ``∂q/∂θ = −(∂F/∂θ)(q)/f(q)`` (implicit function theorem);
    0 where ``q`` is 0 or infinite."""
    q = quantile(model, p, theta, rewards=rewards)
    th, _ = model._thetas(theta)
    qq = np.asarray(q, dtype=np.float64).reshape(th.shape[0], -1)
    grad = np.zeros((*qq.shape, model.n_params))
    for b in range(th.shape[0]):
        inner = np.flatnonzero((qq[b] > 0) & np.isfinite(qq[b]))
        grad[b, np.isnan(qq[b])] = np.nan
        if inner.size:
            vals, ders = _one(model, th[b], qq[b, inner], True)
            with np.errstate(divide="ignore", invalid="ignore"):
                grad[b, inner] = -ders[1] / vals[2][:, None]
    return q, grad.reshape((*np.shape(q), model.n_params))


def _quantile_one(model, theta_row, p: float, mean: float) -> float:
    if math.isnan(p):
        return math.nan
    if p == 1.0:
        return math.inf
    upper = p > 0.5

    def g(t):  # increasing in t, root at the quantile, and its derivative
        (sf, cdf, pdf), _ = _one(model, theta_row, np.array([t]), False)
        return ((1.0 - p) - sf[0] if upper else cdf[0] - p), pdf[0]

    if g(0.0)[0] >= 0:
        return 0.0
    lo, hi = 0.0, max(mean, 1e-300)
    while g(hi)[0] < 0:
        lo, hi = hi, 2.0 * hi
        if not math.isfinite(hi):
            raise InvalidParameterError(f"quantile: no finite t with P(T <= t) >= {p}")
    t = _split(lo, hi)
    for _ in range(QUANTILE_MAX_ITER):
        if hi - lo <= QUANTILE_RTOL * hi:
            return 0.5 * (lo + hi)
        gt, dg = g(t)
        if gt == 0.0:
            return t
        if gt < 0:
            lo = t
        else:
            hi = t
        newton = t - gt / dg if dg > 0 else math.inf
        t = newton if lo < newton < hi else _split(lo, hi)
    raise InvalidParameterError(
        f"quantile: no convergence for p={p} within {QUANTILE_MAX_ITER} evaluations "
        f"(bracket [{lo:.6g}, {hi:.6g}])"
    )


def _split(lo: float, hi: float) -> float:
    """A point inside ``(lo, hi)``: geometric when the bracket spans orders of magnitude
    (tiny ``p`` puts the quantile many decades below the mean), else the midpoint."""
    if lo == 0.0:
        return hi / 8.0
    if hi > 4.0 * lo:
        return math.sqrt(lo * hi)
    return 0.5 * (lo + hi)
