"""What a worker runs for a fit: one start (or one bootstrap refit), from plain data.

A work item carries a :class:`ModelSpec` (the model's plan: plain arrays and tuples read
from demes, the sample, the tolerance), the prepared data, the transform and a start.
Models hold compiled state and are never pickled: each process rebuilds a model once
from its spec and keeps it (:data:`KEPT_MODELS`, least recently used out). In the
calling process the caller's own model is used (registered by :func:`spec_of`), so
``sequential`` runs rebuild nothing. A rebuilt model computes bit for bit what the
caller's does, so the answer does not depend on where a start ran.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._data import Data
from ._transform import Transform
from .likelihood import evaluate

__all__ = ["ModelSpec", "StartTask", "model_for", "run_start", "spec_of"]

#: Rebuilt models a process keeps (a fit needs one; a few cover interleaved fits).
KEPT_MODELS = 4
#: The optimizer's moving box: a factor this far either way from where a stage starts.
STAGE_FACTOR = 10.0
#: Stages (box moves) a start may take.
MAX_STAGES = 20
#: L-BFGS-B stops when ``ℓ`` improves by less than ``FTOL·max(|ℓ|, 1)`` in a step, or
#: every component of the projected gradient ``∂ℓ/∂z`` is below ``GTOL``.
FTOL = 1e-13
GTOL = 1e-8
#: A start that stops otherwise (the line search finds no more progress) has converged
#: when no component of ``∂ℓ/∂z`` off the bounds exceeds this: ``ℓ`` is then within
#: ~``GRADIENT_ACCEPT²/information`` of its maximum, far below any statistical scale.
GRADIENT_ACCEPT = 1e-4
#: … or when the quasi-Newton model says ``ℓ`` can gain less than this by going on.
GAIN_ACCEPT = 1e-6

_lock = threading.Lock()
_rebuilt: OrderedDict[str, Any] = OrderedDict()
_given: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """How to rebuild a demographic model in another process (plain data)."""

    key: str
    plan: Any
    samples: tuple[tuple[str, int], ...]
    tol: float
    max_states: int | None


@dataclass(frozen=True, eq=False)
class StartTask:
    """One optimisation: a model, data, the coordinates and where to start."""

    spec: ModelSpec
    data: Data
    transform: Transform
    scaled_mutation: float | None
    z0: np.ndarray
    maxiter: int


def spec_of(model: Any) -> ModelSpec:
    """The spec of a :class:`~phasetrace.demography.DemographicModel`; registers the model
    so that this process uses it instead of a rebuilt copy."""
    samples = tuple((str(k), int(v)) for k, v in model.samples.items())
    max_states = model.max_states
    blob = pickle.dumps((model.plan, samples, float(model.tol), max_states), protocol=5)
    key = hashlib.sha256(blob).hexdigest()
    with _lock:
        _given[key] = model
    return ModelSpec(key, model.plan, samples, float(model.tol), max_states)


def model_for(spec: ModelSpec) -> Any:
    """The model of ``spec`` in this process: the caller's, a kept one, or a new one."""
    with _lock:
        model = _given.get(spec.key)
        if model is None:
            model = _rebuilt.get(spec.key)
            if model is not None:
                _rebuilt.move_to_end(spec.key)
        if model is not None:
            return model
    from ..demography.model import DemographicModel

    model = DemographicModel(
        spec.plan, dict(spec.samples), tol=spec.tol, max_states=spec.max_states
    )
    with _lock:
        _rebuilt[spec.key] = model
        while len(_rebuilt) > KEPT_MODELS:
            _rebuilt.popitem(last=False)
    return model


def objective(model: Any, task: StartTask):
    """``z ↦ (−ℓ, −∇_z ℓ)``: the negative log-likelihood and its gradient in ``z``.

    Unscaled, so that the optimizer's tolerances are on ``ℓ`` itself: a change of ``ℓ``
    far below 1 is far below the statistical uncertainty, whatever the data size.
    """
    transform = task.transform
    free = list(transform.free)
    count = [0]

    def fun(z: np.ndarray):
        count[0] += 1
        theta = transform.theta(z)
        try:
            value, grad = evaluate(model, theta, task.data, task.scaled_mutation, True)
        except InvalidParameterError:  # only by rounding at the edge of the box
            return math.inf, np.zeros_like(z)
        if not np.isfinite(value):
            return math.inf, np.zeros_like(z)
        gz = transform.jacobian(z).T @ grad[free]
        return -float(value), -gz

    return fun, count


def run_start(task: StartTask) -> dict[str, Any]:
    """Run L-BFGS-B from ``task.z0``; return the end point and how it went (plain data).

    The optimizer moves inside a box of ``±log(STAGE_FACTOR)`` around its starting point
    (within the transform's box); when it stops on an edge of that box, the box is moved
    there and the optimizer restarted. A line search of L-BFGS-B may otherwise try a point
    a factor ``10⁴`` away on its first step, where the model can be very costly (a tiny
    population over a long epoch needs ~``rate × time`` uniformization steps) and the
    likelihood is useless anyway.
    """
    from threadpoolctl import threadpool_limits

    # The arrays are small: a second BLAS thread only adds synchronisation (measured 1.7×
    # slower in-process on 2 cores); pool workers run with one thread already.
    with threadpool_limits(limits=1):
        return _run_start(task)


def _run_start(task: StartTask) -> dict[str, Any]:
    import scipy.optimize

    model = model_for(task.spec)
    fun, count = objective(model, task)
    lower, upper = task.transform.lower, task.transform.upper
    z = np.asarray(task.z0, dtype=np.float64)
    width = math.log(STAGE_FACTOR)
    iterations = 0
    for _ in range(MAX_STAGES):
        lo, hi = np.maximum(lower, z - width), np.minimum(upper, z + width)
        res = scipy.optimize.minimize(
            fun,
            np.clip(z, lo, hi),
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip(lo.tolist(), hi.tolist(), strict=True)),
            options={
                "maxiter": max(1, task.maxiter - iterations),
                "ftol": FTOL,
                "gtol": GTOL,
                "maxcor": 20,
            },
        )
        z = np.asarray(res.x, dtype=np.float64)
        iterations += int(res.nit)
        inner_edge = ((np.abs(z - lo) < 1e-9) & (lo > lower)) | (
            (np.abs(z - hi) < 1e-9) & (hi < upper)
        )
        if not inner_edge.any() or iterations >= task.maxiter:
            break
    # A line search that cannot improve ℓ any more (it is at the noise of the model's
    # tolerance) ends "abnormally" at the optimum: accept it when the gradient, or the
    # quasi-Newton estimate of what is left to gain, says so.
    grad = np.asarray(res.jac, dtype=np.float64)
    held = ((np.abs(z - lower) < 1e-9) & (grad > 0)) | ((np.abs(z - upper) < 1e-9) & (grad < 0))
    grad = np.where(held, 0.0, grad)
    flat = bool(np.all(np.abs(grad) <= GRADIENT_ACCEPT))
    try:
        left = 0.5 * float(grad @ res.hess_inv.matvec(grad))
    except (AttributeError, ValueError):
        left = math.inf
    flat = flat or 0 <= left <= GAIN_ACCEPT
    converged = (bool(res.success) or flat) and not inner_edge.any()
    theta = task.transform.theta(z)
    value = evaluate(model, theta, task.data, task.scaled_mutation, False)
    return {
        "z": z,
        "theta": theta,
        "loglik": float(value),
        "converged": converged,
        "n_evaluations": int(count[0]),
        "n_iterations": iterations,
        "message": str(res.message),
    }
