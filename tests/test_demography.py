"""Demographic models from demes: against the dense references of tests/reference_epochs.py,
the reference values of the epochs design notes, mpmath at large n, and msprime."""

from __future__ import annotations

import math

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.errors import InvalidGraphError, InvalidParameterError

demes = pytest.importorskip("demes")

from reference_epochs import (  # noqa: E402 (after the importorskip)
    epoch_cdf,
    epoch_moments,
    im_model,
    kingman_epoch_times,
    msprime_mean_tmrca_and_sfs,
    sfs_from_times,
)

pytestmark = pytest.mark.timeout(900)


def im_graph(size_a=1.0, size_b=1.0, size_anc=1.0, m=0.5, t_split=1.0):
    """The isolation-with-migration model of the design notes, in coalescent units:
    ploidy 2 and deme size N = size/2 make the pairwise coalescence rate 1/size per
    generation; migration m per lineage each way; split at t_split."""
    return demes.loads(f"""
time_units: generations
demes:
- name: X
  epochs: [{{start_size: {size_anc / 2}, end_time: {t_split}}}]
- name: A
  ancestors: [X]
  epochs: [{{start_size: {size_a / 2}}}]
- name: B
  ancestors: [X]
  epochs: [{{start_size: {size_b / 2}}}]
migrations:
- demes: [A, B]
  rate: {m}
""")


def bottleneck_graph(sizes=(1.0, 0.2, 1.0), times=(0.5, 1.0)):
    """One deme with piecewise constant size (coalescent units as in :func:`im_graph`)."""
    epochs = "\n".join(
        f"  - {{start_size: {s / 2}, end_time: {t}}}"
        for s, t in zip(sizes[::-1], [*times[::-1], 0.0], strict=True)
    )
    return demes.loads(f"time_units: generations\ndemes:\n- name: A\n  epochs:\n{epochs}\n")


@pytest.fixture(scope="module")
def im44():
    return pt.models.from_demes(im_graph(), {"A": 4, "B": 4})


def test_im_reference_values(im44):
    """epochs.md §6: dense values of T_MRCA moments and the joint SFS at 4 + 4."""
    assert im44.parameter_names == ("N_A", "N_B", "N_X", "T_split_X", "m_A_B", "m_B_A")
    m = im44.moments(k=2)
    np.testing.assert_allclose(m, [2.326551784566, 6.565175684275], rtol=1e-11)
    j = pt.jsfs(im44)
    assert j.shape == (5, 5)
    want = {(0, 1): 1.808362947853, (1, 1): 0.278847019290, (2, 3): 0.097797211968}
    for (a, b), value in want.items():
        assert abs(j[a, b] / value - 1) < 1e-11
    assert j[0, 0] == 0 and j[4, 4] == 0


@pytest.mark.slow
def test_im_matches_the_dense_reference_elsewhere():
    """Unequal sizes, another migration rate and split time: the whole joint SFS."""
    args = dict(size_a=0.7, size_b=1.6, size_anc=2.5, m=0.3, t_split=0.8)
    model = pt.models.from_demes(im_graph(**args), {"A": 3, "B": 3})
    space, alpha, gens, durs, maps = im_model(samples=(3, 3), **args)
    entries = [(a, b) for a, b in space.types if (a, b) != (3, 3)]
    rewards = np.array([space.type_count(a, b) for a, b in entries])
    want = epoch_moments(alpha, gens, durs, maps, rewards, 1, method="action")[:, 0]
    got = np.array([pt.jsfs(model)[a, b] for a, b in entries])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    t = space.tmrca_reward()
    want_t = epoch_moments(alpha, gens, durs, maps, t, 2, method="action")[0]
    np.testing.assert_allclose(model.moments(k=2), want_t, rtol=1e-10)
    times = np.array([0.3, 0.8, 1.5, 4.0])
    absorbing = space.absorbing()
    np.testing.assert_allclose(
        pt.cdf(model, times),
        epoch_cdf(alpha, gens, durs, maps, times, absorbing=absorbing, method="action"),
        atol=1e-11,
    )


def test_bottleneck_reference_values():
    """epochs.md §6, one deme, n = 10: E[T], Var[T], the SFS (through the lineage-count
    path) and the CDF."""
    model = pt.models.from_demes(bottleneck_graph(), {"A": 10})
    assert model.panmictic
    m = model.moments(k=2)
    assert abs(m[0] - 0.855894030775) < 1e-11
    assert abs(m[1] - m[0] ** 2 - 0.31980914046) < 1e-10
    want = [1.629332564947, 0.669344692171, 0.371662564995, 0.236697145575, 0.16482893252,
            0.123076296591, 0.097478037527, 0.081190163704, 0.070519118523]  # fmt: skip
    np.testing.assert_allclose(pt.sfs(model), want, rtol=1e-10, atol=1e-11)
    want = [0.024801960215, 0.878131918524, 0.955060188684, 0.993915831648]
    np.testing.assert_allclose(pt.cdf(model, [0.5, 1, 2, 4]), want, atol=1e-11)


def test_panmictic_sfs_equals_block_counting():
    model = pt.models.from_demes(bottleneck_graph((1.0, 0.3, 2.0), (0.2, 0.9)), {"A": 14})
    blocks = model.variant("blocks")
    by_blocks = blocks.moments(None, 1, blocks.space.sfs_rewards())[:, 0]
    np.testing.assert_allclose(pt.sfs(model), by_blocks, rtol=1e-10)


def test_sfs_of_ten_thousand_samples_at_constant_size():
    """E[ξ_i] = 2·(2N)/i exactly (ploidy 2), at n = 10,000."""
    g = demes.loads("time_units: generations\ndemes:\n- {name: A, epochs: [{start_size: 500}]}")
    n = 10_000
    sfs = pt.sfs(pt.models.from_demes(g, {"A": n}))
    i = np.arange(1, n)
    np.testing.assert_allclose(sfs, 2000.0 / i, rtol=1e-12)


def test_sfs_of_two_hundred_samples_with_epochs_against_mpmath():
    sizes, times = (1.0, 0.05, 3.0, 0.7), (0.1, 0.4, 1.7)
    model = pt.models.from_demes(bottleneck_graph(sizes, times), {"A": 200})
    et = kingman_epoch_times(200, sizes, times)
    want = np.array([float(x) for x in sfs_from_times(200, et)])  # ξ_1 … ξ_199
    np.testing.assert_allclose(pt.sfs(model), want, rtol=1e-10)


def test_gradients_match_central_differences():
    g = demes.loads("""
time_units: generations
demes:
- name: X
  epochs: [{start_size: 100, end_time: 80}]
- name: A
  ancestors: [X]
  epochs: [{start_size: 60}]
- name: B
  ancestors: [X]
  epochs: [{start_size: 150}]
pulses:
- {sources: [A], dest: B, proportions: [0.3], time: 20}
migrations:
- {source: A, dest: B, rate: 0.004}
""")
    model = pt.models.from_demes(g, {"A": 2, "B": 3})
    theta = model.theta
    value, grad = model.jsfs(theta, gradient=True)
    t_val, t_grad = model.moments_and_jacobian(theta, k=2)
    for p, name in enumerate(model.parameter_names):
        h = 1e-6 * abs(theta[p])
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        fd = (model.jsfs(up) - model.jsfs(down)) / (2 * h)
        np.testing.assert_allclose(grad[..., p], fd, rtol=1e-5, atol=1e-7 * np.abs(value).max(),
                                   err_msg=name)  # fmt: skip
        fd_t = (model.moments(up, k=2) - model.moments(down, k=2)) / (2 * h)
        np.testing.assert_allclose(t_grad[..., p], fd_t, rtol=1e-5, atol=1e-9 * t_val.max(),
                                   err_msg=name)  # fmt: skip


def test_a_batch_of_theta_equals_one_at_a_time(im44):
    rng = np.random.default_rng(0)
    thetas = im44.theta[None] * rng.uniform(0.8, 1.2, (3, im44.n_params))
    batch = pt.jsfs(im44, thetas)
    assert batch.shape == (3, 5, 5)
    for b in range(3):
        np.testing.assert_array_equal(batch[b], pt.jsfs(im44, thetas[b]))


def test_exponential_growth_meets_its_tolerance():
    """Two lineages in a deme growing 50-fold: E[T] = ∫ exp(−∫_0^t c) dt, by quadrature."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    g = demes.loads("""
time_units: generations
demes:
- name: A
  epochs:
  - {start_size: 1000, end_time: 400}
  - {start_size: 1000, end_size: 50000, end_time: 0}
""")
    model = pt.models.from_demes(g, {"A": 2})
    got = model.expectation()
    assert model.last_growth_steps is not None
    rate = math.log(50000 / 1000) / 400  # N(t) = 50000·e^{−rate·t} on [0, 400)

    def hazard(t):  # ∫_0^t 1/(2N(s)) ds
        if t <= 400:
            return (math.exp(rate * t) - 1) / (rate * 2 * 50000)
        return hazard(400) + (t - 400) / 2000

    head = scipy_integrate.quad(lambda t: math.exp(-hazard(t)), 0, 400, epsabs=0, epsrel=1e-13)[0]
    tail = math.exp(-hazard(400)) * 2000
    assert abs(got / (head + tail) - 1) < 1e-10


@pytest.mark.slow
def test_models_agree_with_msprime():
    """Pulses with two sources, an admixed founding, a branch, growth and a deme that ends:
    the mean T_MRCA and the pooled SFS against msprime (z-scores)."""
    g = demes.loads("""
time_units: generations
demes:
- name: anc
  epochs: [{start_size: 800, end_time: 600}]
- name: A
  ancestors: [anc]
  epochs: [{start_size: 500, end_size: 2000, end_time: 0}]
- name: B
  ancestors: [anc]
  epochs: [{start_size: 300, end_time: 0}]
- name: C
  ancestors: [A, B]
  proportions: [0.6, 0.4]
  start_time: 200
  epochs: [{start_size: 400, end_time: 0}]
- name: D
  ancestors: [B]
  start_time: 300
  epochs: [{start_size: 200, end_time: 50}]
pulses:
- {sources: [A, D], dest: B, proportions: [0.2, 0.3], time: 100}
migrations:
- {source: A, dest: B, rate: 0.001, start_time: 500, end_time: 10}
""")
    samples = {"A": 2, "B": 2, "C": 2}
    model = pt.models.from_demes(g, samples)
    sims = msprime_mean_tmrca_and_sfs(g, samples, replicates=4000, seed=7)
    mean, se = sims["tmrca"]
    assert abs((model.expectation() - mean) / se) < 4.5
    mean, se = sims["sfs"]
    z = (pt.sfs(model) - mean[1:-1]) / se[1:-1]
    assert np.abs(z).max() < 4.5


def test_unsupported_features_are_named():
    g = demes.loads("""
time_units: generations
demes:
- name: A
  epochs: [{start_size: 100, selfing_rate: 0.1}]
""")
    with pytest.raises(InvalidGraphError, match="selfing"):
        pt.models.from_demes(g, {"A": 2})


def test_a_state_space_past_the_limit_is_refused_with_its_size():
    model = pt.models.from_demes(im_graph(), {"A": 6, "B": 6}, max_states=5000)
    with pytest.raises(pt.StateSpaceTooLargeError, match=r"about [\d,]+ states"):
        pt.jsfs(model)
    # the setting the built-in models use, too
    with pt.config(max_states=5000), pytest.raises(pt.StateSpaceTooLargeError):
        pt.jsfs(pt.models.from_demes(im_graph(), {"A": 6, "B": 6}))
    assert np.isfinite(model.expectation())  # lineage counts are still small


def test_theta_out_of_order_is_refused(im44):
    theta = im44.theta.copy()
    theta[3] = -1.0
    with pytest.raises(InvalidParameterError, match="T_split_X"):
        im44.expectation(theta)
