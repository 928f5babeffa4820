"""Repository-level pytest configuration: skip doctest collection of optional-extra modules
when their dependency is not installed (their own test modules use importorskip)."""

import os
from importlib.util import find_spec
from pathlib import Path

# Test helpers (tests/workfns.py: crashes, sleeps, probes) must be importable by every
# process the tests start: workers pickle them by reference.
_TESTS = str(Path(__file__).parent / "tests")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_TESTS, os.environ.get("PYTHONPATH", "")) if p
)

collect_ignore = []
if find_spec("jax") is None:
    collect_ignore += ["src/phasetrace/jax"]
if find_spec("distributed") is None:
    collect_ignore += ["src/phasetrace/executors/daskpool.py"]
if find_spec("joblib") is None:
    collect_ignore += ["src/phasetrace/executors/joblibpool.py"]
if find_spec("matplotlib") is None:
    collect_ignore += ["src/phasetrace/bench.py"]


def pytest_sessionstart(session):
    """Compile the replay kernel (or load it from numba's disk cache) once, up front.

    The first compilation takes about a minute on two cores; here it runs before any
    test's timeout starts, and the disk cache it leaves serves the subprocesses that
    tests start too.
    """
    import numpy as np

    import phasetrace as pt

    trace = pt.record_trace(pt.models.two_island(3))
    for thetas in (np.array([1.0, 0.5]), np.array([[1.0, 0.5]] * 4)):
        trace.moments(thetas)
        trace.moments_and_jacobian(thetas)
    pt.cdf(trace, [0.5, 1.0], [1.0, 0.5])  # the uniformization kernels (phasetrace.distribution)
    pt.pdf(trace, [0.5, 1.0], [1.0, 0.5])
