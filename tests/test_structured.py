"""Structured-coalescent builders and the SFS helper (issue 13).

The references here share no code with ``phasetrace.models.structured``: closed forms
(Kingman, two lineages in the island model), the existing ``kingman``/``two_island``
builders, and a dense sub-intensity matrix built from an independent enumeration in
which a state is, per deme, the sorted tuple of the sizes of its lineages, and every
transition is generated lineage by lineage (each pair of lineages, each single lineage).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.models import kingman, two_island
from phasetrace.models.structured import structured_coalescent, structured_parameters
from phasetrace.spectrum import sfs, sfs_function, sfs_layout, sfs_rewards
from reference import rel_err

RTOL = 1e-10


# -- the independent dense reference ----------------------------------------------------------
def dense_chain(samples, coal, mig):
    """``(alpha, S, states)`` by plain loops over lineages.

    ``coal[k]``: pairwise coalescence rate in deme ``k``; ``mig[i][j]``: rate at which one
    lineage moves from deme ``i`` to ``j`` (0: never). A state is a tuple with, for each
    deme, the sorted tuple of its lineages' sizes (number of samples subtended).
    """
    d = len(samples)
    start = tuple(tuple([1] * a) for a in samples)

    def moves(state):
        out = {}
        if sum(len(deme) for deme in state) <= 1:
            return out
        for k, deme in enumerate(state):
            for x in range(len(deme)):
                for y in range(x + 1, len(deme)):  # each unordered pair of lineages
                    rest = [deme[z] for z in range(len(deme)) if z not in (x, y)]
                    merged = tuple(sorted([*rest, deme[x] + deme[y]]))
                    nxt = tuple(merged if kk == k else state[kk] for kk in range(d))
                    out[nxt] = out.get(nxt, 0.0) + coal[k]
                for j in range(d):  # lineage x leaves deme k for deme j
                    if j == k or mig[k][j] == 0:
                        continue
                    rest = tuple(deme[z] for z in range(len(deme)) if z != x)
                    joined = tuple(sorted([*state[j], deme[x]]))
                    nxt = tuple(
                        rest if kk == k else joined if kk == j else state[kk] for kk in range(d)
                    )
                    out[nxt] = out.get(nxt, 0.0) + mig[k][j]
        return out

    index = {start: 0}
    order = [start]
    edges = {}
    i = 0
    while i < len(order):
        edges[order[i]] = moves(order[i])
        for nxt in edges[order[i]]:
            if nxt not in index:
                index[nxt] = len(order)
                order.append(nxt)
        i += 1
    transient = [s for s in order if edges[s]]
    pos = {s: p for p, s in enumerate(transient)}
    S = np.zeros((len(transient), len(transient)))
    for s in transient:
        for nxt, rate in edges[s].items():
            S[pos[s], pos[s]] -= rate
            if nxt in pos:
                S[pos[s], pos[nxt]] += rate
    alpha = np.zeros(len(transient))
    alpha[pos[start]] = 1.0
    return alpha, S, transient


def dense_moments(samples, coal, mig):
    """``E[T]``, ``E[T²]`` and ``E[ξ_i]`` (i = 1..n−1) from the dense matrix."""
    alpha, S, states = dense_chain(samples, coal, mig)
    n = sum(samples)
    ones = np.ones(len(states))
    u1 = np.linalg.solve(-S, ones)
    u2 = np.linalg.solve(-S, u1)
    sizes = [[sum(deme.count(i) for deme in s) for i in range(1, n)] for s in states]
    xi = alpha @ np.linalg.solve(-S, np.array(sizes, dtype=float))
    return alpha @ u1, 2 * alpha @ u2, xi


def rates(d, theta, migration, coalescence):
    """``coal[k]`` and ``mig[i][j]`` at θ, written out per scheme for the reference."""
    theta = list(theta)
    if coalescence == "shared":
        coal, rest = [theta[0]] * d, theta[1:]
    elif coalescence == "per_deme":
        coal, rest = theta[:d], theta[d:]
    else:
        n_c = max(coalescence) + 1
        coal, rest = [theta[p] for p in coalescence], theta[n_c:]
    mig = [[0.0] * d for _ in range(d)]
    pairs = [(i, j) for i in range(d) for j in range(d) if i != j]
    if migration == "symmetric":
        for i, j in pairs:
            mig[i][j] = rest[0]
    elif migration == "directed":
        for p, (i, j) in enumerate(pairs):
            mig[i][j] = rest[p]
    elif migration == "pairwise":
        for p, (i, j) in enumerate([(i, j) for i, j in pairs if i < j]):
            mig[i][j] = mig[j][i] = rest[p]
    else:
        for i, j in pairs:
            if migration[i][j] >= 0:
                mig[i][j] = rest[migration[i][j]]
    return coal, mig


# -- one deme: Kingman ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_one_deme_is_kingman(n):
    for space in ("blocks", "lineages"):
        g = structured_coalescent((n,), state_space=space)
        assert g.n_params == 1
        assert pt.record_trace(g).digest() == pt.record_trace(kingman(n, space)).digest()


@pytest.mark.parametrize("n", [2, 4, 9])
@pytest.mark.parametrize("c", [1.0, 0.7])
def test_kingman_closed_forms(n, c):
    var = sum(1.0 / (k * (k - 1) / 2 * c) ** 2 for k in range(2, n + 1))
    mean = 2 * (1 - 1 / n) / c
    for space in ("blocks", "lineages"):
        tr = pt.record_trace(structured_coalescent((n,), state_space=space))
        m1, m2 = tr.moments([c], k=2)
        assert rel_err([m1, m2 - m1**2], [mean, var]) < RTOL
    tr = pt.record_trace(structured_coalescent((n,), state_space="blocks"))
    i = np.arange(1, n)
    assert rel_err(sfs(tr, [c]), 2 / (i * c)) < RTOL
    assert rel_err(sfs(tr, [c], normalised=True), (1 / i) / np.sum(1 / i)) < RTOL


# -- two demes: two_island --------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4, 7])
def test_two_island_is_the_two_deme_lineage_model(n):
    g = structured_coalescent((n, 0), "symmetric")
    ref = two_island(n)
    assert structured_parameters(2) == ["c", "m"]
    tr, tr_ref = pt.record_trace(g), pt.record_trace(ref)
    thetas = np.array([[1.0, 0.5], [0.3, 2.0], [2.5, 0.01]])
    assert rel_err(tr.moments(thetas, k=3), tr_ref.moments(thetas, k=3)) < 1e-13
    assert tr.digest() == tr_ref.digest()


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("space", ["lineages", "blocks"])
def test_island_model_two_lineages(d, space):
    """Same deme: E[T] = d/c for every m; different demes: d/c + 1/(2m)."""
    c, m = 0.8, 0.35
    same = pt.record_trace(structured_coalescent((2,) + (0,) * (d - 1), state_space=space))
    apart = pt.record_trace(structured_coalescent((1, 1) + (0,) * (d - 2), state_space=space))
    assert rel_err(same.expectation([c, m]), d / c) < RTOL
    assert rel_err(same.expectation([c, 5 * m]), d / c) < RTOL
    assert rel_err(apart.expectation([c, m]), d / c + 1 / (2 * m)) < RTOL


# -- against the dense reference --------------------------------------------------------------
RING = [[-1, 0, -1], [-1, -1, 1], [2, -1, -1]]  # 0 → 1 → 2 → 0, one parameter each
ONE_WAY = [[-1, 0], [-1, -1]]  # deme 0 → deme 1 only
CASES = [  # samples, migration, coalescence, θ
    ((3, 2), "symmetric", "shared", [1.3, 0.4]),
    ((2, 2), "directed", "per_deme", [0.6, 1.7, 0.25, 1.1]),
    ((4, 0), "pairwise", "per_deme", [1.0, 0.3, 0.7]),
    ((1, 3), ONE_WAY, "shared", [0.9, 0.45]),
    ((2, 1, 1), "symmetric", "shared", [1.0, 0.5]),
    ((2, 2, 1), "pairwise", "per_deme", [1.1, 0.5, 2.0, 0.3, 0.9, 0.15]),
    ((3, 1, 0), "directed", "shared", [0.8, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    ((1, 2, 2), RING, [0, 0, 1], [1.2, 0.4, 0.6, 1.5, 0.2]),
    ((0, 0, 3), "symmetric", "shared", [2.0, 0.05]),
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}-{c[1] if isinstance(c[1], str) else 'matrix'}"
)
def test_against_dense_generator(case):
    samples, migration, coalescence, theta = case
    d = len(samples)
    coal, mig = rates(d, theta, migration, coalescence)
    t1, t2, xi = dense_moments(samples, coal, mig)
    for space in ("lineages", "blocks"):
        g = structured_coalescent(samples, migration, coalescence=coalescence, state_space=space)
        assert (
            g.n_params
            == len(theta)
            == len(structured_parameters(d, migration, coalescence=coalescence))
        )
        tr = pt.record_trace(g)
        assert rel_err(tr.moments(theta, k=2), [t1, t2]) < RTOL
        if space == "blocks":
            assert sfs_layout(tr) == (sum(samples), d)
            assert rel_err(sfs(tr, theta), xi) < RTOL
            assert rel_err(sfs(tr, theta, normalised=True), xi / xi.sum()) < RTOL


@pytest.mark.parametrize("samples", [(2, 2), (3, 1), (2, 1, 1)])
def test_block_sfs_against_dense_batch(samples):
    """A batch of θ (symmetric migration), n = 4: SFS, and E[T] from the SFS (Σ ξ_i/i…)."""
    d = len(samples)
    tr = pt.record_trace(structured_coalescent(samples, state_space="blocks"))
    thetas = np.array([[1.0, 0.5], [0.4, 3.0], [2.0, 0.02]])
    got = sfs(tr, thetas)
    assert got.shape == (3, sum(samples) - 1)
    for row, theta in zip(got, thetas, strict=True):
        coal, mig = rates(d, theta, "symmetric", "shared")
        assert rel_err(row, dense_moments(samples, coal, mig)[2]) < RTOL


def test_states_and_rates_small():
    """The exact graph of samples (1, 1), lineage counts: four vertices, c and m edges."""
    g = structured_coalescent((1, 1))
    alpha, S = g.to_matrices([2.0, 3.0])
    # transient states (vertices order): the start state is [1, 1]; [2, 0] and [0, 2]
    # are reached by migration (rate m each) and coalesce at rate c.
    states = [tuple(v.state().tolist()) for v in g.vertices() if not v.is_starting()]
    assert sorted(states) == [(0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    t1, t2, _ = dense_moments((1, 1), [2.0, 2.0], [[0, 3.0], [3.0, 0]])
    assert rel_err(pt.record_trace(g).moments([2.0, 3.0], k=2), [t1, t2]) < RTOL
    assert rel_err(alpha @ np.linalg.solve(-S, np.ones(len(alpha))), t1) < RTOL


def test_no_migration_when_all_samples_share_a_deme():
    g = structured_coalescent((3, 0), [[-1, -1], [-1, -1]])
    assert g.n_params == 1
    tr = pt.record_trace(g)
    assert rel_err(tr.expectation([1.0]), 2 * (1 - 1 / 3)) < RTOL


# -- parameters -------------------------------------------------------------------------------
def test_structured_parameters():
    assert structured_parameters(1) == ["c"]
    assert structured_parameters(3, "pairwise", coalescence="per_deme") == [
        "c0", "c1", "c2", "m01", "m02", "m12",
    ]  # fmt: skip
    assert structured_parameters(3, "directed") == [
        "c", "m01", "m02", "m10", "m12", "m20", "m21",
    ]  # fmt: skip
    assert structured_parameters(3, RING, coalescence=[0, 0, 1]) == [
        "c0", "c1", "m[0]", "m[1]", "m[2]",
    ]  # fmt: skip
    assert structured_parameters(12, "pairwise")[-1] == "m10_11"
    for d in (1, 2, 4):
        for mig in ("symmetric", "pairwise", "directed"):
            for coal in ("shared", "per_deme"):
                g = structured_coalescent((2,) + (0,) * (d - 1), mig, coalescence=coal)
                assert g.n_params == len(structured_parameters(d, mig, coalescence=coal))


def test_parameter_roles_by_gradient():
    """Each θ entry moves the rates it names: E[T] of samples (1, 1) under "directed"
    depends on m01 and m10 but a deme-0-only sample (2, 0) with per-deme c only on c0
    until a lineage migrates."""
    tr = pt.record_trace(structured_coalescent((1, 1, 0), "directed", coalescence="per_deme"))
    theta = np.array([1.0, 1.5, 0.5, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8])
    grad = tr.gradient(theta)
    h = 1e-6
    for p in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        fd = (tr.expectation(up) - tr.expectation(down)) / (2 * h)
        assert abs(grad[p] - fd) < 1e-6 * max(1.0, abs(fd))
    coal, mig = rates(3, theta, "directed", "per_deme")
    assert rel_err(tr.expectation(theta), dense_moments((1, 1, 0), coal, mig)[0]) < RTOL


# -- input checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": (3, -1)}, ">= 0"),
        ({"samples": (1, 0)}, "at least 2"),
        ({"samples": (0,)}, "at least 2"),
        ({"samples": ()}, "at least one deme"),
        ({"samples": 5}, "one count per deme"),
        ({"samples": (2.5, 1)}, "must be an int"),
        ({"samples": (True, 2)}, "must be an int"),
        ({"samples": (2, 2), "state_space": "counts"}, "state_space"),
        ({"samples": (2, 2), "migration": "island"}, "migration must be one of"),
        ({"samples": (2, 2), "migration": [[-1, 0, 0], [0, -1, 0]]}, r"shape \(2, 2\)"),
        ({"samples": (2, 2), "migration": [[0, 0], [0, -1]]}, "diagonal"),
        ({"samples": (2, 2), "migration": [[-1, -2], [0, -1]]}, ">= 0 or -1"),
        ({"samples": (2, 2), "migration": [[-1, 0.5], [0, -1]]}, "integers"),
        ({"samples": (2, 2), "migration": [[-1, 0], [2, -1]]}, r"\[1\] are not used"),
        ({"samples": (1, 1), "migration": [[-1, -1], [-1, -1]]}, "never meet"),
        ({"samples": (2, 1, 0), "migration": [[-1, 0, -1], [-1, -1, -1], [-1, 0, -1]]}, None),
        ({"samples": (1, 1, 0), "migration": [[-1, -1, 0], [-1, -1, 0], [0, -1, -1]]}, None),
        ({"samples": (1, 1, 0), "migration": [[-1, -1, 0], [-1, -1, -1], [-1, -1, -1]]}, "never"),
        ({"samples": (2, 2), "coalescence": "per_lineage"}, "coalescence must be one of"),
        ({"samples": (2, 2), "coalescence": [0]}, "one parameter index per deme"),
        ({"samples": (2, 2), "coalescence": [0, -1]}, ">= 0"),
        ({"samples": (2, 2), "coalescence": [1, 1]}, r"\[0\] are not used"),
    ],
)
def test_invalid_arguments(kwargs, match):
    kwargs = dict(kwargs)
    samples = kwargs.pop("samples")
    if match is None:  # valid corner cases: lineages can always meet
        structured_coalescent(samples, **kwargs).validate()
        return
    with pytest.raises(ValueError, match=match):
        structured_coalescent(samples, **kwargs)


def test_disconnected_demes_are_refused_before_building():
    """Without the check the graph would have states that never absorb."""
    with pytest.raises(ValueError, match="demes 0 and 1"):
        structured_coalescent((2, 2), [[-1, -1], [-1, -1]], state_space="blocks")


def test_structured_parameters_checks():
    with pytest.raises(ValueError, match="n_demes"):
        structured_parameters(0)
    with pytest.raises(ValueError, match="shape"):
        structured_parameters(3, [[-1, 0], [0, -1]])


# -- the SFS helper ---------------------------------------------------------------------------
def test_sfs_layout_and_rewards():
    tr = pt.record_trace(structured_coalescent((2, 1), state_space="blocks"))
    assert sfs_layout(tr) == (3, 2)
    assert sfs_layout(tr, n_demes=2) == (3, 2)
    r = sfs_rewards(tr)
    assert r.shape == (2, tr.n_vertices)
    for col, s in enumerate(tr.states):
        assert r[:, col].tolist() == [s[0] + s[3], s[1] + s[4]]
    with pytest.raises(ValueError, match="not a block-counting trace of 3 deme"):
        sfs_layout(tr, n_demes=3)
    with pytest.raises(ValueError, match="not a multiple"):
        sfs_layout(tr, n_demes=4)
    with pytest.raises(ValueError, match="positive int"):
        sfs_layout(tr, n_demes=0)
    lineages = pt.record_trace(structured_coalescent((3, 2)))
    with pytest.raises(ValueError, match="not a block-counting trace"):
        sfs(lineages, [1.0, 1.0])
    with pytest.raises(ValueError, match="not a block-counting trace"):
        sfs(pt.record_trace(kingman(5, "lineages")), [1.0])


def test_sfs_second_moments_via_rewards():
    """E[ξ_i²] through sfs_rewards and Trace.moments, against the dense formula."""
    samples = (2, 1)
    theta = [0.9, 0.6]
    tr = pt.record_trace(structured_coalescent(samples, state_space="blocks"))
    m = tr.moments(theta, k=2, rewards=sfs_rewards(tr))
    alpha, S, states = dense_chain(samples, [0.9, 0.9], [[0, 0.6], [0.6, 0]])
    for i in (1, 2):
        r = np.array([sum(deme.count(i) for deme in s) for s in states], dtype=float)
        z1 = np.linalg.solve(-S, r)
        z2 = np.linalg.solve(-S, r * z1)
        assert rel_err(m[i - 1], [alpha @ z1, 2 * alpha @ z2]) < RTOL


def test_sfs_shapes():
    tr = pt.record_trace(kingman(6))
    assert sfs(tr, [1.0]).shape == (5,)
    out = sfs(tr, np.array([[1.0], [2.0]]), normalised=True)
    assert out.shape == (2, 5)
    assert np.allclose(out.sum(axis=1), 1.0, rtol=1e-14, atol=0)
    assert rel_err(out[0], out[1]) < 1e-13  # the shape of the spectrum does not depend on c
    tr2 = pt.record_trace(kingman(2))
    assert sfs(tr2, [1.0]).tolist() == [2.0]


def test_package_import_does_not_import_jax():
    import subprocess
    import sys

    code = (
        "import sys, phasetrace, phasetrace.spectrum, phasetrace.models.structured; "
        "print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("method", ["kernel", "native"])
def test_sfs_function_matches_numpy(method):
    """Eager calls as they come; transformations inside ``jax.enable_x64`` (with x64 off,
    JAX rounds θ to float32 at the user's ``jit`` boundary, see phasetrace.jax)."""
    jax = pytest.importorskip("jax")
    samples = (2, 2)
    tr = pt.record_trace(structured_coalescent(samples, state_space="blocks"))
    theta = np.array([0.9, 0.4])
    thetas = np.array([[0.9, 0.4], [1.5, 2.0]])
    for normalised in (False, True):
        f = sfs_function(tr, normalised=normalised, method=method)
        assert f.method == method
        want = sfs(tr, theta, normalised=normalised)
        want_batch = sfs(tr, thetas, normalised=normalised)
        assert rel_err(np.asarray(f(theta)), want) < 1e-12
        fb = sfs_function(tr, normalised=normalised, method=method, batched=True)
        assert rel_err(np.asarray(fb(thetas)), want_batch) < 1e-12
        with jax.enable_x64(True):
            assert rel_err(np.asarray(jax.jit(f)(theta)), want) < 1e-12
            assert rel_err(np.asarray(jax.vmap(f)(thetas)), want_batch) < 1e-12
    # gradients: of each entry of the raw spectrum, against the kernel's adjoint
    f = sfs_function(tr, method=method)
    _, jac = tr.moments_and_jacobian(theta, k=1, rewards=sfs_rewards(tr))
    # and of the normalised spectrum, by the quotient rule on the same Jacobian
    fn = sfs_function(tr, normalised=True, method=method)
    xi, dxi = sfs(tr, theta), jac[:, 0, :]
    want_n = (dxi[0] * xi.sum() - xi[0] * dxi.sum(axis=0)) / xi.sum() ** 2
    with jax.enable_x64(True):
        for i in range(3):
            g = np.asarray(jax.grad(lambda t, i=i: f(t)[i])(theta))
            assert rel_err(g, jac[i, 0]) < 1e-10
        got = np.asarray(jax.jit(jax.grad(lambda t: fn(t)[0]))(theta))
    assert np.allclose(got, want_n, rtol=1e-9, atol=1e-14)


def test_sfs_function_kingman_closed_form():
    pytest.importorskip("jax")
    tr = pt.record_trace(kingman(5))
    f = sfs_function(tr)
    assert rel_err(np.asarray(f(np.array([0.5]))), 2 / (np.arange(1, 5) * 0.5)) < 1e-12
    with pytest.raises(pt.InvalidParameterError, match="method"):
        sfs_function(tr, method="gpu")


# -- sizes ------------------------------------------------------------------------------------
def test_state_counts_and_build_time():
    """All-in-one-deme samples reach every composition: C(n + d, d) − 1 lineage states."""
    t0 = time.perf_counter()
    g = structured_coalescent((30, 0, 0))
    lineage_time = time.perf_counter() - t0
    assert len(g) - 1 == math.comb(33, 3) - 1
    t0 = time.perf_counter()
    b = structured_coalescent((14, 0), state_space="blocks")
    block_time = time.perf_counter() - t0
    assert len(b) - 1 == 2665
    # generous bounds (2 shared cores): both take well under a second normally
    assert lineage_time < 10 and block_time < 10


@pytest.mark.parametrize("space", ["lineages", "blocks"])
def test_unpacked_state_keys_give_the_same_graph(monkeypatch, space):
    """States too large for an int64 key are handled by their bytes: same graph."""
    import phasetrace.models.structured as structured

    args = ((3, 2, 1), "directed")
    packed = pt.record_trace(structured_coalescent(*args, state_space=space)).digest()
    monkeypatch.setattr(structured, "_PACK_LIMIT", 0)
    assert pt.record_trace(structured_coalescent(*args, state_space=space)).digest() == packed


def test_sfs_builds_its_reward_matrix_once_per_trace(monkeypatch):
    """The layout search and the reward matrix are kept on the trace; what sfs_rewards
    hands out is the caller's own copy."""
    from phasetrace import spectrum

    trace = pt.record_trace(kingman(6))
    calls = []
    real = spectrum.sfs_layout
    monkeypatch.setattr(spectrum, "sfs_layout", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = sfs(trace, [1.0])
    for _ in range(3):
        assert np.array_equal(sfs(trace, [1.0]), first)
    assert len(calls) == 1
    mine = sfs_rewards(trace)
    mine[:] = 0.0  # does not reach the kept matrix
    assert np.array_equal(sfs(trace, [1.0]), first) and len(calls) == 1
    assert sfs(trace, [1.0], n_demes=1).tolist() == first.tolist() and len(calls) == 2
    with pytest.raises(ValueError, match="n_demes"):
        sfs(trace, [1.0], n_demes=True)


def test_block_state_spaces_are_counted_before_they_are_built():
    """The count is exact (it equals the built graph's size) and a state space past the
    limit is refused before it is built, with the estimate and the alternative."""
    from phasetrace.models._size import block_states

    for samples in [(2, 2, 2), (3, 1), (4, 4), (5, 0, 0)]:
        g = pt.models.structured_coalescent(samples, state_space="blocks")
        assert len(g) == block_states(sum(samples), len(samples)) + 1
    for n in (5, 12, 20):
        assert len(pt.models.kingman(n)) == block_states(n) + 1
    with pytest.raises(pt.StateSpaceTooLargeError, match=r"190,569,293 states.*'lineages'") as err:
        pt.models.kingman(100)  # 190 million states: enumerating them would not end here
    assert (err.value.estimate, err.value.limit) == (190_569_293, 1_000_000)
    with pytest.raises(pt.StateSpaceTooLargeError, match="1,762,463 states"):
        pt.models.structured_coalescent((8, 8, 8), state_space="blocks")
    with pt.config(max_states=50):
        assert len(pt.models.kingman(10)) == 43  # 42 partitions of 10 and the start
        with pytest.raises(pt.StateSpaceTooLargeError, match="max_states=50"):
            pt.models.kingman(12)  # 78
        assert len(pt.models.kingman(12, max_states=None)) == block_states(12) + 1
