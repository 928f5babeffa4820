#!/usr/bin/env python3
"""Set-up commands that work on a fresh machine with only Python 3.11+ and pip.

    python3 tasks.py demo    # record and evaluate a two-island model (installs into .venv)
    python3 tasks.py test    # the whole test suite (installs the test extras into .venv)
    python3 tasks.py test-minimum  # the suite against the oldest versions pyproject allows

``demo`` and ``test`` create ``.venv`` next to this file if it is missing and reinstall
only when ``pyproject.toml`` changed. ``test-minimum`` does the same in ``.venv-min`` with
every dependency pinned by ``constraints/minimum.txt`` to the lower bound in pyproject.
Extra arguments after ``test`` or ``test-minimum`` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXTRAS = {"demo": "", "test": "[test,jax,dask,joblib,bench]"}
EXTRAS["test-minimum"] = EXTRAS["test"]
MINIMUM = ROOT / "constraints" / "minimum.txt"


def venv_dir(task: str) -> Path:
    return ROOT / (".venv-min" if task == "test-minimum" else ".venv")


def python(task: str) -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return venv_dir(task) / sub


def ensure_env(task: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this script may be run by an older python3)
        sys.exit(f"phasetrace needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    env_dir = venv_dir(task)
    if not python(task).exists():
        print(f"creating {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    extras = EXTRAS[task]
    constraints = ["-c", str(MINIMUM)] if task == "test-minimum" else []
    inputs = (ROOT / "pyproject.toml").read_bytes() + extras.encode()
    if constraints:
        inputs += MINIMUM.read_bytes()
    digest = hashlib.sha256(inputs).hexdigest()
    stamp = env_dir / f".installed-{task}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing phasetrace{extras} into {env_dir}", flush=True)
    pip = [str(python(task)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *constraints, "-e", f"{ROOT}{extras}"], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    task, rest = argv[0], argv[1:]
    ensure_env(task)
    if task == "demo":
        cmd = [str(python(task)), "-m", "phasetrace.demo", *rest]
    else:
        cmd = [str(python(task)), "-m", "pytest", *rest]
    env = dict(os.environ)
    if task == "test-minimum":  # numba's cache of another numba version must not be clobbered
        env.setdefault("NUMBA_CACHE_DIR", str(venv_dir(task) / "numba-cache"))
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
