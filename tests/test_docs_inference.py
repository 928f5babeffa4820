"""docs/inference.md: every ``python`` block runs, in order, as one script.

The blocks check their own results with ``assert``: fits of data simulated by msprime
against the truth, Godambe against observed errors, the JAX likelihood against
``pt.loglik``. The script runs in a fresh interpreter, as the demography document's does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "inference.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PRELUDE = """\
import warnings
from phasetrace.errors import PrecisionWarning
warnings.simplefilter("error", PrecisionWarning)
"""

pytestmark = pytest.mark.timeout(600)


def blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_document_covers_what_it_promises():
    text = DOC.read_text(encoding="utf-8")
    code = "\n".join(blocks())
    for needle in ("pt.fit(", "pt.observed_sfs(", "block_bootstrap", "bootstraps=",
                   "read_spectrum", "write_spectrum", "folded=True", "loglik_function",
                   "gradient=True", "n_starts="):  # fmt: skip
        assert needle in code, needle
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in link:
            assert (DOC.parent / link).exists(), link


@pytest.mark.skipif(
    any(find_spec(m) is None for m in ("jax", "demes", "msprime", "scipy")),
    reason="the document's examples need jax, demes, msprime and scipy",
)
def test_every_example_runs_and_its_asserts_hold(tmp_path):
    script = tmp_path / "inference.py"
    parts = [PRELUDE]
    for i, code in enumerate(blocks()):
        parts.append(f"# -- block {i + 1} --\n{code}")
    parts.append('print("inference ok")\n')
    script.write_text("\n".join(parts), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "inference ok" in run.stdout
