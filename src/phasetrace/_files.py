"""Writing files: every file phasetrace writes (saved traces, the command line's output,
cache entries and the cache's marker, benchmark reports) goes through :func:`write_atomic`.

The bytes go to a temporary file next to the destination, which then replaces it with
:func:`os.replace` (atomic on POSIX and Windows): a reader sees the old file or the new
one, never a fragment, and a write that fails (a full disk, Ctrl-C, a crash) leaves the
old file as it was and no temporary file behind (but for a crash, which leaves one
named ``<prefix>…`` next to it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Prefix of the temporary files of :func:`write_atomic` (hidden on POSIX).
TMP_PREFIX = ".tmp-"


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | Callable[[BinaryIO], object],
    *,
    durable: bool = True,
    mode: int = 0o666,
    tmp_prefix: str = TMP_PREFIX,
) -> None:
    """Write ``path`` all at once: to a temporary file beside it, then renamed over it.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its directory must exist.
    data : bytes or callable
        The content, or a function that writes it to the binary file object it is given.
    durable : bool
        Flush the file to the disk before the rename (``fsync``), so that a power loss
        leaves the old file or the new one. Cache entries, which are verified on every
        read and recomputed when torn, skip it for speed.
    mode : int
        Permission bits of a new file, less the process's umask (as ``open`` does).
    tmp_prefix : str
        Name prefix of the temporary file.

    Raises
    ------
    OSError
        As ``open``/``write``/``os.replace`` raise it; the destination is then unchanged.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> write_atomic(p, b"hello")
    >>> write_atomic(p, lambda fh: fh.write(b"bye"))
    >>> p.read_bytes(), [f.name for f in p.parent.iterdir()]
    (b'bye', ['out.txt'])
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f"{tmp_prefix}{path.name[:64]}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:  # another writer's name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                data(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
