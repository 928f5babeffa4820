"""The demography benchmark in ``--quick`` mode, so that it cannot rot.

``benchmarks/demography.py --quick`` runs every measure at tiny sizes without the peers
(PhaseGen and moments are optional and never a test dependency); the files must be there
with the documented layout, the peers must be reported as skipped with a reason, and the
accuracy figures it reports must hold against the dense reference values. No timing is
asserted: the times are for the report only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "demography.py"
ROW_KEYS = {"measure", "phasetrace", "value", "reference", "target", "met"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-demography")
    # no PHASETRACE_* settings, and no PHASETRACE_BENCH_* peers: the peers are skipped
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASETRACE_")}
    env["PHASETRACE_CACHE_DIR"] = str(out / "cache")  # the children must not use it either
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    return proc, out


def test_quick_run_succeeds_and_prints_the_table(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Demography benchmark" in proc.stdout
    assert "| measure | phasetrace | reference (peer) | target | met? |" in proc.stdout


def test_quick_run_writes_files_and_no_cache_outside_its_own(quick_run):
    _, out = quick_run
    for name in ("demography-quick.json", "demography-quick.md"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("cache/**/*")), "a child used the caller's cache directory"


def test_json_layout(quick_run):
    _, out = quick_run
    r = json.loads((out / "demography-quick.json").read_text())
    assert r["schema"] == "phasetrace-bench-demography/1" and r["quick"] is True
    assert {"cpu_count", "available_cpus", "python", "packages", "system"} <= set(r["machine"])
    assert len(r["load_start"]) == 3 and len(r["load_end"]) == 3
    for peer in ("phasegen", "moments"):
        assert r[peer]["available"] is False and r[peer]["reason"]
    small, large = r["phasetrace"]["small"], r["phasetrace"]["large"]
    assert {"bottleneck", "island", "im44", "large_n", "growth"} <= set(small)
    for key in ("bottleneck", "island", "im44", "large_n"):
        t = small[key]["one_theta"]
        assert t["n"] == r["config"]["repeat"] and 0 < t["min_s"] <= t["median_s"]
    assert large["k"] == r["config"]["im_large"] and large["states"] > 0
    assert large["peak_rss_mb"]["median"] >= large["rss_before_mb"] > 0
    md = (out / "demography-quick.md").read_text()
    assert len(r["rows"]) >= 15
    for row in r["rows"]:
        assert set(row) == ROW_KEYS
        assert row["met"] in (True, False, None)
        assert f"| {row['measure']} | {row['phasetrace']} |" in md
    assert "PhaseGen was not run" in md


def test_reported_accuracy_holds(quick_run):
    """The exactness and growth figures the benchmark reports are within the stated
    tolerance (they compare against dense reference values and a 4× finer run)."""
    _, out = quick_run
    small = json.loads((out / "demography-quick.json").read_text())["phasetrace"]["small"]
    assert small["im44"]["exact_max_rel_err"] < 1e-10
    assert max(small["bottleneck"]["exact_rel_err"].values()) < 1e-10
    assert small["bottleneck"]["lineages_vs_blocks_rel"] < 1e-10
    for g in small["growth"].values():
        assert g["forced_M_used"] == g["forced_M"] == 4 * g["M"]
        assert g["rel_diff_vs_4M"] < g["tol"]
        assert g["smallest_M_within_tol"] <= g["M"]
    assert small["growth"]["one_deme"]["pair_E[T]_rel_err_vs_quadrature"] < 1e-10
    assert small["large_n"]["sfs_positive"]
