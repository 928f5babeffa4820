"""Record traces from inside a JAX program: a host callback handed to phasetrace's executors.

Inference code written in JAX (gradient-based fits, particle filters, SMC) often decides
inside a jitted or vmapped function which models it needs. This module lets that code ask
for their traces. Register the graphs in a :class:`GraphStore` (or the default store,
:func:`register_graph`), which gives each one an int index. Then pass a batch of indices
to :func:`record_traces_callback` inside the JAX program. The host side turns the indices
into explicit work items through :func:`phasetrace.compute_traces` (canonical bytes, the
trace cache, the configured executor), keeps the traces in the store and returns an int32
status per index: 1 when the trace is recorded, 0 when recording failed. Workers never
see the store. They receive only the bytes of their work unit.

Why ``io_callback`` inside ``custom_vmap``, not ``pure_callback``
---------------------------------------------------------------
Recording is a side effect: it fills the store, and often nothing downstream reads the
status. Under ``jax.jit``, a ``pure_callback`` whose result is unused is dead code and is
removed (measured: 0 host calls). Even a used one may legally be run more than once, or
not at all. ``jax.experimental.io_callback`` is effectful, so jit keeps it whether or not
its result is used. On its own, though, it is batched by looping: one host call per
element under ``vmap``, and ``ordered=True`` cannot be vmapped at all. So the call is
wrapped in :class:`jax.custom_batching.custom_vmap`. Its batching rule calls the wrapped
function again on the batched indices, so every level of nested ``vmap`` folds into a
single ``io_callback`` of the whole index array: **one host call per batch**, with
``ordered`` either way. The host function takes indices of any shape, including the
size-1 leading axes that ``vmap_method="expand_dims"`` would add. It flattens them,
records and reshapes the status to the input shape. So :meth:`GraphStore.record` is also
a valid ``jax.pure_callback(..., vmap_method="expand_dims")`` target, if you keep its
result alive.

Errors
------
JAX turns an exception raised in a callback into ``JaxRuntimeError: INTERNAL:
CpuCallback error`` and drops its type. The bridge therefore never raises inside the
callback. A failure (a graph that fails validation, a worker that crashed, a unit that
raised, an index that is not registered) gives status 0 for the indices concerned and is
kept in the store with its real type. A note on it names the graph indices and content
keys; :class:`~phasetrace.errors.WorkerCrashedError` and
:class:`~phasetrace.errors.UnitFailedError` also carry the unit key as ``.key``. Get it
back after the JAX call:

- ``with errors_raised(): ...`` waits for the callbacks of the block to finish
  (``jax.effects_barrier``) and re-raises the first failure recorded during the block;
- :func:`raise_pending` / :meth:`GraphStore.raise_pending` do the same at any point;
- :meth:`GraphStore.trace` raises the failure of the index it is asked for;
- :meth:`GraphStore.failures` lists them without raising.

A failed index is tried again by the next call that asks for it.

Concurrency and idempotence
---------------------------
XLA may call the callback from its own threads: once per device when several are used,
possibly at the same time. A lock guards the store. An index is recorded at most once:
a call that asks for an index another thread is recording waits for that result and
does not record it again. Recorded traces are kept. Asking again costs only the lookup.

Settings
--------
Recording uses the store's own settings (``GraphStore(strategy="loky", n_workers=2)``).
Where the store leaves a setting out, the process-wide settings apply: :func:`phasetrace.configure`,
then the environment. A ``with phasetrace.config(...)`` block applies only when JAX runs
the callback in the thread that entered the block. On CPU, jit usually does, but
multi-device programs run callbacks on XLA's threads. So prefer the store's settings or
``configure``.

``strategy="pmap"`` stays rejected: ``jax.pmap`` would run this Python callback once per
device, in this process, on threads that share the GIL. Batch with ``jax.vmap`` instead,
as below. The one host call hands the whole batch to a process-pool executor, which
records the units in parallel.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import phasetrace as pt
>>> from phasetrace.jax._bridge import GraphStore
>>> store = GraphStore(strategy="sequential", cache=False)  # e.g. strategy="loky"
>>> idx = jnp.array([store.register(pt.models.kingman(n)) for n in (3, 4, 5)])
>>> @jax.jit
... def step(theta, indices):
...     store.callback(indices)  # runs although its result is unused
...     return theta * 2.0
>>> with store.errors_raised():
...     _ = jax.vmap(step, in_axes=(0, None))(jnp.ones(2), idx)
>>> [round(float(store.trace(int(i)).expectation([1.0])), 4) for i in idx]
[1.3333, 1.5, 1.6]
>>> store.stats.host_calls
1
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental import io_callback

from ..errors import InvalidGraphError
from ..graph import Graph
from ..pipeline import compute_traces, last_run_stats
from ..settings import UNSET, resolve
from ..trace import Trace

__all__ = [
    "BridgeStats",
    "GraphStore",
    "RecordingFailure",
    "default_store",
    "errors_raised",
    "get_trace",
    "raise_pending",
    "record_traces_callback",
    "register_graph",
]


@dataclass(frozen=True)
class RecordingFailure:
    """One index whose recording failed, with the error as it was raised.

    Attributes
    ----------
    index : int
        The graph index (``-1`` for a failure that concerns a whole host call).
    graph_key : str
        Content key of the graph (``""`` when the index is not registered).
    error : Exception
        The original exception, with its type (``InvalidGraphError``,
        ``WorkerCrashedError`` ...). One exception may be shared by several indices
        recorded in the same executor call.
    seq : int
        Order in which failures were recorded, store-wide.
    """

    index: int
    graph_key: str
    error: Exception
    seq: int


@dataclass(frozen=True)
class BridgeStats:
    """Counters of one :class:`GraphStore` (a snapshot, from :attr:`GraphStore.stats`).

    Attributes
    ----------
    host_calls : int
        Calls of the host function (one per batch when called through the callback).
    indices_requested : int
        Indices received in those calls, repeats and extra axes included.
    graphs_recorded : int
        Graphs handed to :func:`~phasetrace.compute_traces` with success. An index is
        counted at most once, however often or concurrently it was requested.
    units_recorded : int
        Work items the executor actually ran (cache misses), summed over the calls.
    failures : int
        Failed indices, counted each time one fails.
    """

    host_calls: int = 0
    indices_requested: int = 0
    graphs_recorded: int = 0
    units_recorded: int = 0
    failures: int = 0


class GraphStore:
    """Graphs registered by int index, and the traces recorded for them by the bridge.

    The store lives in the calling process. Workers only receive work items. All methods
    are thread-safe.

    Parameters
    ----------
    strategy, n_workers, cache, cache_dir, timeout
        Settings for recording (see :func:`phasetrace.configure`). A setting not given
        falls back to the process-wide configuration when the callback runs (see the
        module notes on ``config`` blocks). They are validated here: ``strategy="pmap"``
        raises :class:`~phasetrace.errors.StrategyRejectedError`.
    hierarchical : bool or None
        As for :func:`phasetrace.compute_traces`.

    Examples
    --------
    >>> import phasetrace as pt
    >>> store = GraphStore(strategy="sequential", cache=False)
    >>> i = store.register(pt.models.kingman(4))
    >>> store.register(pt.models.kingman(4)) == i  # same content, same index
    True
    >>> store.record([[i]]).tolist()  # any shape in, the same shape out
    [[1]]
    >>> round(float(store.trace(i).expectation([1.0])), 6)
    1.5
    """

    def __init__(
        self,
        *,
        strategy: Any = UNSET,
        n_workers: Any = UNSET,
        cache: Any = UNSET,
        cache_dir: Any = UNSET,
        timeout: Any = UNSET,
        hierarchical: bool | None = None,
    ):
        settings = dict(
            strategy=strategy,
            n_workers=n_workers,
            cache=cache,
            cache_dir=cache_dir,
            timeout=timeout,
        )
        resolve(**settings)  # validate now, in plain Python, not later inside a callback
        self._settings = {k: v for k, v in settings.items() if v is not UNSET}
        self._hierarchical = hierarchical
        self._cond = threading.Condition()
        self._graphs: list[Graph] = []
        self._keys: list[str] = []
        self._index_of: dict[str, int] = {}
        self._traces: dict[int, Trace] = {}
        self._inflight: set[int] = set()
        self._failed: dict[int, RecordingFailure] = {}
        self._pending: list[RecordingFailure] = []
        self._seq = 0
        self._stats = BridgeStats()
        self._fns: dict[bool, Callable[[jax.Array], jax.Array]] = {}

    # -- registration ------------------------------------------------------------------
    def register(self, graph: Graph) -> int:
        """Register ``graph`` and return its index. Equal graphs share one index.

        The store keeps a copy made from the canonical JSON. Later changes to ``graph``
        do not reach it; register the changed graph again to get a new index. The graph
        is validated when it is recorded, so an invalid graph is reported through the
        bridge (status 0, :class:`~phasetrace.errors.InvalidGraphError`).

        Parameters
        ----------
        graph : Graph

        Returns
        -------
        int

        Examples
        --------
        >>> import phasetrace as pt
        >>> store = GraphStore()
        >>> store.register(pt.models.kingman(3)), store.register(pt.models.kingman(5))
        (0, 1)
        """
        if not isinstance(graph, Graph):
            raise TypeError(f"register expects a phasetrace Graph, got {type(graph).__name__}")
        text = graph.to_json()
        key = graph.content_key()
        with self._cond:
            index = self._index_of.get(key)
            if index is None:
                index = len(self._graphs)
                self._graphs.append(Graph.from_json(text))
                self._keys.append(key)
                self._index_of[key] = index
            return index

    def register_many(self, graphs: Iterable[Graph]) -> np.ndarray:
        """Register several graphs; return their indices as an int32 array.

        Examples
        --------
        >>> import phasetrace as pt
        >>> GraphStore().register_many(pt.models.kingman(n) for n in (3, 4, 3)).tolist()
        [0, 1, 0]
        """
        return np.array([self.register(g) for g in graphs], dtype=np.int32)

    def __len__(self) -> int:
        with self._cond:
            return len(self._graphs)

    def graph(self, index: int) -> Graph:
        """The stored copy of the graph registered as ``index``."""
        with self._cond:
            self._check_index(index)
            return self._graphs[index]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self._graphs):
            raise IndexError(
                f"graph index {index} is not registered in this store "
                f"(it holds {len(self._graphs)} graphs, indices 0..{len(self._graphs) - 1})"
            )

    # -- results -----------------------------------------------------------------------
    def is_recorded(self, index: int) -> bool:
        """Whether the trace of ``index`` is available."""
        with self._cond:
            return index in self._traces

    def trace(self, index: int) -> Trace:
        """The trace recorded for ``index``.

        Raises
        ------
        Exception
            The error that made the last recording of ``index`` fail, with its own type
            (``InvalidGraphError``, ``WorkerCrashedError`` ...).
        LookupError
            When ``index`` was never recorded.
        IndexError
            When ``index`` is not registered.

        Examples
        --------
        >>> import phasetrace as pt
        >>> store = GraphStore(strategy="sequential", cache=False)
        >>> i = store.register(pt.models.kingman(3))
        >>> store.trace(i)
        Traceback (most recent call last):
        ...
        LookupError: graph index 0 has not been recorded yet; ...
        """
        with self._cond:
            self._check_index(index)
            if index in self._traces:
                return self._traces[index]
            failure = self._failed.get(index)
        if failure is not None:
            raise failure.error
        raise LookupError(
            f"graph index {index} has not been recorded yet; pass it to "
            "record_traces_callback inside your JAX program (or to store.record) first"
        )

    def failures(self) -> list[RecordingFailure]:
        """Failures not yet raised by :meth:`raise_pending` or :meth:`errors_raised`."""
        with self._cond:
            return list(self._pending)

    @property
    def stats(self) -> BridgeStats:
        """A snapshot of the store's counters (:class:`BridgeStats`)."""
        with self._cond:
            return self._stats

    def raise_pending(self) -> None:
        """Raise the first failure not raised yet, with its own type; forget the rest.

        Waits for outstanding callbacks first (:func:`jax.effects_barrier`), so it
        sees the failures of JAX calls already made, even those whose result is not
        ready yet. Does nothing when there is no failure.

        Examples
        --------
        >>> store = GraphStore(strategy="sequential", cache=False)
        >>> store.record([7]).tolist()
        [0]
        >>> store.raise_pending()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        IndexError: graph index 7 is not registered in this store ...
        """
        jax.effects_barrier()
        self._raise_since(0)

    @contextmanager
    def errors_raised(self) -> Iterator[GraphStore]:
        """Re-raise, after the block, the first recording failure that happened in it.

        On leaving the block, waits for outstanding callbacks (:func:`jax.effects_barrier`),
        then raises the first failure recorded since the block was entered, with its own
        type. The error has a note naming the indices and graph keys; a worker crash or
        unit failure also has ``.key``, the unit key. When the block itself ends with
        a ``JaxRuntimeError`` (another callback failed, for example), a recorded failure
        is raised in its place, with the ``JaxRuntimeError`` as its context.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> store = GraphStore(strategy="sequential", cache=False)
        >>> with store.errors_raised():  # doctest: +ELLIPSIS
        ...     store.callback(jnp.array([3]))
        Traceback (most recent call last):
        ...
        IndexError: graph index 3 is not registered in this store ...
        """
        with self._cond:
            start = self._seq
        try:
            yield self
        except jax.errors.JaxRuntimeError:
            jax.effects_barrier()
            self._raise_since(start)  # inside except: the JaxRuntimeError becomes __context__
            raise
        jax.effects_barrier()
        self._raise_since(start)

    def _raise_since(self, start: int) -> None:
        with self._cond:
            due = [f for f in self._pending if f.seq >= start]
            if not due:
                return
            self._pending = [f for f in self._pending if f.seq < start]
        first = due[0].error
        others = sorted({f.index for f in due if f.error is not first})
        if others:
            first.add_note(
                f"{len(others)} more graph index(es) failed as well: {others[:20]}"
                f"{' ...' if len(others) > 20 else ''} (see GraphStore.failures / .trace)"
            )
        raise first

    # -- recording (host side) ---------------------------------------------------------
    def record(self, indices: Any) -> np.ndarray:
        """Record the traces of ``indices`` (any shape); return the int32 status array.

        This is the host function of the callback. It also works outside JAX. Indices
        of any shape are accepted, including the size-1 leading axes added by
        ``vmap_method="expand_dims"``. They are flattened, deduplicated, recorded and
        the status is returned in the input shape: 1 when the trace is available, 0 when
        recording failed. Failures are kept (see :meth:`raise_pending`), never raised.
        Each index is recorded at most once: already recorded indices cost a lookup,
        and indices that another thread is recording are waited for.

        Parameters
        ----------
        indices : array_like of int

        Returns
        -------
        numpy.ndarray of int32, shape of ``indices``

        Examples
        --------
        >>> import phasetrace as pt
        >>> store = GraphStore(strategy="sequential", cache=False)
        >>> i = store.register(pt.models.kingman(3))
        >>> store.record(np.full((1, 2, 1), i)).shape
        (1, 2, 1)
        """
        arr = np.asarray(indices)
        if arr.dtype.kind not in "iu" and arr.size:  # np.asarray([]) is float64: allow it
            raise TypeError(f"graph indices must be integers, got dtype {arr.dtype}")
        flat = [int(i) for i in arr.reshape(-1)]
        wanted = list(dict.fromkeys(flat))  # unique, first-seen order
        with self._cond:
            self._bump(host_calls=1, indices_requested=len(flat))
            for i in wanted:
                if not 0 <= i < len(self._graphs):
                    try:
                        self._check_index(i)
                    except IndexError as exc:
                        self._fail_locked([i], exc)
            mine = [
                i
                for i in wanted
                if 0 <= i < len(self._graphs) and i not in self._traces and i not in self._inflight
            ]
            self._inflight.update(mine)
            graphs = [self._graphs[i] for i in mine]
        try:
            self._record_mine(mine, graphs)
        finally:
            with self._cond:
                self._inflight.difference_update(mine)
                self._cond.notify_all()
        with self._cond:
            # Indices that another thread was recording: wait for its result, don't redo it.
            self._cond.wait_for(lambda: self._inflight.isdisjoint(wanted))
            status = [1 if i in self._traces else 0 for i in flat]
        return np.asarray(status, dtype=np.int32).reshape(arr.shape)

    def _record_mine(self, mine: list[int], graphs: list[Graph]) -> None:
        # Validate one by one first: compute_traces rejects the whole call for one
        # invalid graph, which would fail every other index of the batch with it.
        valid, valid_graphs = [], []
        for i, g in zip(mine, graphs, strict=True):
            try:
                g.validate()
            except InvalidGraphError as exc:
                with self._cond:
                    self._fail_locked([i], exc)
            else:
                valid.append(i)
                valid_graphs.append(g)
        if not valid:
            return
        try:
            traces = compute_traces(valid_graphs, hierarchical=self._hierarchical, **self._settings)
        except Exception as exc:
            # One executor call for the batch: a crash or failed unit fails all of it (the
            # key on the error names the unit); the indices are retried by the next call.
            with self._cond:
                self._fail_locked(valid, exc)
            return
        run = last_run_stats()  # thread-local: the call just made in this thread
        with self._cond:
            for i, t in zip(valid, traces, strict=True):
                self._traces[i] = t
                self._failed.pop(i, None)
            self._pending = [f for f in self._pending if f.index not in self._traces]
            self._bump(graphs_recorded=len(valid), units_recorded=run.recorded if run else 0)

    def _fail_locked(self, indices: list[int], exc: Exception) -> None:
        keys = [self._keys[i] if 0 <= i < len(self._keys) else "" for i in indices]
        shown = ", ".join(
            f"{i} (graph {k[:12] or 'unregistered'})" for i, k in zip(indices, keys, strict=True)
        )
        exc.add_note(
            f"phasetrace.jax: raised while recording graph index(es) {shown} in a JAX host "
            "callback; status 0 was returned for them"
        )
        for i, k in zip(indices, keys, strict=True):
            failure = RecordingFailure(i, k, exc, self._seq)
            self._seq += 1
            self._pending.append(failure)
            if i >= 0:
                self._failed[i] = failure
        self._bump(failures=len(indices))

    def _bump(self, **counts: int) -> None:
        self._stats = replace(
            self._stats, **{k: getattr(self._stats, k) + v for k, v in counts.items()}
        )

    def _host(self, indices: np.ndarray) -> np.ndarray:
        """What ``io_callback`` calls: :meth:`record`, made unable to raise.

        An exception would reach the user as JAX's typeless ``INTERNAL`` error, so even
        an unexpected one is kept as a failure of the whole call.
        """
        try:
            return self.record(indices)
        except Exception as exc:
            with self._cond:
                self._fail_locked([-1], exc)
            return np.zeros(np.shape(indices), dtype=np.int32)

    # -- the JAX side ------------------------------------------------------------------
    def callback(self, indices: Any, *, ordered: bool = False) -> jax.Array:
        """Record ``indices`` from inside a JAX program; return the int32 status array.

        See :func:`record_traces_callback`, which calls this on the default store.
        """
        indices = jnp.asarray(indices)
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise TypeError(f"graph indices must be integers, got dtype {indices.dtype}")
        return self._batched_fn(bool(ordered))(indices.astype(jnp.int32))

    def _batched_fn(self, ordered: bool) -> Callable[[jax.Array], jax.Array]:
        with self._cond:
            fn = self._fns.get(ordered)
            if fn is None:
                fn = self._fns[ordered] = _make_batched_callback(self._host, ordered)
            return fn

    def __repr__(self) -> str:
        with self._cond:
            return (
                f"<GraphStore: {len(self._graphs)} graphs, {len(self._traces)} recorded, "
                f"{len(self._pending)} failures pending>"
            )


def _make_batched_callback(
    host: Callable[[np.ndarray], np.ndarray], ordered: bool
) -> Callable[[jax.Array], jax.Array]:
    """``io_callback(host)``, batched by ``custom_vmap`` into one host call per batch."""

    @custom_vmap
    def call(indices: jax.Array) -> jax.Array:
        shape = jax.ShapeDtypeStruct(indices.shape, jnp.int32)
        return io_callback(host, shape, indices, ordered=ordered)

    @call.def_vmap
    def _rule(axis_size: int, in_batched: list[bool], indices: jax.Array):
        (batched,) = in_batched
        if not batched:
            indices = jnp.broadcast_to(indices, (axis_size, *indices.shape))
        # Calling ``call`` again, not io_callback: an enclosing vmap then batches this
        # call through the same rule, so nested vmaps still make one host call.
        return call(indices), True

    return call


# -- the default store ---------------------------------------------------------------------
_default: GraphStore | None = None
_default_lock = threading.Lock()


def default_store() -> GraphStore:
    """The module-level store used when no ``store=`` is given (created on first use).

    It records with the process-wide settings (:func:`phasetrace.configure`).
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = GraphStore()
        return _default


def _resolve_store(store: GraphStore | None) -> GraphStore:
    # Not ``store or default_store()``: an empty GraphStore has len 0 and is falsy.
    return default_store() if store is None else store


def register_graph(graph: Graph) -> int:
    """Register ``graph`` in the default store; return its index.

    See :meth:`GraphStore.register`.
    """
    return default_store().register(graph)


def get_trace(index: int, *, store: GraphStore | None = None) -> Trace:
    """The trace recorded for ``index`` (see :meth:`GraphStore.trace`)."""
    return _resolve_store(store).trace(index)


def raise_pending(store: GraphStore | None = None) -> None:
    """Raise the first pending recording failure (see :meth:`GraphStore.raise_pending`)."""
    _resolve_store(store).raise_pending()


def errors_raised(store: GraphStore | None = None) -> AbstractContextManager[GraphStore]:
    """Context manager: re-raise the recording failures of the block.

    See :meth:`GraphStore.errors_raised`.
    """
    return _resolve_store(store).errors_raised()


def record_traces_callback(
    indices: Any, *, store: GraphStore | None = None, ordered: bool = False
) -> jax.Array:
    """Record the traces of registered graphs from inside a JAX program.

    Works under ``jax.jit``, ``jax.vmap`` (nested too) and ``jax.grad``; a vmapped call
    makes **one** host call for the whole batch, and jit never drops the call, even when
    its result is unused (``io_callback`` in ``custom_vmap``; see the module notes).

    Parameters
    ----------
    indices : array_like of int
        Indices returned by :func:`register_graph` / :meth:`GraphStore.register`.
    store : GraphStore, optional
        Defaults to :func:`default_store`.
    ordered : bool
        Order the host calls with the program's other ordered effects (``io_callback``'s
        ``ordered``); also batched into one call under ``vmap``.

    Returns
    -------
    jax.Array of int32, shape of ``indices``
        1 where the trace is recorded, 0 where recording failed; get the error with
        :func:`errors_raised`, :func:`raise_pending` or :func:`get_trace`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import phasetrace as pt
    >>> store = GraphStore(strategy="sequential", cache=False)
    >>> idx = jnp.array([store.register(pt.models.kingman(n)) for n in (3, 4)])
    >>> jax.jit(jax.vmap(lambda i: record_traces_callback(i, store=store)))(idx).tolist()
    [1, 1]
    >>> store.stats.host_calls
    1
    """
    return _resolve_store(store).callback(indices, ordered=ordered)
