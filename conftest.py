"""Repository-level pytest configuration: skip doctest collection of optional-extra modules
when their dependency is not installed (their own test modules use importorskip)."""

from importlib.util import find_spec

collect_ignore = []
if find_spec("jax") is None:
    collect_ignore += [
        "src/phasetrace/jax.py",
        "src/phasetrace/_jax_bridge.py",
        "src/phasetrace/_jax_lower.py",
    ]
if find_spec("distributed") is None:
    collect_ignore += ["src/phasetrace/executors/daskpool.py"]
if find_spec("joblib") is None:
    collect_ignore += ["src/phasetrace/executors/joblibpool.py"]
if find_spec("matplotlib") is None:
    collect_ignore += ["src/phasetrace/bench.py"]
