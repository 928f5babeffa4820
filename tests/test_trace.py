"""Trace identity: determinism, digests across processes, persistence, replay == elimination."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrace as pt
from phasetrace._graphalgo import scc_labels
from phasetrace.elimination import record_unit
from phasetrace.evaluate import cross_moment as ref_cross_moment
from phasetrace.evaluate import moments as ref_moments
from phasetrace.evaluate import slot_values
from phasetrace.scc import WorkUnit, decompose
from phasetrace.trace import Trace, stitch
from strategies import cyclic_graphs, thetas

pytestmark = pytest.mark.timeout(120)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _left_sum(values):
    acc = values[0]
    for x in values[1:]:
        acc = acc + x
    return acc


def fresh_elimination(graph, theta):
    """Elimination done directly on floats at ``theta`` (no recording), written from the
    block schedule (docs/algorithm.md) in the scaled form the recorder documents.

    Returns σ per π position, the raw final internal rows ``{π position: {target: value}}``
    and the exit rates ``{π position: {target: rate}}``.
    """
    d = decompose(graph)
    sigma, rows, exits = {}, {}, {}
    for unit, first, exit_pos in zip(d.units, d.first, d.exits, strict=True):
        k = unit.n_internal
        gpos = list(range(first, first + k)) + exit_pos.tolist()
        raw, out, eps = [], [], []
        for i in range(k):
            row, ex = {}, {}
            for e in range(unit.ptr[i], unit.ptr[i + 1]):
                w = float(unit.base[e])
                for c, t in zip(unit.coef[e], theta, strict=False):
                    w = w + float(c) * t
                (row if unit.dst[e] < k else ex)[int(unit.dst[e])] = w
            raw.append(row)
            out.append(ex)
            eps.append(_left_sum([ex[t] for t in sorted(ex)]) if ex else None)
        sig = [None] * k
        if unit.kind == 0:  # a transient unit: σ = λ, every rate in local order
            sig = [_left_sum([{**raw[i], **out[i]}[t] for t in sorted({**raw[i], **out[i]})])
                   for i in range(k)]  # fmt: skip
        for v in range(k):
            for u in range(v + 1, k):
                if v not in raw[u]:
                    continue
                a = raw[u].pop(v) / sig[v]
                if eps[v] is not None:  # exit mass: ε_u += a·ε_v
                    eps[u] = a * eps[v] if eps[u] is None else eps[u] + a * eps[v]
                loop = False
                for w in sorted(raw[v]):
                    if w == u:
                        loop = True
                    elif w in raw[u]:
                        raw[u][w] = raw[u][w] + a * raw[v][w]
                    else:
                        raw[u][w] = a * raw[v][w]
                if loop:  # GTH: σ_u = Σ internal entries + ε_u, from positive terms
                    terms = [raw[u][t] for t in sorted(raw[u])]
                    sig[u] = _left_sum(terms + ([] if eps[u] is None else [eps[u]]))
        for i in range(k):
            sigma[gpos[i]] = sig[i]
            rows[gpos[i]] = {gpos[t]: x for t, x in raw[i].items()}
            exits[gpos[i]] = {gpos[t]: x for t, x in out[i].items()}
    return sigma, rows, exits


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_replay_equals_fresh_elimination_bitwise(graph, theta):
    trace = pt.record_trace(graph)
    vals = slot_values(trace, np.array([theta]))[:, 0]
    sigma_ref, rows_ref, exits_ref = fresh_elimination(graph, theta)
    arr = trace.arrays
    for v, s in sigma_ref.items():
        slot = arr["sigma"][v]
        assert (s is None) == (slot < 0)
        if s is not None:
            assert vals[slot] == s  # bitwise: == on floats, no tolerance
    for name, ref in (("row", rows_ref), ("exit", exits_ref)):
        ptr, dst, slot = (arr[f"{name}_{x}"] for x in ("ptr", "dst", "slot"))
        for v in range(trace.n_vertices):
            lo, hi = ptr[v], ptr[v + 1]
            got = dict(zip(dst[lo:hi].tolist(), vals[slot[lo:hi]].tolist(), strict=True))
            assert got == ref.get(v, {})


@SETTINGS
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_kernel_equals_numpy_reference_bitwise(graph, theta):
    """The compiled kernel performs the reference's operations in the same order."""
    trace = pt.record_trace(graph)
    batch = np.array([theta, [t * 1.5 for t in theta], [t * 0.7 for t in theta]])
    rewards = np.arange(trace.n_vertices) % 3 * 0.5
    for th in (theta, batch):
        for r in (None, rewards):
            assert np.array_equal(trace.moments(th, k=4, rewards=r), ref_moments(trace, th, 4, r))
        got = trace.cross_moment(th, rewards, None)
        assert np.array_equal(got, ref_cross_moment(trace, th, rewards, None))


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


def _csr(successors):
    ptr = np.cumsum([0] + [len(s) for s in successors])
    dst = np.array([w for s in successors for w in s], dtype=np.int64)
    return ptr.astype(np.int64), dst


def test_iterative_tarjan_handles_long_chains_without_recursion():
    n = 100_000
    label, n_comp = scc_labels(*_csr([[i + 1] for i in range(n - 1)] + [[0]]))  # one cycle
    assert n_comp == 1 and (label == 0).all()
    label, n_comp = scc_labels(*_csr([[i + 1] for i in range(n - 1)] + [[]]))  # a chain
    assert n_comp == n and label[n - 1] == 0  # sinks first


@settings(max_examples=60, deadline=None)
@given(edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=40))
def test_tarjan_agrees_with_mutual_reachability(edges):
    """Same component iff each reaches the other; components numbered sinks first."""
    n = 12
    succ = [sorted({w for u, w in edges if u == v}) for v in range(n)]
    label, n_comp = scc_labels(*_csr(succ))
    reach = np.eye(n, dtype=bool)
    for u, w in edges:
        reach[u, w] = True
    for k in range(n):  # transitive closure (Floyd–Warshall on booleans)
        reach |= reach[:, [k]] & reach[[k], :]
    assert np.array_equal(label[:, None] == label[None, :], reach & reach.T)
    assert set(label.tolist()) == set(range(n_comp))
    for u, w in edges:  # an edge never points to a component completed later
        assert label[u] >= label[w]


def test_same_scc_in_two_graphs_gives_the_same_unit_key():
    small, big = decompose(pt.models.two_island(10)), decompose(pt.models.two_island(11))
    small_keys = {u.key for u in small.units}
    big_keys = [u.key for u in big.units]
    new = [k for k in big_keys if k not in small_keys]
    assert len(new) == 1  # only the SCC of 11 lineages is new; the start's unit is shared too
    assert len(big_keys) == len(small_keys) + 1


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(graph=cyclic_graphs(max_vertices=20), theta=thetas)
def test_one_theta_replayed_on_threads_first_is_bitwise_the_same(graph, theta, monkeypatch):
    """The two-phase path (all units replayed in parallel, then solved) changes no bit."""
    from phasetrace import kernel

    trace = pt.record_trace(graph)
    want = ref_moments(trace, theta, 3)
    fused = trace.moments_and_jacobian(theta, k=3)
    with monkeypatch.context() as m, pt.config(n_workers=2):
        m.setattr(kernel, "PARALLEL_REPLAY_MIN_OPS", 0)
        assert np.array_equal(trace.moments(theta, k=3), want)
        two_phase = trace.moments_and_jacobian(theta, k=3)
        assert np.array_equal(two_phase[0], fused[0]) and np.array_equal(two_phase[1], fused[1])
        if trace.arrays["input_coef"].any():  # some rate is negative at θ = (−1000, −1000)
            with pytest.raises(pt.InvalidParameterError, match="is not > 0"):
                trace.moments([-1e3] * graph.n_params)


KERNEL_CACHE_SCRIPT = """
import numpy as np, phasetrace as pt
from phasetrace import _kernel_impl as impl
tr = pt.record_trace(pt.models.two_island(4))
tr.moments([1.0, 0.5]); tr.moments(np.ones((20, 2)))
entries = (impl._moments_chunk_1, impl._moments_chunk_16)
hits = sum(sum(f.stats.cache_hits.values()) for f in entries)
misses = sum(sum(f.stats.cache_misses.values()) for f in entries)
print(hits, misses)
"""


def test_a_fresh_process_loads_the_compiled_kernel_from_disk():
    """numba's disk cache: the session start compiled (or loaded) the kernel; a new
    process finds it there instead of compiling again."""
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL_CACHE_SCRIPT], capture_output=True, text=True, check=True
    )
    hits, misses = map(int, proc.stdout.split())
    assert hits >= 1 and misses == 0


def test_import_phasetrace_imports_neither_numba_nor_jax():
    code = "import sys, phasetrace; print(sorted({'numba', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- saving is atomic (issue 19) -------------------------------------------------------------


def _savez_that_fails_midway(file, **arrays):
    """np.savez on a full disk: the start of the file is written, then ENOSPC."""
    import errno

    fh = open(file, "wb") if isinstance(file, str | os.PathLike) else file  # noqa: SIM115
    fh.write(b"PK\x03\x04 the start of a zip")
    fh.flush()
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_that_fails_midway_leaves_the_old_file_and_no_fragment(tmp_path, monkeypatch):
    old = pt.record_trace(pt.models.kingman(4))
    path = tmp_path / "t.npz"
    assert old.save(path) == path
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", _savez_that_fails_midway)
    with pytest.raises(OSError, match="No space"):
        pt.record_trace(pt.models.two_island(3)).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]
    monkeypatch.undo()
    assert Trace.load(path) == old


def test_cli_trace_output_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch, capsys):
    from phasetrace.cli import main

    path = tmp_path / "k.npz"
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["trace", "kingman:n=4", "-o", str(path)]) == 0
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", _savez_that_fails_midway)
    assert main(["trace", "kingman:n=5", "-o", str(path)]) != 0
    assert "No space left" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "k.npz"]


def test_save_keeps_numpy_s_name_rule(tmp_path):
    trace = pt.record_trace(pt.models.kingman(3))
    assert trace.save(tmp_path / "plain") == tmp_path / "plain.npz"
    assert trace.save(str(tmp_path / "named.npz")) == tmp_path / "named.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named.npz", "plain.npz"]


def test_one_theta_compiles_only_the_one_lane_kernel_and_models_share_it():
    """First use: one θ needs (compiles, or loads from numba's cache) only the one-lane
    specialisation, and traces with one or two parameters, freshly recorded or read back,
    share it: no model makes numba compile the kernel again."""
    code = (
        "import numpy as np, phasetrace as pt\n"
        "from phasetrace import _kernel_impl as impl\n"
        "pt.record_trace(pt.models.two_island(4)).expectation([1.0, 0.5])\n"
        "pt.sfs(pt.record_trace(pt.models.kingman(6)), [1.0])\n"
        "print(len(impl._moments_chunk_1.signatures), len(impl._moments_chunk_16.signatures))\n"
        "pt.record_trace(pt.models.kingman(6)).moments(np.ones((40, 1)))\n"
        "print(len(impl._moments_chunk_1.signatures), len(impl._moments_chunk_16.signatures))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "0", "1", "1"]
