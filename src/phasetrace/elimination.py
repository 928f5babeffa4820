"""The recorder: graph elimination of one work unit as a straight-line program.

This is the function workers run. It imports numpy and nothing heavier (never JAX).

The program is in SSA form: op ``j`` writes slot ``j`` and reads only earlier slots.

========  =====================================  ===================================
opcode    value of the slot                      operands
========  =====================================  ===================================
LOAD      ``base[e] + Σ_i coef[e, i]·θ_i``        ``a`` = edge index ``e`` of the unit
CONST     ``consts[a]``                           ``a`` = index into ``consts``
SUM       ``((s₀ + s₁) + s₂) + …``                ``sum_args[a : a + b]``
DIV       ``s_a / s_b``
MUL       ``s_a · s_b``
FMA       ``s_a + s_b · s_c`` (two roundings)
ADD       ``s_a + s_b``
========  =====================================  ===================================

Rows are recorded **unnormalised** (a scaled form of ``elimination.md`` §3): vertex ``v``
keeps raw entries ``r_vw`` and a scale ``σ_v`` with ``p_vw = r_vw / σ_v``. Initially
``r = w`` (the rates) and ``σ_v = λ_v``. Bypassing pivot ``v`` for a later parent ``u``
adds ``(r_uv/σ_v)·r_vw`` to ``r_uw``; a self-loop sets ``σ_u`` to the sum of ``u``'s
remaining raw entries, which is ``σ_u·(1 − s)`` computed from positive terms only (the
GTH trick of §3). No row is ever divided through, so a trace has about half the ops of
the normalised form; the final rows are divided by ``σ`` during back substitution.

Besides the program a unit trace holds ``sigma`` (slot of ``σ_v`` per local vertex, −1 for
the start, whose row ``α`` needs no scale), the x-program (``AXPY(u, v, slot)``:
``ξ_u += s·x_v``; ``DIV(v, slot)``: ``x_v = ξ_v / s``, once per vertex when it is the pivot)
and the final raw rows (local targets and slots, every target after its source in π).
With ``ξ = r`` (the rewards) on entry, ``F(r)`` is: run the x-program, then for ``v`` in
reverse π, ``x_v += (Σ_w r_vw·x_w) / σ_v``.

Constant folding: an op whose operands are all constants is computed here, in Python
floats, with the same IEEE operations in the same order the evaluator would use, so
folding never changes a bit. ``w / w`` for a vertex with one out-edge folds to 1.
"""

from __future__ import annotations

import numpy as np

from .scc import KIND_START, WorkUnit

LOAD, CONST, SUM, DIV, MUL, FMA, ADD = range(7)
OPCODE_NAMES = ("LOAD", "CONST", "SUM", "DIV", "MUL", "FMA", "ADD")
X_AXPY, X_DIV = 0, 1

#: Names, dtypes and meaning of the arrays of a unit trace (and of a stitched trace).
UNIT_ARRAYS = {
    "code": np.int8,
    "a": np.int32,
    "b": np.int32,
    "c": np.int32,
    "consts": np.float64,
    "sum_args": np.int32,
    "sigma": np.int32,
    "x_kind": np.int8,
    "x_u": np.int32,
    "x_v": np.int32,
    "x_coef": np.int32,
    "row_ptr": np.int32,
    "row_dst": np.int32,
    "row_slot": np.int32,
}


class _Program:
    """Append-only SSA program with constant folding."""

    __slots__ = ("a", "b", "c", "code", "consts", "cval", "sum_args")

    def __init__(self):
        self.code: list[int] = []
        self.a: list[int] = []
        self.b: list[int] = []
        self.c: list[int] = []
        self.cval: list[float | None] = []  # the value of each slot if it is a constant
        self.consts: list[float] = []
        self.sum_args: list[int] = []

    def op(self, code: int, a: int, b: int = -1, c: int = -1) -> int:
        self.code.append(code)
        self.a.append(a)
        self.b.append(b)
        self.c.append(c)
        self.cval.append(None)
        return len(self.code) - 1

    def const(self, value: float) -> int:
        slot = self.op(CONST, len(self.consts))
        self.consts.append(value)
        self.cval[slot] = value
        return slot

    def sum(self, slots: list[int]) -> int:
        if len(slots) == 1:
            return slots[0]
        cv = self.cval
        if all(cv[s] is not None for s in slots):
            acc = cv[slots[0]]
            for s in slots[1:]:
                acc = acc + cv[s]
            return self.const(acc)
        slot = self.op(SUM, len(self.sum_args), len(slots))
        self.sum_args.extend(slots)
        return slot

    def binary(self, code: int, a: int, b: int) -> int:
        cv = self.cval
        x, y = cv[a], cv[b]
        if x is not None and y is not None:
            return self.const(x / y if code == DIV else x * y if code == MUL else x + y)
        if code == MUL and (x == 1.0 or y == 1.0):
            return b if x == 1.0 else a  # s·1 == s exactly
        if code == DIV and y == 1.0:
            return a
        if code == DIV and a == b:
            return self.const(1.0)  # w/w == 1 exactly for the positive finite rates allowed
        return self.op(code, a, b)

    def fma(self, t: int, a: int, p: int) -> int:
        cv = self.cval
        x, y, z = cv[t], cv[a], cv[p]
        if y is not None and z is not None:
            prod = y * z
            return self.const(x + prod) if x is not None else self.op(ADD, t, self.const(prod))
        if z == 1.0:
            return self.binary(ADD, t, a)
        if y == 1.0:
            return self.binary(ADD, t, p)
        return self.op(FMA, t, a, p)


def record_unit(unit: WorkUnit) -> dict[str, np.ndarray]:
    """Record the elimination of one work unit (``elimination.md`` §3).

    Parameters
    ----------
    unit : WorkUnit

    Returns
    -------
    dict of str to ndarray
        The unit trace, with the arrays named in :data:`UNIT_ARRAYS`.

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.scc import decompose
    >>> d = decompose(pt.models.two_island(3))
    >>> ut = record_unit(d.units[1])
    >>> sorted(ut) == sorted(UNIT_ARRAYS)
    True
    """
    prog = _Program()
    rows, sigma = _load_rows(unit, prog)
    xprog = _eliminate(unit.n_internal, rows, sigma, prog)
    return _finish(unit.n_internal, rows, sigma, xprog, prog)


def record_unit_bytes(payload: bytes) -> dict[str, np.ndarray]:
    """Worker entry point: canonical unit bytes in, unit trace arrays out."""
    return record_unit(WorkUnit.from_bytes(payload))


def _load_rows(unit: WorkUnit, prog: _Program) -> tuple[list[dict[int, int]], list[int]]:
    """Raw rows ``r_vw = w_vw`` and their scales ``σ_v = λ_v`` (the start keeps σ = 1)."""
    ptr = unit.ptr.tolist()
    dst = unit.dst.tolist()
    base = unit.base.tolist()
    constant = (~unit.coef.any(axis=1)).tolist() if unit.n_params else [True] * len(dst)
    edge_slot = [
        prog.const(b) if is_const else prog.op(LOAD, e)
        for e, (b, is_const) in enumerate(zip(base, constant, strict=True))
    ]
    rows: list[dict[int, int]] = []
    sigma: list[int] = []
    for i in range(unit.n_internal):
        lo, hi = ptr[i], ptr[i + 1]
        slots = edge_slot[lo:hi]
        rows.append(dict(zip(dst[lo:hi], slots, strict=True)))
        sigma.append(-1 if unit.kind == KIND_START else prog.sum(slots))
    return rows, sigma


def _eliminate(k: int, rows: list[dict[int, int]], sigma: list[int], prog: _Program):
    """Forward elimination in local order on raw rows; returns the x-program.

    Rows are kept unnormalised: ``p_uw = r_uw / σ_u``. Bypassing ``v`` adds
    ``(r_uv / σ_v)·r_vw`` to ``r_uw``; a self-loop sets ``σ_u`` to the sum of ``u``'s
    remaining raw entries (GTH: positive terms, no cancellation); ``x_v = ξ_v / σ_v``
    once ``v`` is the pivot. ``rows`` and ``sigma`` are updated in place.
    """
    parents: list[set[int]] = [set() for _ in range(k)]
    for u in range(k):
        for w in rows[u]:
            if w < k:
                parents[w].add(u)
    xk: list[int] = []
    xu: list[int] = []
    xv: list[int] = []
    xc: list[int] = []
    cval = prog.cval
    code, opa, opb, opc = prog.code, prog.a, prog.b, prog.c
    for v in range(k):
        if sigma[v] >= 0:
            xk.append(X_DIV)  # x_v = ξ_v / σ_v: v's row and ξ_v are final now
            xu.append(v)
            xv.append(-1)
            xc.append(sigma[v])
        later = sorted(u for u in parents[v] if u > v)
        if not later:
            continue
        children = sorted(rows[v].items())
        children_const = any(cval[r] is not None for _, r in children)
        for u in later:
            row_u = rows[u]
            a = row_u.pop(v)
            xk.append(X_AXPY)  # ξ_u += r_uv · x_v
            xu.append(u)
            xv.append(v)
            xc.append(a)
            a = prog.binary(DIV, a, sigma[v])  # p_uv scaled to u's raw row: r_uv / σ_v
            selfloop = False
            slow = children_const or cval[a] is not None
            for w, r in children:
                if w == u:
                    selfloop = True  # mass of u→v→u: never stored as an edge
                    continue
                t = row_u.get(w)
                if slow:
                    row_u[w] = prog.binary(MUL, a, r) if t is None else prog.fma(t, a, r)
                else:
                    # Hot path, inlined: no operand is a constant.
                    row_u[w] = len(code)
                    if t is None:
                        code.append(MUL)
                        opa.append(a)
                        opb.append(r)
                        opc.append(-1)
                    else:
                        code.append(FMA)
                        opa.append(t)
                        opb.append(a)
                        opc.append(r)
                    cval.append(None)
                if t is None and w < k:
                    parents[w].add(u)  # fill-in must be registered
            if selfloop:
                sigma[u] = prog.sum([row_u[w] for w in sorted(row_u)])
    return xk, xu, xv, xc


def _finish(k, rows, sigma, xprog, prog: _Program) -> dict[str, np.ndarray]:
    row_ptr = [0]
    row_dst: list[int] = []
    row_slot: list[int] = []
    for i in range(k):
        for w, s in sorted(rows[i].items()):
            row_dst.append(w)
            row_slot.append(s)
        row_ptr.append(len(row_dst))
    xk, xu, xv, xc = xprog
    values = {
        "code": prog.code,
        "a": prog.a,
        "b": prog.b,
        "c": prog.c,
        "consts": prog.consts,
        "sum_args": prog.sum_args,
        "sigma": sigma,
        "x_kind": xk,
        "x_u": xu,
        "x_v": xv,
        "x_coef": xc,
        "row_ptr": row_ptr,
        "row_dst": row_dst,
        "row_slot": row_slot,
    }
    return {name: np.asarray(values[name], dtype=dt) for name, dt in UNIT_ARRAYS.items()}
