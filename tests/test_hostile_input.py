"""Hostile and careless input (issue 12): graph documents, API arguments, the reserved
starting vertex and the command line. Every bad input gets a documented error that names
the place, never a raw exception, a silent repair or a huge allocation."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

import phasetrace as pt
from phasetrace import InvalidGraphError
from phasetrace import graph as graph_module
from phasetrace.cli import CLIError, load_model, main, read_rewards, read_thetas

pytestmark = pytest.mark.timeout(120)


# -- JSON graph documents --------------------------------------------------------------------------


def _doc() -> dict:
    """kingman(3) on lineage counts: vertices [0], [1], [2], [3]; one θ."""
    return json.loads(pt.models.kingman(3, state_space="lineages").to_json())


def _with(**changes) -> str:
    doc = _doc()
    doc.update(changes)
    return json.dumps(doc)


def _edges(*extra):
    return _doc()["edges"] + list(extra)


def test_the_document_used_below_is_what_we_think():
    doc = _doc()
    assert doc["vertices"] == [[0], [1], [2], [3]]
    assert doc["edges"] == [[0, 3, 1.0, None], [2, 1, 0.0, [1.0]], [3, 2, 0.0, [3.0]]]
    assert pt.Graph.from_json(json.dumps(doc)).to_json() == json.dumps(
        doc, sort_keys=True, separators=(",", ":")
    )


BAD_DOCUMENTS = [
    # indices: negative ones used to wrap around to the last vertex
    (_with(edges=_edges([1, -1, 1.0, None])), r"edges\[3\]\[1\]: -1 is not a vertex index"),
    (_with(edges=_edges([-4, 1, 1.0, None])), r"edges\[3\]\[0\]: -4 is not a vertex index"),
    (_with(edges=_edges([1, 4, 1.0, None])), r"edges\[3\]\[1\]: 4 is not a vertex index"),
    (_with(edges=_edges([1, True, 1.0, None])), r"edges\[3\]\[1\]: True is not an int"),
    (_with(edges=_edges([1, 2.0, 1.0, None])), r"edges\[3\]\[1\]: 2.0 is not an int"),
    (_with(edges=_edges([1, 2**80, 1.0, None])), r"edges\[3\]\[1\]: .* is not a vertex index"),
    # duplicate rows used to be merged silently
    (_with(vertices=[[0], [1], [2], [3], [2]]), r"vertices\[4\]: state \[2\] appears twice"),
    (_with(vertices=[[0], [1], [0], [3]]), r"vertices\[2\]: the all-zero state is reserved"),
    (_with(vertices=[[1], [0], [2], [3]]), r"vertices\[0\]: the first vertex must be the start"),
    # the wrong container, wrong keys, deep nesting
    ("[1, 2, 3]", r"the top level is a list, expected an object"),
    ('"text"', r"the top level is a str, expected an object"),
    ("[" * 100_000 + "]" * 100_000, r"nested too deeply"),
    ('{"format": "phasetrace.graph", "vertices": ' + "[" * 5000, r"nested too deeply"),
    (_with(vertices={"0": [0]}), r"vertices: a dict, expected a list"),
    (_with(edges=[[0, 3, 1.0]]), r"edges\[0\]: 3 items, expected \[source, target, weight"),
    (_with(edges=[7]), r"edges\[0\]: an int, expected \[source, target, weight"),
    (_with(vertices=[[0], 1, [2], [3]]), r"vertices\[1\]: an int, expected a list"),
    (json.dumps({k: v for k, v in _doc().items() if k != "edges"}), r"'edges' is missing"),
    (_with(version=True), r"not a phasetrace graph document of version 1"),
    (_with(version=1.0), r"not a phasetrace graph document of version 1"),
    # numbers: type by type, and range
    (_with(edges=[[0, 3, 10**400, None]]), r"edges\[0\]\[2\]: .* is not a finite number"),
    (_with(edges=[[0, 3, "1", None]]), r"edges\[0\]\[2\]: '1' is not a number"),
    (_with(edges=[[0, 3, True, None]]), r"edges\[0\]\[2\]: True is not a number"),
    (_with(edges=[*_edges()[:2], [3, 2, 0.0, [True]]]), r"edges\[2\]\[3\]\[0\]: True is not"),
    (_with(edges=[*_edges()[:2], [3, 2, 0.0, [1.0, 2.0]]]), r"edges\[2\]\[3\]: 2 coefficients"),
    (_with(edges=[*_edges()[:2], [3, 2, 0.0, 3.0]]), r"edges\[2\]\[3\]: a float, expected a list"),
    ('{"edges": [[0, 3, NaN, null]]}', r"NaN is not allowed"),
    (_with(vertices=[[0], [1.7], [2], [3]]), r"vertices\[1\]\[0\]: 1.7 is not an int"),
    (_with(vertices=[[0], [1.0], [2], [3]]), r"vertices\[1\]\[0\]: 1.0 is not an int"),
    (_with(vertices=[[0], [True], [2], [3]]), r"vertices\[1\]\[0\]: True is not an int"),
    (_with(vertices=[[0], [2**63], [2], [3]]), r"vertices\[1\]\[0\]: .* out of int64 range"),
    (_with().replace("[1]", "[" + "9" * 5000 + "]", 1), r"malformed graph document"),
    # sizes: checked against the document's own content before anything is allocated
    (_with(state_length=1.0), r"state_length: 1.0 is not an int"),
    (_with(state_length=True), r"state_length: True is not an int"),
    (_with(state_length=1e10), r"state_length: 10000000000.0 is not an int"),
    (_with(state_length=300_000_000), r"state_length is 300000000 but vertices\[0\] has 1"),
    (_with(state_length=0), r"state_length: 0 must be >= 1"),
    (_with(vertices=[[0], [1], [2, 0], [3]]), r"vertices\[2\]: 2 entries, state_length is 1"),
    (_with(n_params=2), r"edges\[1\]\[3\]: 1 coefficients, n_params is 2"),
    (_with(n_params=-1), r"n_params: -1 must be >= 0"),
    (_with(n_params=10**12), r"n_params: 1000000000000 is above the limit"),
    (_with(n_params="1"), r"n_params: '1' is not an int"),
    (_with(vertices=[]), r"vertices: empty; the first vertex must be the start"),
    # graph rules, named by the edge's place in the document
    (_with(edges=_edges([1, 0, 1.0, None])), r"edges\[3\]: .*the starting vertex cannot"),
    (_with(edges=_edges([1, 1, 1.0, None])), r"edges\[3\]: .*self-loops"),
    (_with(edges=_edges([2, 1, 1.0, None])), r"edges\[3\]: .*a parallel edge"),
    (_with(edges=_edges([1, 2, -1.0, None])), r"edges\[3\]: .*must be > 0"),
]


@pytest.mark.parametrize(("text", "message"), BAD_DOCUMENTS, ids=range(len(BAD_DOCUMENTS)))
def test_bad_graph_documents_are_refused_naming_the_place(text, message):
    with pytest.raises(InvalidGraphError, match=message):
        pt.Graph.from_json(text)
    with pytest.raises(InvalidGraphError, match=message):
        pt.Graph.from_json(text.encode())


@pytest.mark.parametrize("text", [b"\xff\xfe\x00garbage", b"", b"   ", "\ud800"])
def test_undecodable_documents_are_refused(text):
    with pytest.raises(InvalidGraphError, match="malformed graph document"):
        pt.Graph.from_json(text)


def test_from_json_wants_text():
    with pytest.raises(TypeError, match="from_json expects str or bytes, got dict"):
        pt.Graph.from_json(_doc())


def test_a_document_claiming_huge_sizes_fails_before_allocating():
    """140 bytes claiming 3e8-entry states used to allocate 2.4 GB before failing; a
    document with n_params far beyond its content would allocate edges x n_params."""
    claims = [
        _with(state_length=300_000_000),
        _with(state_length=2**62),
        _with(n_params=50_000_000, edges=[[0, 3, 1.0, None]] * 1),
    ]
    # many constant edges with a modest but unverifiable n_params: edges x n_params dense
    verts = [[0]] + [[i] for i in range(1, 2001)]
    edges = [[0, 1, 1.0, None]] + [[i, i + 1, 1.0, None] for i in range(1, 2000)]
    claims.append(json.dumps({**_doc(), "n_params": 60_000, "vertices": verts, "edges": edges}))
    tracemalloc.start()
    try:
        for text in claims:
            with pytest.raises(InvalidGraphError, match=r"n_params|state_length"):
                pt.Graph.from_json(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB while refusing small documents"


def test_document_size_limit(monkeypatch):
    text = pt.models.kingman(4).to_json()
    monkeypatch.setattr(graph_module, "MAX_JSON_BYTES", len(text) - 1)
    with pytest.raises(InvalidGraphError, match=r"bytes, above the limit"):
        pt.Graph.from_json(text)
    monkeypatch.setattr(graph_module, "MAX_JSON_BYTES", len(text))
    assert pt.Graph.from_json(text).to_json() == text


def test_valid_documents_still_round_trip():
    for g in (
        pt.models.kingman(5),
        pt.models.two_island(3),
        pt.models.random_graph(n_vertices=40, n_sccs=4, seed=3),
        pt.Graph.from_matrices([0.3, 0.7], [[-2.0, 1.0], [0.5, -1.5]]),
    ):
        text = g.to_json()
        back = pt.Graph.from_json(text)
        assert back.to_json() == text and back.content_key() == g.content_key()
    # a constant graph with parameters nobody uses is still a valid document
    g = pt.Graph(state_length=2, n_params=3)
    a = g.find_or_create_vertex([1, 0])
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge(g.find_or_create_vertex([2, 0]), 2.0)
    assert pt.Graph.from_json(g.to_json()).to_json() == g.to_json()


def test_cli_refuses_a_bad_json_model_in_one_line(tmp_path, capsys):
    (tmp_path / "neg.json").write_text(_with(edges=_edges([1, -1, 1.0, None])))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    (tmp_path / "latin1.json").write_bytes(b'{"format": "\xe9"}')
    for name, message in [
        ("neg.json", r"edges[3][1]: -1 is not a vertex index"),
        ("deep.json", "nested too deeply"),
        ("latin1.json", "is not UTF-8 text"),
    ]:
        assert main(["trace", str(tmp_path / name), "--no-cache"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_cli_refuses_an_oversized_json_model_before_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text(pt.models.kingman(4).to_json())
    monkeypatch.setattr(graph_module, "MAX_JSON_BYTES", 10)
    with pytest.raises(CLIError, match=r"big.json: .* bytes, above the limit"):
        load_model(str(path))


# -- API argument types ----------------------------------------------------------------------------


def test_graph_sizes_must_be_ints():
    for bad in (True, 1.0, "1", None, np.float64(2.0)):
        with pytest.raises(TypeError, match="state_length must be an int"):
            pt.Graph(bad)
        with pytest.raises(TypeError, match="n_params must be an int"):
            pt.Graph(1, n_params=bad)
    with pytest.raises(ValueError, match="state_length must be >= 1"):
        pt.Graph(0)
    with pytest.raises(ValueError, match="state_length=1000000000000 is above the limit"):
        pt.Graph(10**12)
    with pytest.raises(ValueError, match="n_params=1000000000000 is above the limit"):
        pt.Graph(1, n_params=10**12)
    assert pt.Graph(np.int64(2), n_params=np.int32(1)).state_length == 2


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([1.7], r"state \[1.7\]: entry 1.7 is not an integer"),
        ([np.float64(2.5)], r"entry 2.5 is not an integer"),
        ([float("nan")], r"entry nan is not an integer"),
        ([2**70], r"entry 1180591620717411303424 is out of int64 range"),
        ([-(2**63) - 1], r"is out of int64 range"),
        ([10**5000], r"entry <int too large to show> is out of int64 range"),
        (["1"], r"entry '1' is not an integer"),
        ([None], r"entry None is not an integer"),
        ("1", r"state '1' is not a sequence of integers"),
        (5, r"state 5 is not a sequence of integers"),
        (np.array([1.5]), r"entry 1.5 is not an integer"),
        (np.array([2**64 - 1], dtype=np.uint64), r"out of int64 range"),
    ],
)
def test_bad_state_entries_are_refused_not_truncated(state, message):
    g = pt.Graph(state_length=1)
    with pytest.raises(InvalidGraphError, match=message):
        g.find_or_create_vertex(state)
    with pytest.raises(InvalidGraphError, match=message):
        pt.Graph.from_callback(lambda s: [], state)
    with pytest.raises(InvalidGraphError, match=message):
        pt.Graph.from_callback(lambda s: [(state, 1.0)] if s == (1,) else [], [1])
    assert len(g) == 1


def test_integral_numbers_of_any_kind_are_states():
    g = pt.Graph(state_length=3)
    v = g.find_or_create_vertex([np.int8(1), 2.0, True])
    assert v.state().tolist() == [1, 2, 1]
    assert g.find_vertex(np.array([1, 2, 1])) == v
    assert g.find_or_create_vertex(np.array([1.0, 2.0, 1.0])) == v
    assert g.find_or_create_vertex([2**63 - 1, -(2**63), 0]).state().tolist() == [
        2**63 - 1,
        -(2**63),
        0,
    ]


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ("1", r"weight '1' is not a number"),
        (True, r"weight True is not a number"),
        (None, r"weight None is not a number"),
        ([1.0], r"weight \[1.0\] is not a number"),
        (10**400, r"weight .* is not finite"),
        (complex(1, 0), r"is not a number"),
    ],
    ids=["str", "bool", "None", "list", "huge", "complex"],
)
def test_bad_weights_are_refused(weight, message):
    g = pt.Graph(state_length=1, n_params=1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(InvalidGraphError, match=message):
        a.add_edge(b, weight)
    with pytest.raises(InvalidGraphError, match=message):
        a.add_edge_parameterized(b, weight, [1.0])
    with pytest.raises(InvalidGraphError, match=message):
        pt.Graph.from_callback(lambda s: [((2,), weight)] if s == (1,) else [], [1])
    assert a.edges() == []


@pytest.mark.parametrize("coefficients", [["1"], [True], [None], "1", [[1.0]], [10**400]])
def test_bad_coefficients_are_refused(coefficients):
    g = pt.Graph(state_length=1, n_params=1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(InvalidGraphError, match="coefficients"):
        a.add_edge_parameterized(b, 0.0, coefficients)
    assert a.edges() == []


def test_weights_of_numeric_types_are_accepted():
    g = pt.Graph(state_length=1, n_params=1)
    a, b, c = (g.find_or_create_vertex([k]) for k in (1, 2, 3))
    g.starting_vertex().add_edge(a, np.float32(1.0))
    a.add_edge(b, 2)
    b.add_edge_parameterized(c, np.int64(0), np.array([np.float32(0.5)]))
    assert [e.weight for v in g.vertices() for e in v.edges()] == [1.0, 2.0, 0.0]
    assert float(pt.record_trace(g).expectation([2.0])) == pytest.approx(0.5 + 1.0)


def test_bad_initial_distributions_from_callback_are_refused():
    step = lambda s: [] if s[0] == 2 else [((2,), 1.0)]  # noqa: E731
    with pytest.raises(InvalidGraphError, match=r"probability '0.5' is not a number"):
        pt.Graph.from_callback(step, [([1], "0.5"), ([2], 0.5)])


def test_compute_trace_checks_its_arguments():
    with pytest.raises(TypeError, match=r"compute_trace expects a phasetrace\.Graph, got str"):
        pt.compute_trace("graph")
    with pytest.raises(TypeError, match=r"compute_traces expects an iterable of phasetrace\.Graph"):
        pt.compute_traces("graphs")
    with pytest.raises(TypeError, match=r"compute_traces expects an iterable .* got Graph"):
        pt.compute_traces(pt.models.kingman(3))
    with pytest.raises(TypeError, match=r"graphs\[1\] is a int, not a phasetrace.Graph"):
        pt.compute_traces([pt.models.kingman(3), 7])
    for bad in ("yes", 1, 0.0):
        with pytest.raises(TypeError, match="hierarchical must be True, False or None"):
            pt.compute_trace(pt.models.kingman(3), hierarchical=bad, cache=False)
        with pytest.raises(TypeError, match="hierarchical must be True, False or None"):
            pt.compute_traces([pt.models.kingman(3)], hierarchical=bad, cache=False)
    tr = pt.compute_trace(pt.models.kingman(3), hierarchical=np.bool_(True), cache=False)
    assert float(tr.expectation([1.0])) == pytest.approx(4 / 3)


# -- the reserved starting vertex ------------------------------------------------------------------


def _queue_step(s):
    """A queue that starts empty: [0] -> [1] -> [2] at rate 1 each; [2] absorbs."""
    return [((s[0] + 1,), 1.0)] if s[0] < 2 else []


def test_a_chain_starting_in_state_zero_is_an_error_not_a_wrong_answer():
    """[0] -> [1] -> [2] used to treat [0] as the start vertex: E[T] = 1 instead of 2."""
    start_message = r"state \[0\]: the all-zero state is reserved for the starting vertex.*shift"
    g = pt.Graph(state_length=1)
    with pytest.raises(InvalidGraphError, match=start_message):
        g.find_or_create_vertex([0])
    with pytest.raises(InvalidGraphError, match=start_message):
        pt.Graph.from_callback(_queue_step, [0])
    seen = []

    def down(s):  # a callback that would fail on the all-zero state: it is never called on it
        seen.append(s)
        return [((s[0] - 1,), 1.0 / s[0])]

    with pytest.raises(InvalidGraphError, match=r"state \[0\], reached from state \[1\]: the"):
        pt.Graph.from_callback(down, [2])
    assert seen == [(2,), (1,)]
    with pytest.raises(InvalidGraphError, match=start_message):
        pt.Graph.from_arrays([[0], [1], [2]], [0, 1], [1, 2], [1.0, 1.0], initial=([0], [1.0]))
    a = g.find_or_create_vertex([1])
    with pytest.raises(InvalidGraphError, match=r"state \[1\] -> start: .*reserved"):
        a.add_edge(g.starting_vertex(), 1.0)
    # find_vertex is a lookup: the all-zero state is the start's
    assert g.find_vertex([0]) == g.starting_vertex()


def test_the_documented_workaround_shifts_the_states():
    """Store n + 1 for a queue of length n: two Exp(1) steps, E[T] = 2, E[T^2] = 6."""
    g = pt.Graph.from_callback(lambda s: [((s[0] + 1,), 1.0)] if s[0] < 3 else [], [1])
    assert [v.state().tolist() for v in g.vertices()] == [[0], [1], [2], [3]]
    assert pt.record_trace(g).moments([], k=2).tolist() == pytest.approx([2.0, 6.0], rel=1e-14)
    # by hand: a component that is 1 in every real state
    h = pt.Graph(state_length=2)
    q0, q1, q2 = (h.find_or_create_vertex([n, 1]) for n in (0, 1, 2))
    h.starting_vertex().add_edge(q0, 1.0)
    q0.add_edge(q1, 1.0)
    q1.add_edge(q2, 1.0)
    assert float(pt.record_trace(h).expectation([])) == pytest.approx(2.0, rel=1e-14)


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phasetrace: error: "), err
    return err[0]


def test_output_that_is_a_directory_is_refused(isolated, capsys):
    (isolated / "out").mkdir()
    assert main(["trace", "kingman:n=3", "-o", "out", "--no-cache"]) == 1
    assert "-o 'out' is a directory" in _one_error_line(capsys)
    assert main(["trace", "kingman:n=3", "-o", "new/", "--no-cache"]) == 1
    assert "-o 'new/' names a directory" in _one_error_line(capsys)
    assert not (isolated / "out.npz").exists() and not list((isolated / "out").iterdir())
    assert main(["trace", "kingman:n=3", "-o", "out/k3", "--no-cache"]) == 0
    assert pt.Trace.load(isolated / "out" / "k3.npz").n_vertices == 4


def test_trace_help_says_what_o_takes(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    assert "an existing directory is an error" in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def k3_trace(isolated):
    return pt.record_trace(pt.models.kingman(3, state_space="lineages"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5,2\n", r"rewards line 1: state entry '1.5' is not an integer"),
        ("1e400,2\n", r"rewards line 1: state entry '1e400' is not an integer"),
        ("nan,2\n", r"rewards line 1: state entry 'nan' is not an integer"),
        ("99999999999999999999,2\n", r"rewards line 1: no vertex has state"),
        ("1" * 200_000 + "\n", r"rewards: line 1: field larger than field limit"),
        ("3,1\n2,x\n", r"rewards line 2: 'x' is not a number"),
    ],
    ids=["float", "inf", "nan", "huge", "long-field", "not-a-number"],
)
def test_malformed_rewards_are_one_clear_error(k3_trace, text, message):
    with pytest.raises(CLIError, match=message):
        read_rewards(text, k3_trace)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1" * 200_000 + "\n", r"thetas: line 1: field larger than field limit"),
        ("1,2\n3\n", r"thetas line 2: 1 value\(s\), expected 2"),
        ("a,b\n", r"no θ rows found"),
    ],
    ids=["long-field", "short-row", "header-only"],
)
def test_malformed_thetas_are_one_clear_error(text, message):
    with pytest.raises(CLIError, match=message):
        read_thetas(text, 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x" * 5000 + ".json", "model file 'xxx"),
        ("x" * 5000 + ".py:build", "model file 'xxx"),
        ("dir\x00/m.json", "does not exist"),
        ("kingman:n=1e400", "n must be an int"),
        ("structured_parameters:n_demes=2", r"unknown model 'structured_parameters'"),
    ],
    ids=["long-json", "long-py", "nul", "inf", "not-a-graph"],
)
def test_malformed_model_specs_are_one_clear_error(spec, message):
    with pytest.raises(CLIError, match=message):
        load_model(spec)


def test_cli_malformed_rewards_file_exits_1_with_one_line(isolated, capsys):
    assert main(["trace", "kingman:n=3,state_space=lineages", "-o", "k.npz", "--no-cache"]) == 0
    capsys.readouterr()
    (isolated / "r.csv").write_text("1e400,1\n")
    assert main(["moments", "k.npz", "--theta", "1", "--rewards", "r.csv"]) == 1
    assert "r.csv line 1: state entry '1e400' is not an integer" in _one_error_line(capsys)


@pytest.mark.timeout(60)  # k=10**6 used to allocate and grind instead of failing
@pytest.mark.parametrize("k", [True, 2.0, 0, -1, 171, 10**6, "2"])
def test_bad_moment_orders_are_refused(k):
    trace = pt.record_trace(pt.models.kingman(4))
    with pytest.raises(pt.InvalidParameterError, match="k"):
        trace.moments([1.0], k=k)


def test_the_highest_allowed_moment_order_is_finite():
    trace = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    m = trace.moments([1.0], k=170)
    assert np.isfinite(m).all()
    # T = Exp(3) + Exp(1) at c = 1: E[T] = 1/3 + 1 and E[T^2] = Var + E^2
    assert m[:2] == pytest.approx([4 / 3, 1 / 9 + 1 + (4 / 3) ** 2], rel=1e-13)


# -- θ and rewards that a cast would change silently (issue 19) -------------------------------


@pytest.mark.parametrize(
    ("theta", "message"),
    [
        (np.array([1 + 0j, 0.5]), "complex"),
        (np.array([1 + 2j, 0.5]), "complex"),
        (np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"), "datetime64"),
        (np.array([1, 2], dtype="timedelta64[s]"), "timedelta64"),
        (np.ma.array([1.0, 0.5], mask=[False, True]), "masked array"),
        ([10**400, 1], "too large for float64"),
        (["1", "0.5"], "not numbers"),
    ],
    ids=["complex-real", "complex", "datetime", "timedelta", "masked", "10**400", "text"],
)
def test_theta_of_other_kinds_is_refused_not_cast(theta, message):
    trace = pt.record_trace(pt.models.two_island(3))
    for evaluate in (trace.moments, trace.moments_and_jacobian, trace.expectation):
        with pytest.raises(pt.InvalidParameterError, match=message):
            evaluate(theta)
    with pytest.raises(pt.InvalidParameterError, match=message):
        pt.cdf(trace, [1.0], theta)


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        (lambda n: np.ones(n) * (1 + 1j), "complex"),
        (lambda n: [10**400] * n, "too large for float64"),
        (lambda n: np.ma.array(np.ones(n), mask=[True] + [False] * (n - 1)), "masked array"),
    ],
    ids=["complex", "10**400", "masked"],
)
def test_rewards_of_other_kinds_are_refused_not_cast(rewards, message):
    trace = pt.record_trace(pt.models.two_island(3))
    with pytest.raises(pt.InvalidParameterError, match=message):
        trace.moments([1.0, 0.5], rewards=rewards(trace.n_vertices))


def test_a_reward_function_that_fails_is_one_clear_error():
    trace = pt.record_trace(pt.models.two_island(3))
    with pytest.raises(pt.InvalidParameterError, match="raised IndexError at state") as info:
        trace.moments([1.0, 0.5], rewards=lambda s: s[2])
    assert "an int array of length 2" in str(info.value)
    assert isinstance(info.value.__cause__, IndexError)
    with pytest.raises(pt.InvalidParameterError, match="complex"):
        trace.moments([1.0, 0.5], rewards=lambda s: 1j * s[0])


# -- model files and built-in models on the command line (issue 19) ---------------------------

_SIDE_EFFECT_PY = """
import pathlib
pathlib.Path("ran.txt").write_text("the top-level code ran")
import phasetrace as pt


def build():
    return pt.models.kingman(4)
"""


def test_a_model_file_without_the_function_is_refused_before_running(isolated, capsys):
    (isolated / "model.py").write_text(_SIDE_EFFECT_PY)
    assert main(["trace", "model.py:biuld", "--no-cache"]) == 1
    line = _one_error_line(capsys)
    assert "has no function 'biuld'" in line and "build" in line and "nothing was run" in line
    assert not (isolated / "ran.txt").exists()
    assert main(["trace", "model.py:build", "--no-cache"]) == 0
    assert (isolated / "ran.txt").exists()  # as documented: the file is run to get the function


def test_trace_help_says_that_a_model_file_is_run(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "its top-level code runs" in out
    assert "structured_parameters" not in out


def test_structured_coalescent_takes_its_samples_on_the_command_line():
    graph = load_model("structured_coalescent:samples=[3,2],migration=pairwise")
    want = pt.models.structured_coalescent([3, 2], "pairwise")
    assert pt.record_trace(graph) == pt.record_trace(want)


def test_every_example_in_a_model_error_message_works():
    """The message for a model given without its required arguments names an example:
    that example builds the model."""
    import re

    from phasetrace.cli import _builtin_models

    for name in _builtin_models():
        try:
            load_model(name)
            continue  # no required argument
        except CLIError as exc:
            example = re.search(r"e\.g\. (\S+)$", str(exc)).group(1)
        assert isinstance(load_model(example), pt.Graph), example
