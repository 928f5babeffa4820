"""The ``spawn`` strategy: the standard library's process pool with the spawn start method.

Data flow: :class:`SpawnExecutor` owns one
:class:`concurrent.futures.ProcessPoolExecutor` built on a *spawn* context (fresh
interpreters; unlike ``multiprocessing.Pool``, a dead worker is reported as a broken pool
instead of hanging). Chunks go through the shared machinery of ``_pool``. The pool is
kept between calls and shut down by :meth:`~SpawnExecutor.close` or after
``idle_timeout`` seconds without work; a broken, timed-out or interrupted pool is
replaced on the next call.

Two things differ from a bare ``ProcessPoolExecutor(mp_context=get_context("spawn"))``:

- **Workers do not re-run the main script.** The spawn start method normally imports
  the parent's ``__main__`` module in each worker (as ``__mp_main__``), so a script that
  imports JAX at its top would import JAX in every worker. While a worker is launched,
  ``sys.modules["__main__"]`` is replaced by an empty module, so the preparation data
  sent to the child names no main module. The swap lasts for the launch only (a few
  milliseconds, under a lock). The price: functions defined in ``__main__`` cannot run
  here (they are rejected with a message); use module-level functions or ``loky``.
- **Workers watch their parent.** The initializer starts a daemon thread that ends the
  worker within about a second of the parent's death (``os.getppid()`` changes), so a
  SIGKILLed parent leaves no orphans.
"""

from __future__ import annotations

import multiprocessing.context
import os
import signal
import sys
import threading
import types
from typing import Any

from phasetrace.executors import _worker
from phasetrace.executors._pool import (
    CHUNKS_PER_WORKER,
    IDLE_TIMEOUT,
    MIN_CHUNK_SECONDS,
    WATCH_INTERVAL,
    PooledExecutor,
    kill_processes,
    logger,
)

_main_swap_lock = threading.Lock()
_EMPTY_MAIN = types.ModuleType("__main__")  # no __file__ and no __spec__: nothing to re-run


class _NoMainSpawnProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        # The preparation data (which names the main module to re-run) is computed inside
        # Popen from sys.modules["__main__"]; hide the real one for that moment only.
        with _main_swap_lock:
            real_main = sys.modules["__main__"]
            sys.modules["__main__"] = _EMPTY_MAIN
            try:
                return multiprocessing.context.SpawnProcess._Popen(process_obj)
            finally:
                sys.modules["__main__"] = real_main


class _NoMainSpawnContext(multiprocessing.context.SpawnContext):
    Process = _NoMainSpawnProcess


class SpawnExecutor(PooledExecutor):
    """Run units on a ``concurrent.futures.ProcessPoolExecutor`` of spawned workers.

    Parameters
    ----------
    n_workers : int or None
        Worker count (see :func:`~phasetrace.executors.base.resolve_n_workers`); default
        all CPUs.
    idle_timeout : float
        Seconds without work after which the pool is shut down (default 60).
    min_chunk_seconds, chunks_per_worker
        Chunking of small units (see :func:`~phasetrace.executors._pool.plan_chunks`).

    Notes
    -----
    ``fn`` is pickled by reference, so it must be a module-level function of an
    importable module (``needs_picklable_fn``). A call that runs past ``timeout=``, or is
    interrupted by Ctrl-C, kills the pool's workers (SIGKILL).

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> from phasetrace.executors._testfns import square
    >>> with SpawnExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     ex.map(square, work_items([1, 2, 3]))
    [1, 4, 9]
    """

    name = "spawn"
    needs_picklable_fn = True
    _pool_kill_signal = signal.SIGTERM  # what concurrent.futures sends survivors of a crash

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        chunks_per_worker: int = CHUNKS_PER_WORKER,
    ):
        super().__init__(
            n_workers,
            idle_timeout=idle_timeout,
            min_chunk_seconds=min_chunk_seconds,
            chunks_per_worker=chunks_per_worker,
        )
        self._pool: Any = None
        self._idle_timer: threading.Timer | None = None
        self._idle_token = 0

    def _ensure_pool(self) -> Any:
        self._cancel_idle_timer()
        pool = self._pool
        if pool is not None and not pool._broken and not pool._shutdown_thread:
            return pool
        if pool is None:
            reason = self._pending_reason or "first use"
        elif pool._broken:
            reason = self._pending_reason or f"the previous pool was broken ({pool._broken})"
        else:
            reason = self._pending_reason or "the previous pool was shut down"
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=self.n_workers,
            mp_context=_NoMainSpawnContext(),
            initializer=_worker.init_worker,
            initargs=(os.getpid(), WATCH_INTERVAL, dict(_worker.THREAD_LIMIT_ENV)),
        )
        self._note_rebuild(reason)
        return self._pool

    def _pool_processes(self, pool: Any) -> dict[int, Any]:
        return dict(pool._processes or {})

    def _kill_pool(self, pool: Any, reason: str) -> None:
        processes = list((pool._processes or {}).values())
        kill_processes(processes)
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.join(timeout=2.0)  # reap them: no zombie outlives the call
        self._pending_reason = reason
        logger.info("spawn: killed the pool's workers: %s", reason)

    def _run(self, *args: Any, **kwargs: Any) -> list:
        try:
            return super()._run(*args, **kwargs)
        finally:
            self._start_idle_timer()

    def _start_idle_timer(self) -> None:
        self._cancel_idle_timer()
        timer = threading.Timer(self.idle_timeout, self._close_if_idle, args=(self._idle_token,))
        timer.daemon = True
        timer.start()
        self._idle_timer = timer

    def _cancel_idle_timer(self) -> None:
        self._idle_token += 1  # a timer that already fired sees a stale token and does nothing
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close_if_idle(self, token: int) -> None:
        with self._lock:  # waits out a running call, which cancels this timer
            if token != self._idle_token or self._closed:
                return
            self._idle_timer = None
            pool, self._pool = self._pool, None
            if pool is not None:
                self._pending_reason = f"the previous pool was idle for {self.idle_timeout} s"
                logger.debug("spawn: shutting down the idle pool")
                pool.shutdown(wait=True)

    def _close_pool(self) -> None:
        self._cancel_idle_timer()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
