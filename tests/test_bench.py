"""The strategy comparison in ``--quick`` mode, so that it cannot rot.

It runs through the installed ``phasetrace bench`` command in its own session; afterwards
no process of that session may be left (every pool closed), and the JSON, Markdown and
PNG files must be there with the documented structure. ``benchmarks/compare.py`` is the
same engine with another default output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import phasetrace as pt
from phasetrace import bench

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
EXE = shutil.which("phasetrace", path=os.path.dirname(sys.executable))
RUN_KEYS = {
    "workload",
    "strategy",
    "n_workers",
    "cold_s",
    "warm_s",
    "warm_s_rounds",
    "resolved",
    "stages",
    "digest",
    "speedup",
    "cold_over_warm",
    "same_traces",
}


def _session_processes(sid: int) -> list[int]:
    psutil = pytest.importorskip("psutil")
    left = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                left.append(proc.pid)
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return left


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run ``phasetrace bench --quick --out DIR`` once; return (process, DIR)."""
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASETRACE_")}
    env["PHASETRACE_CACHE_DIR"] = str(out / "cache")  # never the user's cache
    proc = subprocess.Popen(
        [EXE, "bench", "--quick", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its pid is the session id of every process it starts
    )
    try:
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=120)
    finally:
        proc.kill()  # only if it is still running after a failure; a no-op otherwise
    return proc, out


def test_quick_run_succeeds_and_prints_the_table(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr_text
    assert proc.stdout_text.startswith("# phasetrace strategy comparison")
    assert "| sequential | 1 | 1.00×" in proc.stdout_text
    assert "## Overhead over raw loky" in proc.stdout_text


def test_quick_run_leaves_no_process_behind(quick_run):
    proc, _ = quick_run
    # polls until none is left; a process that never ends fails by pytest-timeout
    while _session_processes(proc.pid):
        time.sleep(0.2)


def test_quick_run_writes_files(quick_run):
    _, out = quick_run
    for name in ("compare-quick.json", "compare-quick.md"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("cache/**/*")), "the benchmark used the default cache directory"


def test_quick_run_writes_plots(quick_run):
    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    _, out = quick_run
    for name in ("compare-quick_speedup.png", "compare-quick_stages.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare-quick.md").read_text()
    assert "![compare-quick_speedup](compare-quick_speedup.png)" in md


def test_quick_run_json_structure(quick_run):
    _, out = quick_run
    r = json.loads((out / "compare-quick.json").read_text())
    assert r["schema"] == bench.SCHEMA and r["quick"] is True
    assert {"cpu_count", "available_cpus", "python", "packages", "system"} <= set(r["machine"])
    assert "numpy" in r["machine"]["packages"]
    assert set(r["workloads"]) == {"small", "large"}
    available = {s.name for s in pt.available_strategies() if s.available}
    skipped = {s.name for s in pt.available_strategies() if not s.available}
    assert set(r["skipped"]) == skipped
    configs = {(x["strategy"], x["n_workers"]) for x in r["runs"]}
    expected = {("sequential", 1)} | {(s, n) for s in available - {"sequential"} for n in (1, 2)}
    assert configs == expected
    for run in r["runs"]:
        assert set(run) == RUN_KEYS
        assert run["same_traces"], run
        assert run["speedup"] > 0 and run["warm_s"] > 0
        assert set(run["stages"]) == {*bench.STAGES, "total"}
    assert len(r["runs"]) == 2 * len(expected)
    assert {(o["workload"], o["n_workers"]) for o in r["overhead"]} == {
        (w, n) for w in ("small", "large") for n in (1, 2)
    }
    assert r["cache"]["cold_over_memory"] > 0 and r["cache"]["units"] == 25
    ev = r["evaluation"]
    assert ev["numpy"]["batch_s"] > 0
    assert isinstance(ev["jax"]["available"], bool)
    if not ev["jax"]["available"]:
        assert ev["jax"]["reason"]


def test_compare_script_uses_the_same_engine():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout
    assert str(ROOT / "benchmarks" / "results") in " ".join(proc.stdout.split())


def test_unknown_strategy_is_an_error():
    with pytest.raises(pt.StrategyError, match="unknown strategy 'nope'"):
        bench.run_comparison(bench.BenchSizes.quick(), strategies=["nope"])
