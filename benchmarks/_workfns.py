"""Work functions for ``benchmarks/strategies.py`` (importable by its workers: the script
puts this directory on ``sys.path``, which spawned workers inherit)."""

from __future__ import annotations

import time


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def spin(n: int) -> int:
    """A deterministic CPU-busy loop of ``n`` iterations; returns a checksum."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def sleep_ms(ms: float) -> float:
    """Sleep ``ms`` milliseconds; return ``ms``."""
    time.sleep(ms / 1000.0)
    return ms
