"""The crash matrix, after loky's ``tests/test_reusable_executor.py``: for every process
strategy, a segfault, an ``os._exit``, an exception and an unpicklable object at each
stage of a unit's round trip:

1. ``call-pickle``: pickling the call in the parent;
2. ``worker-unpickle``: unpickling it in the worker;
3. ``run``: running it;
4. ``result-pickle``: pickling the result in the worker;
5. ``result-unpickle``: unpickling the result in the parent.

Each case must raise the documented error class, leave the executor able to run the next
call correctly, and leave no orphan process. A segfault or ``os._exit`` in the *parent*
(stages 1 and 5) ends the parent, as it would with any pool; those cases run in a child
interpreter and check that the workers it leaves end themselves.

No test asserts how long anything took. Set ``PHASETRACE_CRASH_MATRIX_TIMES=FILE`` to write
how long each case took to report (seconds, JSON) for the issue tracker.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import psutil
import pytest

import workfns as T
from phasetrace.errors import SerializationError, UnitFailedError, WorkerCrashedError
from phasetrace.executors import get_executor, work_items

pytestmark = pytest.mark.timeout(120)

STRATEGIES = ["loky", "spawn", "joblib", "dask", "adopted"]


def _parent_only_object():
    """An instance of a class the worker cannot import (its module exists only here)."""
    name = "phasetrace_crash_matrix_parent_only"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # pickled by reference
        exec("class ParentOnly:\n    pass\n", module.__dict__)
        sys.modules[name] = module
    return module.ParentOnly()


#: (stage, kind) -> (work function, payload factory, expected error class)
CASES = {
    ("call-pickle", "raise"): (T.identity, lambda: T.ActAtPickle("raise"), SerializationError),
    ("call-pickle", "unpicklable"): (T.identity, threading.Lock, SerializationError),
    ("worker-unpickle", "segfault"): (
        T.identity,
        lambda: T.ActAtUnpickle("segfault"),
        WorkerCrashedError,
    ),
    ("worker-unpickle", "exit"): (T.identity, lambda: T.ActAtUnpickle("exit"), WorkerCrashedError),
    ("worker-unpickle", "raise"): (
        T.identity,
        lambda: T.ActAtUnpickle("raise"),
        SerializationError,
    ),
    ("worker-unpickle", "unpicklable"): (T.identity, _parent_only_object, SerializationError),
    ("run", "segfault"): (T.behave, lambda: ("segfault", None), WorkerCrashedError),
    ("run", "exit"): (T.behave, lambda: ("exit", 7), WorkerCrashedError),
    ("run", "raise"): (T.behave, lambda: ("raise", "boom in a unit"), ValueError),
    ("run", "unpicklable"): (T.raise_unpicklable, lambda: None, UnitFailedError),
    ("result-pickle", "segfault"): (T.make_act_at_pickle, lambda: "segfault", WorkerCrashedError),
    ("result-pickle", "exit"): (T.make_act_at_pickle, lambda: "exit", WorkerCrashedError),
    ("result-pickle", "raise"): (T.make_act_at_pickle, lambda: "raise", SerializationError),
    ("result-pickle", "unpicklable"): (T.unpicklable_result, lambda: None, SerializationError),
    ("result-unpickle", "raise"): (T.make_act_at_unpickle, lambda: "raise", SerializationError),
    ("result-unpickle", "unpicklable"): (T.worker_only_object, lambda: None, SerializationError),
}


def _children() -> set[int]:
    """Live descendants of this process, without the stdlib/loky resource trackers (one
    helper each, shared by every pool of the process, by design)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
            out.add(p.pid)
    return out


class Runner:
    """One strategy's executor, replaced the way its documentation says after a failure."""

    def __init__(self, strategy: str):
        self.strategy = strategy
        self.pool: ProcessPoolExecutor | None = None
        self.ex = self._make()

    def _make(self):
        if self.strategy == "adopted":
            # someone else's pool: phasetrace never replaces it; its owner does
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
            return get_executor(self.pool)
        if self.strategy == "dask":
            # no retries on other workers: one death is reported as it happens
            return get_executor("dask", n_workers=1, allowed_failures=0)
        if self.strategy == "joblib":
            # joblib runs n_jobs=1 in the calling process (its SequentialBackend)
            return get_executor("joblib", n_workers=2)
        return get_executor(self.strategy, n_workers=1)

    def after_failure(self, exc: BaseException) -> None:
        if self.strategy == "adopted" and isinstance(exc, BrokenProcessPool):
            self.close()
            self.ex = self._make()

    def close(self) -> None:
        self.ex.shutdown()
        if self.pool is not None:
            self.pool.shutdown()
        if self.strategy == "joblib":
            # joblib's workers belong to joblib's process-wide loky executor, shared with
            # other joblib code; its owner (here, this test) ends them
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)


@pytest.fixture(scope="module")
def report_times():
    times: dict[str, float] = {}
    yield times
    path = os.environ.get("PHASETRACE_CRASH_MATRIX_TIMES")
    if path:
        with open(path, "w") as f:
            json.dump(times, f, indent=1, sort_keys=True)


@pytest.fixture(scope="module", params=STRATEGIES)
def runner(request):
    if request.param in ("dask", "joblib"):
        pytest.importorskip({"dask": "distributed", "joblib": "joblib"}[request.param])
    before = _children()
    r = Runner(request.param)
    assert r.ex.map_items(T.square, work_items([3])) == [9]  # warm
    yield r
    r.close()
    while _children() - before:  # no orphans; a process that never ends fails by timeout
        time.sleep(0.1)


@pytest.mark.parametrize(("stage", "kind"), list(CASES), ids=[f"{s}-{k}" for s, k in CASES])
def test_failure_is_reported_and_the_next_call_works(runner, report_times, stage, kind):
    fn, make_payload, expected = CASES[stage, kind]
    items = work_items([make_payload()], keys=["unit-under-test"], costs=[1.0])
    t0 = time.monotonic()
    with pytest.raises(expected) as info:
        runner.ex.map_items(fn, items)
    report_times[f"{runner.strategy} {stage} {kind}"] = round(time.monotonic() - t0, 3)
    err = info.value
    if expected is WorkerCrashedError:
        assert isinstance(err, BrokenProcessPool)
        assert "unit-under-test" in str(err)
    elif expected is ValueError:
        assert "boom in a unit" in str(err)
        assert any("unit-under-test" in note for note in err.__notes__)
    else:
        assert "unit-under-test" in str(err)
    runner.after_failure(err)
    assert runner.ex.map_items(T.square, work_items([4, 5])) == [16, 25]
    assert list(runner.ex.map(T.square, [6])) == [36]


# -- the parent dies while pickling or unpickling: its workers must not outlive it ---------

_PARENT_SCRIPT = """
import sys, os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from phasetrace.executors import get_executor, work_items
import workfns as T

if __name__ == "__main__":
    strategy, stage, kind = sys.argv[1:4]
    if strategy == "adopted":
        ex = get_executor(ProcessPoolExecutor(1, mp_context=get_context("spawn")))
    else:
        ex = get_executor(strategy, n_workers=2 if strategy == "joblib" else 1)
    pids = set(ex.map_items(T.getpid, work_items([0, 1], costs=[1.0, 1.0])))
    import psutil
    pids |= {p.pid for p in psutil.Process().children(recursive=True)}
    print(" ".join(map(str, sorted(pids))), flush=True)
    if stage == "call-pickle":
        ex.map_items(T.identity, work_items([T.ActAtPickle(kind)]))
    else:
        ex.map_items(T.make_act_at_unpickle, work_items([kind]))
    print("the parent survived", flush=True)
"""


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("stage", "kind"), [("call-pickle", "exit"), ("result-unpickle", "segfault")]
)
def test_parent_that_dies_mid_call_leaves_no_workers(tmp_path, strategy, stage, kind):
    if strategy in ("dask", "joblib"):
        pytest.importorskip({"dask": "distributed", "joblib": "joblib"}[strategy])
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_PARENT_SCRIPT))
    out = subprocess.run(
        [sys.executable, str(script), strategy, stage, kind],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode != 0 and "the parent survived" not in out.stdout, out.stderr[-2000:]
    pids = [int(p) for p in out.stdout.split()]
    assert pids, out.stderr[-2000:]
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if "resource_tracker" not in " ".join(proc.cmdline()):
                procs.append(proc)
    psutil.wait_procs(procs)  # returns when all are gone; one that stays fails by timeout
