"""Derivatives in θ of the distribution functions (``*_and_gradient``) and their JAX
functions (``phasetrace.jax._distribution``), against independent references:

- the exact Fréchet derivative of the matrix exponential (``scipy.linalg.expm_frechet``)
  on the dense sub-intensity matrix ``S(θ)`` and its derivative ``∂S/∂θ_p``, both built
  here from the graph's edges (not from the trace), and
- central finite differences of ``scipy.linalg.expm`` on the same matrices.

Required: absolute error at most 1e-8 (the functions promise ``tol = 1e-10`` of truncation
error plus rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import phasetrace as pt
from phasetrace.distribution import (
    DEFAULT_MAX_STEPS,
    cdf,
    cdf_and_gradient,
    pdf,
    pdf_and_gradient,
    quantile,
    quantile_and_gradient,
    sf,
    sf_and_gradient,
)
from reference import transient_states, within_uniformization_limit
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(600)

ATOL = 1e-8  # required absolute accuracy of every derivative


# -- the dense reference -----------------------------------------------------------------
def dense_system(graph, theta):
    """``(α, S, [∂S/∂θ_p])`` over the transient vertices, in ``to_matrices`` order, from
    the graph's edges (``base + coef·θ``)."""
    alpha, S = graph.to_matrices(theta)
    verts = [v for v in graph.vertices() if not v.is_starting() and not v.is_absorbing()]
    pos = {v.index: i for i, v in enumerate(verts)}
    n, n_par = len(verts), graph.n_params
    dS = np.zeros((n_par, n, n))
    for v in verts:
        i = pos[v.index]
        for e in v.edges():
            c = np.zeros(n_par) if e.coefficients is None else np.asarray(e.coefficients)
            dS[:, i, i] -= c
            if e.to.index in pos:
                dS[:, i, pos[e.to.index]] += c
    for e in graph.starting_vertex().edges():
        assert e.coefficients is None or not np.any(e.coefficients)  # α does not move
    return alpha, S, dS


def reduce_rewards(alpha, S, dS, r):
    """The reward-time chain: zero-reward states removed by a Schur complement (solve),
    the other rows divided by their rewards; with the derivatives of both."""
    P, Z = np.flatnonzero(r > 0), np.flatnonzero(r == 0)
    dalpha = np.zeros((dS.shape[0], len(alpha)))
    if Z.size:
        A = -S[np.ix_(Z, Z)]
        X = np.linalg.solve(A, S[np.ix_(Z, P)])  # (−S_ZZ)⁻¹ S_ZP
        new_S = S[np.ix_(P, P)] + S[np.ix_(P, Z)] @ X
        new_dS, new_dalpha = [], []
        for d in dS:
            dX = np.linalg.solve(A, d[np.ix_(Z, P)] + d[np.ix_(Z, Z)] @ X)
            new_dS.append(d[np.ix_(P, P)] + d[np.ix_(P, Z)] @ X + S[np.ix_(P, Z)] @ dX)
            new_dalpha.append(alpha[Z] @ dX)
        alpha, S, dS, dalpha = (
            alpha[P] + alpha[Z] @ X,
            new_S,
            np.array(new_dS),
            np.array(new_dalpha),
        )
        r = r[P]
    else:
        dalpha = np.zeros((dS.shape[0], len(alpha)))
    return alpha, dalpha, S / r[:, None], dS / r[None, :, None]


def frechet_reference(graph, theta, times, reward_fn=None):
    """``(sf, pdf)`` and their derivatives ``(n_par, T)`` by ``expm_frechet``."""
    linalg = pytest.importorskip("scipy.linalg")
    alpha, S, dS = dense_system(graph, theta)
    dalpha = np.zeros((dS.shape[0], len(alpha)))
    if reward_fn is not None:
        r = np.array([reward_fn(s) for s in transient_states(graph)], dtype=float)
        alpha, dalpha, S, dS = reduce_rewards(alpha, S, dS, r)
    ones = np.ones(len(alpha))
    s, ds = -S @ ones, -dS @ ones
    n_par = dS.shape[0]
    out = np.zeros((2, len(times)))
    grad = np.zeros((2, n_par, len(times)))
    for i, t in enumerate(times):
        for p in range(n_par):
            E, L = linalg.expm_frechet(S * t, dS[p] * t)
            grad[0, p, i] = dalpha[p] @ E @ ones + alpha @ L @ ones
            grad[1, p, i] = dalpha[p] @ E @ s + alpha @ L @ s + alpha @ E @ ds[p]
        if n_par == 0:
            E = linalg.expm(S * t)
        out[0, i] = alpha @ E @ ones
        out[1, i] = alpha @ E @ s
    return out, grad


def finite_difference_reference(graph, theta, times, h=1e-5):
    """``∂(sf, pdf)/∂θ`` (2, n_par, T) by central differences of ``expm`` (error ~h²)."""
    linalg = pytest.importorskip("scipy.linalg")
    theta = np.asarray(theta, dtype=float)
    grad = np.zeros((2, len(theta), len(times)))

    def values(th):
        alpha, S = graph.to_matrices(th)
        s = -S.sum(axis=1)
        rows = np.array([alpha @ linalg.expm(S * t) for t in times])
        return np.stack([rows.sum(axis=1), rows @ s])

    for p in range(len(theta)):
        step = h * max(1.0, abs(theta[p]))
        up, down = theta.copy(), theta.copy()
        up[p] += step
        down[p] -= step
        grad[:, p] = (values(up) - values(down)) / (2 * step)
    return grad


def ours(trace, times, theta, **kw):
    """``(values (3, T), grads (3, n_par, T))`` for sf, cdf, pdf."""
    vals, grads = [], []
    for fn in (sf_and_gradient, cdf_and_gradient, pdf_and_gradient):
        v, g = fn(trace, times, theta, **kw)
        vals.append(v)
        grads.append(np.moveaxis(g, -1, 0))
    return np.stack(vals), np.stack(grads)


def max_err(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got) - np.asarray(ref)))) if np.size(ref) else 0.0


def stiff_graph():
    """Fast rate θ₀ = 1e2, slow rates θ₁ = 1e-2 on a cycle (1e4 apart), a constant exit."""
    return pt.Graph.from_arrays(
        [[1], [2], [3], [4]],
        src=[0, 1, 1, 2, 2],
        dst=[1, 0, 2, 3, 1],
        weights=[0.0, 0.0, 0.0, 0.05, 0.0],
        coefficients=[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0]],
        initial=([0], [1.0]),
    )


def check_against_frechet(graph, theta, times, reward_fn=None, atol=ATOL):
    trace = pt.record_trace(graph)
    rewards = None if reward_fn is None else reward_fn
    vals, grads = ours(trace, times, theta, rewards=rewards)
    ref, ref_grad = frechet_reference(graph, theta, times, reward_fn)
    assert max_err(vals[0], ref[0]) <= 1e-9
    assert max_err(vals[2], ref[1]) <= 1e-9 * max(1.0, float(np.max(ref[1])))
    assert max_err(grads[0], ref_grad[0]) <= atol
    assert max_err(grads[1], -ref_grad[0]) <= atol
    assert max_err(grads[2], ref_grad[1]) <= atol
    # the values are those of the plain functions, bit for bit
    assert np.array_equal(vals[1], cdf(trace, times, theta, rewards=rewards))
    assert np.array_equal(vals[2], pdf(trace, times, theta, rewards=rewards))
    assert np.array_equal(vals[0], sf(trace, times, theta, rewards=rewards))
    return grads, ref_grad


# -- against expm_frechet ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("graph", "theta", "t_max"),
    [
        (pt.models.two_island(6), [1.0, 0.5], 30.0),
        (pt.models.two_island(6), [2.0, 0.05], 120.0),
        (pt.models.kingman(5), [1.0], 12.0),
        (pt.models.kingman(5), [0.3], 40.0),
    ],
    ids=["two_island6", "two_island6-lowmig", "kingman5", "kingman5-slow"],
)
def test_models_match_frechet(graph, theta, t_max):
    t = np.linspace(0.0, t_max, 25)
    _, ref = check_against_frechet(graph, theta, t)
    assert np.max(np.abs(ref)) > 0.05  # the derivatives are not all ~0


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_match_frechet(seed):
    rng = np.random.default_rng(200 + seed)
    graph = pt.models.random_graph(
        int(rng.integers(8, 30)), n_sccs=int(rng.integers(2, 5)), seed=seed
    )
    theta = rng.uniform(0.2, 3.0, 2)
    mean = float(pt.record_trace(graph).expectation(theta))
    t = np.concatenate([[0.0], np.linspace(0.01, 10 * mean, 30)])
    check_against_frechet(graph, theta, t)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=16), theta=thetas)
def test_hypothesis_cyclic_graphs_match_frechet(graph, theta):
    """Rates from 0.05 to ~30 on rings with chords, parameterized or not."""
    mean = float(pt.record_trace(graph).expectation(theta))
    t = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0]) * mean
    t = within_uniformization_limit(graph, theta, t, DEFAULT_MAX_STEPS)
    _, ref = frechet_reference(graph, theta, t)
    check_against_frechet(graph, theta, t, atol=ATOL * max(1.0, float(np.max(np.abs(ref)))))


def test_stiff_graph_matches_frechet():
    """Rates 1e4 apart: λt reaches ~1e5; the slow phase carries the derivative."""
    graph = stiff_graph()
    t = np.array([0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 300.0, 1000.0])
    _, ref = check_against_frechet(graph, [1e2, 1e-2], t)
    assert np.max(np.abs(ref[0, 1])) > 1.0  # ∂sf/∂θ₁ is large: the check is not vacuous


def test_rewards_match_frechet():
    """Y = ∫ r(X_t) dt with positive rewards (rows divided by r) and with zero rewards
    (eliminated: the derivatives go through the elimination; α moves with θ)."""
    check_against_frechet(
        pt.models.kingman(6), [1.3], np.linspace(0.0, 30.0, 16), lambda s: 0.5 + s[0]
    )
    graph = pt.models.random_graph(18, n_sccs=3, seed=1)
    t = np.linspace(0.0, 25.0, 16)
    _, ref = check_against_frechet(graph, [0.8, 1.7], t, lambda s: float(s[1] % 3))
    assert np.max(np.abs(ref)) > 0.01


def test_finite_differences_agree():
    """A second, cruder reference: central differences of expm (error ~1e-9 here)."""
    graph = pt.models.two_island(5)
    trace = pt.record_trace(graph)
    theta = [1.2, 0.4]
    t = np.linspace(0.0, 20.0, 11)
    _, grads = ours(trace, t, theta)
    fd = finite_difference_reference(graph, theta, t)
    assert max_err(grads[0], fd[0]) <= 1e-7
    assert max_err(grads[2], fd[1]) <= 1e-7


def test_closed_form_exponential():
    """kingman(2): T ~ Exp(θ); ∂sf = −t e^{−θt}, ∂pdf = (1 − θt) e^{−θt}."""
    trace = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    for c in (0.5, 2.0, 37.0):
        t = np.concatenate([[0.0], np.geomspace(1e-4, 40.0 / c, 40)])
        _, g = sf_and_gradient(trace, t, [c])
        assert max_err(g[:, 0], -t * np.exp(-c * t)) <= ATOL
        _, g = pdf_and_gradient(trace, t, [c])
        assert max_err(g[:, 0], (1 - c * t) * np.exp(-c * t)) <= ATOL


def test_trap_reached_only_through_the_derivative():
    """A slow state reached over an edge of tiny rate ε: P(T > t) hardly depends on it,
    but ∂/∂ε is O(1) long after the mass has left (the tangent must not stop when π
    does). A → absorb at 1, A → B at ε = θ₀, B → absorb at 1e-3."""
    graph = pt.Graph.from_arrays(
        [[1], [2], [3]],
        src=[0, 0, 1],
        dst=[2, 1, 2],
        weights=[1.0, 0.0, 1e-3],
        coefficients=[[0.0], [1.0], [0.0]],
        initial=([0], [1.0]),
    )
    trace = pt.record_trace(graph)
    t = np.array([1.0, 50.0, 500.0, 3000.0])
    value, g = sf_and_gradient(trace, t, [1e-12])
    _, ref_grad = frechet_reference(graph, [1e-12], t)
    assert max_err(g[:, 0], ref_grad[0, 0]) <= ATOL
    # at ε → 0: ∂sf/∂ε = −t e^{−t} + ∫₀ᵗ e^{−s} e^{−a(t−s)} ds, a = 1e-3
    a = 1e-3
    exact = -t * np.exp(-t) + (np.exp(-a * t) - np.exp(-t)) / (1 - a)
    assert max_err(g[:, 0], exact) <= 1e-6
    assert value[-1] < 1e-9 and g[-1, 0] > 0.04


# -- quantiles ------------------------------------------------------------------------------
def test_quantile_gradient_matches_implicit_differences():
    graph = pt.models.two_island(6)
    trace = pt.record_trace(graph)
    theta = np.array([1.0, 0.5])
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.9, 0.999, 1.0])
    q, dq = quantile_and_gradient(trace, p, theta)
    assert np.array_equal(q, quantile(trace, p, theta))
    assert dq.shape == (7, 2)
    assert dq[0].tolist() == [0.0, 0.0] and dq[-1].tolist() == [0.0, 0.0]
    h = 1e-6
    for k in range(2):
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        fd = (quantile(trace, p[1:-1], up) - quantile(trace, p[1:-1], down)) / (2 * h)
        assert np.allclose(dq[1:-1, k], fd, rtol=1e-6, atol=1e-7)
    # and the exact formula, from the Fréchet reference: ∂q = ∂sf(q)/f(q)
    ref, ref_grad = frechet_reference(graph, theta, q[1:-1])
    assert np.allclose(dq[1:-1], (ref_grad[0] / ref[1]).T, rtol=1e-8, atol=1e-9)


# -- shapes, batches, special times ------------------------------------------------------
def test_shapes_and_batches():
    trace = pt.record_trace(pt.models.two_island(4))
    th1 = np.array([1.0, 0.5])
    thb = np.array([[1.0, 0.5], [2.0, 0.1], [0.3, 3.0]])
    t = np.linspace(0.0, 5.0, 6).reshape(2, 3)
    for fn in (sf_and_gradient, cdf_and_gradient, pdf_and_gradient):
        v, g = fn(trace, t, th1)
        assert v.shape == (2, 3) and g.shape == (2, 3, 2)
        v, g = fn(trace, t, thb)
        assert v.shape == (3, 2, 3) and g.shape == (3, 2, 3, 2)
        for b in range(3):
            vb, gb = fn(trace, t, thb[b])
            assert np.array_equal(v[b], vb) and np.array_equal(g[b], gb)
        v, g = fn(trace, 1.0, th1)
        assert np.ndim(v) == 0 and g.shape == (2,)
    q, dq = quantile_and_gradient(trace, [[0.1, 0.5]], thb)
    assert q.shape == (3, 1, 2) and dq.shape == (3, 1, 2, 2)


def test_special_times():
    trace = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    t = [-1.0, np.inf, np.nan, 0.0, 1e300]
    for fn in (sf_and_gradient, cdf_and_gradient, pdf_and_gradient):
        _, g = fn(trace, t, [1.0])
        assert g[[0, 1, 3, 4], 0].tolist() == [0.0, 0.0, 0.0, 0.0] and math.isnan(g[2, 0])


def test_no_parameters():
    graph = pt.Graph.from_matrices([0.6, 0.4], np.array([[-2.0, 1.0], [0.5, -0.5]]))
    trace = pt.record_trace(graph)
    v, g = cdf_and_gradient(trace, [0.0, 1.0], [])
    assert g.shape == (2, 0)
    assert np.array_equal(v, cdf(trace, [0.0, 1.0], []))


def test_errors_are_those_of_the_values():
    trace = pt.record_trace(pt.models.two_island(4))
    with pytest.raises(pt.InvalidParameterError, match="theta must have shape"):
        cdf_and_gradient(trace, [1.0], [1.0])
    with pytest.raises(pt.InvalidParameterError, match=r"is not > 0"):
        pdf_and_gradient(trace, [1.0], [1.0, -0.5])
    with pytest.raises(pt.InvalidParameterError, match="tol"):
        sf_and_gradient(trace, [1.0], [1.0, 0.5], tol=-1.0)
    stiff = pt.record_trace(stiff_graph())
    with pytest.raises(pt.InvalidParameterError, match=r"max_steps=1000"):
        cdf_and_gradient(stiff, [500.0], [1e2, 1e-2], max_steps=1000)


def test_huge_times_after_exhaustion():
    """Far past absorption no more steps are needed than for the mass (and its tangent)
    to run out; the derivatives there are 0."""
    trace = pt.record_trace(stiff_graph())
    v, g = cdf_and_gradient(trace, [1e5, 1e8, 1e300], [1e2, 1e-2])
    assert v.tolist() == [1.0, 1.0, 1.0]
    assert np.abs(g).max() <= 1e-10


# -- JAX -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jax_mod():
    return pytest.importorskip("jax")


@pytest.mark.parametrize("kind", ["cdf", "sf", "pdf"])
def test_jax_values_jit_vmap_grad(jax_mod, kind):
    jax = jax_mod
    jnp = jax.numpy
    from phasetrace.jax._distribution import distribution_fn

    graph = pt.models.two_island(5)
    trace = pt.record_trace(graph)
    fn = {"cdf": cdf_and_gradient, "sf": sf_and_gradient, "pdf": pdf_and_gradient}[kind]
    f = distribution_fn(trace, kind)
    t = np.linspace(0.0, 10.0, 7)
    thetas = np.array([[1.0, 0.5], [2.0, 0.1], [0.7, 1.3]])
    with jax.enable_x64(True):
        want, want_grad = fn(trace, t, thetas)
        got = f(t, thetas[0])
        assert got.dtype == jnp.float64
        assert np.array_equal(np.asarray(got), want[0])
        got = jax.jit(f)(t, thetas[1])
        assert np.array_equal(np.asarray(got), want[1])
        got = jax.vmap(f, in_axes=(None, 0))(t, thetas)
        assert np.array_equal(np.asarray(got), want)
        got = jax.jit(jax.vmap(f, in_axes=(None, 0)))(t, thetas)
        assert np.array_equal(np.asarray(got), want)
        # gradients: of a scalar function, under jit, and a whole Jacobian under vmap
        g = jax.grad(lambda th: jnp.sum(f(t, th) * jnp.arange(7.0)))(thetas[0])
        assert max_err(g, np.tensordot(np.arange(7.0), want_grad[0], axes=1)) <= 1e-13
        g = jax.jit(jax.grad(lambda th: f(t[3], th)))(thetas[2])
        assert max_err(g, want_grad[2, 3]) <= 1e-14
        jac = jax.vmap(jax.jacrev(lambda th: f(t, th)))(thetas)
        assert max_err(jac, want_grad) <= 1e-14
        jac = jax.jacfwd(lambda th: f(t, th))(thetas[1])
        assert max_err(jac, want_grad[1]) <= 1e-14


def test_jax_derivative_in_t(jax_mod):
    jax = jax_mod
    from phasetrace.jax._distribution import distribution_fn

    trace = pt.record_trace(pt.models.two_island(4))
    theta = np.array([1.0, 0.5])
    t = np.array([0.0, 0.5, 2.0, 7.0])
    dens = pdf(trace, t, theta)
    with jax.enable_x64(True):
        F = distribution_fn(trace, "cdf")
        S = distribution_fn(trace, "sf")
        d_cdf = jax.vmap(jax.grad(lambda s: F(s, theta)))(t)
        d_sf = jax.jit(jax.vmap(jax.grad(lambda s: S(s, theta))))(t)
        assert max_err(d_cdf, dens) <= 1e-9 and max_err(d_sf, -dens) <= 1e-9
        # vmap over t and θ together: one time per θ
        ths = np.array([[1.0, 0.5], [2.0, 0.5], [1.0, 0.1], [0.5, 2.0]])
        both = jax.jit(jax.vmap(F))(t, ths)
        want = [cdf(trace, t[i], ths[i]) for i in range(4)]
        assert np.array_equal(np.asarray(both), want)
        # nested vmaps: (θ outer) × (t inner)
        grid = jax.vmap(jax.vmap(F, in_axes=(0, None)), in_axes=(None, 0))(t, ths)
        assert np.array_equal(np.asarray(grid), cdf(trace, t, ths))
        jac = jax.vmap(jax.vmap(jax.grad(F, argnums=(0, 1)), in_axes=(0, None)), (None, 0))(t, ths)
        _, want_g = cdf_and_gradient(trace, t, ths)
        assert max_err(jac[1], want_g) <= 1e-14
        assert max_err(jac[0], pdf(trace, t, ths)) <= 1e-9
        P = distribution_fn(trace, "pdf")
        with pytest.raises(NotImplementedError, match="with respect to t"):
            jax.grad(lambda s: P(s, theta))(1.0)


def test_jax_rewards_and_bad_theta(jax_mod):
    jax = jax_mod
    from phasetrace.jax._distribution import distribution_fn

    graph = pt.models.kingman(5)
    trace = pt.record_trace(graph)

    def reward(s):
        return float(s[1])  # doubletons; zero elsewhere

    f = distribution_fn(trace, "cdf", rewards=reward)
    t = np.linspace(0.0, 4.0, 5)
    with jax.enable_x64(True):
        want, want_grad = cdf_and_gradient(trace, t, [1.3], rewards=reward)
        g = jax.jacrev(lambda th: f(t, th))(np.array([1.3]))
        assert max_err(g, want_grad) <= 1e-14
        with pytest.raises(pt.InvalidParameterError, match="is not > 0"):
            f(t, np.array([-1.0]))  # eager: raises like the numpy function
        out = jax.jit(f)(t, np.array([-1.0]))  # under jit: NaN for that θ
        assert np.isnan(np.asarray(out)).all()
        out = jax.vmap(f, in_axes=(None, 0))(t, np.array([[-1.0], [1.3]]))
        assert np.isnan(np.asarray(out[0])).all() and np.array_equal(np.asarray(out[1]), want)
    with pytest.raises(pt.InvalidParameterError, match="kind"):
        distribution_fn(trace, "quantile")


def test_jax_precision_warning_and_shapes(jax_mod):
    jax = jax_mod
    jnp = jax.numpy
    from phasetrace.errors import PrecisionWarning
    from phasetrace.jax._distribution import distribution_fn

    trace = pt.record_trace(pt.models.two_island(3))
    f = distribution_fn(trace, "sf")
    with pytest.warns(PrecisionWarning, match="float32"):
        out = f(np.array([1.0]), jnp.array([1.0, 0.5], dtype=jnp.float32))
    assert out.dtype == np.float64  # computed in float64 either way
    with pytest.raises(pt.InvalidParameterError, match=r"theta must have shape \(2,\)"):
        f(1.0, np.array([[1.0, 0.5]]))
    with jax.enable_x64(True):
        t = np.linspace(0.0, 3.0, 6).reshape(2, 3)
        assert f(t, np.array([1.0, 0.5])).shape == (2, 3)
        assert jax.jit(f)(t, np.array([1.0, 0.5])).shape == (2, 3)
        assert jax.jacrev(lambda th: f(t, th))(np.array([1.0, 0.5])).shape == (2, 3, 2)
