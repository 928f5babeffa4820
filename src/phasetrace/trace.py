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
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._args import (
    as_floats,
    as_k,
    as_reward_matrix,
    as_rewards,
    as_thetas,
    not_finite_error,
    shaped,
    transient_rewards,
)
from .errors import InvalidParameterError, TraceFormatError
from .ops import (
    CONST,
    FMA,
    LOAD,
    OPCODE_NAMES,
    SUM,
    TRACE_ARRAYS,
    TRACE_FORMAT_VERSION,
    UNIT_SOLVE,
    VERTEX_ABSORBING,
    VERTEX_START,
    VERTEX_TRANSIENT,
)
from .scc import Decomposition
from .structure import check_trace_arrays


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

    def __init__(self, arrays: dict[str, np.ndarray], *, _copy: bool = True, _check: bool = True):
        missing = set(TRACE_ARRAYS) - set(arrays)
        if missing:
            raise TraceFormatError(f"trace arrays missing: {sorted(missing)}")
        self.arrays: dict[str, np.ndarray] = {}
        for name, dt in TRACE_ARRAYS.items():
            # Copy what callers hand in (they may mutate it later); stitch passes arrays it
            # has just built and nobody else holds (_copy=False).
            source = arrays[name]
            arr = np.array(source, dtype=dt, order="C") if _copy else np.asarray(source, dt, "C")
            arr.flags.writeable = False
            self.arrays[name] = arr
        if _check:  # arrays from elsewhere (a file, a cache, a caller): the kernel trusts them
            check_trace_arrays(self.arrays)
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
        """Reward vector in trace order from a function of the state.

        ``fn`` is called with each vertex's state (an int array of length
        ``states.shape[1]``) and returns a number.

        Raises
        ------
        InvalidParameterError
            When ``fn`` raises (an index out of range, say), naming the state, or returns
            something that is not a real number.

        Examples
        --------
        >>> import phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
        >>> tr.rewards_from(lambda s: s[0]).tolist()
        [0.0, 3.0, 2.0, 1.0]
        >>> tr.rewards_from(lambda s: s[1])
        Traceback (most recent call last):
        ...
        phasetrace.errors.InvalidParameterError: the reward function raised IndexError at ...
        """
        values = []
        for v, state in enumerate(self.states):
            try:
                values.append(fn(state))
            except Exception as exc:
                raise InvalidParameterError(
                    f"the reward function raised {type(exc).__name__} at state "
                    f"{state.tolist()} (vertex {v}): {exc}. It is called with each vertex's "
                    f"state, an int array of length {self.states.shape[1]}, and must return a "
                    "number"
                ) from exc
        return as_floats(values, "what the reward function returns")

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

    def unit_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """States per unit (SCC) in π order, and whether each is a solve block.

        Examples
        --------
        >>> import phasetrace as pt
        >>> sizes, solved = pt.record_trace(pt.models.two_island(3)).unit_sizes()
        >>> sizes.tolist(), solved.tolist()
        ([1, 4, 3], [False, False, False])
        """
        return np.diff(self.arrays["unit_ptr"]), self.arrays["unit_kind"] == UNIT_SOLVE

    def summary(self) -> dict[str, Any]:
        """Counts: vertices, ops by type, x-program length, row entries, bytes, and the
        SCCs taped and solved (solve blocks: their number and largest size)."""
        code = self.arrays["code"]
        sizes, solved = self.unit_sizes()
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
            "units_taped": int((~solved).sum()),
            "solve_blocks": int(solved.sum()),
            "largest_solve_block": int(sizes[solved].max()) if solved.any() else 0,
            "bytes": self.nbytes,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"<Trace vertices={s['vertices']} ops={s['ops']} x_program={s['x_program']} "
            f"rows={s['row_entries']} n_params={s['n_params']} digest={self.digest()[:12]}>"
        )

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the trace as an ``.npz`` of plain arrays (no pickle).

        As with :func:`numpy.savez`, ``.npz`` is appended to a name without it. The file
        is written whole or not at all: to a temporary file beside it, renamed over it
        when complete (a full disk or an interrupt leaves an existing file as it was).

        Returns
        -------
        Path
            The file written.

        Examples
        --------
        >>> import tempfile, os, phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(3))
        >>> path = tr.save(os.path.join(tempfile.mkdtemp(), "k3"))
        >>> path.name, pt.Trace.load(path).digest() == tr.digest()
        ('k3.npz', True)
        """
        from ._files import write_atomic

        path = Path(path if str(path).endswith(".npz") else f"{path}.npz")
        arrays = {
            "__format__": np.array(TRACE_FORMAT_VERSION, dtype=np.int64),
            "__digest__": np.frombuffer(bytes.fromhex(self.digest()), dtype=np.uint8),
            **self.arrays,
        }
        write_atomic(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`save`; checks the format version and the digest.

        Before any array is read, every member's declared shape must account for its
        bytes, and all of them together fit in the file: members are stored, not
        compressed, as :meth:`save` writes them. So a small file cannot make this
        allocate more than its own size (a zip bomb, a header claiming a huge shape).
        """
        try:
            if hasattr(path, "read"):  # an open binary file
                stored, trace = cls._read_npz(path, path)
            else:
                with open(path, "rb") as fh:
                    stored, trace = cls._read_npz(fh, path)
        except TraceFormatError:
            raise
        except (
            OSError,
            KeyError,
            ValueError,
            TypeError,  # e.g. a __format__ that is not a scalar
            EOFError,
            zipfile.BadZipFile,
            NotImplementedError,  # a zip entry with an unsupported compression
            RuntimeError,  # zipfile: "file is encrypted"
        ) as exc:
            raise TraceFormatError(f"{path}: not a readable phasetrace trace ({exc})") from exc
        if trace.digest() != stored:
            raise TraceFormatError(f"{path}: checksum mismatch (file corrupted)")
        return trace

    @classmethod
    def _read_npz(cls, fh, path) -> tuple[str, Trace]:
        """The stored digest and the trace of an open ``.npz`` (sizes checked first)."""
        _check_npz_sizes(fh, path)
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as f:
            version = int(f["__format__"])
            if version != TRACE_FORMAT_VERSION:
                raise TraceFormatError(
                    f"{path}: trace format version {version}, this phasetrace reads "
                    f"{TRACE_FORMAT_VERSION}"
                )
            return bytes(f["__digest__"]).hex(), cls({name: f[name] for name in TRACE_ARRAYS})

    # -- evaluation (the compiled kernel, phasetrace.kernel) ------------------------------
    def moments(self, theta, k: int = 1, rewards=None) -> np.ndarray:
        """``[E[Y], E[Y²], …, E[Y^k]]`` at ``theta`` (``Y = T`` without rewards).

        Parameters
        ----------
        theta : array_like, shape (n_params,) or (B, n_params)
            One parameter vector, or a batch.
        k : int
            Highest moment.
        rewards : None, callable, array_like (n_vertices,) or (R, n_vertices), or list of callables
            Reward rate per vertex, in :attr:`states` order (or a function of the state);
            ``Y = ∫ r(X_t) dt``. Several reward vectors are evaluated in one pass.

        Returns
        -------
        ndarray
            Shape (k,) for one θ and one reward vector; a leading axis (B,) for a batch of
            θ and an axis (R,) before the last for R reward vectors: (B, R, k) at most.

        Raises
        ------
        InvalidParameterError
            For a θ or rewards of the wrong shape; for a θ at which a rate is negative or
            not finite (the message names the edge), at which a vertex that is reached
            cannot be absorbed (the moments are infinite; the message names its state),
            or at which the moments overflow float64.

        Notes
        -----
        An edge whose rate is exactly 0 at θ contributes nothing: the moments are those
        of the chain on the states reached over edges of rate > 0 (θ may sit on a
        boundary such as migration rate 0).

        Examples
        --------
        >>> import phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(4))
        >>> tr.moments([1.0], k=2).round(6).tolist()
        [1.5, 3.388889]
        >>> tr.moments([[1.0], [2.0]]).ravel().tolist()       # a batch of θ
        [1.5, 0.75]
        """
        from . import kernel

        k = as_k(k)
        th, single = as_thetas(self, theta)
        rew, multi = as_reward_matrix(self, rewards)
        out = kernel.moments(self, th, transient_rewards(self, rew), k)
        return shaped(out, single, multi)

    def moments_and_jacobian(self, theta, k: int = 1, rewards=None):
        """Moments (as :meth:`moments`) and their derivatives with respect to θ.

        The derivatives come from the adjoint of the recorded solve (one replay more and
        ``k`` transposed solves): exact up to rounding, whatever ``n_params`` is.

        Returns
        -------
        (ndarray, ndarray)
            The moments, and the Jacobian with a trailing axis (n_params,).

        Raises
        ------
        InvalidParameterError
            As :meth:`moments`; also where a derivative does not exist: at a θ where a
            rate is 0 and raising it would lead to states that are not absorbed for sure
            (for example ``two_island`` at migration rate 0, where ``E[T]`` jumps as soon
            as the migration rate is > 0).

        Examples
        --------
        >>> import phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(5, state_space="lineages"))
        >>> m, jac = tr.moments_and_jacobian([2.0])    # E[T] = 2(1 - 1/5)/c: dE/dc = -E/c
        >>> round(float(jac[0, 0]), 12)
        -0.4
        """
        from . import kernel

        k = as_k(k)
        th, single = as_thetas(self, theta)
        rew, multi = as_reward_matrix(self, rewards)
        out, jac = kernel.moments_and_jacobian(self, th, transient_rewards(self, rew), k)
        return shaped(out, single, multi), shaped(jac, single, multi)

    def gradient(self, theta, rewards=None) -> np.ndarray:
        """``∂E[Y]/∂θ``: shape (n_params,) for one θ, (B, n_params) for a batch."""
        return self.moments_and_jacobian(theta, k=1, rewards=rewards)[1][..., 0, :]

    def expectation(self, theta, rewards=None) -> np.ndarray | np.float64:
        """``E[Y]`` at ``theta``.

        A float (``numpy.float64``, a subclass of ``float``) for one θ and one reward
        vector; shape (B,) for a batch of θ, with an axis (R,) after it for R reward
        vectors (as :meth:`moments` without its last axis).

        Examples
        --------
        >>> import phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(4))
        >>> tr.expectation([1.0])                      # 2(1 - 1/4)
        np.float64(1.5)
        >>> tr.expectation([[1.0], [2.0]]).tolist()
        [1.5, 0.75]
        """
        m = self.moments(theta, k=1, rewards=rewards)
        return m[..., 0][()]  # [()]: a 0-d array becomes a scalar, others stay arrays

    def variance(self, theta, rewards=None) -> np.ndarray | np.float64:
        """``Var[Y]`` at ``theta`` (shapes as :meth:`expectation`)."""
        m = self.moments(theta, k=2, rewards=rewards)
        with np.errstate(over="ignore", invalid="ignore"):
            var = m[..., 1] - m[..., 0] ** 2
        if not np.isfinite(var).all():  # E[Y²] finite, E[Y]² just past the float64 range
            raise not_finite_error(theta, var, "variances")
        return var

    def cross_moment(self, theta, rewards_i, rewards_j):
        """``E[Y_i Y_j] = F(r_i∘F(r_j))[S] + F(r_j∘F(r_i))[S]`` for two reward vectors.

        Examples
        --------
        >>> import phasetrace as pt
        >>> tr = pt.record_trace(pt.models.kingman(4))
        >>> ones = [1.0] * tr.n_vertices                 # E[T·T] = E[T²]
        >>> bool(abs(tr.cross_moment([1.0], ones, ones) - tr.moments([1.0], k=2)[1]) < 1e-12)
        True
        """
        from . import kernel

        th, single = as_thetas(self, theta)
        rows = np.stack([as_rewards(self, rewards_i), as_rewards(self, rewards_j)])
        seq = np.array([[1, 0], [0, 1]])  # F(r_i∘F(r_j)) and F(r_j∘F(r_i))
        out = kernel.passes(self, th, transient_rewards(self, rows), seq, np.ones(2))
        total = out[:, 0, 1] + out[:, 1, 1]
        return total[0] if single else total


def _check_npz_sizes(fh, path) -> None:
    """Refuse an ``.npz`` whose arrays would need more memory than the file holds.

    Each member must be stored (not compressed), and its ``.npy`` header's shape and dtype
    must account for exactly the member's bytes; the members together must fit in the
    file. Only the headers are read.
    """
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    with zipfile.ZipFile(fh) as zf:
        total = 0
        for info in zf.infolist():
            where = f"{path}: member {info.filename!r}"
            if info.compress_type != zipfile.ZIP_STORED:
                raise TraceFormatError(
                    f"{where} is compressed; trace files hold stored arrays, as Trace.save "
                    "writes them (compress the file as a whole if you need to)"
                )
            total += info.file_size
            if info.file_size != info.compress_size or total > size:
                raise TraceFormatError(
                    f"{where} claims {info.file_size} bytes, more than the file of {size} "
                    "bytes holds"
                )
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise TraceFormatError(f"{where}: unsupported .npy version {version}")
                header = member.tell()
            if dtype.hasobject:
                raise TraceFormatError(f"{where}: object arrays are not trace arrays")
            declared = math.prod(shape) * dtype.itemsize
            if header + declared != info.file_size:
                raise TraceFormatError(
                    f"{where} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                    f"{info.file_size - header} bytes"
                )


def _unit_diffs(ptrs: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``np.diff`` of every unit's pointer array (``k[u] + 1`` entries each, concatenated),
    in one pass: the differences across unit boundaries are dropped."""
    if ptrs.size == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.cumsum(k + 1)[:-1] - 1  # last entry of each unit but the last one
    keep = np.ones(ptrs.size - 1, dtype=bool)
    keep[boundary] = False
    return np.diff(ptrs)[keep]


def stitch(decomposition: Decomposition, unit_traces: Sequence[dict[str, np.ndarray]]) -> Trace:
    """Concatenate unit traces into the whole-graph trace, units in π order.

    Offsets are plain sums over the units; nothing is rescaled or patched. Unit ``u``'s
    vertices and x-program keep their block (``unit_ptr``, ``unit_xptr``): evaluation runs
    the blocks in reverse order, sinks first. Work is vectorised over all units at once,
    so thousands of tiny units stitch fast.
    """
    d = decomposition
    uts = list(unit_traces)
    if len(uts) != len(d.units):
        raise ValueError(f"{len(uts)} unit traces for {len(d.units)} units")
    n = d.n_vertices
    k = np.array([u.n_internal for u in d.units], dtype=np.int64)
    n_internal = int(k.sum())

    # Units with equal content share one recording (the pipeline deduplicates by key), so
    # each distinct recording is concatenated once and gathered for every unit using it.
    index: dict[int, int] = {}
    distinct = []
    for x in uts:
        if index.setdefault(id(x), len(distinct)) == len(distinct):
            distinct.append(x)
    which = np.array([index[id(x)] for x in uts], dtype=np.int64)

    def starts(lens):
        return np.cumsum(lens) - lens

    def lengths(name):
        return np.array([x[name].shape[0] for x in distinct], dtype=np.int64)[which]

    def cat(name, dtype=np.int64, source=None):
        if source is not None:  # other per-unit arrays, in unit order
            parts = [x[name] for x in source]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
        if not distinct:
            return np.zeros(0, dtype=dtype)
        flat = np.concatenate([x[name] for x in distinct]).astype(dtype)
        if len(distinct) == len(uts):
            return flat
        lens_d = np.array([x[name].shape[0] for x in distinct], dtype=np.int64)
        lens = lens_d[which]
        gather = np.repeat(starts(lens_d)[which] - starts(lens), lens) + np.arange(lens.sum())
        return flat[gather]

    n_ops = lengths("code")
    slot0 = starts(n_ops)
    if int(n_ops.sum()) >= 2**31:
        raise ValueError("trace too large: more than 2**31 slots")
    edges = np.array([u.n_edges for u in d.units], dtype=np.int64)
    # Local vertex ids → π positions: unit u's ids index vmap[vm0[u]:], internal then exits.
    vmaps = [
        np.concatenate([np.arange(f, f + kk, dtype=np.int64), ex])
        for f, kk, ex in zip(d.first.tolist(), k.tolist(), d.exits, strict=True)
    ]
    vmap = np.concatenate(vmaps) if vmaps else np.zeros(0, np.int64)
    vm0 = starts(np.array([len(v) for v in vmaps], dtype=np.int64))

    def vertex_ids(name, lens):  # local vertex ids of the named array → π positions
        local = cat(name)
        return np.where(local >= 0, vmap[np.repeat(vm0, lens) + np.maximum(local, 0)], -1)

    def slots(name, lens):
        return cat(name) + np.repeat(slot0, lens)

    code = cat("code", np.int8)
    per_op = lambda off: np.repeat(off, n_ops)  # noqa: E731
    a, b, c = cat("a"), cat("b"), cat("c")
    slot_off = per_op(slot0)
    a_off = np.select(
        [code == LOAD, code == CONST, code == SUM],
        [
            per_op(starts(edges)),
            per_op(starts(lengths("consts"))),
            per_op(starts(lengths("sum_args"))),
        ],
        slot_off,
    )
    n_x, n_rows, n_exits = lengths("x_kind"), lengths("row_slot"), lengths("exit_slot")
    arrays = {
        "unit_kind": cat("unit_kind", np.int8),
        "code": code,
        "a": a + a_off,
        "b": np.where((b >= 0) & (code != SUM), b + slot_off, b),
        "c": np.where(code == FMA, c + slot_off, c),
        "consts": cat("consts", np.float64),
        "sum_args": slots("sum_args", lengths("sum_args")),
        "x_kind": cat("x_kind", np.int8),
        "x_u": vertex_ids("x_u", n_x),
        "x_v": vertex_ids("x_v", n_x),
        "x_coef": slots("x_coef", n_x),
        "row_dst": vertex_ids("row_dst", n_rows),
        "row_slot": slots("row_slot", n_rows),
        "exit_dst": vertex_ids("exit_dst", n_exits),
        "exit_slot": slots("exit_slot", n_exits),
        "unit_ptr": np.concatenate([[0], np.cumsum(k)]),
        "unit_xptr": np.concatenate([[0], np.cumsum(n_x)]),
        "unit_optr": np.concatenate([[0], np.cumsum(n_ops)]),
    }
    sig = cat("sigma")
    sigma = np.full(n, -1, dtype=np.int64)
    sigma[:n_internal] = np.where(sig >= 0, sig + np.repeat(slot0, k), -1)
    arrays["sigma"] = sigma
    for name in ("row_ptr", "exit_ptr"):
        per_vertex = np.zeros(n, dtype=np.int64)
        per_vertex[:n_internal] = _unit_diffs(cat(name), k)
        arrays[name] = np.concatenate([[0], np.cumsum(per_vertex)])
    if d.edges is not None:  # every unit's edges, gathered by decompose already
        vptr, dst, base, coef = d.edges
        out_deg = np.diff(vptr)
    else:
        units = [{"ptr": u.ptr, "dst": u.dst, "base": u.base} for u in d.units]
        out_deg = _unit_diffs(cat("ptr", np.int64, units), k)
        dst, base = cat("dst", np.int64, units), cat("base", np.float64, units)
        coef = np.concatenate([u.coef for u in d.units] or [np.zeros((0, d.n_params))])
    arrays["input_base"] = np.asarray(base, dtype=np.float64)
    arrays["input_coef"] = np.asarray(coef, dtype=np.float64).reshape(int(edges.sum()), d.n_params)
    arrays["input_src"] = np.repeat(np.arange(n_internal), out_deg)
    arrays["input_dst"] = vmap[np.repeat(vm0, edges) + dst]
    kinds = np.full(n, VERTEX_ABSORBING, dtype=np.int8)
    kinds[:n_internal] = VERTEX_TRANSIENT
    if d.units and d.units[0].kind == 1:
        kinds[0] = VERTEX_START
    arrays["vertex_kind"] = kinds
    arrays["n_params"] = np.array(d.n_params)
    arrays["states"] = d.states.copy()
    return Trace(arrays, _copy=False, _check=False)
