"""Fuzzing the input formats (issue 12): graph JSON documents, saved traces (``.npz``),
cache entries and the command line's model specs and CSV files.

Inputs are valid documents of small models, mutated: keys deleted, values of other types,
huge and negative numbers, truncated text, random bytes. The property everywhere: the
result is correct, or the error is a documented one (:class:`phasetrace.PhasetraceError`,
:class:`phasetrace.cli.CLIError`); never a raw exception. Example counts are modest so
the whole module runs in CI in well under a minute; set ``PHASETRACE_FUZZ_EXAMPLES`` for
a longer search.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import phasetrace as pt
from phasetrace import InvalidGraphError, InvalidParameterError, PhasetraceError
from phasetrace.cache import decode_entry, encode_entry
from phasetrace.cli import CLIError, load_model, main, parse_theta, read_rewards, read_thetas
from phasetrace.elimination import record_unit
from phasetrace.errors import TraceFormatError
from phasetrace.ops import TRACE_ARRAYS, TRACE_FORMAT_VERSION, X_DIV
from phasetrace.scc import decompose
from phasetrace.structure import check_unit_arrays
from phasetrace.trace import Trace, stitch

pytestmark = pytest.mark.timeout(240)

#: Examples per test; raise it for a long local run (``PHASETRACE_FUZZ_EXAMPLES=5000``).
EXAMPLES = int(os.environ.get("PHASETRACE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- shared inputs ---------------------------------------------------------------------------------


def _small_graphs() -> list[pt.Graph]:
    unused = pt.Graph(state_length=2, n_params=2)  # constant edges, parameters nobody uses
    a, b = unused.find_or_create_vertex([1, 0]), unused.find_or_create_vertex([1, 1])
    unused.starting_vertex().add_edge(a, 1.0)
    a.add_edge(b, 2.5)
    return [
        pt.models.kingman(4),
        pt.models.kingman(5, state_space="lineages"),
        pt.models.two_island(3),
        pt.models.random_graph(n_vertices=10, n_sccs=3, seed=1),
        pt.Graph.from_matrices([0.25, 0.75], [[-2.0, 1.0], [0.5, -1.5]]),
        unused,
    ]


GRAPHS = _small_graphs()
DOCUMENTS = [json.loads(g.to_json()) for g in GRAPHS]
TRACE = pt.record_trace(pt.models.two_island(3))
KEY = "5e" * 32

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
    | st.floats()  # NaN and infinities too: json.dumps writes them as NaN/Infinity
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _containers(doc, path=()):
    """Every (path, container) in a parsed JSON document, the document itself first."""
    yield path, doc
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for k, v in items:
        if isinstance(v, dict | list):
            yield from _containers(v, (*path, k))


@st.composite
def mutated_documents(draw):
    """A small model's graph document with 1-3 structural mutations, as JSON text."""
    doc = copy.deepcopy(draw(st.sampled_from(DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        places = list(_containers(doc))
        _, box = places[draw(st.integers(0, len(places) - 1))]
        keys = list(box) if isinstance(box, dict) else list(range(len(box)))
        action = draw(st.sampled_from(["delete", "replace", "insert", "duplicate", "number"]))
        if not keys and action != "insert":
            continue
        key = keys[draw(st.integers(0, len(keys) - 1))] if keys else None
        if action == "delete":
            del box[key]
        elif action == "replace":
            box[key] = draw(json_values)
        elif action == "number" and isinstance(box[key], int | float):
            box[key] = draw(json_leaves)
        elif action == "duplicate" and isinstance(box, list):
            box.insert(key, copy.deepcopy(box[key]))
        elif isinstance(box, list):
            box.insert(draw(st.integers(0, len(box))), draw(json_values))
        else:
            box[draw(st.text(max_size=6))] = draw(json_values)
    return json.dumps(doc)


def _number_places(doc):
    """Every (container, key) holding a number (not a bool) in a parsed document."""
    for _, box in _containers(doc):
        keys = box if isinstance(box, dict) else range(len(box))
        for k in keys:
            if isinstance(box[k], int | float) and not isinstance(box[k], bool):
                yield box, k


@st.composite
def nudged_documents(draw):
    """A small model's document with 1-3 numbers changed to plausible values, or an edge
    dropped or copied: many of these are still valid graphs, and are evaluated."""
    doc = copy.deepcopy(draw(st.sampled_from(DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["number", "rate", "rate", "drop_edge", "copy_edge"]))
        edges = doc["edges"]
        if how == "rate" and edges:
            edge = edges[draw(st.integers(0, len(edges) - 1))]
            value = draw(st.sampled_from([0.0, 0.25, 1.0, 7.0, -0.5, 1e-200, 1e200]))
            if edge[3] is not None and draw(st.booleans()):
                edge[3][draw(st.integers(0, len(edge[3]) - 1))] = value
            else:
                edge[2] = value
        elif how == "number":
            places = list(_number_places(doc))
            box, key = places[draw(st.integers(0, len(places) - 1))]
            box[key] = draw(
                st.integers(-1, 6)
                | st.sampled_from([0.0, 0.5, 2.0, -1.0, 1e-300, 1e300, 3.5, 2**53, -(2**63)])
            )
        elif edges:
            e = draw(st.integers(0, len(edges) - 1))
            if how == "drop_edge":
                del edges[e]
            else:
                edges.insert(e, copy.deepcopy(edges[e]))
    return json.dumps(doc)


@st.composite
def damaged_text(draw):
    """A valid or mutated document, then cut, overwritten or salted with random bytes."""
    text = draw(mutated_documents() | st.sampled_from(DOCUMENTS).map(json.dumps)).encode()
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "bytes"]))
    at = draw(st.integers(0, len(text)))
    if kind == "truncate":
        text = text[:at]
    elif kind == "overwrite":
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at + 8 :]
    elif kind == "insert":
        text = (
            text[:at]
            + draw(st.sampled_from([b"[", b"{", b"]", b",", b"-", b"1e999", b'"']))
            + text[at:]
        )
    else:
        text = draw(st.binary(max_size=64))
    return text if draw(st.booleans()) else text.decode("utf-8", errors="replace")


def _reached(alpha: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """α and S restricted to the states reachable from α over positive rates."""
    seen = alpha > 0
    while True:
        more = seen | (S[seen] > 0).any(axis=0)
        if (more == seen).all():
            break
        seen = more
    return alpha[seen], S[np.ix_(seen, seen)]


def _check_accepted_graph(g: pt.Graph) -> None:
    """A document that was accepted is a graph like any other: canonical, and its moments
    are those of the dense matrix formula (when they are defined)."""
    text = g.to_json()
    assert pt.Graph.from_json(text).to_json() == text
    try:
        g.validate()
    except InvalidGraphError:
        event("accepted, then refused by validate()")
        return
    trace = pt.record_trace(g)
    theta = np.ones(g.n_params)
    try:
        m = trace.moments(theta, k=2)
    except InvalidParameterError:
        event("recorded, refused at θ = 1")
        return  # a rate that is not > 0 at θ = 1
    event("evaluated")
    alpha, S = g.to_matrices(theta)
    rates = np.abs(S[S != 0])
    if S.shape[0] and (rates.min() < 1e-3 or rates.max() > 1e3 or alpha.min() < 0):
        return  # leave badly scaled chains to the moment tests
    alpha, S = _reached(alpha, S)  # zero rates are allowed: keep the states α reaches
    if S.shape[0]:
        tau = np.linalg.solve(-S, np.ones(S.shape[0]))
        expected = alpha @ tau
        second = 2 * alpha @ np.linalg.solve(-S, tau)
        assert m == pytest.approx([expected, second], rel=1e-8, abs=1e-12)
    else:
        assert m == pytest.approx([0.0, 0.0])


# -- (a) graph JSON documents ----------------------------------------------------------------------


@FUZZ
@given(mutated_documents() | nudged_documents())
def test_mutated_graph_documents_give_a_graph_or_invalid_graph_error(text):
    try:
        g = pt.Graph.from_json(text)
    except InvalidGraphError:
        event("refused by from_json")
        return
    _check_accepted_graph(g)


@FUZZ
@given(damaged_text())
def test_damaged_graph_text_gives_a_graph_or_invalid_graph_error(text):
    try:
        g = pt.Graph.from_json(text)
    except InvalidGraphError:
        event("refused by from_json")
        return
    _check_accepted_graph(g)


@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None)
@given(
    st.sampled_from(["state_length", "n_params"]),
    st.integers(2**20, 2**64) | st.floats(1e6, 1e300),
)
def test_documents_claiming_huge_sizes_are_refused(field, value):
    doc = dict(DOCUMENTS[0], **{field: value})
    with pytest.raises(InvalidGraphError, match=field):
        pt.Graph.from_json(json.dumps(doc))


# -- (b) saved traces ------------------------------------------------------------------------------

DTYPES = ["i1", "i2", "i4", "i8", "u1", "u8", "f4", "f8", "?", "c16", "U3", "S3"]


@st.composite
def trace_mutations(draw):
    """The arrays of a small trace with 1-2 mutations: values, shapes, dtypes, names."""
    arrays = {k: np.array(v) for k, v in TRACE.arrays.items()}
    names = sorted(TRACE_ARRAYS)
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(names))
        a = arrays.get(name, np.zeros(0))
        kind = draw(st.sampled_from(["value", "value", "shape", "dtype", "drop", "swap", "extra"]))
        if kind == "value" and a.size and a.dtype.kind in "biuf":
            flat = a.astype(np.float64 if a.dtype.kind == "f" else np.int64).ravel().copy()
            i = draw(st.integers(0, flat.size - 1))
            if a.dtype.kind == "f":
                flat[i] = draw(st.floats() | st.sampled_from([0.0, -1.0, 1e308]))
            else:
                flat[i] = draw(
                    st.integers(-3, 40) | st.sampled_from([-(2**31), 2**31 - 1, 2**62, -(2**63)])
                )
            arrays[name] = flat.reshape(a.shape)
        elif kind == "shape":
            how = draw(st.sampled_from(["drop_last", "append", "2d", "0d", "empty", "transpose"]))
            if how == "drop_last" and a.ndim:
                arrays[name] = a[:-1]
            elif how == "append" and a.ndim:
                arrays[name] = np.concatenate([a, a[-1:] if a.shape[0] else a[:0]])
            elif how == "2d":
                arrays[name] = a.reshape(1, -1)
            elif how == "0d":
                arrays[name] = np.array(a.ravel()[0] if a.size else 0, dtype=a.dtype)
            elif how == "empty":
                arrays[name] = a.reshape(-1)[:0]
            else:
                arrays[name] = a.T if a.ndim == 2 else a.reshape(-1, 1)
        elif kind == "dtype" and a.dtype.kind in "biufc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arrays[name] = a.astype(draw(st.sampled_from(DTYPES)))
        elif kind == "drop":
            arrays.pop(name, None)
        elif kind == "swap":
            other = draw(st.sampled_from(names))
            if other in arrays and name in arrays:
                arrays[name], arrays[other] = arrays[other], arrays[name]
        else:
            arrays[draw(st.sampled_from(["extra", "states_", "__pickle__"]))] = np.arange(3)
    return arrays


def _npz(arrays, digest: bytes | None = None) -> io.BytesIO:
    """Save arrays as a trace file whose digest matches them (as Trace.load computes it)."""
    if digest is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                digest = bytes.fromhex(Trace(arrays, _check=False).digest())
        except Exception:
            digest = bytes(32)  # unconvertible arrays: loading fails before the digest
    buf = io.BytesIO()
    np.savez(
        buf,
        __format__=np.array(TRACE_FORMAT_VERSION, dtype=np.int64),
        __digest__=np.frombuffer(digest, dtype=np.uint8),
        **arrays,
    )
    buf.seek(0)
    return buf


def _evaluate(trace: Trace) -> None:
    theta = np.ones(trace.n_params)
    for call in (
        lambda: trace.moments(theta, k=2),
        lambda: trace.moments_and_jacobian(theta, k=2),
        lambda: trace.moments(np.stack([theta, 2 * theta]), rewards=np.ones(trace.n_vertices)),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
        except PhasetraceError:
            pass


@FUZZ
@given(trace_mutations())
def test_mutated_trace_files_load_and_evaluate_or_raise_trace_format_error(arrays):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace = Trace.load(_npz(arrays))
    except TraceFormatError:
        event("refused by Trace.load")
        return
    event("loaded, unchanged" if trace == TRACE else "loaded, changed")
    if trace == TRACE:
        assert trace.moments([1.0, 0.5], k=2).tolist() == TRACE.moments([1.0, 0.5], k=2).tolist()
    _evaluate(trace)


@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None)
@given(st.binary(min_size=1, max_size=16), st.integers(0, 10_000), st.sampled_from(["cut", "flip"]))
def test_damaged_trace_file_bytes_raise_trace_format_error(salt, at, how):
    raw = bytearray(_npz(dict(TRACE.arrays)).getvalue())
    at %= len(raw)
    if how == "cut":
        raw = raw[:at]
    else:
        raw[at : at + len(salt)] = bytes(
            b ^ s for b, s in zip(raw[at : at + len(salt)], salt, strict=False)
        )
    try:
        trace = Trace.load(io.BytesIO(bytes(raw)))
    except TraceFormatError:
        return
    assert trace == TRACE  # a change the zip format ignores (e.g. in a comment or timestamp)


def _zip_header_damage(offset: int, value: int) -> bytes:
    """A saved trace with one byte of ``unit_ptr.npy``'s central directory entry set."""
    raw = bytearray(_npz(dict(TRACE.arrays)).getvalue())
    name = b"unit_ptr.npy"
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + offset] = value
    return bytes(raw)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(6, 109), (8, 0x01), (8, 0x20)],
    ids=["zip-version-10.9", "encrypted-flag", "patched-data-flag"],
)
def test_a_trace_file_with_a_damaged_zip_header_raises_trace_format_error(offset, value):
    with pytest.raises(TraceFormatError):
        Trace.load(io.BytesIO(_zip_header_damage(offset, value)))


@pytest.mark.parametrize(
    "format_array",
    [np.array([2, 2]), np.zeros((), dtype=[("x", "i8")])],
    ids=["1-d", "structured"],
)
def test_a_trace_file_with_a_malformed_format_marker_raises_trace_format_error(format_array):
    buf = io.BytesIO()
    np.savez(buf, __format__=format_array, __digest__=np.zeros(32, np.uint8), **TRACE.arrays)
    buf.seek(0)
    with pytest.raises(TraceFormatError):
        Trace.load(buf)


# -- (c) cache entries -----------------------------------------------------------------------------

DECOMPOSITION = decompose(pt.models.two_island(3))
UNIT_INDEX = 1
UNIT = DECOMPOSITION.units[UNIT_INDEX]
UNIT_ARRAYS_RECORDED = record_unit(UNIT)
ENTRY = encode_entry(KEY, UNIT_ARRAYS_RECORDED)


def _same_arrays(a, b) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a
    )


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "delete"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_damaged_cache_entries_raise_trace_format_error_or_decode_unchanged(edits):
    data = bytearray(ENTRY)
    for how, at, salt in edits:
        at %= len(data) + 1
        if how == "flip" and at < len(data):
            data[at] ^= salt[0] or 1
        elif how == "cut":
            del data[at:]
        elif how == "insert":
            data[at:at] = salt
        else:
            del data[at : at + len(salt)]
    try:
        arrays = decode_entry(bytes(data), KEY)
    except TraceFormatError:
        event("refused")
        return
    event("unchanged")
    assert _same_arrays(arrays, UNIT_ARRAYS_RECORDED)


def _reencode(header: dict, payload: bytes) -> bytes:
    """An entry with this header and payload and every checksum valid."""
    header = dict(
        header, payload_nbytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest()
    )
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(48 + len(raw)) % 64)
    prefix = ENTRY[:8] + (1).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    return prefix + hashlib.sha256(raw).digest() + raw + payload


@st.composite
def forged_entries(draw):
    """Entries with a changed table or payload and *valid* checksums: only the structural
    checks stand between them and the kernel."""
    hlen = int.from_bytes(ENTRY[12:16], "little")
    header = json.loads(ENTRY[48 : 48 + hlen])
    payload = bytearray(ENTRY[48 + hlen :])
    table = header["arrays"]
    for _ in range(draw(st.integers(1, 3))):
        item = table[draw(st.integers(0, len(table) - 1))]
        what = draw(
            st.sampled_from(
                ["payload", "payload", "dtype", "shape", "offset", "nbytes", "name", "drop"]
            )
        )
        if what == "payload" and payload:
            at = draw(st.integers(0, len(payload) - 1))
            payload[at] = draw(st.integers(0, 255))
        elif what == "dtype":
            item["dtype"] = draw(
                st.sampled_from(
                    ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u8", "<f8", "<f4", "|O", 7]
                )
            )
        elif what == "shape":
            item["shape"] = draw(
                st.lists(st.integers(-2, 40) | st.just(2**62), max_size=3) | json_values
            )
        elif what in ("offset", "nbytes"):
            item[what] = draw(st.integers(-64, len(payload) + 64) | json_leaves)
        elif what == "name":
            item["name"] = draw(
                st.sampled_from([t["name"] for t in table]) | st.text(max_size=4) | json_leaves
            )
        elif len(table) > 1:
            table.remove(item)
    return _reencode(header, bytes(payload))


@FUZZ
@given(forged_entries())
def test_forged_cache_entries_are_refused_or_checked_before_use(data):
    """What the cache returns goes through the unit's structural check and stitching;
    anything that passes evaluates without a raw exception."""
    try:
        arrays = decode_entry(data, KEY)
    except TraceFormatError:
        event("refused by decode_entry")
        return
    try:
        check_unit_arrays(arrays, UNIT)
    except TraceFormatError:
        event("refused by check_unit_arrays")
        return
    event("passed the unit check")
    units = [record_unit(u) for u in DECOMPOSITION.units]
    units[UNIT_INDEX] = arrays
    try:
        trace = Trace(dict(stitch(DECOMPOSITION, units).arrays))
    except TraceFormatError:
        return
    _evaluate(trace)


def test_a_cache_entry_with_a_bad_x_v_is_refused_before_stitching():
    arrays = {k: np.array(v) for k, v in UNIT_ARRAYS_RECORDED.items()}
    arrays["x_v"][np.flatnonzero(arrays["x_kind"] == X_DIV)[0]] = 2**24
    arrays = decode_entry(encode_entry(KEY, arrays), KEY)
    units = [record_unit(u) for u in DECOMPOSITION.units]
    units[UNIT_INDEX] = arrays
    with pytest.raises(TraceFormatError):
        check_unit_arrays(arrays, UNIT)
        stitch(DECOMPOSITION, units)


# -- (d) the command line's parsers ----------------------------------------------------------------

csv_fields = st.sampled_from(
    ["1", "0.5", "-1", "1e400", "nan", "inf", "2.0", "x", "", " ", "#", '"', "1_0", "3", "9" * 25]
)
csv_text = st.lists(st.lists(csv_fields | st.text(max_size=4), max_size=4), max_size=6).map(
    lambda rows: "\n".join(",".join(r) for r in rows)
) | st.text(max_size=40)


@FUZZ
@given(csv_text, st.integers(0, 3))
def test_theta_parsers_return_vectors_or_raise_cli_error(text, n_params):
    for parse in (lambda: parse_theta(text, n_params), lambda: read_thetas(text, n_params)):
        try:
            out = parse()
        except CLIError:
            continue
        values = out if isinstance(out, np.ndarray) else out[1]
        assert values.shape[-1] == n_params and values.dtype == np.float64


@FUZZ
@given(csv_text)
def test_reward_parser_returns_a_vector_or_raises_cli_error(text):
    try:
        rewards = read_rewards(text, TRACE)
    except CLIError:
        return
    assert rewards.shape == (TRACE.n_vertices,)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@FUZZ
@given(st.lists(st.lists(finite, min_size=2, max_size=2), min_size=1, max_size=8), st.booleans())
def test_every_row_of_numbers_is_a_theta(rows, with_header):
    """No θ is ever dropped: a first row of numbers is data, whatever its notation."""
    text = "\n".join(",".join(repr(x) for x in row) for row in rows)
    if with_header:
        text = "coalescence,migration\n" + text
    notes: list[str] = []
    names, thetas = read_thetas(text, 2, notes=notes)
    assert thetas.tolist() == rows
    assert (names == ["coalescence", "migration"]) == with_header
    assert bool(notes) == with_header  # a header taken without being declared is reported


@pytest.mark.parametrize(
    "text",
    ["1,0.5x\n2,0.25\n", "1,0.5\n2,0.25x\n", "c,0.5\n2,0.25\n", "1x,m\n2,0.25\n"],
)
def test_a_bad_number_is_an_error_not_a_header(text):
    with pytest.raises(CLIError, match="is not a number"):
        read_thetas(text, 2)


def test_a_declared_header_may_look_like_numbers():
    names, thetas = read_thetas("1,2\n3,4\n", 2, header=True)
    assert names == ["1", "2"] and thetas.tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("text", ["k,reward\n3,1x\n2,2\n", "3,1x\n2,2\n", "1x\n2\n3\n0\n"])
def test_a_bad_reward_is_an_error_not_a_header(text):
    trace = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    with pytest.raises(CLIError, match="not a number"):
        read_rewards(text, trace)


def test_cli_says_when_it_takes_a_first_row_as_a_header(cli_dir, capsys):
    (cli_dir / "named.csv").write_text("c,m\n1,0.5\n")
    assert main(["moments", "t.npz", "--thetas", "named.csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "c,m,moment_1" and len(out.splitlines()) == 2
    assert "line 1 read as a header" in err
    (cli_dir / "typo.csv").write_text("1,0.5x\n2,0.5\n")
    assert main(["moments", "t.npz", "--thetas", "typo.csv"]) == 1
    assert "'0.5x' is not a number" in capsys.readouterr().err


def test_reading_many_thetas_keeps_only_the_numbers(tmp_path):
    """3·10⁵ rows from a file: the peak is a small multiple of the 4.8 MB of numbers (the
    rows are never all held as text)."""
    rows = 300_000
    path = tmp_path / "many.csv"
    with open(path, "w") as fh:
        fh.write("c,m\n")
        fh.writelines(f"{1 + i % 7}.25,0.{i % 10}5\n" for i in range(rows))

    def read():
        with open(path, encoding="utf-8", newline="") as fh:
            return read_thetas(fh, 2)[1]

    thetas = None

    def keep():
        nonlocal thetas
        thetas = read()

    assert _peak_bytes_of(keep) < 3 * rows * 2 * 8
    assert thetas.shape == (rows, 2) and thetas[8].tolist() == [2.25, 0.85]


model_values = st.sampled_from(
    [
        "2",
        "3",
        "4",
        "-1",
        "0",
        "1e400",
        "nan",
        "true",
        "blocks",
        "lineages",
        "x",
        "",
        "2.5",
        "99999999999999999999",
    ]
) | st.integers(-3, 6).map(str)
model_specs = st.builds(
    lambda name, pairs, sep: name + sep + ",".join(f"{k}={v}" if k else v for k, v in pairs),
    st.sampled_from([*pt.models.__all__, "kingmann", "", "graph.json", "m.py", "x.py:f", "dir/"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "n",
                    "state_space",
                    "n_vertices",
                    "n_sccs",
                    "seed",
                    "samples",
                    "n_demes",
                    "",
                    "=",
                    "n=n",
                ]
            ),
            model_values,
        ),
        max_size=3,
    ),
    st.sampled_from([":", "", "::", ":,"]),
) | st.text(max_size=12)


@FUZZ
@given(model_specs)
def test_model_specs_give_a_graph_or_a_cli_error(spec):
    try:
        graph = load_model(spec)
    except (CLIError, PhasetraceError):
        return
    assert isinstance(graph, pt.Graph) or spec.startswith("structured_parameters")


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_cli")
    TRACE.save(path / "t.npz")
    (path / "model.json").write_text(GRAPHS[0].to_json())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHASETRACE_CACHE_DIR", str(path / "cache"))
        mp.chdir(path)
        yield path


def _run(argv, capsys) -> int:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: a command line that does not parse
        assert exc.code == 2, argv
        capsys.readouterr()
        return 2
    err = capsys.readouterr().err.strip().splitlines()
    assert isinstance(status, int)
    if status == 1:
        assert len(err) == 1 and err[0].startswith("phasetrace: error: "), (argv, err)
        assert "rerun with --debug" not in err[0], (argv, err)  # a raw exception
    else:
        assert status == 0, (argv, status, err)
    return status


@FUZZ
@given(model_specs)
def test_cli_trace_with_any_model_spec_exits_cleanly(cli_dir, capsys, spec):
    assume(not spec.startswith("-"))
    _run(["trace", spec, "--strategy", "sequential", "--no-cache"], capsys)


@FUZZ
@given(
    csv_text,
    csv_text | st.none(),
    st.sampled_from(["--theta", "--thetas"]),
    st.integers(-1, 3),
)
def test_cli_moments_with_any_theta_and_rewards_exits_cleanly(
    cli_dir, capsys, thetas, rewards, how, k
):
    theta = thetas if how == "--theta" else "thetas.csv"
    assume(not theta.startswith("-"))
    (cli_dir / "thetas.csv").write_text(thetas, encoding="utf-8", errors="surrogateescape")
    argv = ["moments", "t.npz", how, theta, "-k", str(k)]
    if rewards is not None:
        (cli_dir / "rewards.csv").write_text(rewards, encoding="utf-8", errors="surrogateescape")
        argv += ["--rewards", "rewards.csv"]
    _run(argv, capsys)


def test_cli_fuzz_helpers_see_a_clean_run(cli_dir, capsys):
    """The harness itself: a valid call passes _run with status 0."""
    assert _run(["moments", "t.npz", "--theta", "1,0.5", "-k", "2"], capsys) == 0
    assert _run(["trace", "model.json", "--strategy", "sequential", "--no-cache"], capsys) == 0
    assert os.path.exists(cli_dir / "t.npz")


# -- (b') sizes a trace file claims (issue 19) -------------------------------------------------


def _npz_with_member(name: str, header_shape: tuple, body: bytes | int, compress: bool) -> bytes:
    """A trace file whose member ``name`` has a .npy header claiming ``header_shape``
    (float64) and ``body`` bytes (or that many zero bytes, written in pieces)."""
    import zipfile

    buf = io.BytesIO(_npz(dict(TRACE.arrays)).getvalue())
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", method) as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info.filename, src.read(info), zipfile.ZIP_STORED)
                continue
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f8", "fortran_order": False, "shape": header_shape}
            )
            with dst.open(name, "w", force_zip64=True) as member:
                member.write(header.getvalue())
                if isinstance(body, bytes):
                    member.write(body)
                else:
                    chunk = bytes(1 << 20)
                    for _ in range(body // len(chunk)):
                        member.write(chunk)
    return out.getvalue()


def _peak_bytes_of(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "how",
    ["zip bomb", "header claims a huge shape"],
)
def test_a_small_trace_file_cannot_make_load_allocate_much(how):
    """A deflated member of 400 MB of zeros (a file of under 1 MB), or a stored member
    whose header claims 10⁸ float64: refused before anything that size is allocated."""
    if how == "zip bomb":
        raw = _npz_with_member("consts.npy", (50_000_000,), 400_000_000, compress=True)
    else:
        raw = _npz_with_member("consts.npy", (100_000_000,), bytes(80), compress=False)
    assert len(raw) < 2_000_000

    def load():
        with pytest.raises(TraceFormatError, match=r"consts\.npy"):
            Trace.load(io.BytesIO(raw))

    assert _peak_bytes_of(load) < 20 * len(raw) + 50_000_000


# -- θ of any numpy kind (issue 19) ---------------------------------------------------------------

THETA_KINDS = st.sampled_from(
    ["float64", "float32", "float16", "int8", "int64", "uint16", "bool", "complex64",
     "complex128", "datetime64[s]", "timedelta64[ms]", "U3", "S3", "object", "masked"]
)  # fmt: skip


@FUZZ
@given(THETA_KINDS, st.lists(st.integers(1, 5), min_size=2, max_size=2))
def test_theta_of_any_kind_is_evaluated_as_its_value_or_refused(kind, values):
    """A θ is used only when converting it to float64 keeps its value exactly; anything
    a cast would change (complex, units, a mask, text) is an InvalidParameterError."""
    if kind == "masked":
        theta = np.ma.array(values, mask=[False, True])
    elif kind == "object":
        theta = np.array(values, dtype=object)
    else:
        theta = np.array(values).astype(kind)
    try:
        got = TRACE.moments(theta, k=2)
    except InvalidParameterError:
        assert kind in ("complex64", "complex128", "datetime64[s]", "timedelta64[ms]",
                        "U3", "S3", "masked")  # fmt: skip
        return
    exact = np.asarray(theta).astype(np.float64)  # every accepted kind holds these exactly
    assert np.array_equal(got, TRACE.moments(exact, k=2))
