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
import signal
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


# -- threads, fork and Ctrl-C (issue 19) ------------------------------------------------------


@pytest.fixture
def configured():
    import phasetrace as pt
    from phasetrace.settings import reset_configuration

    reset_configuration()
    yield pt
    reset_configuration()


def test_kernel_from_many_threads_while_n_workers_changes(configured):
    """Threads evaluate batches of different sizes (so different piece counts) while one
    of them changes ``n_workers``: every result is bit-identical to the sequential one."""
    import numpy as np

    pt = configured
    pt.configure(n_workers=4)
    trace = pt.record_trace(pt.models.two_island(5))
    rng = np.random.default_rng(19)
    batches = [rng.uniform(0.5, 2.0, (b, 2)) for b in (1, 20, 33, 40, 64, 100, 130)]
    want = [trace.moments(th, k=2) for th in batches]
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            for j in range(40):
                b = (i + j) % len(batches)
                if not np.array_equal(trace.moments(batches[b], k=2), want[b]):
                    errors.append(f"thread {i}: batch {b} differs")
                if i == 0 and j % 4 == 0:
                    pt.configure(n_workers=1 + j % 5)
        except Exception as exc:
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_zero_rate_memo_from_many_threads():
    """Threads that classify more zero-rate patterns than the memo keeps evict its entries
    at the same time (a KeyError or 'dictionary changed size' once)."""
    import numpy as np

    import phasetrace as pt
    from phasetrace import _args

    trace = pt.record_trace(pt.models.kingman(4))
    rng = np.random.default_rng(3)
    n_edges = trace.arrays["input_src"].size
    patterns = [rng.random(n_edges) > 0.3 for _ in range(4 * _args.ZERO_PATTERNS_KEPT)]
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            for j in range(1500):
                _args._zero_pattern(trace, patterns[(7 * i + j) % len(patterns)])
        except Exception as exc:
            errors.append(repr(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert len(trace.__dict__["_zero_patterns"]) <= _args.ZERO_PATTERNS_KEPT


def test_interrupted_kernel_call_drops_its_queued_chunks():
    """Ctrl-C in the calling thread (here: a KeyboardInterrupt raised by its own piece)
    stops the other threads' pieces after the chunk they are running: no chunk starts
    once the call has returned, and the work left is not done."""
    from phasetrace import kernel

    started: list[tuple[int, int]] = []
    lock = threading.Lock()

    def fn(ths: slice, rs: slice) -> None:
        with lock:
            started.append((ths.start, ths.stop))
        if ths.start >= 10 * kernel.LANES and ths.stop <= 100_000:
            raise KeyboardInterrupt  # the caller's piece, a few chunks in
        time.sleep(0.002)

    pieces = [(slice(0, 100_000), slice(0, 1)), (slice(100_000, 200_000), slice(0, 1))]
    with pytest.raises(KeyboardInterrupt):
        kernel._run(fn, pieces)
    with lock:
        n_done = len(started)
    time.sleep(0.3)  # a chunk that were still queued would start now
    assert len(started) == n_done
    covered = sum(stop - start for start, stop in started)
    assert covered < 200_000


def test_kernel_error_in_another_thread_reaches_the_caller():
    from phasetrace import kernel

    def fn(ths: slice, rs: slice) -> None:
        if ths.start >= 1000:
            raise ValueError("piece two")

    with pytest.raises(ValueError, match="piece two"):
        kernel._run(fn, [(slice(0, 1000), slice(0, 1)), (slice(1000, 2000), slice(0, 1))])


def _run_script(path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run a script in a session of its own; past ``timeout`` (a hang guard), end it and
    every process it forked, then fail."""
    proc = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{path.name} {' '.join(args)} did not end within {timeout} s (a hang)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a forked child left behind
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


_SIGINT_SCRIPT = """
import os, sys, time
import numpy as np
import phasetrace as pt

pt.configure(n_workers=int(sys.argv[1]))
trace = pt.record_trace(pt.models.two_island(60))
small = np.array([[1.0, 0.5]] * 40)
want = trace.moments(small, k=2)
# Far more work than the hang guard allows (minutes): only an interrupt ends it in time.
big = np.random.default_rng(0).uniform(0.5, 2.0, (2_000_000, 2))
print("started", flush=True)
try:
    trace.moments(big, k=2)
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
assert np.array_equal(trace.moments(small, k=2), want)
print("next call ok", flush=True)
"""


@pytest.mark.parametrize("n_workers", [1, 2])
def test_ctrl_c_stops_a_big_kernel_batch(tmp_path, n_workers):
    """SIGINT during a batch of minutes: KeyboardInterrupt arrives, the next call is
    right, and the process ends (the timeouts are hang guards, far above what it takes)."""
    script = tmp_path / "sigint.py"
    script.write_text(_SIGINT_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(n_workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == ["interrupted", "next", "call", "ok"], err[-2000:]


_FORK_KERNEL_SCRIPT = """
import multiprocessing, os, sys
import numpy as np
import phasetrace as pt

pt.configure(n_workers=4)
trace = pt.record_trace(pt.models.two_island(5))
thetas = np.random.default_rng(1).uniform(0.5, 2.0, (64, 2))
want = trace.moments(thetas, k=2)  # starts the kernel's threads


def total(_):
    return float(trace.moments(thetas, k=2).sum())


if __name__ == "__main__":
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.array_equal(trace.moments(thetas, k=2), want) else 3)
    _, status = os.waitpid(pid, 0)
    print("os.fork child", os.waitstatus_to_exitcode(status), flush=True)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print("fork pool", pool.map(total, range(3)) == [float(want.sum())] * 3, flush=True)
"""


def test_forked_child_evaluates_batches(tmp_path):
    """A process whose kernel threads are running forks: the child (os.fork, a 'fork'
    pool) evaluates batches too, with the same results."""
    script = tmp_path / "forkkernel.py"
    script.write_text(_FORK_KERNEL_SCRIPT)
    out = _run_script(script, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["os.fork child 0", "fork pool True"], out.stderr[-2000:]


_FORK_STRATEGY_SCRIPT = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import phasetrace as pt


def sizes(strategy):
    graphs = [pt.models.two_island(3), pt.models.kingman(5)]
    traces = pt.compute_traces(graphs, strategy=strategy, n_workers=2, cache=False)
    return [t.n_vertices for t in traces]


if __name__ == "__main__":
    name = sys.argv[1]
    strategy = name
    if name == "adopted":
        strategy = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    want = sizes(strategy)
    pid = os.fork()
    if pid == 0:
        try:
            print("child", "same" if sizes(strategy) == want else "differs", flush=True)
        except pt.PhasetraceError as exc:
            print("child", type(exc).__name__, exc, flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("parent", "same" if sizes(strategy) == want else "differs", flush=True)
    if name == "adopted":
        strategy.shutdown()
"""

#: What a forked child gets from each strategy the parent used before the fork.
FORK_OUTCOMES = {
    "auto": "child same",
    "sequential": "child same",
    "loky": "child same",
    "spawn": "child same",
    "joblib": "child StrategyError",  # joblib's process-wide loky pool does not survive fork
    "dask": "child StrategyError",  # nor does Dask's event loop
    "adopted": "child StrategyError",  # someone else's pool, its workers the parent's
}


@pytest.mark.parametrize("strategy", list(FORK_OUTCOMES))
def test_forked_child_of_a_process_that_used_a_strategy(tmp_path, strategy):
    """The child works, or raises a clear error at once; it never waits forever (the
    timeout is a hang guard). The parent's pool still works afterwards."""
    if strategy in ("dask", "joblib"):
        pytest.importorskip({"dask": "distributed", "joblib": "joblib"}[strategy])
    script = tmp_path / "forkstrategy.py"
    script.write_text(_FORK_STRATEGY_SCRIPT)
    out = _run_script(script, strategy, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    child, parent = out.stdout.splitlines()
    assert child.startswith(FORK_OUTCOMES[strategy]), child
    if "Error" in child:
        assert "forked" in child
    assert parent == "parent same"


def test_threads_times_strategies(configured):
    """Threads record traces on every strategy at once, and evaluate them: the results
    are those of the sequential strategy."""
    import numpy as np

    pt = configured
    graphs = [pt.models.two_island(3), pt.models.kingman(5), pt.models.two_island(4)]
    theta = [np.array([1.0, 0.5]), np.array([1.0]), np.array([0.7, 1.3])]
    want = [
        t.moments(th, k=2)
        for t, th in zip(
            pt.compute_traces(graphs, strategy="sequential", cache=False), theta, strict=True
        )
    ]
    strategies = ["sequential", "loky", "spawn"]
    for name in ("joblib", "dask"):
        try:
            __import__({"joblib": "joblib", "dask": "distributed"}[name])
            strategies.append(name)
        except ImportError:
            pass
    errors: list[str] = []

    def work(i: int) -> None:
        strategy = strategies[i % len(strategies)]
        try:
            for _ in range(3):
                traces = pt.compute_traces(graphs, strategy=strategy, n_workers=2, cache=False)
                for t, th, w in zip(traces, theta, want, strict=True):
                    batch = np.repeat(th[None, :], 40, axis=0)
                    if not np.array_equal(t.moments(batch, k=2), np.repeat(w[None], 40, 0)):
                        errors.append(f"{strategy}: moments differ")
        except Exception as exc:
            errors.append(f"{strategy}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2 * len(strategies))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        pt.shutdown_executors()
        if "joblib" in strategies:  # joblib's process-wide pool: its owner (here) ends it
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
    assert errors == []


_SIGINT_STRATEGY_SCRIPT = """
import sys
import phasetrace as pt
from phasetrace.executors import get_executor, work_items
import workfns

if __name__ == "__main__":
    name, marks = sys.argv[1], sys.argv[2]
    ex = get_executor(name, n_workers=2)
    ex.map_items(workfns.square, work_items([1, 2]))
    print("ready", flush=True)
    try:
        ex.map_items(workfns.mark_then_sleep, work_items([(marks, 60_000)] * 4, costs=[60.0] * 4))
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("next", ex.map_items(workfns.square, work_items([3, 4])), flush=True)
    trace = pt.compute_trace(pt.models.two_island(4), strategy=ex, cache=False)
    print("trace", trace.n_vertices, float(trace.expectation([1.0, 0.5])) > 0, flush=True)
    ex.shutdown()
"""


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "adopted"])
def test_ctrl_c_during_a_call_then_the_next_call_works(tmp_path, strategy):
    """SIGINT while the workers run long units: KeyboardInterrupt in the caller, and the
    same executor runs the next call (an adopted pool is its owner's to end: phasetrace
    cannot stop units running there)."""
    if strategy in ("dask", "joblib"):
        pytest.importorskip({"dask": "distributed", "joblib": "joblib"}[strategy])
    script = tmp_path / "sigint_strategy.py"
    script.write_text(_SIGINT_STRATEGY_SCRIPT)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), strategy, str(marks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not list(marks.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(marks.iterdir()), "no unit started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines() == ["interrupted", "next [9, 16]", "trace 15 True"], err[-2000:]
