"""Compare every available executor strategy on this machine; write JSON, Markdown and PNGs.

    python benchmarks/compare.py            # full run (a few minutes on 2 cores)
    python benchmarks/compare.py --quick    # tiny workloads, under 30 s (run by the tests)

Results go to ``benchmarks/results/`` (``compare.*``, or ``compare-quick.*`` with
``--quick``) unless ``--out DIR`` says otherwise. The engine is :mod:`phasetrace.bench`
(also behind ``phasetrace bench``); its docstring says what is measured and how.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    from phasetrace.bench import main
except ImportError:  # a checkout without `pip install -e .`: use its sources
    sys.path.insert(0, str(HERE.parent / "src"))
    from phasetrace.bench import main

if __name__ == "__main__":
    sys.exit(main(default_out=str(HERE / "results")))
