"""The exception tree of phasetrace.

Every error the library raises on purpose derives from :class:`PhasetraceError`, so
``except pt.PhasetraceError`` catches all of them; each leaf also derives from the
builtin that generic code expects (``ValueError`` for bad input, the stdlib
``BrokenProcessPool`` for a dead worker, ``TimeoutError`` for a call that ran over).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class PhasetraceError(Exception):
    """Base class of every error phasetrace raises on purpose."""


class InvalidGraphError(PhasetraceError, ValueError):
    """A graph breaks a rule of the model (see ``docs/algorithm.md``, "The model").

    The message names the vertex state and, where there is one, the edge.
    """


class InvalidParameterError(PhasetraceError, ValueError):
    """A parameter vector θ or a reward vector cannot be used with this trace."""


class StateSpaceTooLargeError(PhasetraceError, ValueError):
    """A built-in model would have more states than the configured limit (``max_states``).

    Raised before any state is enumerated; the message gives the estimate and the
    alternatives.

    Attributes
    ----------
    estimate : int
        The number of states the model would have.
    limit : int
        The limit in effect.
    """

    def __init__(self, message: str, estimate: int = 0, limit: int = 0):
        super().__init__(message)
        self.estimate = estimate
        self.limit = limit

    def __reduce__(self):
        return (type(self), (str(self), self.estimate, self.limit))


class InsufficientMemoryError(PhasetraceError, MemoryError):
    """A recording or an evaluation would need more memory than this machine has free.

    Raised before the work starts (not as a worker killed by the operating system); the
    message says how much it needs, how much is available and what to change.

    Attributes
    ----------
    needed, available : int
        Bytes.
    """

    def __init__(self, message: str, needed: int = 0, available: int = 0):
        super().__init__(message)
        self.needed = needed
        self.available = available

    def __reduce__(self):
        return (type(self), (str(self), self.needed, self.available))


class TraceFormatError(PhasetraceError, ValueError):
    """A saved trace or cache entry is malformed, truncated or of another format version."""


class StrategyError(PhasetraceError, ValueError):
    """An executor strategy name, option or worker count is not usable."""


class StrategyUnavailableError(StrategyError, ImportError):
    """A strategy needs an optional dependency that is not installed; the message names it."""


class StrategyRejectedError(StrategyError):
    """A strategy is registered only to explain why it cannot be used (``pmap``)."""


class WorkerCrashedError(PhasetraceError, BrokenProcessPool):
    """A worker process died while running a unit; the message names the unit key.

    Derives from :class:`concurrent.futures.process.BrokenProcessPool`, so generic
    handlers for a broken pool catch it too. The next call gets a fresh pool.
    """

    def __init__(self, message: str, key: str | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.key = key
        self.exitcode = exitcode

    def __reduce__(self):
        return (type(self), (str(self), self.key, self.exitcode))


class UnitFailedError(PhasetraceError, RuntimeError):
    """A unit raised inside a worker.

    Attributes
    ----------
    key : str
        The content key of the unit that failed.
    exc_type : str
        Qualified name of the original exception type.
    exc_message : str
        The original exception's message.
    remote_traceback : str
        The worker's formatted traceback (also attached as ``__cause__``).
    """

    def __init__(self, key: str, exc_type: str, exc_message: str, remote_traceback: str = ""):
        super().__init__(f"unit {key} failed in a worker: {exc_type}: {exc_message}")
        self.key = key
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (type(self), (self.key, self.exc_type, self.exc_message, self.remote_traceback))


class SerializationError(PhasetraceError, TypeError):
    """A work function, payload or result cannot be pickled (or unpickled) for a worker.

    The message says which one (``what``: ``"fn"``, ``"item"``, ``"result"`` or
    ``"chunk"``; ``key``: the unit's key where there is one) and how to fix it. Raised
    before any work is dispatched when the parent cannot pickle the work.
    """

    def __init__(self, message: str, what: str | None = None, key: str | None = None):
        super().__init__(message)
        self.what = what
        self.key = key

    def __reduce__(self):
        return (type(self), (str(self), self.what, self.key))


class ExecutorTimeoutError(PhasetraceError, TimeoutError):
    """A call ran past its ``timeout=``; the workers that ran over were terminated."""


class ExecutorClosedError(PhasetraceError, RuntimeError):
    """An executor was used after ``close()``."""


class CacheWarning(UserWarning):
    """The trace cache met a corrupt entry or an unusable directory and carried on without it."""


class PrecisionWarning(UserWarning):
    """A parameter vector reached phasetrace in less than float64 precision.

    Raised (as a warning, once per function) by the functions of :mod:`phasetrace.jax`
    when θ arrives as float32, JAX's default while ``jax_enable_x64`` is off: θ was rounded
    to about 7 significant digits before phasetrace saw it (1.3 becomes 1.2999999523), so
    a fit cannot get closer than that. Call ``jax.config.update("jax_enable_x64", True)``
    at the start of the program, before creating any JAX array.
    """
