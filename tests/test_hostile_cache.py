"""Hostile and careless cache contents (issue 12): nothing trusted that was not checked,
nothing deleted outside the cache, caching never switched off by one odd file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import phasetrace as pt
from phasetrace import pipeline
from phasetrace.cache import DiskCache, decode_entry, encode_entry
from phasetrace.cli import main
from phasetrace.errors import CacheWarning, TraceFormatError
from phasetrace.ops import ADD, MUL
from phasetrace.pipeline import compute_trace, get_cache, last_run_stats
from phasetrace.settings import resolve
from phasetrace.verify import verify_cache

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _every_unit_cached(monkeypatch):
    """These tests exercise unit entries on small graphs, whose units are below the size
    that earns an entry of its own (pipeline.UNIT_CACHE_MIN_OPS): keep every unit."""
    monkeypatch.setattr(pipeline, "UNIT_CACHE_MIN_OPS", 0)


def _cache(cache_dir):
    return get_cache(resolve(cache_dir=str(cache_dir)))


def _forget_memory(cache_dir):
    _cache(cache_dir).memory.clear()
    pipeline._traces.clear()


def _unit_entries(cache_dir: Path, graph) -> list[Path]:
    whole = _cache(cache_dir).disk.path_for(pipeline._graph_key(graph))
    whole.unlink(missing_ok=True)  # the next call goes through the units
    return sorted(
        p
        for p in cache_dir.rglob("*")
        if p.is_file() and p.parent != cache_dir and not p.name.startswith(".")
    )


def _rewrite(path: Path, change) -> None:
    """Rewrite an entry with its arrays changed and every checksum valid."""
    arrays = {k: np.array(v) for k, v in decode_entry(path.read_bytes(), path.name).items()}
    change(arrays)
    path.write_bytes(encode_entry(path.name, arrays))


def _record_units(tmp_path, graph):
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    compute_trace(graph, **kw)
    _forget_memory(tmp_path)
    return kw


def _swap_units(files):
    """Two entries exchange arrays (inputs included): each is another unit's."""
    a, b = files[-1], files[-2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(encode_entry(a.name, decode_entry(db, b.name)))
    b.write_bytes(encode_entry(b.name, decode_entry(da, a.name)))


def _operands_out_of_range(arrays):
    arrays["a"] = arrays["a"] + 10_000


CHANGES = {
    "operands out of range": lambda files: [_rewrite(f, _operands_out_of_range) for f in files],
    "another unit's arrays": _swap_units,
    "opcode out of range": lambda files: [
        _rewrite(f, lambda a: a.__setitem__("code", np.full_like(a["code"], 9))) for f in files
    ],
    "row pointing backwards": lambda files: [
        _rewrite(f, lambda a: a.__setitem__("row_dst", np.zeros_like(a["row_dst"])))
        for f in files
        if decode_entry(f.read_bytes(), f.name)["row_dst"].size
    ],
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_well_checksummed_but_malformed_unit_entries_are_dropped(tmp_path, change):
    g = pt.models.two_island(8)
    expected = pt.record_trace(g)
    kw = _record_units(tmp_path, g)
    files = _unit_entries(tmp_path, g)
    CHANGES[change](files)
    with pytest.warns(CacheWarning, match="malformed trace"):
        trace = compute_trace(g, **kw)
    assert trace.digest() == expected.digest()
    assert last_run_stats().recorded >= 1
    _forget_memory(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bad entries were replaced
        assert compute_trace(g, **kw).digest() == expected.digest()


def test_malformed_whole_trace_entry_is_dropped(tmp_path):
    g = pt.models.two_island(8)
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    expected = compute_trace(g, **kw).digest()
    _forget_memory(tmp_path)
    whole = _cache(tmp_path).disk.path_for(pipeline._graph_key(g))
    _rewrite(whole, _operands_out_of_range)
    with pytest.warns(CacheWarning, match="malformed trace"):
        assert compute_trace(g, **kw).digest() == expected
    assert last_run_stats().traces_from_cache == 0


def test_whole_trace_of_another_graph_under_a_key_is_dropped(tmp_path):
    g, other = pt.models.two_island(8), pt.models.two_island(9)
    kw = dict(strategy="sequential", cache_dir=str(tmp_path), hierarchical=True)
    expected = compute_trace(g, **kw).digest()
    compute_trace(other, **kw)
    _forget_memory(tmp_path)
    disk = _cache(tmp_path).disk
    mine = disk.path_for(pipeline._graph_key(g))
    theirs = disk.path_for(pipeline._graph_key(other))
    mine.write_bytes(encode_entry(mine.name, decode_entry(theirs.read_bytes(), theirs.name)))
    with pytest.warns(CacheWarning, match="differ"):
        assert compute_trace(g, **kw).digest() == expected


def test_changed_program_is_found_by_verify_and_deleted(tmp_path):
    """MUL → ADD keeps an entry well formed; only re-recording can tell."""
    g = pt.models.two_island(8)
    expected = pt.record_trace(g)
    kw = _record_units(tmp_path, g)
    files = _unit_entries(tmp_path, g)

    def mul_to_add(arrays):
        arrays["code"] = np.where(arrays["code"] == MUL, ADD, arrays["code"]).astype(np.int8)

    changed = [f for f in files if (decode_entry(f.read_bytes(), f.name)["code"] == MUL).any()]
    assert changed
    for f in changed:
        _rewrite(f, mul_to_add)
    report = verify_cache(tmp_path, sample=None)
    assert sorted(p for p, _ in report.bad) == sorted(changed)
    assert report.verified == len(files) - len(changed) and report.unverifiable == 0
    assert not any(f.exists() for f in changed)
    assert compute_trace(g, **kw).moments([1.0, 0.5]) == pytest.approx(
        expected.moments([1.0, 0.5]), rel=1e-14
    )


def test_cache_verify_cli_exit_status(tmp_path, capsys):
    g = pt.models.two_island(6)
    _record_units(tmp_path, g)
    assert main(["cache", "verify", "--recompute", "0", "--cache-dir", str(tmp_path)]) == 0
    assert "0 bad" in capsys.readouterr().out
    files = _unit_entries(tmp_path, g)
    victim = next(f for f in files if decode_entry(f.read_bytes(), f.name)["consts"].size)
    _rewrite(victim, lambda a: a.__setitem__("consts", a["consts"] * 2 + 1))
    assert main(["cache", "verify", "--recompute", "0", "--cache-dir", str(tmp_path)]) == 1
    assert f"bad: {victim}" in capsys.readouterr().out


def test_a_directory_where_an_entry_goes_does_not_switch_caching_off(tmp_path):
    disk = DiskCache(tmp_path)
    blocked, other = "ab" * 32, "cd" * 32
    disk.put(other, {"x": np.arange(3)})
    disk.path_for(blocked).mkdir(parents=True)
    with pytest.warns(CacheWarning, match="in the way"):
        disk.put(blocked, {"x": np.arange(3)})
    disk.put("ef" * 32, {"x": np.arange(3)})
    assert not disk.disabled and other in disk and "ef" * 32 in disk
    with pytest.warns(CacheWarning, match="directory"):
        assert disk.get(blocked) is None
    # clear removes the entries, and names the directory, which phasetrace did not write
    assert [path for path, _ in disk.clear()] == [disk.path_for(blocked)]
    assert disk.path_for(blocked).is_dir() and disk.info().entries == 0


def test_clear_and_prune_never_follow_links_out_of_the_cache(tmp_path):
    cache_dir, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    key = "ef" * 32
    victim = outside / key  # a key-named file outside the cache
    victim.write_bytes(b"precious")
    target = outside / "target"
    target.write_bytes(b"also precious")
    disk = DiskCache(cache_dir)
    disk.put("01" * 32, {"x": np.arange(3)})
    os.symlink(outside, cache_dir / "ef")  # a shard that is a link
    linked_entry = disk.path_for("01" * 32).parent / ("01" + "2" * 62)
    os.symlink(target, linked_entry)  # an entry that is a link
    assert disk.info().entries == 1
    with pytest.warns(CacheWarning, match="symbolic link"):
        assert disk.get(linked_entry.name) is None
    disk.prune(0)
    assert victim.read_bytes() == b"precious" and target.read_bytes() == b"also precious"
    left = disk.clear()  # the links are not phasetrace's: left alone, and named
    assert sorted(path for path, _ in left) == sorted([cache_dir / "ef", linked_entry])
    assert all("not written by phasetrace" in why for _, why in left)
    assert victim.read_bytes() == b"precious" and target.read_bytes() == b"also precious"
    assert (cache_dir / "ef").is_symlink() and linked_entry.is_symlink()
    assert disk.info().entries == 0


def test_clear_that_cannot_remove_entries_exits_non_zero(tmp_path, monkeypatch, capsys):
    disk = DiskCache(tmp_path)
    for i in range(3):
        disk.put(f"{i:02x}" * 32, {"x": np.arange(3)})

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "could not remove" in err and "Read-only file system" in err


def test_cache_warning_is_reported_once(tmp_path):
    disk = DiskCache(tmp_path)
    key = "ab" * 32
    disk.put(key, {"x": np.arange(3)})
    disk.path_for(key).write_bytes(b"junk")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert disk.get(key) is None
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1


def test_saved_trace_with_valid_digest_but_bad_operands_is_refused(tmp_path):
    trace = pt.record_trace(pt.models.two_island(5))
    arrays = {k: np.array(v) for k, v in trace.arrays.items()}
    arrays["row_slot"] = arrays["row_slot"] + 10**6
    with pytest.raises(TraceFormatError, match="row slot"):
        pt.Trace(arrays)


# -- only what phasetrace wrote is removed (issue 19) -----------------------------------------


def _foreign_directory(root: Path) -> dict[Path, bytes]:
    """A directory of someone's files, some named like shards and entries."""
    files = {
        root / "01": b"one",
        root / "12": b"twelve",
        root / "ab": b"a file named like a shard",
        root / "notes.txt": b"mine",
        root / "cd" / ("cd" * 32): b"named like an entry, in a directory named like a shard",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("action", [["clear"], ["prune", "--max-size", "0"]])
def test_cache_commands_refuse_a_directory_that_is_not_a_cache(tmp_path, capsys, action):
    files = _foreign_directory(tmp_path)
    assert main(["cache", *action, "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "CACHEDIR.TAG" in err and "nothing was removed" in err
    assert {p: p.read_bytes() for p in files} == files
    assert DiskCache(tmp_path).clear() == [
        (tmp_path, DiskCache(tmp_path).not_a_cache() + "; nothing was removed")
    ]
    assert {p: p.read_bytes() for p in files} == files


def test_the_cache_does_not_write_into_a_directory_that_is_not_one(tmp_path):
    files = _foreign_directory(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    disk = DiskCache(tmp_path)
    with pytest.warns(CacheWarning, match="CACHEDIR.TAG"):
        disk.put("ef" * 32, {"x": np.arange(3)})
    assert disk.disabled and sorted(tmp_path.rglob("*")) == before
    assert {p: p.read_bytes() for p in files} == files


def test_clear_in_a_cache_leaves_and_names_what_phasetrace_did_not_write(tmp_path, capsys):
    disk = DiskCache(tmp_path)
    keys = [f"{i:02x}" * 32 for i in range(3)]
    for key in keys:
        disk.put(key, {"x": np.arange(3)})
    assert (tmp_path / "CACHEDIR.TAG").is_file()
    strangers = [tmp_path / "readme.txt", disk.path_for(keys[0]).parent / "notes"]
    for p in strangers:
        p.write_text("not a cache entry")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "removed 3 entries" in out
    assert all(str(p) in err for p in strangers) and "not written by phasetrace" in err
    assert all(p.read_text() == "not a cache entry" for p in strangers)
    assert not any(key in disk for key in keys)


def test_a_cache_written_before_markers_is_still_a_cache(tmp_path, capsys):
    disk = DiskCache(tmp_path)
    disk.put("ab" * 32, {"x": np.arange(3)})
    (tmp_path / "CACHEDIR.TAG").unlink()  # as an older phasetrace left it
    assert DiskCache(tmp_path).not_a_cache() is None
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out


def test_prune_that_cannot_remove_entries_exits_non_zero(tmp_path, monkeypatch, capsys):
    disk = DiskCache(tmp_path)
    for i in range(3):
        disk.put(f"{i:02x}" * 32, {"x": np.arange(3)})

    def refuse(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "removed 0 entries" in out
    assert "could not remove" in err and "Read-only file system" in err


def test_a_marker_another_process_is_writing_does_not_make_the_directory_foreign(tmp_path):
    """Two processes start one cache at once: one sees the other's marker still under its
    temporary name and must not take the directory for someone else's."""
    from phasetrace.cache import MARKER_NAME

    (tmp_path / f".tmp-{MARKER_NAME}.1a2b3c").write_bytes(b"Signature: 8a477f597d28d172")
    assert DiskCache(tmp_path).not_a_cache() is None
    (tmp_path / "notes.txt").write_text("mine")
    assert DiskCache(tmp_path).not_a_cache() is not None
