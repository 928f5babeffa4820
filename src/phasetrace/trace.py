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
    [1.5, 3.388889]
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, _copy: bool = True):
        missing = set(TRACE_ARRAYS) - set(arrays)
        if missing:
            raise TraceFormatError(f"trace arrays missing: {sorted(missing)}")
        self.arrays: dict[str, np.ndarray] = {}
        for name, dt in TRACE_ARRAYS.items():
            # Copy what callers hand in (they may mutate it later); stitch passes arrays it
            # has just built and nobody else holds (_copy=False).
            arr = np.array(arrays[name], dtype=dt, order="C", copy=True if _copy else None)
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
    Work is vectorised over all units at once, so thousands of tiny units stitch fast.
    """
    d = decomposition
    uts = list(unit_traces)
    if len(uts) != len(d.units):
        raise ValueError(f"{len(uts)} unit traces for {len(d.units)} units")
    n = d.n_vertices
    k = np.array([u.n_internal for u in d.units], dtype=np.int64)
    n_internal = int(k.sum())

    def cat(name, dtype=np.int64, source=uts):
        parts = [x[name] for x in source]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    def offsets(name):  # running start of each unit's block of ``name``, and its lengths
        lengths = np.array([x[name].shape[0] for x in uts], dtype=np.int64)
        return np.cumsum(lengths) - lengths, lengths

    slot0, n_ops = offsets("code")
    const0, _ = offsets("consts")
    sum0, n_sum = offsets("sum_args")
    _, n_x = offsets("x_kind")
    _, n_rows = offsets("row_slot")
    if int(n_ops.sum()) >= 2**31:
        raise ValueError("trace too large: more than 2**31 slots")
    edges = [u.n_edges for u in d.units]
    edge0 = np.cumsum(edges) - edges
    # Local vertex ids → π positions: unit u's ids index vmap[vm0[u]:], internal then exits.
    vmaps = [
        np.concatenate([np.arange(f, f + kk, dtype=np.int64), ex])
        for f, kk, ex in zip(d.first.tolist(), k.tolist(), d.exits, strict=True)
    ]
    vmap = np.concatenate(vmaps) if vmaps else np.zeros(0, np.int64)
    vm0 = np.cumsum([len(v) for v in vmaps]) - np.array([len(v) for v in vmaps], dtype=np.int64)

    code = cat("code", np.int8)
    per_op = lambda off: np.repeat(off, n_ops)  # noqa: E731
    a, b, c = cat("a"), cat("b"), cat("c")
    slot_off = per_op(slot0)
    a_off = np.select(
        [code == LOAD, code == CONST, code == SUM],
        [per_op(edge0), per_op(const0), per_op(sum0)],
        slot_off,
    )
    arrays = {
        "code": code,
        "a": a + a_off,
        "b": np.where((b >= 0) & (code != SUM), b + slot_off, b),
        "c": np.where(code == FMA, c + slot_off, c),
        "consts": cat("consts", np.float64),
        "sum_args": cat("sum_args") + np.repeat(slot0, n_sum),
    }
    sig = cat("sigma")
    sigma = np.full(n, -1, dtype=np.int64)
    sigma[:n_internal] = np.where(sig >= 0, sig + np.repeat(slot0, k), -1)
    xv = cat("x_v")
    x_vm = np.repeat(vm0, n_x)
    arrays["sigma"] = sigma
    arrays["x_kind"] = cat("x_kind", np.int8)
    arrays["x_u"] = vmap[x_vm + cat("x_u")]
    arrays["x_v"] = np.where(xv >= 0, vmap[x_vm + np.maximum(xv, 0)], -1)
    arrays["x_coef"] = cat("x_coef") + np.repeat(slot0, n_x)
    row_len = np.zeros(n, dtype=np.int64)
    row_len[:n_internal] = np.concatenate([np.diff(x["row_ptr"]) for x in uts]) if uts else []
    arrays["row_ptr"] = np.concatenate([[0], np.cumsum(row_len)])
    arrays["row_dst"] = vmap[np.repeat(vm0, n_rows) + cat("row_dst")]
    arrays["row_slot"] = cat("row_slot") + np.repeat(slot0, n_rows)
    units = [{"ptr": u.ptr, "dst": u.dst, "base": u.base} for u in d.units]
    out_deg = np.concatenate([np.diff(u.ptr) for u in d.units]) if units else np.zeros(0, int)
    arrays["input_base"] = cat("base", np.float64, units)
    coefs = [u.coef for u in d.units] or [np.zeros((0, d.n_params))]
    arrays["input_coef"] = np.concatenate(coefs).reshape(int(sum(edges)), d.n_params)
    arrays["input_src"] = np.repeat(np.arange(n_internal), out_deg)
    arrays["input_dst"] = vmap[np.repeat(vm0, edges) + cat("dst", np.int64, units)]
    kinds = np.full(n, VERTEX_ABSORBING, dtype=np.int8)
    kinds[:n_internal] = VERTEX_TRANSIENT
    if d.units and d.units[0].kind == 1:
        kinds[0] = VERTEX_START
    arrays["vertex_kind"] = kinds
    arrays["n_params"] = np.array(d.n_params)
    arrays["states"] = d.states.copy()
    return Trace(arrays, _copy=False)
