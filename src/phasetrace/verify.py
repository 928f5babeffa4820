"""``phasetrace cache verify``: re-record cache entries and compare them bit for bit.

A checksum proves an entry is the file that was written, and the structural checks
(:mod:`phasetrace.structure`) prove the kernel can read it safely. Neither proves the
entry is what the recorder makes for its key: someone who can write the cache directory
can write a well-formed entry with a changed program. Verification closes that gap for a
sample of entries: each entry carries its input (a unit entry its ``WorkUnit`` bytes, a
whole trace its vertex and edge tables), so the input is re-recorded here and both the
key and the arrays must come out the same. A mismatching entry is deleted (and recomputed
when next needed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import DiskCache
from .errors import PhasetraceError
from .ops import TRACE_ARRAYS, UNIT_ARRAYS, VERTEX_START

__all__ = ["VerifyReport", "graph_from_trace_arrays", "verify_cache"]


@dataclass
class VerifyReport:
    """What :func:`verify_cache` found.

    Attributes
    ----------
    entries : int
        Entries in the cache.
    checked : int
        Entries re-recorded (the sample).
    verified : int
        Entries whose key and arrays the recorder reproduced exactly.
    bad : list of (Path, str)
        Entries that did not match, or could not be read, and why; they were deleted.
    unverifiable : int
        Entries without their input (written by an older phasetrace); left alone.
    """

    entries: int = 0
    checked: int = 0
    verified: int = 0
    bad: list[tuple[Path, str]] = field(default_factory=list)
    unverifiable: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing bad was found."""
        return not self.bad


def graph_from_trace_arrays(arrays: Mapping[str, np.ndarray]):
    """Rebuild the graph a whole trace was recorded from, out of its vertex and edge tables.

    Examples
    --------
    >>> import phasetrace as pt
    >>> g = pt.models.kingman(4)
    >>> graph_from_trace_arrays(pt.record_trace(g).arrays).content_key() == g.content_key()
    True
    """
    from .graph import Graph

    states = np.asarray(arrays["states"])
    if states.shape[0] == 0 or arrays["vertex_kind"][0] != VERTEX_START:
        raise PhasetraceError("the trace has no starting vertex")
    coef = np.asarray(arrays["input_coef"])
    edges = [
        [s, d, b, c if any(c) else None]
        for s, d, b, c in zip(
            arrays["input_src"].tolist(),
            arrays["input_dst"].tolist(),
            arrays["input_base"].tolist(),
            coef.tolist(),
            strict=True,
        )
    ]
    doc = {
        "format": "phasetrace.graph",
        "version": 1,
        "state_length": int(states.shape[1]),
        "n_params": int(arrays["n_params"]),
        "vertices": states.tolist(),
        "edges": edges,
    }
    return Graph.from_json(json.dumps(doc))


def _same(stored: Mapping[str, np.ndarray], recorded: Mapping[str, np.ndarray], names) -> bool:
    return all(
        stored[n].dtype == np.asarray(recorded[n]).dtype and np.array_equal(stored[n], recorded[n])
        for n in names
    )


def _check_entry(key: str, arrays: Mapping[str, np.ndarray]) -> str | None:
    """None if the entry is what the recorder makes for ``key``, else why not.

    Raises LookupError for an entry that carries no input.
    """
    from .elimination import record_unit
    from .pipeline import UNIT_INPUT, _cache_key
    from .record import record_trace
    from .scc import WorkUnit

    if UNIT_INPUT in arrays:
        data = arrays[UNIT_INPUT].tobytes()
        if _cache_key(b"unit", data) != key:
            return "its input does not hash to its key"
        recorded = record_unit(WorkUnit.from_bytes(data))
        return None if _same(arrays, recorded, UNIT_ARRAYS) else "re-recorded arrays differ"
    if set(TRACE_ARRAYS) <= set(arrays):
        graph = graph_from_trace_arrays(arrays)
        keys = {
            _cache_key(b"trace", graph.content_key().encode()),
            _cache_key(b"graph", graph.to_json().encode()),
        }
        if key not in keys:
            return "its graph does not hash to its key"
        recorded = record_trace(graph).arrays
        return None if _same(arrays, recorded, TRACE_ARRAYS) else "re-recorded arrays differ"
    raise LookupError("no input stored")


def verify_cache(
    directory: str | Path, *, sample: int | None = 20, seed: int | None = None
) -> VerifyReport:
    """Re-record ``sample`` randomly chosen entries (all with ``sample=None``) and compare.

    Parameters
    ----------
    directory : str or Path
        The cache directory.
    sample : int or None, default 20
        How many entries to re-record; recording costs what computing them cost.
    seed : int, optional
        Seed of the random choice, for a reproducible sample.

    Returns
    -------
    VerifyReport

    Examples
    --------
    >>> import tempfile, phasetrace as pt
    >>> d = tempfile.mkdtemp()
    >>> _ = pt.compute_trace(pt.models.two_island(4), cache_dir=d, strategy="sequential")
    >>> report = verify_cache(d, sample=None)
    >>> report.ok, report.verified == report.checked > 0
    (True, True)
    """
    disk = DiskCache(directory)
    keys = disk.keys()
    report = VerifyReport(entries=len(keys))
    if sample is not None and sample < len(keys):
        keys = random.Random(seed).sample(keys, sample)
    for key in keys:
        report.checked += 1
        path = disk.path_for(key)
        arrays = disk.get(key)  # checksums and format; a bad file is dropped there
        if arrays is None:
            if not path.exists():
                report.bad.append((path, "unreadable or corrupt"))
            continue
        try:
            why = _check_entry(key, arrays)
        except LookupError:
            report.unverifiable += 1
            continue
        except (PhasetraceError, ValueError) as exc:
            why = f"its input is malformed ({exc})"
        if why is None:
            report.verified += 1
        else:
            report.bad.append((path, why))
            path.unlink(missing_ok=True)
    return report
