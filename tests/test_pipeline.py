"""compute_trace(s): hierarchical == monolithic, cache reuse across graphs, cache faults."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrace as pt
from phasetrace import pipeline
from phasetrace.errors import CacheWarning
from phasetrace.pipeline import compute_trace, compute_traces, get_cache, last_run_stats
from strategies import cyclic_graphs

pytestmark = pytest.mark.timeout(300)
LOCAL = [("sequential", 1), ("loky", 1), ("loky", 2), ("spawn", 2)]


@pytest.fixture(autouse=True)
def _every_unit_cached(monkeypatch):
    """These tests exercise unit entries on small graphs, whose units are below the size
    that earns an entry of its own (pipeline.UNIT_CACHE_MIN_OPS): keep every unit."""
    monkeypatch.setattr(pipeline, "UNIT_CACHE_MIN_OPS", 0)


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    from phasetrace.settings import shutdown_executors

    shutdown_executors()


def _cache(cache_dir):
    from phasetrace.settings import resolve

    return get_cache(resolve(cache_dir=str(cache_dir)))


def _forget_memory(cache_dir):
    """As a fresh process: no memory layer, no per-graph memo of traces."""
    _cache(cache_dir).memory.clear()
    pipeline._traces.clear()


def _whole_entry(cache_dir, graph) -> Path:
    return _cache(cache_dir).disk.path_for(pipeline._graph_key(graph))


def _drop_whole(cache_dir, graphs):
    """Remove whole-trace entries, so the next call goes through the units."""
    for g in graphs:
        _whole_entry(cache_dir, g).unlink(missing_ok=True)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(graphs=st.lists(cyclic_graphs(max_vertices=24), min_size=1, max_size=4))
@pytest.mark.parametrize("strategy, n_workers", LOCAL)
def test_hierarchical_equals_monolithic_cold_and_warm(
    tmp_path_factory, graphs, strategy, n_workers
):
    cache_dir = tmp_path_factory.mktemp("cache")
    expected = [pt.record_trace(g).digest() for g in graphs]
    kw = dict(strategy=strategy, n_workers=n_workers, cache_dir=str(cache_dir))
    cold = compute_traces(graphs, hierarchical=True, **kw)
    assert [t.digest() for t in cold] == expected
    assert last_run_stats().recorded == last_run_stats().unique
    warm = compute_traces(graphs, hierarchical=True, **kw)
    assert [t.digest() for t in warm] == expected
    assert last_run_stats().recorded == 0
    assert last_run_stats().traces_from_cache == len(graphs)  # the per-graph memo
    _forget_memory(cache_dir)
    whole_from_disk = compute_traces(graphs, hierarchical=True, **kw)
    assert [t.digest() for t in whole_from_disk] == expected
    assert last_run_stats().traces_from_cache == len(graphs)
    assert last_run_stats().units == 0  # nothing validated, decomposed or looked up
    _forget_memory(cache_dir)
    _drop_whole(cache_dir, graphs)
    disk = compute_traces(graphs, hierarchical=True, **kw)
    assert [t.digest() for t in disk] == expected
    assert last_run_stats().from_disk == last_run_stats().unique
    whole = compute_traces(graphs, hierarchical=False, cache=False, **kw)
    assert [t.digest() for t in whole] == expected
    assert all(a == b for a, b in zip(whole, cold, strict=True))


def test_cross_graph_reuse_records_only_new_units(tmp_path):
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    compute_trace(pt.models.two_island(30), **kw)
    assert last_run_stats().recorded == 30  # start unit + one SCC per lineage count 2..30
    trace = compute_trace(pt.models.two_island(31), **kw)
    stats = last_run_stats()
    assert stats.recorded == 1 and stats.from_memory == 30
    assert trace.digest() == pt.record_trace(pt.models.two_island(31)).digest()
    _forget_memory(tmp_path)
    compute_trace(pt.models.two_island(32), **kw)
    stats = last_run_stats()
    assert (stats.recorded, stats.from_disk) == (1, 31)


def test_units_are_deduplicated_within_a_call(tmp_path):
    graphs = [pt.models.two_island(12), pt.models.two_island(12), pt.models.two_island(13)]
    traces = compute_traces(graphs, strategy="sequential", cache=False, hierarchical=True)
    stats = last_run_stats()
    assert stats.units == 12 + 12 + 13 and stats.unique == 13 and stats.recorded == 13
    assert traces[0].digest() == traces[1].digest()


def _cache_files(cache_dir: Path) -> list[Path]:
    """The entries (in shard directories; not the CACHEDIR.TAG marker beside them)."""
    return sorted(
        p
        for p in cache_dir.rglob("*")
        if p.is_file() and p.parent != cache_dir and not p.name.startswith(".")
    )


def _break(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_cache_entries_are_recomputed_never_returned(tmp_path, how):
    g = pt.models.two_island(15)
    expected = pt.record_trace(g).digest()
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    compute_trace(g, **kw)
    whole = _whole_entry(tmp_path, g)
    files = [f for f in _cache_files(tmp_path) if f != whole]
    assert len(files) == 15 and whole.is_file()
    for f in files[::3]:
        _break(f, how)
    _forget_memory(tmp_path)
    _drop_whole(tmp_path, [g])
    with pytest.warns(CacheWarning):
        trace = compute_trace(g, **kw)
    assert trace.digest() == expected
    assert last_run_stats().recorded == len(files[::3])
    _forget_memory(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no more warnings
        assert compute_trace(g, **kw).digest() == expected


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_whole_trace_entry_is_dropped_and_rebuilt_from_units(tmp_path, how):
    g = pt.models.two_island(12)
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    expected = compute_trace(g, **kw).digest()
    _break(_whole_entry(tmp_path, g), how)
    _forget_memory(tmp_path)
    with pytest.warns(CacheWarning):
        trace = compute_trace(g, **kw)
    stats = last_run_stats()
    assert trace.digest() == expected
    assert stats.traces_from_cache == 0 and stats.from_disk == 12 and stats.recorded == 0
    _forget_memory(tmp_path)
    assert compute_trace(g, **kw).digest() == expected  # rewritten
    assert last_run_stats().traces_from_cache == 1


def test_whole_trace_of_an_equal_graph_built_another_way(tmp_path):
    """The key is the content: a graph rebuilt from JSON hits the same entry."""
    kw = dict(strategy="sequential", cache_dir=str(tmp_path))
    first = compute_trace(pt.models.two_island(9), **kw)
    again = compute_trace(pt.Graph.from_json(pt.models.two_island(9).to_json()), **kw)
    assert last_run_stats().traces_from_cache == 1 and again == first


def test_unwritable_cache_degrades_to_no_caching_with_one_warning(tmp_path, monkeypatch):
    import errno

    from phasetrace.cache import DiskCache

    def refuse(self, path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(DiskCache, "_write_atomic", refuse)
    g = pt.models.two_island(10)
    cache_dir = tmp_path / "ro"
    with pytest.warns(CacheWarning) as record:
        trace = compute_trace(g, strategy="sequential", cache_dir=str(cache_dir), hierarchical=True)
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1
    assert trace.digest() == pt.record_trace(g).digest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_trace(pt.models.two_island(11), strategy="sequential", cache_dir=str(cache_dir))


WRITER = """
import sys
sys.path.insert(0, {src!r})
import phasetrace as pt
from phasetrace.pipeline import compute_trace
g = pt.models.two_island(40)
t = compute_trace(g, strategy="sequential", cache_dir={d!r}, hierarchical=True)
print(t.digest())
"""


def test_two_processes_writing_the_same_keys_concurrently(tmp_path):
    script = WRITER.format(src=str(Path(pt.__file__).parents[1]), d=str(tmp_path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    expected = pt.record_trace(pt.models.two_island(40)).digest()
    assert [o[0].strip() for o in outs] == [expected, expected]
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    _forget_memory(tmp_path)
    assert (
        compute_trace(
            pt.models.two_island(40), strategy="sequential", cache_dir=str(tmp_path)
        ).digest()
        == expected
    )
    assert last_run_stats().recorded == 0


def test_invalid_graph_is_rejected_before_dispatch():
    good = pt.models.two_island(5)
    bad = pt.Graph(state_length=1)
    bad.starting_vertex().add_edge(bad.find_or_create_vertex([1]), 0.5)
    with pytest.raises(pt.InvalidGraphError, match="start: initial distribution"):
        compute_traces([good, bad], strategy="sequential", cache=False)


def test_stats_report_stages():
    compute_trace(pt.models.two_island(8), strategy="sequential", cache=False)
    s = last_run_stats()
    assert set(s.seconds) >= {"decompose", "lookup", "record", "store", "stitch", "total"}
    assert "recorded" in str(s) and s.graphs == 1


def test_progress_bar_when_asked(capsys):
    pytest.importorskip("tqdm")
    compute_trace(
        pt.models.two_island(12),
        strategy="sequential",
        cache=False,
        progress=True,
        hierarchical=True,
    )
    assert "recording units" in capsys.readouterr().err
    compute_trace(
        pt.models.two_island(12),
        strategy="sequential",
        cache=False,
        progress=False,
        hierarchical=True,
    )
    assert "recording units" not in capsys.readouterr().err


def test_default_hierarchical_rule_still_matches_record_trace():
    g = pt.models.random_graph(300, n_sccs=30, seed=5)
    trace = compute_trace(g, strategy="sequential", cache=False)
    assert last_run_stats().units == 31  # 30 SCC units + the start
    assert trace.digest() == pt.record_trace(g).digest()
    assert np.isfinite(trace.expectation([1.0, 1.0]))


def test_graph_changed_after_a_call_is_decomposed_again():
    """The per-graph plan memo must never serve a stale decomposition."""
    g = pt.Graph(state_length=1)
    a, b, c = (g.find_or_create_vertex([k]) for k in (1, 2, 3))
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge(b, 2.0)
    b.add_edge(c, 1.0)
    first = compute_trace(g, strategy="sequential", cache=False)
    b.add_edge(a, 5.0)  # a new cycle: same vertices, different trace
    second = compute_trace(g, strategy="sequential", cache=False)
    assert second.digest() != first.digest()
    assert second.digest() == pt.record_trace(g).digest()
    d = g.find_or_create_vertex([4])  # a new vertex alone also changes the graph
    c.add_edge(d, 1.0)
    assert (
        compute_trace(g, strategy="sequential", cache=False).digest() == pt.record_trace(g).digest()
    )


def test_small_units_get_no_cache_entries_of_their_own(tmp_path, monkeypatch):
    """A graph of many small units writes one file, its whole trace (not one per unit)."""
    monkeypatch.setattr(pipeline, "UNIT_CACHE_MIN_OPS", 10_000)  # the default
    g = pt.models.kingman(12)  # 77 states, each its own SCC
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    trace = compute_trace(g, **kw)
    assert _cache_files(tmp_path) == [_whole_entry(tmp_path, g)]
    _forget_memory(tmp_path)
    assert compute_trace(g, **kw).digest() == trace.digest()
    assert last_run_stats().traces_from_cache == 1
    _forget_memory(tmp_path)
    _drop_whole(tmp_path, [g])
    assert compute_trace(g, **kw).digest() == trace.digest()
    stats = last_run_stats()
    assert stats.from_disk == stats.from_memory == 0 and stats.recorded == stats.unique


def test_units_worth_keeping_get_cache_entries(tmp_path, monkeypatch):
    from phasetrace.elimination import estimated_ops
    from phasetrace.scc import decompose

    g = pt.models.two_island(40)
    units = decompose(g).units
    ops = [estimated_ops(u) for u in units]
    cut = sorted(ops)[len(ops) // 2]
    monkeypatch.setattr(pipeline, "UNIT_CACHE_MIN_OPS", cut)
    kept = {
        pipeline._cache_key(b"unit", u.to_bytes())
        for u, n in zip(units, ops, strict=True)
        if n >= cut
    }
    assert 0 < len(kept) < len(units)
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    expected = compute_trace(g, **kw).digest()
    whole = _whole_entry(tmp_path, g)
    assert {p.name for p in _cache_files(tmp_path) if p != whole} == kept
    _forget_memory(tmp_path)
    _drop_whole(tmp_path, [g])
    assert compute_trace(g, **kw).digest() == expected
    stats = last_run_stats()
    assert stats.from_disk == len(kept) and stats.recorded == stats.unique - len(kept)
