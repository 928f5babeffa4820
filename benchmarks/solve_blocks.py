"""Where solve blocks pay: every SCC of several models evaluated both ways.

    python benchmarks/solve_blocks.py          # ~3 min on 2 cores
    python benchmarks/solve_blocks.py --quick  # ~1 min

Each model is recorded twice in this process: every SCC taped (the recorder's rule
switched off) and every SCC of two or more states a solve block. For each SCC the time of
its evaluation at one θ is measured in compiled code, both ways: replay its ops and run
its solve (taped), or replay its rate loads, factorise and solve (solve block); the taped
recording time of the SCC is measured too. The same again per θ in a block of 16 θ (the
batched kernel's lanes). Then every rule "solve block iff ``k >= K`` and the elimination
estimate ``E >= F·k²``" on a grid of ``(K, F)`` is scored by the evaluation times it
gives summed over all SCCs, against the best choice per SCC, all taped and all solved.
The rule in :mod:`phasetrace.elimination` (``SOLVE_MIN_STATES``, ``SOLVE_MIN_FILL``) is
chosen from this table. At one θ a solve block is faster for nearly every SCC (all solved
is the best there); per θ in a batch, small SCCs and chains are faster taped (16 lanes
vectorise the tape, a factorisation runs one lane at a time). The rule in use is among
those with the smallest geometric mean of the two ratios.

Writes ``solve_blocks.json`` and ``solve_blocks.md`` into ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _joint_blocks import joint_blocks
from _machine import describe, describe_line

GRID_K = (4, 8, 12, 16, 24, 32, 48)
GRID_F = (0.25, 0.5, 1.0, 2.0, 4.0)


def models(quick: bool):
    import phasetrace as pt

    blocks = lambda s: pt.models.structured_coalescent(s, state_space="blocks")  # noqa: E731
    rand = pt.models.random_graph
    out = [
        ("joint blocks 4+4", joint_blocks(4, 4), [1.0, 0.5]),
        ("structured (6, 6) blocks", blocks((6, 6)), [1.0, 0.5]),
        ("structured (3, 3, 3) blocks", blocks((3, 3, 3)), [1.0, 0.5]),
        ("two_island(60)", pt.models.two_island(60), [1.0, 0.5]),
        ("random, 8 SCCs of 2-60", rand(240, 8, extra_edges=2.0, seed=3), [1.0, 1.0]),
    ]
    if not quick:
        out.insert(1, ("joint blocks 5+5", joint_blocks(5, 5), [1.0, 0.5]))
        out.append(("two_island(250)", pt.models.two_island(250), [1.0, 0.5]))
        out.append(("random, dense chords", rand(200, 6, extra_edges=6.0, seed=4), [1.0, 1.0]))
    return out


def _timers():
    from numba import njit

    from phasetrace import _kernel_impl as impl

    @njit(cache=False)
    def taped(prog, tape, u, th, vals, x, acc, reps):
        for _ in range(reps):
            impl.replay_unit(prog, u, th, vals, 1)
            impl.solve_unit(tape, u, vals, x, acc, 1, 1)

    @njit(cache=False)
    def solved(prog, tape, u, th, vals, ws, x, acc, reps):
        for _ in range(reps):
            impl.replay_unit(prog, u, th, vals, 1)
            impl.factor_block(tape, u, vals, ws, 1, 0)
            impl.solve_block(tape, u, vals, ws, x, acc, 1, 1, 0)

    @njit(cache=False)
    def taped16(prog, tape, u, th, vals, x, acc, reps):
        for _ in range(reps):
            impl.replay_unit(prog, u, th, vals, 16)
            impl.solve_unit(tape, u, vals, x, acc, 1, 16)

    @njit(cache=False)
    def solved16(prog, tape, u, th, vals, ws, x, acc, reps):
        for _ in range(reps):
            impl.replay_unit(prog, u, th, vals, 16)
            for ln in range(16):  # as the kernel does: each lane factorised, then solved
                impl.factor_block(tape, u, vals, ws, 16, ln)
                impl.solve_block(tape, u, vals, ws, x, acc, 1, 16, ln)

    return taped, solved, taped16, solved16


def per_unit_seconds(fn, args, budget: float = 0.02) -> float:
    """Best time of one call of ``fn(*args, reps)``, per rep, within about ``budget`` s."""
    fn(*args, 1)
    reps = 1
    while True:
        t0 = time.process_time()
        fn(*args, reps)
        dt = time.process_time() - t0
        if dt > budget / 4 or reps > 1 << 20:
            break
        reps *= 4
    best = dt
    for _ in range(3):
        t0 = time.process_time()
        fn(*args, reps)
        best = min(best, time.process_time() - t0)
    return best / reps


def measure(name, graph, theta, timers) -> list[dict]:
    import phasetrace as pt
    from phasetrace import _kernel_impl as impl
    from phasetrace import elimination, kernel
    from phasetrace.scc import decompose

    saved = elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL
    try:
        elimination.SOLVE_MIN_STATES = 10**9
        taped = pt.record_trace(graph)
        elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL = 2, 0.0
        solved = pt.record_trace(graph)
        elimination.SOLVE_MIN_STATES = 10**9
        units = decompose(graph).units
        record_s = []
        for u in units:
            t0 = time.process_time()
            elimination.record_unit(u)
            record_s.append(time.process_time() - t0)
    finally:
        elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL = saved
    th = np.array([theta], dtype=np.float64)
    th16 = np.array(theta) * np.linspace(0.8, 1.2, 16)[:, None]
    ct, cs = kernel.compiled(taped), kernel.compiled(solved)
    x, x16 = np.ones(taped.n_vertices), np.ones(16 * taped.n_vertices)
    acc = np.empty(16)
    vt, vs = np.empty(max(ct.max_unit_ops, 1) * 16), np.empty(max(cs.max_unit_ops, 1) * 16)
    ws = ws16 = impl.workspace(cs.tape)
    run_taped, run_solved, run_taped16, run_solved16 = timers
    rows = []
    for i, unit in enumerate(units):
        k = unit.n_internal
        if k < 2:
            continue
        rows.append(
            {
                "model": name,
                "k": k,
                "edges": unit.n_edges,
                "estimate": elimination.elimination_estimate(unit),
                "taped_ops": int(ct.prog[0][i + 1] - ct.prog[0][i]),
                "record_taped_s": record_s[i],
                "taped_s": per_unit_seconds(run_taped, (ct.prog, ct.tape, i, th, vt, x, acc)),
                "solved_s": per_unit_seconds(run_solved, (cs.prog, cs.tape, i, th, vs, ws, x, acc)),
                "taped16_s": per_unit_seconds(
                    run_taped16, (ct.prog, ct.tape, i, th16, vt, x16, acc)
                )
                / 16,
                "solved16_s": per_unit_seconds(
                    run_solved16, (cs.prog, cs.tape, i, th16, vs, ws16, x16, acc)
                )
                / 16,
            }
        )
    return rows


def score(rows) -> dict:
    k = np.array([r["k"] for r in rows], dtype=float)
    e = np.array([r["estimate"] for r in rows], dtype=float)
    t = np.array([r["taped_s"] for r in rows])
    s = np.array([r["solved_s"] for r in rows])
    t16 = np.array([r["taped16_s"] for r in rows])
    s16 = np.array([r["solved16_s"] for r in rows])
    rec = np.array([r["record_taped_s"] for r in rows])
    best, best16 = np.minimum(s, t).sum(), np.minimum(s16, t16).sum()
    grid = []
    for kk in GRID_K:
        for f in GRID_F:
            solve = (k >= kk) & (e >= f * k * k)
            grid.append(
                {
                    "K": kk,
                    "F": f,
                    "eval_s": float(np.where(solve, s, t).sum()),
                    "eval16_s": float(np.where(solve, s16, t16).sum()),
                    "over_best": float(np.where(solve, s, t).sum() / best),
                    "over_best16": float(np.where(solve, s16, t16).sum() / best16),
                    "record_s": float(rec[~solve].sum()),
                    "solve_blocks": int(solve.sum()),
                }
            )
    return {
        "grid": grid,
        "best_eval_s": float(best),
        "best_eval16_s": float(best16),
        "all_taped_eval_s": float(t.sum()),
        "all_solved_eval_s": float(s.sum()),
        "all_taped_eval16_s": float(t16.sum()),
        "all_solved_eval16_s": float(s16.sum()),
        "all_taped_record_s": float(rec.sum()),
    }


def markdown(report) -> str:
    from phasetrace import elimination

    sc = report["score"]
    rule = (elimination.SOLVE_MIN_STATES, elimination.SOLVE_MIN_FILL)
    out = [
        "# Solve blocks: where they pay",
        "",
        f"Machine: {report['machine_line']}. Date: {report['date']}.",
        "Every SCC of two or more states, evaluated both ways in compiled code (CPU time, "
        "best of several repeats): taped (replay its ops, run its solve) and as a solve "
        "block (replay its rate loads, factorise, solve); for one θ, and per θ in a block "
        "of 16 θ (the batched kernel). *E* is the recorder's elimination estimate (the "
        "taped products), *k* the states; *record* the taped recording (Python), which a "
        "solve block replaces by its rate loads.",
        "",
        "| model | SCCs | largest | one θ: taped | solved | best | per θ of 16: taped | "
        "solved | best | record taped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_model = {}
    for r in report["units"]:
        by_model.setdefault(r["model"], []).append(r)
    for m, rs in by_model.items():

        def tot(key, rs=rs):
            return sum(r[key] for r in rs) * 1e3

        b1 = sum(min(r["taped_s"], r["solved_s"]) for r in rs) * 1e3
        b16 = sum(min(r["taped16_s"], r["solved16_s"]) for r in rs) * 1e3
        out.append(
            f"| {m} | {len(rs)} | {max(r['k'] for r in rs)} | {tot('taped_s'):.3f} ms | "
            f"{tot('solved_s'):.3f} ms | {b1:.3f} ms | {tot('taped16_s'):.3f} ms | "
            f"{tot('solved16_s'):.3f} ms | {b16:.3f} ms | {tot('record_taped_s'):.0f} ms |"
        )
    out += [
        "",
        "Rules *solve iff k ≥ K and E ≥ F·k²*, summed over all SCCs above, as multiples of "
        f"the best choice per SCC ({sc['best_eval_s'] * 1e3:.2f} ms for one θ, "
        f"{sc['best_eval16_s'] * 1e3:.2f} ms per θ of 16; all taped "
        f"{sc['all_taped_eval_s'] / sc['best_eval_s']:.2f}× / "
        f"{sc['all_taped_eval16_s'] / sc['best_eval16_s']:.2f}×, all solved "
        f"{sc['all_solved_eval_s'] / sc['best_eval_s']:.2f}× / "
        f"{sc['all_solved_eval16_s'] / sc['best_eval16_s']:.2f}×; taped recording of "
        f"everything {sc['all_taped_record_s']:.2f} s).",
        "",
        "| K | F | one θ | per θ of 16 | recording left | solve blocks |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for g in sc["grid"]:
        mark = " **(in use)**" if (g["K"], g["F"]) == rule else ""
        out.append(
            f"| {g['K']} | {g['F']}{mark} | {g['over_best']:.2f}× | {g['over_best16']:.2f}× | "
            f"{g['record_s']:.2f} s | {g['solve_blocks']} |"
        )
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    print(describe_line(), flush=True)
    timers = _timers()
    rows = []
    for name, graph, theta in models(args.quick):
        r = measure(name, graph, theta, timers)
        print(f"{name}: {len(r)} SCCs", flush=True)
        rows += r
    report = {
        "schema": "phasetrace-solve-blocks/1",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe(("numpy", "numba")),
        "machine_line": describe_line(),
        "units": rows,
        "score": score(rows),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "solve_blocks-quick" if args.quick else "solve_blocks"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
