"""JAX evaluation of traces against the numpy evaluator: compile time, batches, gradients.

Run ``python benchmarks/jax_eval.py`` (about three minutes on 2 cores; two_island 20, 50
and 100) or ``--quick`` (two_island(20) only, under 20 s); ``--json PATH`` also writes the
numbers. For each trace, one after the other in one process:

1. **setup**: numpy builds its level-scheduled plan; JAX lowers the trace to its step
   program (numpy, :mod:`phasetrace.jax._lower`) and XLA compiles it (``jit(...).lower(...)
   .compile()``, for the batched function and for the one-θ function).
2. **eval**: ``E[T]``, ``E[T²]`` for a batch of ``--batch`` θ (default 1000): numpy's
   ``Trace.moments`` against the batched JAX function (``moments_fn(..., batched=True)``);
   and one θ at a time with ``jax.jit(f)``.
3. **gradient** of ``E[T]``: numpy has none, so central differences (``2·n_params`` more
   evaluations, batched); JAX: ``jax.grad`` of the batch sum (every θ's gradient in one
   call) and ``jax.jit(jax.grad(f))`` for one θ, with the ratio to one evaluation.

Times are the best of a few repetitions (the machine is shared). Targets (from the issue):
XLA compile ≤ 1 s for two_island(100); batched JAX evaluation of two_island(50), 1000 θ,
≤ 0.2 s; a gradient ≤ 3× one evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax

import phasetrace as pt
from phasetrace.jax import moments_fn
from phasetrace.kernel import CompiledTrace

K = 2


def machine_line() -> str:
    try:
        from _machine import describe_line

        return describe_line()
    except ImportError:  # pragma: no cover - the helper is optional
        import os
        import platform

        return (
            f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
            f"numpy {np.__version__}, jax {jax.__version__}"
        )


def best(fn, reps: int) -> float:
    """Best wall time of ``reps`` calls (the first call is a warm-up, not counted)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_one(n: int, batch: int, reps: int) -> dict:
    trace, t_record = timed(lambda: pt.record_trace(pt.models.two_island(n)))
    rng = np.random.default_rng(0)
    thetas = rng.uniform(0.5, 2.0, size=(batch, trace.n_params))
    row = {"n": n, "ops": trace.n_ops, "record_s": t_record, "batch": batch}

    # numpy
    _, row["np_setup_s"] = timed(lambda: CompiledTrace(trace))
    trace.moments(thetas[:2], k=K)  # builds and caches the plan
    row["np_eval_s"] = best(lambda: trace.moments(thetas, k=K), reps)
    h = 1e-6
    shifted = np.concatenate(
        [thetas + s * h * e for e in np.eye(trace.n_params) for s in (1.0, -1.0)]
    )
    row["np_grad_s"] = best(lambda: trace.moments(shifted, k=1), reps)

    # JAX
    with jax.enable_x64(True):
        g = moments_fn(trace, k=K, batched=True)
        f = moments_fn(trace, k=K)
        low, row["jax_lower_s"] = timed(g.lowered)
        f.lowered()  # the same lowering is built once per function
        row["rows"] = low.n_rows
        row["steps"] = low.segments[0].n_steps
        th = jax.numpy.asarray(thetas)
        g_jit, f_jit = jax.jit(g), jax.jit(f)
        _, row["jax_compile_batch_s"] = timed(lambda: g_jit.lower(th).compile())
        _, row["jax_compile_one_s"] = timed(lambda: f_jit.lower(th[0]).compile())
        grad_g = jax.jit(jax.grad(lambda t: g(t)[:, 0].sum()))
        grad_f = jax.jit(jax.grad(lambda t: f(t)[0]))
        _, row["jax_compile_grad_s"] = timed(lambda: grad_g.lower(th).compile())
        row["jax_eval_s"] = best(lambda: g_jit(th), reps)
        row["jax_grad_s"] = best(lambda: grad_g(th), reps)
        one = th[0]
        inner = 20
        row["jax_eval_one_s"] = best(lambda: [f_jit(one) for _ in range(inner)][-1], reps) / inner
        row["jax_grad_one_s"] = best(lambda: [grad_f(one) for _ in range(inner)][-1], reps) / inner
        err = np.max(np.abs(np.asarray(g_jit(th)) / trace.moments(thetas, k=K) - 1))
        row["max_rel_err"] = float(err)
    return row


def table(rows: list[dict]) -> str:
    def us(seconds: float, per: int = 1) -> str:
        v = seconds / per * 1e6
        return f"{v:.0f} µs" if v >= 100 else f"{v:.1f} µs"

    head = (
        "| two_island(n) | ops | setup numpy / JAX lowering / XLA compile (batch, 1 θ, grad) "
        "| eval per θ, batch: numpy / JAX (speedup) | eval 1 θ, jit | gradient per θ, batch: "
        "numpy FD / JAX (× eval) | gradient 1 θ (× eval) |\n"
        "|---|---:|---|---|---:|---|---:|"
    )
    lines = [head]
    for r in rows:
        b = r["batch"]
        setup = (
            f"{r['np_setup_s']:.2f} s / {r['jax_lower_s']:.2f} s / "
            f"{r['jax_compile_batch_s']:.2f}, {r['jax_compile_one_s']:.2f}, "
            f"{r['jax_compile_grad_s']:.2f} s"
        )
        ev = (
            f"{us(r['np_eval_s'], b)} / {us(r['jax_eval_s'], b)} "
            f"({r['np_eval_s'] / r['jax_eval_s']:.1f}×)"
        )
        gr = (
            f"{us(r['np_grad_s'], b)} / {us(r['jax_grad_s'], b)} "
            f"({r['jax_grad_s'] / r['jax_eval_s']:.1f}×)"
        )
        one = f"{us(r['jax_grad_one_s'])} ({r['jax_grad_one_s'] / r['jax_eval_one_s']:.1f}×)"
        lines.append(
            f"| {r['n']} | {r['ops']} | {setup} | {ev} | {us(r['jax_eval_one_s'])} | {gr} | {one} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two_island(20) only (< 20 s)")
    ap.add_argument("--batch", type=int, default=1000, help="θ per batch (default 1000)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    sizes = [20] if args.quick else [20, 50, 100]
    rows = []
    for n in sizes:
        reps = 3 if n <= 50 else 1
        rows.append(bench_one(n, args.batch, reps))
        print(f"two_island({n}) done", file=sys.stderr, flush=True)
    print(f"k = {K} moments, batch = {args.batch} θ, times are best of a few runs.\n")
    print(table(rows))
    print(f"\nMachine: {machine_line()}")
    print(f"Largest relative difference JAX vs numpy: {max(r['max_rel_err'] for r in rows):.1e}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
