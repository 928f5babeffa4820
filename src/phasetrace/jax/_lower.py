"""Lowering of a trace to a blocked SSA program for :mod:`phasetrace.jax` (numpy only).

The JAX evaluator can neither emit one operation per recorded op (XLA's compile time
explodes) nor scan one op per step (a 200k-step loop whose per-step work does not
amortise over a batch). It scans over **steps**: a step computes a fixed number of
independent ops of each kind ("lanes"), reads all their operands with one gather from a
value array ``V`` of shape ``(rows, batch)`` and writes the results to one contiguous
block of rows. This module builds the step tables; it imports numpy only.

========  ======================================  ==========================================
kind      result                                   used for
========  ======================================  ==========================================
FMA       ``V[a] + V[b]·V[c]``                    FMA, ADD (``c`` = row 1), AXPY of the x-program
MUL       ``V[b]·V[c]``                           MUL, ``r_v·z_v`` (reward times previous moment)
DIV       ``V[a] / V[b]``                         DIV, DIV of the x-program
SUM       ``Σ_j V[b_j]`` (:data:`D_SUM` terms)     SUM (a tree of SUM ops when the arity is larger)
DOT       ``V[a] + (Σ_j V[b_j]·V[c_j]) / V[d]``   back substitution (:data:`D_DOT` terms per op)
========  ======================================  ==========================================

Rows 0 and 1 hold the constants 0 and 1; padding lanes and padding terms read them.
Then come the other constants (and the reward values), the loaded rates
``base + coef·θ`` (computed before the scan), and the output blocks of the steps.

The weight program and all ``k`` passes of ``F`` (exit folds, x-program, back
substitution; docs/algorithm.md) form one dependency graph, list-scheduled longest-path-first into
one ``lax.scan`` (one small loop body, so compile time does not grow with the trace).
Their parallelism differs by orders of magnitude: thousands of independent ops per level
in the weight program, about one vertex per level in the back substitution of a
chain-like graph. A single schedule lets the wide work fill the lanes left idle along
the narrow critical path, and pipelines the passes: pass ``p`` starts on a strongly
connected component as soon as pass ``p − 1`` has finished it, so ``k`` passes take
little more steps than one.

Sums are added in a tree order and back-substitution rows are split into partial dot
products, so results agree with :mod:`phasetrace.evaluate` to rounding (about 1e-15
relative), not bitwise.

Solve blocks (SCCs factorised at evaluation time, ``unit_kind``) are not lowered: their
factorisation is the ``O(k³)`` program the recorder avoided writing down, and a step
program of that size is what this lowering cannot compile. :func:`lower` refuses such
traces with :class:`~phasetrace.errors.InvalidParameterError`; ``moments_fn(method="auto")``
uses the kernel for them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidParameterError
from ..ops import ADD, CONST, DIV, FMA, LOAD, MUL, SUM, UNIT_SOLVE, X_AXPY

K_FMA, K_MUL, K_DIV, K_SUM, K_DOT = range(5)
KIND_NAMES = ("fma", "mul", "div", "sum", "dot")
N_KINDS = len(KIND_NAMES)
ZERO, ONE = 0, 1

#: Terms per SUM op and per DOT op (measured on two_island: about the fewest rows read
#: and the shortest critical path).
D_SUM = 6
D_DOT = 16
#: Lanes per kind: its average share of the critical path times this slack. More slack
#: gives fewer steps (at most the critical path) but more padding lanes; 1.25 is close to
#: the fewest steps with about 10 % more rows read than 1.0 (two_island(50, 100)).
SLACK = 1.25
#: Rows a lane of each kind reads per step (its operands).
LANE_READS = (3, 2, 2, D_SUM, 2 * D_DOT + 2)
_NODE_INPUT = -1  # kind of a node that is an input row (constant or load), not an op


@dataclass
class Segment:
    """One ``lax.scan``: ``n_steps`` steps of ``width`` output rows each.

    ``idx[s]`` lists the rows step ``s`` reads, kind by kind and operand by operand,
    each operand a block over the kind's lanes (FMA: ``a``, ``b``, ``c``; MUL: ``b``,
    ``c``; DIV: ``a``, ``b``; SUM: term 0, term 1, …; DOT: ``a``, ``b`` of term 0, 1, …,
    ``c`` of term 0, 1, …, ``d``). Step ``s`` writes rows ``start + s·width`` to
    ``start + (s + 1)·width − 1``, lanes in kind order.
    """

    name: str
    start: int
    n_steps: int
    lanes: tuple[int, ...]
    idx: np.ndarray  # (n_steps, n_reads) int32
    n_ops: int = 0

    @property
    def width(self) -> int:
        return sum(self.lanes)

    @property
    def n_reads(self) -> int:
        return sum(w * r for w, r in zip(self.lanes, LANE_READS, strict=True))


@dataclass
class Lowered:
    """A trace lowered for the JAX evaluator, for a fixed ``k`` and reward vector."""

    n_params: int
    k: int
    n_rows: int
    const_vals: np.ndarray  # rows [0, n_const)
    load_base: np.ndarray  # rows [n_const, n_const + n_load)
    load_coef: np.ndarray  # (n_load, n_params)
    segments: list[Segment]
    out_rows: np.ndarray  # (k,) rows of z_p[start]
    scale: np.ndarray  # (k,) p! per moment
    stats: dict = field(default_factory=dict)

    @property
    def n_const(self) -> int:
        return int(self.const_vals.shape[0])

    @property
    def n_load(self) -> int:
        return int(self.load_base.shape[0])


class _Builder:
    """SSA graph of lowered ops: node ids are in creation (topological) order."""

    def __init__(self):
        self.const_vals: list[float] = []
        self.const_node: dict[tuple[float, bool], int] = {}
        self.load_edge: list[int] = []
        self.load_node: dict[int, int] = {}
        self.kind: list[int] = []  # per node: op kind, or _NODE_INPUT
        self.args: list[tuple] = []  # per node: operands in table order
        self.edge_src: list[int] = []  # dependency edges: operand node -> op node
        self.edge_dst: list[int] = []
        self.const(0.0)  # node 0 = row 0
        self.const(1.0)  # node 1 = row 1

    # -- inputs -------------------------------------------------------------------------
    def _input(self) -> int:
        self.kind.append(_NODE_INPUT)
        self.args.append(())
        return len(self.kind) - 1

    def const(self, value: float) -> int:
        key = (value, math.copysign(1.0, value) > 0)
        node = self.const_node.get(key)
        if node is None:
            node = self._input()
            self.const_node[key] = node
            self.const_vals.append(value)
        return node

    def load(self, edge: int) -> int:
        node = self.load_node.get(edge)
        if node is None:
            node = self._input()
            self.load_node[edge] = node
            self.load_edge.append(edge)
        return node

    # -- ops ------------------------------------------------------------------------------
    def _op(self, kind: int, args: tuple, deps) -> int:
        node = len(self.kind)
        self.kind.append(kind)
        self.args.append(args)
        self.edge_src.extend(deps)
        self.edge_dst.extend([node] * len(deps))
        return node

    def fma(self, a: int, b: int, c: int) -> int:
        if a == ZERO:
            return self.mul(b, c)
        return self._op(K_FMA, (a, b, c), (a, b, c))

    def mul(self, b: int, c: int) -> int:
        return self._op(K_MUL, (b, c), (b, c))

    def div(self, a: int, b: int) -> int:
        return self._op(K_DIV, (a, b), (a, b))

    def sum(self, terms: list[int]) -> int:
        """``Σ terms`` as a tree of SUM ops.

        Terms are added in node order (a proxy for the order in which they become
        available), so partial sums of early terms do not wait for late ones.
        """
        terms = sorted(terms)
        while len(terms) > D_SUM:
            head = self._op(K_SUM, tuple(terms[:D_SUM]), terms[:D_SUM])
            terms = [*terms[D_SUM:], head]
        if len(terms) == 1:
            return terms[0]
        return self._op(K_SUM, tuple(terms), terms)

    def dot(self, a: int, pairs: list[tuple[int, int]], d: int) -> int:
        """``a + (Σ b·c) / d``, with ``pairs`` listed earliest available first.

        Long rows are split: partial dot products of the earliest pairs (which do not
        wait for the latest values), then the final op with the latest pairs.
        """
        while len(pairs) > D_DOT:
            part = self._dot_op(ZERO, pairs[:D_DOT], ONE)
            pairs = [*pairs[D_DOT:], (part, ONE)]
        return self._dot_op(a, pairs, d)

    def _dot_op(self, a: int, pairs, d: int) -> int:
        bs = tuple(p[0] for p in pairs)
        cs = tuple(p[1] for p in pairs)
        return self._op(K_DOT, (a, bs, cs, d), (a, d, *bs, *cs))


def lower(arrays: dict[str, np.ndarray], k: int, rewards: np.ndarray) -> Lowered:
    """Lower a trace (its ``arrays``) for ``k`` moments with fixed ``rewards``.

    Parameters
    ----------
    arrays : dict of str to ndarray
        ``Trace.arrays``.
    k : int
        Number of moments.
    rewards : ndarray, shape (n_vertices,)
        Reward per vertex (ones for ``E[T^p]``).

    Returns
    -------
    Lowered

    Examples
    --------
    >>> import numpy as np, phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(4))
    >>> low = lower(tr.arrays, 2, np.ones(tr.n_vertices))
    >>> [s.name for s in low.segments]
    ['all']
    """
    refuse_solve_blocks(arrays)
    bld = _Builder()
    node = _weight_program(bld, arrays)
    out_nodes = _f_passes(bld, arrays, node, k, rewards)
    return _schedule(bld, arrays, k, out_nodes)


def refuse_solve_blocks(arrays) -> None:
    """Raise :class:`~phasetrace.errors.InvalidParameterError` if the trace has solve blocks."""
    solved = arrays["unit_kind"] == UNIT_SOLVE
    if solved.any():
        sizes = np.diff(arrays["unit_ptr"])[solved]
        raise InvalidParameterError(
            f"method='native' cannot evaluate this trace: {int(solved.sum())} of its strongly "
            f"connected components (the largest of {int(sizes.max())} states) are solve "
            "blocks, factorised at evaluation time, which the native lowering does not "
            "support; use method='kernel' (the default for such traces)"
        )


def _weight_program(bld: _Builder, arrays) -> list[int]:
    """Lower the recorded weight program; returns the node of every trace slot."""
    code = arrays["code"].tolist()
    a = arrays["a"].tolist()
    b = arrays["b"].tolist()
    c = arrays["c"].tolist()
    consts = arrays["consts"].tolist()
    sum_args = arrays["sum_args"].tolist()
    node: list[int] = []
    # MUL is about 80 % of the ops of large traces: appended inline, not via bld.mul.
    kind, args, src, dst = bld.kind, bld.args, bld.edge_src, bld.edge_dst
    for j, cd in enumerate(code):
        if cd == MUL:
            x = len(kind)
            ops = (node[a[j]], node[b[j]])
            kind.append(K_MUL)
            args.append(ops)
            src += ops
            dst += (x, x)
        elif cd == LOAD:
            x = bld.load(a[j])
        elif cd == CONST:
            x = bld.const(consts[a[j]])
        elif cd == FMA:
            x = bld.fma(node[a[j]], node[b[j]], node[c[j]])
        elif cd == ADD:
            x = bld.fma(node[a[j]], node[b[j]], ONE)
        elif cd == DIV:
            x = bld.div(node[a[j]], node[b[j]])
        elif cd == SUM:
            x = bld.sum([node[s] for s in sum_args[a[j] : a[j] + b[j]]])
        else:  # pragma: no cover - the recorder emits only the codes above
            raise ValueError(f"unknown opcode {cd} at op {j}")
        node.append(x)
    return node


def _f_passes(bld: _Builder, arrays, node: list[int], k: int, rewards) -> list[int]:
    """``z_p = F(r∘z_{p−1})`` for ``p = 1..k``; returns the node of ``z_p[S]`` per pass.

    ``F`` under the block schedule (docs/algorithm.md): units sinks first; in each, the
    exits' final values are folded into the right-hand side, then the unit's x-program
    and back substitution run. Exits to absorbing vertices (value 0) drop out.
    """
    kind = arrays["vertex_kind"]
    n_v = int(kind.shape[0])
    starts = np.flatnonzero(kind == 0)
    start = int(starts[0]) if starts.size else -1
    sig_node = [node[s] if s >= 0 else ONE for s in arrays["sigma"].tolist()]
    x_prog = list(
        zip(
            arrays["x_kind"].tolist(),
            arrays["x_u"].tolist(),
            arrays["x_v"].tolist(),
            [node[s] for s in arrays["x_coef"].tolist()],
            strict=True,
        )
    )
    unit_ptr, unit_xptr = arrays["unit_ptr"].tolist(), arrays["unit_xptr"].tolist()
    exit_ptr, exit_dst = arrays["exit_ptr"].tolist(), arrays["exit_dst"].tolist()
    exit_node = [node[s] for s in arrays["exit_slot"].tolist()]
    row_ptr = arrays["row_ptr"].tolist()
    row_dst = arrays["row_dst"].tolist()
    row_node = [node[s] for s in arrays["row_slot"].tolist()]
    transient = (kind == 1).tolist()
    r = [float(x) for x in rewards]
    out_nodes = []
    z_prev: list[int] | None = None
    for _ in range(k):
        x = [ZERO] * n_v  # the right-hand side r∘z on transient vertices, 0 elsewhere
        for v in range(n_v):
            if not transient[v] or r[v] == 0.0:
                continue
            if z_prev is None:
                x[v] = bld.const(r[v])
            elif r[v] == 1.0:
                x[v] = z_prev[v]
            elif z_prev[v] != ZERO:
                x[v] = bld.mul(bld.const(r[v]), z_prev[v])
        for unit in range(len(unit_ptr) - 2, -1, -1):
            first, last = unit_ptr[unit], unit_ptr[unit + 1]
            for v in range(first, last):  # exits first: their values are final
                pairs = [
                    (exit_node[e], x[exit_dst[e]])
                    for e in range(exit_ptr[v], exit_ptr[v + 1])
                    if x[exit_dst[e]] != ZERO
                ]
                if pairs:
                    x[v] = bld.dot(x[v], pairs, ONE)
            for kd, u, v, s in x_prog[unit_xptr[unit] : unit_xptr[unit + 1]]:
                if kd == X_AXPY:
                    if x[v] != ZERO:  # ξ_u += s·0 changes nothing
                        x[u] = bld.fma(x[u], s, x[v])
                elif x[u] != ZERO:
                    x[u] = bld.div(x[u], s)
            for v in range(last - 1, first - 1, -1):
                # Row order is π order: x of the last target was computed first.
                pairs = [
                    (row_node[e], x[row_dst[e]])
                    for e in range(row_ptr[v + 1] - 1, row_ptr[v] - 1, -1)
                    if x[row_dst[e]] != ZERO
                ]
                if pairs:
                    x[v] = bld.dot(x[v], pairs, sig_node[v])
        out_nodes.append(x[start] if start >= 0 else ZERO)
        z_prev = x
    return out_nodes


# -- scheduling ---------------------------------------------------------------------------
class _Graph:
    """The dependency graph of the ops (local indices 0..n−1 in node order), as CSR lists."""

    def __init__(self, bld: _Builder):
        kinds = np.asarray(bld.kind, dtype=np.int64)
        self.nodes = np.flatnonzero(kinds >= 0)
        n = self.n = int(self.nodes.size)
        self.kinds = kinds[self.nodes]
        local = np.full(kinds.shape[0], -1, dtype=np.int64)
        local[self.nodes] = np.arange(n)
        src = local[np.asarray(bld.edge_src, dtype=np.int64)]
        dst = local[np.asarray(bld.edge_dst, dtype=np.int64)]
        keep = src >= 0  # inputs (constants, loads) are ready before the first step
        pairs = np.sort(src[keep] * n + dst[keep])
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if pairs.size else pairs
        src, dst = pairs // n, pairs % n  # unique edges, sorted by src
        self.succ_ptr = np.searchsorted(src, np.arange(n + 1)).tolist()
        self.succ = dst.tolist()
        order = np.argsort(dst, kind="stable")
        self.pred_ptr = np.searchsorted(dst[order], np.arange(n + 1)).tolist()
        self.pred = src[order].tolist()
        self.n_preds = np.bincount(dst, minlength=n).tolist()
        # Height: ops on the longest remaining path are scheduled first.
        height = [1] * n
        pptr, pred = self.pred_ptr, self.pred
        for i in range(n - 1, -1, -1):
            hi = height[i] + 1
            for p in pred[pptr[i] : pptr[i + 1]]:
                if height[p] < hi:
                    height[p] = hi
        self.height = height
        self.depth = max(height) if n else 0


def _list_schedule(g: _Graph, lanes: tuple[int, ...]):
    """Greedy list scheduling with ``lanes[kind]`` ops of each kind per step.

    Returns the number of steps and each op's step and lane.
    """
    n = g.n
    kinds = g.kinds.tolist()
    height = g.height
    waiting = list(g.n_preds)
    sptr, succ = g.succ_ptr, g.succ
    ready: list[list[tuple[int, int]]] = [[] for _ in range(N_KINDS)]
    for i in range(n):
        if not waiting[i]:
            ready[kinds[i]].append((-height[i], i))
    for heap in ready:
        heapq.heapify(heap)
    step = [0] * n
    lane = [0] * n
    pop, push = heapq.heappop, heapq.heappush
    done = s = 0
    while done < n:
        chosen = []
        for kd in range(N_KINDS):
            heap = ready[kd]
            for ln in range(min(lanes[kd], len(heap))):
                i = pop(heap)[1]
                step[i] = s
                lane[i] = ln
                chosen.append(i)
        done += len(chosen)
        for i in chosen:
            for j in succ[sptr[i] : sptr[i + 1]]:
                waiting[j] -= 1
                if not waiting[j]:
                    push(ready[kinds[j]], (-height[j], j))
        s += 1
    return s, np.asarray(step, dtype=np.int64), np.asarray(lane, dtype=np.int64)


def _schedule(bld: _Builder, arrays, k: int, out_nodes: list[int]) -> Lowered:
    g = _Graph(bld)
    n_nodes = len(bld.kind)
    row = np.full(n_nodes, -1, dtype=np.int64)
    const_nodes = np.fromiter(bld.const_node.values(), dtype=np.int64)
    load_nodes = np.fromiter(bld.load_node.values(), dtype=np.int64)
    n_const, n_load = const_nodes.shape[0], load_nodes.shape[0]
    row[const_nodes] = np.arange(n_const)
    row[load_nodes] = n_const + np.arange(n_load)
    start = n_const + n_load
    segments = []
    if g.n:
        totals = np.bincount(g.kinds, minlength=N_KINDS).tolist()
        lanes = tuple(math.ceil(SLACK * t / g.depth) if t else 0 for t in totals)
        n_steps, step, lane = _list_schedule(g, lanes)
        width = sum(lanes)
        lane_off = np.concatenate([[0], np.cumsum(lanes)[:-1]])
        row[g.nodes] = start + step * width + lane_off[g.kinds] + lane
        segments.append(_tables(bld, row, "all", start, n_steps, lanes, g.nodes, step, lane))
        start += n_steps * width
    const_vals = np.asarray(bld.const_vals, dtype=np.float64)  # node order = row order
    load_edge = np.asarray(bld.load_edge, dtype=np.int64)
    n_params = int(np.asarray(arrays["n_params"]).reshape(()))
    stats = {
        "ops": g.n,
        "rows": start,
        "critical_path": g.depth,
        "reads_per_theta": int(sum(s.n_steps * s.n_reads for s in segments)),
        "segments": [
            {
                "name": s.name,
                "ops": s.n_ops,
                "steps": s.n_steps,
                "lanes": {n: w for n, w in zip(KIND_NAMES, s.lanes, strict=True) if w},
            }
            for s in segments
        ],
    }
    return Lowered(
        n_params=n_params,
        k=k,
        n_rows=start,
        const_vals=const_vals,
        load_base=np.asarray(arrays["input_base"][load_edge], dtype=np.float64),
        load_coef=np.asarray(arrays["input_coef"][load_edge], dtype=np.float64).reshape(
            n_load, n_params
        ),
        segments=segments,
        out_rows=row[np.asarray(out_nodes, dtype=np.int64)],
        scale=np.array([math.factorial(p) for p in range(1, k + 1)], dtype=np.float64),
        stats=stats,
    )


def _tables(bld: _Builder, row, name, start, n_steps, lanes, ops, step, lane) -> Segment:
    """Rows read by every step; padding lanes and terms read the constants 0 and 1."""
    f, m, v, s, d = lanes
    fma = np.zeros((n_steps, 3, f), dtype=np.int64)
    mul = np.zeros((n_steps, 2, m), dtype=np.int64)
    div = np.zeros((n_steps, 2, v), dtype=np.int64)
    div[:, 1] = ONE  # 0 / 1
    sm = np.zeros((n_steps, s, D_SUM), dtype=np.int64)
    dot_a = np.zeros((n_steps, d), dtype=np.int64)
    dot_b = np.zeros((n_steps, d, D_DOT), dtype=np.int64)
    dot_c = np.zeros((n_steps, d, D_DOT), dtype=np.int64)
    dot_d = np.ones((n_steps, d), dtype=np.int64)  # 0 + 0 / 1
    args = bld.args
    kinds = np.asarray(bld.kind, dtype=np.int64)[ops]
    for kd, table in ((K_FMA, fma), (K_MUL, mul), (K_DIV, div)):
        sel = np.flatnonzero(kinds == kd)
        if sel.size:
            operands = np.asarray([args[x] for x in ops[sel].tolist()], dtype=np.int64)
            table[step[sel], :, lane[sel]] = operands
    rows = zip(ops.tolist(), step.tolist(), lane.tolist(), kinds.tolist(), strict=True)
    for x, st, ln, kd in rows:
        if kd == K_SUM:
            a = args[x]
            sm[st, ln, : len(a)] = a
        elif kd == K_DOT:
            a, bs, cs, dd = args[x]
            dot_a[st, ln] = a
            dot_b[st, ln, : len(bs)] = bs
            dot_c[st, ln, : len(cs)] = cs
            dot_d[st, ln] = dd
    # Sum and dot terms term-major: term j of all lanes is one contiguous block, so a
    # step adds whole blocks elementwise instead of reducing over a small axis.
    nodes = np.concatenate(
        [
            fma.reshape(n_steps, -1),
            mul.reshape(n_steps, -1),
            div.reshape(n_steps, -1),
            sm.transpose(0, 2, 1).reshape(n_steps, -1),
            dot_a,
            dot_b.transpose(0, 2, 1).reshape(n_steps, -1),
            dot_c.transpose(0, 2, 1).reshape(n_steps, -1),
            dot_d,
        ],
        axis=1,
    )
    return Segment(
        name=name,
        start=start,
        n_steps=n_steps,
        lanes=tuple(lanes),
        idx=row[nodes].astype(np.int32),
        n_ops=int(ops.size),
    )
