"""What the process-pool strategies (``loky``, ``spawn``) share: chunking, dispatch, diagnosis.

Data flow of one ``map`` call::

    items ──plan_chunks──▶ [(start, stop)…] ──pickle (fn, [(key, payload)…])──▶ bytes per chunk
          ──pool.submit(_worker.run_pickled_chunk, blob, progress slot)──▶ futures
          ──collect in input order──▶ outcomes ──▶ results | UnitFailedError
                                         │
               pool broke / timeout / Ctrl-C ──▶ read progress slots ──▶ name the unit(s)

A subclass supplies the pool: :meth:`PooledExecutor._ensure_pool` (return a healthy
``concurrent.futures``-style executor, rebuilding it when needed),
:meth:`PooledExecutor._pool_processes` and :meth:`PooledExecutor._kill_pool`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from phasetrace.errors import (
    ExecutorTimeoutError,
    SerializationError,
    StrategyError,
    UnitFailedError,
    WorkerCrashedError,
)
from phasetrace.executors import _worker
from phasetrace.executors.base import Executor, RemoteTraceback, WorkItem

logger = logging.getLogger("phasetrace.executors")

#: Chunks aim at this much estimated work each (seconds): a warm round trip costs
#: ~0.2-0.4 ms here, so 5 ms keeps dispatch overhead under ~10 % for the smallest chunks.
MIN_CHUNK_SECONDS = 0.005
#: Chunks aim at no more than this much work (seconds): 0.1 s already amortises a round
#: trip to under 1 %, and bigger chunks only balance worse (20 units of 100 ms ran 9 %
#: slower than raw loky when grouped 2-3 per chunk).
MAX_CHUNK_SECONDS = 0.1
#: Chunks per worker when costs allow: more chunks balance uneven units better, fewer
#: chunks pay fewer round trips. 4 is what ``multiprocessing.Pool.map`` uses.
CHUNKS_PER_WORKER = 4
#: How often a worker checks that its parent is still alive (seconds).
WATCH_INTERVAL = 1.0
#: Idle seconds after which a pool's workers exit. Loky's advice is ~100 x the spawn and
#: import time (0.3-0.6 s measured here), so a minute.
IDLE_TIMEOUT = 60.0


def plan_chunks(
    costs: Sequence[float],
    n_workers: int,
    *,
    min_chunk_seconds: float = MIN_CHUNK_SECONDS,
    chunks_per_worker: int = CHUNKS_PER_WORKER,
) -> list[tuple[int, int]]:
    """Split ``len(costs)`` items into contiguous ``(start, stop)`` chunks.

    When every cost is known (> 0), chunks hold about
    ``max(min(total / (chunks_per_worker * n_workers), MAX_CHUNK_SECONDS), min_chunk_seconds)``
    of estimated work,
    but never more than ``total / n_workers`` so that every worker gets some; an item
    costlier than that is a chunk of its own. When any cost is unknown (0), the items are
    cut into ``chunks_per_worker * n_workers`` chunks of equal length, like
    ``multiprocessing.Pool.map`` does. Chunks are contiguous, so results come back in
    input order by concatenation.

    Examples
    --------
    >>> plan_chunks([0.0] * 10, 2, chunks_per_worker=2)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    >>> plan_chunks([1.0, 1.0, 1.0, 1.0], 2)
    [(0, 1), (1, 2), (2, 3), (3, 4)]
    >>> plan_chunks([1e-4] * 100, 2)
    [(0, 50), (50, 100)]
    """
    n = len(costs)
    if n == 0:
        return []
    if any(c <= 0 for c in costs):
        size = max(1, math.ceil(n / (chunks_per_worker * n_workers)))
        return [(a, min(a + size, n)) for a in range(0, n, size)]
    total = math.fsum(costs)
    target = max(min(total / (chunks_per_worker * n_workers), MAX_CHUNK_SECONDS), min_chunk_seconds)
    target = min(target, total / n_workers) * (1 - 1e-9)  # tolerance for rounding in sums
    chunks: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, c in enumerate(costs):
        if acc > 0 and (acc + c) - target > target - acc:
            # close before a unit that would overshoot the target by more than the chunk
            # falls short of it: a big unit after small ones does not swallow them
            chunks.append((start, i))
            start, acc = i, 0.0
        acc += c
        if acc >= target:
            chunks.append((start, i + 1))
            start, acc = i + 1, 0.0
    if start < n:
        chunks.append((start, n))
    return chunks


_PROGRESS_PREFIX = "phasetrace-progress-"
_stale_checked = False


def _remove_stale_progress_files(directory: str) -> None:
    """Remove progress files left by parents that died without cleaning up (SIGKILL).

    File names carry the creating process's pid; files of live processes are kept. Runs
    once per process.
    """
    global _stale_checked
    if _stale_checked:
        return
    _stale_checked = True
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_PROGRESS_PREFIX)]
    except OSError:
        return
    for name in names:
        pid_text = name[len(_PROGRESS_PREFIX) :].partition("-")[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except OSError:
            pass  # alive but not ours to signal (EPERM): keep its file


class _ProgressFile:
    """A small file of fixed-size records, one slot per chunk, written by workers.

    Kept in ``/dev/shm`` where there is one (a RAM file system: no disk writes), named
    after the parent's pid; removed on ``close()``, or, when the parent was killed, by
    the next phasetrace process that creates one. Slots are
    numbered on from call to call while chunks of an earlier call may still be running,
    so a straggler never overwrites the record of a newer chunk.
    """

    def __init__(self) -> None:
        self.path: str | None = None
        self._fd: int | None = None
        self._next_slot = 0

    def start_call(self, n_slots: int, stragglers: bool) -> int:
        """Reserve ``n_slots`` slots for a call and return the first."""
        if self._fd is None:
            tmpdir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
            _remove_stale_progress_files(tmpdir)
            self._fd, self.path = tempfile.mkstemp(
                prefix=f"{_PROGRESS_PREFIX}{os.getpid()}-", dir=tmpdir
            )
        if not stragglers:
            os.ftruncate(self._fd, 0)  # zeroes every slot
            self._next_slot = 0
        first = self._next_slot
        self._next_slot += n_slots
        return first

    def read(self, slot: int) -> tuple[int, int, int] | None:
        if self._fd is None:
            return None
        size = _worker.PROGRESS_RECORD.size
        data = os.pread(self._fd, size, slot * size)
        return _worker.PROGRESS_RECORD.unpack(data) if len(data) == size else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def exit_description(code: int | None) -> str:
    """``-11`` → ``'SIGSEGV (exit code -11)'``; ``3`` → ``'exit code 3'``."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"{signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            pass
    return f"exit code {code}"


class PooledExecutor(Executor):
    """Base of the strategies that run units on a pool of local worker processes.

    Parameters
    ----------
    n_workers : int or None
        See :func:`~phasetrace.executors.base.resolve_n_workers`; default all CPUs.
    idle_timeout : float
        Seconds of idleness after which workers exit (a later call starts them again).
    min_chunk_seconds : float
        Estimated work per chunk that small units are grouped up to.
    chunks_per_worker : int
        Target number of chunks per worker (see :func:`plan_chunks`).

    Attributes
    ----------
    generation : int
        Number of pools this executor has started; a rebuild after a crash, a timeout or
        Ctrl-C increments it.
    last_rebuild_reason : str or None
        Why the current pool was (re)built.
    """

    in_process = False
    reuses_pool = True
    #: Signal the pool sends to surviving workers once one has died.
    _pool_kill_signal: int = signal.SIGKILL

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ):
        super().__init__(n_workers)
        if not idle_timeout > 0:
            raise StrategyError(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        if not min_chunk_seconds >= 0:
            raise StrategyError(f"min_chunk_seconds must be >= 0, got {min_chunk_seconds!r}")
        if isinstance(chunks_per_worker, bool) or not (
            isinstance(chunks_per_worker, int) and chunks_per_worker >= 1
        ):
            raise StrategyError(f"chunks_per_worker must be an int >= 1, got {chunks_per_worker!r}")
        self.idle_timeout = float(idle_timeout)
        self.min_chunk_seconds = float(min_chunk_seconds)
        self.chunks_per_worker = chunks_per_worker
        self.generation = 0
        self.last_rebuild_reason: str | None = None
        self._pending_reason: str | None = None  # why the current pool must not be reused
        self._lock = threading.RLock()  # one map call at a time per executor
        self._progress = _ProgressFile()
        self._outstanding: list[Future] = []  # futures of earlier calls, maybe still running
        self._call_id = 0

    # -- hooks for subclasses -----------------------------------------------------------

    def _ensure_pool(self) -> Any:
        """Return a healthy pool, (re)building it when needed (bump ``generation``)."""
        raise NotImplementedError

    def _pool_processes(self, pool: Any) -> dict[int, Any]:
        """``{pid: multiprocessing.Process}`` of the pool's current workers."""
        raise NotImplementedError

    def _kill_pool(self, pool: Any, reason: str) -> None:
        """Terminate the pool's workers now; the next call builds a new pool."""
        raise NotImplementedError

    def _choose_dumps(self, fn: Callable[[Any], Any]) -> Callable[[Any], bytes]:
        """The serializer for this call's chunks (plain pickle; loky may pick cloudpickle)."""
        return _pickle_dumps

    def _note_rebuild(self, reason: str) -> None:
        self.generation += 1
        self.last_rebuild_reason = reason
        self._pending_reason = None
        if self.generation == 1:
            logger.debug("%s: starting a pool of %d workers", self.name, self.n_workers)
        else:
            logger.info(
                "%s: starting a new pool of %d workers (generation %d): %s",
                self.name,
                self.n_workers,
                self.generation,
                reason,
            )

    # -- map ------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[WorkItem],
        *,
        timeout: float | None = None,
    ) -> list:
        items = self._start_map(fn, items, timeout)
        if not items:
            return []
        if _worker.IN_WORKER:
            raise StrategyError(
                f"strategy {self.name!r} does not start a pool inside a worker (nested "
                "pools oversubscribe the CPUs); use strategy 'sequential' in worker code"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_fn(fn)
        chunks = plan_chunks(
            [it.cost for it in items],
            self.n_workers,
            min_chunk_seconds=self.min_chunk_seconds,
            chunks_per_worker=self.chunks_per_worker,
        )
        dumps = self._choose_dumps(fn)
        blobs = [self._pack(fn, items[a:b], dumps) for a, b in chunks]
        with self._lock:
            self._check_open()
            return self._run(blobs, chunks, items, deadline, timeout)

    map.__doc__ = Executor.map.__doc__

    def _check_fn(self, fn: Callable[[Any], Any]) -> None:
        if self.needs_picklable_fn and getattr(fn, "__module__", None) == "__main__":
            raise SerializationError(
                f"fn {getattr(fn, '__qualname__', fn)!r} is defined in __main__, which "
                f"{self.name!r} workers do not import (phasetrace keeps workers from "
                "re-running the main script, which could import JAX in every worker); move "
                "it into an importable module, or use strategy 'loky', which sends such "
                "functions by value",
                what="fn",
            )

    def _pack(
        self, fn: Callable[[Any], Any], chunk: Sequence[WorkItem], dumps: Callable[[Any], bytes]
    ) -> bytes:
        try:
            return dumps((fn, [(it.key, it.payload) for it in chunk]))
        except Exception as exc:
            raise self._diagnose_pickling(fn, chunk, exc, dumps) from exc

    def _diagnose_pickling(
        self,
        fn: Callable[[Any], Any],
        chunk: Sequence[WorkItem],
        exc: Exception,
        dumps: Callable[[Any], bytes],
    ) -> SerializationError:
        try:
            dumps(fn)
        except Exception as fn_exc:
            where = "an importable module" if self.needs_picklable_fn else "a module"
            extra = (
                "; or use strategy 'loky', which also ships lambdas and closures"
                if self.needs_picklable_fn
                else ""
            )
            return SerializationError(
                f"fn {getattr(fn, '__qualname__', fn)!r} cannot be pickled for "
                f"{self.name!r} workers ({type(fn_exc).__name__}: {fn_exc}); define it "
                f"with def at the top level of {where} and pass it by name{extra}",
                what="fn",
            )
        for it in chunk:
            try:
                dumps(it.payload)
            except Exception as item_exc:
                return SerializationError(
                    f"the payload of item {it.index} (key {it.key}) cannot be pickled "
                    f"({type(item_exc).__name__}: {item_exc}); payloads must be plain data "
                    "such as bytes, numbers, strings, tuples or numpy arrays",
                    what="item",
                    key=it.key,
                )
        return SerializationError(
            f"a chunk of work cannot be pickled ({type(exc).__name__}: {exc})", what="chunk"
        )

    def _run(
        self,
        blobs: list[bytes],
        chunks: list[tuple[int, int]],
        items: list[WorkItem],
        deadline: float | None,
        timeout: float | None,
    ) -> list:
        from phasetrace.executors._worker import run_pickled_chunk

        pool = self._ensure_pool()
        self._outstanding = [f for f in self._outstanding if not f.done()]
        first_slot = self._progress.start_call(len(blobs), stragglers=bool(self._outstanding))
        self._call_id += 1
        call_id = self._call_id
        futures: list[Future] = []
        processes: dict[int, Any] = {}
        results: list[Any] = [None] * len(items)
        try:
            try:
                for i, blob in enumerate(blobs):
                    progress = (self._progress.path, call_id, first_slot + i)
                    futures.append(pool.submit(run_pickled_chunk, blob, progress))
                processes = dict(self._pool_processes(pool))
                for (a, b), fut in zip(chunks, futures, strict=False):
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    data = fut.result(timeout=remaining)
                    self._unpack(data, items, a, b, results)
            except FutureTimeoutError:
                raise self._timed_out(pool, chunks, items, call_id, first_slot, timeout) from None
            except (BrokenProcessPool, CancelledError, RuntimeError) as exc:
                if not isinstance(exc, BrokenProcessPool | CancelledError) and not (
                    _is_shutdown_error(exc)
                ):
                    raise
                processes.update(self._pool_processes(pool))
                raise self._crashed(pool, chunks, items, call_id, first_slot, processes) from exc
        except BaseException as exc:
            for fut in futures:
                fut.cancel()  # queued chunks never start; running ones finish or are killed
            self._outstanding = [f for f in futures if not f.done()]
            if isinstance(exc, KeyboardInterrupt):
                self._kill_pool(pool, "the previous call was interrupted (KeyboardInterrupt)")
            raise
        return results

    def _unpack(self, data: bytes, items: list[WorkItem], a: int, b: int, out: list) -> None:
        for offset, (ok, value) in enumerate(decode_outcomes(data, items[a:b])):
            if not ok:
                raise value  # its __cause__ is the worker traceback
            out[a + offset] = value

    def _in_flight(
        self, chunks: list[tuple[int, int]], items: list[WorkItem], call_id: int, first_slot: int
    ) -> list[tuple[WorkItem, int]]:
        """(item, pid) of each unit that a worker had started and not finished."""
        running = []
        for i, (a, b) in enumerate(chunks):
            record = self._progress.read(first_slot + i)
            if record is None:
                continue
            rec_call, pid, position = record
            if rec_call == call_id and 1 <= position <= b - a:
                running.append((items[a + position - 1], pid))
        return running

    def _crashed(
        self,
        pool: Any,
        chunks: list[tuple[int, int]],
        items: list[WorkItem],
        call_id: int,
        first_slot: int,
        processes: dict[int, Any],
    ) -> WorkerCrashedError:
        # Evidence on which worker crashed, strongest first: its exit status is not the
        # signal the pool itself uses on survivors (SIGTERM for the standard library's
        # pool, SIGKILL for loky's), and it was already dead at our first look (the pool
        # kills the survivors only after failing the futures that woke us).
        in_flight = self._in_flight(chunks, items, call_id, first_slot)
        dead_at_once = _dead_now(processes)
        codes = _wait_exitcodes(processes, timeout=2.0)
        running = [(item, pid, codes.get(pid)) for item, pid in in_flight]
        self._pending_reason = "a worker died in the previous call"

        def rank(pid: int, code: int | None) -> int:
            own_kill = code is None or code == -self._pool_kill_signal
            return (2 if own_kill else 0) + (0 if pid in dead_at_once else 1)

        hint = (
            "Likely causes: a segmentation fault in compiled code, the out-of-memory "
            "killer (SIGKILL), or os._exit() in the unit. The pool was discarded; the next "
            "call starts a fresh one. Workers print a faulthandler traceback on stderr "
            "for a segfault; a unit that needs more memory may run with fewer workers."
        )
        if not running:
            seen = sorted({c for c in codes.values() if c is not None})
            desc = ", ".join(exit_description(c) for c in seen) or "exit status unknown"
            pending = [items[a].key for a, _ in chunks]
            return WorkerCrashedError(
                f"a {self.name!r} worker died ({desc}) before starting any unit of this call "
                f"({len(pending)} chunk(s) pending, first unit {pending[0]}). {hint}",
                key=None,
                exitcode=seen[0] if seen else None,
            )
        best = min(rank(pid, code) for _, pid, code in running)
        top = [r for r in running if rank(r[1], r[2]) == best]
        if len(top) == 1:
            item, pid, code = top[0]
            others = [r[0].key for r in running if r is not top[0]]
            also = (
                f" Also running, and cancelled with the pool: {', '.join(others)}."
                if others
                else ""
            )
            return WorkerCrashedError(
                f"worker process {pid} died ({exit_description(code)}) while running unit "
                f"{item.key}.{also} {hint}",
                key=item.key,
                exitcode=code,
            )
        listing = ", ".join(
            f"{item.key} (pid {pid}, {exit_description(code)})" for item, pid, code in running
        )
        return WorkerCrashedError(
            f"a worker process died while running one of these units: {listing}. "
            f"The pool ended all of them, so which one crashed cannot be told apart. {hint}",
            key=None,
            exitcode=top[0][2],
        )

    def _timed_out(
        self,
        pool: Any,
        chunks: list[tuple[int, int]],
        items: list[WorkItem],
        call_id: int,
        first_slot: int,
        timeout: float | None,
    ) -> ExecutorTimeoutError:
        running = self._in_flight(chunks, items, call_id, first_slot)
        unfinished = 0
        for i, (a, b) in enumerate(chunks):
            record = self._progress.read(first_slot + i)
            if record is None or record[0] != call_id:
                unfinished += b - a
            elif record[2] != _worker.DONE:
                unfinished += b - a - max(0, record[2] - 1)
        self._kill_pool(pool, f"the previous call ran past its timeout of {timeout} s")
        keys = ", ".join(item.key for item, _ in running) or "none started"
        return ExecutorTimeoutError(
            f"{self.name!r} map did not finish within {timeout} s: {unfinished} of "
            f"{len(items)} units unfinished; running when stopped: {keys}. Its workers were "
            "terminated; the next call starts a fresh pool."
        )

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._close_pool()
            finally:
                self._progress.close()

    close.__doc__ = Executor.close.__doc__

    def _close_pool(self) -> None:
        raise NotImplementedError


def kill_processes(processes: Iterable[Any]) -> None:
    """SIGKILL each worker process that is still running (no cleanup, no waiting)."""
    for p in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # already gone
            p.kill()


# --------------------------------------------------------------------------------------
# Shipping chunks: serializer choice and outcome decoding (every process strategy)
# --------------------------------------------------------------------------------------


def decode_outcomes(data: bytes, items: Sequence[WorkItem]) -> list[tuple[bool, Any]]:
    """Decode the bytes :func:`~phasetrace.executors._worker.run_pickled_chunk` returned.

    Parameters
    ----------
    data : bytes
        The pickled chunk outcome.
    items : sequence of WorkItem
        The chunk's items, in the order they were packed.

    Returns
    -------
    list of (bool, object)
        Per item ``(True, result)`` or ``(False, error)``, where ``error`` is the
        :class:`~phasetrace.errors.UnitFailedError` or
        :class:`~phasetrace.errors.SerializationError` to raise for it (its
        ``__cause__`` is the worker traceback).

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> from phasetrace.executors._worker import run_pickled_chunk
    >>> blob = pickle.dumps((abs, [("a", -1), ("b", "x")]))
    >>> [ok for ok, _ in decode_outcomes(run_pickled_chunk(blob), work_items([-1, "x"]))]
    [True, False]
    """
    status, *rest = pickle.loads(data)
    if status == _worker.CHUNK_LOAD_FAILED:
        exc_type, message, tb = rest
        keys = ", ".join(it.key for it in items[:3]) + (", …" if len(items) > 3 else "")
        err = SerializationError(
            f"a worker could not unpickle the work of units {keys} ({exc_type}: {message}); "
            "the function and any classes in payloads must be importable on the workers "
            "(installed there, defined in a module rather than in __main__ or a notebook)",
            what="chunk",
            key=items[0].key,
        )
        err.__cause__ = RemoteTraceback(tb)
        return [(False, err)] * len(items)
    (outcomes,) = rest
    out: list[tuple[bool, Any]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome[0] == _worker.OK:
            out.append((True, outcome[1]))
            continue
        code, exc_type, message, tb = outcome
        if code == _worker.UNPICKLABLE_RESULT:
            err = SerializationError(
                f"the result of unit {item.key} cannot be pickled to send it back "
                f"({exc_type}: {message}); work functions must return plain data",
                what="result",
                key=item.key,
            )
        else:
            err = UnitFailedError(item.key, exc_type, message, tb)
        err.__cause__ = RemoteTraceback(tb)
        out.append((False, err))
    return out


def choose_dumps(fn: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    """Plain pickle when ``fn`` pickles by reference; cloudpickle for ``__main__``, lambdas.

    Examples
    --------
    >>> choose_dumps(abs) is _pickle_dumps
    True
    """
    if getattr(fn, "__module__", None) != "__main__":
        try:
            pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        else:
            return _pickle_dumps
    import cloudpickle

    return cloudpickle.dumps


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _is_shutdown_error(exc: BaseException) -> bool:
    # loky's ShutdownExecutorError (a RuntimeError) fails futures of a killed pool;
    # checked by name so that importing this module does not import loky.
    return type(exc).__name__ == "ShutdownExecutorError"


def _dead_now(processes: dict[int, Any]) -> set[int]:
    """Pids whose process has ended, judged from sentinels (nothing is reaped)."""
    from multiprocessing.connection import wait

    by_sentinel = {}
    for pid, p in processes.items():
        with contextlib.suppress(ValueError, AttributeError, OSError):  # closed: treat as alive
            by_sentinel[p.sentinel] = pid
    try:
        ready = wait(list(by_sentinel), timeout=0)
    except (OSError, ValueError):
        return set()
    return {by_sentinel[s] for s in ready}


def _wait_exitcodes(processes: dict[int, Any], timeout: float) -> dict[int, int | None]:
    """Exit codes of the processes, waiting up to ``timeout`` s for them to be known.

    After a crash the pool ends the other workers, and its manager thread may be reaping
    a process at the same moment we poll it (then our poll sees nothing), so poll again
    until every code is known or the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        codes = {pid: _exitcode(p) for pid, p in processes.items()}
        if all(c is not None for c in codes.values()) or time.monotonic() > deadline:
            return codes
        time.sleep(0.01)


def _exitcode(process: Any) -> int | None:
    if process is None:
        return None
    try:
        return process.exitcode
    except Exception:  # a process object of a torn-down pool may refuse to poll
        return None
