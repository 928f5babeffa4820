"""The ``auto`` strategy (the default): per call, run in-process or on a loky pool.

Data flow: a call looks at the items' ``cost`` estimates (seconds) and at whether its loky
pool is already warm, picks ``sequential`` or ``loky`` with the rule below, records the
choice in ``last_decision`` and logs it (``logging.debug`` on ``phasetrace.executors``),
then hands the call to that executor.

The rule, with ``n`` units of total estimated work ``W``, largest unit ``w_max``,
``p`` workers and ``S`` the pool cost (``cold_start_s`` when the pool is cold,
``warm_dispatch_s`` when it is warm)::

    sequential  if p == 1, or n < 2, or inside a worker
    loky        if S + max(W / p, w_max) + n * per_unit_s  <  W
    sequential  otherwise

so the pool is used only when its estimated wall time (start or dispatch, the longest of
an even split and the largest unit, per-unit transport) beats running everything here.
A unit of unknown cost (``cost <= 0``, as in a plain ``map``) counts as
``unknown_cost_s``; nothing is run to measure it.

Default costs, measured on the development machine (2 cores shared with other work,
Linux, Python 3.11, loky 3.7; ``benchmarks/strategies.py`` prints them for yours):

- cold start of a 2-worker loky pool until the first results are back: 0.26-0.5 s
  (up to 0.8 s under load) → ``cold_start_s = 0.5``;
- warm round trip of one chunk: 0.5-0.7 ms → ``warm_dispatch_s = 0.002`` (a few ms,
  with margin for the 2-4 chunks per worker a call is cut into);
- warm per-unit overhead with chunking, 1000 trivial units: 4-11 µs → ``per_unit_s =
  2e-5``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from phasetrace.errors import StrategyError
from phasetrace.executors import _worker
from phasetrace.executors.base import Executor, WorkItem
from phasetrace.executors.sequential import SequentialExecutor

logger = logging.getLogger("phasetrace.executors")

COLD_START_S = 0.5
WARM_DISPATCH_S = 0.002
PER_UNIT_S = 2e-5
#: Assumed seconds per unit of unknown cost: a recorded unit of a few hundred ops.
UNKNOWN_COST_S = 1e-3


@dataclass(frozen=True)
class AutoDecision:
    """What ``auto`` chose for one call, and why.

    Attributes
    ----------
    strategy : str
        ``"sequential"`` or ``"loky"``.
    reason : str
        The rule that decided, with the numbers.
    n_items : int
    estimated_work_s : float or None
        Estimated sequential time of the units.
    estimated_parallel_s : float or None
        Estimated wall time on the pool (start or dispatch included).
    pool_warm : bool
    """

    strategy: str
    reason: str
    n_items: int
    estimated_work_s: float | None = None
    estimated_parallel_s: float | None = None
    pool_warm: bool = False


class AutoExecutor(Executor):
    """Choose, per call, between an in-process loop and a loky pool (this executor's own).

    Parameters
    ----------
    n_workers : int or None
        Worker count of the pool (default all CPUs); 1 always runs in-process.
    cold_start_s, warm_dispatch_s, per_unit_s, unknown_cost_s : float
        Costs used by the rule (see the module docstring for the measurements).
    **loky_options
        Passed to :class:`~phasetrace.executors.lokypool.LokyExecutor`.

    Attributes
    ----------
    last_decision : AutoDecision or None
        The choice made by the latest call.

    Examples
    --------
    >>> from phasetrace.executors import work_items
    >>> with AutoExecutor(n_workers=2) as ex:
    ...     ex.map_items(abs, work_items([-1, -2], costs=[1e-6, 1e-6]))
    ...     ex.last_decision.strategy
    [1, 2]
    'sequential'
    """

    name = "auto"
    in_process = None  # decided per call: here, or on the loky pool
    needs_picklable_fn = False
    reuses_pool = True

    #: Extra keyword options go to the loky executor (used to validate option names).
    forwards_options_to = "loky"

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check option values (``configure`` calls this): the cost model's must be
        numbers >= 0; the rest go to the ``loky`` strategy's check."""
        model = ("cold_start_s", "warm_dispatch_s", "per_unit_s", "unknown_cost_s")
        for name in model:
            value = options.pop(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise StrategyError(f"{name} must be a number of seconds >= 0, got {value!r}")
        from .lokypool import LokyExecutor

        LokyExecutor.check_options(**options)

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        cold_start_s: float = COLD_START_S,
        warm_dispatch_s: float = WARM_DISPATCH_S,
        per_unit_s: float = PER_UNIT_S,
        unknown_cost_s: float = UNKNOWN_COST_S,
        **loky_options: Any,
    ):
        super().__init__(n_workers)
        self.cold_start_s = float(cold_start_s)
        self.warm_dispatch_s = float(warm_dispatch_s)
        self.per_unit_s = float(per_unit_s)
        self.unknown_cost_s = float(unknown_cost_s)
        self._loky_options = loky_options
        self._sequential = SequentialExecutor()
        self._loky: Any = None
        self.last_decision: AutoDecision | None = None
        if loky_options:  # fail now on an option loky does not take, not at the first call
            self._loky = self._make_loky()

    def _make_loky(self):
        from phasetrace.executors.lokypool import LokyExecutor

        return LokyExecutor(self.n_workers, **self._loky_options)

    def pool_warm(self) -> bool:
        """Whether this executor's loky pool is up, with a live worker (starts nothing)."""
        return self._loky is not None and self._loky.is_warm()

    def decide(self, costs: Sequence[float]) -> AutoDecision:
        """Apply the rule of the module docstring to ``costs`` (seconds per unit).

        Examples
        --------
        >>> AutoExecutor(n_workers=2).decide([1.0, 1.0]).strategy
        'loky'
        >>> AutoExecutor(n_workers=2).decide([1e-4] * 10).strategy
        'sequential'
        """
        n = len(costs)
        if _worker.IN_WORKER:
            return AutoDecision("sequential", "inside a worker: pools do not nest", n)
        if self.n_workers == 1:
            return AutoDecision("sequential", "n_workers is 1", n)
        if n < 2:
            return AutoDecision("sequential", f"{n} unit(s): nothing to share", n)
        costs = [c if c > 0 else self.unknown_cost_s for c in costs]
        total = math.fsum(costs)
        largest = max(costs)
        warm = self.pool_warm()
        start = self.warm_dispatch_s if warm else self.cold_start_s
        parallel = start + max(total / self.n_workers, largest) + n * self.per_unit_s
        state = "warm" if warm else "cold"
        if parallel < total:
            strategy = "loky"
            reason = f"estimated {parallel:.4g} s on the {state} pool < {total:.4g} s in-process"
        else:
            strategy = "sequential"
            reason = f"estimated {total:.4g} s in-process <= {parallel:.4g} s on the {state} pool"
        return AutoDecision(strategy, reason, n, total, parallel, warm)

    def _chosen(self, costs: Sequence[float]) -> Executor:
        decision = self.decide(costs)
        self.last_decision = decision
        logger.debug(
            "auto: %s for %d unit(s): %s", decision.strategy, decision.n_items, decision.reason
        )
        if decision.strategy == "loky":
            if self._loky is None:
                self._loky = self._make_loky()
            return self._loky
        return self._sequential

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self._check_open()
        return self._chosen([0.0]).submit(fn, *args, **kwargs)

    submit.__doc__ = Executor.submit.__doc__

    def _start(
        self,
        fn: Callable[..., Any],
        items: list[WorkItem],
        *,
        timeout: float | None,
        star: bool,
        chunksize: int | None,
    ) -> Iterator[Any]:
        chosen = self._chosen([it.cost for it in items])
        return chosen._start(fn, items, timeout=timeout, star=star, chunksize=chunksize)

    @property
    def generation(self) -> int:
        """Generation of the loky pool used so far (0 before its first use)."""
        return 0 if self._loky is None else self._loky.generation

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._sequential.shutdown(wait=wait)
        if self._loky is not None:
            self._loky.shutdown(wait=wait, cancel_futures=cancel_futures)
