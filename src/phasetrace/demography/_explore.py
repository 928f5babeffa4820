"""Breadth-first exploration of coalescent state spaces on whole arrays of states.

The machinery behind :func:`.statespace.build_state_space`: lineage types, a store of
states with hashed keys, the moves of one interval, the closure of a set of states under
them, and the boundary maps as polynomial terms. Nothing here loops in Python per state
or per edge; loops run over types, demes or breadth-first levels.

**Keys.** A state is a vector of small counts, far too long to pack into one integer for
joint block counting (189 entries of up to 14 at 7 + 7 samples). Each state gets two
64-bit keys, ``h(s) = Σ_p s_p·w_p mod 2^64`` with random fixed weights (two independent
sets). They are linear, so a move's target key is the source's key plus the move's own
key difference: targets are looked up without building their state vectors; a vector
is built only for a state seen for the first time. Lookups go by the first key; the
second is compared on every hit, so two states that share a first key are detected
(raised, never merged silently; about ``N²/2^65`` likely for ``N`` states, and then
the second keys would have to agree as well to pass unnoticed: ``2^-64`` more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameterError
from ._spec import Move, Structure

# Fixed, so that builds are reproducible: the states new at one breadth-first level are
# numbered in the order of their keys (and a detected collision recurs, it is not random).
_HASH_SEED = 0x5A17_C0A1
# Frontier states expanded at once (bounds the (states × moves) temporaries).
_CHUNK = 1 << 15
# Source states of a boundary map composed at once (bounds its temporaries).
_MAP_CHUNK = 1 << 13
# Exponents of the map terms (at most the number of samples per symbol).
_EXP = np.int16


@dataclass(frozen=True)
class Types:
    """The lineage types of one kind of state space.

    State ``s`` has ``d·T`` entries: ``s[k·T + t]`` lineages of type ``t`` in deme ``k``.
    Two lineages of types ``t`` and ``u`` merge into type ``merge(t, u)``; for block and
    joint block counting that is ``t + u + 1``: sizes add for blocks (type ``t`` =
    ``t + 1`` samples), and for joint types the C-order flat index of ``a + b`` is the sum
    of the flat indices of ``a`` and ``b`` whenever ``a + b <= n`` (no carry), which holds
    for any two lineages present at once.
    """

    kind: str
    n_types: int
    #: (T,) samples below a lineage of each type (lineage counts: 0, not tracked).
    sizes: np.ndarray
    #: (T, S) the joint type vectors (joint only; else None).
    vectors: np.ndarray | None
    #: The initial state, (d·T,).
    start: np.ndarray

    def merge(self, t: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self.kind == "lineages":
            return np.zeros_like(t)
        return t + u + 1


def make_types(structure: Structure, kind: str) -> Types:
    d = structure.n_demes
    samples = np.asarray(structure.samples, np.int64)
    n = int(samples.sum())
    if kind == "lineages":
        return Types(kind, 1, np.zeros(1, np.int64), None, samples.copy())
    if kind == "blocks":
        start = np.zeros(d * n, np.int64)
        start[np.arange(d) * n] = samples
        return Types(kind, n, np.arange(1, n + 1), None, start)
    shape = tuple(int(samples[k]) + 1 for k in structure.sampled)
    total = math.prod(shape)
    vectors = np.stack(np.unravel_index(np.arange(1, total), shape), axis=1).astype(np.int64)
    n_types = total - 1
    start = np.zeros(d * n_types, np.int64)
    for j, k in enumerate(structure.sampled):
        if samples[k]:
            stride = math.prod(shape[j + 1 :])  # flat index of e_j
            start[k * n_types + stride - 1] = samples[k]
    return Types(kind, n_types, vectors.sum(axis=1), vectors, start)


class Explorer:
    """States found so far (in the order found) and the closure / boundary machinery."""

    def __init__(self, structure: Structure, types: Types, max_states: int, max_terms: int):
        self.structure = structure
        self.types = types
        self.max_states = max_states
        self.max_terms = max_terms
        self.d = structure.n_demes
        self.T = types.n_types
        self.L = self.d * self.T
        n = int(sum(structure.samples))
        self.dtype = np.uint8 if n < 256 else np.uint16
        rng = np.random.default_rng(_HASH_SEED)
        # One extra zero weight at position L: the "no entry" slot of a move.
        zero = np.zeros(1, np.uint64)
        self.w1 = np.concatenate([rng.integers(0, 2**64, self.L, dtype=np.uint64), zero])
        self.w2 = np.concatenate([rng.integers(0, 2**64, self.L, dtype=np.uint64), zero])
        self.n = 0
        self._states = np.zeros((1024, self.L), self.dtype)
        self._k1 = np.zeros(1024, np.uint64)
        self._k2 = np.zeros(1024, np.uint64)
        self._sorted_k1 = np.zeros(0, np.uint64)
        self._sorted_id = np.zeros(0, np.int64)
        self._memo: dict[bytes, dict] = {}  # per distinct interval rule: expanded, edges
        self.pairs = sorted(
            (int(a), int(b))
            for a, b in zip(*np.nonzero(structure.migration.any(axis=0)), strict=True)
        )

    # -- the store ------------------------------------------------------------------------
    @property
    def states(self) -> np.ndarray:
        return self._states[: self.n]

    @property
    def k1(self) -> np.ndarray:
        return self._k1[: self.n]

    @property
    def k2(self) -> np.ndarray:
        return self._k2[: self.n]

    def hash(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = rows.astype(np.uint64)
        with np.errstate(over="ignore"):
            return (r * self.w1[: self.L]).sum(axis=1), (r * self.w2[: self.L]).sum(axis=1)

    def lookup(self, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Store ids of the states with these keys, -1 where unknown."""
        if not self._sorted_k1.size:
            return np.full(k1.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_k1, k1), self._sorted_k1.size - 1)
        hit = self._sorted_k1[pos] == k1
        ids = np.where(hit, self._sorted_id[pos], -1)
        if (self._k2[ids[hit]] != k2[hit]).any():
            _collision()
        return ids

    def add(self, rows: np.ndarray, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Append new states (distinct first keys, none stored yet); their ids."""
        m = rows.shape[0]
        if self.n + m > self.max_states:
            raise InvalidParameterError(
                f"the state space grew past max_states={self.max_states:,} while it was built "
                "(the estimate was below it); use kind 'lineages' for T_MRCA, the large-n SFS "
                "for samples in one panmictic deme, or fewer samples (or raise max_states)"
            )
        if self.n + m > self._states.shape[0]:
            cap = max(2 * self._states.shape[0], self.n + m)
            self._states = _grow(self._states, cap)
            self._k1 = _grow(self._k1, cap)
            self._k2 = _grow(self._k2, cap)
        ids = np.arange(self.n, self.n + m)
        self._states[ids] = rows
        self._k1[ids], self._k2[ids] = k1, k2
        self.n += m
        order = np.argsort(k1)
        at = np.searchsorted(self._sorted_k1, k1[order])
        self._sorted_k1 = np.insert(self._sorted_k1, at, k1[order])
        self._sorted_id = np.insert(self._sorted_id, at, ids[order])
        return ids

    def find_or_add(self, rows: np.ndarray, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Ids of distinct states given with their vectors, adding the unknown ones."""
        ids = self.lookup(k1, k2)
        miss = np.flatnonzero(ids < 0)
        if miss.size:
            ids[miss] = self.add(rows[miss], k1[miss], k2[miss])
        return ids

    # -- one interval ----------------------------------------------------------------------
    def close(self, seeds: np.ndarray, i: int) -> tuple[np.ndarray, list]:
        """The closure of ``seeds`` under interval ``i``'s moves, and its new edges.

        Returns the store ids of the closure (seeds first, then level by level) and a list
        of edge blocks ``(src, dst, count, param)``. Intervals with the same moves (say,
        epochs that differ only in sizes) share one record: a state expanded under them
        before is not expanded again; its children come from the recorded edges, and only
        edges not recorded yet are returned.
        """
        rule = self._interval_rule(i)
        key = self.structure.exists[i].tobytes() + self.structure.migration[i].tobytes()
        memo = self._memo.setdefault(key, {"done": np.zeros(0, bool), "edges": []})
        old_src, old_dst = _recorded(memo)
        order = np.argsort(old_src, kind="stable")
        old_src, old_dst = old_src[order], old_dst[order]
        done = memo["done"]
        mark = np.zeros(0, bool)
        frontier = np.unique(seeds)
        members, edges = [], []
        while frontier.size:
            mark, done = _fit(mark, self.n), _fit(done, self.n)
            mark[frontier] = True
            members.append(frontier)
            seen = done[frontier]
            todo = frontier[~seen]
            found = []
            if seen.any():  # children recorded under this rule
                lo = np.searchsorted(old_src, frontier[seen])
                hi = np.searchsorted(old_src, frontier[seen], side="right")
                x, off = _ranges(hi - lo)
                found.append(old_dst[lo[x] + off])
            for lo in range(0, todo.size, _CHUNK):
                src, dst, count, param = self._expand(todo[lo : lo + _CHUNK], rule)
                edges.append((src, dst, count, param))
                found.append(dst)
            done[todo] = True
            mark = _fit(mark, self.n)
            cand = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
            frontier = cand[~mark[cand]]
        memo["done"] = done
        memo["edges"].extend(edges)
        return np.concatenate(members), edges

    def rule_edges(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Every edge recorded under interval ``i``'s moves: (src, dst)."""
        key = self.structure.exists[i].tobytes() + self.structure.migration[i].tobytes()
        return _recorded(self._memo[key])

    def forget_edges(self) -> None:
        """Drop the per-rule records (once every interval is closed)."""
        self._memo.clear()

    def _interval_rule(self, i: int):
        s = self.structure
        coal = np.asarray(s.exists[i], bool)
        mig = np.asarray(s.migration[i], bool)
        n_targets = mig.sum(axis=1)
        ptr = np.concatenate([[0], np.cumsum(n_targets)])
        src_deme, tgt = np.nonzero(mig)  # row by row: grouped by source deme
        index = {p: j for j, p in enumerate(self.pairs)}
        tparam = np.array(
            [self.d + index[(int(a), int(b))] for a, b in zip(src_deme, tgt, strict=True)], np.int64
        )
        return coal, n_targets, ptr, tgt.astype(np.int64), tparam

    def _expand(self, ids: np.ndarray, rule):
        """Every move of interval rule from the states ``ids``: (src, dst, count, param)."""
        coal, n_targets, tptr, tgt, tparam = rule
        T, d, L = self.T, self.d, self.L
        F = self.states[ids]
        r, c = np.nonzero(F)
        cnt = F[r, c].astype(np.int64)
        deme = c // T
        typ = c - deme * T
        alive = F.sum(axis=1, dtype=np.int64) >= 2  # one lineage left: absorbed
        blocks = []
        # Coalescence: pairs of entries (x <= y) of one state and one deme. Entries come
        # sorted by (state, deme, type), so each (state, deme) group is contiguous.
        e = np.flatnonzero(coal[deme])
        if e.size:
            g = r[e] * d + deme[e]
            first = np.concatenate([[True], g[1:] != g[:-1]])
            end = np.concatenate([np.flatnonzero(first)[1:], [e.size]])[np.cumsum(first) - 1]
            x, off = _ranges(end - np.arange(e.size))
            y = e[x + off]
            x = e[x]
            keep = (off > 0) | (cnt[x] >= 2)
            x, y, same = x[keep], y[keep], off[keep] == 0
            count = np.where(same, cnt[x] * (cnt[x] - 1) // 2, cnt[x] * cnt[y])
            pos = deme[x] * T + self.types.merge(typ[x], typ[y])
            blocks.append((r[x], c[x], c[y], pos, count, deme[x]))
        # Migration: each entry of a live state, to each target of its deme.
        e = np.flatnonzero(alive[r] & (n_targets[deme] > 0))
        if e.size:
            x, j = _ranges(n_targets[deme[e]])
            x = e[x]
            at = tptr[deme[x]] + j
            pos = tgt[at] * T + typ[x]
            blocks.append((r[x], c[x], np.full(x.size, L), pos, cnt[x], tparam[at]))
        if not blocks:
            z = np.zeros(0, np.int64)
            return z, z, z, z
        row, neg1, neg2, pos, count, param = (np.concatenate(a) for a in zip(*blocks, strict=True))
        src = ids[row]
        with np.errstate(over="ignore"):
            k1 = self._k1[src] + self.w1[pos] - self.w1[neg1] - self.w1[neg2]
            k2 = self._k2[src] + self.w2[pos] - self.w2[neg1] - self.w2[neg2]
        dst = self.lookup(k1, k2)
        miss = np.flatnonzero(dst < 0)
        if miss.size:
            uk, first, inv = np.unique(k1[miss], return_index=True, return_inverse=True)
            rep = miss[first]
            if (k2[rep][inv] != k2[miss]).any():
                _collision()
            rows = self._states[src[rep]].copy()
            at = np.arange(rep.size)
            rows[at, neg1[rep]] -= 1
            two = neg2[rep] < L
            rows[at[two], neg2[rep][two]] -= 1
            rows[at, pos[rep]] += 1
            dst[miss] = self.add(rows, uk, k2[rep])[inv]
        return src, dst, count, param

    # -- boundaries ------------------------------------------------------------------------
    def boundary(self, ids: np.ndarray, events: tuple[Move, ...], n_prop: int):
        """The composed map of one boundary from the states ``ids``.

        Returns ``(src, dst, coef, exps, stay_index)`` over store ids (the targets added to
        the store), where ``stay_index[j]`` is the proportion index tuple of the move whose
        stay probability is symbol ``n_prop + j``. Absorbed states map to themselves.
        Rows are independent, so the sources go in pieces: the temporaries of a piece are
        bounded whatever the number of terms.
        """
        stay_index, cols = [], []
        for mv in events:
            stay_col = -1
            if mv.stay:
                stay_col = n_prop + len(stay_index)
                stay_index.append(tuple(mv.index))
            cols.append(stay_col)
        n_sym = n_prop + len(stay_index)
        total = self.states[ids].sum(axis=1, dtype=np.int64)
        absorbed, live = ids[total < 2], ids[total >= 2]
        self._terms_left = self.max_terms - absorbed.size
        pieces = []
        for lo in range(0, live.size, _MAP_CHUNK):
            pieces.append(self._compose(live[lo : lo + _MAP_CHUNK], events, cols, n_sym))
            self._terms_left -= pieces[-1][0].size
        pieces.append(
            (absorbed, absorbed, np.ones(absorbed.size), np.zeros((absorbed.size, n_sym), _EXP))
        )
        src, dst, coef, exps = (np.concatenate(x) for x in zip(*pieces, strict=True))
        return src, dst, coef, exps, tuple(stay_index)

    def _compose(self, part: np.ndarray, events, cols, n_sym: int):
        """The events of one boundary, in order, from the states ``part``: map terms."""
        src, mid = part, np.arange(part.size)
        coef, exps = np.ones(part.size), np.zeros((part.size, n_sym), _EXP)
        if not events:
            return src, part, coef, exps
        V, K1, K2 = self.states[part], self.k1[part], self.k2[part]
        for e, (mv, stay_col) in enumerate(zip(events, cols, strict=True)):
            n_before = V.shape[0]
            frm, to, c2, x2, K1, K2, build = self._event(V, K1, K2, mv, stay_col, n_sym)
            ids = self.lookup(K1, K2)
            miss = np.flatnonzero(ids < 0)
            if e == len(events) - 1:  # the targets: vertices
                if miss.size:
                    ids[miss] = self.add(build(miss), K1[miss], K2[miss])
            else:  # an intermediate: vectors for the next event, stored or built
                V = np.empty((K1.size, self.L), self.dtype)
                known = np.flatnonzero(ids >= 0)
                V[known] = self.states[ids[known]]
                V[miss] = build(miss)
            ptr = np.searchsorted(frm, np.arange(n_before + 1))
            self._spend(frm.size)
            self._spend(int((ptr[mid + 1] - ptr[mid]).sum()))
            a, off = _ranges(ptr[mid + 1] - ptr[mid])
            b = ptr[mid][a] + off
            src, mid, coef, exps = src[a], to[b], coef[a] * c2[b], exps[a] + x2[b]
            if e:  # two paths can meet only once two events have applied
                src, mid, coef, exps = merge_terms(src, mid, coef, exps)
        return src, ids[mid], coef, exps

    def _spend(self, n_terms: int) -> None:
        if n_terms > self._terms_left:
            raise InvalidParameterError(
                f"a boundary map needs more than max_map_terms={self.max_terms:,} terms: every "
                "lineage in a pulse's source deme moves or stays on its own, so each state "
                "maps to many; use fewer samples, a coarser kind ('lineages' for T_MRCA, "
                "'blocks' for the pooled SFS), or pass a larger max_map_terms if the memory "
                "allows (about 30 bytes per term)"
            )

    def _event(self, V, K1, K2, mv: Move, stay_col: int, n_sym: int):
        """One move applied to the (intermediate) states ``V``.

        Each lineage in the source deme goes to target ``j`` (or stays) independently, so
        the outcome is a product over types of multinomials, and it depends only on the
        source deme's content. Outcomes are made once per distinct content; a state's
        target key is its key plus the outcome's key difference.

        Returns ``(frm, to, coef, exps, k1, k2, build)``: terms from row ``frm`` of ``V``
        to distinct target ``to`` (keys ``k1[to]``, ``k2[to]``), and ``build(sel)``, the
        vectors of the targets ``sel``.
        """
        T, k = self.T, mv.source
        q = len(mv.targets)
        if mv.deterministic:
            return self._all_move(V, K1, K2, k, mv.targets[0], n_sym)
        parts_n = q + (1 if mv.stay else 0)
        content = V[:, k * T : (k + 1) * T]
        # Distinct contents by their keys (sorting rows of T bytes is far slower).
        c = content.astype(np.uint64)
        with np.errstate(over="ignore"):
            h1 = (c * self.w1[k * T : (k + 1) * T]).sum(axis=1)
            h2 = (c * self.w2[k * T : (k + 1) * T]).sum(axis=1)
        del c
        _, first, inv = np.unique(h1, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if (h2[first][inv] != h2).any():
            _collision()
        U = content[first]
        # A content holds few of the T types: work on its occupied slots (type, count).
        ur, ut = np.nonzero(U)
        z = np.bincount(ur, minlength=U.shape[0])
        slot = np.arange(ur.size) - (np.cumsum(z) - z)[ur]
        width = int(z.max(initial=0))
        stype = np.zeros((U.shape[0], width), np.int64)
        scount = np.zeros((U.shape[0], width), np.int64)
        stype[ur, slot], scount[ur, slot] = ut, U[ur, ut]
        comp = _Compositions(int(scount.max(initial=0)), parts_n)
        nc = comp.count[scount]  # (nU, width) choices per slot; 1 for an empty slot
        stride = np.cumprod(np.concatenate([np.ones((U.shape[0], 1), np.int64), nc], 1), 1)
        n_out = stride[:, -1]
        uid, idx = _ranges(n_out)
        ocoef = np.ones(uid.size)
        oexps = np.zeros((uid.size, n_sym), _EXP)
        dk1 = np.zeros(uid.size, np.uint64)
        dk2 = np.zeros(uid.size, np.uint64)

        def choice(u, i, j):
            """Type and composition row of slot j for outcome i of content u."""
            return stype[u, j], comp.ptr[scount[u, j]] + (i // stride[u, j]) % nc[u, j]

        with np.errstate(over="ignore"):
            for j in range(width):
                a, ci = choice(uid, idx, j)
                parts = comp.parts[ci]
                ocoef *= comp.coef[ci]
                for jj, t in enumerate(mv.targets):
                    if mv.index:
                        oexps[:, mv.index[jj]] += parts[:, jj].astype(_EXP)
                    pj = parts[:, jj].astype(np.uint64)
                    dk1 += pj * (self.w1[t * T + a] - self.w1[k * T + a])
                    dk2 += pj * (self.w2[t * T + a] - self.w2[k * T + a])
                if mv.stay:
                    oexps[:, stay_col] += parts[:, q].astype(_EXP)
        # Join states with the outcomes of their content.
        optr = np.concatenate([[0], np.cumsum(n_out)])
        frm, off = _ranges(n_out[inv])
        orow = optr[inv[frm]] + off
        with np.errstate(over="ignore"):
            k1 = K1[frm] + dk1[orow]
            k2 = K2[frm] + dk2[orow]
        uk, first, to = np.unique(k1, return_index=True, return_inverse=True)
        to = to.reshape(-1)
        if (k2[first][to] != k2).any():
            _collision()

        def build(sel: np.ndarray) -> np.ndarray:
            rep = first[sel]
            rows = V[frm[rep]].copy()
            at = np.arange(rep.size)
            ru, ri = uid[orow[rep]], idx[orow[rep]]
            for j in range(width):
                a, ci = choice(ru, ri, j)
                parts = comp.parts[ci].astype(rows.dtype)
                for jj, t in enumerate(mv.targets):
                    rows[at, k * T + a] -= parts[:, jj]
                    rows[at, t * T + a] += parts[:, jj]
            return rows

        return frm, to, ocoef[orow], oexps[orow], uk, k2[first], build

    def _all_move(self, V, K1, K2, k: int, t: int, n_sym: int):
        """A split or branch: every lineage of deme ``k`` moves to deme ``t``."""
        T = self.T
        here, there = slice(k * T, (k + 1) * T), slice(t * T, (t + 1) * T)
        c = V[:, here].astype(np.uint64)
        with np.errstate(over="ignore"):
            k1 = K1 + (c * (self.w1[there] - self.w1[here])).sum(axis=1)
            k2 = K2 + (c * (self.w2[there] - self.w2[here])).sum(axis=1)
        uk, first, to = np.unique(k1, return_index=True, return_inverse=True)
        to = to.reshape(-1)
        if (k2[first][to] != k2).any():
            _collision()

        def build(sel: np.ndarray) -> np.ndarray:
            rows = V[first[sel]].copy()
            rows[:, there] += rows[:, here]
            rows[:, here] = 0
            return rows

        m = V.shape[0]
        return np.arange(m), to, np.ones(m), np.zeros((m, n_sym), _EXP), uk, k2[first], build


class _Compositions:
    """Every way to split ``m <= M`` lineages into ``q`` ordered parts, with multinomials.

    The compositions of ``m`` are rows ``ptr[m] : ptr[m + 1]`` of ``parts``; ``coef`` is
    ``m! / Π parts!`` (exact in float64 while below 2^53).
    """

    def __init__(self, M: int, q: int):
        parts = np.arange(M + 1)[:, None]  # one part: the whole
        for _ in range(q - 1):
            total = parts.sum(axis=1)
            x, first = _ranges(M + 1 - total)  # a new first part 0 … M − total
            parts = np.concatenate([first[:, None], parts[x]], axis=1)
        total = parts.sum(axis=1)
        order = np.lexsort([*parts.T[::-1], total])
        parts, total = parts[order], total[order]
        binom = _binomials(M)
        coef = np.ones(parts.shape[0])
        left = total.copy()
        for j in range(q - 1):
            coef *= binom[left, parts[:, j]]
            left = left - parts[:, j]
        if not np.isfinite(coef).all():
            raise InvalidParameterError(
                f"a boundary moves up to {M} lineages of one type at once: their multinomial "
                "coefficients overflow float64 (past about 1,000 lineages); use fewer samples"
            )
        self.parts, self.coef = parts, coef
        self.ptr = np.searchsorted(total, np.arange(M + 2))
        self.count = np.diff(self.ptr)


def _binomials(M: int) -> np.ndarray:
    b = np.zeros((M + 1, M + 1))
    b[:, 0] = 1.0
    for m in range(1, M + 1):
        b[m, 1:] = b[m - 1, 1:] + b[m - 1, :-1]
    return b


def merge_terms(src, dst, coef, exps):
    """Sum the coefficients of terms with equal ``(src, dst, exps)``."""
    if src.size < 2:
        return src, dst, coef, exps
    x = exps.astype(np.int64)
    base = int(x.max(initial=0)) + 1
    lo = int(src.min())
    span = (int(src.max()) - lo + 1) * (int(dst.max()) + 1) * base ** x.shape[1]
    if span < 2**62:  # one packed int64 key
        key = (src - lo) * (int(dst.max()) + 1) + dst
        for j in range(x.shape[1]):
            key = key * base + x[:, j]
        order = np.argsort(key, kind="stable")
        key = key[order]
        new = np.concatenate([[True], key[1:] != key[:-1]])
    else:
        order = np.lexsort([x[:, j] for j in range(x.shape[1] - 1, -1, -1)] + [dst, src])
        s, t, e = src[order], dst[order], x[order]
        new = np.ones(src.size, bool)
        new[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1]) | (e[1:] != e[:-1]).any(axis=1)
    at = order[np.flatnonzero(new)]
    return src[at], dst[at], np.add.reduceat(coef[order], np.flatnonzero(new)), exps[at]


def _ranges(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each ``i``, ``lengths[i]`` rows ``(i, 0 … lengths[i] − 1)``: (owner, offset)."""
    lengths = np.asarray(lengths, np.int64)
    owner = np.repeat(np.arange(lengths.size), lengths)
    start = np.cumsum(lengths) - lengths
    return owner, np.arange(owner.size) - start[owner]


def _recorded(memo: dict) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of the edges recorded under one rule."""
    if not memo["edges"]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate([e[c] for e in memo["edges"]]) for c in (0, 1))


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
    """A bool mask over the first ``n`` states (new ones False)."""
    return mask if mask.size >= n else np.concatenate([mask, np.zeros(n - mask.size, bool)])


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def _collision():
    raise AssertionError(
        "build_state_space: two different states share a 64-bit key (chance about 1e-8 "
        "per million states); please report this model"
    )
