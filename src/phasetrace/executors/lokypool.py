"""The ``loky`` strategy: a loky process pool that phasetrace owns.

Data flow: :class:`LokyExecutor` builds its own :class:`loky.ProcessPoolExecutor` (loky's
public class: fresh interpreters that do not re-run the parent's ``__main__`` module, a
dead worker reported as ``TerminatedWorkerError``) and keeps it between calls; chunks go
through the shared machinery of ``_pool``. It never touches loky's process-wide reusable
executor, so a ``loky.get_reusable_executor()`` that joblib or the user holds is left
alone, and ours is left alone by them.

Reuse and rebuilds: the pool is reused while none of its futures has reported it broken.
After a crash, a timeout or Ctrl-C the next call builds a new one (``generation`` + 1, and
one log line on ``phasetrace.executors`` saying why). Workers exit by themselves after
``idle_timeout`` seconds without work and loky starts them again when work arrives. They
get ``OMP_NUM_THREADS=1`` and friends through loky's ``env=`` (applied when the worker
process starts, before anything is imported), and :func:`_worker.init_worker` (SIGINT
ignored, faulthandler, parent watchdog, pid registry).

loky is imported on first use, not when this module is imported.
"""

from __future__ import annotations

from typing import Any

from phasetrace.executors import _worker
from phasetrace.executors._pool import (
    CHUNKS_PER_WORKER,
    IDLE_TIMEOUT,
    MIN_CHUNK_SECONDS,
    PooledExecutor,
    _exitcode,
)


class LokyExecutor(PooledExecutor):
    """Run units on a loky process pool owned by this executor.

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
        Number of pools this executor has started (see ``_pool``).

    Notes
    -----
    ``fn`` is pickled by reference when it can be; a function defined in ``__main__``,
    a lambda or a closure is sent by value with cloudpickle (``needs_picklable_fn`` is
    False). A call that runs past ``timeout=``, or is interrupted by Ctrl-C, ends the
    pool's workers; the next call starts a new pool.

    Examples
    --------
    >>> with LokyExecutor(n_workers=2) as ex:  # doctest: +SKIP
    ...     list(ex.map(abs, [-1, -2, 3]))
    [1, 2, 3]
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

    def _new_pool(self, initargs: tuple) -> Any:
        from loky import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.n_workers,
            timeout=self.idle_timeout,
            initializer=_worker.init_worker,
            initargs=initargs,
            env=dict(_worker.THREAD_LIMIT_ENV),
        )

    def _stop_pool(self, pool: Any, kill: bool, wait: bool) -> None:
        pool.shutdown(wait=wait, kill_workers=kill)

    def is_warm(self) -> bool:
        """Whether this executor's pool is up, with a live worker (starts nothing)."""
        if self._pool is None or self._broken is not None:
            return False
        return any(_exitcode(p) is None for p in self._workers().values())
