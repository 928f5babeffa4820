"""The ``pmap`` strategy: registered only to say why it cannot be used.

Asking for it (``configure(strategy="pmap")``, ``config(strategy="pmap")`` or
``get_executor("pmap")``) raises :class:`~phasetrace.errors.StrategyRejectedError` with
:data:`REJECTION`. This module imports nothing from JAX.
"""

from __future__ import annotations

from typing import Any, NoReturn

from phasetrace.errors import StrategyRejectedError

#: Why ``pmap`` is rejected, and what to use instead.
REJECTION = (
    "strategy 'pmap' is rejected: jax.pmap is in maintenance mode (since JAX 0.8 it is "
    "built on jax.jit and jax.shard_map). phasetrace's work units are Python code, which "
    "JAX can only call as a host callback; under pmap such a callback runs once per "
    "device, inside this process, on threads that share the GIL, and a CPU-only host has "
    "one device, so pmap gives no process parallelism for Python work. Use an executor "
    "strategy with worker processes instead, such as 'loky' (or 'spawn', or 'dask' for a "
    "cluster): phasetrace.configure(strategy='loky'). To evaluate many parameter vectors "
    "in JAX, batch them with jax.vmap through the callback bridge "
    "phasetrace.jax.record_traces_callback."
)

#: One-line form for listings (``available_strategies()``).
SHORT_REASON = (
    "rejected: jax.pmap (maintenance mode) runs host callbacks in this process on "
    "GIL-sharing threads; use 'loky', and jax.vmap with phasetrace.jax.record_traces_callback"
)


def reject(n_workers: int | None = None, **options: Any) -> NoReturn:
    """Factory of the ``pmap`` entry: always raises.

    Raises
    ------
    StrategyRejectedError
        Always, with :data:`REJECTION` as the message.

    Examples
    --------
    >>> reject()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    phasetrace.errors.StrategyRejectedError: strategy 'pmap' is rejected: ...
    """
    raise StrategyRejectedError(REJECTION)
