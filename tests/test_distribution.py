"""Distribution functions (pdf, cdf, sf, quantile) against independent references:
``scipy.linalg.expm`` on the dense sub-intensity matrix from ``Graph.to_matrices`` and
closed forms (exponential, hypoexponential)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import phasetrace as pt
from phasetrace.distribution import DEFAULT_MAX_STEPS, cdf, pdf, quantile, sf
from reference import transient_states, within_uniformization_limit
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(300)

TOL = 1e-9  # required absolute accuracy (the functions promise 1e-10 plus rounding)


def expm_reference(graph, theta, times, reward_fn=None):
    """``(sf, cdf, pdf)`` by ``scipy.linalg.expm`` on the dense matrices at ``theta``.

    With rewards, zero-reward states are removed by a Schur complement (``numpy.linalg
    .solve``; a different method from the library's elimination) and the rows of the rest
    are divided by their rewards.
    """
    linalg = pytest.importorskip("scipy.linalg")
    alpha, S = graph.to_matrices(theta)
    if reward_fn is not None:
        r = np.array([reward_fn(s) for s in transient_states(graph)], dtype=float)
        P, Z = np.flatnonzero(r > 0), np.flatnonzero(r == 0)
        if Z.size:
            X = np.linalg.solve(-S[np.ix_(Z, Z)], S[np.ix_(Z, P)])
            alpha = alpha[P] + alpha[Z] @ X
            S = S[np.ix_(P, P)] + S[np.ix_(P, Z)] @ X
            r = r[P]
        S = S / r[:, None]
    exit_rates = -S.sum(axis=1)
    ones = np.ones(len(alpha))
    out = np.empty((3, len(times)))
    for i, t in enumerate(times):
        row = alpha @ linalg.expm(S * t)
        out[0, i] = row @ ones
        out[2, i] = row @ exit_rates
    out[1] = 1.0 - out[0]
    return out


def ours(trace, times, theta, **kw):
    return np.stack(
        [
            sf(trace, times, theta, **kw),
            cdf(trace, times, theta, **kw),
            pdf(trace, times, theta, **kw),
        ]
    )


def max_err(got, ref):
    return float(np.max(np.abs(np.asarray(got) - np.asarray(ref))))


def stiff_graph():
    """A ring with rates 1e-2 and 1e2 (1e4 apart) and a slow exit: λ = 100.02."""
    g = pt.Graph(state_length=1)
    a, b, c, d = (g.find_or_create_vertex([k]) for k in (1, 2, 3, 4))
    g.starting_vertex().add_edge(a, 0.7)
    g.starting_vertex().add_edge(c, 0.3)
    a.add_edge(b, 1e2)
    b.add_edge(a, 1e-2)
    b.add_edge(c, 1e-2)
    c.add_edge(a, 1e-2)
    c.add_edge(d, 1e2)
    return g


def parameterized_stiff_graph():
    """Fast rate θ₀, slow rate θ₁ (a cycle between them); θ = (1e2, 1e-2) is stiff."""
    return pt.Graph.from_arrays(
        [[1], [2], [3]],
        src=[0, 1, 1],
        dst=[1, 0, 2],
        weights=[0.0, 0.0, 0.0],
        coefficients=[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
        initial=([0], [1.0]),
    )


# -- closed forms -------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.5, 2.0, 37.0])
def test_two_lineages_is_exponential(c):
    """kingman(2): T ~ Exp(c), so F = 1 − e^{−ct}, f = c e^{−ct}."""
    trace = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    t = np.concatenate([[0.0], np.geomspace(1e-4, 40.0 / c, 60)])
    assert max_err(cdf(trace, t, [c]), -np.expm1(-c * t)) <= TOL
    assert max_err(sf(trace, t, [c]), np.exp(-c * t)) <= TOL
    assert max_err(pdf(trace, t, [c]), c * np.exp(-c * t)) <= TOL * max(1.0, c)
    # the upper tail keeps relative accuracy until tol
    far = np.array([10.0, 15.0]) / c
    assert np.allclose(sf(trace, far, [c]), np.exp(-c * far), rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_kingman_lineages_is_hypoexponential(n):
    """T = Σ_{k=2..n} Exp(c·k(k−1)/2); with distinct rates μ_i,
    P(T > t) = Σ_i (Π_{j≠i} μ_j/(μ_j − μ_i)) e^{−μ_i t}."""
    c = 1.3
    trace = pt.record_trace(pt.models.kingman(n, state_space="lineages"))
    mu = np.array([c * k * (k - 1) / 2 for k in range(2, n + 1)])
    coef = np.array(
        [
            np.prod([mu[j] / (mu[j] - mu[i]) for j in range(len(mu)) if j != i])
            for i in range(len(mu))
        ]
    )
    t = np.linspace(0.0, 12.0, 49)
    exact_sf = (coef[:, None] * np.exp(-mu[:, None] * t)).sum(axis=0)
    exact_pdf = (coef[:, None] * mu[:, None] * np.exp(-mu[:, None] * t)).sum(axis=0)
    assert max_err(sf(trace, t, [c]), exact_sf) <= TOL
    assert max_err(cdf(trace, t, [c]), 1.0 - exact_sf) <= TOL
    assert max_err(pdf(trace, t, [c]), exact_pdf) <= TOL * mu.max()


def test_huge_lambda_t_does_not_underflow():
    """Rate 1e4 then 1e-2: at t = 300, λt = 3e6 and e^{−λt} underflows; the Poisson
    weights from the mode outward do not. Hypoexponential closed form."""
    g = pt.Graph.from_arrays(
        [[1], [2], [3]], src=[0, 1], dst=[1, 2], weights=[1e4, 1e-2], initial=([0], [1.0])
    )
    trace = pt.record_trace(g)
    a, b = 1e4, 1e-2
    t = np.array([1e-4, 1e-3, 1.0, 50.0, 300.0])
    exact = (b * np.exp(-a * t) - a * np.exp(-b * t)) / (b - a)
    assert max_err(sf(trace, t, []), exact) <= TOL
    density = a * b / (b - a) * (np.exp(-a * t) - np.exp(-b * t))
    assert max_err(pdf(trace, t, []), density) <= TOL


# -- against expm ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_random_cyclic_graphs_match_expm(seed):
    rng = np.random.default_rng(100 + seed)
    graph = pt.models.random_graph(
        int(rng.integers(8, 30)), n_sccs=int(rng.integers(2, 5)), seed=seed
    )
    theta = rng.uniform(0.2, 3.0, 2)
    trace = pt.record_trace(graph)
    mean = float(trace.expectation(theta))
    t = np.concatenate([[0.0], np.linspace(0.01, 8 * mean, 40)])
    ref = expm_reference(graph, theta, t)
    got = ours(trace, t, theta)
    assert max_err(got[:2], ref[:2]) <= TOL
    assert max_err(got[2], ref[2]) <= TOL


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_hypothesis_cyclic_graphs_match_expm(graph, theta):
    """Rates from 0.05 to ~30 on rings with chords: sf, cdf and pdf against expm."""
    trace = pt.record_trace(graph)
    mean = float(trace.expectation(theta))
    t = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0]) * mean
    t = within_uniformization_limit(graph, theta, t, DEFAULT_MAX_STEPS)
    ref = expm_reference(graph, theta, t)
    got = ours(trace, t, theta)
    assert max_err(got[:2], ref[:2]) <= TOL
    assert max_err(got[2], ref[2]) <= TOL * max(1.0, float(np.max(ref[2])))


@pytest.mark.parametrize(
    ("graph", "theta", "t_max"),
    [
        (pt.models.kingman(6), [1.0], 10.0),
        (pt.models.kingman(6), [0.25], 40.0),
        (pt.models.two_island(8), [1.0, 0.5], 30.0),
        (pt.models.two_island(8), [2.0, 0.05], 200.0),
    ],
    ids=["kingman6", "kingman6-slow", "two_island8", "two_island8-lowmig"],
)
def test_models_match_expm(graph, theta, t_max):
    trace = pt.record_trace(graph)
    t = np.linspace(0.0, t_max, 31)
    ref = expm_reference(graph, theta, t)
    got = ours(trace, t, theta)
    assert max_err(got, ref) <= TOL
    assert ref[1, -1] > 0.99  # the grid covers the distribution


@pytest.mark.parametrize("graph_fn", [stiff_graph, parameterized_stiff_graph])
def test_stiff_graphs_match_expm(graph_fn):
    """Rates 1e4 apart: λt reaches ~1e5 at the late times."""
    graph = graph_fn()
    theta = [1e2, 1e-2] if graph.n_params else []
    trace = pt.record_trace(graph)
    t = np.array([0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 300.0, 1000.0])
    ref = expm_reference(graph, theta, t)
    got = ours(trace, t, theta)
    assert max_err(got[:2], ref[:2]) <= TOL
    assert max_err(got[2], ref[2]) <= TOL
    # the slow tail is really there: the check above is not vacuous
    assert 0.1 < ref[0, 6] < 0.9  # t = 100


def test_rewards_match_expm():
    """Y = ∫ r(X_t) dt with positive rewards: sub-intensity diag(1/r)·S."""
    graph = pt.models.kingman(6)
    trace = pt.record_trace(graph)

    def reward(s):
        return 0.5 + s[0]  # singletons, shifted to stay positive

    t = np.linspace(0.0, 30.0, 31)
    ref = expm_reference(graph, [1.0], t, reward)
    assert max_err(ours(trace, t, [1.0], rewards=reward), ref) <= TOL
    vec = trace.rewards_from(reward)  # the same rewards as a vector in trace.states order
    assert max_err(cdf(trace, t, [1.0], rewards=vec), ref[1]) <= TOL


@pytest.mark.parametrize("seed", range(3))
def test_zero_rewards_are_eliminated(seed):
    """Zero-reward states take no reward-time: against a Schur-complement reference."""
    graph = pt.models.random_graph(18, n_sccs=3, seed=seed)
    trace = pt.record_trace(graph)

    def reward(s):
        return float(s[1] % 3)  # zero on about a third of the vertices

    theta = [0.8, 1.7]
    assert any(reward(s) == 0 for s in transient_states(graph))
    t = np.linspace(0.0, 25.0, 26)
    ref = expm_reference(graph, theta, t, reward)
    assert max_err(ours(trace, t, theta, rewards=reward), ref) <= TOL


def test_zero_rewards_make_an_atom_at_zero():
    """kingman(4) with reward 1 in the state {2, 2} (two doubletons) and 0 elsewhere.

    From four singletons the chain goes surely to {2, 1, 1}, then to {2, 2} at rate 1 or
    to {3, 1} at rate 2: it visits {2, 2} with probability 1/3 and stays there an Exp(1)
    time (the two doubletons merge at rate 1). So Y = 0 w.p. 2/3, else Y ~ Exp(1).
    """
    graph = pt.models.kingman(4)
    trace = pt.record_trace(graph)

    def reward(s):  # only the state with two doubletons earns time
        return 1.0 if tuple(s) == (0, 2, 0, 0) else 0.0

    assert cdf(trace, 0.0, [1.0], rewards=reward) == pytest.approx(2 / 3, abs=1e-14)
    t = np.array([0.0, 0.3, 1.0, 4.0])
    exact = 1.0 - (1 / 3) * np.exp(-t)
    assert max_err(cdf(trace, t, [1.0], rewards=reward), exact) <= TOL
    assert quantile(trace, [0.5, 2 / 3 - 1e-9], [1.0], rewards=reward).tolist() == [0.0, 0.0]
    zero = cdf(trace, [0.0, 5.0], [1.0], rewards=lambda s: 0.0)
    assert zero.tolist() == [1.0, 1.0]  # Y ≡ 0
    assert quantile(trace, [0.5, 1.0], [1.0], rewards=lambda s: 0.0).tolist() == [0.0, 0.0]
    assert quantile(trace, 1.0, [1.0], rewards=reward) == np.inf


def test_defect_is_an_atom_at_zero():
    graph = pt.Graph.from_matrices([0.6, 0.25], np.array([[-2.0, 1.0], [0.5, -0.5]]))
    trace = pt.record_trace(graph)
    t = np.array([0.0, 0.5, 2.0, 9.0])
    ref = expm_reference(graph, [], t)
    assert ref[1, 0] == pytest.approx(0.15)
    assert max_err(ours(trace, t, []), ref) <= TOL
    assert quantile(trace, 0.1, []) == 0.0
    assert quantile(trace, 0.5, []) > 0.0


# -- relations between the functions -----------------------------------------------------
@pytest.mark.parametrize(
    ("graph", "theta"),
    [
        (pt.models.random_graph(20, n_sccs=3, seed=4), [1.1, 0.4]),
        (pt.models.two_island(10), [1.0, 0.3]),
        (stiff_graph(), []),
    ],
    ids=["random", "two_island10", "stiff"],
)
def test_quantile_inverts_cdf(graph, theta):
    trace = pt.record_trace(graph)
    p = np.array([1e-6, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999999])
    q = quantile(trace, p, theta)
    assert np.all(np.diff(q) > 0)
    assert max_err(cdf(trace, q, theta), p) <= 1e-10
    assert max_err(sf(trace, q, theta), 1.0 - p) <= 1e-10
    # and the other way: t → F(t) → t, to the root finder's tolerance
    t = np.array([0.5, 1.0, 3.0]) * float(trace.expectation(theta))
    back = quantile(trace, cdf(trace, t, theta), theta)
    assert np.allclose(back, t, rtol=1e-8, atol=0)


def test_quantile_of_exponential():
    trace = pt.record_trace(pt.models.kingman(2, state_space="lineages"))
    p = np.array([0.0, 1e-12, 0.25, 0.5, 0.9, 1 - 1e-9, 1.0])
    with np.errstate(divide="ignore"):
        exact = -np.log1p(-p) / 3.0
    got = quantile(trace, p, [3.0])
    assert got[0] == 0.0 and got[-1] == np.inf
    assert np.allclose(got[1:-1], exact[1:-1], rtol=1e-9, atol=0)


def test_pdf_integrates_to_cdf_differences():
    graph = pt.models.random_graph(16, n_sccs=3, seed=7)
    trace = pt.record_trace(graph)
    theta = [0.9, 1.4]
    t = np.linspace(0.0, 6.0, 6001)
    f = pdf(trace, t, theta)
    F = cdf(trace, t, theta)
    integral = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(t))])
    # trapezoid error h²/12·max|f'|·length: well below 1e-6 here
    assert max_err(integral, F - F[0]) <= 1e-6
    assert F[-1] - F[0] > 0.5  # a real part of the mass


def test_sf_is_one_minus_cdf_and_cdf_is_monotone():
    trace = pt.record_trace(pt.models.two_island(8))
    t = np.linspace(0.0, 60.0, 500)
    F = cdf(trace, t, [1.0, 0.5])
    assert max_err(sf(trace, t, [1.0, 0.5]), 1.0 - F) <= 1e-12
    assert np.all(np.diff(F) >= -1e-15)
    assert F[0] == 0.0 and 1 - 1e-9 < F[-1] <= 1.0


def test_mean_from_sf_matches_moments():
    """E[T] = ∫ sf: Simpson on a fine grid against the trace's exact moment."""
    trace = pt.record_trace(pt.models.two_island(6))
    theta = [1.0, 0.7]
    t = np.linspace(0.0, 80.0, 8001)
    s = sf(trace, t, theta)
    h = t[1] - t[0]
    simpson = h / 3 * (s[0] + s[-1] + 4 * s[1:-1:2].sum() + 2 * s[2:-1:2].sum())
    assert simpson == pytest.approx(float(trace.expectation(theta)), abs=1e-8)


# -- shapes and batches ------------------------------------------------------------------
def test_batch_shapes():
    trace = pt.record_trace(pt.models.two_island(5))
    th1 = np.array([1.0, 0.5])
    thb = np.array([[1.0, 0.5], [2.0, 0.1], [0.3, 3.0]])
    t = np.linspace(0.0, 5.0, 7)
    for fn in (pdf, cdf, sf):
        assert fn(trace, t, th1).shape == (7,)
        assert fn(trace, t, thb).shape == (3, 7)
        assert np.ndim(fn(trace, 1.0, th1)) == 0
        assert fn(trace, 1.0, thb).shape == (3,)
        assert fn(trace, t.reshape(7, 1), th1).shape == (7, 1)
        batch = fn(trace, t, thb)
        for b in range(3):
            assert np.array_equal(batch[b], fn(trace, t, thb[b]))
    q = quantile(trace, [[0.1, 0.5], [0.9, 0.99]], thb)
    assert q.shape == (3, 2, 2)
    assert np.array_equal(q[1], quantile(trace, [[0.1, 0.5], [0.9, 0.99]], thb[1]))
    assert np.ndim(quantile(trace, 0.5, th1)) == 0


def test_special_times():
    trace = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    t = [-1.0, -np.inf, np.inf, np.nan, 0.0]
    F = cdf(trace, t, [1.0])
    S = sf(trace, t, [1.0])
    f = pdf(trace, t, [1.0])
    assert F[:3].tolist() == [0.0, 0.0, 1.0] and np.isnan(F[3]) and F[4] == 0.0
    assert S[:3].tolist() == [1.0, 1.0, 0.0] and np.isnan(S[3]) and S[4] == 1.0
    assert f[:3].tolist() == [0.0, 0.0, 0.0] and np.isnan(f[3]) and f[4] == 0.0
    assert math.isnan(quantile(trace, np.nan, [1.0]))


# -- errors ------------------------------------------------------------------------------
def test_bad_arguments_are_refused():
    trace = pt.record_trace(pt.models.two_island(4))
    with pytest.raises(pt.InvalidParameterError, match="theta must have shape"):
        cdf(trace, [1.0], [1.0])
    with pytest.raises(pt.InvalidParameterError, match="NaN"):
        sf(trace, [1.0], [np.nan, 1.0])
    with pytest.raises(pt.InvalidParameterError, match=r"edge state .* is not > 0"):
        pdf(trace, [1.0], [1.0, -0.5])  # migration rate negative
    with pytest.raises(pt.InvalidParameterError, match="rewards"):
        cdf(trace, [1.0], [1.0, 0.5], rewards=-np.ones(trace.n_vertices))
    with pytest.raises(pt.InvalidParameterError, match="rewards must have shape"):
        cdf(trace, [1.0], [1.0, 0.5], rewards=[1.0, 2.0])
    with pytest.raises(pt.InvalidParameterError, match="tol"):
        cdf(trace, [1.0], [1.0, 0.5], tol=0.0)
    with pytest.raises(pt.InvalidParameterError, match="max_steps"):
        cdf(trace, [1.0], [1.0, 0.5], max_steps=0)
    with pytest.raises(pt.InvalidParameterError, match=r"p must be in \[0, 1\]"):
        quantile(trace, [0.5, 1.5], [1.0, 0.5])
    with pytest.raises(pt.InvalidParameterError, match="not an array of numbers"):
        cdf(trace, ["a"], [1.0, 0.5])


def test_too_many_steps_are_refused_with_a_reason():
    trace = pt.record_trace(stiff_graph())
    with pytest.raises(pt.InvalidParameterError, match=r"max_steps=1000.*too stiff"):
        cdf(trace, [500.0], [], max_steps=1000)
    assert cdf(trace, [1.0], [], max_steps=1000) > 0  # early times fit


def test_tolerance_is_honoured_when_loosened():
    """A loose tol gives a cheaper, less accurate answer, still within the bound."""
    graph = pt.models.random_graph(15, n_sccs=3, seed=2)
    trace = pt.record_trace(graph)
    t = np.linspace(0.0, 20.0, 21)
    ref = expm_reference(graph, [1.0, 1.0], t)
    for tol in (1e-3, 1e-6):
        assert max_err(cdf(trace, t, [1.0, 1.0], tol=tol), ref[1]) <= tol


def test_huge_times_after_the_sequence_is_exhausted():
    """Times far past absorption need no more steps than it takes the mass to run out:
    no refusal, no overflow of λ·t."""
    trace = pt.record_trace(stiff_graph())
    t = [1e4, 1e8, 1e300]
    assert cdf(trace, t, []).tolist() == [1.0, 1.0, 1.0]
    assert sf(trace, t, []).tolist() == [0.0, 0.0, 0.0]
    assert pdf(trace, t, []).tolist() == [0.0, 0.0, 0.0]
    # but with fewer steps allowed than the mass needs to run out, it is refused
    with pytest.raises(pt.InvalidParameterError, match="max_steps=10000"):
        cdf(trace, [1e8], [], max_steps=10_000)


def _hypoexponential_cdf(rates, t, dps: int = 600):
    """P(T <= t) for a sum of exponentials of distinct rates, by the closed form in
    mpmath at ``dps`` digits (enough for the cancellation at tiny t)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(dps):
        lam = [mpmath.mpf(r) for r in rates]
        t = mpmath.mpf(t)
        total = mpmath.mpf(0)
        for k, lk in enumerate(lam):
            w = mpmath.mpf(1)
            for j, lj in enumerate(lam):
                if j != k:
                    w *= lj / (lj - lk)
            total += w * mpmath.exp(-lk * t)
        return 1 - total


@pytest.mark.parametrize("p", [1e-5, 1e-50, 1e-200, 1e-290, 0.5, 1 - 1e-9, 1 - 1e-14])
def test_quantile_in_the_far_tails_against_the_closed_form(p):
    """Kingman's T_MRCA of 12 lineages at θ = 1.5 is a sum of exponentials of rates
    1.5·C(k, 2): F(q) = p to the accuracy asked for, however small p is (near 0,
    F(t) ≈ c·t¹¹, so q spans twenty orders of magnitude here)."""
    mpmath = pytest.importorskip("mpmath")
    n, c = 12, 1.5
    trace = pt.record_trace(pt.models.kingman(n, state_space="lineages"))
    q = float(quantile(trace, p, [c]))
    rates = [c * k * (k - 1) / 2 for k in range(2, n + 1)]
    tail = 1 - p if p > 0.5 else p
    got = _hypoexponential_cdf(rates, q)
    got_tail = (1 - got) if p > 0.5 else got
    assert abs(float(got_tail / mpmath.mpf(tail)) - 1) < 1e-6, (p, q, float(got_tail))


def test_quantile_refuses_p_it_cannot_resolve():
    trace = pt.record_trace(pt.models.kingman(5, state_space="lineages"))
    with pytest.raises(pt.InvalidParameterError, match="too small to resolve"):
        quantile(trace, [0.5, 1e-300], [1.0])
