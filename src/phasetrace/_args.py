"""Checking and normalising the arguments of trace evaluation (θ, rewards, k).

Shared by the compiled kernel (:mod:`phasetrace.kernel`), the numpy reference
(:mod:`phasetrace.evaluate`) and :mod:`phasetrace.jax`, so all three accept and reject
the same inputs with the same messages.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidParameterError
from .ops import VERTEX_TRANSIENT


def as_thetas(trace, theta) -> tuple[np.ndarray, bool]:
    """θ as a C-contiguous float64 array (B, n_params) and whether one θ was given."""
    try:
        th = np.asarray(theta, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"theta is not an array of numbers: {exc}") from None
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


def as_k(k) -> int:
    """The highest moment, a positive int."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidParameterError(f"k must be a positive int, got {k!r}")
    return int(k)


def as_rewards(trace, rewards) -> np.ndarray:
    """One reward vector (n_vertices,) in ``trace.states`` order; ones when ``None``."""
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


def as_reward_matrix(trace, rewards) -> tuple[np.ndarray, bool]:
    """Rewards as a matrix (R, n_vertices) and whether several vectors were given.

    Accepts ``None`` (ones), a callable of the state, a vector (n_vertices,), a matrix
    (R, n_vertices), or a list of callables.
    """
    if isinstance(rewards, list | tuple) and rewards and all(callable(r) for r in rewards):
        return np.stack([as_rewards(trace, r) for r in rewards]), True
    if rewards is not None and not callable(rewards):
        r = (
            np.asarray(rewards, dtype=np.float64)
            if not isinstance(rewards, np.ndarray)
            else rewards
        )
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


def bad_rate_error(trace, edge: int, rate: float, theta: np.ndarray) -> InvalidParameterError:
    """The error for an edge whose rate at ``theta`` is not ``> 0``, naming the edge."""
    arr = trace.arrays
    src = trace.states[arr["input_src"][edge]].tolist()
    dst = trace.states[arr["input_dst"][edge]].tolist()
    return InvalidParameterError(
        f"edge state {src} -> state {dst}: rate {float(rate)!r} at theta="
        f"{np.asarray(theta).tolist()} is not > 0 (rates must be positive and finite)"
    )
