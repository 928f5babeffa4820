"""Maximum-likelihood fits of demographic models to observed spectra, with uncertainty.

:func:`fit` maximises :func:`~phasetrace.inference.loglik` over the free parameters with
L-BFGS-B (bounded quasi-Newton) in coordinates where every point is an admissible model
(log sizes and rates, ordered times as positive increments, proportions on a simplex:
:mod:`phasetrace.inference._transform`), with the exact gradient. Several starts, drawn
reproducibly from ``seed`` around the reference start, are independent work items on the
configured executor (``sequential``, ``loky``, ``spawn``, ``dask`` …, as for trace
recording); the best one wins (the first on ties), so the answer is the same, bit for
bit, whatever ran the starts.

Uncertainty is computed in the calling process at the best point:

- **observed information** (default): ``I = −∂²ℓ/∂z²`` by central differences of the
  exact gradient in the fitted coordinates ``z``; ``Cov(θ̂) ≈ J I⁻¹ Jᵀ`` with ``J =
  ∂θ/∂z`` (the delta method). Right when sites are independent (unlinked), the
  assumption of the Poisson random field.
- **Godambe information** (``bootstraps=``, spectra of block-bootstrap replicates of
  the genome): ``G = I V⁻¹ I`` with ``V`` the mean outer product of the scores of the
  replicates at θ̂; ``Cov(θ̂) ≈ J G⁻¹ Jᵀ``. Use it for sites from recombining
  chromosomes: linked sites are not independent, ``ℓ`` is then a composite likelihood and
  ``I⁻¹`` is too small (intervals too narrow).
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..settings import UNSET, get_executor_for, resolve
from . import _work
from ._data import Data, prepare
from ._transform import Transform, make_transform
from .likelihood import _check_mutation, evaluate, expected

__all__ = ["FitResult", "StartResult", "bootstrap_fits", "fit"]

logger = logging.getLogger("phasetrace.inference")

#: Each extra start moves every coordinate by up to this factor either way (in ``e^z``).
START_SPREAD = 3.0
#: Step of the central differences of the gradient in ``z`` (log scale: relative in θ).
HESSIAN_STEP = 1e-4
#: Show a progress bar automatically when the fit is expected to take this long.
PROGRESS_MIN_SECONDS = 3.0
#: Evaluations a start is assumed to need, for cost estimates (measured: 30-80 on IM).
EVALUATIONS_PER_START = 60


@dataclass(frozen=True)
class StartResult:
    """How one start went."""

    theta: np.ndarray
    loglik: float
    converged: bool
    n_evaluations: int
    n_iterations: int
    message: str


@dataclass(frozen=True, eq=False)
class FitResult:
    """The result of :func:`fit`.

    Attributes
    ----------
    theta : ndarray
        The full parameter vector at the best start (fixed parameters included), in the
        order of ``parameter_names``.
    parameter_names : tuple of str
    free : tuple of str
        The fitted parameters (the order of ``stderr`` and ``covariance``).
    loglik : float
        ``ℓ(θ̂)``.
    stderr : ndarray
        Standard errors of the free parameters (natural units; NaN when the information
        is not positive definite, see ``notes``).
    covariance : ndarray, shape (k, k)
        Their covariance (delta method from the fitted coordinates).
    converged : bool
        Whether the best start converged: L-BFGS-B reported it, or could not improve ``ℓ``
        any more with every free ``∂ℓ/∂z`` below ``1e-4`` or less than ``1e-6`` of ``ℓ``
        left to gain by its quasi-Newton model.
    n_evaluations : int
        Likelihood-and-gradient evaluations, over all starts (and two at the reference
        start: a check, and a timing for the executor's cost estimate).
    information : str
        ``"observed"`` or ``"godambe"``.
    starts : tuple of StartResult
        Every start, in the order they were drawn (start 0 is the reference start).
    best_start : int
    at_bounds : tuple of str
        Free parameters whose fitted coordinate sits on its box (the optimum may lie
        beyond: widen ``bounds``).
    notes : tuple of str
    """

    theta: np.ndarray
    parameter_names: tuple[str, ...]
    free: tuple[str, ...]
    loglik: float
    stderr: np.ndarray
    covariance: np.ndarray
    converged: bool
    n_evaluations: int
    information: str
    starts: tuple[StartResult, ...]
    best_start: int
    at_bounds: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    scaled_mutation: float | None = None
    _z: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def estimates(self) -> dict[str, tuple[float, float]]:
        """``{name: (estimate, standard error)}`` for the free parameters."""
        idx = [self.parameter_names.index(n) for n in self.free]
        return {
            n: (float(self.theta[i]), float(s))
            for n, i, s in zip(self.free, idx, self.stderr, strict=True)
        }

    def confidence_intervals(
        self, level: float = 0.95, *, scale: str = "natural"
    ) -> dict[str, tuple[float, float]]:
        """Wald intervals at ``level`` for the free parameters.

        ``scale="natural"``: ``θ̂ ± q·se``. ``scale="log"``: ``θ̂·exp(±q·se/θ̂)`` (the
        delta method on ``log θ``), which stays positive and suits sizes, times and rates
        known to a large relative error.
        """
        if not 0 < level < 1:
            raise InvalidParameterError(f"level must be in (0, 1), got {level!r}")
        if scale not in ("natural", "log"):
            raise InvalidParameterError(f"scale must be 'natural' or 'log', got {scale!r}")
        q = statistics.NormalDist().inv_cdf(0.5 + level / 2)
        if scale == "natural":
            return {n: (v - q * s, v + q * s) for n, (v, s) in self.estimates().items()}
        return {
            n: (v * math.exp(-q * s / v), v * math.exp(q * s / v))
            for n, (v, s) in self.estimates().items()
        }

    def __str__(self) -> str:
        rows = [("parameter", "estimate", "stderr")]
        rows += [(n, f"{v:.6g}", f"{s:.3g}") for n, (v, s) in self.estimates().items()]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]
        head = (
            f"loglik {self.loglik:.6f} ({self.information} information; best of "
            f"{len(self.starts)} start(s), converged={self.converged}, "
            f"{self.n_evaluations} evaluations)"
        )
        return "\n".join([head, *lines, *self.notes])


def _reference(model: Any, start: Any) -> np.ndarray:
    theta = np.array(model.theta, dtype=np.float64)
    names = tuple(model.parameter_names)
    if start is None:
        return theta
    if isinstance(start, Mapping):
        for name, value in start.items():
            if name not in names:
                raise InvalidParameterError(
                    f"start for unknown parameter {name!r}; the model's are {list(names)}"
                )
            theta[names.index(name)] = float(value)
        return theta
    arr = np.asarray(start, dtype=np.float64)
    if arr.shape != theta.shape:
        raise InvalidParameterError(
            f"start must be a mapping of names to values or a vector of {theta.size} "
            f"values ({', '.join(names)}); got shape {arr.shape}"
        )
    return arr.copy()


def _check_identifiable(model: Any, transform: Transform, u: float | None) -> None:
    if u is not None:
        return
    scale_kinds = ("size", "time", "migration")
    cols = [i for i, k in enumerate(model.plan.kinds) if k in scale_kinds]
    if cols and set(cols) <= set(transform.free):
        raise InvalidParameterError(
            "the multinomial likelihood (no scaled_mutation) does not change when every size "
            "and time is multiplied by c and every rate divided by c: with all of them free "
            "the fit has a flat direction. Fix one (leave it out of free) or give "
            "scaled_mutation (μ·L) for the Poisson likelihood"
        )


def _require_scipy() -> None:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'fitting needs scipy (its L-BFGS-B optimizer): pip install "phasetrace[inference]"'
        ) from exc


def _check_count(name: str, value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lowest:
        raise InvalidParameterError(f"{name} must be an int >= {lowest}, got {value!r}")
    return int(value)


def _draw_starts(transform: Transform, z_ref: np.ndarray, n_starts: int, seed: int):
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-1.0, 1.0, size=(n_starts - 1, z_ref.size)) * math.log(START_SPREAD)
    return [z_ref.copy(), *(transform.clip(z_ref + j) for j in jitter)]


def fit(
    model: Any,
    observed: Any,
    *,
    free: Sequence[str] | None = None,
    start: Any = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    scaled_mutation: float | None = None,
    folded: bool | None = None,
    n_starts: int = 1,
    seed: int = 0,
    bootstraps: Any = None,
    maxiter: int = 1000,
    strategy: Any = UNSET,
    n_workers: Any = UNSET,
    progress: Any = UNSET,
    timeout: Any = UNSET,
) -> FitResult:
    """Fit a demographic model to an observed SFS or joint SFS by maximum likelihood.

    Parameters
    ----------
    model : DemographicModel
        From :func:`phasetrace.models.from_demes`.
    observed : array_like, masked array, ObservedSpectrum or moments/dadi Spectrum
        As for :func:`~phasetrace.inference.loglik`.
    free : sequence of str, optional
        Names (from ``model.parameter_names``) to fit; all when None. The others keep
        their value in ``start`` (or ``model.theta``).
    start : mapping of str to float, or array_like, optional
        The reference start: values by name (the rest from ``model.theta``) or a full
        vector. Default ``model.theta``.
    bounds : mapping of str to (low, high), optional
        Box bounds in natural units, for sizes and rates, or for an event time alone
        among free times between fixed ones, or a proportion alone in its event.
        Without bounds a fitted coordinate may move a factor ``SPAN = 1e4`` either way
        from the reference start (see ``at_bounds`` in the result).
    scaled_mutation : float, optional
        ``μ·L`` for the Poisson likelihood; None for the multinomial one (then the overall
        scale cannot be fitted: leave one size or time fixed).
    folded : bool, optional
        As for :func:`~phasetrace.inference.loglik`.
    n_starts : int
        Starts: the reference start, then ``n_starts − 1`` drawn from ``seed`` by moving
        each fitted coordinate by a factor up to ``START_SPREAD = 3`` either way.
    seed : int
        Seed of the starts (``numpy.random.default_rng``).
    bootstraps : array_like, optional
        Spectra of block-bootstrap replicates, shape ``(R, *observed.shape)`` (for
        instance :func:`~phasetrace.inference.block_bootstrap`): standard errors from the
        Godambe information instead of the observed information.
    maxiter : int
        Iterations of L-BFGS-B per start.
    strategy, n_workers, progress, timeout
        Override the configured executor settings for this call (see
        :func:`phasetrace.configure`).

    Returns
    -------
    FitResult

    Raises
    ------
    InvalidParameterError
        Bad names, bounds, starts or data; a multinomial fit of every size, time and rate.
    TypeError
        ``model`` is not a demographic model.
    ImportError
        scipy is not installed (``pip install "phasetrace[inference]"``).

    Examples
    --------
    Fit the size of one population to the expected spectrum of 10,000 sites:

    >>> import demes, phasetrace as pt
    >>> g = demes.loads('''
    ... time_units: generations
    ... demes:
    ... - name: A
    ...   epochs: [{start_size: 1000}]
    ... ''')
    >>> model = pt.models.from_demes(g, samples={"A": 6})
    >>> u = 1e4 / pt.sfs(model).sum()                  # μ·L giving 10,000 sites
    >>> observed = u * pt.sfs(model)
    >>> result = pt.fit(model, observed, start={"N_A": 300.0}, scaled_mutation=u,
    ...                 strategy="sequential")
    >>> round(float(result.theta[0]), 3), result.converged
    (1000.0, True)
    """
    from ..demography.model import DemographicModel

    if not isinstance(model, DemographicModel):
        raise TypeError(
            "fit needs a demographic model (phasetrace.models.from_demes), got "
            f"{type(model).__name__}"
        )
    _require_scipy()
    n_starts = _check_count("n_starts", n_starts, 1)
    seed = _check_count("seed", seed, 0)
    maxiter = _check_count("maxiter", maxiter, 1)
    u = _check_mutation(scaled_mutation)
    data = prepare(model, observed, folded)
    reference = _reference(model, start)
    model.check(reference)
    transform = make_transform(model, reference, free, bounds)
    _check_identifiable(model, transform, u)
    replicates = None if bootstraps is None else _bootstrap_data(model, observed, data, bootstraps)
    settings = resolve(strategy=strategy, n_workers=n_workers, progress=progress, timeout=timeout)

    z_ref = transform.to_z(reference)
    first = evaluate(model, reference, data, u, True)  # builds the state space if needed
    t0 = time.perf_counter()
    evaluate(model, transform.theta(z_ref), data, u, True)
    per_eval = time.perf_counter() - t0  # for the executor's cost estimates and the bar
    if not np.isfinite(first[0]):
        raise InvalidParameterError(
            "the log-likelihood at the start is -inf: some observed class has expected value "
            "0 under the model (a spectrum entry the model cannot produce)"
        )
    spec = _work.spec_of(model)
    tasks = [
        _work.StartTask(spec, data, transform, u, z, maxiter)
        for z in _draw_starts(transform, z_ref, n_starts, seed)
    ]
    outcomes = _run(tasks, settings, per_eval * EVALUATIONS_PER_START, "fitting starts")
    starts = tuple(
        StartResult(o["theta"], o["loglik"], o["converged"], o["n_evaluations"],
                    o["n_iterations"], o["message"])
        for o in outcomes
    )  # fmt: skip
    scores = [s.loglik if np.isfinite(s.loglik) else -math.inf for s in starts]
    best = int(np.argmax(scores))
    z_best = outcomes[best]["z"]
    cov, notes = _covariance(model, data, u, transform, z_best, replicates)
    stderr = np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan))
    edge = np.isclose(z_best, transform.lower, rtol=0, atol=1e-8) | np.isclose(
        z_best, transform.upper, rtol=0, atol=1e-8
    )
    at_bounds = tuple(n for n, e in zip(transform.free_names, edge, strict=True) if e)
    if at_bounds:
        notes = (*notes, f"at the edge of the box: {', '.join(at_bounds)} (widen bounds)")
    return FitResult(
        theta=starts[best].theta,
        parameter_names=tuple(model.parameter_names),
        free=transform.free_names,
        loglik=starts[best].loglik,
        stderr=stderr,
        covariance=cov,
        converged=starts[best].converged,
        n_evaluations=int(sum(s.n_evaluations for s in starts)) + 2,
        information="observed" if replicates is None else "godambe",
        starts=starts,
        best_start=best,
        at_bounds=at_bounds,
        notes=tuple(notes),
        scaled_mutation=u,
        _z=z_best,
    )


def _run(tasks: list, settings, cost: float, what: str) -> list[dict]:
    """Run tasks (``run_start``) on the configured executor, in order, with a bar if asked."""
    from ..executors.base import WorkItem

    executor = get_executor_for(settings)
    items = [WorkItem(i, f"{what}-{i}", t, cost) for i, t in enumerate(tasks)]
    show = settings.progress
    if show is None:
        show = cost * len(tasks) >= PROGRESS_MIN_SECONDS and sys.stderr.isatty()
    if not show:
        return executor.map_items(_work.run_start, items, timeout=settings.timeout)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: say so, and fit without it
        logger.warning("progress bar requested but tqdm is not installed (pip install tqdm)")
        return executor.map_items(_work.run_start, items, timeout=settings.timeout)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    step = max(1, int(getattr(executor, "n_workers", 1) or 1))
    out: list[dict] = []
    with tqdm(total=len(items), desc=what, unit="start") as bar:
        for s in range(0, len(items), step):
            batch = [WorkItem(i, it.key, it.payload, it.cost)
                     for i, it in enumerate(items[s : s + step])]  # fmt: skip
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            out.extend(executor.map_items(_work.run_start, batch, timeout=left))
            bar.update(len(batch))
    return out


def information(
    model: Any, data: Data, u: float | None, transform: Transform, z: np.ndarray
) -> np.ndarray:
    """Observed information ``−∂²ℓ/∂z²`` by central differences of the exact gradient.

    All ``2k`` points go to the model as one batch.
    """
    k = z.size
    h = HESSIAN_STEP
    points = np.repeat(z[None, :], 2 * k, axis=0)
    points[np.arange(k), np.arange(k)] += h
    points[k + np.arange(k), np.arange(k)] -= h
    _, grad = evaluate(model, transform.theta(points), data, u, True)
    free = list(transform.free)
    gz = np.stack([transform.jacobian(points[i]).T @ grad[i, free] for i in range(2 * k)])
    hess = (gz[:k] - gz[k:]) / (2 * h)
    return -(hess + hess.T) / 2


def _scores(model, transform: Transform, z, u, replicates: np.ndarray, data: Data):
    """Scores ``∂ℓ/∂z`` of every replicate's counts at ``z``: shape ``(R, k)``."""
    theta = transform.theta(z)
    e, jac = expected(model, theta, data, True)
    c = replicates
    seen = c > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(seen, c / np.where(seen, e, 1.0), 0.0)
    # the multinomial's constant is each replicate's S_r / ΣE; the Poisson's is u
    w = w - ((c.sum(axis=1) / e.sum())[:, None] if u is None else u)
    grad = w @ jac  # (R, P)
    return grad[:, list(transform.free)] @ transform.jacobian(z)


def _covariance(model, data, u, transform, z, replicates):
    """Covariance of the free parameters (natural units) and notes on how it went."""
    notes: list[str] = []
    k = z.size
    info = information(model, data, u, transform, z)
    jac = transform.jacobian(z)
    eig = np.linalg.eigvalsh(info)
    if not eig.min() > 0:
        notes.append(
            "the observed information is not positive definite (smallest eigenvalue "
            f"{eig.min():.3g}): the optimum is flat or not reached in some direction; "
            "standard errors are NaN"
        )
        return np.full((k, k), np.nan), notes
    inv = np.linalg.inv(info)
    if replicates is not None:
        scores = _scores(model, transform, z, u, replicates, data)
        variability = scores.T @ scores / scores.shape[0]
        cov_z = inv @ variability @ inv
    else:
        cov_z = inv
    cov = jac @ cov_z @ jac.T
    return (cov + cov.T) / 2, notes


def _bootstrap_data(model, observed, data: Data, bootstraps) -> np.ndarray:
    """Counts of each replicate in the classes of ``data``: shape ``(R, K)``."""
    from ._data import _values_and_mask

    reps = np.asarray(bootstraps, dtype=np.float64)
    values, mask, _ = _values_and_mask(observed)
    if reps.ndim != values.ndim + 1 or reps.shape[1:] != values.shape:
        raise InvalidParameterError(
            f"bootstraps must have shape (R, *{values.shape}) (one spectrum per replicate, "
            f"in the layout of observed); got {reps.shape}"
        )
    if reps.shape[0] < 2:
        raise InvalidParameterError("bootstraps needs at least 2 replicates")
    out = np.empty((reps.shape[0], data.counts.size))
    for r in range(reps.shape[0]):
        rep = prepare(model, np.ma.MaskedArray(reps[r], mask=mask), data.folded)
        if not np.array_equal(rep.members, data.members):
            raise InvalidParameterError(
                f"bootstrap replicate {r} does not use the same entries as observed"
            )
        out[r] = rep.counts
    return out


def bootstrap_fits(
    result: FitResult,
    model: Any,
    replicates: Any,
    *,
    folded: bool | None = None,
    maxiter: int = 1000,
    strategy: Any = UNSET,
    n_workers: Any = UNSET,
    progress: Any = UNSET,
    timeout: Any = UNSET,
) -> np.ndarray:
    """Refit every bootstrap replicate from the fit's optimum: one work item each.

    The spread of the refitted values is a bootstrap estimate of the uncertainty that
    needs no curvature (nor normal approximation); it costs one fit per replicate where
    the Godambe information (``fit(..., bootstraps=)``) costs one gradient.

    Parameters
    ----------
    result : FitResult
        A fit of ``model`` (its free parameters, coordinates and likelihood are reused).
    model : DemographicModel
        The model that was fitted.
    replicates : array_like, shape (R, *observed.shape)
        Spectra of the replicates, in the layout of the fitted observed spectrum.
    folded, maxiter, strategy, n_workers, progress, timeout
        As for :func:`fit`.

    Returns
    -------
    ndarray, shape (R, n_params)
        The full θ fitted to each replicate.
    """
    _require_scipy()
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.ndim < 2:
        raise InvalidParameterError("replicates must have shape (R, *observed.shape)")
    reference = np.array(result.theta, dtype=np.float64)
    transform = make_transform(model, reference, list(result.free), None)
    spec = _work.spec_of(model)
    settings = resolve(strategy=strategy, n_workers=n_workers, progress=progress, timeout=timeout)
    z = transform.to_z(reference)
    tasks = []
    for rep in reps:
        data = prepare(model, rep, folded)
        tasks.append(_work.StartTask(spec, data, transform, result.scaled_mutation, z, maxiter))
    outcomes = _run(tasks, settings, 0.0, "bootstrap fits")
    return np.stack([o["theta"] for o in outcomes])
