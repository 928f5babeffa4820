"""Structural checks of trace arrays: everything the kernel relies on, checked before use.

The compiled kernel reads trace arrays without bounds checks, so arrays that did not come
from this process's recorder (a cache entry, a saved ``.npz`` file, a user's dict) are
checked here first. The checks are the invariants of ``docs/op-format.md``:

- array names, dimensions and dtype kinds;
- opcodes in range; every operand slot earlier than its op and inside its own unit's
  slots; ``LOAD`` reads an edge of its own unit; ``CONST`` and ``SUM`` ranges in bounds;
- each unit's first ops are its edges' rates, in edge order (the kernel's layout);
- ``sigma``, the x-program, the rows and the exits name vertices and slots of their own
  unit; every final row points forward (to a later vertex of the unit), every exit
  downstream (past the unit);
- a solve block (``unit_kind``) has no x-program and does not hold the start; its rows
  (its internal edges) point to other vertices of the unit, increasing within a row;
- the vertex and edge tables are consistent with the units.

A trace that passes can be replayed without reading or writing out of bounds. These checks
cannot tell a *changed* program from the recorded one (an ``ADD`` where a ``MUL`` was is
still well formed); ``phasetrace cache verify`` re-records entries for that.

All functions raise :class:`~phasetrace.errors.TraceFormatError` naming the first
violated rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import TraceFormatError
from .ops import (
    ADD,
    CONST,
    DIV,
    FMA,
    LOAD,
    MUL,
    SUM,
    TRACE_ARRAYS,
    UNIT_ARRAYS,
    UNIT_SOLVE,
    UNIT_TAPED,
    VERTEX_ABSORBING,
    VERTEX_START,
    VERTEX_TRANSIENT,
    X_AXPY,
    X_DIV,
)

__all__ = ["check_trace_arrays", "check_trace_matches_graph", "check_unit_arrays"]

_TWO_D = {"states", "input_coef"}
_ZERO_D = {"n_params"}


def _fail(message: str):
    raise TraceFormatError(f"malformed trace: {message}")


def _require(ok, message: str) -> None:
    if not bool(np.all(ok)):
        _fail(message)


def _check_shapes(arrays: Mapping[str, np.ndarray], names: Mapping[str, type]) -> None:
    missing = sorted(set(names) - set(arrays))
    if missing:
        _fail(f"arrays missing: {missing}")
    for name, dt in names.items():
        arr = arrays[name]
        if not isinstance(arr, np.ndarray):
            _fail(f"{name} is a {type(arr).__name__}, not an array")
        want = 0 if name in _ZERO_D else 2 if name in _TWO_D else 1
        if arr.ndim != want:
            _fail(f"{name} has {arr.ndim} dimensions, expected {want}")
        kind = np.dtype(dt).kind
        ok = arr.dtype.kind in "iu" if kind in "iu" else arr.dtype.kind == kind
        if not ok:
            _fail(f"{name} has dtype {arr.dtype}, expected {np.dtype(dt)}")


def _check_ptr(ptr: np.ndarray, length: int, total: int, name: str) -> None:
    _require(ptr.shape[0] == length, f"{name} has {ptr.shape[0]} entries, expected {length}")
    _require(ptr.shape[0] > 0 and ptr[0] == 0, f"{name} does not start at 0")
    _require(np.diff(ptr) >= 0, f"{name} decreases")
    _require(ptr[-1] == total, f"{name} ends at {ptr[-1]}, expected {total}")


def _owner(ptr: np.ndarray) -> np.ndarray:
    """For each element of the ranges ``ptr[u]:ptr[u+1]``, its range ``u``."""
    return np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))


def _in(values, lo, hi) -> np.ndarray:
    return (values >= lo) & (values < hi)


def _check_ops(arr, optr: np.ndarray, eptr: np.ndarray) -> None:
    code = arr["code"].astype(np.int64)
    a, b, c = (arr[n].astype(np.int64) for n in ("a", "b", "c"))
    n = code.shape[0]
    _require((a.shape[0] == n) & (b.shape[0] == n) & (c.shape[0] == n), "a, b, c, code lengths")
    _require(_in(code, LOAD, ADD + 1), "opcode out of range")
    unit = _owner(optr)
    j = np.arange(n)
    lo = optr[unit]
    load, const, summ = code == LOAD, code == CONST, code == SUM
    _require(_in(a[load], eptr[unit[load]], eptr[unit[load] + 1]), "LOAD of another unit's edge")
    _require(_in(a[const], 0, arr["consts"].shape[0]), "CONST index out of range")
    two = (code == DIV) | (code == MUL) | (code == ADD) | (code == FMA)
    _require(_in(a[two], lo[two], j[two]) & _in(b[two], lo[two], j[two]), "operand slot range")
    fma = code == FMA
    _require(_in(c[fma], lo[fma], j[fma]), "FMA operand slot range")
    sa, sb = a[summ], b[summ]
    n_args = arr["sum_args"].shape[0]
    _require((sa >= 0) & (sb >= 1) & (sa + sb <= n_args), "SUM argument range")
    idx = np.repeat(sa, sb) + np.arange(int(sb.sum())) - np.repeat(np.cumsum(sb) - sb, sb)
    args = arr["sum_args"].astype(np.int64)[idx]
    _require(_in(args, np.repeat(lo[summ], sb), np.repeat(j[summ], sb)), "SUM operand range")


def _check_edge_layout(arr, optr: np.ndarray, eptr: np.ndarray, n_params: int) -> None:
    m = np.diff(eptr)
    _require(np.diff(optr) >= m, "a unit has fewer ops than edges")
    ops = np.repeat(optr[:-1], m) + np.arange(int(m.sum())) - np.repeat(eptr[:-1], m)
    edges = np.arange(int(m.sum()))
    code, a = arr["code"][ops], arr["a"][ops].astype(np.int64)
    coef = arr["input_coef"].reshape(edges.size, n_params)
    is_load = (code == LOAD) & (a == edges)
    is_const = (code == CONST) & ~coef.any(axis=1)
    if is_const.any():
        same = arr["consts"][a[is_const]] == arr["input_base"][edges[is_const]]
        is_const[is_const] = same
    _require(is_load | is_const, "a unit's first ops are not its edges' rates")


def _check_solve(arr, optr, vptr, xptr, n_vertices: int) -> None:
    n_internal = int(vptr[-1])
    v_unit = _owner(vptr)
    kinds = arr["vertex_kind"]
    unit_kind = arr["unit_kind"].astype(np.int64)
    _require(unit_kind.shape[0] == vptr.shape[0] - 1, "unit_kind length")
    _require((unit_kind == UNIT_TAPED) | (unit_kind == UNIT_SOLVE), "unit kind out of range")
    block = unit_kind == UNIT_SOLVE
    v_block = block[v_unit]
    _require(~v_block | (kinds[:n_internal] != VERTEX_START), "a solve block holds the start")
    sigma = arr["sigma"].astype(np.int64)
    _require(sigma.shape[0] == n_vertices, "sigma length")
    s_int = sigma[:n_internal]
    has_scale = (kinds[:n_internal] != VERTEX_START) & ~v_block
    ok = _in(s_int, optr[v_unit], optr[v_unit + 1])
    _require(np.where(has_scale, ok, (s_int == -1) | ok), "sigma slot range")
    _require(sigma[n_internal:] == -1, "sigma of a vertex outside every unit")

    xk, xu, xv = (arr[n].astype(np.int64) for n in ("x_kind", "x_u", "x_v"))
    xc = arr["x_coef"].astype(np.int64)
    nx = xk.shape[0]
    _require((xu.shape[0] == nx) & (xv.shape[0] == nx) & (xc.shape[0] == nx), "x-program lengths")
    _check_ptr(xptr, vptr.shape[0], nx, "unit_xptr")
    _require(np.diff(xptr)[block] == 0, "a solve block with an x-program")
    xunit = _owner(xptr)
    vlo, vhi = vptr[xunit], vptr[xunit + 1]
    _require((xk == X_AXPY) | (xk == X_DIV), "x-program kind out of range")
    _require(_in(xu, vlo, vhi), "x-program vertex outside its unit")
    axpy = xk == X_AXPY
    _require(_in(xv[axpy], vlo[axpy], vhi[axpy]), "x-program AXPY source outside its unit")
    _require(xv[~axpy] == -1, "x-program DIV with a source vertex")
    _require(_in(xc, optr[xunit], optr[xunit + 1]), "x-program slot outside its unit")

    for kind in ("row", "exit"):
        ptr = arr[f"{kind}_ptr"].astype(np.int64)
        dst, slot = arr[f"{kind}_dst"].astype(np.int64), arr[f"{kind}_slot"].astype(np.int64)
        _require(slot.shape[0] == dst.shape[0], f"{kind} arrays lengths")
        _check_ptr(ptr, n_vertices + 1, dst.shape[0], f"{kind}_ptr")
        _require(ptr[n_internal:] == ptr[n_internal], f"{kind}s of a vertex outside every unit")
        src = _owner(ptr)
        u = v_unit[src]
        _require(_in(slot, optr[u], optr[u + 1]), f"{kind} slot outside its unit")
        if kind == "row":
            taped = ~block[u]
            later = (dst > src) & (dst < vptr[u + 1])
            _require(~taped | later, "row target not later in its unit")
            inside = _in(dst, vptr[u], vptr[u + 1]) & (dst != src)
            _require(taped | inside, "solve block row target outside its unit")
            same_row = src[1:] == src[:-1]
            _require(~same_row | (dst[1:] > dst[:-1]), "row targets not increasing")
        else:
            _require(_in(dst, vptr[u + 1], n_vertices), "exit target not downstream")


def _check_tables(arr, vptr, n_vertices: int, n_params: int) -> np.ndarray:
    """Check the vertex and edge tables; return each unit's edge range (``eptr``)."""
    n_internal = int(vptr[-1])
    kinds = arr["vertex_kind"]
    _require(kinds.shape[0] == n_vertices, "vertex_kind length")
    _require(arr["states"].shape[0] == n_vertices, "states rows")
    want = np.full(n_vertices, VERTEX_ABSORBING)
    want[:n_internal] = VERTEX_TRANSIENT
    start_ok = (kinds[:1] == VERTEX_START) & (n_internal > 0)
    want[:1] = np.where(start_ok, VERTEX_START, want[:1])
    _require(kinds == want, "vertex kinds do not match the units")
    src = arr["input_src"].astype(np.int64)
    n_edges = src.shape[0]
    _require(arr["input_dst"].shape[0] == n_edges, "input_dst length")
    _require(arr["input_base"].shape[0] == n_edges, "input_base length")
    _require(arr["input_coef"].shape == (n_edges, n_params), "input_coef shape")
    _require(_in(src, 0, n_internal), "input_src out of range")
    _require(np.diff(src) >= 0, "input_src not sorted")
    _require(_in(arr["input_dst"], 0, n_vertices), "input_dst out of range")
    return np.searchsorted(src, vptr).astype(np.int64)


def check_trace_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    """Check a whole trace's arrays (as in ``Trace.arrays``) before the kernel reads them.

    Raises
    ------
    TraceFormatError
        Naming the first rule that does not hold.

    Examples
    --------
    >>> import phasetrace as pt
    >>> arrays = dict(pt.record_trace(pt.models.kingman(4)).arrays)
    >>> check_trace_arrays(arrays)
    >>> arrays["a"] = arrays["a"] + 1000
    >>> check_trace_arrays(arrays)
    Traceback (most recent call last):
    ...
    phasetrace.errors.TraceFormatError: malformed trace: LOAD of another unit's edge
    """
    _check_shapes(arrays, TRACE_ARRAYS)
    n_params = int(arrays["n_params"])
    _require(n_params >= 0, "n_params is negative")
    n_vertices = int(arrays["states"].shape[0])
    vptr = arrays["unit_ptr"].astype(np.int64)
    optr = arrays["unit_optr"].astype(np.int64)
    _require(vptr.shape[0] >= 1, "unit_ptr is empty")
    _check_ptr(vptr, vptr.shape[0], int(vptr[-1]), "unit_ptr")
    _require(vptr[-1] <= n_vertices, "unit_ptr past the last vertex")
    _check_ptr(optr, vptr.shape[0], arrays["code"].shape[0], "unit_optr")
    eptr = _check_tables(arrays, vptr, n_vertices, n_params)
    _check_ops(arrays, optr, eptr)
    _check_edge_layout(arrays, optr, eptr, n_params)
    _check_solve(arrays, optr, vptr, arrays["unit_xptr"].astype(np.int64), n_vertices)


def check_unit_arrays(arrays: Mapping[str, np.ndarray], unit) -> None:
    """Check one unit's recorded arrays against the :class:`~phasetrace.scc.WorkUnit`
    they are keyed by: the same checks as :func:`check_trace_arrays`, on local ids.

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.elimination import record_unit
    >>> from phasetrace.scc import decompose
    >>> unit = decompose(pt.models.two_island(3)).units[1]
    >>> check_unit_arrays(record_unit(unit), unit)
    """
    _check_shapes(arrays, UNIT_ARRAYS)
    k, n_vertices = unit.n_internal, unit.n_internal + unit.n_exits
    kinds = np.full(n_vertices, VERTEX_ABSORBING, dtype=np.int8)
    kinds[:k] = VERTEX_TRANSIENT
    if unit.kind == 1:
        kinds[0] = VERTEX_START
    whole = dict(arrays)
    pad = n_vertices - k
    for name in ("row_ptr", "exit_ptr"):
        ptr = arrays[name].astype(np.int64)
        _require(ptr.shape[0] == k + 1, f"{name} has {ptr.shape[0]} entries, expected {k + 1}")
        whole[name] = np.concatenate([ptr, np.full(pad, ptr[-1])])
    sigma = arrays["sigma"].astype(np.int64)
    _require(sigma.shape[0] == k, f"sigma has {sigma.shape[0]} entries, expected {k}")
    _require(arrays["unit_kind"].shape[0] == 1, "unit_kind of a unit has one entry")
    whole.update(
        sigma=np.concatenate([sigma, np.full(pad, -1)]),
        unit_ptr=np.array([0, k]),
        unit_xptr=np.array([0, arrays["x_kind"].shape[0]]),
        unit_optr=np.array([0, arrays["code"].shape[0]]),
        n_params=np.array(unit.n_params),
        states=np.zeros((n_vertices, 0), dtype=np.int64),
        vertex_kind=kinds,
        input_base=unit.base,
        input_coef=unit.coef.reshape(unit.n_edges, unit.n_params),
        input_src=np.repeat(np.arange(k), np.diff(unit.ptr)),
        input_dst=unit.dst,
    )
    check_trace_arrays(whole)


def check_trace_matches_graph(trace, graph) -> None:
    """Check that a whole trace was recorded from a graph like ``graph``: the same number
    of vertices, edges and parameters and the same set of states.

    Examples
    --------
    >>> import phasetrace as pt
    >>> g = pt.models.kingman(4)
    >>> check_trace_matches_graph(pt.record_trace(g), g)
    """
    arr = trace.arrays
    graph_arrays = graph.arrays()
    if (
        arr["states"].shape != graph_arrays.states.shape
        or int(arr["n_params"]) != graph.n_params
        or arr["input_src"].shape[0] != graph_arrays.dst.shape[0]
    ):
        _fail("its vertex, edge or parameter count differs from the graph's")
    from .graph import _state_order  # lexsort: np.unique(axis=0) sorts bytes, 5× slower

    mine, theirs = arr["states"], graph_arrays.states
    mine, theirs = mine[_state_order(mine)], theirs[_state_order(theirs)]
    if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
        _fail("its states differ from the graph's")
