"""Demographic models read from demes: exact coalescent moments, spectra and distributions.

:func:`from_demes` reads a demes model (the field's standard format; msprime, moments,
dadi and stdpopsim read and write it) and a sample, and returns a
:class:`DemographicModel`: a time-inhomogeneous model (:class:`~.epochs.TimeModel`)
whose parameters θ are the numbers of the demes graph (sizes, times, migration rates,
pulse and ancestry proportions; :attr:`DemographicModel.parameter_names`). Units are
those of demes and msprime: sizes in individuals, times in generations, rates per
generation; with ``ploidy = 2`` a pair of lineages in a deme of size ``N`` coalesces at
rate ``1/(2N)`` per generation. Answers are in generations: ``E[T_MRCA]``, and for
spectra the expected total branch length (multiply by the mutation rate per generation
and the sequence length for expected numbers of sites).

The state space follows what is asked: lineage counts per deme for ``T_MRCA``, block
counting for the pooled SFS (:func:`phasetrace.sfs`), joint block counting for the joint
SFS (:func:`phasetrace.jsfs`); each is built on first use (from arrays, sized before it
is built) and its last epoch recorded once.

Exactness: epochs of constant size are exact up to the uniformization tolerance
(``tol``, default 1e-10 relative). Inside an epoch of exponential growth the rates change
continuously: it is cut into ``M`` pieces of constant rates (midpoint values), run at
``M``, ``2M`` and ``4M`` pieces and extrapolated (Romberg, error ``O(M⁻⁶)``), with ``M``
doubled until the estimated error of the extrapolated lineage occupation times is below
``tol`` (:attr:`DemographicModel.last_growth_steps` reports ``M``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .engine import DEFAULT_MAX_STEPS, DEFAULT_TOL, EpochEngine, MapTerms
from .epochs import TimeModel, _check_tol

__all__ = ["DemographicModel", "from_demes", "griffiths_tavare"]


def from_demes(
    model: Any,
    samples: Mapping[str, int],
    *,
    ploidy: int = 2,
    tol: float = DEFAULT_TOL,
    max_states: int | None = None,
) -> DemographicModel:
    """A demographic model from demes, with ``samples`` lineages from its demes.

    Parameters
    ----------
    model : str, path or demes.Graph
        A demes YAML file, or a graph (``demes.load``, ``msprime.Demography.to_demes()``).
    samples : mapping of str to int
        Haploid lineages (genomes) sampled at time 0 per deme, as moments and dadi count
        them: ``{"A": 4, "B": 4}``. The order sets the axes of :func:`phasetrace.jsfs`.
    ploidy : int
        Sets the time scale as msprime does: pairwise coalescence rate ``1/(ploidy·N)``
        per generation.
    tol : float
        Relative tolerance of the time-inhomogeneous computations (uniformization and
        growth), default 1e-10.
    max_states : int, optional
        Refuse to build a state space estimated to need more states (the message says
        how many and what to use instead); default
        the ``max_states`` setting (:func:`phasetrace.configure`, default 1,000,000).

    Returns
    -------
    DemographicModel

    Raises
    ------
    InvalidGraphError
        For features phasetrace does not model (selfing, cloning, linear size changes),
        samples from demes that do not exist at time 0, lineages that never meet.
    ImportError
        When demes is not installed (``pip install "phasetrace[demes]"``).

    Examples
    --------
    >>> import demes, phasetrace as pt
    >>> g = demes.loads('''
    ... time_units: generations
    ... demes:
    ... - name: A
    ...   epochs: [{start_size: 1000}]
    ... ''')
    >>> model = pt.models.from_demes(g, samples={"A": 2})
    >>> model.parameter_names, model.theta.tolist()
    (('N_A',), [1000.0])
    >>> float(model.expectation())          # E[T_MRCA] = 2N generations
    2000.0
    """
    from .plan import plan_from_demes

    plan = plan_from_demes(model, samples, ploidy=ploidy)
    return DemographicModel(plan, dict(samples), tol=tol, max_states=max_states)


class DemesModel(TimeModel):
    """A demes plan on one kind of state space ("lineages", "blocks" or "joint")."""

    def __init__(self, plan, kind: str, *, tol: float, max_states: int | None, proxy=None):
        from .statespace import build_state_space

        self._proxy = proxy  # the lineage-count model: cheap occupation times for growth
        self.plan = plan
        self.kind = kind
        self.parameter_names = tuple(plan.parameter_names)
        self.theta = np.array(plan.theta, dtype=np.float64)
        self.tol = _check_tol(tol)
        self.max_steps = DEFAULT_MAX_STEPS
        self.space = build_state_space(plan.structure, kind, max_states=max_states)
        s = plan.structure
        d = s.n_demes
        pairs = self.space.pairs
        active = np.concatenate(
            [s.exists, np.stack([s.migration[:, a, b] for a, b in pairs], axis=1)]
            if pairs
            else [s.exists],
            axis=1,
        )
        self._pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self._d = d
        maps = [_engine_map(m) for m in self.space.maps]
        self.engine = EpochEngine(
            self.space.graph,
            s.n_intervals,
            maps,
            active=active,
            supports=self.space.support,
            absorbing=self.space.absorbing,
        )
        self._stays = [m.stay_index for m in self.space.maps]

    def check(self, theta) -> None:
        self.plan.check(theta)

    # -- θ → pieces --------------------------------------------------------------------
    def _arrays(self, th: np.ndarray, sub: int):
        """φ per piece, lengths of the bounded pieces and map symbols at θ (float or
        complex, (N, n)); growth epochs cut into ``sub`` pieces."""
        plan = self.plan
        s = plan.structure
        res = plan.resolve(th)
        n_int = s.n_intervals
        src, dst = self._pairs[:, 0], self._pairs[:, 1]
        phis, taus, epochs = [], [], []
        for i in range(n_int):
            grows = bool(plan.growth[i].any()) and i < n_int - 1
            M = sub if grows else 1
            mig = res.migration[:, i][:, src, dst]
            for j in range(M):
                if grows:
                    lo, hi = np.log(res.size_start[:, i]), np.log(res.size_end[:, i])
                    size = np.exp(lo + (j + 0.5) / M * (hi - lo))
                else:
                    size = res.size_start[:, i]
                c = np.where(s.exists[i][None, :], 1.0 / (plan.ploidy * size), 0.0)
                phis.append(np.concatenate([c, mig], axis=1))
                epochs.append(i)
                if i < n_int - 1:
                    taus.append((res.times[:, i + 1] - res.times[:, i]) / M)
        syms = []
        for stay in self._stays:
            p = res.proportions
            stays = [1.0 - p[:, list(ix)].sum(axis=1) for ix in stay]
            syms.append(np.concatenate([p, np.stack(stays, axis=1)], axis=1) if stays else p)
        return phis, taus, epochs, syms

    def _grows(self) -> bool:
        return bool(self.plan.growth[:-1].any())

    def spectrum_rewards(self, which: str) -> np.ndarray:
        """The reward matrix of the pooled (``"sfs"``) or joint (``"jsfs"``) spectrum on
        this state space, built once (it does not depend on θ)."""
        cache = self.__dict__.setdefault("_spectrum_rewards", {})
        if which not in cache:
            space = self.space
            cache[which] = space.sfs_rewards() if which == "sfs" else space.jsfs_rewards()
            cache[which].flags.writeable = False
        return cache[which]

    def _spectrum(self, theta, which: str, gradient: bool):
        """First moments of every spectrum reward at θ: ``(…, R)`` (and ``(…, R, P)``)."""
        th, single = self._thetas(theta)
        mom, jac = self._evaluate(th, self.spectrum_rewards(which), 1, gradient)
        mom = mom[..., 0]
        if not gradient:
            return mom[0] if single else mom
        jac = jac[..., 0, :]
        return (mom[0], jac[0]) if single else (mom, jac)

    def _growth_proxy(self) -> TimeModel:
        return self if self._proxy is None else self._proxy


class DemographicModel(DemesModel):
    """A demes model and its sample: ``T_MRCA`` by default, spectra on request.

    Built by :func:`from_demes` (see its docstring and the module docstring for units and
    exactness). As a :class:`~.epochs.TimeModel` it is the lineage-count model of
    ``T_MRCA``: :meth:`expectation`, :meth:`moments`, :meth:`gradient`,
    :meth:`moments_and_jacobian` and ``pt.cdf/pdf/sf/quantile(model, t, theta)``; θ
    defaults to :attr:`theta`, the values read from the graph. :func:`phasetrace.sfs` and
    :func:`phasetrace.jsfs` build the block-counting state spaces they need.

    Attributes
    ----------
    plan : Plan
        The structure and parameters read from demes (:meth:`describe` lists them).
    samples : dict
        The sample, as given.
    """

    def __init__(self, plan, samples: dict, *, tol: float, max_states: int | None):
        super().__init__(plan, "lineages", tol=tol, max_states=max_states)
        self.samples = dict(samples)
        #: The state-space limit the model was built with (``None``: the default).
        self.max_states = max_states
        self._variants: dict[str, DemesModel] = {"lineages": self}

    def describe(self) -> str:
        """The parameters: name, value read from the graph, meaning."""
        return self.plan.describe()

    def variant(self, kind: str) -> DemesModel:
        """The same model on the state space ``kind`` ("lineages", "blocks", "joint"),
        built on first use."""
        if kind not in self._variants:
            self._variants[kind] = DemesModel(
                self.plan, kind, tol=self.tol, max_states=self.max_states, proxy=self
            )
        return self._variants[kind]

    @property
    def panmictic(self) -> bool:
        """Whether every lineage stays in one deme (one deme holds lineages): the SFS
        then comes from the lineage counts alone, for any number of samples."""
        return self.plan.structure.n_demes == 1

    def sfs(self, theta=None, *, gradient: bool = False):
        """The expected SFS pooled over all samples: entries ``1 … n − 1`` (generations).

        One panmictic deme: from the expected time with ``k`` lineages (the lineage-count
        chain, ``n`` states) by the Griffiths–Tavaré identity (positive weights, stable
        at any ``n``); otherwise on the block-counting state space.
        """
        n = int(sum(self.plan.samples))
        if self.panmictic:
            out = self.occupation(theta, gradient=gradient)
            k = self.states[:, 0]
            where = np.full(n + 1, -1)
            where[k[1:]] = np.arange(1, k.size)
            cols = where[np.arange(2, n + 1)]  # vertex with k lineages, k = 2 … n
            if not gradient:
                return griffiths_tavare(n, out[..., cols])
            occ, docc = out
            dsfs = griffiths_tavare(n, np.moveaxis(docc[..., cols, :], -1, -2))
            return griffiths_tavare(n, occ[..., cols]), np.moveaxis(dsfs, -2, -1)
        return self.variant("blocks")._spectrum(theta, "sfs", gradient)

    def jsfs(self, theta=None, *, gradient: bool = False):
        """The expected joint SFS: shape ``(n_1 + 1, …, n_S + 1)`` over the sampled demes
        in the order of ``samples`` (entry ``(a_1, …)``: branch length subtending exactly
        ``a_j`` samples of deme ``j``), the layout of tskit's
        ``allele_frequency_spectrum(sample_sets, mode="branch", polarised=True)``."""
        shape = tuple(self.plan.samples[k] + 1 for k in self.plan.structure.sampled)
        out = self.variant("joint")._spectrum(theta, "jsfs", gradient)
        if not gradient:
            return out.reshape(*out.shape[:-1], *shape)
        m, j = out
        lead = m.shape[:-1]
        return m.reshape(*lead, *shape), j.reshape(*lead, *shape, self.n_params)


def _engine_map(m) -> MapTerms | None:
    """The engine's form of a state-space map; ``None`` for the identity."""
    identity = np.array_equal(m.src, m.dst) and np.all(m.coef == 1.0)
    if identity and not m.exps.any():
        return None
    return MapTerms(m.src, m.dst, m.coef, m.exps)


def griffiths_tavare(n: int, times: np.ndarray) -> np.ndarray:
    """The expected SFS from the expected times with ``k`` lineages.

    ``E[ξ_i] = Σ_{k=2}^{n−i+1} k·E[T_k]·C(n − i − 1, k − 2)/C(n − 1, k − 1)``
    (Griffiths & Tavaré), for ``times[..., k − 2] = E[T_k]``, ``k = 2 … n`` (the last
    axis). Every weight is positive (nothing cancels at any ``n``) and is a product of
    ratios of integers (:mod:`phasetrace._gt_impl`); ``O(n²)`` work, ``O(n)`` memory.

    Examples
    --------
    >>> import numpy as np
    >>> n = 5
    >>> times = np.array([2 / (k * (k - 1)) for k in range(2, n + 1)])   # constant size
    >>> griffiths_tavare(n, times).round(12).tolist()                     # 2/i
    [2.0, 1.0, 0.666666666667, 0.5]
    """
    from .._gt_impl import sfs_from_times

    flat = np.ascontiguousarray(times, dtype=np.float64).reshape(-1, n - 1)
    out = np.empty((flat.shape[0], n - 1))
    sfs_from_times(n, flat, out)
    return out.reshape(*times.shape[:-1], n - 1)
