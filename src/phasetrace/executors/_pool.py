"""What the process-pool strategies (``loky``, ``spawn``) share: chunking, dispatch, diagnosis.

Data flow of one call::

    items ──plan_chunks──▶ [(start, stop)…] ──_wire.pack_chunk──▶ bytes per chunk
          ──pool.submit(_worker.run_pickled_chunk, blob, progress slot)──▶ futures
          ──collect in input order──▶ outcomes ──▶ results | the unit's exception
                                         │
               pool broke / timeout / Ctrl-C ──▶ read progress slots ──▶ name the unit(s)

A subclass supplies the pool through public constructors only:
:meth:`PooledExecutor._new_pool` (a ``concurrent.futures``-style executor whose workers run
:func:`~phasetrace.executors._worker.init_worker`) and :meth:`PooledExecutor._stop_pool`.
Everything this module knows about the workers comes from its own records and public
APIs: the workers append their pids to a registry file, write progress records, and are
found among :func:`multiprocessing.active_children` (their ``exitcode``, ``kill``,
``join``); a pool is broken when one of its futures says so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from phasetrace.errors import (
    ExecutorClosedError,
    ExecutorTimeoutError,
    StrategyError,
    WorkerCrashedError,
)
from phasetrace.executors import _wire, _worker
from phasetrace.executors.base import Executor, WorkItem

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
_REGISTRY_PREFIX = "phasetrace-workers-"
_stale_checked = False


def _records_dir() -> str:
    """``/dev/shm`` where there is one (a RAM file system: no disk writes), else tmp."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _remove_stale_record_files(directory: str) -> None:
    """Remove record files left by parents that died without cleaning up (SIGKILL).

    File names carry the creating process's pid; files of live processes are kept. Runs
    once per process.
    """
    global _stale_checked
    if _stale_checked:
        return
    _stale_checked = True
    try:
        names = [
            n for n in os.listdir(directory) if n.startswith((_PROGRESS_PREFIX, _REGISTRY_PREFIX))
        ]
    except OSError:
        return
    for name in names:
        prefix = _PROGRESS_PREFIX if name.startswith(_PROGRESS_PREFIX) else _REGISTRY_PREFIX
        pid_text = name[len(prefix) :].partition("-")[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except OSError:
            pass  # alive but not ours to signal (EPERM): keep its file


class _RecordFile:
    """A small file the workers write and the parent reads: progress records (one slot
    per chunk, fixed-size records) or the pool's registry of worker pids (one line each).

    Named after the parent's pid; removed on ``close()``, or, when the parent was killed,
    by the next phasetrace process that creates one. Progress slots are numbered on from
    call to call while chunks of an earlier call may still be running, so a straggler never
    overwrites the record of a newer chunk.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path: str | None = None
        self._fd: int | None = None
        self._next_slot = 0

    def path_now(self) -> str:
        """The file's path, creating the file on first use."""
        if self._fd is None:
            directory = _records_dir()
            _remove_stale_record_files(directory)
            self._fd, self.path = tempfile.mkstemp(
                prefix=f"{self.prefix}{os.getpid()}-", dir=directory
            )
        return self.path

    def start_call(self, n_slots: int, keep: bool) -> int:
        """Reserve ``n_slots`` progress slots for a call and return the first."""
        self.path_now()
        if not keep:
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

    def in_flight(
        self, first_slot: int, call_id: int, chunks: Sequence[tuple[int, int]], items: Sequence[Any]
    ) -> list[tuple[list[Any], int, bool]]:
        """What the workers were doing for one call, from its progress records.

        Returns ``(units, worker pid, loading)`` per chunk a worker had started and not
        finished: one unit it was running (or pickling the result of), or, with
        ``loading`` True, every unit of a chunk it was still unpickling.
        """
        found = []
        for i, (a, b) in enumerate(chunks):
            record = self.read(first_slot + i)
            if record is None or record[0] != call_id or record[1] == 0:
                continue
            _, pid, position = record
            if position == _worker.LOADING:
                found.append((list(items[a:b]), pid, True))
            elif 1 <= position <= b - a:
                found.append(([items[a + position - 1]], pid, False))
        return found

    def pids(self) -> set[int]:
        """The worker pids a registry file lists."""
        if self._fd is None:
            return set()
        data = os.pread(self._fd, 1 << 16, 0)
        return {int(x) for x in data.split() if x.isdigit()}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def check_spawn_main(strategy: str) -> None:
    """Refuse a main module that spawn-started workers could not import.

    multiprocessing's spawn makes each worker import the parent's main script from its
    ``__file__``; a script read from standard input (``__file__ == "<stdin>"``) cannot be,
    and every worker would die before running anything. Interactive sessions and
    ``python -c`` have no ``__file__`` and are fine.
    """
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None or os.path.exists(path):
        return
    raise StrategyError(
        f"the {strategy!r} strategy starts workers with multiprocessing's spawn, which "
        f"imports the main script, and {path!r} is not a file (a script read from standard "
        "input?). Save the script to a file, or use strategy='loky', whose workers do not "
        "import it."
    )


def doing(units: Sequence[Any], loading: bool) -> str:
    """What a worker was doing when it died, for error messages."""
    more = f" and {len(units) - 5} more" if len(units) > 5 else ""
    keys = ", ".join(u.key for u in units[:5]) + more
    if loading:
        return f"while unpickling the chunk of unit(s) {keys} (the function or a payload)"
    return f"while running unit {keys} (or pickling its result)"


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
    #: Signal the pool sends to surviving workers once one has died (for telling the
    #: crashed worker from the ones the pool ended).
    _pool_kill_signal: int = signal.SIGKILL

    @classmethod
    def check_options(
        cls,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ) -> None:
        """Check option values (``configure`` calls this); raise :class:`StrategyError`."""
        check_pool_options(idle_timeout, min_chunk_seconds, chunks_per_worker)

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ):
        super().__init__(n_workers)
        check_pool_options(idle_timeout, min_chunk_seconds, chunks_per_worker)
        self.idle_timeout = float(idle_timeout)
        self.min_chunk_seconds = float(min_chunk_seconds)
        self.chunks_per_worker = chunks_per_worker
        self.generation = 0
        self.last_rebuild_reason: str | None = None
        self._pool: Any = None
        self._broken: str | None = None  # why the current pool must not be reused
        self._next_reason: str | None = None  # why there is no pool (when not first use)
        self._lock = threading.RLock()  # one call at a time per executor
        self._progress = _RecordFile(_PROGRESS_PREFIX)
        self._registry = _RecordFile(_REGISTRY_PREFIX)
        self._seen: dict[int, Any] = {}  # pid -> multiprocessing.Process of children seen
        self._outstanding: list[Future] = []  # futures of earlier calls, maybe still running
        self._call_id = 0

    # -- hooks for subclasses -----------------------------------------------------------
    def _new_pool(self, initargs: tuple) -> Any:
        """A new pool whose workers run ``_worker.init_worker(*initargs)``."""
        raise NotImplementedError

    def _stop_pool(self, pool: Any, kill: bool, wait: bool) -> None:
        """Shut ``pool`` down; with ``kill``, end its workers now, running units and all."""
        raise NotImplementedError

    # -- the pool -------------------------------------------------------------------------
    def _ensure_pool(self) -> Any:
        """A healthy pool: the current one, or a new one (``generation`` + 1, logged)."""
        if self._pool is not None and self._broken is None:
            return self._pool
        reason = self._broken or self._next_reason or "first use"
        self._next_reason = None
        if self._pool is not None:
            self._stop_pool(self._pool, kill=True, wait=False)
            self._reap()
        initargs = (
            os.getpid(),
            WATCH_INTERVAL,
            dict(_worker.THREAD_LIMIT_ENV),
            self._registry.path_now(),
        )
        self._pool = self._new_pool(initargs)
        self._broken = None
        self.generation += 1
        self.last_rebuild_reason = reason
        log = logger.debug if self.generation == 1 else logger.info
        log(
            "%s: starting a pool of %d workers (generation %d): %s",
            self.name,
            self.n_workers,
            self.generation,
            reason,
        )
        return self._pool

    def _note_children(self) -> None:
        """Keep a reference to every child process alive now. A pool starts its workers
        inside ``submit``, so noting children right after dispatching catches each worker
        before it can end; the object then keeps its exit code after the pool reaps it."""
        for p in multiprocessing.active_children():
            known = self._seen.get(p.pid)
            if known is None or (known is not p and _exitcode(known) is not None):
                self._seen[p.pid] = p  # new, or a new process that reuses an ended one's pid

    def _workers(self) -> dict[int, Any]:
        """This executor's workers seen so far (pid → Process): those in its registry."""
        self._note_children()
        ours = self._registry.pids()
        return {pid: p for pid, p in self._seen.items() if pid in ours}

    def _kill(self, reason: str) -> None:
        """End the pool's workers now (timeout, Ctrl-C); the next call starts a new pool."""
        with self._lock:
            self._kill_locked(reason)

    def _kill_locked(self, reason: str) -> None:
        pool = self._pool
        if pool is None or self._broken is not None:
            return
        for p in self._workers().values():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                p.kill()
        self._stop_pool(pool, kill=True, wait=False)
        self._broken = reason
        self._reap()
        logger.info("%s: ended the pool's workers: %s", self.name, reason)

    def _reap(self, timeout: float = 2.0) -> None:
        """Join the workers that have ended, so that no zombie outlives a call; forget
        processes that have ended."""
        deadline = time.monotonic() + timeout
        for p in list(self._workers().values()):
            with contextlib.suppress(Exception):
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        self._seen = {pid: p for pid, p in self._seen.items() if _exitcode(p) is None}

    # -- submit -----------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self._check_open()
        item = WorkItem(0, "submit", args)
        call = functools.partial(fn, **kwargs) if kwargs else fn
        blob = self._pack(call, [item], star=True)
        with self._lock:
            inner = self._ensure_pool().submit(_worker.run_pickled_chunk, blob, None)
        outer: Future = Future()

        def done(f: Future) -> None:
            if f.cancelled():
                outer.cancel()
                outer.set_running_or_notify_cancel()
                return
            try:
                ((ok, value),) = _wire.decode_outcomes(f.result(), [item], self._where())
            except BrokenProcessPool as exc:
                self._broken = "a worker died while running a submitted call"
                ok, value = (
                    False,
                    WorkerCrashedError(
                        f"a {self.name!r} worker died while running a submitted call ({exc})"
                    ),
                )
            except BaseException as exc:
                ok, value = False, exc
            if outer.set_running_or_notify_cancel():
                if ok:
                    outer.set_result(value)
                else:
                    outer.set_exception(value)

        inner.add_done_callback(done)
        return outer

    submit.__doc__ = Executor.submit.__doc__

    # -- map ----------------------------------------------------------------------------------
    def _start(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        *,
        timeout: float | None,
        star: bool,
        chunksize: int | None,
    ) -> Iterator[Any]:
        if not items:
            return iter(())
        if _worker.IN_WORKER:
            raise StrategyError(
                f"strategy {self.name!r} does not start a pool inside a worker (nested "
                "pools oversubscribe the CPUs); use strategy 'sequential' in worker code"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_fn(fn)
        if chunksize is not None:
            chunks = [(a, min(a + chunksize, len(items))) for a in range(0, len(items), chunksize)]
        else:
            chunks = plan_chunks(
                [it.cost for it in items],
                self.n_workers,
                min_chunk_seconds=self.min_chunk_seconds,
                chunks_per_worker=self.chunks_per_worker,
            )
        blobs = [self._pack(fn, items[a:b], star) for a, b in chunks]
        with self._lock:
            self._check_open()
            call = self._dispatch(blobs)
        return self._collect(call, chunks, items, deadline, timeout)

    def _pack(self, fn: Callable[..., Any], chunk: Sequence[WorkItem], star: bool) -> bytes:
        by_value = not self.needs_picklable_fn
        dumps = _wire.choose_dumps(fn, by_value)
        return _wire.pack_chunk(
            fn, chunk, star=star, dumps=dumps, strategy=self.name, by_value=by_value
        )

    def _check_fn(self, fn: Callable[..., Any]) -> None:
        """Refuse, before anything is sent, a function of ``__main__`` that the workers
        cannot find: they import the main script only when it is a file (as
        ``__mp_main__``, like the standard library's spawn pool), so one defined in an
        interactive session or ``python -c`` cannot travel by reference."""
        if not self.needs_picklable_fn or getattr(fn, "__module__", None) != "__main__":
            return
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if path is not None and os.path.exists(path):
            return
        from phasetrace.errors import SerializationError

        raise SerializationError(
            f"fn {getattr(fn, '__qualname__', fn)!r} is defined in __main__, which has no "
            f"script file for {self.name!r} workers to import (an interactive session or "
            "python -c); move it into an importable module or a script file, or use "
            "strategy 'loky', which sends such functions by value",
            what="fn",
        )

    def _dispatch(self, blobs: list[bytes]) -> _Call:
        """Send the chunks (under the executor's lock: one dispatch at a time)."""
        pool = self._ensure_pool()
        self._outstanding = [f for f in self._outstanding if not f.done()]
        first_slot = self._progress.start_call(len(blobs), keep=bool(self._outstanding))
        self._call_id += 1
        call = _Call(self._call_id, first_slot, pool)
        try:
            for i, blob in enumerate(blobs):
                progress = (self._progress.path, call.id, first_slot + i)
                call.futures.append(pool.submit(_worker.run_pickled_chunk, blob, progress))
        except (BrokenProcessPool, RuntimeError) as exc:
            self._note_children()
            for f in call.futures:
                f.cancel()
            raise self._refused(exc) from exc
        self._outstanding += call.futures
        self._note_children()
        return call

    def _refused(self, exc: BaseException) -> BaseException:
        """The error for a pool whose ``submit`` raised ``exc``: it broke; the next call
        starts a fresh one."""
        self._broken = f"the pool refused work ({type(exc).__name__}: {exc})"
        return WorkerCrashedError(
            f"the {self.name!r} pool broke before this call's work was sent ({exc}); "
            "the next call starts a fresh pool"
        )

    def _collect(self, call: _Call, chunks, items, deadline, timeout) -> Iterator[Any]:
        where = self._where()
        try:
            try:
                for (a, b), fut in zip(chunks, call.futures, strict=True):
                    data = self._wait(fut, deadline)
                    for ok, value in _wire.decode_outcomes(data, items[a:b], where):
                        if not ok:
                            raise value
                        yield value
            except concurrent.futures.TimeoutError:
                raise self._timed_out(call, chunks, items, timeout) from None
            except (concurrent.futures.BrokenExecutor, CancelledError, RuntimeError) as exc:
                if self._closed:  # shut down from another thread while this call ran
                    raise ExecutorClosedError(
                        f"the {self.name!r} executor was shut down while this call was running"
                    ) from exc
                if isinstance(exc, RuntimeError) and not isinstance(
                    exc, concurrent.futures.BrokenExecutor
                ):
                    raise
                raise self._crashed(call, chunks, items) from exc
        except BaseException as exc:
            for fut in call.futures:
                fut.cancel()  # queued chunks never start; running ones finish or are killed
            if isinstance(exc, KeyboardInterrupt):
                self._kill("the previous call was interrupted (KeyboardInterrupt)")
            raise
        finally:
            with self._lock:
                self._after_call()

    def _after_call(self) -> None:
        """Called at the end of every call (also an abandoned ``map``), under the lock."""

    def _wait(self, fut: Future, deadline: float | None) -> bytes:
        """The chunk's result; meanwhile the workers' process objects are noted, so their
        exit codes can be read if one dies."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise concurrent.futures.TimeoutError
            step = _NOTE_WORKERS_EVERY if left is None else min(left, _NOTE_WORKERS_EVERY)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                return fut.result(timeout=step)
            self._note_children()  # workers the pool (re)started meanwhile

    def _where(self) -> str:
        return f"strategy {self.name!r}, in a worker process"

    # -- diagnosis --------------------------------------------------------------------------------
    def _in_flight(self, call: _Call, chunks, items) -> list[tuple[list[WorkItem], int, bool]]:
        """``(units, pid, loading)`` per chunk a worker had started and not finished."""
        return self._progress.in_flight(call.first_slot, call.id, chunks, items)

    def _crashed(self, call: _Call, chunks, items) -> WorkerCrashedError:
        # Evidence on which worker crashed, strongest first: its exit status is not the
        # signal the pool itself uses on survivors, and it was already dead at our first look.
        self._broken = "a worker died in the previous call"
        procs = dict(self._workers())
        dead_at_once = {pid for pid, p in procs.items() if _exitcode(p) is not None}
        in_flight = self._in_flight(call, chunks, items)
        codes = _wait_exitcodes({pid: procs[pid] for _, pid, _ in in_flight if pid in procs}, 2.0)
        codes.update({pid: _exitcode(p) for pid, p in procs.items() if pid not in codes})
        running = [(units, pid, loading, codes.get(pid)) for units, pid, loading in in_flight]

        def rank(pid: int, code: int | None) -> int:
            own_kill = code is None or code == -self._pool_kill_signal
            return (2 if own_kill else 0) + (0 if pid in dead_at_once else 1)

        if not running:
            seen = sorted({c for c in codes.values() if c not in (None, 0)})
            desc = ", ".join(exit_description(c) for c in seen) or "exit status unknown"
            first = items[chunks[0][0]].key
            return WorkerCrashedError(
                f"a {self.name!r} worker died ({desc}) before starting any unit of this call "
                f"({len(chunks)} chunk(s) pending, first unit {first}). {_CRASH_HINT}",
                key=None,
                exitcode=seen[0] if seen else None,
            )
        best = min(rank(pid, code) for _, pid, _, code in running)
        top = [r for r in running if rank(r[1], r[3]) == best]
        if len(top) == 1:
            units, pid, loading, code = top[0]
            others = [u.key for r in running if r is not top[0] for u in r[0]]
            also = (
                f" Also running, and cancelled with the pool: {', '.join(others)}."
                if others
                else ""
            )
            return WorkerCrashedError(
                f"worker process {pid} died ({exit_description(code)}) "
                f"{doing(units, loading)}.{also} {_CRASH_HINT}",
                key=units[0].key if len(units) == 1 else None,
                exitcode=code,
            )
        listing = "; ".join(
            f"{doing(units, loading)} (pid {pid}, {exit_description(code)})"
            for units, pid, loading, code in running
        )
        return WorkerCrashedError(
            f"a worker process died, one of these: {listing}. The pool ended all of them, so "
            f"which one crashed cannot be told apart. {_CRASH_HINT}",
            key=None,
            exitcode=top[0][3],
        )

    def _timed_out(self, call: _Call, chunks, items, timeout) -> ExecutorTimeoutError:
        running = self._in_flight(call, chunks, items)
        unfinished = 0
        for i, (a, b) in enumerate(chunks):
            record = self._progress.read(call.first_slot + i)
            if record is None or record[0] != call.id:
                unfinished += b - a
            elif record[2] != _worker.DONE:
                unfinished += b - a - max(0, record[2] - 1)
        self._kill(f"the previous call ran past its timeout of {timeout} s")
        keys = ", ".join(u.key for units, _, _ in running for u in units) or "none started"
        return ExecutorTimeoutError(
            f"{self.name!r} run did not finish within {timeout} s: {unfinished} of "
            f"{len(items)} units unfinished; running when stopped: {keys}. Its workers were "
            "ended; the next call starts a fresh pool."
        )

    # -- shutdown ---------------------------------------------------------------------------------
    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            try:
                if pool is not None:
                    if cancel_futures:
                        for f in self._outstanding:
                            f.cancel()
                    self._stop_pool(pool, kill=False, wait=wait)
                    if wait:
                        self._reap()
            finally:
                self._progress.close()
                self._registry.close()


class _Call:
    """The futures of one call and where its progress records are."""

    def __init__(self, call_id: int, first_slot: int, pool: Any):
        self.id = call_id
        self.first_slot = first_slot
        self.pool = pool
        self.futures: list[Future] = []


def check_pool_options(idle_timeout: Any, min_chunk_seconds: Any, chunks_per_worker: Any) -> None:
    """The one validator of the pooled strategies' options (also used by ``configure``)."""
    if (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, int | float)
        or not idle_timeout > 0
    ):
        raise StrategyError(f"idle_timeout must be a number of seconds > 0, got {idle_timeout!r}")
    if (
        isinstance(min_chunk_seconds, bool)
        or not isinstance(min_chunk_seconds, int | float)
        or not min_chunk_seconds >= 0
    ):
        raise StrategyError(f"min_chunk_seconds must be a number >= 0, got {min_chunk_seconds!r}")
    if isinstance(chunks_per_worker, bool) or not (
        isinstance(chunks_per_worker, int) and chunks_per_worker >= 1
    ):
        raise StrategyError(f"chunks_per_worker must be an int >= 1, got {chunks_per_worker!r}")


_CRASH_HINT = (
    "Likely causes: a segmentation fault in compiled code, the out-of-memory killer "
    "(SIGKILL), or os._exit() in the unit. The pool was discarded; the next call starts a "
    "fresh one. Workers print a faulthandler traceback on stderr for a segfault; a unit "
    "that needs more memory may run with fewer workers."
)
#: While waiting for a chunk, note the workers' process objects this often (seconds).
_NOTE_WORKERS_EVERY = 0.25


def _wait_exitcodes(processes: dict[int, Any], timeout: float) -> dict[int, int | None]:
    """Exit codes of the processes, waiting up to ``timeout`` s for them to be known.

    After a crash the pool reaps its workers; when its thread and ours poll a process at
    the same moment, ours may see nothing yet, so poll again until every code is known.
    """
    deadline = time.monotonic() + timeout
    while True:
        codes = {pid: _exitcode(p) for pid, p in processes.items()}
        if all(c is not None for c in codes.values()) or time.monotonic() > deadline:
            return codes
        time.sleep(0.01)


def _exitcode(process: Any) -> int | None:
    try:
        return process.exitcode
    except Exception:  # a process object of a torn-down pool may refuse to poll
        return None
