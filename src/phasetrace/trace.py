"""The elimination trace of a whole graph: a struct of numpy arrays, and stitching.

A :class:`Trace` is the concatenation of its units' recorded programs (see
:mod:`phasetrace.elimination` for the op table), renumbered by plain offsets, plus the
vertex table (states in π order, kinds) and the input table (``base``, ``coef`` and the
source/target position of every edge). Because ``record_trace`` stitches the same unit
recordings that the hierarchical path computes elsewhere, both give the same arrays,
the same bytes and the same :meth:`Trace.digest`.

Saved traces are ``.npz`` files of plain arrays, loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .elimination import CONST, FMA, LOAD, OPCODE_NAMES, SUM, UNIT_ARRAYS
from .errors import TraceFormatError
from .scc import Decomposition

TRACE_FORMAT_VERSION = 1
VERTEX_START, VERTEX_TRANSIENT, VERTEX_ABSORBING = 0, 1, 2

#: Arrays of a trace beyond the unit arrays, and their dtypes.
TRACE_EXTRA_ARRAYS = {
    "n_params": np.int64,
    "states": np.int64,
    "vertex_kind": np.int8,
    "input_base": np.float64,
    "input_coef": np.float64,
    "input_src": np.int32,
    "input_dst": np.int32,
}
TRACE_ARRAYS = {**UNIT_ARRAYS, **TRACE_EXTRA_ARRAYS}


class Trace:
    """A recorded elimination: replay it for any θ to get exact moments.

    Build one with :func:`phasetrace.record_trace` or :func:`phasetrace.compute_trace`.
    All arrays are read-only; ``trace.arrays`` maps their names to them.

    Examples
    --------
    >>> import phasetrace as pt
    >>> trace = pt.record_trace(pt.models.kingman(4))
    >>> float(trace.expectation([1.0]))        # E[T_MRCA] = 2(1 - 1/4)
    1.5
    >>> trace.moments([1.0], k=2).round(6).tolist()
    [1.5, 3.055556]
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        missing = set(TRACE_ARRAYS) - set(arrays)
        if missing:
            raise TraceFormatError(f"trace arrays missing: {sorted(missing)}")
        self.arrays: dict[str, np.ndarray] = {}
        for name, dt in TRACE_ARRAYS.items():
            arr = np.array(arrays[name], dtype=dt, order="C", copy=True)
            arr.flags.writeable = False
            self.arrays[name] = arr
        self._plan = None
        self._digest: str | None = None

    # -- shape of the trace ------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return int(self.arrays["n_params"].reshape(()))

    @property
    def states(self) -> np.ndarray:
        """State of each vertex, in the trace's order π (the start first, absorbing last)."""
        return self.arrays["states"]

    @property
    def n_vertices(self) -> int:
        return int(self.arrays["states"].shape[0])

    @property
    def n_ops(self) -> int:
        return int(self.arrays["code"].shape[0])

    def vertex_index(self, state: Sequence[int]) -> int:
        """Position in :attr:`states` of the vertex with this state."""
        hits = np.flatnonzero((self.states == np.asarray(state)).all(axis=1))
        if hits.size == 0:
            raise KeyError(f"no vertex with state {list(state)} in this trace")
        return int(hits[0])

    def rewards_from(self, fn: Callable[[np.ndarray], float]) -> np.ndarray:
        """Reward vector in trace order from a function of the state."""
        return np.array([float(fn(s)) for s in self.states], dtype=np.float64)

    # -- identity ---------------------------------------------------------------------
    def digest(self) -> str:
        """sha256 (hex) of a canonical encoding of every array: equal traces, equal digests."""
        if self._digest is None:
            h = hashlib.sha256(b"phasetrace.trace/%d" % TRACE_FORMAT_VERSION)
            for name in sorted(self.arrays):
                arr = self.arrays[name]
                le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
                h.update(f"{name}:{le.dtype.str}:{arr.shape}".encode())
                h.update(np.ascontiguousarray(le).tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return all(np.array_equal(self.arrays[n], other.arrays[n]) for n in TRACE_ARRAYS)

    def __hash__(self) -> int:
        return hash(self.digest())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def summary(self) -> dict[str, Any]:
        """Counts: vertices, ops by type, x-program length, row entries, bytes."""
        code = self.arrays["code"]
        counts = np.bincount(code, minlength=len(OPCODE_NAMES))
        kinds = np.bincount(self.arrays["vertex_kind"], minlength=3)
        return {
            "vertices": self.n_vertices,
            "transient": int(kinds[VERTEX_TRANSIENT]),
            "absorbing": int(kinds[VERTEX_ABSORBING]),
            "n_params": self.n_params,
            "ops": self.n_ops,
            "ops_by_type": {n: int(c) for n, c in zip(OPCODE_NAMES, counts, strict=True) if c},
            "x_program": int(self.arrays["x_kind"].shape[0]),
            "row_entries": int(self.arrays["row_dst"].shape[0]),
            "bytes": self.nbytes,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"<Trace vertices={s['vertices']} ops={s['ops']} x_program={s['x_program']} "
            f"rows={s['row_entries']} n_params={s['n_params']} digest={self.digest()[:12]}>"
        )

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the trace as an ``.npz`` of plain arrays (no pickle)."""
        np.savez(
            path,
            __format__=np.array(TRACE_FORMAT_VERSION, dtype=np.int64),
            __digest__=np.frombuffer(bytes.fromhex(self.digest()), dtype=np.uint8),
            **self.arrays,
        )

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`save`; checks the format version and the digest."""
        try:
            with np.load(path, allow_pickle=False) as f:
                version = int(f["__format__"])
                if version != TRACE_FORMAT_VERSION:
                    raise TraceFormatError(
                        f"{path}: trace format version {version}, this phasetrace reads "
                        f"{TRACE_FORMAT_VERSION}"
                    )
                stored = bytes(f["__digest__"]).hex()
                trace = cls({name: f[name] for name in TRACE_ARRAYS})
        except TraceFormatError:
            raise
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise TraceFormatError(f"{path}: not a readable phasetrace trace ({exc})") from exc
        if trace.digest() != stored:
            raise TraceFormatError(f"{path}: checksum mismatch (file corrupted)")
        return trace

    # -- evaluation (delegated to evaluate.py) -----------------------------------------
    def _evaluator(self):
        if self._plan is None:
            from .evaluate import Plan

            self._plan = Plan(self)
        return self._plan

    def moments(self, theta, k: int = 1, rewards=None) -> np.ndarray:
        """``[E[Y], E[Y²], …, E[Y^k]]`` at ``theta`` (``Y = T`` without rewards).

        Parameters
        ----------
        theta : array_like, shape (n_params,) or (B, n_params)
        k : int
            Highest moment.
        rewards : array_like (n_vertices,) in :attr:`states` order, or callable of a state
            Reward rate per vertex; ``Y = ∫ r(X_t) dt``.

        Returns
        -------
        ndarray, shape (k,) or (B, k)
        """
        from .evaluate import moments

        return moments(self, theta, k=k, rewards=rewards)

    def expectation(self, theta, rewards=None) -> np.ndarray | float:
        """``E[Y]`` at ``theta``: a float for one θ, shape (B,) for a batch."""
        m = self.moments(theta, k=1, rewards=rewards)
        return m[..., 0]

    def variance(self, theta, rewards=None):
        """``Var[Y]`` at ``theta``."""
        m = self.moments(theta, k=2, rewards=rewards)
        return m[..., 1] - m[..., 0] ** 2

    def cross_moment(self, theta, rewards_i, rewards_j):
        """``E[Y_i Y_j]`` for two reward vectors (``elimination.md`` §4)."""
        from .evaluate import cross_moment

        return cross_moment(self, theta, rewards_i, rewards_j)


def stitch(decomposition: Decomposition, unit_traces: Sequence[dict[str, np.ndarray]]) -> Trace:
    """Concatenate unit traces into the whole-graph trace (``elimination.md`` §5).

    Offsets are plain sums over the units in π order; nothing is rescaled or patched.
    """
    d = decomposition
    if len(unit_traces) != len(d.units):
        raise ValueError(f"{len(unit_traces)} unit traces for {len(d.units)} units")
    n = d.n_vertices
    parts: dict[str, list[np.ndarray]] = {name: [] for name in UNIT_ARRAYS}
    sigma = np.full(n, -1, dtype=np.int64)
    row_len = np.zeros(n, dtype=np.int64)
    row_dst_by_vertex: list[np.ndarray] = []
    offsets = {"slot": 0, "const": 0, "sum": 0, "edge": 0}
    kinds = np.full(n, VERTEX_ABSORBING, dtype=np.int8)
    inputs = {"base": [], "coef": [], "src": [], "dst": []}
    for unit, ut, first, exits in zip(d.units, unit_traces, d.first, d.exits, strict=True):
        k = unit.n_internal
        vmap = np.concatenate([np.arange(first, first + k, dtype=np.int64), exits])
        _append_program(parts, ut, offsets)
        so = offsets["slot"]
        sig = ut["sigma"].astype(np.int64)
        sigma[first : first + k] = np.where(sig >= 0, sig + so, -1)
        kinds[first : first + k] = VERTEX_TRANSIENT
        parts["x_kind"].append(ut["x_kind"])
        parts["x_u"].append(vmap[ut["x_u"]])
        parts["x_v"].append(np.where(ut["x_v"] >= 0, vmap[np.maximum(ut["x_v"], 0)], -1))
        parts["x_coef"].append(ut["x_coef"].astype(np.int64) + so)
        row_len[first : first + k] = np.diff(ut["row_ptr"])
        row_dst_by_vertex.append(vmap[ut["row_dst"]])
        parts["row_slot"].append(ut["row_slot"].astype(np.int64) + so)
        inputs["base"].append(unit.base)
        inputs["coef"].append(unit.coef)
        inputs["src"].append(np.repeat(np.arange(first, first + k), np.diff(unit.ptr)))
        inputs["dst"].append(vmap[unit.dst])
        offsets["slot"] += ut["code"].shape[0]
        offsets["const"] += ut["consts"].shape[0]
        offsets["sum"] += ut["sum_args"].shape[0]
        offsets["edge"] += unit.n_edges
    if d.units and d.units[0].kind == 1:
        kinds[0] = VERTEX_START
    if offsets["slot"] >= 2**31:
        raise ValueError("trace too large: more than 2**31 slots")
    arrays = {name: _cat(parts[name], dt) for name, dt in UNIT_ARRAYS.items() if parts[name]}
    arrays["sigma"] = sigma
    arrays["row_ptr"] = np.concatenate([[0], np.cumsum(row_len)])
    arrays["row_dst"] = _cat(row_dst_by_vertex, np.int32)
    arrays["n_params"] = np.array(d.n_params)
    arrays["states"] = d.states
    arrays["vertex_kind"] = kinds
    arrays["input_base"] = _cat(inputs["base"], np.float64)
    p = d.n_params
    arrays["input_coef"] = (
        np.concatenate(inputs["coef"]).reshape(offsets["edge"], p)
        if inputs["coef"]
        else np.zeros((0, p))
    )
    arrays["input_src"] = _cat(inputs["src"], np.int32)
    arrays["input_dst"] = _cat(inputs["dst"], np.int32)
    for name in UNIT_ARRAYS:
        arrays.setdefault(name, np.zeros(0, dtype=UNIT_ARRAYS[name]))
    return Trace(arrays)


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _append_program(parts, ut, offsets) -> None:
    """Renumber one unit's program by the running offsets and append it."""
    code = ut["code"]
    so, co, sa, eo = offsets["slot"], offsets["const"], offsets["sum"], offsets["edge"]
    a = ut["a"].astype(np.int64)
    b = ut["b"].astype(np.int64)
    c = ut["c"].astype(np.int64)
    a_off = np.where(code == LOAD, eo, np.where(code == CONST, co, np.where(code == SUM, sa, so)))
    parts["code"].append(code)
    parts["a"].append(a + a_off)
    parts["b"].append(np.where((b >= 0) & (code != SUM), b + so, b))
    parts["c"].append(np.where(code == FMA, c + so, c))
    parts["consts"].append(ut["consts"])
    parts["sum_args"].append(ut["sum_args"].astype(np.int64) + so)
