"""Likelihoods of observed spectra, the fit's coordinates, and the readers.

References are independent of ``phasetrace.inference``: log-likelihoods are written out
with scipy.stats on the model's own expected spectrum (``pt.sfs`` / ``pt.jsfs``),
gradients are checked against central differences of the value, folding against a
folding written here with array reversal, readers against files written by hand and
counts made from tskit's genotype matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import phasetrace as pt
from phasetrace.errors import InvalidParameterError

demes = pytest.importorskip("demes")
stats = pytest.importorskip("scipy.stats")

IM = """
time_units: generations
demes:
- name: X
  epochs: [{{start_size: {nx}, end_time: {t}}}]
- name: A
  ancestors: [X]
  epochs: [{{start_size: {na}}}]
- name: B
  ancestors: [X]
  epochs: [{{start_size: {nb}}}]
migrations:
- {{source: A, dest: B, rate: {m1}}}
- {{source: B, dest: A, rate: {m2}}}
"""


def im_graph(na=1000.0, nb=2000.0, nx=1500.0, t=800.0, m1=2e-4, m2=1e-4):
    return demes.loads(IM.format(na=na, nb=nb, nx=nx, t=t, m1=m1, m2=m2))


@pytest.fixture(scope="module")
def im33():
    return pt.models.from_demes(im_graph(), {"A": 3, "B": 3})


@pytest.fixture(scope="module")
def data33(im33):
    expected = pt.jsfs(im33)
    u = 3000.0 / expected.sum()
    counts = np.random.default_rng(7).poisson(u * expected).astype(float)
    counts[0, 0] = 17.0  # monomorphic corners must be ignored
    counts[-1, -1] = 5.0
    return u, counts


def poisson_reference(expected: np.ndarray, counts: np.ndarray, u: float) -> float:
    return float(stats.poisson.logpmf(counts, u * expected).sum())


def multinomial_reference(expected: np.ndarray, counts: np.ndarray) -> float:
    p = expected / expected.sum()
    return float(stats.multinomial.logpmf(counts, n=counts.sum(), p=p))


def polymorphic(shape):
    totals = np.indices(shape).sum(axis=0)
    return (totals > 0) & (totals < sum(s - 1 for s in shape))


# -- values against scipy.stats -----------------------------------------------------------------


def test_poisson_and_multinomial_jsfs_against_scipy(im33, data33):
    u, counts = data33
    expected = pt.jsfs(im33)
    keep = polymorphic(expected.shape)
    got = pt.loglik(im33, im33.theta, counts, scaled_mutation=u)
    assert abs(got - poisson_reference(expected[keep], counts[keep], u)) < 1e-9
    got = pt.loglik(im33, im33.theta, counts)
    assert abs(got - multinomial_reference(expected[keep], counts[keep])) < 1e-9


def test_pooled_sfs_in_both_1d_layouts(im33):
    n = 6
    expected = pt.sfs(im33)  # entries 1 … 5
    counts = np.array([40.0, 17, 12, 9, 8])
    ref = poisson_reference(expected, counts, 0.05)
    short = pt.loglik(im33, None, counts, scaled_mutation=0.05)
    full = pt.loglik(im33, None, np.r_[1000.0, counts, 3.0], scaled_mutation=0.05)
    assert abs(short - ref) < 1e-10 and abs(full - ref) < 1e-10
    assert abs(pt.loglik(im33, None, counts) - multinomial_reference(expected, counts)) < 1e-10
    with pytest.raises(InvalidParameterError, match=f"{n - 1} entries"):
        pt.loglik(im33, None, counts[:-1])


def test_a_trace_gives_the_pooled_sfs_likelihood():
    trace = pt.record_trace(pt.models.kingman(5, state_space="blocks"))
    counts = np.array([20.0, 9, 7, 4])
    expected = pt.sfs(trace, [1.3])
    got = pt.loglik(trace, [1.3], counts, scaled_mutation=2.0)
    assert abs(got - poisson_reference(expected, counts, 2.0)) < 1e-10


def test_masked_entries_are_left_out(im33, data33):
    u, counts = data33
    mask = np.zeros(counts.shape, bool)
    mask[0, 1] = mask[2, 3] = True
    masked = np.ma.MaskedArray(counts, mask=mask)
    expected = pt.jsfs(im33)
    keep = polymorphic(expected.shape) & ~mask
    got = pt.loglik(im33, None, masked, scaled_mutation=u)
    assert abs(got - poisson_reference(expected[keep], counts[keep], u)) < 1e-9
    got = pt.loglik(im33, None, masked)
    assert abs(got - multinomial_reference(expected[keep], counts[keep])) < 1e-9


def fold_by_reversal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minor-allele classes: for each entry a with total < n/2 the pair (a, n − a); at
    total n/2 each unordered pair once."""
    n = sum(s - 1 for s in x.shape)
    totals = np.indices(x.shape).sum(axis=0)
    rev = x[tuple(slice(None, None, -1) for _ in x.shape)]
    low = (totals > 0) & (2 * totals < n)
    values = list((x + rev)[low])
    if n % 2 == 0:
        mid = np.argwhere(totals == n // 2)
        seen = set()
        for a in map(tuple, mid):
            b = tuple(s - 1 - i for s, i in zip(x.shape, a, strict=True))
            if b in seen:
                continue
            seen.add(a)
            values.append(x[a] + (x[b] if b != a else 0.0))
    return np.array(values)


def test_folded_jsfs_against_folding_by_reversal(im33, data33):
    u, counts = data33
    expected = pt.jsfs(im33)
    totals = np.indices(counts.shape).sum(axis=0)
    # a folded spectrum: minor-allele counts at the low entry, nothing past half
    folded = counts + counts[::-1, ::-1]
    folded[2 * totals > 6] = 0
    mid = 2 * totals == 6  # both members of a middle pair hold half of it (moments' way)
    folded[mid] = (counts[mid] + counts[::-1, ::-1][mid]) / 2
    e_cls = fold_by_reversal(expected)
    d_cls = fold_by_reversal(counts)
    got = pt.loglik(im33, None, folded, scaled_mutation=u, folded=True)
    ref = float(
        np.sum(d_cls * np.log(u * e_cls) - u * e_cls) - sum(math.lgamma(d + 1) for d in d_cls)
    )
    assert abs(got - ref) < 1e-9
    with pytest.raises(InvalidParameterError, match="past half"):
        pt.loglik(im33, None, counts, folded=True)


def test_folded_pooled_sfs(im33):
    expected = pt.sfs(im33)  # n = 6: classes {1,5}, {2,4}, {3}
    counts = np.array([30.0, 12.0, 5.0, 0.0, 0.0])
    e_cls = np.array([expected[0] + expected[4], expected[1] + expected[3], expected[2]])
    ref = multinomial_reference(e_cls, counts[:3])
    assert abs(pt.loglik(im33, None, counts, folded=True) - ref) < 1e-10


def test_tskits_folded_spectrum_has_the_classes_of_the_polarised_one():
    msprime = pytest.importorskip("msprime")
    graph = im_graph()
    model = pt.models.from_demes(graph, {"A": 3, "B": 3})
    ts = msprime.sim_ancestry(
        samples=[msprime.SampleSet(3, population=p, ploidy=1) for p in "AB"],
        demography=msprime.Demography.from_demes(graph),
        sequence_length=2e5,
        recombination_rate=1e-8,
        random_seed=3,
    )
    ts = msprime.sim_mutations(ts, rate=2e-8, random_seed=3, discrete_genome=False)
    names = {p.metadata["name"]: p.id for p in ts.populations()}
    sets = [ts.samples(population=names[k]) for k in "AB"]
    polarised = pt.observed_sfs(ts, sets)
    folded = pt.observed_sfs(ts, sets, folded=True)
    assert polarised.sum() == ts.num_sites > 20
    e_cls = fold_by_reversal(pt.jsfs(model))
    d_cls = fold_by_reversal(polarised)
    ref = multinomial_reference(e_cls, d_cls)
    assert abs(pt.loglik(model, None, folded, folded=True) - ref) < 1e-9


def test_batches_of_theta(im33, data33):
    u, counts = data33
    thetas = np.stack([im33.theta, im33.theta * 1.1, im33.theta * 0.9])
    values, grads = pt.loglik(im33, thetas, counts, scaled_mutation=u, gradient=True)
    assert values.shape == (3,) and grads.shape == (3, im33.n_params)
    for i, th in enumerate(thetas):
        v, g = pt.loglik(im33, th, counts, scaled_mutation=u, gradient=True)
        assert abs(values[i] - v) < 1e-9 * abs(v)
        np.testing.assert_allclose(grads[i], g, rtol=1e-9, atol=1e-12 * np.abs(g).max())


# -- gradients against central differences ------------------------------------------------------


@pytest.mark.parametrize("mutation", [None, "poisson"])
@pytest.mark.parametrize("folded", [False, True])
def test_gradient_against_central_differences(im33, data33, mutation, folded):
    u, counts = data33
    u = u if mutation else None
    obs = counts
    if folded:
        totals = np.indices(counts.shape).sum(axis=0)
        obs = counts + counts[::-1, ::-1]
        obs[2 * totals > 6] = 0
        obs[2 * totals == 6] = 0.5 * (counts + counts[::-1, ::-1])[2 * totals == 6]
    theta = im33.theta * np.array([1.2, 0.9, 1.1, 0.8, 1.5, 0.7])
    _, grad = pt.loglik(im33, theta, obs, scaled_mutation=u, folded=folded, gradient=True)
    scale = max(1.0, np.abs(theta * grad).max())  # the gradient in log-parameters
    for i in range(theta.size):
        h = 1e-5 * theta[i]
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        values = pt.loglik(im33, np.stack([up, down]), obs, scaled_mutation=u, folded=folded)
        fd = (values[0] - values[1]) / (2 * h)
        assert theta[i] * abs(grad[i] - fd) <= 2e-6 * scale, (im33.parameter_names[i], grad[i], fd)


def test_pooled_sfs_gradient_against_central_differences(im33):
    counts = np.array([40.0, 17, 12, 9, 8])
    theta = im33.theta * 1.05
    _, grad = pt.loglik(im33, theta, counts, gradient=True)
    scale = max(1.0, np.abs(theta * grad).max())
    for i in range(theta.size):
        h = 1e-5 * theta[i]
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        fd = (pt.loglik(im33, up, counts) - pt.loglik(im33, down, counts)) / (2 * h)
        assert theta[i] * abs(grad[i] - fd) <= 2e-6 * scale, (i, grad[i], fd)


@pytest.mark.jax
def test_loglik_function_under_jax(im33, data33):
    jax = pytest.importorskip("jax")
    u, counts = data33
    theta = im33.theta * 1.1
    for mutation in (None, u):
        f = pt.inference.loglik_function(im33, counts, scaled_mutation=mutation)
        with jax.enable_x64(True):
            value, grad = jax.value_and_grad(f)(jax.numpy.asarray(theta))
            jitted = jax.jit(f)(jax.numpy.asarray(theta))
        v, g = pt.loglik(im33, theta, counts, scaled_mutation=mutation, gradient=True)
        assert abs(float(value) - v) < 1e-9 * abs(v)
        assert abs(float(jitted) - v) < 1e-9 * abs(v)
        np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-8, atol=1e-12 * np.abs(g).max())


# -- errors -------------------------------------------------------------------------------------


def test_bad_observed_and_settings_are_refused(im33, data33):
    u, counts = data33
    with pytest.raises(InvalidParameterError, match=r"need \(4, 4\)"):
        pt.loglik(im33, None, counts[:3])
    bad = counts.copy()
    bad[1, 1] = -1
    with pytest.raises(InvalidParameterError, match="finite and >= 0"):
        pt.loglik(im33, None, bad)
    for wrong in (0.0, -1.0, math.nan, True):
        with pytest.raises(InvalidParameterError, match="scaled_mutation"):
            pt.loglik(im33, None, counts, scaled_mutation=wrong)
    with pytest.raises(InvalidParameterError, match="size must be positive"):
        pt.loglik(im33, -im33.theta, counts)
    assert pt.loglik(im33, None, np.zeros_like(counts), scaled_mutation=u) < 0


# -- the fit's coordinates ----------------------------------------------------------------------


def three_epochs():
    return demes.loads("""
time_units: generations
demes:
- name: A
  epochs:
  - {start_size: 5000, end_time: 3000}
  - {start_size: 800, end_time: 1000}
  - {start_size: 2000, end_time: 200}
  - {start_size: 7000, end_time: 0}
""")


def test_times_keep_their_order_and_the_jacobian_is_right():
    from phasetrace.inference._transform import make_transform

    model = pt.models.from_demes(three_epochs(), {"A": 4})
    names = model.parameter_names
    times = [names[c] for c in model.plan.time_parameters]
    assert len(times) == 3
    rng = np.random.default_rng(0)
    for free in (None, times, [times[0], times[2]], times[1:], ["N_A_1", times[1]]):
        tr = make_transform(model, model.theta, free, None)
        z0 = tr.to_z(model.theta)
        np.testing.assert_allclose(tr.theta(z0), model.theta, rtol=1e-12)
        for _ in range(20):
            z = z0 + rng.normal(0, 3, z0.size)
            th = tr.theta(z)
            model.check(th)  # sizes positive, times increasing
            t = th[list(model.plan.time_parameters)]
            assert np.all(np.diff(t) > 0) and t[0] > 0
        jac = tr.jacobian(z0 + 0.3)
        for i in range(z0.size):
            e = np.zeros(z0.size)
            e[i] = 1e-6
            fd = (tr.theta(z0 + 0.3 + e) - tr.theta(z0 + 0.3 - e))[list(tr.free)] / 2e-6
            np.testing.assert_allclose(jac[:, i], fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())


def test_proportions_stay_a_distribution():
    from phasetrace.inference._transform import make_transform

    graph = demes.loads("""
time_units: generations
demes:
- name: O
  epochs: [{start_size: 1000, end_time: 500}]
- name: A
  ancestors: [O]
  epochs: [{start_size: 1000}]
- name: B
  ancestors: [O]
  epochs: [{start_size: 1000}]
- name: C
  ancestors: [O]
  epochs: [{start_size: 1000}]
- name: D
  ancestors: [A, B, C]
  proportions: [0.2, 0.3, 0.5]
  start_time: 100
  epochs: [{start_size: 1000}]
pulses:
- {sources: [A], dest: D, time: 50, proportions: [0.1]}
""")
    model = pt.models.from_demes(graph, {"D": 2, "A": 1})
    props = [n for n, k in zip(model.parameter_names, model.plan.kinds, strict=True)
             if k in ("pulse", "ancestry")]  # fmt: skip
    assert len(props) == 3
    tr = make_transform(model, model.theta, props, None)
    rng = np.random.default_rng(1)
    z0 = tr.to_z(model.theta)
    for _ in range(50):
        model.check(tr.theta(z0 + rng.normal(0, 4, z0.size)))


def test_bounds_and_starts_that_cannot_be_used():
    from phasetrace.inference._transform import make_transform

    model = pt.models.from_demes(three_epochs(), {"A": 4})
    names = model.parameter_names
    times = [names[c] for c in model.plan.time_parameters]
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        make_transform(model, model.theta, ["nope"], None)
    with pytest.raises(InvalidParameterError, match="only free time"):
        make_transform(model, model.theta, times, {times[0]: (10, 500)})
    with pytest.raises(InvalidParameterError, match="low < high"):
        make_transform(model, model.theta, None, {"N_A_0": (5, 1)})
    with pytest.raises(InvalidParameterError, match="outside its bounds"):
        make_transform(model, model.theta, None, {"N_A_0": (1, 10)})
    tr = make_transform(model, model.theta, [times[1]], {times[1]: (500, 2500)})
    for z in (-50.0, 0.0, 50.0):
        t = tr.theta(np.array([z]))[model.plan.time_parameters[1]]
        assert 500 <= t <= 2500


# -- readers -------------------------------------------------------------------------------------


def test_reading_a_moments_file_written_by_hand(tmp_path, im33, data33):
    u, counts = data33
    path = tmp_path / "im.fs"
    mask = np.zeros((4, 4), int)
    mask[0, 0] = mask[3, 3] = mask[1, 2] = 1
    path.write_text(
        "# written by hand\n# in the format of dadi and moments\n"
        '4 4 unfolded "A" "B"\n'
        + " ".join(f"{v:g}" for v in counts.ravel())
        + "\n"
        + " ".join(str(v) for v in mask.ravel())
        + "\n"
    )
    fs = pt.inference.read_spectrum(path)
    assert fs.pop_ids == ("A", "B") and not fs.folded
    np.testing.assert_array_equal(fs.data, counts)
    np.testing.assert_array_equal(fs.mask, mask.astype(bool))
    expected = pt.jsfs(im33)
    keep = polymorphic((4, 4)) & ~mask.astype(bool)
    got = pt.loglik(im33, None, fs, scaled_mutation=u)
    assert abs(got - poisson_reference(expected[keep], counts[keep], u)) < 1e-9
    # the old format: shape only, no mask line
    old = tmp_path / "old.fs"
    old.write_text("4 4\n" + " ".join(f"{v:g}" for v in counts.ravel()) + "\n")
    fs_old = pt.inference.read_spectrum(old)
    assert not fs_old.mask.any() and fs_old.pop_ids is None
    np.testing.assert_array_equal(fs_old.data, counts)


def test_write_then_read_keeps_everything(tmp_path):
    data = np.arange(12, dtype=float).reshape(3, 4) / 3
    mask = np.zeros((3, 4), bool)
    mask[1, 1] = True
    spectrum = pt.inference.ObservedSpectrum(data, mask, True, ("p 1", "p2"))
    path = tmp_path / "f.fs"
    pt.inference.write_spectrum(path, spectrum, comments=["a note"])
    back = pt.inference.read_spectrum(path)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_array_equal(back.mask, mask)
    assert back.folded and back.pop_ids == ("p 1", "p2")
    assert path.read_text().startswith("# a note\n3 4 folded")


def test_malformed_files_are_refused(tmp_path):
    cases = {
        "count": "3 unfolded\n1 2\n",
        "shape": "x y unfolded\n1 2\n",
        "mask": "3 unfolded\n1 2 3\n0 2 0\n",
        "labels": '3 3 unfolded "A"\n' + "1 " * 9 + "\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.fs"
        path.write_text(text)
        with pytest.raises(InvalidParameterError):
            pt.inference.read_spectrum(path)


def test_observed_sfs_against_the_genotype_matrix():
    msprime = pytest.importorskip("msprime")
    graph = im_graph()
    ts = msprime.sim_ancestry(
        samples=[msprime.SampleSet(3, population=p, ploidy=1) for p in "AB"],
        demography=msprime.Demography.from_demes(graph),
        sequence_length=1e5,
        recombination_rate=1e-8,
        random_seed=5,
    )
    ts = msprime.sim_mutations(ts, rate=2e-8, random_seed=5, discrete_genome=False)
    names = {p.metadata["name"]: p.id for p in ts.populations()}
    sets = [ts.samples(population=names[k]) for k in "AB"]
    joint = pt.observed_sfs(ts, sets)
    g = ts.genotype_matrix()  # sites × samples, 1 = derived
    column = {int(s): i for i, s in enumerate(ts.samples())}
    want = np.zeros((4, 4))
    for row in g:
        a = int(sum(row[column[int(s)]] for s in sets[0]))
        b = int(sum(row[column[int(s)]] for s in sets[1]))
        want[a, b] += 1
    np.testing.assert_array_equal(joint, want)
    pooled = pt.observed_sfs(ts)
    np.testing.assert_array_equal(pooled, np.bincount(g.sum(axis=1), minlength=7))
    blocks = pt.observed_sfs(ts, sets, windows=4)
    assert blocks.shape == (4, 4, 4)
    np.testing.assert_array_equal(blocks.sum(axis=0), joint)


def test_block_bootstrap_resamples_whole_blocks():
    rng = np.random.default_rng(2)
    blocks = rng.poisson(5.0, size=(10, 4, 4)).astype(float)
    reps = pt.inference.block_bootstrap(blocks, 50, seed=9)
    again = pt.inference.block_bootstrap(blocks, 50, seed=9)
    np.testing.assert_array_equal(reps, again)
    assert reps.shape == (50, 4, 4)
    # every replicate is a sum of 10 blocks: a non-negative integer combination of them
    flat = blocks.reshape(10, -1).T
    for r in reps[:5]:
        weights, *_ = np.linalg.lstsq(flat, r.ravel(), rcond=None)
        assert abs(weights.sum() - 10) < 1e-6
    assert np.allclose(reps.mean(axis=0), blocks.sum(axis=0), rtol=0.2)
