"""``python -m phasetrace.demo``: record and evaluate a two-island model, with timings."""

from __future__ import annotations

import argparse
import time

import numpy as np

import phasetrace as pt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="number of lineages (default 50)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    graph = pt.models.two_island(args.n)
    t1 = time.perf_counter()
    trace = pt.record_trace(graph)
    t2 = time.perf_counter()
    s = trace.summary()
    print(f"two_island({args.n}): {s['vertices']} vertices, {s['ops']} recorded ops")
    print(f"  build {t1 - t0:.3f} s, record {t2 - t1:.3f} s")
    theta = np.array([1.0, 0.5])
    t_kernel = time.perf_counter()
    trace.moments(theta[None].repeat(16, axis=0))  # the one-θ, batched and gradient kernels
    m = trace.moments(theta, k=3)
    trace.moments_and_jacobian(theta * 1.5)  # another θ, so the timed call below is not memoised
    print(
        f"  kernel ready in {time.perf_counter() - t_kernel:.1f} s (compiled on the first "
        "run, about a minute; later runs load it from numba's disk cache)"
    )
    print(
        f"  theta = (c, m) = {theta.tolist()}: E[T] = {m[0]:.10g}, E[T^2] = {m[1]:.10g}, "
        f"E[T^3] = {m[2]:.10g}"
    )
    t3 = time.perf_counter()
    _, jac = trace.moments_and_jacobian(theta)
    t4 = time.perf_counter()
    print(f"  dE[T]/d(c, m) = {jac[0].tolist()} ({(t4 - t3) * 1e3:.2f} ms, with E[T])")
    thetas = np.column_stack([np.linspace(0.5, 2.0, 1000), np.linspace(0.1, 1.0, 1000)])
    t3 = time.perf_counter()
    e = trace.expectation(thetas)
    t4 = time.perf_counter()
    ms = (t4 - t3) * 1e3
    print(
        f"  E[T] for 1000 thetas: {ms:.1f} ms ({ms / len(thetas):.4f} ms per theta, "
        f"range {e.min():.4g} .. {e.max():.4g})"
    )


if __name__ == "__main__":
    main()
