"""Evaluate traces with the compiled replay kernel: moments and their Jacobian.

:class:`CompiledTrace` holds a trace's arrays in the flat form the kernel reads
(built once per trace and kept on it). :func:`moments` and :func:`moments_and_jacobian`
split a batch of θ into chunks, one per thread (the kernel releases the GIL); each chunk
is evaluated in blocks of :data:`LANES` θ with θ innermost (one θ alone runs scalar
code). Memory is bounded by the block, never by the batch: one unit's values plus
``R·k`` vectors of ``n_vertices·lanes`` (twice that for the Jacobian) per thread.

The thread count follows the configured worker count (``configure(n_workers=...)``).
numba compiles the kernel on first use and caches the machine code on disk (next to the
package, or in numba's user cache directory), so a fresh process loads it instead of
compiling again (about 10 s the first time, 0.5 s to load).

This module imports numba; ``import phasetrace`` does not import it.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import queue
import threading
import time

import numpy as np

from . import _kernel_impl as impl
from ._args import ZeroRatePlan, edge_rates, not_finite_error, zero_rate_plan
from .errors import TraceFormatError
from .ops import (
    CONST,
    FMA,
    LOAD,
    SUM,
    UNIT_SOLVE,
    VERTEX_ABSORBING,
    VERTEX_START,
    VERTEX_TRANSIENT,
)

#: θ per block in batches (a compile-time constant of the batched kernel, one of
#: ``_kernel_impl.LANE_CHOICES``). Measured on two_island(50, 200), per θ: 16 lanes run
#: 2–4× faster than scalar code and 15–25 % faster than 8.
LANES = 16
#: Smaller batches run one θ at a time (a block of 16 costs about four scalar runs).
MIN_BATCH_FOR_LANES = 4
#: Vectors of ``n_vertices`` above this many bytes per thread make a batch run scalar.
BLOCK_BYTES = 512 * 1024**2
#: Smallest number of θ worth a thread of its own.
MIN_THETAS_PER_THREAD = 16
#: With fewer θ than that: smallest number of reward vectors worth a thread of its own.
MIN_REWARDS_PER_THREAD = 8
#: One θ on a trace of at least this much work (ops, plus ``k³/3`` per solve block of
#: ``k`` states): its units are replayed, and its solve blocks factorised, on all threads
#: first (they are independent), then solved in order (two_island(200) has 180k ops).
PARALLEL_REPLAY_MIN_OPS = 50_000
#: For one θ, every solve block's factors are kept (so a Jacobian's adjoint and the
#: threads of many reward vectors reuse them) when they take at most this many bytes.
FACTOR_STORE_BYTES = 256 * 1024**2


class CompiledTrace:
    """A trace's arrays as the kernel reads them: contiguous, int32, slots local to units.

    Exits to absorbing vertices are dropped: their targets' values are exactly 0, so they
    add exactly nothing.
    """

    def __init__(self, trace):
        arr = trace.arrays
        self.n_params = trace.n_params
        self.n_vertices = trace.n_vertices
        self.n_ops = trace.n_ops
        self.start = int(np.flatnonzero(arr["vertex_kind"] == VERTEX_START)[0])
        self.transient = arr["vertex_kind"] == VERTEX_TRANSIENT
        unit_optr = arr["unit_optr"]
        self.max_unit_ops = int(np.diff(unit_optr).max()) if unit_optr.size > 1 else 0
        self.prog, local = _local_program(arr, self.n_params)
        exit_ptr, exit_dst, exit_slot = _live_exits(arr)
        sigma = arr["sigma"]
        self.tape = (
            _i32(arr["unit_ptr"]),
            _i32(arr["unit_xptr"]),
            exit_ptr,
            exit_dst,
            _i32(local[exit_slot]),
            np.ascontiguousarray(arr["x_kind"], dtype=np.int8),
            _i32(arr["x_u"]),
            _i32(arr["x_v"]),
            _i32(local[arr["x_coef"]]),
            _i32(arr["row_ptr"]),
            _i32(arr["row_dst"]),
            _i32(local[arr["row_slot"]]),
            _i32(np.where(sigma >= 0, local[np.maximum(sigma, 0)], -1)),
            np.ascontiguousarray(arr["unit_kind"], dtype=np.int8),
        )
        sizes = np.diff(arr["unit_ptr"])
        solved = arr["unit_kind"] == UNIT_SOLVE
        #: States of the largest solve block (0: none); its factors take k² values.
        self.max_block = int(sizes[solved].max()) if solved.any() else 0
        #: Entries of all solve blocks' factors (Σ k²) at one θ.
        self.block_entries = int((sizes[solved].astype(np.int64) ** 2).sum())
        #: Work per unit for one θ: its ops, and ``k³/3`` for a solve block.
        self.unit_work = np.diff(unit_optr) + np.where(solved, sizes.astype(float) ** 3 / 3, 0)
        #: The solve blocks' share of it.
        self.block_work = float((sizes[solved].astype(float) ** 3 / 3).sum())
        self.grads = _gradient_edges(arr, self.transient, self.n_params)

    def lanes(self, batch: int, vectors: int) -> int:
        """θ per block: :data:`LANES` for a batch, 1 for one θ, when memory is short (the
        kernel keeps ``vectors`` arrays of ``n_vertices`` per lane), or when factorising
        solve blocks is most of the work (it runs one lane at a time, and lanes only add
        strided access to its solves: measured 15 % slower per θ on block-counting models)."""
        if batch < MIN_BATCH_FOR_LANES or 8 * LANES * vectors * self.n_vertices > BLOCK_BYTES:
            return 1
        if self.block_work > self.n_ops:
            return 1
        return LANES


def _i32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int32)


def _local_program(arr, n_params: int):
    """The weight program with slot operands local to their unit.

    Returns the kernel's ``prog`` bundle and ``local``, the unit-local position of every
    slot (a unit's slots are one contiguous range, ``unit_optr[u] : unit_optr[u + 1]``).
    """
    code = np.ascontiguousarray(arr["code"], dtype=np.int8)
    a, b, c, sum_args = (np.asarray(arr[n], dtype=np.int64) for n in ("a", "b", "c", "sum_args"))
    unit_optr = np.ascontiguousarray(arr["unit_optr"], dtype=np.int64)
    unit_eptr = np.searchsorted(arr["input_src"], arr["unit_ptr"]).astype(np.int64)
    _check_edge_ops(arr, unit_optr, unit_eptr)
    n = code.shape[0]
    local = np.arange(n) - np.repeat(unit_optr[:-1], np.diff(unit_optr))
    reads = (code != LOAD) & (code != CONST) & (code != SUM)
    fma = code == FMA
    n_edges = arr["input_base"].size
    coef = np.asarray(arr["input_coef"], dtype=np.float64).reshape(n_edges, n_params)
    # A copy always (coef.T of one parameter is a view of the read-only trace array): the
    # kernel's signature, and so what numba compiles, must not depend on n_params.
    prog = (
        unit_optr,
        unit_eptr,
        code,
        _i32(np.where(reads, local[np.where(reads, a, 0)], a)),
        _i32(np.where(reads, local[np.where(reads, b, 0)], b)),
        _i32(np.where(fma, local[np.where(fma, c, 0)], c)),
        np.ascontiguousarray(arr["consts"], dtype=np.float64),
        _i32(local[sum_args]),
        np.ascontiguousarray(arr["input_base"], dtype=np.float64),
        np.array(coef.T, order="C"),
    )
    return prog, local


def _check_edge_ops(arr, unit_optr: np.ndarray, unit_eptr: np.ndarray) -> None:
    """Check the layout the kernel relies on: each unit's first ops are its edges' rates.

    The recorder emits them so (one LOAD per parameterised edge, one CONST holding the
    rate of a constant edge, in edge order); a trace that is laid out otherwise is refused.
    """
    m = np.diff(unit_eptr)
    ops = np.repeat(unit_optr[:-1], m) + np.arange(int(m.sum())) - np.repeat(unit_eptr[:-1], m)
    edges = np.arange(int(m.sum()))
    code, a = arr["code"][ops], arr["a"][ops]
    coef = arr["input_coef"].reshape(edges.size, int(arr["n_params"]))
    is_load = (code == LOAD) & (a == edges)
    is_const = (code == CONST) & ~coef.any(axis=1)
    if is_const.any():
        const_ok = arr["consts"][a[is_const]] == arr["input_base"][edges[is_const]]
        is_const[is_const] = const_ok
    if not np.all((unit_optr[1:] - unit_optr[:-1]) >= m) or not np.all(is_load | is_const):
        raise TraceFormatError("trace layout: a unit's first ops are not its edges' rates")


def _gradient_edges(arr, transient: np.ndarray, n_params: int):
    """``(unit_gptr, src, dst, coef)``: edges whose rate depends on θ, grouped by unit."""
    src = arr["input_src"]
    coef = np.asarray(arr["input_coef"], dtype=np.float64).reshape(src.size, n_params)
    mask = coef.any(axis=1) & transient[src] if n_params else np.zeros(src.size, bool)
    edges = np.flatnonzero(mask)  # sources increase with the edge index: grouped by unit
    gptr = np.searchsorted(src[edges], arr["unit_ptr"])
    return (
        np.ascontiguousarray(gptr, dtype=np.int64),
        _i32(src[edges]),
        _i32(arr["input_dst"][edges]),
        np.ascontiguousarray(coef[edges]).reshape(len(edges), n_params),
    )


def _live_exits(arr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exit arrays without entries that point to absorbing vertices."""
    ptr, dst, slot = arr["exit_ptr"], arr["exit_dst"], arr["exit_slot"]
    keep = arr["vertex_kind"][dst] != VERTEX_ABSORBING
    owner = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))
    per_vertex = np.bincount(owner[keep], minlength=ptr.shape[0] - 1)
    new_ptr = np.concatenate([[0], np.cumsum(per_vertex)])
    return _i32(new_ptr), _i32(dst[keep]), np.asarray(slot[keep], dtype=np.int64)


def compiled(trace) -> CompiledTrace:
    """The trace's :class:`CompiledTrace`, built on first use and kept on the trace."""
    ct = trace.__dict__.get("_compiled")
    if ct is None:
        ct = trace.__dict__["_compiled"] = CompiledTrace(trace)
    return ct


# -- threads --------------------------------------------------------------------------------
#: A piece of the work is evaluated in chunks that take about this long (the first chunk is
#: one block of θ; later ones are sized from the time it took), so that an interrupt stops
#: the kernel's threads within about that time.
CHUNK_SECONDS = 0.1
#: The next chunk is at most this many times the last (a first chunk's time is noisy).
CHUNK_GROWTH = 8

# Kernel threads: daemons that take tasks from one queue and are never replaced, so any
# number of threads may call the kernel at once, before and after configure() changes
# the thread count (the pool only grows). A forked child starts without them.
_tasks: queue.SimpleQueue = queue.SimpleQueue()
_threads_started: list[threading.Thread] = []
_pool_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """The child of a fork has none of the parent's threads: start afresh on first use."""
    global _tasks, _threads_started, _pool_lock
    _tasks, _threads_started, _pool_lock = queue.SimpleQueue(), [], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _serve(tasks: queue.SimpleQueue) -> None:
    while True:
        job, piece = tasks.get()
        job.run(piece)


def _ensure_threads(n: int) -> queue.SimpleQueue:
    """At least ``n`` kernel threads; returns the queue they serve."""
    with _pool_lock:
        while len(_threads_started) < n:
            t = threading.Thread(
                target=_serve,
                args=(_tasks,),
                name=f"phasetrace-kernel-{len(_threads_started)}",
                daemon=True,  # an interrupted call leaves none running at exit
            )
            t.start()
            _threads_started.append(t)
        return _tasks


def _threads() -> int:
    from .executors.base import resolve_n_workers
    from .settings import resolve

    return resolve_n_workers(resolve().n_workers)


def _pieces(batch: int, rewards: int) -> list[tuple[slice, slice]]:
    """Split the work into one piece per thread: over θ when the batch is large enough,
    else over the reward vectors (one θ with many rewards, such as an SFS)."""
    n_theta = batch // MIN_THETAS_PER_THREAD
    n_reward = rewards // MIN_REWARDS_PER_THREAD
    if max(n_theta, n_reward) < 2:
        return [(slice(0, batch), slice(0, rewards))]
    threads = _threads()
    if n_theta >= 2:
        n = min(threads, n_theta)
        cuts = np.linspace(0, batch, n + 1).astype(int).tolist()
        return [(slice(lo, hi), slice(0, rewards)) for lo, hi in itertools.pairwise(cuts)]
    n = min(threads, n_reward)
    cuts = np.linspace(0, rewards, n + 1).astype(int).tolist()
    return [(slice(0, batch), slice(lo, hi)) for lo, hi in itertools.pairwise(cuts)]


class _Job:
    """One call's pieces on the kernel threads: the first error, how many pieces are
    left, and ``stop``, set when the caller gives up or a piece fails (the chunks not yet
    started are then skipped)."""

    def __init__(self, fn, n: int) -> None:
        self.fn = fn
        self.stop = threading.Event()
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self._left = n
        self._lock = threading.Lock()

    def forget(self, n: int) -> None:
        """``n`` pieces will not come (the caller was interrupted before queueing them)."""
        self._finished(n)

    def _finished(self, n: int) -> None:
        with self._lock:
            self._left -= n
            if self._left <= 0:
                self.done.set()

    def run(self, piece) -> None:
        """Run one piece on a kernel thread (never raises: errors go to the caller)."""
        try:
            if not self.stop.is_set():
                _run_piece(self.fn, piece, self.stop)
        except BaseException as exc:  # handed to the calling thread
            self.errors.append(exc)
            self.stop.set()
        finally:
            self._finished(1)


def _run_piece(fn, piece: tuple, stop: threading.Event | None) -> None:
    """``fn(*piece)``, in chunks of about :data:`CHUNK_SECONDS` when the piece is a pair
    of slices (θ, reward vectors), none started once ``stop`` is set.

    Between chunks the interpreter runs signal handlers, so Ctrl-C reaches a caller that
    runs the kernel in its own thread within about a chunk. Each θ and each reward vector
    is evaluated on its own, so chunking does not change a bit of the results.
    """
    ths, rs = piece
    if not isinstance(ths, slice):
        fn(*piece)
        return
    if ths.stop - ths.start > LANES:  # over θ, in whole blocks of lanes
        lo, hi, step = ths.start, ths.stop, LANES

        def part(a: int, b: int) -> tuple[slice, slice]:
            return slice(a, b), rs
    elif rs.stop - rs.start > MIN_REWARDS_PER_THREAD:  # few θ, many reward vectors
        lo, hi, step = rs.start, rs.stop, MIN_REWARDS_PER_THREAD

        def part(a: int, b: int) -> tuple[slice, slice]:
            return ths, slice(a, b)
    else:
        fn(*piece)
        return
    size = step
    while lo < hi:
        if stop is not None and stop.is_set():
            return
        n = min(size, hi - lo)
        t0 = time.perf_counter()
        fn(*part(lo, lo + n))
        lo += n
        took = time.perf_counter() - t0
        want = size * CHUNK_GROWTH if took <= 0 else int(size * CHUNK_SECONDS / took)
        size = max(step, min(want, size * CHUNK_GROWTH) // step * step)


def _run(fn, pieces: list[tuple]) -> None:
    """Run ``fn(*piece)`` for every piece, in parallel: the first in the calling thread,
    the others on the kernel's threads.

    If the caller is interrupted (Ctrl-C) or a piece raises, the chunks not yet started
    are dropped and the ones running are waited for (a chunk is short), so no abandoned
    work slows the next call down.
    """
    if len(pieces) == 1:
        _run_piece(fn, pieces[0], None)
        return
    others = len(pieces) - 1
    job = _Job(fn, others)
    tasks = _ensure_threads(others)
    queued = 0
    try:
        for piece in pieces[1:]:
            tasks.put((job, piece))
            queued += 1
        _run_piece(fn, pieces[0], job.stop)
        job.done.wait()
    except BaseException:  # KeyboardInterrupt, or this thread's piece failed
        job.stop.set()
        job.forget(others - queued)
        job.done.wait()
        raise
    if job.errors:
        raise job.errors[0]


# -- evaluation -------------------------------------------------------------------------------
@functools.cache
def _factorials(k: int) -> np.ndarray:
    out = np.array([math.factorial(j) for j in range(1, k + 1)], dtype=np.float64)
    out.flags.writeable = False
    return out


def moments(trace, thetas: np.ndarray, rewards: np.ndarray, k: int, *, check: bool = True):
    """``E[Y_r^j]`` for θ (B, P) and rewards (R, V): shape (B, R, k).

    ``rewards`` must be zero off transient vertices. An edge of rate exactly 0 is allowed
    (it contributes nothing). With ``check``, a θ at which a rate is negative or not
    finite, a vertex that is reached cannot be absorbed, or a result is not finite
    (overflow) raises :class:`~phasetrace.errors.InvalidParameterError`; without, that θ's
    results are NaN.
    """
    seq = np.repeat(np.arange(rewards.shape[0])[:, None], k, axis=1)
    return passes(trace, thetas, rewards, seq, _factorials(k), check=check)


def passes(trace, thetas, rewards, seq, scale, *, check: bool = True) -> np.ndarray:
    """``out[b, r, j] = scale[j]·z_{j+1}[S]``, ``z_{j+1} = F(rewards[seq[r, j]] ∘ z_j)``.

    The general form of :func:`moments` (cross moments use sequences of two reward
    vectors). Shape (B, R, k) for ``seq`` of shape (R, k).
    """
    ct = compiled(trace)
    B = thetas.shape[0]
    R, k = seq.shape
    out = np.empty((B, R, k))
    bad = np.full(B, -1, dtype=np.int64)
    rewards = _vertex_major(rewards)
    seq = np.ascontiguousarray(seq, dtype=np.int64)
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    pieces = _pieces(B, R)
    _check_memory(ct, pieces, k, 0, B)
    prepared = _prepare_one(ct, thetas, bad, pieces)

    def piece(ths: slice, rs: slice) -> None:
        th = thetas[ths]
        part = np.empty((th.shape[0], rs.stop - rs.start, k))
        lanes = ct.lanes(th.shape[0], part.shape[1] * k)
        vals, full, fac = _workspace(ct, prepared, lanes)
        flags = impl.moments_chunk(
            ct.prog, ct.tape, ct.start, rewards, np.ascontiguousarray(seq[rs]), scale, th,
            part, vals, full, fac, lanes,
        )  # fmt: skip
        np.maximum(bad[ths], flags, out=bad[ths])
        out[ths, rs] = part

    _run(piece, pieces)

    def redo(b: int, prog: tuple) -> tuple[np.ndarray]:
        part = np.empty((1, R, k))
        impl.moments_chunk(
            prog, ct.tape, ct.start, rewards, seq, scale, thetas[b : b + 1], part,
            np.empty(ct.max_unit_ops), False, impl.no_factors(), 1,
        )  # fmt: skip
        return (part[0],)

    return _finish(trace, bad, thetas, check, redo, out)


def moments_and_jacobian(
    trace, thetas: np.ndarray, rewards: np.ndarray, k: int, *, check: bool = True
):
    """Moments (B, R, k) and their Jacobian (B, R, k, P) with respect to θ.

    As :func:`moments`; in addition, at a θ where a rate is 0 and raising it would make
    states reachable that are not absorbed for sure (the moments jump there), the
    derivatives in the parameters of that rate do not exist: ``check`` raises, else
    those entries are NaN.
    """
    ct = compiled(trace)
    B, P = thetas.shape
    R = rewards.shape[0]
    out = np.empty((B, R, k))
    jac = np.empty((B, R, k, P))
    bad = np.full(B, -1, dtype=np.int64)
    fact = _factorials(k)
    pieces = _pieces(B, R)
    _check_memory(ct, pieces, k, P, B)
    prepared = _prepare_one(ct, thetas, bad, pieces, jacobian=True)

    def piece(ths: slice, rs: slice) -> None:
        th = thetas[ths]
        n_r = rs.stop - rs.start
        part, part_jac = np.empty((th.shape[0], n_r, k)), np.empty((th.shape[0], n_r, k, P))
        lanes = ct.lanes(th.shape[0], 2 * n_r * k)
        vals, full, fac = _workspace(ct, prepared, lanes)
        flags = impl.jacobian_chunk(
            ct.prog, ct.tape, ct.grads, ct.start, _vertex_major(rewards[rs]), fact, th,
            part, part_jac, vals, full, fac, lanes,
        )  # fmt: skip
        np.maximum(bad[ths], flags, out=bad[ths])
        out[ths, rs], jac[ths, rs] = part, part_jac

    _run(piece, pieces)

    def redo(b: int, prog: tuple) -> tuple[np.ndarray, np.ndarray]:
        part, part_jac = np.empty((1, R, k)), np.empty((1, R, k, P))
        impl.jacobian_chunk(
            prog, ct.tape, ct.grads, ct.start, _vertex_major(rewards), fact, thetas[b : b + 1],
            part, part_jac, np.empty(ct.max_unit_ops), False, impl.no_factors(), 1,
        )  # fmt: skip
        return part[0], part_jac[0]

    return _finish(trace, bad, thetas, check, redo, out, jac)


def _check_memory(ct: CompiledTrace, pieces, k: int, P: int, B: int) -> None:
    """Refuse an evaluation whose work arrays would not fit in the free memory.

    Per piece (thread): ``k`` moment vectors of ``n_vertices`` per reward vector and lane
    (``2k`` with a Jacobian, ``P`` > 0), one unit's values per lane and one lane of the
    largest solve block's factors; for one θ, every unit's values and the solve blocks'
    factors.
    """
    from ._memory import format_bytes, require

    vectors = 2 * k if P else k
    needed = 0.0  # the outputs are allocated already
    for ths, rs in pieces:
        n_r = rs.stop - rs.start
        lanes = ct.lanes(ths.stop - ths.start, n_r * vectors)
        needed += 8.0 * lanes * (vectors * n_r * ct.n_vertices + ct.max_unit_ops)
        needed += 8.0 * ct.max_block**2
    if B == 1:
        needed += 8.0 * (ct.n_ops + ct.block_entries)
    R = max(rs.stop for _, rs in pieces)
    require(
        needed,
        f"evaluating {k} moment(s){' and their derivatives' if P else ''} of {R} reward "
        f"vector(s) for {B} θ on a trace of {ct.n_vertices:,} vertices (largest solve "
        f"block: {ct.max_block:,} states, {format_bytes(8.0 * ct.max_block**2)} per θ)",
        "evaluate fewer reward vectors per call",
    )


def _prepare_one(ct: CompiledTrace, thetas: np.ndarray, bad: np.ndarray, pieces, jacobian=False):
    """For one θ: every unit's values and every solve block's factors, computed on all
    threads first (units are independent), or None where that does not pay.

    It pays on a large trace with several threads, and whenever the trace has solve
    blocks that several pieces (reward vectors split over threads) or a Jacobian's
    adjoint would otherwise factorise again. The factors are kept only within
    :data:`FACTOR_STORE_BYTES`. Marks ``bad`` if a rate is not a positive finite number.
    """
    if thetas.shape[0] != 1:
        return None
    work = float(ct.unit_work.sum())
    reuse = ct.block_entries > 0 and (jacobian or len(pieces) > 1)
    if not reuse and work < PARALLEL_REPLAY_MIN_OPS:
        return None
    n = _threads()
    if not reuse and n < 2:
        return None
    vals = np.empty(ct.n_ops)
    # The factors are kept only for reuse: writing them to fresh memory costs about what
    # factorising again does (page faults), so plain moments factorise where they solve.
    store = reuse and 8 * ct.block_entries <= FACTOR_STORE_BYTES
    fac = impl.factor_store(ct.tape) if store else impl.no_factors()
    n_units = ct.unit_work.size
    cuts = np.searchsorted(np.cumsum(ct.unit_work), np.linspace(0, work, n + 1)[1:-1], "right")
    cuts = [0, *cuts.tolist(), n_units]
    ok = []

    def prepare(lo: int, hi: int) -> None:
        ok.append(impl.prepare_units(ct.prog, ct.tape, lo, hi, thetas, vals, fac))

    _run(prepare, [(lo, hi) for lo, hi in itertools.pairwise(cuts) if hi > lo])
    if not all(ok):
        bad[:] = impl.bad_rates(ct.prog, thetas)
    return vals, fac


def _workspace(ct: CompiledTrace, prepared, lanes: int) -> tuple[np.ndarray, bool, tuple]:
    """The values buffer of one piece and its factors: those prepared for one θ, or a
    fresh one-unit buffer and none (each block factorised where it is solved)."""
    if prepared is not None and lanes == 1:
        return prepared[0], True, prepared[1]
    return np.empty(ct.max_unit_ops * lanes), False, impl.no_factors()


def _vertex_major(rewards: np.ndarray) -> np.ndarray:
    """Rewards (R, V) as the kernel reads them: (V, R), C order (a free reshape for R = 1)."""
    if rewards.shape[0] == 1 and rewards.dtype == np.float64 and rewards.flags.c_contiguous:
        return rewards.reshape(-1, 1)
    return np.ascontiguousarray(rewards.T, dtype=np.float64)


def _finish(trace, bad, thetas, check: bool, redo, *results):
    """Deal with the rare θ: zero rates (re-evaluated), bad rates, results that overflowed.

    ``bad[b] >= 0`` marks a θ at which the kernel saw a rate that is not a positive
    finite number. If the rates are only 0 (allowed), :func:`~phasetrace._args.zero_rate_plan`
    says which of them cannot matter and ``redo(b, prog)`` evaluates θ ``b`` again with
    those set to 1 (``prog`` carries the rates as constants), so no ``0·inf`` or ``0/0``
    reaches a value that matters. Everything else raises (``check``) or becomes NaN.
    """
    flagged = bool(bad.size) and bad.max() >= 0
    if not flagged and all(np.isfinite(res).all() for res in results):  # the common case
        return results[0] if len(results) == 1 else results
    nan_rows = np.zeros(thetas.shape[0], dtype=bool)
    nan_cols: dict[int, np.ndarray] = {}  # θ → parameters without a derivative
    if flagged:
        ct = compiled(trace)
        for b in np.flatnonzero(bad >= 0).tolist():
            rates = edge_rates(trace, thetas[b : b + 1])[0]
            plan = zero_rate_plan(trace, thetas[b], rates)
            if plan is None:  # every rate is > 0 and finite after all: nothing to redo
                continue
            if not isinstance(plan, ZeroRatePlan):  # an InvalidParameterError
                if check:
                    raise plan
                nan_rows[b] = True
                continue
            prog = (*ct.prog[:8], plan.rates, np.zeros_like(ct.prog[9]))
            for res, part in zip(results, redo(b, prog), strict=True):
                res[b] = part
            if len(results) > 1 and plan.undefined.any():
                if check:
                    raise plan.undefined_error
                nan_cols[b] = plan.undefined
    ok = np.ones(thetas.shape[0], dtype=bool)
    for i, res in enumerate(results):
        flat = res.reshape(res.shape[0], -1)
        if i and nan_cols:  # leave out the entries that are NaN on purpose
            flat = flat.copy()
            for b, cols in nan_cols.items():
                res_b = flat[b].reshape(res.shape[1:])
                res_b[..., cols] = 0.0
        ok &= np.isfinite(flat).all(axis=1) | nan_rows
    if not ok.all():
        b = int(np.flatnonzero(~ok)[0])
        if check:
            if not np.isfinite(results[0][b]).all():
                raise not_finite_error(thetas[b], results[0][b])
            raise not_finite_error(thetas[b], results[1][b], "derivatives")
        nan_rows |= ~ok
    for res in results:
        res[nan_rows] = np.nan
    for b, cols in nan_cols.items():
        results[1][b][..., cols] = np.nan
    return results[0] if len(results) == 1 else results


def transposed_solve(trace, thetas: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``seeds[b, r]·U(θ_b)`` for row vectors ``seeds`` (B, R, V), ``U = (−S)⁻¹``.

    ``seeds`` must be zero off transient vertices; the result is meaningful on transient
    vertices (``(s·U)_w`` is the expected time spent in ``w`` when the chain starts from
    the distribution ``s``); other entries are scratch. One replay and one transposed
    solve per θ, whatever ``R`` is. Returns ``(out, bad)``: ``bad[b] >= 0`` names an edge
    whose rate at θ_b is not a positive finite number (``out[b]`` is then meaningless).

    Examples
    --------
    >>> import numpy as np, phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    >>> seeds = np.zeros((1, 1, tr.n_vertices)); seeds[0, 0, tr.vertex_index([3])] = 1.0
    >>> out, bad = transposed_solve(tr, np.array([[1.0]]), seeds)
    >>> float(out[0, 0, tr.vertex_index([2])]), int(bad[0])    # time with 2 lineages: 1/C(2, 2)
    (1.0, -1)
    """
    ct = compiled(trace)
    B, R, V = seeds.shape
    work = np.ascontiguousarray(np.swapaxes(seeds, 1, 2), dtype=np.float64).reshape(B, V * R)
    bad = impl.transposed_chunk(
        ct.prog, ct.tape, np.ascontiguousarray(thetas, dtype=np.float64), work,
        np.empty(max(ct.max_unit_ops, 1)), R,
    )  # fmt: skip
    return np.swapaxes(work.reshape(B, V, R), 1, 2), bad
