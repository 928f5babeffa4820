#!/usr/bin/env python3
"""Set-up commands that work on a fresh machine with only Python 3.11+ and pip.

    python3 tasks.py demo    # record and evaluate a two-island model (installs into .venv)
    python3 tasks.py test    # the whole test suite (installs the test extras into .venv)

Both create ``.venv`` next to this file if it is missing and reinstall only when
``pyproject.toml`` changed. Extra arguments after ``test`` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
EXTRAS = {"demo": "", "test": "[test,jax,dask,joblib,bench]"}


def python() -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return VENV / sub


def ensure_env(task: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this script may be run by an older python3)
        sys.exit(f"phasetrace needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    extras = EXTRAS[task]
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{task}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing phasetrace{extras} into {VENV}", flush=True)
    pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}{extras}"], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    task, rest = argv[0], argv[1:]
    ensure_env(task)
    if task == "demo":
        cmd = [str(python()), "-m", "phasetrace.demo", *rest]
    else:
        cmd = [str(python()), "-m", "pytest", *rest]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
