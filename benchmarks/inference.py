"""Inference: fit times, starts on several workers, interval coverage, and moments side by side.

    python benchmarks/inference.py                    # ~5 min: timings + 20 data sets
    python benchmarks/inference.py --datasets 100     # the coverage study of the issue
    python benchmarks/inference.py --moments-python /tmp/moments-venv/bin/python

The model is isolation with migration in the units of demes (docs/inference.md): an
ancestor of 10,000 splits 3,000 generations ago into A (3,000) and B (12,000), migration
2e-4 from A into B and 5e-5 back; 4 + 4 haploid samples. Four parameters are fitted
(N_A, N_B, T_split_X, m_A_B); N_X and m_B_A are held at the truth. Data sets are
Poisson draws of the exact expected joint SFS (``--sites`` segregating sites expected),
i.e. unlinked sites, which msprime's simulations agree with (tests/test_demography.py).

What is measured:

1. one start, sequential, Poisson likelihood: wall time per fit (median over data sets;
   the model's state space is built before and reported apart);
2. 1 and 8 starts on ``sequential``, ``loky`` with 1 worker and ``loky`` with 2 workers,
   pools warm (a fit with another seed first, so each worker has built the model), best
   of ``--repeat``; the answers are checked equal bit for bit across the three;
3. coverage of 95 % intervals (natural and log scale) over ``--datasets`` data sets,
   Poisson (``μ·L`` known) and multinomial (N_X fixes the scale);
4. bias: every data set also fitted with the multinomial likelihood from the same start,
   by phasetrace and (when ``--moments-python`` or ``PHASETRACE_BENCH_MOMENTS`` names an
   interpreter with moments-popgen and demes) by ``moments.Inference.optimize_log``, in a
   subprocess (``_inference_moments.py``); plus both fitted to the noise-free expected
   spectrum, where any distance from the truth is the model's own error.

moments is never a dependency; without it the report says it was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, describe_line
from phasetrace._files import write_atomic

RESULTS = Path(__file__).parent / "results"
YAML = """\
time_units: generations
demes:
- name: X
  epochs: [{start_size: 10000, end_time: 3000}]
- name: A
  ancestors: [X]
  epochs: [{start_size: 3000}]
- name: B
  ancestors: [X]
  epochs: [{start_size: 12000}]
migrations:
- {source: A, dest: B, rate: 2e-4}
- {source: B, dest: A, rate: 5e-5}
"""
FREE = ["N_A", "N_B", "T_split_X", "m_A_B"]
START_FACTORS = np.array([1.6, 0.6, 0.5, 2.0])  # the start, relative to the truth
BOUND_FACTOR = 50.0  # moments' box: truth ÷/× this (phasetrace's default box is 1e4)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def build():
    import demes

    import phasetrace as pt

    t0 = time.perf_counter()
    model = pt.models.from_demes(demes.loads(YAML), {"A": 4, "B": 4})
    expected = pt.jsfs(model)
    return model, expected, time.perf_counter() - t0


def datasets(expected: np.ndarray, sites: float, count: int, seed: int):
    u = sites / expected.sum()
    rng = np.random.default_rng(seed)
    return u, rng.poisson(u * expected, size=(count, *expected.shape)).astype(float)


def idx(model) -> list[int]:
    return [model.parameter_names.index(n) for n in FREE]


def timings(model, observed, u, repeat: int) -> dict:
    import phasetrace as pt

    start = dict(zip(FREE, model.theta[idx(model)] * START_FACTORS, strict=True))
    one = []
    for data in observed[: max(3, repeat)]:
        t0 = time.perf_counter()
        r = pt.fit(model, data, free=FREE, start=start, scaled_mutation=u, strategy="sequential")
        one.append((time.perf_counter() - t0, r.n_evaluations))
    out = {
        "one_start_seconds": [t for t, _ in one],
        "one_start_evaluations": [n for _, n in one],
        "load": load(),
    }
    configs = {"sequential": {"strategy": "sequential"},
               "loky-1": {"strategy": "loky", "n_workers": 1},
               "loky-2": {"strategy": "loky", "n_workers": 2}}  # fmt: skip
    table = {}
    answers = {}
    for name, cfg in configs.items():
        pt.fit(model, observed[0], free=FREE, start=start, scaled_mutation=u, n_starts=8,
               seed=99, **cfg)  # fmt: skip   # warm the pool: every worker builds the model
        for n_starts in (1, 8):
            best = np.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = pt.fit(model, observed[0], free=FREE, start=start, scaled_mutation=u,
                           n_starts=n_starts, seed=1, **cfg)  # fmt: skip
                best = min(best, time.perf_counter() - t0)
            table[f"{name}/{n_starts}"] = best
            answers[f"{name}/{n_starts}"] = r.theta.tobytes()
        print(f"  {name}: 1 start {table[f'{name}/1']:.2f} s, 8 starts {table[f'{name}/8']:.2f} s"
              f" ({load()})", flush=True)  # fmt: skip
    same = all(answers[f"{n}/8"] == answers["sequential/8"] for n in configs)
    out.update(
        seconds=table,
        speedup_8_starts_2_vs_1_workers=table["loky-1/8"] / table["loky-2/8"],
        speedup_8_starts_2_workers_vs_sequential=table["sequential/8"] / table["loky-2/8"],
        identical_answers=same,
        load_after=load(),
    )
    pt.shutdown_executors()
    return out


def study(model, observed, u) -> dict:
    import phasetrace as pt

    truth = model.theta[idx(model)]
    start = dict(zip(FREE, truth * START_FACTORS, strict=True))
    rows = {"poisson": [], "multinomial": []}
    t_all = time.perf_counter()
    for k, data in enumerate(observed):
        for kind, mut in (("poisson", u), ("multinomial", None)):
            t0 = time.perf_counter()
            r = pt.fit(model, data, free=FREE, start=start, scaled_mutation=mut,
                       strategy="sequential")  # fmt: skip
            seconds = time.perf_counter() - t0
            ci = r.confidence_intervals(0.95)
            cil = r.confidence_intervals(0.95, scale="log")
            rows[kind].append({
                "estimate": r.theta[idx(model)].tolist(),
                "stderr": r.stderr.tolist(),
                "covered": [bool(ci[n][0] <= t <= ci[n][1]) for n, t in zip(FREE, truth,
                                                                              strict=True)],
                "covered_log": [bool(cil[n][0] <= t <= cil[n][1]) for n, t in zip(FREE, truth,
                                                                                   strict=True)],
                "converged": r.converged,
                "at_bounds": list(r.at_bounds),
                "seconds": seconds,
            })  # fmt: skip
        if (k + 1) % 10 == 0:
            print(f"  {k + 1} data sets ({time.perf_counter() - t_all:.0f} s, {load()})",
                  flush=True)  # fmt: skip
    return rows


def summary(rows: list[dict], truth: np.ndarray) -> dict:
    est = np.array([r["estimate"] for r in rows])
    rel = est / truth - 1
    n = len(rows)
    return {
        "n": n,
        "coverage": np.mean([r["covered"] for r in rows], axis=0).tolist(),
        "coverage_log": np.mean([r["covered_log"] for r in rows], axis=0).tolist(),
        "bias": rel.mean(axis=0).tolist(),
        "bias_se": (rel.std(axis=0, ddof=1) / np.sqrt(n)).tolist() if n > 1 else [0.0] * 4,
        "rmse": np.sqrt((rel**2).mean(axis=0)).tolist(),
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
        "converged": int(sum(r["converged"] for r in rows)),
        "at_bounds": int(sum(bool(r["at_bounds"]) for r in rows)),
    }


def noise_free(model, expected, u) -> list[float]:
    import phasetrace as pt

    truth = model.theta[idx(model)]
    start = dict(zip(FREE, truth * START_FACTORS, strict=True))
    r = pt.fit(model, u * expected, free=FREE, start=start, strategy="sequential")
    return (r.theta[idx(model)] / truth - 1).tolist()


def run_moments(python: str, model, observed, expected, u) -> dict | None:
    truth = model.theta[idx(model)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        data = np.concatenate([observed, (u * expected)[None]])
        np.savez(src, yaml=np.array(YAML), free=np.array(FREE), start=truth * START_FACTORS,
                 lower=truth / BOUND_FACTOR, upper=truth * BOUND_FACTOR, truth=truth,
                 data=data)  # fmt: skip
        run = subprocess.run([python, str(Path(__file__).parent / "_inference_moments.py"),
                              str(src), str(dst)], capture_output=True, text=True,
                             check=False)  # fmt: skip
        if run.returncode != 0:
            print("moments failed:\n" + run.stderr[-3000:])
            return None
        out = json.loads(dst.read_text())
    est = np.array(out["estimates"])
    spectrum = np.array(out["spectrum_at_truth"])
    mask = np.ones(spectrum.shape, bool)
    mask[0, 0] = mask[-1, -1] = False
    mine = expected / expected[mask].sum()
    theirs = spectrum / spectrum[mask].sum()
    return {
        "version": out["version"],
        "seconds_per_spectrum": out["seconds_per_spectrum"],
        "rows": [
            {
                "estimate": e.tolist(),
                "seconds": s,
                "covered": [False] * 4,
                "covered_log": [False] * 4,
                "converged": True,
                "at_bounds": [],
            }
            for e, s in zip(est[:-1], out["seconds"][:-1], strict=True)
        ],
        "noise_free": (est[-1] / truth - 1).tolist(),
        "evaluations": out["evaluations"],
        "spectrum_relative_error": float(np.max(np.abs(theirs[mask] / mine[mask] - 1))),
    }


def report(res: dict) -> str:
    t = res["timings"]
    sec = t["seconds"]
    lines = [
        "# Inference benchmark",
        "",
        f"Run {res['date']} on {res['machine']}; {t['load']} at the start (a shared machine: "
        "other work ran alongside). IM 4 + 4, 4 free parameters (N_A, N_B, T_split_X, "
        f"m_A_B), {res['sites']:.0f} expected sites per data set. "
        "`python benchmarks/inference.py` (see its docstring).",
        "",
        "## Targets",
        "",
        "| measure | target | measured |",
        "|---|---:|---:|",
        f"| one start, fit time (median of {len(t['one_start_seconds'])}) | ≤ 5 s | "
        f"{np.median(t['one_start_seconds']):.2f} s "
        f"({int(np.median(t['one_start_evaluations']))} evaluations) |",
        f"| 8 starts, 2 loky workers vs 1 | ≥ 1.8× | {t['speedup_8_starts_2_vs_1_workers']:.2f}× |",
    ]
    pois = res["summary"]["poisson"]
    cov = ", ".join(f"{n} {100 * c:.0f} %" for n, c in zip(FREE, pois["coverage"], strict=True))
    covl = ", ".join(f"{n} {100 * c:.0f} %" for n, c in zip(FREE, pois["coverage_log"],
                                                             strict=True))  # fmt: skip
    lines.append(f"| coverage of 95 % intervals, {pois['n']} data sets (Poisson) | 90-98 % | "
                 f"{cov} (log scale: {covl}) |")  # fmt: skip
    nf = res["noise_free"]
    mom = res.get("moments")
    if mom:
        mine = max(abs(v) for v in nf)
        theirs = max(abs(v) for v in mom["noise_free"])
        lines.append(f"| bias on noise-free data (largest relative error) | smaller than "
                     f"moments' | {mine:.1e} vs moments {theirs:.1e} |")  # fmt: skip
    else:
        lines.append("| bias vs moments | smaller than moments' | moments not run |")
    lines += [
        "",
        f"## Fit times (seconds, best of {res['repeat']}; warm pools)",
        "",
        "| executor | 1 start | 8 starts |",
        "|---|---:|---:|",
    ]
    for name in ("sequential", "loky-1", "loky-2"):
        lines.append(f"| {name} | {sec[name + '/1']:.2f} | {sec[name + '/8']:.2f} |")
    lines += [
        "",
        f"8 starts: 2 workers vs 1 worker {t['speedup_8_starts_2_vs_1_workers']:.2f}×, vs "
        f"sequential {t['speedup_8_starts_2_workers_vs_sequential']:.2f}×. The three gave "
        f"the same answer bit for bit: {t['identical_answers']}. Building the model (state "
        f"space, first joint SFS) took {res['build_seconds']:.2f} s and is not in these "
        "times; a cold worker pays it once.",
        "",
        "## Distance from the truth",
        "",
        "Relative error of the estimates (estimate/truth − 1): mean (bias ± its standard "
        "error) and root mean square, over the data sets; every fit from the same start "
        f"(truth × {START_FACTORS.tolist()}).",
        "",
        "| fit | "
        + " | ".join(f"{n} bias" for n in FREE)
        + " | "
        + " | ".join(f"{n} rmse" for n in FREE)
        + " | median s/fit |",
        "|---|" + "---:|" * 9,
    ]
    for label, s in res["summary"].items():
        lines.append(
            f"| {label} | "
            + " | ".join(f"{b:+.3f} ± {e:.3f}" for b, e in zip(s["bias"], s["bias_se"],
                                                               strict=True))
            + " | " + " | ".join(f"{r:.3f}" for r in s["rmse"])
            + f" | {s['median_seconds']:.2f} |"
        )  # fmt: skip
    lines += [
        "",
        "Noise-free data (the expected spectrum × μL, multinomial): relative error of the "
        "estimates, which is the model's own error (the optimizer's for phasetrace):",
        "",
        "| fit | " + " | ".join(FREE) + " |",
        "|---|" + "---:|" * 4,
        "| phasetrace | " + " | ".join(f"{v:+.1e}" for v in nf) + " |",
    ]
    if mom:
        lines.append("| moments | " + " | ".join(f"{v:+.1e}" for v in mom["noise_free"]) + " |")
        lines += [
            "",
            f"moments {mom['version']}: {1000 * mom['seconds_per_spectrum']:.0f} ms per "
            f"spectrum; its normalised spectrum at the truth differs from the exact one by up "
            f"to {100 * mom['spectrum_relative_error']:.1f} % (an entry). moments fits with "
            "finite-difference gradients (`optimize_log`, BFGS in log space) in a box of "
            f"truth ÷/× {BOUND_FACTOR:g}.",
        ]
    else:
        lines += ["", "moments was not run (pass --moments-python)."]
    cov_lines = [
        "",
        "## Coverage",
        "",
        "| likelihood | data sets | " + " | ".join(FREE) + " | converged | at a bound |",
        "|---|---:|" + "---:|" * 6,
    ]
    for label in ("poisson", "multinomial"):
        s = res["summary"][label]
        cov_lines.append(
            f"| {label} (natural / log) | {s['n']} | "
            + " | ".join(f"{100 * a:.0f} / {100 * b:.0f} %" for a, b in zip(
                s["coverage"], s["coverage_log"], strict=True))
            + f" | {s['converged']} | {s['at_bounds']} |"
        )  # fmt: skip
    n = res["summary"]["poisson"]["n"]
    se = 100 * np.sqrt(0.95 * 0.05 / n)
    cov_lines.append("")
    cov_lines.append(f"With {n} data sets a coverage has a Monte Carlo standard error of about "
                     f"{se:.1f} points around 95 %.")  # fmt: skip
    return "\n".join(lines + cov_lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", type=int, default=20)
    p.add_argument("--sites", type=float, default=20000.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--moments-python", default=os.environ.get("PHASETRACE_BENCH_MOMENTS"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--timings-only",
        action="store_true",
        help="redo the timings (1-2) and keep the rest of OUT/inference.json",
    )
    args = p.parse_args()
    print(describe_line(), "|", load(), flush=True)
    model, expected, built = build()
    u, observed = datasets(expected, args.sites, args.datasets, args.seed)
    print(f"model built in {built:.2f} s; timings …", flush=True)
    if args.timings_only:
        res = json.loads((args.out / "inference.json").read_text())
        res.update(
            date=time.strftime("%Y-%m-%d"),
            machine=describe_line(),
            repeat=args.repeat,
            build_seconds=built,
            timings=timings(model, observed, u, args.repeat),
        )
        write_atomic(args.out / "inference.json", (json.dumps(res, indent=1, default=str)).encode())
        text = report(res)
        write_atomic(args.out / "inference.md", text.encode())
        print(text)
        return
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe_line(),
        "describe": describe(),
        "sites": args.sites,
        "repeat": args.repeat,
        "build_seconds": built,
        "timings": timings(model, observed, u, args.repeat),
    }
    print(f"coverage and bias over {args.datasets} data sets …", flush=True)
    rows = study(model, observed, u)
    truth = model.theta[idx(model)]
    res["summary"] = {f"phasetrace {k}": summary(v, truth) for k, v in rows.items()}
    res["summary"] = {"poisson": res["summary"]["phasetrace poisson"],
                      "multinomial": res["summary"]["phasetrace multinomial"]}  # fmt: skip
    res["rows"] = rows
    res["noise_free"] = noise_free(model, expected, u)
    if args.moments_python:
        print("moments …", flush=True)
        mom = run_moments(args.moments_python, model, observed, expected, u)
        if mom:
            res["moments"] = {k: v for k, v in mom.items() if k != "rows"}
            res["summary"]["moments multinomial"] = summary(mom["rows"], truth)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "inference.json", (json.dumps(res, indent=1, default=str)).encode())
    text = report(res)
    write_atomic(args.out / "inference.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
