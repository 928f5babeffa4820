"""How phasetrace scales with the graph: build, record, trace size, evaluation, memory.

    python benchmarks/scale.py            # two_island(25 … 1000), kingman(20 … 40): ~5 min
    python benchmarks/scale.py --quick    # small sizes only: ~1 min
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
THETA = {"two_island": [1.0, 0.5], "kingman": [1.0]}


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
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        fn = {"measure": measure, "fill": warm_pair, "warm": warm_child}[kind]
        result = fn(rest[0], int(rest[1])) if kind == "measure" else fn(int(rest[0]), rest[1])
        print(json.dumps(result))
        return 0
    print(describe_line(), flush=True)
    sizes = [("two_island", n) for n in (QUICK_TWO_ISLAND if args.quick else TWO_ISLAND)]
    sizes += [("kingman", n) for n in (QUICK_KINGMAN if args.quick else KINGMAN)]
    t_start = time.perf_counter()
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
        "schema": "phasetrace-scale/1",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe(("numpy", "numba", "scipy", "jax", "loky")),
        "machine_line": describe_line(),
        "quick": args.quick,
        "models": rows,
        "warm": warm,
        "slopes": fits(rows),
        "wall_s": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "scale-quick" if args.quick else "scale"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    plotted = plot(report, out / f"{stem}.png")
    print(markdown(report))
    print(f"wrote {out / stem}.json, .md" + (", .png" if plotted else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
