"""The ``dask`` strategy: units run as tasks on a Dask distributed cluster.

Data flow: a call groups the items into *tasks* and pickles each task in this process
with the chunk wire format of the local pools (:mod:`phasetrace.executors._wire`). The bytes go
to the cluster with ``client.map(_worker.run_pickled_chunk, blobs, key=keys)``: one
scheduler message for the whole call. A worker unpickles the blob, runs
:func:`~phasetrace.executors._worker.run_chunk` (every exception becomes an outcome, with
its formatted traceback) and sends back pickled outcomes, which this process decodes in
input order. Workers receive nothing else: no settings, no cache, no parent globals; the
cache stays in the calling process (``pipeline``), workers only record.

Keys (Dask's ``pure`` semantics): a unit whose estimated cost reaches
``min_chunk_seconds`` is a task of its own, keyed ``"<module.fn>-<content key>"``, so the
same unit submitted twice while the first is still held, by this client or any other on
the same scheduler, is computed once. Smaller units (and units of unknown cost) are
batched into chunk tasks keyed by a hash of their members' keys, because one Dask task
costs about 1-5 ms of scheduler and network time (measured here), far more than a small
unit. The trade-off: a batched unit is shared between two submissions only when both
batch it with the same neighbours; ``min_chunk_seconds=0`` makes every unit its own task.
A key that is not a content key (not 64 hex digits, e.g. ``work_items``' ``"item-0"``) is
never trusted: the task is then keyed by a hash of its pickled bytes.

Failure semantics: an exception in a unit is an outcome, re-raised here with its own
type, the worker traceback as its cause and the unit key in a note. A worker that dies
makes Dask reschedule its task elsewhere; once the scheduler's retries
(``distributed.scheduler.allowed-failures``) are used up, Dask reports ``KilledWorker``,
raised here as :class:`~phasetrace.errors.WorkerCrashedError` naming the unit(s) of the
task(s) it gave up on (Dask blames every task assigned to a dying worker, so a unit queued
behind the culprit may be named with it). A scheduler that cannot be reached within
``connect_timeout`` raises :class:`SchedulerUnreachableError`. On ``timeout=`` or Ctrl-C
the call's futures are cancelled; the embedded cluster is also closed (its workers are
the only way to stop a running task), while an external cluster's running tasks finish
on their own.

The embedded cluster (no ``address`` or ``client``) is a ``LocalCluster`` of
``n_workers`` processes with one thread each, bound to 127.0.0.1, without dashboard,
started on the first call and closed by :meth:`DaskExecutor.shutdown` or at interpreter
exit. Dask's nanny starts worker processes with the *spawn* method, which imports the
parent's main script in every worker (as every spawn-based pool does): keep a script's
work, and imports you do not want in the workers (JAX, say), under
``if __name__ == "__main__":``.

Dask and distributed are imported on first use, never when this module is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from phasetrace.errors import (
    ExecutorTimeoutError,
    PhasetraceError,
    StrategyError,
    UnitFailedError,
    WorkerCrashedError,
)
from phasetrace.executors import _wire, _worker
from phasetrace.executors._pool import CHUNKS_PER_WORKER, check_spawn_main, plan_chunks
from phasetrace.executors.base import (
    Executor,
    RemoteTraceback,
    WorkItem,
    check_not_inherited,
    note_fork_unsafe,
)

logger = logging.getLogger("phasetrace.executors")

#: Seconds to wait for a scheduler (the ``connect_timeout`` option's default).
CONNECT_TIMEOUT = 10.0
#: Units estimated to take at least this long are tasks of their own (keyed by content);
#: smaller ones are batched. A task costs ~1-5 ms here (scheduler, two network hops,
#: (de)serialization), so a 20 ms floor keeps that overhead at 5-25 % for the smallest
#: tasks while units of 20 ms and more keep Dask's one-key-per-unit deduplication.
MIN_CHUNK_SECONDS = 0.02
#: After a task fails, how long to wait for other failures of the same event (a dying
#: worker fails all the tasks assigned to it at once), so that one error names them all.
KILLED_GRACE_SECONDS = 0.25

_CONTENT_KEY = re.compile(r"[0-9a-f]{64}")


class SchedulerUnreachableError(PhasetraceError, ConnectionError):
    """The Dask scheduler could not be reached (within ``connect_timeout``), or was lost.

    Derives from :class:`ConnectionError`, so generic network error handlers catch it.
    """


# --------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------


@dataclass
class _Task:
    key: str
    indices: list[int]  # the items packed in the blob, in order
    blob: bytes = b""
    item_keys: list[str] = field(default_factory=list)
    copies: list[list[int]] = field(default_factory=list)  # identical groups: same outcomes


class DaskExecutor(Executor):
    """Run units as tasks on a Dask distributed cluster (embedded, remote, or yours).

    Parameters
    ----------
    n_workers : int or None
        Workers of the embedded ``LocalCluster`` (see
        :func:`~phasetrace.executors.base.resolve_n_workers`; default all CPUs). With
        ``address`` or ``client`` the cluster has the workers it has: chunks are planned
        for its worker threads at each call, and ``n_workers`` is only the guess used
        while it has none (an adaptive cluster still scaling up).
    address : str or Cluster, optional
        Scheduler to connect to (``"tcp://10.0.0.5:8786"``, ``"tls://..."``) or a Dask
        cluster object (``SLURMCluster(...)``, ``LocalCluster(...)``); the executor
        opens its own client and closes it (not the cluster) in :meth:`close`.
    client : distributed.Client, optional
        A client you already have; used as it is and never closed here.
    security : distributed.Security, optional
        TLS settings for the connection (and for the embedded cluster, which then uses
        ``tls://``).
    connect_timeout : float
        Seconds to wait for the scheduler before raising
        :class:`SchedulerUnreachableError` (default 10).
    processes : bool
        Embedded cluster only: worker processes (default) or threads of this process.
    threads_per_worker : int
        Embedded cluster only: threads per worker process (default 1).
    allowed_failures : int, optional
        Embedded cluster only: how many worker deaths a task may cause before it is
        given up (``KilledWorker``); Dask's default is 3. Set it on the scheduler
        (``distributed.scheduler.allowed-failures``) for an external cluster.
    min_chunk_seconds : float
        Units estimated below this are batched into chunk tasks (default 0.02 s; 0
        makes every unit its own task).
    chunks_per_worker : int
        Chunk tasks per worker thread when batching (default 4).
    cluster_kwargs : mapping, optional
        Further ``LocalCluster`` arguments for the embedded cluster
        (``memory_limit``, ``local_directory``, ...).

    Attributes
    ----------
    generation : int
        Embedded clusters started so far (a timeout or Ctrl-C closes the cluster; the
        next call starts a new one).
    last_rebuild_reason : str or None

    Notes
    -----
    ``fn`` must be importable on the workers (phasetrace installed there); a lambda or a
    function of ``__main__`` is sent by value with cloudpickle. Dask cannot interrupt a
    running task: on ``timeout=`` or Ctrl-C the embedded cluster is closed, while tasks on
    an external cluster run to their end (their results are dropped).

    Examples
    --------
    >>> with DaskExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     list(ex.map(abs, [-1, -2, 3]))
    [1, 2, 3]
    >>> import phasetrace as pt  # doctest: +SKIP
    >>> pt.configure(strategy="dask", options={"address": "tcp://10.0.0.5:8786"})  # doctest: +SKIP
    """

    name = "dask"
    in_process = False
    needs_picklable_fn = False
    reuses_pool = True
    default_n_workers = None

    @classmethod
    def check_options(
        cls,
        *,
        address: Any = None,
        client: Any = None,
        security: Any = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        processes: bool = True,
        threads_per_worker: int = 1,
        allowed_failures: int | None = None,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
        cluster_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Check option values without connecting (``configure`` calls this, so a bad
        value fails there, not at the first call); raise :class:`StrategyError`."""
        if address is not None and client is not None:
            raise StrategyError("pass either address or client to the 'dask' strategy, not both")
        if address is not None and not (
            isinstance(address, str) or hasattr(address, "scheduler_address")
        ):
            raise StrategyError(
                f"address must be a scheduler address such as 'tcp://host:8786' or a Dask "
                f"cluster object, got {type(address).__name__} {address!r}"
            )
        if client is not None and not callable(getattr(client, "submit", None)):
            raise StrategyError(f"client must be a distributed.Client, got {type(client).__name__}")
        if isinstance(connect_timeout, bool) or not (
            isinstance(connect_timeout, int | float) and connect_timeout > 0
        ):
            raise StrategyError(
                f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}"
            )
        if isinstance(threads_per_worker, bool) or not (
            isinstance(threads_per_worker, int) and threads_per_worker >= 1
        ):
            raise StrategyError(
                f"threads_per_worker must be an int >= 1, got {threads_per_worker!r}"
            )
        if allowed_failures is not None:
            if isinstance(allowed_failures, bool) or not (
                isinstance(allowed_failures, int) and allowed_failures >= 0
            ):
                raise StrategyError(
                    f"allowed_failures must be an int >= 0 or None, got {allowed_failures!r}"
                )
            if address is not None or client is not None:
                raise StrategyError(
                    "allowed_failures applies to the embedded cluster only; for an external "
                    "scheduler set distributed.scheduler.allowed-failures in its Dask config"
                )
        if not (isinstance(min_chunk_seconds, int | float) and min_chunk_seconds >= 0):
            raise StrategyError(f"min_chunk_seconds must be >= 0, got {min_chunk_seconds!r}")
        if isinstance(chunks_per_worker, bool) or not (
            isinstance(chunks_per_worker, int) and chunks_per_worker >= 1
        ):
            raise StrategyError(f"chunks_per_worker must be an int >= 1, got {chunks_per_worker!r}")
        if cluster_kwargs is not None and not isinstance(cluster_kwargs, Mapping):
            raise StrategyError(f"cluster_kwargs must be a mapping, got {cluster_kwargs!r}")
        if cluster_kwargs and (address is not None or client is not None):
            raise StrategyError("cluster_kwargs applies to the embedded cluster only")

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        address: Any = None,
        client: Any = None,
        security: Any = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        processes: bool = True,
        threads_per_worker: int = 1,
        allowed_failures: int | None = None,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
        cluster_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__(n_workers)
        self.check_options(
            address=address,
            client=client,
            connect_timeout=connect_timeout,
            threads_per_worker=threads_per_worker,
            allowed_failures=allowed_failures,
            min_chunk_seconds=min_chunk_seconds,
            chunks_per_worker=chunks_per_worker,
            cluster_kwargs=cluster_kwargs,
        )
        self.address = address
        self.security = security
        self.connect_timeout = float(connect_timeout)
        self.processes = bool(processes)
        self.threads_per_worker = threads_per_worker
        self.allowed_failures = allowed_failures
        self.min_chunk_seconds = float(min_chunk_seconds)
        self.chunks_per_worker = chunks_per_worker
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.generation = 0
        self.last_rebuild_reason: str | None = None
        self._user_client = client
        self._client: Any = client
        self._cluster: Any = None
        self._pending_reason: str | None = None
        self._lock = threading.RLock()  # one call at a time per executor
        self._atexit_registered = False

    # -- connection ------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """True when this executor runs (and owns) its own ``LocalCluster``."""
        return self.address is None and self._user_client is None

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (None before the first call)."""
        return self._client

    @property
    def cluster(self) -> Any:
        """The embedded ``LocalCluster`` (None when not started or not embedded)."""
        return self._cluster

    def _ensure_client(self) -> Any:
        client = self._client
        if client is not None and client.status == "running":
            return client
        if self._user_client is not None:
            raise SchedulerUnreachableError(
                f"the Dask client passed to the 'dask' strategy is not running (status "
                f"{client.status!r}); pass a connected client, or an address"
            )
        if client is not None:  # a client of ours that lost its scheduler
            self._drop_connection(f"the previous client was {client.status}")
        check_not_inherited("a Dask client", "dask")
        note_fork_unsafe("a Dask client")
        if self.address is not None:
            self._client = self._connect(self.address)
        else:
            self._client = self._start_cluster()
        return self._client

    def _connect(self, address: Any) -> Any:
        from distributed import Client

        where = address if isinstance(address, str) else address.scheduler_address
        if str(where).startswith("tls://") and self.security is None:
            raise StrategyError(
                f"the scheduler address {where} uses TLS but no security= was given: pass "
                "security=distributed.Security(tls_ca_file=..., tls_client_cert=..., "
                "tls_client_key=..., require_encryption=True)"
            )
        t0 = time.monotonic()
        try:
            client = Client(
                address,
                timeout=self.connect_timeout,
                security=self.security,
                set_as_default=False,
            )
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(
                f"could not reach the Dask scheduler at {where} within "
                f"{self.connect_timeout:g} s ({type(exc).__name__}: {exc}). Check that the "
                "scheduler is running and the address and port are right; for a tls:// "
                "scheduler pass security=distributed.Security(...); raise "
                "connect_timeout for a scheduler that is still starting"
            ) from exc
        logger.debug("dask: connected to %s in %.2f s", where, time.monotonic() - t0)
        return client

    def _start_cluster(self) -> Any:
        from distributed import Client, LocalCluster

        if self.processes:
            check_spawn_main(self.name)
        reason = self._pending_reason or "first use"
        kwargs: dict[str, Any] = {
            "n_workers": self.n_workers,
            "threads_per_worker": self.threads_per_worker,
            "processes": self.processes,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "security": self.security,
        }
        # No dashboard; the scheduler's HTTP server (health, metrics) still starts, on a
        # free loopback port rather than 8787, which another cluster may hold.
        scheduler_kwargs: dict[str, Any] = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
        if self.allowed_failures is not None:
            scheduler_kwargs["allowed_failures"] = self.allowed_failures
        if self.processes:
            kwargs["env"] = dict(_worker.THREAD_LIMIT_ENV)
        extra = dict(self.cluster_kwargs)
        scheduler_kwargs.update(extra.pop("scheduler_kwargs", None) or {})
        kwargs["scheduler_kwargs"] = scheduler_kwargs
        kwargs.update(extra)
        cluster = LocalCluster(**kwargs)
        try:
            client = Client(
                cluster,
                timeout=self.connect_timeout,
                security=self.security,
                set_as_default=False,
            )
        except BaseException:
            cluster.close()
            raise
        self._cluster = cluster
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        self.generation += 1
        self.last_rebuild_reason = reason
        self._pending_reason = None
        log = logger.debug if self.generation == 1 else logger.info
        log(
            "dask: started a LocalCluster of %d worker(s) at %s (generation %d): %s",
            self.n_workers,
            cluster.scheduler_address,
            self.generation,
            reason,
        )
        return client

    def _drop_connection(self, reason: str, kill_workers: bool = False) -> None:
        """Close our client (and the embedded cluster); the next call starts anew.

        With ``kill_workers``, the embedded cluster's worker processes get SIGKILL first:
        a worker busy in a task would otherwise hold up the close for the nanny's
        graceful period (4 s) before being killed anyway.
        """
        client, cluster = self._client, self._cluster
        self._client = self._user_client
        self._cluster = None
        self._pending_reason = reason
        if kill_workers and cluster is not None:
            for nanny in list(getattr(cluster, "workers", {}).values()):
                pid = getattr(nanny, "pid", None)  # Nanny.pid; None for thread workers
                if isinstance(pid, int):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        if client is not None and client is not self._user_client:
            with contextlib.suppress(Exception):
                client.close(timeout=self.connect_timeout)
        if cluster is not None:
            try:
                cluster.close(timeout=self.connect_timeout)
            except Exception as exc:  # never mask the error that made us close it
                logger.warning("dask: closing the embedded cluster failed: %s", exc)

    def _worker_slots(self, client: Any) -> int:
        if self.embedded:
            return self.n_workers * self.threads_per_worker
        try:
            threads = sum(client.nthreads().values())
        except Exception:  # a transient error: plan as if the cluster had n_workers
            threads = 0
        # An adaptive cluster may have no worker yet: then n_workers is the best guess.
        return threads if threads > 0 else self.n_workers

    # -- map -------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on the cluster; return a standard Future."""
        self._check_open()
        with self._lock:
            client = self._ensure_client()
        return client.get_executor(pure=False).submit(fn, *args, **kwargs)

    def _start(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        *,
        timeout: float | None,
        star: bool,
        chunksize: int | None,
    ) -> Iterator[Any]:
        # Eager: the call runs to its end here (Dask tasks cannot be held back), and the
        # iterator hands out the results in order.
        if not items:
            return iter(())
        deadline = None if timeout is None else time.monotonic() + timeout
        dumps = _wire.choose_dumps(fn, by_value=True)
        with self._lock:
            self._check_open()
            client = self._ensure_client()
            tasks = self._plan(fn, items, dumps, self._worker_slots(client), star)
            return iter(self._run(client, tasks, items, deadline, timeout))

    def _plan(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        dumps: Callable[[Any], bytes],
        slots: int,
        star: bool,
    ) -> list[_Task]:
        """Group items into tasks with deterministic keys (see the module docstring)."""
        fn_name = _fn_name(fn, dumps)
        solo = [i for i, it in enumerate(items) if self._is_solo(it)]
        small = [i for i, it in enumerate(items) if not self._is_solo(it)]
        groups = [[i] for i in solo]
        if small:
            costs = [items[i].cost for i in small]
            for a, b in plan_chunks(
                costs,
                slots,
                min_chunk_seconds=self.min_chunk_seconds,
                chunks_per_worker=self.chunks_per_worker,
            ):
                groups.append(small[a:b])
        tasks: dict[str, _Task] = {}
        for group in sorted(groups, key=lambda g: g[0]):
            chunk = [items[i] for i in group]
            # Dask workers are not children of this process: no parent watchdog.
            blob = _wire.pack_chunk(
                fn, chunk, star=star, dumps=dumps, strategy=self.name, by_value=True, watch=False
            )
            if len(group) == 1:
                key = f"{fn_name}-{_item_token(chunk[0], blob, dumps)}"
            else:
                tokens = "\n".join(_item_token(it, None, dumps) for it in chunk)
                key = f"{fn_name}-chunk-{hashlib.sha256(tokens.encode()).hexdigest()}"
            task = tasks.get(key)
            if task is None:
                tasks[key] = _Task(key, list(group), blob, [it.key for it in chunk])
            else:  # the same unit twice in one call: one task, outcomes shared
                task.copies.append(list(group))
        return list(tasks.values())

    def _is_solo(self, item: WorkItem) -> bool:
        return self.min_chunk_seconds == 0 or item.cost >= self.min_chunk_seconds

    def _run(
        self,
        client: Any,
        tasks: list[_Task],
        items: list[WorkItem],
        deadline: float | None,
        timeout: float | None,
    ) -> list:
        from phasetrace.executors._worker import run_pickled_chunk

        results: list[Any] = [None] * len(items)
        decoded = [False] * len(items)
        failures: dict[int, BaseException] = {}
        prefix = 0  # items [0, prefix) are decoded
        done_q: queue.SimpleQueue[int] = queue.SimpleQueue()
        futures = client.map(
            run_pickled_chunk, [t.blob for t in tasks], key=[t.key for t in tasks], pure=True
        )
        for t in tasks:
            t.blob = b""  # the scheduler has it; free the memory here
        pending = set(range(len(futures)))
        try:
            for position, fut in enumerate(futures):
                fut.add_done_callback(lambda _f, position=position: done_q.put(position))
            while pending:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    batch = {done_q.get(timeout=wait)}
                except queue.Empty:
                    raise self._timed_out(tasks, items, pending, decoded, timeout) from None
                while True:
                    try:
                        batch.add(done_q.get_nowait())
                    except queue.Empty:
                        break
                batch &= pending
                finished = sorted(p for p in batch if futures[p].status == "finished")
                broken = sorted(p for p in batch if futures[p].status != "finished")
                if broken:
                    # The tasks on a dying worker all fail in one scheduler event; let
                    # their notices arrive so that the error names every task Dask gave up.
                    grace = time.monotonic() + KILLED_GRACE_SECONDS
                    while True:
                        try:
                            p = done_q.get(timeout=max(0.0, grace - time.monotonic()))
                        except queue.Empty:
                            break
                        if p in pending and futures[p].status not in ("finished", "pending"):
                            broken.append(p)
                    raise self._task_failed(client, futures, tasks, sorted(set(broken)))
                try:
                    datas = client.gather([futures[p] for p in finished]) if finished else []
                except Exception as exc:  # a result lost with its worker, then given up
                    raise self._gather_failed(client, exc, tasks) from exc
                for p, data in zip(finished, datas, strict=True):
                    task = tasks[p]
                    outcomes = _wire.decode_outcomes(
                        data, [items[i] for i in task.indices], "strategy 'dask', on a worker"
                    )
                    for group in (task.indices, *task.copies):
                        for i, (ok, value) in zip(group, outcomes, strict=True):
                            decoded[i] = True
                            if ok:
                                results[i] = value
                            else:
                                failures[i] = value
                    pending.discard(p)
                while prefix < len(items) and decoded[prefix] and prefix not in failures:
                    prefix += 1
                if prefix in failures:  # the first failure in input order is known
                    raise failures[prefix]
        except BaseException as exc:
            left = [futures[p] for p in pending]
            if left:
                with contextlib.suppress(Exception):
                    client.cancel(left)  # releases our claim; other clients keep theirs
            if isinstance(exc, KeyboardInterrupt) and self.embedded:
                self._drop_connection(
                    "the previous call was interrupted (KeyboardInterrupt)", kill_workers=True
                )
            raise
        finally:
            del futures  # release the keys on the scheduler
        return results

    def _task_failed(
        self, client: Any, futures: list[Any], tasks: list[_Task], broken: list[int]
    ) -> BaseException:
        """The error for tasks Dask reports as erred or cancelled (never unit outcomes)."""
        first = tasks[broken[0]]
        units = _describe_units(first.item_keys)
        if client.status != "running":
            self._drop_connection("the connection to the scheduler was lost")
            return SchedulerUnreachableError(
                f"lost the connection to the Dask scheduler while {units} "
                f"{'was' if len(first.item_keys) == 1 else 'were'} pending (client status "
                f"{client.status!r}); the next call reconnects"
            )
        errors = []
        for p in broken:
            if futures[p].status == "cancelled":
                errors.append((p, None))
                continue
            try:
                errors.append((p, futures[p].exception(timeout=self.connect_timeout)))
            except Exception as fetch_exc:  # could not even fetch the error
                errors.append((p, fetch_exc))
        from distributed import KilledWorker

        killed = [(p, e) for p, e in errors if isinstance(e, KilledWorker)]
        if killed:
            return _killed_worker_error([tasks[p] for p, _ in killed], killed[0][1])
        p, exc = errors[0]
        task = tasks[p]
        if exc is None:
            return WorkerCrashedError(
                f"Dask cancelled the task of {_describe_units(task.item_keys)} (key "
                f"{task.key}): another client cancelled it with force=True, or the cluster "
                "was restarted",
                key=task.item_keys[0] if len(task.item_keys) == 1 else None,
            )
        # run_pickled_chunk turns unit exceptions into outcomes, so this is a failure of
        # the task machinery itself (a worker that cannot deserialize it, out of memory...)
        tb = ""
        with contextlib.suppress(Exception):
            import traceback

            tb = "".join(traceback.format_exception(type(exc), exc, futures[p].traceback()))
        err = UnitFailedError(
            task.item_keys[0], _worker.exc_type_name(exc), _worker.safe_str(exc), tb
        )
        err.__cause__ = RemoteTraceback(tb)
        return err

    def _gather_failed(self, client: Any, exc: Exception, tasks: list[_Task]) -> BaseException:
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            lost = [t for t in tasks if t.key == getattr(exc, "task", None)] or tasks[:1]
            return _killed_worker_error(lost, exc)
        if client.status != "running":
            self._drop_connection("the connection to the scheduler was lost")
            return SchedulerUnreachableError(
                f"lost the connection to the Dask scheduler while fetching results "
                f"({type(exc).__name__}: {exc}); the next call reconnects"
            )
        return exc

    def _timed_out(
        self,
        tasks: list[_Task],
        items: list[WorkItem],
        pending: set[int],
        decoded: list[bool],
        timeout: float | None,
    ) -> ExecutorTimeoutError:
        unfinished = sum(1 for d in decoded if not d)
        first = [tasks[p].item_keys[0] for p in sorted(pending)[:3]]
        if self.embedded:
            self._drop_connection(
                f"the previous call ran past its timeout of {timeout} s", kill_workers=True
            )
            after = (
                "The embedded cluster was closed (ending its workers); the next call starts one."
            )
        else:
            after = (
                "Its tasks were cancelled; those already running on the cluster run to "
                "their end (Dask cannot interrupt a running task)."
            )
        return ExecutorTimeoutError(
            f"'dask' run did not finish within {timeout} s: {unfinished} of {len(items)} "
            f"units unfinished (first pending: {', '.join(first)}). {after}"
        )

    # -- closing ---------------------------------------------------------------------------

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            if self._atexit_registered:
                atexit.unregister(self.close)
                self._atexit_registered = False
            if self._client is not None or self._cluster is not None:
                self._drop_connection("shut down")

    def __repr__(self) -> str:
        if self._user_client is not None:
            where = "client=<yours>"
        elif self.address is not None:
            where = f"address={self.address!r}"
        else:
            where = f"embedded n_workers={self.n_workers}"
        state = "closed" if self._closed else "open"
        return f"<DaskExecutor {where} {state}>"


def _fn_name(fn: Callable[[Any], Any], dumps: Callable[[Any], bytes]) -> str:
    """A key prefix naming ``fn``: its import path, or a hash when it is sent by value."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    if dumps is _wire.pickle_dumps and "<" not in name:
        return name
    digest = hashlib.sha256(dumps(fn)).hexdigest()[:16]
    return f"{getattr(fn, '__name__', 'fn')}.{digest}".replace("<", "").replace(">", "")


def _item_token(item: WorkItem, blob: bytes | None, dumps: Callable[[Any], bytes]) -> str:
    """The item's content key, or a hash of its bytes when its key is not a content key."""
    if _CONTENT_KEY.fullmatch(item.key):
        return item.key
    data = blob if blob is not None else dumps((item.key, item.payload))
    return "h" + hashlib.sha256(data).hexdigest()


def _killed_worker_error(tasks: list[_Task], exc: BaseException) -> WorkerCrashedError:
    """``KilledWorker`` for one or more tasks → one error naming their units."""
    tries = getattr(exc, "allowed_failures", None)
    last = getattr(getattr(exc, "last_worker", None), "address", "unknown")
    tried = f"{tries + 1} worker(s)" if isinstance(tries, int) else "several workers"
    keys = [k for t in tasks for k in t.item_keys]
    if len(keys) == 1:
        what = f"unit {keys[0]}"
        bystanders = ""
    else:
        what = f"one of the units {', '.join(keys)}"
        bystanders = (
            " Dask counts every task assigned to a worker that dies, running or waiting, "
            "so all of them were given up; which one kills its worker cannot be told "
            "apart (run them one at a time, or raise allowed-failures, to find out)."
        )
    return WorkerCrashedError(
        f"Dask worker processes died while running {what}: each task was tried on {tried} "
        f"(last {last}), and Dask gave up (KilledWorker; see "
        f"distributed.scheduler.allowed-failures).{bystanders} Likely causes: a segmentation "
        "fault in compiled code, the out-of-memory killer or the nanny's memory limit, or "
        "os._exit() in the unit; the worker logs say which. A unit that needs more memory "
        "may run on fewer, larger workers.",
        key=keys[0] if len(keys) == 1 else None,
    )


def _describe_units(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return f"unit {keys[0]}"
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"units {shown}"
