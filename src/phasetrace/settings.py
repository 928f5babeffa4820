"""Settings: process-wide defaults, per-block overrides, environment, and one resolver.

Precedence, highest first, implemented once in :func:`resolve`:

1. explicit arguments (``resolve(strategy="spawn")``, as passed down by the API);
2. the innermost enclosing ``with config(...)`` block (blocks nest; an inner block
   inherits what it does not set);
3. ``configure(...)``: process-wide defaults;
4. environment variables ``PHASETRACE_STRATEGY``, ``PHASETRACE_N_WORKERS``,
   ``PHASETRACE_CACHE_DIR``, ``PHASETRACE_MAX_STATES`` (read at each resolution, and
   checked only when used: a bad value is an error only where no higher layer sets that
   setting);
5. the defaults of :class:`Settings`.

"Not given" is the :data:`UNSET` sentinel, not ``None``: ``None`` is a value of its own
(``n_workers=None``: the strategy's default; ``timeout=None``: no limit;
``cache_dir=None``: the cache module decides; ``progress=None``: automatic).

Every setting is validated when it is given (``configure``, ``config``, ``resolve``), so
an unknown strategy, ``pmap``, a missing optional dependency or a bad ``n_workers`` fails
before any process starts.

``config(...)`` blocks live in a :class:`contextvars.ContextVar`: they are seen by the
code (and asyncio tasks) running inside the block, not by other threads. A new thread
starts from the ``configure()`` defaults, not from the block its creator is in
(``contextvars.copy_context().run`` carries a block into a thread explicitly).

Examples
--------
>>> from phasetrace.settings import config, configure, get_settings
>>> with config(strategy="sequential", n_workers=1):
...     get_settings().strategy
'sequential'
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from phasetrace.errors import StrategyError
from phasetrace.executors.base import Executor, live_executors, resolve_n_workers
from phasetrace.executors.registry import (
    accepted_options,
    get_executor,
    get_strategy_factory,
    validate_strategy,
)

__all__ = [
    "UNSET",
    "Settings",
    "config",
    "configure",
    "get_executor_for",
    "get_settings",
    "reset_configuration",
    "resolve",
    "shutdown_executors",
    "using_executor",
]


class _Unset:
    """Type of :data:`UNSET`: marks a setting that was not given."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return (_Unset, ())


#: The "not given" marker; pass it (or omit the argument) to fall through to lower layers.
UNSET: Any = _Unset()

ENV_STRATEGY = "PHASETRACE_STRATEGY"
ENV_N_WORKERS = "PHASETRACE_N_WORKERS"
ENV_CACHE_DIR = "PHASETRACE_CACHE_DIR"
ENV_MAX_STATES = "PHASETRACE_MAX_STATES"


@dataclass(frozen=True)
class Settings:
    """The resolved settings (immutable).

    Attributes
    ----------
    strategy : str or executor
        Executor strategy name (default ``"auto"``), or an executor object: a phasetrace
        executor, or any ``concurrent.futures.Executor`` to adopt (phasetrace never shuts
        down one it did not create).
    n_workers : int or None
        Worker count (see :func:`phasetrace.executors.resolve_n_workers`: positive
        counts, negative ones counting back from the CPUs as joblib's ``n_jobs`` does);
        None is the strategy's default.
    cache : bool
        Use the on-disk trace cache (default True).
    cache_dir : str or None
        Cache directory; None lets the cache module decide.
    progress : bool or None
        Show progress; None decides automatically.
    timeout : float or None
        Seconds a ``map`` call may take; None is no limit.
    max_states : int or None
        The built-in models with exponential state spaces (block counting) refuse to
        build more states than this, before enumerating any (default 1,000,000; None is
        no limit).
    options : tuple of (str, value) pairs
        Strategy options (``address``, ``client``, ``security`` for dask, ...), kept as
        sorted pairs so that ``Settings`` stays immutable; see :attr:`options_dict`.
    """

    strategy: Any = "auto"
    n_workers: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    progress: bool | None = None
    timeout: float | None = None
    max_states: int | None = 1_000_000
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def options_dict(self) -> dict[str, Any]:
        """The strategy options as a new dict."""
        return dict(self.options)


_FIELDS = tuple(f.name for f in fields(Settings))
_DEFAULTS = Settings()


# -- validation ------------------------------------------------------------------------


def _check_strategy(value: Any) -> Any:
    if isinstance(value, str):
        validate_strategy(value)
        return value
    if isinstance(value, Executor) or callable(getattr(value, "submit", None)):
        return value  # an executor object: used (or adopted) as it is
    raise StrategyError(
        f"strategy must be a name (str) or an executor with submit(), got "
        f"{type(value).__name__} {value!r}"
    )


def _check_n_workers(value: Any) -> int | None:
    resolve_n_workers(value)  # the one validator of n_workers; raises StrategyError
    return value


def _check_bool(name: str, value: Any, allow_none: bool) -> bool | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    return value


def _check_cache_dir(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"cache_dir must be a path or None, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise TypeError(f"cache_dir must be a non-empty text path, got {value!r}")
    if path.startswith("~") and os.path.expanduser(path) == path:
        user = path[1:].split("/", 1)[0].split(os.sep, 1)[0]
        who = f"user {user!r}" if user else "the current user (HOME is not set)"
        raise ValueError(f"cache_dir {path!r}: cannot expand '~': no home directory for {who}")
    return path


def _check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _check_max_states(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_states must be a positive int or None, got {value!r}")
    return int(value)


def _check_options(value: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"options must be a mapping of option names to values, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"option names must be strings, got {key!r}")
    return tuple(sorted(value.items(), key=lambda kv: kv[0]))


_CHECKS = {
    "strategy": _check_strategy,
    "n_workers": _check_n_workers,
    "cache": lambda v: _check_bool("cache", v, allow_none=False),
    "cache_dir": _check_cache_dir,
    "progress": lambda v: _check_bool("progress", v, allow_none=True),
    "timeout": _check_timeout,
    "max_states": _check_max_states,
    "options": _check_options,
}


def _validated(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the given (not UNSET) settings; return them normalized.

    Keywords that are not :class:`Settings` fields are strategy options
    (``configure(strategy="dask", address=...)``); they are merged into ``options`` and,
    when the strategy is named in the same call, checked against its factory's parameters.
    """
    out = {}
    extra = {}
    for name, value in settings.items():
        if value is UNSET:
            continue
        if name in _CHECKS:
            out[name] = _CHECKS[name](value)
        else:
            extra[name] = value
    if extra:
        merged = {**dict(out.get("options", ())), **extra}
        out["options"] = _check_options(merged)
    if extra or ("strategy" in out and out.get("options")):
        strategy = out.get("strategy") or _effective_strategy()
        _check_option_names(strategy, dict(out.get("options", ())))
    return out


def _effective_strategy() -> Any:
    for layer in (_block_layer.get(), _process_layer):
        if "strategy" in layer:
            return layer["strategy"]
    env = _env_value("strategy")
    return _DEFAULTS.strategy if env is UNSET else env


def _check_option_names(strategy: Any, options: Mapping[str, Any]) -> None:
    """Refuse options the strategy does not take: a typo fails here, not at first use."""
    if not isinstance(strategy, str):
        if options:
            raise TypeError(
                "strategy options apply to named strategies; an executor object comes "
                f"configured already (got options {sorted(options)})"
            )
        return
    accepted = accepted_options(strategy)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise TypeError(
            f"unknown setting {names}; settings are: {', '.join(_FIELDS)}; options of "
            f"strategy {strategy!r}: {', '.join(sorted(accepted)) or 'none'}"
        )
    check = getattr(get_strategy_factory(strategy), "check_options", None)
    if callable(check) and options:
        check(**options)  # values too: idle_timeout=-1 fails here, not at first use


# -- the layers ------------------------------------------------------------------------

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_process_lock = threading.Lock()
_process_layer: Mapping[str, Any] = _EMPTY  # replaced whole, never mutated
_block_layer: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "phasetrace_config_block", default=_EMPTY
)


_ENV = {
    "strategy": ENV_STRATEGY,
    "n_workers": ENV_N_WORKERS,
    "cache_dir": ENV_CACHE_DIR,
    "max_states": ENV_MAX_STATES,
}


def _env_value(name: str) -> Any:
    """The environment's value of a setting, checked now (``UNSET`` when not set).

    Called only for a setting that no higher layer sets, so a bad value that an explicit
    argument, a ``config`` block or ``configure`` overrides is never an error.
    """
    var = _ENV.get(name)
    raw = os.environ.get(var, "").strip() if var else ""
    if not raw:
        return UNSET
    try:
        if name == "n_workers":
            return _check_n_workers(int(raw))
        if name == "max_states":
            return _check_max_states(None if raw.lower() == "none" else int(raw))
        return _CHECKS[name](raw)
    except (ValueError, TypeError) as exc:  # int() failed, or a check (StrategyError)
        # keep the subclass (pmap's StrategyRejectedError) so handlers see the real reason
        kind = type(exc) if isinstance(exc, StrategyError) else StrategyError
        raise kind(f"environment variable {var}={raw!r}: {exc}") from None


def configure(**settings: Any) -> Settings:
    """Set process-wide defaults (below ``config`` blocks and explicit arguments).

    Parameters
    ----------
    **settings
        Any of the :class:`Settings` fields: ``strategy``, ``n_workers``, ``cache``,
        ``cache_dir``, ``progress``, ``timeout``, ``max_states``, ``options``. Fields not given keep
        their configured value; ``UNSET`` removes a configured value. Any other keyword
        is a strategy option (``configure(strategy="dask", address="tcp://…")`` is
        ``configure(strategy="dask", options={"address": "tcp://…"})``).

    Returns
    -------
    Settings
        The settings now in effect here (as :func:`get_settings`).

    Raises
    ------
    StrategyError
        Unknown strategy (lists the known ones), bad ``n_workers``.
    StrategyRejectedError
        ``strategy="pmap"``.
    StrategyUnavailableError
        The strategy's optional dependency is missing (names the extra).
    TypeError, ValueError
        An unknown setting or a value of the wrong kind.

    Examples
    --------
    >>> configure(n_workers=2).n_workers
    2
    >>> reset_configuration()
    """
    global _process_layer
    given = _validated(settings)
    removed = [name for name, value in settings.items() if value is UNSET]
    with _process_lock:
        layer = {k: v for k, v in _process_layer.items() if k not in removed}
        layer.update(given)
        _process_layer = MappingProxyType(layer)
    return get_settings()


def reset_configuration() -> None:
    """Forget everything set by :func:`configure` (blocks and environment still apply)."""
    global _process_layer
    with _process_lock:
        _process_layer = _EMPTY


class config:
    """Override settings for a ``with`` block (and the code it calls, in this context).

    The settings are validated when the object is created; they take effect in
    ``__enter__`` and are undone by token in ``__exit__``, so blocks nest and an
    exception inside restores the outer settings. The same object may be entered again.

    Parameters
    ----------
    **settings
        As for :func:`configure`.

    Examples
    --------
    >>> with config(strategy="sequential") as s:
    ...     s.strategy
    'sequential'
    >>> with config(n_workers=1):
    ...     with config(strategy="spawn"):
    ...         (get_settings().strategy, get_settings().n_workers)
    ('spawn', 1)
    """

    def __init__(self, **settings: Any):
        self._layer = _validated(settings)
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> Settings:
        merged = {**_block_layer.get(), **self._layer}
        self._tokens.append(_block_layer.set(MappingProxyType(merged)))
        return get_settings()

    def __exit__(self, *exc_info: Any) -> None:
        _block_layer.reset(self._tokens.pop())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._layer.items())
        return f"config({inner})"


def resolve(**explicit: Any) -> Settings:
    """Resolve settings: explicit > ``config`` block > ``configure`` > environment > default.

    Parameters
    ----------
    **explicit
        Settings given explicitly by the caller; ``UNSET`` values fall through.

    Returns
    -------
    Settings

    Examples
    --------
    >>> with config(strategy="sequential", n_workers=1):
    ...     s = resolve(n_workers=2)
    >>> (s.strategy, s.n_workers)
    ('sequential', 2)
    """
    layers = (_validated(explicit), _block_layer.get(), _process_layer)
    values = {}
    for name in _FIELDS:
        for layer in layers:
            if name in layer:
                values[name] = layer[name]
                break
        else:
            env = _env_value(name)
            values[name] = getattr(_DEFAULTS, name) if env is UNSET else env
    return Settings(**values)


def resolve_setting(name: str, explicit: Any = UNSET) -> Any:
    """One setting, resolved as :func:`resolve` does, without checking the others (a bad
    environment value of another setting is no error here).

    Examples
    --------
    >>> with config(max_states=10):
    ...     resolve_setting("max_states"), resolve_setting("max_states", 5)
    (10, 5)
    """
    if name not in _CHECKS:
        raise TypeError(f"unknown setting {name!r}; settings are: {', '.join(_FIELDS)}")
    for layer in (_validated({name: explicit}), _block_layer.get(), _process_layer):
        if name in layer:
            return layer[name]
    env = _env_value(name)
    return getattr(_DEFAULTS, name) if env is UNSET else env


def get_settings() -> Settings:
    """The settings in effect here (``resolve()`` with no explicit argument).

    Examples
    --------
    >>> get_settings().cache
    True
    """
    return resolve()


# -- executors kept warm across calls ----------------------------------------------------

#: Executors kept by :func:`get_executor_for` (least recently used first out; an evicted
#: one is shut down): enough for a strategy switched back and forth, not a growing pile.
MAX_KEPT_EXECUTORS = 4
_executors_lock = threading.Lock()
_executors: OrderedDict[tuple, Executor] = OrderedDict()
#: Calls running on each kept executor (by id), and executors evicted while a call ran on
#: them: those are shut down when their last call ends, not under it.
_leases: dict[int, int] = {}
_evicted_in_use: dict[int, Executor] = {}


def _after_fork_in_child() -> None:
    """A forked child starts without kept executors (their workers are the parent's; see
    :func:`phasetrace.executors.base._after_fork_in_child`) and with fresh locks, which a
    thread of the parent may have held at the fork."""
    global _executors_lock, _process_lock
    _executors_lock, _process_lock = threading.Lock(), threading.Lock()
    _executors.clear()
    _leases.clear()
    _evicted_in_use.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _kept_executor(s: Settings) -> tuple[Executor, list[Executor]]:
    """The kept executor for ``s`` (made if needed) and those evicted that no call uses;
    call with ``_executors_lock`` held."""
    key = (s.strategy if isinstance(s.strategy, str) else id(s.strategy), s.n_workers, s.options)
    executor = _executors.get(key)
    if executor is not None and not executor.closed:
        _executors.move_to_end(key)
        return executor, []
    executor = get_executor(s.strategy, s.n_workers, **s.options_dict)
    _executors[key] = executor
    evicted = []
    while len(_executors) > MAX_KEPT_EXECUTORS:
        old = _executors.popitem(last=False)[1]
        if _leases.get(id(old)):
            _evicted_in_use[id(old)] = old
        else:
            evicted.append(old)
    return executor, evicted


def get_executor_for(settings: Settings | None = None) -> Executor:
    """Return a shared, open executor for ``settings`` (resolved here when None).

    Executors are kept by ``(strategy, n_workers, options)`` and reused by later calls,
    so pools stay warm; at most :data:`MAX_KEPT_EXECUTORS` are kept (the least recently
    used is shut down, once no call of :func:`using_executor` runs on it), and
    :func:`shutdown_executors` (also run at exit) shuts down every executor phasetrace
    created. An executor object given as the strategy is used as it is (a foreign one
    adopted). Do not shut down the returned executor yourself.

    Examples
    --------
    >>> ex = get_executor_for(resolve(strategy="sequential"))
    >>> ex is get_executor_for(resolve(strategy="sequential"))
    True
    """
    s = get_settings() if settings is None else settings
    with _executors_lock:
        executor, evicted = _kept_executor(s)
    for old in evicted:
        old.shutdown(wait=False)
    return executor


@contextlib.contextmanager
def using_executor(settings: Settings | None = None) -> Iterator[Executor]:
    """:func:`get_executor_for`, held for the ``with`` block: calls in other threads with
    other settings may evict it meanwhile, and it is then shut down when the block ends.

    Examples
    --------
    >>> with using_executor(resolve(strategy="sequential")) as ex:
    ...     ex.name
    'sequential'
    """
    s = get_settings() if settings is None else settings
    with _executors_lock:
        executor, evicted = _kept_executor(s)
        _leases[id(executor)] = _leases.get(id(executor), 0) + 1
    for old in evicted:
        old.shutdown(wait=False)
    try:
        yield executor
    finally:
        with _executors_lock:
            left = _leases.pop(id(executor)) - 1
            if left:
                _leases[id(executor)] = left
            retired = None if left else _evicted_in_use.pop(id(executor), None)
        if retired is not None:
            retired.shutdown(wait=False)


def shutdown_executors() -> None:
    """Shut down every executor phasetrace created (registered with atexit).

    Executors kept by :func:`get_executor_for` and those built with ``get_executor``
    alike; executors you passed in yourself (adopted) keep running.

    Examples
    --------
    >>> shutdown_executors()
    """
    with _executors_lock:
        _executors.clear()
    for executor in live_executors():
        executor.shutdown(wait=True)


atexit.register(shutdown_executors)
