"""Models whose rates change with time: :class:`EpochModel` on any graph.

A :class:`TimeModel` turns its parameter vector θ into a schedule of pieces (spans of
constant rates) and boundary maps, which :class:`~.engine.EpochEngine` evaluates; the
methods every model shares (moments, rewards, gradients, cross moments) live here.
:class:`EpochModel` is the general case: one graph, ``E`` epochs, a parameter vector per
epoch, the boundary times, and optional maps at the boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._args import as_k, as_reward_matrix, as_rewards, as_thetas, shaped
from ..errors import InvalidParameterError
from ..graph import Graph
from .engine import DEFAULT_MAX_STEPS, DEFAULT_TOL, EpochEngine, MapStep, MapTerms, Piece

#: Imaginary step of the complex-step derivatives of the parameter map (relative).
_COMPLEX_STEP = 1e-20
#: Romberg weights of the runs with M, 2M and 4M pieces per growing epoch (error O(M⁻⁶)).
_ROMBERG = (1.0 / 45.0, -20.0 / 45.0, 64.0 / 45.0)
#: Pieces per growing epoch to start from, and the most that will be tried.
GROWTH_START = 4
GROWTH_MAX = 8192

__all__ = ["EpochModel", "TimeModel"]


class TimeModel:
    """What every time-inhomogeneous model offers; subclasses define the schedule.

    A subclass sets ``engine`` (an :class:`~.engine.EpochEngine`), ``parameter_names``
    and ``theta`` (default parameter values), and implements :meth:`_schedules`.
    Rewards are vectors over :attr:`states` (the graph's vertices, the start first).
    """

    engine: EpochEngine
    parameter_names: tuple[str, ...]
    theta: np.ndarray
    tol: float = DEFAULT_TOL
    max_steps: int = DEFAULT_MAX_STEPS
    #: Pieces per growing epoch in the last evaluation (``None``: no rates change inside).
    last_growth_steps: int | None = None

    # -- what the argument helpers need ---------------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self.parameter_names)

    @property
    def states(self) -> np.ndarray:
        """The state of every vertex of the graph (``graph.arrays()`` order, the start first)."""
        return self.engine.graph.arrays().states

    @property
    def n_vertices(self) -> int:
        return self.engine.n_vertices

    def rewards_from(self, fn: Callable[[np.ndarray], float]) -> np.ndarray:
        """A reward vector over :attr:`states` from a function of the state."""
        return np.array([float(fn(s)) for s in self.states], dtype=np.float64)

    # -- to be defined by subclasses ---------------------------------------------------------
    def _arrays(self, th: np.ndarray, sub: int):
        """``(phis, taus, epochs, syms)`` at θ (N, n_params), real or complex, computed
        with analytic operations only (complex steps give the derivatives): the
        parameter vector (N, P) of every piece in time order, the lengths (N,) of the
        bounded ones, the epoch of each, and the map symbols (N, S_b) of every boundary.
        Epochs whose rates change inside are cut into ``sub`` pieces."""
        raise NotImplementedError

    def _grows(self) -> bool:
        """Whether some bounded epoch has rates that change inside it."""
        return False

    def _growth_proxy(self) -> TimeModel:
        """The model whose occupation times decide the number of growth pieces."""
        return self

    def check(self, theta) -> None:
        """Raise :class:`~phasetrace.errors.InvalidParameterError` if θ is not admissible."""

    # -- evaluation ----------------------------------------------------------------------
    def _thetas(self, theta) -> tuple[np.ndarray, bool]:
        if theta is None and not np.isfinite(self.theta).all():
            raise InvalidParameterError("give theta: this model has no default parameters")
        th, single = as_thetas(self, self.theta if theta is None else theta)
        self.check(th)
        return th, single

    def _evaluate(self, th: np.ndarray, rewards: np.ndarray, k: int, gradient: bool):
        total = total_jac = None
        for weight, steps, n_dir in self._schedules(th, gradient):
            mom, jac = self.engine.evaluate(
                steps,
                rewards,
                k,
                n_directions=n_dir if gradient else 0,
                tol=self.tol,
                max_steps=self.max_steps,
            )
            total = weight * mom if total is None else total + weight * mom
            if gradient:
                total_jac = weight * jac if total_jac is None else total_jac + weight * jac
        if not np.isfinite(total).all():
            raise InvalidParameterError("moments are not finite at this θ (overflow)")
        return total, total_jac

    # -- θ → schedules (complex-step derivatives; Romberg for growth) -------------------
    def _steps(self, th: np.ndarray, gradient: bool, sub: int):
        """The engine's schedule at a real batch θ (B, n), with complex-step derivatives."""
        B, n = th.shape
        if gradient:
            h = _COMPLEX_STEP * np.maximum(np.abs(th), 1e-300)  # (B, n)
            rows = np.repeat(th[:, None, :], n + 1, axis=1).astype(np.complex128)
            rows[:, 1:, :] += 1j * h[:, None, :] * np.eye(n)[None]
            phis, taus, epochs, syms = self._arrays(rows.reshape(B * (n + 1), n), sub)

            def split(x):  # (B·(n+1), …) → value (B, …), derivative (B, …, n)
                x = x.reshape(B, n + 1, *x.shape[1:])
                val = x[:, 0].real
                der = np.moveaxis(x[:, 1:].imag, 1, -1) / h.reshape(B, *([1] * (x.ndim - 2)), n)
                return np.ascontiguousarray(val), np.ascontiguousarray(der)

        else:
            phis, taus, epochs, syms = self._arrays(th, sub)

            def split(x):
                return np.ascontiguousarray(x.real if np.iscomplexobj(x) else x), None

        steps = []
        for piece, (phi, e) in enumerate(zip(phis, epochs, strict=True)):
            phi_v, phi_d = split(phi)
            if piece == len(phis) - 1:
                steps.append(Piece(e, phi_v, None, phi_d))
                break
            tau_v, tau_d = split(taus[piece])
            steps.append(Piece(e, phi_v, tau_v, phi_d, tau_d))
            if epochs[piece + 1] != e:  # a boundary between intervals
                m = self.engine.maps[e]
                if m is not None:
                    sym_v, sym_d = split(syms[e])
                    steps.append(MapStep(e, sym_v, sym_d))
        return steps

    def _schedules(self, theta: np.ndarray, gradient: bool):
        """``[(weight, steps, n_directions)]`` for a batch θ (B, n_params): the result is
        ``Σ weight·evaluate(steps)`` (Romberg's combination when rates change inside
        epochs, else one schedule)."""
        n = self.n_params
        if not self._grows():
            self.last_growth_steps = None
            return [(1.0, self._steps(theta, gradient, 1), n)]
        M = self._growth_steps(theta)
        self.last_growth_steps = M
        return [
            (w, self._steps(theta, gradient, m), n)
            for w, m in zip(_ROMBERG, (M, 2 * M, 4 * M), strict=True)
        ]

    def _growth_steps(self, theta: np.ndarray) -> int:
        """The number of pieces per growing epoch at which Romberg's estimate of its own
        error (on the occupation times of :meth:`_growth_proxy`) is below ``tol``."""
        occ = {}
        proxy = self._growth_proxy()

        def run(m):
            if m not in occ:
                occ[m] = proxy._occupation_proxy(theta, m)
            return occ[m]

        def romberg(m):  # O(m⁻⁶): midpoint pieces m, 2m, 4m
            return _ROMBERG[0] * run(m) + _ROMBERG[1] * run(2 * m) + _ROMBERG[2] * run(4 * m)

        M = GROWTH_START
        previous = romberg(M // 2)
        while True:
            current = romberg(M)
            scale = np.abs(current).max(axis=-1, keepdims=True)
            # the change from M/2 to M bounds the error of the coarser one, about 64
            # times that of the result kept (which uses M, 2M and 4M pieces)
            err = np.abs(current - previous) / np.maximum(scale, 1e-300)
            if err.max() <= self.tol:
                return M
            if 2 * M > GROWTH_MAX:
                raise InvalidParameterError(
                    f"growth too strong for tol={self.tol}: {4 * GROWTH_MAX} pieces per "
                    f"growing epoch leave an estimated relative error of {err.max():.2g}"
                )
            previous = current
            M *= 2

    def _occupation_proxy(self, theta: np.ndarray, sub: int) -> np.ndarray:
        """Expected time in each state at ``sub`` pieces per growing epoch."""
        steps = self._steps(theta, False, sub)
        occ, _ = self.engine.occupation(steps, tol=self.tol, max_steps=self.max_steps)
        return occ

    # -- evaluation through occupation times -------------------------------------------
    def occupation(self, theta=None, *, gradient: bool = False):
        """Expected total time (generations) spent in each state of :attr:`states`.

        ``E[∫ r(X_t) dt] = occupation·r`` for any rewards; with ``gradient``, also the
        derivatives (a trailing axis ``(n_params,)``).
        """
        th, single = self._thetas(theta)
        total = total_d = 0.0
        for weight, steps, n_dir in self._schedules(th, gradient):
            occ, docc = self.engine.occupation(
                steps, n_directions=n_dir if gradient else 0, tol=self.tol, max_steps=self.max_steps
            )
            total = total + weight * occ
            if gradient:
                total_d = total_d + weight * docc
        if not gradient:
            return total[0] if single else total
        return (total[0], total_d[0]) if single else (total, total_d)

    def moments(self, theta=None, k: int = 1, rewards=None) -> np.ndarray:
        """``[E[Y], …, E[Y^k]]`` at θ (``Y`` is the absorption time without rewards).

        Parameters
        ----------
        theta : array_like, shape (n_params,) or (B, n_params), optional
            Parameters (default: :attr:`theta`).
        k : int
            Highest moment.
        rewards : None, callable, array_like (n_vertices,) or (R, n_vertices), or list
            Reward rates per vertex of :attr:`states` (``Y = ∫ r(X_t) dt``), as in
            :meth:`phasetrace.Trace.moments`; several vectors in one pass.

        Returns
        -------
        ndarray
            Shape (k,), with a leading (B,) for a batch and an (R,) before the last axis
            for several reward vectors.
        """
        k = as_k(k)
        th, single = self._thetas(theta)
        rew, multi = as_reward_matrix(self, rewards)
        mom, _ = self._evaluate(th, rew, k, False)
        return shaped(mom, single, multi)

    def moments_and_jacobian(self, theta=None, k: int = 1, rewards=None):
        """:meth:`moments` and their derivatives in θ (a trailing axis ``(n_params,)``).

        Derivatives are forward tangents of the same computation (exact up to the same
        truncation tolerance as the values), not finite differences.
        """
        k = as_k(k)
        th, single = self._thetas(theta)
        rew, multi = as_reward_matrix(self, rewards)
        mom, jac = self._evaluate(th, rew, k, True)
        return shaped(mom, single, multi), shaped(jac, single, multi)

    def expectation(self, theta=None, rewards=None):
        """``E[Y]`` at θ: a float for one θ and one reward vector (see :meth:`moments`)."""
        return self.moments(theta, 1, rewards)[..., 0][()]

    def variance(self, theta=None, rewards=None):
        """``Var[Y]`` at θ."""
        m = self.moments(theta, 2, rewards)
        return (m[..., 1] - m[..., 0] ** 2)[()]

    def gradient(self, theta=None, rewards=None) -> np.ndarray:
        """``∂E[Y]/∂θ``: shape (n_params,) for one θ, (B, n_params) for a batch."""
        return self.moments_and_jacobian(theta, 1, rewards)[1][..., 0, :]

    def cross_moment(self, theta, rewards_i, rewards_j):
        """``E[Y_i Y_j]`` for two reward vectors (``E[T²]`` when both are ones).

        From ``E[(Y_i + Y_j)²] − E[Y_i²] − E[Y_j²]``, all positive terms evaluated in
        one pass; relative rounding is about ``1e-16·(E[Y_i²] + E[Y_j²])/E[Y_i Y_j]``.
        """
        th, single = self._thetas(theta)
        ri, rj = as_rewards(self, rewards_i), as_rewards(self, rewards_j)
        mom, _ = self._evaluate(th, np.stack([ri + rj, ri, rj]), 2, False)
        out = 0.5 * (mom[:, 0, 1] - mom[:, 1, 1] - mom[:, 2, 1])
        return out[0] if single else out


class EpochModel(TimeModel):
    """A graph whose rates change at given times, with optional maps at the changes.

    Epoch ``e`` covers ``[t_e, t_{e+1})`` (``t_0 = 0``, the last epoch unbounded) and uses
    its own parameter vector ``φ_e`` (``graph.n_params`` entries) in the graph's rates.
    At ``t_{e+1}`` the map ``maps[e]`` (if any) moves the probability mass.

    θ is, in this order: ``φ_0, …, φ_{E−1}`` (``E·graph.n_params`` entries), the
    boundary times ``t_1 < … < t_{E−1}``, the symbols of the maps (proportions, in
    boundary order), then one growth rate per ``growing`` pair. :attr:`parameter_names`
    names them (``phi0[2]``, ``t1``, ``p1[0]``, ``g0[1]``).

    Parameters
    ----------
    graph : Graph
        States and transitions, shared by every epoch.
    n_epochs : int
        Number of epochs ``E >= 1`` (one epoch: an ordinary time-homogeneous model).
    maps : sequence of MapTerms or None, optional
        ``E − 1`` entries: the map applied at each boundary, or ``None``. Build one with
        :meth:`map_from_function`.
    active : array_like of bool (E, n_params), optional
        Parameters that can be nonzero in each epoch; edges whose rate is 0 in an epoch
        by this pattern are left out of it (in the last epoch that matters: a state no
        active edge leaves, where mass can be, makes the absorption time infinite).
    growing : sequence of (epoch, parameter), optional
        Parameters that change continuously inside a bounded epoch: parameter ``p`` of
        epoch ``e`` is ``φ_{e,p}·exp(γ·(t − t_e))`` there, with the growth rate ``γ`` a
        parameter of its own (``g{e}[{p}]``; exponential growth of a population is a
        coalescence rate ``1/N(t)`` with ``γ`` minus its growth rate). Evaluated by
        Romberg-extrapolated midpoint pieces to ``tol`` (:attr:`last_growth_steps`).
    theta : array_like, optional
        Default parameter values.
    tol : float
        Bound on the relative truncation error of the uniformization (default 1e-10).

    Examples
    --------
    Two lineages coalescing at rate 1 until ``t = 1`` and at rate 4 after:
    ``E[T] = 1 − e^{−1} + e^{−1}/4``.

    >>> import math, phasetrace as pt
    >>> g = pt.models.kingman(2, state_space="lineages")
    >>> model = pt.EpochModel(g, 2)
    >>> model.parameter_names
    ('phi0[0]', 'phi1[0]', 't1')
    >>> exact = 1 - math.exp(-1) + math.exp(-1) / 4
    >>> bool(abs(model.expectation([1.0, 4.0, 1.0]) - exact) < 1e-14)
    True
    """

    def __init__(
        self,
        graph: Graph,
        n_epochs: int,
        maps: Sequence[MapTerms | None] | None = None,
        *,
        active=None,
        growing=None,
        theta=None,
        tol: float = DEFAULT_TOL,
        max_steps: int = DEFAULT_MAX_STEPS,
    ):
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a phasetrace Graph, got {type(graph).__name__}")
        self.engine = EpochEngine(graph, n_epochs, maps, active=active)
        E, P = self.engine.n_epochs, graph.n_params
        names = [f"phi{e}[{p}]" for e in range(E) for p in range(P)]
        names += [f"t{e}" for e in range(1, E)]
        self._sym = []
        for b, m in enumerate(self.engine.maps):
            n = 0 if m is None else m.n_symbols
            self._sym.append((len(names), n))
            names += [f"p{b + 1}[{s}]" for s in range(n)]
        self._growing = _growing_pairs(growing, E, P)
        self._growth_cols = np.arange(len(names), len(names) + len(self._growing))
        names += [f"g{e}[{p}]" for e, p in self._growing.tolist()]
        self.parameter_names = tuple(names)
        self.theta = np.full(len(names), np.nan) if theta is None else np.asarray(theta, np.float64)
        self.tol = _check_tol(tol)
        self.max_steps = int(max_steps)

    @staticmethod
    def map_from_function(graph: Graph, fn: Callable, n_symbols: int = 0) -> MapTerms:
        """A boundary map from ``fn(state) → [(next_state, coef, exps), …]``.

        The probability of ``state → next_state`` is the sum of ``coef·Π_s p_s^exps[s]``
        over its entries (``exps`` a sequence of ``n_symbols`` ints; omit it for a
        constant map). Every state must map somewhere (rows sum to 1 at admissible
        symbol values); absorbing states usually map to themselves.

        Examples
        --------
        >>> import phasetrace as pt
        >>> g = pt.models.kingman(3, state_space="lineages")
        >>> m = pt.EpochModel.map_from_function(g, lambda s: [(s, 1.0)])   # identity
        >>> m.src.size
        3
        """
        arr = graph.arrays()
        index = {tuple(s): i for i, s in enumerate(arr.states.tolist())}
        src, dst, coef, exps = [], [], [], []
        for v in range(1, len(index)):
            for item in fn(arr.states[v]):
                state, c, *rest = item
                w = index.get(tuple(int(x) for x in state))
                if w is None:
                    raise InvalidParameterError(f"map: state {list(state)} is not in the graph")
                e = tuple(rest[0]) if rest else (0,) * n_symbols
                if len(e) != n_symbols:
                    raise InvalidParameterError(f"map: {len(e)} exponents, {n_symbols} symbols")
                src.append(v)
                dst.append(w)
                coef.append(float(c))
                exps.append(e)
        return MapTerms(
            np.array(src, dtype=np.int64),
            np.array(dst, dtype=np.int64),
            np.array(coef, dtype=np.float64),
            np.array(exps, dtype=np.int64).reshape(len(src), n_symbols),
        )

    def check(self, theta) -> None:
        E, P = self.engine.n_epochs, self.engine.n_params
        times = theta[:, E * P : E * P + E - 1]
        if E > 1:
            gaps = np.diff(np.concatenate([np.zeros((theta.shape[0], 1)), times], axis=1))
            if (gaps < 0).any():
                raise InvalidParameterError(
                    "boundary times must satisfy 0 <= t1 <= t2 <= …; got "
                    f"{times[np.flatnonzero((gaps < 0).any(axis=1))[0]].tolist()}"
                )

    def _grows(self) -> bool:
        return bool(self._growing.size)

    def _arrays(self, th: np.ndarray, sub: int):
        E, P = self.engine.n_epochs, self.engine.n_params
        times = th[:, E * P : E * P + E - 1]
        phis, taus, epochs, syms = [], [], [], []
        rates = np.zeros((th.shape[0], E, P), dtype=th.dtype)
        if self._growing.size:
            rates[:, self._growing[:, 0], self._growing[:, 1]] = th[:, self._growth_cols]
        for e in range(E):
            phi = th[:, e * P : (e + 1) * P]
            if e == E - 1:
                phis.append(phi)
                epochs.append(e)
                break
            tau = times[:, e] - (times[:, e - 1] if e else 0.0)
            grows = bool((self._growing[:, 0] == e).any()) if self._growing.size else False
            M = sub if grows else 1
            for j in range(M):
                # φ(t) = φ·exp(γ·(t − t_e)) at the midpoint of piece j
                mid = ((j + 0.5) / M * tau)[:, None]
                phis.append(phi * np.exp(rates[:, e] * mid) if grows else phi)
                taus.append(tau / M)
                epochs.append(e)
            first, count = self._sym[e]
            syms.append(th[:, first : first + count])
        return phis, taus, epochs, syms


def _growing_pairs(growing, n_epochs: int, n_params: int) -> np.ndarray:
    """``growing`` as an (n, 2) array of (epoch, parameter) pairs, checked."""
    pairs = np.asarray([] if growing is None else list(growing), dtype=np.int64).reshape(-1, 2)
    for e, p in pairs.tolist():
        if not (0 <= e < n_epochs - 1 and 0 <= p < n_params):
            raise InvalidParameterError(
                f"growing: ({e}, {p}) is not a (bounded epoch, parameter) pair; epochs "
                f"0 … {n_epochs - 2} can grow (the last one is unbounded), parameters "
                f"0 … {n_params - 1}"
            )
    if len({tuple(x) for x in pairs.tolist()}) != len(pairs):
        raise InvalidParameterError("growing: a pair is listed twice")
    return pairs


def _check_tol(tol) -> float:
    if not (isinstance(tol, int | float | np.floating) and 0 < tol < 1):
        raise InvalidParameterError(f"tol must be a number in (0, 1), got {tol!r}")
    return float(tol)
