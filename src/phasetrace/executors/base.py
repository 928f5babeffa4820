"""The executor protocol: what every strategy implements, and the work item it runs.

Data flow: the caller builds explicit :class:`WorkItem` objects (plain, picklable data:
an index, a content key and a payload such as the canonical bytes of a graph or unit)
and calls ``executor.map(fn, items)`` with a module-level ``fn``. The executor runs
``fn(item.payload)`` somewhere (this process, a pool, a cluster) and returns the results
**in input order**. Workers never read parent-process globals: all they need is in
the item.

Guarantees every strategy gives (modelled on :class:`concurrent.futures.Executor`):

- ``map`` returns ``[fn(item.payload) for item in items]`` in input order, whatever
  order the units finished in;
- an exception raised by ``fn`` becomes :class:`~phasetrace.errors.UnitFailedError`
  carrying the item's key, the original type and message and the worker traceback;
- a worker that dies becomes :class:`~phasetrace.errors.WorkerCrashedError` naming the
  key of the unit in flight; the next call gets a fresh pool;
- ``close()`` may be called twice; ``map`` after ``close()`` raises
  :class:`~phasetrace.errors.ExecutorClosedError`;
- executors are context managers whose exit calls ``close()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from phasetrace.errors import ExecutorClosedError, StrategyError


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One independent piece of work, shipped to a worker as it is.

    Parameters
    ----------
    index : int
        Position in the caller's list (results come back in this order).
    key : str
        Content key of the unit (hex sha256); named in every error about the unit.
    payload : Any
        Picklable input of the work function, usually canonical bytes.
    cost : float
        Estimated run time in seconds; used by ``auto`` and by chunking. 0 if unknown.
    """

    index: int
    key: str
    payload: Any
    cost: float = 0.0


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of :class:`~phasetrace.errors.UnitFailedError`, like
    CPython's ``concurrent.futures.process._RemoteTraceback``: Python prints it above the
    caller's traceback under "The above exception was the direct cause of ...".
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def available_cpus() -> int:
    """Number of CPUs this process may run on (its affinity mask where the OS has one).

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux: no affinity mask to read
        return os.cpu_count() or 1


def resolve_n_workers(n_workers: int | None, default: int | None = None) -> int:
    """Turn an ``n_workers`` setting into a positive worker count (joblib's ``n_jobs`` rules).

    This is the one place where the meaning of ``n_workers`` is defined:

    - a positive int is taken as is;
    - ``-1`` means all CPUs, ``-2`` all but one, and in general ``cpu_count() + 1 + n``;
    - ``None`` means the strategy's default (``default``; all CPUs when that is ``None``);
    - ``0``, values below ``-cpu_count()``, booleans and non-integers are errors.

    Parameters
    ----------
    n_workers : int or None
        The requested count.
    default : int or None
        The strategy's default count, used when ``n_workers`` is None.

    Returns
    -------
    int
        A count >= 1.

    Raises
    ------
    StrategyError
        For a value with no meaning (the message names the rule broken).

    Examples
    --------
    >>> resolve_n_workers(3)
    3
    >>> resolve_n_workers(-1) == available_cpus()
    True
    >>> resolve_n_workers(None, default=1)
    1
    """
    if n_workers is None:
        return available_cpus() if default is None else resolve_n_workers(default)
    # bool is an int subclass; n_workers=True is a mistake, not "one worker"
    if isinstance(n_workers, bool) or not isinstance(n_workers, int):
        raise StrategyError(
            f"n_workers must be an int or None, got {type(n_workers).__name__} {n_workers!r}"
        )
    if n_workers > 0:
        return n_workers
    if n_workers == 0:
        raise StrategyError(
            "n_workers=0 has no meaning: use a positive count, -1 for all CPUs, "
            "or None for the strategy's default"
        )
    cpus = available_cpus()
    if n_workers < -cpus:
        raise StrategyError(
            f"n_workers={n_workers} asks for cpu_count() + 1 + ({n_workers}) = "
            f"{cpus + 1 + n_workers} workers on a machine with {cpus} CPUs; "
            f"negative values must be >= -{cpus}"
        )
    return cpus + 1 + n_workers


def work_items(
    payloads: Iterable[Any],
    *,
    keys: Iterable[str] | None = None,
    costs: Iterable[float] | None = None,
) -> list[WorkItem]:
    """Wrap plain payloads in :class:`WorkItem` objects (index = position).

    Parameters
    ----------
    payloads : iterable
        Picklable inputs of the work function.
    keys : iterable of str, optional
        Content keys; ``"item-<index>"`` when not given.
    costs : iterable of float, optional
        Estimated seconds per item; 0 (unknown) when not given.

    Returns
    -------
    list of WorkItem

    Examples
    --------
    >>> [it.key for it in work_items(["a", "b"])]
    ['item-0', 'item-1']
    """
    payloads = list(payloads)
    keys = [f"item-{i}" for i in range(len(payloads))] if keys is None else list(keys)
    costs = [0.0] * len(payloads) if costs is None else [float(c) for c in costs]
    if not len(keys) == len(costs) == len(payloads):
        raise ValueError(
            f"payloads, keys and costs differ in length: {len(payloads)}, {len(keys)}, {len(costs)}"
        )
    return [
        WorkItem(i, k, p, c) for i, (k, p, c) in enumerate(zip(keys, payloads, costs, strict=True))
    ]


def check_timeout(timeout: float | None) -> None:
    """Refuse a ``timeout`` that is not a positive number of seconds or None."""
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


def check_items(items: Sequence[WorkItem] | Iterable[WorkItem]) -> list[WorkItem]:
    """Return ``items`` as a list, raising ``TypeError`` for anything that is not a WorkItem."""
    items = list(items)
    for i, item in enumerate(items):
        if not isinstance(item, WorkItem):
            raise TypeError(
                f"items[{i}] is a {type(item).__name__}, not a WorkItem; wrap plain payloads "
                "with phasetrace.executors.work_items(payloads)"
            )
    return items


class Executor:
    """Base class of every strategy: runs ``fn(item.payload)`` for each item, in input order.

    A subclass writes :meth:`map` (and :meth:`close` when it holds resources). The
    guarantees of the module docstring hold for every subclass.

    Class attributes (capabilities, read by ``auto`` and by :func:`available_strategies`):

    ``name``
        The registry name.
    ``in_process``
        True when ``fn`` runs in the calling process.
    ``needs_picklable_fn``
        True when ``fn`` must be picklable by reference (a module-level function of an
        importable module); False when the strategy also ships lambdas and closures.
    ``reuses_pool``
        True when workers outlive one ``map`` call.
    ``default_n_workers``
        Worker count used for ``n_workers=None``; ``None`` means all available CPUs.

    Parameters
    ----------
    n_workers : int or None
        See :func:`resolve_n_workers`.

    Examples
    --------
    >>> from phasetrace.executors import get_executor, work_items
    >>> with get_executor("sequential") as ex:
    ...     ex.map(abs, work_items([-1, 2, -3]))
    [1, 2, 3]
    """

    name: str = "base"
    in_process: bool = False
    needs_picklable_fn: bool = True
    reuses_pool: bool = False
    default_n_workers: int | None = None

    def __init__(self, n_workers: int | None = None):
        self.n_workers = resolve_n_workers(n_workers, self.default_n_workers)
        self._closed = False

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[WorkItem], *, timeout: float | None = None
    ) -> list:
        """Return ``[fn(item.payload) for item in items]``, computed by this strategy.

        Parameters
        ----------
        fn : callable
            A module-level function of one argument.
        items : iterable of WorkItem
            The work; results come back in this order.
        timeout : float, optional
            Seconds the whole call may take; past it the call raises
            :class:`~phasetrace.errors.ExecutorTimeoutError`.

        Returns
        -------
        list
            One result per item, in input order.

        Raises
        ------
        UnitFailedError
            For the first item (in input order) whose ``fn`` raised.
        WorkerCrashedError
            When a worker died; the message names the unit it was running.
        ExecutorTimeoutError
            When ``timeout`` passed.
        ExecutorClosedError
            After :meth:`close`.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers. Safe to call twice; ``map`` afterwards raises."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError(f"the {self.name!r} executor was used after close()")

    def _start_map(
        self, fn: Callable[[Any], Any], items: Iterable[WorkItem], timeout: float | None
    ) -> list[WorkItem]:
        """The checks every pooled ``map`` starts with; returns the items as a list."""
        self._check_open()
        items = check_items(items)
        check_timeout(timeout)
        if items and not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        return items

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} name={self.name!r} n_workers={self.n_workers} {state}>"
