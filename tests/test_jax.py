"""JAX evaluation (``phasetrace.jax``) against the numpy evaluator and an unrolled reference.

Results must equal ``Trace.moments`` to 1e-12 relative (bitwise for the kernel method);
gradients must equal central finite differences of the numpy evaluator to 1e-6 and
``jax.grad`` of a direct jnp implementation (one jnp operation per recorded op, written
below from the trace arrays) to 1e-10, for the kernel method and both gradient modes of
the native method. JAX's global ``jax_enable_x64`` stays off here except inside
``jax.enable_x64`` blocks, as a user would have it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import phasetrace as pt  # noqa: E402
from phasetrace.errors import InvalidParameterError, PrecisionWarning  # noqa: E402
from phasetrace.jax import moments_fn  # noqa: E402
from phasetrace.ops import ADD, CONST, DIV, FMA, LOAD, MUL, SUM, X_AXPY  # noqa: E402
from strategies import cyclic_graphs, thetas  # noqa: E402

pytestmark = pytest.mark.timeout(180)
MODES = ("forward", "reverse")
#: (method, gradient) pairs: the kernel, and the native lowering in both gradient modes.
VARIANTS = [("kernel", "auto"), ("native", "forward"), ("native", "reverse")]
VARIANT_IDS = ["kernel", "native-forward", "native-reverse"]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)))


def reward(state) -> float:
    return float(state[-1] % 3)  # zero on some vertices


@pytest.fixture(scope="module")
def traces():
    return {
        "two_island(5)": pt.record_trace(pt.models.two_island(5)),
        "two_island(8)": pt.record_trace(pt.models.two_island(8)),
        "kingman(6)": pt.record_trace(pt.models.kingman(6)),
    }


def theta_for(trace, rng, batch=None):
    shape = (trace.n_params,) if batch is None else (batch, trace.n_params)
    return rng.uniform(0.3, 3.0, size=shape)


# -- the unrolled reference: one jnp operation per recorded op -----------------------------
def unrolled_moments(trace, theta, k, rewards=None):
    """``E[Y^p]``, p = 1..k, straight from the trace arrays (the block schedule)."""
    a = trace.arrays
    code, A, B, C = (a[n].tolist() for n in ("code", "a", "b", "c"))
    vals = []
    for j, cd in enumerate(code):
        if cd == LOAD:
            v = a["input_base"][A[j]]
            for i in range(trace.n_params):
                v = v + a["input_coef"][A[j], i] * theta[i]
        elif cd == CONST:
            v = jnp.asarray(a["consts"][A[j]])
        elif cd == SUM:
            args = a["sum_args"][A[j] : A[j] + B[j]].tolist()
            v = vals[args[0]]
            for s in args[1:]:
                v = v + vals[s]
        elif cd == DIV:
            v = vals[A[j]] / vals[B[j]]
        elif cd == MUL:
            v = vals[A[j]] * vals[B[j]]
        elif cd == FMA:
            v = vals[A[j]] + vals[B[j]] * vals[C[j]]
        elif cd == ADD:
            v = vals[A[j]] + vals[B[j]]
        vals.append(v)
    n = trace.n_vertices
    kind = a["vertex_kind"].tolist()
    sigma = [vals[s] if s >= 0 else 1.0 for s in a["sigma"].tolist()]
    r = np.ones(n) if rewards is None else trace.rewards_from(rewards)
    unit_ptr, unit_xptr = a["unit_ptr"].tolist(), a["unit_xptr"].tolist()
    ptr, dst, slot = a["row_ptr"].tolist(), a["row_dst"].tolist(), a["row_slot"].tolist()
    eptr, edst, eslot = a["exit_ptr"].tolist(), a["exit_dst"].tolist(), a["exit_slot"].tolist()
    xprog = list(zip(*(a[n].tolist() for n in ("x_kind", "x_u", "x_v", "x_coef")), strict=True))
    start = kind.index(0)
    z = [1.0] * n
    out = []
    for p in range(1, k + 1):
        x = [r[v] * z[v] if kind[v] == 1 else 0.0 for v in range(n)]
        for unit in range(len(unit_ptr) - 2, -1, -1):  # sinks first
            first, last = unit_ptr[unit], unit_ptr[unit + 1]
            for v in range(first, last):
                for e in range(eptr[v], eptr[v + 1]):
                    x[v] = x[v] + vals[eslot[e]] * x[edst[e]]
            for kd, u, v, s in xprog[unit_xptr[unit] : unit_xptr[unit + 1]]:
                if kd == X_AXPY:
                    x[u] = x[u] + vals[s] * x[v]
                else:
                    x[u] = x[u] / vals[s]
            for v in range(last - 1, first - 1, -1):
                if ptr[v + 1] > ptr[v]:
                    acc = 0.0
                    for e in range(ptr[v], ptr[v + 1]):
                        acc = acc + vals[slot[e]] * x[dst[e]]
                    x[v] = x[v] + acc / sigma[v]
        out.append(math.factorial(p) * x[start])
        z = x
    return jnp.stack([jnp.asarray(o) for o in out])


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kernel", "native"])
@pytest.mark.parametrize("name", ["two_island(5)", "two_island(8)", "kingman(6)"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("rewards", [None, reward], ids=["T", "Y"])
def test_values_equal_numpy(traces, name, k, rewards, method):
    trace = traces[name]
    rng = np.random.default_rng(k)
    theta, batch = theta_for(trace, rng), theta_for(trace, rng, batch=5)
    f = moments_fn(trace, k=k, rewards=rewards, method=method)
    g = moments_fn(trace, k=k, rewards=rewards, batched=True, chunk=2, method=method)
    want = trace.moments(theta, k=k, rewards=rewards)
    got = f(theta)
    assert got.shape == (k,) and got.dtype == jnp.float64
    assert rel_err(got, want) <= 1e-12
    assert rel_err(g(batch), trace.moments(batch, k=k, rewards=rewards)) <= 1e-12
    if method == "kernel":  # the same kernel: bitwise
        assert np.array_equal(got, want)
        with jax.enable_x64(True):
            assert np.array_equal(jax.jit(jax.vmap(f))(batch), trace.moments(batch, k, rewards))


def test_several_reward_vectors_in_one_function(traces):
    trace = traces["kingman(6)"]
    sfs = [lambda s, i=i: s[i] for i in range(5)]  # branch lengths subtending i + 1 samples
    f = moments_fn(trace, k=2, rewards=sfs)
    theta = np.array([1.0])
    got = np.asarray(f(theta))  # numpy: outside x64, JAX would compute in float32
    assert got.shape == (5, 2)
    want = np.stack([trace.moments(theta, k=2, rewards=r) for r in sfs])
    assert np.array_equal(got, want)
    assert rel_err(got[:, 0], [2 / (i + 1) for i in range(5)]) <= 1e-12  # E = 2/i
    with jax.enable_x64(True):
        jac = jax.jacrev(f)(theta)
    assert jac.shape == (5, 2, 1)
    assert rel_err(jac[:, 0, 0], -got[:, 0] / theta[0]) <= 1e-12  # E ∝ 1/θ
    with pytest.raises(InvalidParameterError, match="one reward vector"):
        moments_fn(trace, k=2, rewards=sfs, method="native")


def test_known_values():
    """docs/algorithm.md §8: two-island n=5 at θ = (1, 0.5); Kingman E[T_MRCA] = 2(1 − 1/n)."""
    f = moments_fn(pt.record_trace(pt.models.two_island(5)), k=3)
    want = [3.40478787879, 19.2439855354, 155.060874143]
    assert rel_err(f(np.array([1.0, 0.5])), want) <= 1e-11
    g = moments_fn(pt.record_trace(pt.models.kingman(7, state_space="lineages")), k=1)
    assert rel_err(g(np.array([2.0])), [(1 - 1 / 7) / 1.0]) <= 1e-14


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    graph=cyclic_graphs(max_vertices=16),
    theta=thetas,
    batch=st.lists(thetas, min_size=1, max_size=4),
)
def test_values_equal_numpy_on_random_cyclic_graphs(graph, theta, batch):
    trace = pt.record_trace(graph)
    theta, batch = np.array(theta), np.array(batch)
    for method in ("kernel", "native"):
        f = moments_fn(trace, k=3, rewards=reward, method=method)
        assert rel_err(f(theta), trace.moments(theta, k=3, rewards=reward)) <= 1e-12
        with jax.enable_x64(True):  # else vmap rounds θ to float32 (a PrecisionWarning)
            got = jax.vmap(f)(batch)  # one kernel call, or the native batched code
        assert rel_err(got, trace.moments(batch, k=3, rewards=reward)) <= 1e-12


# -- transformations --------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "mode"), VARIANTS, ids=VARIANT_IDS)
def test_jit_vmap_grad_compose(traces, method, mode):
    trace = traces["two_island(5)"]
    rng = np.random.default_rng(1)
    batch = theta_for(trace, rng, batch=6)
    f = moments_fn(trace, k=2, gradient=mode, method=method)
    g = moments_fn(trace, k=2, batched=True, chunk=4, gradient=mode, method=method)
    with jax.enable_x64(True):
        want = trace.moments(batch, k=2)
        assert rel_err(jax.jit(f)(batch[0]), want[0]) <= 1e-12
        assert rel_err(jax.jit(jax.vmap(f))(batch), want) <= 1e-12
        assert rel_err(jax.jit(g)(batch), want) <= 1e-12

        def second(t):
            return f(t)[1]

        grads = jax.jit(jax.vmap(jax.grad(second)))(batch)
        assert grads.shape == batch.shape
        assert rel_err(jax.grad(lambda t: g(t)[:, 1].sum())(batch), grads) <= 1e-12
        grad_one = jax.jit(jax.grad(second))
        for i in (0, 5):
            assert rel_err(grad_one(batch[i]), grads[i]) <= 1e-12
        jac = jax.jacrev(f)(batch[0])
        assert jac.shape == (2, trace.n_params)
        assert rel_err(jac[1], grads[0]) <= 1e-12
        # vmap over cotangents only (θ fixed): the residuals of one θ serve every row.
        ws = jnp.array([[1.0, 0.0], [0.5, 2.0]])
        _, vjp = jax.vjp(f, jnp.asarray(batch[0]))
        rows = jax.vmap(lambda w: vjp(w)[0])(ws)
        assert rel_err(rows, ws @ jac) <= 1e-12


@pytest.mark.parametrize(("method", "mode"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", ["two_island(5)", "kingman(6)"])
def test_gradient_equals_central_differences(traces, name, method, mode):
    trace = traces[name]
    theta = theta_for(trace, np.random.default_rng(2))
    f = moments_fn(trace, k=3, rewards=reward, gradient=mode, method=method)
    with jax.enable_x64(True):
        jac = np.asarray(jax.jacrev(f)(theta))
    h = 1e-5 * np.maximum(np.abs(theta), 1.0)
    fd = np.empty_like(jac)
    for i in range(trace.n_params):
        e = np.zeros_like(theta)
        e[i] = h[i]
        up, down = (trace.moments(theta + s * e, k=3, rewards=reward) for s in (1, -1))
        fd[:, i] = (up - down) / (2 * h[i])
    assert rel_err(jac, fd) <= 1e-6


@pytest.mark.parametrize(
    "graph",
    [pt.models.two_island(3), pt.models.kingman(4), pt.models.random_graph(8, n_sccs=2, seed=3)],
    ids=["two_island(3)", "kingman(4)", "random(8)"],
)
def test_gradient_equals_unrolled_reference(graph):
    trace = pt.record_trace(graph)
    theta = theta_for(trace, np.random.default_rng(3))
    with jax.enable_x64(True):
        ref = jax.jit(lambda t: unrolled_moments(trace, t, 2, reward))
        want, want_jac = ref(theta), jax.jacfwd(ref)(theta)
        for method, mode in VARIANTS:
            f = moments_fn(trace, k=2, rewards=reward, gradient=mode, method=method)
            assert rel_err(f(theta), want) <= 1e-12
            assert rel_err(jax.jacrev(f)(theta), want_jac) <= 1e-10


@pytest.mark.parametrize(("method", "mode"), VARIANTS, ids=VARIANT_IDS)
def test_batched_gradient_rows_are_per_theta(traces, method, mode):
    trace = traces["two_island(8)"]
    batch = theta_for(trace, np.random.default_rng(4), batch=7)
    w = jnp.array([1.0, 0.25])
    g = moments_fn(trace, k=2, batched=True, chunk=3, gradient=mode, method=method)
    f = moments_fn(trace, k=2, gradient=mode, method=method)
    with jax.enable_x64(True):
        got = jax.grad(lambda t: (g(t) * w).sum())(batch)
        assert got.shape == batch.shape
        grad_one = jax.jit(jax.grad(lambda t: f(t) @ w))
        for i in (0, 3, 6):  # chunks 1, 2 and the padded chunk 3
            assert rel_err(got[i], grad_one(batch[i])) <= 1e-12


@pytest.mark.parametrize("method", ["kernel", "native"])
def test_batch_shapes_and_chunking(traces, method):
    trace = traces["two_island(5)"]
    rng = np.random.default_rng(5)
    g = moments_fn(trace, k=2, batched=True, chunk=4, method=method)
    for B in (1, 4, 9):
        batch = theta_for(trace, rng, batch=B)
        out = g(batch)
        assert out.shape == (B, 2)
        assert rel_err(out, trace.moments(batch, k=2)) <= 1e-12
    default = moments_fn(trace, k=2, batched=True, method=method)  # automatic chunk size
    batch = theta_for(trace, rng, batch=300)
    assert rel_err(default(batch), trace.moments(batch, k=2)) <= 1e-12


@pytest.mark.parametrize("method", ["kernel", "native"])
def test_edge_cases(method):
    """No parameters, zero rewards, an empty batch, a one-state-per-step chain."""
    g = pt.Graph(state_length=1, n_params=0)
    a, b, c = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge(b, 2.0)
    b.add_edge(a, 1.0)
    b.add_edge(c, 3.0)
    trace = pt.record_trace(g)
    f = moments_fn(trace, k=2, method=method)
    assert rel_err(f(np.zeros(0)), trace.moments(np.zeros(0), k=2)) <= 1e-14
    assert jax.grad(lambda t: f(t)[0])(jnp.zeros(0)).shape == (0,)
    two = pt.record_trace(pt.models.two_island(4))
    zero = moments_fn(two, k=2, rewards=np.zeros(two.n_vertices), method=method)
    assert np.array_equal(zero(np.array([1.0, 0.5])), [0.0, 0.0])
    assert moments_fn(two, k=2, batched=True, method=method)(np.zeros((0, 2))).shape == (0, 2)
    k2 = pt.record_trace(pt.models.kingman(2))
    assert rel_err(moments_fn(k2, k=3, method=method)(np.array([1.0])), [1.0, 2.0, 6.0]) <= 1e-15


# -- invalid input ----------------------------------------------------------------------------
def test_wrong_shape_raises_at_call_and_trace_time(traces):
    trace = traces["two_island(5)"]
    f = moments_fn(trace, k=1)
    g = moments_fn(trace, k=1, batched=True)
    for bad in (np.ones(3), np.ones((2, 2)), np.float64(1.0)):
        with pytest.raises(InvalidParameterError, match="theta must have shape"):
            f(bad)
        with pytest.raises(InvalidParameterError, match="theta must have shape"):
            jax.jit(f)(bad)
    for bad in (np.ones(2), np.ones((4, 3))):
        with pytest.raises(InvalidParameterError, match="thetas must have shape"):
            g(bad)


@pytest.mark.parametrize("method", ["kernel", "native"])
def test_nonpositive_rate_raises_eagerly_and_gives_nan_under_jit(traces, method):
    trace = traces["two_island(5)"]
    f = moments_fn(trace, k=2, method=method)
    g = moments_fn(trace, k=2, batched=True, method=method)
    bad = np.array([1.0, -0.5])  # migration rate < 0
    with pytest.raises(InvalidParameterError, match="is not > 0"):
        f(bad)
    with pytest.raises(InvalidParameterError, match="is not > 0"):
        g(np.array([[1.0, 0.5], bad]))
    with pytest.raises(InvalidParameterError, match="NaN or infinite"):
        f(np.array([1.0, np.nan]))
    with jax.enable_x64(True):
        assert np.isnan(jax.jit(f)(bad)).all()
        out = jax.jit(g)(np.array([[1.0, 0.5], bad, [-1.0, 0.5]]))  # (rate 0 is allowed)
        assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()
        assert rel_err(out[0], trace.moments([1.0, 0.5], k=2)) <= 1e-12
        for mode in MODES:
            h = moments_fn(trace, k=2, gradient=mode, method=method)
            assert np.isnan(jax.jit(jax.grad(lambda t, h=h: h(t)[0]))(bad)).all()


def test_bad_arguments(traces):
    trace = traces["kingman(6)"]
    for k in (0, -1, 1.5, True):
        with pytest.raises(InvalidParameterError, match="k must be"):
            moments_fn(trace, k=k)
    with pytest.raises(InvalidParameterError, match="gradient must be"):
        moments_fn(trace, gradient="central")
    with pytest.raises(InvalidParameterError, match="method must be"):
        moments_fn(trace, method="gpu")
    with pytest.raises(InvalidParameterError, match="chunk must be"):
        moments_fn(trace, batched=True, chunk=0)
    with pytest.raises(InvalidParameterError, match="rewards must have shape"):
        moments_fn(trace, rewards=np.ones(3))


# -- precision and imports ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kernel", "native"])
def test_float64_without_touching_global_x64(traces, method):
    trace = traces["two_island(8)"]
    assert not jax.config.jax_enable_x64  # the user's setting in this test run
    f = moments_fn(trace, k=3, method=method)
    theta = np.array([1.3, 0.7])
    out = f(theta)
    assert out.dtype == jnp.float64
    assert rel_err(out, trace.moments(theta, k=3)) <= 1e-12
    with pytest.warns(PrecisionWarning, match="jax_enable_x64"):  # jit rounded θ to float32
        assert jax.jit(f)(theta).dtype == jnp.float64
    assert not jax.config.jax_enable_x64


def test_lowered_program_is_one_scan(traces):
    trace = traces["two_island(8)"]
    f = moments_fn(trace, k=3, method="native")
    low = f.lowered()
    (seg,) = low.segments
    assert seg.n_steps >= low.stats["critical_path"]
    assert low.stats["ops"] > trace.n_ops - trace.summary()["ops_by_type"]["LOAD"]
    with jax.enable_x64(True):
        hlo = jax.jit(f).lower(np.array([1.0, 0.5])).as_text()
    assert hlo.count("stablehlo.while") == 1


def test_vmap_and_grad_make_one_kernel_call_per_batch(traces, monkeypatch):
    from phasetrace import kernel

    calls = []
    for name in ("moments", "moments_and_jacobian"):
        real = getattr(kernel, name)

        def counted(trace, thetas, *args, real=real, name=name, **kwargs):
            calls.append((name, thetas.shape[0]))
            return real(trace, thetas, *args, **kwargs)

        monkeypatch.setattr(kernel, name, counted)
    trace = traces["two_island(5)"]
    f = moments_fn(trace, k=2, method="kernel")
    batch = theta_for(trace, np.random.default_rng(6), batch=7)
    with jax.enable_x64(True):
        jax.jit(jax.vmap(f))(batch)
        assert calls == [("moments", 7)]
        calls.clear()
        jax.jit(jax.vmap(jax.value_and_grad(lambda t: f(t)[1])))(batch)
        assert calls == [("moments_and_jacobian", 7)]


def test_auto_method_is_the_kernel_on_cpu(traces):
    assert jax.default_backend() == "cpu"
    assert moments_fn(traces["kingman(6)"]).method == "kernel"
