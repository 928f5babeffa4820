"""JAX functions of the absorption-time distribution: ``cdf``, ``sf``, ``pdf`` of ``(t, θ)``.

:func:`distribution_fn` wraps the uniformization of :mod:`phasetrace.distribution` as a
function ``f(t, theta)`` for ``jax.jit``, ``jax.vmap`` (over θ, over ``t``, or both) and
``jax.grad`` / ``jax.jacfwd`` / ``jax.jacrev`` in θ (and in ``t`` for ``cdf`` and ``sf``):

- the values come from a host callback (``jax.pure_callback``) into the numba kernels,
  with ``vmap_method="expand_dims"``: a vmapped batch reaches the host as one call, which
  runs one uniformization chain per distinct θ for all of that θ's times;
- derivatives are a ``jax.custom_jvp``: its rule asks the host for the values, their
  derivatives in θ (:func:`~phasetrace.distribution.cdf_and_gradient`: exact tangents,
  ``λ`` held fixed) and, where ``t`` is differentiated, ``d cdf/dt = pdf``,
  ``d sf/dt = −pdf``. The tangent is linear in the input tangents, so JAX transposes it
  for reverse mode. ``d pdf/dt`` is not provided: differentiating a ``pdf`` function in
  ``t`` raises ``NotImplementedError`` when traced.

As in :mod:`phasetrace.jax`, everything is computed in float64 inside a local
``jax.enable_x64(True)``, and results cross the callback boundary as their bit patterns
(uint32 pairs), so the caller's x64 setting cannot round them. A θ given as float32 warns
once (:class:`~phasetrace.errors.PrecisionWarning`): JAX has rounded it already.

Invalid inputs: called eagerly (concrete ``t`` and θ), the function raises as
:func:`~phasetrace.distribution.cdf` does (a rate that is not > 0, a call that needs more
than ``max_steps`` steps). Under a JAX transformation it cannot raise: the values (and
derivatives) of that θ are NaN instead, other θ of a batch are unaffected.

JAX is imported by :func:`distribution_fn`, not by importing this module.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np

from ..distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL, _one_theta, _prepare
from ..errors import InvalidParameterError, PrecisionWarning

__all__ = ["KINDS", "distribution_fn"]

#: The functions :func:`distribution_fn` builds, and their index in ``(sf, cdf, pdf)``.
KINDS = {"sf": 0, "cdf": 1, "pdf": 2}

_PRECISION_MESSAGE = (
    "phasetrace: t or theta arrived as float32, so JAX has already rounded it to about 7 "
    'significant digits. Call jax.config.update("jax_enable_x64", True) at the start of '
    "the program, before creating any JAX array (phasetrace computes in float64 either way)."
)


def _as_bits(values: np.ndarray) -> np.ndarray:
    """float64 (...) → uint32 (..., 2): the same bytes."""
    return np.array(values, dtype=np.float64, order="C")[..., None].view(np.uint32)


class _Host:
    """The numpy side: values (and derivatives) for batched ``t`` and θ.

    Under ``vmap_method="expand_dims"`` the callback gets ``t`` of shape
    ``(*batch_t, *core)`` and θ of shape ``(*batch_θ, n_params)``, with as many batch axes
    on both (size 1 where an input is not batched); results have the broadcast batch
    shape followed by ``core``.
    """

    def __init__(self, trace, which: int, rewards, tol: float, max_steps: int):
        self.trace = trace
        self.which = which
        self.rewards = rewards
        self.tol = tol
        self.max_steps = max_steps
        self.n_params = trace.n_params

    def compute(self, t, theta, core_ndim: int, gradient: bool, dt: bool, check: bool):
        t = np.asarray(t, dtype=np.float64)
        theta = np.asarray(theta, dtype=np.float64).reshape(*np.shape(theta)[:-1], self.n_params)
        nb = t.ndim - core_ndim
        bt, core = t.shape[:nb], t.shape[nb:]
        bth = theta.shape[:-1]
        if len(bth) != nb:  # pragma: no cover - expand_dims gives both the same rank
            raise RuntimeError(f"internal error: batch shapes {bt} and {bth}")
        bshape = np.broadcast_shapes(bt, bth)
        size = int(np.prod(core, dtype=np.int64))
        times = np.broadcast_to(t.reshape((*bt, size)), (*bshape, size))
        val = np.empty((*bshape, size))
        grad = np.empty((*bshape, size, self.n_params)) if gradient else None
        ddt = np.empty((*bshape, size)) if dt else None
        for idx in np.ndindex(*bth):
            sel = tuple(slice(None) if bth[d] == 1 else idx[d] for d in range(nb))
            block = times[sel]
            try:
                v, g, d = _one_theta(
                    self.trace, block.reshape(-1), theta[idx], self.rewards, self.tol,
                    self.max_steps, self.which, gradient=gradient, dt=dt,
                )  # fmt: skip
            except InvalidParameterError:
                if check:
                    raise
                v = np.full(block.size, np.nan)
                g = np.full((block.size, self.n_params), np.nan)
                d = np.full(block.size, np.nan)
            val[sel] = v.reshape(block.shape)
            if gradient:
                grad[sel] = g.reshape((*block.shape, self.n_params))
            if dt:
                ddt[sel] = d.reshape(block.shape)
        out = [val.reshape((*bshape, *core))]
        if gradient:
            out.append(grad.reshape((*bshape, *core, self.n_params)))
        if dt:
            out.append(ddt.reshape((*bshape, *core)))
        return out

    def bits(self, core_ndim: int, gradient: bool, dt: bool, t, theta):
        return tuple(
            _as_bits(x) for x in self.compute(t, theta, core_ndim, gradient, dt, check=False)
        )


def distribution_fn(
    trace,
    kind: str = "cdf",
    *,
    rewards=None,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Callable:
    """A JAX function ``f(t, theta)``: the ``kind`` of the absorption-time distribution.

    Parameters
    ----------
    trace : Trace
        A recorded trace.
    kind : {"cdf", "sf", "pdf"}
        ``P(T <= t)``, ``P(T > t)`` or the density (as :func:`phasetrace.distribution.cdf`,
        :func:`~phasetrace.distribution.sf`, :func:`~phasetrace.distribution.pdf`).
    rewards : None, callable or array_like (n_vertices,), optional
        The distribution of ``Y = ∫ r(X_t) dt`` instead (fixed when the function is built).
    tol, max_steps
        As in :func:`phasetrace.distribution.cdf`; ``tol`` bounds the truncation error of
        the values and of every derivative in θ.

    Returns
    -------
    callable
        ``f(t, theta)`` with ``t`` of any shape and ``theta`` of shape ``(n_params,)``,
        returning a float64 ``jax.Array`` of ``t``'s shape. Use ``jax.vmap`` for several
        θ (``jax.vmap(f, in_axes=(None, 0))``): one host call per batch, one chain per θ.
        Differentiable in θ (forward and reverse mode); in ``t`` for ``"cdf"`` and
        ``"sf"`` (``±pdf``) only.

    Raises
    ------
    InvalidParameterError
        For a bad ``kind``, ``rewards``, ``tol`` or ``max_steps`` here; for a θ of the
        wrong shape when called; for a θ that cannot be evaluated, or a call that needs
        more than ``max_steps`` steps, when called eagerly (NaN under transformations).

    Examples
    --------
    ``T ~ Exp(θ)`` for two lineages::

        import jax, numpy as np, phasetrace as pt
        from phasetrace.jax import distribution_fn   # defined in phasetrace.jax._distribution

        tr = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
        F = distribution_fn(tr, "cdf")
        with jax.enable_x64(True):
            F(np.array([0.5, 1.0]), np.array([2.0]))             # 1 − e^{−θt}
            jax.grad(lambda th: F(0.5, th))(np.array([2.0]))     # t·e^{−θt} = 0.18394
            jax.vmap(F, in_axes=(None, 0))(0.5, np.array([[1.0], [2.0]]))
    """
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.custom_derivatives import SymbolicZero

    if kind not in KINDS:
        raise InvalidParameterError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    which = KINDS[kind]
    n_params = trace.n_params
    _, _, r = _prepare(trace, np.ones(n_params), rewards, tol, max_steps)
    host = _Host(trace, which, r, float(tol), int(max_steps))

    def structs(t, gradient: bool, dt: bool):
        out = [jax.ShapeDtypeStruct((*t.shape, 2), jnp.uint32)]
        if gradient:
            out.append(jax.ShapeDtypeStruct((*t.shape, n_params, 2), jnp.uint32))
        if dt:
            out.append(jax.ShapeDtypeStruct((*t.shape, 2), jnp.uint32))
        return tuple(out)

    def call(t, theta, gradient: bool, dt: bool):
        bits = jax.pure_callback(
            functools.partial(host.bits, t.ndim, gradient, dt),
            structs(t, gradient, dt),
            t,
            theta,
            vmap_method="expand_dims",
        )
        return [lax.bitcast_convert_type(b, jnp.float64) for b in bits]

    @jax.custom_jvp
    def core(t, theta):
        with jax.enable_x64(True):  # (JAX may trace this later, outside ``f``)
            return call(t, theta, False, False)[0]

    def core_jvp(primals, tangents):
        t, theta = primals
        t_dot, theta_dot = tangents
        gradient = not isinstance(theta_dot, SymbolicZero)
        dt = not isinstance(t_dot, SymbolicZero)
        if dt and which == 2:
            raise NotImplementedError(
                "phasetrace: the derivative of a pdf function with respect to t is not "
                "available; differentiate with respect to theta only (or use kind='cdf', "
                "whose derivative in t is the pdf)"
            )
        with jax.enable_x64(True):
            out = call(t, theta, gradient, dt)
            tangent = jnp.zeros_like(out[0])
            if gradient:
                tangent = tangent + jnp.sum(out[1] * theta_dot.astype(jnp.float64), axis=-1)
            if dt:
                tangent = tangent + out[-1] * t_dot.astype(jnp.float64)
        return out[0], tangent

    core.defjvp(core_jvp, symbolic_zeros=True)

    warned = False

    def f(t, theta):
        nonlocal warned
        if tuple(np.shape(theta)) != (n_params,):
            raise InvalidParameterError(
                f"theta must have shape ({n_params},); got {tuple(np.shape(theta))} "
                "(use jax.vmap for several θ)"
            )
        if not warned and (_low_precision(t) or _low_precision(theta)):
            warned = True
            warnings.warn(_PRECISION_MESSAGE, PrecisionWarning, stacklevel=2)
        tracer = isinstance(t, jax.core.Tracer) or isinstance(theta, jax.core.Tracer)
        if not tracer:  # eager: the numpy functions, which raise for what they refuse
            th = np.asarray(theta, dtype=np.float64)
            _prepare(trace, th, None, tol, max_steps)
            (value,) = host.compute(np.asarray(t, np.float64), th, np.ndim(t), False, False, True)
            with jax.enable_x64(True):
                return jnp.asarray(value, dtype=jnp.float64)
        with jax.enable_x64(True):
            return core(jnp.asarray(t, dtype=jnp.float64), jnp.asarray(theta, dtype=jnp.float64))

    f.__doc__ = f"The {kind} of a {trace!r} at (t, theta) (phasetrace.distribution.{kind})."
    f.kind = kind
    f.n_params = n_params
    return f


def _low_precision(x) -> bool:
    """Whether ``x`` is a floating-point array of less than 64 bits (a tracer included)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    try:
        return np.issubdtype(np.dtype(dtype), np.floating) and np.dtype(dtype).itemsize < 8
    except TypeError:
        return False
