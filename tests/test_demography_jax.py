"""Time-inhomogeneous models under JAX: jit, vmap and grad through host callbacks."""

from __future__ import annotations

import numpy as np
import pytest

import phasetrace as pt

jax = pytest.importorskip("jax")
demes = pytest.importorskip("demes")
jnp = jax.numpy

from test_demography import bottleneck_graph, im_graph  # noqa: E402

pytestmark = [pytest.mark.jax, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def im33():
    return pt.models.from_demes(im_graph(size_a=0.8, m=0.3), {"A": 3, "B": 3})


def test_moments_fn_of_a_model_under_jit_vmap_and_grad(im33):
    from phasetrace.jax import moments_fn

    f = moments_fn(im33, k=2)
    theta = jnp.asarray(im33.theta)
    np.testing.assert_array_equal(f(theta), im33.moments(k=2))
    np.testing.assert_array_equal(jax.jit(f)(theta), im33.moments(k=2))
    grad = jax.jit(jax.grad(lambda t: f(t)[1]))(theta)
    np.testing.assert_allclose(grad, im33.moments_and_jacobian(k=2)[1][1], rtol=1e-13)
    thetas = jnp.stack([theta, theta * 1.1, theta * 0.9])
    np.testing.assert_allclose(jax.vmap(f)(thetas), im33.moments(np.asarray(thetas), k=2),
                               rtol=1e-14)  # fmt: skip


def test_jsfs_function_gradient_is_the_models(im33):
    f = pt.jsfs_function(im33)
    value = f(jnp.asarray(im33.theta))
    np.testing.assert_array_equal(value, pt.jsfs(im33))
    _, grad = im33.jsfs(gradient=True)
    got = jax.grad(lambda t: f(t)[0, 1] + 2 * f(t)[2, 1])(jnp.asarray(im33.theta))
    np.testing.assert_allclose(got, grad[0, 1] + 2 * grad[2, 1], rtol=1e-12)
    g = pt.jsfs_function(im33, normalised=True, batched=True)
    out = g(jnp.stack([jnp.asarray(im33.theta)] * 2))
    assert out.shape == (2, 4, 4)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, rtol=1e-14)


def test_sfs_function_of_a_panmictic_model():
    model = pt.models.from_demes(bottleneck_graph(), {"A": 30})
    f = pt.sfs_function(model)
    np.testing.assert_array_equal(f(jnp.asarray(model.theta)), pt.sfs(model))
    _, grad = model.sfs(gradient=True)
    got = jax.grad(lambda t: f(t)[3])(jnp.asarray(model.theta))
    np.testing.assert_allclose(got, grad[3], rtol=1e-12)


def test_a_theta_that_cannot_be_evaluated_raises_eagerly_and_is_nan_under_jit(im33):
    from phasetrace.errors import InvalidParameterError
    from phasetrace.jax import moments_fn

    f = moments_fn(im33)
    bad = np.array(im33.theta)
    bad[0] = -1.0
    with pytest.raises(InvalidParameterError, match="N_A"):
        f(bad)
    out = jax.vmap(jax.jit(f))(jnp.stack([jnp.asarray(im33.theta), jnp.asarray(bad)]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_epoch_model_under_jax():
    from phasetrace.jax import moments_fn

    model = pt.EpochModel(pt.models.two_island(4), 2)
    theta = np.array([1.0, 0.5, 3.0, 0.2, 0.8])
    f = moments_fn(model, k=1)
    np.testing.assert_array_equal(f(theta), model.moments(theta))
    grad = jax.grad(lambda t: f(t)[0])(jnp.asarray(theta))
    np.testing.assert_allclose(grad, model.gradient(theta), rtol=1e-13)
