"""The peers' side of ``benchmarks/demography.py``: PhaseGen and moments on the same models.

Run by ``demography.py`` in the peer's own interpreter (a virtual environment outside the
repository, never a dependency of phasetrace), as::

    /path/to/venv/bin/python benchmarks/_demography_peers.py phasegen < spec.json

The spec (JSON on stdin) holds the models' numbers and demes YAML text; the answer (JSON,
last line of stdout) holds each peer's raw values and times. Errors are computed by
``demography.py``, which holds the references. This file imports neither phasetrace nor
numpy at module level, so any interpreter with the peer installed can run it.

Models, in coalescent units (pairwise coalescence rate 1/size, as PhaseGen's own
``Demography(pop_sizes=…)``):

* bottleneck: one deme, sizes 1, 0.2, 1 changing at 0.5 and 1; n = 10; the SFS.
* island: two demes of size 1, migration 0.5 per lineage each way, 5 + 5 samples; the
  pooled SFS.
* IM: two demes of size 1, migration 0.5 each way, split at 1 into an ancestor of size 1;
  4 + 4 samples; the joint SFS. PhaseGen natively as two demes (``B`` merges into ``A``,
  whose size becomes the ancestor's: the same process) and read from the demes graph
  (three demes, as ``Demography.from_demes`` builds it: a larger state space).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from importlib import metadata


def _timed(fn, args_list) -> dict:
    times = []
    for args in args_list:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def _factors(rng, k: int, width: float) -> list[float]:
    return [1.0 + width * (2.0 * rng.random() - 1.0) for _ in range(k)]


# -- PhaseGen ------------------------------------------------------------------------------
def phasegen_side(spec: dict) -> dict:
    import random

    import numpy as np
    import phasegen as pg

    rng = random.Random(spec["seed"])
    rep, rep_slow = spec["repeat"], spec["repeat_slow"]
    out: dict = {"version": metadata.version("phasegen")}

    def bottleneck(f=1.0):
        return pg.Demography(pop_sizes={"A": {0.0: 1.0 * f, 0.5: 0.2 * f, 1.0: 1.0 * f}})

    def island(f=1.0):
        return pg.Demography(
            pop_sizes={"A": 1.0, "B": 1.0},
            migration_rates={("A", "B"): 0.5 * f, ("B", "A"): 0.5 * f},
        )

    def im(f=1.0):
        return pg.Demography(
            pop_sizes={"A": {0.0: 1.0, 1.0: 1.0 * f}, "B": 1.0},
            migration_rates={("A", "B"): 0.5 * f, ("B", "A"): 0.5 * f},
            events=[pg.PopulationSplit(time=1.0, derived="B", ancestral="A")],
        )

    def reuse(spaces: dict, coal):
        # what pg.Inference does between evaluations (Inference.get_coal): keep the state
        # spaces of a first coalescent, switch them to the new demography's first epoch
        for name, cached in spaces.items():
            if coal.state_spaces[name] == cached:
                cached.update_epoch(coal.demography.get_epoch(0))
                coal.__dict__.setdefault("_built_state_spaces", {})[name] = cached
        return coal

    # bottleneck, n = 10
    t0 = time.perf_counter()
    base = pg.Coalescent(n={"A": 10}, demography=bottleneck())
    sfs = np.asarray(base.sfs.mean.data, dtype=float)
    first = time.perf_counter() - t0
    spaces = dict(base.state_spaces)
    fresh = _timed(
        lambda f: pg.Coalescent(n={"A": 10}, demography=bottleneck(f)).sfs.mean,
        [(f,) for f in _factors(rng, rep, 0.02)],
    )
    reused = _timed(
        lambda f: reuse(spaces, pg.Coalescent(n={"A": 10}, demography=bottleneck(f))).sfs.mean,
        [(f,) for f in _factors(rng, rep, 0.02)],
    )
    out["bottleneck_sfs"] = {
        "first_s": first,
        "fresh": fresh,
        "reused_state_spaces": reused,
        "sfs": sfs[1:10].tolist(),
        "tmrca_mean": float(base.tree_height.mean),
    }

    # island, 5 + 5, pooled SFS
    t0 = time.perf_counter()
    base = pg.Coalescent(n={"A": 5, "B": 5}, demography=island())
    sfs = np.asarray(base.sfs.mean.data, dtype=float)
    first = time.perf_counter() - t0
    out["island_sfs"] = {
        "first_s": first,
        "fresh": _timed(
            lambda f: pg.Coalescent(n={"A": 5, "B": 5}, demography=island(f)).sfs.mean,
            [(f,) for f in _factors(rng, rep_slow, 0.02)],
        ),
        "sfs": sfs[1:10].tolist(),
    }

    # IM 4 + 4, two demes
    t0 = time.perf_counter()
    base = pg.Coalescent(n={"A": 4, "B": 4}, demography=im())
    jsfs = np.asarray(base.jsfs.mean.data, dtype=float).reshape(5, 5)
    first = time.perf_counter() - t0
    spaces = dict(base.state_spaces)
    out["im44_jsfs"] = {
        "first_s": first,
        "fresh": _timed(
            lambda f: pg.Coalescent(n={"A": 4, "B": 4}, demography=im(f)).jsfs.mean,
            [(f,) for f in _factors(rng, rep_slow, 0.02)],
        ),
        "reused_state_spaces": _timed(
            lambda f: reuse(spaces, pg.Coalescent(n={"A": 4, "B": 4}, demography=im(f))).jsfs.mean,
            [(f,) for f in _factors(rng, rep_slow, 0.02)],
        ),
        "jsfs": jsfs.tolist(),
        "tmrca_mean": float(base.tree_height.mean),
        "tmrca_var": float(base.tree_height.var),
        "states": len(base.state_spaces["joint_block_counting"].states),
    }

    # the same models read from their demes graphs (PhaseGen goes through msprime)
    try:
        import demes
        import msprime  # noqa: F401  (Demography.from_demes needs it)
    except ImportError as exc:
        out["from_demes"] = {"available": False, "reason": f"{exc}"}
        return out

    def read(yaml_text):
        return pg.Demography.from_demes(demes.loads(yaml_text), ploidy=2)

    t0 = time.perf_counter()
    coal = pg.Coalescent(n={"A": 4, "B": 4, "X": 0}, demography=read(spec["im_yaml"]))
    jsfs = np.asarray(coal.jsfs.mean.data, dtype=float).reshape(5, 5)
    first = time.perf_counter() - t0
    out["im44_jsfs_from_demes"] = {
        "first_s": first,
        "fresh": _timed(
            lambda y: pg.Coalescent(n={"A": 4, "B": 4, "X": 0}, demography=read(y)).jsfs.mean,
            [(y,) for y in spec["im_yaml_perturbed"][:rep_slow]],
        ),
        "jsfs": jsfs.tolist(),
        "tmrca_mean": float(coal.tree_height.mean),
        "tmrca_var": float(coal.tree_height.var),
        "states": len(coal.state_spaces["joint_block_counting"].states),
    }

    t0 = time.perf_counter()
    coal = pg.Coalescent(n={"A": 10}, demography=read(spec["growth_yaml"]))
    sfs = np.asarray(coal.sfs.mean.data, dtype=float)
    out["growth_sfs"] = {
        "time_s": time.perf_counter() - t0,
        "sfs": sfs[1:10].tolist(),
        "growth_steps": 40,  # Demography.from_demes' default: fixed, no error control
    }
    pair = pg.Coalescent(n={"A": 2}, demography=read(spec["growth_yaml"]))
    out["growth_pair_tmrca"] = float(pair.tree_height.mean)

    n_big = spec.get("phasegen_large_n")
    if n_big:
        coal = pg.Coalescent(n={"A": n_big}, demography=read(spec["large_yaml"]))
        t0 = time.perf_counter()
        sfs = np.asarray(coal.sfs.mean.data, dtype=float)
        out["large_sfs"] = {
            "n": n_big,
            "time_s": time.perf_counter() - t0,
            "sfs_head": sfs[1:4].tolist(),
        }
    return out


# -- moments -------------------------------------------------------------------------------
def moments_side(spec: dict) -> dict:
    import demes
    import moments
    import numpy as np

    out: dict = {"version": metadata.version("moments-popgen")}
    for n in spec["moments_sizes"]:
        graph = demes.loads(spec["im_yaml"])
        t0 = time.perf_counter()
        fs = moments.Spectrum.from_demes(graph, sampled_demes=["A", "B"], sample_sizes=[n, n])
        first = time.perf_counter() - t0
        per = _timed(
            lambda y, n=n: moments.Spectrum.from_demes(
                demes.loads(y), sampled_demes=["A", "B"], sample_sizes=[n, n]
            ),
            [(y,) for y in spec["im_yaml_perturbed"][: spec["repeat_slow"]]],
        )
        # θ = 4·N_ref·μ = 1 with N_ref the root deme's size: branch length = counts/μ
        root = graph.demes[0].epochs[0].start_size
        out[f"im{n}{n}_jsfs"] = {
            "first_s": first,
            "fresh": per,
            "jsfs": (np.asarray(fs) * 4.0 * root).tolist(),
        }
    return out


def main() -> int:
    which = sys.argv[1]
    spec = json.loads(sys.stdin.read())
    fn = {"phasegen": phasegen_side, "moments": moments_side}[which]
    print(json.dumps(fn(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
