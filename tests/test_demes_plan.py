"""Reading demes models into a Plan (phasetrace.demography.plan).

The semantics (direction of migration, order of events at one time, sizes inside
exponential epochs) are checked against msprime's DemographyDebugger, an independent
implementation of the same demes models: lineage location probabilities and size
trajectories computed from the Plan alone must match msprime's.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

demes = pytest.importorskip("demes")

from phasetrace.demography._spec import Move  # noqa: E402
from phasetrace.demography.plan import plan_from_demes  # noqa: E402
from phasetrace.errors import InvalidGraphError, InvalidParameterError  # noqa: E402

HEAD = "time_units: generations\n"

CONSTANT = (
    HEAD
    + """
demes:
- name: A
  epochs: [{start_size: 1000}]
"""
)

BOTTLENECK = (
    HEAD
    + """
demes:
- name: A
  epochs:
  - {end_time: 500, start_size: 10000}
  - {end_time: 100, start_size: 1000}
  - {end_time: 0, start_size: 5000}
"""
)

# A grows exponentially from 500 (at 1000) to 20000 (today); the migration window ends
# at 300, a cut inside that epoch.
GROWTH = (
    HEAD
    + """
demes:
- name: A
  epochs:
  - {end_time: 1000, start_size: 2000}
  - {end_time: 0, start_size: 500, end_size: 20000}
- name: B
  epochs: [{start_size: 1000}]
migrations:
- {demes: [A, B], rate: 1e-3, start_time: .inf, end_time: 300}
"""
)

IM = (
    HEAD
    + """
demes:
- name: X
  epochs: [{start_size: 2000, end_time: 1000}]
- name: A
  ancestors: [X]
  epochs: [{start_size: 500}]
- name: B
  ancestors: [X]
  epochs: [{start_size: 800}]
migrations:
- {source: A, dest: B, rate: 1e-3, start_time: 800, end_time: 100}
- {source: B, dest: A, rate: 5e-4}
"""
)

PULSES = (
    HEAD
    + """
demes:
- name: R
  epochs: [{start_size: 3000, end_time: 2000}]
- name: A
  ancestors: [R]
  epochs: [{start_size: 1000}]
- name: B
  ancestors: [R]
  epochs: [{start_size: 1000}]
- name: C
  ancestors: [R]
  epochs: [{start_size: 1000}]
pulses:
- {sources: [B], dest: A, time: 500, proportions: [0.1]}
- {sources: [B, C], dest: A, time: 700, proportions: [0.2, 0.3]}
"""
)

ADMIX = (
    HEAD
    + """
demes:
- name: R
  epochs: [{start_size: 3000, end_time: 2000}]
- name: A
  ancestors: [R]
  epochs: [{start_size: 1000}]
- name: B
  ancestors: [R]
  epochs: [{start_size: 1500}]
- name: C
  ancestors: [A, B]
  proportions: [0.3, 0.7]
  start_time: 100
  epochs: [{start_size: 200}]
"""
)

MERGE = (
    HEAD
    + """
demes:
- name: R
  epochs: [{start_size: 3000, end_time: 2000}]
- name: A
  ancestors: [R]
  epochs: [{start_size: 1000, end_time: 100}]
- name: B
  ancestors: [R]
  epochs: [{start_size: 1500, end_time: 100}]
- name: C
  ancestors: [A, B]
  proportions: [0.3, 0.7]
  start_time: 100
  epochs: [{start_size: 200}]
"""
)

BRANCH = (
    HEAD
    + """
demes:
- name: A
  epochs: [{start_size: 1000}]
- name: B
  ancestors: [A]
  start_time: 300
  epochs: [{start_size: 100}]
"""
)

# G is a ghost: it ends 200 generations ago and is sampled nowhere, but gives a pulse to A.
# D branches off A and takes no lineage of a sample from A: it must be left out.
GHOST = (
    HEAD
    + """
demes:
- name: A
  epochs: [{start_size: 1000}]
- name: G
  ancestors: [A]
  start_time: 3000
  epochs: [{start_size: 400, end_time: 200}]
- name: D
  ancestors: [A]
  start_time: 1000
  epochs: [{start_size: 50}]
migrations:
- {source: A, dest: D, rate: 1e-3}
pulses:
- {sources: [G], dest: A, time: 400, proportions: [0.05]}
"""
)


def load(text: str):
    return demes.loads(text)


def plan_of(text: str, samples, **kw):
    return plan_from_demes(load(text), samples, **kw)


def moves(plan):
    return [list(b) for b in plan.structure.boundaries]


# ------------------------------------------------------------------ names, values, arrays


def test_constant_one_deme():
    plan = plan_of(CONSTANT, {"A": 4})
    assert plan.demes == ("A",)
    assert plan.samples == (4,) == plan.structure.samples
    assert plan.structure.sampled == (0,)
    assert plan.parameter_names == ("N_A",)
    assert plan.kinds == ("size",)
    np.testing.assert_array_equal(plan.theta, [1000.0])
    assert plan.structure.n_intervals == 1
    assert plan.structure.exists.tolist() == [[True]]
    assert plan.structure.boundaries == ()
    assert plan.time_parameters == ()
    r = plan.resolve(plan.theta)
    assert r.times.tolist() == [[0.0]]
    assert r.size_start.tolist() == r.size_end.tolist() == [[[1000.0]]]
    assert r.migration.shape == (1, 1, 1, 1) and r.proportions.shape == (1, 0)


def test_bottleneck_three_epochs():
    plan = plan_of(BOTTLENECK, {"A": 3})
    assert plan.parameter_names == ("N_A_0", "N_A_1", "N_A_2", "T_A_2", "T_A_1")
    np.testing.assert_array_equal(plan.theta, [10000, 1000, 5000, 100, 500])
    assert plan.time_parameters == (3, 4)
    assert plan.structure.exists.tolist() == [[True]] * 3
    assert not plan.growth.any()
    assert moves(plan) == [[], []]
    r = plan.resolve(plan.theta)
    assert r.times[0].tolist() == [0, 100, 500]
    assert r.size_start[0, :, 0].tolist() == [5000, 1000, 10000]
    np.testing.assert_array_equal(r.size_end, r.size_start)


def test_exponential_growth_and_symmetric_migration():
    plan = plan_of(GROWTH, {"A": 2, "B": 1})
    assert plan.parameter_names == (
        "N_A_0",
        "N_A_1_start",
        "N_A_1_end",
        "N_B",
        "T_m_A_B_end",
        "T_A_1",
        "m_A_B",
        "m_B_A",
    )
    np.testing.assert_array_equal(plan.theta, [2000, 500, 20000, 1000, 300, 1000, 1e-3, 1e-3])
    assert plan.growth.tolist() == [[True, False], [True, False], [False, False]]
    mig = plan.structure.migration
    # m_A_B: forwards A -> B, so backwards a lineage in B (1) moves to A (0).
    assert mig[:, 1, 0].tolist() == [False, True, True]
    assert mig[:, 0, 1].tolist() == [False, True, True]
    r = plan.resolve(plan.theta)
    assert r.times[0].tolist() == [0, 300, 1000]
    g = math.log(500 / 20000) / 1000  # per generation, backwards
    np.testing.assert_allclose(r.size_start[0, :, 0], [20000, 20000 * math.exp(g * 300), 2000])
    np.testing.assert_allclose(r.size_end[0, :, 0], [20000 * math.exp(g * 300), 500, 2000])
    np.testing.assert_array_equal(r.size_start[0, :, 1], [1000] * 3)
    assert r.migration[0, 0].tolist() == [[0, 0], [0, 0]]
    assert r.migration[0, 1].tolist() == [[0, 1e-3], [1e-3, 0]]


def test_isolation_with_migration():
    plan = plan_of(IM, {"A": 2, "B": 3})
    assert plan.demes == ("A", "B", "X")
    assert plan.samples == (2, 3, 0)
    assert plan.structure.sampled == (0, 1)
    assert plan.parameter_names == (
        "N_A",
        "N_B",
        "N_X",
        "T_m_A_B_end",
        "T_m_A_B_start",
        "T_split_X",
        "m_A_B",
        "m_B_A",
    )
    np.testing.assert_array_equal(plan.theta, [500, 800, 2000, 100, 800, 1000, 1e-3, 5e-4])
    ex = plan.structure.exists
    assert ex.tolist() == [[True, True, False]] * 3 + [[False, False, True]]
    mig = plan.structure.migration
    assert mig[:, 1, 0].tolist() == [False, True, False, False]  # A -> B: B's lineages to A
    assert mig[:, 0, 1].tolist() == [True, True, True, False]  # B -> A: A's lineages to B
    assert not mig[:, 2].any() and not mig[:, :, 2].any()
    assert moves(plan) == [[], [], [Move(0, (2,), (), False), Move(1, (2,), (), False)]]
    r = plan.resolve(plan.theta)
    assert r.size_start[0, 3].tolist() == [1.0, 1.0, 2000.0]  # 1 where a deme is gone
    assert r.migration[0, 1, 1, 0] == 1e-3 and r.migration[0, 0, 1, 0] == 0


def test_pulses_one_and_two_sources():
    plan = plan_of(PULSES, {"A": 2})
    assert plan.demes == ("A", "R", "B", "C")
    assert plan.parameter_names == (
        "N_A",
        "N_R",
        "N_B",
        "N_C",
        "T_pulse_B_A_1",
        "T_pulse_B_A_2",
        "T_split_R",
        "p_B_A_1",
        "p_B_A_2",
        "p_C_A",
    )
    assert plan.kinds[-3:] == ("pulse",) * 3
    np.testing.assert_array_equal(plan.theta[-3:], [0.1, 0.2, 0.3])
    assert moves(plan) == [
        [Move(0, (2,), (0,), True)],
        [Move(0, (2, 3), (1, 2), True)],
        [Move(0, (1,), (), False), Move(2, (1,), (), False), Move(3, (1,), (), False)],
    ]
    assert plan.structure.n_proportions == 3
    assert plan.resolve(plan.theta).proportions.tolist() == [[0.1, 0.2, 0.3]]


@pytest.mark.parametrize(("text", "word"), [(ADMIX, "admix"), (MERGE, "merge")])
def test_admixed_founding(text, word):
    plan = plan_of(text, {"C": 2})
    assert plan.demes == ("C", "R", "A", "B")
    assert plan.parameter_names == ("N_C", "N_R", "N_A", "N_B", f"T_{word}_C", "T_split_R", "a_A_C")
    assert plan.kinds[-1] == "ancestry" and plan.theta[-1] == 0.3
    assert plan.structure.exists[:, 0].tolist() == [True, False, False]
    assert plan.structure.exists[:, 2].tolist() == [word == "admix", True, False]
    assert moves(plan)[0] == [Move(0, (2, 3), (0, 1), False)]
    r = plan.resolve([[1, 2, 3, 4, 100, 2000, 0.25], [1, 2, 3, 4, 100, 2000, 0.6]])
    np.testing.assert_allclose(r.proportions, [[0.25, 0.75], [0.6, 0.4]])


def test_branch():
    plan = plan_of(BRANCH, {"B": 2, "A": 1})
    assert plan.demes == ("B", "A")
    assert plan.parameter_names == ("N_B", "N_A", "T_branch_B")
    assert plan.structure.exists.tolist() == [[True, True], [False, True]]
    assert moves(plan) == [[Move(0, (1,), (), False)]]


def test_ghost_kept_and_unrelated_deme_left_out():
    plan = plan_of(GHOST, {"A": 2})
    assert plan.demes == ("A", "G")
    assert plan.samples == (2, 0)
    assert plan.parameter_names == ("N_A", "N_G", "T_end_G", "T_pulse_G_A", "T_branch_G", "p_G_A")
    assert plan.structure.exists[:, 1].tolist() == [False, True, True, False]
    assert moves(plan) == [[], [Move(0, (1,), (0,), True)], [Move(1, (0,), (), False)]]
    # Sampled in D too, D and its migration from A come in.
    plan = plan_of(GHOST, {"D": 1, "A": 1})
    assert plan.demes == ("D", "A", "G")
    assert "m_A_D" in plan.parameter_names and "T_branch_D" in plan.parameter_names


def test_deme_reached_only_outside_its_migration_window_is_left_out():
    # Lineages reach X only at 500 (a pulse); Y -> X migration stopped at 400.
    text = (
        HEAD
        + """
demes:
- name: R
  epochs: [{start_size: 100, end_time: 1000}]
- {name: A, ancestors: [R], epochs: [{start_size: 100}]}
- {name: X, ancestors: [R], epochs: [{start_size: 100}]}
- {name: Y, ancestors: [R], epochs: [{start_size: 100}]}
migrations:
- {source: Y, dest: X, rate: 1e-3, start_time: 400, end_time: 100}
pulses:
- {sources: [X], dest: A, time: 500, proportions: [0.5]}
"""
    )
    assert plan_of(text, {"A": 2}).demes == ("A", "R", "X")
    assert plan_of(text, {"A": 1, "X": 1}).demes == ("A", "X", "R", "Y")


def test_zero_rate_migration_moves_nothing():
    text = (
        HEAD
        + """
demes:
- {name: A, epochs: [{start_size: 100}]}
- {name: B, epochs: [{start_size: 100}]}
migrations:
- {source: B, dest: A, rate: 0}
"""
    )
    assert plan_of(text, {"A": 2}).demes == ("A",)
    with pytest.raises(InvalidGraphError, match="never meet"):
        plan_of(text, {"A": 1, "B": 1})


def test_import_does_not_load_demes():
    import subprocess

    code = "import sys, phasetrace.demography.plan; print('demes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_years_are_converted_to_generations():
    text = """
time_units: years
generation_time: 25
demes:
- name: A
  epochs:
  - {end_time: 2500, start_size: 100}
  - {end_time: 0, start_size: 10}
"""
    plan = plan_of(text, {"A": 2})
    assert plan.parameter_names == ("N_A_0", "N_A_1", "T_A_1")
    assert plan.theta[-1] == 100.0


def test_model_as_path_and_pathlike(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(IM)
    for model in (path, str(path), load(IM)):
        plan = plan_from_demes(model, {"A": 1, "B": 1})
        assert plan.parameter_names[:3] == ("N_A", "N_B", "N_X")


def test_colliding_names_are_made_unique():
    # Deme names with underscores: N_A_1 (deme A_1) against N_A_1 (epoch 1 of A).
    text = (
        HEAD
        + """
demes:
- name: A
  epochs:
  - {end_time: 10, start_size: 100}
  - {end_time: 0, start_size: 50}
- name: A_1
  epochs: [{start_size: 70}]
migrations:
- {source: A, dest: A_1, rate: 1e-3}
"""
    )
    plan = plan_of(text, {"A": 1, "A_1": 1})
    names = plan.parameter_names
    assert len(set(names)) == len(names)
    assert names[:3] == ("N_A_0", "N_A_1_1", "N_A_1_2")
    np.testing.assert_array_equal(plan.theta[:3], [100, 50, 70])


def test_describe_lists_every_parameter():
    plan = plan_of(IM, {"A": 1, "B": 1})
    lines = plan.describe().splitlines()
    assert lines[0].split() == ["name", "value", "meaning"]
    assert len(lines) == 1 + plan.n_parameters
    for line, name in zip(lines[1:], plan.parameter_names, strict=True):
        assert line.split()[0] == name
    assert "split of X into A, B" in plan.describe()


# ------------------------------------------------------------------ resolve


def test_resolve_batch_and_shapes():
    plan = plan_of(IM, {"A": 2, "B": 2})
    theta = np.stack([plan.theta, plan.theta * 1.5])
    r = plan.resolve(theta)
    assert r.times.shape == (2, 4) and r.size_start.shape == (2, 4, 3)
    assert r.migration.shape == (2, 4, 3, 3) and r.proportions.shape == (2, 0)
    np.testing.assert_allclose(r.times[1], [0, 150, 1200, 1500])
    np.testing.assert_allclose(r.size_start[1, 0, :2], [750, 1200])
    with pytest.raises(InvalidParameterError, match="shape"):
        plan.resolve(plan.theta[:-1])


def test_complex_step_derivative_of_an_interior_size():
    plan = plan_of(GROWTH, {"A": 2, "B": 1})
    names = plan.parameter_names
    # size_start[1] of A is N(t) at t = T_m_A_B_end = 300, inside the exponential epoch
    # [0, T_A_1): N(t) = n_end·(n_start/n_end)^(t/s).
    n_start, n_end, t, s = 500.0, 20000.0, 300.0, 1000.0
    size = n_end * (n_start / n_end) ** (t / s)
    log_ratio = math.log(n_start / n_end)
    analytic = {
        "N_A_1_start": size * (t / s) / n_start,
        "N_A_1_end": size * (1 - t / s) / n_end,
        "T_m_A_B_end": size * log_ratio / s,
        "T_A_1": -size * log_ratio * t / s**2,
        "N_B": 0.0,
        "m_A_B": 0.0,
    }
    h = 1e-30
    theta = np.tile(plan.theta.astype(complex), (len(analytic), 1))
    for row, name in enumerate(analytic):
        theta[row, names.index(name)] += 1j * h
    r = plan.resolve(theta)
    assert r.size_start.dtype == np.complex128
    np.testing.assert_allclose(r.size_start[:, 1, 0].real, size, rtol=1e-13)
    got = r.size_start[:, 1, 0].imag / h
    np.testing.assert_allclose(got, list(analytic.values()), rtol=1e-12, atol=1e-15)
    # and the size at the older end of the first interval is the same point
    np.testing.assert_allclose(r.size_end[:, 0, 0].imag / h, got, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ check


@pytest.mark.parametrize(
    ("model", "samples", "name", "value", "match"),
    [
        (IM, {"A": 2}, "N_X", 0.0, "N_X = 0.0: a deme size must be positive"),
        (IM, {"A": 2}, "N_A", math.nan, "N_A = nan: parameters must be finite"),
        (IM, {"A": 2}, "m_B_A", -1e-9, "m_B_A = -1e-09: a migration rate must be >= 0"),
        (IM, {"A": 2}, "T_m_A_B_start", 50.0, "T_m_A_B_start = 50.0: must be later than"),
        (IM, {"A": 2}, "T_split_X", 800.0, "T_split_X = 800.0: must be later than T_m_A_B_start"),
        (IM, {"A": 2}, "T_m_A_B_end", 0.0, "T_m_A_B_end = 0.0: event times must be > 0"),
        (PULSES, {"A": 2}, "p_C_A", 1.5, r"p_C_A = 1.5: a pulse proportion must be in \[0, 1\]"),
        (PULSES, {"A": 2}, "p_C_A", 0.9, "p_C_A = 0.9: the proportions p_B_A_2, p_C_A sum"),
        (ADMIX, {"C": 2}, "a_A_C", -0.1, "a_A_C = -0.1: an ancestry proportion"),
        (GROWTH, {"A": 2}, "N_A_1_end", -5.0, "N_A_1_end = -5.0"),
    ],
)
def test_check_refusals_name_the_parameter(model, samples, name, value, match):
    plan = plan_of(model, samples)
    plan.check(plan.theta)
    theta = plan.theta.copy()
    theta[plan.parameter_names.index(name)] = value
    with pytest.raises(InvalidParameterError, match=match):
        plan.check(theta)
    batch = np.stack([plan.theta, theta])
    with pytest.raises(InvalidParameterError, match=r"\(row 1 of theta\)"):
        plan.check(batch)
    plan.check(plan.theta.astype(complex) + 1e-30j)


def test_check_zero_migration_that_separates_lineages_forever():
    text = (
        HEAD
        + """
demes:
- {name: A, epochs: [{start_size: 100}]}
- {name: B, epochs: [{start_size: 100}]}
migrations:
- {demes: [A, B], rate: 1e-3}
"""
    )
    plan = plan_of(text, {"A": 1, "B": 1})
    theta = plan.theta.copy()
    theta[plan.parameter_names.index("m_A_B")] = 0.0
    plan.check(theta)  # one way is enough: all lineages end in A
    theta[plan.parameter_names.index("m_B_A")] = 0.0
    with pytest.raises(InvalidParameterError, match="can never meet"):
        plan.check(theta)


# ------------------------------------------------------------------ errors


def test_unsupported_features_name_field_and_deme():
    selfing = CONSTANT.replace("{start_size: 1000}", "{start_size: 1000, selfing_rate: 0.1}")
    with pytest.raises(InvalidGraphError, match="deme A epoch 0: selfing_rate"):
        plan_of(selfing, {"A": 2})
    cloning = CONSTANT.replace("{start_size: 1000}", "{start_size: 1000, cloning_rate: 0.1}")
    with pytest.raises(InvalidGraphError, match="deme A epoch 0: cloning_rate"):
        plan_of(cloning, {"A": 2})
    linear = BOTTLENECK.replace(
        "{end_time: 0, start_size: 5000}",
        "{end_time: 0, start_size: 1000, end_size: 5000, size_function: linear}",
    )
    with pytest.raises(InvalidGraphError, match="deme A epoch 2: size_function 'linear'"):
        plan_of(linear, {"A": 2})


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ({"Z": 2}, "deme 'Z' is not in the graph"),
        ({"G": 2}, "deme G ends at end_time = 200"),
        ({"A": 0, "G": 2}, "must be positive integers"),
        ({"A": 2.0}, "must be positive integers"),
        ({"A": True, "D": 1}, "must be positive integers"),
        ({"A": 1}, "at least 2 lineages"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_samples(samples, match):
    with pytest.raises(InvalidGraphError, match=match):
        plan_of(GHOST, samples)


def test_lineages_that_never_meet():
    text = (
        HEAD
        + """
demes:
- {name: A, epochs: [{start_size: 100}]}
- {name: B, epochs: [{start_size: 100}]}
"""
    )
    with pytest.raises(InvalidGraphError, match=r"never meet: demes \{A\} and \{B\}.*infinite"):
        plan_of(text, {"A": 1, "B": 1})
    plan_of(text, {"A": 2})  # B can never hold a lineage: fine
    # A pulse source that exists forever apart from the sample
    pulse = text + "pulses:\n- {sources: [B], dest: A, time: 10, proportions: [0.1]}\n"
    with pytest.raises(InvalidGraphError, match="never meet"):
        plan_of(pulse, {"A": 2})


def test_bad_model_and_ploidy(tmp_path):
    with pytest.raises(InvalidGraphError, match="looks like YAML text"):
        plan_from_demes(CONSTANT, {"A": 2})
    with pytest.raises(TypeError, match=r"demes\.Graph"):
        plan_from_demes(42, {"A": 2})
    with pytest.raises(InvalidGraphError, match="ploidy"):
        plan_of(CONSTANT, {"A": 2}, ploidy=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONSTANT.replace("start_size: 1000", "start_size: -1"))
    with pytest.raises(InvalidGraphError, match="demes rejected"):
        plan_from_demes(bad, {"A": 2})
    assert plan_of(CONSTANT, {"A": 2}, ploidy=1).ploidy == 1


def test_missing_demes_names_the_extra(monkeypatch):
    graph = load(CONSTANT)
    monkeypatch.setitem(sys.modules, "demes", None)
    with pytest.raises(ImportError, match=r'pip install "phasetrace\[demes\]"'):
        plan_from_demes(graph, {"A": 2})


# ------------------------------------------------------------------ against msprime


def plan_lineage_probabilities(plan, steps):
    """P[j, a, b]: a lineage started in a at 0 is in b at steps[j], from the Plan alone.

    Like msprime's ``lineage_probabilities``, before the moves at a step's own time.
    """
    from scipy.linalg import expm

    r = plan.resolve(plan.theta)
    cuts, mig, props = r.times[0], r.migration[0], r.proportions[0]
    d = len(plan.demes)
    gen = [m - np.diag(m.sum(axis=1)) for m in mig]
    P, t, i, out = np.eye(d), 0.0, 0, []
    for target in steps:
        while i + 1 < len(cuts) and cuts[i + 1] < target:
            P = P @ expm(gen[i] * (cuts[i + 1] - t))
            t = cuts[i + 1]
            for mv in plan.structure.boundaries[i]:
                S = np.eye(d)
                p = [1.0] if not mv.index else [props[j] for j in mv.index]
                S[mv.source, mv.source] = 1.0 - sum(p) if mv.stay else 0.0
                for target_deme, q in zip(mv.targets, p, strict=True):
                    S[mv.source, target_deme] += q
                P = P @ S
            i += 1
        P = P @ expm(gen[i] * (target - t))
        t = target
        out.append(P.copy())
    return np.array(out)


def plan_sizes(plan, steps):
    """Deme sizes at the given times from Resolved (exponential inside growth intervals)."""
    r = plan.resolve(plan.theta)
    cuts = r.times[0]
    out = []
    for t in steps:
        i = np.searchsorted(cuts, t, side="right") - 1
        a, b = r.size_start[0, i], r.size_end[0, i]
        if i + 1 < len(cuts):
            f = (t - cuts[i]) / (cuts[i + 1] - cuts[i])
            out.append(a * (b / a) ** f)
        else:
            out.append(a)
    return np.array(out)


# Event-order corner cases at one time (t = 100): a branch with a pulse into the parent, a
# pulse into a deme at its own (single-ancestor) start, chained pulses (S -> Q -> W -> P
# backwards), a pulse from a deme that ends there, an admixture with a pulse into one of
# its ancestors.
ORDER = (
    HEAD
    + """
demes:
- name: R
  epochs: [{start_size: 3000, end_time: 2000}]
- {name: P, ancestors: [R], epochs: [{start_size: 1000, end_time: 100}]}
- {name: Q, ancestors: [R], epochs: [{start_size: 1000}]}
- {name: S, ancestors: [R], epochs: [{start_size: 1000}]}
- {name: W, ancestors: [R], epochs: [{start_size: 1000}]}
- {name: A, ancestors: [P], epochs: [{start_size: 500}]}
- {name: B, ancestors: [Q], start_time: 100, epochs: [{start_size: 500}]}
- {name: C, ancestors: [Q, S], proportions: [0.4, 0.6], start_time: 100,
   epochs: [{start_size: 500}]}
- {name: V, ancestors: [Q], start_time: 1500, epochs: [{start_size: 500}]}
migrations:
- {source: Q, dest: S, rate: 2e-3, start_time: 1000, end_time: 50}
- {source: S, dest: W, rate: 1e-3}
pulses:
- {sources: [P], dest: W, time: 100, proportions: [0.3]}
- {sources: [V], dest: B, time: 100, proportions: [0.5]}
- {sources: [W], dest: Q, time: 100, proportions: [0.2]}
- {sources: [Q], dest: S, time: 100, proportions: [0.25]}
"""
)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("text", "samples"),
    [
        (IM, {"A": 1, "B": 1}),
        (PULSES, {"A": 2}),
        (ADMIX, {"C": 1, "A": 1}),
        (MERGE, {"C": 2}),
        (GHOST, {"A": 1, "D": 1}),
        (GROWTH, {"A": 1, "B": 1}),
        (ORDER, {"A": 1, "B": 1, "C": 1}),
        (ORDER, {"V": 1, "B": 1}),
    ],
)
def test_lineage_movement_matches_msprime(text, samples):
    msprime = pytest.importorskip("msprime")
    graph = load(text)
    plan = plan_from_demes(graph, samples)
    steps = np.array(
        [0.0, 30, 70, 99.9, 100.1, 150, 250, 350, 450, 550, 750, 900, 1200, 1800, 2500]
    )
    ours = plan_lineage_probabilities(plan, steps)
    theirs = msprime.Demography.from_demes(graph).debug().lineage_probabilities(steps)
    ids = {d.name: j for j, d in enumerate(graph.demes)}
    for a, name in enumerate(plan.demes[: len(samples)]):
        row = theirs[:, ids[name]]
        outside = [ids[d.name] for d in graph.demes if d.name not in plan.demes]
        np.testing.assert_allclose(row[:, outside], 0.0, atol=1e-12)
        cols = [ids[n] for n in plan.demes]
        # msprime's matrix exponential is a 5-term Taylor series (about 1e-7 per epoch)
        np.testing.assert_allclose(ours[:, a], row[:, cols], atol=2e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_order_model_moves_are_msprime_order():
    plan = plan_of(ORDER, {"A": 1, "B": 1, "C": 1})
    i = plan.time_parameters.index(plan.parameter_names.index("T_split_P"))
    got = [
        (plan.demes[mv.source], tuple(plan.demes[t] for t in mv.targets), mv.stay)
        for mv in plan.structure.boundaries[i]
    ]
    # split (A -> P) and branch (B -> Q) first; pulses in reverse graph order (the pulse
    # into B at B's start moves nothing and is left out); the admixture last.
    assert got == [
        ("A", ("P",), False),
        ("B", ("Q",), False),
        ("S", ("Q",), True),
        ("Q", ("W",), True),
        ("W", ("P",), True),
        ("C", ("Q", "S"), False),
    ]
    assert "V" not in plan.demes  # reachable only through the pulse that moves nothing
    assert "p_V_B" not in plan.parameter_names
    # With V sampled the pulse is in the model (a parameter without effect) but moves nothing.
    plan = plan_of(ORDER, {"A": 1, "B": 1, "C": 1, "V": 1})
    assert "p_V_B" in plan.parameter_names
    assert all(not mv.stay for mv in plan.structure.boundaries[i] if plan.demes[mv.source] == "B")
    assert len(plan.structure.boundaries[i]) == 6


@pytest.mark.parametrize(
    ("text", "samples"), [(GROWTH, {"A": 2}), (BOTTLENECK, {"A": 2}), (IM, {"A": 2})]
)
def test_sizes_match_msprime(text, samples):
    msprime = pytest.importorskip("msprime")
    graph = load(text)
    plan = plan_from_demes(graph, samples)
    steps = np.array([0.0, 10, 99, 101, 250, 299, 301, 499, 501, 700, 999, 1001, 5000])
    theirs = msprime.Demography.from_demes(graph).debug().population_size_trajectory(steps)
    ours = plan_sizes(plan, steps)
    interval = np.searchsorted(plan.resolve(plan.theta).times[0], steps, side="right") - 1
    for k, name in enumerate(plan.demes):
        alive = plan.structure.exists[interval, k]
        assert alive.any()
        column = [d.name for d in graph.demes].index(name)
        np.testing.assert_allclose(ours[alive, k], theirs[alive, column], rtol=1e-12)
