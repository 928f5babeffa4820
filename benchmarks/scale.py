"""How phasetrace scales with the graph: build, record, trace size, evaluation, memory.

    python benchmarks/scale.py            # everything: ~15 min, up to 2 GB per child
    python benchmarks/scale.py --quick    # small sizes only: ~2 min
    python benchmarks/scale.py --only blocks --sizes joint_blocks:7   # some sizes
    python benchmarks/scale.py --out DIR  # default benchmarks/results/

Every model is measured in a fresh child process (so its peak memory is its own, and
the kernel's first compilation or disk-cache load is not charged to it): build the
graph, record it (``compute_trace``, cache off, default strategy), trace size, ``E[T]``
for one θ, per θ within a batch of 1000, value and gradient for one θ, and the baseline
anybody can write: assemble the sparse sub-intensity matrix at θ and call
``scipy.sparse.linalg.spsolve`` (its pattern precomputed, as a fair user would), timed in
the same process right next to the trace. kingman(n) (block-counting states) also
evaluates its n − 1 site-frequency expectations (one reward vector each) against one
sparse LU factorisation solved for the same n − 1 right-hand sides. two_island(n) for
n <= 100 also times JAX: ``jit(vmap(value_and_grad))`` over 1000 θ. A last set of child
pairs measures the warm path: one fills a cache directory, a fresh one builds the graph
and calls ``compute_trace`` on it.

**The cache with many small units** (``--only cache``): ``kingman(50)`` blocks (204,226
single-state units) recorded cold into an empty cache directory: time per stage, files
and bytes written; then read back whole in a fresh process.

**Large strongly connected components** (``--only blocks``): joint block counting on two
islands with ``n + n`` samples (``benchmarks/_joint_blocks.py``, built with
``Graph.from_arrays``; n = 3 … 7, 7 + 7 being the published ptdalgorithms benchmark) and
``structured_coalescent((n, n, n), state_space="blocks")`` (n = 4, 5). Each is measured as
above, plus which path each SCC took (taped or solve block, and the largest of each), the
62 (for 7 + 7) JSFS expectations in one call, and the baseline side by side:
``spsolve`` with its best ordering here (``NATURAL`` on the states in breadth-first order;
its default COLAMD runs for minutes) and, for the JSFS, one sparse LU (``splu``, same
ordering) solved for every reward vector. The old path (every SCC taped, as before solve
blocks) is measured in its own child up to 6 + 6 and (4, 4, 4); beyond, it needs more
memory than this benchmark allows (8.2 GB at 7 + 7), and the figures quoted are those
measured when the problem was found. A run of one family updates its section of
``scale.json`` and leaves the others.

Writes ``scale.json``, ``scale.md`` and ``scale.png`` (log-log: trace size and times
against vertices, with the slopes fitted over two_island) into the output directory.
Times are the best of several repeats; ratios against the baseline are side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, describe_line

TWO_ISLAND = [25, 50, 100, 200, 400, 700, 1000]
KINGMAN = [20, 25, 30, 35, 40]
QUICK_TWO_ISLAND = [25, 50, 100, 200]
QUICK_KINGMAN = [20, 25]
WARM = [100, 400, 1000]
QUICK_WARM = [100]
JOINT = [3, 4, 5, 6, 7]
BLOCKS3 = [4, 5]
QUICK_JOINT = [3, 4, 5]
QUICK_BLOCKS3 = [4]
#: The old path (every SCC taped) is measured up to these sizes; the baseline spsolve too.
TAPED_MAX = {"joint_blocks": 6, "blocks3": 4}
SPSOLVE_MAX = {"joint_blocks": 6, "blocks3": 4}
#: The old path beyond, as measured when the problem was found (issue 18, this machine).
OLD_PATH_QUOTED = {
    ("joint_blocks", 7): {"record_s": 40.0, "et_one_s": 1.2, "peak_rss_mb": 8200, "ops": 54.6e6},
    ("blocks3", 5): {"failure": "MemoryError allocating the 241 M-entry operand arrays (> 12 GB)"},
}
THETA = {
    "two_island": [1.0, 0.5],
    "kingman": [1.0],
    "joint_blocks": [1.0, 0.5],
    "blocks3": [1.0, 0.5],
}


# -- measured in a child process ------------------------------------------------------------
def best(fn, repeat: int = 25, budget: float = 4.0) -> float:
    """Best wall time of up to ``repeat`` calls (fewer when each call is slow)."""
    fn()  # warm: caches, page faults, compilation
    times = []
    t_end = time.perf_counter() + budget
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return min(times)


def build(model: str, n: int):
    import phasetrace as pt

    if model == "two_island":
        return pt.models.two_island(n)
    if model == "joint_blocks":
        from _joint_blocks import joint_blocks

        return joint_blocks(n, n)
    if model == "blocks3":
        return pt.models.structured_coalescent((n, n, n), state_space="blocks")
    return pt.models.kingman(n)


def sparse_baseline(graph, theta):
    """``E[T]`` by assembling ``−S`` at θ and ``spsolve``; returns (value, function)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    a = graph.arrays()
    src = a.src
    transient = np.diff(a.ptr) > 0
    transient[0] = False
    idx = np.full(transient.size, -1)
    idx[transient] = np.arange(int(transient.sum()))
    m = int(transient.sum())
    from_t = transient[src]
    to_t = from_t & transient[a.dst]
    rows = np.concatenate([idx[src[to_t]], idx[src[from_t]]])
    cols = np.concatenate([idx[a.dst[to_t]], idx[src[from_t]]])
    start = slice(int(a.ptr[0]), int(a.ptr[1]))
    alpha = np.zeros(m)
    alpha[idx[a.dst[start]]] = a.base[start]
    th = np.asarray(theta, dtype=np.float64)

    def solve(rhs=None):
        rates = a.base + a.coef @ th
        data = np.concatenate([-rates[to_t], rates[from_t]])  # −S: λ on the diagonal
        A = sp.csc_matrix((data, (rows, cols)), shape=(m, m))
        x = spsolve(A, np.ones(m) if rhs is None else rhs)
        return alpha @ x

    return solve(), solve, (rows, cols, to_t, from_t, m, alpha, idx, transient)


def sfs_baseline(graph, theta, n):
    """The n − 1 SFS expectations from one sparse LU factorisation and n − 1 solves."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    _, _, (rows, cols, to_t, from_t, m, alpha, _, transient) = sparse_baseline(graph, theta)
    a = graph.arrays()
    states = a.states[transient].astype(np.float64)  # reward i: s[i]
    th = np.asarray(theta, dtype=np.float64)

    def solve():
        rates = a.base + a.coef @ th
        data = np.concatenate([-rates[to_t], rates[from_t]])
        lu = splu(sp.csc_matrix((data, (rows, cols)), shape=(m, m)))
        return alpha @ lu.solve(np.ascontiguousarray(states[:, : n - 1]))

    return solve(), solve


def bfs_order(graph) -> np.ndarray:
    """Transient states in breadth-first order from the start (spsolve's best ordering on
    these models, with ``permc_spec="NATURAL"``)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    a = graph.arrays()
    n = a.states.shape[0]
    adj = sp.csr_matrix((np.ones(a.dst.size), a.dst, a.ptr), shape=(n, n))
    order = breadth_first_order(adj, 0, directed=True, return_predecessors=False)
    transient = np.diff(a.ptr) > 0
    transient[0] = False
    return order[transient[order]]


def natural_baseline(graph, theta, rewards_fn=None):
    """``E[T]`` by ``spsolve(permc_spec="NATURAL")`` on ``−S`` in breadth-first order, and
    (with ``rewards_fn``) the reward expectations from one ``splu`` and a solve per reward
    vector. Returns (value, solve, jsfs-solve or None)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu, spsolve

    a = graph.arrays()
    order = bfs_order(graph)
    m = order.size
    idx = np.full(a.states.shape[0], -1)
    idx[order] = np.arange(m)
    src = a.src
    from_t = idx[src] >= 0
    to_t = from_t & (idx[a.dst] >= 0)
    rows = np.concatenate([idx[src[to_t]], idx[src[from_t]]])
    cols = np.concatenate([idx[a.dst[to_t]], idx[src[from_t]]])
    start = slice(int(a.ptr[0]), int(a.ptr[1]))
    alpha = np.zeros(m)
    alpha[idx[a.dst[start]]] = a.base[start]
    th = np.asarray(theta, dtype=np.float64)

    def matrix():
        rates = a.base + a.coef @ th
        data = np.concatenate([-rates[to_t], rates[from_t]])
        return sp.csc_matrix((data, (rows, cols)), shape=(m, m))

    def solve():
        return alpha @ spsolve(matrix(), np.ones(m), permc_spec="NATURAL")

    jsfs = None
    if rewards_fn is not None:
        rew = np.ascontiguousarray(rewards_fn(a.states[order]).T)  # (m, R)

        def jsfs():
            lu = splu(matrix(), permc_spec="NATURAL")
            return alpha @ lu.solve(rew)

    return solve(), solve, jsfs


def jsfs_of_states(n: int):
    """States (N, 2T) → JSFS rewards (R, N) of joint block counting ``n + n``."""
    from _joint_blocks import types

    ts = types(n, n)
    T = len(ts)
    keep = [i for i, t in enumerate(ts) if t != (n, n)]
    return lambda st: np.stack([(st[:, i] + st[:, T + i]).astype(float) for i in keep])


def measure_blocks(model: str, n: int, taped: bool) -> dict:
    """A model with large SCCs: solve blocks (or, ``taped``, the old path) and spsolve."""
    import phasetrace as pt
    from phasetrace import elimination

    if taped:
        elimination.SOLVE_MIN_STATES = 10**9
    theta = np.array(THETA[model])
    pt.record_trace(build("two_island", 3)).moments(theta)  # load the kernel before timing
    t0 = time.perf_counter()
    graph = build(model, n)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The switch that turns solve blocks off holds in this process only: the old path is
    # recorded here (sequential), not by the pool's workers.
    trace = pt.compute_trace(graph, cache=False, **({"strategy": "sequential"} if taped else {}))
    record_s = time.perf_counter() - t0
    stats = pt.last_run_stats()
    if taped:
        assert stats.sccs_solved == 0
    s = trace.summary()
    out = {
        "model": model,
        "n": n,
        "path": "taped" if taped else "solve blocks",
        "vertices": len(graph),
        "edges": graph.n_edges,
        "build_s": build_s,
        "record_s": record_s,
        "record_stages": stats.seconds,
        "strategy": stats.strategy,
        "sccs_taped": stats.sccs_taped,
        "sccs_solved": stats.sccs_solved,
        "largest_taped": stats.largest_taped,
        "largest_solved": stats.largest_solved,
        "ops": s["ops"],
        "trace_size": s["ops"]
        + s["x_program"]
        + s["row_entries"]
        + int(trace.arrays["exit_dst"].size),
    }
    out["et"] = float(trace.expectation(theta))
    out["et_one_s"] = best(lambda: trace.expectation(theta), 7, 6.0)
    thetas = np.random.default_rng(0).uniform(0.5, 2.0, (64, theta.size)) * theta
    out["et_batch_per_theta_s"] = best(lambda: trace.expectation(thetas), 2, 6.0) / 64
    out["value_grad_one_s"] = best(lambda: trace.moments_and_jacobian(theta), 5, 6.0)
    rewards_fn = jsfs_of_states(n) if model == "joint_blocks" else None
    if rewards_fn is not None:
        rewards = rewards_fn(trace.states) * (trace.arrays["vertex_kind"] == 1)
        out["jsfs_vectors"] = int(rewards.shape[0])
        jsfs = trace.expectation(theta, rewards=rewards)
        out["jsfs_one_s"] = best(lambda: trace.expectation(theta, rewards=rewards), 5, 6.0)
    if not taped and n <= SPSOLVE_MAX[model]:
        ref, solve, jsfs_solve = natural_baseline(graph, theta, rewards_fn)
        out["spsolve_one_s"] = best(solve, 2, 5.0)
        out["spsolve_rel_diff"] = abs(ref - out["et"]) / out["et"]
        if jsfs_solve is not None:
            want = jsfs_solve()
            out["jsfs_splu_one_s"] = best(jsfs_solve, 2, 5.0)
            out["jsfs_max_rel_diff"] = float(np.max(np.abs(jsfs - want) / np.abs(want)))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def cache_cold(n: int, directory: str) -> dict:
    """``kingman(n)`` blocks recorded into the empty cache ``directory``: stages, files."""
    import os

    import phasetrace as pt

    pt.record_trace(pt.models.kingman(3)).moments([1.0])
    t0 = time.perf_counter()
    graph = pt.models.kingman(n)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pt.compute_trace(graph, cache_dir=directory)
    record_s = time.perf_counter() - t0
    stats = pt.last_run_stats()
    files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
    return {
        "n": n,
        "vertices": len(graph),
        "build_s": build_s,
        "record_s": record_s,
        "stages": stats.seconds,
        "units": stats.units,
        "distinct": stats.unique,
        "files": len(files),
        "bytes": sum(os.path.getsize(f) for f in files),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cache_warm(n: int, directory: str) -> dict:
    import phasetrace as pt

    graph = pt.models.kingman(n)
    t0 = time.perf_counter()
    pt.compute_trace(graph, cache_dir=directory)
    return {"warm_s": time.perf_counter() - t0, "whole": pt.last_run_stats().traces_from_cache}


def measure(model: str, n: int) -> dict:
    import phasetrace as pt

    theta = np.array(THETA[model])
    pt.record_trace(build(model, 3)).moments(theta)  # load the kernel before timing
    t0 = time.perf_counter()
    graph = build(model, n)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace = pt.compute_trace(graph, cache=False)
    record_s = time.perf_counter() - t0
    stats = pt.last_run_stats()
    s = trace.summary()
    a = trace.arrays
    out = {
        "model": model,
        "n": n,
        "vertices": len(graph),
        "edges": graph.n_edges,
        "build_s": build_s,
        "record_s": record_s,
        "record_stages": stats.seconds,
        "strategy": stats.strategy,
        "ops": s["ops"],
        "x_program": s["x_program"],
        "row_entries": s["row_entries"],
        "exit_entries": int(a["exit_dst"].shape[0]),
    }
    out["trace_size"] = out["ops"] + out["x_program"] + out["row_entries"] + out["exit_entries"]
    value = float(trace.expectation(theta))
    out["et_one_s"] = best(lambda: trace.expectation(theta))
    thetas = np.random.default_rng(0).uniform(0.5, 2.0, (1000, theta.size)) * theta
    out["et_batch_per_theta_s"] = best(lambda: trace.expectation(thetas), 3) / 1000
    out["value_grad_one_s"] = best(lambda: trace.moments_and_jacobian(theta))
    ref, solve, _ = sparse_baseline(graph, theta)
    out["spsolve_one_s"] = best(solve, 3)
    out["spsolve_rel_diff"] = abs(ref - value) / value
    if model == "kingman":
        rewards = np.stack([trace.rewards_from(lambda st, i=i: st[i]) for i in range(n - 1)])
        sfs = trace.expectation(theta, rewards=rewards)
        out["sfs_one_s"] = best(lambda: trace.expectation(theta, rewards=rewards))
        out["sfs_max_abs_err"] = float(np.max(np.abs(sfs - 2 / np.arange(1, n))))
        _, sfs_solve = sfs_baseline(graph, theta, n)
        out["sfs_splu_one_s"] = best(sfs_solve, 3)
    if model == "two_island" and n <= 100:
        out.update(measure_jax(trace, thetas))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure_jax(trace, thetas) -> dict:
    try:
        import jax

        from phasetrace.jax import moments_fn
    except ImportError as exc:
        return {"jax": f"not measured: {exc}"}
    f = moments_fn(trace, k=1)
    vg = jax.jit(jax.vmap(jax.value_and_grad(lambda t: f(t)[0])))
    with jax.enable_x64(True):
        th = jax.numpy.asarray(thetas)
        return {"jax_vmap_value_grad_1000_s": best(lambda: jax.block_until_ready(vg(th)), 5)}


def warm_pair(n: int, directory: str) -> dict:
    """Fill ``directory`` in this child; the caller then runs :func:`warm_child` fresh."""
    import phasetrace as pt

    pt.compute_trace(pt.models.two_island(n), cache_dir=directory)
    return {}


def warm_child(n: int, directory: str) -> dict:
    import phasetrace as pt

    t0 = time.perf_counter()
    graph = pt.models.two_island(n)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pt.compute_trace(graph, cache_dir=directory)
    warm_s = time.perf_counter() - t0
    return {
        "n": n,
        "vertices": len(graph),
        "build_s": build_s,
        "warm_s": warm_s,
        "warm_over_build": warm_s / build_s,
        "whole_from_cache": pt.last_run_stats().traces_from_cache,
    }


# -- the parent ---------------------------------------------------------------------------------
def child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def fits(rows: list[dict]) -> dict:
    ti = [r for r in rows if r["model"] == "two_island"]
    v = [r["vertices"] for r in ti]
    return {
        "two_island_trace_size": slope(v, [r["trace_size"] for r in ti]),
        "two_island_record_s": slope(v, [r["record_s"] for r in ti]),
        "two_island_et_one_s": slope(v, [r["et_one_s"] for r in ti]),
        "two_island_spsolve_one_s": slope(v, [r["spsolve_one_s"] for r in ti]),
    }


def ms(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def markdown(report: dict) -> str:
    rows, warm, f = report["models"], report["warm"], report["slopes"]
    out = [
        "# Scaling: two_island(n) and kingman(n)",
        "",
        f"Machine: {report['machine_line']}. Date: {report['date']}.",
        "Each model in a fresh process; times are the best of several repeats. `spsolve` is "
        "`scipy.sparse.linalg.spsolve` on the sparse `−S` assembled at θ, timed in the same "
        "process; *ratio* is spsolve time over the trace's time for one θ.",
        "",
        "| model | vertices | edges | build | record | trace size | E[T], one θ | per θ "
        "(batch 1000) | value + grad | spsolve, one θ | ratio | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']}({r['n']}) | {r['vertices']:,} | {r['edges']:,} | {ms(r['build_s'])} "
            f"| {ms(r['record_s'])} | {r['trace_size']:,} | {ms(r['et_one_s'])} "
            f"| {ms(r['et_batch_per_theta_s'])} | {ms(r['value_grad_one_s'])} "
            f"| {ms(r['spsolve_one_s'])} | {r['spsolve_one_s'] / r['et_one_s']:.1f}× "
            f"| {r['peak_rss_mb']:.0f} MB |"
        )
    out += [
        "",
        "Trace size = recorded ops + x-program + internal row entries + exit entries. "
        "Fitted slopes against vertices (log-log, two_island): "
        + ", ".join(f"{k.replace('two_island_', '')} {v:.2f}" for k, v in f.items())
        + ".",
        "",
    ]
    king = [r for r in rows if r["model"] == "kingman"]
    if king:
        out += [
            "| kingman(n), block-counting | vertices | n − 1 SFS expectations, one θ | "
            "sparse LU + n − 1 solves | ratio | max abs. error vs 2/i |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in king:
            out.append(
                f"| kingman({r['n']}) | {r['vertices']:,} | {ms(r['sfs_one_s'])} | "
                f"{ms(r['sfs_splu_one_s'])} | {r['sfs_splu_one_s'] / r['sfs_one_s']:.1f}× "
                f"| {r['sfs_max_abs_err']:.1e} |"
            )
        out.append("")
    jax_rows = [r for r in rows if "jax_vmap_value_grad_1000_s" in r]
    if jax_rows:
        out += ["| JAX `jit(vmap(value_and_grad))`, 1000 θ | time |", "|---|---:|"]
        out += [
            f"| two_island({r['n']}) | {ms(r['jax_vmap_value_grad_1000_s'])} |" for r in jax_rows
        ]
        out.append("")
    blocks = report.get("blocks", [])
    if blocks:
        out += blocks_markdown(blocks)
    cache = report.get("cache", [])
    if cache:
        out += [
            "## The cache with many small units",
            "",
            "`kingman(n)` blocks (one unit per state), `compute_trace` into an empty cache "
            "directory (default strategy), then the same graph in a fresh process.",
            "",
            "| model | states | units (distinct) | record | of which store | files | bytes "
            "| peak | warm, fresh process |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in cache:
            out.append(
                f"| kingman({c['n']}) | {c['vertices']:,} | {c['units']:,} ({c['distinct']:,}) "
                f"| {ms(c['record_s'])} | {ms(c['stages'].get('store', 0.0))} | {c['files']} "
                f"| {c['bytes'] / 1e6:.0f} MB | {c['peak_rss_mb']:.0f} MB | {ms(c['warm_s'])} |"
            )
        out.append("")
    if warm:
        out += [
            "Warm `compute_trace` in a fresh process (the cache filled by another process):",
            "",
            "| model | vertices | build the graph | warm compute_trace | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for w in warm:
            out.append(
                f"| two_island({w['n']}) | {w['vertices']:,} | {ms(w['build_s'])} | "
                f"{ms(w['warm_s'])} | {w['warm_over_build']:.2f} |"
            )
        out.append("")
    return "\n".join(out)


def _model_name(model: str, n: int) -> str:
    return f"joint blocks {n}+{n}" if model == "joint_blocks" else f"({n}, {n}, {n}) blocks"


def blocks_markdown(rows: list[dict]) -> list[str]:
    new = [r for r in rows if r["path"] == "solve blocks"]
    old = {(r["model"], r["n"]): r for r in rows if r["path"] == "taped"}
    out = [
        "## Large strongly connected components: solve blocks",
        "",
        "Joint block counting on two islands (`benchmarks/_joint_blocks.py`, θ = (1, 0.5)) "
        'and `structured_coalescent((n, n, n), "blocks")`. *SCCs*: taped / solve blocks '
        '(largest of each). *spsolve*: `scipy.sparse.linalg.spsolve(permc_spec="NATURAL")` '
        "on `−S` in breadth-first order (its best ordering here), assembled at θ, same "
        "process; *ratio* is its time over the trace's. *JSFS*: every JSFS expectation in "
        "one call, against one `splu` (same ordering) solved for all of them.",
        "",
        "| model | states | SCCs: taped / solved (largest) | record | trace size | E[T], one θ "
        "| per θ (batch 64) | value + grad | JSFS, one θ | spsolve | ratio | splu, JSFS | peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in new:
        jsfs = f"{ms(r['jsfs_one_s'])} ({r['jsfs_vectors']})" if "jsfs_one_s" in r else "–"
        sp = ms(r["spsolve_one_s"]) if "spsolve_one_s" in r else "not run"
        ratio = f"{r['spsolve_one_s'] / r['et_one_s']:.0f}×" if "spsolve_one_s" in r else "–"
        lu = ms(r["jsfs_splu_one_s"]) if "jsfs_splu_one_s" in r else "–"
        out.append(
            f"| {_model_name(r['model'], r['n'])} | {r['vertices']:,} | {r['sccs_taped']} / "
            f"{r['sccs_solved']} ({r['largest_taped']} / {r['largest_solved']}) | "
            f"{ms(r['record_s'])} | {r['trace_size']:,} | {ms(r['et_one_s'])} | "
            f"{ms(r['et_batch_per_theta_s'])} | {ms(r['value_grad_one_s'])} | {jsfs} | {sp} "
            f"| {ratio} | {lu} | {r['peak_rss_mb']:.0f} MB |"
        )
    out += [
        "",
        "The old path (every SCC taped; recorded in this process, sequentially), same "
        "machine; beyond the sizes measured it needs more memory than this benchmark "
        "allows, and the figures are those measured when the problem was found (issue 18):",
        "",
        "| model | ops | record | E[T], one θ | JSFS, one θ | peak | solve blocks: record / E[T] "
        "/ peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in new:
        key = (r["model"], r["n"])
        o = old.get(key)
        mine = f"{ms(r['record_s'])} / {ms(r['et_one_s'])} / {r['peak_rss_mb']:.0f} MB"
        name = _model_name(*key)
        if o is not None:
            jsfs = ms(o["jsfs_one_s"]) if "jsfs_one_s" in o else "–"
            out.append(
                f"| {name} | {o['ops']:,} | {ms(o['record_s'])} | {ms(o['et_one_s'])} | "
                f"{jsfs} | {o['peak_rss_mb']:.0f} MB | {mine} |"
            )
        elif key in OLD_PATH_QUOTED:
            q = OLD_PATH_QUOTED[key]
            if "failure" in q:
                out.append(f"| {name} | 241,000,000 | {q['failure']} | – | – | – | {mine} |")
            else:
                out.append(
                    f"| {name} (quoted) | {q['ops']:,.0f} | {ms(q['record_s'])} | "
                    f"{ms(q['et_one_s'])} | – | {q['peak_rss_mb']:.0f} MB | {mine} |"
                )
    out.append("")
    return out


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, marker in (("two_island", "o"), ("kingman", "s")):
        rs = [r for r in report["models"] if r["model"] == model]
        if not rs:
            continue
        v = [r["vertices"] for r in rs]
        ax1.loglog(v, [r["trace_size"] for r in rs], marker=marker, label=f"{model}: trace size")
        ax1.loglog(v, [r["edges"] for r in rs], marker=marker, ls=":", label=f"{model}: edges")
        for key, label in (
            ("record_s", "record"),
            ("et_one_s", "E[T], one θ"),
            ("spsolve_one_s", "spsolve, one θ"),
        ):
            ax2.loglog(v, [r[key] for r in rs], marker=marker, label=f"{model}: {label}")
    s = report["slopes"]
    ax1.set_title(f"trace size (two_island slope {s['two_island_trace_size']:.2f})")
    ax2.set_title(
        f"seconds (slopes: record {s['two_island_record_s']:.2f}, "
        f"E[T] {s['two_island_et_one_s']:.2f})"
    )
    for ax in (ax1, ax2):
        ax.set_xlabel("vertices")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--only",
        choices=("chains", "blocks", "cache"),
        help="one family (the others keep their results)",
    )
    p.add_argument(
        "--sizes", help="with --only blocks: the n to run, e.g. 3,4 or joint_blocks:7,blocks3:5"
    )
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "blocks":
            result = measure_blocks(rest[0], int(rest[1]), rest[2] == "taped")
        elif kind in ("cache_cold", "cache_warm"):
            fn = cache_cold if kind == "cache_cold" else cache_warm
            result = fn(int(rest[0]), rest[1])
        else:
            fn = {"measure": measure, "fill": warm_pair, "warm": warm_child}[kind]
            result = fn(rest[0], int(rest[1])) if kind == "measure" else fn(int(rest[0]), rest[1])
        print(json.dumps(result))
        return 0
    out = Path(args.out)
    stem = "scale-quick" if args.quick else "scale"
    previous = {}
    if args.only and (out / f"{stem}.json").is_file():
        previous = json.loads((out / f"{stem}.json").read_text())
    print(describe_line(), flush=True)
    t_start = time.perf_counter()
    blocks = previous.get("blocks", [])
    cache = previous.get("cache", [])
    if args.only in (None, "blocks"):
        blocks = run_blocks(args, blocks)
    if args.only in (None, "cache"):
        cache = run_cache(args)
    if args.only in ("blocks", "cache"):
        report = {"models": [], "warm": [], "slopes": {}, **previous}
        report.update(blocks=blocks, cache=cache)
        report.update(
            date=time.strftime("%Y-%m-%d %H:%M"),
            machine=describe(("numpy", "numba", "scipy", "jax", "loky")),
            machine_line=describe_line(),
        )
        return write(report, out, stem)
    sizes = [("two_island", n) for n in (QUICK_TWO_ISLAND if args.quick else TWO_ISLAND)]
    sizes += [("kingman", n) for n in (QUICK_KINGMAN if args.quick else KINGMAN)]
    rows = []
    for model, n in sizes:
        r = child("measure", model, str(n))
        print(
            f"{model}({n}): {r['vertices']} vertices, record {r['record_s']:.2f} s, size "
            f"{r['trace_size']}, E[T] {r['et_one_s'] * 1e3:.3f} ms, spsolve "
            f"{r['spsolve_one_s'] * 1e3:.3f} ms, peak {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        rows.append(r)
    warm = []
    for n in QUICK_WARM if args.quick else WARM:
        with tempfile.TemporaryDirectory(prefix="phasetrace-scale-") as d:
            child("fill", str(n), d)
            runs = [child("warm", str(n), d) for _ in range(3)]
            warm.append(min(runs, key=lambda w: w["warm_s"]))
        print(f"warm two_island({n}): {warm[-1]}", flush=True)
    report = {
        "schema": "phasetrace-scale/2",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe(("numpy", "numba", "scipy", "jax", "loky")),
        "machine_line": describe_line(),
        "quick": args.quick,
        "models": rows,
        "warm": warm,
        "slopes": fits(rows),
        "blocks": blocks,
        "cache": cache,
        "wall_s": time.perf_counter() - t_start,
    }
    return write(report, out, stem)


CACHE_N = [45, 50]
QUICK_CACHE_N = [35]


def run_cache(args) -> list[dict]:
    rows = []
    for n in QUICK_CACHE_N if args.quick else CACHE_N:
        with tempfile.TemporaryDirectory(prefix="phasetrace-scale-cache-") as d:
            r = child("cache_cold", str(n), d)
            r.update(child("cache_warm", str(n), d))
        print(
            f"kingman({n}) cache cold: record {r['record_s']:.1f} s, {r['files']} files, "
            f"store {r['stages'].get('store', 0):.2f} s, warm {r['warm_s']:.2f} s",
            flush=True,
        )
        rows.append(r)
    return rows


def run_blocks(args, previous: list[dict]) -> list[dict]:
    """The large-SCC families, each size in a fresh child (solve blocks, then the old path
    where it fits); results replace those of the same model, size and path."""
    joint = QUICK_JOINT if args.quick else JOINT
    three = QUICK_BLOCKS3 if args.quick else BLOCKS3
    sizes = [("joint_blocks", n) for n in joint] + [("blocks3", n) for n in three]
    if args.sizes:  # "3,4" (both families) or "joint_blocks:7,blocks3:5"
        wanted = set()
        for token in args.sizes.split(","):
            model, _, n = token.rpartition(":")
            wanted |= {(m, int(n)) for m, _ in sizes if not model or m == model}
        sizes = [x for x in sizes if x in wanted]
    rows = {(r["model"], r["n"], r["path"]): r for r in previous}
    for model, n in sizes:
        paths = ["solve"] + (["taped"] if n <= TAPED_MAX[model] else [])
        for path in paths:
            r = child("blocks", model, str(n), path)
            print(
                f"{_model_name(model, n)} [{r['path']}]: {r['vertices']} states, SCCs "
                f"{r['sccs_taped']} taped / {r['sccs_solved']} solved (largest "
                f"{r['largest_solved']}), record {r['record_s']:.2f} s, E[T] "
                f"{r['et_one_s'] * 1e3:.2f} ms, peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
            rows[(model, n, r["path"])] = r
    order = {m: i for i, m in enumerate(("joint_blocks", "blocks3"))}
    return sorted(rows.values(), key=lambda r: (order[r["model"]], r["n"], r["path"]))


def write(report: dict, out: Path, stem: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    plotted = plot(report, out / f"{stem}.png") if report.get("models") else False
    print(markdown(report))
    print(f"wrote {out / stem}.json, .md" + (", .png" if plotted else " (no plot)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
