"""The JAX callback bridge: record traces of registered graphs from inside jit/vmap code.

Host calls are counted with the store's own counters (``GraphStore.stats``) and by
wrapping ``store.record``. Strategies that crash or slow down are thin test executors
around real ones, registered for one test.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import ClassVar

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import phasetrace as pt  # noqa: E402
import workfns as T  # noqa: E402
from phasetrace.errors import (  # noqa: E402
    InvalidGraphError,
    StrategyRejectedError,
    WorkerCrashedError,
)
from phasetrace.executors import Executor, WorkItem, get_executor  # noqa: E402
from phasetrace.jax import _bridge as bridge  # noqa: E402
from phasetrace.jax._bridge import GraphStore, record_traces_callback  # noqa: E402
from phasetrace.scc import decompose  # noqa: E402
from strategies import cyclic_graphs  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    pt.shutdown_executors()


def _store(**kw) -> GraphStore:
    kw.setdefault("strategy", "sequential")
    kw.setdefault("cache", False)
    return GraphStore(**kw)


def _kingmans(store: GraphStore, ns=(3, 4, 5, 6, 7, 8)) -> np.ndarray:
    return store.register_many(pt.models.kingman(n) for n in ns)


def _spy(store: GraphStore) -> list[tuple[int, ...]]:
    """Record the shape of every host call on ``store``."""
    shapes: list[tuple[int, ...]] = []
    record = store.record

    def spy(indices):
        shapes.append(np.shape(indices))
        return record(indices)

    store.record = spy  # the callback's host function calls self.record
    return shapes


@pytest.fixture
def temporary_strategy():
    names = []

    def register(name, factory):
        pt.register_strategy(name, factory)
        names.append(name)

    yield register
    pt.shutdown_executors()  # the cached instances of the test strategies
    for name in names:
        pt.executors.unregister_strategy(name)


# -- jit, vmap and the number of host calls --------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
def test_jit_runs_the_callback_even_when_its_result_is_unused(ordered):
    store = _store()
    idx = jnp.asarray(_kingmans(store))

    @jax.jit
    def step(theta, indices):
        record_traces_callback(indices, store=store, ordered=ordered)  # result dropped
        return theta * 2.0

    assert float(step(1.0, idx)) == 2.0
    jax.effects_barrier()
    assert store.stats.host_calls == 1
    assert all(store.is_recorded(int(i)) for i in idx)
    step(3.0, idx)  # the compiled function calls back again, but records nothing new
    jax.effects_barrier()
    stats = store.stats
    assert (stats.host_calls, stats.graphs_recorded) == (2, len(idx))


def _cases(cb):
    """(name, function, args, expected host shapes): jit, vmap, nested and mixed vmaps."""
    i6 = jnp.arange(6)
    x4 = jnp.arange(4.0)
    return [
        ("jit", jax.jit(cb), (i6,), [(6,)]),
        ("vmap", jax.vmap(cb), (i6,), [(6,)]),
        ("jit-vmap-2d", jax.jit(jax.vmap(cb)), (i6.reshape(2, 3),), [(2, 3)]),
        ("nested", jax.jit(jax.vmap(jax.vmap(cb))), (i6.reshape(2, 3),), [(2, 3)]),
        (
            "vmap-other-arg",
            jax.jit(jax.vmap(lambda x, i: x + cb(i).sum(), in_axes=(0, None))),
            (x4, i6),
            [(6,)],
        ),
        (
            "vmap-other-outside-vmap-indices-inside",
            jax.jit(jax.vmap(lambda x: x + jax.vmap(cb)(i6.reshape(3, 2)).sum())),
            (x4,),
            [(3, 2)],
        ),
        (
            "vmap-both-nested",
            jax.jit(jax.vmap(lambda x, i: x + jax.vmap(cb)(i).sum())),
            (jnp.arange(2.0), jnp.array([[0, 1, 2], [3, 4, 5]])),
            [(2, 3)],
        ),
        (
            "size-1-batch",
            jax.jit(jax.vmap(jax.vmap(cb))),
            (i6.reshape(1, 6, 1)[..., 0],),
            [(1, 6)],
        ),
    ]


@pytest.mark.parametrize("ordered", [False, True])
def test_each_batch_makes_one_host_call(ordered):
    stores = [_store() for _ in range(8)]
    current = {}  # the store of the case being run
    cases = _cases(lambda i: record_traces_callback(i, store=current["s"], ordered=ordered))
    for store, (name, fn, args, shapes) in zip(stores, cases, strict=True):
        current["s"] = store
        _kingmans(store)
        seen = _spy(store)
        out = jax.block_until_ready(fn(*args))
        jax.effects_barrier()
        assert seen == shapes, name
        assert store.stats.host_calls == 1, name
        assert store.stats.graphs_recorded == 6, name
        if name in ("jit", "vmap", "jit-vmap-2d", "nested", "size-1-batch"):
            assert out.dtype == jnp.int32 and out.shape == args[0].shape, name
            assert np.all(np.asarray(out) == 1), name


def test_host_function_takes_any_shape_and_returns_it():
    store = _store()
    _kingmans(store, (3, 4, 5))
    for idx in ([[0, 1, 2, 1, 0]], [[0, 1, 2], [2, 1, 0]], np.zeros((2, 1, 3), np.int64), []):
        out = store.record(idx)
        assert out.dtype == np.int32 and out.shape == np.shape(idx)
        assert np.all(out == 1)
    assert store.stats.graphs_recorded == 3
    with pytest.raises(TypeError, match="integers"):
        store.record([0.5])
    with pytest.raises(TypeError, match="integers"):
        record_traces_callback(jnp.array([0.0]), store=store)


def test_record_is_also_a_pure_callback_target_when_its_result_is_used():
    store = _store()
    _kingmans(store)

    def cb(i):
        shape = jax.ShapeDtypeStruct(i.shape, jnp.int32)
        return jax.pure_callback(store.record, shape, i, vmap_method="expand_dims")

    seen = _spy(store)
    out = jax.jit(jax.vmap(jax.vmap(cb)))(jnp.arange(6).reshape(2, 3))
    assert np.asarray(out).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert seen == [(2, 3)]


def test_grad_through_a_function_that_records():
    store = _store()
    idx = jnp.asarray(_kingmans(store, (3, 4)))

    def loss(theta):
        status = record_traces_callback(idx, store=store)
        return theta**2 * status.sum()

    assert float(jax.jit(jax.grad(loss))(3.0)) == 12.0
    assert store.stats.graphs_recorded == 2


def test_default_store_and_module_functions():
    g = pt.models.two_island(5)
    i = bridge.register_graph(g)
    assert bridge.register_graph(pt.models.two_island(5)) == i
    try:
        pt.configure(strategy="sequential")  # the default store uses process-wide settings
        status = jax.jit(record_traces_callback)(jnp.array([i]))
        bridge.raise_pending()
    finally:
        pt.settings.reset_configuration()
    assert int(status[0]) == 1
    assert bridge.get_trace(i).digest() == pt.record_trace(g).digest()
    assert bridge.default_store() is bridge.default_store()


# -- errors ------------------------------------------------------------------------------------


def _invalid_graph() -> pt.Graph:
    g = pt.Graph(state_length=1)
    v = g.find_or_create_vertex([1])
    g.starting_vertex().add_edge(v, 0.5)  # initial distribution sums to 0.5: invalid
    return g


def test_invalid_graph_gives_status_0_and_raises_its_own_type_afterwards():
    store = _store()
    good = _kingmans(store, (3, 4))
    bad = store.register(_invalid_graph())
    idx = jnp.array([good[0], bad, good[1]])
    fn = jax.jit(jax.vmap(lambda i: record_traces_callback(i, store=store)))
    # No JaxRuntimeError: the bridge never raises in the callback.
    with (
        pytest.raises(InvalidGraphError, match="initial distribution") as info,
        store.errors_raised(),
    ):
        status = fn(idx)
    assert np.asarray(status).tolist() == [1, 0, 1]
    assert any(f"index(es) {bad} " in note for note in info.value.__notes__)
    assert store.failures() == []  # raised once
    with pytest.raises(InvalidGraphError):
        store.trace(bad)  # the accessor raises it too
    assert store.is_recorded(int(good[0])) and store.is_recorded(int(good[1]))


def test_unregistered_index_fails_only_itself():
    store = _store()
    _kingmans(store, (3,))
    assert store.record([0, 5]).tolist() == [1, 0]
    (failure,) = store.failures()
    assert failure.index == 5
    with pytest.raises(IndexError, match="index 5 is not registered"):
        store.raise_pending()
    store.raise_pending()  # nothing left
    with pytest.raises(LookupError, match="not been recorded"):
        store.trace(store.register(pt.models.kingman(9)))


def test_errors_raised_ignores_failures_from_before_the_block():
    store = _store()
    store.record([3])  # unregistered: a pending failure
    with store.errors_raised():
        store.callback(jnp.array([store.register(pt.models.kingman(3))]))
    assert len(store.failures()) == 1


class _CrashFirst(Executor):
    """A loky pool whose first ``map`` really kills its worker; later maps work."""

    name = "bridge-crash-first"

    def __init__(self, n_workers=None):
        super().__init__(1)
        self._inner = get_executor("loky", n_workers=1)
        self.crashes_left = 1

    def _start(self, fn, items, *, timeout, star, chunksize):
        if self.crashes_left:
            self.crashes_left -= 1
            doomed = [WorkItem(it.index, it.key, 7, it.cost) for it in items]
            return self._inner.map_items(T.exit_now, doomed, timeout=timeout)
        return self._inner.map_items(fn, items, timeout=timeout)

    def _shutdown(self, wait, cancel_futures):
        self._inner.shutdown(wait=wait)


def test_worker_crash_is_raised_as_worker_crashed_error_with_the_unit_key(temporary_strategy):
    temporary_strategy("bridge-crash-first", _CrashFirst)
    store = _store(strategy="bridge-crash-first", hierarchical=True)
    graphs = [pt.models.two_island(4), pt.models.two_island(5)]
    idx = jnp.asarray(store.register_many(graphs))
    fn = jax.jit(jax.vmap(lambda i: record_traces_callback(i, store=store)))
    with pytest.raises(WorkerCrashedError) as info, store.errors_raised():
        status = fn(idx)
    assert np.asarray(status).tolist() == [0, 0]
    assert isinstance(info.value, BrokenProcessPool)
    from phasetrace.pipeline import _cache_key

    unit_keys = {_cache_key(b"unit", u.to_bytes()) for g in graphs for u in decompose(g).units}
    assert info.value.key in unit_keys
    with pytest.raises(WorkerCrashedError):
        store.trace(int(idx[0]))
    # The failed indices are tried again by the next call, on a fresh pool.
    with store.errors_raised():
        status = fn(idx)
    assert np.asarray(status).tolist() == [1, 1]
    for i, g in zip(idx, graphs, strict=True):
        assert store.trace(int(i)).digest() == pt.record_trace(g).digest()


def test_pmap_strategy_stays_rejected():
    with pytest.raises(StrategyRejectedError, match="record_traces_callback"):
        GraphStore(strategy="pmap")


# -- concurrency and idempotence --------------------------------------------------------------


class _SlowCounting(Executor):
    """Sequential recording that sleeps first, so concurrent host calls overlap; counts keys."""

    name = "bridge-slow"
    keys: ClassVar[collections.Counter] = collections.Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, n_workers=None):
        super().__init__(1)

    def _start(self, fn, items, *, timeout, star, chunksize):
        with self.lock:
            self.keys.update(it.key for it in items)
        time.sleep(0.15)
        return [fn(it.payload) for it in items]


def test_concurrent_host_calls_record_each_index_once(temporary_strategy):
    temporary_strategy("bridge-slow", _SlowCounting)
    _SlowCounting.keys.clear()
    store = _store(strategy="bridge-slow", hierarchical=False)
    idx = _kingmans(store, (3, 4, 5, 6, 7))
    barrier = threading.Barrier(8)
    results = [None] * 8

    def worker(k):
        barrier.wait()
        mine = np.roll(idx, k)[: 2 + k % 4].reshape(1, -1)  # overlapping subsets, extra axis
        results[k] = (mine, store.record(mine))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for mine, status in results:
        assert status.shape == mine.shape and np.all(status == 1)
    stats = store.stats
    assert stats.host_calls == 8 and stats.graphs_recorded == len(idx)
    assert sorted(_SlowCounting.keys.values()) == [1] * len(idx)  # no graph recorded twice
    assert store.failures() == []


def test_callbacks_from_xla_threads_on_two_devices():
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np
        import phasetrace as pt
        from phasetrace.jax._bridge import GraphStore, record_traces_callback
        store = GraphStore(strategy="sequential", cache=False)
        idx = store.register_many(pt.models.kingman(n) for n in (3, 4, 5))
        f = jax.pmap(lambda i: record_traces_callback(i, store=store))
        out = f(jnp.asarray(np.stack([idx, idx[::-1]])))
        store.raise_pending()
        s = store.stats
        print(np.asarray(out).tolist(), s.host_calls, s.graphs_recorded)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "[[1, 1, 1], [1, 1, 1]] 2 3"


# -- the trace-identity property through the bridge -------------------------------------------

LOCAL = [("sequential", 1), ("loky", 1), ("loky", 2), ("spawn", 2)]


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    graphs=st.lists(cyclic_graphs(max_vertices=16), min_size=1, max_size=3),
    hierarchical=st.booleans(),
)
@pytest.mark.parametrize("strategy, n_workers", LOCAL)
def test_traces_through_the_bridge_equal_record_trace(strategy, n_workers, graphs, hierarchical):
    store = _store(strategy=strategy, n_workers=n_workers, hierarchical=hierarchical)
    idx = jnp.asarray(store.register_many(graphs))
    with store.errors_raised():
        status = jax.jit(jax.vmap(lambda i: record_traces_callback(i, store=store)))(idx)
    assert np.all(np.asarray(status) == 1)
    assert store.stats.host_calls == 1
    for i, g in zip(np.asarray(idx), graphs, strict=True):
        assert store.trace(int(i)).digest() == pt.record_trace(g).digest()


def test_an_empty_store_is_used_not_replaced_by_the_default_store():
    store = GraphStore()  # len 0: falsy, yet the store asked for
    assert np.asarray(record_traces_callback(jnp.array([0]), store=store)).tolist() == [0]
    with pytest.raises(IndexError, match="holds 0 graphs"):
        bridge.raise_pending(store)
