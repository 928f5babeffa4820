"""Trace identity: determinism, digests across processes, persistence, replay == elimination."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import phasetrace as pt
from phasetrace.elimination import record_unit
from phasetrace.scc import WorkUnit, decompose, strongly_connected_components
from phasetrace.trace import Trace, stitch
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(120)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fresh_elimination(graph, theta):
    """Elimination done directly on floats at ``theta`` (no recording), written from
    elimination.md §3 in the scaled form the recorder documents: returns σ per π position
    and the raw final rows ``{π position: {target π position: value}}``."""
    d = decompose(graph)
    sigma, rows = {}, {}
    for unit, first, exits in zip(d.units, d.first, d.exits, strict=True):
        k = unit.n_internal
        gpos = list(range(first, first + k)) + exits.tolist()
        raw = []
        for i in range(k):
            row = {}
            for e in range(unit.ptr[i], unit.ptr[i + 1]):
                w = float(unit.base[e])
                for c, t in zip(unit.coef[e], theta, strict=False):
                    w = w + float(c) * t
                row[int(unit.dst[e])] = w
            raw.append(row)
        sig = [None] * k
        for i in range(k):
            if unit.kind == 0:
                vals = [raw[i][t] for t in sorted(raw[i])]
                acc = vals[0]
                for x in vals[1:]:
                    acc = acc + x
                sig[i] = acc
        for v in range(k):
            for u in range(v + 1, k):
                if v not in raw[u]:
                    continue
                a = raw[u].pop(v) / sig[v]
                loop = False
                for w in sorted(raw[v]):
                    if w == u:
                        loop = True
                    elif w in raw[u]:
                        raw[u][w] = raw[u][w] + a * raw[v][w]
                    else:
                        raw[u][w] = a * raw[v][w]
                if loop:
                    vals = [raw[u][t] for t in sorted(raw[u])]
                    acc = vals[0]
                    for x in vals[1:]:
                        acc = acc + x
                    sig[u] = acc
        for i in range(k):
            sigma[gpos[i]] = sig[i]
            rows[gpos[i]] = {gpos[t]: x for t, x in raw[i].items()}
    return sigma, rows


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_replay_equals_fresh_elimination_bitwise(graph, theta):
    trace = pt.record_trace(graph)
    plan = trace._evaluator()
    vals = plan.replay(np.array([theta]))
    sigma_ref, rows_ref = fresh_elimination(graph, theta)
    got_sigma = plan.sigma(vals)[:, 0]
    arr = trace.arrays
    for v, s in sigma_ref.items():
        if s is not None:
            assert got_sigma[v] == s  # bitwise: == on floats, no tolerance
    row_vals = vals[plan.slot_map[arr["row_slot"].astype(np.int64)], 0]
    for v in range(trace.n_vertices):
        lo, hi = arr["row_ptr"][v], arr["row_ptr"][v + 1]
        got = dict(zip(arr["row_dst"][lo:hi].tolist(), row_vals[lo:hi].tolist(), strict=True))
        assert got == rows_ref.get(v, {})


@SETTINGS
@given(graph=cyclic_graphs(), theta=thetas, other=thetas)
def test_replay_at_new_theta_equals_fresh_recording_bitwise(graph, theta, other):
    trace = pt.record_trace(graph)
    trace.moments(theta, k=2)
    fresh = pt.record_trace(pt.Graph.from_json(graph.to_json()))
    assert fresh.digest() == trace.digest()
    assert np.array_equal(trace.moments(other, k=3), fresh.moments(other, k=3))


@SETTINGS
@given(graph=cyclic_graphs())
def test_units_recorded_in_any_order_stitch_to_the_same_trace(graph):
    d = decompose(graph)
    forward = [record_unit(u) for u in d.units]
    backward = [record_unit(u) for u in reversed(d.units)][::-1]
    via_bytes = [record_unit(WorkUnit.from_bytes(u.to_bytes())) for u in d.units]
    ref = pt.record_trace(graph)
    assert stitch(d, forward).digest() == ref.digest()
    assert stitch(d, backward).digest() == ref.digest()
    assert stitch(d, via_bytes) == ref


DIGEST_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import phasetrace as pt
from strategies import cyclic_graphs
g = pt.models.random_graph(40, n_sccs=6, seed=3)
print(pt.record_trace(g).digest(), pt.record_trace(pt.models.two_island(12)).digest())
"""


def test_digest_is_stable_across_fresh_processes():
    script = DIGEST_SCRIPT.format(tests=os.path.dirname(__file__))
    outs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outs.append(proc.stdout.split())
    here = [
        pt.record_trace(pt.models.random_graph(40, n_sccs=6, seed=3)).digest(),
        pt.record_trace(pt.models.two_island(12)).digest(),
    ]
    assert outs[0] == outs[1] == here


def test_save_load_round_trip_and_corruption(tmp_path):
    trace = pt.record_trace(pt.models.two_island(8))
    path = tmp_path / "t.npz"
    trace.save(path)
    back = Trace.load(path)
    assert back == trace and back.digest() == trace.digest()
    assert np.array_equal(back.moments([1.0, 0.5], k=2), trace.moments([1.0, 0.5], k=2))
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(pt.TraceFormatError):
        Trace.load(path)
    with pytest.raises(pt.TraceFormatError):
        Trace.load(tmp_path / "missing.npz")


def test_arrays_are_read_only_and_summary_counts():
    trace = pt.record_trace(pt.models.two_island(6))
    with pytest.raises(ValueError):
        trace.arrays["code"][0] = 0
    s = trace.summary()
    assert s["vertices"] == trace.n_vertices == 28
    assert s["ops"] == sum(s["ops_by_type"].values())
    assert s["x_program"] > 0 and "Trace" in repr(trace)


def test_iterative_tarjan_handles_long_chains_without_recursion():
    n = 100_000
    succ = [[i + 1] for i in range(n - 1)] + [[0]]  # one big cycle
    comps = strongly_connected_components(succ)
    assert len(comps) == 1 and len(comps[0]) == n
    comps = strongly_connected_components([[i + 1] for i in range(n - 1)] + [[]])
    assert len(comps) == n and comps[0] == [n - 1]


def test_same_scc_in_two_graphs_gives_the_same_unit_key():
    small, big = decompose(pt.models.two_island(10)), decompose(pt.models.two_island(11))
    small_keys = {u.key for u in small.units}
    big_keys = [u.key for u in big.units]
    new = [k for k in big_keys if k not in small_keys]
    assert len(new) == 1  # only the SCC of 11 lineages is new; the start's unit is shared too
    assert len(big_keys) == len(small_keys) + 1
