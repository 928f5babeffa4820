"""Hierarchical recording: SCC units on an executor with a cache, vs record_trace.

    python benchmarks/hierarchical.py [--quick] [--json out.json]

For each model: ``record_trace`` (one process, no cache), then ``compute_trace`` cold
(empty cache directory, new graph object) with 1 and 2 loky workers, then warm: the same
graph object again (memory cache and the per-graph plan), and a new graph object with an
empty memory layer over the full disk cache (what a new process sees). Reports ratios:
cold speedup over ``record_trace``, warm over cold, and the stitched trace's bytes over the
monolithic one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import phasetrace as pt
from _machine import describe, describe_line
from phasetrace.pipeline import get_cache
from phasetrace.settings import resolve

MODELS = {
    "two_island(100)": lambda: pt.models.two_island(100),
    "two_island(200)": lambda: pt.models.two_island(200),
    "random_graph(20000, 400 SCCs)": lambda: pt.models.random_graph(20000, n_sccs=400, seed=1),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(name: str, build) -> dict:
    """Cold and warm runs; every cold or fresh-process-like run gets a new graph object, so
    the pipeline's per-graph plan memo does not hide the decomposition cost."""
    graph = build()
    t_mono, mono = timed(lambda: pt.record_trace(graph))
    row = {"model": name, "vertices": len(graph), "ops": mono.n_ops, "record_trace_s": t_mono}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            kw = dict(strategy="loky", n_workers=workers, cache_dir=d, hierarchical=True)
            pt.compute_trace(pt.models.two_island(3), **kw)  # start the pool outside the timing
            g = build()
            t_cold, tr = timed(lambda kw=kw, g=g: pt.compute_trace(g, **kw))
            assert tr.digest() == mono.digest()
            stats = pt.last_run_stats()
            t_warm, _ = timed(lambda kw=kw, g=g: pt.compute_trace(g, **kw))  # same object
            get_cache(resolve(cache_dir=d)).memory.clear()
            g2 = build()  # as a new process would: new graph, empty memory, full disk
            t_disk, tr2 = timed(lambda kw=kw, g=g2: pt.compute_trace(g, **kw))
            assert tr2.digest() == mono.digest()
        row[f"cold_{workers}w_s"] = t_cold
        row[f"stages_{workers}w"] = stats.seconds
        row[f"units_{workers}w"] = stats.unique
        row[f"warm_memory_{workers}w_s"] = t_warm
        row[f"warm_disk_{workers}w_s"] = t_disk
    row["stitched_over_monolithic_bytes"] = tr.nbytes / mono.nbytes
    return row


def table(rows) -> str:
    head = (
        "| model | vertices | units | ops | record_trace (s) | cold 1w (s) | cold 2w (s) "
        "| speedup 2w vs record_trace | warm memory (s) | warm disk (s) | cold/warm-disk "
        "| bytes ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    body = []
    for r in rows:
        body.append(
            f"| {r['model']} | {r['vertices']} | {r['units_2w']} | {r['ops']} "
            f"| {r['record_trace_s']:.2f} | {r['cold_1w_s']:.2f} | {r['cold_2w_s']:.2f} "
            f"| {r['record_trace_s'] / r['cold_2w_s']:.2f}x | {r['warm_memory_2w_s']:.3f} "
            f"| {r['warm_disk_2w_s']:.3f} | {r['cold_2w_s'] / r['warm_disk_2w_s']:.1f}x "
            f"| {r['stitched_over_monolithic_bytes']:.2f} |"
        )
    return "\n".join([head, *body])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two_island(100) only")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    names = ["two_island(100)"] if args.quick else list(MODELS)
    rows = []
    for name in names:
        rows.append(measure(name, MODELS[name]))
        print(f"  done {name}", file=sys.stderr, flush=True)
    pt.shutdown_executors()
    print(f"Machine: {describe_line()}\n")
    print(table(rows))
    for r in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_2w"].items())
        print(f"\n{r['model']} cold, 2 workers, seconds per stage: {stages}")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
