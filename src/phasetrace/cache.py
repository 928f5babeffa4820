"""Content-addressed trace cache: an in-process LRU in front of an on-disk store.

A cache entry is a mapping ``{name: numpy array}`` (the recorded trace of one work
unit) stored under a *key*: 64 lowercase hexadecimal characters, normally a
sha256 digest of the unit's canonical bytes. The same key always names the same
content, so two processes writing one key write identical bytes and either may win.

Layers
------
:class:`MemoryCache`
    Thread-safe in-process LRU of frozen (read-only) arrays.
:class:`DiskCache`
    Directory store: atomic writes, verified reads, LRU pruning by file mtime.
:class:`TraceCache`
    The two together, with hit/miss counters; what the pipeline uses.

Supported arrays
----------------
0-d, 1-d or 2-d arrays of dtype bool, int8/16/32/64, uint8/16/32/64 or float64.
Anything else (float32, complex, object, strings, 3-d) is refused by ``put`` with
:class:`~phasetrace.errors.TraceFormatError`. Values come back bit for bit, in
little-endian C order, as read-only arrays: their data lives in an immutable
``bytes`` object, so ``flags.writeable`` cannot even be switched back on and a
caller can never corrupt the memory cache.

Directory layout
----------------
``<directory>/<key[:2]>/<key>``: one file per entry, sharded by the first two hex
characters of the key. Files named ``.tmp-*`` inside a shard are writes in
progress (or leftovers of a crashed writer; :meth:`DiskCache.prune` removes those
older than one hour). ``<directory>/CACHEDIR.TAG`` marks the directory as a
phasetrace cache (written before the first entry; a Cache Directory Tagging
Specification tag, so backup tools skip the directory): phasetrace writes into,
prunes and clears only a directory so marked (or, from before markers, one that
holds only shard directories with entries), and removes only the files above.
Anything else in the directory is left alone.

File format (version 1)
-----------------------
All integers little-endian. Offsets in bytes.

=======  ======  ==============================================================
offset   size    content
=======  ======  ==============================================================
0        8       magic ``b"PTCACHE\\x00"`` (ASCII ``PTCACHE`` then one NUL byte)
8        4       format version, uint32, currently 1
12       4       ``H``: header length in bytes, uint32
16       32      sha256 digest (raw 32 bytes) of the ``H`` header bytes
48       H       header: UTF-8 JSON object, right-padded with ASCII spaces so that
                 ``48 + H`` is a multiple of 64 (spaces are JSON whitespace)
48 + H   P       payload: the raw array bytes
=======  ======  ==============================================================

The file is exactly ``48 + H + P`` bytes long. The header object has these members:

``key``
    The entry's key (must equal the file name and the key asked for).
``payload_nbytes``
    ``P``, an integer.
``payload_sha256``
    Lowercase hex sha256 of the ``P`` payload bytes (padding included).
``arrays``
    A list, in the mapping's order, of objects with ``name`` (string, unique),
    ``dtype`` (numpy's ``dtype.str``: one of ``|b1 |i1 <i2 <i4 <i8 |u1 <u2 <u4
    <u8 <f8``), ``shape`` (list of 0 to 2 non-negative integers; ``[]`` is a
    scalar), ``offset`` (integer, relative to the payload's start) and ``nbytes``
    (integer, ``product(shape) * itemsize``).

Each array's bytes are ``payload[offset : offset + nbytes]`` in C (row-major)
order; ``bool`` is one byte, 0 or 1. The writer places arrays in list order at
offsets that are multiples of 64, filling the gaps with zero bytes; a reader must
only rely on ``offset`` and require the ranges to lie inside the payload without
overlapping. A reader rejects the whole file if any of these checks fails: magic,
version, length, header digest, JSON shape, key, payload length, payload digest,
array table. No code is ever executed on load: there is no pickle anywhere.

Failure behaviour
-----------------
A corrupt, truncated, foreign or other-version entry is reported as a
:class:`~phasetrace.errors.CacheWarning` (``warnings.warn`` and a WARNING on the
``"phasetrace.cache"`` logger), deleted, and treated as a miss so the caller
recomputes. A directory that cannot be written (read-only, full, no permission)
makes the :class:`DiskCache` stop writing after one warning; reads go on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import stat
import struct
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from phasetrace._files import write_atomic
from phasetrace.errors import CacheWarning, TraceFormatError

__all__ = [
    "CacheInfo",
    "CacheStats",
    "DiskCache",
    "MemoryCache",
    "TraceCache",
    "decode_entry",
    "default_cache_dir",
    "encode_entry",
]

_log = logging.getLogger("phasetrace.cache")

MAGIC = b"PTCACHE\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII32s")  # magic, version, header length, header sha256
_ALIGN = 64
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_TMP_PREFIX = ".tmp-"
#: The file that marks a directory as a phasetrace cache: a tag of the Cache Directory
#: Tagging Specification (https://bford.info/cachedir/, so backup tools skip the
#: directory) that names phasetrace. ``clear`` and ``prune`` act only where it is.
MARKER_NAME = "CACHEDIR.TAG"
_MARKER_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_MARKER_WORDS = b"phasetrace trace cache"
_MARKER_TEXT = (
    _MARKER_SIGNATURE + b"\n# This directory is a " + _MARKER_WORDS + b" (see "
    b"https://bford.info/cachedir/).\n# `phasetrace cache clear` and `phasetrace cache "
    b"prune` act only in directories marked by this file, and remove only what phasetrace "
    b"wrote.\n"
)
_STALE_TMP_SECONDS = 3600.0
# A full directory scan resyncs the running byte total (other processes write too).
_RESCAN_EVERY = 256
# Automatic pruning goes below the bound so that a full store is not rescanned on every put.
_LOW_WATER = 0.9
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f8")
)

Arrays = dict[str, np.ndarray]


# --------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """Return the directory the trace cache uses when none is given.

    Precedence: the ``PHASETRACE_CACHE_DIR`` environment variable; else
    ``$XDG_CACHE_HOME/phasetrace``; else the platform's user cache directory
    (Linux ``~/.cache/phasetrace``, macOS ``~/Library/Caches/phasetrace``,
    Windows ``%LOCALAPPDATA%\\phasetrace\\Cache``). Empty variables count as unset;
    ``~`` is expanded. Nothing is created.

    Returns
    -------
    pathlib.Path
        The cache directory.

    Examples
    --------
    >>> import os
    >>> os.environ["PHASETRACE_CACHE_DIR"] = os.path.join("~", "pt-cache")
    >>> default_cache_dir() == Path.home() / "pt-cache"
    True
    >>> del os.environ["PHASETRACE_CACHE_DIR"]
    """
    explicit = os.environ.get("PHASETRACE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "phasetrace"
    return _platform_cache_dir(sys.platform)


def _platform_cache_dir(platform: str) -> Path:
    """Return the conventional per-user cache directory on ``platform`` (``sys.platform``)."""
    if platform == "darwin":
        return Path("~/Library/Caches/phasetrace").expanduser()
    if platform.startswith("win"):
        local = os.environ.get("LOCALAPPDATA") or os.path.join("~", "AppData", "Local")
        return Path(local).expanduser() / "phasetrace" / "Cache"
    return Path("~/.cache/phasetrace").expanduser()


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"cache key must be 64 lowercase hex characters, got {key!r}")
    return key


# --------------------------------------------------------------------------- arrays


def _freeze_array(name: Any, value: Any) -> np.ndarray:
    """Return a read-only little-endian C-order copy whose data is an immutable bytes object."""
    if not isinstance(name, str) or not name:
        raise TraceFormatError(f"array names must be non-empty strings, got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TraceFormatError(f"array name {name!r} is not valid UTF-8 text") from exc
    arr = np.asarray(value)
    dtype = arr.dtype.newbyteorder("<")  # native, big- or little-endian in; little out
    if dtype.str not in _ALLOWED_DTYPES:
        raise TraceFormatError(
            f"array {name!r}: dtype {arr.dtype} cannot be cached "
            "(bool, int8..int64, uint8..uint64 and float64 can)"
        )
    if arr.ndim > 2:
        raise TraceFormatError(f"array {name!r}: {arr.ndim}-d arrays cannot be cached (0-d to 2-d)")
    raw = arr.astype(dtype, copy=False).tobytes()  # tobytes is C order, whatever the layout
    return _array_from_buffer(raw, dtype, arr.shape, 0)


def _array_from_buffer(
    buf: bytes, dtype: np.dtype, shape: tuple[int, ...], offset: int
) -> np.ndarray:
    """View ``buf`` as an array; the view is read-only because bytes are immutable."""
    flat = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape)


def _freeze(arrays: Mapping[str, Any]) -> Arrays:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of name to array, got {type(arrays).__name__}")
    return {name: _freeze_array(name, value) for name, value in arrays.items()}


# --------------------------------------------------------------------------- file format


def _padding(n: int) -> int:
    return -n % _ALIGN


def encode_entry(key: str, arrays: Mapping[str, Any]) -> bytes:
    """Serialize one entry in the file format of the module docstring.

    Parameters
    ----------
    key : str
        64 lowercase hex characters.
    arrays : mapping of str to array_like
        Supported dtypes and shapes only (see the module docstring).

    Returns
    -------
    bytes
        The complete file content.

    Raises
    ------
    ValueError
        If ``key`` is malformed.
    TraceFormatError
        If an array cannot be stored.

    Examples
    --------
    >>> import numpy as np
    >>> data = encode_entry("ab" * 32, {"x": np.arange(3.0)})
    >>> data[:8], len(data) % 64
    (b'PTCACHE\\x00', 0)
    >>> decode_entry(data, "ab" * 32)["x"]
    array([0., 1., 2.])
    """
    return b"".join(_encode_parts(key, arrays))


def _checked_array(name: Any, value: Any) -> np.ndarray:
    """``value`` as a little-endian C-order array of a storable dtype (a copy only where
    the byte order or layout needs one)."""
    if not isinstance(name, str) or not name:
        raise TraceFormatError(f"array names must be non-empty strings, got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TraceFormatError(f"array name {name!r} is not valid UTF-8 text") from exc
    arr = np.asarray(value)
    dtype = arr.dtype.newbyteorder("<")
    if dtype.str not in _ALLOWED_DTYPES:
        raise TraceFormatError(
            f"array {name!r}: dtype {arr.dtype} cannot be cached "
            "(bool, int8..int64, uint8..uint64 and float64 can)"
        )
    if arr.ndim > 2:
        raise TraceFormatError(f"array {name!r}: {arr.ndim}-d arrays cannot be cached (0-d to 2-d)")
    return arr.astype(dtype, order="C", copy=False)


def _encode_parts(key: str, arrays: Mapping[str, Any]) -> list:
    """The file content of :func:`encode_entry` as a list of byte buffers, without joining
    them: the arrays' own memory where it is already little-endian C order (a whole trace
    of hundreds of MB is hashed and written, not copied)."""
    _check_key(key)
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of name to array, got {type(arrays).__name__}")
    table, chunks, offset = [], [], 0
    digest = hashlib.sha256()
    for name, value in arrays.items():
        arr = _checked_array(name, value)
        raw = memoryview(arr.reshape(-1)).cast("B")
        table.append(
            {
                "name": name,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": raw.nbytes,
            }
        )
        pad = b"\x00" * _padding(raw.nbytes)
        chunks += [raw, pad]
        digest.update(raw)
        digest.update(pad)
        offset += raw.nbytes + len(pad)
    header_obj = {
        "key": key,
        "payload_nbytes": offset,
        "payload_sha256": digest.hexdigest(),
        "arrays": table,
    }
    header = json.dumps(header_obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header += b" " * _padding(_PREFIX.size + len(header))
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest())
    return [prefix + header, *chunks]


def _read_prefix(data: bytes) -> tuple[int, int]:
    """Check the fixed 48-byte prefix and header digest; return (header start, header length)."""
    if len(data) < _PREFIX.size:
        raise TraceFormatError(f"truncated: {len(data)} bytes, the fixed prefix alone is 48")
    magic, version, hlen, digest = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise TraceFormatError(f"not a phasetrace cache file (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise TraceFormatError(
            f"format version {version}, this reader understands {FORMAT_VERSION}"
        )
    start = _PREFIX.size
    if start + hlen > len(data):
        raise TraceFormatError(f"truncated: header of {hlen} bytes runs past the file's end")
    if hashlib.sha256(data[start : start + hlen]).digest() != digest:
        raise TraceFormatError("header checksum mismatch")
    return start, hlen


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise TraceFormatError(f"header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TraceFormatError("header is not a JSON object")
    expected = {"key": str, "payload_nbytes": int, "payload_sha256": str, "arrays": list}
    for field, kind in expected.items():
        value = header.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TraceFormatError(f"header field {field!r} missing or not a {kind.__name__}")
    return header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_table(table: list[Any], payload_nbytes: int) -> list[tuple[str, np.dtype, tuple, int]]:
    """Validate the array table; return (name, dtype, shape, offset) per array."""
    specs, seen, ranges = [], set(), []
    for item in table:
        if not isinstance(item, dict):
            raise TraceFormatError("array table entry is not an object")
        name, dtype, shape = item.get("name"), item.get("dtype"), item.get("shape")
        offset, nbytes = item.get("offset"), item.get("nbytes")
        if not isinstance(name, str) or not name or name in seen:
            raise TraceFormatError(f"array name {name!r} missing, empty or repeated")
        if dtype not in _ALLOWED_DTYPES:
            raise TraceFormatError(f"array {name!r}: unsupported dtype {dtype!r}")
        ok_shape = isinstance(shape, list) and len(shape) <= 2 and all(map(_is_count, shape))
        if not ok_shape or not _is_count(offset) or not _is_count(nbytes):
            raise TraceFormatError(f"array {name!r}: bad shape, offset or nbytes")
        dt = np.dtype(dtype)
        if nbytes != math.prod(shape) * dt.itemsize:  # Python ints: no overflow
            raise TraceFormatError(f"array {name!r}: nbytes {nbytes} does not match shape {shape}")
        if offset + nbytes > payload_nbytes:
            raise TraceFormatError(f"array {name!r}: bytes run past the payload's end")
        seen.add(name)
        ranges.append((offset, offset + nbytes))
        specs.append((name, dt, tuple(shape), offset))
    ranges.sort()
    if any(prev[1] > cur[0] for prev, cur in itertools.pairwise(ranges)):
        raise TraceFormatError("array byte ranges overlap")
    return specs


def decode_entry(data: bytes, key: str) -> Arrays:
    """Verify and deserialize one entry written by :func:`encode_entry`.

    Parameters
    ----------
    data : bytes
        The complete file content.
    key : str
        The key the caller asked for; the header must name the same key.

    Returns
    -------
    dict of str to numpy.ndarray
        Read-only arrays (views into ``data``), in the stored order.

    Raises
    ------
    TraceFormatError
        If any check fails (see the module docstring); nothing partial is returned.

    Examples
    --------
    >>> import numpy as np
    >>> data = encode_entry("0f" * 32, {"n": np.int64(7)})
    >>> decode_entry(data, "0f" * 32)
    {'n': array(7)}
    >>> decode_entry(data[:-1], "0f" * 32)
    Traceback (most recent call last):
    ...
    phasetrace.errors.TraceFormatError: payload is 63 bytes, the header says 64
    """
    start, hlen = _read_prefix(data)
    header = _parse_header(data[start : start + hlen])
    if header["key"] != key:
        raise TraceFormatError(f"entry holds key {header['key'][:16]}…, not {key[:16]}…")
    payload_start = start + hlen
    payload_nbytes = len(data) - payload_start
    if header["payload_nbytes"] != payload_nbytes:
        raise TraceFormatError(
            f"payload is {payload_nbytes} bytes, the header says {header['payload_nbytes']}"
        )
    if hashlib.sha256(memoryview(data)[payload_start:]).hexdigest() != header["payload_sha256"]:
        raise TraceFormatError("payload checksum mismatch")
    specs = _parse_table(header["arrays"], payload_nbytes)
    return {
        name: _array_from_buffer(data, dt, shape, payload_start + offset)
        for name, dt, shape, offset in specs
    }


def _warn(message: str) -> None:
    # One report, not two: the warning is what users see (and can filter); the log
    # record is for --debug runs.
    _log.debug("%s", message)
    warnings.warn(message, CacheWarning, stacklevel=4)


# --------------------------------------------------------------------------- memory


class MemoryCache:
    """Thread-safe in-process LRU of cache entries.

    Parameters
    ----------
    max_items : int, default 512
        Entries kept; the least recently used goes first. ``0`` stores nothing.

    Notes
    -----
    ``put`` stores read-only copies, so later changes to the caller's arrays do
    not reach the cache, and ``get`` returns a new dict of the same read-only
    arrays each time.

    Examples
    --------
    >>> import numpy as np
    >>> mem = MemoryCache(max_items=2)
    >>> mem.put("a", {"x": np.arange(3)})
    >>> mem.get("a")["x"].flags.writeable
    False
    >>> mem.get("missing") is None
    True
    """

    def __init__(self, max_items: int = 512) -> None:
        if not isinstance(max_items, int) or max_items < 0:
            raise ValueError(f"max_items must be a non-negative integer, got {max_items!r}")
        self.max_items = max_items
        self._items: OrderedDict[str, Arrays] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Arrays | None:
        """Return the entry under ``key`` (and mark it most recently used), or None."""
        with self._lock:
            arrays = self._items.get(key)
            if arrays is None:
                return None
            self._items.move_to_end(key)
        return dict(arrays)

    def put(self, key: str, arrays: Mapping[str, Any]) -> None:
        """Store a frozen copy of ``arrays`` under ``key``, evicting the oldest entries."""
        self._put_frozen(key, _freeze(arrays))

    def _put_frozen(self, key: str, frozen: Arrays) -> None:
        # Arrays already read-only over immutable bytes need no further copy.
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = frozen
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        """Drop the entry under ``key``, if any."""
        with self._lock:
            self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()


# --------------------------------------------------------------------------- disk


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of a :class:`DiskCache` directory.

    Attributes
    ----------
    directory : pathlib.Path
        The cache directory.
    entries : int
        Number of entry files.
    total_bytes : int
        Their total size in bytes (temp files not included).
    max_bytes : int
        The bound automatic pruning keeps.
    disabled : bool
        Whether writing was switched off after an error.
    disabled_reason : str or None
        That error, in words.

    Examples
    --------
    >>> CacheInfo(Path("/tmp/c"), 0, 0, 1024).entries
    0
    """

    directory: Path
    entries: int
    total_bytes: int
    max_bytes: int
    disabled: bool = False
    disabled_reason: str | None = None


@dataclass(frozen=True)
class _FileStat:
    path: Path
    size: int
    mtime: float


#: Errors of one entry's path (a directory or file in the way), not of the whole store.
_ENTRY_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY})


class DiskCache:
    """A content-addressed directory of verified, atomically written entries.

    Parameters
    ----------
    directory : str or os.PathLike
        Where entries live; created on the first ``put``, never by a read.
    max_bytes : int, default 2 GiB
        When a ``put`` takes the store past this size, least recently used
        entries are deleted until it is under 90 % of it. Other processes' writes
        are noticed at the next full scan (every 256 puts), so the bound can be
        overshot briefly when several processes share a directory.

    Attributes
    ----------
    disabled : bool
        True once a write failed (read-only directory, disk full, permissions).
        Later puts do nothing and warn no more; gets still read what is there.
    disabled_reason : str or None
        The error that disabled writing.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> cache = DiskCache(tempfile.mkdtemp())
    >>> key = "ab" * 32
    >>> cache.put(key, {"x": np.arange(4), "flag": np.bool_(True)})
    >>> key in cache
    True
    >>> cache.get(key)["x"]
    array([0, 1, 2, 3])
    >>> cache.info().entries
    1
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 2 * 1024**3) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.directory = Path(os.path.expanduser(directory))  # never raises, unlike Path's
        self.max_bytes = max_bytes
        self.disabled = False
        self.disabled_reason: str | None = None
        self._lock = threading.Lock()
        self._approx_bytes: int | None = None  # None: not scanned yet
        self._puts_since_scan = 0
        self._read_warned = False
        self._obstacle_warned = False
        self._claimed = False  # the marker is known to be there

    def __repr__(self) -> str:
        state = f", disabled={self.disabled_reason!r}" if self.disabled else ""
        return f"DiskCache({str(self.directory)!r}, max_bytes={self.max_bytes}{state})"

    def path_for(self, key: str) -> Path:
        """Return the file that holds (or would hold) ``key``.

        Examples
        --------
        >>> DiskCache("/c").path_for("ab" * 32).parent.name
        'ab'
        """
        return self.directory / _check_key(key)[:2] / key

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            return False
        return self.path_for(key).is_file()

    # ---- reading

    def get(self, key: str) -> Arrays | None:
        """Return the verified entry under ``key``, or None on a miss or a bad entry.

        A hit refreshes the file's mtime (its LRU position). A bad entry is
        reported as a :class:`~phasetrace.errors.CacheWarning` and deleted.
        """
        return self._read(key)[0]

    def _read(self, key: str) -> tuple[Arrays | None, bool]:
        """Return (arrays or None, whether a corrupt entry was found and dropped)."""
        path = self.path_for(key)
        try:
            data = _read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None, False
        except _NotAnEntry as exc:
            _warn(f"ignored {path}: {exc}; phasetrace did not write it and leaves it alone")
            return None, False
        except OSError as exc:
            self._warn_read_once(path, exc)
            return None, False
        try:
            arrays = decode_entry(data, key)
        except ValueError as exc:  # TraceFormatError, or anything else a bad file provokes
            if self.not_a_cache() is not None:  # not ours to delete
                _warn(f"ignored {path}: {exc}; it is not in a phasetrace cache directory")
                return None, False
            _warn(f"dropped corrupt cache entry {path}: {exc}")
            with contextlib.suppress(OSError):
                path.unlink()
            return None, True
        with contextlib.suppress(OSError):  # a read-only cache still serves hits
            os.utime(path)
        return arrays, False

    def _warn_read_once(self, path: Path, exc: OSError) -> None:
        with self._lock:
            if self._read_warned:
                return
            self._read_warned = True
        _warn(f"cannot read cache entry {path} ({exc}); treating unreadable entries as misses")

    # ---- writing

    def put(self, key: str, arrays: Mapping[str, Any]) -> None:
        """Store ``arrays`` under ``key`` atomically; replaces an existing entry.

        Raises
        ------
        ValueError
            If ``key`` is not 64 lowercase hex characters.
        TraceFormatError
            If an array has an unsupported dtype or more than two dimensions.

        Notes
        -----
        I/O errors never raise: the first one disables writing with a warning.
        An entry larger than ``max_bytes`` is not stored.
        """
        parts = _encode_parts(key, arrays)  # validates first, even when disabled
        size = sum(memoryview(p).nbytes for p in parts)
        if self.disabled or size > self.max_bytes:
            return
        path = self.path_for(key)
        try:
            if not self._claim():
                return
            self._write_atomic(path, parts)
        except OSError as exc:
            if exc.errno in _ENTRY_ERRNOS:  # something else sits where the entry goes
                self._skip_entry(path, exc)
            else:
                self._disable(exc)
            return
        self._account(size)

    def _claim(self) -> bool:
        """Mark the directory as a phasetrace cache before the first write (creating it),
        or turn writing off, with one warning, when it is not one: phasetrace does not
        write into a directory that holds other things."""
        if self._claimed:
            return True
        why = self.not_a_cache()
        if why is not None:
            with self._lock:
                if self.disabled:
                    return False
                self.disabled, self.disabled_reason = True, why
            _warn(
                f"trace cache at {self.directory} is off: {why}. Point PHASETRACE_CACHE_DIR "
                "(or cache_dir=) at a new or empty directory"
            )
            return False
        marker = self.directory / MARKER_NAME
        if not _is_marker(marker):
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, _MARKER_TEXT, durable=False)
        self._claimed = True
        return True

    def not_a_cache(self) -> str | None:
        """Why :attr:`directory` is not a phasetrace cache directory, or None when it is
        one, or is absent or empty.

        A cache directory holds the marker file :data:`MARKER_NAME` that phasetrace
        writes before its first entry (or, written before markers existed, only shard
        directories with phasetrace entries in them).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "notes.txt").write_text("mine")
        4
        >>> DiskCache(d).not_a_cache()
        '... has no CACHEDIR.TAG marker naming phasetrace, and it holds files phasetrace ...'
        """
        d = self.directory
        try:
            items = list(os.scandir(d))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return f"{d} is not a directory"
        except OSError as exc:
            return f"{d} cannot be listed ({exc.strerror or exc})"
        # another process's marker on its way in (written to a temporary file, renamed)
        items = [i for i in items if not i.name.startswith(_TMP_PREFIX + MARKER_NAME)]
        if not items or _is_marker(d / MARKER_NAME) or _is_unmarked_cache(items):
            return None
        return (
            f"{d} has no {MARKER_NAME} marker naming phasetrace, and it holds files "
            "phasetrace did not write"
        )

    def _write_atomic(self, path: Path, parts: list) -> None:
        # A concurrent clear() may remove the shard directory between mkdir and the
        # write; one retry covers that.
        for attempt in range(2):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # Not durable (no fsync): readers never see a partial file (os.replace is
                # atomic), and an entry torn by a power loss fails its checksum and is
                # recomputed. fsync per entry cost ~40 % of the cold hierarchical run on
                # two_island(200).
                write_atomic(
                    path,
                    lambda fh: [fh.write(part) for part in parts],  # the arrays' own memory
                    durable=False,
                    mode=0o600,
                    tmp_prefix=_TMP_PREFIX,
                )
                return
            except FileNotFoundError:
                if attempt or path.parent.is_dir():
                    raise
            except PermissionError:
                # Windows refuses to replace a file another process has open; the entry
                # is content-addressed, so the file already there is as good.
                if os.name == "nt" and path.is_file():
                    return
                raise

    def _skip_entry(self, path: Path, exc: OSError) -> None:
        with self._lock:
            warned, self._obstacle_warned = self._obstacle_warned, True
        if not warned:
            _warn(
                f"cannot store cache entry {path} ({exc.strerror}): something that is not a "
                "cache entry is in the way (phasetrace did not write it and leaves it alone)"
            )

    def _disable(self, exc: OSError) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            reason += " (disk full or over quota)"
        elif exc.errno == errno.EROFS:
            reason += " (read-only file system)"
        with self._lock:
            if self.disabled:
                return
            self.disabled, self.disabled_reason = True, reason
        _warn(f"trace cache at {self.directory} cannot be written, caching off: {reason}")

    def _account(self, nbytes: int) -> None:
        """Track the store's size cheaply; prune when it passes ``max_bytes``."""
        with self._lock:
            self._puts_since_scan += 1
            rescan = self._approx_bytes is None or self._puts_since_scan >= _RESCAN_EVERY
            if not rescan:
                self._approx_bytes += nbytes  # an overwrite counts twice: errs towards pruning
                total = self._approx_bytes
        if rescan:
            total = sum(f.size for f in self._scan()[0])
            with self._lock:
                self._approx_bytes, self._puts_since_scan = total, 0
        if total > self.max_bytes:
            self.prune(int(self.max_bytes * _LOW_WATER))

    # ---- maintenance

    def _scan(self) -> tuple[list[_FileStat], list[_FileStat]]:
        """List (entry files, temp files) with size and mtime; vanished files are skipped.

        Symbolic links are never followed: a shard that is a link is not entered, and an
        entry or temp file that is a link (or a directory) is listed by :meth:`_junk`, so
        nothing outside the cache directory is read, counted or deleted.
        """
        entries: list[_FileStat] = []
        temps: list[_FileStat] = []
        for item, is_entry in self._named_items():
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if not item.is_file(follow_symlinks=False):
                continue
            stat = _FileStat(Path(item.path), st.st_size, st.st_mtime)
            (entries if is_entry else temps).append(stat)
        return entries, temps

    def _named_items(self):
        """``(DirEntry, is_entry)`` for items named like entries or temp files, in real shard
        directories (not links to directories)."""
        try:
            shards = [
                d
                for d in os.scandir(self.directory)
                if _SHARD_RE.fullmatch(d.name) and d.is_dir(follow_symlinks=False)
            ]
        except OSError:
            return
        for shard in shards:
            try:
                items = list(os.scandir(shard.path))
            except OSError:
                continue
            for item in items:
                is_entry = bool(_KEY_RE.fullmatch(item.name)) and item.name[:2] == shard.name
                if is_entry or item.name.startswith(_TMP_PREFIX):
                    yield item, is_entry

    def _foreign(self) -> list[Path]:
        """What phasetrace did not write: everything but the marker, real shard
        directories, and regular files in them named like entries or temp files (a
        directory or symbolic link named like an entry or a shard, any other file)."""
        found: list[Path] = []
        try:
            top = list(os.scandir(self.directory))
        except OSError:
            return found
        for d in top:
            if d.name == MARKER_NAME and d.is_file(follow_symlinks=False):
                continue
            if not (_SHARD_RE.fullmatch(d.name) and d.is_dir(follow_symlinks=False)):
                found.append(Path(d.path))
                continue
            try:
                items = list(os.scandir(d.path))
            except OSError:
                continue
            for item in items:
                named = (
                    _KEY_RE.fullmatch(item.name) and item.name[:2] == d.name
                ) or item.name.startswith(_TMP_PREFIX)
                if not (named and item.is_file(follow_symlinks=False)):
                    found.append(Path(item.path))
        return found

    def keys(self) -> list[str]:
        """The keys of the entries on disk (a full scan), sorted."""
        return sorted(f.path.name for f in self._scan()[0])

    def info(self) -> CacheInfo:
        """Return a :class:`CacheInfo` from a full scan of the directory."""
        entries, _ = self._scan()
        return CacheInfo(
            directory=self.directory,
            entries=len(entries),
            total_bytes=sum(f.size for f in entries),
            max_bytes=self.max_bytes,
            disabled=self.disabled,
            disabled_reason=self.disabled_reason,
        )

    def prune(
        self, max_bytes: int | None = None, *, left: list[tuple[Path, str]] | None = None
    ) -> int:
        """Delete least recently used entries until the store fits in ``max_bytes``.

        Temp files older than an hour (left by crashed writers) are deleted too. Nothing
        is deleted in a directory that is not a phasetrace cache (:meth:`not_a_cache`).

        Parameters
        ----------
        max_bytes : int, optional
            The bound; defaults to the cache's ``max_bytes``.
        left : list, optional
            Receives ``(path, why)`` for each file that should have gone and could not
            (a read-only disk, no permission), or the directory when it is not a cache.

        Returns
        -------
        int
            Bytes freed.

        Examples
        --------
        >>> import numpy as np, tempfile
        >>> cache = DiskCache(tempfile.mkdtemp())
        >>> cache.put("cd" * 32, {"x": np.zeros(100)})
        >>> cache.prune(0) > 800, cache.info().entries
        (True, 0)
        """
        why = self.not_a_cache()
        if why is not None:
            if left is not None:
                left.append((self.directory, f"{why}; nothing was removed"))
            return 0
        bound = self.max_bytes if max_bytes is None else max_bytes
        entries, temps = self._scan()
        freed = 0
        cutoff = time.time() - _STALE_TMP_SECONDS
        for tmp in temps:
            if tmp.mtime < cutoff and _unlink(tmp.path, left):
                freed += tmp.size
        total = sum(f.size for f in entries)
        for entry in sorted(entries, key=lambda f: f.mtime):
            if total <= bound:
                break
            removed = _unlink(entry.path, left)
            if removed is not None:  # removed by someone else still counts as gone
                total -= entry.size
                freed += entry.size if removed else 0
        with self._lock:
            self._approx_bytes = total
        return freed

    def clear(self) -> list[tuple[Path, str]]:
        """Delete every entry, stale temp files and empty shard directories.

        Only what phasetrace wrote is removed, and only in a phasetrace cache directory
        (:meth:`not_a_cache`). Anything else found there (a directory or symbolic link
        named like an entry or a shard, any other file) is left alone and listed, and
        links are never followed. Temp files younger than an hour are left alone too:
        they may be another process's write in progress.

        Returns
        -------
        list of (Path, str)
            What is still there and why: files that could not be removed, and what
            phasetrace did not write (empty when the cache is clear).
        """
        why = self.not_a_cache()
        if why is not None:
            return [(self.directory, f"{why}; nothing was removed")]
        left = [(p, "not written by phasetrace, so left alone") for p in self._foreign()]
        self.prune(0, left=left)
        for entry in self._scan()[0]:  # written by another process meanwhile
            _unlink(entry.path, left)
        with contextlib.suppress(OSError):
            for shard in os.scandir(self.directory):
                if _SHARD_RE.fullmatch(shard.name) and shard.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(shard.path)  # fails, as meant, when not empty
        return left


def _is_marker(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) holding phasetrace's marker."""
    try:
        data = _read_regular_file(path, limit=4096)
    except (OSError, _NotAnEntry):
        return False
    return data.startswith(_MARKER_SIGNATURE) and _MARKER_WORDS in data


def _is_unmarked_cache(items: list[os.DirEntry]) -> bool:
    """Whether a directory without the marker is a cache written before markers existed:
    only shard directories, and an entry with phasetrace's magic among them."""
    shards = [d for d in items if _SHARD_RE.fullmatch(d.name) and d.is_dir(follow_symlinks=False)]
    if len(shards) != len(items):
        return False
    for shard in shards:
        with contextlib.suppress(OSError):
            for item in os.scandir(shard.path):
                if _KEY_RE.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError, _NotAnEntry):
                        if _read_regular_file(Path(item.path), limit=8) == MAGIC:
                            return True
    return False


class _NotAnEntry(Exception):
    pass


def _read_regular_file(path: Path, limit: int = -1) -> bytes:
    """The bytes of ``path`` (its first ``limit`` bytes) if it is a regular file, never
    following a symbolic link (a link to ``/dev/zero`` or to a file outside the cache is
    not read)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotAnEntry("a symbolic link, not a cache entry") from None
        if exc.errno == errno.EISDIR:
            raise _NotAnEntry("a directory, not a cache entry") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise _NotAnEntry("not a regular file")
        return fh.read(limit)


def _unlink(path: Path, left: list[tuple[Path, str]] | None = None) -> bool | None:
    """Delete ``path``: True if deleted, False if already gone, None if it cannot be
    (then ``(path, why)`` goes to ``left``)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        _log.debug("cannot delete %s: %s", path, exc)
        if left is not None:
            left.append((path, exc.strerror or str(exc)))
        return None
    return True


# --------------------------------------------------------------------------- both


@dataclass
class CacheStats:
    """Counters of a :class:`TraceCache`.

    Attributes
    ----------
    memory_hits, disk_hits, misses : int
        Outcomes of ``get``.
    writes : int
        Calls to ``put``.
    corrupt : int
        Bad disk entries found (and deleted) by ``get``; each also counts as a miss.

    Examples
    --------
    >>> stats = CacheStats(memory_hits=2, misses=1)
    >>> stats.hits, stats.snapshot() == stats
    (2, True)
    >>> stats.reset(); stats.memory_hits
    0
    """

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0

    @property
    def hits(self) -> int:
        """Memory plus disk hits."""
        return self.memory_hits + self.disk_hits

    def snapshot(self) -> CacheStats:
        """Return an independent copy."""
        return replace(self)

    def reset(self) -> None:
        """Set every counter to zero."""
        self.memory_hits = self.disk_hits = self.misses = self.writes = self.corrupt = 0


class TraceCache:
    """The trace cache the pipeline uses: a memory LRU in front of a :class:`DiskCache`.

    Parameters
    ----------
    directory : str or os.PathLike, optional
        Disk cache directory; :func:`default_cache_dir` when None.
    enabled : bool, default True
        False: no disk at all (nothing read or written there); the memory
        layer stays on unless ``memory_items=0``.
    max_bytes : int, default 2 GiB
        Size bound of the disk store.
    memory_items : int, default 512
        Entries kept in memory; 0 switches the memory layer off.

    Attributes
    ----------
    stats : CacheStats
        Hit, miss, write and corruption counters.
    memory : MemoryCache or None
    disk : DiskCache or None

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> cache = TraceCache(tempfile.mkdtemp(), memory_items=16)
    >>> key = "12" * 32
    >>> cache.get(key) is None
    True
    >>> cache.put(key, {"x": np.arange(3.0)})
    >>> arrays, source = cache.get(key)
    >>> source, arrays["x"].flags.writeable
    ('memory', False)
    >>> cache.stats.memory_hits, cache.stats.misses
    (1, 1)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        enabled: bool = True,
        max_bytes: int = 2 * 1024**3,
        memory_items: int = 512,
    ) -> None:
        self.memory = MemoryCache(memory_items) if memory_items else None
        self.disk: DiskCache | None = None
        if enabled:
            self.disk = DiskCache(
                default_cache_dir() if directory is None else directory, max_bytes
            )
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        memory = self.memory.max_items if self.memory else 0
        return f"TraceCache(disk={self.disk!r}, memory_items={memory})"

    def get(self, key: str, *, memory: bool = True) -> tuple[Arrays, str] | None:
        """Return ``(arrays, source)`` with source ``"memory"`` or ``"disk"``, or None.

        A disk hit is also put into memory, unless ``memory=False`` (for large entries
        the caller keeps itself, such as whole traces).
        """
        _check_key(key)
        memory = memory and self.memory is not None
        if memory and (arrays := self.memory.get(key)) is not None:
            self._count("memory_hits")
            return arrays, "memory"
        if self.disk is not None:
            arrays, corrupt = self.disk._read(key)
            if corrupt:
                self._count("corrupt")
            if arrays is not None:
                if memory:
                    self.memory._put_frozen(key, arrays)
                self._count("disk_hits")
                return dict(arrays), "disk"
        self._count("misses")
        return None

    def put(self, key: str, arrays: Mapping[str, Any], *, memory: bool = True) -> None:
        """Store ``arrays`` under ``key`` in memory (unless ``memory=False``) and on disk.

        Raises
        ------
        ValueError
            If ``key`` is malformed.
        TraceFormatError
            If an array cannot be stored; nothing is stored then.
        """
        _check_key(key)
        if memory and self.memory is not None:
            frozen = _freeze(arrays)  # one copy serves both layers
            self.memory._put_frozen(key, frozen)
            arrays = frozen
        if self.disk is not None:
            self.disk.put(key, arrays)  # validates, and writes the arrays' own memory
        elif not (memory and self.memory is not None):
            _freeze(arrays)  # nothing stored, but a bad entry is refused all the same
        self._count("writes")

    def discard(self, key: str, reason: str) -> None:
        """Drop an entry that the caller found unusable, with a :class:`CacheWarning`."""
        _check_key(key)
        if self.memory is not None:
            self.memory.discard(key)
        if self.disk is not None:
            path = self.disk.path_for(key)
            _warn(f"dropped cache entry {path}: {reason}")
            with contextlib.suppress(OSError):
                path.unlink()
        self._count("corrupt")

    def __contains__(self, key: object) -> bool:
        in_memory = self.memory is not None and key in self.memory
        return in_memory or (self.disk is not None and key in self.disk)

    def info(self) -> CacheInfo | None:
        """Return the disk store's :class:`CacheInfo`, or None without a disk layer."""
        return None if self.disk is None else self.disk.info()

    def clear(self) -> None:
        """Empty both layers (the counters are kept; see ``stats.reset()``)."""
        if self.memory is not None:
            self.memory.clear()
        if self.disk is not None:
            self.disk.clear()

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)
