"""The ``phasetrace`` command: record traces, evaluate moments, inspect strategies and cache.

Subcommands (``phasetrace COMMAND --help`` for each)::

    phasetrace trace MODEL [-o trace.npz] [--strategy S] [-j N] [--no-cache] [--progress]
    phasetrace moments TRACE --theta 1,0.5 [-k 3] [--rewards FILE]
    phasetrace moments TRACE --thetas thetas.csv [-k 3] > moments.csv
    phasetrace states TRACE
    phasetrace strategies
    phasetrace cache info | clear | prune [--max-size 1G] | verify [--recompute N]
    phasetrace bench [--quick] [--out DIR]

MODEL is a built-in model with ``key=value`` arguments (``two_island:n=50``,
``kingman:n=50,state_space=lineages``, ``random_graph:n_vertices=200,n_sccs=20,seed=1``),
a JSON graph file written by :meth:`phasetrace.Graph.to_json`, or
``path/to/file.py:function`` naming a function that takes no arguments and returns a
:class:`phasetrace.Graph` (the file is imported to get it, so its top-level code runs:
give only files you trust; a function that is not defined there is refused before
anything runs). A list argument is written in brackets:
``'structured_coalescent:samples=[10,10]'``.

Errors are printed to stderr as one line, ``phasetrace: error: ...``, and the exit
status is 1 (2 for a command line that does not parse); ``--debug`` shows the
traceback instead, and DEBUG logging.
"""

from __future__ import annotations

import argparse
import array
import ast
import contextlib
import csv
import importlib.util
import inspect
import itertools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import phasetrace as pt

__all__ = [
    "CLIError",
    "build_parser",
    "format_size",
    "load_model",
    "main",
    "parse_size",
    "parse_theta",
    "read_rewards",
    "read_thetas",
]


class CLIError(Exception):
    """A problem with the command line or an input file; its message says what to fix."""


# -- sizes ------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Parse a size such as ``1G``, ``500M``, ``1.5GiB``, ``64k`` or ``1024`` into bytes.

    Suffixes are powers of 1024 (``K`` = 1024 bytes); ``B`` or ``iB`` may follow them.

    Raises
    ------
    CLIError
        When ``text`` is not a size.

    Examples
    --------
    >>> parse_size("1G"), parse_size("1.5k"), parse_size("200MB"), parse_size("0")
    (1073741824, 1536, 209715200, 0)
    >>> parse_size("lots")
    Traceback (most recent call last):
    ...
    phasetrace.cli.CLIError: size 'lots' not understood; use a number of bytes with ...
    """
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise CLIError(
            f"size {text!r} not understood; use a number of bytes with an optional K, M, G "
            "or T suffix (powers of 1024), e.g. 500M or 1G"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    """Format a byte count with a binary suffix.

    Examples
    --------
    >>> format_size(512), format_size(1536), format_size(3 * 1024**3)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- models -----------------------------------------------------------------------------------


def _builtin_models() -> dict[str, Callable[..., pt.Graph]]:
    """The functions of :mod:`phasetrace.models` that build a graph (not the helpers
    beside them, such as ``structured_parameters``)."""
    out = {}
    for name in pt.models.__all__:
        fn = getattr(pt.models, name)
        if inspect.signature(fn).return_annotation in ("Graph", pt.Graph):
            out[name] = fn
    return out


def _is_sequence(param: inspect.Parameter) -> bool:
    return any(word in str(param.annotation) for word in ("Sequence", "list", "tuple"))


def _example_value(param: inspect.Parameter) -> str:
    if _is_sequence(param):
        return "[10,10]"
    return {int: "20", float: "0.5", bool: "true"}.get(_expected_type(param), "x")


def _example(name: str, fn: Callable[..., Any]) -> str:
    """A spec of model ``name`` that works: its required arguments with example values."""
    required = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
    args = ",".join(f"{p.name}={_example_value(p)}" for p in required)
    return f"{name}:{args}" if args else name


def _split_args(text: str) -> list[str]:
    """``a=1,b=[2,3]`` → ``["a=1", "b=[2,3]"]``: commas inside brackets stay."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_value(text: str) -> Any:
    """``20`` → int, ``0.5`` → float, ``true``/``false`` → bool, ``[10,10]`` → a list of
    those, anything else stays text."""
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_parse_value(v.strip()) for v in _split_args(inner)] if inner else []
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _parse_model_args(name: str, text: str, fn: Callable[..., Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in _split_args(text))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise CLIError(
                f"model argument {part!r} of {name!r} is not key=value; write e.g. "
                f"{_example(name, fn)} (several arguments are separated by commas)"
            )
        kwargs[key.strip()] = _parse_value(value.strip())
    return kwargs


def _expected_type(param: inspect.Parameter) -> type | None:
    """int, float, str or bool from the annotation (possibly a string) or the default."""
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    ann = param.annotation
    if isinstance(ann, str) and ann in kinds:
        return kinds[ann]
    if ann in kinds.values():
        return ann
    if param.default is not param.empty and type(param.default) in kinds.values():
        return type(param.default)
    return None


def _coerce(name: str, param: inspect.Parameter, value: Any) -> Any:
    if _is_sequence(param):
        if not isinstance(value, list):
            raise CLIError(
                f"model {name!r}: {param.name} is a list, got {value!r} (e.g. "
                f"'{name}:{param.name}=[10,10]', quoted for the shell)"
            )
        return value
    kind = _expected_type(param)
    if (
        kind is None
        or (isinstance(value, kind) and not isinstance(value, bool))
        or (kind is bool and isinstance(value, bool))
    ):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str:
        return str(value)
    article = "an" if kind is int else "a"
    raise CLIError(
        f"model {name!r}: {param.name} must be {article} {kind.__name__}, got {value!r} "
        f"(e.g. {name}:{param.name}={ {int: 20, float: 0.5, bool: 'true'}.get(kind, 'x') })"
    )


def _call_builtin(name: str, fn: Callable[..., pt.Graph], kwargs: dict[str, Any]) -> pt.Graph:
    params = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise CLIError(
            f"model {name!r} has no argument {unknown[0]!r}; its arguments are: "
            + ", ".join(params)
        )
    required = [p for p in params.values() if p.default is p.empty and p.name not in kwargs]
    if required:
        raise CLIError(f"model {name!r} needs {required[0].name}=..., e.g. {_example(name, fn)}")
    kwargs = {k: _coerce(name, params[k], v) for k, v in kwargs.items()}
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        graph = fn(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CLIError(f"model {name}({given}): {exc}") from exc
    if not isinstance(graph, pt.Graph):
        raise CLIError(
            f"model {name}({given}) returned {type(graph).__name__}, not a phasetrace.Graph; "
            "it is not a model to record"
        )
    return graph


def _is_file(path: Path, exists: bool = False) -> bool:
    """``path.is_file()`` (or ``.exists()``); a path the system refuses (too long, ...)
    is a CLIError, not an OSError."""
    try:
        return path.exists() if exists else path.is_file()
    except OSError as exc:
        raise CLIError(f"model file {str(path)!r}: {exc.strerror or exc}") from None


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at its top level (in ``if``/``try``/``with`` blocks too), or
    None when it may bind others that cannot be seen without running it (``import *``,
    ``globals()``, ``exec``)."""
    names: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody"):
                body.extend(getattr(node, field, []))
            body.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name) and sub.id in ("globals", "exec", "setattr", "vars"):
            return None
        if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
            names.add(sub.target.id)
    return names


def _load_python_model(path: Path, func: str) -> pt.Graph:
    if not _is_file(path):
        raise CLIError(f"model file {str(path)!r} does not exist")
    # Running the file runs its top-level code: say so, and first make sure that the
    # function is there, so a misspelt name runs nothing.
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise CLIError(f"{path}: cannot be read as Python ({exc}); nothing was run") from exc
    names = _top_level_names(tree)
    if not func.isidentifier() or (names is not None and func not in names):
        functions = sorted(
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        )
        listed = ", ".join(functions) if functions else "none"
        raise CLIError(
            f"{path} has no function {func!r} at its top level (its functions: {listed}); "
            "nothing was run"
        )
    module_name = f"_phasetrace_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # The model file may import its neighbours, as it would when run as a script.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CLIError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise CLIError(f"{path} has no function {func!r}")
    try:
        graph = fn()
    except Exception as exc:
        raise CLIError(f"{path}:{func}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(graph, pt.Graph):
        raise CLIError(f"{path}:{func}() returned {type(graph).__name__}, not a phasetrace.Graph")
    return graph


def _load_json_model(path: Path) -> pt.Graph:
    from phasetrace import graph as graph_module

    limit = graph_module.MAX_JSON_BYTES
    try:
        size = path.stat().st_size
        if size > limit:  # refused unread
            raise CLIError(
                f"{path}: {size} bytes, above the limit of {limit} for a graph document "
                "(phasetrace.graph.MAX_JSON_BYTES)"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"model file {str(path)!r} is not UTF-8 text (a JSON graph)") from exc
    try:
        return pt.Graph.from_json(text)
    except pt.InvalidGraphError as exc:
        raise CLIError(f"{path}: {exc}") from exc


def load_model(spec: str) -> pt.Graph:
    """Build the graph named by a MODEL argument of ``phasetrace trace``.

    Parameters
    ----------
    spec : str
        ``name[:key=value,...]`` for a built-in model (:mod:`phasetrace.models`), the
        path of a JSON graph file (:meth:`phasetrace.Graph.to_json`), or
        ``path/to/file.py:function`` (the function takes no arguments and returns a
        :class:`phasetrace.Graph`).

    Returns
    -------
    Graph

    Raises
    ------
    CLIError
        Unknown model or argument, missing file, or a function that does not return a
        graph; the message says what to write instead.

    Examples
    --------
    >>> len(load_model("two_island:n=5")), len(load_model("kingman:n=4,state_space=lineages"))
    (21, 5)
    >>> load_model("kingman:m=3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    phasetrace.cli.CLIError: model 'kingman' has no argument 'm'; its arguments are: n, ...
    """
    path_part, sep, func = spec.rpartition(":")
    if sep and path_part.endswith(".py"):
        return _load_python_model(Path(path_part), func)
    if spec.endswith(".py"):
        raise CLIError(f"name the function that builds the graph: {spec}:function_name")
    path = Path(spec)
    if spec.endswith(".json") or _is_file(path):
        if not _is_file(path, exists=True):
            raise CLIError(f"model file {spec!r} does not exist")
        return _load_json_model(path)
    name, _, args = spec.partition(":")
    models = _builtin_models()
    if name in models:
        return _call_builtin(name, models[name], _parse_model_args(name, args, models[name]))
    if os.sep in spec or "/" in spec:
        raise CLIError(f"model file {spec!r} does not exist")
    raise CLIError(
        f"unknown model {name!r}; built-in models: {', '.join(models)} (e.g. two_island:n=50), "
        "or give a JSON graph file or path/to/file.py:function"
    )


def _units_text(stats) -> str:
    if stats.traces_from_cache:
        return "none needed: the whole trace came from the cache"
    return (
        f"{stats.units} ({stats.unique} distinct): {stats.recorded} recorded, "
        f"{stats.from_memory} from memory, {stats.from_disk} from disk cache"
    )


def _scc_summary(graph: pt.Graph) -> tuple[int, int]:
    """(number of SCCs of non-absorbing vertices, the start's included; the largest)."""
    from phasetrace.scc import decompose

    sizes = [u.n_internal for u in decompose(graph).units]
    return len(sizes), max(sizes, default=0)


# -- θ and rewards ------------------------------------------------------------------------------


def _floats(fields: Sequence[str], where: str) -> list[float]:
    out = []
    for f in fields:
        try:
            out.append(float(f))
        except ValueError:
            raise CLIError(f"{where}: {f.strip()!r} is not a number") from None
    return out


def parse_theta(text: str, n_params: int) -> np.ndarray:
    """Parse ``--theta 1,0.5`` into a vector of ``n_params`` numbers.

    Examples
    --------
    >>> parse_theta("1, 0.5", 2).tolist()
    [1.0, 0.5]
    >>> parse_theta("1", 2)
    Traceback (most recent call last):
    ...
    phasetrace.cli.CLIError: --theta has 1 value(s) but the trace has 2 parameter(s); ...
    """
    fields = [f for f in text.split(",") if f.strip()]
    values = _floats(fields, f"--theta {text!r}")
    if len(values) != n_params:
        example = ",".join(["1"] * n_params) if n_params else "''"
        raise CLIError(
            f"--theta has {len(values)} value(s) but the trace has {n_params} parameter(s); "
            f"give them comma-separated, e.g. --theta {example}"
        )
    return np.array(values, dtype=np.float64)


def _lines(text: str | Iterable[str]) -> Iterator[str]:
    """The lines of ``text`` one at a time (a file object is read as it goes): a CSV of
    10⁷ rows is never held as a list of lines."""
    if not isinstance(text, str):
        yield from text
        return
    pos, n = 0, len(text)
    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end
        yield text[pos:end].removesuffix("\r")
        pos = end + 1


def _data_rows(text: str | Iterable[str], name: str) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with their line numbers; blank lines and ``#`` comments skipped."""
    reader = csv.reader(_lines(text))
    try:
        for row in reader:
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            yield reader.line_num, [f.strip() for f in row]
    except csv.Error as exc:
        raise CLIError(f"{name}: line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"{name}: line {reader.line_num + 1} is not UTF-8 text ({exc})") from None


def _state_entries(fields: Sequence[str], where: str) -> list[int] | None:
    """State entries of a rewards row as ints (``3`` or ``3.0``; never truncated), or
    ``None`` when one is outside the int64 range (no vertex can have that state)."""
    out = []
    for f in fields:
        try:
            value = int(f)
        except ValueError:
            try:
                x = float(f)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and x.is_integer()):
                raise CLIError(f"{where}: state entry {f!r} is not an integer") from None
            value = int(x)
        out.append(value)
    if any(not -(2**63) <= v < 2**63 for v in out):
        return None
    return out


#: A field that starts like a number (``1x``, ``-2.5e``, ``.5?``) is a number written
#: wrongly, not a column name.
_NUMBER_START = re.compile(r"[-+]?(?:\d|\.\d)")


def _is_names(fields: Sequence[str]) -> bool:
    """Whether a first row is column names: none of its fields is a number, or starts
    like one."""
    for f in fields:
        if _NUMBER_START.match(f):
            return False
        try:
            float(f)
        except ValueError:
            continue
        return False
    return True


def _take_header(
    rows: Iterator[tuple[int, list[str]]],
    header: bool | None,
    name: str,
    notes: list[str] | None,
) -> tuple[tuple[int, list[str]] | None, tuple[int, list[str]] | None]:
    """``(header row or None, first data row or None)``: the first row is a header when
    ``header`` is True, or when it is None and every field of it is a name."""
    first = next(rows, None)
    if first is None or header is False:
        return None, first
    if header is None and not _is_names(first[1]):
        return None, first
    if notes is not None and header is None:
        notes.append(
            f"{name}: line {first[0]} read as a header (column names "
            f"{', '.join(first[1])}), since no field of it is a number; pass --header to "
            "say so"
        )
    return first, next(rows, None)


@contextlib.contextmanager
def _open_text(path: str, what: str) -> Iterator[Iterable[str]]:
    """The lines of a file (``-``: standard input), read as they are used."""
    if path == "-":
        yield sys.stdin
        return
    try:
        fh = open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise CLIError(f"{what} file {path!r} does not exist") from None
    except OSError as exc:
        raise CLIError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from None
    with fh:
        try:
            yield fh
        except OSError as exc:
            raise CLIError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from None


def read_thetas(
    text: str | Iterable[str],
    n_params: int,
    name: str = "thetas",
    *,
    header: bool | None = None,
    notes: list[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Parse a CSV of θ rows: one row per θ, ``n_params`` numbers each.

    The first row is column names when ``header`` is True, or when ``header`` is None
    and none of its fields is a number (``c,m``; then a note saying so goes to
    ``notes``); default names are ``theta_1``, …. A field that is not a number anywhere
    else is an error, never a dropped row. Blank lines and lines starting with ``#`` are
    skipped. ``text`` may be a file object: it is read row by row, and only the numbers
    are kept (8 bytes each).

    Returns
    -------
    (list of str, ndarray of shape (B, n_params))

    Examples
    --------
    >>> names, th = read_thetas("c,m\\n1,0.5\\n2,0.25\\n", 2)
    >>> names, th.tolist()
    (['c', 'm'], [[1.0, 0.5], [2.0, 0.25]])
    >>> read_thetas("1,0.5x\\n2,0.25\\n", 2)
    Traceback (most recent call last):
    ...
    phasetrace.cli.CLIError: thetas line 1: '0.5x' is not a number
    >>> read_thetas("1,0.5\\n2\\n", 2)
    Traceback (most recent call last):
    ...
    phasetrace.cli.CLIError: thetas line 2: 1 value(s), expected 2 (one per parameter)
    """
    rows = _data_rows(text, name)
    names = [f"theta_{i + 1}" for i in range(n_params)]
    head, first = _take_header(rows, header, name, notes)
    if head is not None:
        lineno, fields = head
        if len(fields) != n_params:
            raise CLIError(
                f"{name} line {lineno}: header has {len(fields)} column(s), expected {n_params}"
            )
        names = fields
    if first is None:
        raise CLIError(f"{name}: no θ rows found (one row of {n_params} numbers per θ)")
    values = array.array("d")
    for lineno, fields in itertools.chain([first], rows):
        if len(fields) != n_params:
            raise CLIError(
                f"{name} line {lineno}: {len(fields)} value(s), expected {n_params} "
                "(one per parameter)"
            )
        values.extend(_floats(fields, f"{name} line {lineno}"))
    return names, np.frombuffer(values, dtype=np.float64).reshape(-1, n_params)


def read_rewards(
    text: str | Iterable[str],
    trace: pt.Trace,
    name: str = "rewards",
    *,
    header: bool | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Parse a rewards file into a vector in the trace's vertex order.

    Two layouts are accepted (blank lines and ``#`` comments are skipped; the first row
    is a header when ``header`` is True, or when it is None and none of its fields is a
    number, and then a note goes to ``notes``):

    * one number per line, one line per vertex, in the order ``phasetrace states``
      prints (the trace's order);
    * CSV rows ``state_1,…,state_L,reward``: the state of a vertex, then its reward.
      Vertices not listed get reward 0.

    Examples
    --------
    >>> import phasetrace as pt
    >>> tr = pt.record_trace(pt.models.kingman(3, state_space="lineages"))
    >>> tr.states.ravel().tolist()
    [0, 3, 2, 1]
    >>> read_rewards("0\\n3\\n2\\n0\\n", tr).tolist()
    [0.0, 3.0, 2.0, 0.0]
    >>> read_rewards("k,reward\\n3,3\\n2,2\\n", tr).tolist()
    [0.0, 3.0, 2.0, 0.0]
    """
    all_rows = _data_rows(text, name)
    _, first = _take_header(all_rows, header, name, notes)
    rows = [] if first is None else [first, *all_rows]
    if not rows:
        raise CLIError(f"{name}: no reward values found")
    n, width = trace.n_vertices, trace.states.shape[1]
    widths = {len(f) for _, f in rows}
    if widths == {1}:
        values = [_floats(f, f"{name} line {ln}")[0] for ln, f in rows]
        if len(values) != n:
            raise CLIError(
                f"{name}: {len(values)} value(s), the trace has {n} vertices; give one per "
                "vertex in the order `phasetrace states TRACE` prints, or rows "
                "'state...,reward'"
            )
        return np.array(values)
    if widths != {width + 1}:
        raise CLIError(
            f"{name}: rows must have 1 value (a reward per vertex) or {width + 1} "
            f"(the {width} state entries, then the reward); found rows of {sorted(widths)}"
        )
    rewards = np.zeros(n)
    for lineno, fields in rows:
        where = f"{name} line {lineno}"
        state = _state_entries(fields[:-1], where)
        reward = _floats(fields[-1:], where)[0]
        try:
            if state is None:
                raise KeyError(fields[:-1])
            idx = trace.vertex_index(state)
        except KeyError:
            shown = state if state is not None else f"[{', '.join(fields[:-1])}]"
            raise CLIError(f"{where}: no vertex has state {shown}") from None
        rewards[idx] = reward
    return rewards


# -- subcommands ---------------------------------------------------------------------------------


def _cmd_trace(args: argparse.Namespace) -> int:
    if args.output:
        _output_path(args.output)  # a bad -o fails now, not after the recording
    t0 = time.perf_counter()
    graph = load_model(args.model)
    build_s = time.perf_counter() - t0
    n_sccs, largest = _scc_summary(graph)
    overrides: dict[str, Any] = {"progress": args.progress}
    if args.strategy is not None:
        overrides["strategy"] = args.strategy
    if args.jobs is not None:
        overrides["n_workers"] = args.jobs
    if args.no_cache:
        overrides["cache"] = False
    trace = pt.compute_trace(graph, **overrides)
    stats = pt.last_run_stats()
    summary = trace.summary()
    out = _save_trace(trace, args.output) if args.output else None
    ops = ", ".join(f"{k} {v}" for k, v in summary["ops_by_type"].items())
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in stats.seconds.items())
    workers = _workers_text(stats)
    lines = [
        ("model", f"{args.model} (built in {build_s:.3f} s)"),
        (
            "graph",
            f"{len(graph)} vertices, {graph.n_edges} edges, {graph.n_params} parameter(s); "
            f"{n_sccs} transient SCC(s), largest {largest} vertices",
        ),
        ("units", _units_text(stats)),
        (
            "SCCs",
            f"{stats.sccs_taped} taped (largest {stats.largest_taped}), "
            f"{stats.sccs_solved} solve block(s) (largest {stats.largest_solved})",
        ),
        ("strategy", f"{stats.strategy}, {workers}"),
        ("ops", f"{summary['ops']} ({ops}); x-program {summary['x_program']}"),
        ("time", stages),
        ("trace", f"{format_size(summary['bytes'])}, digest {trace.digest()[:16]}"),
        ("saved", str(out) if out else "not saved (use -o FILE.npz)"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _workers_text(stats: pt.RunStats) -> str:
    """How many workers recorded, in words (``auto→sequential`` ran in this process)."""
    from phasetrace.executors import available_cpus

    if stats.recorded == 0:
        return "nothing recorded"
    if stats.strategy.split("→")[-1] == "sequential":
        return "in this process"
    if stats.n_workers is not None:
        return f"n_workers {stats.n_workers}"
    return f"n_workers default (all {available_cpus()} CPUs)"


def _output_path(output: str) -> Path:
    """The file ``-o`` names, checked before any work is done."""
    # An existing directory is refused rather than written next to (``DIR`` -> ``DIR.npz``)
    # or into under a name we would have to invent.
    example = os.path.join(output, "trace.npz")
    if output.endswith(("/", os.sep)):
        raise CLIError(f"-o {output!r} names a directory; give a file name, e.g. {example}")
    if Path(output).is_dir():
        raise CLIError(f"-o {output!r} is a directory; give a file name, e.g. {example}")
    # np.savez appends .npz to a name without it; say the name actually written.
    path = Path(output if output.endswith(".npz") else output + ".npz")
    if path.is_dir():
        raise CLIError(f"-o {output!r}: {str(path)!r} is a directory; give another file name")
    return path


def _save_trace(trace: pt.Trace, output: str) -> Path:
    path = _output_path(output)
    try:
        trace.save(path)
    except OSError as exc:
        raise CLIError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _load_trace(path: str) -> pt.Trace:
    if not Path(path).is_file():
        raise CLIError(f"trace file {path!r} does not exist (write one with phasetrace trace -o)")
    return pt.Trace.load(path)


def _cmd_moments(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise CLIError(f"-k must be a positive integer, got {args.k}")
    trace = _load_trace(args.trace)
    rewards = None
    notes: list[str] = []
    header = True if args.header else None
    if args.rewards:
        with _open_text(args.rewards, "rewards") as lines:
            rewards = read_rewards(lines, trace, args.rewards, header=header, notes=notes)
    if args.theta is not None:
        _print_notes(notes)
        theta = parse_theta(args.theta, trace.n_params)
        _print_single(theta, trace.moments(theta, k=args.k, rewards=rewards), rewards is not None)
        return 0
    with _open_text(args.thetas, "thetas") as lines:
        names, thetas = read_thetas(lines, trace.n_params, args.thetas, header=header, notes=notes)
    _print_notes(notes)
    moments = trace.moments(thetas, k=args.k, rewards=rewards)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*names, *(f"moment_{j}" for j in range(1, args.k + 1))])
    for th, m in zip(thetas, moments, strict=True):
        writer.writerow([repr(float(x)) for x in (*th, *m)])
    return 0


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"phasetrace: note: {note}", file=sys.stderr)


def _print_single(theta: np.ndarray, moments: np.ndarray, rewarded: bool) -> None:
    var = "Y" if rewarded else "T"
    rows = [("theta", ", ".join(f"{x:g}" for x in theta))]
    for j, m in enumerate(moments, start=1):
        rows.append((f"E[{var}]" if j == 1 else f"E[{var}^{j}]", f"{m:.15g}"))
    if len(moments) >= 2:
        rows.append((f"Var[{var}]", f"{moments[1] - moments[0] ** 2:.15g}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _cmd_states(args: argparse.Namespace) -> int:
    trace = _load_trace(args.trace)
    kinds = {0: "start", 1: "transient", 2: "absorbing"}
    width = trace.states.shape[1]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["index", *(f"state_{i + 1}" for i in range(width)), "kind"])
    for i, (state, kind) in enumerate(zip(trace.states, trace.arrays["vertex_kind"], strict=True)):
        writer.writerow([i, *state.tolist(), kinds[int(kind)]])
    return 0


#: One line per built-in strategy for ``phasetrace strategies``.
_STRATEGY_NOTES = {
    "auto": "per call: in-process for small work, the loky pool when it pays (default)",
    "dask": "Dask distributed: your cluster (address=...) or a local one; start ~2 s",
    "joblib": "joblib.Parallel on the active joblib.parallel_config backend",
    "loky": "reusable local process pool (loky); start ~0.3-0.8 s, reused across calls",
    "pmap": "rejected by design: see strategies.md",
    "sequential": "in-process loop; the reference, no start cost",
    "spawn": "stdlib ProcessPoolExecutor, spawn start method; start ~0.5-0.9 s",
}


def _strategy_row(info: Any, current: str) -> tuple[str, str, str, str, str]:
    """Name (``*`` marks the configured default), status, where, workers, note."""
    name = ("*" if info.name == current else " ") + info.name
    note = _STRATEGY_NOTES.get(info.name, "")
    if not info.available:
        status = "rejected" if info.reason.startswith("rejected") else "unavailable"
        return name, status, "-", "-", note
    where = {True: "this process", False: "worker processes"}.get(
        info.in_process, "chosen per call"
    )
    workers = str(info.default_n_workers) if info.default_n_workers else "-"
    return name, "available", where, workers, note


def _cmd_strategies(args: argparse.Namespace) -> int:
    current = pt.get_settings().strategy
    infos = pt.available_strategies()
    rows = [("strategy", "status", "runs in", "workers", "")]
    rows += [_strategy_row(info, current) for info in infos]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        cells = [f"{c:<{w}}" for c, w in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, row[4]]).rstrip())
    print(
        f"\n* the configured default ({current!r}; set it with PHASETRACE_STRATEGY, "
        "pt.configure(strategy=...) or --strategy)"
    )
    print("workers: n_workers used when none is given (PHASETRACE_N_WORKERS, -j)")
    reasons = [(info.name, info.reason) for info in infos if not info.available]
    if reasons:
        print("\nwhy not:")
        for name, reason in reasons:
            print(f"  {name}: {reason}")
    return 0


def _disk_cache(args: argparse.Namespace):
    from phasetrace.cache import DiskCache, default_cache_dir

    directory = args.cache_dir or pt.get_settings().cache_dir or default_cache_dir()
    return DiskCache(directory)


def _cmd_cache(args: argparse.Namespace) -> int:
    if args.max_size and args.action != "prune":
        raise CLIError(f"--max-size applies to 'cache prune', not 'cache {args.action}'")
    if args.recompute is not None and args.action != "verify":
        raise CLIError(f"--recompute applies to 'cache verify', not 'cache {args.action}'")
    if args.recompute is not None and args.recompute < 0:
        raise CLIError(f"--recompute must be 0 (all entries) or more, got {args.recompute}")
    if args.recompute is None:
        args.recompute = 20
    max_bytes = parse_size(args.max_size) if args.max_size else None  # fail before any I/O
    cache = _disk_cache(args)
    before = cache.info()
    if args.action == "info":
        exists = "" if cache.directory.is_dir() else " (does not exist yet)"
        print(f"directory  {cache.directory}{exists}")
        print(f"entries    {before.entries}")
        print(
            f"size       {format_size(before.total_bytes)} "
            f"(pruned automatically above {format_size(before.max_bytes)})"
        )
        return 0
    if args.action == "verify":
        return _cmd_verify(cache, args.recompute)
    why = cache.not_a_cache()
    if why is not None:
        raise CLIError(f"{why}: nothing was removed (phasetrace removes only what it wrote)")
    if args.action == "clear":
        left = cache.clear()
    else:
        left = []
        cache.prune(max_bytes, left=left)
    after = cache.info()
    removed = before.entries - after.entries
    freed = before.total_bytes - after.total_bytes
    print(
        f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({format_size(freed)}) "
        f"from {cache.directory}; {after.entries} left ({format_size(after.total_bytes)})"
    )
    if left:
        for path, why in left[:20]:
            print(f"  still there: {path}: {why}", file=sys.stderr)
        path, why = left[0]
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise CLIError(f"could not remove {path}: {why}{more}")
    return 0


def _cmd_verify(cache, recompute: int) -> int:
    from phasetrace.verify import verify_cache

    report = verify_cache(cache.directory, sample=recompute or None)
    print(
        f"re-recorded {report.checked} of {report.entries} entries in {cache.directory}: "
        f"{report.verified} identical, {len(report.bad)} bad (deleted), "
        f"{report.unverifiable} without their input (older entries, left alone)"
    )
    for path, why in report.bad:
        print(f"  bad: {path}: {why}")
    return 0 if report.ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from phasetrace import bench

    return bench.run_from_args(args)


# -- parser -------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks (they hold examples)."""


def _subparser(sub, name: str, help: str, description: str, common) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description,
        parents=[common],
        formatter_class=_Formatter,
    )


def _add_trace(sub, common) -> None:
    p = _subparser(
        sub,
        "trace",
        "record the trace of a model",
        "Record a model's elimination trace (via the cache and the configured executor) and\n"
        "print a summary: vertices, SCCs, units recorded or cached, ops, time per stage.\n\n"
        "MODEL is one of:\n"
        "  two_island:n=50                           a built-in model with key=value arguments\n"
        "  kingman:n=50,state_space=lineages         (built-ins: "
        + ", ".join(_builtin_models())
        + ")\n"
        "  random_graph:n_vertices=200,n_sccs=20,seed=1\n"
        "  'structured_coalescent:samples=[10,10]'   a list argument, quoted for the shell\n"
        "  graph.json                                a graph written by Graph.to_json()\n"
        "  path/to/model.py:build                    a function returning a phasetrace.Graph;\n"
        "                                            the file is imported to get it, so its\n"
        "                                            top-level code runs: give only files you\n"
        "                                            trust\n\n"
        "example:\n  phasetrace trace two_island:n=50 -o two_island.npz --strategy loky -j 2",
        common,
    )
    p.add_argument("model", metavar="MODEL", help="the model (see above)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE.npz",
        help="save the trace in this file (.npz is added when missing; an existing "
        "directory is an error: name the file, e.g. DIR/model.npz)",
    )
    p.add_argument("--strategy", metavar="S", help="executor strategy (see: phasetrace strategies)")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="number of workers (n_workers)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only for long recordings on a terminal)",
    )
    p.set_defaults(handler=_cmd_trace)


def _add_moments(sub, common) -> None:
    p = _subparser(
        sub,
        "moments",
        "evaluate moments of a saved trace",
        "Evaluate E[T], E[T^2], ..., E[T^k] (or of the reward-weighted time Y) for one θ,\n"
        "or for every row of a CSV file (moments written as CSV to stdout).\n\n"
        "--thetas FILE.csv: one θ per row, comma-separated, '#' comments; '-' reads stdin.\n"
        "  Output columns: the θ columns, moment_1..moment_k.\n"
        "--rewards FILE: either one reward per line, one line per vertex in the order\n"
        "  `phasetrace states TRACE` prints, or CSV rows 'state_1,...,state_L,reward'\n"
        "  (vertices not listed get 0).\n"
        "Header rows: the first row of these files is taken as column names with --header,\n"
        "  or when none of its fields is a number (a note on stderr says so); a field that\n"
        "  is not a number anywhere else is an error.\n\n"
        "examples:\n"
        "  phasetrace moments two_island.npz --theta 1,0.5 -k 3\n"
        "  phasetrace moments two_island.npz --thetas thetas.csv -k 2 > moments.csv",
        common,
    )
    p.add_argument("trace", metavar="TRACE", help="a trace saved by phasetrace trace -o")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--theta", metavar="V1,V2", help="one parameter vector, comma-separated")
    which.add_argument("--thetas", metavar="FILE.csv", help="many parameter vectors, one a row")
    p.add_argument("-k", type=int, default=1, help="highest moment (default 1)")
    p.add_argument("--rewards", metavar="FILE", help="reward per vertex (see above)")
    p.add_argument(
        "--header",
        action="store_true",
        help="the first row of --thetas and --rewards files is column names",
    )
    p.set_defaults(handler=_cmd_moments)


def _add_states(sub, common) -> None:
    p = _subparser(
        sub,
        "states",
        "list a trace's vertex states (the order of a rewards file)",
        "Print the vertex states of a saved trace as CSV, in the trace's order: the order\n"
        "in which a one-value-per-line rewards file lists its rewards.",
        common,
    )
    p.add_argument("trace", metavar="TRACE")
    p.set_defaults(handler=_cmd_states)


def _add_strategies(sub, common) -> None:
    p = _subparser(
        sub,
        "strategies",
        "list executor strategies and whether they can run here",
        "List every registered executor strategy: whether it can run here, where its units\n"
        "run, its default worker count, and why not (missing extra, rejected).\n"
        "See strategies.md for measured costs and when to pick which.",
        common,
    )
    p.set_defaults(handler=_cmd_strategies)


def _add_cache(sub, common) -> None:
    p = _subparser(
        sub,
        "cache",
        "show, clear, prune or verify the on-disk trace cache",
        "The trace cache directory: PHASETRACE_CACHE_DIR, else $XDG_CACHE_HOME/phasetrace,\n"
        "else the platform's user cache directory (~/.cache/phasetrace on Linux).\n\n"
        "examples:\n"
        "  phasetrace cache info\n"
        "  phasetrace cache prune --max-size 500M   # least recently used entries go first\n"
        "  phasetrace cache clear\n"
        "  phasetrace cache verify --recompute 50   # re-record 50 entries, compare bit for bit",
        common,
    )
    p.add_argument("action", choices=("info", "clear", "prune", "verify"), help="what to do")
    p.add_argument(
        "--recompute",
        metavar="N",
        type=int,
        help="verify: re-record N randomly chosen entries and compare them bit for bit "
        "(default 20; 0 = all)",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="prune: keep at most this much, e.g. 500M or 1G (K/M/G/T = powers of 1024; "
        "default: the cache's bound, 2G)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="use this cache directory instead")
    p.set_defaults(handler=_cmd_cache)


def _add_bench(sub, common) -> None:
    from phasetrace import bench

    p = _subparser(
        sub,
        "bench",
        "compare the strategies on this machine",
        "Run every available strategy with 1 and 2 workers on many small graphs and on one\n"
        "large hierarchical model, measure overhead over raw loky, cold vs warm cache, and\n"
        "numpy vs JAX evaluation; print the tables (ratios first). A few minutes; --quick\n"
        "runs tiny workloads in under 30 s.",
        common,
    )
    bench.add_arguments(p)
    p.set_defaults(handler=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``phasetrace`` argument parser, with one subparser per command.

    Examples
    --------
    >>> args = build_parser().parse_args(["moments", "t.npz", "--theta", "1,0.5", "-k", "2"])
    >>> args.theta, args.k, args.debug
    ('1,0.5', 2, False)
    """
    # --debug is accepted before and after the command; SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser = argparse.ArgumentParser(
        prog="phasetrace",
        description="Exact moments of phase-type models from recorded elimination traces.",
        epilog="Run 'phasetrace COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"phasetrace {pt.__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_trace, _add_moments, _add_states, _add_strategies, _add_cache, _add_bench):
        add(sub, common)
    return parser


# -- entry point ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CLIError | pt.PhasetraceError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
    return " ".join(text.split())


@contextlib.contextmanager
def _logging_to_stderr(debug: bool):
    """Show phasetrace's own log records on stderr (DEBUG with ``--debug``) for the run.

    Other libraries' loggers are left alone, and everything is put back afterwards, so
    calling :func:`main` in-process changes no logging configuration.
    """
    logger = logging.getLogger("phasetrace")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phasetrace: %(levelname)s: %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False  # not twice, when the root logger has a handler too
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    """Run the ``phasetrace`` command; return the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on an error (one line on stderr), 130 when interrupted;
        argparse exits with 2 on a command line it cannot parse.

    Examples
    --------
    >>> main(["cache", "prune", "--max-size", "lots"])
    1
    """
    args = build_parser().parse_args(argv)
    try:
        with _logging_to_stderr(args.debug):
            status = int(args.handler(args) or 0)
            sys.stdout.flush()  # a closed pipe shows up here, where it is handled below
        return status
    except BrokenPipeError:
        # The reader went away (``phasetrace states t.npz | head``): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("phasetrace: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"phasetrace: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
