"""Self-checks of the epochs references (tests/reference_epochs.py): closed forms, exact
identities between independent routes, the reference values of the epochs design, and
msprime simulations."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache

import mpmath
import numpy as np
import pytest
import scipy.integrate as si

import phasetrace as pt
from reference import dense_cross_moment, dense_moments, rel_err
from reference_epochs import (
    block_counting_generator,
    block_counting_states,
    default_dps,
    epoch_cdf,
    epoch_cross_moment,
    epoch_moments,
    epoch_moments_variable,
    epoch_pdf,
    epoch_quantile,
    epoch_sf,
    full_generator,
    im_model,
    joint_block_state_space,
    kingman_epoch_cdf,
    kingman_epoch_times,
    msprime_mean_tmrca_and_sfs,
    richardson,
    sfs_from_times,
    tavare_coefficients,
)

pytestmark = pytest.mark.timeout(300)

# ---------------------------------------------------------------------------------------
# Reference values of the epochs design (§6), as printed there
# ---------------------------------------------------------------------------------------

BOTTLENECK_SIZES = (1.0, 0.2, 1.0)
BOTTLENECK_BOUNDS = (0.5, 1.0)
BOTTLENECK_TMRCA = "0.855894030775"
BOTTLENECK_VAR = "0.31980914046"
BOTTLENECK_SFS = ["1.629332564947", "0.669344692171", "0.371662564995", "0.236697145575",
                  "0.16482893252", "0.123076296591", "0.097478037527", "0.081190163704",
                  "0.070519118523"]  # fmt: skip
BOTTLENECK_CDF = {0.5: "0.024801960215", 1: "0.878131918524", 2: "0.955060188684",
                  4: "0.993915831648"}  # fmt: skip
IM_TMRCA = "2.326551784566"
IM_TMRCA2 = "6.565175684275"
IM_JSFS = {(0, 1): "1.808362947853", (1, 1): "0.278847019290", (2, 3): "0.097797211968"}


def assert_printed(value: float, printed: str) -> None:
    """``value`` rounds to ``printed`` (within half a unit of its last digit, plus float
    noise)."""
    decimals = len(printed.split(".")[1])
    assert abs(value - float(printed)) <= 0.5 * 10.0**-decimals + 1e-15, (value, printed)


@cache
def bottleneck(n: int = 10):
    """One deme, block counting: ``(states, alpha, generators, durations)``."""
    states = block_counting_states(n)
    gens = [block_counting_generator(states, 1.0 / s) for s in BOTTLENECK_SIZES]
    alpha = np.zeros(len(states))
    alpha[0] = 1.0
    durations = [BOTTLENECK_BOUNDS[0], BOTTLENECK_BOUNDS[1] - BOTTLENECK_BOUNDS[0]]
    return states, alpha, gens, durations


def lineages(states) -> np.ndarray:
    return np.array([sum(s) for s in states], dtype=float)


@cache
def im44():
    return im_model((4, 4))


# ---------------------------------------------------------------------------------------
# full_generator and the pure-Python state spaces
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "graph, phi",
    [
        (pt.models.kingman(6), [0.7]),
        (pt.models.random_graph(25, n_sccs=4, n_params=2, seed=3), [0.4, 1.3]),
    ],
)
def test_full_generator_matches_to_matrices_on_transient_vertices(graph, phi):
    alpha, Q, absorbing = full_generator(graph, phi)
    a_ref, S_ref = graph.to_matrices(phi)
    transient = ~absorbing
    assert np.allclose(alpha[transient], a_ref, rtol=1e-15, atol=0)
    assert np.allclose(Q[np.ix_(transient, transient)], S_ref, rtol=1e-14, atol=1e-15)
    assert np.all(Q[absorbing] == 0)
    assert np.max(np.abs(Q.sum(axis=1))) < 1e-13
    assert math.isclose(alpha.sum(), 1.0, rel_tol=1e-14)


def test_block_counting_enumerator_agrees_with_phasetrace_kingman():
    """Two independent block-counting builders: same states and the same generator."""
    alpha, Q, absorbing = full_generator(pt.models.kingman(10), [1.0 / 0.2])
    graph_states = [tuple(s) for s in pt.models.kingman(10).arrays().states[1:].tolist()]
    states = block_counting_states(10)
    assert len(states) == 42  # partitions of 10
    assert sorted(graph_states) == sorted(states)
    perm = [graph_states.index(s) for s in states]
    assert np.array_equal(Q[np.ix_(perm, perm)], block_counting_generator(states, 5.0))
    assert alpha[perm][0] == 1.0
    assert absorbing[perm].tolist() == [s == states[-1] for s in states]


def test_joint_state_space_counts():
    """Epoch-0 states of 4 + 4 (lineages in A and B): 1,431 as in the design notes; the
    ancestor's states are the vector partitions of (k, k) (OEIS A002774: 2, 9, 31, 109)."""
    for k, n_partitions in [(1, 2), (2, 9), (3, 31), (4, 109)]:
        sp = joint_block_state_space((k, k))
        T = len(sp.types)
        in_ancestor = [s for s in sp.states if not any(s[: 2 * T])]
        assert len(in_ancestor) == n_partitions
        if k == 4:
            assert sp.n_states - n_partitions == 1431
            assert sp.n_states == 1540


@pytest.mark.slow
def test_joint_state_space_counts_seven_plus_seven():
    """7 + 7 (about 10 s): 123,134 epoch-0 states as in the design notes, plus the 2,998
    vector partitions of (7, 7) in the ancestor."""
    sp = joint_block_state_space((7, 7))
    T = len(sp.types)
    in_ancestor = sum(1 for s in sp.states if not any(s[: 2 * T]))
    assert (sp.n_states - in_ancestor, in_ancestor) == (123134, 2998)


def test_joint_states_conserve_samples_and_generators_are_proper():
    sp = joint_block_state_space((3, 2))
    T = len(sp.types)
    for s in sp.states:
        a = sum(s[d * T + t] * sp.types[t][0] for d in range(3) for t in range(T))
        b = sum(s[d * T + t] * sp.types[t][1] for d in range(3) for t in range(T))
        assert (a, b) == (3, 2)
    q0 = sp.generator((1.0, 2.0, None), {(0, 1): 0.3, (1, 0): 0.7})
    q1 = sp.generator((None, None, 0.5))
    for Q in (q0, q1):
        assert np.max(np.abs(Q.sum(axis=1))) < 1e-14
        assert np.all(Q[sp.absorbing()] == 0)
    M = sp.split_map()
    assert np.array_equal(M.sum(axis=1), np.ones(sp.n_states))
    assert np.all(sp.tmrca_reward() @ M.T >= 0)
    # a map never changes the lineage count, and leaves no lineage in A or B
    lin = sp.lineages()
    assert np.array_equal(M @ lin, lin)
    targets = [sp.states[j] for j in M.argmax(axis=1)]
    assert all(not any(s[: 2 * T]) for s in targets)


@pytest.mark.parametrize("m", [0.5, 2.0])
def test_structured_pair_closed_forms(m):
    """Two demes of size 1, migration m each way, no split: a pair sampled in the same deme
    coalesces after 2 on average, a pair in different demes after 2 + 1/(2m)."""
    for samples, expected in [((2, 0), 2.0), ((1, 1), 2.0 + 1.0 / (2 * m))]:
        sp = joint_block_state_space(samples, split=False)
        Q = sp.generator((1.0, 1.0, None), {(0, 1): m, (1, 0): m})
        got = epoch_moments(sp.alpha(), [Q], [], None, sp.tmrca_reward(), 1)[0, 0]
        assert math.isclose(got, expected, rel_tol=1e-13)


def test_split_at_time_zero_gives_panmixia():
    """A split at t = 0 (an empty first epoch) leaves Kingman's coalescent of 8 samples:
    E[T] = 2(1 − 1/8) and the joint SFS is the pooled 2/(i+j) spread hypergeometrically."""
    sp, alpha, gens, _, maps = im_model((4, 4), t_split=0.0)
    got = epoch_moments(alpha, gens, [0.0], maps, sp.tmrca_reward(), 1, method="action")
    assert math.isclose(got[0, 0], 2 * (1 - 1 / 8), rel_tol=1e-13)
    entries = [(0, 1), (1, 1), (2, 3), (4, 3)]
    R = np.array([sp.type_count(i, j) for i, j in entries])
    got = epoch_moments(alpha, gens, [0.0], maps, R, 1, method="action")[:, 0]
    want = [
        2 / (i + j) * math.comb(4, i) * math.comb(4, j) / math.comb(8, i + j) for i, j in entries
    ]
    assert rel_err(got, want) < 1e-12


# ---------------------------------------------------------------------------------------
# The epoch machinery against closed forms and the existing dense reference
# ---------------------------------------------------------------------------------------


def two_state(a):
    return np.array([[-a, a], [0.0, 0.0]])


def test_one_epoch_is_the_dense_formula():
    graph = pt.models.random_graph(20, n_sccs=3, n_params=2, seed=7)
    phi = [0.8, 1.9]
    alpha, Q, absorbing = full_generator(graph, phi)
    transient = np.flatnonzero(~absorbing)

    def fi(s):
        return float(s[1] % 3)

    def fj(s):
        return 0.5 + s[0]

    states = graph.arrays().states[1:].tolist()
    ri = np.array([fi(s) if not a else 0.0 for s, a in zip(states, absorbing, strict=True)])
    rj = np.array([fj(s) if not a else 0.0 for s, a in zip(states, absorbing, strict=True)])
    got = epoch_moments(alpha, [Q], [], None, ri, 4)[0]
    assert rel_err(got, dense_moments(graph, phi, 4, fi)) < 1e-11
    assert rel_err(epoch_cross_moment(alpha, [Q], [], None, ri, rj),
                   dense_cross_moment(graph, phi, fi, fj)) < 1e-11  # fmt: skip
    assert len(transient) == len(graph.to_matrices(phi)[0])


@pytest.mark.parametrize("method", ["expm", "action"])
def test_rate_change_closed_form(method):
    """Exponential time with rate a on [0, τ), b after, reward 2 while alive:
    Y = 2T, E[T] = (1 − e^{−aτ})/a + e^{−aτ}/b, E[T²] = 2∫ t·P(T > t) dt."""
    a, b, tau = 1.7, 0.4, 0.8
    sf = lambda t: np.exp(-a * t) if t < tau else np.exp(-a * tau - b * (t - tau))  # noqa: E731
    m1 = (1 - np.exp(-a * tau)) / a + np.exp(-a * tau) / b
    m2 = 2 * (si.quad(lambda t: t * sf(t), 0, tau, epsabs=0, epsrel=1e-13)[0]
              + si.quad(lambda t: t * sf(t), tau, np.inf, epsabs=0, epsrel=1e-13)[0])  # fmt: skip
    got = epoch_moments([1.0, 0.0], [two_state(a), two_state(b)], [tau], None, [2.0, 0.0], 2,
                        method=method)[0]  # fmt: skip
    assert rel_err(got, [2 * m1, 4 * m2]) < 1e-12
    t = np.array([0.3, tau, 2.5])
    assert rel_err(epoch_sf([1, 0], [two_state(a), two_state(b)], [tau], None, t, method=method),
                   [sf(x) for x in t]) < 1e-13  # fmt: skip
    pdf = epoch_pdf([1, 0], [two_state(a), two_state(b)], [tau], None, t, method=method)
    assert rel_err(pdf, [a * sf(0.3), b * sf(tau), b * sf(2.5)]) < 1e-13


def test_moments_equal_integrals_of_the_survival_function_across_a_split():
    """E[T] = ∫ P(T > t) dt and E[T²] = 2∫ t P(T > t) dt on IM 2 + 2 (a map at t = 0.7)."""
    sp, alpha, gens, durations, maps = im_model((2, 2), size_a=0.5, m=0.3, t_split=0.7)
    m = epoch_moments(alpha, gens, durations, maps, sp.tmrca_reward(), 2)[0]

    def sf(t):
        return float(epoch_sf(alpha, gens, durations, maps, [t])[0])

    pieces = [(0, 0.7), (0.7, 5), (5, 20), (20, 80)]
    i1 = sum(si.quad(sf, lo, hi, epsabs=1e-13, epsrel=1e-12)[0] for lo, hi in pieces)
    i2 = sum(si.quad(lambda t: 2 * t * sf(t), lo, hi, epsabs=1e-13, epsrel=1e-12)[0]
             for lo, hi in pieces)  # fmt: skip
    assert rel_err([i1, i2], m) < 1e-9


def test_cross_moment_polarisation_and_methods_agree():
    sp, alpha, gens, durations, maps = im_model((2, 2), m=0.3, t_split=0.7)
    ri, rj = sp.type_count(1, 0), sp.type_count(1, 1) + sp.type_count(0, 1)
    second = lambda r: epoch_moments(alpha, gens, durations, maps, r, 2)[0, 1]  # noqa: E731
    polar = (second(ri + rj) - second(ri) - second(rj)) / 2
    for method in ("expm", "action"):
        got = epoch_cross_moment(alpha, gens, durations, maps, ri, rj, method=method)
        assert math.isclose(got, polar, rel_tol=1e-11)
        swapped = epoch_cross_moment(alpha, gens, durations, maps, rj, ri, method=method)
        assert math.isclose(got, swapped, rel_tol=1e-13)
    ref = epoch_moments(alpha, gens, durations, maps, np.vstack([ri, rj]), 3)
    act = epoch_moments(alpha, gens, durations, maps, np.vstack([ri, rj]), 3, method="action")
    assert rel_err(act, ref) < 1e-12


def test_pdf_is_the_derivative_of_the_cdf_and_quantile_inverts_it():
    _, alpha, gens, durations = bottleneck()
    t = np.array([0.2, 0.7, 1.5, 3.0])
    h = 1e-5
    num = (epoch_cdf(alpha, gens, durations, None, t + h)
           - epoch_cdf(alpha, gens, durations, None, t - h)) / (2 * h)  # fmt: skip
    assert rel_err(epoch_pdf(alpha, gens, durations, None, t), num) < 1e-8
    for p in (0.01, 0.5, 0.9, 0.999):
        q = epoch_quantile(alpha, gens, durations, None, p)
        assert abs(epoch_cdf(alpha, gens, durations, None, [q])[0] - p) < 1e-13


def test_reward_on_a_state_stuck_in_the_last_epoch_is_refused():
    sp, alpha, gens, durations, _ = im_model((1, 1), t_split=1.0)
    # without the split map the mass stays in A and B, which cannot move in the last epoch
    with pytest.raises(ValueError, match="infinite reward"):
        epoch_moments(alpha, gens, durations, None, sp.tmrca_reward(), 1)


# ---------------------------------------------------------------------------------------
# The design's reference values (§6)
# ---------------------------------------------------------------------------------------


def test_bottleneck_reference_values():
    states, alpha, gens, durations = bottleneck()
    t_reward = (lineages(states) >= 2).astype(float)
    m = epoch_moments(alpha, gens, durations, None, t_reward, 2)[0]
    assert_printed(m[0], BOTTLENECK_TMRCA)
    assert_printed(m[1] - m[0] ** 2, BOTTLENECK_VAR)
    R = np.array([[s[i] for s in states] for i in range(9)], dtype=float)
    sfs = epoch_moments(alpha, gens, durations, None, R, 1)[:, 0]
    for got, printed in zip(sfs, BOTTLENECK_SFS, strict=True):
        assert_printed(got, printed)
    cdf = epoch_cdf(alpha, gens, durations, None, list(BOTTLENECK_CDF))
    for got, printed in zip(cdf, BOTTLENECK_CDF.values(), strict=True):
        assert_printed(got, printed)


def test_isolation_with_migration_reference_values():
    sp, alpha, gens, durations, maps = im44()
    m = epoch_moments(alpha, gens, durations, maps, sp.tmrca_reward(), 2, method="action")[0]
    assert_printed(m[0], IM_TMRCA)
    assert_printed(m[1], IM_TMRCA2)
    R = np.array([sp.type_count(i, j) for i, j in IM_JSFS])
    jsfs = epoch_moments(alpha, gens, durations, maps, R, 1, method="action")[:, 0]
    for got, printed in zip(jsfs, IM_JSFS.values(), strict=True):
        assert_printed(got, printed)


@pytest.mark.slow
def test_isolation_with_migration_dense_expm_agrees_with_action():
    """The plain dense exponential of the 2·1540-state Van Loan matrix (about 20 s)."""
    sp, alpha, gens, durations, maps = im44()
    r = sp.tmrca_reward()
    dense = epoch_moments(alpha, gens, durations, maps, r, 1, method="expm")
    action = epoch_moments(alpha, gens, durations, maps, r, 1, method="action")
    assert rel_err(dense, action) < 1e-13
    assert_printed(dense[0, 0], IM_TMRCA)


# ---------------------------------------------------------------------------------------
# Rates that change inside an epoch
# ---------------------------------------------------------------------------------------


def test_growth_reference_converges_to_time_rescaled_kingman():
    """n = 4, pairwise rate e^{g t} on [0, 1) (exponential growth, backwards), constant
    after. Exact: on the clock u(t) = ∫ c, P(K = k) is Tavaré's sum, and E[T_k], E[T_MRCA²]
    are integrals over t (quad)."""
    g, t_end, n = 1.3, 1.0, 4

    def c(t):
        return math.exp(g * min(t, t_end))

    def u(t):
        return math.expm1(g * min(t, t_end)) / g + c(t_end) * max(t - t_end, 0.0)

    rho = {kj: float(v) for kj, v in tavare_coefficients(n).items()}

    def p_k(k, t):
        return sum(rho[k, j] * math.exp(-j * (j - 1) / 2 * u(t)) for j in range(k, n + 1))

    def integral(f):
        return sum(si.quad(f, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
                   for lo, hi in [(0, t_end), (t_end, 10), (10, 60)])  # fmt: skip

    exact_tk = [integral(lambda t, k=k: p_k(k, t)) for k in range(2, n + 1)]
    alive = lambda t: sum(p_k(k, t) for k in range(2, n + 1))  # noqa: E731
    exact_t2 = integral(lambda t: 2 * t * alive(t))

    # lineage-count chain: states n, n−1, …, 1
    def gen(t):
        Q = np.zeros((n, n))
        for i, k in enumerate(range(n, 1, -1)):
            Q[i, i + 1] = k * (k - 1) / 2 * c(t)
            Q[i, i] = -Q[i, i + 1]
        return Q

    alpha = np.eye(n)[0]
    R = np.array([[1.0 if k == kk else 0.0 for k in range(n, 0, -1)] for kk in range(2, n + 1)])
    t_alive = R.sum(axis=0)
    coarse = epoch_moments_variable(alpha, gen, t_end, 400, R, 1)[:, 0]
    fine = epoch_moments_variable(alpha, gen, t_end, 800, R, 1)[:, 0]
    extrap = richardson(coarse, fine)
    assert rel_err(extrap, exact_tk) < 1e-11
    # midpoint rule: O(h²), so halving h divides the error by about 4
    err_c, err_f = rel_err(coarse, exact_tk), rel_err(fine, exact_tk)
    assert 3.5 < err_c / err_f < 4.5
    t2 = [epoch_moments_variable(alpha, gen, t_end, s, t_alive, 2)[0, 1] for s in (400, 800)]
    assert math.isclose(richardson(*t2), exact_t2, rel_tol=1e-11)


# ---------------------------------------------------------------------------------------
# Many samples: Tavaré + time rescaling in mpmath
# ---------------------------------------------------------------------------------------


def test_tavare_coefficients_equal_the_hypoexponential_formula():
    """P(K(u) = k) for the pure-death chain with distinct rates λ_j:
    (Π_{i=k+1}^n λ_i) Σ_j e^{−λ_j u} / Π_{i≠j, k≤i≤n} (λ_i − λ_j), exactly."""
    n = 7
    lam = {j: Fraction(j * (j - 1), 2) for j in range(2, n + 1)}
    rho = tavare_coefficients(n)
    for k in range(2, n + 1):
        pre = math.prod(lam[i] for i in range(k + 1, n + 1))
        for j in range(k, n + 1):
            den = math.prod(lam[i] - lam[j] for i in range(k, n + 1) if i != j)
            assert rho[k, j] == pre / den


@pytest.mark.parametrize("n", [10, 200])
def test_constant_size_times_and_sfs_are_exact(n):
    """Size 2.5 cut into three epochs: E[T_k] = 2·2.5/(k(k−1)), E[ξ_i] = 2·2.5/i."""
    dps = default_dps(n)
    et = kingman_epoch_times(n, ["2.5", 2.5, Fraction(5, 2)], [0.5, "1.25"], dps=dps)
    with mpmath.workdps(dps):
        sfs = sfs_from_times(n, et)
        for k in range(2, n + 1):
            want = mpmath.mpf(5) / (k * (k - 1))
            assert abs(et[k] - want) / want < mpmath.mpf(10) ** -40
        for i in range(1, n):
            assert abs(sfs[i - 1] - mpmath.mpf(5) / i) * i / 5 < mpmath.mpf(10) ** -40


def test_n200_bottleneck_is_stable_in_precision():
    """The alternating sums lose about 57 digits at n = 200 (dps 60 gives 3 correct digits,
    dps 80 gives 23): the default precision and dps 250 agree to 45 digits."""
    n = 200
    assert default_dps(n) >= 100
    lo = kingman_epoch_times(n, BOTTLENECK_SIZES, BOTTLENECK_BOUNDS)
    hi = kingman_epoch_times(n, BOTTLENECK_SIZES, BOTTLENECK_BOUNDS, dps=250)
    with mpmath.workdps(250):
        worst = max(abs(lo[k] - hi[k]) / hi[k] for k in range(2, n + 1))
        assert worst < mpmath.mpf(10) ** -45
        s_lo, s_hi = sfs_from_times(n, lo), sfs_from_times(n, hi)
        assert max(abs(a - b) / b for a, b in zip(s_lo, s_hi, strict=True)) < mpmath.mpf(10) ** -45
    # a precision that is too low is visibly wrong: the check above has teeth
    bad = kingman_epoch_times(n, BOTTLENECK_SIZES, BOTTLENECK_BOUNDS, dps=40)
    with mpmath.workdps(250):
        assert max(abs(bad[k] - hi[k]) / hi[k] for k in range(2, n + 1)) > 1e-3


def test_n10_bottleneck_two_routes_agree():
    """Block counting (Van Loan) against Tavaré + Griffiths–Tavaré: SFS, total branch length,
    E[T_MRCA] and the CDF."""
    states, alpha, gens, durations = bottleneck()
    et = kingman_epoch_times(10, BOTTLENECK_SIZES, BOTTLENECK_BOUNDS)
    sfs = [float(x) for x in sfs_from_times(10, et)]
    R = np.array([[s[i] for s in states] for i in range(9)], dtype=float)
    dense = epoch_moments(alpha, gens, durations, None, R, 1)[:, 0]
    assert rel_err(dense, sfs) < 1e-12
    total = float(sum(k * et[k] for k in range(2, 11)))
    dense_total = epoch_moments(
        alpha, gens, durations, None, lineages(states) * (lineages(states) >= 2), 1
    )
    assert math.isclose(dense_total[0, 0], total, rel_tol=1e-12)
    assert math.isclose(dense.sum(), total, rel_tol=1e-12)
    assert_printed(float(sum(et)), BOTTLENECK_TMRCA)
    for t, printed in BOTTLENECK_CDF.items():
        assert_printed(
            float(kingman_epoch_cdf(10, BOTTLENECK_SIZES, BOTTLENECK_BOUNDS, t)), printed
        )


def test_n30_lineage_chain_agrees_with_mpmath():
    n = 30
    alpha = np.eye(n)[0]

    def gen(size):
        Q = np.zeros((n, n))
        for i, k in enumerate(range(n, 1, -1)):
            Q[i, i + 1] = k * (k - 1) / 2 / size
            Q[i, i] = -Q[i, i + 1]
        return Q

    sizes, bounds = (1.0, 0.05, 3.0, 0.7), (0.1, 0.3, 2.0)
    durations = np.diff((0.0, *bounds))
    R = np.array([[1.0 if k == kk else 0.0 for k in range(n, 0, -1)] for kk in range(2, n + 1)])
    dense = epoch_moments(alpha, [gen(s) for s in sizes], durations, None, R, 1)[:, 0]
    et = kingman_epoch_times(n, sizes, bounds)
    assert rel_err(dense, [float(x) for x in et[2:]]) < 1e-11


# ---------------------------------------------------------------------------------------
# msprime (models in generations: size N diploid individuals, pairwise rate 1/(2N))
# ---------------------------------------------------------------------------------------

N = 1000
GEN = 2 * N  # generations per coalescent unit


def z_scores(mean_se, reference):
    mean, se = mean_se
    return (np.asarray(mean) - np.asarray(reference)) / np.asarray(se)


def test_msprime_bottleneck_agrees_with_the_reference():
    import msprime

    dem = msprime.Demography()
    dem.add_population(name="pop", initial_size=N)
    dem.add_population_parameters_change(time=0.5 * GEN, initial_size=0.2 * N, population="pop")
    dem.add_population_parameters_change(time=1.0 * GEN, initial_size=N, population="pop")
    out = msprime_mean_tmrca_and_sfs(dem, {"pop": 10}, replicates=2000, seed=11)
    _, alpha, gens, durations = bottleneck()
    states = bottleneck()[0]
    m = epoch_moments(alpha, gens, durations, None, (lineages(states) >= 2).astype(float), 2)[0]
    assert abs(z_scores(out["tmrca"], m[0] * GEN)) < 4
    assert abs(z_scores(out["tmrca2"], m[1] * GEN**2)) < 4
    sfs_ref = np.array([float(x) for x in BOTTLENECK_SFS]) * GEN
    mean, se = out["sfs"]
    assert mean.shape == (11,) and mean[0] == 0 and mean[10] == 0
    assert np.all(np.abs(z_scores((mean[1:10], se[1:10]), sfs_ref)) < 4)


def test_msprime_isolation_with_migration_agrees_with_the_reference():
    import msprime

    dem = msprime.Demography()
    dem.add_population(name="A", initial_size=N)
    dem.add_population(name="B", initial_size=N)
    dem.add_population(name="anc", initial_size=N)
    dem.set_symmetric_migration_rate(["A", "B"], 0.5 / GEN)
    dem.add_population_split(time=1.0 * GEN, derived=["A", "B"], ancestral="anc")
    out = msprime_mean_tmrca_and_sfs(dem, {"A": 4, "B": 4}, replicates=2000, seed=5)
    assert abs(z_scores(out["tmrca"], float(IM_TMRCA) * GEN)) < 4
    assert abs(z_scores(out["tmrca2"], float(IM_TMRCA2) * GEN**2)) < 4
    mean, se = out["joint_sfs"]
    assert mean.shape == (5, 5)
    for (i, j), printed in IM_JSFS.items():
        assert abs(z_scores((mean[i, j], se[i, j]), float(printed) * GEN)) < 4
    # the pooled spectrum is the joint one summed along i + j
    pooled = [sum(mean[i, s - i] for i in range(5) if 0 <= s - i <= 4) for s in range(9)]
    assert np.allclose(out["sfs"][0], pooled, rtol=1e-12)
