"""Log-likelihoods of observed spectra: Poisson random field or multinomial, with gradients.

With ``K`` observed classes (entries of the spectrum, or pairs of mirror entries for a
folded one), observed counts ``D_k`` and expected branch lengths ``E_k(θ)``
(:func:`phasetrace.sfs` / :func:`phasetrace.jsfs`, in generations):

- **Poisson random field**, when the scaled mutation rate ``u = μ·L`` is given (expected
  sites per generation of branch length: the mutation rate per site and generation
  times the number of sites): each count is Poisson with mean ``λ_k = u·E_k``::

      ℓ(θ) = Σ_k [D_k log λ_k − λ_k − log Γ(D_k + 1)]

- **multinomial** (scale-free), when it is not: given the number of segregating sites
  ``S = Σ D_k``, the counts are multinomial with ``p_k = E_k / Σ_j E_j``::

      ℓ(θ) = log Γ(S + 1) − Σ_k log Γ(D_k + 1) + Σ_k D_k log p_k

  It does not depend on the overall scale of time (every size, time and 1/rate times
  ``c`` leaves ``p`` unchanged); it is the Poisson likelihood maximised over ``u``.

The gradient is the chain rule through the model's exact Jacobian ``∂E_k/∂θ`` (forward
tangents of the same computation, not finite differences)::

    ∂ℓ/∂θ = Σ_k (D_k/E_k − c) ∂E_k/∂θ,   c = u (Poisson) or S/Σ_j E_j (multinomial).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._data import Data, prepare

__all__ = ["evaluate", "loglik", "loglik_function"]


def _check_mutation(scaled_mutation: Any) -> float | None:
    if scaled_mutation is None:
        return None
    if isinstance(scaled_mutation, bool) or not isinstance(
        scaled_mutation, int | float | np.integer | np.floating
    ):
        raise InvalidParameterError(
            f"scaled_mutation must be a positive number (μ·L) or None, got {scaled_mutation!r}"
        )
    u = float(scaled_mutation)
    if not (np.isfinite(u) and u > 0):
        raise InvalidParameterError(f"scaled_mutation must be positive and finite, got {u!r}")
    return u


def expected(model: Any, theta: Any, data: Data, gradient: bool):
    """Expected values per class ``(..., K)`` (and their Jacobian ``(..., K, P)``)."""
    if hasattr(model, "plan"):
        method = model.sfs if data.kind == "sfs" else model.jsfs
        out = method(theta, gradient=gradient)
    else:  # a block-counting trace: the pooled SFS
        from ..spectrum import sfs_rewards

        th = np.asarray(theta, dtype=np.float64)
        rewards = sfs_rewards(model)
        if gradient:
            m, j = model.moments_and_jacobian(th, 1, rewards)
            out = (m[..., 0], j[..., 0, :])
        else:
            out = model.moments(th, 1, rewards)[..., 0]
    size = int(np.prod(data.shape))
    first, second = data.members[:, 0], data.members[:, 1]
    values = out[0] if gradient else out
    lead = values.shape[: values.ndim - len(data.shape)]
    flat = values.reshape(*lead, size)
    padded = np.concatenate([flat, np.zeros((*lead, 1))], axis=-1)
    e = padded[..., first] + padded[..., second]
    if not gradient:
        return e
    jac = out[1]
    n_params = jac.shape[-1]
    jflat = jac.reshape(*lead, size, n_params)
    jpad = np.concatenate([jflat, np.zeros((*lead, 1, n_params))], axis=-2)
    return e, jpad[..., first, :] + jpad[..., second, :]


def evaluate(model: Any, theta: Any, data: Data, u: float | None, gradient: bool):
    """``loglik`` on prepared data: values ``(...)`` (and gradients ``(..., P)``)."""
    out = expected(model, theta, data, gradient)
    e, jac = out if gradient else (out, None)
    d = data.counts
    seen = d > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if u is None:
            total_e = e.sum(axis=-1)
            s = data.total
            logp = np.log(np.where(seen, e, 1.0)) - np.log(total_e)[..., None]
            value = (
                _lgamma(s + 1.0) - data.log_factorials + np.sum(np.where(seen, d * logp, 0.0), -1)
            )
            c = s / total_e
        else:
            lam = u * e
            value = (
                np.sum(np.where(seen, d * np.log(np.where(seen, lam, 1.0)), 0.0), axis=-1)
                - lam.sum(axis=-1)
                - data.log_factorials
            )
            c = np.full(e.shape[:-1], u)
        if not gradient:
            return value
        weights = np.where(seen, d / np.where(seen, e, 1.0), 0.0) - np.asarray(c)[..., None]
    grad = np.einsum("...k,...kp->...p", weights, jac)
    return value, grad


def _lgamma(x: float) -> float:
    return math.lgamma(x)


def loglik(
    model: Any,
    theta: Any,
    observed: Any,
    *,
    scaled_mutation: float | None = None,
    folded: bool | None = None,
    gradient: bool = False,
):
    """Log-likelihood of an observed SFS or joint SFS under ``model`` at θ.

    Poisson random field when ``scaled_mutation`` (``μ·L``) is given, multinomial
    otherwise (module docstring); the gradient is exact (the model's Jacobian).

    Parameters
    ----------
    model : DemographicModel or Trace
        From :func:`phasetrace.models.from_demes`; or a block-counting trace (1-d SFS).
    theta : array_like, shape (n_params,) or (B, n_params), or None
        Parameters in the order of ``model.parameter_names`` (None: ``model.theta``).
    observed : array_like, masked array, ObservedSpectrum or moments/dadi Spectrum
        Counts of sites: 1-d ``(n − 1,)`` (entries ``1 … n − 1``, as :func:`phasetrace.sfs`)
        or ``(n + 1,)`` (entries ``0 … n``), the SFS pooled over all samples; or the joint
        layout ``(n_1 + 1, …)`` of :func:`phasetrace.jsfs`. Monomorphic and masked entries
        are left out.
    scaled_mutation : float, optional
        ``μ·L``: expected sites per generation of branch length (Poisson); None for the
        multinomial likelihood.
    folded : bool, optional
        Whether ``observed`` counts minor alleles (entries past half the samples empty);
        the expected spectrum is folded the same way (an entry plus its mirror
        ``a → n − a``). Default: ``observed.folded`` where it has one, else False.
    gradient : bool
        Also return ``∂ℓ/∂θ``.

    Returns
    -------
    float or ndarray, or (value, gradient)
        ``ℓ`` (shape ``(B,)`` for a batch) and, with ``gradient``, ``∂ℓ/∂θ`` of shape
        ``(n_params,)`` or ``(B, n_params)``.

    Raises
    ------
    InvalidParameterError
        Observed counts that fit no layout of the model, a bad θ (as the model), a bad
        ``scaled_mutation``.

    Examples
    --------
    >>> import demes, numpy as np, phasetrace as pt
    >>> g = demes.loads('''
    ... time_units: generations
    ... demes:
    ... - name: A
    ...   epochs: [{start_size: 1000}]
    ... ''')
    >>> model = pt.models.from_demes(g, samples={"A": 4})
    >>> observed = np.array([12, 7, 3])         # sites seen in 1, 2, 3 of 4 samples
    >>> expected = pt.sfs(model)                # 4000/i generations
    >>> p = expected / expected.sum()
    >>> value = pt.loglik(model, None, observed)
    >>> from math import lgamma
    >>> ref = lgamma(23) - sum(lgamma(d + 1) for d in observed) + float(observed @ np.log(p))
    >>> bool(abs(value - ref) < 1e-10)
    True
    """
    u = _check_mutation(scaled_mutation)
    data = prepare(model, observed, folded)
    if theta is None:
        theta = getattr(model, "theta", None)
        if theta is None:
            raise InvalidParameterError("theta is required (a trace has no default parameters)")
    out = evaluate(model, theta, data, u, gradient)
    if gradient:
        value, grad = out
        return (float(value), grad) if np.ndim(value) == 0 else (value, grad)
    return float(out) if np.ndim(out) == 0 else out


def loglik_function(
    model: Any,
    observed: Any,
    *,
    scaled_mutation: float | None = None,
    folded: bool | None = None,
) -> Callable:
    """:func:`loglik` as a JAX function of θ (``jax.jit``, ``jax.vmap``, ``jax.grad``).

    Built on :func:`phasetrace.jsfs_function` / :func:`phasetrace.sfs_function` (a host
    callback whose gradient is the model's exact Jacobian); the likelihood itself is
    written in ``jax.numpy``. JAX is imported here, not when phasetrace is.

    Parameters
    ----------
    model, observed, scaled_mutation, folded
        As for :func:`loglik`.

    Returns
    -------
    callable
        ``f(theta)`` for one θ of shape ``(n_params,)``, returning a float64 scalar.

    Examples
    --------
    (Needs JAX, so not run as a doctest; ``tests/test_inference.py`` runs it.) ::

        import jax, phasetrace as pt
        jax.config.update("jax_enable_x64", True)
        f = pt.inference.loglik_function(model, observed, scaled_mutation=0.5)
        value, grad = jax.value_and_grad(f)(model.theta)
    """
    import jax
    import jax.numpy as jnp

    from ..spectrum import jsfs_function, sfs_function

    u = _check_mutation(scaled_mutation)
    data = prepare(model, observed, folded)
    spectrum = sfs_function(model) if data.kind == "sfs" else jsfs_function(model)
    first = np.asarray(data.members[:, 0])
    second = np.asarray(data.members[:, 1])
    d = np.asarray(data.counts)
    seen = d > 0
    s = data.total
    const = data.log_factorials
    lgamma_s = _lgamma(s + 1.0)

    def f(theta):
        with jax.enable_x64(True):
            flat = jnp.reshape(spectrum(theta), (-1,))
            padded = jnp.concatenate([flat, jnp.zeros((1,), flat.dtype)])
            e = padded[first] + padded[second]
            safe = jnp.where(seen, e, 1.0)
            if u is None:
                logp = jnp.log(safe) - jnp.log(jnp.sum(e))
                return lgamma_s - const + jnp.sum(jnp.where(seen, d * logp, 0.0))
            lam = u * e
            return jnp.sum(jnp.where(seen, d * jnp.log(u * safe), 0.0)) - jnp.sum(lam) - const

    f.__doc__ = (
        f"Log-likelihood ({'Poisson' if u is not None else 'multinomial'}) of an observed "
        f"{data.kind.upper()} as a JAX function of θ."
    )
    return f
