"""Checking and normalising the arguments of trace evaluation (θ, rewards, k).

Shared by the compiled kernel (:mod:`phasetrace.kernel`), the numpy reference
(:mod:`phasetrace.evaluate`) and :mod:`phasetrace.jax`, so all three accept and reject
the same inputs with the same messages.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InvalidParameterError
from .ops import VERTEX_ABSORBING, VERTEX_START, VERTEX_TRANSIENT


def as_floats(value, what: str) -> np.ndarray:
    """``value`` as a float64 array, refusing what a cast would change without a word:
    complex numbers (the imaginary part), datetimes and durations (the unit), masked
    arrays (the mask), text, and integers beyond float64.

    Examples
    --------
    >>> as_floats([1, 2.5], "theta").tolist()
    [1.0, 2.5]
    >>> as_floats([1 + 2j], "theta")
    Traceback (most recent call last):
    ...
    phasetrace.errors.InvalidParameterError: theta is complex (complex128): phasetrace takes ...
    """
    if np.ma.isMaskedArray(value):
        raise InvalidParameterError(
            f"{what} is a masked array, and its mask would be ignored: pass the rows you "
            "mean as a plain array (e.g. np.ma.compress_rows), or .filled(value)"
        )
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists, say
        raise InvalidParameterError(f"{what} is not an array of numbers: {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise InvalidParameterError(
            f"{what} is complex ({arr.dtype}): phasetrace takes real numbers (pass .real if "
            "the imaginary parts are 0)"
        )
    if kind in "mM":
        raise InvalidParameterError(
            f"{what} holds {arr.dtype} values: convert them to plain numbers in the units "
            "the model uses"
        )
    if kind in "USV":
        raise InvalidParameterError(f"{what} holds {arr.dtype} values, not numbers")
    try:
        return arr.astype(np.float64, copy=False)
    except OverflowError as exc:
        raise InvalidParameterError(
            f"{what} holds a number too large for float64 ({exc}); values must be finite"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{what} is not an array of numbers: {exc}") from None


def as_thetas(trace, theta) -> tuple[np.ndarray, bool]:
    """θ as a C-contiguous float64 array (B, n_params) and whether one θ was given."""
    th = as_floats(theta, "theta")
    single = th.ndim <= 1
    th = th.reshape(1, -1) if single else th
    if th.ndim != 2 or th.shape[1] != trace.n_params:
        raise InvalidParameterError(
            f"theta must have shape ({trace.n_params},) or (B, {trace.n_params}); got "
            f"{np.shape(theta)}"
        )
    if not np.isfinite(th).all():
        raise InvalidParameterError("theta contains NaN or infinite values")
    return np.ascontiguousarray(th), single


#: The highest moment there is: E[T^k] carries a factor k!, which overflows float64 past 170.
MAX_K = 170


def as_k(k) -> int:
    """The highest moment, an int from 1 to :data:`MAX_K`."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidParameterError(f"k must be a positive int, got {k!r}")
    if k > MAX_K:
        raise InvalidParameterError(
            f"k={k} is too high: moments carry a factor k!, which overflows float64 past k={MAX_K}"
        )
    return int(k)


def as_rewards(trace, rewards) -> np.ndarray:
    """One reward vector (n_vertices,) in ``trace.states`` order; ones when ``None``."""
    n = trace.n_vertices
    if rewards is None:
        return np.ones(n)
    if callable(rewards):
        return trace.rewards_from(rewards)
    r = as_floats(rewards, "rewards")
    if r.shape != (n,):
        raise InvalidParameterError(
            f"rewards must have shape ({n},), one per vertex in trace.states order; got {r.shape}"
        )
    if not np.isfinite(r).all() or (r < 0).any():
        raise InvalidParameterError("rewards must be finite and >= 0")
    return r


def as_reward_matrix(trace, rewards) -> tuple[np.ndarray, bool]:
    """Rewards as a matrix (R, n_vertices) and whether several vectors were given.

    Accepts ``None`` (ones), a callable of the state, a vector (n_vertices,), a matrix
    (R, n_vertices), or a list of callables.
    """
    if isinstance(rewards, list | tuple) and rewards and all(callable(r) for r in rewards):
        return np.stack([as_rewards(trace, r) for r in rewards]), True
    if rewards is not None and not callable(rewards):
        r = as_floats(rewards, "rewards") if not isinstance(rewards, np.ndarray) else rewards
        if r.ndim == 2:
            if r.shape[0] == 0:
                raise InvalidParameterError("rewards: a matrix needs at least one row")
            return np.stack([as_rewards(trace, row) for row in r]), True
    return as_rewards(trace, rewards)[None, :], False


def transient_rewards(trace, rewards: np.ndarray) -> np.ndarray:
    """Rewards with zeros where no time is earned (the start and absorbing vertices).

    Works on one vector (n_vertices,) or a matrix (R, n_vertices).
    """
    mask = trace.__dict__.get("_transient_mask")
    if mask is None:
        mask = trace.__dict__["_transient_mask"] = trace.arrays["vertex_kind"] == VERTEX_TRANSIENT
    return np.where(mask, rewards, 0.0)


def shaped(out: np.ndarray, single: bool, multi: bool) -> np.ndarray:
    """Drop the θ axis (axis 0) for one θ and the reward axis (axis 1) for one vector."""
    if not multi:
        out = out[:, 0]
    return out[0] if single else out


def _state(trace, v: int) -> list[int]:
    return trace.states[int(v)].tolist()


def _theta_list(theta) -> list[float]:
    return np.asarray(theta, dtype=np.float64).ravel().tolist()


def bad_rate_error(trace, edge: int, rate: float, theta: np.ndarray) -> InvalidParameterError:
    """The error for an edge whose rate at ``theta`` is negative or not finite, naming the edge.

    A rate of exactly 0 is allowed by the moments (see :func:`zero_rate_plan`); the
    message for it is for computations that need every rate > 0.
    """
    arr = trace.arrays
    src = _state(trace, arr["input_src"][edge])
    dst = _state(trace, arr["input_dst"][edge])
    where = f"edge state {src} -> state {dst}: rate {float(rate)!r} at theta={_theta_list(theta)}"
    if not np.isfinite(rate):
        return InvalidParameterError(
            f"{where} is not finite (it overflows float64; rates must be finite and >= 0)"
        )
    if rate == 0:  # only callers that cannot drop an edge ask about a zero rate
        return InvalidParameterError(f"{where} is not > 0 (this computation needs rates > 0)")
    return InvalidParameterError(
        f"{where} is not > 0: it is negative (rates must be finite and >= 0; an edge of "
        "rate exactly 0 is dropped)"
    )


def edge_rates(trace, thetas: np.ndarray) -> np.ndarray:
    """Every edge's rate at each θ of ``thetas`` (B, P): shape (B, n_edges).

    ``base + c₀θ₀ + c₁θ₁ + …``, left to right, exactly as the kernel's ``LOAD`` (so the
    same bits). Overflow gives ``inf``/``nan`` without a warning.
    """
    arr = trace.arrays
    base, coef = arr["input_base"], arr["input_coef"]
    thetas = np.asarray(thetas, dtype=np.float64)
    thetas = thetas.reshape(thetas.shape[0] if thetas.ndim == 2 else 1, trace.n_params)
    rates = np.repeat(base[None, :], thetas.shape[0], axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(trace.n_params):
            rates = rates + coef[None, :, i] * thetas[:, i : i + 1]
    return rates


class ZeroRatePlan(NamedTuple):
    """How to evaluate at a θ where some rates are exactly 0 (see :func:`zero_rate_plan`).

    Attributes
    ----------
    rates : ndarray (n_edges,)
        The rates to evaluate with: the rates at θ, except that the out-edges of rate 0 of
        vertices whose values cannot matter (they cannot be reached and cannot be absorbed
        for sure) are set to 1, so every division of the recorded program is by a number
        > 0 and no ``0·inf`` reaches a value that matters.
    undefined : ndarray (n_params,) bool
        Parameters in whose direction the moments are not differentiable at θ.
    undefined_error : InvalidParameterError or None
        Why, naming the edge (for the first such parameter).
    """

    rates: np.ndarray
    undefined: np.ndarray
    undefined_error: InvalidParameterError | None


def _rate_graph(trace) -> dict:
    """Forward and backward CSR of the trace's edges (kept on the trace)."""
    g = trace.__dict__.get("_rate_graph")
    if g is None:
        arr = trace.arrays
        src = np.asarray(arr["input_src"], dtype=np.int64)
        dst = np.asarray(arr["input_dst"], dtype=np.int64)
        n = trace.n_vertices
        order = np.argsort(dst, kind="stable")
        g = trace.__dict__["_rate_graph"] = {
            "src": src,
            "dst": dst,
            "ptr": np.searchsorted(src, np.arange(n + 1)),  # edges are sorted by source
            "rorder": order,
            "rptr": np.searchsorted(dst[order], np.arange(n + 1)),
            "rsrc": src[order],
            "kind": arr["vertex_kind"],
        }
    return g


def _spread(ptr: np.ndarray, nbr: np.ndarray, ok: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Vertices reached from ``seed`` over the edges with ``ok`` set (breadth first).

    Edge ``e`` of vertex ``v`` (``ptr[v] <= e < ptr[v + 1]``) leads to ``nbr[e]``.
    """
    seen = seed.copy()
    frontier = np.flatnonzero(seed)
    while frontier.size:
        lo, hi = ptr[frontier], ptr[frontier + 1]
        n = hi - lo
        total = int(n.sum())
        if not total:
            break
        e = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(total)
        w = nbr[e[ok[e]]]
        w = np.unique(w[~seen[w]])
        seen[w] = True
        frontier = w
    return seen


#: Zero patterns whose classification is kept per trace (a grid of θ on a boundary
#: shares one pattern).
ZERO_PATTERNS_KEPT = 16


def _zero_pattern(trace, pos: np.ndarray) -> dict:
    """The classification of the vertices for the edges of rate > 0 ``pos``.

    It depends on which rates are 0, not on θ, so it is kept on the trace for the last
    :data:`ZERO_PATTERNS_KEPT` patterns. Keys: ``caught`` (an edge of rate 0 leaving the
    reached vertices that cannot be absorbed, or −1) and ``all_zero`` (whether its source
    has no edge of rate > 0); else ``doomed`` (vertex mask), ``undefined`` (parameter
    mask) and ``undefined_edge`` (an edge to name for the first such parameter, or −1).
    """
    memo = trace.__dict__.setdefault("_zero_patterns", {})
    key = np.packbits(pos).tobytes()
    hit = memo.get(key)
    if hit is not None:
        return hit
    g = _rate_graph(trace)
    kind, src, dst = g["kind"], g["src"], g["dst"]
    start = kind == VERTEX_START
    reached = _spread(g["ptr"], dst, pos, start)
    rpos = pos[g["rorder"]]
    absorbed = _spread(g["rptr"], g["rsrc"], rpos, kind == VERTEX_ABSORBING)
    trapped = (kind == VERTEX_TRANSIENT) & ~absorbed
    caught = reached & trapped
    out: dict = {"caught": -1}
    if caught.any():
        # The reached, trapped vertices are closed under edges of rate > 0, and every
        # vertex of the graph reaches an absorbing one: some edge of rate 0 leaves them.
        e = int(np.flatnonzero(caught[src] & ~caught[dst] & ~pos)[0])
        u = int(src[e])
        out.update(caught=e, all_zero=not pos[g["ptr"][u] : g["ptr"][u + 1]].any())
    else:
        # Vertices from which absorption is not certain; none of them is reached.
        doomed = _spread(g["rptr"], g["rsrc"], rpos, trapped)
        # The derivative in θ_p is the adjoint formula ȳ_u·(z_w − z_u) summed over the
        # edges of θ_p when the system stays nonsingular as θ_p moves: when no doomed
        # vertex is reached over the edges of rate > 0 and those that θ_p turns on. Else
        # E jumps (two islands at migration rate 0), or a doomed vertex is entered with
        # probability and left at rates that vanish together, and the formula misses
        # terms: no derivative.
        coef = trace.arrays["input_coef"].reshape(src.size, trace.n_params)
        undefined = np.zeros(trace.n_params, dtype=bool)
        undefined_edge = -1
        for p in np.flatnonzero((coef[~pos] != 0).any(axis=0)).tolist():
            moves = pos | (coef[:, p] != 0)
            near = _spread(g["ptr"], dst, moves, start)
            if not (near & doomed).any():
                continue
            undefined[p] = True
            if undefined_edge < 0:
                entering = near[src] & ~doomed[src] & doomed[dst] & moves
                first = entering & reached[src]
                undefined_edge = int(np.flatnonzero(first if first.any() else entering)[0])
        out.update(doomed=doomed, undefined=undefined, undefined_edge=undefined_edge)
    # Threads may evict at the same time: list() copies the keys without letting another
    # thread in, and pop() tolerates a key that another thread has just removed.
    for old in list(memo)[: max(len(memo) - ZERO_PATTERNS_KEPT + 1, 0)]:
        memo.pop(old, None)
    memo[key] = out
    return out


def zero_rate_plan(trace, theta, rates: np.ndarray):
    """What the rates ``rates`` (n_edges,) at one ``theta`` allow.

    Returns ``None`` when every rate is > 0 and finite (the common case: nothing to do);
    an :class:`~phasetrace.errors.InvalidParameterError` (returned, not raised) for a
    negative or non-finite rate, or for a vertex that is reached at θ and cannot be
    absorbed (its moments are infinite); else a :class:`ZeroRatePlan`.

    An edge of rate 0 is no edge: the moments are those of the chain on the vertices
    reached from the start over edges of rate > 0, which is a proper phase-type
    distribution iff each of them can reach an absorbing vertex over such edges.
    """
    pos = rates > 0
    finite = np.isfinite(rates)
    if pos.all() and finite.all():
        return None
    bad = np.flatnonzero(~finite | (rates < 0))
    if bad.size:
        return bad_rate_error(trace, int(bad[0]), rates[bad[0]], theta)
    z = _zero_pattern(trace, pos)
    src, dst = trace.arrays["input_src"], trace.arrays["input_dst"]
    at = f"theta={_theta_list(theta)}"
    e = z["caught"]
    if e >= 0:
        u, w = _state(trace, src[e]), _state(trace, dst[e])
        why = (
            "all its out-edges have rate 0"
            if z["all_zero"]
            else "from it, only states that cannot be absorbed are reached"
        )
        return InvalidParameterError(
            f"state {u} is reached at {at} but never absorbed, so the moments are infinite: "
            f"{why} (edge state {u} -> state {w}: rate {float(rates[e])!r} at {at} is not > 0)"
        )
    fixed = np.where(z["doomed"][src] & ~pos, 1.0, rates)
    error = None
    e = z["undefined_edge"]
    if e >= 0:
        p = int(np.flatnonzero(z["undefined"])[0])
        w = _state(trace, dst[e])
        error = InvalidParameterError(
            f"the moments are not differentiable in theta[{p}] at {at}: edge state "
            f"{_state(trace, src[e])} -> state {w} has rate 0 there and changes with "
            f"theta[{p}], and from state {w} absorption is not certain at this θ (the "
            "moments jump, or change faster than linearly, as that rate leaves 0)"
        )
    return ZeroRatePlan(fixed, z["undefined"].copy(), error)


def not_finite_error(theta, values: np.ndarray, what: str = "moments") -> InvalidParameterError:
    """The error for results that overflowed (``inf`` or ``nan``) at ``theta``."""
    shown = np.asarray(values, dtype=np.float64).ravel()[:6].tolist()
    return InvalidParameterError(
        f"the {what} at theta={_theta_list(theta)} are not finite ({shown}): the computation "
        "overflows float64 at this θ (a rate is too close to 0, or too large, for these "
        "moments to be represented)"
    )


def as_times(t) -> np.ndarray:
    """Times as a float64 array of any shape (the distribution functions' ``t``)."""
    try:
        return np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"t is not an array of numbers: {exc}") from None


def as_probabilities(p) -> np.ndarray:
    """Probabilities as a float64 array of any shape, each in ``[0, 1]`` (or NaN)."""
    try:
        pp = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"p is not an array of numbers: {exc}") from None
    outside = (pp < 0) | (pp > 1)
    if outside.any():
        raise InvalidParameterError(f"p must be in [0, 1]; got {float(pp[outside][0])!r}")
    return pp
