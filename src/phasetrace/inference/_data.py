"""Observed spectra matched to a model: which expected entries each observed count faces.

:func:`prepare` reads an observed SFS or joint SFS (a numpy array, a masked array, a
moments/dadi ``Spectrum`` or an :class:`~phasetrace.inference.ObservedSpectrum`) against
a model and returns :class:`Data`: plain arrays that travel to workers. Each observed
*class* ``k`` has a count ``D_k`` and faces the sum of at most two expected entries
(``members[k]``): one entry for an unfolded spectrum, an entry and its mirror image
``a → n − a`` for a folded one. Monomorphic entries (no derived allele in any sample,
or all derived) and masked entries are left out.

Layouts accepted, for ``n`` samples in all and ``n_j`` in sampled deme ``j``:

- 1-d, length ``n − 1``: entries ``1 … n − 1``, as :func:`phasetrace.sfs` returns;
- 1-d, length ``n + 1``: entries ``0 … n``, as tskit, moments and dadi write it;
- ``S``-d, shape ``(n_1 + 1, …, n_S + 1)`` for ``S >= 2`` sampled demes: the layout of
  :func:`phasetrace.jsfs` (and tskit, moments, dadi).

A 1-d spectrum of a model with several sampled demes is the SFS pooled over all samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["Data", "ObservedSpectrum", "prepare", "sample_sizes"]


@dataclass(frozen=True, eq=False)
class ObservedSpectrum:
    """An observed spectrum with its mask and folding, as read from a moments/dadi file.

    Attributes
    ----------
    data : ndarray of float64
        Counts in the full layout (entries ``0 … n_j`` along each axis).
    mask : ndarray of bool
        ``True`` where an entry is missing (not to be used).
    folded : bool
        Whether the counts are by minor allele (entries past half the samples are empty).
    pop_ids : tuple of str or None
        Population labels from the file, in axis order.

    Examples
    --------
    >>> import numpy as np
    >>> s = ObservedSpectrum(np.array([0.0, 5, 2, 0]), np.array([1, 0, 0, 1], bool), False)
    >>> s.shape, s.sample_sizes
    ((4,), (3,))
    """

    data: np.ndarray
    mask: np.ndarray
    folded: bool = False
    pop_ids: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def sample_sizes(self) -> tuple[int, ...]:
        """Samples per axis (the shape less one)."""
        return tuple(s - 1 for s in self.data.shape)

    def masked(self) -> np.ma.MaskedArray:
        """The counts as a numpy masked array."""
        return np.ma.MaskedArray(self.data, mask=self.mask)


@dataclass(frozen=True, eq=False)
class Data:
    """An observed spectrum reduced to what a likelihood needs (plain arrays).

    Attributes
    ----------
    kind : str
        ``"sfs"`` (the pooled spectrum: ``model.sfs``) or ``"jsfs"`` (``model.jsfs``).
    shape : tuple of int
        Shape of the model's expected spectrum (``(n − 1,)`` or ``(n_1 + 1, …)``).
    members : ndarray of int64, shape (K, 2)
        Flat indices into the expected spectrum whose sum each class faces; the index
        ``prod(shape)`` stands for nothing (a zero appended to the expected values).
    counts : ndarray of float64, shape (K,)
        Observed count of each class.
    folded : bool
    log_factorials : float
        ``Σ_k log Γ(D_k + 1)``: the constant of the Poisson and multinomial likelihoods.
    """

    kind: str
    shape: tuple[int, ...]
    members: np.ndarray
    counts: np.ndarray
    folded: bool
    log_factorials: float

    @property
    def total(self) -> float:
        """Observed sites in the classes used."""
        return float(self.counts.sum())

    def replace_counts(self, counts: np.ndarray) -> Data:
        """The same classes with other counts (a bootstrap replicate)."""
        counts = np.ascontiguousarray(counts, dtype=np.float64)
        return Data(
            self.kind, self.shape, self.members, counts, self.folded, _log_factorials(counts)
        )


def sample_sizes(model: Any) -> tuple[int, ...]:
    """Sampled lineages per sampled deme, in the order of the model's ``samples``."""
    plan = model.plan
    return tuple(int(plan.samples[k]) for k in plan.structure.sampled)


def _values_and_mask(observed: Any) -> tuple[np.ndarray, np.ndarray, bool | None]:
    if isinstance(observed, ObservedSpectrum):
        return np.asarray(observed.data), np.asarray(observed.mask, bool), observed.folded
    folded = getattr(observed, "folded", None)  # moments/dadi Spectrum objects carry it
    folded = folded if isinstance(folded, bool | np.bool_) else None
    if isinstance(observed, np.ma.MaskedArray):
        return np.asarray(observed.data), np.ma.getmaskarray(observed), folded
    values = np.asarray(observed)
    return values, np.zeros(values.shape, bool), folded


def prepare(model: Any, observed: Any, folded: bool | None = None) -> Data:
    """Match an observed spectrum to ``model``'s expected one.

    Parameters
    ----------
    model : DemographicModel or Trace
        A model from :func:`phasetrace.models.from_demes`, or a block-counting trace
        (1-d spectra only).
    observed : array_like, masked array, ObservedSpectrum or moments/dadi Spectrum
        Counts in one of the layouts of the module docstring.
    folded : bool, optional
        Whether ``observed`` is folded (by minor allele); by default taken from the
        object (``.folded`` of a Spectrum or ObservedSpectrum), else ``False``.

    Returns
    -------
    Data

    Raises
    ------
    InvalidParameterError
        A shape that fits no layout of this model, negative or non-finite counts, a
        "folded" spectrum with counts past half the samples, or no class left to use.
    """
    values, mask, own_folded = _values_and_mask(observed)
    if folded is None:
        folded = bool(own_folded) if own_folded is not None else False
    elif own_folded is not None and bool(own_folded) != bool(folded):
        raise InvalidParameterError(
            f"folded={folded!r}, but the observed spectrum says folded={bool(own_folded)}"
        )
    if values.dtype.kind not in "biuf":
        raise InvalidParameterError(f"observed counts must be real numbers, got {values.dtype}")
    values = values.astype(np.float64)
    sizes = _model_sizes(model)
    n = sum(sizes)
    if values.ndim == 1:
        kind = "sfs"
        if values.shape[0] == n - 1:
            counts = np.arange(1, n)
            shape = (n - 1,)
            where = np.arange(n - 1)  # position in the expected spectrum
        elif values.shape[0] == n + 1:
            counts = np.arange(n + 1)
            shape = (n - 1,)
            where = np.arange(n + 1) - 1
        else:
            raise InvalidParameterError(
                f"a 1-d observed spectrum of {n} samples has {n - 1} entries (1 … n−1, as "
                f"pt.sfs) or {n + 1} (0 … n); got {values.shape[0]}"
            )
        totals = counts
        mirror_of = {int(c): int(n - c) for c in counts}
        index_of_count = {int(c): i for i, c in enumerate(counts)}

        def mirror(i: int) -> int:
            return index_of_count.get(mirror_of[int(counts[i])], -1)

    else:
        if len(sizes) < 2 or values.ndim != len(sizes):
            raise InvalidParameterError(
                f"the model samples {len(sizes)} deme(s) {sizes}: an observed joint spectrum "
                f"has shape {tuple(s + 1 for s in sizes)} (or give a 1-d pooled SFS); got "
                f"shape {values.shape}"
            )
        want = tuple(s + 1 for s in sizes)
        if values.shape != want:
            raise InvalidParameterError(
                f"observed joint spectrum has shape {values.shape}; samples {sizes} need {want}"
            )
        kind = "jsfs"
        shape = want
        grid = np.indices(shape).reshape(len(shape), -1)
        totals = grid.sum(axis=0)
        where = np.arange(totals.size)
        flat_shape = np.array(shape)

        def mirror(i: int) -> int:
            return int(np.ravel_multi_index(tuple(flat_shape - 1 - grid[:, i]), shape))

    flat = values.reshape(-1)
    flat_mask = mask.reshape(-1) if mask.shape == values.shape else None
    if flat_mask is None:
        raise InvalidParameterError(
            f"the mask has shape {mask.shape}, the counts {values.shape}: they must agree"
        )
    used = (totals > 0) & (totals < n) & ~flat_mask
    bad = used & ~(np.isfinite(flat) & (flat >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidParameterError(
            f"observed counts must be finite and >= 0; entry {_entry(values, i)} is {flat[i]!r}"
        )
    pad = int(np.prod(shape))
    members: list[tuple[int, int]] = []
    data: list[float] = []
    if not folded:
        for i in np.flatnonzero(used):
            members.append((int(where[i]), pad))
            data.append(float(flat[i]))
    else:
        past = (totals * 2 > n) & ~flat_mask & (flat != 0)
        if past.any():
            i = int(np.argmax(past))
            raise InvalidParameterError(
                f"a folded spectrum holds nothing past half the samples ({n // 2} derived of "
                f"{n}); entry {_entry(values, i)} is {flat[i]!r} (pass folded=False if the "
                "spectrum is polarised)"
            )
        for i in range(totals.size):
            t = int(totals[i])
            if t == 0 or 2 * t > n:
                continue
            j = mirror(i)
            if 2 * t == n and 0 <= j < i:
                continue  # the pair was taken at its first member
            pair = [i] if j in (i, -1) else [i, j]
            if any(flat_mask[p] for p in pair if 2 * int(totals[p]) <= n):
                continue
            members.append((int(where[i]), int(where[j]) if len(pair) == 2 else pad))
            data.append(float(sum(flat[p] for p in pair if not flat_mask[p])))
    if not members:
        raise InvalidParameterError("no entry of the observed spectrum is left to use")
    counts_arr = np.array(data, dtype=np.float64)
    return Data(
        kind=kind,
        shape=tuple(int(s) for s in shape),
        members=np.array(members, dtype=np.int64).reshape(-1, 2),
        counts=counts_arr,
        folded=bool(folded),
        log_factorials=_log_factorials(counts_arr),
    )


def _log_factorials(counts: np.ndarray) -> float:
    return float(sum(math.lgamma(c + 1.0) for c in counts.tolist()))


def _entry(values: np.ndarray, flat_index: int) -> tuple[int, ...] | int:
    idx = np.unravel_index(flat_index, values.shape)
    return int(idx[0]) if len(idx) == 1 else tuple(int(i) for i in idx)


def _model_sizes(model: Any) -> tuple[int, ...]:
    if hasattr(model, "plan"):
        return sample_sizes(model)
    from ..spectrum import sfs_layout

    n, _ = sfs_layout(model)
    return (n,)
