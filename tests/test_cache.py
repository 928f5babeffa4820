"""Tests of the on-disk and in-memory trace cache (``phasetrace.cache``)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import phasetrace.cache as cache_mod
from phasetrace.cache import (
    CacheStats,
    DiskCache,
    MemoryCache,
    TraceCache,
    decode_entry,
    default_cache_dir,
    encode_entry,
)
from phasetrace.errors import CacheWarning, TraceFormatError

pytestmark = pytest.mark.timeout(60)

DTYPES = ["?", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f8"]
SHAPES = [(), (0,), (1,), (7,), (3, 4), (0, 3), (2, 0)]


def key_of(i: object) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def sample(i: int = 0) -> dict[str, np.ndarray]:
    return {
        "coef": np.linspace(0.0, 1.0, 10 + i),
        "index": np.arange(6, dtype=np.int32).reshape(2, 3) + i,
        "mask": np.array([True, False, True]),
        "n": np.uint64(2**63 + i),
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same names in the same order and the same values bit for bit, as little-endian."""
    assert list(got) == list(want)
    for name, value in want.items():
        value = np.asarray(value)
        expected = value.astype(value.dtype.newbyteorder("<"))
        assert got[name].dtype.str == expected.dtype.str, name
        assert got[name].shape == expected.shape, name
        assert got[name].tobytes() == expected.tobytes(), name


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(".tmp-*")]


def rewrite_header(data: bytes, mutate) -> bytes:
    """Return ``data`` with its JSON header changed by ``mutate`` and all digests made valid.

    Written from the module docstring's format description, not from the writer's code.
    """
    hlen = struct.unpack_from("<I", data, 12)[0]
    header = json.loads(data[48 : 48 + hlen])
    payload = data[48 + hlen :]
    mutate(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-(48 + len(raw)) % 64)
    prefix = data[:8] + struct.pack("<II", 1, len(raw)) + hashlib.sha256(raw).digest()
    return prefix + raw + payload


def read_documented_format(data: bytes) -> dict[str, np.ndarray]:
    """An independent reader that follows the module docstring, to check that it is precise."""
    assert data[:8] == b"PTCACHE\x00"
    version, hlen = struct.unpack("<II", data[8:16])
    assert version == 1
    header = data[48 : 48 + hlen]
    assert hashlib.sha256(header).digest() == data[16:48]
    assert (48 + hlen) % 64 == 0
    meta = json.loads(header.decode("utf-8"))
    payload = data[48 + hlen :]
    assert len(payload) == meta["payload_nbytes"]
    assert hashlib.sha256(payload).hexdigest() == meta["payload_sha256"]
    out = {}
    for item in meta["arrays"]:
        assert item["offset"] % 64 == 0
        raw = payload[item["offset"] : item["offset"] + item["nbytes"]]
        out[item["name"]] = np.frombuffer(raw, dtype=item["dtype"]).reshape(item["shape"])
    return out


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_each_dtype_and_shape(disk: DiskCache, dtype: str, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    value = rng.integers(0, 100, size=shape).astype(dtype)
    key = key_of((dtype, shape))
    disk.put(key, {"v": value})
    got = disk.get(key)
    assert got is not None
    assert_same(got, {"v": value})


def test_extreme_values_round_trip_bit_for_bit(disk: DiskCache) -> None:
    arrays = {
        "f": np.array([np.nan, -0.0, np.inf, -np.inf, 5e-324, np.finfo(float).max]),
        "i": np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max]),
        "u": np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64),
        "scalar": np.float64(-1.5),
    }
    disk.put(key_of("extreme"), arrays)
    assert_same(disk.get(key_of("extreme")), arrays)


names = st.text(min_size=1, max_size=8)
array_strategy = hnp.arrays(
    dtype=st.sampled_from(DTYPES).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5),
)


@settings(max_examples=60, deadline=None)
@given(arrays=st.dictionaries(names, array_strategy, min_size=0, max_size=4))
def test_round_trip_random_arrays(arrays: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as d:
        cache = DiskCache(d)
        cache.put(key_of("h"), arrays)
        got = cache.get(key_of("h"))
        assert got is not None
        assert_same(got, arrays)
        assert_same(read_documented_format(cache.path_for(key_of("h")).read_bytes()), arrays)


def test_big_endian_input_comes_back_little_endian(disk: DiskCache) -> None:
    arrays = {"f": np.arange(5, dtype=">f8"), "i": np.arange(4, dtype=">i4").reshape(2, 2)}
    disk.put(key_of("be"), arrays)
    got = disk.get(key_of("be"))
    assert got["f"].dtype.str == "<f8" and got["i"].dtype.str == "<i4"
    np.testing.assert_array_equal(got["f"], arrays["f"])
    np.testing.assert_array_equal(got["i"], arrays["i"])


def test_non_contiguous_input_round_trips(disk: DiskCache) -> None:
    base = np.arange(24, dtype=np.int64).reshape(4, 6)
    arrays = {"t": base.T, "s": base[::2, ::3]}
    disk.put(key_of("nc"), arrays)
    got = disk.get(key_of("nc"))
    np.testing.assert_array_equal(got["t"], base.T)
    np.testing.assert_array_equal(got["s"], base[::2, ::3])


def test_returned_arrays_are_read_only_for_good(disk: DiskCache) -> None:
    disk.put(key_of(1), sample())
    got = disk.get(key_of(1))
    for arr in got.values():
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        with pytest.raises(ValueError):
            arr[...] = 0


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(3, dtype=np.float32),
        np.zeros(3, dtype=np.complex128),
        np.array(["a", "b"]),
        np.array([object()], dtype=object),
        np.zeros((2, 2, 2)),
    ],
    ids=["float32", "complex", "str", "object", "3d"],
)
def test_put_refuses_unsupported_arrays(disk: DiskCache, value: np.ndarray) -> None:
    with pytest.raises(TraceFormatError):
        disk.put(key_of("bad"), {"ok": np.zeros(2), "bad": value})
    assert key_of("bad") not in disk
    assert not disk.directory.exists() or disk.info().entries == 0


@pytest.mark.parametrize("key", ["abc", "AB" * 32, "g" * 64, "../" + "a" * 61, 123])
def test_bad_keys_are_rejected(disk: DiskCache, key: object) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        disk.put(key, sample())
    with pytest.raises(ValueError, match="64 lowercase hex"):
        disk.get(key)
    assert key not in disk


def test_bad_array_names_are_rejected(disk: DiskCache) -> None:
    with pytest.raises(TraceFormatError, match="non-empty strings"):
        disk.put(key_of(0), {"": np.zeros(1)})
    with pytest.raises(TraceFormatError, match="non-empty strings"):
        disk.put(key_of(0), {3: np.zeros(1)})


def test_file_is_sharded_and_follows_documented_format(disk: DiskCache) -> None:
    key = key_of("layout")
    disk.put(key, sample())
    path = disk.directory / key[:2] / key
    assert path.is_file() and disk.path_for(key) == path
    assert_same(read_documented_format(path.read_bytes()), sample())


def test_encoding_is_deterministic() -> None:
    assert encode_entry(key_of(1), sample()) == encode_entry(key_of(1), sample())
    assert encode_entry(key_of(1), sample()) != encode_entry(key_of(2), sample())


def test_put_replaces_an_existing_entry(disk: DiskCache) -> None:
    disk.put(key_of(1), {"x": np.zeros(3)})
    disk.put(key_of(1), {"x": np.ones(3)})
    np.testing.assert_array_equal(disk.get(key_of(1))["x"], np.ones(3))
    assert disk.info().entries == 1


# --------------------------------------------------------------------------- integrity


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x10]) + data[index + 1 :]


def _header_end(data: bytes) -> int:
    return 48 + struct.unpack_from("<I", data, 12)[0]


OTHER_KEY = key_of("someone else")

FAULTS = {
    "zero-length": lambda d: b"",
    "truncated-in-prefix": lambda d: d[:20],
    "truncated-in-header": lambda d: d[: _header_end(d) - 10],
    "truncated-in-payload": lambda d: d[: len(d) - 70],
    "one-byte-short": lambda d: d[:-1],
    "trailing-bytes": lambda d: d + b"\x00",
    "flip-payload-byte": lambda d: _flip(d, _header_end(d) + 3),
    "flip-header-byte": lambda d: _flip(d, 60),
    "flip-header-digest": lambda d: _flip(d, 20),
    "garbage": lambda d: bytes(range(256)) * 4,
    "wrong-magic": lambda d: b"PTCACHF\x00" + d[8:],
    "pickle": lambda d: b"\x80\x04\x95" + d[3:],
    "wrong-version": lambda d: d[:8] + struct.pack("<I", 2) + d[12:],
    "huge-header-length": lambda d: d[:12] + struct.pack("<I", 2**32 - 1) + d[16:],
    "header-names-other-key": lambda d: rewrite_header(d, lambda h: h.update(key=OTHER_KEY)),
    "header-not-json": lambda d: (
        rewrite_header(d, lambda h: None)[:48] + b"{not json" * 7 + d[_header_end(d) :]
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_entry_warns_is_deleted_and_recomputed(
    disk: DiskCache, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of("victim")
    disk.put(key, sample())
    path = disk.path_for(key)
    path.write_bytes(FAULTS[fault](path.read_bytes()))
    with (
        caplog.at_level(logging.DEBUG, logger="phasetrace.cache"),
        pytest.warns(CacheWarning, match="corrupt cache entry") as caught,
    ):
        assert disk.get(key) is None
    # One report for users (the warning), the same text on the debug log; never twice at
    # WARNING level, where the CLI would print it next to the warning.
    assert len(caught) == 1
    assert [r.levelno for r in caplog.records if "corrupt" in r.getMessage()] == [logging.DEBUG]
    assert not path.exists()
    disk.put(key, sample(1))
    assert_same(disk.get(key), sample(1))


def test_entry_copied_under_another_key_is_rejected(disk: DiskCache) -> None:
    disk.put(OTHER_KEY, sample())
    victim = disk.path_for(key_of("victim"))
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(disk.path_for(OTHER_KEY).read_bytes())
    with pytest.warns(CacheWarning, match="holds key"):
        assert disk.get(key_of("victim")) is None
    assert not victim.exists() and disk.get(OTHER_KEY) is not None


def test_every_single_byte_change_is_detected() -> None:
    key = key_of("small")
    data = encode_entry(key, {"a": np.arange(3, dtype=np.int16), "b": np.float64(2.5)})
    for i in range(len(data)):
        with pytest.raises(TraceFormatError):
            decode_entry(_flip(data, i), key)


TABLE_FAULTS = {
    "dtype-f4": lambda h: h["arrays"][0].update(dtype="<f4"),
    "dtype-object": lambda h: h["arrays"][0].update(dtype="|O"),
    "big-endian": lambda h: h["arrays"][0].update(dtype=">f8"),
    "three-d": lambda h: h["arrays"][0].update(shape=[1, 1, 10]),
    "negative-dim": lambda h: h["arrays"][0].update(shape=[-10]),
    "bool-dim": lambda h: h["arrays"][0].update(shape=[True]),
    "nbytes-mismatch": lambda h: h["arrays"][0].update(nbytes=8),
    "past-payload": lambda h: h["arrays"][0].update(offset=10**6),
    "huge-shape": lambda h: h["arrays"][0].update(shape=[2**62, 2**62], nbytes=8 * 2**124),
    "overlap": lambda h: h["arrays"][1].update(offset=h["arrays"][0]["offset"] + 8),
    "duplicate-name": lambda h: h["arrays"][1].update(name=h["arrays"][0]["name"]),
    "not-a-list": lambda h: h.update(arrays={"a": 1}),
    "entry-not-object": lambda h: h["arrays"].append(7),
    "missing-key": lambda h: h.pop("key"),
    "payload-size": lambda h: h.update(payload_nbytes=h["payload_nbytes"] + 64),
    "header-is-list": lambda h: (h.clear(), h.update(x=1)),
}


@pytest.mark.parametrize("fault", list(TABLE_FAULTS))
def test_consistent_but_invalid_header_is_rejected(disk: DiskCache, fault: str) -> None:
    """A crafted file whose digests all match still cannot make the reader crash."""
    key = key_of("crafted")
    disk.put(key, {"coef": np.arange(10.0), "more": np.arange(10.0)})
    path = disk.path_for(key)
    path.write_bytes(rewrite_header(path.read_bytes(), TABLE_FAULTS[fault]))
    with pytest.warns(CacheWarning):
        assert disk.get(key) is None
    assert not path.exists()


def test_unreadable_entry_warns_once_and_misses(disk: DiskCache) -> None:
    # A directory where the file should be makes open() fail with an OSError
    # that is not "missing", and that works even as root.
    for name in ("a", "b"):
        disk.path_for(key_of(name)).mkdir(parents=True)
    with pytest.warns(CacheWarning, match="cannot read") as record:
        assert disk.get(key_of("a")) is None
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert disk.get(key_of("b")) is None


# --------------------------------------------------------------------------- LRU and size


def _set_mtimes(cache: DiskCache, keys: list[str], start: float) -> None:
    for i, key in enumerate(keys):
        t = start + i
        os.utime(cache.path_for(key), (t, t))


def test_get_refreshes_lru_position(disk: DiskCache) -> None:
    keys = [key_of(i) for i in range(3)]
    for key in keys:
        disk.put(key, sample())
    _set_mtimes(disk, keys, time.time() - 1000)  # keys[0] oldest
    size = disk.path_for(keys[0]).stat().st_size
    assert disk.get(keys[0]) is not None  # now the most recent
    assert disk.path_for(keys[0]).stat().st_mtime > time.time() - 100
    freed = disk.prune(2 * size)
    assert freed == size
    assert keys[0] in disk and keys[1] not in disk and keys[2] in disk


def test_prune_removes_least_recently_used_first_and_respects_bound(disk: DiskCache) -> None:
    keys = [key_of(i) for i in range(10)]
    for key in keys:
        disk.put(key, sample())
    _set_mtimes(disk, keys, time.time() - 1000)
    before = disk.info().total_bytes
    size = before // 10
    bound = 4 * size + size // 2
    freed = disk.prune(bound)
    info = disk.info()
    assert info.total_bytes <= bound
    assert freed == before - info.total_bytes
    assert [k in disk for k in keys] == [False] * 6 + [True] * 4
    assert disk.prune(bound) == 0


def test_prune_without_argument_uses_max_bytes(tmp_path: Path) -> None:
    big = DiskCache(tmp_path, max_bytes=10**9)
    for i in range(6):
        big.put(key_of(i), sample())
    size = big.path_for(key_of(0)).stat().st_size
    small = DiskCache(tmp_path, max_bytes=3 * size)
    assert small.prune() == 3 * size
    assert small.info().entries == 3


def test_prune_removes_only_stale_temp_files(disk: DiskCache) -> None:
    disk.put(key_of(0), sample())
    shard = disk.path_for(key_of(0)).parent
    stale, fresh = shard / ".tmp-stale", shard / ".tmp-fresh"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 50)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert disk.prune() == 100
    assert not stale.exists() and fresh.exists()
    assert key_of(0) in disk


def test_automatic_pruning_keeps_the_bound(tmp_path: Path) -> None:
    size = len(encode_entry(key_of(0), sample()))
    cache = DiskCache(tmp_path, max_bytes=5 * size + 10)
    for i in range(30):
        cache.put(key_of(i), sample())
        assert cache.info().total_bytes <= cache.max_bytes
        assert key_of(i) in cache  # the entry just written survives its own prune
    assert 3 <= cache.info().entries <= 5


def test_automatic_pruning_does_not_scan_on_every_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = []
    real_scan = DiskCache._scan

    def counting_scan(self):
        scans.append(1)
        return real_scan(self)

    monkeypatch.setattr(DiskCache, "_scan", counting_scan)
    cache = DiskCache(tmp_path)
    for i in range(300):
        cache.put(key_of(i), {"x": np.arange(4)})
    assert len(scans) <= 3, "the size is tracked incrementally, not by rescanning"
    assert cache.info().entries == 300


def test_entry_larger_than_the_bound_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)
    cache.put(key_of("small"), {"x": np.zeros(2)})
    cache.put(key_of("big"), {"x": np.zeros(1000)})
    assert key_of("big") not in cache and key_of("small") in cache


def test_clear_empties_the_store(disk: DiskCache) -> None:
    for i in range(5):
        disk.put(key_of(i), sample())
    disk.clear()
    assert disk.info().entries == 0 and disk.info().total_bytes == 0
    # empty shards removed too; the marker stays (the directory is still a cache)
    assert [p.name for p in disk.directory.iterdir()] == ["CACHEDIR.TAG"]
    disk.put(key_of(9), sample())
    assert disk.get(key_of(9)) is not None


def test_missing_directory_just_misses(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "does" / "not" / "exist")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(key_of(0)) is None
        assert key_of(0) not in cache
        info = cache.info()
        assert cache.prune() == 0
    assert (info.entries, info.total_bytes) == (0, 0)
    assert not cache.directory.exists()


# --------------------------------------------------------------------------- unusable dirs


def _writes_despite_chmod(directory: Path) -> bool:
    try:
        (directory / "probe").write_bytes(b"")
    except PermissionError:
        return False
    (directory / "probe").unlink()
    return True


def test_read_only_directory_chmod(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    cache = DiskCache(directory)
    cache.put(key_of("existing"), sample())
    for d in (directory, *directory.iterdir()):
        d.chmod(0o555)
    try:
        if _writes_despite_chmod(directory):
            pytest.skip(
                "running with root privileges: chmod 0o555 does not stop writes here; "
                "test_write_failure_disables_writing_once covers the same path"
            )
        fresh = DiskCache(directory)
        with pytest.warns(CacheWarning, match="cannot be written") as record:
            fresh.put(key_of(0), sample())
        assert len(record) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fresh.put(key_of(1), sample())
        assert fresh.disabled and fresh.info().disabled
        assert_same(fresh.get(key_of("existing")), sample())  # reads still work
    finally:
        for d in (directory, *directory.iterdir()):
            d.chmod(0o755)


def _raise(exc: OSError):
    def fail(*args, **kwargs):
        raise exc

    return fail


WRITE_FAILURES = {
    "read-only-create": ("open", PermissionError(errno.EACCES, "Permission denied")),
    "erofs-create": ("open", OSError(errno.EROFS, "Read-only file system")),
    "enospc-write": ("fdopen", OSError(errno.ENOSPC, "No space left on device")),
    "edquot-write": ("fdopen", OSError(getattr(errno, "EDQUOT", 122), "Disk quota exceeded")),
    "eio-replace": ("replace", OSError(errno.EIO, "Input/output error")),
}


@pytest.mark.parametrize("failure", list(WRITE_FAILURES))
def test_write_failure_disables_writing_once(
    disk: DiskCache, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    disk.put(key_of("existing"), sample())
    where, exc = WRITE_FAILURES[failure]
    monkeypatch.setattr(cache_mod.os, where, _raise(exc))
    with pytest.warns(CacheWarning, match="cannot be written") as record:
        disk.put(key_of(0), sample())
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later failures are silent
        for i in range(1, 5):
            disk.put(key_of(i), sample())
    assert disk.disabled and disk.info().disabled
    assert os.strerror(exc.errno) in disk.disabled_reason or exc.strerror in disk.disabled_reason
    assert temp_files(disk.directory) == []  # a failed write leaves no temp file
    assert disk.info().entries == 1
    monkeypatch.undo()
    assert_same(disk.get(key_of("existing")), sample())  # reads still work
    disk.put(key_of(9), sample())
    assert key_of(9) not in disk  # this instance stays off


def test_disabled_state_is_per_instance(disk: DiskCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod.os, "fdopen", _raise(OSError(errno.ENOSPC, "full")))
    with pytest.warns(CacheWarning):
        disk.put(key_of(0), sample())
    other = DiskCache(disk.directory)
    with pytest.warns(CacheWarning):  # a second instance reports once too
        other.put(key_of(0), sample())
    monkeypatch.undo()
    third = DiskCache(disk.directory)
    third.put(key_of(0), sample())
    assert not third.disabled and key_of(0) in third


# --------------------------------------------------------------------------- processes

WRITER = textwrap.dedent(
    """
    import hashlib, pathlib, sys, time, warnings
    import numpy as np
    from phasetrace.cache import DiskCache

    warnings.simplefilter("error")  # a corrupt read or a failed write fails the run
    directory, me = pathlib.Path(sys.argv[1]), sys.argv[2]
    cache = DiskCache(directory / "cache")
    (directory / f"ready-{me}").touch()
    deadline = time.time() + 30
    while not (directory / "go").exists():
        assert time.time() < deadline, "never told to go"
        time.sleep(0.005)
    for _ in range(4):
        for i in range(50):
            key = hashlib.sha256(str(i).encode()).hexdigest()
            arrays = {"x": np.arange(i * 40, dtype=np.float64), "i": np.int64(i)}
            cache.put(key, arrays)
            got = cache.get(key)
            assert got is not None and got["i"] == i and got["x"].shape == (i * 40,)
    assert not cache.disabled, cache.disabled_reason
    print("ok")
    """
)


def test_two_processes_writing_the_same_keys(tmp_path: Path) -> None:
    src = str(Path(cache_mod.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        deadline = time.time() + 40
        while not all((tmp_path / f"ready-{n}").exists() for n in range(2)):
            assert all(p.poll() is None for p in procs), "a writer died during start-up"
            assert time.time() < deadline
            time.sleep(0.01)
        (tmp_path / "go").touch()  # both start writing at once
        results = [p.communicate(timeout=45) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    cache = DiskCache(tmp_path / "cache")
    for i in range(50):
        arrays = {"x": np.arange(i * 40, dtype=np.float64), "i": np.int64(i)}
        assert_same(cache.get(key_of(i)), arrays)
    assert cache.info().entries == 50
    assert temp_files(tmp_path / "cache") == []


# --------------------------------------------------------------------------- default dir


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("PHASETRACE_CACHE_DIR", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    return home


def test_default_dir_env_var_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", "~/custom")
    assert default_cache_dir() == clean_env / "custom"


def test_default_dir_xdg_next(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_cache_dir() == Path("/xdg/phasetrace")
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", "")  # empty counts as unset
    assert default_cache_dir() == Path("/xdg/phasetrace")


def test_default_dir_platform_fallback(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    platform_dir = cache_mod._platform_cache_dir
    assert platform_dir("linux") == clean_env / ".cache" / "phasetrace"
    assert platform_dir("darwin") == clean_env / "Library" / "Caches" / "phasetrace"
    assert platform_dir("win32") == clean_env / "AppData" / "Local" / "phasetrace" / "Cache"
    monkeypatch.setenv("LOCALAPPDATA", str(clean_env / "Local"))
    assert platform_dir("win32") == clean_env / "Local" / "phasetrace" / "Cache"
    assert default_cache_dir() == platform_dir(sys.platform)
    assert "~" not in str(default_cache_dir())


def test_trace_cache_uses_default_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", str(clean_env / "pt"))
    cache = TraceCache(memory_items=0)
    cache.put(key_of(0), sample())
    assert (clean_env / "pt" / key_of(0)[:2] / key_of(0)).is_file()


# --------------------------------------------------------------------------- memory


def test_memory_cache_lru_eviction_and_refresh() -> None:
    mem = MemoryCache(max_items=2)
    mem.put("a", {"x": np.zeros(1)})
    mem.put("b", {"x": np.ones(1)})
    assert mem.get("a") is not None  # "b" is now least recently used
    mem.put("c", {"x": np.ones(2)})
    assert "a" in mem and "b" not in mem and "c" in mem and len(mem) == 2
    mem.clear()
    assert len(mem) == 0 and mem.get("a") is None


def test_memory_cache_zero_items_stores_nothing() -> None:
    mem = MemoryCache(max_items=0)
    mem.put("a", sample())
    assert mem.get("a") is None and len(mem) == 0
    with pytest.raises(ValueError):
        MemoryCache(max_items=-1)


def test_memory_cache_is_isolated_from_caller_changes() -> None:
    mem = MemoryCache()
    original = {"x": np.arange(3.0)}
    mem.put("a", original)
    original["x"][0] = 99.0  # the caller's array, not the cached copy
    original["y"] = np.zeros(1)
    got = mem.get("a")
    assert got["x"][0] == 0.0 and list(got) == ["x"]
    got.pop("x")  # the returned dict is the caller's own
    assert list(mem.get("a")) == ["x"]
    with pytest.raises(ValueError):
        mem.get("a")["x"][0] = 5.0


def test_memory_cache_is_thread_safe() -> None:
    mem = MemoryCache(max_items=8)
    errors: list[BaseException] = []
    value = {"x": np.arange(2)}

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                key = str(rng.integers(0, 32))
                if rng.random() < 0.5:
                    mem._put_frozen(key, value)
                else:
                    got = mem.get(key)
                    assert got is None or got["x"].shape == (2,)
                assert len(mem) <= 8
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(mem) <= 8


# --------------------------------------------------------------------------- trace cache


def test_trace_cache_sources_and_stats(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path, memory_items=4)
    key = key_of(0)
    assert cache.get(key) is None
    cache.put(key, sample())
    arrays, source = cache.get(key)
    assert source == "memory"
    assert_same(arrays, sample())
    fresh = TraceCache(tmp_path, memory_items=4)  # same disk, empty memory
    assert fresh.get(key)[1] == "disk"
    assert fresh.get(key)[1] == "memory"  # the disk hit was promoted
    assert cache.stats == CacheStats(memory_hits=1, misses=1, writes=1)
    assert fresh.stats == CacheStats(memory_hits=1, disk_hits=1)
    assert fresh.stats.hits == 2


def test_trace_cache_stats_snapshot_and_reset(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path)
    cache.put(key_of(0), sample())
    cache.get(key_of(0))
    snap = cache.stats.snapshot()
    cache.get(key_of(1))
    assert snap.misses == 0 and cache.stats.misses == 1  # the snapshot did not move
    cache.stats.reset()
    assert cache.stats == CacheStats()


def test_trace_cache_counts_corrupt_entries(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path, memory_items=0)
    cache.put(key_of(0), sample())
    cache.disk.path_for(key_of(0)).write_bytes(b"garbage")
    with pytest.warns(CacheWarning):
        assert cache.get(key_of(0)) is None
    assert (cache.stats.corrupt, cache.stats.misses) == (1, 1)


def test_trace_cache_disabled_keeps_memory_only(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path / "c", enabled=False)
    cache.put(key_of(0), sample())
    assert cache.get(key_of(0))[1] == "memory"
    assert cache.disk is None and cache.info() is None
    assert not (tmp_path / "c").exists()


def test_trace_cache_without_memory_reads_disk(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path, memory_items=0)
    cache.put(key_of(0), sample())
    assert cache.memory is None
    assert cache.get(key_of(0))[1] == "disk"
    assert cache.get(key_of(0))[1] == "disk"
    assert key_of(0) in cache and cache.info().entries == 1


def test_trace_cache_fully_off_never_hits(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path, enabled=False, memory_items=0)
    cache.put(key_of(0), sample())
    assert cache.get(key_of(0)) is None
    assert cache.stats.misses == 1 and list(tmp_path.iterdir()) == []


def test_trace_cache_put_validates_before_storing(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path)
    with pytest.raises(TraceFormatError):
        cache.put(key_of(0), {"x": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(ValueError):
        cache.put("nothex", sample())
    assert key_of(0) not in cache and cache.stats.writes == 0


def test_trace_cache_clear(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path)
    cache.put(key_of(0), sample())
    cache.clear()
    assert cache.get(key_of(0)) is None and cache.info().entries == 0
