"""The ``sequential`` strategy: a plain loop in the calling process, the reference.

Every other strategy must return what this one returns. Exceptions are wrapped the same
way as in a worker (:class:`~phasetrace.errors.UnitFailedError` with the unit key), so
switching strategies never changes what callers catch; here the ``__cause__`` is the
original exception itself, with its live traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from phasetrace.errors import ExecutorTimeoutError, UnitFailedError
from phasetrace.executors._worker import _format_tb, _safe_str, exc_type_name
from phasetrace.executors.base import Executor, WorkItem


class SequentialExecutor(Executor):
    """Run each unit in turn in the calling process.

    Parameters
    ----------
    n_workers : int or None
        Validated like for every strategy, then ignored: this strategy always uses one
        worker (``n_workers`` is 1), so a process-wide ``n_workers`` setting never makes
        ``strategy="sequential"`` fail.

    Notes
    -----
    ``timeout`` is checked between units: a unit that runs long is not interrupted
    (nothing can stop Python code safely from outside in the same process), but no unit
    starts after the deadline.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> with SequentialExecutor() as ex:
    ...     ex.map(abs, work_items([-2, 3]))
    [2, 3]
    """

    name = "sequential"
    in_process = True
    needs_picklable_fn = False
    reuses_pool = False
    default_n_workers = 1

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self.n_workers = 1

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[WorkItem],
        *,
        timeout: float | None = None,
    ) -> list:
        items = self._start_map(fn, items, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for i, item in enumerate(items):
            if deadline is not None and i > 0 and time.monotonic() > deadline:
                raise ExecutorTimeoutError(
                    f"'sequential' map did not finish within {timeout} s: {len(items) - i} of "
                    f"{len(items)} units not started (the next was {item.key}); sequential "
                    "checks the timeout between units"
                )
            try:
                out.append(fn(item.payload))
            except (Exception, SystemExit) as exc:
                raise UnitFailedError(
                    item.key, exc_type_name(exc), _safe_str(exc), _format_tb(exc)
                ) from exc
        return out

    map.__doc__ = Executor.map.__doc__
