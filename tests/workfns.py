"""Module-level work functions for the executor tests: crashes, sleeps, exits, probes.

Workers import this module by reference: the test session puts ``tests/`` on the import
path of every process it starts (``conftest.py`` sets ``PYTHONPATH``), and spawned
workers inherit the parent's ``sys.path``. Standard library only, like ``_worker``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Any


def identity(x: Any) -> Any:
    """Return ``x``."""
    return x


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def sleep_ms(ms: float) -> float:
    """Sleep ``ms`` milliseconds; return ``ms``."""
    time.sleep(ms / 1000.0)
    return ms


def busy_ms(ms: float) -> int:
    """Keep one CPU busy for about ``ms`` milliseconds (a Python loop, not sleep)."""
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        for _ in range(200):
            n += 1
    return n


def spin(n: int) -> int:
    """A deterministic CPU-busy loop of ``n`` iterations; returns a checksum."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def raise_value_error(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def exit_now(code: int = 7) -> None:
    """End the process at once with ``os._exit(code)`` (no cleanup)."""
    os._exit(code)


def sigkill_self(_: Any = None) -> None:
    """Send SIGKILL to the own process (what the OOM killer does)."""
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(_: Any = None) -> None:
    """Crash the process with a segmentation fault."""
    faulthandler._sigsegv()


def has_jax(_: Any = None) -> bool:
    """Whether JAX is imported in this process."""
    return "jax" in sys.modules


def getpid(_: Any = None) -> int:
    """The process id that ran the unit."""
    return os.getpid()


def getenv(name: str) -> str | None:
    """The value of an environment variable in the process that ran the unit."""
    return os.environ.get(name)


def blas_threads(_: Any = None) -> list[int]:
    """Thread counts of the BLAS/OpenMP libraries numpy loaded here (needs threadpoolctl)."""
    import numpy  # noqa: F401  (loads the BLAS library threadpoolctl then reports)
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()]


def unpicklable_result(_: Any = None) -> Any:
    """Return an object that cannot be pickled (a lock)."""
    return threading.Lock()


def behave(payload: tuple[str, Any]) -> Any:
    """Dispatch on ``(action, argument)``: one work function for mixed test batches.

    Actions: ``"value"`` returns the argument, ``"square"``, ``"sleep"`` (ms),
    ``"busy"`` (ms), ``"raise"`` (message), ``"exit"`` (code), ``"kill"``,
    ``"segfault"``, ``"pid"``.
    """
    action, arg = payload
    if action == "value":
        return arg
    if action == "square":
        return arg * arg
    if action == "sleep":
        return sleep_ms(arg)
    if action == "busy":
        return busy_ms(arg)
    if action == "raise":
        raise_value_error(arg)
    if action == "exit":
        exit_now(arg)
    if action == "kill":
        sigkill_self()
    if action == "segfault":
        segfault()
    if action == "pid":
        return os.getpid()
    raise KeyError(f"unknown action {action!r}")


def nested_map(strategy: str) -> list:
    """Start a map of strategy ``strategy`` from inside the unit (pools must refuse)."""
    from phasetrace.executors import get_executor, work_items

    with get_executor(strategy, n_workers=1) as ex:
        return ex.map_items(square, work_items([1, 2]))


def exit_via_sys_exit(code: int = 4) -> None:
    """Call ``sys.exit(code)`` (raises SystemExit: a unit failure, not a crash)."""
    sys.exit(code)


class Unpicklable(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(_: Any = None) -> None:
    """Raise an exception that cannot travel back to the parent."""
    raise Unpicklable("cannot travel")


def mark_then_sleep(payload: tuple[str, float]) -> float:
    """Leave a file named after this process in ``directory``, then sleep ``ms``."""
    directory, ms = payload
    with open(os.path.join(directory, f"started-{os.getpid()}"), "w"):
        pass
    return sleep_ms(ms)


# -- objects that misbehave while they are pickled or unpickled (the crash matrix) ----------


def act(action: str) -> None:
    """Do ``action``: ``"segfault"``, ``"exit"`` (``os._exit(7)``) or ``"raise"`` (ValueError)."""
    if action == "segfault":
        segfault()
    elif action == "exit":
        exit_now(7)
    elif action == "raise":
        raise ValueError(f"{action} requested while (un)pickling")
    else:
        raise KeyError(f"unknown action {action!r}")


class ActAtPickle:
    """Pickling this object does ``action`` (in the process that pickles it)."""

    def __init__(self, action: str):
        self.action = action

    def __reduce__(self):
        act(self.action)
        return (ActAtPickle, (self.action,))


class ActAtUnpickle:
    """Unpickling this object does ``action`` (in the process that unpickles it)."""

    def __init__(self, action: str):
        self.action = action

    def __reduce__(self):
        return (act, (self.action,))


def make_act_at_pickle(action: str) -> ActAtPickle:
    """Return an object whose pickling, in this worker, does ``action``."""
    return ActAtPickle(action)


def make_act_at_unpickle(action: str) -> ActAtUnpickle:
    """Return an object whose unpickling, in the parent, does ``action``."""
    return ActAtUnpickle(action)


def worker_only_object(_: Any = None) -> Any:
    """Return an instance of a class from a module that exists only in this worker, so
    the parent cannot unpickle it."""
    import importlib.machinery
    import types

    name = "phasetrace_crash_matrix_worker_only"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        exec("class WorkerOnly:\n    pass\n", module.__dict__)
        sys.modules[name] = module
    return module.WorkerOnly()
