"""The coordinates a fit moves in: unconstrained ``z`` ↔ admissible θ.

A fit optimises over ``z`` (one coordinate per free parameter), and every ``z`` in the
box maps to an admissible θ, so the optimizer never meets a refused θ:

- sizes and migration rates: ``θ = e^z`` (log space);
- event times, in maximal runs of consecutive free times between fixed ones (``A`` below,
  ``B`` above; ``A = 0`` and ``B = ∞`` at the ends): with ``B = ∞`` as positive
  increments ``T_j = A + Σ_{i≤j} e^{z_i}``; with ``B`` finite as the cumulative weights
  of a softmax, ``T_j = A + (B − A)·Σ_{i≤j} w_i`` with ``w = softmax(z_1 … z_m, 0)``, so
  their order never changes;
- pulse and ancestry proportions of one event: ``p_j = R·w_j`` with the same softmax
  (``R``: 1 less the fixed proportions of that event; one free proportion is a logit).

``bounds`` given by the user (natural units) become the box of ``z`` for sizes and rates,
and the interval ``(max(A, lo), min(B, hi))`` for a time alone in its run or a proportion
alone in its event. Everything else gets a box of ``±log(SPAN)`` around the reference
start's ``z``.

Everything here is plain data (picklable) and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["SPAN", "Transform", "make_transform"]

#: Without bounds, a coordinate may move this factor either way from the reference start
#: (in ``e^z``): wide enough for any sensible fit, narrow enough that θ stays finite.
SPAN = 1e4


@dataclass(frozen=True)
class _Segment:
    kind: str  # "log", "chain", "cumsimplex", "simplex"
    free: tuple[int, ...]  # positions in the free vector (= positions in z)
    cols: tuple[int, ...]  # θ columns
    lo: float = 0.0
    hi: float = math.inf


@dataclass(frozen=True, eq=False)
class Transform:
    """Map between ``z`` (what the optimizer moves) and the full θ.

    Attributes
    ----------
    names : tuple of str
        Every parameter name of the model.
    free : tuple of int
        θ columns of the free parameters, in the order of ``z``.
    base : ndarray
        The full θ the fixed parameters are taken from.
    segments : tuple
        How each group of coordinates maps (module docstring).
    lower, upper : ndarray
        The box of ``z``.
    """

    names: tuple[str, ...]
    free: tuple[int, ...]
    base: np.ndarray
    segments: tuple[_Segment, ...]
    lower: np.ndarray
    upper: np.ndarray

    @property
    def free_names(self) -> tuple[str, ...]:
        return tuple(self.names[c] for c in self.free)

    def theta(self, z: np.ndarray) -> np.ndarray:
        """The full θ at ``z`` (shape ``(k,)`` or ``(B, k)``)."""
        z = np.asarray(z, dtype=np.float64)
        lead = z.shape[:-1]
        out = np.broadcast_to(self.base, (*lead, self.base.size)).copy()
        for seg in self.segments:
            zs = z[..., list(seg.free)]
            out[..., list(seg.cols)] = _forward(seg, zs)
        return out

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        """``∂θ_free/∂z``, shape ``(k, k)`` (rows: free parameters in ``z`` order)."""
        z = np.asarray(z, dtype=np.float64)
        k = len(self.free)
        jac = np.zeros((k, k))
        for seg in self.segments:
            idx = list(seg.free)
            jac[np.ix_(idx, idx)] = _jacobian(seg, z[idx])
        return jac

    def to_z(self, theta: np.ndarray) -> np.ndarray:
        """The ``z`` of a full θ (whose free values must be admissible)."""
        theta = np.asarray(theta, dtype=np.float64)
        z = np.zeros(len(self.free))
        for seg in self.segments:
            z[list(seg.free)] = _inverse(seg, theta[list(seg.cols)], self.names)
        return z

    def clip(self, z: np.ndarray) -> np.ndarray:
        return np.clip(z, self.lower, self.upper)


def _softmax(zs: np.ndarray) -> np.ndarray:
    ext = np.concatenate([zs, np.zeros((*zs.shape[:-1], 1))], axis=-1)
    ext = ext - ext.max(axis=-1, keepdims=True)
    w = np.exp(ext)
    return w / w.sum(axis=-1, keepdims=True)


def _forward(seg: _Segment, zs: np.ndarray) -> np.ndarray:
    if seg.kind == "log":
        return np.exp(zs)
    if seg.kind == "chain":
        return seg.lo + np.cumsum(np.exp(zs), axis=-1)
    w = _softmax(zs)[..., :-1]
    if seg.kind == "cumsimplex":
        return seg.lo + (seg.hi - seg.lo) * np.cumsum(w, axis=-1)
    return seg.lo + (seg.hi - seg.lo) * w  # simplex


def _jacobian(seg: _Segment, zs: np.ndarray) -> np.ndarray:
    m = zs.size
    if seg.kind == "log":
        return np.diag(np.exp(zs))
    if seg.kind == "chain":
        return np.tril(np.broadcast_to(np.exp(zs), (m, m)))
    w = _softmax(zs)[:-1]
    # ∂w_j/∂z_i = w_j (δ_ij − w_i)
    dw = np.diag(w) - np.outer(w, w)
    if seg.kind == "cumsimplex":
        dw = np.cumsum(dw, axis=0)
    return (seg.hi - seg.lo) * dw


def _inverse(seg: _Segment, values: np.ndarray, names: Sequence[str]) -> np.ndarray:
    def refuse(why: str) -> None:
        listed = ", ".join(
            f"{names[c]} = {float(v)!r}" for c, v in zip(seg.cols, values, strict=True)
        )
        raise InvalidParameterError(f"{listed}: {why}")

    if seg.kind == "log":
        if not (values > 0).all():
            refuse("fitted in log space, so the start must be positive (pass start=...)")
        return np.log(values)
    if seg.kind == "chain":
        gaps = np.diff(np.concatenate([[seg.lo], values]))
        if not (gaps > 0).all():
            refuse(f"event times must increase from {seg.lo!r} (the order is fixed)")
        return np.log(gaps)
    scaled = (values - seg.lo) / (seg.hi - seg.lo)
    w = np.diff(np.concatenate([[0.0], scaled])) if seg.kind == "cumsimplex" else scaled
    rest = 1.0 - w.sum()
    if not ((w > 0).all() and rest > 0):
        where = f"strictly inside ({seg.lo!r}, {seg.hi!r})"
        what = "in increasing order " if seg.kind == "cumsimplex" else ""
        refuse(f"the start must lie {what}{where}")
    return np.log(w) - math.log(rest)


def make_transform(
    model: Any,
    reference: np.ndarray,
    free: Sequence[str] | None,
    bounds: Mapping[str, tuple[float, float]] | None,
) -> Transform:
    """The transform of a fit of ``model``'s parameters ``free`` from ``reference``.

    Raises
    ------
    InvalidParameterError
        Unknown names, bounds that are not ``lo < hi`` or cut into a run of several free
        times, a reference θ the transform cannot represent (a zero rate to fit in log
        space, times out of order).
    """
    plan = model.plan
    names = tuple(model.parameter_names)
    kinds = tuple(plan.kinds)
    theta = np.asarray(reference, dtype=np.float64)
    if free is None:
        free_cols = list(range(len(names)))
    else:
        if isinstance(free, str):
            free = [free]
        unknown = [f for f in free if f not in names]
        if unknown:
            raise InvalidParameterError(
                f"unknown parameter(s) {unknown} in free; the model's are {list(names)}"
            )
        if len(set(free)) != len(free):
            raise InvalidParameterError(f"free names a parameter twice: {list(free)}")
        free_cols = sorted(names.index(f) for f in free)
    if not free_cols:
        raise InvalidParameterError("free is empty: nothing to fit")
    user = _check_bounds(bounds or {}, names, free_cols)
    free_set = set(free_cols)
    segments: list[_Segment] = []
    handled: set[int] = set()

    # Times, in runs of consecutive free ones.
    times = list(plan.time_parameters)
    run: list[int] = []
    for col in [*times, None]:
        if col is not None and col in free_set:
            run.append(col)
            continue
        if run:
            first = times.index(run[0])
            lo = float(theta[times[first - 1]]) if first > 0 else 0.0
            hi = float(theta[col]) if col is not None else math.inf
            if any(c in user for c in run):
                if len(run) > 1:
                    listed = ", ".join(names[c] for c in run if c in user)
                    raise InvalidParameterError(
                        f"bounds on {listed}: bounds on an event time are supported when it is "
                        "the only free time between fixed ones (the order of several free times "
                        "is kept by their parameterisation, which box bounds would break)"
                    )
                ulo, uhi = user[run[0]]
                lo, hi = max(lo, ulo), min(hi, uhi)
            kind = "chain" if math.isinf(hi) else "cumsimplex"
            segments.append(_Segment(kind, (), tuple(run), lo, hi))
            handled.update(run)
            run = []

    # Proportions, per event.
    for group in plan.proportion_groups:
        cols = [c for c in group if c in free_set]
        if not cols:
            continue
        fixed = [c for c in group if c not in free_set]
        room = 1.0 - float(sum(theta[c] for c in fixed))
        if room <= 0:
            listed = ", ".join(f"{names[c]} = {theta[c]!r}" for c in fixed)
            raise InvalidParameterError(
                f"fixed proportions {listed} leave no room for {names[cols[0]]}"
            )
        lo, hi = 0.0, room
        if any(c in user for c in cols):
            if len(cols) > 1:
                raise InvalidParameterError(
                    f"bounds on {', '.join(names[c] for c in cols if c in user)}: bounds on a "
                    "proportion are supported when it is the only free one of its event"
                )
            ulo, uhi = user[cols[0]]
            lo, hi = max(lo, ulo), min(hi, uhi)
        segments.append(_Segment("simplex", (), tuple(cols), lo, hi))
        handled.update(cols)

    # Everything else positive: sizes, migration rates.
    for c in free_cols:
        if c in handled:
            continue
        if kinds[c] not in ("size", "migration"):
            raise InvalidParameterError(
                f"{names[c]} is a {kinds[c]} parameter that this fit cannot place"
            )
        segments.append(_Segment("log", (), (c,)))

    # Number the coordinates in the order of free_cols.
    position = {c: i for i, c in enumerate(free_cols)}
    segments = [
        _Segment(s.kind, tuple(position[c] for c in s.cols), s.cols, s.lo, s.hi) for s in segments
    ]
    k = len(free_cols)
    partial = Transform(
        names, tuple(free_cols), theta.copy(), tuple(segments), np.full(k, -np.inf),
        np.full(k, np.inf),
    )  # fmt: skip
    z0 = partial.to_z(theta)
    span = math.log(SPAN)
    lower, upper = z0 - span, z0 + span
    for seg in segments:
        if seg.kind == "log":
            (c,), (i,) = seg.cols, seg.free
            if c in user:
                if user[c][0] <= 0:
                    raise InvalidParameterError(
                        f"bounds[{names[c]!r}] = {user[c]}: {names[c]} is fitted in log space, "
                        "so its lower bound must be positive"
                    )
                lower[i], upper[i] = math.log(user[c][0]), math.log(user[c][1])
                if not lower[i] <= z0[i] <= upper[i]:
                    raise InvalidParameterError(
                        f"{names[c]} = {theta[c]!r} at the start is outside its bounds {user[c]}"
                    )
    base = theta.copy()
    base.setflags(write=False)
    return Transform(names, tuple(free_cols), base, tuple(segments), lower, upper)


def _check_bounds(
    bounds: Mapping[str, Any], names: tuple[str, ...], free_cols: list[int]
) -> dict[int, tuple[float, float]]:
    if not isinstance(bounds, Mapping):
        raise InvalidParameterError(
            f"bounds must map parameter names to (low, high), got {type(bounds).__name__}"
        )
    out = {}
    for name, pair in bounds.items():
        if name not in names:
            raise InvalidParameterError(
                f"bounds for unknown parameter {name!r}; the model's are {list(names)}"
            )
        col = names.index(name)
        if col not in free_cols:
            raise InvalidParameterError(f"bounds for {name!r}, which is not free")
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"bounds[{name!r}] must be a pair (low, high), got {pair!r}"
            ) from None
        if not (lo < hi) or math.isnan(lo) or math.isnan(hi):
            raise InvalidParameterError(f"bounds[{name!r}] = {pair!r}: need low < high")
        out[col] = (lo, hi)
    return out
