"""JAX evaluation of traces: moment functions for ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

>>> import jax, jax.numpy as jnp, phasetrace as pt
>>> from phasetrace.jax import moments_fn
>>> f = moments_fn(pt.record_trace(pt.models.kingman(4)), k=2)
>>> jax.jit(f)(jnp.array([1.0])).round(6).tolist()       # E[T], E[T²] at θ = 1
[1.5, 3.388889]

Recording traces from inside JAX programs (``record_traces_callback``, ``GraphStore``: one
host call per vmapped batch, handed to the configured executor) is documented in
:mod:`phasetrace._jax_bridge`; its names are re-exported here.

How it evaluates
----------------
Two methods, picked by the backend (``moments_fn(..., method=...)``):

``"kernel"`` (the default on CPU)
    A host callback into the compiled replay kernel (:mod:`phasetrace._jax_kernel`):
    ``jax.vmap`` hands a whole batch to one kernel call, ``jax.grad`` uses the kernel's
    adjoint (moments and Jacobian in one call; ``Jᵀg`` in the backward rule). Results
    are bitwise those of :meth:`Trace.moments`.
``"native"`` (the default on accelerators)
    The trace lowered once to a ``lax.scan`` over fixed-width steps that XLA compiles
    for the device (:mod:`phasetrace._jax_native`); gradients in forward or reverse mode
    (``gradient=``). Results agree with :meth:`Trace.moments` to about 1e-15 relative
    (sums are added in a tree order).

Only reverse-mode transformations are defined (``jax.grad``, ``jax.vjp``,
``jax.jacrev``); ``jax.jvp`` and ``jax.jacfwd`` raise, as for every ``custom_vjp`` function.

Precision
---------
Everything is computed in float64 inside a local ``jax.enable_x64(True)`` context, so the
user's global ``jax_enable_x64`` setting is left alone and results are float64 arrays
either way. With ``jax_enable_x64`` off, JAX itself rounds float64 inputs to float32 when
they cross *your* ``jax.jit`` boundary and runs *your* further operations on the results
in float32; enable x64 globally (``jax.config.update("jax_enable_x64", True)``) to keep
full precision end to end.

Invalid parameters
------------------
A θ of the wrong shape raises :class:`~phasetrace.errors.InvalidParameterError` when the
function is called or traced. A rate that is not a positive finite number cannot raise
inside ``jax.jit``: the moments (and the gradient) of that θ are NaN, other θ of a batch
are unaffected. Called eagerly (outside any JAX transformation) with a concrete θ, the
function raises ``InvalidParameterError`` like :meth:`Trace.moments` does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._args import as_k, as_reward_matrix, bad_rate_error, transient_rewards
from ._jax_bridge import (
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
from ._jax_native import FORWARD_MODE_MAX, _Evaluator
from .errors import InvalidParameterError

__all__ = [
    "BridgeStats",
    "GraphStore",
    "RecordingFailure",
    "default_store",
    "errors_raised",
    "get_trace",
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
        trace lowered to XLA operations (runs on any device). ``"auto"``: the kernel when
        JAX's default backend is the CPU, else native.
    chunk : int, optional
        Native method: θ per chunk of a batch (default 128 to 512).
    gradient : {"auto", "forward", "reverse"}
        Native method: how ``jax.grad`` differentiates (``"auto"``: forward for up to
        :data:`FORWARD_MODE_MAX` parameters). The kernel always uses its adjoint.

    Returns
    -------
    callable
        ``f(theta)`` returning a float64 ``jax.Array``. NaN marks a θ at which a rate is
        not a positive finite number (under JAX transformations; an eager call raises).

    Raises
    ------
    InvalidParameterError
        For a bad ``k``, ``rewards``, ``method`` or ``gradient`` here; for a θ of the wrong
        shape when called.

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
    >>> jax.grad(lambda t: f(t)[0])(theta).shape
    (2,)
    >>> jax.vmap(f)(np.array([[1.0, 0.5], [2.0, 0.5]])).shape
    (2, 2)
    >>> g = moments_fn(trace, k=1, batched=True)
    >>> g(np.array([[1.0, 0.5], [2.0, 0.5]])).shape
    (2, 1)
    """
    k = as_k(k)
    if chunk is not None and (not isinstance(chunk, int | np.integer) or chunk < 1):
        raise InvalidParameterError(f"chunk must be a positive int, got {chunk!r}")
    if gradient not in ("auto", "forward", "reverse"):
        raise InvalidParameterError(
            f"gradient must be 'auto', 'forward' or 'reverse', got {gradient!r}"
        )
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "kernel" if jax.default_backend() == "cpu" else "native"
    rew, multi = as_reward_matrix(trace, rewards)
    if method == "kernel":
        from ._jax_kernel import KernelFunction

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
    n_params = trace.n_params

    def call(fn, theta):
        _check_concrete(trace, theta)
        with jax.enable_x64(True):
            return fn(jnp.asarray(theta, dtype=jnp.float64))

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

    f.__doc__ = f"E[Y^j], j = 1..{k}, of a {trace!r} ({'batched' if batched else 'one θ'})."
    f.k = k
    f.n_params = n_params
    f.batched = batched
    f.method = method
    f.lowered = lowered
    return f


def _check_concrete(trace, theta) -> None:
    """Raise like :meth:`Trace.moments` when a concrete θ gives a rate that is not a
    positive finite number."""
    if isinstance(theta, jax.core.Tracer):
        return
    th = np.asarray(theta, dtype=np.float64)
    th = th.reshape(th.shape[0] if th.ndim == 2 else 1, trace.n_params)
    if not np.isfinite(th).all():
        raise InvalidParameterError("theta contains NaN or infinite values")
    arr = trace.arrays
    coef = arr["input_coef"]
    edges = np.flatnonzero(coef.any(axis=1)) if trace.n_params else np.zeros(0, np.int64)
    base, coef = arr["input_base"][edges], coef[edges]
    per = max(1, (1 << 22) // max(1, edges.size))  # bound the (edges, θ) temporary
    for lo in range(0, th.shape[0], per):
        block = th[lo : lo + per]
        rates = base[:, None] + np.zeros((1, block.shape[0]))
        for i in range(trace.n_params):  # left to right, as the kernel
            rates = rates + coef[:, i : i + 1] * block[None, :, i]
        bad = np.argwhere(~((rates > 0) & (rates < np.inf)))
        if bad.size:
            e, b = bad[0]
            raise bad_rate_error(trace, int(edges[e]), rates[e, b], block[b])
