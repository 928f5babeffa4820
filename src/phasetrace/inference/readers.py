"""Observed spectra from where users have them: tskit tree sequences and moments/dadi files.

- :func:`observed_sfs`: the site frequency spectrum of a tree sequence with mutations
  (tskit's ``allele_frequency_spectrum`` in site mode, polarised by the ancestral state,
  as counts), optionally per window for a block bootstrap (:func:`block_bootstrap`).
- :func:`read_spectrum` / :func:`write_spectrum`: the ``.fs`` text format of dadi and
  moments. Lines starting with ``#`` are comments; then one line with the shape (sample
  size + 1 per population), ``folded`` or ``unfolded`` and optional population labels in
  double quotes; one line with the entries in C order; one line with the mask in the same
  order (``1``: masked). Files of the old format (shape only, no mask line) are read too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ._data import ObservedSpectrum

__all__ = ["block_bootstrap", "observed_sfs", "read_spectrum", "write_spectrum"]


def observed_sfs(
    ts: Any,
    sample_sets: Sequence[Sequence[int]] | None = None,
    *,
    windows: int | Sequence[float] | None = None,
    folded: bool = False,
) -> np.ndarray:
    """Counts of segregating sites by derived-allele count in a tskit tree sequence.

    Parameters
    ----------
    ts : tskit.TreeSequence
        With sites and mutations (infinite sites: one mutation per site, as
        ``msprime.sim_mutations(..., discrete_genome=False)`` makes).
    sample_sets : sequence of sequences of node ids, optional
        One set: the 1-d SFS of those samples, shape ``(n + 1,)``; several: the joint
        SFS, shape ``(n_1 + 1, …)`` in their order (which must be the order of the
        model's ``samples``). Default: every sample in one set.
    windows : int or sequence of float, optional
        ``k``: ``k`` windows of equal length; or breakpoints from 0 to the sequence
        length. The result then has a leading axis of windows (blocks for
        :func:`block_bootstrap`).
    folded : bool
        Count minor alleles (tskit's ``polarised=False``); pass ``folded=True`` to
        :func:`~phasetrace.inference.loglik` and :func:`~phasetrace.inference.fit` too.

    Returns
    -------
    ndarray of float64
        Counts in the layout of tskit, moments and dadi: entries ``0 … n_j`` on each axis
        (what :func:`~phasetrace.inference.loglik` takes; its corners are ignored).

    Examples
    --------
    >>> import msprime, phasetrace as pt
    >>> ts = msprime.sim_ancestry(4, sequence_length=1e4, population_size=1000,
    ...                           random_seed=1)
    >>> ts = msprime.sim_mutations(ts, rate=1e-7, random_seed=1, discrete_genome=False)
    >>> sfs = pt.observed_sfs(ts)
    >>> sfs.shape, bool(sfs.sum() == ts.num_sites)
    ((9,), True)
    """
    if sample_sets is None:
        sets = [ts.samples()]
    else:
        listed = isinstance(sample_sets, Sequence | np.ndarray)
        if isinstance(sample_sets, str | bytes) or not listed:
            raise InvalidParameterError(
                "sample_sets must be a sequence of sequences of sample node ids"
            )
        sets = [np.asarray(s, dtype=np.int32) for s in sample_sets]
        for i, s in enumerate(sets):
            if s.ndim != 1 or s.size == 0:
                raise InvalidParameterError(
                    f"sample_sets[{i}] must be a non-empty 1-d sequence of node ids"
                )
    if windows is not None:
        if isinstance(windows, int | np.integer) and not isinstance(windows, bool):
            if windows < 1:
                raise InvalidParameterError(f"windows must be >= 1, got {windows}")
            windows = np.linspace(0, ts.sequence_length, int(windows) + 1)
        windows = np.asarray(windows, dtype=np.float64)
    out = ts.allele_frequency_spectrum(
        sample_sets=sets,
        windows=windows,
        mode="site",
        span_normalise=False,
        polarised=not folded,
    )
    return np.asarray(out, dtype=np.float64)


def block_bootstrap(blocks: Any, n_replicates: int, *, seed: int = 0) -> np.ndarray:
    """Replicate spectra by resampling blocks of the genome with replacement.

    Each replicate is the sum of ``W`` blocks drawn with replacement from the ``W``
    given (so it has about as many sites as the data). Blocks should be long enough that
    sites in different blocks are nearly independent (well beyond the scale of linkage
    disequilibrium, e.g. megabases in humans).

    Parameters
    ----------
    blocks : array_like, shape (W, *spectrum shape)
        Spectra per block: :func:`observed_sfs` with ``windows=``.
    n_replicates : int
    seed : int

    Returns
    -------
    ndarray, shape (n_replicates, *spectrum shape)

    Examples
    --------
    >>> import numpy as np
    >>> blocks = np.array([[0, 3, 1, 0], [0, 2, 2, 0]])
    >>> reps = block_bootstrap(blocks, 5, seed=1)
    >>> reps.shape, bool((reps.sum(axis=1) == 8).all())   # every block has 4 sites
    ((5, 4), True)
    """
    arr = np.asarray(blocks, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] < 2:
        raise InvalidParameterError(
            f"blocks must have shape (W, *spectrum shape) with W >= 2, got {arr.shape}"
        )
    if isinstance(n_replicates, bool) or not isinstance(n_replicates, int) or n_replicates < 1:
        raise InvalidParameterError(f"n_replicates must be an int >= 1, got {n_replicates!r}")
    rng = np.random.default_rng(seed)
    w = arr.shape[0]
    out = np.empty((n_replicates, *arr.shape[1:]))
    for r in range(n_replicates):
        counts = np.bincount(rng.integers(0, w, size=w), minlength=w).astype(np.float64)
        out[r] = np.tensordot(counts, arr, axes=1)
    return out


_HEADER = re.compile(r'"([^"]*)"')


def read_spectrum(path: str | os.PathLike) -> ObservedSpectrum:
    """Read a spectrum in the dadi/moments ``.fs`` format (module docstring).

    Parameters
    ----------
    path : str or path

    Returns
    -------
    ObservedSpectrum
        Counts, mask, folding and population labels.

    Raises
    ------
    InvalidParameterError
        A file that does not follow the format (the message says where).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.fs"
    >>> _ = p.write_text('# one population\\n4 unfolded "A"\\n0 5 2 0\\n1 0 0 1\\n')
    >>> fs = read_spectrum(p)
    >>> fs.data.tolist(), fs.mask.tolist(), fs.folded, fs.pop_ids
    ([0.0, 5.0, 2.0, 0.0], [True, False, False, True], False, ('A',))
    """
    with open(path, encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise InvalidParameterError(f"{path}: no spectrum (only comments or empty)")
    header = body[0]
    head = header.split('"', 1)[0].split()
    shape: list[int] = []
    folded = False
    pop_ids = None
    for i, token in enumerate(head):
        if token in ("folded", "unfolded"):
            folded = token == "folded"
            if len(head) > i + 1:
                raise InvalidParameterError(
                    f"{path}: unexpected {head[i + 1]!r} after {token!r} in the header "
                    "(population labels go in double quotes)"
                )
            labels = _HEADER.findall(header)
            pop_ids = tuple(labels) if labels else None
            break
        try:
            shape.append(int(token))
        except ValueError:
            raise InvalidParameterError(
                f"{path}: header {header!r}: expected the shape (integers), then folded or unfolded"
            ) from None
    if not shape or any(s < 2 for s in shape):
        raise InvalidParameterError(f"{path}: header {header!r}: shape entries must be >= 2")
    if pop_ids is not None and len(pop_ids) != len(shape):
        raise InvalidParameterError(
            f"{path}: {len(pop_ids)} population labels for {len(shape)} dimensions"
        )
    size = int(np.prod(shape))
    tokens = " ".join(body[1:]).split()
    if len(tokens) not in (size, 2 * size):
        raise InvalidParameterError(
            f"{path}: shape {tuple(shape)} needs {size} entries (and as many mask entries); "
            f"found {len(tokens)} numbers"
        )
    try:
        data = np.array([float(t) for t in tokens[:size]]).reshape(shape)
        if len(tokens) == 2 * size:
            mask = np.array([int(float(t)) for t in tokens[size:]]).reshape(shape)
        else:
            mask = np.zeros(shape, dtype=np.int64)
    except ValueError as exc:
        raise InvalidParameterError(f"{path}: not a number: {exc}") from None
    if not np.isin(mask, (0, 1)).all():
        raise InvalidParameterError(f"{path}: mask entries must be 0 or 1")
    return ObservedSpectrum(data, mask.astype(bool), folded, pop_ids)


def write_spectrum(
    path: str | os.PathLike,
    spectrum: Any,
    *,
    folded: bool | None = None,
    pop_ids: Sequence[str] | None = None,
    comments: Sequence[str] = (),
) -> None:
    """Write a spectrum in the dadi/moments ``.fs`` format (readable by both).

    Parameters
    ----------
    path : str or path
    spectrum : array_like, masked array or ObservedSpectrum
        In the full layout (entries ``0 … n_j`` on each axis). The corners are masked in
        the file unless the array says otherwise (a masked array's own mask is kept).
    folded : bool, optional
        Default: the spectrum's own (an ObservedSpectrum's), else False.
    pop_ids : sequence of str, optional
    comments : sequence of str
        Lines written first, after ``#``.

    Examples
    --------
    >>> import numpy as np, pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.fs"
    >>> write_spectrum(p, np.array([0.0, 5, 2, 0]), pop_ids=["A"])
    >>> print(p.read_text().strip())
    4 unfolded "A"
    0 5 2 0
    1 0 0 1
    """
    if isinstance(spectrum, ObservedSpectrum):
        data, mask = np.asarray(spectrum.data), np.asarray(spectrum.mask, bool)
        folded = spectrum.folded if folded is None else folded
        pop_ids = spectrum.pop_ids if pop_ids is None else pop_ids
    elif isinstance(spectrum, np.ma.MaskedArray):
        data, mask = np.asarray(spectrum.data), np.ma.getmaskarray(spectrum)
    else:
        data = np.asarray(spectrum, dtype=np.float64)
        mask = np.zeros(data.shape, bool)
        mask.flat[0] = mask.flat[-1] = True
    if data.ndim < 1 or any(s < 2 for s in data.shape):
        raise InvalidParameterError(f"a spectrum has every axis of length >= 2, got {data.shape}")
    if pop_ids is not None and len(pop_ids) != data.ndim:
        raise InvalidParameterError(f"{len(pop_ids)} pop_ids for {data.ndim} dimensions")
    for label in pop_ids or ():
        if '"' in label:
            raise InvalidParameterError(f"population label {label!r} contains a double quote")
    lines = [f"# {c.strip()}" for c in comments]
    head = " ".join(str(s) for s in data.shape) + (" folded" if folded else " unfolded")
    if pop_ids:
        head += " " + " ".join(f'"{p}"' for p in pop_ids)
    lines.append(head)
    lines.append(" ".join(_number(v) for v in data.reshape(-1).tolist()))
    lines.append(" ".join("1" if m else "0" for m in mask.reshape(-1).tolist()))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))
