"""Strategy comparison: every available strategy × worker count on the same workloads.

``phasetrace bench`` and ``python benchmarks/compare.py`` run this module. Everything runs
in one process tree, one configuration after the other, and the results are reported as
**ratios** (absolute times depend too much on the machine and its load):

1. **Recording, many small graphs**: ``compute_traces`` of many random graphs (each a
   single work item), cache disabled.
2. **Recording, one large hierarchical model**: ``compute_trace(..., hierarchical=True)``
   of ``two_island(n)``, one work unit per SCC, cache disabled.

   For both: every available strategy with ``n_workers`` 1 and 2 (``sequential`` once).
   Each configuration starts from closed pools: its first call is the *cold* time (pool
   start included), the best of the next ``repeat`` calls the *warm* time; the sweep
   over all configurations is done ``rounds`` times and the best of each kept. Reported:
   warm speedup over ``sequential``, cold/warm, time per pipeline stage
   (``last_run_stats().seconds``), and whether every strategy gave the same traces.
3. **Overhead over raw loky**: the same work items sent straight to loky's reusable
   executor (``executor.map`` with chunks, no phasetrace in between); ratio of
   phasetrace ``loky``'s *record* stage to that, both warm.
4. **Cache**: the large model with an empty cache directory (cold: record and store),
   again (warm: from the in-process memory layer), and once more with the memory layer
   emptied (warm: from disk).
5. **Evaluation**: moments of a batch of θ with numpy and, when :mod:`phasetrace.jax`
   can be imported, with JAX: ``moments_fn(..., batched=True)`` and ``jax.vmap`` of the
   one-θ function, both under ``jax.jit`` (first call: lowering and compilation; then
   the steady-state time per θ).

Outputs (:func:`write_results`): ``<stem>.json`` (machine description and every number),
``<stem>.md`` (the tables), ``<stem>_speedup.png`` and ``<stem>_stages.png`` (plots, when
matplotlib is installed: ``pip install "phasetrace[bench]"``). Temporary cache
directories are removed and every pool is closed before returning.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import phasetrace as pt
from phasetrace._files import write_atomic

__all__ = [
    "SCHEMA",
    "BenchSizes",
    "add_arguments",
    "machine_description",
    "main",
    "markdown_report",
    "run_comparison",
    "run_from_args",
    "write_results",
]

#: Identifies the layout of the JSON result; bump when keys change meaning.
SCHEMA = "phasetrace-bench/1"
#: Stages of ``RunStats.seconds`` shown in the stage plot, in pipeline order.
STAGES = ("decompose", "lookup", "record", "store", "stitch")
_PACKAGES = (
    "phasetrace",
    "numpy",
    "loky",
    "cloudpickle",
    "jax",
    "jaxlib",
    "dask",
    "distributed",
    "joblib",
    "matplotlib",
)


@dataclass(frozen=True)
class BenchSizes:
    """How big each workload is and how often it is repeated.

    Attributes
    ----------
    n_small : int
        Number of small random graphs.
    small_vertices : tuple of (int, int)
        Range of their vertex counts (inclusive).
    large_n : int
        The large model is ``two_island(large_n)`` (``(n + 1)(n + 2)/2`` vertices, ``n``
        work units).
    eval_n : int
        The evaluation workload is the trace of ``two_island(eval_n)``.
    eval_batch : int
        θ vectors per evaluation batch.
    eval_k : int
        Moments per θ.
    repeat : int
        Warm repetitions per configuration and round (the best counts).
    rounds : int
        Sweeps over all configurations; each starts every configuration from closed
        pools again. More than one spreads slow drifts of the machine's load over all
        configurations instead of hitting a few.
    workers : tuple of int
        Worker counts tried for every pooled strategy.

    Examples
    --------
    >>> BenchSizes.quick().rounds, BenchSizes.full().workers
    (1, (1, 2))
    """

    n_small: int = 200
    small_vertices: tuple[int, int] = (30, 60)
    large_n: int = 120
    eval_n: int = 30
    eval_batch: int = 2000
    eval_k: int = 2
    repeat: int = 2
    rounds: int = 2
    workers: tuple[int, ...] = (1, 2)

    @classmethod
    def full(cls) -> BenchSizes:
        """The sizes used for the committed results (a few minutes on 2 cores)."""
        return cls()

    @classmethod
    def quick(cls) -> BenchSizes:
        """Tiny workloads: the whole comparison in well under 30 s (used by the tests)."""
        return cls(
            n_small=24,
            small_vertices=(10, 20),
            large_n=25,
            eval_n=8,
            eval_batch=200,
            eval_k=2,
            repeat=2,
            rounds=1,
        )


# -- machine ----------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    """Describe where the numbers were measured: CPUs, platform, Python, package versions.

    Returns
    -------
    dict
        ``cpu_count``, ``available_cpus`` (what this process may use), ``machine``,
        ``system``, ``python``, ``load_average`` (None where unknown) and ``packages``
        (name → version, installed ones only).

    Examples
    --------
    >>> d = machine_description()
    >>> d["cpu_count"] >= 1 and "numpy" in d["packages"]
    True
    """
    from phasetrace.executors import available_cpus

    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "packages": packages,
    }


def _machine_line(m: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (
        f"{m['cpu_count']} CPUs ({m['available_cpus']} usable), {m['machine']}, {m['system']}, "
        f"Python {m['python']}; load average at start {m['load_average']}; {pk}"
    )


# -- workloads --------------------------------------------------------------------------------


@dataclass
class _Workload:
    """One recording workload: graphs, how to compute them, and the raw work items."""

    name: str
    title: str
    graphs: list[pt.Graph]
    hierarchical: bool | None

    def compute(self, strategy: str, n_workers: int) -> list[pt.Trace]:
        return pt.compute_traces(
            self.graphs,
            hierarchical=self.hierarchical,
            strategy=strategy,
            n_workers=n_workers,
            cache=False,
            progress=False,
        )

    def payloads(self) -> list[tuple[str, bytes]]:
        """The work items the pipeline would send, as ``_work.record_payload`` takes them."""
        from phasetrace.scc import decompose

        if not self.hierarchical:
            return [("graph", g.to_json().encode()) for g in self.graphs]
        return [("unit", u.to_bytes()) for g in self.graphs for u in decompose(g).units]

    def describe(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "graphs": len(self.graphs),
            "vertices": sum(len(g) for g in self.graphs),
            "edges": sum(g.n_edges for g in self.graphs),
            "hierarchical": bool(self.hierarchical),
        }


def _workloads(sizes: BenchSizes) -> list[_Workload]:
    lo, hi = sizes.small_vertices
    span = hi - lo + 1
    small = [
        pt.models.random_graph(n_vertices=lo + i % span, n_sccs=3 + i % 5, seed=i)
        for i in range(sizes.n_small)
    ]
    large = [pt.models.two_island(sizes.large_n)]
    return [
        _Workload("small", f"{sizes.n_small} small graphs", small, False),
        _Workload("large", f"two_island({sizes.large_n})", large, True),
    ]


def _configurations(strategies: Sequence[str], workers: Sequence[int]) -> list[tuple[str, int]]:
    """(strategy, n_workers) pairs; ``sequential`` only once, it has no workers to vary."""
    out = []
    for name in strategies:
        counts = [1] if name == "sequential" else list(workers)
        out.extend((name, n) for n in counts)
    return out


def _runnable_strategies(requested: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Available strategies (``sequential`` first), and why the others are left out."""
    infos = {s.name: s for s in pt.available_strategies()}
    names = list(requested) if requested else sorted(infos)
    skipped = {}
    run = []
    for name in names:
        info = infos.get(name)
        if info is None:
            raise pt.StrategyError(f"unknown strategy {name!r}; known: {', '.join(infos)}")
        if info.available:
            run.append(name)
        else:
            skipped[name] = info.reason
    run.sort(key=lambda n: (n != "sequential", n))
    if "sequential" not in run:
        run.insert(0, "sequential")  # the baseline every speedup is measured against
    return run, skipped


# -- timing -----------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _digest(traces: Sequence[pt.Trace]) -> str:
    h = hashlib.sha256()
    for t in traces:
        h.update(t.digest().encode())
    return h.hexdigest()


def _measure_config(
    workloads: Sequence[_Workload], strategy: str, n_workers: int, repeat: int, say: Callable
) -> list[dict[str, Any]]:
    """Cold then warm runs of every workload on one (strategy, n_workers), pools closed first."""
    pt.shutdown_executors()
    rows = []
    for i, wl in enumerate(workloads):
        say(f"  {wl.title}: {strategy} with {n_workers} worker(s)")
        first_s, traces = _timed(lambda wl=wl: wl.compute(strategy, n_workers))
        best, best_stats = math.inf, pt.last_run_stats()
        for _ in range(repeat):
            t, traces = _timed(lambda wl=wl: wl.compute(strategy, n_workers))
            if t < best:
                best, best_stats = t, pt.last_run_stats()
        rows.append(
            {
                "workload": wl.name,
                "strategy": strategy,
                "n_workers": n_workers,
                # Only the first workload of a configuration starts its pool.
                "cold_s": first_s if i == 0 else None,
                "warm_s": best,
                "resolved": best_stats.strategy,
                "stages": {k: best_stats.seconds.get(k, 0.0) for k in (*STAGES, "total")},
                "digest": _digest(traces),
            }
        )
    return rows


def _best_of_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the rounds: the best warm run (with its stages), the best cold start."""
    merged = []
    for rows in zip(*rounds, strict=True):
        best = dict(min(rows, key=lambda r: r["warm_s"]))
        colds = [r["cold_s"] for r in rows if r["cold_s"] is not None]
        best["cold_s"] = min(colds) if colds else None
        best["warm_s_rounds"] = [r["warm_s"] for r in rows]
        if len({r["digest"] for r in rows}) != 1:
            best["digest"] = "differs between rounds"
        merged.append(best)
    return merged


def _add_ratios(runs: list[dict[str, Any]]) -> None:
    """Speedup over ``sequential`` (warm) and cold/warm; traces equal to the reference."""
    ref = {r["workload"]: r for r in runs if r["strategy"] == "sequential"}
    for r in runs:
        base = ref[r["workload"]]
        r["speedup"] = base["warm_s"] / r["warm_s"]
        r["cold_over_warm"] = r["cold_s"] / r["warm_s"] if r["cold_s"] is not None else None
        r["same_traces"] = r["digest"] == base["digest"]


# -- raw loky ---------------------------------------------------------------------------------


class _RawLoky:
    """loky's reusable executor used directly, as a baseline for phasetrace's ``loky``.

    loky keeps one reusable pool per thread; creating it from a helper thread keeps it
    apart from the pool phasetrace uses (so neither replaces the other).
    """

    def __init__(self, n_workers: int):
        from loky import get_reusable_executor

        box: list[Any] = []

        def start() -> None:
            box.append(get_reusable_executor(max_workers=n_workers, timeout=60))

        t = threading.Thread(target=start)
        t.start()
        t.join()
        self.pool = box[0]
        self.n_workers = n_workers

    def run(self, payloads: list) -> list:
        from phasetrace import _work

        # The same chunking rule as multiprocessing.Pool.map: 4 chunks per worker.
        chunk = max(1, math.ceil(len(payloads) / (4 * self.n_workers)))
        return list(self.pool.map(_work.record_payload, payloads, chunksize=chunk))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _measure_raw_loky(
    workloads: Sequence[_Workload], workers: Sequence[int], repeat: int, say: Callable
) -> list[dict[str, Any]]:
    rows = []
    payloads = {wl.name: wl.payloads() for wl in workloads}
    for n in workers:
        say(f"  raw loky with {n} worker(s)")
        raw = _RawLoky(n)
        try:
            for wl in workloads:
                items = payloads[wl.name]
                raw.run(items)  # warm: pool started, modules imported in the workers
                best = min(_timed(lambda r=raw, i=items: r.run(i))[0] for _ in range(repeat))
                rows.append({"workload": wl.name, "n_workers": n, "warm_s": best})
        finally:
            raw.close()
    return rows


def _overheads(runs: list[dict[str, Any]], raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """phasetrace ``loky`` record stage / raw loky, same items and workers, both warm."""
    out = []
    for r in raw:
        mine = next(
            (
                x
                for x in runs
                if x["strategy"] == "loky"
                and x["workload"] == r["workload"]
                and x["n_workers"] == r["n_workers"]
            ),
            None,
        )
        if mine is None:
            continue
        record = mine["stages"]["record"]
        out.append(
            {
                "workload": r["workload"],
                "n_workers": r["n_workers"],
                "raw_loky_s": r["warm_s"],
                "phasetrace_record_s": record,
                "phasetrace_total_s": mine["warm_s"],
                "record_over_raw": record / r["warm_s"],
            }
        )
    return out


# -- cache ------------------------------------------------------------------------------------


def _cache_once(graph: pt.Graph) -> tuple[float, float, float, int]:
    """One cold / warm-memory / warm-disk sequence in a fresh directory; times and units.

    Warm from memory is the same graph object again (its trace is kept with it); warm
    from disk forgets everything in memory first, as a fresh process would.
    """
    from phasetrace import pipeline
    from phasetrace.settings import resolve

    with tempfile.TemporaryDirectory(prefix="phasetrace-bench-") as d:
        kw = dict(hierarchical=True, strategy="sequential", cache=True, cache_dir=d)
        cold, _ = _timed(lambda: pt.compute_trace(graph, **kw))
        units = pt.last_run_stats().units
        memory, _ = _timed(lambda: pt.compute_trace(graph, **kw))
        store = pipeline.get_cache(resolve(cache=True, cache_dir=d))
        store.memory.clear()
        pipeline._traces.clear()
        disk, _ = _timed(lambda: pt.compute_trace(graph, **kw))
        store.memory.clear()  # the process-wide cache object outlives the directory
        pipeline._traces.clear()
    return cold, memory, disk, units


def _measure_cache(wl: _Workload, repeat: int, say: Callable) -> dict[str, Any]:
    """Cold (empty directory), warm from memory, warm from disk; sequential, one process."""
    say(f"  cache: {wl.title}, cold / warm (memory) / warm (disk)")
    samples = [_cache_once(wl.graphs[0]) for _ in range(repeat)]
    cold, memory, disk = (min(s[i] for s in samples) for i in range(3))
    return {
        "workload": wl.name,
        "units": samples[0][3],
        "cold_s": cold,
        "warm_memory_s": memory,
        "warm_disk_s": disk,
        "cold_over_memory": cold / memory,
        "cold_over_disk": cold / disk,
    }


# -- evaluation -------------------------------------------------------------------------------


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = math.inf, None
    for _ in range(repeat):
        t, out = _timed(fn)
        best = min(best, t)
    return best, out


def _jax_batch_fn(trace: pt.Trace, k: int, how: str) -> Callable[[np.ndarray], Any]:
    """A function of a θ batch (B, n_params) → (B, k) from ``phasetrace.jax``.

    ``how="batched"``: ``moments_fn(trace, k, batched=True)``, the hand-laid batch layout;
    ``how="vmap"``: ``jax.vmap`` of the one-θ function (routed to the same batched code).
    Both are jitted inside ``moments_fn``. No outer ``jax.jit`` here: without
    ``jax_enable_x64`` it would round the float64 θ to float32 at its boundary.
    """
    import jax

    from phasetrace.jax import moments_fn

    if how == "batched":
        f = moments_fn(trace, k=k, batched=True)
    else:
        f = jax.vmap(moments_fn(trace, k=k))
    return lambda thetas: jax.block_until_ready(f(thetas))


def _measure_jax(trace, thetas, k: int, ref: np.ndarray, repeat: int, how: str):
    """First call (lowering and compilation) and steady batch time of one JAX variant."""
    try:
        import jax

        fn = _jax_batch_fn(trace, k, how)
        first_s, out = _timed(lambda: fn(thetas))
        steady, out = _best(lambda: fn(thetas), max(repeat, 2))
    except Exception as exc:  # not installed, or failing: the table says which
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    got = np.asarray(out, dtype=np.float64)
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)))
    return {
        "available": True,
        "backend": jax.default_backend(),
        "first_call_s": first_s,
        "batch_s": steady,
        "per_theta_us": 1e6 * steady / len(thetas),
        "max_rel_diff_vs_numpy": rel,
    }


def _measure_evaluation(sizes: BenchSizes, say: Callable) -> dict[str, Any]:
    say(f"  evaluation: two_island({sizes.eval_n}), {sizes.eval_batch} θ, k={sizes.eval_k}")
    trace = pt.record_trace(pt.models.two_island(sizes.eval_n))
    rng = np.random.default_rng(0)
    thetas = rng.uniform(0.2, 2.0, (sizes.eval_batch, trace.n_params))
    plan_s, _ = _timed(lambda: trace.moments(thetas[:1], k=sizes.eval_k))  # builds the plan
    t, ref = _best(lambda: trace.moments(thetas, k=sizes.eval_k), max(sizes.repeat, 2))
    numpy_row = {
        "plan_s": plan_s,
        "batch_s": t,
        "per_theta_us": 1e6 * t / len(thetas),
    }
    out = {
        "model": f"two_island({sizes.eval_n})",
        "vertices": trace.n_vertices,
        "ops": trace.n_ops,
        "batch": sizes.eval_batch,
        "k": sizes.eval_k,
        "numpy": numpy_row,
    }
    for key, how in (("jax", "batched"), ("jax_vmap", "vmap")):
        row = _measure_jax(trace, thetas, sizes.eval_k, ref, sizes.repeat, how)
        if row["available"]:
            row["numpy_over_jax"] = t / row["batch_s"]
        out[key] = row
    return out


# -- the whole comparison -----------------------------------------------------------------------


def _quiet(_: str) -> None:
    pass


def run_comparison(
    sizes: BenchSizes | None = None,
    *,
    strategies: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the comparison of the module docstring and return every number.

    Parameters
    ----------
    sizes : BenchSizes, optional
        Workload sizes; default :meth:`BenchSizes.full`.
    strategies : sequence of str, optional
        Strategies to compare (default: every available one). Unavailable ones are
        listed under ``"skipped"`` with the reason; ``sequential`` is always run, as the
        baseline.
    progress : callable, optional
        Called with one line of text before each measurement.

    Returns
    -------
    dict
        JSON-ready: ``schema``, ``date``, ``quick``, ``sizes``, ``machine``,
        ``workloads``, ``runs`` (one per workload × strategy × n_workers), ``skipped``,
        ``raw_loky``, ``overhead``, ``cache``, ``evaluation``, ``wall_s``.

    Examples
    --------
    >>> tiny = BenchSizes(n_small=3, small_vertices=(5, 6), large_n=4, eval_n=3,
    ...                   eval_batch=4, repeat=1, rounds=1)
    >>> r = run_comparison(tiny, strategies=["sequential"])
    >>> [(x["workload"], x["strategy"], round(x["speedup"], 2)) for x in r["runs"]]
    [('small', 'sequential', 1.0), ('large', 'sequential', 1.0)]
    >>> r["cache"]["units"], r["evaluation"]["numpy"]["batch_s"] > 0
    (4, True)
    """
    sizes = sizes or BenchSizes.full()
    say = progress or _quiet
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": sizes == BenchSizes.quick(),
        "sizes": asdict(sizes),
        "machine": machine_description(),
    }
    names, result["skipped"] = _runnable_strategies(strategies)
    say("building workloads")
    workloads = _workloads(sizes)
    result["workloads"] = {wl.name: wl.describe() for wl in workloads}
    say("warming up (imports and first-call costs, untimed)")
    for wl in workloads:
        wl.compute("sequential", 1)
    try:
        rounds = []
        for i in range(sizes.rounds):
            say(f"round {i + 1} of {sizes.rounds}")
            rows = []
            for name, n in _configurations(names, sizes.workers):
                rows.extend(_measure_config(workloads, name, n, sizes.repeat, say))
            rounds.append(rows)
        runs = _best_of_rounds(rounds)
        _add_ratios(runs)
        result["runs"] = runs
        pt.shutdown_executors()
        raw = (
            _measure_raw_loky(workloads, sizes.workers, sizes.repeat, say)
            if "loky" in names
            else []
        )
        result["raw_loky"] = raw
        result["overhead"] = _overheads(runs, raw)
        result["cache"] = _measure_cache(workloads[1], sizes.repeat, say)
        result["evaluation"] = _measure_evaluation(sizes, say)
    finally:
        pt.shutdown_executors()  # no pool outlives the comparison
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_end"] = machine_description()["load_average"]
    return result


# -- report -----------------------------------------------------------------------------------


def _secs(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _runs_table(result: dict[str, Any]) -> list[str]:
    wls = result["workloads"]
    head = "| strategy | workers | " + " | ".join(
        f"{w['title']}: speedup (warm) | cold / warm" for w in wls.values()
    )
    lines = [head + " |", "|---|---:|" + "---:|---:|" * len(wls)]
    by_key = {(r["strategy"], r["n_workers"], r["workload"]): r for r in result["runs"]}
    configs = dict.fromkeys((r["strategy"], r["n_workers"]) for r in result["runs"])
    for strategy, n in configs:
        cells = []
        for wname in wls:
            r = by_key[(strategy, n, wname)]
            note = "" if r["same_traces"] else " ⚠ traces differ"
            chose = f" ({r['resolved']})" if r["resolved"] != strategy else ""
            cells.append(f"{r['speedup']:.2f}× ({_secs(r['warm_s'])}){chose}{note}")
            cells.append(f"{r['cold_over_warm']:.2f}" if r["cold_over_warm"] else "–")
        lines.append(f"| {strategy} | {n} | " + " | ".join(cells) + " |")
    return lines


def _overhead_table(result: dict[str, Any]) -> list[str]:
    if not result["overhead"]:
        return ["(loky not available: no raw loky comparison)"]
    names = {k: w["title"] for k, w in result["workloads"].items()}
    lines = [
        "| workload | workers | raw loky | phasetrace loky, record stage | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for o in result["overhead"]:
        lines.append(
            f"| {names[o['workload']]} | {o['n_workers']} | {_secs(o['raw_loky_s'])} | "
            f"{_secs(o['phasetrace_record_s'])} | {o['record_over_raw']:.2f} |"
        )
    return lines


def _cache_table(result: dict[str, Any]) -> list[str]:
    c = result["cache"]
    title = result["workloads"][c["workload"]]["title"]
    return [
        "| workload | units | cold (record + store) | warm, memory | warm, disk | "
        "cold / memory | cold / disk |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {title} | {c['units']} | {_secs(c['cold_s'])} | {_secs(c['warm_memory_s'])} | "
        f"{_secs(c['warm_disk_s'])} | {c['cold_over_memory']:.1f} | {c['cold_over_disk']:.1f} |",
    ]


def _jax_row(label: str, jx: dict[str, Any]) -> str:
    if not jx["available"]:
        return f"| {label} | unavailable: {jx['reason']} | | | |"
    return (
        f"| {label} ({jx['backend']}) | {_secs(jx['first_call_s'])} (lower + compile) | "
        f"{_secs(jx['batch_s'])} | {jx['per_theta_us']:.1f} µs | {jx['numpy_over_jax']:.2f} |"
    )


def _evaluation_table(result: dict[str, Any]) -> list[str]:
    e = result["evaluation"]
    npy = e["numpy"]
    lines = [
        f"{e['model']} ({e['vertices']} vertices, {e['ops']} ops), batch of {e['batch']} θ, "
        f"k = {e['k']}:",
        "",
        "| evaluator | first call | batch | per θ | numpy / this |",
        "|---|---:|---:|---:|---:|",
        f"| numpy | {_secs(npy['plan_s'])} (plan) | {_secs(npy['batch_s'])} | "
        f"{npy['per_theta_us']:.1f} µs | 1.00 |",
    ]
    lines.append(_jax_row("JAX, `moments_fn(batched=True)`", e["jax"]))
    lines.append(_jax_row("JAX, `jax.vmap(moments_fn(...))`", e["jax_vmap"]))
    diffs = [e[k]["max_rel_diff_vs_numpy"] for k in ("jax", "jax_vmap") if e[k]["available"]]
    if diffs:
        lines += ["", f"Largest relative difference JAX vs numpy: {max(diffs):.1e}."]
    return lines


def markdown_report(result: dict[str, Any]) -> str:
    """Format a :func:`run_comparison` result as Markdown tables.

    Examples
    --------
    >>> tiny = BenchSizes(n_small=2, small_vertices=(5, 5), large_n=3, eval_n=3,
    ...                   eval_batch=2, repeat=1, rounds=1)
    >>> text = markdown_report(run_comparison(tiny, strategies=["sequential"]))
    >>> text.splitlines()[0]
    '# phasetrace strategy comparison'
    >>> "| sequential | 1 | 1.00×" in text
    True
    """
    m = result["machine"]
    lines = [
        "# phasetrace strategy comparison",
        "",
        f"Measured {result['date']} ({'quick' if result['quick'] else 'full'} mode, "
        f"{result['wall_s']:.0f} s) on: {_machine_line(m)}; load average at the end "
        f"{result['load_average_end']}.",
        "",
        "## Recording: speedup over sequential",
        "",
        f"Warm pools, best of {result['sizes']['repeat']} runs in each of "
        f"{result['sizes']['rounds']} round(s); *cold / warm* is the first call of a "
        "configuration (pool start included) over its warm time. Cache disabled.",
        "",
        *_runs_table(result),
    ]
    if result["skipped"]:
        lines += ["", "Not run here:"]
        lines += [f"- `{k}`: {v}" for k, v in result["skipped"].items()]
    lines += [
        "",
        "## Overhead over raw loky",
        "",
        "The same work items through loky's reusable executor directly (4 chunks per worker) "
        "vs phasetrace's `loky` strategy (its *record* stage), both warm. 1.00 is no overhead.",
        "",
        *_overhead_table(result),
        "",
        "## Cache: cold vs warm",
        "",
        *_cache_table(result),
        "",
        "## Evaluation: numpy vs JAX",
        "",
        *_evaluation_table(result),
    ]
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------------


def _plot_speedup(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    wls = result["workloads"]
    fig, axes = plt.subplots(1, len(wls), figsize=(5 * len(wls), 3.8), sharey=True)
    workers = sorted({r["n_workers"] for r in result["runs"]})
    for ax, (wname, w) in zip(np.atleast_1d(axes), wls.items(), strict=True):
        ax.plot(workers, workers, ":", color="grey", label="ideal")
        for strategy in dict.fromkeys(r["strategy"] for r in result["runs"]):
            rows = [
                r for r in result["runs"] if r["strategy"] == strategy and r["workload"] == wname
            ]
            if strategy == "sequential":
                ax.axhline(1.0, color="black", lw=0.8, label="sequential")
                continue
            ax.plot(
                [r["n_workers"] for r in rows], [r["speedup"] for r in rows], "o-", label=strategy
            )
        ax.set_title(w["title"])
        ax.set_xlabel("workers")
        ax.set_xticks(workers)
    np.atleast_1d(axes)[0].set_ylabel("speedup over sequential (warm)")
    np.atleast_1d(axes)[-1].legend(fontsize="small")
    load = (
        (result["machine"]["load_average"] or [None])[0],
        (result["load_average_end"] or [None])[0],
    )
    fig.suptitle(
        f"phasetrace recording, {result['date'][:10]}, {result['machine']['cpu_count']} CPUs "
        f"(load average {load[0]} → {load[1]})"
    )
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    plt.close(fig)


def _plot_stages(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    wls = result["workloads"]
    fig, axes = plt.subplots(1, len(wls), figsize=(5.5 * len(wls), 3.8))
    for ax, (wname, w) in zip(np.atleast_1d(axes), wls.items(), strict=True):
        rows = [r for r in result["runs"] if r["workload"] == wname]
        labels = [f"{r['strategy']} ×{r['n_workers']}" for r in rows]
        left = np.zeros(len(rows))
        for stage in STAGES:
            widths = np.array([r["stages"][stage] for r in rows])
            ax.barh(labels, widths, left=left, label=stage)
            left += widths
        ax.invert_yaxis()
        ax.set_title(w["title"])
        ax.set_xlabel("seconds (warm, best run)")
    np.atleast_1d(axes)[-1].legend(fontsize="small")
    fig.suptitle("time per pipeline stage (last_run_stats().seconds)")
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    plt.close(fig)


def _write_plots(result: dict[str, Any], out_dir: Path, stem: str) -> tuple[list[Path], str]:
    try:
        import matplotlib
    except ImportError:
        return [], 'plots skipped: matplotlib is not installed (pip install "phasetrace[bench]")'
    matplotlib.use("Agg", force=True)  # files only; never open a window
    paths = [out_dir / f"{stem}_speedup.png", out_dir / f"{stem}_stages.png"]
    _plot_speedup(result, paths[0])
    _plot_stages(result, paths[1])
    return paths, ""


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, stem: str = "compare"):
    """Write ``<stem>.json``, ``<stem>.md`` and the PNG plots into ``out_dir``.

    Parameters
    ----------
    result : dict
        From :func:`run_comparison`.
    out_dir : path
        Created if missing.
    stem : str
        File name stem.

    Returns
    -------
    list of pathlib.Path
        The files written (no PNG when matplotlib is missing; a note says so in the
        Markdown file).

    Examples
    --------
    >>> import tempfile
    >>> tiny = BenchSizes(n_small=2, small_vertices=(5, 5), large_n=3, eval_n=3,
    ...                   eval_batch=2, repeat=1, rounds=1)
    >>> out = tempfile.mkdtemp()
    >>> paths = write_results(run_comparison(tiny, strategies=["sequential"]), out)
    >>> [p.name for p in paths][:2]   # then the PNGs, when matplotlib is installed
    ['compare.json', 'compare.md']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs, note = _write_plots(result, out, stem)
    text = markdown_report(result)
    if pngs:
        text += "\n## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    else:
        text += f"\n{note}\n"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_atomic(json_path, (json.dumps(result, indent=2) + "\n").encode())
    write_atomic(md_path, text.encode())
    return [json_path, md_path, *pngs]


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, default_out: str | None = None) -> None:
    """Add the comparison's options (``--quick``, ``--out``, ``--strategies``) to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["--quick", "--strategies", "sequential,loky"]).strategies
    ['sequential', 'loky']
    """
    parser.add_argument(
        "--quick", action="store_true", help="tiny workloads, the whole run in under 30 s"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=default_out,
        help="write compare.json, compare.md and PNG plots here (compare-quick.* with --quick)"
        + (f" (default {default_out})" if default_out else "; default: print the tables only"),
    )
    parser.add_argument(
        "--strategies",
        metavar="A,B",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="compare only these strategies (default: every available one)",
    )


def run_from_args(args: argparse.Namespace, sizes: BenchSizes | None = None) -> int:
    """Run the comparison for parsed :func:`add_arguments` options; print the tables.

    Progress lines go to stderr, the Markdown tables to stdout.

    Parameters
    ----------
    args : argparse.Namespace
        ``quick``, ``out`` and ``strategies``, as :func:`add_arguments` defines them.
    sizes : BenchSizes, optional
        Overrides the sizes ``--quick`` selects.

    Returns
    -------
    int
        The exit status, 0.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> tiny = BenchSizes(n_small=2, small_vertices=(5, 5), large_n=3, eval_n=3,
    ...                   eval_batch=2, repeat=1, rounds=1)
    >>> run_from_args(p.parse_args(["--strategies", "sequential"]), tiny)  # doctest: +ELLIPSIS
    # phasetrace strategy comparison
    ...
    0
    """
    if sizes is None:
        sizes = BenchSizes.quick() if args.quick else BenchSizes.full()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_comparison(sizes, strategies=args.strategies, progress=say)
    print(markdown_report(result))
    if args.out:
        stem = "compare-quick" if args.quick else "compare"
        for path in write_results(result, args.out, stem):
            say(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None, default_out: str | None = None) -> int:
    """Entry point of ``benchmarks/compare.py``.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    default_out : str, optional
        Output directory when ``--out`` is not given.

    Examples
    --------
    >>> try:
    ...     main(["--help"], default_out="results")
    ... except SystemExit as done:
    ...     print("exit status", done.code)  # doctest: +ELLIPSIS
    usage: compare.py [-h] [--quick] [--out DIR] [--strategies A,B]
    ...
    exit status 0
    """
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__.split("\n\n")[0].strip()
    )
    add_arguments(parser, default_out)
    return run_from_args(parser.parse_args(argv))
