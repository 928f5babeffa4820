"""Gradients of moments (the kernel's adjoint) against the derivative of the dense formula.

The reference differentiates ``E[Y^j] = j!·α (U Δ(r))^j 𝟙`` exactly, in rational
arithmetic (``tests/reference.py``), so it shares nothing with the trace but the graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import phasetrace as pt
from reference import exact_moment_gradients, exact_moments, rel_err
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(300)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reward(state):
    return float(state[1] % 3)  # zero on some vertices


def _close(got, want, rtol, moments):
    """Entry-wise: relative to the largest entry of the same moment (a gradient entry can
    be exactly zero, or tiny against its neighbours), and to 1e-3 of the moment itself: a
    row that is exactly zero is a sum of terms of the moment's size that cancel, so it
    comes out as rounding (seen: 1.3e-14 of the moment at θ = 0.1)."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = np.maximum(np.abs(want).max(axis=-1), 1e-3 * np.abs(moments))
    scale = np.maximum(scale, 1e-300)[..., None]
    return float(np.max(np.abs(got - want) / scale)) <= rtol


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_jacobian_matches_the_exact_derivative(graph, theta):
    trace = pt.record_trace(graph)
    for rewards in (None, reward):
        m, jac = trace.moments_and_jacobian(theta, k=3, rewards=rewards)
        want = [[float(x) for x in row] for row in exact_moment_gradients(graph, theta, 3, rewards)]
        assert _close(jac, want, 1e-9, m)
        assert np.array_equal(m, trace.moments(theta, k=3, rewards=rewards))
        assert rel_err(m, [float(x) for x in exact_moments(graph, theta, 3, rewards)]) <= 1e-10


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=16), theta=thetas)
def test_batches_and_reward_matrices_give_each_thetas_own_jacobian(graph, theta):
    trace = pt.record_trace(graph)
    batch = np.array([theta, [t * 2 for t in theta], [t * 0.5 for t in theta]] * 4)  # 12: 2 blocks
    rewards = np.stack([trace.rewards_from(reward), np.ones(trace.n_vertices)])
    m, jac = trace.moments_and_jacobian(batch, k=2, rewards=rewards)
    assert m.shape == (12, 2, 2) and jac.shape == (12, 2, 2, graph.n_params)
    for b in (0, 5, 11):
        for r in range(2):
            one = trace.moments_and_jacobian(batch[b], k=2, rewards=rewards[r])
            assert np.allclose(m[b, r], one[0], rtol=1e-13, atol=0)
            assert np.allclose(jac[b, r], one[1], rtol=1e-12, atol=1e-300)


def test_kingman_gradient_closed_form():
    """E[T^j] of the Kingman coalescent scales as c^-j: ∂E[T^j]/∂c = −j·E[T^j]/c."""
    trace = pt.record_trace(pt.models.kingman(12, state_space="lineages"))
    for c in (0.5, 2.0):
        m, jac = trace.moments_and_jacobian([c], k=3)
        assert rel_err(jac[:, 0], -np.arange(1, 4) * m / c) <= 1e-12


def test_gradient_shortcut_and_threads_agree():
    trace = pt.record_trace(pt.models.two_island(12))
    batch = np.random.default_rng(0).uniform(0.3, 2.0, (64, 2))  # split over threads
    g = trace.gradient(batch)
    assert g.shape == (64, 2)
    with pt.config(n_workers=1):
        assert np.array_equal(trace.gradient(batch), g)
    assert np.array_equal(trace.gradient(batch[7]), g[7])


def test_gradient_is_nan_only_for_the_bad_theta_when_not_checked():
    from phasetrace import kernel

    trace = pt.record_trace(pt.models.two_island(6))
    rewards = np.where(trace.arrays["vertex_kind"] == 1, 1.0, 0.0)[None, :]
    th = np.array([[1.0, 0.5], [1.0, -0.5], [2.0, 1.0]])
    m, jac = kernel.moments_and_jacobian(trace, th, rewards, 1, check=False)
    assert np.isnan(m[1]).all() and np.isnan(jac[1]).all()
    assert np.isfinite(m[[0, 2]]).all() and np.isfinite(jac[[0, 2]]).all()
    with pytest.raises(pt.InvalidParameterError, match=r"state \[.*\] -> state \[.*\]"):
        trace.moments_and_jacobian(th)
