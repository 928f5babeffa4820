"""The recorder: graph elimination of one work unit as a straight-line program.

This is the function workers run. It imports numpy and nothing heavier (never JAX).
The op format (opcodes, array names) is defined in :mod:`phasetrace.ops`; the algorithm
is described in ``docs/algorithm.md``.

**Block schedule.** A unit records only its *internal* elimination. Its exit edges (to
other SCCs, downstream in π) are kept as they are: at evaluation time their targets'
values are already known numbers, so they are folded into the right-hand side before
the unit's x-program runs (block back substitution on the block-triangular ``I − P``).
Elimination needs only the **exit mass** of each vertex, for the GTH denominator.

Rows are recorded **unnormalised**: vertex ``v`` keeps raw internal entries ``r_vw``, a
raw exit mass ``ε_v`` and a scale ``σ_v``, with ``p_vw = r_vw / σ_v``. Initially
``r = w`` (the rates), ``ε_v = Σ`` exit rates and ``σ_v = λ_v`` (all rates, in local
order). Bypassing pivot ``v`` for a later parent ``u`` (``a = r_uv / σ_v``) adds
``a·r_vw`` to ``r_uw`` for every internal child ``w`` and ``a·ε_v`` to ``ε_u``; a
self-loop (``v → u``) sets ``σ_u`` to ``Σ_w r_uw + ε_u``, which is ``σ_u·(1 − s)``
computed from positive terms only (the GTH trick). No row is ever divided through.

Exit masses are recorded lazily: ``ε_u`` becomes ops only when a self-loop of ``u`` (or
of a later parent it feeds) needs it, so units whose vertices never loop back (all
singleton SCCs) record none.

Besides the program a unit trace holds ``sigma`` (slot of ``σ_v`` per local vertex, −1 for
the start, whose row ``α`` needs no scale), the x-program (``AXPY(u, v, slot)``:
``ξ_u += s·ξ_v``; ``DIV(v, slot)``: ``ξ_v /= s``, once per vertex when it is the pivot),
the final internal rows (every target after its source in π) and the exits (local
targets ``>= n_internal`` and the slots of their rates). With ``ξ_v = r_v + Σ_exits
w_vw·x_w`` on entry, ``F(r)`` on the unit is: run the x-program, then for ``v`` in
reverse π, ``x_v += (Σ_w r_vw·x_w) / σ_v``.

Constant folding: an op whose operands are all constants is computed here, in Python
floats, with the same IEEE operations in the same order the evaluator would use, so
folding never changes a bit. ``w / w`` for a vertex with one out-edge folds to 1.

**Solve blocks.** Recording an SCC op by op costs about as many ops as its elimination
has multiply-adds: on structured models with migration (block counting in several
demes) that is ``O(k³)`` for an SCC of ``k`` states, hundreds of millions of ops, each
recorded in Python and streamed from memory at every θ. Such an SCC is recorded as a
*solve block* instead (:func:`solves_at_evaluation` decides, from the unit alone): its
program only loads its rates and sums each vertex's exit rates (``ε_v``, slot in
``sigma``), its rows are its internal edges as given, and the evaluator factorises it at
θ in compiled code (``docs/algorithm.md``, "Solve blocks"). The choice is part of the
unit trace (``unit_kind``), so every strategy records the same trace.
"""

from __future__ import annotations

import numpy as np

from .ops import (
    ADD,
    CONST,
    DIV,
    FMA,
    LOAD,
    MUL,
    SUM,
    UNIT_ARRAYS,
    UNIT_SOLVE,
    UNIT_TAPED,
    X_AXPY,
    X_DIV,
)
from .scc import KIND_START, WorkUnit

#: An SCC of at least this many states whose elimination estimate is at least
#: :data:`SOLVE_MIN_FILL` times ``k²`` becomes a solve block (measured by
#: benchmarks/solve_blocks.py, docs/performance.md "Solve blocks": within 1.3× of the best
#: choice per SCC at one θ and 1.1× per θ in batches). Smaller SCCs and chains stay taped:
#: 16 lanes vectorise a tape, while a factorisation runs one lane at a time.
SOLVE_MIN_STATES = 12
SOLVE_MIN_FILL = 0.5
#: Bytes per op while a unit is recorded (the recorder's Python lists; measured 100–235).
RECORD_BYTES_PER_OP = 250
#: Bytes per op of a whole trace while it is stitched and kept (unit arrays, stitching
#: temporaries, the trace; measured 110–180).
STITCH_BYTES_PER_OP = 200
#: Bytes per unit (its WorkUnit and its recording's arrays: measured 3–6 kB) and a floor
#: for the whole call.
UNIT_BYTES = 8000
BASE_BYTES = 32 * 1024**2


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
    """Record the elimination of one work unit under the block schedule.

    Parameters
    ----------
    unit : WorkUnit

    Returns
    -------
    dict of str to ndarray
        The unit trace, with the arrays named in :data:`phasetrace.ops.UNIT_ARRAYS`.

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
    block = solves_at_evaluation(unit)
    rows, exits, sigma = _load_rows(unit, prog, scales=not block)
    if block:
        return _record_block(rows, exits, prog)
    eps = _ExitMass(exits, prog)
    xprog = _eliminate(unit.n_internal, rows, sigma, eps, prog)
    return _finish(rows, exits, sigma, xprog, prog, UNIT_TAPED)


def elimination_estimate(unit: WorkUnit) -> int:
    """Multiply-adds of eliminating ``unit`` in its order: an upper bound from its envelope.

    Eliminating pivot ``t`` updates every later row ``u`` that has an entry in column
    ``t`` at the columns ``w > t`` where row ``t`` has entries. Fill never reaches left of
    a row's first entry nor above a column's first entry, so that is at most (rows ``u >
    t`` whose first entry is at or before ``t``) × (columns ``w > t`` whose first entry is
    at or above ``t``). On the models that matter (chains, block-counting SCCs) the bound
    is the exact count. ``O(k + edges)``.

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.scc import decompose
    >>> [elimination_estimate(u) for u in decompose(pt.models.two_island(3)).units]
    [0, 3, 2]
    """
    k = unit.n_internal
    if k < 2:
        return 0
    src = np.repeat(np.arange(k), np.diff(unit.ptr))
    inside = unit.dst < k
    s, w = src[inside], unit.dst[inside]
    first_col = np.arange(k)
    np.minimum.at(first_col, s, w)
    first_row = np.arange(k)
    np.minimum.at(first_row, w, s)
    t = np.arange(k)
    rows = np.cumsum(np.bincount(first_col, minlength=k)) - (t + 1)
    cols = np.cumsum(np.bincount(first_row, minlength=k)) - (t + 1)
    return int(rows @ cols)


def estimated_ops(unit: WorkUnit) -> int:
    """About how many ops ``unit``'s recording will have: one per edge (its rate), a few
    per state, and for a taped unit its :func:`elimination_estimate` (a solve block
    records none of its elimination).

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.scc import decompose
    >>> [estimated_ops(u) for u in decompose(pt.models.two_island(3)).units]
    [5, 29, 20]
    """
    k = unit.n_internal
    if k < 2:
        return unit.n_edges + 4 * k
    estimate = elimination_estimate(unit)
    if _solves(unit, estimate):
        return unit.n_edges + k
    return unit.n_edges + estimate + 4 * k


def recording_bytes(stitched_ops: float, n_units: int, recorded_ops) -> float:
    """Estimated peak memory of recording and stitching.

    ``stitched_ops``: the :func:`estimated_ops` of the whole trace(s) stitched and kept,
    ``n_units`` their units; ``recorded_ops``: those of the units recorded at the same
    time on this machine.
    """
    recorded = sum(float(n) for n in recorded_ops)
    return (
        BASE_BYTES
        + stitched_ops * STITCH_BYTES_PER_OP
        + n_units * UNIT_BYTES
        + recorded * RECORD_BYTES_PER_OP
    )


def check_recording_memory(stitched_ops: float, n_units: int, recorded_ops, what: str) -> None:
    """Refuse a recording whose estimated peak memory (:func:`recording_bytes`) is more
    than is free.

    Raises
    ------
    InsufficientMemoryError
        Naming the size of the trace and of its largest unit.
    """
    from ._memory import require

    recorded = [float(n) for n in recorded_ops]
    require(
        recording_bytes(stitched_ops, n_units, recorded),
        f"recording {what} (about {int(stitched_ops):,} ops; its largest unit about "
        f"{int(max(recorded, default=0)):,})",
        "record fewer graphs per call or with fewer workers, or use a smaller state space",
    )


def solves_at_evaluation(unit: WorkUnit) -> bool:
    """Whether ``unit`` is recorded as a solve block (factorised at evaluation time).

    Large SCCs with much fill are; chain-like SCCs, whose elimination is linear in their
    size, and small ones keep the taped elimination. A function of the unit's content
    only, so every process decides alike.

    Examples
    --------
    >>> import phasetrace as pt
    >>> from phasetrace.scc import decompose
    >>> g = pt.models.structured_coalescent((3, 3, 3), state_space="blocks")
    >>> sorted(u.n_internal for u in decompose(g).units if solves_at_evaluation(u))[-3:]
    [108, 126, 135]
    """
    k = unit.n_internal
    if unit.kind == KIND_START or k < SOLVE_MIN_STATES:
        return False
    return _solves(unit, elimination_estimate(unit))


def _solves(unit: WorkUnit, estimate: int) -> bool:
    k = unit.n_internal
    if unit.kind == KIND_START or k < SOLVE_MIN_STATES:
        return False
    return estimate >= SOLVE_MIN_FILL * k * k


def _record_block(rows, exits, prog: _Program) -> dict[str, np.ndarray]:
    """A solve block: the loaded rates (already in ``prog``), one exit mass per vertex
    with exits (the sum of its exit rates in local order), rows = the internal edges."""
    eps = [prog.sum([s for _, s in ex]) if ex else -1 for ex in exits]
    return _finish(rows, exits, eps, ([], [], [], []), prog, UNIT_SOLVE)


def record_unit_bytes(payload: bytes) -> dict[str, np.ndarray]:
    """Worker entry point: canonical unit bytes in, unit trace arrays out."""
    return record_unit(WorkUnit.from_bytes(payload))


def _load_rows(unit: WorkUnit, prog: _Program, scales: bool = True):
    """Internal raw rows ``r_vw = w_vw``, exits ``[(w, slot)]`` and scales ``σ_v = λ_v``.

    The start keeps σ = −1: its row is the initial distribution, which needs no scale.
    Without ``scales`` (a solve block) every σ is −1 and no sum is recorded.
    """
    k = unit.n_internal
    ptr = unit.ptr.tolist()
    dst = unit.dst.tolist()
    base = unit.base.tolist()
    constant = (~unit.coef.any(axis=1)).tolist() if unit.n_params else [True] * len(dst)
    edge_slot = [
        prog.const(b) if is_const else prog.op(LOAD, e)
        for e, (b, is_const) in enumerate(zip(base, constant, strict=True))
    ]
    rows: list[dict[int, int]] = []
    exits: list[list[tuple[int, int]]] = []
    sigma: list[int] = []
    for i in range(k):
        lo, hi = ptr[i], ptr[i + 1]
        pairs = list(zip(dst[lo:hi], edge_slot[lo:hi], strict=True))
        rows.append({w: s for w, s in pairs if w < k})
        exits.append([(w, s) for w, s in pairs if w >= k])
        no_scale = unit.kind == KIND_START or not scales
        sigma.append(-1 if no_scale else prog.sum(edge_slot[lo:hi]))
    return rows, exits, sigma


class _ExitMass:
    """Exit masses ``ε_u``, recorded lazily.

    ``ε_u`` starts as the sum of ``u``'s exit rates and gains a term ``a·ε_v`` for every
    bypass of a pivot ``v`` (``ε_v`` is final by then: ``v`` gains no terms after being
    the pivot). The ops are emitted, in exactly that order, only when :meth:`slot` is
    asked for, so masses that no GTH denominator needs cost nothing.
    """

    __slots__ = ("folded", "prog", "terms", "value")

    def __init__(self, exits: list[list[tuple[int, int]]], prog: _Program):
        self.prog = prog
        self.terms: list[list] = [[("sum", [s for _, s in ex])] if ex else [] for ex in exits]
        self.value: list[int | None] = [None] * len(exits)  # None: exactly zero so far
        self.folded = [0] * len(exits)  # terms already emitted as ops

    def add(self, u: int, a: int, v: int) -> None:
        """``ε_u += a·ε_v`` (slot ``a``), recorded when needed."""
        self.terms[u].append((a, v))

    def slot(self, u: int) -> int | None:
        """The slot of ``ε_u`` now (``None`` if it is exactly zero)."""
        stack = [u]
        while stack:  # explicit stack: chains of dependencies can be thousands long
            x = stack[-1]
            todo = self.terms[x][self.folded[x] :]
            pending = [t[1] for t in todo if t[0] != "sum" and self._pending(t[1])]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self._fold(x, todo)
        return self.value[u]

    def _pending(self, v: int) -> bool:
        return self.folded[v] < len(self.terms[v])

    def _fold(self, x: int, todo: list) -> None:
        prog, cur = self.prog, self.value[x]
        for a, v in todo:
            if a == "sum":
                cur = prog.sum(v)
                continue
            ev = self.value[v]
            if ev is not None:
                cur = prog.binary(MUL, a, ev) if cur is None else prog.fma(cur, a, ev)
        self.value[x] = cur
        self.folded[x] = len(self.terms[x])


def _eliminate(k: int, rows: list[dict[int, int]], sigma: list[int], eps: _ExitMass, prog):
    """Forward elimination in local order on raw internal rows; returns the x-program.

    Rows are kept unnormalised: ``p_uw = r_uw / σ_u``. Bypassing ``v`` adds
    ``(r_uv / σ_v)·r_vw`` to ``r_uw`` and ``(r_uv / σ_v)·ε_v`` to ``ε_u``; a self-loop
    sets ``σ_u`` to ``Σ_w r_uw + ε_u`` (GTH: positive terms, no cancellation);
    ``ξ_v /= σ_v`` once ``v`` is the pivot. ``rows`` and ``sigma`` are updated in place.
    """
    parents: list[set[int]] = [set() for _ in range(k)]
    for u in range(k):
        for w in rows[u]:
            parents[w].add(u)
    xk: list[int] = []
    xu: list[int] = []
    xv: list[int] = []
    xc: list[int] = []
    cval = prog.cval
    code, opa, opb, opc = prog.code, prog.a, prog.b, prog.c
    for v in range(k):
        if sigma[v] >= 0:
            xk.append(X_DIV)  # ξ_v /= σ_v: v's row and ξ_v are final now
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
            xk.append(X_AXPY)  # ξ_u += r_uv · ξ_v
            xu.append(u)
            xv.append(v)
            xc.append(a)
            a = prog.binary(DIV, a, sigma[v])  # p_uv scaled to u's raw row: r_uv / σ_v
            eps.add(u, a, v)
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
                if t is None:
                    parents[w].add(u)  # fill-in must be registered
            if selfloop:
                terms = [row_u[w] for w in sorted(row_u)]
                mass = eps.slot(u)
                if mass is not None:
                    terms.append(mass)
                if not terms:  # pragma: no cover - validation rejects closed classes
                    raise ValueError(f"Internal: local vertex {u} has no way out after a bypass")
                sigma[u] = prog.sum(terms)
    return xk, xu, xv, xc


def _finish(rows, exits, sigma, xprog, prog: _Program, kind: int) -> dict[str, np.ndarray]:
    row_ptr, row_dst, row_slot = [0], [], []
    for row in rows:
        for w, s in sorted(row.items()):
            row_dst.append(w)
            row_slot.append(s)
        row_ptr.append(len(row_dst))
    exit_ptr, exit_dst, exit_slot = [0], [], []
    for ex in exits:
        for w, s in ex:
            exit_dst.append(w)
            exit_slot.append(s)
        exit_ptr.append(len(exit_dst))
    xk, xu, xv, xc = xprog
    values = {
        "unit_kind": [kind],
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
        "exit_ptr": exit_ptr,
        "exit_dst": exit_dst,
        "exit_slot": exit_slot,
    }
    return {name: np.asarray(values[name], dtype=dt) for name, dt in UNIT_ARRAYS.items()}
