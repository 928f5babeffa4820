"""Graph algorithms on CSR arrays, compiled with numba (imported only when decomposing).

``ptr``/``dst`` is the usual compressed adjacency: the out-edges of vertex ``v`` are
``dst[ptr[v]:ptr[v + 1]]``. Everything here is iterative (explicit stacks), so chains of
millions of vertices need no recursion.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True}


@njit(**_JIT)
def scc_labels(ptr, dst):
    """Tarjan's strongly connected components.

    Returns ``(label, n_components)``: components are numbered in the order Tarjan
    completes them, which is a reverse topological order of the condensation (sinks
    first).
    """
    n = ptr.shape[0] - 1
    index = np.full(n, -1, dtype=np.int64)
    low = np.zeros(n, dtype=np.int64)
    on_stack = np.zeros(n, dtype=np.bool_)
    label = np.full(n, -1, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)  # Tarjan's stack of visited vertices
    work_v = np.empty(n, dtype=np.int64)  # DFS frames: vertex, next edge to look at
    work_e = np.empty(n, dtype=np.int64)
    sp = 0
    counter = 0
    n_comp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        wp = 0
        work_v[0], work_e[0] = root, ptr[root]
        index[root] = low[root] = counter
        counter += 1
        stack[sp] = root
        sp += 1
        on_stack[root] = True
        wp = 1
        while wp > 0:
            v, e = work_v[wp - 1], work_e[wp - 1]
            if e < ptr[v + 1]:
                work_e[wp - 1] = e + 1
                w = dst[e]
                if index[w] == -1:  # tree arc: descend
                    index[w] = low[w] = counter
                    counter += 1
                    stack[sp] = w
                    sp += 1
                    on_stack[w] = True
                    work_v[wp], work_e[wp] = w, ptr[w]
                    wp += 1
                elif on_stack[w] and index[w] < low[v]:  # arc back into the component
                    low[v] = index[w]
                continue
            wp -= 1
            if wp > 0:  # propagate the low-link to the parent frame
                parent = work_v[wp - 1]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == index[v]:  # v is the root of a component
                while True:
                    sp -= 1
                    w = stack[sp]
                    on_stack[w] = False
                    label[w] = n_comp
                    if w == v:
                        break
                n_comp += 1
    return label, n_comp


@njit(**_JIT)
def reaches(ptr, dst, target):
    """Which vertices have a path to a vertex with ``target[v]`` set (reverse BFS)."""
    n = ptr.shape[0] - 1
    indeg = np.zeros(n + 1, dtype=np.int64)
    for e in range(dst.shape[0]):
        indeg[dst[e] + 1] += 1
    rptr = np.cumsum(indeg)
    fill = rptr[:-1].copy()
    rsrc = np.empty(dst.shape[0], dtype=np.int64)
    for v in range(n):
        for e in range(ptr[v], ptr[v + 1]):
            w = dst[e]
            rsrc[fill[w]] = v
            fill[w] += 1
    seen = target.copy()
    queue = np.empty(n, dtype=np.int64)
    qe = 0
    for v in range(n):
        if seen[v]:
            queue[qe] = v
            qe += 1
    qs = 0
    while qs < qe:
        w = queue[qs]
        qs += 1
        for e in range(rptr[w], rptr[w + 1]):
            u = rsrc[e]
            if not seen[u]:
                seen[u] = True
                queue[qe] = u
                qe += 1
    return seen


@njit(**_JIT)
def topological_order(label, n_comp, ptr, dst, key):
    """The components in a topological order of the condensation, ties by smallest ``key``.

    ``key[c]`` must be distinct integers (the rank of the component's smallest state,
    with the start's component smallest): among the components that are ready, Kahn's
    algorithm takes the one with the smallest key. Returns component ids in order.
    """
    n = ptr.shape[0] - 1
    indeg = np.zeros(n_comp, dtype=np.int64)
    # Condensation edges, deduplicated per (source component, target component).
    m = dst.shape[0]
    cs = np.empty(m, dtype=np.int64)
    cd = np.empty(m, dtype=np.int64)
    k = 0
    for v in range(n):
        for e in range(ptr[v], ptr[v + 1]):
            a, b = label[v], label[dst[e]]
            if a != b:
                cs[k], cd[k] = a, b
                k += 1
    order = np.argsort(cs[:k] * n_comp + cd[:k])
    cptr = np.zeros(n_comp + 1, dtype=np.int64)
    cdst = np.empty(k, dtype=np.int64)
    nk = 0
    last = -1
    for i in order:
        code = cs[i] * n_comp + cd[i]
        if code == last:
            continue
        last = code
        cdst[nk] = cd[i]
        cptr[cs[i] + 1] += 1
        indeg[cd[i]] += 1
        nk += 1
    cptr = np.cumsum(cptr)
    # A binary heap of (key, component) on the ready components.
    heap_k = np.empty(n_comp, dtype=np.int64)
    heap_c = np.empty(n_comp, dtype=np.int64)
    hs = 0
    for c in range(n_comp):
        if indeg[c] == 0:
            hs = _push(heap_k, heap_c, hs, key[c], c)
    out = np.empty(n_comp, dtype=np.int64)
    no = 0
    while hs > 0:
        c = heap_c[0]
        hs = _pop(heap_k, heap_c, hs)
        out[no] = c
        no += 1
        for i in range(cptr[c], cptr[c + 1]):
            d = cdst[i]
            indeg[d] -= 1
            if indeg[d] == 0:
                hs = _push(heap_k, heap_c, hs, key[d], d)
    return out[:no]


@njit(**_JIT)
def _push(hk, hc, size, k, c):
    i = size
    hk[i], hc[i] = k, c
    while i > 0:
        p = (i - 1) // 2
        if hk[p] <= hk[i]:
            break
        hk[p], hk[i] = hk[i], hk[p]
        hc[p], hc[i] = hc[i], hc[p]
        i = p
    return size + 1


@njit(**_JIT)
def _pop(hk, hc, size):
    size -= 1
    hk[0], hc[0] = hk[size], hc[size]
    i = 0
    while True:
        a, b = 2 * i + 1, 2 * i + 2
        m = i
        if a < size and hk[a] < hk[m]:
            m = a
        if b < size and hk[b] < hk[m]:
            m = b
        if m == i:
            break
        hk[m], hk[i] = hk[i], hk[m]
        hc[m], hc[i] = hc[i], hc[m]
        i = m
    return size
