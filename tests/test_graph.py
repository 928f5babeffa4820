"""Graph construction, validation messages, serialization and dense matrices."""

from __future__ import annotations

import numpy as np
import pytest

import phasetrace as pt
from phasetrace import InvalidGraphError, InvalidParameterError

pytestmark = pytest.mark.timeout(60)


def chain(n_params=0):
    g = pt.Graph(state_length=1, n_params=n_params)
    a, b, c = (g.find_or_create_vertex([k]) for k in (1, 2, 3))
    g.starting_vertex().add_edge(a, 1.0)
    return g, a, b, c


def test_construction_api():
    g, a, b, c = chain(n_params=2)
    a.add_edge(b, 2.0)
    b.add_edge_parameterized(c, 0.5, [1.0, 0.0])
    assert g.find_vertex([2]) == b and g.find_vertex([9]) is None
    assert g.find_or_create_vertex([2]) == b
    assert [v.state().tolist() for v in g.vertices()] == [[0], [1], [2], [3]]
    (e,) = b.edges()
    assert e.to == c and e.weight == 0.5 and e.coefficients == (1.0, 0.0) and e.parameterized
    assert e.weight_at([2.0, 7.0]) == 2.5
    assert c.is_absorbing() and not a.is_absorbing() and g.starting_vertex().is_starting()


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda g, a, b, c: a.add_edge(b, -1.0),
            r"state \[1\] -> state \[2\]: weight -1.0 must be > 0",
        ),
        (
            lambda g, a, b, c: a.add_edge(b, 0.0),
            r"state \[1\] -> state \[2\]: weight 0.0 must be > 0",
        ),
        (
            lambda g, a, b, c: a.add_edge(b, float("nan")),
            r"state \[1\] -> state \[2\]: .*not finite",
        ),
        (
            lambda g, a, b, c: a.add_edge(b, float("inf")),
            r"state \[1\] -> state \[2\]: .*not finite",
        ),
        (lambda g, a, b, c: a.add_edge(a, 1.0), r"state \[1\] -> state \[1\]: self-loops"),
        (
            lambda g, a, b, c: (a.add_edge(b, 1.0), a.add_edge(b, 2.0)),
            r"state \[1\] -> state \[2\]: a parallel edge",
        ),
        (
            lambda g, a, b, c: a.add_edge(g.starting_vertex(), 1.0),
            r"state \[1\] -> start: the starting vertex cannot have in-edges",
        ),
        (
            lambda g, a, b, c: a.add_edge_parameterized(b, 0.0, [1.0]),
            r"state \[1\] -> state \[2\]: 1 coefficients given, the graph has n_params=2",
        ),
        (
            lambda g, a, b, c: a.add_edge_parameterized(b, 0.0, [1.0, float("nan")]),
            r"state \[1\] -> state \[2\]: coefficients .* must be finite",
        ),
        (
            lambda g, a, b, c: g.starting_vertex().add_edge_parameterized(b, 0.0, [1.0, 0.0]),
            r"start -> state \[2\]: the initial distribution must be constant",
        ),
        (lambda g, a, b, c: g.find_or_create_vertex([1, 2]), r"state \[1, 2\] has length 2"),
    ],
)
def test_edge_rules_are_refused_with_the_edge_named(bad, message):
    g, a, b, c = chain(n_params=2)
    with pytest.raises(InvalidGraphError, match=message):
        bad(g, a, b, c)


def test_initial_distribution_must_sum_to_one():
    g = pt.Graph(state_length=1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.starting_vertex().add_edge(a, 0.7)
    a.add_edge(b, 1.0)
    with pytest.raises(InvalidGraphError, match=r"start: initial distribution sums to 0.7"):
        pt.record_trace(g)


def test_start_without_edges_is_refused():
    g = pt.Graph(state_length=1)
    with pytest.raises(InvalidGraphError, match="start: the starting vertex has no out-edges"):
        g.validate()


def test_transient_vertex_that_cannot_reach_absorption_is_named():
    g, a, b, _ = chain()
    a.add_edge(b, 1.0)
    b.add_edge(a, 1.0)  # {a, b} is a closed class: the absorbing [3] is never reached
    with pytest.raises(
        InvalidGraphError, match=r"state \[1\], \[2\]: transient vertex cannot reach"
    ):
        pt.record_trace(g)


def test_theta_of_wrong_length_or_bad_value_is_refused():
    g, a, b, c = chain(n_params=2)
    a.add_edge_parameterized(b, 0.0, [1.0, 0.0])
    b.add_edge_parameterized(c, 0.0, [0.0, 2.0])
    trace = pt.record_trace(g)
    with pytest.raises(InvalidParameterError, match=r"theta must have shape \(2,\)"):
        trace.moments([1.0])
    with pytest.raises(InvalidParameterError, match="NaN or infinite"):
        trace.moments([1.0, float("nan")])
    with pytest.raises(
        InvalidParameterError, match=r"edge state \[2\] -> state \[3\]: rate 0.0 .* not > 0"
    ):
        trace.moments([1.0, 0.0])
    with pytest.raises(InvalidParameterError, match=r"edge state \[1\] -> state \[2\]: rate -1.0"):
        trace.moments([[1.0, 1.0], [-1.0, 1.0]])


def test_rewards_of_wrong_shape_are_refused():
    trace = pt.record_trace(pt.models.kingman(3))
    with pytest.raises(InvalidParameterError, match="rewards must have shape"):
        trace.moments([1.0], rewards=[1.0, 2.0])
    with pytest.raises(InvalidParameterError, match=">= 0"):
        trace.moments([1.0], rewards=-np.ones(trace.n_vertices))


def test_json_is_canonical_whatever_the_creation_order():
    def build(order):
        g = pt.Graph(state_length=1, n_params=1)
        vs = {k: g.find_or_create_vertex([k]) for k in order}
        g.starting_vertex().add_edge(vs[1], 1.0)
        vs[1].add_edge_parameterized(vs[2], 0.1, [1.0 / 3.0])
        vs[2].add_edge(vs[1], 0.7)
        vs[2].add_edge(vs[3], 1e-300)
        return g

    a, b = build([1, 2, 3]), build([3, 2, 1])
    assert a.to_json() == b.to_json()
    assert a.content_key() == b.content_key()
    back = pt.Graph.from_json(a.to_json())
    assert back.to_json() == a.to_json()
    e = back.find_vertex([1]).edges()[0]
    assert e.coefficients == (1.0 / 3.0,)  # lossless floats
    assert (
        pt.record_trace(a).digest() == pt.record_trace(b).digest() == pt.record_trace(back).digest()
    )


def test_from_json_rejects_other_documents():
    with pytest.raises(InvalidGraphError, match="not a phasetrace graph document"):
        pt.Graph.from_json('{"format": "x", "version": 1}')
    with pytest.raises(InvalidGraphError, match="malformed graph document"):
        pt.Graph.from_json("[1, 2")


def test_to_matrices_against_hand_built_matrix():
    g, a, b, c = chain(n_params=1)
    a.add_edge_parameterized(b, 1.0, [2.0])
    b.add_edge(a, 0.5)
    b.add_edge(c, 3.0)
    alpha, S = g.to_matrices([0.25])
    assert alpha.tolist() == [1.0, 0.0]
    assert S.tolist() == [[-1.5, 1.5], [0.5, -3.5]]


def test_from_matrices_round_trip():
    alpha = np.array([0.6, 0.3, 0.0])
    S = np.array([[-3.0, 1.0, 0.5], [0.2, -1.0, 0.3], [1.0, 0.0, -2.0]])
    g = pt.Graph.from_matrices(alpha, S)
    a2, S2 = g.to_matrices()
    assert np.allclose(a2, alpha) and np.allclose(S2, S)
    U = np.linalg.inv(-S)
    assert pt.record_trace(g).expectation([]) == pytest.approx(alpha @ U @ np.ones(3), rel=1e-12)
    with pytest.raises(InvalidGraphError, match="negative exit rate"):
        pt.Graph.from_matrices([1.0], [[1.0]])


def test_from_callback_explores_breadth_first_and_sums_duplicates():
    seen = []

    def step(state):
        seen.append(state)
        k = state[0]
        if k == 1:
            return []
        return [((k - 1,), 1.0), ((k - 1,), 2.0)]  # two events, same target: summed

    g = pt.Graph.from_callback(step, [((4,), 1.0)])
    assert seen == [(4,), (3,), (2,), (1,)]
    edge = g.find_vertex([3]).edges()[0]
    assert edge.weight == 3.0


def test_repr_and_len():
    g = pt.models.two_island(3)
    assert len(g) == 10
    assert "vertices=10" in repr(g)


def test_a_callback_reaching_the_all_zero_state_gets_a_clear_message():
    with pytest.raises(InvalidGraphError, match="all-zero state is reserved"):
        pt.Graph.from_callback(lambda s: [] if s[0] == 0 else [((s[0] - 1,), 1.0)], [2])


# -- building from arrays ---------------------------------------------------------------------
def test_from_arrays_equals_the_same_graph_built_edge_by_edge():
    states = np.array([[3], [2], [1], [4]])
    src, dst = [0, 1, 1, 3], [1, 2, 3, 0]
    g = pt.Graph.from_arrays(
        states, src, dst, [0.0, 1.0, 0.5, 2.0], [[3.0], [0.0], [0.0], [0.0]], initial=([0], [1.0])
    )
    h = pt.Graph(state_length=1, n_params=1)
    v = {s: h.find_or_create_vertex([s]) for s in (3, 2, 1, 4)}
    h.starting_vertex().add_edge(v[3], 1.0)
    v[3].add_edge_parameterized(v[2], 0.0, [3.0])
    v[2].add_edge(v[1], 1.0)
    v[2].add_edge(v[4], 0.5)
    v[4].add_edge(v[3], 2.0)
    assert g.to_json() == h.to_json() and g.content_key() == h.content_key()
    assert pt.record_trace(g).digest() == pt.record_trace(h).digest()
    assert len(g) == 5 and g.n_edges == 5
    # The vertex API works on an array-built graph (and edits it).
    assert [e.to.state().tolist() for e in g.find_vertex([2]).edges()] == [[1], [4]]
    g.find_vertex([1]).add_edge(g.find_or_create_vertex([9]), 1.0)
    assert g.n_edges == 6 and not g.find_vertex([1]).is_absorbing()


def test_models_built_from_arrays_equal_the_callback_builder():
    def step(state):
        a, b = state
        if a + b <= 1:
            return []
        out = []
        if a >= 2:
            out.append(((a - 1, b), (0.0, [a * (a - 1) / 2, 0.0])))
        if b >= 2:
            out.append(((a, b - 1), (0.0, [b * (b - 1) / 2, 0.0])))
        if a >= 1:
            out.append(((a - 1, b + 1), (0.0, [0.0, float(a)])))
        if b >= 1:
            out.append(((a + 1, b - 1), (0.0, [0.0, float(b)])))
        return out

    for n in (2, 5, 9):
        by_callback = pt.Graph.from_callback(step, [n, 0], n_params=2)
        assert pt.models.two_island(n).to_json() == by_callback.to_json()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"states": [[1], [1]]}, r"state \[1\]: appears twice"),
        ({"states": [[0], [1]]}, r"the all-zero state is reserved"),
        ({"states": [[1.5], [2]]}, r"states must be integers"),
        ({"src": [0, 2]}, r"src\[1\] = 2 is not a row"),
        ({"dst": [1, -1]}, r"dst\[1\] = -1 is not a row"),
        ({"src": [0, 0], "dst": [1, 1]}, r"state \[1\] -> state \[2\]: a parallel edge"),
        ({"dst": [1, 1]}, r"state \[2\] -> itself: self-loops"),
        ({"weights": [1.0, -2.0]}, r"state \[2\] -> state \[1\]: weight -2.0 must be > 0"),
        ({"weights": [1.0, np.nan]}, r"not finite"),
        ({"initial": ([5], [1.0])}, r"initial: indices \[5\]"),
        ({"initial": ([0], [-1.0])}, r"probabilities \[-1.0\] must be > 0"),
        ({"weights": [1.0]}, r"one equal length"),
    ],
)
def test_from_arrays_rejects_bad_input_naming_the_place(kwargs, message):
    args = {"states": [[1], [2]], "src": [0, 1], "dst": [1, 0], "weights": [1.0, 2.0]}
    args.update(kwargs)
    initial = args.pop("initial", ([0], [1.0]))
    with pytest.raises(InvalidGraphError, match=message):
        g = pt.Graph.from_arrays(**args, initial=initial)
        g.validate()


def test_validate_on_arrays_names_stuck_states():
    g = pt.Graph.from_arrays([[1], [2], [3]], [0, 1], [1, 0], [1.0, 1.0], initial=([0], [1.0]))
    with pytest.raises(InvalidGraphError, match=r"state \[1\], \[2\]: transient vertex cannot"):
        g.validate()
