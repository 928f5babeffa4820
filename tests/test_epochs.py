"""EpochModel: moments, gradients and distribution functions across epochs, against the
dense Van Loan reference (tests/reference_epochs.py) on random cyclic graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.demography import MapTerms
from phasetrace.errors import InvalidGraphError, InvalidParameterError
from reference_epochs import (
    epoch_cdf,
    epoch_cross_moment,
    epoch_moments,
    epoch_pdf,
    epoch_quantile,
    full_generator,
)

pytestmark = pytest.mark.timeout(600)


def random_map(graph, rng, n_symbols: int = 0) -> MapTerms:
    """A row-stochastic map: each transient vertex to itself and one other vertex.

    With a symbol ``p``: ``u → w`` with probability ``c·p`` and ``u → u`` with ``1 − c·p``
    (written as the terms ``1 − c·p``); without: fixed random probabilities.
    """
    arr = graph.arrays()
    V = arr.states.shape[0]
    absorbing = np.diff(arr.ptr) == 0
    src, dst, coef, exps = [], [], [], []
    for u in range(1, V):
        if absorbing[u]:
            src.append(u), dst.append(u), coef.append(1.0), exps.append([0] * n_symbols)
            continue
        w = int(rng.integers(1, V))
        c = float(rng.uniform(0.2, 0.9))
        if n_symbols:
            terms = [(w, c, 1), (u, 1.0, 0), (u, -c, 1)]
            for d, cf, e in terms:
                src.append(u), dst.append(d), coef.append(cf), exps.append([e])
        else:
            for d, cf in ((w, c), (u, 1 - c)):
                src.append(u), dst.append(d), coef.append(cf), exps.append([])
    exps = np.array(exps, dtype=np.int64).reshape(len(src), n_symbols)
    return MapTerms(np.array(src), np.array(dst), np.array(coef), exps)


def dense_map(m: MapTerms, V: int, sym) -> np.ndarray:
    val = m.coef * np.prod(np.asarray(sym, float)[None, :] ** m.exps, axis=1)
    M = np.zeros((V, V))
    np.add.at(M, (m.src - 1, m.dst - 1), val)
    return M


def reference(model, theta, rewards, k):
    """Dense moments of an EpochModel at θ (rewards over its vertices, the start first)."""
    eng = model.engine
    E, P = eng.n_epochs, eng.n_params
    gens = []
    for e in range(E):
        alpha, Q, _ = full_generator(eng.graph, theta[e * P : (e + 1) * P])
        gens.append(Q)
    times = np.concatenate([[0.0], theta[E * P : E * P + E - 1]])
    maps = []
    for b, m in enumerate(eng.maps):
        first, count = model._sym[b]
        sym = theta[first : first + count]
        maps.append(None if m is None else dense_map(m, eng.n_vertices - 1, sym))
    return alpha, gens, np.diff(times), maps, np.atleast_2d(rewards)[:, 1:]


def make_model(seed: int, n_epochs: int = 3, with_symbols: bool = True, vertices: int = 14):
    rng = np.random.default_rng(seed)
    g = pt.models.random_graph(vertices, n_sccs=3, n_params=2, seed=seed)
    maps = [random_map(g, rng, 1 if (with_symbols and b == 0) else 0) for b in range(n_epochs - 1)]
    model = pt.EpochModel(g, n_epochs, maps)
    E, P = n_epochs, g.n_params
    phi = rng.uniform(0.3, 2.0, E * P)
    times = np.cumsum(rng.uniform(0.2, 1.5, E - 1))
    syms = rng.uniform(0.2, 0.8, model.n_params - E * P - (E - 1))
    theta = np.concatenate([phi, times, syms])
    absorbing = np.diff(g.arrays().ptr) == 0
    rewards = rng.uniform(0.0, 2.0, (2, g.arrays().states.shape[0]))
    rewards[:, 0] = 0.0
    rewards[:, absorbing] = 0.0
    rewards[1, rng.random(rewards.shape[1]) < 0.3] = 0.0  # some zero rewards
    return model, theta, rewards


@pytest.mark.parametrize("seed", range(6))
def test_moments_match_the_dense_van_loan_reference(seed):
    model, theta, rewards = make_model(seed)
    got = model.moments(theta, k=4, rewards=rewards)
    want = epoch_moments(*reference(model, theta, rewards, 4), 4)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    t_moments = model.moments(theta, k=2)  # no rewards: the absorption time
    ones = (~model.engine.absorbing).astype(float)  # the time itself: 1 on transient states
    want_t = epoch_moments(*reference(model, theta, ones, 2), 2)[0]
    np.testing.assert_allclose(t_moments, want_t, rtol=1e-10)


def test_a_batch_of_theta_equals_one_at_a_time():
    model, theta, rewards = make_model(11)
    rng = np.random.default_rng(3)
    thetas = np.repeat(theta[None], 4, axis=0) * rng.uniform(0.8, 1.2, (4, theta.size))
    thetas[:, 6:8] = np.sort(thetas[:, 6:8], axis=1)
    batch = model.moments(thetas, k=2, rewards=rewards)
    assert batch.shape == (4, 2, 2)
    for b in range(4):
        np.testing.assert_array_equal(batch[b], model.moments(thetas[b], k=2, rewards=rewards))


@pytest.mark.parametrize("seed", range(3))
def test_jacobian_matches_central_differences(seed):
    model, theta, rewards = make_model(20 + seed)
    mom, jac = model.moments_and_jacobian(theta, k=3, rewards=rewards)
    np.testing.assert_allclose(mom, model.moments(theta, k=3, rewards=rewards), rtol=1e-13)
    assert jac.shape == (2, 3, model.n_params)
    h = 1e-6
    for p in range(model.n_params):
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        fd = (model.moments(up, 3, rewards) - model.moments(down, 3, rewards)) / (2 * h)
        np.testing.assert_allclose(jac[..., p], fd, rtol=2e-6, atol=1e-7 * np.abs(mom).max())


def test_cross_moment_matches_the_reference():
    model, theta, rewards = make_model(5)
    got = model.cross_moment(theta, rewards[0], rewards[1])
    alpha, gens, durs, maps, rew = reference(model, theta, rewards, 2)
    want = epoch_cross_moment(alpha, gens, durs, maps, rew[0], rew[1])
    assert abs(got / want - 1) < 1e-10


def test_one_epoch_is_the_time_homogeneous_trace():
    g = pt.models.two_island(6)
    model = pt.EpochModel(g, 1)
    theta = np.array([1.0, 0.5])
    np.testing.assert_allclose(
        model.moments(theta, k=3), pt.record_trace(g).moments(theta, k=3), rtol=1e-12
    )


def test_an_epoch_of_length_zero_changes_nothing():
    g = pt.models.two_island(4)
    two = pt.EpochModel(g, 2)
    three = pt.EpochModel(g, 3)
    a = two.moments([1.0, 0.5, 2.0, 0.1, 0.7], k=2)
    b = three.moments([1.0, 0.5, 5.0, 9.0, 2.0, 0.1, 0.7, 0.7], k=2)  # epoch 1 is empty
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bottleneck_reference_values():
    """epochs.md §6: one deme, n = 10, sizes 1, 0.2, 1 on [0, .5), [.5, 1), after."""
    g = pt.models.kingman(10)
    model = pt.EpochModel(g, 3)
    theta = [1.0, 5.0, 1.0, 0.5, 1.0]  # pairwise coalescence rates 1/size, then times
    m = model.moments(theta, k=2)
    assert abs(m[0] - 0.855894030775) < 1e-11
    assert abs(m[1] - m[0] ** 2 - 0.31980914046) < 1e-10
    sfs_rewards = model.states[:, :9].T.astype(float)
    sfs = model.moments(theta, 1, sfs_rewards)[:, 0]
    want = [1.629332564947, 0.669344692171, 0.371662564995, 0.236697145575, 0.16482893252,
            0.123076296591, 0.097478037527, 0.081190163704, 0.070519118523]  # fmt: skip
    np.testing.assert_allclose(sfs, want, rtol=1e-10, atol=1e-11)
    cdf = pt.cdf(model, [0.5, 1, 2, 4], theta)
    want = [0.024801960215, 0.878131918524, 0.955060188684, 0.993915831648]
    np.testing.assert_allclose(cdf, want, atol=1e-11)


@pytest.mark.parametrize("seed", range(3))
def test_distribution_functions_match_the_reference(seed):
    model, theta, _ = make_model(40 + seed)
    alpha, gens, durs, maps, _ = reference(model, theta, np.zeros(model.n_vertices), 1)
    absorbing = model.engine.absorbing[1:]
    t = np.array([0.0, 0.3, 1.0, durs.sum(), 2.5, 6.0])
    np.testing.assert_allclose(
        pt.cdf(model, t, theta),
        epoch_cdf(alpha, gens, durs, maps, t, absorbing=absorbing),
        atol=1e-11,
    )
    np.testing.assert_allclose(
        pt.pdf(model, t, theta),
        epoch_pdf(alpha, gens, durs, maps, t, absorbing=absorbing),
        rtol=1e-9,
        atol=1e-11,
    )
    sf = pt.sf(model, t, theta)
    np.testing.assert_allclose(sf + pt.cdf(model, t, theta), 1.0, atol=1e-12)
    for p in (0.05, 0.5, 0.95):
        want = epoch_quantile(alpha, gens, durs, maps, p, absorbing=absorbing)
        assert abs(pt.quantile(model, p, theta) - want) < 1e-9 * max(want, 1.0)


def test_distribution_gradients_match_central_differences():
    model, theta, _ = make_model(7)
    t = np.array([0.2, 0.9, 1.7, 4.0])
    for fn, fn_grad in ((pt.cdf, pt.cdf_and_gradient), (pt.pdf, pt.pdf_and_gradient)):
        value, grad = fn_grad(model, t, theta)
        np.testing.assert_allclose(value, fn(model, t, theta), rtol=1e-14)
        h = 1e-6
        for p in range(model.n_params):
            up, down = theta.copy(), theta.copy()
            up[p] += h
            down[p] -= h
            fd = (fn(model, t, up) - fn(model, t, down)) / (2 * h)
            np.testing.assert_allclose(grad[:, p], fd, atol=2e-8)


def test_quantile_at_tiny_p_is_right():
    model = pt.EpochModel(pt.models.kingman(4, state_space="lineages"), 2)
    theta = [1.0, 3.0, 0.5]
    for p in (1e-12, 1e-30):
        q = pt.quantile(model, p, theta)
        assert abs(pt.cdf(model, q, theta) / p - 1) < 1e-8


def test_errors_name_what_is_wrong():
    model, theta, rewards = make_model(1)
    bad = theta.copy()
    bad[6], bad[7] = 2.0, 1.0  # boundary times out of order
    with pytest.raises(InvalidParameterError, match="boundary times"):
        model.moments(bad)
    bad = theta.copy()
    bad[0] = -50.0
    with pytest.raises(InvalidParameterError, match="rate"):
        model.moments(bad)
    with pytest.raises(InvalidParameterError, match="give theta"):
        model.moments()
    with pytest.raises(InvalidParameterError, match="rewards"):
        pt.cdf(model, 1.0, theta, rewards=rewards[0])
    # a state that holds mass in the last epoch but cannot leave it there
    g = pt.models.two_island(3)
    stuck = pt.EpochModel(g, 2, active=[[True, True], [False, True]])  # no coalescence at last
    with pytest.raises(InvalidGraphError, match="infinite"):
        stuck.moments([1.0, 0.5, 0.0, 0.5, 1.0])


def test_map_values_are_the_map_at_its_symbols():
    rng = np.random.default_rng(0)
    g = pt.models.random_graph(10, n_sccs=2, seed=3)
    m = random_map(g, rng, 1)
    V = g.arrays().states.shape[0]
    M = dense_map(m, V - 1, [0.37])
    np.testing.assert_allclose(M.sum(axis=1), 1.0, rtol=1e-14)
    assert math.isclose(M.min(), 0.0) or M.min() > 0


def test_rates_that_grow_inside_an_epoch_meet_the_tolerance():
    """Two lineages, coalescence rate c·e^{γt} on [0, t1), then c1: E[T] by quadrature."""
    integrate = pytest.importorskip("scipy.integrate")
    g = pt.models.kingman(2, state_space="lineages")
    model = pt.EpochModel(g, 2, growing=[(0, 0)])
    assert model.parameter_names == ("phi0[0]", "phi1[0]", "t1", "g0[0]")
    c0, c1, t1, gamma = 0.5, 2.0, 1.5, 1.3
    got = model.expectation([c0, c1, t1, gamma])
    assert model.last_growth_steps is not None

    def hazard(t):
        return c0 * math.expm1(gamma * t) / gamma

    head = integrate.quad(lambda t: math.exp(-hazard(t)), 0, t1, epsabs=0, epsrel=1e-13)[0]
    exact = head + math.exp(-hazard(t1)) / c1
    assert abs(got / exact - 1) < 1e-10
    theta = np.array([c0, c1, t1, gamma])
    grad = model.gradient(theta)
    h = 1e-6
    for p in range(4):
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        fd = (model.expectation(up) - model.expectation(down)) / (2 * h)
        assert abs(grad[p] - fd) < 1e-7 * max(1.0, abs(fd))


def test_growth_on_a_cyclic_graph_matches_a_fine_dense_reference():
    from reference_epochs import epoch_moments_variable, richardson

    g = pt.models.random_graph(10, n_sccs=2, n_params=2, seed=4)
    model = pt.EpochModel(g, 2, growing=[(0, 1)])
    phi0, phi1, t1, gamma = np.array([0.8, 1.1]), np.array([1.5, 0.6]), 0.9, -0.7
    got = model.moments(np.concatenate([phi0, phi1, [t1, gamma]]), k=2)

    def generator(t):
        return full_generator(g, phi0 * np.array([1.0, math.exp(gamma * t)]))[1]

    alpha, last, _ = full_generator(g, phi1)
    ones = (~model.engine.absorbing[1:]).astype(float)
    runs = [
        epoch_moments_variable(alpha, generator, t1, n, ones, 2, last_generator=last)[0]
        for n in (200, 400)
    ]
    np.testing.assert_allclose(got, richardson(*runs), rtol=1e-9)


def test_a_stiff_epoch_is_refused_with_the_limit_named():
    """Two states swapping at rate φ0, a slow exit at rate φ1: the mass cannot leave the
    fast cycle, so the uniformization steps grow with φ0·t1."""
    g = pt.Graph.from_arrays(
        [[1], [2], [3]], src=[0, 1, 0], dst=[1, 0, 2], weights=[0.0, 0.0, 0.0],
        coefficients=[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], initial=([0], [1.0]),
    )  # fmt: skip
    model = pt.EpochModel(g, 2, max_steps=2000)
    with pytest.raises(InvalidParameterError, match="stiff"):
        model.expectation([1e6, 1e-3, 1.0, 1.0, 100.0])
    assert np.isfinite(model.expectation([1.0, 1.0, 1.0, 1.0, 1.0]))
