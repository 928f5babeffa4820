"""Record and evaluate the built-in models; prints a Markdown table.

    python benchmarks/record_and_evaluate.py [--quick] [--batch 1000] [--json out.json]

For each model: vertices, recorded ops, record time (``record_trace``, best of a few),
kernel set-up time (once per trace), and evaluation time per θ of ``E[T]`` and of
``E[T], E[T²], E[T³]`` within one batch of ``--batch`` θ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import phasetrace as pt
from _machine import describe, describe_line

MODELS = [
    ("two_island(20)", lambda: pt.models.two_island(20)),
    ("two_island(50)", lambda: pt.models.two_island(50)),
    ("two_island(100)", lambda: pt.models.two_island(100)),
    ("kingman(20)", lambda: pt.models.kingman(20)),
    ("kingman(25)", lambda: pt.models.kingman(25)),
]


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(models, batch: int, repeat: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name, build in models:
        graph = build()
        t_rec, trace = best_of(lambda g=graph: pt.record_trace(g), repeat)
        t0 = time.perf_counter()
        trace.expectation(np.ones(trace.n_params))  # builds the kernel's arrays (and loads it)
        t_plan = time.perf_counter() - t0
        thetas = rng.uniform(0.5, 2.0, (batch, trace.n_params))
        t_e1, _ = best_of(lambda t=trace, th=thetas: t.expectation(th), repeat)
        t_e3, _ = best_of(lambda t=trace, th=thetas: t.moments(th, k=3), repeat)
        rows.append(
            {
                "model": name,
                "vertices": trace.n_vertices,
                "ops": trace.n_ops,
                "record_s": t_rec,
                "plan_s": t_plan,
                "batch": batch,
                "ET_batch_s": t_e1,
                "ET_per_theta_ms": 1e3 * t_e1 / batch,
                "k3_per_theta_ms": 1e3 * t_e3 / batch,
            }
        )
        print(f"  done {name}", file=sys.stderr, flush=True)
    return rows


def table(rows) -> str:
    head = (
        "| model | vertices | ops | record (s) | kernel set-up (s) | E[T], batch (s) "
        "| E[T] per θ (ms) "
        "| k=3 per θ (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    body = [
        f"| {r['model']} | {r['vertices']} | {r['ops']} | {r['record_s']:.3f} | {r['plan_s']:.3f} "
        f"| {r['ET_batch_s']:.3f} | {r['ET_per_theta_ms']:.4f} | {r['k3_per_theta_ms']:.4f} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two_island(20) and kingman(20) only")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    models = (
        [m for m in MODELS if m[0] in ("two_island(20)", "kingman(20)")] if args.quick else MODELS
    )
    rows = run(models, args.batch, 1 if args.quick else args.repeat)
    print(f"Machine: {describe_line()}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
