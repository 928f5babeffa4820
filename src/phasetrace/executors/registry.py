"""The strategy registry: names → executor factories, imported only when asked for.

Built-in strategies are registered as dotted paths (``"module:attribute"``) with an
install hint; a strategy's module is imported the first time the strategy is used, so
``import phasetrace`` imports neither loky nor JAX nor Dask. Availability is judged
without importing anything heavy: the modules a strategy ``requires`` are looked up with
:func:`importlib.util.find_spec`. Third-party packages add strategies through the
``phasetrace.strategies`` entry-point group (``name = "package.module:Factory"``), read
on the first lookup of a name that is not registered.

A factory is called as ``factory(n_workers=..., **options)`` and returns an
:class:`~phasetrace.executors.base.Executor`; a class is a factory.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phasetrace.errors import StrategyError, StrategyRejectedError, StrategyUnavailableError
from phasetrace.executors.base import Executor, available_cpus, resolve_n_workers

ENTRY_POINT_GROUP = "phasetrace.strategies"

Factory = Callable[..., Executor]


@dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy.

    Attributes
    ----------
    name : str
        Registry name.
    factory : str or callable
        ``"package.module:attribute"`` (imported on first use) or the factory itself.
    extra : str or None
        The ``phasetrace[...]`` extra that installs its dependencies, if any.
    hint : str
        What to install to use it (shown when it is unavailable).
    requires : tuple of str
        Top-level modules it needs; checked without importing them.
    rejected : bool
        Registered only to explain why it cannot be used (``pmap``).
    """

    name: str
    factory: str | Factory
    extra: str | None = None
    hint: str = ""
    requires: tuple[str, ...] = ()
    rejected: bool = False


@dataclass(frozen=True)
class StrategyInfo:
    """What :func:`available_strategies` reports about one strategy.

    Attributes
    ----------
    name : str
    available : bool
        True when :func:`get_executor` would build it.
    reason : str
        Why it is unavailable (with the install hint), or ``""``.
    in_process : bool or None
        Whether units run in the calling process (None when the strategy decides per call,
        as ``auto`` does, or cannot load).
    default_n_workers : int or None
        Workers used for ``n_workers=None`` on this machine (None when it cannot load).
    """

    name: str
    available: bool
    reason: str
    in_process: bool | None
    default_n_workers: int | None


_NOTHING_TO_INSTALL = "nothing to install: it uses the Python standard library only"
_LOKY_HINT = (
    'loky is a core dependency of phasetrace: pip install "phasetrace" (or pip install "loky>=3.4")'
)

# Kept in alphabetical order (a unit test checks it).
_BUILTINS: tuple[StrategyEntry, ...] = (
    StrategyEntry(
        "auto", "phasetrace.executors.auto:AutoExecutor", None, _LOKY_HINT, ("loky", "cloudpickle")
    ),
    StrategyEntry(
        "dask",
        "phasetrace.executors.daskpool:DaskExecutor",
        "dask",
        'pip install "phasetrace[dask]"',
        ("dask", "distributed"),
    ),
    StrategyEntry(
        "joblib",
        "phasetrace.executors.joblibpool:JoblibExecutor",
        "joblib",
        'pip install "phasetrace[joblib]"',
        ("joblib",),
    ),
    StrategyEntry(
        "loky",
        "phasetrace.executors.lokypool:LokyExecutor",
        None,
        _LOKY_HINT,
        ("loky", "cloudpickle"),
    ),
    StrategyEntry(
        "pmap",
        "phasetrace.executors.pmap:reject",
        None,
        "nothing to install: 'pmap' is rejected by design; use 'loky', and jax.vmap with "
        "phasetrace.jax.record_traces_callback",
        (),
        rejected=True,
    ),
    StrategyEntry(
        "sequential",
        "phasetrace.executors.sequential:SequentialExecutor",
        None,
        _NOTHING_TO_INSTALL,
    ),
    StrategyEntry("spawn", "phasetrace.executors.spawn:SpawnExecutor", None, _NOTHING_TO_INSTALL),
)

_lock = threading.RLock()
_entries: dict[str, StrategyEntry] = {e.name: e for e in _BUILTINS}
_loaded: dict[str, Factory] = {}  # name -> imported factory
_entry_points_scanned = False


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # a thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def builtin_entries() -> tuple[StrategyEntry, ...]:
    """The built-in entries, in the order they are declared (alphabetical).

    Examples
    --------
    >>> [e.name for e in builtin_entries()][:3]
    ['auto', 'dask', 'joblib']
    """
    return _BUILTINS


def register_strategy(
    name: str,
    factory: str | Factory,
    *,
    replace: bool = False,
    extra: str | None = None,
    hint: str | None = None,
    requires: tuple[str, ...] = (),
) -> None:
    """Register an executor strategy under ``name``.

    Parameters
    ----------
    name : str
        The name users pass as ``strategy=``.
    factory : str or callable
        ``factory(n_workers=..., **options) -> Executor``, or its dotted path
        ``"package.module:attribute"`` to import on first use.
    replace : bool
        Replace a *different* entry of the same name. Registering the same entry again
        is a no-op either way.
    extra : str, optional
        The ``phasetrace[extra]`` that installs what it needs.
    hint : str, optional
        What to install when it is unavailable; by default built from ``extra``.
    requires : tuple of str
        Top-level modules it needs (checked with ``find_spec``, not imported).

    Raises
    ------
    StrategyError
        When ``name`` is taken by a different entry and ``replace`` is False, or when the
        arguments are malformed.

    Examples
    --------
    >>> register_strategy("my-seq", "phasetrace.executors.sequential:SequentialExecutor")
    >>> register_strategy("my-seq", "phasetrace.executors.sequential:SequentialExecutor")
    >>> unregister_strategy("my-seq")
    """
    if not isinstance(name, str) or not name:
        raise StrategyError(f"a strategy name must be a non-empty string, got {name!r}")
    if isinstance(factory, str):
        if ":" not in factory:
            raise StrategyError(
                f"factory path {factory!r} must look like 'package.module:attribute'"
            )
    elif not callable(factory):
        raise StrategyError(f"factory must be callable or a dotted path, got {factory!r}")
    if hint is None:
        hint = f'pip install "phasetrace[{extra}]"' if extra else "see the strategy's package"
    entry = StrategyEntry(name, factory, extra, hint, tuple(requires))
    with _lock:
        current = _entries.get(name)
        if current == entry:
            return
        if current is not None and not replace:
            raise StrategyError(
                f"strategy {name!r} is already registered to {_describe(current.factory)}; "
                "pass replace=True to replace it"
            )
        _entries[name] = entry
        _loaded.pop(name, None)


def unregister_strategy(name: str) -> None:
    """Remove a strategy (a built-in one comes back on :func:`reset_registry`).

    Raises
    ------
    StrategyError
        When ``name`` is not registered.

    Examples
    --------
    >>> register_strategy("tmp", "phasetrace.executors.sequential:SequentialExecutor")
    >>> unregister_strategy("tmp")
    >>> "tmp" in known_strategies()
    False
    """
    with _lock:
        if name not in _entries:
            raise StrategyError(f"strategy {name!r} is not registered")
        del _entries[name]
        _loaded.pop(name, None)


def reset_registry() -> None:
    """Restore the built-in table (drops every registration made since import).

    Examples
    --------
    >>> reset_registry()
    >>> known_strategies()[:2]
    ['auto', 'dask']
    """
    global _entry_points_scanned
    with _lock:
        _entries.clear()
        _entries.update({e.name: e for e in _BUILTINS})
        _loaded.clear()
        _entry_points_scanned = False


def known_strategies() -> list[str]:
    """Sorted names of the registered strategies (entry points included).

    Examples
    --------
    >>> "sequential" in known_strategies()
    True
    """
    _scan_entry_points()
    with _lock:
        return sorted(_entries)


def _describe(factory: str | Factory) -> str:
    if isinstance(factory, str):
        return repr(factory)
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"


def _scan_entry_points() -> None:
    global _entry_points_scanned
    if _entry_points_scanned:
        return
    with _lock:
        if _entry_points_scanned:
            return
        _entry_points_scanned = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _entries:
                continue  # a plugin never shadows a built-in or an explicit registration
            dist = getattr(getattr(ep, "dist", None), "name", None) or "its package"
            _entries[ep.name] = StrategyEntry(
                ep.name, ep.value, None, f"provided by {dist}; reinstall {dist}"
            )


def _entry(name: str) -> StrategyEntry:
    if not isinstance(name, str):
        raise StrategyError(f"strategy must be a name (str), got {type(name).__name__} {name!r}")
    with _lock:
        entry = _entries.get(name)
    if entry is None:
        _scan_entry_points()
        with _lock:
            entry = _entries.get(name)
    if entry is None:
        raise StrategyError(
            f"unknown strategy {name!r}; known strategies: {', '.join(known_strategies())}"
        )
    return entry


def _missing_requirement(entry: StrategyEntry) -> str | None:
    """Why ``entry`` cannot load, judged without importing it; None if it looks loadable."""
    missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"strategy {entry.name!r} needs {', '.join(missing)}, not installed: {entry.hint}"
    if isinstance(entry.factory, str):
        module = entry.factory.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return (
                f"strategy {entry.name!r} is provided by module {module}, which is not "
                f"installed: {entry.hint}"
            )
    return None


def _load(entry: StrategyEntry) -> Factory:
    with _lock:
        factory = _loaded.get(entry.name)
    if factory is not None:
        return factory
    if not isinstance(entry.factory, str):
        factory = entry.factory
    else:
        reason = _missing_requirement(entry)
        if reason is not None:
            raise StrategyUnavailableError(reason)
        module_name, _, attr = entry.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise StrategyUnavailableError(
                f"strategy {entry.name!r} cannot be loaded ({type(exc).__name__}: {exc}): "
                f"{entry.hint}"
            ) from exc
        try:
            factory = module
            for part in attr.split("."):
                factory = getattr(factory, part)
        except AttributeError as exc:
            raise StrategyError(
                f"strategy {entry.name!r}: {module_name} has no attribute {attr!r}"
            ) from exc
        if not callable(factory):
            raise StrategyError(f"strategy {entry.name!r}: {entry.factory} is not callable")
    with _lock:
        _loaded[entry.name] = factory
    return factory


def validate_strategy(name: str) -> None:
    """Check that ``name`` could be used, without starting any process.

    Unknown names, ``pmap``, and strategies whose dependencies are missing are errors.
    Used by ``configure()`` and ``config()`` to fail before any work starts.

    Raises
    ------
    StrategyError
        Unknown name (the message lists the known ones).
    StrategyRejectedError
        ``pmap``.
    StrategyUnavailableError
        A dependency is missing (the message names the extra to install).

    Examples
    --------
    >>> validate_strategy("sequential")
    """
    entry = _entry(name)
    if entry.rejected:
        _load(entry)(n_workers=None)  # the factory of a rejected entry raises the reason
        raise StrategyRejectedError(f"strategy {name!r} is rejected")  # pragma: no cover
    reason = _missing_requirement(entry)
    if reason is not None:
        raise StrategyUnavailableError(reason)


def get_strategy_factory(name: str) -> Factory:
    """Import (once) and return the factory registered under ``name``.

    Raises
    ------
    StrategyError, StrategyUnavailableError, StrategyRejectedError
        As for :func:`validate_strategy`.

    Examples
    --------
    >>> get_strategy_factory("sequential").__name__
    'SequentialExecutor'
    """
    entry = _entry(name)
    factory = _load(entry)
    if entry.rejected:
        factory(n_workers=None)
    return factory


def get_executor(name: Any, n_workers: int | None = None, **options: Any) -> Executor:
    """Build a ready executor of strategy ``name``, or adopt an executor you have.

    Parameters
    ----------
    name : str or concurrent.futures.Executor
        A registered strategy (see :func:`known_strategies`), or an executor object: a
        phasetrace executor is returned as it is, any other object with ``submit`` (the
        standard library's pools, loky's reusable executor, a Dask client's
        ``get_executor()``, mpi4py's ``MPIPoolExecutor``) is wrapped in
        :class:`~phasetrace.executors.adopted.AdoptedExecutor`, which never shuts it down.
    n_workers : int or None
        Worker count (see :func:`~phasetrace.executors.base.resolve_n_workers`); None is
        the strategy's default.
    **options
        Strategy options (``idle_timeout`` for the pools, ``address`` for dask, ...).

    Returns
    -------
    Executor
        Use it as a context manager, or call ``shutdown()``.

    Raises
    ------
    StrategyError
        Unknown name (lists the known ones), bad ``n_workers``, or an option the
        strategy does not take.
    StrategyUnavailableError
        A needed dependency is missing (names the extra to install).
    StrategyRejectedError
        ``pmap``.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> with get_executor("sequential") as ex:
    ...     ex.map_items(abs, work_items([-1, -2]))
    [1, 2]
    """
    if isinstance(name, Executor):
        return name
    if not isinstance(name, str):
        from phasetrace.executors.adopted import AdoptedExecutor

        return AdoptedExecutor(name, n_workers, **options)
    factory = get_strategy_factory(name)
    resolve_n_workers(n_workers)  # fail on a bad count before anything is built
    accepted = accepted_options(name)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise StrategyError(
            f"strategy {name!r} does not accept the option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'no options'}"
        )
    return factory(n_workers=n_workers, **options)


def accepted_options(name: str) -> set[str] | None:
    """Option names strategy ``name``'s factory takes (None: it takes any keyword).

    The one place that reads factories' signatures (``get_executor`` and ``configure``
    check options with it).

    Examples
    --------
    >>> sorted(accepted_options("spawn"))
    ['chunks_per_worker', 'idle_timeout', 'min_chunk_seconds']
    """
    factory = get_strategy_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a C callable: nothing to check against
        return None
    names = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        delegate = getattr(factory, "forwards_options_to", None)
        if delegate is None:
            return None
        more = accepted_options(delegate)
        return None if more is None else names | more
    return names - {"self", "n_workers"}


def available_strategies() -> list[StrategyInfo]:
    """Report every registered strategy, sorted by name, without starting any process.

    A strategy whose dependencies are present has its module imported to read its
    capability flags; nothing is started.

    Returns
    -------
    list of StrategyInfo

    Examples
    --------
    >>> [s.name for s in available_strategies()][:2]
    ['auto', 'dask']
    """
    from phasetrace.executors.pmap import SHORT_REASON

    infos = []
    for name in known_strategies():
        entry = _entries[name]
        if entry.rejected:
            infos.append(StrategyInfo(name, False, SHORT_REASON, None, None))
            continue
        try:
            factory = _load(entry)
        except StrategyError as exc:
            infos.append(StrategyInfo(name, False, str(exc), None, None))
            continue
        in_process = getattr(factory, "in_process", None)
        default = getattr(factory, "default_n_workers", None)
        n = resolve_n_workers(default) if default is not None else available_cpus()
        if not isinstance(factory, type):  # a plain factory function: flags unknown
            n = n if default is not None else None
        infos.append(StrategyInfo(name, True, "", in_process, n))
    return infos
