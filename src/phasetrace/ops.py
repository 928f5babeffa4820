"""The op format of a trace: opcodes, x-program kinds, array names and dtypes.

One small module that the recorder (:mod:`phasetrace.elimination`), the trace
(:mod:`phasetrace.trace`), the numpy reference (:mod:`phasetrace.evaluate`), the compiled
kernel (:mod:`phasetrace.kernel`) and the JAX lowering import, so none of them imports
another for its constants. ``docs/op-format.md`` describes the format for readers.

The weight program is in SSA form: op ``j`` writes slot ``j`` and reads only earlier slots.

========  =====================================  ===================================
opcode    value of the slot                      operands
========  =====================================  ===================================
LOAD      ``base[e] + Σ_i coef[e, i]·θ_i``        ``a`` = edge index ``e``
CONST     ``consts[a]``                           ``a`` = index into ``consts``
SUM       ``((s₀ + s₁) + s₂) + …``                ``sum_args[a : a + b]``
DIV       ``s_a / s_b``
MUL       ``s_a · s_b``
FMA       ``s_a + s_b · s_c`` (two roundings)
ADD       ``s_a + s_b``
========  =====================================  ===================================

The x-program is a list of ``(kind, u, v, slot)``: ``X_AXPY`` is ``ξ_u += s·ξ_v``,
``X_DIV`` is ``ξ_u /= s`` (``v`` unused, −1).

Each unit is of one of two kinds (``unit_kind``): ``UNIT_TAPED``, whose elimination is
recorded op by op (the x-program and the final rows), or ``UNIT_SOLVE``, a *solve block*:
a large strongly connected component whose program only loads its rates and sums its
exit masses, whose rows are its internal edges as given (the pattern), and which the
evaluator factorises at θ (``docs/algorithm.md``, "Solve blocks").
"""

from __future__ import annotations

import numpy as np

LOAD, CONST, SUM, DIV, MUL, FMA, ADD = range(7)
OPCODE_NAMES = ("LOAD", "CONST", "SUM", "DIV", "MUL", "FMA", "ADD")
X_AXPY, X_DIV = 0, 1
UNIT_TAPED, UNIT_SOLVE = 0, 1

VERTEX_START, VERTEX_TRANSIENT, VERTEX_ABSORBING = 0, 1, 2

#: Arrays of a unit trace (one SCC's recording, local vertex ids), and their dtypes.
#: Rows (``row_*``) are the final internal rows after elimination (a solve block: its
#: internal edges); exits (``exit_*``) are the unit's edges to other SCCs, unchanged
#: (their rates' slots). ``sigma`` is the slot of each vertex's scale σ_v (a solve block:
#: of its exit mass ε_v, −1 for none). ``unit_kind`` has one entry (a trace: one per unit).
UNIT_ARRAYS = {
    "unit_kind": np.int8,
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
    "exit_ptr": np.int32,
    "exit_dst": np.int32,
    "exit_slot": np.int32,
}

#: Arrays a whole trace has beyond the unit arrays (vertex ids are π positions there).
TRACE_EXTRA_ARRAYS = {
    "unit_ptr": np.int64,  # vertices of unit u: unit_ptr[u] : unit_ptr[u + 1]
    "unit_xptr": np.int64,  # its x-program: unit_xptr[u] : unit_xptr[u + 1]
    "unit_optr": np.int64,  # its ops (slots): unit_optr[u] : unit_optr[u + 1]
    "n_params": np.int64,
    "states": np.int64,
    "vertex_kind": np.int8,
    "input_base": np.float64,
    "input_coef": np.float64,
    "input_src": np.int32,
    "input_dst": np.int32,
}
TRACE_ARRAYS = {**UNIT_ARRAYS, **TRACE_EXTRA_ARRAYS}

#: Version of the saved-trace format (``Trace.save``); 2 is the block schedule, 3 adds
#: solve blocks (``unit_kind``).
TRACE_FORMAT_VERSION = 3
