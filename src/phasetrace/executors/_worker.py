"""Code that runs inside worker processes: the chunk runner and the worker initializer.

This module imports the standard library only (no JAX, no numpy): unpickling a task in a
worker imports it, and workers must stay light and JAX-free.

Data flow: the parent pickles ``(fn, [(key, payload), ...])`` itself into one ``bytes``
blob per chunk and submits ``run_pickled_chunk(blob, progress)``. The worker unpickles
the blob, runs :func:`run_chunk`, and pickles the per-item outcomes back into bytes.
Doing both pickling steps here, not in the pool's transport, means that a payload or
result that cannot be (un)pickled fails only its own unit, with a message naming it,
instead of breaking the pool.

Before starting each item the worker writes ``(call id, pid, position + 1)`` into its
chunk's slot of a small *progress file* (one ``os.pwrite`` of 24 bytes, about a
microsecond). When a worker dies, the parent reads the slots of the chunks that never
returned and names the unit that was running, even inside a chunk of many units.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

# Outcome codes, one per item.
OK = 0
RAISED = 1
UNPICKLABLE_RESULT = 2

# Outcome codes, one per chunk.
CHUNK_OK = "ok"
CHUNK_LOAD_FAILED = "load-failed"

#: One progress record: call id, worker pid, position of the running item + 1 (or DONE).
PROGRESS_RECORD = struct.Struct("<qqq")
DONE = -1

#: Thread caps for BLAS/OpenMP libraries: each worker is one CPU's worth of work, so
#: letting numpy's BLAS start its own threads in every worker would oversubscribe.
THREAD_LIMIT_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

#: True in a process started as a phasetrace worker; pooled strategies refuse to nest.
IN_WORKER = False

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_progress_fds: dict[str, int] = {}
_MAX_PROGRESS_FDS = 8  # a worker may serve several executors in turn; keep few files open
_thread_limits: Any = None  # keeps threadpoolctl's limiter alive for the worker's lifetime


def exc_type_name(exc: BaseException) -> str:
    """Qualified name of an exception's type (``ValueError``, ``mypkg.errors.Bad``)."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the failure itself
        return f"<{exc_type_name(exc)}: str() failed>"


def _format_tb(exc: BaseException, skip_own_frame: bool = True) -> str:
    tb = exc.__traceback__
    if skip_own_frame and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the first frame is run_chunk itself, noise to the reader
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _failure(exc: BaseException, code: int = RAISED) -> tuple:
    return (code, exc_type_name(exc), _safe_str(exc), _format_tb(exc))


def _progress_marker(progress: tuple[str, int, int] | None) -> Callable[[int], None] | None:
    """Return ``mark(position)`` writing this chunk's progress record, or None."""
    if progress is None:
        return None
    path, call_id, slot = progress
    fd = _progress_fds.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:  # the executor was closed meanwhile: run without progress records
            return None
        if len(_progress_fds) >= _MAX_PROGRESS_FDS:
            oldest = next(iter(_progress_fds))
            os.close(_progress_fds.pop(oldest))
        _progress_fds[path] = fd
    pid = os.getpid()
    offset = slot * PROGRESS_RECORD.size
    pack = PROGRESS_RECORD.pack

    def mark(position: int) -> None:
        try:  # noqa: SIM105  (try/except is cheaper than contextlib.suppress per unit)
            os.pwrite(fd, pack(call_id, pid, position), offset)
        except OSError:
            pass  # progress records are diagnostics; never fail a unit over them

    return mark


def run_chunk(
    fn: Callable[[Any], Any],
    keyed_payloads: Sequence[tuple[str, Any]],
    progress: tuple[str, int, int] | None = None,
) -> list[tuple]:
    """Run ``fn`` on each payload; one outcome per item, failures included.

    Parameters
    ----------
    fn : callable
        The work function.
    keyed_payloads : sequence of (key, payload)
        The chunk, in input order.
    progress : (path, call id, slot), optional
        Where to record which item is running (see the module docstring).

    Returns
    -------
    list of tuple
        ``(OK, result)`` or ``(RAISED, type name, message, formatted traceback)`` per
        item. One failing item does not stop the others.

    Examples
    --------
    >>> run_chunk(abs, [("a", -1), ("b", "x")])[0]
    (0, 1)
    >>> run_chunk(abs, [("b", "x")])[0][1]
    'TypeError'
    """
    mark = _progress_marker(progress)
    out: list[tuple] = []
    for position, (_key, payload) in enumerate(keyed_payloads):
        if mark is not None:
            mark(position + 1)
        try:
            out.append((OK, fn(payload)))
        except (Exception, SystemExit) as exc:  # sys.exit() in a unit is its failure too
            out.append(_failure(exc))
    if mark is not None:
        mark(DONE)
    return out


def _picklable_or_failure(outcome: tuple) -> tuple:
    if outcome[0] != OK:
        return outcome
    try:
        pickle.dumps(outcome[1], protocol=_PROTOCOL)
    except Exception as exc:
        return _failure(exc, UNPICKLABLE_RESULT)
    return outcome


def run_pickled_chunk(blob: bytes, progress: tuple[str, int, int] | None = None) -> bytes:
    """Worker entry point: unpickle a chunk, run it, return the pickled outcomes.

    Returns the pickle of ``(CHUNK_OK, outcomes)`` or, when the blob cannot be
    unpickled here (a class or function the worker cannot import),
    ``(CHUNK_LOAD_FAILED, type name, message, traceback)``.
    """
    try:
        fn, keyed_payloads = pickle.loads(blob)
    except Exception as exc:
        return pickle.dumps((CHUNK_LOAD_FAILED, *_failure(exc)[1:]), protocol=_PROTOCOL)
    outcomes = run_chunk(fn, keyed_payloads, progress)
    try:
        return pickle.dumps((CHUNK_OK, outcomes), protocol=_PROTOCOL)
    except Exception:
        # find the results that cannot travel; the others still come back
        outcomes = [_picklable_or_failure(o) for o in outcomes]
        return pickle.dumps((CHUNK_OK, outcomes), protocol=_PROTOCOL)


def _watch_parent(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            # The parent is gone (we were re-parented): nobody will read our results.
            os._exit(3)


def init_worker(parent_pid: int | None, watch_interval: float, env: dict[str, str]) -> None:
    """Initializer of every pooled worker.

    - caps BLAS/OpenMP threads at one (environment for libraries loaded later,
      threadpoolctl for those already loaded, when it is installed);
    - ignores SIGINT: Ctrl-C is handled by the parent, which cancels queued units and
      terminates the workers itself;
    - turns on faulthandler, so a segfault leaves a Python traceback on stderr;
    - starts a daemon thread that ends the worker when its parent has died (checked
      every ``watch_interval`` seconds via ``os.getppid()``).
    """
    global IN_WORKER, _thread_limits
    IN_WORKER = True
    os.environ.update(env)
    if any(name in sys.modules for name in ("numpy", "scipy")):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass  # optional: without it, libraries loaded after this point are still capped
        else:
            _thread_limits = threadpool_limits(limits=1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not faulthandler.is_enabled():
        faulthandler.enable()
    if parent_pid is not None:
        threading.Thread(
            target=_watch_parent,
            args=(parent_pid, watch_interval),
            name="phasetrace-parent-watchdog",
            daemon=True,
        ).start()
