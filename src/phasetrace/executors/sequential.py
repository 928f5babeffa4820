"""The ``sequential`` strategy: a plain loop in the calling process, the reference.

Every other strategy must return what this one returns. A unit's exception is re-raised
as itself, with its live traceback and the unit's key in a note, as the process strategies
do; ``sys.exit()`` in a unit becomes :class:`~phasetrace.errors.UnitFailedError` (it must
not end the caller, and cannot in a worker either).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from phasetrace.errors import ExecutorTimeoutError, UnitFailedError
from phasetrace.executors._wire import with_unit_note
from phasetrace.executors._worker import exc_type_name, format_tb, safe_str
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
    starts after the deadline. ``map`` runs lazily, one unit per result taken.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> with SequentialExecutor() as ex:
    ...     ex.map_items(abs, work_items([-2, 3]))
    [2, 3]
    """

    name = "sequential"
    in_process = True
    needs_picklable_fn = False
    reuses_pool = False
    default_n_workers = 1
    survives_fork = True

    def __init__(self, n_workers: int | None = None):
        super().__init__(n_workers)
        self.n_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self._check_open()
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except SystemExit as exc:
            future.set_exception(_wrapped(exc, "submit"))
        except Exception as exc:
            future.set_exception(exc)
        return future

    submit.__doc__ = Executor.submit.__doc__

    def _start(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        *,
        timeout: float | None,
        star: bool,
        chunksize: int | None,
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, item in enumerate(items):
            if deadline is not None and i > 0 and time.monotonic() > deadline:
                raise ExecutorTimeoutError(
                    f"'sequential' run did not finish within {timeout} s: {len(items) - i} of "
                    f"{len(items)} units not started (the next was {item.key}); sequential "
                    "checks the timeout between units"
                )
            try:
                yield fn(*item.payload) if star else fn(item.payload)
            except SystemExit as exc:
                raise _wrapped(exc, item.key) from exc
            except Exception as exc:
                with_unit_note(exc, item.key, "strategy 'sequential', in this process")
                raise


def _wrapped(exc: SystemExit, key: str) -> UnitFailedError:
    return UnitFailedError(key, exc_type_name(exc), safe_str(exc), format_tb(exc, False))
