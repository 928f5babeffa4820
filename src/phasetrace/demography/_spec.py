"""The structure of a demographic model as plain data, shared by the demes reader
(:mod:`.plan`) and the state-space builders (:mod:`.statespace`).

Demes are numbered ``0 … d − 1`` (the demes that can ever hold a lineage, sampled demes
first). Time runs backwards from the present (``t = 0``) and is cut into intervals
``[T_i, T_{i+1})``, ``T_0 = 0``, the last one unbounded. Between intervals ``i`` and
``i + 1`` (at ``T_{i+1}``) lineages may move between demes: each :class:`Move` is one
event, and the events of one boundary apply in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Move:
    """Lineages leaving deme ``source`` at a boundary, backwards in time.

    Each lineage in ``source`` moves to ``targets[j]`` with probability ``p_j`` (the value
    ``proportions[b, index[j]]`` of the resolved parameters), independently of the others,
    and stays with probability ``1 − Σ_j p_j`` when ``stay`` (a pulse). Without ``stay``
    every lineage moves (a split or branch: one target, ``index == ()`` and ``p = 1``; or
    an admixed founding with several ancestors whose proportions sum to 1).
    """

    source: int
    targets: tuple[int, ...]
    index: tuple[int, ...]
    stay: bool

    @property
    def deterministic(self) -> bool:
        """One target and no stay: every lineage moves there (``p = 1``)."""
        return len(self.targets) == 1 and not self.stay and not self.index


@dataclass(frozen=True)
class Structure:
    """What the state space depends on (no parameter values).

    Attributes
    ----------
    samples : tuple of int
        Lineages sampled at time 0 in each deme (``d`` entries).
    sampled : tuple of int
        The demes with samples, in the order the user gave them (the axes of a joint SFS).
    exists : ndarray of bool, shape (I, d)
        Deme ``k`` exists in interval ``i`` (its lineages coalesce there).
    migration : ndarray of bool, shape (I, d, d)
        A lineage in deme ``k`` can move to deme ``l`` (backwards in time) in interval ``i``.
    boundaries : tuple of tuple of Move
        ``boundaries[i]``: the events at ``T_{i+1}``, in the order they apply (``I − 1``
        entries).
    n_proportions : int
        Length of the resolved proportion vector that :attr:`Move.index` points into.
    """

    samples: tuple[int, ...]
    sampled: tuple[int, ...]
    exists: np.ndarray
    migration: np.ndarray
    boundaries: tuple[tuple[Move, ...], ...]
    n_proportions: int

    @property
    def n_demes(self) -> int:
        return len(self.samples)

    @property
    def n_intervals(self) -> int:
        return int(self.exists.shape[0])
