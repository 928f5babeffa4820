"""Moments from traces against independent references (docs/algorithm.md §8)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrace as pt
from reference import (
    dense_cross_moment,
    dense_moments,
    exact_expectation,
    exact_moments,
    rel_err,
)
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(300)
# PHASETRACE_EXAMPLES=1000 pytest tests/test_moments.py runs a longer search.
EXAMPLES = int(os.environ.get("PHASETRACE_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def reward_a(state):
    return float(state[1] % 3)  # zero on some vertices: zero rewards need no special case


def reward_b(state):
    return 0.5 + state[0]


@SETTINGS
@given(graph=cyclic_graphs(), theta=thetas)
def test_moments_match_dense_formula_on_cyclic_graphs(graph, theta):
    """k = 1..5 against the dense formula, in floats (numpy solve) and exactly (Fractions).

    The float reference is itself inexact on ill-conditioned graphs (its diagonal −λ loses
    small rates): hypothesis found graphs with E[T] ≈ 3e6 where numpy's solve is off by
    1.5e-10. So the 1e-10 bound is checked against the exact value always, and against
    numpy where its own error bound (cond(−S)·eps) is far below the tolerance.
    """
    trace = pt.record_trace(graph)
    got = trace.moments(theta, k=5)
    exact = [float(x) for x in exact_moments(graph, theta, 5)]
    assert rel_err(got, exact) <= 1e-10
    _, S = graph.to_matrices(theta)
    if np.linalg.cond(-S) * np.finfo(float).eps < 1e-12:
        assert rel_err(got, dense_moments(graph, theta, 5)) <= 1e-10


@SETTINGS
@given(graph=cyclic_graphs(), theta=thetas)
def test_reward_and_cross_moments_match_dense_formula(graph, theta):
    trace = pt.record_trace(graph)
    got = trace.moments(theta, k=3, rewards=reward_a)
    exact = [float(x) for x in exact_moments(graph, theta, 3, reward_a)]
    assert rel_err(got, exact) <= 1e-10
    _, S = graph.to_matrices(theta)
    if np.linalg.cond(-S) * np.finfo(float).eps < 1e-12:  # see the test above
        assert rel_err(got, dense_moments(graph, theta, 3, reward_a)) <= 1e-10
        cross = trace.cross_moment(theta, reward_a, reward_b)
        assert rel_err(cross, dense_cross_moment(graph, theta, reward_a, reward_b)) <= 1e-10


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=16), batch=st.lists(thetas, min_size=2, max_size=6))
def test_batch_equals_one_theta_at_a_time_bitwise(graph, batch):
    trace = pt.record_trace(graph)
    together = trace.moments(np.array(batch), k=3, rewards=reward_b)
    apart = np.array([trace.moments(t, k=3, rewards=reward_b) for t in batch])
    assert together.shape == (len(batch), 3)
    assert np.array_equal(together, apart)


def test_graph_has_cycles_and_several_sccs():
    """The property tests must exercise the x-program: check the strategy yields such graphs."""
    from hypothesis import find

    g = find(cyclic_graphs(), lambda g: len(g) > 8)
    trace = pt.record_trace(g)
    assert trace.summary()["x_program"] > 0
    from phasetrace.scc import decompose

    assert sum(u.n_internal > 1 for u in decompose(g).units) >= 2


@pytest.mark.parametrize("n", [2, 3, 10, 50, 200])
def test_kingman_tmrca_closed_form(n):
    trace = pt.record_trace(pt.models.kingman(n, state_space="lineages"))
    for c in (1.0, 0.25):
        assert rel_err(trace.expectation([c]), 2 * (1 - 1 / n) / c) <= 1e-12


@pytest.mark.parametrize("n", [3, 6, 10])
def test_kingman_block_counting_site_frequency_rewards(n):
    """E[total length of branches subtending i samples] = 2/i at rate 1."""
    trace = pt.record_trace(pt.models.kingman(n))
    assert rel_err(trace.expectation([1.0]), 2 * (1 - 1 / n)) <= 1e-12
    for i in range(1, n):
        got = trace.expectation([1.0], rewards=lambda s, i=i: s[i - 1])
        assert rel_err(got, 2 / i) <= 1e-12


def test_kingman_second_moment_closed_form():
    """Var[T_MRCA] = Σ_k 1/C(k,2)² for a sum of independent exponentials."""
    n = 12
    trace = pt.record_trace(pt.models.kingman(n, state_space="lineages"))
    mean = sum(1 / math.comb(k, 2) for k in range(2, n + 1))
    var = sum(1 / math.comb(k, 2) ** 2 for k in range(2, n + 1))
    m = trace.moments([1.0], k=2)
    assert rel_err(m, [mean, var + mean**2]) <= 1e-12


def test_two_island_reference_values():
    t5 = pt.record_trace(pt.models.two_island(5)).moments([1.0, 0.5], k=3)
    assert rel_err(t5, [3.40478787879, 19.2439855354, 155.060874143]) <= 1e-10
    t20 = pt.record_trace(pt.models.two_island(20)).moments([1.0, 0.5], k=2)
    assert rel_err(t20, [4.28051094096, 26.1901746231]) <= 1e-10


def test_two_island_vertex_counts():
    assert [len(pt.models.two_island(n)) for n in (20, 50)] == [231, 1326]


def _stiff_ring(n: int, fast: float, slow: float) -> pt.Graph:
    g = pt.Graph(state_length=1)
    vs = [g.find_or_create_vertex([i + 1]) for i in range(n)]
    out = g.find_or_create_vertex([n + 1])
    g.starting_vertex().add_edge(vs[0], 1.0)
    for i, v in enumerate(vs):
        v.add_edge(vs[(i + 1) % n], fast if i % 2 == 0 else slow)
        if i % 2 and (i - 1) % n != (i + 1) % n:
            v.add_edge(vs[(i - 1) % n], fast)
    vs[-1].add_edge(out, slow)
    return g


@pytest.mark.parametrize("n", [2, 4, 7])
def test_stiff_cycles_match_exact_rational_value(n):
    g = _stiff_ring(n, fast=1e9, slow=1e-2)
    exact = exact_expectation(g)
    got = pt.record_trace(g).expectation([])
    assert abs(got - float(exact)) / float(exact) <= 1e-12


def test_rewards_in_trace_order_and_callable_agree():
    g = pt.models.two_island(6)
    trace = pt.record_trace(g)
    as_array = np.array([reward_b(s) for s in trace.states])
    assert np.array_equal(
        trace.moments([1.0, 0.5], k=2, rewards=as_array),
        trace.moments([1.0, 0.5], k=2, rewards=reward_b),
    )
    assert (
        rel_err(
            trace.moments([1.0, 0.5], k=2, rewards=reward_b),
            dense_moments(g, [1.0, 0.5], 2, reward_b),
        )
        <= 1e-10
    )


def test_variance_and_expectation_shapes():
    trace = pt.record_trace(pt.models.two_island(4))
    assert np.ndim(trace.expectation([1.0, 0.5])) == 0
    assert trace.expectation([[1.0, 0.5], [2.0, 1.0]]).shape == (2,)
    m = trace.moments([1.0, 0.5], k=2)
    assert trace.variance([1.0, 0.5]) == pytest.approx(m[1] - m[0] ** 2)
