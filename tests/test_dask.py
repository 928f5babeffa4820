"""The ``dask`` strategy against real processes: a scheduler and two workers started here.

A module-scoped fixture starts ``dask scheduler`` and two ``dask worker`` processes (one
thread each) on 127.0.0.1 as subprocesses of this venv's Python, each in its own process
group, and stops them afterwards (SIGTERM, then SIGKILL), checking with psutil that none
is left. The embedded ``LocalCluster`` is tested separately. Everything binds to the
loopback interface only. The whole module takes well under two minutes on two cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

distributed = pytest.importorskip("distributed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import phasetrace as pt  # noqa: E402
import workfns as T  # noqa: E402
from phasetrace.errors import (  # noqa: E402
    ExecutorTimeoutError,
    StrategyError,
    StrategyUnavailableError,
    WorkerCrashedError,
)
from phasetrace.executors import WorkItem, get_executor, registry, work_items  # noqa: E402
from phasetrace.executors.daskpool import DaskExecutor, SchedulerUnreachableError  # noqa: E402
from phasetrace.pipeline import compute_trace, compute_traces  # noqa: E402
from strategies import cyclic_graphs  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(90)]

TESTS_DIR = Path(__file__).resolve().parent
#: Worker deaths a task may cause on the test scheduler before Dask gives up (KilledWorker).
ALLOWED_FAILURES = 1

quick = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- work functions (module level: the workers import this module; tests/ is on their path)


def exit_once(marker: str) -> str:
    """Kill the worker the first time (``marker`` does not exist yet); then succeed."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return "survived"


def slow_append(args: tuple[str, float]) -> int:
    """Sleep, append one line to a file, return the pid: counts how often it ran."""
    path, seconds = args
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


# -- the external cluster ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_processes(pgids: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) in pgids and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


class ExternalCluster:
    """A scheduler and ``n`` workers as subprocesses, each in its own process group."""

    def __init__(self, n_workers: int = 2):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(ALLOWED_FAILURES)
        common = dict(env=env, start_new_session=True, stdout=subprocess.DEVNULL)
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                stderr=subprocess.DEVNULL,
                **common,
            )
        ]
        for i in range(n_workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        self.address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                        "--name",
                        f"phasetrace-test-{i}",
                        "--death-timeout",
                        "30",
                    ],
                    stderr=subprocess.DEVNULL,
                    **common,
                )
            )
        self.pgids = {p.pid for p in self.procs}  # start_new_session: pgid == pid
        self.n_workers = n_workers

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker is registered with the scheduler (bounded)."""
        deadline = time.monotonic() + timeout
        client = distributed.Client(self.address, timeout=timeout, set_as_default=False)
        try:
            client.wait_for_workers(self.n_workers, timeout=max(1.0, deadline - time.monotonic()))
        finally:
            client.close()

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        left = _group_processes(self.pgids)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        psutil.wait_procs(left, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    c = ExternalCluster(n_workers=2)
    try:
        c.wait_ready()
        yield c
    finally:
        pt.shutdown_executors()  # clients of pt.config(...) blocks, before their scheduler
        c.stop()
    assert _group_processes(c.pgids) == [], "dask test processes outlived the fixture"


@pytest.fixture(scope="module")
def remote(cluster):
    """A DaskExecutor connected to the test scheduler (shared by the tests of the module)."""
    with DaskExecutor(address=cluster.address, connect_timeout=20) as ex:
        yield ex


@pytest.fixture
def all_workers(cluster, remote):
    """Wait until both workers are back (a crash test kills some; nannies restart them)."""
    remote.map_items(T.square, work_items([1]))  # connects
    remote.client.wait_for_workers(cluster.n_workers, timeout=60)
    return remote


@pytest.fixture(scope="module", autouse=True)
def _close_cached_executors():
    yield
    pt.shutdown_executors()


def _reference(graph) -> str:
    return compute_trace(graph, strategy="sequential", cache=False, hierarchical=True).digest()


# -- identity: the same trace as sequential ------------------------------------------------


@quick
@given(graphs=st.lists(cyclic_graphs(max_vertices=20), min_size=1, max_size=3))
def test_identity_on_random_cyclic_graphs(cluster, graphs):
    with pt.config(strategy="dask", options={"address": cluster.address, "connect_timeout": 20}):
        traces = compute_traces(graphs, cache=False, hierarchical=True)
    assert [t.digest() for t in traces] == [_reference(g) for g in graphs]


@quick
@given(graphs=st.lists(cyclic_graphs(max_vertices=20), min_size=1, max_size=3))
def test_a_clients_own_executor_is_adopted_and_gives_identical_traces(all_workers, graphs):
    users = all_workers.client.get_executor()  # distributed's concurrent.futures executor
    traces = compute_traces(graphs, strategy=users, cache=False, hierarchical=True)
    assert [t.digest() for t in traces] == [_reference(g) for g in graphs]
    assert all_workers.client.status == "running"  # phasetrace did not close it


@pytest.mark.parametrize(
    "model",
    [lambda: pt.models.two_island(30), lambda: pt.models.random_graph(300, n_sccs=30, seed=3)],
    ids=["two_island-30", "random-300-30sccs"],
)
@pytest.mark.parametrize("min_chunk_seconds", [0.0, 0.02], ids=["one-task-per-unit", "batched"])
def test_identity_on_models_with_many_sccs(cluster, model, min_chunk_seconds):
    g = model()
    options = {"address": cluster.address, "min_chunk_seconds": min_chunk_seconds}
    with pt.config(strategy="dask", options=options):
        trace = compute_trace(g, cache=False, hierarchical=True)
    assert pt.last_run_stats().recorded >= 30
    assert trace.digest() == _reference(g) == pt.record_trace(g).digest()


def test_cache_lives_in_the_parent(cluster, tmp_path):
    g = pt.models.two_island(20)
    kw = dict(strategy="dask", cache_dir=str(tmp_path), hierarchical=True)
    with pt.config(options={"address": cluster.address}):
        first = compute_trace(g, **kw)
        assert pt.last_run_stats().recorded == 20
        second = compute_trace(g, **kw)
    assert pt.last_run_stats().recorded == 0  # all from the parent's cache
    assert first.digest() == second.digest() == pt.record_trace(g).digest()
    entries = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != tmp_path]
    assert entries, "the parent stored the units"


def test_results_in_input_order_across_solo_and_batched_tasks(all_workers):
    costs = [0.0, 0.5, 0.0, 0.001, 0.5, 0.001] * 5
    items = work_items(range(len(costs)), costs=costs)
    assert all_workers.map_items(T.square, items) == [i * i for i in range(len(costs))]


# -- failures ------------------------------------------------------------------------------


def test_unit_exception_keeps_its_type_with_worker_traceback_and_key(all_workers):
    items = work_items([("value", 1), ("raise", "boom in a unit"), ("value", 3)])
    with pytest.raises(ValueError, match="boom in a unit") as info:
        all_workers.map_items(T.behave, items)
    err = info.value
    assert any(items[1].key in note for note in err.__notes__)
    assert "raise_value_error" in str(err.__cause__)  # the worker's traceback


def test_first_failure_in_input_order_is_raised(all_workers):
    items = work_items(
        [("sleep", 300), ("raise", "second"), ("raise", "first-done")], costs=[1, 1, 1]
    )
    with pytest.raises(ValueError, match="second"):
        all_workers.map_items(T.behave, items)


@pytest.mark.timeout(60)
def test_worker_killed_mid_run_is_rescheduled_and_the_run_completes(all_workers, tmp_path):
    marker = str(tmp_path / "died-once")
    items = work_items([marker], costs=[1.0])
    assert all_workers.map_items(exit_once, items) == ["survived"]
    assert os.path.exists(marker)


@pytest.mark.timeout(60)
def test_worker_killed_every_time_raises_worker_crashed_naming_the_unit(all_workers):
    key = hashlib.sha256(b"a unit that always kills its worker").hexdigest()
    items = [*work_items([("sleep", 50)] * 2, costs=[1.0, 1.0]), WorkItem(2, key, ("exit", 9), 1.0)]
    with pytest.raises(WorkerCrashedError) as info:
        all_workers.map_items(T.behave, items)
    # Dask may also give up on a sleeping unit that waited on the dying workers; then the
    # error lists every unit it gave up on, and cannot pin one (key None).
    assert key in str(info.value) and info.value.key in (key, None)
    assert "KilledWorker" in str(info.value)


@pytest.mark.timeout(30)
def test_unreachable_scheduler_is_a_clear_error_within_connect_timeout():
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    ex = get_executor("dask", address=address, connect_timeout=2)
    with pytest.raises(SchedulerUnreachableError, match="could not reach the Dask scheduler"):
        ex.map_items(T.square, work_items([1]))
    assert issubclass(SchedulerUnreachableError, ConnectionError)
    assert issubclass(SchedulerUnreachableError, pt.PhasetraceError)
    ex.close()


@pytest.mark.timeout(60)
def test_timeout_on_external_cluster_cancels_and_raises(all_workers):
    items = work_items([("sleep", 1500)] * 2, costs=[1.5, 1.5])
    with pytest.raises(ExecutorTimeoutError, match=r"did not finish within 0\.3 s"):
        all_workers.map_items(T.behave, items, timeout=0.3)
    assert all_workers.client.status == "running"  # an external cluster is not touched


# -- pure keys -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_same_unit_from_two_clients_is_computed_once(cluster, all_workers, tmp_path):
    log = tmp_path / "runs.txt"
    key = hashlib.sha256(b"one shared unit").hexdigest()
    item = WorkItem(0, key, (str(log), 1.5), 1.5)
    other = DaskExecutor(address=cluster.address)  # a second client
    out: dict[str, list] = {}

    def run(name: str, ex: DaskExecutor) -> None:
        out[name] = ex.map_items(slow_append, [item])

    try:
        threads = [
            threading.Thread(target=run, args=("a", all_workers)),
            threading.Thread(target=run, args=("b", other)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=45)
    finally:
        other.close()
    assert out["a"] == out["b"]
    assert len(log.read_text().splitlines()) == 1


def test_duplicate_items_in_one_call_are_one_task(all_workers, tmp_path):
    log = tmp_path / "runs.txt"
    key = hashlib.sha256(b"a duplicated unit").hexdigest()
    items = [WorkItem(i, key, (str(log), 0.01), 0.5) for i in range(3)]
    pids = all_workers.map_items(slow_append, items)
    assert len(set(pids)) == 1 and len(log.read_text().splitlines()) == 1


def test_keys_that_are_not_content_keys_are_not_trusted(all_workers):
    # work_items' placeholder keys ("item-0") name different payloads in the two calls
    assert all_workers.map_items(T.square, work_items([3], costs=[1.0])) == [9]
    assert all_workers.map_items(T.square, work_items([4], costs=[1.0])) == [16]


# -- options and packaging -----------------------------------------------------------------


def test_security_is_passed_to_the_client(monkeypatch):
    seen = {}

    class FakeClient:
        def __init__(self, address, **kwargs):
            seen.update(kwargs, address=address)
            raise OSError("refused (fake)")

    monkeypatch.setattr(distributed, "Client", FakeClient)
    security = distributed.Security()
    ex = DaskExecutor(address="tls://127.0.0.1:1", security=security, connect_timeout=3)
    with pytest.raises(SchedulerUnreachableError, match=r"tls://127\.0\.0\.1:1"):
        ex.map_items(T.square, work_items([1]))
    assert seen["security"] is security and seen["timeout"] == 3
    assert seen["set_as_default"] is False


def test_a_client_you_pass_is_used_and_never_closed(cluster, all_workers):
    client = distributed.Client(cluster.address, set_as_default=False, timeout=20)
    try:
        with DaskExecutor(client=client) as ex:
            assert ex.map_items(T.square, work_items([3, 4])) == [9, 16]
            assert ex.client is client and not ex.embedded
        assert client.status == "running"
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_tls_security_object_is_passed_through(tmp_path):
    """An embedded TLS cluster, and a second client that reaches it with the same Security."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_cert = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    san = ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*make_cert.split(), *san, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pem = {
        f"tls_{who}_{what}": str(path)
        for who in ("client", "scheduler", "worker")
        for what, path in (("cert", cert), ("key", key))
    }
    security = distributed.Security(tls_ca_file=str(cert), require_encryption=True, **pem)
    with DaskExecutor(n_workers=1, security=security) as ex:
        assert ex.map_items(T.square, work_items([5])) == [25]
        address = ex.cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with DaskExecutor(address=address, security=security) as other:
            assert other.map_items(T.square, work_items([6])) == [36]
        with pytest.raises(StrategyError, match="uses TLS but no security"):
            DaskExecutor(address=address).map_items(T.square, work_items([1]))


def test_bad_options_are_rejected_before_anything_starts():
    with pytest.raises(StrategyError, match="not both"):
        get_executor("dask", address="tcp://127.0.0.1:1", client=object())
    with pytest.raises(StrategyError, match="embedded cluster only"):
        get_executor("dask", address="tcp://127.0.0.1:1", allowed_failures=0)
    with pytest.raises(StrategyError, match="connect_timeout"):
        get_executor("dask", connect_timeout=0)
    with pytest.raises(StrategyError, match="accepts"):
        get_executor("dask", adress="tcp://127.0.0.1:1")


def test_missing_dask_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):  # what an environment without dask looks like
        return (
            None
            if name.partition(".")[0] in ("dask", "distributed")
            else real_find_spec(name, *args, **kwargs)
        )

    registry.reset_registry()
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        with pytest.raises(StrategyUnavailableError, match=r'pip install "phasetrace\[dask\]"'):
            get_executor("dask")
        with pytest.raises(StrategyUnavailableError, match=r"phasetrace\[dask\]"):
            pt.configure(strategy="dask")
    finally:
        monkeypatch.undo()
        registry.reset_registry()
        pt.settings.reset_configuration()


def test_importing_phasetrace_does_not_import_dask():
    code = textwrap.dedent(
        """
        import sys
        import phasetrace, phasetrace.executors.daskpool
        phasetrace.configure(strategy="dask")
        print(sorted(m for m in ("dask", "distributed") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


# -- the embedded LocalCluster -------------------------------------------------------------


def _children() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(p.cmdline()):
                continue  # the stdlib's one helper process, shared by every pool
            out.add(p.pid)
    return out


#: The embedded cluster of these tests: shared with ``compute_traces`` through
#: ``get_executor_for``'s cache (same settings, same executor); a task that kills its
#: worker once is given up at once (allowed_failures=0) to keep the crash test short.
EMBEDDED = dict(strategy="dask", n_workers=2, options={"allowed_failures": 0})


@pytest.fixture(scope="module")
def embedded():
    from phasetrace.settings import get_executor_for, resolve

    before = _children()
    ex = get_executor_for(resolve(**EMBEDDED))
    assert isinstance(ex, DaskExecutor)
    yield ex, before
    ex.close()


@quick
@given(graphs=st.lists(cyclic_graphs(max_vertices=20), min_size=1, max_size=3))
def test_embedded_identity_on_random_cyclic_graphs(embedded, graphs):
    ex, _ = embedded
    with pt.config(**EMBEDDED):
        traces = compute_traces(graphs, cache=False, hierarchical=True)
    assert [t.digest() for t in traces] == [_reference(g) for g in graphs]
    assert ex.generation == 1  # the fixture's cluster did the work


def test_embedded_cluster_shape_and_no_jax_in_workers(embedded):
    ex, _ = embedded
    if importlib.util.find_spec("jax") is not None:
        import jax  # noqa: F401  (the parent has JAX imported; the workers must not)

        assert "jax" in sys.modules
    assert ex.map_items(T.has_jax, work_items([0, 1], costs=[1, 1])) == [False, False]
    info = ex.client.scheduler_info()
    assert len(info["workers"]) == 2
    assert all(w["nthreads"] == 1 for w in info["workers"].values())
    assert ex.cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert len({*ex.map_items(T.getpid, work_items(range(8), costs=[0.5] * 8))}) >= 1
    assert ex.embedded and ex.generation == 1


@pytest.mark.timeout(60)
def test_embedded_crash_then_close_leaves_no_child_processes(embedded):
    ex, before = embedded
    with pytest.raises(WorkerCrashedError, match="died while running unit"):
        ex.map_items(T.behave, work_items([("exit", 5)], costs=[1.0]))
    assert ex.map_items(T.square, work_items([7])) == [49]  # the nanny restarted the worker
    assert _children() - before
    ex.close()
    ex.close()  # twice is fine
    _wait_until_gone(before)
    with pytest.raises(pt.ExecutorClosedError):
        ex.map_items(T.square, work_items([1]))


@pytest.mark.timeout(60)
def test_embedded_ctrl_c_and_timeout_end_the_workers_and_the_next_call_starts_anew():
    before = _children()
    ex = DaskExecutor(n_workers=1)
    try:
        ex.map_items(T.square, work_items([1]))
        workers = _children() - before
        assert workers
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            ex.map_items(T.sleep_ms, work_items([20_000], costs=[20.0]))
        timer.join()
        assert ex.cluster is None
        _wait_until_gone(before)
        with pytest.raises(ExecutorTimeoutError, match="embedded cluster was closed"):
            ex.map_items(T.sleep_ms, work_items([20_000], costs=[20.0]), timeout=2.0)
        assert ex.generation == 2 and "KeyboardInterrupt" in ex.last_rebuild_reason
        assert ex.map_items(T.square, work_items([3])) == [9] and ex.generation == 3
        assert "timeout" in ex.last_rebuild_reason
    finally:
        ex.close()
    _wait_until_gone(before)


@pytest.mark.timeout(90)
def test_embedded_cluster_is_closed_at_exit_and_guarded_main_code_runs_once(tmp_path):
    """Dask's workers start with multiprocessing's spawn, which imports the main script as
    ``__mp_main__`` (documented in strategies.md): code under the ``__main__`` guard, and
    a JAX import there, stays in the parent."""
    script = textwrap.dedent(
        """
        import sys, psutil
        from phasetrace.executors import get_executor, work_items
        import workfns as T

        if __name__ == "__main__":
            print("guarded code ran", file=sys.stderr, flush=True)
            try:
                import jax  # noqa: F401  (the parent uses JAX; workers must not)
            except ImportError:
                pass
            ex = get_executor("dask", n_workers=2)
            assert ex.map_items(T.has_jax, work_items([0, 1], costs=[1, 1])) == [False, False]
            pids = {*ex.map_items(T.getpid, work_items(range(4), costs=[0.5] * 4))}
            kids = [p.pid for p in psutil.Process().children(recursive=True)]
            print(" ".join(map(str, sorted(pids | set(kids)))), flush=True)
            # no close(): interpreter exit must end the cluster
        """
    )
    path = tmp_path / "script.py"
    path.write_text(script)
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=80, check=True
    )
    assert out.stderr.count("guarded code ran") == 1, out.stderr[-2000:]
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) >= 2
    psutil.wait_procs([p for p in map(_proc_or_none, pids) if p is not None])  # pytest-timeout


def _wait_until_gone(before: set[int]) -> None:
    """Poll until no child process beyond ``before`` is left (a hang fails by pytest-timeout)."""
    while _children() - before:
        time.sleep(0.1)


def _proc_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
