"""The ``joblib`` strategy: units run through ``joblib.Parallel`` on the active joblib backend.

Data flow: ``map`` cuts the items into chunks (:func:`~phasetrace.executors._pool.plan_chunks`),
pickles each chunk in this process as ``(fn, [(key, payload), ...])`` bytes and calls
``Parallel(n_jobs=...)(delayed(run_pickled_chunk)(blob, progress) for ...)``. Nothing
else is chosen here: the backend, and the worker count unless ``n_workers`` is given, come
from the caller's ``joblib.parallel_config(...)`` block, so any joblib backend is
reachable (``loky``, the default; ``threading``; ``multiprocessing``; ``dask`` with a
``distributed.Client``; Ray through ``ray.util.joblib``; third-party ones). Workers unpickle
the chunk, run :func:`~phasetrace.executors._worker.run_chunk` (every exception becomes an
outcome, with its traceback) and send back pickled outcomes, decoded here in input order.
The cache stays in the calling process; workers only record.

Failure semantics: an exception in a unit is re-raised as
:class:`~phasetrace.errors.UnitFailedError` with the worker traceback. A worker that dies
under a process backend (loky's ``TerminatedWorkerError``, a broken process pool) raises
:class:`~phasetrace.errors.WorkerCrashedError` naming the unit(s) that were running, read
from the same progress records the local pools use (so only when the workers share this
machine; elsewhere the message lists the call's units). Dask's ``KilledWorker`` through
the dask backend is mapped the same way. joblib's ``timeout`` applies to *each chunk*
(joblib's semantics), not to the whole call as with the other strategies; past it, joblib
raises and aborts the backend (loky kills its workers), raised here as
:class:`~phasetrace.errors.ExecutorTimeoutError`. The ``multiprocessing`` backend cannot
detect a dead worker (its pool waits for ever): use ``loky`` or a timeout there.

joblib is imported on first use, not when this module is imported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from phasetrace.errors import ExecutorTimeoutError, StrategyError, WorkerCrashedError
from phasetrace.executors import _worker
from phasetrace.executors._pool import (
    CHUNKS_PER_WORKER,
    MIN_CHUNK_SECONDS,
    _ProgressFile,
    choose_dumps,
    decode_outcomes,
    plan_chunks,
)
from phasetrace.executors.base import Executor, WorkItem
from phasetrace.executors.daskpool import pack_chunk


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
        Name of the joblib backend the latest ``map`` ran on (``"LokyBackend"``, ...).

    Notes
    -----
    The backend is read at each ``map`` call, from the thread that calls it, so a
    ``with joblib.parallel_config(backend="threading"):`` block around
    ``phasetrace.compute_trace(...)`` applies to that call. With a thread backend the
    units run in this process (JAX, if imported here, is then "in the worker"). ``fn``
    is pickled by reference when it can be, else by value with cloudpickle.
    :meth:`close` does not stop the workers: they belong to the joblib backend, which
    shares them with other joblib code in the process (loky's idle timeout ends them).

    Examples
    --------
    >>> import joblib
    >>> from phasetrace.executors import work_items
    >>> from phasetrace.executors._testfns import square
    >>> with JoblibExecutor(n_workers=2) as ex, joblib.parallel_config(backend="threading"):
    ...     ex.map(square, work_items([1, 2, 3]))
    [1, 4, 9]
    """

    name = "joblib"
    in_process = False
    needs_picklable_fn = False
    reuses_pool = True  # joblib's loky backend keeps its workers between calls
    default_n_workers = None

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ):
        super().__init__(n_workers)
        if not (isinstance(min_chunk_seconds, int | float) and min_chunk_seconds >= 0):
            raise StrategyError(f"min_chunk_seconds must be >= 0, got {min_chunk_seconds!r}")
        if isinstance(chunks_per_worker, bool) or not (
            isinstance(chunks_per_worker, int) and chunks_per_worker >= 1
        ):
            raise StrategyError(f"chunks_per_worker must be an int >= 1, got {chunks_per_worker!r}")
        self._n_jobs = n_workers  # None: let parallel_config decide, at each call
        self.min_chunk_seconds = float(min_chunk_seconds)
        self.chunks_per_worker = chunks_per_worker
        self.last_backend: str | None = None
        self._progress = _ProgressFile()
        self._call_id = 0
        self._lock = threading.RLock()

    def _n_jobs_now(self) -> int:
        if self._n_jobs is not None:
            return self._n_jobs
        from joblib.parallel import get_active_backend

        _, configured = get_active_backend()
        return -1 if configured is None else configured

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
        from joblib import Parallel, delayed, effective_n_jobs
        from joblib.parallel import get_active_backend

        n_jobs = self._n_jobs_now()
        slots = max(1, effective_n_jobs(n_jobs))
        chunks = plan_chunks(
            [it.cost for it in items],
            slots,
            min_chunk_seconds=self.min_chunk_seconds,
            chunks_per_worker=self.chunks_per_worker,
        )
        dumps = choose_dumps(fn)
        blobs = [pack_chunk(fn, items[a:b], dumps, self.name) for a, b in chunks]
        with self._lock:
            self._check_open()
            self.last_backend = type(get_active_backend()[0]).__name__
            first_slot = self._progress.start_call(len(blobs), stragglers=False)
            self._call_id += 1
            call_id = self._call_id
            calls = (
                delayed(_worker.run_pickled_chunk)(
                    blob, (self._progress.path, call_id, first_slot + i)
                )
                for i, blob in enumerate(blobs)
            )
            t0 = time.monotonic()
            try:
                datas = Parallel(n_jobs=n_jobs, batch_size=1, timeout=timeout)(calls)
            except BaseException as exc:
                mapped = self._map_error(exc, chunks, items, call_id, first_slot, timeout, t0)
                if mapped is None:
                    raise
                raise mapped from exc
        results: list[Any] = [None] * len(items)
        for (a, b), data in zip(chunks, datas, strict=True):
            for offset, (ok, value) in enumerate(decode_outcomes(data, items[a:b])):
                if not ok:
                    raise value
                results[a + offset] = value
        return results

    map.__doc__ = Executor.map.__doc__

    def _running(
        self, chunks: list[tuple[int, int]], items: list[WorkItem], call_id: int, first_slot: int
    ) -> tuple[list[WorkItem], list[WorkItem]]:
        """(units that were running, units of chunks that never reported) for this call."""
        running, unknown = [], []
        for i, (a, b) in enumerate(chunks):
            record = self._progress.read(first_slot + i)
            if record is None or record[0] != call_id:
                unknown.extend(items[a:b])
                continue
            position = record[2]
            if 1 <= position <= b - a:
                running.append(items[a + position - 1])
        return running, unknown

    def _map_error(
        self,
        exc: BaseException,
        chunks: list[tuple[int, int]],
        items: list[WorkItem],
        call_id: int,
        first_slot: int,
        timeout: float | None,
        t0: float,
    ) -> BaseException | None:
        """joblib's and the backends' errors → ours (None: re-raise as it is)."""
        crashed = isinstance(exc, BrokenProcessPool) or type(exc).__name__ in (
            "TerminatedWorkerError",
            "KilledWorker",
        )
        if crashed:
            running, unknown = self._running(chunks, items, call_id, first_slot)
            if len(running) == 1:
                what, key = f"unit {running[0].key}", running[0].key
            elif running:
                what, key = "one of the units " + ", ".join(it.key for it in running), None
            else:
                shown = ", ".join(it.key for it in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                what, key = f"one of the units {shown}{more} (no progress records)", None
            return WorkerCrashedError(
                f"a joblib worker ({self.last_backend}) died while running {what} "
                f"({type(exc).__name__}: {exc}). Likely causes: a segmentation fault in "
                "compiled code, the out-of-memory killer, or os._exit() in the unit; the "
                "backend's next call starts fresh workers.",
                key=key,
            )
        import multiprocessing

        if isinstance(exc, TimeoutError | multiprocessing.TimeoutError):  # joblib uses the latter
            running, _ = self._running(chunks, items, call_id, first_slot)
            keys = ", ".join(it.key for it in running) or "unknown"
            return ExecutorTimeoutError(
                f"'joblib' map: a chunk did not finish within {timeout} s (joblib's timeout "
                f"applies to each chunk; {time.monotonic() - t0:.3g} s elapsed); running "
                f"when stopped: {keys}. joblib aborted the backend (loky kills its workers; a "
                "thread backend cannot stop a running unit, which then runs to its end)."
            )
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._progress.close()

    close.__doc__ = Executor.close.__doc__
