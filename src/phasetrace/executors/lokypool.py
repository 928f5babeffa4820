"""The ``loky`` strategy: loky's reusable process pool.

Data flow: :class:`LokyExecutor` takes its pool from ``loky.get_reusable_executor`` (a
per-thread singleton in loky 3.x that spawns fresh interpreters, does not re-run the
parent's ``__main__`` module, and reports a dead worker as ``TerminatedWorkerError``) and
pins it for later calls, from any thread. Chunks go through the shared machinery of
``_pool``. All ``LokyExecutor`` objects of one thread share that pool; it is shut down
when the last of them is closed, and its workers exit by themselves after
``idle_timeout`` seconds without work.

Reuse and rebuilds: a pinned pool is reused while it is healthy and has ``n_workers``
workers. Otherwise ``get_reusable_executor`` is asked again: it resizes a healthy pool
(no new generation) or builds a new one after a crash, a timeout, Ctrl-C, or a shutdown
by someone else (``generation`` + 1, and one log line on ``phasetrace.executors`` saying
why). Workers get ``OMP_NUM_THREADS=1`` and friends through loky's ``env=`` (applied
when the worker process is executed, before anything is imported), and the
``_worker.init_worker`` initializer (SIGINT ignored, faulthandler, parent watchdog).

loky is imported on first use, not when this module is imported.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from phasetrace.executors import _worker
from phasetrace.executors._pool import (
    CHUNKS_PER_WORKER,
    IDLE_TIMEOUT,
    MIN_CHUNK_SECONDS,
    WATCH_INTERVAL,
    PooledExecutor,
    choose_dumps,
    kill_processes,
    logger,
)

_users_lock = threading.Lock()
_users: dict[int, int] = {}  # id(loky executor) -> open LokyExecutor objects pinning it


def _healthy(pool: Any) -> bool:
    return pool is not None and not pool._flags.broken and not pool._flags.shutdown


def _live_workers(pool: Any) -> int:
    try:
        return sum(p.is_alive() for p in list((pool._processes or {}).values()))
    except Exception:  # a pool being torn down by its manager thread
        return 0


def pool_is_warm(n_workers: int | None = None) -> bool:
    """Whether this thread's loky pool is healthy and has live workers (never starts one).

    Parameters
    ----------
    n_workers : int, optional
        Also require at least this many live workers.

    Examples
    --------
    >>> isinstance(pool_is_warm(), bool)
    True
    """
    module = sys.modules.get("loky.reusable_executor")
    if module is None:  # loky not even imported: nothing can be warm
        return False
    pool = getattr(module._executor_storage, "executor", None)
    if not _healthy(pool):
        return False
    live = _live_workers(pool)
    return live >= (n_workers or 1)


class LokyExecutor(PooledExecutor):
    """Run units on loky's reusable process pool.

    Parameters
    ----------
    n_workers : int or None
        Worker count (see :func:`~phasetrace.executors.base.resolve_n_workers`); default
        all CPUs.
    idle_timeout : float
        Seconds without work after which loky's workers exit (default 60; loky starts
        them again on the next call).
    min_chunk_seconds, chunks_per_worker
        Chunking of small units (see :func:`~phasetrace.executors._pool.plan_chunks`).

    Attributes
    ----------
    generation : int
        Number of distinct loky pools this executor has used (see ``_pool``).

    Notes
    -----
    ``fn`` is pickled by reference when it can be; a function defined in ``__main__``,
    a lambda or a closure is sent by value with cloudpickle (``needs_picklable_fn`` is
    False). A call that runs past ``timeout=``, or is interrupted by Ctrl-C, kills the
    pool's workers; since the pool is shared per thread, other ``LokyExecutor`` objects
    of that thread also get a new pool on their next call.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> from phasetrace.executors._testfns import square
    >>> with LokyExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     ex.map(square, work_items([1, 2, 3]))
    [1, 4, 9]
    """

    name = "loky"
    needs_picklable_fn = False

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

    def _loky_kwargs(self) -> dict[str, Any]:
        env = dict(_worker.THREAD_LIMIT_ENV)
        return {
            "max_workers": self.n_workers,
            "timeout": self.idle_timeout,
            "initializer": _worker.init_worker,
            "initargs": (os.getpid(), WATCH_INTERVAL, env),
            "env": env,
        }

    def _ensure_pool(self) -> Any:
        pool = self._pool
        if _healthy(pool) and pool._max_workers == self.n_workers:
            return pool
        if pool is None:
            reason = "first use"
        elif pool._flags.broken:
            reason = self._pending_reason or f"the previous pool was broken ({pool._flags.broken})"
        elif pool._flags.shutdown:
            reason = self._pending_reason or "the previous pool was shut down by another user"
        else:
            reason = None  # only the size differs: loky resizes the same pool
        from loky import get_reusable_executor

        new = get_reusable_executor(**self._loky_kwargs())
        if new is not pool:
            self._pin(new)
            if reason is None:
                reason = "loky replaced its pool (its arguments were changed by another user)"
            self._note_rebuild(reason)
        return new

    def _pin(self, new: Any) -> None:
        old, self._pool = self._pool, new
        with _users_lock:
            _users[id(new)] = _users.get(id(new), 0) + 1
        if old is not None:
            _release(old)

    def _choose_dumps(self, fn: Callable[[Any], Any]) -> Callable[[Any], bytes]:
        # loky ships lambdas and __main__ functions too (cloudpickle when pickle can't).
        return choose_dumps(fn)

    def _pool_processes(self, pool: Any) -> dict[int, Any]:
        return dict(pool._processes or {})

    def _kill_pool(self, pool: Any, reason: str) -> None:
        processes = list((pool._processes or {}).values())
        kill_processes(processes)
        pool.shutdown(wait=False, kill_workers=True)
        for p in processes:
            p.join(timeout=2.0)  # reap them: no zombie outlives the call
        self._pending_reason = reason
        logger.info("loky: killed the pool's workers: %s", reason)

    def is_warm(self) -> bool:
        """Whether the pool this executor would use has live workers (starts nothing)."""
        pool = self._pool
        if _healthy(pool) and _live_workers(pool) >= self.n_workers:
            return True
        return pool_is_warm(self.n_workers)

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _release(pool)


def _release(pool: Any) -> None:
    with _users_lock:
        left = _users.get(id(pool), 1) - 1
        if left > 0:
            _users[id(pool)] = left
            return
        _users.pop(id(pool), None)
    if not pool._flags.shutdown:
        logger.debug("loky: shutting down the pool (its last user closed)")
        pool.shutdown(wait=True)
