"""The ``spawn`` strategy: the standard library's process pool with the spawn start method.

Data flow: :class:`SpawnExecutor` owns one :class:`concurrent.futures.ProcessPoolExecutor`
built on ``multiprocessing.get_context("spawn")`` (fresh interpreters; unlike
``multiprocessing.Pool``, a dead worker is reported as a broken pool instead of hanging).
Chunks go through the shared machinery of ``_pool``. The pool is kept between calls and
shut down by :meth:`~SpawnExecutor.shutdown` or after ``idle_timeout`` seconds without
work; a broken, timed-out or interrupted pool is replaced on the next call.

As with any spawn-based pool, each worker imports your main script's module (as
``__mp_main__``) before it runs anything: keep the script's work, and imports you do not
want in every worker (JAX, say), under ``if __name__ == "__main__":``. The ``loky``
strategy starts workers that do not import the main script.

Workers watch their parent (:func:`_worker.init_worker`): a SIGKILLed parent leaves no
orphans.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from phasetrace.executors import _worker
from phasetrace.executors._pool import (
    CHUNKS_PER_WORKER,
    IDLE_TIMEOUT,
    MIN_CHUNK_SECONDS,
    PooledExecutor,
    check_spawn_main,
)

logger = logging.getLogger("phasetrace.executors")


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
    importable module or of the main script, which each worker imports as
    ``__mp_main__`` as with the standard library's spawn pool (``needs_picklable_fn``;
    not a function typed into an interactive session). A call that runs past ``timeout=``, or is
    interrupted by Ctrl-C, ends the pool's workers (SIGKILL).

    Examples
    --------
    >>> with SpawnExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     list(ex.map(abs, [-1, -2, 3]))
    [1, 2, 3]
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
        self._idle_timer: threading.Timer | None = None
        self._idle_token = 0

    def _new_pool(self, initargs: tuple) -> Any:
        check_spawn_main(self.name)
        return ProcessPoolExecutor(
            max_workers=self.n_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker.init_worker,
            initargs=initargs,
        )

    def _stop_pool(self, pool: Any, kill: bool, wait: bool) -> None:
        if kill:  # the standard pool has no public way to end running workers: we do it
            for p in self._workers().values():
                p.kill()
        pool.shutdown(wait=wait, cancel_futures=True)

    def _ensure_pool(self) -> Any:
        self._cancel_idle_timer()
        return super()._ensure_pool()

    def _after_call(self) -> None:
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
            if token != self._idle_token or self._closed or self._pool is None:
                return
            self._idle_timer = None
            pool, self._pool = self._pool, None
            self._broken = None
            self._next_reason = f"the previous pool was idle for {self.idle_timeout} s"
            logger.debug("spawn: shutting down the idle pool")
            pool.shutdown(wait=True)
            self._reap()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._cancel_idle_timer()
        super()._shutdown(wait, cancel_futures)
