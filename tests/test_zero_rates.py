"""Rates of exactly 0 (an edge that contributes nothing) and results that are not finite.

An edge whose rate is 0 at θ is no edge: the moments are those of the chain on the states
reached from the start over edges of rate > 0. Only a reached state that can never be
absorbed is an error (infinite moments), and so are negative or non-finite rates and
moments that overflow float64. References: closed forms (two islands without migration
are one Kingman coalescent) and the dense formula restricted to the reached states, in
exact rational arithmetic (tests/reference.py).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from importlib.util import find_spec

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrace as pt
from phasetrace import kernel
from phasetrace.evaluate import moments as ref_moments
from reference import _exact_system, _lu, _solve, rel_err
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(300)


def kingman_moments(n: int, c: float) -> list[float]:
    """E[T], E[T²] of the Kingman T_MRCA: a sum of independent Exp(c·C(k, 2))."""
    rates = [c * math.comb(k, 2) for k in range(2, n + 1)]
    mean = sum(1 / r for r in rates)
    var = sum(1 / r**2 for r in rates)
    return [mean, var + mean**2]


def exact_restricted_moments(graph, theta, k: int) -> list[Fraction] | None:
    """``E[T^j]`` over the states reached over rates > 0, exactly; None if one of them
    cannot reach absorption (infinite moments)."""
    alpha, A, _ = _exact_system(graph, theta)
    n = len(alpha)
    succ = [[j for j in range(n) if j != i and A[i][j] < 0] for i in range(n)]
    exits = [sum(A[i], Fraction(0)) > 0 for i in range(n)]  # row sums of −S: exit rates
    reached = {i for i in range(n) if alpha[i] > 0}
    todo = list(reached)
    while todo:
        for j in succ[todo.pop()]:
            if j not in reached:
                reached.add(j)
                todo.append(j)
    absorbable = set(i for i in range(n) if exits[i])
    grown = True
    while grown:
        grown = False
        for i in range(n):
            if i not in absorbable and any(j in absorbable for j in succ[i]):
                absorbable.add(i)
                grown = True
    if reached - absorbable:
        return None
    idx = sorted(reached)
    LU, perm = _lu([[A[i][j] for j in idx] for i in idx])
    a = [alpha[i] for i in idx]
    v = [Fraction(1)] * len(idx)
    out = []
    for j in range(1, k + 1):
        v = _solve(LU, perm, v)
        out.append(math.factorial(j) * sum((x * y for x, y in zip(a, v, strict=True)), Fraction(0)))
    return out


def one_deme_or_two(n_params: int = 2) -> pt.Graph:
    """Two lineages in different demes, θ = (c, m): they meet only by migrating."""
    g = pt.Graph(state_length=2, n_params=n_params)
    s11, s20, s02, s10, s01 = (
        g.find_or_create_vertex(s) for s in ([1, 1], [2, 0], [0, 2], [1, 0], [0, 1])
    )
    g.starting_vertex().add_edge(s11, 1.0)
    s11.add_edge_parameterized(s20, 0.0, [0.0, 1.0])
    s11.add_edge_parameterized(s02, 0.0, [0.0, 1.0])
    s20.add_edge_parameterized(s10, 0.0, [1.0, 0.0])
    s20.add_edge_parameterized(s11, 0.0, [0.0, 2.0])
    s02.add_edge_parameterized(s01, 0.0, [1.0, 0.0])
    s02.add_edge_parameterized(s11, 0.0, [0.0, 2.0])
    return g


def detour() -> pt.Graph:
    """S → a; a → b at rate θ₀, a → end at 1; b → end at θ₁.

    ``E[T] = 1/(θ₀ + 1) + θ₀/((θ₀ + 1)·θ₁)``: at θ₀ = 0, ``E = 1`` and
    ``∂E/∂θ₀ = −1 + 1/θ₁``, ``∂E/∂θ₁ = 0``.
    """
    g = pt.Graph(state_length=1, n_params=2)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge_parameterized(b, 0.0, [1.0, 0.0])
    a.add_edge(end, 1.0)
    b.add_edge_parameterized(end, 0.0, [0.0, 1.0])
    return g


@pytest.fixture(scope="module")
def islands():
    return {n: pt.record_trace(pt.models.two_island(n)) for n in (2, 5, 20)}


# -- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5, 20])
def test_two_islands_without_migration_are_one_kingman_coalescent(islands, n):
    trace = islands[n]
    for c in (1.0, 0.5):
        got = trace.moments([c, 0.0], k=2)
        assert rel_err(got[0], 2 * (1 - 1 / n) / c) <= 1e-13
        assert rel_err(got, kingman_moments(n, c)) <= 1e-13
        assert np.array_equal(got, ref_moments(trace, [c, 0.0], k=2))  # bitwise: the reference
    batch = np.array([[1.0, 0.5], [1.0, 0.0], [0.5, 0.0], [2.0, 1e-3]])
    together = trace.moments(batch, k=2)  # a batch (16 lanes) with zero rates in it
    assert np.array_equal(together, [trace.moments(t, k=2) for t in batch])
    assert isinstance(trace.expectation([1.0, 0.0]), float)


def test_migration_rate_to_zero_is_a_jump_not_an_error(islands):
    """E[T] at m = 0 is Kingman; as m → 0+ it tends to another value (a lineage that
    migrates before coalescing waits ~1/m to come back), so m = 0 is a boundary point."""
    trace = islands[5]
    at_zero = trace.expectation([1.0, 0.0])
    near = trace.expectation([[1.0, 1e-9], [1.0, 1e-7]])
    assert rel_err(at_zero, 1.6) <= 1e-14
    assert abs(near[0] - near[1]) < 1e-5 and near[0] - at_zero > 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=16), theta=thetas, p=st.integers(0, 1))
def test_zero_rates_match_the_restricted_dense_formula(graph, theta, p):
    theta = list(theta)
    theta[p] = 0.0  # edges with base 0 whose coefficients sit on θ_p get rate 0
    trace = pt.record_trace(graph)
    exact = exact_restricted_moments(graph, theta, 3)
    if exact is None:
        with pytest.raises(pt.InvalidParameterError, match=r"state \[.*\] is reached at theta"):
            trace.moments(theta, k=3)
        with pytest.raises(pt.InvalidParameterError, match="never absorbed"):
            ref_moments(trace, theta, k=3)
        return
    got = trace.moments(theta, k=3)
    assert rel_err(got, [float(x) for x in exact]) <= 1e-10
    assert np.array_equal(got, ref_moments(trace, theta, k=3))


# -- gradients ---------------------------------------------------------------------------------
def test_gradient_at_a_zero_rate_matches_the_closed_form():
    trace = pt.record_trace(detour())
    for b in (2.0, 0.25):
        m, jac = trace.moments_and_jacobian([0.0, b])
        assert rel_err(m, 1.0) <= 1e-15
        assert rel_err(jac[0, 0], -1 + 1 / b) <= 1e-14 and jac[0, 1] == 0.0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=12), theta=thetas, p=st.integers(0, 1))
def test_gradient_at_zero_rates_matches_one_sided_differences(graph, theta, p):
    """Rates grow with θ here (coefficients >= 0), so θ_p = 0 is approached from above."""
    theta = np.array(theta)
    theta[p] = 0.0
    trace = pt.record_trace(graph)
    try:
        m, jac = trace.moments_and_jacobian(theta, k=2)
    except pt.InvalidParameterError as exc:
        assert "never absorbed" in str(exc) or "not differentiable" in str(exc)
        return
    h = 1e-6
    one_sided = _richardson(lambda s: _one_sided(trace, theta, p, s), h)
    scale = np.maximum(np.maximum(np.abs(m), np.abs(jac).max(axis=1)), 1.0)
    assert np.all(np.abs(jac[:, p] - one_sided) <= 1e-5 * scale)
    q = 1 - p
    if theta[q] > 2 * h:
        central = _richardson(lambda s: _central(trace, theta, q, s), h)
        assert np.all(np.abs(jac[:, q] - central) <= 1e-5 * scale)


def _one_sided(trace, theta, p, h):
    step = np.eye(2)[p] * h
    f0, f1, f2 = (trace.moments(theta + i * step, k=2) for i in (0, 1, 2))
    return (-3 * f0 + 4 * f1 - f2) / (2 * h)  # error O(h²)


def _central(trace, theta, q, h):
    step = np.eye(2)[q] * h
    return (trace.moments(theta + step, k=2) - trace.moments(theta - step, k=2)) / (2 * h)


def _richardson(difference, h):
    """Both differences above err by c·h² + O(h³); near a zero rate c can be large (moments
    of 1e5 with a curvature of 1e15 occur), so cancel it rather than shrink h into rounding."""
    return (4 * difference(h / 2) - difference(h)) / 3


def test_gradient_where_the_moments_jump_is_refused_or_nan(islands):
    trace = islands[5]
    th = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.5]])
    with pytest.raises(pt.InvalidParameterError, match=r"not differentiable in theta\[1\]"):
        trace.moments_and_jacobian(th)
    rewards = np.where(trace.arrays["vertex_kind"] == 1, 1.0, 0.0)[None, :]
    m, jac = kernel.moments_and_jacobian(trace, th, rewards, 2, check=False)
    assert np.isfinite(m).all()
    for b, c in enumerate((1.0, 2.0)):  # ∂E[T^j]/∂c = −j·E[T^j]/c; no ∂/∂m at m = 0
        assert rel_err(jac[b, 0, :, 0], -np.array([1.0, 2.0]) * m[b, 0] / c) <= 1e-13
        assert np.isnan(jac[b, 0, :, 1]).all()
    assert np.isfinite(jac[2]).all()


# -- errors -------------------------------------------------------------------------------------
def test_a_reached_state_without_a_way_out_is_named():
    trace = pt.record_trace(one_deme_or_two())
    for c, m in ((1.0, 1.0), (0.5, 2.0)):  # E[T] = 2/c + 1/(2m)
        assert rel_err(trace.expectation([c, m]), 2 / c + 1 / (2 * m)) <= 1e-14
    with pytest.raises(
        pt.InvalidParameterError,
        match=r"state \[1, 1\] is reached at theta=\[1.0, 0.0\] but never absorbed.*"
        r"all its out-edges have rate 0",
    ):
        trace.moments([1.0, 0.0])
    # c = 0: the lineages migrate forever, every state has a way out but none is absorbed
    with pytest.raises(
        pt.InvalidParameterError, match=r"state \[.*\] is reached .* only states that cannot"
    ):
        trace.moments([0.0, 1.0])
    with pytest.raises(pt.InvalidParameterError, match="never absorbed"):
        ref_moments(trace, [1.0, 0.0])
    rewards = np.where(trace.arrays["vertex_kind"] == 1, 1.0, 0.0)[None, :]
    out = kernel.moments(trace, np.array([[1.0, 1.0], [1.0, 0.0]]), rewards, 1, check=False)
    assert rel_err(out[0], 2.5) <= 1e-14 and np.isnan(out[1]).all()


def test_negative_and_infinite_rates_stay_errors(islands):
    trace = islands[5]
    with pytest.raises(
        pt.InvalidParameterError, match=r"rate -[\d.]+ at theta=\[1.0, -0.5\] is not > 0"
    ):
        trace.moments([1.0, -0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way
        with pytest.raises(pt.InvalidParameterError, match=r"rate inf .* is not finite"):
            trace.moments([1e308, 1e308])


def test_results_that_overflow_raise_without_warnings():
    g = pt.Graph(state_length=1, n_params=1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge_parameterized(b, 1e-320, [1.0])  # 1/rate overflows at θ = 0
    trace = pt.record_trace(g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rel_err(trace.moments([2.0]), 0.5) <= 1e-15
        with pytest.raises(pt.InvalidParameterError, match=r"theta=\[0.0\] are not finite"):
            trace.moments([0.0], k=2)
        with pytest.raises(pt.InvalidParameterError, match="not finite"):
            trace.moments_and_jacobian([[2.0], [0.0]])
        rewards = np.array([[0.0, 1.0, 0.0]])
        out = kernel.moments(trace, np.array([[2.0], [0.0], [4.0]]), rewards, 2, check=False)
        assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()


def test_expectation_of_one_theta_is_a_float(islands):
    e = islands[5].expectation([1.0, 0.5])
    assert isinstance(e, float) and e.shape == ()
    assert islands[5].expectation([[1.0, 0.5]]).shape == (1,)
    assert islands[5].variance([1.0, 0.5]).shape == ()


# -- JAX ----------------------------------------------------------------------------------------
needs_jax = pytest.mark.skipif(find_spec("jax") is None, reason="needs jax")
JAX_VARIANTS = [("kernel", "auto"), ("native", "forward"), ("native", "reverse")]


@needs_jax
@pytest.mark.parametrize(("method", "mode"), JAX_VARIANTS)
def test_jax_value_and_gradient_at_a_zero_rate(method, mode):
    import jax

    from phasetrace.jax import moments_fn

    trace = pt.record_trace(detour())
    f = moments_fn(trace, k=1, method=method, gradient=mode)
    th = np.array([0.0, 2.0])
    assert rel_err(f(th), [1.0]) <= 1e-15  # eager: no error at a zero rate
    with jax.enable_x64(True):
        assert rel_err(jax.jit(f)(th), [1.0]) <= 1e-15
        grad = jax.jit(jax.grad(lambda t: f(t)[0]))(th)
        assert rel_err(grad[0], -0.5) <= 1e-14 and grad[1] == 0.0
        batch = np.array([[0.0, 2.0], [0.0, 0.25], [0.5, 2.0]])
        grads = jax.vmap(jax.grad(lambda t: f(t)[0]))(batch)
    assert rel_err(grads[:2, 0], [-0.5, 3.0]) <= 1e-14
    assert rel_err(grads[2], trace.gradient(batch[2])) <= 1e-12


@needs_jax
def test_jax_two_islands_without_migration(islands):
    import jax

    from phasetrace.jax import moments_fn

    trace = islands[5]
    th = np.array([1.0, 0.0])
    f = moments_fn(trace, k=2, method="kernel")
    assert np.array_equal(f(th), trace.moments(th, k=2))
    with jax.enable_x64(True):
        assert np.array_equal(jax.jit(f)(th), trace.moments(th, k=2))
        grad = jax.jit(jax.grad(lambda t: f(t)[0]))(th)
    assert rel_err(grad[0], -1.6) <= 1e-14 and np.isnan(grad[1])  # ∂E/∂c = −E/c; no ∂/∂m
    native = moments_fn(trace, k=2, method="native")
    with jax.enable_x64(True):
        assert np.isnan(jax.jit(native)(th)).all()  # documented: the kernel evaluates these
    with pytest.raises(pt.InvalidParameterError, match="use method='kernel'"):
        native(th)


@needs_jax
@pytest.mark.parametrize("method", ["kernel", "native"])
def test_jax_results_that_overflow_are_nan_under_jit_and_raise_eagerly(method):
    import jax

    from phasetrace.jax import moments_fn

    g = pt.Graph(state_length=1, n_params=1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge_parameterized(b, 1e-320, [1.0])
    f = moments_fn(pt.record_trace(g), k=2, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jax.enable_x64(True):
            out = jax.jit(jax.vmap(f))(np.array([[2.0], [0.0]]))
        assert rel_err(out[0], [0.5, 0.5]) <= 1e-15 and np.isnan(out[1]).all()
        with pytest.raises(pt.InvalidParameterError, match="not finite"):
            f(np.array([0.0]))


@needs_jax
def test_float32_theta_warns_once_per_function(islands):
    import jax
    import jax.numpy as jnp

    from phasetrace.errors import PrecisionWarning
    from phasetrace.jax import moments_fn

    if jax.config.jax_enable_x64:
        pytest.skip("x64 is enabled globally in this process")
    trace = islands[5]
    f = moments_fn(trace, k=1)
    theta = np.array([1.3, 0.7])
    with pytest.warns(PrecisionWarning, match=r'jax.config.update\("jax_enable_x64", True\)'):
        rounded = jax.jit(f)(theta)  # the user's jit made θ float32 before f saw it
    exact = float(trace.expectation(theta))
    assert abs(np.asarray(rounded)[0] - exact) > 1e-9 * exact  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(jnp.asarray(theta))  # float32 again, but this function has warned already
        g = moments_fn(trace, k=1)
        assert np.array_equal(g(theta), trace.moments(theta))  # numpy float64: exact, silent
        with jax.enable_x64(True):
            assert np.array_equal(jax.jit(g)(theta), trace.moments(theta))


# -- distribution functions at zero rates ----------------------------------------------------------


def _dense_cdf_and_dm(graph, theta, times):
    """``F(t)`` and ``∂F/∂θ₁`` from ``scipy.linalg.expm`` / ``expm_frechet`` on the whole
    dense chain (zero rates included: the exponential needs no division)."""
    sl = pytest.importorskip("scipy.linalg")
    alpha, S = graph.to_matrices(theta)
    step = np.zeros_like(theta)
    step[1] = 1.0
    dS = graph.to_matrices(np.asarray(theta) + step)[1] - S  # S is linear in θ here
    ones = np.ones(S.shape[0])
    value = [1 - alpha @ sl.expm(S * t) @ ones for t in times]
    deriv = [-(alpha @ sl.expm_frechet(S * t, dS * t, compute_expm=False) @ ones) for t in times]
    return np.array(value), np.array(deriv)


def test_distribution_functions_at_zero_migration():
    g = pt.models.two_island(5)
    trace = pt.record_trace(g)
    times = np.array([0.2, 1.0, 3.0, 8.0])
    value, grad = pt.cdf_and_gradient(trace, times, [1.0, 0.0])
    ref_value, ref_dm = _dense_cdf_and_dm(g, np.array([1.0, 0.0]), times)
    assert np.abs(value - ref_value).max() <= 1e-9
    assert np.abs(grad[:, 1] - ref_dm).max() <= 1e-8  # F is smooth in m even where E[T] jumps
    assert np.array_equal(pt.cdf(trace, times, [1.0, 0.0]), value)
    assert np.abs(pt.sf(trace, times, [1.0, 0.0]) - (1 - ref_value)).max() <= 1e-9


def test_distribution_functions_refuse_a_reached_state_without_a_way_out():
    trace = pt.record_trace(one_deme_or_two())
    with pytest.raises(pt.InvalidParameterError, match=r"state \[1, 1\] is reached"):
        pt.cdf(trace, [1.0], [1.0, 0.0])


def test_gradient_with_zero_rewards_at_a_zero_rate_is_refused_not_wrong():
    trace = pt.record_trace(pt.models.two_island(4))
    rewards = np.where(trace.states.sum(axis=1) % 2 == 0, 1.0, 0.0)  # no time at odd levels
    with pytest.raises(pt.InvalidParameterError, match="not differentiable in theta\\[1\\]"):
        pt.cdf_and_gradient(trace, [1.0], [1.0, 0.0], rewards=rewards)
    value = pt.cdf(trace, [1.0], [1.0, 0.0], rewards=rewards)  # the value is fine
    assert 0.0 < float(value[0]) < 1.0


def test_variance_that_overflows_raises_without_warnings(monkeypatch):
    """E[Y²] finite while E[Y]² is past the float64 range (E[Y] ≈ 1.34e154) is a
    narrow band; the moments are forced there to reach the check."""
    trace = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    monkeypatch.setattr(
        pt.Trace, "moments", lambda self, theta, k=1, rewards=None: np.array([1.5e154, 1.7e308])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(pt.InvalidParameterError, match=r"variances .* not finite"):
            trace.variance([1.0])
