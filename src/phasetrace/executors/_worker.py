"""Code that runs inside worker processes: the chunk runner and the worker initializer.

This module imports the standard library only (no JAX, no numpy): unpickling a task in a
worker imports it, and workers must stay light and JAX-free.

Data flow (the wire format is :mod:`phasetrace.executors._wire`): the parent pickles a
chunk itself into one ``bytes`` blob and submits ``run_pickled_chunk(blob, progress)``.
The worker unpickles the blob, runs every item, and returns each outcome as bytes of its
own: a result that cannot be pickled here, or unpickled in the parent, fails only its own
unit, and a payload that cannot be unpickled here fails only its chunk, instead of
breaking the pool.

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

#: One progress record: call id, worker pid, position of the running item + 1, or LOADING
#: while the chunk is being unpickled, or DONE. The running item's result is pickled
#: before the position moves on, so a crash while pickling it names that item.
PROGRESS_RECORD = struct.Struct("<qqq")
LOADING = 0
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
    "NUMBA_NUM_THREADS": "1",
}

#: True in a process started as a phasetrace worker; pooled strategies refuse to nest.
IN_WORKER = False

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_progress_fds: dict[str, int] = {}
_MAX_PROGRESS_FDS = 8  # a worker may serve several executors in turn; keep few files open
_thread_limits: Any = None  # keeps threadpoolctl's limiter alive for the worker's lifetime
_watched_parent: int | None = None
_watch_lock = threading.Lock()


def exc_type_name(exc: BaseException) -> str:
    """Qualified name of an exception's type (``ValueError``, ``mypkg.errors.Bad``)."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the failure itself
        return f"<{exc_type_name(exc)}: str() failed>"


def format_tb(exc: BaseException, skip_own_frame: bool = True) -> str:
    tb = exc.__traceback__
    if skip_own_frame and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the first frame is run_chunk itself, noise to the reader
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _exception_bytes(exc: BaseException) -> bytes | None:
    """The exception itself, pickled without its traceback (frames never travel)."""
    if not isinstance(exc, Exception):
        return None  # SystemExit and friends must not end the parent: they travel as text
    try:
        return pickle.dumps(exc.with_traceback(None), protocol=_PROTOCOL)
    except Exception:
        return None


def _failure(exc: BaseException, code: int = RAISED) -> tuple:
    return (code, exc_type_name(exc), safe_str(exc), format_tb(exc), _exception_bytes(exc))


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
    fn: Callable[..., Any],
    keyed_payloads: Sequence[tuple[str, Any]],
    progress: tuple[str, int, int] | None = None,
    star: bool = False,
    pickle_results: bool = False,
) -> list[tuple]:
    """Run ``fn`` on each payload (``fn(*payload)`` with ``star``); one outcome per item.

    Returns ``(OK, result)`` or ``(RAISED, type name, message, formatted traceback,
    pickled exception or None)`` per item. One failing item does not stop the others.
    With ``pickle_results``, each result is pickled as soon as it is computed
    (``(OK, bytes)``, or ``UNPICKLABLE_RESULT``), while the progress record still names
    its item.

    Examples
    --------
    >>> run_chunk(abs, [("a", -1), ("b", "x")])[0]
    (0, 1)
    >>> run_chunk(abs, [("b", "x")])[0][1]
    'TypeError'
    >>> run_chunk(pow, [("c", (2, 3))], star=True)[0]
    (0, 8)
    """
    mark = _progress_marker(progress)
    out: list[tuple] = []
    for position, (_key, payload) in enumerate(keyed_payloads):
        if mark is not None:
            mark(position + 1)
        try:
            outcome = (OK, fn(*payload) if star else fn(payload))
        except (Exception, SystemExit) as exc:  # sys.exit() in a unit is its failure too
            outcome = _failure(exc)
        out.append(_pickled_outcome(outcome) if pickle_results else outcome)
    if mark is not None:
        mark(DONE)
    return out


def _pickled_outcome(outcome: tuple) -> tuple:
    """``(OK, result)`` → ``(OK, result bytes)``: each result travels on its own."""
    if outcome[0] != OK:
        return outcome
    try:
        return (OK, pickle.dumps(outcome[1], protocol=_PROTOCOL))
    except Exception as exc:
        return _failure(exc, UNPICKLABLE_RESULT)


def run_pickled_chunk(blob: bytes, progress: tuple[str, int, int] | None = None) -> bytes:
    """Worker entry point: unpickle a chunk, run it, return the pickled outcomes.

    The blob is ``(fn, star, [(key, payload), ...], parent pid or None)``; a worker that
    has no watchdog yet (joblib's or an adopted executor's) starts one for that parent.
    Returns the pickle of ``(CHUNK_OK, outcomes)``, each result pickled on its own, or,
    when the blob cannot be unpickled here (a class or function the worker cannot
    import), ``(CHUNK_LOAD_FAILED, type name, message, traceback)``.
    """
    mark = _progress_marker(progress)
    if mark is not None:
        mark(LOADING)  # a crash while unpickling is then blamed on this chunk's units
    try:
        fn, star, keyed_payloads, parent_pid = pickle.loads(blob)
    except Exception as exc:
        return pickle.dumps((CHUNK_LOAD_FAILED, *_failure(exc)[1:4]), protocol=_PROTOCOL)
    if parent_pid is not None:
        watch_parent(parent_pid)
    outcomes = run_chunk(fn, keyed_payloads, progress, star, pickle_results=True)
    return pickle.dumps((CHUNK_OK, outcomes), protocol=_PROTOCOL)


def _watch(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            # The parent is gone (we were re-parented): nobody will read our results.
            os._exit(3)


def watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    """End this process within ``interval`` seconds of its parent's death (once per process).

    Does nothing in the parent itself (a thread backend runs chunks there) or when the
    process is not a child of ``parent_pid`` (a remote worker).
    """
    global _watched_parent
    if _watched_parent is not None or os.getpid() == parent_pid or os.getppid() != parent_pid:
        return
    with _watch_lock:
        if _watched_parent is not None:
            return
        _watched_parent = parent_pid
        threading.Thread(
            target=_watch,
            args=(parent_pid, interval),
            name="phasetrace-parent-watchdog",
            daemon=True,
        ).start()


def init_worker(
    parent_pid: int | None,
    watch_interval: float,
    env: dict[str, str],
    registry: str | None = None,
) -> None:
    """Initializer of every pooled worker.

    - caps BLAS/OpenMP threads at one (environment for libraries loaded later,
      threadpoolctl for those already loaded, when it is installed);
    - ignores SIGINT: Ctrl-C is handled by the parent, which cancels queued units and
      terminates the workers itself;
    - turns on faulthandler, so a segfault leaves a Python traceback on stderr;
    - starts a daemon thread that ends the worker when its parent has died (checked
      every ``watch_interval`` seconds via ``os.getppid()``);
    - appends its pid to the pool's ``registry`` file, so the parent knows its workers
      without reading the pool's internals.
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
        watch_parent(parent_pid, watch_interval)
    if registry is not None:
        try:
            fd = os.open(registry, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"%d\n" % os.getpid())  # one short append: atomic
            finally:
                os.close(fd)
        except OSError:
            pass  # the registry is for diagnosis and cleanup; never fail a worker over it
