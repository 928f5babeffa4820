"""docs/user-guide.md: every ``python`` block runs, in order, as one script.

The blocks check their own results with ``assert`` against closed forms. The script runs
in a fresh interpreter: the guide turns on ``jax_enable_x64`` globally, as a user should,
which must not leak into this test process (tests/test_jax.py runs with it off). A
PrecisionWarning or a RuntimeWarning fails the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "user-guide.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PRELUDE = """\
import warnings
from phasetrace.errors import PrecisionWarning
warnings.simplefilter("error", PrecisionWarning)
warnings.simplefilter("error", RuntimeWarning)
"""

pytestmark = pytest.mark.timeout(300)


def blocks() -> list[str]:
    return BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def test_guide_has_the_promised_sections_and_links():
    text = GUIDE.read_text(encoding="utf-8")
    code = blocks()
    assert len(code) >= 10
    for needle in (
        "structured_coalescent",
        "from_callback",
        "rewards=",
        "pt.sfs(",
        "jax_enable_x64",
        "pt.cdf(",
        "pt.quantile(",
        "cache_dir",
        "strategies.md",
    ):
        assert any(needle in c for c in code) or needle in text, needle
    # x64 is switched on before any JAX array exists: in the first block that imports jax
    first_jax = next(c for c in code if "import jax" in c)
    assert first_jax.index('jax.config.update("jax_enable_x64", True)') < (
        first_jax.index("import jax.numpy")
    )
    for link in re.findall(r"\]\(([^)#]+)\)", text):  # relative links resolve in the repo
        if "://" not in link:
            assert (GUIDE.parent / link).exists(), link


@pytest.mark.skipif(find_spec("jax") is None, reason="the guide's section 4 needs jax")
def test_every_example_runs_and_its_asserts_hold(tmp_path):
    script = tmp_path / "guide.py"
    parts = [PRELUDE]
    for i, code in enumerate(blocks()):
        parts.append(f"# -- block {i + 1} --\n{code}")
    parts.append('print("guide ok")\n')
    script.write_text("\n".join(parts), encoding="utf-8")
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith("guide ok")
    print(f"user guide: {len(blocks())} blocks in {elapsed:.1f} s")
