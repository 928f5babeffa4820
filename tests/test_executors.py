"""Executors: equivalence with the sequential reference, registry, n_workers, auto, chunking.

Pools are module-scoped fixtures, kept warm across hypothesis examples, so this file runs
in seconds on two cores. Failure behaviour (crashes, timeouts, Ctrl-C) is in
``test_executor_failures.py``.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import importlib.util
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import traceback

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workfns as T
from phasetrace.errors import (
    ExecutorClosedError,
    StrategyError,
    StrategyRejectedError,
    StrategyUnavailableError,
    UnitFailedError,
)
from phasetrace.executors import (
    Executor,
    RemoteTraceback,
    WorkItem,
    available_cpus,
    available_strategies,
    get_executor,
    known_strategies,
    register_strategy,
    registry,
    resolve_n_workers,
    unregister_strategy,
    work_items,
)
from phasetrace.executors._pool import plan_chunks
from phasetrace.executors.auto import AutoExecutor

POOLED = [("loky", 1), ("loky", 2), ("spawn", 1), ("spawn", 2)]
ALL = [("sequential", 1), *POOLED]

quick = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module", params=ALL, ids=lambda p: f"{p[0]}-{p[1]}")
def executor(request):
    name, n = request.param
    with get_executor(name, n_workers=n) as ex:
        yield ex


@pytest.fixture(scope="module", params=POOLED, ids=lambda p: f"{p[0]}-{p[1]}")
def pooled(request):
    name, n = request.param
    with get_executor(name, n_workers=n) as ex:
        yield ex


@pytest.fixture
def clean_registry():
    yield
    registry.reset_registry()


# -- results ---------------------------------------------------------------------------


@quick
@given(
    values=st.lists(st.integers(-(10**6), 10**6), max_size=60),
    cost=st.sampled_from([0.0, 1e-6, 1e-3]),
)
def test_results_in_input_order_equal_sequential(executor, values, cost):
    items = work_items(values, costs=[cost] * len(values))
    assert executor.map_items(T.square, items) == [v * v for v in values]


@quick
@given(
    payloads=st.lists(
        st.one_of(
            st.tuples(st.just("value"), st.text(max_size=5)),
            st.tuples(st.just("square"), st.integers(-1000, 1000)),
            st.tuples(st.just("sleep"), st.sampled_from([0, 1, 3])),
        ),
        max_size=20,
    )
)
def test_mixed_units_finishing_out_of_order_come_back_in_order(executor, payloads):
    with get_executor("sequential") as ref:
        expected = ref.map_items(T.behave, work_items(payloads))
    assert executor.map_items(T.behave, work_items(payloads)) == expected


def test_empty_map_returns_empty_list(executor):
    assert executor.map_items(T.square, []) == []


def test_items_must_be_work_items(executor):
    with pytest.raises(TypeError, match="work_items"):
        executor.map_items(T.square, [1, 2])


def test_unit_failure_keeps_its_type_and_names_the_first_failing_key(executor):
    items = work_items(
        [("value", 1), ("raise", "first"), ("value", 2), ("raise", "second")],
        keys=["k0", "k1", "k2", "k3"],
    )
    with pytest.raises(ValueError, match=r"^first") as info:
        executor.map_items(T.behave, items)
    err = info.value
    assert type(err) is ValueError and str(err) == "first"  # the unit's own exception
    (note,) = err.__notes__
    assert "k1" in note and executor.name in note
    if executor.in_process:
        assert any(f.name == "raise_value_error" for f in traceback.extract_tb(err.__traceback__))
    else:
        assert isinstance(err.__cause__, RemoteTraceback)
        assert "raise_value_error" in str(err.__cause__)
    # the executor is still usable, on the same pool
    generation = getattr(executor, "generation", None)
    assert executor.map_items(T.square, work_items([3])) == [9]
    assert getattr(executor, "generation", None) == generation


def test_unpicklable_exception_becomes_unit_failed_error(pooled):
    with pytest.raises(UnitFailedError) as info:
        pooled.map_items(T.raise_unpicklable, work_items(["x"], keys=["kx"]))
    err = info.value
    assert (err.key, err.exc_message) == ("kx", "cannot travel")
    assert err.exc_type.endswith("Unpicklable") and "kx" in err.__notes__[0]


def test_use_after_shutdown_raises_and_shutdown_is_idempotent():
    ex = get_executor("spawn", n_workers=1)
    ex.shutdown()
    ex.shutdown()
    ex.close()
    for call in (
        lambda: ex.map_items(T.square, work_items([1])),
        lambda: ex.submit(T.square, 1),
        lambda: ex.map(T.square, [1]),
    ):
        with pytest.raises(ExecutorClosedError):
            call()
    assert isinstance(ExecutorClosedError("x"), RuntimeError)  # as the standard library


# -- the concurrent.futures protocol --------------------------------------------------------


def test_every_strategy_is_a_standard_executor(executor):
    assert isinstance(executor, concurrent.futures.Executor)
    assert list(executor.map(T.square, range(5))) == [0, 1, 4, 9, 16]
    assert list(executor.map(pow, [2, 3, 4], [3, 2, 1], chunksize=2)) == [8, 9, 4]
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, concurrent.futures.Future) and future.result(timeout=60) == 256
    failing = executor.submit(T.raise_value_error, "submitted")
    with pytest.raises(ValueError, match="submitted"):
        failing.result(timeout=60)
    results = executor.map(T.behave, [("value", 1), ("raise", "in map"), ("value", 3)])
    assert next(results) == 1
    with pytest.raises(ValueError, match="in map"):
        next(results)
    done, _ = concurrent.futures.wait([executor.submit(T.square, i) for i in range(4)])
    assert sorted(f.result() for f in done) == [0, 1, 4, 9]


def test_map_timeout_is_a_timeout_error():
    with get_executor("spawn", n_workers=1) as ex:
        with pytest.raises(TimeoutError):
            list(ex.map(T.sleep_ms, [5000], timeout=0.5))
        assert list(ex.map(T.square, [3])) == [9]


@pytest.mark.parametrize(
    "make",
    [
        lambda: concurrent.futures.ThreadPoolExecutor(2),
        lambda: concurrent.futures.ProcessPoolExecutor(2),
        lambda: concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn")
        ),
    ],
    ids=["ThreadPoolExecutor", "ProcessPoolExecutor", "ProcessPoolExecutor-spawn"],
)
def test_a_standard_executor_is_adopted_and_left_running(make):
    foreign = make()
    try:
        ex = get_executor(foreign)
        assert ex.map_items(T.square, work_items(range(10))) == [i * i for i in range(10)]
        with pytest.raises(ValueError, match="adopted") as info:
            ex.map_items(T.behave, work_items([("raise", "adopted")], keys=["ka"]))
        assert "ka" in info.value.__notes__[0]
        assert list(ex.map(pow, [2], [5])) == [32]
        ex.shutdown()
        assert foreign.submit(T.square, 7).result() == 49  # still running: not ours
    finally:
        foreign.shutdown()


def test_loky_reusable_executor_is_adopted_and_a_users_executor_is_never_shut_down():
    """phasetrace's own loky strategy never touches the user's reusable executor."""
    from loky import get_reusable_executor

    users = get_reusable_executor(max_workers=1)
    assert list(users.map(T.square, [2])) == [4]
    with get_executor("loky", n_workers=2) as ours:
        assert ours.map_items(T.square, work_items([3])) == [9]
    adopted = get_executor(users)
    assert adopted.map_items(T.square, work_items([4, 5])) == [16, 25]
    adopted.shutdown()
    import phasetrace as pt

    pt.shutdown_executors()
    assert list(users.map(T.square, [6])) == [36]  # the user's executor still works


def test_pool_is_reused_across_calls(pooled):
    pooled.map_items(T.square, work_items([1]))
    generation = pooled.generation
    pids = set()
    for _ in range(3):
        pids |= set(pooled.map_items(T.getpid, work_items(range(4 * pooled.n_workers))))
    assert pooled.generation == generation
    assert len(pids) <= pooled.n_workers
    assert os.getpid() not in pids


def test_workers_cap_blas_threads(pooled):
    assert pooled.map_items(T.getenv, work_items(["OMP_NUM_THREADS"])) == ["1"]
    assert pooled.map_items(T.getenv, work_items(["OPENBLAS_NUM_THREADS"])) == ["1"]
    if importlib.util.find_spec("threadpoolctl") and importlib.util.find_spec("numpy"):
        (threads,) = pooled.map_items(T.blas_threads, work_items([0]))
        assert all(n == 1 for n in threads)


def test_workers_do_not_import_jax(pooled):
    # The case "the parent has imported JAX" runs in a subprocess (next test), so that
    # this test process stays free of JAX for other tests that check it.
    n = 2 * pooled.n_workers
    assert pooled.map_items(T.has_jax, work_items(range(n))) == [False] * n


@pytest.mark.timeout(120)
def test_loky_workers_do_not_import_jax_when_main_script_does(tmp_path):
    """The parent has imported JAX. loky's workers do not import the main script, so they
    stay free of it; spawn's import the main script, as the standard library's always do
    (documented: keep such imports under ``if __name__ == "__main__":``)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    script = tmp_path / "main_with_jax.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import jax  # noqa: F401  (a main script that imports JAX at its top)
            from phasetrace.executors import get_executor, work_items
            import workfns as _testfns

            if __name__ == "__main__":
                print("parent has jax:", "jax" in sys.modules)
                for name in ("loky", "spawn"):
                    with get_executor(name, n_workers=1) as ex:
                        print(name, ex.map_items(_testfns.has_jax, work_items([0, 1])))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=True
    ).stdout
    assert "parent has jax: True" in out
    assert "loky [False, False]" in out
    assert "spawn [True, True]" in out


@pytest.mark.timeout(120)
def test_spawn_refuses_a_main_script_read_from_stdin_and_loky_runs_it():
    """spawn workers import the main script; from stdin there is none, and the stdlib's
    workers would die before running anything ("exit status unknown")."""
    script = textwrap.dedent(
        """
        import workfns as T
        from phasetrace.errors import StrategyError
        from phasetrace.executors import get_executor, work_items
        try:
            get_executor("spawn", n_workers=1).map_items(T.square, work_items([3]))
        except StrategyError as exc:
            print("spawn:", exc)
        with get_executor("loky", n_workers=1) as ex:
            print("loky:", ex.map_items(T.square, work_items([3])))
        """
    )
    out = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=100
    )
    assert "spawn: the 'spawn' strategy" in out.stdout and "'<stdin>' is not a file" in out.stdout
    assert "loky: [9]" in out.stdout, out.stderr[-2000:]


@pytest.mark.timeout(120)
def test_spawn_runs_functions_of_the_main_script(tmp_path):
    """As the standard library's spawn pool does (the workers import the script as
    ``__mp_main__``): results, and a ValueError that comes back as itself. A function
    defined under ``if __name__ == "__main__":`` cannot be found by the workers and is
    refused with advice."""
    script = tmp_path / "main_fn.py"
    script.write_text(
        textwrap.dedent(
            """
            from phasetrace.errors import SerializationError
            from phasetrace.executors import get_executor


            def square(x):
                if x == 3:
                    raise ValueError("three is refused")
                return x * x


            if __name__ == "__main__":
                def hidden(x):
                    return x

                with get_executor("spawn", n_workers=1) as ex:
                    print("results", list(ex.map(square, [1, 2])))
                    try:
                        list(ex.map(square, [3]))
                    except ValueError as exc:
                        print("raised", type(exc).__name__, exc)
                    try:
                        list(ex.map(hidden, [1]))
                    except SerializationError as exc:
                        print("hidden", exc)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "results [1, 4]"
    assert lines[1] == "raised ValueError three is refused"
    assert lines[2].startswith("hidden ") and "if __name__ == '__main__':" in lines[2]


def test_spawn_refuses_a_function_typed_into_an_interactive_session():
    """No script file: the workers cannot import the function's module."""
    script = textwrap.dedent(
        """
        from phasetrace.errors import SerializationError
        from phasetrace.executors import get_executor
        def square(x):
            return x * x
        try:
            list(get_executor("spawn", n_workers=1).map(square, [2]))
        except SerializationError as exc:
            print("refused:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=100
    )
    assert "refused: fn 'square' is defined in __main__" in out.stdout, out.stderr[-2000:]
    assert "interactive session" in out.stdout


@pytest.mark.timeout(120)
def test_an_adopted_pool_shut_down_by_its_owner_is_reported_as_such():
    """The pattern ``with ProcessPoolExecutor() as pool: configure(strategy=pool)``, then
    a call after the block: no worker crashed, and the message says what happened, on
    this call and the next."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        ex = get_executor(pool)
        assert ex.map_items(T.square, work_items([3])) == [9]
    for _ in range(2):
        with pytest.raises(ExecutorClosedError, match="shut down by its owner") as info:
            ex.map_items(T.square, work_items([4]))
        assert "crash" not in str(info.value) and "died" not in str(info.value)


def test_loky_ships_lambdas():
    with get_executor("loky", n_workers=1) as ex:
        assert ex.map_items(lambda x: x + 1, work_items([1, 2])) == [2, 3]


# -- n_workers ---------------------------------------------------------------------------


def test_n_workers_follows_the_documented_rules():
    cpus = available_cpus()
    assert resolve_n_workers(3) == 3
    assert resolve_n_workers(-1) == cpus
    assert resolve_n_workers(-cpus) == 1
    assert resolve_n_workers(-cpus - 5) == 1  # clamped at one, as joblib's n_jobs
    if cpus >= 2:
        assert resolve_n_workers(-2) == cpus - 1
    assert resolve_n_workers(None) == cpus
    assert resolve_n_workers(None, default=1) == 1
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(StrategyError):
            resolve_n_workers(bad)


def test_cpu_count_honours_the_affinity_mask():
    """available_cpus reads loky's cgroup- and affinity-aware count; a process pinned to
    one CPU counts one (a child process, so the pin does not stay on this one)."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no affinity API here")
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
        "from phasetrace.executors import available_cpus, resolve_n_workers;"
        "print(available_cpus(), resolve_n_workers(None), resolve_n_workers(-1))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_n_workers_validated_by_get_executor():
    with pytest.raises(StrategyError, match="n_workers=0"):
        get_executor("loky", n_workers=0)
    with get_executor("sequential", n_workers=4) as ex:
        assert ex.n_workers == 1  # sequential validates, then always uses one
    with get_executor("spawn", n_workers=-1) as ex:
        assert ex.n_workers == available_cpus()


# -- registry ----------------------------------------------------------------------------


def test_unknown_strategy_lists_known_ones_sorted():
    with pytest.raises(StrategyError) as info:
        get_executor("nope")
    message = str(info.value)
    assert "unknown strategy 'nope'" in message
    listed = message.split("known strategies: ")[1].split(", ")
    assert listed == sorted(listed) == known_strategies()
    assert {"auto", "sequential", "loky", "spawn", "pmap", "dask", "joblib"} <= set(listed)


def test_builtin_table_is_sorted_and_every_entry_has_an_install_hint():
    names = [e.name for e in registry.builtin_entries()]
    assert names == sorted(names)
    for entry in registry.builtin_entries():
        assert entry.hint.strip(), entry.name
        assert isinstance(entry.factory, str) and ":" in entry.factory
        if entry.extra:
            assert f"phasetrace[{entry.extra}]" in entry.hint


def test_register_same_is_noop_different_needs_replace(clean_registry):
    path = "phasetrace.executors.sequential:SequentialExecutor"
    register_strategy("mine", path)
    register_strategy("mine", path)  # no-op
    with pytest.raises(StrategyError, match="replace=True"):
        register_strategy("mine", "phasetrace.executors.spawn:SpawnExecutor")
    register_strategy("mine", "phasetrace.executors.spawn:SpawnExecutor", replace=True)
    assert registry._entries["mine"].factory.endswith("SpawnExecutor")
    with pytest.raises(StrategyError, match="replace=True"):
        register_strategy("loky", path)
    unregister_strategy("mine")
    assert "mine" not in known_strategies()


def test_register_a_callable_factory(clean_registry):
    from phasetrace.executors.sequential import SequentialExecutor

    register_strategy("callable-seq", SequentialExecutor)
    with get_executor("callable-seq") as ex:
        assert ex.map_items(T.square, work_items([2])) == [4]


def test_missing_extra_names_the_extra(clean_registry):
    register_strategy("fancy", "phasetrace_nonexistent_module:Executor", extra="fancy")
    with pytest.raises(StrategyUnavailableError) as info:
        get_executor("fancy")
    assert 'pip install "phasetrace[fancy]"' in str(info.value)
    assert isinstance(info.value, ImportError)
    (record,) = [s for s in available_strategies() if s.name == "fancy"]
    assert not record.available and "phasetrace[fancy]" in record.reason


def test_missing_required_module_names_the_extra(clean_registry):
    register_strategy(
        "needs-missing",
        "phasetrace.executors.sequential:SequentialExecutor",
        extra="missing",
        requires=("phasetrace_nonexistent_dependency",),
    )
    with pytest.raises(StrategyUnavailableError, match=r"phasetrace\[missing\]"):
        get_executor("needs-missing")


def test_pmap_is_rejected_with_the_reason():
    with pytest.raises(StrategyRejectedError) as info:
        get_executor("pmap")
    message = str(info.value)
    for phrase in ("maintenance mode", "GIL", "vmap", "loky", "record_traces_callback", "device"):
        assert phrase in message
    assert isinstance(info.value, ValueError)
    (record,) = [s for s in available_strategies() if s.name == "pmap"]
    assert not record.available and "rejected" in record.reason


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(StrategyError, match="idle_timeout"):
        get_executor("loky", n_workers=1, address="tcp://x")


def test_available_strategies_starts_no_process():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    infos = available_strategies()
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
    names = [i.name for i in infos]
    assert names == sorted(names)
    by_name = {i.name: i for i in infos}
    assert by_name["sequential"].available and by_name["sequential"].in_process
    assert by_name["sequential"].default_n_workers == 1
    assert by_name["loky"].available and by_name["loky"].in_process is False
    assert by_name["spawn"].default_n_workers == available_cpus()


def test_entry_point_plugins_are_found_on_first_unknown_lookup(monkeypatch, clean_registry):
    ep = importlib.metadata.EntryPoint(
        name="plugin-seq",
        value="phasetrace.executors.sequential:SequentialExecutor",
        group=registry.ENTRY_POINT_GROUP,
    )

    def fake_entry_points(group=None, **_):
        return [ep] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    registry.reset_registry()
    assert "plugin-seq" not in registry._entries
    with get_executor("plugin-seq") as ex:
        assert ex.map_items(T.square, work_items([5])) == [25]


def test_capability_flags():
    from phasetrace.executors.lokypool import LokyExecutor
    from phasetrace.executors.sequential import SequentialExecutor
    from phasetrace.executors.spawn import SpawnExecutor

    assert SequentialExecutor.in_process and not SequentialExecutor.needs_picklable_fn
    assert not LokyExecutor.in_process and LokyExecutor.reuses_pool
    assert not LokyExecutor.needs_picklable_fn  # cloudpickle ships lambdas
    assert SpawnExecutor.needs_picklable_fn and SpawnExecutor.reuses_pool
    assert issubclass(LokyExecutor, Executor)


def test_importing_executors_and_config_imports_no_heavy_dependency():
    code = (
        "import sys, phasetrace.executors, phasetrace.settings;"
        "heavy = [m for m in ('loky', 'jax', 'dask', 'joblib', 'cloudpickle') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


# -- chunking ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.sampled_from([0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 1.0]), max_size=80),
    n_workers=st.integers(1, 8),
)
def test_chunks_partition_items_contiguously(costs, n_workers):
    chunks = plan_chunks(costs, n_workers)
    if not costs:
        assert chunks == []
        return
    assert chunks[0][0] == 0 and chunks[-1][1] == len(costs)
    assert all(a < b for a, b in chunks)
    assert all(chunks[i][1] == chunks[i + 1][0] for i in range(len(chunks) - 1))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 300), n_workers=st.integers(1, 8), cost=st.sampled_from([0.0, 1e-2]))
def test_equal_units_give_every_worker_work(n, n_workers, cost):
    chunks = plan_chunks([cost] * n, n_workers)
    assert len(chunks) >= min(n, n_workers)


def test_small_units_are_grouped_into_few_chunks():
    assert len(plan_chunks([0.0] * 1000, 2)) == 8  # 4 chunks per worker
    assert len(plan_chunks([1e-6] * 1000, 2)) == 2  # 1 ms of work: one chunk per worker
    assert len(plan_chunks([1.0] * 10, 2)) == 10  # big units travel alone
    assert len(plan_chunks([0.1] * 20, 2)) == 20  # 100 ms already amortises a round trip
    assert len(plan_chunks([0.01] * 100, 2)) == 10  # chunks of at most ~0.1 s


# -- auto --------------------------------------------------------------------------------


def test_auto_runs_small_work_in_process_and_says_why(caplog):
    with (
        caplog.at_level(logging.DEBUG, logger="phasetrace.executors"),
        get_executor("auto", n_workers=2) as ex,
    ):
        assert ex.map_items(T.getpid, work_items(range(5), costs=[1e-6] * 5)) == [os.getpid()] * 5
        decision = ex.last_decision
        assert decision.strategy == "sequential"
        assert "in-process" in decision.reason
    assert any("auto: sequential" in r.getMessage() for r in caplog.records)


def test_auto_never_probes_in_the_caller_when_it_chooses_the_pool():
    """Unknown costs count as unknown_cost_s: nothing runs here to measure them, and when
    the answer is the pool, every unit runs in a worker."""
    with get_executor("auto", n_workers=2, unknown_cost_s=1.0) as ex:
        pids = ex.map_items(T.getpid, work_items(range(6)))
        assert ex.last_decision.strategy == "loky"
        assert os.getpid() not in pids
    with get_executor("auto", n_workers=2) as ex:  # 1 ms per unit: small work stays here
        assert ex.map_items(T.square, work_items(range(50))) == [i * i for i in range(50)]
        assert ex.last_decision.strategy == "sequential"


def test_auto_rules():
    ex = AutoExecutor(n_workers=2, cold_start_s=0.5, warm_dispatch_s=0.002)
    assert ex.decide([10.0]).strategy == "sequential"  # one unit
    assert ex.decide([1.0, 1.0]).strategy == "loky"
    assert ex.decide([1e-3] * 100).strategy == "sequential"  # 0.1 s < cold start
    assert ex.decide([10.0, 0.01, 0.01]).strategy == "sequential"  # one unit is the work
    assert AutoExecutor(n_workers=1).decide([1.0, 1.0]).strategy == "sequential"


def test_auto_uses_loky_for_large_estimates_and_results_match():
    with get_executor("auto", n_workers=2) as ex:
        pids = ex.map_items(T.getpid, work_items(range(4), costs=[1.0] * 4))
        assert ex.last_decision.strategy == "loky"
        assert os.getpid() not in pids
        assert ex.map_items(T.square, work_items(range(6), costs=[1.0] * 6)) == [
            i * i for i in range(6)
        ]
        assert ex.last_decision.pool_warm


def test_work_items_helper():
    items = work_items(["a", "b"], keys=["x", "y"], costs=[1, 2])
    assert items == [WorkItem(0, "x", "a", 1.0), WorkItem(1, "y", "b", 2.0)]
    with pytest.raises(ValueError, match="differ in length"):
        work_items(["a"], keys=["x", "y"])
