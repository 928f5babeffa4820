"""Memory: what is free on this machine, and refusing work that would not fit.

Recording and evaluation estimate what they will allocate before they start and call
:func:`require`, so work that cannot fit fails at once with
:class:`~phasetrace.errors.InsufficientMemoryError` saying how much it needs, instead of
a worker killed by the operating system (reported as a crash) or a machine swapping.

The free memory is Linux's ``MemAvailable`` (free plus reclaimable page cache), lowered
to what a cgroup limit (containers) leaves; elsewhere it is unknown and nothing is
refused.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InsufficientMemoryError

#: Work needing less than this is not checked (reading the free memory costs a few
#: hundred microseconds, more than a small evaluation).
MIN_CHECKED_BYTES = 64 * 1024**2

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
)


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping, or None if unknown.

    Examples
    --------
    >>> n = available_bytes()
    >>> n is None or n > 0
    True
    """
    free = _meminfo_available()
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            left = max(limit - usage, 0)
            free = left if free is None else min(free, left)
            break
    return free


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def format_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"1.5 GB"``, ``"320 MB"``.

    Examples
    --------
    >>> format_bytes(1.5e9), format_bytes(3.2e8), format_bytes(2048)
    ('1.5 GB', '320 MB', '2.0 kB')
    """
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def require(needed: float, what: str, advice: str) -> None:
    """Raise :class:`~phasetrace.errors.InsufficientMemoryError` if ``needed`` bytes are
    more than this machine has free (nothing when that is unknown, or below
    :data:`MIN_CHECKED_BYTES`).

    Examples
    --------
    >>> require(1.0, "one byte", "nothing")
    """
    if needed < MIN_CHECKED_BYTES:
        return
    free = available_bytes()
    if free is not None and needed > free:
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(needed)}, but only {format_bytes(free)} "
            f"is available; {advice}",
            needed=int(needed),
            available=int(free),
        )
