"""What users must be able to rely on when things go wrong: a dead worker, a failing unit,
a timeout, Ctrl-C, a killed parent, things that cannot be pickled.

Every test has a pytest-timeout bound, so a hang fails instead of stalling the suite;
nothing asserts how long anything took (events are polled instead, with generous bounds).
The full matrix of failure kinds and stages per strategy is ``test_crash_matrix.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import types
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

import workfns as T
from phasetrace.errors import (
    ExecutorTimeoutError,
    SerializationError,
    StrategyError,
    UnitFailedError,
    WorkerCrashedError,
)
from phasetrace.executors import get_executor, work_items

POOLED = ["loky", "spawn"]
#: Strategies whose workers are children of this process (orphan checks).
LOCAL_PROCESSES = ["loky", "spawn", "joblib"]
#: Generous bound on events that take well under a second on an idle machine.
EVENTUALLY = 30.0


@pytest.fixture(scope="module", params=POOLED)
def pool(request):
    with get_executor(request.param, n_workers=2) as ex:
        ex.map_items(T.square, work_items([1]))  # warm
        yield ex


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_all_gone(procs, within: float) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not _gone(p)]
        time.sleep(0.05)
    return alive


def _worker_procs(ex) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in ex._workers()]


# -- a worker dies -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
def test_dead_worker_names_the_unit_and_next_call_gets_a_fresh_pool(pool, how):
    items = work_items(
        [("value", 0), ("sleep", 20), (how, 5 if how == "exit" else None), ("value", 3)],
        keys=["k0", "k1", "CRASHING-UNIT", "k3"],
    )
    generation = pool.generation
    with pytest.raises(WorkerCrashedError) as info:
        pool.map_items(T.behave, items)
    err = info.value
    assert "CRASHING-UNIT" in str(err)
    assert err.key == "CRASHING-UNIT"
    assert isinstance(err, BrokenProcessPool)
    expected = {"exit": 5, "kill": -signal.SIGKILL, "segfault": -signal.SIGSEGV}[how]
    assert err.exitcode == expected
    # the next call works, on a new pool
    assert pool.map_items(T.square, work_items(range(10))) == [i * i for i in range(10)]
    assert pool.generation == generation + 1
    assert "died" in pool.last_rebuild_reason


@pytest.mark.timeout(60)
def test_crash_inside_a_large_chunk_names_the_unit_that_ran(pool):
    payloads = [("value", i) for i in range(400)]
    payloads[237] = ("exit", 3)
    items = work_items(payloads, keys=[f"unit-{i:03d}" for i in range(400)])
    with pytest.raises(WorkerCrashedError) as info:
        pool.map_items(T.behave, items)
    assert info.value.key == "unit-237"
    assert "unit-237" in str(info.value)
    assert pool.map_items(T.square, work_items([4])) == [16]


# -- a unit raises -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_exception_in_unit_keeps_its_type_with_key_note_and_worker_traceback(pool):
    items = work_items([("value", 1), ("raise", "bad θ"), ("value", 2)], keys=["a", "b", "c"])
    with pytest.raises(ValueError) as info:
        pool.map_items(T.behave, items)
    err = info.value
    assert str(err) == "bad θ" and "work unit b" in err.__notes__[0]
    shown = "".join(traceback.format_exception(err))
    assert "direct cause" in shown
    assert "raise_value_error" in shown and "raise ValueError(message)" in shown


@pytest.mark.timeout(30)
def test_sys_exit_in_a_unit_is_a_unit_failure_not_a_crash(pool):
    generation = pool.generation
    with pytest.raises(UnitFailedError) as info:
        pool.map_items(T.exit_via_sys_exit, work_items([4], keys=["quits"]))
    assert info.value.key == "quits" and info.value.exc_type == "SystemExit"
    assert pool.map_items(T.square, work_items([2])) == [4]
    assert pool.generation == generation


@pytest.mark.timeout(30)
def test_pools_do_not_nest_inside_workers(pool):
    with pytest.raises(StrategyError, match="inside a worker"):
        pool.map_items(T.nested_map, work_items([pool.name]))


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_timeout_terminates_the_workers_that_ran_over(pool):
    pool.map_items(T.square, work_items(range(4)))
    workers = _worker_procs(pool)
    generation = pool.generation
    items = work_items([30_000] * 4, keys=[f"slow-{i}" for i in range(4)])
    with pytest.raises(ExecutorTimeoutError) as info:
        pool.map_items(T.sleep_ms, items, timeout=1.0)
    assert isinstance(info.value, TimeoutError)
    assert "slow-0" in str(info.value) and "slow-1" in str(info.value)
    assert not _wait_all_gone(workers, within=EVENTUALLY)
    assert pool.map_items(T.square, work_items([3])) == [9]
    assert pool.generation == generation + 1


@pytest.mark.timeout(30)
def test_sequential_timeout_is_checked_between_units():
    with get_executor("sequential") as ex:
        with pytest.raises(ExecutorTimeoutError, match="between units"):
            ex.map_items(T.sleep_ms, work_items([300, 300, 300]), timeout=0.1)
        assert ex.map_items(T.square, work_items([2]), timeout=10) == [4]


def test_bad_timeout_is_rejected(pool):
    with pytest.raises(ValueError, match="timeout"):
        pool.map_items(T.square, work_items([1]), timeout=0)


# -- things that cannot be pickled -------------------------------------------------------


@pytest.mark.timeout(30)
def test_spawn_rejects_lambda_with_a_fix():
    with get_executor("spawn", n_workers=1) as ex:
        with pytest.raises(SerializationError) as info:
            ex.map_items(lambda x: x, work_items([1]))
        assert info.value.what == "fn" and "'loky'" in str(info.value)

        def local(x):
            return x

        with pytest.raises(SerializationError) as info:
            ex.map_items(local, work_items([1]))
        assert "cannot be pickled" in str(info.value) and "top level" in str(info.value)
        assert ex.generation == 0  # rejected before any worker started


@pytest.mark.timeout(30)
def test_unpicklable_fn_item_and_result_are_named(pool):
    generation = pool.generation
    lock = threading.Lock()

    def holds_lock(x):
        return lock, x

    if pool.name == "loky":  # cloudpickle ships closures, but not one holding a lock
        with pytest.raises(SerializationError) as info:
            pool.map_items(holds_lock, work_items([1]))
        assert info.value.what == "fn"
    items = work_items([1, threading.Lock(), 3], keys=["ok", "LOCKED", "ok2"])
    with pytest.raises(SerializationError) as info:
        pool.map_items(T.identity, items)
    assert info.value.what == "item" and info.value.key == "LOCKED"
    assert "item 1 (key LOCKED)" in str(info.value) and "plain data" in str(info.value)
    with pytest.raises(SerializationError) as info:
        pool.map_items(T.unpicklable_result, work_items([0], keys=["RES"]))
    assert info.value.what == "result" and info.value.key == "RES"
    assert pool.map_items(T.square, work_items([5])) == [25]
    assert pool.generation == generation  # none of this broke the pool


@pytest.mark.timeout(30)
def test_payload_that_workers_cannot_unpickle_is_reported(pool, monkeypatch):
    module = types.ModuleType("phasetrace_parent_only_module")
    cls = type("OnlyHere", (), {"__module__": module.__name__})
    module.OnlyHere = cls
    monkeypatch.setitem(sys.modules, module.__name__, module)
    generation = pool.generation
    with pytest.raises(SerializationError) as info:
        pool.map_items(T.identity, work_items([cls()], keys=["ORPHAN"]))
    assert info.value.what == "chunk" and "ORPHAN" in str(info.value)
    assert "importable" in str(info.value)
    assert pool.generation == generation


# -- Ctrl-C and a killed parent, in a subprocess ------------------------------------------

_SCRIPT = textwrap.dedent(
    """
    import sys
    from phasetrace.executors import get_executor, work_items
    import workfns

    if __name__ == "__main__":
        strategy, marks = sys.argv[1], sys.argv[2]
        with get_executor(strategy, n_workers=2) as ex:
            ex.map_items(workfns.square, work_items([1, 2]))
            print("READY", flush=True)
            try:
                ex.map_items(
                    workfns.mark_then_sleep,
                    work_items([(marks, 60_000)] * 6, costs=[60.0] * 6),
                )
            except KeyboardInterrupt:
                print("INTERRUPTED", flush=True)
                raise
    """
)


def _start_long_map(tmp_path, strategy):
    """A subprocess whose two workers are both inside a 60 s unit (each left a mark)."""
    script = tmp_path / "long_map.py"
    script.write_text(_SCRIPT)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), strategy, str(marks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "READY"
    deadline = time.monotonic() + EVENTUALLY
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(marks.iterdir())) >= 2, "the workers never started their units"
    parent = psutil.Process(proc.pid)
    return proc, parent.children(recursive=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("strategy", POOLED)
def test_ctrl_c_cancels_units_and_ends_workers(tmp_path, strategy):
    proc, descendants = _start_long_map(tmp_path, strategy)
    assert len(descendants) >= 2
    os.kill(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=EVENTUALLY)
    finally:
        proc.kill()
    assert "INTERRUPTED" in out, err
    assert "KeyboardInterrupt" in err
    alive = _wait_all_gone(descendants, within=EVENTUALLY)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("strategy", LOCAL_PROCESSES)
def test_workers_exit_when_parent_is_killed(tmp_path, strategy):
    if strategy == "joblib":
        pytest.importorskip("joblib")
    proc, descendants = _start_long_map(tmp_path, strategy)
    assert len(descendants) >= 2
    proc.kill()  # SIGKILL: no cleanup code of the parent runs
    proc.wait(timeout=10)
    alive = _wait_all_gone(descendants, within=EVENTUALLY)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.parametrize("strategy", POOLED)
def test_an_exit_status_is_reported_every_time(strategy):
    """``os._exit(7)`` used to be reported as "exit status unknown" in 2 runs of 4: the
    worker's exit code must be in the message each time."""
    with get_executor(strategy, n_workers=2) as ex:
        for _ in range(4):
            with pytest.raises(WorkerCrashedError, match=r"exit code 7\b") as info:
                list(ex.map(T.exit_now, [7]))
            assert info.value.exitcode == 7
            assert list(ex.map(T.square, [3])) == [9]
