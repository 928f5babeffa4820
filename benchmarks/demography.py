"""Demography: phasetrace against the targets of its demography layer, side by side with peers.

    python benchmarks/demography.py              # ~2-3 min; writes results/demography.{json,md}
    python benchmarks/demography.py --quick      # tiny sizes (the smoke test): ~30 s
    python benchmarks/demography.py --phasegen-python /tmp/pg-venv/bin/python \\
        --moments-python /tmp/moments-venv/bin/python       # with the peers
    python benchmarks/demography.py --im-large 6 --n-large 2000 --batch 500 --repeat 21

The peers are optional and never a dependency: ``--phasegen-python`` (or the variable
``PHASETRACE_BENCH_PHASEGEN``) names an interpreter that has ``phasegen`` (and ``demes``,
``msprime`` for the models read from demes), ``--moments-python``
(``PHASETRACE_BENCH_MOMENTS``) one with ``moments-popgen`` and ``demes``; each runs
``_demography_peers.py`` in a subprocess and its JSON is read back. Without them the report
says they were skipped and quotes the figures the issue measured.

What is measured (phasetrace in fresh child processes, each with an empty cache directory
of its own in ``PHASETRACE_CACHE_DIR``, so nothing is read from an earlier run; the kernels
are loaded on a tiny model first and that is not charged):

1. bottleneck (3 epochs), n = 10, SFS: one new θ (median over ``--repeat`` θ); a batch of
   ``--batch`` θ in one call; the same SFS on the block-counting state space for comparison
   (one panmictic deme takes the lineage-count path).
2. island (two demes, 5 + 5, symmetric migration, no split): pooled SFS, one new θ.
3. IM 4 + 4 (coalescent units: sizes 1, migration 0.5 each way, split at 1): joint SFS,
   one new θ, and with the gradient in all six parameters.
4. IM ``--im-large`` + ``--im-large`` (7 + 7): a fresh model in a fresh process: state
   space + first joint SFS, then one new θ and with the gradient; peak memory
   (``ru_maxrss``, and what the process held before the model).
5. n = ``--n-large`` SFS, one deme, 10 epochs of sizes between 1,000 and 10,000, boundaries
   every 2,000 generations (over ~2N): one new θ.
6. growth: a deme growing 50-fold (n = 10 SFS; two lineages against quadrature of the
   closed-form hazard) and IM 4 + 4 with 10-fold growth in ``A`` (joint SFS): the result at
   the automatic ``M`` against the same model forced to ``4·M`` pieces per growth epoch.
7. exactness: IM 4 + 4 and the bottleneck against dense reference values (independent
   computations, quoted below).

"One new θ" is a θ the model has not seen: the model's own θ times factors in
[0.98, 1.02], a new draw per call. Times are medians; the minimum is in the JSON. The
machine (a shared VM) is described with its load average before every section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, describe_line
from phasetrace._files import write_atomic

HERE = Path(__file__).parent
PEERS = HERE / "_demography_peers.py"
SCHEMA = "phasetrace-bench-demography/1"
SEED = 17

#: Dense reference values (two independent methods agree to 12 digits): the design notes
#: of the epoch layer, also asserted by tests/test_demography.py.
REF_IM44 = {
    "E[T]": 2.326551784566,
    "E[T^2]": 6.565175684275,
    "jsfs[0,1]": 1.808362947853,
    "jsfs[1,1]": 0.278847019290,
    "jsfs[2,3]": 0.097797211968,
}
REF_BOTTLENECK = {
    "E[T]": 0.855894030775,
    "Var[T]": 0.31980914046,
    "sfs": [
        1.629332564947,
        0.669344692171,
        0.371662564995,
        0.236697145575,
        0.16482893252,
        0.123076296591,
        0.097478037527,
        0.081190163704,
        0.070519118523,
    ],
    "cdf_t": [0.5, 1.0, 2.0, 4.0],
    "cdf": [0.024801960215, 0.878131918524, 0.955060188684, 0.993915831648],
}
#: What the issue measured on this machine when the peers were installed by hand.
ISSUE_FIGURES = {
    "bottleneck": "PhaseGen 2.7 ms",
    "im44": "PhaseGen 0.81–0.94 s",
    "im_large_build": "ptdalgorithms 35 s (published)",
    "exactness": "PhaseGen 2e-7",
    "growth": "PhaseGen fixed steps, error unknown",
}

DEFAULTS = {
    "im_large": 7,
    "n_large": 1000,
    "batch": 1000,
    "repeat": 25,
    "repeat_slow": 3,
    "large_repeat": 2,
}
QUICK = {
    "im_large": 3,
    "n_large": 60,
    "batch": 20,
    "repeat": 3,
    "repeat_slow": 1,
    "large_repeat": 1,
}


# -- the models, as demes graphs ------------------------------------------------------------
def im_yaml(size_a=1.0, size_b=1.0, size_anc=1.0, m=0.5, t_split=1.0, growth_a=1.0) -> str:
    """IM in coalescent units: ploidy 2 and deme size N = size/2 make the pairwise
    coalescence rate 1/size; ``growth_a`` > 1 lets A grow that many fold since the split."""
    a = (
        f"{{start_size: {size_a / 2 / growth_a}, end_size: {size_a / 2}}}"
        if growth_a != 1.0
        else f"{{start_size: {size_a / 2}}}"
    )
    return f"""time_units: generations
demes:
- name: X
  epochs: [{{start_size: {size_anc / 2}, end_time: {t_split}}}]
- name: A
  ancestors: [X]
  epochs: [{a}]
- name: B
  ancestors: [X]
  epochs: [{{start_size: {size_b / 2}}}]
migrations:
- demes: [A, B]
  rate: {m}
"""


def island_yaml(m=0.5) -> str:
    return f"""time_units: generations
demes:
- name: A
  epochs: [{{start_size: 0.5}}]
- name: B
  epochs: [{{start_size: 0.5}}]
migrations:
- demes: [A, B]
  rate: {m}
"""


def piecewise_yaml(sizes, times) -> str:
    """One deme; ``sizes`` from the present backwards, changing at ``times`` (ascending)."""
    ends = [*times[::-1], 0]
    epochs = "\n".join(
        f"  - {{start_size: {s}, end_time: {t}}}" for s, t in zip(sizes[::-1], ends, strict=True)
    )
    return f"time_units: generations\ndemes:\n- name: A\n  epochs:\n{epochs}\n"


BOTTLENECK_YAML = piecewise_yaml([0.5, 0.1, 0.5], [0.5, 1.0])  # sizes 1, 0.2, 1 in coal. units
LARGE_SIZES = [10000, 2000, 1000, 5000, 10000, 3000, 1500, 8000, 4000, 10000]
LARGE_TIMES = [2000 * i for i in range(1, 10)]
LARGE_YAML = piecewise_yaml(LARGE_SIZES, LARGE_TIMES)
GROWTH_YAML = """time_units: generations
demes:
- name: A
  epochs:
  - {start_size: 1000, end_time: 400}
  - {start_size: 1000, end_size: 50000, end_time: 0}
"""


# -- helpers --------------------------------------------------------------------------------
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(times: list[float], cpu: list[float] | None = None) -> dict:
    out = {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}
    if cpu is not None:
        out["cpu_median_s"] = statistics.median(cpu)
    return out


def per_theta(fn, thetas) -> dict:
    """Time ``fn(θ)`` once per row of ``thetas`` (each one new to the model): wall and CPU
    time of this process (CPU well below wall: the process waited for a core)."""
    times, cpu = [], []
    for th in thetas:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(th)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return summary(times, cpu)


def new_thetas(model, k: int, rng) -> np.ndarray:
    return model.theta * rng.uniform(0.98, 1.02, (k, model.n_params))


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    mask = want != 0
    return float(np.max(np.abs(got[mask] / want[mask] - 1)))


def warm_kernels() -> float:
    """Load the compiled kernels (from numba's disk cache) on tiny models; not charged."""
    import demes

    import phasetrace as pt

    t0 = time.perf_counter()
    small = pt.models.from_demes(demes.loads(im_yaml()), {"A": 2, "B": 2})
    small.jsfs(gradient=True)
    pt.sfs(small)
    pt.cdf(small, 1.0)
    grow = pt.models.from_demes(demes.loads(GROWTH_YAML), {"A": 3})
    grow.sfs(gradient=True)
    return time.perf_counter() - t0


def forced_steps(model, fn, M: int):
    """``fn()`` with ``M`` pieces per growth epoch instead of the number the model's
    search would choose (Romberg over M, 2M, 4M as always); returns (result, CPU s)."""
    model._growth_steps = lambda theta: M  # an instance attribute shadows the method
    try:
        c0 = time.process_time()
        return fn(), time.process_time() - c0
    finally:
        del model._growth_steps


def growth_check(model, fn) -> dict:
    """The result at the automatic M against the same model at 4·M; and the smallest
    M (of a few) whose result is already within tol of the 4·M run."""
    c0 = time.process_time()
    auto = fn()
    cpu = time.process_time() - c0
    M = model.last_growth_steps
    fine, _ = forced_steps(model, fn, 4 * M)
    out = {
        "tol": model.tol,
        "M": M,
        "auto_cpu_s": cpu,
        "forced_M": 4 * M,
        "forced_M_used": model.last_growth_steps,
        "rel_diff_vs_4M": rel_err(auto, fine),
        "scan": [],
    }
    for m in (8, 16, 32, 64, 128):
        if m >= M:
            break
        value, cpu = forced_steps(model, fn, m)
        out["scan"].append({"M": m, "rel_diff_vs_4M": rel_err(value, fine), "cpu_s": cpu})
    enough = [r["M"] for r in out["scan"] if r["rel_diff_vs_4M"] <= model.tol]
    out["smallest_M_within_tol"] = min(enough) if enough else M
    return out, auto


# -- child: everything but the large IM --------------------------------------------------------
def child_small(cfg: dict) -> dict:
    import demes
    import scipy.integrate

    import phasetrace as pt

    rng = np.random.default_rng(SEED)
    rep = cfg["repeat"]
    out: dict = {"warm_kernels_s": warm_kernels(), "load": {}}

    # 1. bottleneck n = 10
    out["load"]["bottleneck"] = load()
    model = pt.models.from_demes(demes.loads(BOTTLENECK_YAML), {"A": 10})
    t0 = time.perf_counter()
    sfs = pt.sfs(model)
    first = time.perf_counter() - t0
    one = per_theta(lambda th: pt.sfs(model, th), new_thetas(model, rep, rng))
    batches = [new_thetas(model, cfg["batch"], rng) for _ in range(max(3, rep // 5))]
    batch = per_theta(lambda ths: model.sfs(ths), batches)
    blocks = model.variant("blocks")
    rewards = blocks.space.sfs_rewards()
    t0 = time.perf_counter()
    via_blocks = blocks.moments(model.theta, 1, rewards)[:, 0]
    blocks_first = time.perf_counter() - t0
    blocks_one = per_theta(lambda th: blocks.moments(th, 1, rewards), new_thetas(model, rep, rng))
    mom = model.moments(k=2)
    out["bottleneck"] = {
        "parameters": list(model.parameter_names),
        "first_s": first,
        "one_theta": one,
        "batch_size": cfg["batch"],
        "batch": batch,
        "blocks_states": int(blocks.n_vertices),
        "blocks_first_s": blocks_first,
        "blocks_one_theta": blocks_one,
        "lineages_vs_blocks_rel": rel_err(sfs, via_blocks),
        "exact_rel_err": {
            "E[T]": rel_err(mom[0], REF_BOTTLENECK["E[T]"]),
            "Var[T]": rel_err(mom[1] - mom[0] ** 2, REF_BOTTLENECK["Var[T]"]),
            "sfs": rel_err(sfs, REF_BOTTLENECK["sfs"]),
            "cdf": rel_err(pt.cdf(model, REF_BOTTLENECK["cdf_t"]), REF_BOTTLENECK["cdf"]),
        },
    }

    # 2. island 5 + 5, pooled SFS
    out["load"]["island"] = load()
    model = pt.models.from_demes(demes.loads(island_yaml()), {"A": 5, "B": 5})
    t0 = time.perf_counter()
    pt.sfs(model)
    first = time.perf_counter() - t0
    out["island"] = {
        "parameters": list(model.parameter_names),
        "states": int(model.variant("blocks").n_vertices),
        "first_s": first,
        "one_theta": per_theta(lambda th: pt.sfs(model, th), new_thetas(model, rep, rng)),
        "sfs": pt.sfs(model).tolist(),
    }

    # 3. IM 4 + 4 and 7. its exactness
    out["load"]["im44"] = load()
    model = pt.models.from_demes(demes.loads(im_yaml()), {"A": 4, "B": 4})
    t0 = time.perf_counter()
    jsfs = pt.jsfs(model)
    first = time.perf_counter() - t0
    mom = model.moments(k=2)
    got = {
        "E[T]": mom[0],
        "E[T^2]": mom[1],
        "jsfs[0,1]": jsfs[0, 1],
        "jsfs[1,1]": jsfs[1, 1],
        "jsfs[2,3]": jsfs[2, 3],
    }
    out["im44"] = {
        "parameters": list(model.parameter_names),
        "states": int(model.variant("joint").n_vertices),
        "first_s": first,
        "one_theta": per_theta(lambda th: model.jsfs(th), new_thetas(model, rep, rng)),
        "one_theta_gradient": per_theta(
            lambda th: model.jsfs(th, gradient=True), new_thetas(model, max(3, rep // 2), rng)
        ),
        "jsfs": jsfs.tolist(),
        "exact_rel_err": {k: rel_err(got[k], v) for k, v in REF_IM44.items()},
    }
    out["im44"]["exact_max_rel_err"] = max(out["im44"]["exact_rel_err"].values())
    im77_small = pt.models.from_demes(demes.loads(im_yaml()), {"A": 7, "B": 7})
    if cfg["moments_sizes_exact"]:  # the exact 7 + 7 joint SFS, for moments' error
        out["im77_jsfs"] = im77_small.jsfs().tolist()
    del im77_small

    # 5. n large, 10 epochs
    out["load"]["large_n"] = load()
    n = cfg["n_large"]
    model = pt.models.from_demes(demes.loads(LARGE_YAML), {"A": n})
    t0 = time.perf_counter()
    big = pt.sfs(model)
    first = time.perf_counter() - t0
    out["large_n"] = {
        "n": n,
        "epochs": len(LARGE_SIZES),
        "first_s": first,
        "one_theta": per_theta(lambda th: pt.sfs(model, th), new_thetas(model, rep, rng)),
        "sfs_head": big[:3].tolist(),
        "sfs_positive": bool((big > 0).all()),
    }
    if cfg.get("phasegen_large_n"):
        small_n = pt.models.from_demes(demes.loads(LARGE_YAML), {"A": cfg["phasegen_large_n"]})
        out["large_n"]["sfs_head_at_phasegen_n"] = pt.sfs(small_n)[:3].tolist()

    # 6. growth
    out["load"]["growth"] = load()
    out["growth"] = {}
    graph = demes.loads(GROWTH_YAML)
    model = pt.models.from_demes(graph, {"A": 10})
    t0 = time.perf_counter()
    pt.sfs(model)
    first = time.perf_counter() - t0
    one = per_theta(lambda th: pt.sfs(model, th), new_thetas(model, max(3, rep // 2), rng))
    check, sfs = growth_check(model, lambda: pt.sfs(model))
    pair = pt.models.from_demes(graph, {"A": 2})
    r = math.log(50) / 400

    def hazard(t):
        if t <= 400:
            return math.expm1(r * t) / (r * 2 * 50000)
        return hazard(400) + (t - 400) / 2000

    head = scipy.integrate.quad(lambda t: math.exp(-hazard(t)), 0, 400, epsabs=0, epsrel=1e-13)
    exact_pair = head[0] + math.exp(-hazard(400)) * 2000
    out["growth"]["one_deme"] = {
        "parameters": list(model.parameter_names),
        "first_s": first,
        "one_theta": one,
        **check,
        "sfs": sfs.tolist(),
        "pair_E[T]_rel_err_vs_quadrature": rel_err(pair.expectation(), exact_pair),
        "pair_E[T]": float(pair.expectation()),
    }
    model = pt.models.from_demes(demes.loads(im_yaml(growth_a=10.0)), {"A": 4, "B": 4})
    joint = model.variant("joint")  # where pt.jsfs evaluates
    t0 = time.perf_counter()
    pt.jsfs(model)
    first = time.perf_counter() - t0
    slow = cfg["repeat_slow"]
    one = per_theta(lambda th: model.jsfs(th), new_thetas(model, slow, rng))
    grad = per_theta(
        lambda th: model.jsfs(th, gradient=True), new_thetas(model, max(1, slow - 1), rng)
    )
    check, _ = growth_check(joint, lambda: pt.jsfs(model))
    out["growth"]["im44"] = {
        "parameters": list(model.parameter_names),
        "first_s": first,
        "one_theta": one,
        "one_theta_gradient": grad,
        **check,
    }
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- child: the large IM in a fresh process -----------------------------------------------------
def child_large(cfg: dict) -> dict:
    import demes

    import phasetrace as pt

    rng = np.random.default_rng(SEED + 1)
    k = cfg["im_large"]
    warm = warm_kernels()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict = {"k": k, "warm_kernels_s": warm, "rss_before_mb": rss_before, "load": load()}
    graph = demes.loads(im_yaml())
    c0, t0 = time.process_time(), time.perf_counter()
    model = pt.models.from_demes(graph, {"A": k, "B": k})
    joint = model.variant("joint")
    t1 = time.perf_counter()
    pt.jsfs(model)
    c2, t2 = time.process_time(), time.perf_counter()
    out.update(
        states=int(joint.n_vertices),
        space_s=t1 - t0,
        first_jsfs_s=t2 - t1,
        build_and_first_s=t2 - t0,
        build_and_first_cpu_s=c2 - c0,
        last_epoch_trace_vertices=int(joint.engine.last_trace()[0].n_vertices),
    )
    slow = cfg["repeat_slow"]
    out["one_theta"] = per_theta(lambda th: model.jsfs(th), new_thetas(model, slow, rng))
    n_grad = max(1, slow - 1)
    out["one_theta_gradient"] = per_theta(
        lambda th: model.jsfs(th, gradient=True), new_thetas(model, n_grad, rng)
    )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- the parent ---------------------------------------------------------------------------------
def run_child(kind: str, cfg: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASETRACE_")}
    with tempfile.TemporaryDirectory(prefix="phasetrace-bench-demography-") as cache:
        env["PHASETRACE_CACHE_DIR"] = cache  # empty: nothing from an earlier run
        proc = subprocess.run(
            [sys.executable, __file__, "--child", kind, json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_peer(which: str, python: str | None, spec: dict, timeout: float) -> dict:
    if not python:
        return {"available": False, "reason": f"no interpreter given (--{which}-python)"}
    try:
        proc = subprocess.run(
            [python, str(PEERS), which],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        return {"available": False, "reason": f"{python} failed: {tail[0]}"}
    return {"available": True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def peer_spec(cfg: dict) -> dict:
    rng = np.random.default_rng(SEED + 2)
    perturbed = [
        im_yaml(m=0.5 * f1, t_split=1.0 * f2) for f1, f2 in rng.uniform(0.98, 1.02, (25, 2))
    ]
    return {
        "seed": SEED,
        "repeat": cfg["repeat"],
        "repeat_slow": max(cfg["repeat_slow"], cfg["repeat"] // 5),
        "im_yaml": im_yaml(),
        "im_yaml_perturbed": perturbed,
        "growth_yaml": GROWTH_YAML,
        "large_yaml": LARGE_YAML,
        "phasegen_large_n": cfg.get("phasegen_large_n"),
        "moments_sizes": cfg["moments_sizes"],
    }


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def wt(t: dict) -> str:
    """Median wall time, and the CPU time of the same calls (lower: it waited for a core)."""
    return f"{ms(t['median_s'])} (CPU {ms(t['cpu_median_s'])})"


def peer_errors(report: dict) -> None:
    """The peers' errors against the same references as phasetrace (in place)."""
    pg, mo, p = report["phasegen"], report["moments"], report["phasetrace"]
    if pg.get("available"):
        for key in ("im44_jsfs", "im44_jsfs_from_demes"):
            if key not in pg:
                continue
            r = pg[key]
            j = np.asarray(r["jsfs"])
            got = {
                "E[T]": r["tmrca_mean"],
                "E[T^2]": r["tmrca_var"] + r["tmrca_mean"] ** 2,
                "jsfs[0,1]": j[0, 1],
                "jsfs[1,1]": j[1, 1],
                "jsfs[2,3]": j[2, 3],
            }
            r["exact_rel_err"] = {k: rel_err(got[k], v) for k, v in REF_IM44.items()}
            r["exact_max_rel_err"] = max(r["exact_rel_err"].values())
            r["jsfs_rel_err_vs_phasetrace"] = rel_err(j, p["small"]["im44"]["jsfs"])
        b = pg["bottleneck_sfs"]
        b["sfs_rel_err"] = rel_err(b["sfs"], REF_BOTTLENECK["sfs"])
        pg["island_sfs"]["sfs_rel_err_vs_phasetrace"] = rel_err(
            pg["island_sfs"]["sfs"], p["small"]["island"]["sfs"]
        )
        if "growth_sfs" in pg:
            g = p["small"]["growth"]["one_deme"]
            growth = pg["growth_sfs"]
            growth["sfs_rel_err_vs_phasetrace"] = rel_err(growth["sfs"], g["sfs"])
            pg["growth_pair_rel_err_vs_phasetrace"] = rel_err(
                pg["growth_pair_tmrca"], g["pair_E[T]"]
            )
        if "large_sfs" in pg and "sfs_head_at_phasegen_n" in p["small"]["large_n"]:
            pg["large_sfs"]["rel_err_vs_phasetrace"] = rel_err(
                pg["large_sfs"]["sfs_head"], p["small"]["large_n"]["sfs_head_at_phasegen_n"]
            )
    if mo.get("available"):
        for n in report["config"]["moments_sizes"]:
            r = mo.get(f"im{n}{n}_jsfs")
            if r is None:
                continue
            exact = p["small"]["im44"]["jsfs"] if n == 4 else p["small"].get("im77_jsfs")
            if exact is not None and np.asarray(exact).shape == np.asarray(r["jsfs"]).shape:
                j = np.asarray(r["jsfs"])
                e = np.asarray(exact)
                mask = np.ones_like(e, dtype=bool)
                mask[0, 0] = mask[-1, -1] = False
                r["jsfs_max_rel_err_vs_exact"] = rel_err(j[mask], e[mask])


def rows(report: dict) -> list[dict]:
    """The table: measure, phasetrace, reference (peer), target, met."""
    p, pg, mo = report["phasetrace"]["small"], report["phasegen"], report["moments"]
    large = report["phasetrace"]["large"]
    k = report["config"]["im_large"]
    have_pg = pg.get("available", False)
    have_mo = mo.get("available", False)

    def pg_time(key, sub="fresh", label="PhaseGen"):
        if not have_pg or key not in pg:
            return None
        return f"{label} {ms(pg[key][sub]['median_s'])}"

    out = []

    def row(measure, value, shown, reference, target, limit):
        out.append(
            {
                "measure": measure,
                "phasetrace": shown,
                "value": value,
                "reference": reference,
                "target": target,
                "met": None if limit is None else bool(value <= limit),
            }
        )

    b = p["bottleneck"]
    ref = "; ".join(
        x
        for x in (
            pg_time("bottleneck_sfs"),
            pg_time("bottleneck_sfs", "reused_state_spaces", "reusing state spaces"),
        )
        if x
    )
    row(
        "bottleneck (3 epochs) n = 10 SFS, one new θ",
        b["one_theta"]["median_s"],
        wt(b["one_theta"]),
        ref or ISSUE_FIGURES["bottleneck"] + " (issue)",
        "≤ 0.5 ms",
        0.5e-3,
    )
    row(
        f"bottleneck n = 10 SFS, {b['batch_size']} θ in one call",
        b["batch"]["median_s"],
        f"{wt(b['batch'])}, {ms(b['batch']['median_s'] / b['batch_size'])} per θ",
        "–",
        "≤ 50 ms" if b["batch_size"] == 1000 else "(≤ 50 ms at 1000)",
        50e-3 if b["batch_size"] == 1000 else None,
    )
    row(
        f"… the same SFS on block counting ({b['blocks_states']} states), one new θ",
        b["blocks_one_theta"]["median_s"],
        wt(b["blocks_one_theta"]),
        "–",
        "(comparison)",
        None,
    )
    i = p["island"]
    row(
        f"island (5 + 5, migration, {i['states']} states) pooled SFS, one new θ",
        i["one_theta"]["median_s"],
        wt(i["one_theta"]),
        pg_time("island_sfs") or "–",
        "–",
        None,
    )
    im = p["im44"]
    ref = [pg_time("im44_jsfs", label="PhaseGen (2 demes)")]
    ref.append(pg_time("im44_jsfs", "reused_state_spaces", "reusing state spaces"))
    ref.append(pg_time("im44_jsfs_from_demes", label="from demes (3 demes)"))
    if have_mo and "im44_jsfs" in mo:
        ref.append(f"moments (diffusion) {ms(mo['im44_jsfs']['fresh']['median_s'])}")
    ref = "; ".join(x for x in ref if x) or ISSUE_FIGURES["im44"] + " (issue)"
    row(
        f"IM 4 + 4 JSFS ({im['states']} states), one new θ",
        im["one_theta"]["median_s"],
        wt(im["one_theta"]),
        ref,
        "≤ 20 ms",
        20e-3,
    )
    row(
        "IM 4 + 4 JSFS with the gradient (6 parameters), one new θ",
        im["one_theta_gradient"]["median_s"],
        wt(im["one_theta_gradient"]),
        "–",
        "≤ 80 ms",
        80e-3,
    )
    full = k == 7
    mo_large = mo.get(f"im{k}{k}_jsfs") if have_mo else None
    row(
        f"IM {k} + {k} JSFS ({large['states']:,} states): state space + first JSFS",
        large["build_and_first_s"]["median"],
        f"{ms(large['build_and_first_s']['median'])} (CPU "
        f"{ms(large['build_and_first_cpu_s']['median'])}; space {ms(large['space_s']['median'])})",
        ISSUE_FIGURES["im_large_build"]
        + (f"; moments (diffusion), first JSFS {ms(mo_large['first_s'])}" if mo_large else ""),
        "≤ 10 s" if full else "(≤ 10 s at 7 + 7)",
        10.0 if full else None,
    )
    row(
        f"IM {k} + {k} JSFS, one new θ",
        large["one_theta"]["median_s"],
        wt(large["one_theta"]),
        f"moments (diffusion) {ms(mo_large['fresh']['median_s'])}" if mo_large else "–",
        "≤ 1 s" if full else "(≤ 1 s at 7 + 7)",
        1.0 if full else None,
    )
    row(
        f"IM {k} + {k} JSFS with the gradient, one new θ",
        large["one_theta_gradient"]["median_s"],
        wt(large["one_theta_gradient"]),
        "–",
        "≤ 4 s" if full else "(≤ 4 s at 7 + 7)",
        4.0 if full else None,
    )
    row(
        f"IM {k} + {k}: peak memory (process before the model)",
        large["peak_rss_mb"]["median"],
        f"{large['peak_rss_mb']['median']:.0f} MB ({large['rss_before_mb']:.0f} MB)",
        "–",
        "–",
        None,
    )
    big = p["large_n"]
    ref = "–"
    if have_pg and "large_sfs" in pg:
        ref = f"PhaseGen at n = {pg['large_sfs']['n']}: {ms(pg['large_sfs']['time_s'])}"
    row(
        f"n = {big['n']}, {big['epochs']} epochs, SFS one new θ",
        big["one_theta"]["median_s"],
        wt(big["one_theta"]),
        ref,
        "≤ 20 ms" if big["n"] == 1000 else "(≤ 20 ms at n = 1000)",
        20e-3 if big["n"] >= 1000 else None,
    )
    g1, g2 = p["growth"]["one_deme"], p["growth"]["im44"]
    ref = ISSUE_FIGURES["growth"]
    if have_pg and "growth_sfs" in pg:
        ref = (
            "PhaseGen (40 fixed steps): rel. error "
            f"{pg['growth_sfs']['sfs_rel_err_vs_phasetrace']:.1e}, {ms(pg['growth_sfs']['time_s'])}"
        )
    row(
        f"growth 50-fold, n = 10 SFS: rel. diff. vs 4×M (M = {g1['M']}; M = "
        f"{g1['smallest_M_within_tol']} would meet tol); time one θ",
        g1["rel_diff_vs_4M"],
        f"{g1['rel_diff_vs_4M']:.1e}; {wt(g1['one_theta'])}",
        ref,
        f"≤ {g1['tol']:.0e}",
        g1["tol"],
    )
    row(
        "growth 50-fold, 2 lineages: E[T] rel. error vs quadrature",
        g1["pair_E[T]_rel_err_vs_quadrature"],
        f"{g1['pair_E[T]_rel_err_vs_quadrature']:.1e}",
        f"PhaseGen {pg['growth_pair_rel_err_vs_phasetrace']:.1e}"
        if have_pg and "growth_pair_rel_err_vs_phasetrace" in pg
        else "–",
        f"≤ {g1['tol']:.0e}",
        g1["tol"],
    )
    row(
        f"IM 4 + 4, A grows 10-fold: JSFS rel. diff. vs 4×M (M = {g2['M']}; M = "
        f"{g2['smallest_M_within_tol']} would meet tol); time one θ, with gradient",
        g2["rel_diff_vs_4M"],
        f"{g2['rel_diff_vs_4M']:.1e}; {wt(g2['one_theta'])}, {wt(g2['one_theta_gradient'])}",
        "–",
        f"≤ {g2['tol']:.0e}",
        g2["tol"],
    )
    ref = ISSUE_FIGURES["exactness"] + " (issue)"
    if have_pg and "exact_max_rel_err" in pg.get("im44_jsfs", {}):
        ref = f"PhaseGen {pg['im44_jsfs']['exact_max_rel_err']:.1e}"
        if "im44_jsfs_from_demes" in pg:
            ref += f" (from demes {pg['im44_jsfs_from_demes']['exact_max_rel_err']:.1e})"
    if have_mo and "jsfs_max_rel_err_vs_exact" in mo.get("im44_jsfs", {}):
        ref += f"; moments {mo['im44_jsfs']['jsfs_max_rel_err_vs_exact']:.1e}"
    row(
        "exactness: IM 4 + 4 (E[T], E[T²], 3 JSFS entries) vs dense reference, max rel. error",
        im["exact_max_rel_err"],
        f"{im['exact_max_rel_err']:.1e}",
        ref,
        "≤ 1e-10",
        1e-10,
    )
    be = max(b["exact_rel_err"].values())
    row(
        "exactness: bottleneck n = 10 (E[T], Var, SFS, CDF at 4 times), max rel. error",
        be,
        f"{be:.1e}",
        f"PhaseGen SFS {pg['bottleneck_sfs']['sfs_rel_err']:.1e}" if have_pg else "–",
        "≤ 1e-10",
        1e-10,
    )
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Demography benchmark",
        "",
        f"Machine: {report['machine_line']}. Date: {report['date']}. Load average (1, 5, 15 "
        f"min) at start {report['load_start']}, at end {report['load_end']}, on "
        f"{report['machine']['cpu_count']} cores shared with other work. Times are wall-clock "
        "medians over new θ (minima in the JSON), with the CPU time of the same calls: CPU "
        "well below wall means the process waited for a core. The children got "
        f"{report['cpu_over_wall']} of a core over their run (CPU time / wall time). *met?* "
        "judges the wall-clock median.",
        "",
        "phasetrace ran in fresh child processes, each with an empty cache directory of its "
        "own (`PHASETRACE_CACHE_DIR`); the compiled kernels were loaded on a tiny model "
        "first (not charged). IM and bottleneck are in coalescent units (sizes 1, migration "
        "0.5 each way, split at 1); n = "
        f"{report['config']['n_large']} has 10 epochs of sizes 1,000–10,000 changing every "
        "2,000 generations.",
        "",
        "| measure | phasetrace | reference (peer) | target | met? |",
        "|---|---:|---|---:|:---:|",
    ]
    for r in report["rows"]:
        met = "–" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['measure']} | {r['phasetrace']} | {r['reference']} | {r['target']} | {met} |"
        )
    lines.append("")
    missed = [r for r in report["rows"] if r["met"] is False]
    if missed:
        lines.append(
            "Missed: "
            + "; ".join(f"{r['measure']}: {r['phasetrace']} against {r['target']}" for r in missed)
            + "."
        )
    lines.append(
        "Growth: *M would meet tol* is the smallest number of pieces per growth epoch (of 8, "
        "16, 32, …) whose Romberg result is already within tol of the 4×M run; the automatic "
        "choice stops doubling M once the Romberg result moved less than tol from M/2 to M, "
        "so it is one doubling past that (its estimate bounds the coarser result)."
    )
    pg, mo = report["phasegen"], report["moments"]
    if pg.get("available"):
        lines.append(
            f"PhaseGen {pg['version']} ran in its own interpreter on the same models: "
            "*fresh* builds a `Coalescent` per θ (as a user writes it); *reusing state "
            "spaces* keeps the state spaces between θ as `pg.Inference` does. IM natively as "
            "two demes (`B` merges into `A`) and read from the demes graph (three demes, "
            "through msprime). Its growth uses 40 fixed steps per epoch."
        )
    else:
        lines.append(
            f"PhaseGen was not run ({pg.get('reason')}); the reference column quotes the "
            "issue's measurements on this machine."
        )
    if mo.get("available"):
        lines.append(
            f"moments {mo['version']} (a diffusion approximation, not exact) on the same "
            "IM graph: `Spectrum.from_demes` per θ."
        )
    else:
        lines.append(f"moments was not run ({mo.get('reason')}).")
    lines.append("")
    return "\n".join(lines)


def aggregate_large(runs: list[dict]) -> dict:
    """Medians over fresh processes of the large IM (each contributes its own numbers)."""
    out = dict(runs[0])
    keys = ("space_s", "first_jsfs_s", "build_and_first_s", "build_and_first_cpu_s")
    for key in (*keys, "peak_rss_mb", "cpu_over_wall"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "n": len(values)}
    for key in ("one_theta", "one_theta_gradient"):
        out[key] = {
            "median_s": statistics.median(r[key]["median_s"] for r in runs),
            "min_s": min(r[key]["min_s"] for r in runs),
            "n": sum(r[key]["n"] for r in runs),
            "cpu_median_s": statistics.median(r[key]["cpu_median_s"] for r in runs),
        }
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds, for the tests)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--im-large", type=int, help="samples per deme of the large IM (7)")
    p.add_argument("--n-large", type=int, help="samples of the many-epoch SFS (1000)")
    p.add_argument("--batch", type=int, help="θ in the batched bottleneck SFS (1000)")
    p.add_argument("--repeat", type=int, help="new θ per timing of the fast measures (25)")
    p.add_argument("--repeat-slow", type=int, help="new θ per timing of the slow measures (3)")
    p.add_argument("--large-repeat", type=int, help="fresh processes for the large IM (2)")
    p.add_argument(
        "--phasegen-python",
        default=os.environ.get("PHASETRACE_BENCH_PHASEGEN"),
        help="an interpreter with phasegen (and demes, msprime); default "
        "$PHASETRACE_BENCH_PHASEGEN; skipped when not given",
    )
    p.add_argument(
        "--phasegen-large-n",
        type=int,
        default=200,
        help="n of PhaseGen's many-epoch SFS (its dense matrices make n = 1000 take many "
        "minutes); 0 skips it",
    )
    p.add_argument(
        "--moments-python",
        default=os.environ.get("PHASETRACE_BENCH_MOMENTS"),
        help="an interpreter with moments-popgen and demes; default $PHASETRACE_BENCH_MOMENTS",
    )
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, cfg = args.child[0], json.loads(args.child[1])
        c0, t0 = time.process_time(), time.perf_counter()
        result = {"small": child_small, "large": child_large}[kind](cfg)
        # below 1: this process waited for a core (the machine is shared)
        result["cpu_over_wall"] = (time.process_time() - c0) / (time.perf_counter() - t0)
        print(json.dumps(result))
        return 0

    cfg = dict(QUICK if args.quick else DEFAULTS)
    for key in cfg:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["phasegen_large_n"] = args.phasegen_large_n if args.phasegen_python else None
    cfg["moments_sizes"] = sorted({4, cfg["im_large"]})
    cfg["moments_sizes_exact"] = bool(args.moments_python) and cfg["im_large"] == 7
    print(describe_line(), flush=True)
    t_start = time.perf_counter()
    load_start = load()
    small = run_child("small", cfg)
    print(f"small models done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    large_runs = [run_child("large", cfg) for _ in range(cfg["large_repeat"])]
    print(f"IM {cfg['im_large']} + {cfg['im_large']} done", flush=True)
    spec = peer_spec(cfg)
    phasegen = run_peer("phasegen", args.phasegen_python, spec, timeout=1200)
    moments = run_peer("moments", args.moments_python, spec, timeout=600)
    report = {
        "schema": SCHEMA,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe(("numpy", "numba", "scipy", "demes", "msprime", "jax")),
        "machine_line": describe_line(),
        "quick": args.quick,
        "config": cfg,
        "load_start": load_start,
        "phasetrace": {"small": small, "large": aggregate_large(large_runs)},
        "phasegen": phasegen,
        "moments": moments,
        "issue_figures": ISSUE_FIGURES,
    }
    report["machine"]["available_cpus"] = len(os.sched_getaffinity(0))
    share = [small["cpu_over_wall"], *(r["cpu_over_wall"] for r in large_runs)]
    report["cpu_over_wall"] = ", ".join(f"{x:.2f}" for x in share)
    peer_errors(report)
    report["rows"] = rows(report)
    report["load_end"] = load()
    report["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "demography-quick" if args.quick else "demography"
    write_atomic(out / f"{stem}.json", (json.dumps(report, indent=1)).encode())
    md = markdown(report)
    write_atomic(out / f"{stem}.md", md.encode())
    print(md)
    print(f"wrote {out / stem}.json, .md ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
