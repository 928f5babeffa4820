"""The executor protocol: a :class:`concurrent.futures.Executor`, plus explicit work items.

Every strategy is a standard executor: ``submit(fn, /, *args, **kwargs)`` returns a
:class:`concurrent.futures.Future`; ``map(fn, *iterables, timeout=None, chunksize=None)``
starts all the work at once and yields results in input order; ``shutdown(wait=True, *,
cancel_futures=False)`` releases the workers (a second call is safe; ``submit`` or ``map``
afterwards raises :class:`~phasetrace.errors.ExecutorClosedError`, a ``RuntimeError`` as
in the standard library); executors are context managers. So a phasetrace executor can be
used wherever a standard one is expected, and any standard executor can be adopted as a
strategy (:mod:`phasetrace.executors.adopted`).

On top of that, the pipeline hands over **explicit work items** (:class:`WorkItem`: a
key naming the unit in every error, and a cost estimate that chunking and ``auto`` use)
with ``map_items(fn, items, timeout=None)``, which returns the list of results.

Guarantees every strategy gives:

- results come back in input order, whatever order the units finished in;
- an exception raised by ``fn`` is re-raised with its own type, the worker's traceback as
  ``__cause__`` and the unit's key in a note (PEP 678);
- a worker that dies raises :class:`~phasetrace.errors.WorkerCrashedError` (also a
  :class:`concurrent.futures.process.BrokenProcessPool`) naming the unit it was running;
  the next call gets a fresh pool;
- ``timeout`` bounds the whole call, and past it
  :class:`~phasetrace.errors.ExecutorTimeoutError` (a ``TimeoutError``) is raised.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from phasetrace.errors import ExecutorClosedError, StrategyError
from phasetrace.executors._wire import RemoteTraceback

__all__ = [
    "Executor",
    "RemoteTraceback",
    "WorkItem",
    "available_cpus",
    "resolve_n_workers",
    "work_items",
]


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


_live: weakref.WeakSet[Executor] = weakref.WeakSet()


def live_executors() -> list[Executor]:
    """Every phasetrace executor of this process that is not shut down yet."""
    return [e for e in list(_live) if not e.closed]


#: Process-wide machinery of other libraries that a forked child cannot use once the
#: parent has used it (joblib's loky pool, Dask's event loop): used here, and used by an
#: ancestor of this process before it forked.
_fork_unsafe_used: set[str] = set()
_fork_unsafe_inherited: set[str] = set()


def note_fork_unsafe(what: str) -> None:
    """Record that this process now uses ``what``, which a forked child cannot use again."""
    _fork_unsafe_used.add(what)


def check_not_inherited(what: str, strategy: str) -> None:
    """Raise :class:`~phasetrace.errors.StrategyError` at once (rather than wait forever)
    when ``what`` was used by the parent of this forked process."""
    if what in _fork_unsafe_inherited:
        raise StrategyError(
            f"strategy {strategy!r} cannot run in this process: {what} was started in the "
            "parent before this process forked (os.fork, or a 'fork' multiprocessing pool), "
            "and it does not work in a forked child (it would wait forever). Use strategy "
            "'loky' or 'spawn' in the child, or start child processes with the 'spawn' or "
            "'forkserver' method."
        )


def _after_fork_in_child() -> None:
    """Let go of the executors a forked child inherits.

    Their workers, threads and pipes belong to the parent: a call on a copy would wait
    forever for threads the child does not have, and shutting a copy down could end the
    parent's workers. So each copy is marked closed without touching anything, and using
    it raises :class:`~phasetrace.errors.ExecutorClosedError` saying why; a strategy given
    by name gets a fresh executor in the child (:func:`phasetrace.settings.get_executor_for`).
    """
    for executor in list(_live):
        executor._shutdown_lock = threading.Lock()
        if executor.survives_fork:
            continue
        executor._closed = True
        executor._forked = True
        _live.discard(executor)
    _fork_unsafe_inherited.update(_fork_unsafe_used)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask and any cgroup CPU quota.

    A container limited to 2 CPUs on a 64-core host gets 2 (read by loky's public
    ``cpu_count``, which honours cgroup v1 and v2 quotas and the affinity mask).

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        from loky import cpu_count
    except ImportError:  # pragma: no cover - loky is a core dependency
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    return max(1, int(cpu_count()))


def resolve_n_workers(n_workers: int | None, default: int | None = None) -> int:
    """Turn an ``n_workers`` setting into a worker count. The one definition of its meaning:

    - a positive int is taken as is;
    - ``None`` is the strategy's default (``default``; all available CPUs when that is
      ``None``, which is the default of the pooled strategies);
    - a negative int counts back from the CPUs, as joblib's ``n_jobs`` does: ``-1`` is
      all of them, ``-2`` all but one, ``n`` is ``cpus + 1 + n``, and never fewer than 1;
    - ``0``, booleans and non-integers are errors.

    "CPUs" are the ones this process may use (:func:`available_cpus`: affinity and cgroup
    quota).

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
    >>> resolve_n_workers(-1000)
    1
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
    return max(1, available_cpus() + 1 + n_workers)


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


class Executor(concurrent.futures.Executor):
    """Base class of every strategy: a :class:`concurrent.futures.Executor`.

    A subclass writes :meth:`submit`, :meth:`_start` (dispatch work items, return an
    iterator over their results in order) and, when it holds resources,
    :meth:`_shutdown`. The guarantees of the module docstring hold for every subclass.

    Class attributes (capabilities, read by ``auto`` and by ``available_strategies``):

    ``name``
        The registry name.
    ``in_process``
        True when ``fn`` runs in the calling process.
    ``needs_picklable_fn``
        True when ``fn`` must be picklable by reference (a module-level function of an
        importable module); False when the strategy also ships lambdas and closures.
    ``reuses_pool``
        True when workers outlive one call.
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
    ...     list(ex.map(abs, [-1, 2, -3]))
    ...     ex.submit(pow, 2, 10).result()
    ...     ex.map_items(abs, work_items([-4]))
    [1, 2, 3]
    1024
    [4]
    """

    name: str = "base"
    in_process: bool = False
    needs_picklable_fn: bool = True
    reuses_pool: bool = False
    default_n_workers: int | None = None
    #: Whether a forked child may go on using its copy (no workers, threads or pipes).
    survives_fork: bool = False
    _forked: bool = False

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check strategy option values before any executor is made.

        ``configure`` and ``config`` call the strategy factory's ``check_options`` (when
        it has one) with the options given, so a bad value fails where it is set, not
        at the first call. Subclasses with options override this; raise
        :class:`~phasetrace.errors.StrategyError` for a bad value.
        """

    def __init__(self, n_workers: int | None = None):
        self.n_workers = resolve_n_workers(n_workers, self.default_n_workers)
        self._closed = False
        self._shutdown_lock = threading.Lock()
        _live.add(self)

    # -- concurrent.futures.Executor -------------------------------------------------------
    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; return a :class:`concurrent.futures.Future`."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`: ``fn(*args)`` for each tuple of
        arguments, all started at once, results yielded in input order.

        Parameters
        ----------
        fn : callable
            A module-level function (strategies with ``needs_picklable_fn`` False also
            take lambdas and closures).
        *iterables
            The arguments, one iterable per parameter of ``fn``.
        timeout : float, optional
            Seconds from this call within which every result must be available, else
            :class:`~phasetrace.errors.ExecutorTimeoutError` (a ``TimeoutError``).
        chunksize : int, optional
            Items sent together to a worker; by default chunks are planned from the
            number of workers.

        Returns
        -------
        iterator
            The results; an exception of ``fn`` is raised when its result is reached.
        """
        self._check_open()
        check_timeout(timeout)
        if chunksize is not None and (isinstance(chunksize, bool) or not chunksize >= 1):
            raise ValueError(f"chunksize must be a positive int or None, got {chunksize!r}")
        payloads = list(zip(*iterables, strict=False)) if iterables else []
        items = work_items(payloads)
        if items and not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        return self._start(fn, items, timeout=timeout, star=True, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the workers. Safe to call twice; ``submit`` and ``map`` afterwards raise.

        ``wait=False`` returns at once; ``cancel_futures=True`` cancels queued work.
        """
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown(wait=wait, cancel_futures=cancel_futures)

    # -- explicit work items -----------------------------------------------------------------
    def map_items(
        self, fn: Callable[[Any], Any], items: Iterable[WorkItem], *, timeout: float | None = None
    ) -> list:
        """Return ``[fn(item.payload) for item in items]``, computed by this strategy.

        The pipeline's entry point: items carry content keys (named in every error) and
        cost estimates (used for chunking, and by ``auto``).

        Raises
        ------
        Exception
            The first unit's exception in input order, with its own type, the worker
            traceback as ``__cause__`` and the unit's key in a note.
        WorkerCrashedError
            When a worker died; the message names the unit it was running.
        SerializationError
            When ``fn``, a payload or a result cannot travel.
        ExecutorTimeoutError
            When ``timeout`` passed.
        ExecutorClosedError
            After :meth:`shutdown`.
        """
        self._check_open()
        items = check_items(items)
        check_timeout(timeout)
        if items and not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        return list(self._start(fn, items, timeout=timeout, star=False, chunksize=None))

    # -- for subclasses ------------------------------------------------------------------------
    def _start(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        *,
        timeout: float | None,
        star: bool,
        chunksize: int | None,
    ) -> Iterator[Any]:
        """Dispatch the items now; return an iterator over their results, in order."""
        raise NotImplementedError

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Release resources (called once)."""

    def close(self) -> None:
        """``shutdown(wait=True)``."""
        self.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._forked:
            raise ExecutorClosedError(
                f"the {self.name!r} executor was made before this process forked: its workers "
                "belong to the parent process. Make a new executor in the child (a strategy "
                "given by name, as in configure(strategy='loky'), gets one by itself)"
            )
        if self._closed:
            raise ExecutorClosedError(f"the {self.name!r} executor was used after shutdown()")

    def __repr__(self) -> str:
        state = "shut down" if self._closed else "open"
        return f"<{type(self).__name__} name={self.name!r} n_workers={self.n_workers} {state}>"
