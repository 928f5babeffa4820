"""JAX functions backed by the compiled kernel: a host callback with a custom VJP.

On CPU the fastest way to evaluate a trace from JAX is to call the compiled kernel
(:mod:`phasetrace.kernel`) on the host: ``jax.pure_callback`` with
``vmap_method="expand_dims"`` hands a whole vmapped batch (nested vmaps included) to one
kernel call, and the callback works under ``jax.jit``. Gradients are a
:class:`jax.custom_vjp`: the forward rule asks the kernel for the moments and their
Jacobian in one call (its adjoint costs about one more replay and one transposed solve
per moment), the backward rule is ``Jᵀg``.

Everything here runs in float64 inside a local ``jax.enable_x64(True)`` (see
:mod:`phasetrace.jax`). The callback itself, though, runs when the compiled program runs,
under the caller's x64 setting, and JAX then rounds float64 results to float32 (and
rejects them). So results cross the boundary as their bit patterns, uint32 pairs, which
no setting converts, and are bitcast back to float64 inside the traced program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import kernel


def _as_bits(values: np.ndarray) -> np.ndarray:
    """float64 (...) → uint32 (..., 2): the same bytes."""
    return np.ascontiguousarray(values, dtype=np.float64)[..., None].view(np.uint32)


def _bits_struct(shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*shape, 2), jnp.uint32)


def _from_bits(bits):
    return lax.bitcast_convert_type(bits, jnp.float64)


def _x64(fn):
    """Run ``fn`` (and whatever JAX traces inside it) with float64 enabled locally."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


class HostFunction:
    """``θ (..., P) → values (..., *tail)`` computed on the host, differentiable in JAX.

    Subclasses define :meth:`values` and :meth:`values_and_jacobian` on numpy arrays of θ
    with any leading shape (NaN where a θ cannot be evaluated).
    """

    n_params: int
    tail: tuple[int, ...]

    def __init__(self, n_params: int, tail: tuple[int, ...]):
        self.n_params = n_params
        self.tail = tail
        self.fn = self._build()

    def _flat(self, thetas) -> tuple[np.ndarray, tuple[int, ...]]:
        th = np.asarray(thetas, dtype=np.float64)
        lead = th.shape[:-1]
        return np.ascontiguousarray(th.reshape(int(np.prod(lead)), self.n_params)), lead

    def values(self, thetas) -> np.ndarray:
        raise NotImplementedError

    def values_and_jacobian(self, thetas) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- JAX side -----------------------------------------------------------------------------
    def _values_bits(self, thetas):
        return _as_bits(self.values(thetas))

    def _values_and_jacobian_bits(self, thetas):
        return tuple(_as_bits(x) for x in self.values_and_jacobian(thetas))

    def _build(self):
        def shapes(theta):
            lead = theta.shape[:-1]
            return _bits_struct((*lead, *self.tail)), _bits_struct(
                (*lead, *self.tail, self.n_params)
            )

        @jax.custom_vjp
        @_x64
        def fn(theta):
            bits = jax.pure_callback(
                self._values_bits, shapes(theta)[0], theta, vmap_method="expand_dims"
            )
            return _from_bits(bits)

        @_x64
        def fwd(theta):
            bits = jax.pure_callback(
                self._values_and_jacobian_bits, shapes(theta), theta, vmap_method="expand_dims"
            )
            out, jac = (_from_bits(b) for b in bits)
            return out, jac

        @_x64
        def bwd(jac, g):
            axes = tuple(range(g.ndim - len(self.tail), g.ndim))
            return (jnp.sum(g[..., None] * jac, axis=axes),)

        fn.defvjp(fwd, bwd)
        return fn


class KernelFunction(HostFunction):
    """Moments of a trace through the kernel (:class:`HostFunction`).

    ``rewards`` is the reward matrix (R, V), zero off transient vertices; ``tail`` is
    ``(k,)`` for one reward vector and ``(R, k)`` for several.
    """

    def __init__(self, trace, k: int, rewards: np.ndarray, multi: bool):
        self.trace = trace
        self.k = k
        self.rewards = np.ascontiguousarray(rewards, dtype=np.float64)
        self.multi = multi
        super().__init__(trace.n_params, (rewards.shape[0], k) if multi else (k,))

    def values(self, thetas, check: bool = False) -> np.ndarray:
        """Moments for θ of any leading shape; NaN where a rate is bad (unless ``check``)."""
        th, lead = self._flat(thetas)
        if th.shape[0] == 0:
            return np.zeros((*lead, *self.tail))
        out = kernel.moments(self.trace, th, self.rewards, self.k, check=check)
        out = out if self.multi else out[:, 0]
        return out.reshape(*lead, *self.tail)

    def values_and_jacobian(self, thetas) -> tuple[np.ndarray, np.ndarray]:
        th, lead = self._flat(thetas)
        if th.shape[0] == 0:
            return np.zeros((*lead, *self.tail)), np.zeros((*lead, *self.tail, self.n_params))
        out, jac = kernel.moments_and_jacobian(self.trace, th, self.rewards, self.k, check=False)
        if not self.multi:
            out, jac = out[:, 0], jac[:, 0]
        return out.reshape(*lead, *self.tail), jac.reshape(*lead, *self.tail, self.n_params)


class ModelFunction(HostFunction):
    """A function of θ of a time-inhomogeneous model (:class:`HostFunction`).

    ``evaluate(th, gradient)`` maps θ (N, P) to values (N, *tail) (with ``gradient``:
    ``(values, jacobian (N, *tail, P))``), raising
    :class:`~phasetrace.errors.InvalidParameterError` where it cannot; a batch that
    raises is evaluated θ by θ, the failing ones giving NaN (as under ``jax.jit``).
    """

    def __init__(self, evaluate, n_params: int, tail: tuple[int, ...]):
        self.evaluate = evaluate
        super().__init__(n_params, tail)

    def _run(self, thetas, gradient: bool):
        from ..errors import InvalidParameterError

        th, lead = self._flat(thetas)
        out = np.full((th.shape[0], *self.tail), np.nan)
        jac = np.full((th.shape[0], *self.tail, self.n_params), np.nan)
        if th.shape[0]:
            try:
                res = self.evaluate(th, gradient)
                rows = [(slice(None), res)]
            except InvalidParameterError:
                rows = []
                for b in range(th.shape[0]):
                    try:
                        rows.append((slice(b, b + 1), self.evaluate(th[b : b + 1], gradient)))
                    except InvalidParameterError:
                        continue
            for where, res in rows:
                if gradient:
                    out[where], jac[where] = res
                else:
                    out[where] = res
        out = out.reshape(*lead, *self.tail)
        return (out, jac.reshape(*lead, *self.tail, self.n_params)) if gradient else out

    def values(self, thetas) -> np.ndarray:
        return self._run(thetas, False)

    def values_and_jacobian(self, thetas) -> tuple[np.ndarray, np.ndarray]:
        return self._run(thetas, True)
