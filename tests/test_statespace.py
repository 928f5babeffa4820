"""Coalescent state spaces of demographic structures (demography/statespace.py).

References independent of the builder: hand-counted transitions of tiny models; the
existing ``kingman`` and ``structured_coalescent`` builders (states, rates, E[T_MRCA] and
the SFS); a boundary map recomputed lineage by lineage from the Move definitions; the
closure of every support recomputed from the graph's edges; known counts (partitions of
n, vector partitions of (4, 4), the 1,431 IM states of the design notes); msprime for
the joint-spectrum layout.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.demography._spec import Move, Structure
from phasetrace.demography.statespace import (
    MapTerms,
    build_state_space,
    estimate_states,
)
from phasetrace.errors import InvalidParameterError
from phasetrace.models import kingman
from phasetrace.models.structured import structured_coalescent
from phasetrace.spectrum import sfs

RTOL = 1e-10


# -- models ------------------------------------------------------------------------------
def make(samples, sampled, exists, migration, boundaries=(), n_prop=0) -> Structure:
    exists = np.asarray(exists, bool)
    mig = np.zeros((exists.shape[0], len(samples), len(samples)), bool)
    for i, pairs in enumerate(migration):
        for k, j in pairs:
            mig[i, k, j] = True
    return Structure(tuple(samples), tuple(sampled), exists, mig, tuple(boundaries), n_prop)


def split(*sources, into):
    return tuple(Move(k, (into,), (), False) for k in sources)


def island(samples, pairs=None) -> Structure:
    d = len(samples)
    if pairs is None:
        pairs = [(k, j) for k in range(d) for j in range(d) if k != j]
    sampled = [k for k in range(d) if samples[k]]
    return make(samples, sampled, [[1] * d], [pairs])


def im(na, nb) -> Structure:
    """A, B (0, 1) migrate both ways, then both move into X (2) at T_1."""
    return make(
        (na, nb, 0),
        (0, 1),
        [[1, 1, 0], [0, 0, 1]],
        [[(0, 1), (1, 0)], []],
        [split(0, 1, into=2)],
    )


def two_pulses() -> Structure:
    """A↔B; at T_1 a pulse from A (p0) and one from B (p1) into C; A↔C; then all → D."""
    return make(
        (2, 1, 0, 0),
        (0, 1),
        [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]],
        [[(0, 1), (1, 0)], [(0, 1), (1, 0), (0, 2), (2, 0)], []],
        [
            (Move(0, (2,), (0,), True), Move(1, (2,), (1,), True)),
            split(0, 1, 2, into=3),
        ],
        n_prop=2,
    )


def founding() -> Structure:
    """C (2 samples) founded at T_1 by A (p0) and B (p1 = 1 − p0); A↔B; then → X."""
    return make(
        (1, 0, 2, 0),
        (2, 0),
        [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]],
        [[(0, 1)], [(0, 1), (1, 0)], []],
        [(Move(2, (0, 1), (0, 1), False),), split(0, 1, into=3)],
        n_prop=2,
    )


def on_off() -> Structure:
    """A, B isolated; migration A↔B in interval 1 only; isolated again; then → X."""
    return make(
        (2, 2, 0),
        (0, 1),
        [[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1]],
        [[], [(0, 1), (1, 0)], [], []],
        [(), (), split(0, 1, into=2)],
    )


MODELS = {"im22": lambda: im(2, 2), "pulses": two_pulses, "founding": founding, "on_off": on_off}


# -- helpers -----------------------------------------------------------------------------
def edges_by_state(graph):
    """{(src state, dst state): coefficient tuple} over the non-start edges."""
    a = graph.arrays()
    out = {}
    for e in range(a.dst.size):
        s = int(a.src[e])
        if s == 0:
            continue
        key = (tuple(a.states[s].tolist()), tuple(a.states[a.dst[e]].tolist()))
        out[key] = tuple(a.coef[e].tolist())
    return out


def in_trace_order(trace, graph, rewards):
    """Rewards in graph vertex order → trace vertex order (matched by state)."""
    where = {tuple(s): i for i, s in enumerate(graph.arrays().states.tolist())}
    perm = np.array([where[tuple(s)] for s in trace.states.tolist()])
    return np.asarray(rewards)[..., perm]


def active_edges(sp, i):
    """Edges whose parameter is on in interval i."""
    s = sp.structure
    on = np.concatenate([s.exists[i], [s.migration[i, k, j] for k, j in sp.pairs]]).astype(bool)
    a = sp.graph.arrays()
    par = np.argmax(a.coef != 0, axis=1)
    keep = (a.src != 0) & on[par]
    return a.src[keep], a.dst[keep]


def closure(seeds, src, dst, n):
    mark = np.zeros(n, bool)
    mark[seeds] = True
    while True:
        new = mark[src] & ~mark[dst]
        if not new.any():
            return mark
        mark[dst[new]] = True


def brute_map(sp, b, proportions):
    """{(src, dst): probability} of boundary b, lineage by lineage from the Moves."""
    s, T = sp.structure, sp.support.shape[1]
    states = sp.graph.arrays().states
    d = s.n_demes
    T = states.shape[1] // d
    vertex = {tuple(x): v for v, x in enumerate(states.tolist())}
    out = {}
    for v in np.flatnonzero(sp.support[b]):
        lineages = [(k, t) for k in range(d) for t in range(T) for _ in range(states[v, k * T + t])]
        dist = {tuple(lineages): 1.0}
        if len(lineages) > 1:
            for mv in s.boundaries[b]:
                nxt = {}
                for lin, pr in dist.items():
                    options = []
                    for k, t in lin:
                        if k != mv.source:
                            options.append([((k, t), 1.0)])
                            continue
                        p = [proportions[j] for j in mv.index] if mv.index else [1.0]
                        opt = [((tg, t), pj) for tg, pj in zip(mv.targets, p, strict=True)]
                        if mv.stay:
                            opt.append(((k, t), 1.0 - sum(p)))
                        options.append(opt)
                    for choice in itertools.product(*options):
                        key = tuple(sorted(c[0] for c in choice))
                        q = pr * math.prod(c[1] for c in choice)
                        nxt[key] = nxt.get(key, 0.0) + q
                dist = nxt
        for lin, pr in dist.items():
            x = np.zeros(d * T, np.int64)
            for k, t in lin:
                x[k * T + t] += 1
            w = vertex[tuple(x.tolist())]
            out[(int(v), w)] = out.get((int(v), w), 0.0) + pr
    return out


def random_proportions(mapt: MapTerms, structure, rng, b):
    p = rng.uniform(0.05, 0.45, structure.n_proportions)
    for mv in structure.boundaries[b]:
        if mv.index and not mv.stay:  # an admixed founding: its proportions sum to 1
            w = rng.dirichlet(np.ones(len(mv.index)))
            p[list(mv.index)] = w
    return p


# -- tiny models by hand -----------------------------------------------------------------
def test_two_demes_two_plus_one_lineages_by_hand():
    sp = build_state_space(island((2, 1)), "lineages")
    assert sp.parameter_names() == ["c0", "c1", "m0_1", "m1_0"]
    states = {tuple(x) for x in sp.graph.arrays().states[1:].tolist()}
    assert states == {(a, b) for a in range(4) for b in range(4) if 1 <= a + b <= 3}
    e = edges_by_state(sp.graph)
    out = {k[1]: v for k, v in e.items() if k[0] == (2, 1)}
    # coalescence in deme 0 (one pair); 2 lineages 0 → 1; 1 lineage 1 → 0; and deme 1 has one
    assert out == {(1, 1): (1, 0, 0, 0), (1, 2): (0, 0, 2, 0), (3, 0): (0, 0, 0, 1)}
    assert not [k for k in e if sum(k[0]) == 1]  # one lineage left: absorbed
    assert sp.absorbing.sum() == 2 and sp.support.all(axis=0)[1:].all()


def test_two_demes_two_plus_one_joint_by_hand():
    sp = build_state_space(island((2, 1)), "joint")
    # types: C-order over shape (3, 2) less (0, 0): (0,1) (1,0) (1,1) (2,0) (2,1)
    assert sp.type_vectors.tolist() == [[0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    start = sp.graph.arrays().states[1]
    assert start.tolist() == [0, 2, 0, 0, 0, 1, 0, 0, 0, 0]  # 2×(1,0) in deme 0, (0,1) in 1
    out = {k[1]: v for k, v in edges_by_state(sp.graph).items() if k[0] == tuple(start)}
    assert out == {
        (0, 0, 0, 1, 0, 1, 0, 0, 0, 0): (1, 0, 0, 0),  # the two (1,0) merge into (2,0)
        (0, 1, 0, 0, 0, 1, 1, 0, 0, 0): (0, 0, 2, 0),  # a (1,0) goes 0 → 1
        (1, 2, 0, 0, 0, 0, 0, 0, 0, 0): (0, 0, 0, 1),  # the (0,1) goes 1 → 0
    }
    # from (1,0)+(0,1) in deme 1 and (1,0) in deme 0: the pair in deme 1 merges to (1,1)
    s = (0, 1, 0, 0, 0, 1, 1, 0, 0, 0)
    out = {k[1]: v for k, v in edges_by_state(sp.graph).items() if k[0] == s}
    assert out[(0, 1, 0, 0, 0, 0, 0, 1, 0, 0)] == (0, 1, 0, 0)


def test_one_deme_lineages_is_kingman():
    n = 7
    sp = build_state_space(island((n,), pairs=[]), "lineages")
    assert edges_by_state(sp.graph) == edges_by_state(kingman(n, state_space="lineages"))


@pytest.mark.parametrize("n", [2, 5, 9])
def test_one_deme_blocks_is_kingman(n):
    sp = build_state_space(island((n,), pairs=[]), "blocks")
    ours, ref = edges_by_state(sp.graph), edges_by_state(kingman(n))
    assert ours == ref
    assert len(sp.graph) == len(kingman(n))


# -- homogeneous structured coalescent against the existing builder ---------------------
@pytest.mark.parametrize("samples", [(3, 2), (2, 2, 1)])
def test_island_matches_structured_coalescent(samples):
    d = len(samples)
    rng = np.random.default_rng(5)
    theta = np.concatenate([rng.uniform(0.5, 2, d), rng.uniform(0.2, 1, d * (d - 1))])
    ref_l = pt.record_trace(structured_coalescent(samples, "directed", coalescence="per_deme"))
    ref_b = pt.record_trace(
        structured_coalescent(samples, "directed", coalescence="per_deme", state_space="blocks")
    )
    sp = build_state_space(island(samples), "lineages")
    got = pt.record_trace(sp.graph).moments(theta, k=2)
    assert np.allclose(got, ref_l.moments(theta, k=2), rtol=RTOL, atol=0)
    sp = build_state_space(island(samples), "blocks")
    tr = pt.record_trace(sp.graph)
    got = tr.expectation(theta, rewards=in_trace_order(tr, sp.graph, sp.sfs_rewards()))
    assert np.allclose(got, sfs(ref_b, theta), rtol=RTOL, atol=0)
    sp = build_state_space(island(samples), "joint")
    tr = pt.record_trace(sp.graph)
    jsfs = tr.expectation(theta, rewards=in_trace_order(tr, sp.graph, sp.jsfs_rewards()))
    pooled = tr.expectation(theta, rewards=in_trace_order(tr, sp.graph, sp.sfs_rewards()))
    assert np.allclose(pooled, sfs(ref_b, theta), rtol=RTOL, atol=0)
    shape = tuple(samples[k] + 1 for k in sp.structure.sampled)
    size = np.indices(shape).sum(axis=0).reshape(-1)  # |a| of each JSFS entry
    marginal = np.bincount(size, jsfs, sum(samples) + 1)[1:-1]
    assert np.allclose(marginal, pooled, rtol=RTOL, atol=0)


def test_im_interval_zero_alone_is_the_island_model():
    """With interval 0's parameters only (c_X = 0) the chain never leaves support[0]."""
    sp = build_state_space(im(3, 2), "lineages")
    theta = np.array([1.0, 0.7, 0.0, 0.4, 0.9])
    ref = pt.record_trace(structured_coalescent((3, 2), "directed", coalescence="per_deme"))
    got = pt.record_trace(sp.graph).expectation(theta)
    assert got == pytest.approx(ref.expectation([1.0, 0.7, 0.4, 0.9]), rel=RTOL)


@pytest.mark.slow
def test_jsfs_layout_against_msprime():
    """E[branch JSFS] of a two-deme island model vs msprime + tskit's layout (z < 5)."""
    msprime = pytest.importorskip("msprime")
    sizes, m01, m10 = (1.0, 2.5), 0.3, 0.8
    sp = build_state_space(island((3, 2)), "joint")
    tr = pt.record_trace(sp.graph)
    theta = [1 / sizes[0], 1 / sizes[1], m01, m10]
    want = tr.expectation(theta, rewards=in_trace_order(tr, sp.graph, sp.jsfs_rewards()))
    dem = msprime.Demography()
    dem.add_population(name="A", initial_size=sizes[0])
    dem.add_population(name="B", initial_size=sizes[1])
    dem.set_migration_rate("A", "B", m01)
    dem.set_migration_rate("B", "A", m10)
    reps = 20_000
    acc = np.zeros((reps, 4, 3))
    sims = msprime.sim_ancestry(
        {"A": 3, "B": 2}, demography=dem, ploidy=1, num_replicates=reps, random_seed=11
    )
    for r, ts in enumerate(sims):
        acc[r] = ts.allele_frequency_spectrum(
            sample_sets=[ts.samples(population=0), ts.samples(population=1)],
            mode="branch",
            polarised=True,
            span_normalise=False,
        )
    mean = acc.mean(axis=0).reshape(-1)
    se = acc.std(axis=0).reshape(-1) / math.sqrt(reps)
    inner = want != 0
    assert not inner[[0, -1]].any() and inner[1:-1].all()
    z = np.abs(mean[inner] - want[inner]) / se[inner]
    assert z.max() < 5, z


# -- supports and maps -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["lineages", "blocks", "joint"])
def test_supports_are_the_closures_of_the_map_images(name, kind):
    sp = build_state_space(MODELS[name](), kind)
    n = sp.n_vertices
    assert not sp.support[:, 0].any()
    assert sp.support.any(axis=0)[1:].all()  # every vertex is in some support
    first = closure([1], *active_edges(sp, 0), n)
    assert (first[1:] == sp.support[0, 1:]).all() and first[1]
    for b, mapt in enumerate(sp.maps):
        src, dst = active_edges(sp, b)
        inside = sp.support[b]
        assert (sp.support[b][dst[inside[src]]]).all()  # closed under interval b
        assert set(np.unique(mapt.src).tolist()) == set(np.flatnonzero(inside).tolist())
        image = np.unique(mapt.dst)
        want = closure(image, *active_edges(sp, b + 1), n)
        assert (want == sp.support[b + 1]).all()
        assert sp.absorbing[mapt.dst[sp.absorbing[mapt.src]]].all()


@pytest.mark.parametrize("name", ["pulses", "founding", "im22"])
@pytest.mark.parametrize("kind", ["lineages", "blocks", "joint"])
def test_maps_match_lineage_by_lineage_and_rows_sum_to_one(name, kind):
    structure = MODELS[name]()
    sp = build_state_space(structure, kind)
    rng = np.random.default_rng(17)
    for b, mapt in enumerate(sp.maps):
        for _ in range(3):
            p = random_proportions(mapt, structure, rng, b)
            src, dst, prob = mapt.matrix(mapt.symbol_values(p))
            rows = np.bincount(src, prob, sp.n_vertices)
            assert np.allclose(rows[sp.support[b]], 1.0, rtol=0, atol=1e-13)
            assert not rows[~sp.support[b]].any()
            ref = brute_map(sp, b, p)
            got = {(int(s), int(t)): q for s, t, q in zip(src, dst, prob, strict=True) if q != 0}
            assert got.keys() == {k for k, q in ref.items() if q != 0}
            assert all(abs(got[k] - ref[k]) <= 1e-13 for k in got)


def test_pulse_terms_are_binomials():
    sp = build_state_space(two_pulses(), "lineages")
    mapt = sp.maps[0]
    assert mapt.n_symbols == 4 and mapt.stay_index == ((0,), (1,))
    states = sp.graph.arrays().states
    v = next(i for i in range(1, sp.n_vertices) if states[i].tolist() == [2, 1, 0, 0])
    rows = mapt.src == v
    terms = {
        (tuple(states[t].tolist()), tuple(x.tolist())): c
        for t, x, c in zip(mapt.dst[rows], mapt.exps[rows], mapt.coef[rows], strict=True)
    }
    # one of the two A lineages moves (2 ways), B's stays: 2·p0·s0·s1
    assert terms[((1, 1, 1, 0), (1, 0, 1, 1))] == 2.0
    assert terms[((2, 1, 0, 0), (0, 0, 2, 1))] == 1.0  # all stay
    assert terms[((0, 0, 3, 0), (2, 1, 0, 0))] == 1.0  # all three move
    assert len(terms) == 3 * 2


def test_founding_sends_every_lineage_to_an_ancestor():
    sp = build_state_space(founding(), "joint")
    states = sp.graph.arrays().states
    d, T = 4, sp.type_vectors.shape[0]
    assert not states[mapped_targets(sp.maps[0])].reshape(-1, d, T)[:, 2].any()
    assert sp.maps[0].n_symbols == 2  # p0, p1: no stay


def mapped_targets(mapt):
    return np.unique(mapt.dst[mapt.src != mapt.dst])


def test_migration_on_and_off_between_intervals():
    sp = build_state_space(on_off(), "joint")
    states = sp.graph.arrays().states.reshape(sp.n_vertices, 3, -1)
    mixed = (sp.type_vectors > 0).all(axis=1)  # lineages holding A and B samples
    has_mixed = states[:, :, mixed].any(axis=(1, 2))
    assert not has_mixed[sp.support[0]].any()
    assert has_mixed[sp.support[1]].any() and has_mixed[sp.support[2]].any()
    # a boundary without events is the identity
    m = sp.maps[0]
    assert (m.src == m.dst).all() and (m.coef == 1).all() and not m.exps.size
    # migration edges leave only states of support[1] (their parameter is on only there)
    a = sp.graph.arrays()
    mig = a.coef[:, 3:].any(axis=1)
    assert sp.support[1][a.src[mig]].all()


def test_isolated_lineages_wait_for_the_split():
    """One lineage in each of two isolated demes: no out-edge, yet not absorbed."""
    s = make((2, 2, 0), (0, 1), [[1, 1, 0], [0, 0, 1]], [[], []], [split(0, 1, into=2)])
    sp = build_state_space(s, "lineages")
    a = sp.graph.arrays()
    lonely = np.flatnonzero(~sp.absorbing & (np.diff(a.ptr) == 0))
    assert a.states[lonely].tolist() == [[1, 1, 0]]
    assert sp.support[0][lonely].all() and not sp.support[1][lonely].any()
    assert sp.tmrca_rewards()[lonely].all()


def test_lineages_that_never_meet_are_refused():
    s = make((1, 1), (0, 1), [[1, 1]], [[]])
    with pytest.raises(InvalidParameterError, match="never all meet"):
        build_state_space(s, "lineages")


# -- counts and estimates ----------------------------------------------------------------
def test_im_four_plus_four_counts():
    sp = build_state_space(im(4, 4), "joint")
    assert sp.support[0].sum() == 1431  # design notes (dense reference)
    in_x = sp.support[1] & ~sp.support[0]
    assert in_x.sum() == 109  # vector partitions of (4, 4) (OEIS A002774)
    assert sp.n_vertices - 1 == 1431 + 109


@pytest.mark.parametrize(
    "model, kind",
    [
        (lambda: im(3, 3), "joint"),
        (lambda: im(3, 3), "blocks"),
        (lambda: im(5, 2), "lineages"),
        (two_pulses, "joint"),
        (founding, "joint"),
        (on_off, "joint"),
        (on_off, "blocks"),
        (lambda: island((3, 2), pairs=[(0, 1)]), "joint"),
    ],
)
def test_estimate_is_an_upper_bound(model, kind):
    s = model()
    actual = build_state_space(s, kind).n_vertices - 1
    est = estimate_states(s, kind)
    assert actual <= est <= 3 * actual


@pytest.mark.parametrize("n, partitions", [(10, 42), (15, 176)])
def test_estimate_is_exact_for_one_deme(n, partitions):
    s = island((n,), pairs=[])
    assert estimate_states(s, "blocks") == partitions
    assert build_state_space(s, "blocks").n_vertices - 1 == partitions


def test_too_many_states_is_refused_before_building():
    s = im(7, 7)
    est = estimate_states(s, "joint")
    assert 100_000 < est <= pt.get_settings().max_states  # 7 + 7 passes by default
    with pytest.raises(pt.StateSpaceTooLargeError) as info:
        build_state_space(s, "joint", max_states=10_000)
    assert (info.value.estimate, info.value.limit) == (est, 10_000)
    msg = str(info.value)
    assert f"{est:,}" in msg and "'lineages'" in msg and "large-n SFS" in msg
    assert "max_states=10,000" in msg


# -- rewards -----------------------------------------------------------------------------
def test_reward_layouts():
    sp = build_state_space(im(2, 1), "joint")
    j = sp.jsfs_rewards()
    assert j.shape == (3 * 2, sp.n_vertices)
    assert not j[[0, -1]].any() and not j[:, 0].any()
    start = sp.graph.arrays().states[1]
    assert start.sum() == 3
    # at the start: two lineages (1, 0) → flat index 2; one (0, 1) → flat index 1
    assert j[:, 1].tolist() == [0, 1, 2, 0, 0, 0]
    assert sp.sfs_rewards()[:, 1].tolist() == [3, 0]
    with pytest.raises(InvalidParameterError):
        build_state_space(im(2, 1), "blocks").jsfs_rewards()
    with pytest.raises(InvalidParameterError):
        build_state_space(im(2, 1), "lineages").sfs_rewards()


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(kind="tree"), "kind must be"),
        (dict(samples=(1, 0, 0)), "2 or more samples"),
        (dict(sampled=(0,)), "not in sampled"),
        (dict(boundaries=()), "need 1 boundaries"),
        (dict(boundaries=((Move(0, (0,), (), False),),)), "not the source"),
        (dict(boundaries=((Move(0, (2,), (), True),),)), "omit its proportions"),
        (dict(boundaries=((Move(0, (2,), (3,), True),),)), "one proportion"),
    ],
)
def test_bad_structures_are_refused(bad, match):
    base = im(2, 2)
    kind = bad.pop("kind", "joint")
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__} | bad
    with pytest.raises(InvalidParameterError, match=match):
        build_state_space(Structure(**fields), kind)


def test_too_many_map_terms_is_refused():
    s = two_pulses()
    full = sum(m.src.size for m in build_state_space(s, "joint").maps)
    with pytest.raises(InvalidParameterError, match="max_map_terms=20"):
        build_state_space(s, "joint", max_map_terms=20)
    assert full > 20


def test_joint_axes_follow_sampled_order():
    """Reversing ``sampled`` transposes the joint spectrum; an empty population is an axis
    of length 1."""
    theta = [1.0, 0.6, 0.0, 0.3, 0.0, 0.9, 0.0]

    def jsfs(sampled):
        s = make((3, 2, 0), sampled, [[1, 1, 1]], [[(0, 1), (1, 0), (0, 2)]])
        sp = build_state_space(s, "joint")
        tr = pt.record_trace(sp.graph)
        r = in_trace_order(tr, sp.graph, sp.jsfs_rewards())
        return tr.expectation(theta[: sp.n_params], rewards=r)

    ab = jsfs((0, 1)).reshape(4, 3)
    assert np.allclose(jsfs((1, 0)).reshape(3, 4), ab.T, rtol=RTOL, atol=0)
    assert np.allclose(jsfs((0, 2, 1)).reshape(4, 1, 3)[:, 0, :], ab, rtol=RTOL, atol=0)


def test_key_collisions_are_detected(monkeypatch):
    """States are looked up by a 64-bit key; a shared key must raise, never merge."""
    from phasetrace.demography import _explore

    init = _explore.Explorer.__init__

    def weak_keys(self, *args):
        init(self, *args)
        self.w1[:-1] = 1  # first key = the number of lineages: collides all the time

    monkeypatch.setattr(_explore.Explorer, "__init__", weak_keys)
    with pytest.raises(AssertionError, match="share a 64-bit key"):
        build_state_space(island((3, 2)), "blocks")
