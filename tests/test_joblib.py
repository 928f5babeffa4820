"""The ``joblib`` strategy: identity with ``sequential`` under joblib backends, error mapping."""

from __future__ import annotations

import importlib.util
import sys
import threading

import pytest

joblib = pytest.importorskip("joblib")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import phasetrace as pt  # noqa: E402
import workfns as T  # noqa: E402
from phasetrace.errors import (  # noqa: E402
    ExecutorTimeoutError,
    StrategyUnavailableError,
    WorkerCrashedError,
)
from phasetrace.executors import get_executor, registry, work_items  # noqa: E402
from phasetrace.executors.joblibpool import JoblibExecutor  # noqa: E402
from phasetrace.pipeline import compute_trace, compute_traces  # noqa: E402
from strategies import cyclic_graphs  # noqa: E402

pytestmark = pytest.mark.timeout(120)

quick = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def thread_id(_: object = None) -> int:
    """The id of the thread that ran the unit (test-module function, imported by workers)."""
    return threading.get_ident()


@pytest.fixture(scope="module", autouse=True)
def _shutdown_joblib_workers():
    yield
    pt.shutdown_executors()
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@pytest.fixture(scope="module")
def ex():
    with JoblibExecutor(n_workers=2) as executor:
        yield executor


def _reference(graph) -> str:
    return compute_trace(graph, strategy="sequential", cache=False, hierarchical=True).digest()


@quick
@given(graphs=st.lists(cyclic_graphs(max_vertices=20), min_size=1, max_size=3))
def test_identity_under_the_default_parallel_config(graphs):
    traces = compute_traces(graphs, strategy="joblib", n_workers=2, cache=False, hierarchical=True)
    assert [t.digest() for t in traces] == [_reference(g) for g in graphs]


@quick
@given(graphs=st.lists(cyclic_graphs(max_vertices=20), min_size=1, max_size=3))
def test_identity_under_the_threading_backend(graphs):
    with joblib.parallel_config(backend="threading"):
        traces = compute_traces(graphs, strategy="joblib", cache=False, hierarchical=True)
    assert [t.digest() for t in traces] == [_reference(g) for g in graphs]


def test_identity_on_a_model_with_many_sccs():
    g = pt.models.random_graph(300, n_sccs=30, seed=5)
    for backend in ("loky", "threading"):
        with joblib.parallel_config(backend=backend, n_jobs=2):
            trace = compute_trace(g, strategy="joblib", cache=False, hierarchical=True)
        assert trace.digest() == pt.record_trace(g).digest()


def test_the_active_backend_and_its_n_jobs_are_used():
    ex = JoblibExecutor()  # n_workers=None: parallel_config decides
    try:
        with joblib.parallel_config(backend="threading", n_jobs=3):
            idents = ex.map_items(thread_id, work_items(range(12), costs=[0.01] * 12))
            assert ex.last_backend == "ThreadingBackend"
            assert ex._n_jobs_now() == 3
        assert threading.get_ident() not in idents  # pool threads, not this one
        assert ex._n_jobs_now() == -1  # outside a block: all CPUs
        assert ex.map_items(T.has_jax, work_items([0, 1], costs=[1, 1])) == [False, False]
        assert ex.last_backend == "LokyBackend"
    finally:
        ex.close()


def test_results_in_input_order(ex):
    costs = [0.0, 0.2, 0.001] * 10
    assert ex.map_items(T.square, work_items(range(30), costs=costs)) == [i * i for i in range(30)]
    assert ex.map_items(lambda x: x + 1, work_items([1, 2])) == [2, 3]  # sent by value


def test_unit_failure_keeps_its_type_key_and_traceback(ex):
    items = work_items([("value", 1), ("raise", "joblib boom"), ("raise", "later")])
    with pytest.raises(ValueError, match="joblib boom") as info:
        ex.map_items(T.behave, items)
    assert items[1].key in info.value.__notes__[0]
    assert "raise_value_error" in str(info.value.__cause__)


@pytest.mark.timeout(60)
def test_terminated_worker_becomes_worker_crashed_naming_the_unit(ex):
    items = work_items([("exit", 3)], costs=[1.0])
    with pytest.raises(WorkerCrashedError) as info:
        ex.map_items(T.behave, items)
    assert info.value.key == items[0].key
    assert "TerminatedWorkerError" in str(info.value) and "EXIT(3)" in str(info.value)
    assert ex.map_items(T.square, work_items([5, 6])) == [25, 36]  # fresh workers next time


@pytest.mark.timeout(60)
def test_crash_among_running_units_names_the_candidates(ex):
    items = work_items([("sleep", 500), ("exit", 3)], costs=[1.0, 1.0])
    with pytest.raises(WorkerCrashedError) as info:
        ex.map_items(T.behave, items)
    assert items[1].key in str(info.value)
    assert info.value.key in (items[1].key, None)


@pytest.mark.timeout(60)
def test_joblib_timeout_bounds_the_whole_call(ex):
    """Four chunks of 0.4 s on two workers: each within joblib's per-task timeout of 0.6 s,
    the call (0.8 s) past it: the whole call's timeout is what counts."""
    items = work_items([("sleep", 400)] * 4, costs=[1.0] * 4)
    with pytest.raises(ExecutorTimeoutError, match=r"within 0\.6"):
        ex.map_items(T.behave, items, timeout=0.6)
    assert ex.map_items(T.square, work_items([2])) == [4]


def test_missing_joblib_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):  # what an environment without joblib looks like
        if name.partition(".")[0] == "joblib":
            return None
        return real_find_spec(name, *args, **kwargs)

    registry.reset_registry()
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        with pytest.raises(StrategyUnavailableError, match=r'pip install "phasetrace\[joblib\]"'):
            get_executor("joblib")
        with pytest.raises(StrategyUnavailableError, match=r"phasetrace\[joblib\]"):
            pt.configure(strategy="joblib")
    finally:
        monkeypatch.undo()
        registry.reset_registry()
        pt.settings.reset_configuration()


def test_importing_the_strategy_module_does_not_import_joblib():
    import subprocess

    code = (
        "import sys, phasetrace.executors.joblibpool; "
        "print('joblib' in sys.modules, 'distributed' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]
