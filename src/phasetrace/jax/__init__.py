"""JAX evaluation of traces: moment functions for ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Enable float64 first, once, at the start of the program (see *Precision* below)::

    import jax
    jax.config.update("jax_enable_x64", True)

>>> import jax, jax.numpy as jnp, numpy as np, phasetrace as pt
>>> from phasetrace.jax import moments_fn
>>> f = moments_fn(pt.record_trace(pt.models.kingman(4)), k=2)
>>> f(np.array([1.0])).round(6).tolist()       # E[T], E[T²] at θ = 1
[1.5, 3.388889]
>>> with jax.enable_x64(True):                 # here: instead of the global switch
...     float(jax.jit(jax.grad(lambda t: f(t)[0]))(jnp.array([2.0]))[0])   # dE[T]/dθ = -E/θ
-0.375

Recording traces from inside JAX programs (``record_traces_callback``, ``GraphStore``: one
host call per vmapped batch, handed to the configured executor) is documented in
:mod:`phasetrace.jax._bridge`; its names are re-exported here.

How it evaluates
----------------
Two methods, picked by the backend (``moments_fn(..., method=...)``):

``"kernel"`` (the default on CPU)
    A host callback into the compiled replay kernel (:mod:`phasetrace.jax._kernel`):
    ``jax.vmap`` hands a whole batch to one kernel call, ``jax.grad`` uses the kernel's
    adjoint (moments and Jacobian in one call; ``Jᵀg`` in the backward rule). Results
    are bitwise those of :meth:`Trace.moments`.
``"native"`` (the default on accelerators)
    The trace lowered once to a ``lax.scan`` over fixed-width steps that XLA compiles
    for the device (:mod:`phasetrace.jax._native`); gradients in forward or reverse mode
    (``gradient=``). Results agree with :meth:`Trace.moments` to about 1e-15 relative
    (sums are added in a tree order). Traces with solve blocks (large strongly connected
    components factorised at evaluation time, see :meth:`Trace.summary`) cannot be
    lowered: ``method="native"`` refuses them, and ``"auto"`` uses the kernel for them
    on every backend (a host callback).

Only reverse-mode transformations are defined (``jax.grad``, ``jax.vjp``,
``jax.jacrev``); ``jax.jvp`` and ``jax.jacfwd`` raise, as for every ``custom_vjp`` function.

Precision
---------
Call ``jax.config.update("jax_enable_x64", True)`` at the start of the program, before
creating any JAX array. Without it, JAX rounds θ to float32 (about 7 significant digits:
1.3 becomes 1.2999999523) wherever it enters *your* ``jax.jit``, ``jax.grad`` or
``jax.vmap``, or is made with ``jnp.array``, before phasetrace sees it, and runs *your*
further operations on the results in float32: a fit then stops at the float32 value
nearest its optimum. A function from :func:`moments_fn` that receives θ as float32 warns
once (:class:`~phasetrace.errors.PrecisionWarning`). Inside, everything is computed in
float64 (in a local ``jax.enable_x64(True)`` context, leaving the global setting alone)
and results are float64 arrays either way.

Invalid parameters
------------------
An edge whose rate is exactly 0 at θ is allowed and contributes nothing (so θ may sit on
a boundary such as migration rate 0; the kernel method then gives the moments of the
chain that remains, exactly as :meth:`Trace.moments`). A θ of the wrong shape raises
:class:`~phasetrace.errors.InvalidParameterError` when the function is called or traced.
What cannot raise inside ``jax.jit`` gives NaN instead, for that θ only (other θ of a
batch are unaffected):

- a rate that is negative or not finite;
- a vertex that is reached at θ but is never absorbed (infinite moments);
- results that overflow float64 (a rate so small that ``1/rate`` is ``inf``);
- the gradient in a parameter whose zero rate leads to states that are not absorbed for
  sure (the moments jump there: no derivative).

Called eagerly (outside any JAX transformation) with a concrete θ, the function raises
``InvalidParameterError`` instead, with the message :meth:`Trace.moments` gives. The
native method may also give NaN at a θ where a rate is 0 and part of the graph that
cannot be reached has no way out (for example ``two_island`` at migration rate 0: its
states with lineages in both demes); the kernel method evaluates those θ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._args import (
    ZeroRatePlan,
    as_k,
    as_reward_matrix,
    edge_rates,
    not_finite_error,
    transient_rewards,
    zero_rate_plan,
)
from ..errors import InvalidParameterError, PrecisionWarning
from ..ops import UNIT_SOLVE
from ._bridge import (
    BridgeStats,
    GraphStore,
    RecordingFailure,
    default_store,
    errors_raised,
    get_trace,
    raise_pending,
    record_traces_callback,
    register_graph,
)
from ._distribution import distribution_fn
from ._lower import refuse_solve_blocks
from ._native import FORWARD_MODE_MAX, _Evaluator

__all__ = [
    "BridgeStats",
    "GraphStore",
    "PrecisionWarning",
    "RecordingFailure",
    "default_store",
    "distribution_fn",
    "errors_raised",
    "get_trace",
    "model_function",
    "moments_fn",
    "raise_pending",
    "record_traces_callback",
    "register_graph",
]

METHODS = ("auto", "kernel", "native")


# -- public API ---------------------------------------------------------------------------------
def moments_fn(
    trace,
    k: int = 1,
    *,
    rewards=None,
    batched: bool = False,
    method: str = "auto",
    chunk: int | None = None,
    gradient: str = "auto",
) -> Callable:
    """A JAX function of θ returning ``[E[Y], E[Y²], …, E[Y^k]]`` for a recorded trace.

    Parameters
    ----------
    trace : Trace
        From :func:`phasetrace.record_trace` or :func:`phasetrace.compute_trace`.
    k : int
        Highest moment.
    rewards : None, callable, array_like (n_vertices,) or (R, n_vertices), or list of callables
        Reward rate per vertex in ``trace.states`` order (or a function of the state),
        fixed when the function is built (``Y = T`` without). Several reward vectors
        (``method="kernel"`` only) give an output axis of length R before the moments.
    batched : bool
        ``False``: the function takes one θ of shape ``(n_params,)`` and returns shape
        ``(k,)``; it works under ``jax.jit``, ``jax.vmap`` (one kernel call, or the native
        batched code, per vmapped batch) and ``jax.grad``. ``True``: it takes ``thetas`` of
        shape ``(B, n_params)`` and returns ``(B, k)``.
    method : {"auto", "kernel", "native"}
        ``"kernel"``: a host callback into the compiled kernel (CPU). ``"native"``: the
        trace lowered to XLA operations (runs on any device; not for traces with solve
        blocks). ``"auto"``: the kernel when JAX's default backend is the CPU or the trace
        has solve blocks, else native. ``f.method`` says which was used.
    chunk : int, optional
        Native method: θ per chunk of a batch (default 128 to 512).
    gradient : {"auto", "forward", "reverse"}
        Native method: how ``jax.grad`` differentiates (``"auto"``: forward for up to
        :data:`FORWARD_MODE_MAX` parameters). The kernel always uses its adjoint.

    Returns
    -------
    callable
        ``f(theta)`` returning a float64 ``jax.Array``. Under JAX transformations NaN
        marks a θ that cannot be evaluated (see *Invalid parameters* in
        :mod:`phasetrace.jax`); an eager call raises instead.

    Raises
    ------
    InvalidParameterError
        For a bad ``k``, ``rewards``, ``method`` or ``gradient`` here, and for
        ``method="native"`` on a trace with solve blocks; for a θ of the wrong shape when
        called; for a θ that cannot be evaluated when called eagerly.

    Warns
    -----
    PrecisionWarning
        Once per function, when θ arrives as float32 (``jax_enable_x64`` is off).

    Notes
    -----
    The kernel is compiled once per installation (numba's disk cache), the native program
    lowered on the first call (numpy; about 0.2 s for two_island(50)) and then compiled by
    XLA once per input shape (about 0.3–0.6 s).

    Examples
    --------
    >>> import jax, numpy as np, phasetrace as pt
    >>> trace = pt.record_trace(pt.models.two_island(3))
    >>> f = moments_fn(trace, k=2)
    >>> theta = np.array([1.0, 0.5])
    >>> np.allclose(f(theta), trace.moments(theta, k=2), rtol=1e-12, atol=0)
    True
    >>> with jax.enable_x64(True):  # or jax.config.update("jax_enable_x64", True) at start
    ...     jax.grad(lambda t: f(t)[0])(theta).shape
    (2,)
    >>> with jax.enable_x64(True):
    ...     jax.vmap(f)(np.array([[1.0, 0.5], [2.0, 0.5]])).shape
    (2, 2)
    >>> g = moments_fn(trace, k=1, batched=True)
    >>> g(np.array([[1.0, 0.5], [2.0, 0.5]])).shape
    (2, 1)
    """
    k = as_k(k)
    if _is_time_model(trace):
        return _model_moments_fn(trace, k, rewards, batched, method)
    if chunk is not None and (not isinstance(chunk, int | np.integer) or chunk < 1):
        raise InvalidParameterError(f"chunk must be a positive int, got {chunk!r}")
    if gradient not in ("auto", "forward", "reverse"):
        raise InvalidParameterError(
            f"gradient must be 'auto', 'forward' or 'reverse', got {gradient!r}"
        )
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {METHODS}, got {method!r}")
    has_blocks = bool((trace.arrays["unit_kind"] == UNIT_SOLVE).any())
    if method == "auto":
        method = "kernel" if has_blocks or jax.default_backend() == "cpu" else "native"
    if method == "native" and has_blocks:
        refuse_solve_blocks(trace.arrays)
    rew, multi = as_reward_matrix(trace, rewards)
    if method == "kernel":
        from ._kernel import KernelFunction

        ev = KernelFunction(trace, k, transient_rewards(trace, rew), multi)
        single = many = jax.jit(ev.fn)
        lowered = None
    else:
        if multi:
            raise InvalidParameterError("method='native' takes one reward vector; use 'kernel'")
        if gradient == "auto":
            gradient = "forward" if trace.n_params <= FORWARD_MODE_MAX else "reverse"
        ev = _Evaluator(trace, k, rew[0], None if chunk is None else int(chunk), gradient)
        single, many = jax.jit(ev.single), jax.jit(ev.batched)
        lowered = lambda: ev.low  # noqa: E731
    f = _wrap(
        single,
        many,
        trace.n_params,
        batched,
        lambda theta: _check_concrete(trace, theta),
        lambda theta, out: _check_finite(trace, theta, out, method),
    )
    f.__doc__ = f"E[Y^j], j = 1..{k}, of a {trace!r} ({'batched' if batched else 'one θ'})."
    f.k = k
    f.method = method
    f.lowered = lowered
    return f


def _is_time_model(obj) -> bool:
    from ..demography.epochs import TimeModel

    return isinstance(obj, TimeModel)


def _model_moments_fn(model, k: int, rewards, batched: bool, method: str) -> Callable:
    """:func:`moments_fn` of a time-inhomogeneous model: a host callback (CPU)."""
    if method not in ("auto", "kernel"):
        raise InvalidParameterError(
            f"method={method!r}: a time-inhomogeneous model is evaluated on the host "
            "(method='kernel'); it has no native lowering"
        )
    rew, multi = as_reward_matrix(model, rewards)

    def evaluate(th, gradient):
        mom, jac = model._evaluate(th, rew, k, gradient)
        if not multi:
            mom, jac = mom[:, 0], (None if jac is None else jac[:, 0])
        return (mom, jac) if gradient else mom

    tail = (rew.shape[0], k) if multi else (k,)
    f = model_function(model, evaluate, tail, batched=batched)
    f.k = k
    f.__doc__ = (
        f"E[Y^j], j = 1..{k}, of a time-inhomogeneous model ({'batched' if batched else 'one θ'})."
    )
    return f


def model_function(model, evaluate, tail: tuple[int, ...], *, batched: bool = False) -> Callable:
    """A JAX function of θ from a host computation on a time-inhomogeneous model.

    ``evaluate(thetas (N, P), gradient)`` returns values ``(N, *tail)`` (with
    ``gradient``: and the Jacobian ``(N, *tail, P)``). The result works under
    ``jax.jit``, ``jax.vmap`` (one host call per batch) and ``jax.grad`` (the Jacobian
    in the backward rule); eager calls with a concrete θ raise as the model does.
    """
    from ._kernel import ModelFunction

    host = ModelFunction(evaluate, model.n_params, tail)
    fn = jax.jit(host.fn)

    def check(theta):
        model.check(np.asarray(theta, dtype=np.float64).reshape(-1, model.n_params))

    def finite(theta, out):
        if not np.isfinite(np.asarray(out)).all():  # raise the model's own message
            evaluate(np.asarray(theta, dtype=np.float64).reshape(-1, model.n_params), False)
            raise InvalidParameterError("results are not finite at this θ")

    f = _wrap(fn, fn, model.n_params, batched, check, finite)
    f.method = "kernel"
    f.lowered = None
    return f


def _wrap(single, many, n_params: int, batched: bool, check_concrete, check_finite) -> Callable:
    """The user-facing function around jitted ``single``/``many``: shape checks, the
    float32 warning, and errors instead of NaN for concrete θ."""
    warned = False

    def call(fn, theta):
        nonlocal warned
        if not warned and _low_precision(theta):
            warned = True
            warnings.warn(_PRECISION_MESSAGE, PrecisionWarning, stacklevel=3)
        concrete = not isinstance(theta, jax.core.Tracer)
        if concrete:
            check_concrete(theta)
        with jax.enable_x64(True):
            out = fn(jnp.asarray(theta, dtype=jnp.float64))
        if concrete:
            check_finite(theta, out)
        return out

    if batched:

        def f(thetas):
            shape = np.shape(thetas)
            if len(shape) != 2 or shape[1] != n_params:
                raise InvalidParameterError(
                    f"thetas must have shape (B, {n_params}); got {tuple(shape)}"
                )
            return call(many, thetas)

    else:

        def f(theta):
            shape = np.shape(theta)
            if tuple(shape) != (n_params,):
                raise InvalidParameterError(
                    f"theta must have shape ({n_params},); got {tuple(shape)} "
                    "(use jax.vmap or batched=True for several θ)"
                )
            return call(single, theta)

    f.n_params = n_params
    f.batched = batched
    return f


_PRECISION_MESSAGE = (
    "phasetrace.jax: theta arrived as float32, so JAX has already rounded it to about 7 "
    "significant digits (1.3 becomes 1.2999999523) and a fit cannot get closer than that. "
    'Call jax.config.update("jax_enable_x64", True) at the start of the program, before '
    "creating any JAX array (phasetrace computes in float64 either way)."
)


def _low_precision(theta) -> bool:
    """Whether θ is a non-empty floating-point array of less than 64 bits (a tracer
    included)."""
    dtype = getattr(theta, "dtype", None)
    if dtype is None or not np.prod(np.shape(theta)):
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating)) and jnp.finfo(dtype).bits < 64
    except (TypeError, ValueError):
        return False


def _thetas(trace, theta) -> np.ndarray:
    th = np.asarray(theta, dtype=np.float64)
    return th.reshape(th.shape[0] if th.ndim == 2 else 1, trace.n_params)


def _check_concrete(trace, theta) -> None:
    """Raise like :meth:`Trace.moments` when a concrete θ cannot be evaluated: a rate that
    is negative or not finite, or a vertex that is reached and never absorbed."""
    th = _thetas(trace, theta)
    if not np.isfinite(th).all():
        raise InvalidParameterError("theta contains NaN or infinite values")
    per = max(1, (1 << 22) // max(1, trace.arrays["input_base"].size))  # bound (θ, edges)
    for lo in range(0, th.shape[0], per):
        block = th[lo : lo + per]
        rates = edge_rates(trace, block)
        for b in np.flatnonzero(~((rates > 0) & (rates < np.inf)).all(axis=1)).tolist():
            plan = zero_rate_plan(trace, block[b], rates[b])
            if plan is not None and not isinstance(plan, ZeroRatePlan):
                raise plan  # an InvalidParameterError


def _check_finite(trace, theta, out, method: str) -> None:
    """Raise for a concrete θ whose results are not finite (they would be NaN under jit)."""
    values = np.asarray(out)
    if np.isfinite(values).all():
        return
    th = _thetas(trace, theta)
    per_theta = values.reshape(th.shape[0], -1)
    b = int(np.flatnonzero(~np.isfinite(per_theta).all(axis=1))[0])
    rates = edge_rates(trace, th[b : b + 1])[0]
    if method == "native" and not (rates > 0).all():
        raise InvalidParameterError(
            f"method='native' cannot evaluate at theta={th[b].tolist()}: some rates are 0 "
            "there and a part of the graph that cannot be reached has no way out; use "
            "method='kernel' (or Trace.moments), which evaluates such θ"
        )
    raise not_finite_error(th[b], per_theta[b])
