"""Site-frequency spectra of block-counting coalescents.

In a block-counting state space (:func:`phasetrace.models.kingman` with
``state_space="blocks"``, :func:`phasetrace.models.structured_coalescent` with
``state_space="blocks"``) the state of ``d`` demes and ``n`` samples has length ``d·n`` and
``s[k·n + i]`` is the number of lineages in deme ``k`` that subtend ``i + 1`` samples
(``d = 1`` for Kingman). The reward ``r_i(s) = Σ_k s[k·n + i]`` accumulates the total
length of branches subtending ``i + 1`` samples, ``ξ_{i+1}``; under the infinite-sites
model, mutations on them are the sites where ``i + 1`` of the ``n`` samples carry the
derived allele, so ``θ_mut/2 · E[ξ_{i+1}]`` is the expected number of such sites.

:func:`sfs` evaluates all ``n − 1`` expectations in one pass of the trace,
:func:`sfs_rewards` gives the reward matrix (for higher moments, covariances or your own
calls), and :func:`sfs_function` is the same spectrum as a JAX function of θ (JAX is
imported only when it is called).

>>> import phasetrace as pt
>>> trace = pt.record_trace(pt.models.kingman(5))
>>> sfs(trace, [1.0]).round(12).tolist()                  # 2/i, i = 1..4
[2.0, 1.0, 0.666666666667, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import InvalidParameterError

__all__ = ["jsfs", "jsfs_function", "sfs", "sfs_function", "sfs_layout", "sfs_rewards"]


def sfs_layout(trace, n_demes: int | None = None) -> tuple[int, int]:
    """``(n, d)``: the number of samples and of demes of a block-counting trace.

    Every state other than the start holds all ``n`` samples: ``Σ_k Σ_i (i + 1)·s[k·n + i]
    = n``. With ``n_demes=None`` the layout is inferred from the state length ``L = d·n``:
    the one divisor ``d`` of ``L`` for which every state passes that check. If none
    does, the trace is not block-counting; if several do (possible only for tiny models),
    pass ``n_demes``.

    Raises
    ------
    ValueError
        For a trace that is not block-counting (in the layout asked for, or in any), an
        ambiguous layout, or a bad ``n_demes``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.models.structured import structured_coalescent
    >>> g = structured_coalescent((3, 1), state_space="blocks")
    >>> sfs_layout(pt.record_trace(g))
    (4, 2)
    """
    states = _states(trace)
    length = states.shape[1]
    if n_demes is not None:
        if isinstance(n_demes, bool) or not isinstance(n_demes, int | np.integer) or n_demes < 1:
            raise ValueError(f"n_demes must be a positive int, got {n_demes!r}")
        if length % n_demes:
            raise ValueError(
                f"states have length {length}, not a multiple of n_demes={n_demes} (a "
                "block-counting state of d demes and n samples has length d·n)"
            )
        n = length // int(n_demes)
        if not _holds_n(states, n, int(n_demes)):
            raise ValueError(
                f"not a block-counting trace of {n_demes} deme(s) and {n} samples: some "
                f"state does not hold {n} samples (Σ (i + 1)·s[k·{n} + i])"
            )
        return n, int(n_demes)
    found = [
        (length // d, d)
        for d in range(1, length + 1)
        if length % d == 0 and _holds_n(states, length // d, d)
    ]
    if not found:
        raise ValueError(
            f"not a block-counting trace: no layout of its states (length {length}) as d "
            "demes × n sample sizes holds the same n samples in every state (a lineage-count "
            "model? build it with state_space='blocks')"
        )
    if len(found) > 1:
        raise ValueError(
            f"ambiguous block-counting layout: (n, d) could be any of {found}; pass n_demes="
        )
    return found[0]


def sfs_rewards(trace, *, n_demes: int | None = None) -> np.ndarray:
    """The reward matrix of the site-frequency spectrum: shape ``(n − 1, n_vertices)``.

    Row ``i`` (``i = 0 … n − 2``) is ``Σ_k s[k·n + i]`` for each vertex in
    ``trace.states`` order: the number of lineages that subtend ``i + 1`` samples, summed
    over demes. Pass it as ``rewards=`` to :meth:`Trace.moments` (all rows in one pass)
    or :meth:`Trace.cross_moment` (two rows) for second moments.

    Examples
    --------
    >>> import phasetrace as pt
    >>> trace = pt.record_trace(pt.models.kingman(3))
    >>> r = sfs_rewards(trace)
    >>> r.shape == (2, trace.n_vertices)
    True
    >>> trace.moments([1.0], k=2, rewards=r).round(12).tolist()  # E[ξ_i], E[ξ_i²]
    [[2.0, 6.0], [1.0, 2.0]]
    """
    return _kept_rewards(trace, n_demes).copy()


def _kept_rewards(trace, n_demes: int | None) -> np.ndarray:
    """:func:`sfs_rewards`, built once per trace and layout and kept on the trace
    (read-only): finding the layout and summing the states cost more than a small
    trace's evaluation."""
    valid = n_demes is None or (
        not isinstance(n_demes, bool) and isinstance(n_demes, int | np.integer) and n_demes >= 1
    )
    key = None if n_demes is None else int(n_demes) if valid else object()
    kept = trace.__dict__.setdefault("_sfs_rewards", {})
    rewards = kept.get(key)
    if rewards is None:
        n, d = sfs_layout(trace, n_demes)  # raises for a bad n_demes
        states = np.asarray(trace.states, dtype=np.float64)
        per_size = states.reshape(states.shape[0], d, n).sum(axis=1)
        rewards = np.ascontiguousarray(per_size[:, : n - 1].T)
        rewards.flags.writeable = False
        kept[key] = rewards
    return rewards


def sfs(trace, theta=None, *, normalised: bool = False, n_demes: int | None = None) -> np.ndarray:
    """Expected site-frequency spectrum (branch lengths) of a block-counting trace at θ,
    or of a demographic model (:func:`phasetrace.models.from_demes`: pooled over all its
    samples, in generations; see :meth:`~phasetrace.demography.DemographicModel.sfs`).

    Parameters
    ----------
    trace : Trace or DemographicModel
        Recorded from a block-counting graph (see the module docstring), or a model.
    theta : array_like, shape (n_params,) or (B, n_params)
        One parameter vector, or a batch (a model's default: the values it was read with).
    normalised : bool
        ``True``: divide by the sum over the spectrum (the expected total branch length),
        so each θ's spectrum sums to 1.
    n_demes : int, optional
        The number of demes; inferred from the states when not given
        (:func:`sfs_layout`).

    Returns
    -------
    ndarray
        ``E[ξ_i]``, ``i = 1 … n − 1``: the expected total length of branches subtending
        ``i`` samples (summed over demes). Shape ``(n − 1,)`` for one θ, ``(B, n − 1)``
        for a batch.

    Raises
    ------
    ValueError
        For a trace that is not block-counting (see :func:`sfs_layout`).
    InvalidParameterError
        For a bad θ (as :meth:`Trace.moments`).

    Examples
    --------
    >>> import phasetrace as pt
    >>> trace = pt.record_trace(pt.models.kingman(4))
    >>> sfs(trace, [[1.0], [2.0]]).round(12).tolist()    # 2/(i·c)
    [[2.0, 1.0, 0.666666666667], [1.0, 0.5, 0.333333333333]]
    >>> sfs(trace, [1.0], normalised=True).round(6).tolist()
    [0.545455, 0.272727, 0.181818]
    >>> from phasetrace.models.structured import structured_coalescent
    >>> g = structured_coalescent((2, 1), state_space="blocks")
    >>> sfs(pt.record_trace(g), [1.0, 0.5]).round(6).tolist()   # θ = (c, m)
    [5.25, 2.75]
    """
    if _is_demographic(trace):
        out = trace.sfs(theta)
    else:
        if theta is None:
            raise InvalidParameterError("theta is required (a trace has no default parameters)")
        rewards = _kept_rewards(trace, n_demes)
        out = trace.moments(theta, k=1, rewards=rewards)[..., 0]
    if normalised:
        out = out / out.sum(axis=-1, keepdims=True)
    return out


def jsfs(model, theta=None, *, normalised: bool = False) -> np.ndarray:
    """Expected joint site-frequency spectrum of a demographic model (branch lengths).

    Shape ``(n_1 + 1, …, n_S + 1)`` over the sampled demes in the order of the model's
    ``samples`` (a leading axis for a batch of θ): entry ``(a_1, …, a_S)`` is the expected
    total length of branches subtending exactly ``a_j`` samples of deme ``j``, the layout
    of tskit's ``allele_frequency_spectrum(sample_sets, mode="branch", polarised=True)``;
    the all-zero and the full entries are 0.

    Parameters
    ----------
    model : DemographicModel
        From :func:`phasetrace.models.from_demes`.
    theta : array_like, optional
        Parameters (default: the values read from the graph).
    normalised : bool
        Divide by the sum over the spectrum.

    Examples
    --------
    >>> import demes, phasetrace as pt
    >>> g = demes.loads('''
    ... time_units: generations
    ... demes:
    ... - {name: X, epochs: [{start_size: 100, end_time: 50}]}
    ... - {name: A, ancestors: [X], epochs: [{start_size: 100}]}
    ... - {name: B, ancestors: [X], epochs: [{start_size: 100}]}
    ... ''')
    >>> model = pt.models.from_demes(g, samples={"A": 1, "B": 1})
    >>> pt.jsfs(model).round(9).tolist()   # each lineage: 50 + 2·100 generations (T_MRCA)
    [[0.0, 250.0], [250.0, 0.0]]
    """
    if not _is_demographic(model):
        raise TypeError(
            "jsfs needs a demographic model (phasetrace.models.from_demes); for a trace, "
            "pass rewards to Trace.moments"
        )
    out = model.jsfs(theta)
    if normalised:
        axes = tuple(range(out.ndim - len(model.plan.structure.sampled), out.ndim))
        out = out / out.sum(axis=axes, keepdims=True)
    return out


def jsfs_function(model, *, normalised: bool = False, batched: bool = False) -> Callable:
    """:func:`jsfs` as a JAX function of θ (``jax.jit``, ``jax.vmap``, ``jax.grad``).

    A host callback (CPU) into the model; ``jax.grad`` uses its forward tangents. Results
    are float64 arrays of shape ``(n_1 + 1, …)`` (a leading ``(B,)`` with ``batched``).

    Examples
    --------
    (Needs JAX, so not run as a doctest; ``tests/test_demography_jax.py`` runs it.) ::

        import jax, phasetrace as pt
        jax.config.update("jax_enable_x64", True)
        model = pt.models.from_demes("im.yaml", samples={"A": 4, "B": 4})
        f = pt.jsfs_function(model)
        jax.grad(lambda t: f(t)[0, 1])(model.theta)    # d E[ξ_{0,1}] / dθ
    """
    if not _is_demographic(model):
        raise TypeError("jsfs_function needs a demographic model (phasetrace.models.from_demes)")
    return _model_spectrum_function(model, "jsfs", normalised, batched)


def _model_spectrum_function(model, which: str, normalised: bool, batched: bool) -> Callable:
    import jax
    import jax.numpy as jnp

    from .jax import model_function

    method = model.sfs if which == "sfs" else model.jsfs
    if which == "sfs":
        tail = (int(sum(model.plan.samples)) - 1,)
    else:
        tail = tuple(model.plan.samples[k] + 1 for k in model.plan.structure.sampled)

    def evaluate(th, gradient):
        return method(th, gradient=gradient)

    g = model_function(model, evaluate, tail, batched=batched)

    def f(theta):
        out = g(theta)
        if normalised:
            with jax.enable_x64(True):
                axes = tuple(range(out.ndim - len(tail), out.ndim))
                out = out / jnp.sum(out, axis=axes, keepdims=True)
        return out

    how = "batched" if batched else "one θ"
    f.__doc__ = f"Expected {which.upper()} of a demographic model ({how})."
    f.n_params = model.n_params
    f.batched = batched
    f.method = "kernel"
    f.normalised = normalised
    return f


def _is_demographic(obj) -> bool:
    from .demography.model import DemographicModel

    return isinstance(obj, DemographicModel)


def sfs_function(
    trace,
    *,
    normalised: bool = False,
    n_demes: int | None = None,
    batched: bool = False,
    method: str = "auto",
    **options,
) -> Callable:
    """:func:`sfs` as a JAX function of θ, for ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

    Built on :func:`phasetrace.jax.moments_fn` (JAX is imported here, not when phasetrace
    is). Results are float64 whatever ``jax_enable_x64`` says (see :mod:`phasetrace.jax`).

    Parameters
    ----------
    trace : Trace
        Recorded from a block-counting graph.
    normalised : bool
        Divide by the sum over the spectrum (the sum is differentiated too).
    n_demes : int, optional
        As in :func:`sfs`.
    batched : bool
        ``False``: ``f(theta)`` with θ of shape ``(n_params,)`` returns ``(n − 1,)``;
        ``True``: ``f(thetas)`` with ``(B, n_params)`` returns ``(B, n − 1)``.
    method : {"auto", "kernel", "native"}
        As in :func:`~phasetrace.jax.moments_fn`. ``"kernel"`` evaluates the ``n − 1``
        rewards in one pass; ``"native"`` (the default on accelerators) lowers one program
        per reward row, so its first call costs ``n − 1`` lowerings.
    **options
        Passed on to :func:`~phasetrace.jax.moments_fn` (``chunk``, ``gradient``).

    Returns
    -------
    callable
        ``f(theta)`` returning a float64 ``jax.Array``.

    Examples
    --------
    (Needs JAX, so not run as a doctest; ``tests/test_structured.py`` runs it.) ::

        import jax, numpy as np, phasetrace as pt
        trace = pt.record_trace(pt.models.kingman(4))
        f = sfs_function(trace)
        jax.jit(f)(np.array([2.0]))                   # [1.0, 0.5, 0.333…]: 2/(i·c)
        jax.grad(lambda t: f(t)[0])(np.array([2.0]))  # [-0.5]: d(2/c)/dc
    """
    if _is_demographic(trace):
        return _model_spectrum_function(trace, "sfs", normalised, batched)
    import jax
    import jax.numpy as jnp

    from .jax import METHODS, moments_fn

    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "kernel" if jax.default_backend() == "cpu" else "native"
    rewards = sfs_rewards(trace, n_demes=n_demes)
    if method == "kernel":
        f_all = moments_fn(trace, 1, rewards=rewards, batched=batched, method="kernel", **options)

        def spectrum(theta):
            return f_all(theta)[..., 0]

    else:
        rows = [
            moments_fn(trace, 1, rewards=r, batched=batched, method="native", **options)
            for r in rewards
        ]

        def spectrum(theta):
            return jnp.concatenate([f(theta) for f in rows], axis=-1)

    def f(theta):
        out = spectrum(theta)
        if normalised:
            with jax.enable_x64(True):
                out = out / jnp.sum(out, axis=-1, keepdims=True)
        return out

    n = rewards.shape[0] + 1
    f.__doc__ = (
        f"{'Normalised e' if normalised else 'E'}xpected SFS (n = {n}) of a {trace!r} "
        f"({'batched' if batched else 'one θ'})."
    )
    f.n_params = trace.n_params
    f.batched = batched
    f.method = method
    f.normalised = normalised
    return f


def _states(trace) -> np.ndarray:
    """The states of every vertex but the start (the only all-zero state)."""
    states = np.asarray(trace.states)
    return states[states.any(axis=1)]


def _holds_n(states: np.ndarray, n: int, d: int) -> bool:
    """Whether every state, read as ``d`` demes × ``n`` sizes, holds ``n >= 2`` samples."""
    if n < 2 or (states < 0).any():
        return False
    sizes = np.tile(np.arange(1, n + 1, dtype=np.int64), d)
    return bool((states @ sizes == n).all())
