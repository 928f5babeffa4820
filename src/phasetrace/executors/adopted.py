"""Any standard ``concurrent.futures.Executor`` as a strategy: someone else's pool, adopted.

``configure(strategy=my_executor)``, ``config(strategy=...)``, ``compute_trace(g,
strategy=...)`` and ``get_executor(my_executor)`` accept an executor you already have —
the standard library's ``ThreadPoolExecutor`` or ``ProcessPoolExecutor``, loky's
``get_reusable_executor()``, a Dask client's ``client.get_executor()``, mpi4py's
``MPIPoolExecutor`` — and run phasetrace's work on it through its ``submit``.

Data flow: the same chunks as the local pools (:mod:`phasetrace.executors._wire`):
``executor.submit(_worker.run_pickled_chunk, blob, progress)`` per chunk, results decoded
here in input order; a unit's exception keeps its type, with the worker traceback as its
cause and the unit key in a note. Progress records name the unit that was running when a
worker died wherever the workers share this machine's ``/dev/shm`` (or temp directory).

phasetrace does not own an adopted executor: ``shutdown()`` and
:func:`phasetrace.shutdown_executors` leave it running; a broken one is reported, not
replaced (give phasetrace a new one); a timeout cancels the queued chunks, while chunks
already running finish in the background, since phasetrace cannot end another's workers.
Workers that are children of this process still get a watchdog that ends them when this
process dies.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from phasetrace.errors import ExecutorClosedError, StrategyError, WorkerCrashedError
from phasetrace.executors._pool import PooledExecutor
from phasetrace.executors.base import available_cpus

#: Executors adopted in this process, and those adopted by an ancestor before it forked
#: (their workers belong to that ancestor: a forked child that used them would wait forever).
_adopted: weakref.WeakSet = weakref.WeakSet()
_adopted_before_fork: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _adopted_before_fork.update(_adopted)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AdoptedExecutor(PooledExecutor):
    """Run phasetrace's work on a ``concurrent.futures.Executor`` it does not own.

    Parameters
    ----------
    executor : concurrent.futures.Executor
        Anything with ``submit(fn, *args) -> Future``.
    n_workers : int, optional
        How many units it runs at once (for chunking); default all available CPUs.
    min_chunk_seconds, chunks_per_worker
        Chunking (see :func:`~phasetrace.executors._pool.plan_chunks`).

    Examples
    --------
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> from phasetrace.executors import get_executor, work_items
    >>> with ThreadPoolExecutor(2) as pool:
    ...     ex = get_executor(pool)
    ...     ex.map_items(abs, work_items([-1, 2, -3]))
    [1, 2, 3]
    """

    name = "adopted"
    needs_picklable_fn = False
    reuses_pool = True

    def __init__(
        self,
        executor: Any,
        n_workers: int | None = None,
        *,
        min_chunk_seconds: float = 0.005,
        chunks_per_worker: int = 4,
    ):
        if not callable(getattr(executor, "submit", None)):
            raise StrategyError(
                f"cannot adopt {type(executor).__name__!r} as an executor: it has no submit()"
            )
        super().__init__(
            n_workers if n_workers is not None else available_cpus(),
            min_chunk_seconds=min_chunk_seconds,
            chunks_per_worker=chunks_per_worker,
        )
        self.executor = executor
        self.name = f"adopted {type(executor).__name__}"
        self.in_process = isinstance(executor, ThreadPoolExecutor)
        with contextlib.suppress(TypeError):  # not every object can be weakly referenced
            _adopted.add(executor)

    def _ensure_pool(self) -> Any:
        if self.executor in _adopted_before_fork:
            raise StrategyError(
                f"the {type(self.executor).__name__} given as strategy was adopted before this "
                "process forked (os.fork, or a 'fork' multiprocessing pool): its workers belong "
                "to the parent process, and a call here would wait forever. Make a new "
                "executor in the child, or use a strategy by name ('loky', 'spawn')"
            )
        if self._broken is not None:
            raise WorkerCrashedError(
                f"the adopted {type(self.executor).__name__} is broken ({self._broken}); "
                "phasetrace does not replace executors it does not own: pass a new one"
            )
        return self.executor

    def _refused(self, exc: BaseException) -> BaseException:
        if isinstance(exc, concurrent.futures.BrokenExecutor):
            return super()._refused(exc)
        # A RuntimeError that is not a broken pool: the standard library's and loky's
        # "cannot schedule new futures after shutdown". No worker crashed.
        return ExecutorClosedError(
            f"the adopted {type(self.executor).__name__} refused work ({exc}): it was shut "
            "down by its owner (for example at the end of its `with` block). phasetrace "
            "does not own it and cannot restart it: configure a live executor, or keep "
            "using it inside its `with` block"
        )

    def _kill_locked(self, reason: str) -> None:
        # Not ours to end: the caller's futures are cancelled; running chunks finish.
        pass

    def _stop_pool(self, pool: Any, kill: bool, wait: bool) -> None:
        pass  # not ours

    def _crashed(self, call, chunks, items) -> WorkerCrashedError:
        err = super()._crashed(call, chunks, items)
        self._broken = f"a worker died: {err}"
        return err

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        self._check_open()
        return self.executor.submit(fn, *args, **kwargs)

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            for f in self._outstanding:
                f.cancel()
        self._progress.close()
        self._registry.close()

    def __repr__(self) -> str:
        state = "released" if self._closed else "adopted"
        return f"<AdoptedExecutor {self.executor!r} n_workers={self.n_workers} {state}>"
