"""Read a demes model into a :class:`Plan`: the structure of the model and its free numbers.

:func:`plan_from_demes` reads a demes graph (a path to a YAML file or a ``demes.Graph``)
and the sample, and returns a :class:`Plan`: the demes that can hold a lineage of the
sample, the time intervals and the events between them as a
:class:`~phasetrace.demography._spec.Structure`, and one parameter per free number of the
model (``θ``) with the map :meth:`Plan.resolve` from ``θ`` to sizes, rates and
proportions per interval. The event order is fixed by the graph; ``θ`` moves the numbers.

Units: deme sizes in individuals, times in generations before the present, migration
rates per generation, as in demes and msprime (a graph in other time units is converted
with its ``generation_time``). The pairwise coalescence rate in a deme of size ``N`` is
``1/(ploidy·N)`` per generation, as in msprime's default (Hudson) model.

Semantics follow msprime's ``Demography.from_demes``, the reference the checks use:

* Backwards in time a lineage in the ``dest`` of a demes migration moves to its
  ``source`` at the given rate; a migration acts in ``[end_time, start_time)``.
* A deme exists in ``[end_time, start_time)``; an exponential epoch has size
  ``N(t) = end_size·(start_size/end_size)^((t − end_time)/(start_time − end_time))``.
* At one time the lineage movements apply in msprime's order: deme starts with one
  ancestor (splits, then branches: every lineage moves to the ancestor), then pulses in
  the reverse of their order in the graph (each lineage of ``dest`` moves to source
  ``j`` with probability ``p_j``), then starts of demes with several ancestors (mergers,
  then admixtures). A pulse into a deme at the start time of that deme with one ancestor
  therefore moves nothing (msprime moves its lineages to the ancestor first); the pulse
  keeps its parameter but gets no :class:`~phasetrace.demography._spec.Move`.

Parameter names (``θ`` in this order; every name unique):

* sizes, per deme in :attr:`Plan.demes` order, epochs in demes order (0 = oldest):
  ``N_A`` (deme ``A`` with one constant epoch), ``N_A_1`` (epoch 1 of ``A``),
  ``N_A_0_start`` / ``N_A_0_end`` (an exponential epoch: ``start`` is the older end,
  as in demes; ``N_A_start`` / ``N_A_end`` for a deme with one epoch);
* times, ascending, one per distinct finite time value (so events at one time stay
  simultaneous), named after the first of the events there, in this order of kinds:
  ``T_split_X`` (``X`` ends and splits into its children), ``T_branch_C`` (``C``
  branches off its ancestor), ``T_merge_C`` / ``T_admix_C`` (``C`` starts from several
  ancestors, which end there / go on), ``T_pulse_S_D`` (a pulse from ``S`` into ``D``),
  ``T_A_1`` (the start of epoch 1 of ``A``, i.e. the end of epoch 0), ``T_end_A``
  (``A`` ends, its lineages begin there), ``T_m_S_D_start`` / ``T_m_S_D_end`` (a
  migration from ``S`` to ``D`` starts / ends, demes' older / younger end);
* migration rates ``m_S_D`` (demes direction: from source ``S`` to dest ``D`` forwards
  in time), in graph order;
* pulse proportions ``p_S_D`` (from source ``S`` into dest ``D``), in the order the pulses
  apply backwards in time (by time; at one time in the reverse of the graph's order);
* ancestry proportions ``a_S_C`` of a deme ``C`` with ``k`` ancestors, for the first
  ``k − 1`` of them (the last one's is ``1 −`` their sum).

A name that would occur more than once (a migration between the same demes in several
windows, repeated pulses, deme names with underscores that collide) is suffixed ``_1``,
``_2``, … in ``θ`` order, repeatedly until the names are unique. Symmetric migrations
are two asymmetric ones in a demes graph, hence two parameters.

Only the demes that can ever hold a lineage of the sample are kept: a sweep backwards in
time from the sampled demes through migrations, the movements at each event time (in the
order above) and deme starts. Events that involve another deme are left out, with their
parameters and times.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

from ..errors import InvalidGraphError, InvalidParameterError
from ._spec import Move, Structure

__all__ = ["Plan", "Resolved", "plan_from_demes"]


@dataclass(frozen=True, eq=False)
class Resolved:
    """The numbers of a :class:`Plan` at a batch of ``B`` parameter vectors.

    Arrays are float64, or complex128 when θ was complex.

    Attributes
    ----------
    times : ndarray, shape (B, I)
        The start ``T_i`` of each interval (``T_0 = 0``).
    size_start, size_end : ndarray, shape (B, I, d)
        The size of each deme at the younger (``T_i``) and at the older (``T_{i+1}``) end
        of each interval; equal unless the deme grows exponentially there (then the size
        is exponential between them); equal in the last interval; ``1.0`` where the deme
        does not exist.
    migration : ndarray, shape (B, I, d, d)
        ``migration[b, i, k, l]``: the rate per generation at which a lineage in deme ``k``
        moves to deme ``l`` backwards in time (0 where there is none).
    proportions : ndarray, shape (B, n_proportions)
        The probabilities that :attr:`Move.index <phasetrace.demography._spec.Move>`
        points at.
    """

    times: np.ndarray
    size_start: np.ndarray
    size_end: np.ndarray
    migration: np.ndarray
    proportions: np.ndarray


@dataclass(frozen=True, eq=False)
class _Layout:
    """Where each parameter goes in :class:`Resolved` (all index arrays)."""

    time_cols: np.ndarray  # (I,) θ column of T_i; n_params stands for T_0 = 0
    const_pos: np.ndarray  # flat (i·d + k) of constant sizes
    const_par: np.ndarray
    exp_pos: np.ndarray  # flat (i·d + k) of sizes inside an exponential epoch
    exp_interval: np.ndarray
    exp_older: np.ndarray  # θ column of the epoch's start_size (older end)
    exp_younger: np.ndarray  # θ column of the epoch's end_size (younger end)
    exp_t_end: np.ndarray  # θ column of the epoch's end_time (n_params: 0)
    exp_t_start: np.ndarray
    mig_pos: np.ndarray  # flat (i·d·d + k·d + l)
    mig_par: np.ndarray
    prop_matrix: np.ndarray  # proportions = θ @ prop_matrix + prop_offset
    prop_offset: np.ndarray
    sizes: np.ndarray  # θ columns by kind
    rates: np.ndarray
    pulses: tuple[tuple[int, ...], ...]  # θ columns of each pulse's proportions
    ancestries: tuple[tuple[int, ...], ...]  # θ columns of each admixed deme's free ones
    last_edges: tuple[tuple[int, int, int], ...]  # (k, l, θ column) in the last interval


@dataclass(frozen=True, eq=False)
class Plan:
    """A demographic model read from demes: its structure and its free numbers.

    Built by :func:`plan_from_demes`; see the module docstring for the parameter names
    and the semantics.

    Attributes
    ----------
    demes : tuple of str
        The demes that can hold a lineage of the sample, sampled demes first (in the order
        of ``samples``), then the others in graph order. Index ``k`` of every array refers
        to ``demes[k]``.
    samples : tuple of int
        Haploid lineages sampled at time 0 per deme.
    ploidy : int
        Sets the time scale: pairwise coalescence rate ``1/(ploidy·N)`` per generation.
    parameter_names : tuple of str
        One name per free number of the model.
    theta : ndarray of float64
        The values read from the graph.
    kinds : tuple of str
        Per parameter: ``"size"``, ``"time"``, ``"migration"``, ``"pulse"`` or
        ``"ancestry"``.
    time_parameters : tuple of int
        The θ index of ``T_1 … T_{I−1}``.
    structure : Structure
        Intervals, existence, migration pattern and the moves at each boundary.
    growth : ndarray of bool, shape (I, d)
        Deme ``k`` changes size exponentially inside interval ``i``.
    meanings : tuple of str
        Per parameter, what it is (the third column of :meth:`describe`).
    """

    demes: tuple[str, ...]
    samples: tuple[int, ...]
    ploidy: int
    parameter_names: tuple[str, ...]
    theta: np.ndarray
    kinds: tuple[str, ...]
    time_parameters: tuple[int, ...]
    structure: Structure
    growth: np.ndarray
    meanings: tuple[str, ...] = field(repr=False)
    _layout: _Layout = field(repr=False)

    @property
    def n_parameters(self) -> int:
        return len(self.parameter_names)

    @property
    def proportion_groups(self) -> tuple[tuple[int, ...], ...]:
        """θ columns of the proportions that share one event (a pulse's sources, an
        admixed deme's free ancestry proportions): each group sums to at most 1."""
        return (*self._layout.pulses, *self._layout.ancestries)

    def resolve(self, theta: Any) -> Resolved:
        """Sizes, times, rates and proportions per interval at a batch of θ.

        Uses only ``+ − × / exp log`` of θ (no branches on values), so a complex θ gives
        complex-step derivatives. Does not check θ (see :meth:`check`).

        Parameters
        ----------
        theta : array_like, shape (B, n_parameters) or (n_parameters,)
            float64 or complex128.

        Returns
        -------
        Resolved

        Examples
        --------
        >>> import demes
        >>> g = demes.loads('''
        ... time_units: generations
        ... demes:
        ... - name: A
        ...   epochs:
        ...   - {end_time: 100, start_size: 1000}
        ...   - {end_time: 0, start_size: 100, end_size: 400}
        ... ''')
        >>> plan = plan_from_demes(g, {"A": 4})
        >>> r = plan.resolve(plan.theta)
        >>> r.times[0], r.size_start[0, :, 0], r.size_end[0, :, 0]
        (array([  0., 100.]), array([ 400., 1000.]), array([ 100., 1000.]))
        """
        th = self._as_theta(theta)
        lay = self._layout
        batch = th.shape[0]
        n_int, d = self.growth.shape
        dtype = th.dtype
        ext = np.concatenate([th, np.zeros((batch, 1), dtype)], axis=1)
        times = ext[:, lay.time_cols]
        size_start = np.ones((batch, n_int * d), dtype)
        size_start[:, lay.const_pos] = th[:, lay.const_par]
        size_end = size_start.copy()
        if lay.exp_pos.size:
            younger = th[:, lay.exp_younger]
            t_end = ext[:, lay.exp_t_end]
            rate = np.log(th[:, lay.exp_older] / younger) / (ext[:, lay.exp_t_start] - t_end)
            size_start[:, lay.exp_pos] = younger * np.exp(
                rate * (times[:, lay.exp_interval] - t_end)
            )
            size_end[:, lay.exp_pos] = younger * np.exp(
                rate * (times[:, lay.exp_interval + 1] - t_end)
            )
        migration = np.zeros((batch, n_int * d * d), dtype)
        migration[:, lay.mig_pos] = th[:, lay.mig_par]
        proportions = th @ lay.prop_matrix + lay.prop_offset
        return Resolved(
            times=times,
            size_start=size_start.reshape(batch, n_int, d),
            size_end=size_end.reshape(batch, n_int, d),
            migration=migration.reshape(batch, n_int, d, d),
            proportions=proportions,
        )

    def check(self, theta: Any) -> None:
        """Raise :class:`~phasetrace.errors.InvalidParameterError` unless θ is admissible.

        Refused, with the parameter named: non-finite values, sizes ``<= 0``, negative
        migration rates, proportions outside ``[0, 1]``, a pulse's or an admixed deme's
        free proportions summing to more than 1, event times out of the plan's order
        (``0 < T_1 < T_2 < …``; the order is fixed by the graph), and zero migration rates
        that leave lineages unable to meet in the last interval. A complex θ is checked on
        its real part.

        Examples
        --------
        >>> import demes
        >>> g = demes.loads('''
        ... time_units: generations
        ... demes:
        ... - name: A
        ...   epochs: [{start_size: 1000}]
        ... ''')
        >>> plan = plan_from_demes(g, {"A": 2})
        >>> plan.check([-1.0])
        Traceback (most recent call last):
        ...
        phasetrace.errors.InvalidParameterError: N_A = -1.0: a deme size must be positive
        """
        th = self._as_theta(theta)
        if np.iscomplexobj(th):
            th = th.real
        lay = self._layout
        names = self.parameter_names
        many = th.shape[0] > 1

        def fail(row: int, col: int, why: str) -> None:
            where = f" (row {row} of theta)" if many else ""
            raise InvalidParameterError(f"{names[col]} = {float(th[row, col])!r}{where}: {why}")

        bad = ~np.isfinite(th)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            fail(row, col, "parameters must be finite")
        for cols, test, why in (
            (lay.sizes, lambda v: v <= 0, "a deme size must be positive"),
            (lay.rates, lambda v: v < 0, "a migration rate must be >= 0"),
        ):
            bad = test(th[:, cols])
            if bad.any():
                row, j = np.argwhere(bad)[0]
                fail(row, cols[j], why)
        for groups, what in ((lay.pulses, "a pulse"), (lay.ancestries, "an ancestry")):
            for cols in groups:
                vals = th[:, list(cols)]
                bad = (vals < 0) | (vals > 1)
                if bad.any():
                    row, j = np.argwhere(bad)[0]
                    fail(row, cols[j], f"{what} proportion must be in [0, 1]")
                over = vals.sum(axis=1) > 1
                if over.any():
                    row = int(np.argmax(over))
                    listed = ", ".join(names[c] for c in cols)
                    rest = (
                        " (the last ancestor gets 1 minus their sum)"
                        if what == "an ancestry"
                        else ""
                    )
                    fail(row, cols[-1], f"the proportions {listed} sum to more than 1{rest}")
        times = th[:, list(self.time_parameters)]
        if times.size:
            bad = times[:, 0] <= 0
            if bad.any():
                fail(int(np.argmax(bad)), self.time_parameters[0], "event times must be > 0")
            bad = np.diff(times, axis=1) <= 0
            if bad.any():
                row, j = np.argwhere(bad)[0]
                before = self.time_parameters[j]
                fail(
                    row,
                    self.time_parameters[j + 1],
                    f"must be later than {names[before]} = {float(th[row, before])!r}: the order "
                    "of events is fixed by the graph (sorted times T_1 < T_2 < ...)",
                )
        if lay.last_edges:
            last = self.structure.exists[-1]
            for row in range(th.shape[0]):
                edges = [(k, j) for k, j, c in lay.last_edges if th[row, c] > 0]
                sinks = _sink_groups(np.flatnonzero(last), edges)
                if len(sinks) > 1:
                    listed = ", ".join(names[c] for _, _, c in lay.last_edges)
                    where = f" (row {row} of theta)" if many else ""
                    raise InvalidParameterError(
                        f"migration rates {listed}{where}: with these zero rates the "
                        f"lineages in {_groups_text(self.demes, sinks)} can never meet in the "
                        "last interval (T_MRCA would be infinite)"
                    )

    def describe(self) -> str:
        """A table of the parameters: name, value read from the graph, meaning.

        Examples
        --------
        >>> import demes
        >>> g = demes.loads('''
        ... time_units: generations
        ... demes:
        ... - name: A
        ...   epochs: [{start_size: 1000}]
        ... ''')
        >>> print(plan_from_demes(g, {"A": 2}).describe())
        name  value  meaning
        N_A   1000   size of A (individuals)
        """
        rows = [("name", "value", "meaning")]
        rows += [
            (n, f"{v:.6g}", m)
            for n, v, m in zip(self.parameter_names, self.theta, self.meanings, strict=True)
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)

    def _as_theta(self, theta: Any) -> np.ndarray:
        th = np.asarray(theta)
        if th.dtype.kind in "biu":
            th = th.astype(np.float64)
        if th.dtype.kind not in "fc":
            raise InvalidParameterError(f"theta must be real or complex numbers, got {th.dtype}")
        th = th.astype(np.result_type(th.dtype, np.float64), copy=False)
        if th.ndim == 1:
            th = th[None, :]
        if th.ndim != 2 or th.shape[1] != self.n_parameters:
            raise InvalidParameterError(
                f"theta must have shape (B, {self.n_parameters}) or ({self.n_parameters},) "
                f"for the parameters {', '.join(self.parameter_names)}; got {np.shape(theta)}"
            )
        return th


# ---------------------------------------------------------------- reading the graph


def plan_from_demes(model: Any, samples: Mapping[str, int], *, ploidy: int = 2) -> Plan:
    """Read a demes model and a sample into a :class:`Plan`.

    Parameters
    ----------
    model : str, os.PathLike or demes.Graph
        A path to a demes YAML file, or a graph.
    samples : mapping of str to int
        Haploid lineages sampled at time 0 per deme (at least 2 in all). Their order sets
        the order of the sampled demes.
    ploidy : int, default 2
        Pairwise coalescence rate ``1/(ploidy·N)`` per generation, as in msprime.

    Returns
    -------
    Plan

    Raises
    ------
    InvalidGraphError
        Features that are not supported (selfing or cloning rates, size functions other
        than constant and exponential), a graph demes rejects, lineages that can never
        meet (T_MRCA infinite), bad samples or ploidy. The message names the field and
        the deme.
    TypeError
        ``model`` is neither a path nor a ``demes.Graph``.
    ImportError
        demes is not installed.

    Examples
    --------
    >>> import demes
    >>> g = demes.loads('''
    ... time_units: generations
    ... demes:
    ... - name: X
    ...   epochs: [{start_size: 2000, end_time: 1000}]
    ... - name: A
    ...   ancestors: [X]
    ...   epochs: [{start_size: 500}]
    ... - name: B
    ...   ancestors: [X]
    ...   epochs: [{start_size: 800}]
    ... migrations:
    ... - {source: A, dest: B, rate: 1e-4}
    ... ''')
    >>> plan = plan_from_demes(g, {"A": 3, "B": 2})
    >>> plan.demes, plan.samples
    (('A', 'B', 'X'), (3, 2, 0))
    >>> plan.parameter_names
    ('N_A', 'N_B', 'N_X', 'T_split_X', 'm_A_B')
    >>> [(mv.source, mv.targets) for mv in plan.structure.boundaries[0]]
    [(0, (2,)), (1, (2,))]
    """
    try:
        import demes
    except ImportError as exc:
        raise ImportError(
            'reading demes models needs the demes package: pip install "phasetrace[demes]"'
        ) from exc
    graph = _load(model, demes)
    _check_supported(graph)
    if isinstance(ploidy, bool) or not isinstance(ploidy, Integral) or ploidy < 1:
        raise InvalidGraphError(f"ploidy must be a positive integer, got {ploidy!r}")
    sample = _check_samples(graph, samples)

    # A first pass over every deme finds the demes a lineage of the sample can reach;
    # the second builds the plan on those alone.
    everything = _build(graph, [d.name for d in graph.demes])
    reached = _reachable(everything, [everything.index[name] for name in sample])
    kept = list(sample) + [
        d.name for d in graph.demes if d.name not in sample and everything.index[d.name] in reached
    ]
    built = _build(graph, kept)
    _check_meet(built, kept)

    counts = tuple(sample.get(name, 0) for name in kept)
    theta = np.array(built.values, dtype=np.float64)
    for arr in (theta, built.exists, built.migration, built.growth):
        arr.setflags(write=False)  # shared by everyone who holds the plan
    structure = Structure(
        samples=counts,
        sampled=tuple(range(len(sample))),
        exists=built.exists,
        migration=built.migration,
        boundaries=built.boundaries,
        n_proportions=built.n_proportions,
    )
    return Plan(
        demes=tuple(kept),
        samples=counts,
        ploidy=int(ploidy),
        parameter_names=built.names,
        theta=theta,
        kinds=tuple(built.kinds),
        time_parameters=tuple(built.time_cols[1:].tolist()),
        structure=structure,
        growth=built.growth,
        meanings=tuple(built.meanings),
        _layout=built.layout,
    )


def _load(model: Any, demes: Any) -> Any:
    if isinstance(model, demes.Graph):
        graph = model
    elif isinstance(model, str | os.PathLike):
        if isinstance(model, str) and "\n" in model:
            raise InvalidGraphError(
                "model looks like YAML text, not a path: pass demes.loads(text) or a file path"
            )
        try:
            graph = demes.load(model)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidGraphError(f"demes rejected the model {str(model)!r}: {exc}") from exc
    else:
        raise TypeError(
            f"model must be a path to a demes YAML file or a demes.Graph, got {type(model)}"
        )
    return graph.in_generations()


def _check_supported(graph: Any) -> None:
    # msprime refuses these for the whole graph; so do we, never a different model.
    for deme in graph.demes:
        for j, epoch in enumerate(deme.epochs):
            for fld in ("selfing_rate", "cloning_rate"):
                if getattr(epoch, fld) != 0:
                    raise InvalidGraphError(
                        f"deme {deme.name} epoch {j}: {fld} = {getattr(epoch, fld)} is not "
                        f"supported (only {fld} = 0)"
                    )
            if epoch.size_function not in ("constant", "exponential"):
                raise InvalidGraphError(
                    f"deme {deme.name} epoch {j}: size_function {epoch.size_function!r} is not "
                    "supported (only 'constant' and 'exponential')"
                )


def _check_samples(graph: Any, samples: Any) -> dict[str, int]:
    if not isinstance(samples, Mapping) or not samples:
        raise InvalidGraphError(
            f"samples must be a non-empty mapping of deme name to lineage count, got {samples!r}"
        )
    names = [d.name for d in graph.demes]
    out: dict[str, int] = {}
    for name, count in samples.items():
        if name not in names:
            raise InvalidGraphError(
                f"samples: deme {name!r} is not in the graph (demes: {', '.join(names)})"
            )
        deme = graph[name]
        if deme.end_time > 0:
            raise InvalidGraphError(
                f"samples: deme {name} ends at end_time = {deme.end_time} generations ago, so "
                "it has no lineages at time 0 (samples are taken at time 0)"
            )
        if isinstance(count, bool) or not isinstance(count, Integral) or count < 1:
            raise InvalidGraphError(
                f"samples[{name!r}] = {count!r}: sample counts must be positive integers"
            )
        out[name] = int(count)
    if sum(out.values()) < 2:
        raise InvalidGraphError(
            f"samples: at least 2 lineages are needed in all, got {sum(out.values())}"
        )
    return out


@dataclass
class _Built:
    index: dict[str, int]
    names: tuple[str, ...]
    values: list[float]
    kinds: list[str]
    meanings: list[str]
    time_cols: np.ndarray
    exists: np.ndarray
    migration: np.ndarray
    growth: np.ndarray
    boundaries: tuple[tuple[Move, ...], ...]
    n_proportions: int
    layout: _Layout
    positive: np.ndarray  # (I, d, d): migration at a positive rate in the graph
    last_positive: list[tuple[int, int]]


def _build(graph: Any, kept: list[str]) -> _Built:
    """Structure, parameters and layout of the model restricted to the demes ``kept``.

    Events that involve a deme outside ``kept`` are left out.
    """
    index = {name: k for k, name in enumerate(kept)}
    demes_ = [graph[name] for name in kept]
    migrations = [m for m in graph.migrations if m.source in index and m.dest in index]
    # Pulses in the order they apply backwards in time: by time, and at one time in the
    # reverse of the graph's order (demes lists them forwards in time).
    pulses = [p for p in graph.pulses if p.dest in index and all(s in index for s in p.sources)]
    pulses = [p for _, p in sorted(enumerate(pulses), key=lambda jp: (jp[1].time, -jp[0]))]

    names: list[str] = []
    values: list[float] = []
    kinds: list[str] = []
    meanings: list[str] = []

    def add(name: str, value: float, kind: str, meaning: str) -> int:
        names.append(name)
        values.append(float(value))
        kinds.append(kind)
        meanings.append(meaning)
        return len(names) - 1

    # Sizes: one column per constant epoch, two per exponential one.
    size_cols: list[list[tuple[int, ...]]] = []
    for deme in demes_:
        cols = []
        one = len(deme.epochs) == 1
        for j, ep in enumerate(deme.epochs):
            tag = "" if one else f"_{j}"
            what = f"size of {deme.name}" + ("" if one else f", epoch {j}")
            if ep.size_function == "constant":
                cols.append(
                    (add(f"N_{deme.name}{tag}", ep.start_size, "size", what + " (individuals)"),)
                )
            else:
                cols.append(
                    (
                        add(
                            f"N_{deme.name}{tag}_start",
                            ep.start_size,
                            "size",
                            what + " at its older end",
                        ),
                        add(
                            f"N_{deme.name}{tag}_end",
                            ep.end_size,
                            "size",
                            what + " at its younger end",
                        ),
                    )
                )
        size_cols.append(cols)

    # Times: every distinct finite positive time, named after its first event.
    events: list[tuple[float, str, str]] = []  # (time, name, description)
    for deme in demes_:
        if not deme.ancestors:
            continue
        t = deme.start_time
        if len(deme.ancestors) == 1:
            parent = graph[deme.ancestors[0]]
            if parent.end_time == t:
                children = [
                    c
                    for c in kept
                    if graph[c].ancestors == [parent.name] and graph[c].start_time == t
                ]
                events.append(
                    (
                        t,
                        f"T_split_{parent.name}",
                        f"split of {parent.name} into {', '.join(children)}",
                    )
                )
            else:
                events.append(
                    (t, f"T_branch_{deme.name}", f"{deme.name} branches off {parent.name}")
                )
        else:
            merge = all(graph[a].end_time == t for a in deme.ancestors)
            word = "merge" if merge else "admix"
            events.append(
                (t, f"T_{word}_{deme.name}", f"{deme.name} starts from {', '.join(deme.ancestors)}")
            )
    for p in pulses:
        events.append(
            (
                p.time,
                f"T_pulse_{p.sources[0]}_{p.dest}",
                f"pulse {', '.join(p.sources)} -> {p.dest}",
            )
        )
    for deme in demes_:
        for j in range(1, len(deme.epochs)):
            events.append(
                (
                    deme.epochs[j].start_time,
                    f"T_{deme.name}_{j}",
                    f"epoch {j} of {deme.name} starts",
                )
            )
    for deme in demes_:
        if deme.end_time > 0:
            events.append((deme.end_time, f"T_end_{deme.name}", f"{deme.name} ends"))
    for m in migrations:
        events.append(
            (
                m.start_time,
                f"T_m_{m.source}_{m.dest}_start",
                f"migration {m.source} -> {m.dest} starts",
            )
        )
        events.append(
            (m.end_time, f"T_m_{m.source}_{m.dest}_end", f"migration {m.source} -> {m.dest} ends")
        )
    finite = sorted({t for t, _, _ in events if 0 < t < math.inf})
    time_col: dict[float, int] = {}
    for t in finite:
        here = [(n, what) for tt, n, what in events if tt == t]
        time_col[t] = add(
            here[0][0],
            t,
            "time",
            _listing(list(dict.fromkeys(w for _, w in here))) + " (generations ago)",
        )
    cuts = [0.0, *finite]
    n_int, d = len(cuts), len(kept)
    lo = np.array(cuts)
    hi = np.array([*cuts[1:], math.inf])

    def window(end: float, start: float) -> np.ndarray:
        return (end <= lo) & (hi <= start)

    # Migration rates.
    mig_cols = []
    for m in migrations:
        c = add(
            f"m_{m.source}_{m.dest}",
            m.rate,
            "migration",
            f"migration rate {m.source} -> {m.dest} per generation "
            f"(lineages {m.dest} -> {m.source} backwards)",
        )
        mig_cols.append(c)
    # Pulse and ancestry proportions; each Move's index points into `proportions`.
    # proportion j = offset_j + Σ sign·θ[col] over its terms
    prop_terms: list[tuple[list[tuple[int, float]], float]] = []

    pulse_cols: list[tuple[int, ...]] = []
    pulse_props: list[tuple[int, ...]] = []
    for p in pulses:
        cols = tuple(
            add(
                f"p_{s}_{p.dest}",
                q,
                "pulse",
                f"proportion of {p.dest} from {s} in the pulse at {p.time:g}",
            )
            for s, q in zip(p.sources, p.proportions, strict=True)
        )
        pulse_cols.append(cols)
        pulse_props.append(tuple(len(prop_terms) + j for j in range(len(cols))))
        prop_terms += [([(c, 1.0)], 0.0) for c in cols]
    anc_cols: list[tuple[int, ...]] = []
    anc_props: dict[str, tuple[int, ...]] = {}
    for deme in demes_:
        if len(deme.ancestors) < 2:
            continue
        last = deme.ancestors[-1]
        cols = tuple(
            add(
                f"a_{a}_{deme.name}",
                q,
                "ancestry",
                f"proportion of {deme.name} from {a} at its start ({last} gets the rest)",
            )
            for a, q in zip(deme.ancestors[:-1], deme.proportions[:-1], strict=True)
        )
        anc_cols.append(cols)
        anc_props[deme.name] = tuple(len(prop_terms) + j for j in range(len(cols) + 1))
        prop_terms += [([(c, 1.0)], 0.0) for c in cols]
        prop_terms.append(([(c, -1.0) for c in cols], 1.0))

    n_par = len(names)
    final_names = _unique(names)

    # Existence, sizes and growth per interval.
    exists = np.zeros((n_int, d), bool)
    growth = np.zeros((n_int, d), bool)
    const_pos, const_par = [], []
    exp_rows: list[tuple[int, int, int, int, int, int]] = []
    for k, deme in enumerate(demes_):
        exists[:, k] = window(deme.end_time, deme.start_time)
        for ep, cols in zip(deme.epochs, size_cols[k], strict=True):
            for i in np.flatnonzero(window(ep.end_time, ep.start_time)):
                if len(cols) == 1:
                    const_pos.append(i * d + k)
                    const_par.append(cols[0])
                else:
                    growth[i, k] = True
                    t_end = time_col.get(ep.end_time, n_par)
                    exp_rows.append(
                        (i * d + k, i, cols[0], cols[1], t_end, time_col[ep.start_time])
                    )

    migration = np.zeros((n_int, d, d), bool)
    positive = np.zeros((n_int, d, d), bool)
    mig_pos, mig_par = [], []
    for m, c in zip(migrations, mig_cols, strict=True):
        k, src = index[m.dest], index[m.source]
        for i in np.flatnonzero(window(m.end_time, m.start_time)):
            migration[i, k, src] = True
            positive[i, k, src] = m.rate > 0
            mig_pos.append(i * d * d + k * d + src)
            mig_par.append(c)
    if len(set(mig_pos)) != len(mig_pos):  # demes forbids overlapping migrations
        raise InvalidGraphError("overlapping migrations between the same pair of demes")

    # Moves at each boundary, in msprime's order (Demography.from_demes adds splits,
    # branches, pulses in reverse, mergers, admixtures; its sort_events is stable).
    boundaries = []
    for t in finite:
        starts = [dm for dm in demes_ if dm.ancestors and dm.start_time == t]
        one = [dm for dm in starts if len(dm.ancestors) == 1]
        single = [dm for dm in one if graph[dm.ancestors[0]].end_time == t]
        single += [dm for dm in one if graph[dm.ancestors[0]].end_time != t]
        several = [dm for dm in starts if len(dm.ancestors) > 1]
        merges = [dm for dm in several if all(graph[a].end_time == t for a in dm.ancestors)]
        several = merges + [dm for dm in several if dm not in merges]
        moves = [Move(index[dm.name], (index[dm.ancestors[0]],), (), False) for dm in single]
        for p, props in zip(pulses, pulse_props, strict=True):
            if p.time == t:
                moves.append(Move(index[p.dest], tuple(index[s] for s in p.sources), props, True))
        for dm in several:
            moves.append(
                Move(
                    index[dm.name], tuple(index[a] for a in dm.ancestors), anc_props[dm.name], False
                )
            )
        boundaries.append(_drop_empty(moves))

    prop_matrix = np.zeros((n_par, len(prop_terms)))
    prop_offset = np.zeros(len(prop_terms))
    for j, (cols, off) in enumerate(prop_terms):
        prop_offset[j] = off
        for c, sign in cols:
            prop_matrix[c, j] = sign
    exp_arr = np.array(exp_rows, dtype=np.intp).reshape(-1, 6)
    last = [
        (index[m.dest], index[m.source], c)
        for m, c in zip(migrations, mig_cols, strict=True)
        if migration[-1, index[m.dest], index[m.source]]
    ]
    layout = _Layout(
        time_cols=np.array([n_par] + [time_col[t] for t in finite], dtype=np.intp),
        const_pos=np.array(const_pos, dtype=np.intp),
        const_par=np.array(const_par, dtype=np.intp),
        exp_pos=exp_arr[:, 0],
        exp_interval=exp_arr[:, 1],
        exp_older=exp_arr[:, 2],
        exp_younger=exp_arr[:, 3],
        exp_t_end=exp_arr[:, 4],
        exp_t_start=exp_arr[:, 5],
        mig_pos=np.array(mig_pos, dtype=np.intp),
        mig_par=np.array(mig_par, dtype=np.intp),
        prop_matrix=prop_matrix,
        prop_offset=prop_offset,
        sizes=np.array([j for j, kd in enumerate(kinds) if kd == "size"], dtype=np.intp),
        rates=np.array(mig_cols, dtype=np.intp),
        pulses=tuple(pulse_cols),
        ancestries=tuple(anc_cols),
        last_edges=tuple(last),
    )
    return _Built(
        index=index,
        names=final_names,
        values=values,
        kinds=kinds,
        meanings=meanings,
        time_cols=layout.time_cols,
        exists=exists,
        migration=migration,
        growth=growth,
        boundaries=tuple(boundaries),
        n_proportions=len(prop_terms),
        layout=layout,
        positive=positive,
        last_positive=[(k, j) for k, j, c in last if values[c] > 0],
    )


def _listing(items: list[str], most: int = 3) -> str:
    more = f"; and {len(items) - most} more" if len(items) > most else ""
    return "; ".join(items[:most]) + more


def _drop_empty(moves: list[Move]) -> tuple[Move, ...]:
    """Leave out moves from a deme that an earlier move of the same boundary emptied."""
    emptied: set[int] = set()
    out = []
    for mv in moves:
        if mv.source in emptied:
            continue
        out.append(mv)
        emptied.difference_update(mv.targets)
        if not mv.stay:
            emptied.add(mv.source)
    return tuple(out)


def _reachable(built: _Built, start: list[int]) -> set[int]:
    """The demes that can hold a lineage started in ``start``, sweeping back in time.

    Migrations at rate 0 in the graph move nothing (as in msprime).
    """
    occupied = set(start)
    ever = set(occupied)
    n_int = built.exists.shape[0]
    for i in range(n_int):
        todo = list(occupied)
        while todo:
            k = todo.pop()
            for j in np.flatnonzero(built.positive[i, k]).tolist():
                if j not in occupied:
                    occupied.add(j)
                    todo.append(j)
        ever |= occupied
        if i < n_int - 1:
            for mv in built.boundaries[i]:
                if mv.source in occupied:
                    occupied.update(mv.targets)
                    if not mv.stay:
                        occupied.discard(mv.source)
            ever |= occupied
    return ever


def _sink_groups(nodes: Any, edges: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """The closed communicating classes of the directed graph (nodes, edges)."""
    nodes = [int(v) for v in nodes]
    succ: dict[int, set[int]] = {v: set() for v in nodes}
    for a, b in edges:
        if a in succ and b in succ:
            succ[a].add(b)
    reach = {}
    for v in nodes:
        seen, todo = {v}, [v]
        while todo:
            for w in succ[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        reach[v] = seen
    sinks = {tuple(sorted(reach[v])) for v in nodes if all(v in reach[w] for w in reach[v])}
    return sorted(sinks)


def _groups_text(demes: tuple[str, ...] | list[str], groups: list[tuple[int, ...]]) -> str:
    return " and ".join("{" + ", ".join(demes[k] for k in g) + "}" for g in groups)


def _check_meet(built: _Built, kept: list[str]) -> None:
    last = np.flatnonzero(built.exists[-1])
    sinks = _sink_groups(last, built.last_positive)
    if len(sinks) > 1:
        start = built.values[built.time_cols[-1]] if built.time_cols.size > 1 else 0.0
        raise InvalidGraphError(
            f"lineages can never meet: demes {_groups_text(kept, sinks)} hold lineages of the "
            f"sample and exist forever (from {start:g} generations ago on) without migration "
            "that lets all lineages end in one deme, so T_MRCA is infinite"
        )


def _unique(names: list[str]) -> tuple[str, ...]:
    """Suffix repeated names _1, _2, … (in order), until every name is unique."""
    names = list(names)
    while True:
        counts = Counter(names)
        repeated = {n for n, c in counts.items() if c > 1}
        if not repeated:
            return tuple(names)
        seen: Counter[str] = Counter()
        for j, n in enumerate(names):
            if n in repeated:
                seen[n] += 1
                names[j] = f"{n}_{seen[n]}"
