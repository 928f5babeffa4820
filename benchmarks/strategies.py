"""Executor strategies side by side: start cost, dispatch overhead, speedup, framework cost.

Run ``python benchmarks/strategies.py`` (about two minutes on 2 cores) or
``--quick`` (under 20 s); ``--json PATH`` also writes the numbers. What is measured, all
in one process, one after the other:

1. **pool start (cold)**: building an executor and getting ``n_workers`` trivial results
   back, pool closed in between (median of a few); **warm round trip**: one trivial unit
   on a warm pool (median of many).
2. **per-unit overhead**: wall time per unit of 1000 trivial units on a warm pool
   (costs unknown, so chunked into 4 chunks per worker).
3. **speedup** over ``sequential`` with 2 workers for CPU-busy units of about 1, 10 and
   100 ms (a calibrated arithmetic loop, not sleep), for phasetrace's ``loky``,
   ``spawn``, ``auto``, ``dask`` (embedded LocalCluster, 2 single-threaded worker
   processes) and ``joblib`` (default loky backend), and for loky and ``joblib.Parallel``
   called directly on the same work (warm pools everywhere; runners interleaved, best of
   the repetitions).
4. **framework overhead**: phasetrace ``loky`` time / raw loky time on the same work.
5. **auto**: time / the better of ``sequential`` and ``loky``.

``dask`` and ``joblib`` rows appear when their extras are installed; ``dask (1 task per
unit)`` is the ``dask`` strategy with ``min_chunk_seconds=0`` (no batching: every unit is
its own Dask task), on 200 trivial units.

Targets (from the executor issues): warm per-unit overhead <= 50 µs; speedup >= 1.8x with
2 workers for units >= 10 ms; overhead <= 5 % over raw loky; ``auto`` never more than 10 %
slower than the better of ``sequential`` and ``loky``; ``dask`` within 1.3x of ``loky``'s
wall time for 100 ms units.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workfns as T
from phasetrace.executors import available_cpus, get_executor, work_items

N_WORKERS = 2
#: Strategies measured everywhere: the built-in ones, then those whose extra is installed.
OPTIONAL = {"dask": "distributed", "joblib": "joblib"}


def _strategies(*names: str) -> list[str]:
    return [*names, *(n for n, module in OPTIONAL.items() if _has(module))]


def _versions() -> dict[str, str]:
    out = {}
    for name in ("phasetrace", "loky", "joblib", "numpy", "cloudpickle", "dask", "distributed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "available_cpus": available_cpus(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": _versions(),
    }


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median(fn: Callable[[], Any], repeat: int) -> float:
    return statistics.median(_timed(fn) for _ in range(repeat))


def calibrate_spin() -> float:
    """Iterations of ``_testfns.spin`` per millisecond on this machine (one core)."""
    n = 20_000
    while True:
        t = min(_timed(lambda n=n: T.spin(n)) for _ in range(3))
        if t > 0.05:
            return n / (t * 1000)
        n *= 2


# -- raw baselines -------------------------------------------------------------------------


class RawLoky:
    """loky's reusable executor used directly (what phasetrace's ``loky`` wraps).

    loky keeps one reusable pool per thread, so this one is created from a helper thread:
    it then lives next to phasetrace's pool (both warm) instead of replacing it.
    """

    name = "raw loky"

    def __init__(self) -> None:
        from loky import get_reusable_executor

        box: list[Any] = []
        t = threading.Thread(
            target=lambda: box.append(get_reusable_executor(max_workers=N_WORKERS, timeout=60))
        )
        t.start()
        t.join()
        self.ex = box[0]

    def run(self, fn: Callable, args: list, chunksize: int = 1) -> list:
        return list(self.ex.map(fn, args, chunksize=chunksize))

    def close(self) -> None:
        self.ex.shutdown(wait=True)


class RawJoblib:
    """``joblib.Parallel`` with its default (loky) backend, batch size ``"auto"``."""

    name = "joblib.Parallel"

    def __init__(self) -> None:
        from joblib import Parallel

        self.parallel = Parallel(n_jobs=N_WORKERS)

    def run(self, fn: Callable, args: list, chunksize: int = 1) -> list:
        from joblib import delayed

        return self.parallel(delayed(fn)(a) for a in args)

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


# -- measurements ----------------------------------------------------------------------------


def measure_start(repeat_cold: int, repeat_warm: int) -> list[dict[str, Any]]:
    rows = []
    for name in _strategies("sequential", "loky", "spawn"):

        def cold(name: str = name) -> None:
            with get_executor(name, n_workers=N_WORKERS) as ex:
                ex.map_items(T.square, work_items(range(N_WORKERS)))
            if name == "joblib":  # its workers belong to joblib, not to the executor
                from joblib.externals.loky import get_reusable_executor

                get_reusable_executor().shutdown(wait=True)

        cold_s = _median(cold, repeat_cold)
        with get_executor(name, n_workers=N_WORKERS) as ex:
            ex.map_items(T.square, work_items(range(N_WORKERS)))
            one = work_items([1])
            warm_s = _median(lambda ex=ex, one=one: ex.map_items(T.square, one), repeat_warm)
        rows.append({"strategy": name, "cold_start_s": cold_s, "warm_round_trip_s": warm_s})
    for cls in (RawLoky, RawJoblib):
        if cls is RawJoblib and not _has("joblib"):
            continue

        def cold_raw(cls: type = cls) -> None:
            raw = cls()
            raw.run(T.square, list(range(N_WORKERS)))
            raw.close()

        cold_s = _median(cold_raw, repeat_cold)
        raw = cls()
        raw.run(T.square, list(range(N_WORKERS)))
        warm_s = _median(lambda raw=raw: raw.run(T.square, [1]), repeat_warm)
        raw.close()
        rows.append({"strategy": cls.name, "cold_start_s": cold_s, "warm_round_trip_s": warm_s})
    return rows


def measure_per_unit(n_units: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    items = work_items(range(n_units))
    for name in _strategies("sequential", "loky", "spawn", "auto"):
        with get_executor(name, n_workers=N_WORKERS) as ex:
            ex.map_items(T.square, items)  # warm (and auto: its decision)
            t = _median(lambda ex=ex: ex.map_items(T.square, items), repeat)
        rows.append({"strategy": name, "per_unit_s": t / n_units, "total_s": t})
    if _has("distributed"):
        few = work_items(range(200))
        with get_executor("dask", n_workers=N_WORKERS, min_chunk_seconds=0) as ex:
            ex.map_items(T.square, few)
            t = _median(lambda ex=ex: ex.map_items(T.square, few), repeat)
        rows.append({"strategy": "dask (1 task per unit)", "per_unit_s": t / 200, "total_s": t})
    raw = RawLoky()
    args = list(range(n_units))
    chunksize = math.ceil(n_units / (4 * N_WORKERS))
    raw.run(T.square, args, chunksize)
    t = _median(lambda: raw.run(T.square, args, chunksize), repeat)
    raw.close()
    rows.append({"strategy": "raw loky (same chunks)", "per_unit_s": t / n_units, "total_s": t})
    return rows


def measure_speedup(
    workloads: list[tuple[float, int]], spins_per_ms: float, repeat: int
) -> list[dict[str, Any]]:
    """Time every runner on every workload, interleaved, best of ``repeat``.

    All pools are started (and kept warm) before timing, and each repetition runs every
    runner once in turn, so slow drifts of the machine's load hit them all alike.
    """
    runners: dict[str, Callable[[int, int, float], Any]] = {}
    closers: list[Callable[[], None]] = []
    executors = {}
    for name in _strategies("sequential", "loky", "spawn", "auto"):
        ex = get_executor(name, n_workers=N_WORKERS)
        ex.map_items(T.square, work_items(range(N_WORKERS), costs=[1.0] * N_WORKERS))
        executors[name] = ex
        closers.append(ex.close)
        runners[name] = lambda n_iter, n, cost, ex=ex: ex.map_items(
            T.spin, work_items([n_iter] * n, costs=[cost] * n)
        )
    raws = [RawLoky()] + ([RawJoblib()] if _has("joblib") else [])
    for raw in raws:
        raw.run(T.square, list(range(N_WORKERS)))
        closers.append(raw.close)
        runners[raw.name] = lambda n_iter, n, cost, raw=raw: raw.run(T.spin, [n_iter] * n)
    rows = []
    try:
        for unit_ms, n_units in workloads:
            n_iter = max(1, int(unit_ms * spins_per_ms))
            cost = unit_ms / 1000
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(repeat):
                for name, run in runners.items():
                    samples[name].append(_timed(functools.partial(run, n_iter, n_units, cost)))
            times = {name: min(v) for name, v in samples.items()}
            seq = times["sequential"]
            best = min(seq, times["loky"])
            rows.append(
                {
                    "unit_ms": unit_ms,
                    "n_units": n_units,
                    "times_s": times,
                    "speedup": {k: seq / v for k, v in times.items()},
                    "loky_over_raw_loky": times["loky"] / times["raw loky"],
                    "dask_over_loky": times["dask"] / times["loky"] if "dask" in times else None,
                    "auto_over_best": times["auto"] / best,
                    "auto_chose": executors["auto"].last_decision.strategy,
                }
            )
    finally:
        for close in closers:
            close()
    return rows


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- report -------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{s * 1000:.2f} ms" if s < 1 else f"{s:.2f} s"


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpus']} CPUs ({m['available_cpus']} available), Python {m['python']} "
        f"on {m['platform']}; load average {m['load_average']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Mode: {'quick' if result['quick'] else 'full'}; {N_WORKERS} workers; spin "
        f"calibration {result['spins_per_ms']:.0f} iterations/ms",
        "",
        "| strategy | pool start (cold) | warm round trip (1 unit) |",
        "|---|---|---|",
    ]
    for r in result["start"]:
        lines.append(
            f"| {r['strategy']} | {_ms(r['cold_start_s'])} | {_ms(r['warm_round_trip_s'])} |"
        )
    lines += [
        "",
        f"| strategy | per-unit time, {result['n_trivial']} trivial units (warm) | total |",
        "|---|---|---|",
    ]
    for r in result["per_unit"]:
        lines.append(f"| {r['strategy']} | {r['per_unit_s'] * 1e6:.1f} µs | {_ms(r['total_s'])} |")
    names = list(result["speedup"][0]["times_s"]) if result["speedup"] else []
    lines += [
        "",
        "| unit | units | " + " | ".join(names) + " | loky / raw loky | auto / best (chose) |",
        "|---" * (len(names) + 4) + "|",
    ]
    for r in result["speedup"]:
        cells = [f"{_ms(r['times_s'][n])} ({r['speedup'][n]:.2f}x)" for n in names]
        lines.append(
            f"| {r['unit_ms']:g} ms | {r['n_units']} | "
            + " | ".join(cells)
            + f" | {r['loky_over_raw_loky']:.3f} | {r['auto_over_best']:.3f} ({r['auto_chose']}) |"
        )
    lines += ["", "Targets:"]
    for name, ok, detail in result["targets"]:
        lines.append(f"- [{'x' if ok else ' '}] {name}: {detail}")
    return "\n".join(lines)


def check_targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    out = []
    loky_unit = next(r for r in result["per_unit"] if r["strategy"] == "loky")["per_unit_s"]
    out.append(
        ("warm per-unit overhead <= 50 µs (loky)", loky_unit <= 50e-6, f"{loky_unit * 1e6:.1f} µs")
    )
    for r in result["speedup"]:
        if r["unit_ms"] >= 10:
            s = r["speedup"]["loky"]
            out.append((f"speedup >= 1.8x, {r['unit_ms']:g} ms units", s >= 1.8, f"{s:.2f}x"))
    worst = max(r["loky_over_raw_loky"] for r in result["speedup"])
    out.append(("loky overhead <= 5 % over raw loky", worst <= 1.05, f"worst ratio {worst:.3f}"))
    worst_auto = max(r["auto_over_best"] for r in result["speedup"])
    out.append(
        ("auto <= 10 % slower than the better", worst_auto <= 1.10, f"worst {worst_auto:.3f}")
    )
    for r in result["speedup"]:
        if r["unit_ms"] >= 100 and r.get("dask_over_loky") is not None:
            ratio = r["dask_over_loky"]
            out.append(
                (
                    f"dask <= 1.3x loky wall time, {r['unit_ms']:g} ms units",
                    ratio <= 1.3,
                    f"{ratio:.3f}",
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small variant, under 20 s")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if available_cpus() < N_WORKERS:
        print(f"needs {N_WORKERS} CPUs, this process may use {available_cpus()}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.quick:
        repeat_cold, repeat_warm, repeat = 2, 100, 2
        workloads = [(1, 60), (10, 20), (100, 4)]
    else:
        repeat_cold, repeat_warm, repeat = 5, 500, 5
        workloads = [(1, 400), (10, 100), (100, 20)]
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "n_trivial": 1000}
    result["spins_per_ms"] = calibrate_spin()
    result["start"] = measure_start(repeat_cold, repeat_warm)
    result["per_unit"] = measure_per_unit(1000, max(repeat, 3))
    result["speedup"] = measure_speedup(workloads, result["spins_per_ms"], repeat)
    result["targets"] = check_targets(result)
    result["wall_s"] = time.perf_counter() - t0
    print(report(result))
    print(f"\n(ran in {result['wall_s']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
