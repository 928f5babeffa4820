"""The ``phasetrace`` command, run through its installed entry point in a subprocess.

Every test points ``PHASETRACE_CACHE_DIR`` at its own temporary directory, so the user's
cache is never read or written. Numbers are checked against values computed
independently of the command: closed forms (Kingman), the reference values of the
two-island model, and in-process ``record_trace``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phasetrace as pt

pytestmark = pytest.mark.timeout(120)

EXE = shutil.which("phasetrace", path=os.path.dirname(sys.executable))
ROOT = Path(__file__).resolve().parents[1]
# two_island(5) at θ = (c, m) = (1, 0.5), computed independently (dense matrix formula).
TWO_ISLAND_5 = (3.40478787879, 19.2439855354)


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PHASETRACE_")}
    e["PHASETRACE_CACHE_DIR"] = str(tmp_path / "cache")
    return e


@pytest.fixture
def cli(env, tmp_path):
    """Run ``phasetrace ARGS...`` in ``tmp_path``; return the CompletedProcess."""
    assert EXE is not None, "the phasetrace entry point is not installed next to python"

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [EXE, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    return run


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def error_line(proc: subprocess.CompletedProcess, status: int = 1) -> str:
    """Check the error contract: the status, one stderr line, no traceback; return it."""
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("phasetrace: error: ")
    return lines[0]


def fields(stdout: str) -> dict[str, str]:
    """``key  value`` lines of a summary as a dict."""
    out = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("  ")
        out[key.strip()] = value.strip()
    return out


@pytest.fixture
def two_island_5(cli, tmp_path) -> Path:
    path = tmp_path / "ti5.npz"
    ok(cli("trace", "two_island:n=5", "-o", str(path)))
    return path


# -- help and version ----------------------------------------------------------------------------


def test_entry_point_is_installed():
    assert EXE is not None and os.access(EXE, os.X_OK)


@pytest.mark.parametrize(
    "command", ["", "trace", "moments", "states", "strategies", "cache", "bench"]
)
def test_help_on_every_command(cli, command):
    out = ok(cli(*command.split(), "--help"))
    assert out.startswith("usage: phasetrace")


def test_python_m_phasetrace(env):
    proc = subprocess.run(
        [sys.executable, "-m", "phasetrace", "--version"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"phasetrace {pt.__version__}"


# -- trace --------------------------------------------------------------------------------------


def test_trace_summary_and_saved_file(cli, tmp_path):
    out = ok(cli("trace", "two_island:n=5", "-o", "ti5.npz"))
    f = fields(out)
    assert f["graph"].startswith("21 vertices, 49 edges, 2 parameter(s); 5 transient SCC(s)")
    assert f["units"] == "1 (1 distinct): 1 recorded, 0 from memory, 0 from disk cache"
    assert re.fullmatch(r"\d+ \(LOAD \d+.*", f["ops"])
    assert set(re.findall(r"(\w+) [\d.]+ s", f["time"])) >= {"decompose", "record", "total"}
    assert f["saved"] == "ti5.npz"
    saved = pt.Trace.load(tmp_path / "ti5.npz")
    assert saved.digest() == pt.record_trace(pt.models.two_island(5)).digest()
    assert saved.digest().startswith(f["trace"].split("digest ")[1])


def test_trace_adds_npz_suffix(cli, tmp_path):
    f = fields(ok(cli("trace", "kingman:n=4", "-o", "k4")))
    assert f["saved"] == "k4.npz" and (tmp_path / "k4.npz").is_file()


def test_trace_reuses_cache_and_no_cache_skips_it(cli, env):
    ok(cli("trace", "two_island:n=5"))
    assert fields(ok(cli("trace", "two_island:n=5")))["units"].endswith("came from the cache")
    units = fields(ok(cli("trace", "two_island:n=5", "--no-cache")))["units"]
    assert units.startswith("1 (1 distinct): 1 recorded")
    cache_dir = Path(env["PHASETRACE_CACHE_DIR"])
    assert any(p.parent != cache_dir for p in cache_dir.rglob("*") if p.is_file())  # entries


def test_trace_hierarchical_with_strategy_and_workers(cli, tmp_path):
    spec = "random_graph:n_vertices=200,n_sccs=20,seed=1"
    f = fields(ok(cli("trace", spec, "--strategy", "sequential", "-j", "1", "-o", "r.npz")))
    assert f["strategy"] == "sequential, in this process"
    graph = pt.models.random_graph(n_vertices=200, n_sccs=20, seed=1)
    assert int(f["units"].split()[0]) > 1  # 200+ vertices: split into SCC units
    assert pt.Trace.load(tmp_path / "r.npz").digest() == pt.record_trace(graph).digest()


def test_trace_with_loky_pool(cli):
    f = fields(ok(cli("trace", "two_island:n=12", "--strategy", "loky", "-j", "2", "--no-cache")))
    assert f["strategy"] == "loky, n_workers 2"


def test_trace_progress_flag(cli):
    proc = cli("trace", "two_island:n=5", "--no-cache", "--progress")
    ok(proc)
    assert "unit" in proc.stderr  # the tqdm bar writes to stderr


def test_trace_json_graph_file(cli, tmp_path):
    graph = pt.models.kingman(6)
    (tmp_path / "k6.json").write_text(graph.to_json())
    ok(cli("trace", "k6.json", "-o", "k6.npz"))
    assert pt.Trace.load(tmp_path / "k6.npz").digest() == pt.record_trace(graph).digest()


MODEL_PY = """
import phasetrace as pt

def build():
    return pt.models.kingman(5, state_space="lineages")

def not_a_graph():
    return 42

def broken():
    raise RuntimeError("no graph today")
"""


def test_trace_python_function(cli, tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    ok(cli("trace", "mymodel.py:build", "-o", "k5.npz"))
    trace = pt.Trace.load(tmp_path / "k5.npz")
    assert trace.expectation([1.0]) == pytest.approx(2 * (1 - 1 / 5), rel=1e-12)


# -- moments ------------------------------------------------------------------------------------


def test_moments_single_theta(cli, two_island_5):
    f = fields(ok(cli("moments", str(two_island_5), "--theta", "1,0.5", "-k", "3")))
    assert f["theta"] == "1, 0.5"
    assert float(f["E[T]"]) == pytest.approx(TWO_ISLAND_5[0], rel=1e-10)
    assert float(f["E[T^2]"]) == pytest.approx(TWO_ISLAND_5[1], rel=1e-10)
    assert float(f["Var[T]"]) == pytest.approx(TWO_ISLAND_5[1] - TWO_ISLAND_5[0] ** 2, rel=1e-9)
    assert "E[T^3]" in f


@pytest.mark.parametrize("n", [2, 10, 50])
def test_moments_kingman_tmrca(cli, tmp_path, n):
    ok(cli("trace", f"kingman:n={n},state_space=lineages", "-o", "k.npz"))
    f = fields(ok(cli("moments", "k.npz", "--theta", "1")))
    assert float(f["E[T]"]) == pytest.approx(2 * (1 - 1 / n), rel=1e-12)


def test_moments_batch_csv(cli, tmp_path, two_island_5):
    (tmp_path / "th.csv").write_text("# c, m\nc,m\n1,0.5\n\n2,1\n0.5,0.25\n")
    out = ok(cli("moments", str(two_island_5), "--thetas", "th.csv", "-k", "2"))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["c", "m", "moment_1", "moment_2"]
    values = np.array(rows[1:], dtype=float)
    assert values.shape == (3, 4)
    assert values[0, 2:] == pytest.approx(TWO_ISLAND_5, rel=1e-10)
    # Time scales as 1/θ when every rate doubles: E[T] halves, E[T²] quarters.
    assert values[1, 2:] == pytest.approx([TWO_ISLAND_5[0] / 2, TWO_ISLAND_5[1] / 4], rel=1e-10)
    assert values[2, 2:] == pytest.approx([TWO_ISLAND_5[0] * 2, TWO_ISLAND_5[1] * 4], rel=1e-10)


def test_moments_batch_from_stdin_without_header(cli, two_island_5):
    out = ok(cli("moments", str(two_island_5), "--thetas", "-", stdin="1,0.5\n"))
    header, row = list(csv.reader(io.StringIO(out)))
    assert header == ["theta_1", "theta_2", "moment_1"]
    assert float(row[2]) == pytest.approx(TWO_ISLAND_5[0], rel=1e-10)


def _harmonic_length(n: int) -> float:
    """E[total branch length] of the Kingman coalescent at rate 1: 2 Σ_{i<n} 1/i."""
    return 2 * sum(1 / i for i in range(1, n))


def test_moments_rewards_one_per_vertex(cli, tmp_path):
    ok(cli("trace", "kingman:n=6,state_space=lineages", "-o", "k6.npz"))
    states = list(csv.DictReader(io.StringIO(ok(cli("states", "k6.npz")))))
    assert [s["kind"] for s in states][:1] == ["start"]
    # Reward k lineages with k: Y is the total branch length.
    lines = [s["state_1"] if s["kind"] == "transient" else "0" for s in states]
    (tmp_path / "r.txt").write_text("\n".join(lines) + "\n")
    f = fields(ok(cli("moments", "k6.npz", "--theta", "1", "--rewards", "r.txt")))
    assert float(f["E[Y]"]) == pytest.approx(_harmonic_length(6), rel=1e-12)


def test_moments_rewards_by_state(cli, tmp_path):
    ok(cli("trace", "kingman:n=6,state_space=lineages", "-o", "k6.npz"))
    rows = "".join(f"{k},{k}\n" for k in range(2, 7))
    (tmp_path / "r.csv").write_text("lineages,reward\n" + rows)
    f = fields(ok(cli("moments", "k6.npz", "--theta", "1", "-k", "2", "--rewards", "r.csv")))
    assert float(f["E[Y]"]) == pytest.approx(_harmonic_length(6), rel=1e-12)
    trace = pt.Trace.load(tmp_path / "k6.npz")
    expected = trace.moments([1.0], k=2, rewards=lambda s: s[0] if s[0] >= 2 else 0)
    assert float(f["E[Y^2]"]) == pytest.approx(expected[1], rel=1e-12)


def test_states_lists_trace_order(cli, two_island_5):
    rows = list(csv.reader(io.StringIO(ok(cli("states", str(two_island_5))))))
    trace = pt.Trace.load(two_island_5)
    assert rows[0] == ["index", "state_1", "state_2", "kind"]
    assert [[int(x) for x in r[1:3]] for r in rows[1:]] == trace.states.tolist()


# -- strategies and cache ---------------------------------------------------------------------


def test_strategies_lists_every_registered_strategy(cli):
    out = ok(cli("strategies"))
    for info in pt.available_strategies():
        row = next(line for line in out.splitlines() if line[1:].startswith(info.name + " "))
        assert (row.split()[1] == "available") == info.available
    assert re.search(r"^\*auto\s+available", out, re.M)  # the default, marked
    assert re.search(r"^ pmap\s+rejected", out, re.M)
    assert re.search(r"^  pmap: rejected: .*loky", out, re.M)  # why not


def test_strategies_marks_configured_default(cli, env):
    env["PHASETRACE_STRATEGY"] = "sequential"
    assert re.search(r"^\*sequential\s+available\s+this process\s+1", ok(cli("strategies")), re.M)


def test_cache_info_prune_clear(cli, env):
    info = fields(ok(cli("cache", "info")))
    assert info["directory"].startswith(env["PHASETRACE_CACHE_DIR"])
    assert info["entries"] == "0"
    ok(cli("trace", "random_graph:n_vertices=200,n_sccs=20,seed=1"))
    info = fields(ok(cli("cache", "info")))
    assert int(info["entries"]) >= 1  # the whole trace (its units are too small to keep)
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB) \(pruned automatically above 2\.0 GiB\)", info["size"])
    out = ok(cli("cache", "prune", "--max-size", "1G"))
    assert out.startswith("removed 0 entries (0 B)")
    out = ok(cli("cache", "prune", "--max-size", "1K"))
    assert re.match(r"removed \d+ entr(y|ies)", out) and "left" in out
    ok(cli("cache", "clear"))
    assert fields(ok(cli("cache", "info")))["entries"] == "0"


def test_cache_dir_option(cli, tmp_path):
    ok(cli("trace", "two_island:n=5"))
    other = tmp_path / "elsewhere"
    info = fields(ok(cli("cache", "info", "--cache-dir", str(other))))
    assert info["directory"].startswith(str(other)) and info["entries"] == "0"


# -- errors -------------------------------------------------------------------------------------

ERRORS = [
    (["trace", "two_islan:n=5"], "unknown model 'two_islan'; built-in models: kingman"),
    (["trace", "two_island"], "model 'two_island' needs n=..., e.g. two_island:n=20"),
    (["trace", "two_island:n"], "is not key=value; write e.g. two_island:n=20"),
    (["trace", "two_island:n=abc"], "n must be an int, got 'abc'"),
    (["trace", "two_island:n=1"], "two_island needs n >= 2 lineages, got 1"),
    (["trace", "kingman:n=5,foo=2"], "has no argument 'foo'; its arguments are: n, state_space"),
    (["trace", "missing.json"], "model file 'missing.json' does not exist"),
    (["trace", "some/dir/model"], "model file 'some/dir/model' does not exist"),
    (["trace", "bad.json"], "bad.json: malformed graph document"),
    (["trace", "mymodel.py"], "name the function that builds the graph: mymodel.py:function_name"),
    (["trace", "nothere.py:build"], "model file 'nothere.py' does not exist"),
    (["trace", "mymodel.py:nope"], "mymodel.py has no function 'nope'"),
    (["trace", "mymodel.py:not_a_graph"], "returned int, not a phasetrace.Graph"),
    (["trace", "mymodel.py:broken"], "failed: RuntimeError: no graph today"),
    (["trace", "kingman:n=3", "--strategy", "pmap"], "strategy 'pmap' is rejected"),
    (["trace", "kingman:n=3", "--strategy", "fast"], "unknown strategy 'fast'; known strategies"),
    (["trace", "kingman:n=3", "-j", "0"], "n_workers=0 has no meaning"),
    (["trace", "kingman:n=3", "-o", "no/such/dir/t.npz"], "cannot write 'no/such/dir/t.npz'"),
    (["moments", "nothere.npz", "--theta", "1"], "trace file 'nothere.npz' does not exist"),
    (["moments", "bad.json", "--theta", "1"], "not a readable phasetrace trace"),
    (["moments", "ti5.npz", "--theta", "1,x"], "--theta '1,x': 'x' is not a number"),
    (["moments", "ti5.npz", "--theta", "1"], "--theta has 1 value(s) but the trace has 2"),
    (["moments", "ti5.npz", "--theta", "1,-1"], "is not > 0"),
    (["moments", "ti5.npz", "--theta", "1,1", "-k", "0"], "-k must be a positive integer"),
    (["moments", "ti5.npz", "--thetas", "nothere.csv"], "thetas file 'nothere.csv' does not exist"),
    (["moments", "ti5.npz", "--thetas", "badtheta.csv"], "badtheta.csv line 3: 'abc' is not"),
    (["moments", "ti5.npz", "--thetas", "short.csv"], "short.csv line 2: 1 value(s), expected 2"),
    (["moments", "ti5.npz", "--theta", "1,1", "--rewards", "r3.txt"], "3 value(s), the trace"),
    (["moments", "ti5.npz", "--theta", "1,1", "--rewards", "rs.csv"], "no vertex has state [9, 9]"),
    (["cache", "prune", "--max-size", "1X"], "size '1X' not understood"),
    (["cache", "info", "--max-size", "1G"], "--max-size applies to 'cache prune'"),
]


@pytest.fixture
def error_inputs(tmp_path, two_island_5):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    (tmp_path / "badtheta.csv").write_text("1,0.5\n2,1\nabc,1\n")
    (tmp_path / "short.csv").write_text("1,0.5\n2\n")
    (tmp_path / "r3.txt").write_text("1\n2\n3\n")
    (tmp_path / "rs.csv").write_text("9,9,1.0\n")
    return tmp_path


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_are_one_clear_line(cli, error_inputs, args, message):
    line = error_line(cli(*args))
    assert message in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["moments", "t.npz"], "one of the arguments --theta --thetas is required"),
        (["cache", "wipe"], "invalid choice: 'wipe'"),
        (["trace", "kingman:n=3", "-j", "two"], "invalid int value: 'two'"),
    ],
)
def test_usage_errors_exit_2(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(cli, where):
    args = ["trace", "two_islan:n=5"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    proc = cli(*args)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "CLIError: unknown model 'two_islan'" in proc.stderr


def test_closed_stdout_is_not_an_error(env, two_island_5):
    proc = subprocess.Popen(
        [EXE, "states", str(two_island_5)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # the reader went away, like `| head`
    assert proc.wait(timeout=60) in (0, 141)
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()


# -- the README ----------------------------------------------------------------------------------


def test_readme_example_runs(tmp_path, monkeypatch):
    from phasetrace.settings import reset_configuration

    text = (ROOT / "README.md").read_text()
    assert text.index("python3 tasks.py demo") < text.index("```python")  # set-up comes first
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.setenv("PHASETRACE_CACHE_DIR", str(tmp_path))
    namespace: dict = {}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        reset_configuration()  # the example calls pt.configure(...)
        pt.shutdown_executors()
    shown = [float(x) for x in re.search(r"array\(\[(.*?)\]\)", code).group(1).split(",")]
    assert namespace["trace"].moments([1.0, 0.5], k=2) == pytest.approx(shown, rel=1e-8)
    assert namespace["kingman"].expectation([1.0]) == pytest.approx(2 * (1 - 1 / 30), rel=1e-12)
