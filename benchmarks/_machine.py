"""Machine description printed with every benchmark table."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def describe(packages=("numpy", "loky", "jax", "dask", "distributed", "joblib")) -> dict:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "packages": versions,
    }


def describe_line() -> str:
    d = describe()
    pk = ", ".join(f"{k} {v}" for k, v in d["packages"].items())
    return f"{d['cpu_count']} cores, {d['machine']}, {d['system']}, Python {d['python']}; {pk}"
