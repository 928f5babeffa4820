"""``compute_trace`` / ``compute_traces``: decompose → cache → executor → stitch.

Data flow (``architecture.md``): each graph's whole trace is looked up by the graph's
content key; the others are validated and cut into work units
(:func:`phasetrace.scc.decompose`); every unit worth an entry of its own (an estimated
:data:`UNIT_CACHE_MIN_OPS` ops or more) is looked up by its content key in the
in-process memory cache, then on disk; the missing units, deduplicated by key across all
graphs of the call, go to the configured executor as explicit work items (their
canonical bytes); the units worth keeping are stored (atomically), each graph's trace is
stitched from its units in π order and stored whole. Workers only record: the cache lives
in the calling process. Before recording, the call is refused if it would not fit in the
free memory (:class:`~phasetrace.errors.InsufficientMemoryError`).

Because :func:`phasetrace.record_trace` stitches the same unit recordings, the result is
bitwise identical to it, whatever strategy ran the units and whether they came from the
cache: the digests are equal.

With ``hierarchical=False`` a graph is one work item instead (its canonical JSON), recorded
whole in a worker; small graphs go this way by default, as units would only add dispatch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _work
from .cache import TraceCache, default_cache_dir
from .elimination import check_recording_memory, estimated_ops
from .errors import ExecutorTimeoutError, TraceFormatError
from .executors.base import WorkItem
from .graph import Graph
from .scc import Decomposition, WorkUnit, decompose
from .settings import UNSET, Settings, resolve, using_executor
from .structure import check_trace_matches_graph, check_unit_arrays
from .trace import Trace, stitch

logger = logging.getLogger("phasetrace.pipeline")

#: ``hierarchical=None`` splits graphs with at least this many vertices into units.
HIERARCHICAL_MIN_VERTICES = 200
#: Estimated recording time per op of :func:`~phasetrace.elimination.estimated_ops`
#: (seconds), measured here.
SECONDS_PER_OP = 1.5e-6
#: Show a progress bar automatically when recording is expected to take this long.
PROGRESS_MIN_SECONDS = 3.0
#: A unit gets a cache entry of its own (memory and disk) when its recording is estimated
#: at this many ops or more (about 15 ms here). Writing and reading back an entry costs
#: about a millisecond, so a smaller unit is cheaper to record again: a graph of many
#: small units then writes one file (its whole trace) instead of one per unit, and its
#: units are not looked up either. Whole traces are always cached.
UNIT_CACHE_MIN_OPS = 10_000


@dataclass
class RunStats:
    """What one ``compute_trace(s)`` call did.

    Attributes
    ----------
    graphs : int
    units : int
        Work items needed by the graphs (units, or whole graphs when not hierarchical).
    unique : int
        Distinct keys among them.
    from_memory, from_disk, recorded : int
        Where the distinct items came from.
    traces_from_cache : int
        Graphs whose whole trace was served at once (from this process's memo of the
        graph object, or from disk by the graph's content key): nothing was validated,
        decomposed, looked up or stitched for them.
    strategy : str
        The strategy resolved for the call (``auto`` reports its choice, if it made one).
    sccs_taped, sccs_solved : int
        Which path each strongly connected component of the returned traces takes: its
        elimination recorded op by op, or a solve block factorised at evaluation time
        (summed over the graphs; per SCC: :meth:`Trace.unit_sizes`).
    largest_taped, largest_solved : int
        States of the largest SCC on each path (0: none).
    n_workers : int or None
    seconds : dict of str to float
        Wall time per stage: ``decompose``, ``lookup``, ``record``, ``store``, ``stitch``,
        ``total``.
    """

    graphs: int = 0
    units: int = 0
    unique: int = 0
    from_memory: int = 0
    from_disk: int = 0
    recorded: int = 0
    traces_from_cache: int = 0
    sccs_taped: int = 0
    sccs_solved: int = 0
    largest_taped: int = 0
    largest_solved: int = 0
    strategy: str = ""
    n_workers: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        stages = ", ".join(f"{k} {v:.3f} s" for k, v in self.seconds.items())
        whole = f"{self.traces_from_cache} whole from cache, " if self.traces_from_cache else ""
        return (
            f"{self.graphs} graph(s), {whole}{self.units} unit(s) ({self.unique} distinct): "
            f"{self.from_memory} from memory, {self.from_disk} from disk, {self.recorded} "
            f"recorded on {self.strategy!r}; SCCs: {self.sccs_taped} taped (largest "
            f"{self.largest_taped}), {self.sccs_solved} solve blocks (largest "
            f"{self.largest_solved}); {stages}"
        )

    def count_paths(self, traces) -> None:
        """Fill the SCC path counts from the traces returned."""
        for trace in traces:
            sizes, solved = trace.unit_sizes()
            self.sccs_taped += int((~solved).sum())
            self.sccs_solved += int(solved.sum())
            if (~solved).any():
                self.largest_taped = max(self.largest_taped, int(sizes[~solved].max()))
            if solved.any():
                self.largest_solved = max(self.largest_solved, int(sizes[solved].max()))


_last_stats = threading.local()
_stats_lock = threading.Lock()  # the cache writer thread times its stage too
_caches: dict[tuple, TraceCache] = {}
_caches_lock = threading.Lock()
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> (version, plan)
_traces: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> (version, trace)
_graph_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> (version, key)


def _after_fork_in_child() -> None:
    """Fresh locks and caches in a forked child: a thread of the parent (the cache writer)
    may have held them at the fork."""
    global _stats_lock, _caches_lock
    _stats_lock, _caches_lock = threading.Lock(), threading.Lock()
    _caches.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def last_run_stats() -> RunStats | None:
    """Statistics of the last ``compute_trace(s)`` call made in this thread.

    Examples
    --------
    >>> import phasetrace as pt
    >>> _ = pt.compute_trace(pt.models.kingman(6), cache=False, strategy="sequential")
    >>> pt.last_run_stats().graphs
    1
    """
    return getattr(_last_stats, "value", None)


def get_cache(settings: Settings) -> TraceCache:
    """The process-wide :class:`TraceCache` for these settings (memory LRU kept across calls)."""
    directory = settings.cache_dir or str(default_cache_dir())
    key = (directory, settings.cache)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            # cache=False means no cache at all: neither disk nor the memory layer.
            memory_items = 512 if settings.cache else 0
            cache = _caches[key] = TraceCache(
                directory, enabled=settings.cache, memory_items=memory_items
            )
        return cache


def compute_trace(
    graph: Graph,
    *,
    hierarchical: bool | None = None,
    strategy: Any = UNSET,
    n_workers: Any = UNSET,
    cache: Any = UNSET,
    cache_dir: Any = UNSET,
    progress: Any = UNSET,
    timeout: Any = UNSET,
) -> Trace:
    """Record ``graph``'s trace via the cache and the configured executor.

    Parameters
    ----------
    graph : Graph
    hierarchical : bool or None
        Split into SCC work units (True), record whole (False), or decide by size
        (None: units from :data:`HIERARCHICAL_MIN_VERTICES` vertices on).
    strategy, n_workers, cache, cache_dir, progress, timeout
        Override the configured settings for this call (see :func:`phasetrace.configure`).

    Returns
    -------
    Trace
        Bitwise identical to ``record_trace(graph)`` (equal digests).

    Examples
    --------
    >>> import phasetrace as pt
    >>> g = pt.models.two_island(6)
    >>> tr = pt.compute_trace(g, strategy="sequential", cache=False)
    >>> tr.digest() == pt.record_trace(g).digest()
    True
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"compute_trace expects a phasetrace.Graph, got {type(graph).__name__}")
    return compute_traces(
        [graph],
        hierarchical=hierarchical,
        strategy=strategy,
        n_workers=n_workers,
        cache=cache,
        cache_dir=cache_dir,
        progress=progress,
        timeout=timeout,
    )[0]


def compute_traces(
    graphs: Iterable[Graph],
    *,
    hierarchical: bool | None = None,
    strategy: Any = UNSET,
    n_workers: Any = UNSET,
    cache: Any = UNSET,
    cache_dir: Any = UNSET,
    progress: Any = UNSET,
    timeout: Any = UNSET,
) -> list[Trace]:
    """Record the traces of many graphs, in input order, on the configured executor.

    Every graph is validated before anything is dispatched. Work is deduplicated by
    content key across the whole call, looked up in the cache, and only what is missing
    is recorded. See :func:`compute_trace` for the parameters.

    Examples
    --------
    >>> import phasetrace as pt
    >>> gs = [pt.models.kingman(n) for n in (3, 4, 5)]
    >>> [round(float(t.expectation([1.0])), 6) for t in pt.compute_traces(gs, cache=False)]
    [1.333333, 1.5, 1.6]
    """
    if isinstance(graphs, Graph | str | bytes) or not isinstance(graphs, Iterable):
        raise TypeError(
            "compute_traces expects an iterable of phasetrace.Graph (for one graph use "
            f"compute_trace), got {type(graphs).__name__}"
        )
    if hierarchical is not None and not isinstance(hierarchical, bool | np.bool_):
        raise TypeError(
            f"hierarchical must be True, False or None, got {hierarchical!r} "
            f"({type(hierarchical).__name__})"
        )
    hierarchical = None if hierarchical is None else bool(hierarchical)
    t_start = time.perf_counter()
    settings = resolve(
        strategy=strategy,
        n_workers=n_workers,
        cache=cache,
        cache_dir=cache_dir,
        progress=progress,
        timeout=timeout,
    )
    graphs = list(graphs)
    for i, g in enumerate(graphs):
        if not isinstance(g, Graph):
            raise TypeError(f"graphs[{i}] is a {type(g).__name__}, not a phasetrace.Graph")
    strategy = settings.strategy if isinstance(settings.strategy, str) else "executor object"
    stats = RunStats(graphs=len(graphs), strategy=strategy, n_workers=settings.n_workers)
    store = get_cache(settings)
    with _timed(stats, "lookup"):
        traces, keys = _whole_traces(graphs, store, settings, stats)
    todo = [i for i, t in enumerate(traces) if t is None]
    with _timed(stats, "decompose"):
        plans = [_plan(graphs[i], hierarchical) for i in todo]
    items = _unique_items(plans)
    stats.units = sum(len(p.keys) for p in plans)
    stats.unique = len(items)
    results: dict[str, dict[str, np.ndarray]] = {}
    kept = _kept_keys(plans, store)
    with _timed(stats, "lookup"):
        missing = _lookup(store, items, results, stats, kept)
    _check_memory(plans, missing, settings)
    with _timed(stats, "record"):
        recorded = _record(missing, settings, stats)
    for item, arrays in zip(missing, recorded, strict=True):
        results[item.key] = arrays
    # Writing the cache (checksums, files: mostly GIL-free) overlaps with stitching; the
    # thread is joined before returning, so its warnings belong to this call.
    keep = [(it, arrays) for it, arrays in zip(missing, recorded, strict=True) if it.key in kept]
    writer = threading.Thread(target=_store_all, args=(store, keep, stats))
    writer.start()
    try:
        with _timed(stats, "stitch"):
            for i, p in zip(todo, plans, strict=True):
                traces[i] = p.finish(results)
    finally:
        writer.join()
    with _timed(stats, "store"):
        _store_whole(store, settings, [(keys[i], graphs[i], traces[i]) for i in todo])
    stats.count_paths(traces)
    stats.seconds["total"] = time.perf_counter() - t_start
    _last_stats.value = stats
    logger.info("compute_traces: %s", stats)
    return traces


# -- whole traces ------------------------------------------------------------------------------
def _graph_key(graph: Graph) -> str:
    """The cache key of a whole graph's trace: its content key and the recorder version."""
    memo = _graph_keys.get(graph)
    if memo is not None and memo[0] == graph._version:
        return memo[1]
    key = _cache_key(b"trace", graph.content_key().encode())
    _graph_keys[graph] = (graph._version, key)
    return key


def _whole_traces(graphs, store: TraceCache, settings: Settings, stats: RunStats):
    """Traces served whole, without validating or decomposing: from this process's memo
    of the graph object, or from the disk cache by the graph's content key.

    A hit is safe without validation: the entry was recorded from a graph with exactly
    this content, which passed validation then.
    """
    traces: list[Trace | None] = [None] * len(graphs)
    keys: list[str | None] = [None] * len(graphs)
    if not settings.cache:
        return traces, keys
    for i, graph in enumerate(graphs):
        if not isinstance(graph, Graph):
            continue  # reported by the planning step
        memo = _traces.get(graph)
        if memo is not None and memo[0] == graph._version:
            traces[i] = memo[1]
            stats.traces_from_cache += 1
            continue
        keys[i] = _graph_key(graph)
        hit = store.get(keys[i], memory=False)
        if hit is None:
            continue
        try:
            traces[i] = Trace(hit[0], _copy=False)
            check_trace_matches_graph(traces[i], graph)
        except TraceFormatError as exc:
            traces[i] = None
            store.discard(keys[i], f"not a whole trace ({exc})")
            continue
        _traces[graph] = (graph._version, traces[i])
        stats.traces_from_cache += 1
    return traces, keys


def _store_whole(store: TraceCache, settings: Settings, done) -> None:
    if not settings.cache:
        return
    for key, graph, trace in done:
        _traces[graph] = (graph._version, trace)
        store.put(key or _graph_key(graph), trace.arrays, memory=False)


def _kept_keys(plans: Sequence[_GraphPlan], store: TraceCache) -> set[str]:
    """Keys of the units worth a cache entry of their own (:data:`UNIT_CACHE_MIN_OPS`).

    A whole graph recorded as one item is never kept under its item key: its result is
    its whole trace, which is cached under the graph's content key anyway.
    """
    if store.memory is None and store.disk is None:
        return set()
    return {
        key
        for p in plans
        if p.decomposition is not None
        for key, ops in p.ops.items()
        if ops >= UNIT_CACHE_MIN_OPS
    }


def _store_all(store: TraceCache, keep, stats: RunStats) -> None:
    with _timed(stats, "store"):
        for item, arrays in keep:
            kind, payload = item.payload
            if kind == "unit":  # the input travels with the entry: `cache verify` re-records it
                arrays = {**arrays, UNIT_INPUT: np.frombuffer(payload, dtype=np.uint8)}
            store.put(item.key, arrays)


# -- planning ---------------------------------------------------------------------------------
class _GraphPlan:
    """The work items one graph needs and how to assemble its trace from their results.

    ``ops``: the estimated ops of each item (:func:`~phasetrace.elimination.estimated_ops`),
    for the memory check before recording.
    """

    def __init__(self, items: list[WorkItem], decomposition: Decomposition | None, ops):
        self.items = items
        self.keys = [it.key for it in items]
        self.decomposition = decomposition
        self.ops = dict(zip(self.keys, ops, strict=True))

    def finish(self, results: dict[str, dict[str, np.ndarray]]) -> Trace:
        if self.decomposition is None:
            return Trace(results[self.keys[0]])
        return stitch(self.decomposition, [results[k] for k in self.keys])


#: Name of the array holding a unit entry's input (``WorkUnit.to_bytes()``) in the cache.
UNIT_INPUT = "unit_bytes"


def _cache_key(kind: bytes, payload: bytes) -> str:
    # The recorder version is part of every key: a recorder change never reuses old entries.
    h = hashlib.sha256(_work.RECORDER_VERSION.encode() + b"\x00" + kind + b"\x00")
    h.update(payload)
    return h.hexdigest()


def _plan(graph: Graph, hierarchical: bool | None) -> _GraphPlan:
    """The graph's work items, reused while the graph object is unchanged.

    Validating and decomposing is the floor of a warm call (two_island(200): 0.2 s of a
    0.35 s warm call), so the result is kept on the graph, keyed by its change counter.
    """
    memo_key = (graph._version, hierarchical)
    memo = _plans.get(graph)
    if memo is not None and memo[0] == memo_key:
        return memo[1]
    plan = _make_plan(graph, hierarchical)
    _plans[graph] = (memo_key, plan)
    return plan


def _make_plan(graph: Graph, hierarchical: bool | None) -> _GraphPlan:
    graph.validate()
    if hierarchical is None:
        hierarchical = len(graph) >= HIERARCHICAL_MIN_VERTICES
    d = decompose(graph)
    ops = [estimated_ops(u) for u in d.units]
    if not hierarchical:
        payload = graph.to_json().encode()
        cost = sum(_unit_cost(n) for n in ops)
        key = _cache_key(b"graph", payload)
        return _GraphPlan([WorkItem(0, key, ("graph", payload), cost)], None, [sum(ops)])
    items = []
    for unit, n in zip(d.units, ops, strict=True):
        payload = unit.to_bytes()
        items.append(WorkItem(0, _cache_key(b"unit", payload), ("unit", payload), _unit_cost(n)))
    return _GraphPlan(items, d, ops)


def _unit_cost(ops: int) -> float:
    return SECONDS_PER_OP * ops + 4e-5  # measured per-unit floor


def _check_memory(plans: Sequence[_GraphPlan], missing: Sequence[WorkItem], settings) -> None:
    """Refuse the call before recording if recording and stitching would not fit.

    Units are recorded by the local workers at the same time (a remote cluster's
    workers are not counted: their memory is elsewhere); every graph's trace is
    stitched and kept here.
    """
    if not missing:
        return
    ops = {k: n for p in plans for k, n in p.ops.items()}
    recorded = [ops[it.key] for it in missing]
    local = isinstance(settings.strategy, str) and settings.strategy in _LOCAL_STRATEGIES
    workers = 1
    if local and settings.strategy != "sequential":
        from .executors.base import resolve_n_workers

        workers = resolve_n_workers(settings.n_workers)
    stitched = sum(sum(p.ops.values()) for p in plans)
    what = f"{len(plans)} graphs" if len(plans) > 1 else "this graph"
    n_units = sum(len(p.keys) for p in plans)
    check_recording_memory(stitched, n_units, sorted(recorded, reverse=True)[:workers], what)


#: Strategies whose workers run on this machine.
_LOCAL_STRATEGIES = ("auto", "sequential", "loky", "spawn", "joblib")


def _unique_items(plans: Sequence[_GraphPlan]) -> list[WorkItem]:
    seen: dict[str, WorkItem] = {}
    for p in plans:
        for it in p.items:
            if it.key not in seen:
                seen[it.key] = WorkItem(len(seen), it.key, it.payload, it.cost)
    return list(seen.values())


def _lookup(store: TraceCache, items, results, stats: RunStats, kept) -> list[WorkItem]:
    """Cached results of the items worth keeping (``kept``); returns the items to record."""
    missing = []
    for it in items:
        hit = store.get(it.key) if it.key in kept else None
        if hit is not None and hit[1] == "disk" and not _well_formed(store, it, hit[0]):
            hit = None
        if hit is None:
            missing.append(WorkItem(len(missing), it.key, it.payload, it.cost))
            continue
        arrays, source = hit
        results[it.key] = arrays
        if source == "memory":
            stats.from_memory += 1
        else:
            stats.from_disk += 1
    return missing


def _well_formed(store: TraceCache, item: WorkItem, arrays) -> bool:
    """Whether a disk entry is well formed for the item it is keyed by; drops it if not.

    A checksum only proves the file is what was written; this proves the kernel can read
    it (``phasetrace.structure``). It does not prove the entry is the recorder's output.
    """
    kind, payload = item.payload
    try:
        if kind == "unit":
            check_unit_arrays(arrays, WorkUnit.from_bytes(payload))
        else:
            check_trace_matches_graph(Trace(arrays, _copy=False), Graph.from_json(payload))
    except TraceFormatError as exc:
        store.discard(item.key, str(exc))
        return False
    return True


# -- recording ---------------------------------------------------------------------------------
def _record(missing: list[WorkItem], settings: Settings, stats: RunStats) -> list[dict]:
    stats.recorded = len(missing)
    if not missing:
        return []
    with using_executor(settings) as executor:
        expected = sum(it.cost for it in missing)
        if not _show_progress(settings.progress, expected):
            out = executor.map_items(_work.record_payload, missing, timeout=settings.timeout)
            _note_strategy(executor, stats)
            return out
        return _record_with_progress(executor, missing, settings, stats)


def _note_strategy(executor, stats: RunStats) -> None:
    decision = getattr(executor, "last_decision", None)
    if decision is not None:
        stats.strategy = f"auto→{decision.strategy}"
    elif not isinstance(stats.strategy, str):  # an executor object given as the strategy
        stats.strategy = getattr(executor, "name", type(executor).__name__)


def _show_progress(progress: bool | None, expected_seconds: float) -> bool:
    if progress is not None:
        return bool(progress)
    return expected_seconds >= PROGRESS_MIN_SECONDS and sys.stderr.isatty()


def _record_with_progress(executor, missing, settings, stats) -> list[dict]:
    """Dispatch in about 20 batches so a tqdm bar can advance between them; ``timeout``
    still bounds the whole call (each batch gets what is left of it)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: say so once, and record without it
        logger.warning("progress bar requested but tqdm is not installed (pip install tqdm)")
        return executor.map_items(_work.record_payload, missing, timeout=settings.timeout)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    out: list[dict] = []
    step = max(1, len(missing) // 20)
    with tqdm(total=len(missing), desc="recording units", unit="unit") as bar:
        for s in range(0, len(missing), step):
            batch = [
                WorkItem(i, it.key, it.payload, it.cost)
                for i, it in enumerate(missing[s : s + step])
            ]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ExecutorTimeoutError(
                    f"recording did not finish within {settings.timeout} s: "
                    f"{len(missing) - s} of {len(missing)} units not started"
                )
            out.extend(executor.map_items(_work.record_payload, batch, timeout=left))
            bar.update(len(batch))
    _note_strategy(executor, stats)
    return out


@contextmanager
def _timed(stats: RunStats, stage: str):
    """Add the block's wall time to ``stats.seconds[stage]`` (a stage may run twice)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t0
        with _stats_lock:
            stats.seconds[stage] = stats.seconds.get(stage, 0.0) + elapsed
