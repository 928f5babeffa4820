"""Fits: recovery of a known truth, independence from the executor, standard errors.

The truth is recovered from noise-free data (the expected spectrum at a known θ, scaled
to many sites), where the maximum-likelihood estimate is that θ exactly. Standard errors
are checked against the inverse of a Hessian of the log-likelihood's *values* by second
differences in natural units (no gradient, no change of coordinates), and the Godambe
errors against the observed ones on replicates of independent sites (where the two
informations agree in expectation).
"""

from __future__ import annotations

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.errors import InvalidParameterError

demes = pytest.importorskip("demes")
pytest.importorskip("scipy")

from test_inference import im_graph  # noqa: E402

pytestmark = pytest.mark.timeout(600)

FREE = ["N_A", "N_B", "T_split_X", "m_A_B"]


@pytest.fixture(scope="module")
def im33():
    return pt.models.from_demes(im_graph(), {"A": 3, "B": 3})


@pytest.fixture(scope="module")
def noisy(im33):
    expected = pt.jsfs(im33)
    u = 20000.0 / expected.sum()
    return u, np.random.default_rng(11).poisson(u * expected).astype(float)


def test_recovers_the_truth_from_noise_free_data(im33):
    expected = pt.jsfs(im33)
    u = 1e6 / expected.sum()
    observed = u * expected
    start = {"N_A": 2000.0, "N_B": 1000.0, "T_split_X": 300.0, "m_A_B": 1e-3}
    result = pt.fit(im33, observed, free=FREE, start=start, scaled_mutation=u,
                    strategy="sequential")  # fmt: skip
    assert result.converged and result.free == tuple(FREE)
    np.testing.assert_allclose(result.theta, im33.theta, rtol=1e-5)
    assert abs(result.loglik - pt.loglik(im33, im33.theta, observed, scaled_mutation=u)) < 1e-6
    # multinomial: the scale is fixed by N_X, every other parameter is free
    free = [n for n in im33.parameter_names if n != "N_X"]
    result = pt.fit(im33, observed, free=free, start={"N_A": 600.0, "m_B_A": 3e-4},
                    strategy="sequential")  # fmt: skip
    assert result.converged
    np.testing.assert_allclose(result.theta, im33.theta, rtol=1e-4)


def test_the_answer_does_not_depend_on_the_executor():
    model = pt.models.from_demes(im_graph(), {"A": 2, "B": 2})
    expected = pt.jsfs(model)
    u = 5000.0 / expected.sum()
    observed = np.random.default_rng(4).poisson(u * expected).astype(float)
    kwargs = dict(free=["N_A", "T_split_X", "m_A_B"], scaled_mutation=u, n_starts=3, seed=5)
    here = pt.fit(model, observed, strategy="sequential", **kwargs)
    pooled = pt.fit(model, observed, strategy="loky", n_workers=2, **kwargs)
    assert len(here.starts) == 3
    for a, b in zip(here.starts, pooled.starts, strict=True):
        np.testing.assert_array_equal(a.theta, b.theta)
        assert a.loglik == b.loglik and a.n_evaluations == b.n_evaluations
    np.testing.assert_array_equal(here.theta, pooled.theta)
    np.testing.assert_array_equal(here.stderr, pooled.stderr)
    assert here.best_start == pooled.best_start


def test_starts_come_from_the_seed(im33, noisy):
    u, observed = noisy
    kwargs = dict(free=["N_A", "T_split_X"], scaled_mutation=u, n_starts=3, maxiter=1,
                  strategy="sequential")  # fmt: skip
    a = pt.fit(im33, observed, seed=1, **kwargs)
    b = pt.fit(im33, observed, seed=1, **kwargs)
    c = pt.fit(im33, observed, seed=2, **kwargs)
    for x, y in zip(a.starts, b.starts, strict=True):
        np.testing.assert_array_equal(x.theta, y.theta)
    assert not np.array_equal(a.starts[1].theta, c.starts[1].theta)
    assert a.n_evaluations == sum(s.n_evaluations for s in a.starts) + 2


def test_standard_errors_against_second_differences_of_the_values(im33, noisy):
    u, observed = noisy
    result = pt.fit(im33, observed, free=FREE, scaled_mutation=u, strategy="sequential")
    assert result.converged and result.information == "observed"
    idx = [im33.parameter_names.index(n) for n in FREE]
    theta = result.theta
    k = len(idx)
    h = 1e-3 * theta[idx]

    def ll(shift):
        th = theta.copy()
        th[idx] += shift
        return pt.loglik(im33, th, observed, scaled_mutation=u)

    hess = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            ei, ej = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
            hess[i, j] = (ll(ei + ej) - ll(ei - ej) - ll(ej - ei) + ll(-ei - ej)) / (
                4 * h[i] * h[j]
            )
    cov = np.linalg.inv(-hess)
    np.testing.assert_allclose(result.stderr, np.sqrt(np.diag(cov)), rtol=2e-3)
    np.testing.assert_allclose(result.covariance, cov, rtol=5e-3, atol=1e-3 * np.abs(cov).max())
    lo, hi = result.confidence_intervals(0.95)["N_A"]
    est, se = result.estimates()["N_A"]
    assert abs((hi - est) / se - 1.959963984540054) < 1e-9 and abs((est - lo) / se - 1.96) < 1e-3


def test_godambe_matches_observed_information_for_independent_sites(im33, noisy):
    u, observed = noisy
    result = pt.fit(im33, observed, free=FREE, scaled_mutation=u, strategy="sequential")
    # replicates of independent sites at the estimate: the variability of the score is
    # then the Fisher information, and the Godambe errors the observed ones (±MC error)
    rng = np.random.default_rng(3)
    reps = rng.poisson(u * pt.jsfs(im33, result.theta), size=(800, 4, 4)).astype(float)
    godambe = pt.fit(im33, observed, free=FREE, scaled_mutation=u, bootstraps=reps,
                     strategy="sequential")  # fmt: skip
    assert godambe.information == "godambe"
    np.testing.assert_array_equal(godambe.theta, result.theta)
    ratio = godambe.stderr / result.stderr
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    # replicates twice as dispersed (sites in pairs, as linked sites are): errors grow √2
    doubled = 2 * rng.poisson(u * pt.jsfs(im33, result.theta) / 2, size=(800, 4, 4))
    linked = pt.fit(im33, observed, free=FREE, scaled_mutation=u, bootstraps=doubled,
                    strategy="sequential")  # fmt: skip
    ratio = linked.stderr / result.stderr
    assert np.all(np.abs(ratio / np.sqrt(2) - 1) < 0.15), ratio


def test_bootstrap_refits_are_work_items(im33):
    expected = pt.jsfs(im33)
    u = 1e5 / expected.sum()
    result = pt.fit(im33, u * expected, free=["N_A", "T_split_X"], scaled_mutation=u,
                    strategy="sequential")  # fmt: skip
    reps = np.stack([u * pt.jsfs(im33, im33.theta * f) for f in (1.0, 1.0)])
    refits = pt.inference.bootstrap_fits(result, im33, reps, strategy="sequential")
    assert refits.shape == (2, im33.n_params)
    np.testing.assert_allclose(refits, np.stack([im33.theta] * 2), rtol=1e-5)


def test_progress_bar_gives_the_same_answer(im33, noisy, capsys):
    pytest.importorskip("tqdm")
    u, observed = noisy
    kwargs = dict(free=["N_A", "T_split_X"], scaled_mutation=u, n_starts=2,
                  strategy="sequential")  # fmt: skip
    quiet = pt.fit(im33, observed, progress=False, **kwargs)
    shown = pt.fit(im33, observed, progress=True, **kwargs)
    np.testing.assert_array_equal(quiet.theta, shown.theta)
    assert "fitting starts" in capsys.readouterr().err


def test_what_a_fit_refuses(im33, noisy):
    u, observed = noisy
    with pytest.raises(InvalidParameterError, match="flat direction"):
        pt.fit(im33, observed, strategy="sequential")
    with pytest.raises(InvalidParameterError, match="n_starts"):
        pt.fit(im33, observed, scaled_mutation=u, n_starts=0)
    with pytest.raises(InvalidParameterError, match="start for unknown"):
        pt.fit(im33, observed, scaled_mutation=u, start={"N_Q": 1.0})
    with pytest.raises(InvalidParameterError, match="start must be positive"):
        pt.fit(im33, observed, scaled_mutation=u, start={"m_A_B": 0.0})
    with pytest.raises(InvalidParameterError, match="bootstraps must have shape"):
        pt.fit(im33, observed, scaled_mutation=u, bootstraps=np.ones((3, 4)))
    with pytest.raises(TypeError, match="demographic model"):
        pt.fit(pt.record_trace(pt.models.kingman(3)), np.ones(2))
