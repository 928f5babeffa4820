"""The native JAX evaluator: a trace lowered to a scan over fixed-width steps.

This is the evaluator for accelerators (:func:`phasetrace.jax.moments_fn` with
``method="native"``, the default off CPU). On CPU the compiled kernel is faster
(:mod:`phasetrace.jax._kernel`).

A trace is a straight-line program of up to a few hundred thousand ops. Emitting one JAX
operation per op does not scale (XLA's compile time grows past minutes), and scanning
one op per step is slow per θ and does not batch well. :mod:`phasetrace.jax._lower`
therefore lowers the trace once, in numpy, to a program of **steps**: each step computes a
fixed number of independent ops of each kind (``a + b·c``, ``b·c``, ``a / b``, sums of
6 terms, dot products of 16 terms for exit folds and back substitution), reading all its
operands with one gather from a value array ``V`` of shape ``(rows, batch)`` and writing
its results to one contiguous block of rows. The weight program and all ``k`` passes of
``F`` are list-scheduled into one ``lax.scan`` over steps, so the compiled program has a
single small loop body whatever the trace size (XLA compiles it in about 0.3–0.6 s) and
the passes pipeline: pass ``p`` starts on a strongly connected component as soon as
pass ``p − 1`` has finished it.

Batches use the value array's second axis: a hand-laid ``(rows, batch)`` layout; large
batches are cut into chunks of 128 to 512 θ (``lax.map``). ``jax.vmap`` of the one-θ
function is routed to this batched code by a :class:`jax.custom_batching.custom_vmap`
rule.

Gradients: both functions are :class:`jax.custom_vjp` functions. With few parameters (up
to :data:`FORWARD_MODE_MAX`) the forward pass carries ``∂/∂θ_i`` alongside every value
and keeps only the small Jacobian for the backward pass (``Jᵀg``). With more parameters a
hand-written reverse scan is used: each reverse step reads the cotangents of its output
block, gathers its operands again and adds all operand cotangents with a single
scatter-add, so the cost stays linear in the trace size. For one θ the reverse pass
reuses the forward values; for batches they are recomputed chunk by chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._lower import D_DOT, D_SUM, Lowered, lower

#: Automatic chunk size (θ per chunk of a batch): the largest power of two whose value
#: array fits in :data:`CHUNK_BYTES`, within [:data:`MIN_CHUNK`, :data:`MAX_CHUNK`], and
#: never more than fits in :data:`MAX_CHUNK_BYTES`. Each scan step has a fixed cost of
#: a few µs on XLA:CPU (its gather is split over threads once ``V`` exceeds 512 KB), so
#: wide chunks pay off even when ``V`` leaves the caches (measured on 2 cores: 128 θ per
#: chunk is fastest for two_island(50) and (100), 512 for two_island(20)).
CHUNK_BYTES = 64 * 1024**2
MAX_CHUNK_BYTES = 512 * 1024**2
MIN_CHUNK, MAX_CHUNK = 128, 512
#: Up to this many parameters, gradients use forward mode (see :class:`_Evaluator`).
FORWARD_MODE_MAX = 4

_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(1,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)
_IN_BOUNDS = lax.GatherScatterMode.PROMISE_IN_BOUNDS


def _x64(fn):
    """Run ``fn`` (and whatever JAX traces inside it) with float64 enabled locally.

    Custom-rule functions are traced by JAX at transformation time, possibly outside the
    caller's ``with`` block (the backward pass of ``jax.grad``), so each one enters the
    context itself.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


# -- the step program ----------------------------------------------------------------------
def _rows(V, idx):
    """``V[idx]`` for row indices known to be in bounds (no index normalisation ops)."""
    dims = lax.GatherDimensionNumbers(
        offset_dims=tuple(range(1, V.ndim)), collapsed_slice_dims=(0,), start_index_map=(0,)
    )
    return lax.gather(V, idx[:, None], dims, slice_sizes=(1, *V.shape[1:]), mode=_IN_BOUNDS)


def _add_rows(G, idx, updates):
    """``G[idx] += updates`` with repeated indices accumulating."""
    return lax.scatter_add(G, idx[:, None], updates, _SCATTER, mode=_IN_BOUNDS)


def _operands(x, lanes):
    """Split the rows one step read into per-kind operand blocks (layout of ``Segment.idx``).

    Every operand is a ``(lanes, B)`` block; sums and dot products come as lists of
    their terms, so a step is elementwise arithmetic on blocks that XLA fuses into one
    loop (a reduction over a small axis would become a separate kernel).
    """
    f, m, v, s, d = lanes
    ops = {}
    o = 0

    def take(width):
        nonlocal o
        block = x[o : o + width]
        o += width
        return block

    if f:
        ops["fma"] = (take(f), take(f), take(f))
    if m:
        ops["mul"] = (take(m), take(m))
    if v:
        ops["div"] = (take(v), take(v))
    if s:
        ops["sum"] = [take(s) for _ in range(D_SUM)]
    if d:
        a = take(d)
        b = [take(d) for _ in range(D_DOT)]
        c = [take(d) for _ in range(D_DOT)]
        ops["dot"] = (a, b, c, take(d))
    return ops


def _dot(b, c):
    acc = b[0] * c[0]
    for bj, cj in zip(b[1:], c[1:], strict=True):
        acc = acc + bj * cj
    return acc


def _results(ops):
    """The output block of one step, lanes in kind order."""
    out = []
    if "fma" in ops:
        a, b, c = ops["fma"]
        out.append(a + b * c)
    if "mul" in ops:
        b, c = ops["mul"]
        out.append(b * c)
    if "div" in ops:
        a, b = ops["div"]
        out.append(a / b)
    if "sum" in ops:
        terms = ops["sum"]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc + t
        out.append(acc)
    if "dot" in ops:
        a, b, c, dd = ops["dot"]
        out.append(a + _dot(b, c) / dd)
    return out[0] if len(out) == 1 else jnp.concatenate(out)


def _results_tangent(ops):
    """Like :func:`_results` for blocks ``(lanes, B, 1 + P)``: value, then ∂/∂θ_1..P."""

    def vt(x):
        return x[..., :1], x[..., 1:]

    out = []
    if "fma" in ops:
        (a, ta), (b, tb), (c, tc) = map(vt, ops["fma"])
        out += [a + b * c, ta + tb * c + b * tc]
    if "mul" in ops:
        (b, tb), (c, tc) = map(vt, ops["mul"])
        out += [b * c, tb * c + b * tc]
    if "div" in ops:
        (a, ta), (b, tb) = map(vt, ops["div"])
        q = a / b
        out += [q, (ta - q * tb) / b]
    if "sum" in ops:
        acc = ops["sum"][0]
        for t in ops["sum"][1:]:
            acc = acc + t
        out += list(vt(acc))
    if "dot" in ops:
        a, b, c, dd = ops["dot"]
        (a, ta), (dd, td) = vt(a), vt(dd)
        b = [vt(x) for x in b]
        c = [vt(x) for x in c]
        total = _dot([x for x, _ in b], [x for x, _ in c])
        tdot = _dot([x for x, _ in b], [t for _, t in c])
        tdot = tdot + _dot([t for _, t in b], [x for x, _ in c])
        q = total / dd
        out += [a + q, ta + (tdot - q * td) / dd]
    # Values and tangents side by side per kind, then kinds one after the other.
    blocks = [jnp.concatenate(out[i : i + 2], axis=-1) for i in range(0, len(out), 2)]
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks)


@functools.lru_cache(maxsize=64)
def _reverse_layout(lanes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Static index maps of a reverse step: every cotangent is ``q[lane] · y[partner]``.

    ``q`` is the output cotangent of each lane, divided by ``b`` for DIV lanes and by
    ``d`` for DOT lanes; ``y`` is the step's gathered rows followed by a row of ones and
    one extra row per DIV lane (``−a/b``) and per DOT lane (``−Σbc/d``). Expressing the
    whole block as two static gathers and a product lets XLA emit one kernel per step
    instead of one per operand block.
    """
    f, m, v, s, d = lanes
    n_reads = 3 * f + 2 * m + 2 * v + D_SUM * s + (2 * D_DOT + 2) * d
    one = n_reads
    extra_div = one + 1
    extra_dot = extra_div + v
    lane: list[int] = []
    partner: list[int] = []
    o = 0  # first read of the current kind
    w = 0  # first lane of the current kind
    for j in range(f):  # a
        lane.append(w + j)
        partner.append(one)
    for j in range(f):  # b ↔ c
        lane.append(w + j)
        partner.append(o + 2 * f + j)
    for j in range(f):
        lane.append(w + j)
        partner.append(o + f + j)
    o, w = o + 3 * f, w + f
    for j in range(m):
        lane.append(w + j)
        partner.append(o + m + j)
    for j in range(m):
        lane.append(w + j)
        partner.append(o + j)
    o, w = o + 2 * m, w + m
    for j in range(v):  # a / b: q = g/b; ∂/∂a = q, ∂/∂b = q·(−a/b)
        lane.append(w + j)
        partner.append(one)
    for j in range(v):
        lane.append(w + j)
        partner.append(extra_div + j)
    o, w = o + 2 * v, w + v
    for _ in range(D_SUM):
        for j in range(s):
            lane.append(w + j)
            partner.append(one)
    o, w = o + D_SUM * s, w + s
    b0 = o + d
    c0 = b0 + D_DOT * d
    d0 = c0 + D_DOT * d
    for j in range(d):  # a + Σbc/d: q = g/d; ∂/∂a = q·d
        lane.append(w + j)
        partner.append(d0 + j)
    for t in range(D_DOT):
        for j in range(d):
            lane.append(w + j)
            partner.append(c0 + t * d + j)
    for t in range(D_DOT):
        for j in range(d):
            lane.append(w + j)
            partner.append(b0 + t * d + j)
    for j in range(d):
        lane.append(w + j)
        partner.append(extra_dot + j)
    return np.asarray(lane, dtype=np.int32), np.asarray(partner, dtype=np.int32)


def _cotangents(x, g, lanes):
    """Cotangents of every row a step read (``x``), in the order of ``Segment.idx``."""
    f, m, v, s = lanes[:4]
    ops = _operands(x, lanes)
    bc = x.shape[1]
    scale, extra = [], [jnp.ones((1, bc), x.dtype)]
    if f + m:
        scale.append(jnp.ones((f + m, bc), x.dtype))
    if v:
        a, b = ops["div"]
        scale.append(1.0 / b)
        extra.append(-a / b)
    if s:
        scale.append(jnp.ones((s, bc), x.dtype))
    if "dot" in ops:
        _, b, c, dd = ops["dot"]
        scale.append(1.0 / dd)
        extra.append(-_dot(b, c) / dd)
    q = g * (scale[0] if len(scale) == 1 else jnp.concatenate(scale))
    y = jnp.concatenate([x, *extra])
    lane, partner = _reverse_layout(tuple(lanes))
    return q[lane] * y[partner]


def _loads(low: Lowered, thetas):
    """Rates ``base + c₀θ₀ + c₁θ₁ + …`` (left to right, as the kernel), (n_load, B)."""
    out = jnp.broadcast_to(jnp.asarray(low.load_base)[:, None], (low.n_load, thetas.shape[0]))
    coef = jnp.asarray(low.load_coef)
    for i in range(low.n_params):
        out = out + coef[:, i : i + 1] * thetas[None, :, i]
    return out


def _forward(low: Lowered, thetas, tangents: bool = False):
    """All values of the lowered program for a chunk of θ.

    Returns ``V`` of shape (rows, B), or (rows, B, 1 + n_params) with ``tangents``
    (forward-mode derivatives with respect to each θ_i alongside every value), and
    whether each θ gave rates > 0.
    """
    bc = thetas.shape[0]
    loads = _loads(low, thetas)
    consts = jnp.broadcast_to(jnp.asarray(low.const_vals)[:, None], (low.n_const, bc))
    rest = low.n_rows - low.n_const - low.n_load
    if tangents:
        p = low.n_params
        d_loads = jnp.broadcast_to(jnp.asarray(low.load_coef)[:, None, :], (low.n_load, bc, p))
        V = jnp.concatenate(
            [
                jnp.concatenate([consts[..., None], jnp.zeros((low.n_const, bc, p))], axis=-1),
                jnp.concatenate([loads[..., None], d_loads], axis=-1),
                jnp.zeros((rest, bc, 1 + p)),
            ]
        )
        results = _results_tangent
    else:
        V = jnp.concatenate([consts, loads, jnp.zeros((rest, bc))])
        results = _results
    zeros = (jnp.int32(0),) * (V.ndim - 1)
    for seg in low.segments:
        start, width, lanes = seg.start, seg.width, seg.lanes

        def body(V, xs, start=start, width=width, lanes=lanes):
            s, idx = xs
            out = results(_operands(_rows(V, idx), lanes))
            return lax.dynamic_update_slice(V, out, (start + s * width, *zeros)), None

        steps = jnp.arange(seg.n_steps, dtype=jnp.int32)
        V, _ = lax.scan(body, V, (steps, jnp.asarray(seg.idx)))
    if low.n_load:
        valid = jnp.all((loads >= 0) & (loads < jnp.inf), axis=0)
    else:
        valid = jnp.ones(bc, dtype=bool)
    return V, valid


def _moments(low: Lowered, V, valid):
    """``E[Y^p] = p!·z_p[S]`` per θ, shape (B, k).

    NaN for a θ at which a rate was negative or not finite, or a moment is not finite
    (an edge of rate 0 is allowed: it contributes nothing, but a vertex without a way out
    gives ``0/0`` or ``x/0`` somewhere).
    """
    out = V[low.out_rows].T * jnp.asarray(low.scale)[None, :]
    ok = valid & jnp.all(jnp.isfinite(out), axis=1)
    return jnp.where(ok[:, None], out, jnp.nan)


def _jacobian(low: Lowered, V, valid):
    """Moments (B, k) and their Jacobian (B, k, n_params) from a forward-mode ``V``.

    As :func:`_moments`; a derivative that is not finite (for any moment) makes that
    parameter's column NaN.
    """
    out = jnp.moveaxis(V[low.out_rows], 0, 1) * jnp.asarray(low.scale)[None, :, None]
    values, jac = out[..., 0], out[..., 1:]
    ok = valid & jnp.all(jnp.isfinite(values), axis=1)
    jac_ok = ok[:, None, None] & jnp.all(jnp.isfinite(jac), axis=1, keepdims=True)
    return jnp.where(ok[:, None], values, jnp.nan), jnp.where(jac_ok, jac, jnp.nan)


def _reverse(low: Lowered, V, valid, g):
    """Gradient of ``Σ g·moments`` with respect to θ, shape (B, n_params)."""
    bc = V.shape[1]
    G = jnp.zeros_like(V).at[low.out_rows].add((g * jnp.asarray(low.scale)[None, :]).T)
    for seg in reversed(low.segments):
        start, width, lanes = seg.start, seg.width, seg.lanes

        def body(G, xs, start=start, width=width, lanes=lanes):
            s, idx = xs
            gout = lax.dynamic_slice(G, (start + s * width, jnp.int32(0)), (width, bc))
            ct = _cotangents(_rows(V, idx), gout, lanes)
            return _add_rows(G, idx, ct), None  # one scatter-add per step: stays in place

        steps = jnp.arange(seg.n_steps, dtype=jnp.int32)
        G, _ = lax.scan(body, G, (steps, jnp.asarray(seg.idx)), reverse=True)
    g_loads = G[low.n_const : low.n_const + low.n_load]
    grad = (jnp.asarray(low.load_coef).T @ g_loads).T  # (B, n_params)
    return jnp.where(valid[:, None] & jnp.isfinite(grad), grad, jnp.nan)


def _map_chunks(fn, chunk: int, *arrays):
    """``fn`` over the leading axis of ``arrays`` in chunks of ``chunk`` rows (``lax.map``).

    ``fn`` maps arrays with a leading axis of ``chunk`` (or fewer) to a pytree of arrays
    with the same leading axis.
    """
    B = arrays[0].shape[0]
    if chunk >= B:
        return fn(*arrays)
    n = -(-B // chunk)
    pad = n * chunk - B
    if pad:  # repeat the first row: padding must be a valid θ, its results are dropped
        arrays = tuple(
            jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad, *a.shape[1:]))]) for a in arrays
        )
    out = lax.map(lambda xs: fn(*xs), tuple(a.reshape(n, chunk, *a.shape[1:]) for a in arrays))
    return jax.tree.map(lambda o: o.reshape(n * chunk, *o.shape[2:])[:B], out)


# -- the evaluator: lowering and differentiation rules ------------------------------------------
class _Evaluator:
    """The lowered program of one trace and its differentiable functions.

    Gradients use forward mode (tangents for every θ_i carried alongside the values,
    then ``J^T g``) when there are few parameters: for ``n_params ≤`` :data:`FORWARD_MODE_MAX`
    that costs less than a reverse pass, whose scatter-adds are slow on XLA:CPU, and the
    only residual is the small Jacobian. Otherwise the reverse scan is used.
    """

    def __init__(self, trace, k: int, rewards: np.ndarray, chunk: int | None, mode: str):
        self.trace = trace
        self.k = k
        self.rewards = rewards
        self.n_params = trace.n_params
        self.mode = mode
        self._chunk = chunk
        self._lowered: Lowered | None = None
        self.single = self._build_single()
        self.batched = self._build_batched()

    @property
    def low(self) -> Lowered:
        """The lowered program, built on first use (numpy; ~1 s for 200k recorded ops)."""
        if self._lowered is None:
            self._lowered = lower(self.trace.arrays, self.k, self.rewards)
        return self._lowered

    def chunk(self, channels: int = 1) -> int:
        """θ per chunk when every θ needs ``channels`` columns of ``V``."""
        if self._chunk is not None:
            return self._chunk
        per_theta = 8 * self.low.n_rows * channels

        def pow2_fitting(budget: int) -> int:
            return 1 << (max(1, budget // per_theta).bit_length() - 1)

        chunk = min(MAX_CHUNK, max(MIN_CHUNK, pow2_fitting(CHUNK_BYTES)))
        return int(min(chunk, pow2_fitting(MAX_CHUNK_BYTES)))

    # -- batches --------------------------------------------------------------------------
    def eval_batched(self, thetas):
        low = self.low
        return _map_chunks(lambda t: _moments(low, *_forward(low, t)), self.chunk(), thetas)

    def jac_batched(self, thetas):
        low = self.low
        chunk = self.chunk(1 + self.n_params)
        return _map_chunks(lambda t: _jacobian(low, *_forward(low, t, True)), chunk, thetas)

    def grad_batched(self, thetas, g):
        """``J^T g`` per θ by the reverse scan, recomputing ``V`` chunk by chunk."""
        low = self.low

        def one(t, gg):
            V, valid = _forward(low, t)
            return _reverse(low, V, valid, gg)

        return _map_chunks(one, self.chunk(), thetas, g)

    def _build_batched(self):
        @jax.custom_vjp
        @_x64
        def batched(thetas):
            return self.eval_batched(thetas)

        if self.mode == "forward":

            @_x64
            def fwd(thetas):
                return self.jac_batched(thetas)  # (moments, Jacobian): J is the residual

            @_x64
            def bwd(jac, g):
                return (jnp.einsum("bk,bkp->bp", g, jac),)

        else:

            @_x64
            def fwd(thetas):
                return self.eval_batched(thetas), thetas  # V is recomputed chunk by chunk

            @_x64
            def bwd(thetas, g):
                return (self.grad_batched(thetas, g),)

        batched.defvjp(fwd, bwd)
        return batched

    # -- one θ ----------------------------------------------------------------------------
    def _build_single(self):
        ev = self

        def broadcast(axis_size, batched, x):
            return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))

        @jax.custom_batching.custom_vmap
        @_x64
        def primal(theta):
            low = ev.low
            return _moments(low, *_forward(low, theta[None]))[0]

        @primal.def_vmap
        @_x64
        def primal_vmap(axis_size, in_batched, theta):
            return ev.eval_batched(broadcast(axis_size, in_batched[0], theta)), True

        @jax.custom_vjp
        def single(theta):
            return primal(theta)

        if ev.mode == "forward":

            @jax.custom_batching.custom_vmap
            @_x64
            def jacobian(theta):
                low = ev.low
                out, jac = _jacobian(low, *_forward(low, theta[None], True))
                return out[0], jac[0]

            @jacobian.def_vmap
            @_x64
            def jacobian_vmap(axis_size, in_batched, theta):
                return ev.jac_batched(broadcast(axis_size, in_batched[0], theta)), (True, True)

            @_x64
            def fwd(theta):
                return jacobian(theta)

            @_x64
            def bwd(jac, g):
                return (g @ jac,)

            single.defvjp(fwd, bwd)
            return single

        # Reverse mode: the residuals of one θ are its values V (cheap to keep). Under
        # vmap the forward rule returns a placeholder instead (V for a whole batch would
        # cost batch × rows × 8 bytes) and the backward rule recomputes V chunk by chunk.
        @jax.custom_batching.custom_vmap
        @_x64
        def forward(theta):
            low = ev.low
            V, valid = _forward(low, theta[None])
            return _moments(low, V, valid)[0], V, valid

        @forward.def_vmap
        @_x64
        def forward_vmap(axis_size, in_batched, theta):
            thetas = broadcast(axis_size, in_batched[0], theta)
            placeholder = jnp.zeros((ev.low.n_rows, 1)), jnp.zeros(1, dtype=bool)
            return (ev.eval_batched(thetas), *placeholder), (True, False, False)

        @jax.custom_batching.custom_vmap
        @_x64
        def backward(theta, V, valid, g):
            return _reverse(ev.low, V, valid, g[None])[0]

        @backward.def_vmap
        @_x64
        def backward_vmap(axis_size, in_batched, theta, V, valid, g):
            theta_b, _, _, g_b = in_batched
            if theta_b:  # the forward ran batched: V is a placeholder, recompute it
                return ev.grad_batched(theta, broadcast(axis_size, g_b, g)), True
            # One θ, many cotangents (jax.jacrev): V is real, batch the reverse pass only.
            low = ev.low
            return jax.vmap(lambda gg: _reverse(low, V, valid, gg[None])[0])(g), True

        @_x64
        def fwd(theta):
            out, V, valid = forward(theta)
            return out, (theta, V, valid)

        @_x64
        def bwd(res, g):
            return (backward(*res, g),)

        single.defvjp(fwd, bwd)
        return single
