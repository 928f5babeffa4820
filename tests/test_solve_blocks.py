"""Solve blocks: large SCCs factorised at evaluation time instead of taped (docs/algorithm.md).

Models with large strongly connected components (block counting in several demes) get
solve blocks by the recorder's own rule; random cyclic graphs get them when the rule is
lowered (``solve_everything``), so every reference check of the taped path is repeated
with every non-trivial SCC solved.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import phasetrace as pt
from phasetrace import elimination, kernel
from phasetrace.errors import TraceFormatError
from phasetrace.evaluate import cross_moment as ref_cross_moment
from phasetrace.evaluate import moments as ref_moments
from phasetrace.scc import decompose
from phasetrace.structure import check_trace_arrays
from reference import (
    dense_cross_moment,
    dense_moments,
    exact_expectation,
    exact_moment_gradients,
    exact_moments,
    rel_err,
    transient_states,
)
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(300)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def solve_everything():
    """Record every SCC of two or more states as a solve block (this process only)."""
    saved = elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL
    elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL = 2, 0.0
    try:
        yield
    finally:
        elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL = saved


def reward(state):
    return float(state[1] % 3)  # zero on some vertices


def _solved_trace(graph):
    with solve_everything():
        trace = pt.record_trace(graph)
    sizes, solved = trace.unit_sizes()
    assert np.array_equal(solved, sizes >= 2)  # every non-trivial SCC, the start never
    return trace


@pytest.fixture(scope="module")
def blocks222():
    g = pt.models.structured_coalescent((2, 2, 2), state_space="blocks")
    return g, pt.record_trace(g)


def test_the_recorder_solves_large_dense_sccs_and_tapes_chains(blocks222):
    g, trace = blocks222
    sizes, solved = trace.unit_sizes()
    assert solved.any() and (sizes[solved] >= elimination.SOLVE_MIN_STATES).all()
    for unit in decompose(g).units:
        k = unit.n_internal
        fill = elimination.SOLVE_MIN_FILL * k * k
        want = k >= elimination.SOLVE_MIN_STATES and elimination.elimination_estimate(unit) >= fill
        assert elimination.solves_at_evaluation(unit) == want
    chains = pt.record_trace(pt.models.two_island(60))  # SCCs of up to 61 states, linear
    assert chains.summary()["solve_blocks"] == 0
    s = trace.summary()
    assert s["solve_blocks"] == int(solved.sum()) and s["largest_solve_block"] == sizes.max()
    assert s["units_taped"] + s["solve_blocks"] == sizes.size


def _symbolic_products(unit) -> int:
    """Row products of eliminating ``unit`` in its order, by a symbolic elimination on
    sets: pivot ``t`` updates each later row ``u`` with an entry ``(u, t)`` at every column
    ``w > t`` where row ``t`` has an entry."""
    k = unit.n_internal
    rows = [set() for _ in range(k)]
    for i in range(k):
        for w in unit.dst[unit.ptr[i] : unit.ptr[i + 1]].tolist():
            if w < k and w != i:
                rows[i].add(w)
    n = 0
    for t in range(k):
        right = {w for w in rows[t] if w > t}
        for u in range(t + 1, k):
            if t in rows[u]:
                n += len(right)
                rows[u] |= right - {u}
    return n


@pytest.mark.parametrize(
    "graph",
    [
        pt.models.structured_coalescent((2, 2, 2), state_space="blocks"),
        pt.models.structured_coalescent((4, 3), state_space="blocks"),
        pt.models.two_island(12),
    ],
    ids=["blocks222", "blocks43", "two_island"],
)
def test_elimination_estimate_is_the_symbolic_count_on_these_models(graph):
    for unit in decompose(graph).units:
        assert elimination.elimination_estimate(unit) == _symbolic_products(unit)


@settings(max_examples=40, deadline=None)
@given(graph=cyclic_graphs())
def test_elimination_estimate_bounds_the_symbolic_count(graph):
    for unit in decompose(graph).units:
        assert elimination.elimination_estimate(unit) >= _symbolic_products(unit)


def test_block_models_match_the_dense_formula(blocks222):
    g, trace = blocks222
    for theta in ([1.0, 0.7], [0.3, 2.5], [4.0, 0.05]):
        assert rel_err(trace.moments(theta, k=4), dense_moments(g, theta, 4)) <= 1e-10
        sizes = [lambda s, i=i: float(s[i] + s[6 + i] + s[12 + i]) for i in range(5)]
        for fn in sizes:
            got = trace.moments(theta, k=2, rewards=fn)
            assert rel_err(got, dense_moments(g, theta, 2, fn)) <= 1e-10
        got = trace.cross_moment(theta, trace.rewards_from(sizes[0]), trace.rewards_from(sizes[1]))
        assert rel_err(got, dense_cross_moment(g, theta, sizes[0], sizes[1])) <= 1e-10


def test_solve_blocks_equal_the_taped_trace(blocks222):
    g, trace = blocks222
    saved = elimination.SOLVE_MIN_STATES
    elimination.SOLVE_MIN_STATES = 10**9
    try:
        taped = pt.record_trace(g)
    finally:
        elimination.SOLVE_MIN_STATES = saved
    assert taped.summary()["solve_blocks"] == 0 and taped.digest() != trace.digest()
    batch = np.random.default_rng(3).uniform(0.2, 3.0, (40, 2))
    assert rel_err(trace.moments(batch, k=3), taped.moments(batch, k=3)) <= 1e-12
    m1, j1 = trace.moments_and_jacobian(batch[:20], k=2)
    m2, j2 = taped.moments_and_jacobian(batch[:20], k=2)
    assert rel_err(m1, m2) <= 1e-12 and rel_err(j1, j2) <= 1e-10


@SETTINGS
@given(graph=cyclic_graphs(), theta=thetas)
def test_solved_random_graphs_match_the_dense_formula(graph, theta):
    trace = _solved_trace(graph)
    assert rel_err(trace.moments(theta, k=5), dense_moments(graph, theta, 5)) <= 1e-10
    got = trace.moments(theta, k=3, rewards=reward)
    assert rel_err(got, dense_moments(graph, theta, 3, reward)) <= 1e-10
    cross = trace.cross_moment(theta, trace.rewards_from(reward), None)
    ones = lambda s: 1.0  # noqa: E731
    assert rel_err(cross, dense_cross_moment(graph, theta, reward, ones)) <= 1e-10


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_kernel_equals_numpy_reference_bitwise_on_solve_blocks(graph, theta):
    trace = _solved_trace(graph)
    batch = np.array([theta, [t * 1.5 for t in theta], [t * 0.7 for t in theta]] * 6)  # 16 lanes
    rewards = np.arange(trace.n_vertices) % 3 * 0.5
    for th in (theta, batch[:3], batch):
        for r in (None, rewards):
            assert np.array_equal(trace.moments(th, k=3, rewards=r), ref_moments(trace, th, 3, r))
        assert np.array_equal(
            trace.cross_moment(th, rewards, None), ref_cross_moment(trace, th, rewards, None)
        )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=16), theta=thetas)
def test_adjoint_through_solve_blocks_matches_the_exact_derivative(graph, theta):
    trace = _solved_trace(graph)
    for rewards in (None, reward):
        m, jac = trace.moments_and_jacobian(theta, k=3, rewards=rewards)
        want = np.array(exact_moment_gradients(graph, theta, 3, rewards), dtype=float)
        scale = np.maximum(np.abs(want).max(axis=-1, keepdims=True), 1e-300)
        assert np.max(np.abs(jac - want) / scale) <= 1e-9
        assert rel_err(m, [float(x) for x in exact_moments(graph, theta, 3, rewards)]) <= 1e-10
    batch = np.array([theta, [t * 2 for t in theta]] * 8)  # 16 θ: one block of lanes
    mb, jb = trace.moments_and_jacobian(batch, k=2)
    for b in (0, 1):
        one = trace.moments_and_jacobian(batch[b], k=2)
        assert np.allclose(mb[b], one[0], rtol=1e-13, atol=0)
        assert np.allclose(jb[b], one[1], rtol=1e-12, atol=1e-300)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=20))
def test_hierarchical_solve_blocks_equal_monolithic(graph):
    with solve_everything():
        mono = pt.record_trace(graph)
        units = pt.compute_trace(graph, hierarchical=True, strategy="sequential", cache=False)
        whole = pt.compute_trace(graph, hierarchical=False, strategy="sequential", cache=False)
    assert units.digest() == mono.digest() == whole.digest()
    assert mono.summary()["solve_blocks"] >= 2


class _Stiff:
    """A dense SCC of ``n`` states (a solve block by the recorder's own rule) whose rates
    are 1e9 next to 1e-2, left only through one slow edge."""

    @staticmethod
    def graph(n: int) -> pt.Graph:
        g = pt.Graph(state_length=1)
        vs = [g.find_or_create_vertex([i + 1]) for i in range(n)]
        out = g.find_or_create_vertex([n + 1])
        g.starting_vertex().add_edge(vs[0], 1.0)
        for i, v in enumerate(vs):
            for j, w in enumerate(vs):
                if i != j:
                    v.add_edge(w, 1e9 if (i + j) % 2 else 1e-2)
        vs[-1].add_edge(out, 1e-2)
        return g


@pytest.mark.parametrize("n", [16, 20])
def test_stiff_solve_block_matches_the_exact_rational_value(n):
    g = _Stiff.graph(n)
    trace = pt.record_trace(g)
    assert trace.summary()["solve_blocks"] == 1
    exact = exact_expectation(g)
    assert abs(trace.expectation([]) - float(exact)) / float(exact) <= 1e-12


@pytest.mark.parametrize("n", [2, 4, 7])
def test_stiff_rings_as_solve_blocks_match_the_exact_rational_value(n):
    g = pt.Graph(state_length=1)
    vs = [g.find_or_create_vertex([i + 1]) for i in range(n)]
    out = g.find_or_create_vertex([n + 1])
    g.starting_vertex().add_edge(vs[0], 1.0)
    for i, v in enumerate(vs):
        v.add_edge(vs[(i + 1) % n], 1e9 if i % 2 == 0 else 1e-2)
        if i % 2 and (i - 1) % n != (i + 1) % n:
            v.add_edge(vs[(i - 1) % n], 1e9)
    vs[-1].add_edge(out, 1e-2)
    trace = _solved_trace(g)
    exact = exact_expectation(g)
    assert abs(trace.expectation([]) - float(exact)) / float(exact) <= 1e-12


def test_transposed_solve_through_solve_blocks_is_seeds_times_the_inverse(blocks222):
    g, trace = blocks222
    rng = np.random.default_rng(5)
    thetas = np.array([[1.0, 0.7], [0.4, 2.0]])
    idx = [trace.vertex_index(s) for s in transient_states(g)]
    seeds = np.zeros((2, 3, trace.n_vertices))
    seeds[:, :, idx] = rng.uniform(-1.0, 1.0, (2, 3, len(idx)))
    out, bad = kernel.transposed_solve(trace, thetas, seeds)
    assert (bad == -1).all()
    for b in range(2):
        _, S = g.to_matrices(thetas[b])
        want = seeds[b][:, idx] @ np.linalg.inv(-S)
        assert np.max(np.abs(out[b][:, idx] - want)) <= 1e-12 * np.abs(want).max()


def test_zero_rates_inside_a_solve_block():
    """Migration rate 0 with every sample in one deme: the solve blocks' states that hold
    lineages elsewhere are never reached, and the chain is Kingman's coalescent."""
    g = pt.models.structured_coalescent((5, 0, 0), state_space="blocks")
    trace = pt.record_trace(g)
    assert trace.summary()["solve_blocks"] >= 1
    assert abs(trace.expectation([2.0, 0.0]) - 2 * (1 - 1 / 5) / 2.0) <= 1e-14
    kingman = pt.record_trace(pt.models.kingman(5, state_space="lineages"))
    assert rel_err(trace.moments([2.0, 0.0], k=3), kingman.moments([2.0], k=3)) <= 1e-13


def test_distribution_functions_on_a_trace_with_solve_blocks(blocks222):
    from scipy.linalg import expm

    g, trace = blocks222
    theta = [1.0, 0.7]
    alpha, S = g.to_matrices(theta)
    for t in (0.5, 2.0, 6.0):
        want = float(alpha @ expm(S * t) @ np.ones(S.shape[0]))
        assert abs(pt.sf(trace, t, theta) - want) <= 1e-9


def test_save_load_and_structure_checks_of_solve_blocks(tmp_path, blocks222):
    _, trace = blocks222
    path = tmp_path / "t.npz"
    trace.save(path)
    back = pt.Trace.load(path)
    assert back.digest() == trace.digest()
    assert np.array_equal(back.moments([1.0, 0.7], k=2), trace.moments([1.0, 0.7], k=2))
    arr = dict(trace.arrays)
    solved = np.flatnonzero(arr["unit_kind"] == 1)
    u = int(solved[0])
    v = int(arr["unit_ptr"][u])
    lo, hi = arr["row_ptr"][v], arr["row_ptr"][v + 1]
    bad = {**arr, "row_dst": arr["row_dst"].copy()}
    bad["row_dst"][lo] = arr["unit_ptr"][u + 1]  # a row entry past its block
    with pytest.raises(TraceFormatError, match="outside its unit"):
        check_trace_arrays(bad)
    bad = {**arr, "row_dst": arr["row_dst"].copy()}
    bad["row_dst"][lo] = v  # a self-loop
    with pytest.raises(TraceFormatError, match="outside its unit"):
        check_trace_arrays(bad)
    assert hi - lo >= 2
    bad = {**arr, "row_dst": arr["row_dst"].copy()}
    bad["row_dst"][lo + 1] = bad["row_dst"][lo]  # a repeated entry
    with pytest.raises(TraceFormatError, match="increasing"):
        check_trace_arrays(bad)
    kinds = arr["unit_kind"].copy()
    kinds[0] = 1  # the start's unit as a solve block
    with pytest.raises(TraceFormatError, match="start"):
        check_trace_arrays({**arr, "unit_kind": kinds})
    kinds = arr["unit_kind"].copy()
    kinds[u] = 7
    with pytest.raises(TraceFormatError, match="unit kind"):
        check_trace_arrays({**arr, "unit_kind": kinds})


def test_jax_uses_the_kernel_for_solve_blocks_and_native_refuses_them(blocks222):
    jax = pytest.importorskip("jax")
    from phasetrace.errors import InvalidParameterError
    from phasetrace.jax import moments_fn

    _, trace = blocks222
    theta = np.array([1.0, 0.7])
    f = moments_fn(trace, k=2)
    assert f.method == "kernel"
    assert np.array_equal(np.asarray(f(theta)), trace.moments(theta, k=2))
    with jax.enable_x64(True):
        grad = jax.grad(lambda t: f(t)[0])(jax.numpy.asarray(theta))
    assert np.array_equal(np.asarray(grad), trace.gradient(theta))
    with pytest.raises(InvalidParameterError, match="solve blocks"):
        moments_fn(trace, k=2, method="native")


def test_last_run_stats_say_which_path_each_scc_took(blocks222):
    g, trace = blocks222
    got = pt.compute_trace(g, strategy="sequential", cache=False)
    stats = pt.last_run_stats()
    sizes, solved = trace.unit_sizes()
    assert got.digest() == trace.digest()
    assert (stats.sccs_taped, stats.sccs_solved) == (int((~solved).sum()), int(solved.sum()))
    assert stats.largest_solved == sizes[solved].max()
    assert stats.largest_taped == sizes[~solved].max()
    assert "solve blocks" in str(stats)


def test_work_that_would_not_fit_is_refused_before_it_starts(monkeypatch, blocks222):
    """Recording and evaluation estimate their memory first and say how much they need."""
    from phasetrace import _memory

    g, trace = blocks222
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1000)
    monkeypatch.setattr(_memory, "MIN_CHECKED_BYTES", 0)
    with pytest.raises(pt.InsufficientMemoryError, match=r"recording .* needs about") as err:
        pt.record_trace(g)
    assert err.value.needed > err.value.available == 1000
    with pytest.raises(pt.InsufficientMemoryError, match="recording this graph"):
        pt.compute_trace(g, strategy="sequential", cache=False)
    with pytest.raises(pt.InsufficientMemoryError, match=r"evaluating 2 moment.*largest solve"):
        trace.moments([1.0, 0.7], k=2)
    with pytest.raises(pt.InsufficientMemoryError, match="derivatives"):
        trace.moments_and_jacobian([1.0, 0.7])
    monkeypatch.setattr(_memory, "available_bytes", lambda: None)  # unknown: nothing refused
    assert pt.record_trace(g).digest() == trace.digest()


def test_recording_memory_estimate_bounds_what_recording_allocates():
    import tracemalloc

    from phasetrace.elimination import BASE_BYTES, estimated_ops, recording_bytes

    pt.record_trace(pt.models.kingman(5))  # modules imported, kernels loaded
    for g in (pt.models.two_island(300), pt.models.kingman(33)):  # long chains; many units
        ops = [estimated_ops(u) for u in decompose(g).units]
        estimate = recording_bytes(sum(ops), len(ops), [max(ops)])
        assert estimate >= 2 * BASE_BYTES  # the per-op and per-unit terms dominate
        tracemalloc.start()
        pt.record_trace(g)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= estimate


@pytest.mark.parametrize("lanes", [1, 16])
def test_batches_on_threads_equal_one_theta_at_a_time_bitwise(monkeypatch, blocks222, lanes):
    """Solve blocks in blocks of 16 θ (lane by lane) and split over threads give each θ
    exactly its own result, and the numpy reference's."""
    _, trace = blocks222
    monkeypatch.setattr(kernel.CompiledTrace, "lanes", lambda self, batch, vectors: lanes)
    batch = np.random.default_rng(7).uniform(0.2, 3.0, (40, 2))  # 16 + 16 + 8, two threads
    rewards = np.stack([np.ones(trace.n_vertices), np.arange(trace.n_vertices) % 3 * 0.5])
    with pt.config(n_workers=2):
        together = trace.moments(batch, k=3, rewards=rewards)
        m, jac = trace.moments_and_jacobian(batch, k=2, rewards=rewards)
    for b in (0, 15, 16, 39):
        assert np.array_equal(together[b], trace.moments(batch[b], k=3, rewards=rewards))
        one_m, one_jac = trace.moments_and_jacobian(batch[b], k=2, rewards=rewards)
        assert np.array_equal(m[b], one_m)
        assert np.allclose(jac[b], one_jac, rtol=1e-13, atol=0)
    assert np.array_equal(together[:, 1], ref_moments(trace, batch, 3, rewards[1]))
