"""The chunk wire format, parent side: packing work, decoding outcomes, naming failures.

One module for every strategy that sends work to other processes (``loky``, ``spawn``,
``joblib``, ``dask``, adopted executors). A chunk is the pickle of
``(fn, star, [(key, payload), ...], parent pid)``, made here, so a function or payload
that cannot be pickled is reported before anything is dispatched, naming the item. The
worker (:func:`phasetrace.executors._worker.run_pickled_chunk`) returns
``(CHUNK_OK, outcomes)`` with every result pickled on its own, or ``CHUNK_LOAD_FAILED``.

An exception raised by a unit comes back as itself (the same type, pickled without its
traceback), with the worker's formatted traceback as ``__cause__`` and the unit's key in a
note (PEP 678), as CPython's and loky's process pools do: ``except ValueError`` keeps
working. An exception that cannot travel becomes
:class:`~phasetrace.errors.UnitFailedError` with its type name and message.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from phasetrace.errors import SerializationError, UnitFailedError
from phasetrace.executors import _worker


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of the re-raised exception, like CPython's
    ``concurrent.futures.process._RemoteTraceback``: Python prints it above the caller's
    traceback under "The above exception was the direct cause of ...".
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def unit_note(key: str, where: str) -> str:
    """The note added to an exception raised by a unit."""
    return f"phasetrace: raised by work unit {key} ({where})"


def with_unit_note(exc: BaseException, key: str, where: str) -> BaseException:
    """``exc`` with the unit's note added (once)."""
    note = unit_note(key, where)
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc


def pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def choose_dumps(fn: Callable[..., Any], by_value: bool) -> Callable[[Any], bytes]:
    """Plain pickle when ``fn`` pickles by reference; with ``by_value``, cloudpickle for
    functions defined in ``__main__``, lambdas and closures.

    Examples
    --------
    >>> choose_dumps(abs, by_value=True) is pickle_dumps
    True
    """
    if not by_value:
        return pickle_dumps
    if getattr(fn, "__module__", None) != "__main__":
        try:
            pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        else:
            return pickle_dumps
    import cloudpickle

    return cloudpickle.dumps


def pack_chunk(
    fn: Callable[..., Any],
    chunk: Sequence[Any],
    *,
    star: bool,
    dumps: Callable[[Any], bytes],
    strategy: str,
    by_value: bool,
    watch: bool = True,
) -> bytes:
    """Pickle one chunk of work items (objects with ``key``, ``index`` and ``payload``).

    Raises
    ------
    SerializationError
        When ``fn`` or a payload cannot be pickled; the message names which and how to
        fix it.
    """
    parent = os.getpid() if watch else None
    try:
        return dumps((fn, star, [(it.key, it.payload) for it in chunk], parent))
    except Exception as exc:
        raise _diagnose(fn, chunk, exc, dumps, strategy, by_value) from exc


def _diagnose(fn, chunk, exc, dumps, strategy: str, by_value: bool) -> SerializationError:
    try:
        dumps(fn)
    except Exception as fn_exc:
        where = "a module" if by_value else "an importable module"
        extra = (
            "" if by_value else "; or use strategy 'loky', which also ships lambdas and closures"
        )
        return SerializationError(
            f"fn {getattr(fn, '__qualname__', fn)!r} cannot be pickled for {strategy!r} "
            f"workers ({type(fn_exc).__name__}: {fn_exc}); define it with def at the top "
            f"level of {where} and pass it by name{extra}",
            what="fn",
        )
    for it in chunk:
        try:
            dumps(it.payload)
        except Exception as item_exc:
            return SerializationError(
                f"the payload of item {it.index} (key {it.key}) cannot be pickled "
                f"({type(item_exc).__name__}: {item_exc}); payloads must be plain data such "
                "as bytes, numbers, strings, tuples or numpy arrays",
                what="item",
                key=it.key,
            )
    return SerializationError(
        f"a chunk of work cannot be pickled ({type(exc).__name__}: {exc})", what="chunk"
    )


def decode_outcomes(data: bytes, items: Sequence[Any], where: str) -> list[tuple[bool, Any]]:
    """Decode what :func:`~phasetrace.executors._worker.run_pickled_chunk` returned.

    Returns, per item, ``(True, result)`` or ``(False, error)``: the exception to raise
    for it (the unit's own exception with the worker traceback as cause and a note, or a
    :class:`~phasetrace.errors.SerializationError`). ``where`` names the strategy (and
    worker) in notes.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> from phasetrace.executors._worker import run_pickled_chunk
    >>> blob = pickle.dumps((abs, False, [("a", -1), ("b", "x")], None))
    >>> [(ok, type(v).__name__) for ok, v in decode_outcomes(
    ...     run_pickled_chunk(blob), work_items([-1, "x"]), "test")]
    [(True, 'int'), (False, 'TypeError')]
    """
    status, *rest = pickle.loads(data)
    if status == _worker.CHUNK_LOAD_FAILED:
        exc_type, message, tb = rest
        keys = ", ".join(it.key for it in items[:3]) + (", …" if len(items) > 3 else "")
        err = SerializationError(
            f"a worker could not unpickle the work of units {keys} ({exc_type}: {message}); "
            "the function and any classes in payloads must be importable on the workers "
            "(installed there, and defined at the top level of a module or of the main "
            "script: not under `if __name__ == '__main__':`, nor in a notebook)",
            what="chunk",
            key=items[0].key,
        )
        err.__cause__ = RemoteTraceback(tb)
        return [(False, err)] * len(items)
    (outcomes,) = rest
    return [_decode(item, outcome, where) for item, outcome in zip(items, outcomes, strict=True)]


def _decode(item: Any, outcome: tuple, where: str) -> tuple[bool, Any]:
    if outcome[0] == _worker.OK:
        try:
            return True, pickle.loads(outcome[1])
        except Exception as exc:
            err = SerializationError(
                f"the result of unit {item.key} cannot be unpickled here "
                f"({type(exc).__name__}: {exc}); work functions must return plain data "
                "whose types this process can import",
                what="result",
                key=item.key,
            )
            return False, err
    code, exc_type, message, tb, blob = outcome
    if code == _worker.UNPICKLABLE_RESULT:
        err: BaseException = SerializationError(
            f"the result of unit {item.key} cannot be pickled to send it back "
            f"({exc_type}: {message}); work functions must return plain data",
            what="result",
            key=item.key,
        )
    else:
        err = _rebuild(blob) or UnitFailedError(item.key, exc_type, message, tb)
        with_unit_note(err, item.key, where)
    err.__cause__ = RemoteTraceback(tb)
    return False, err


def _rebuild(blob: bytes | None) -> BaseException | None:
    if blob is None:
        return None
    try:
        exc = pickle.loads(blob)
    except Exception:  # its class is not importable here, or its pickle is broken
        return None
    return exc if isinstance(exc, BaseException) else None
