"""The ``joblib`` strategy: units run through ``joblib.Parallel`` on the active joblib backend.

Data flow: a call cuts the items into chunks (:func:`~phasetrace.executors._pool.plan_chunks`),
packs each with the chunk wire format (:mod:`phasetrace.executors._wire`) and calls
``Parallel(n_jobs=..., return_as="generator")(delayed(run_pickled_chunk)(blob, progress)
for ...)``. Nothing else is chosen here: the backend, and the worker count unless
``n_workers`` is given, come from the caller's ``joblib.parallel_config(...)`` block, so any
joblib backend is reachable (``loky``, the default; ``threading``; ``multiprocessing``;
``dask`` with a ``distributed.Client``; Ray through ``ray.util.joblib``; third-party ones).
The cache stays in the calling process; workers only record.

Failure semantics: a unit's exception is re-raised with its own type, the worker
traceback as cause and the unit key in a note. A worker that dies under a process backend
(a broken process pool, Dask's ``KilledWorker``) raises
:class:`~phasetrace.errors.WorkerCrashedError` naming the unit(s) that were running, read
from the same progress records the local pools use (so only when the workers share this
machine). ``timeout`` bounds the whole call: it is checked as each chunk's result arrives,
and joblib's own per-task timeout (set to the same value) bounds a single chunk; past it the
workers running this call's chunks are ended (process backends; a thread backend cannot
stop a running unit). The ``multiprocessing`` backend cannot detect a dead worker (its pool
waits for ever): use ``loky`` or a timeout there.

Workers that are children of this process end themselves when it dies (a watchdog started
by the first chunk each runs), so a killed parent leaves no joblib workers behind.

joblib is imported on first use, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from phasetrace.errors import ExecutorTimeoutError, WorkerCrashedError
from phasetrace.executors import _wire, _worker
from phasetrace.executors._pool import (
    _PROGRESS_PREFIX,
    CHUNKS_PER_WORKER,
    MIN_CHUNK_SECONDS,
    _RecordFile,
    check_pool_options,
    doing,
    plan_chunks,
)
from phasetrace.executors.base import Executor, WorkItem, check_not_inherited, note_fork_unsafe


class JoblibExecutor(Executor):
    """Run units through ``joblib.Parallel``, on whatever backend ``parallel_config`` selects.

    Parameters
    ----------
    n_workers : int or None
        ``n_jobs`` for ``Parallel``. None (the default) takes ``n_jobs`` from the active
        ``joblib.parallel_config`` block, or all CPUs (``-1``) when the block sets none.
    min_chunk_seconds, chunks_per_worker
        Chunking of small units (see :func:`~phasetrace.executors._pool.plan_chunks`).

    Attributes
    ----------
    last_backend : str or None
        Name of the joblib backend the latest call ran on (``"LokyBackend"``, ...).

    Notes
    -----
    The backend is read at each call, from the thread that calls it, so a
    ``with joblib.parallel_config(backend="threading"):`` block around
    ``phasetrace.compute_trace(...)`` applies to that call. With a thread backend the
    units run in this process (JAX, if imported here, is then "in the worker"). ``fn``
    is pickled by reference when it can be, else by value with cloudpickle.
    :meth:`shutdown` does not stop the workers: they belong to the joblib backend, which
    shares them with other joblib code in the process (loky's idle timeout ends them).

    Examples
    --------
    >>> import joblib
    >>> with JoblibExecutor(n_workers=2) as ex, joblib.parallel_config(backend="threading"):
    ...     list(ex.map(abs, [-1, -2, 3]))
    [1, 2, 3]
    """

    name = "joblib"
    in_process = False
    needs_picklable_fn = False
    reuses_pool = True  # joblib's loky backend keeps its workers between calls
    default_n_workers = None

    @classmethod
    def check_options(
        cls,
        *,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ) -> None:
        """Check option values (``configure`` calls this); raise :class:`StrategyError`."""
        check_pool_options(1.0, min_chunk_seconds, chunks_per_worker)

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ):
        super().__init__(n_workers)
        check_pool_options(1.0, min_chunk_seconds, chunks_per_worker)
        self._n_jobs = n_workers  # None: let parallel_config decide, at each call
        self.min_chunk_seconds = float(min_chunk_seconds)
        self.chunks_per_worker = chunks_per_worker
        self.last_backend: str | None = None
        self._progress = _RecordFile(_PROGRESS_PREFIX)
        self._call_id = 0
        self._lock = threading.RLock()

    def _n_jobs_now(self) -> int:
        if self._n_jobs is not None:
            return self._n_jobs
        from joblib.parallel import get_active_backend

        _, configured = get_active_backend()
        return -1 if configured is None else configured

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` through joblib now; return its (completed) Future.

        joblib has no futures of its own: the call runs to its end before this returns.
        """
        self._check_open()
        from joblib import Parallel, delayed

        future: Future = Future()
        try:
            (result,) = Parallel(n_jobs=1)([delayed(fn)(*args, **kwargs)])
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

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
        from joblib import effective_n_jobs

        n_jobs = self._n_jobs_now()
        if chunksize is not None:
            chunks = [(a, min(a + chunksize, len(items))) for a in range(0, len(items), chunksize)]
        else:
            chunks = plan_chunks(
                [it.cost for it in items],
                max(1, effective_n_jobs(n_jobs)),
                min_chunk_seconds=self.min_chunk_seconds,
                chunks_per_worker=self.chunks_per_worker,
            )
        dumps = _wire.choose_dumps(fn, by_value=True)
        blobs = [
            _wire.pack_chunk(
                fn, items[a:b], star=star, dumps=dumps, strategy=self.name, by_value=True
            )
            for a, b in chunks
        ]
        # Eager: joblib runs the whole call here; the iterator hands out the results.
        with self._lock:
            self._check_open()
            return iter(self._run(n_jobs, blobs, chunks, items, timeout))

    def _run(self, n_jobs, blobs, chunks, items, timeout) -> list:
        from joblib import Parallel, delayed
        from joblib.parallel import get_active_backend

        self.last_backend = type(get_active_backend()[0]).__name__
        if self.last_backend == "LokyBackend":
            check_not_inherited("joblib's loky process pool", "joblib")
            note_fork_unsafe("joblib's loky process pool")
        first_slot = self._progress.start_call(len(blobs), keep=False)
        self._call_id += 1
        call_id = self._call_id
        calls = (
            delayed(_worker.run_pickled_chunk)(blob, (self._progress.path, call_id, first_slot + i))
            for i, blob in enumerate(blobs)
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        where = f"strategy 'joblib' ({self.last_backend})"
        results: list[Any] = []
        try:
            outputs = Parallel(n_jobs=n_jobs, batch_size=1, timeout=timeout, return_as="generator")(
                calls
            )
            try:
                for (a, b), data in zip(chunks, outputs, strict=True):
                    for ok, value in _wire.decode_outcomes(data, items[a:b], where):
                        if not ok:
                            raise value
                        results.append(value)
                    if deadline is not None and time.monotonic() > deadline and b < len(items):
                        raise multiprocessing.TimeoutError
            finally:
                outputs.close()  # abandons the chunks not yet started
        except BaseException as exc:
            mapped = self._map_error(exc, chunks, items, call_id, first_slot, timeout)
            if mapped is None:
                raise
            raise mapped from exc
        return results

    def _running(
        self, chunks: list[tuple[int, int]], items: list[WorkItem], call_id: int, first_slot: int
    ) -> list[tuple[list[WorkItem], int, bool]]:
        """``(units, pid, loading)`` per chunk of this call started and not finished."""
        return self._progress.in_flight(first_slot, call_id, chunks, items)

    def _map_error(
        self,
        exc: BaseException,
        chunks: list[tuple[int, int]],
        items: list[WorkItem],
        call_id: int,
        first_slot: int,
        timeout: float | None,
    ) -> BaseException | None:
        """joblib's and the backends' errors → ours (None: re-raise as it is)."""
        if isinstance(exc, (BrokenProcessPool, *_killed_worker_type())):
            running = self._running(chunks, items, call_id, first_slot)
            if len(running) == 1:
                units, _, loading = running[0]
                what = doing(units, loading)
                key = units[0].key if len(units) == 1 else None
            elif running:
                what = "; or ".join(doing(units, loading) for units, _, loading in running)
                key = None
            else:
                shown = ", ".join(items[a].key for a, _ in chunks[:5])
                what, key = f"before starting any unit of this call (first units {shown})", None
            return WorkerCrashedError(
                f"a joblib worker ({self.last_backend}) died {what} "
                f"({type(exc).__name__}: {exc}). Likely causes: a segmentation fault in "
                "compiled code, the out-of-memory killer, or os._exit() in the unit; the "
                "backend's next call starts fresh workers.",
                key=key,
            )
        if isinstance(exc, TimeoutError | multiprocessing.TimeoutError):  # joblib uses the latter
            running = self._running(chunks, items, call_id, first_slot)
            ended = _end_workers(call_id, first_slot, len(chunks), self._progress)
            keys = ", ".join(u.key for units, _, _ in running for u in units) or "none"
            return ExecutorTimeoutError(
                f"'joblib' run did not finish within {timeout} s; running when stopped: "
                f"{keys}. {ended}"
            )
        return None

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._progress.close()


def _killed_worker_type() -> tuple[type, ...]:
    """Dask's ``KilledWorker`` (the ``dask`` joblib backend), when distributed is installed."""
    try:
        from distributed import KilledWorker
    except ImportError:
        return ()
    return (KilledWorker,)


def _end_workers(call_id: int, first_slot: int, n_chunks: int, progress: _RecordFile) -> str:
    """End the worker processes (children of this process) still running this call."""
    pids = set()
    for i in range(n_chunks):
        record = progress.read(first_slot + i)
        if record is not None and record[0] == call_id and record[2] != _worker.DONE:
            pids.add(record[1])
    ours = [p for p in multiprocessing.active_children() if p.pid in pids]
    for p in ours:
        with contextlib.suppress(OSError, ValueError):
            p.kill()
    if ours:
        return f"The {len(ours)} worker process(es) running them were ended."
    if pids:
        return "They run in threads or on other machines, which cannot be stopped from here."
    return "No chunk of this call was still running."
