"""Every code sample of the README, strategies.md and docs/ runs (docs/user-guide.md has
its own test, tests/test_user_guide.py).

The ``python`` blocks of a file run in order as one script, in a fresh interpreter and an
empty directory, as a reader would paste them into a session (``__main__`` without a
script file, so spawn-started workers do not run the samples again). A PrecisionWarning or
a RuntimeWarning fails the run. A block fenced ```` ```python no-run ```` needs what a
test machine does not have (a SLURM cluster, TLS certificates); it must still compile, and
:data:`NO_RUN` lists each one. The ``console`` blocks' ``phasetrace`` commands run too, and
the README's stated moments are compared with what the command prints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    ROOT / "strategies.md",
    *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "user-guide.md"),
]
BLOCK = re.compile(r"^```python( no-run)?\n(.*?)^```", re.DOTALL | re.MULTILINE)
CONSOLE = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: The blocks that do not run here, and why.
NO_RUN = {
    ("strategies.md", "from dask_jobqueue import SLURMCluster"): "needs a SLURM cluster",
    ("strategies.md", "from distributed import Security"): "needs TLS certificates",
}
#: What a file's samples import beyond phasetrace's core.
NEEDS = {
    "strategies.md": ["distributed"],
    "distribution.md": ["jax"],
    "models.md": ["jax"],
    "demography.md": ["jax", "demes", "msprime", "scipy"],
    "inference.md": ["jax", "demes", "msprime", "scipy", "tskit"],
}
PRELUDE = """\
import warnings
from phasetrace.errors import PrecisionWarning
warnings.simplefilter("error", PrecisionWarning)
warnings.simplefilter("error", RuntimeWarning)
"""

pytestmark = pytest.mark.timeout(300)


def _blocks(doc: Path) -> list[tuple[bool, str]]:
    """``(runs, code)`` for each python block of ``doc``."""
    return [(not flag, code) for flag, code in BLOCK.findall(doc.read_text(encoding="utf-8"))]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASETRACE_")}
    env["PHASETRACE_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def test_blocks_that_do_not_run_are_the_listed_ones_and_compile():
    found = {}
    for doc in DOCS:
        for runs, code in _blocks(doc):
            if not runs:
                first = code.strip().splitlines()[0]
                found[(doc.name, first)] = True
                compile(code, f"{doc.name} block", "exec")
    assert set(found) == set(NO_RUN)


@pytest.mark.parametrize("doc", [d for d in DOCS if any(r for r, _ in _blocks(d))], ids=str)
def test_python_samples_run(doc, tmp_path):
    for module in NEEDS.get(doc.name, []):
        if find_spec(module) is None:
            pytest.skip(f"the samples of {doc.name} need {module}")
    script = tmp_path / f"{doc.stem}_samples.py"
    parts = [PRELUDE]
    for i, (runs, code) in enumerate(_blocks(doc)):
        if runs:
            parts.append(f"# -- block {i + 1} --\n{code}")
    parts.append('print("samples ok")\n')
    script.write_text("\n".join(parts), encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))",
        ],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith("samples ok")


def _commands(doc: Path) -> list[tuple[str, list[str]]]:
    """``(command, printed lines)`` of every ``$ phasetrace ...`` line of the console blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in CONSOLE.findall(doc.read_text(encoding="utf-8")):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:].split("  #")[0].strip(), []))
            elif out:
                out[-1][1].append(line)
    return out


@pytest.mark.parametrize("doc", [d for d in DOCS if _commands(d)], ids=str)
def test_console_samples_run(doc, tmp_path):
    """Each command exits 0 (``bench`` is left to tests/test_bench.py: it takes half a
    minute); for ``moments --theta``, the moments shown are the ones printed."""
    (tmp_path / "thetas.csv").write_text("c,m\n1,0.5\n2,0.25\n")
    for command, shown in _commands(doc):
        argv = shlex.split(command)
        if argv[:2] == ["phasetrace", "bench"]:
            continue
        stdout = None
        if ">" in argv:
            at = argv.index(">")
            argv, stdout = argv[:at], argv[at + 1]
        run = subprocess.run(
            [sys.executable, "-m", "phasetrace", *argv[1:]],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert run.returncode == 0, (command, run.stderr[-2000:])
        if stdout:
            (tmp_path / stdout).write_text(run.stdout)
        if argv[1] == "moments" and "--theta" in argv:
            printed = dict(line.split(None, 1) for line in run.stdout.splitlines())
            for line in shown:
                key, value = line.split(None, 1)
                if key.startswith(("E[", "Var[")):
                    assert float(printed[key]) == pytest.approx(float(value), rel=1e-12), key
