"""Sizes of the block-counting state spaces, known before any state is built.

A block-counting state of ``d`` demes and ``n`` samples is a multiset of lineages, each
with a size (the samples it subtends, ``1..n``, summing to ``n``) and a deme: a partition
of ``n`` whose parts carry one of ``d`` colours. Their number is the coefficient of
``xⁿ`` in ``Π_i (1 − x^i)^(−d)`` (``d = 1``: the partitions of ``n``; 204,226 for
``n = 50``, 190,569,292 for ``n = 100``). With migration between every pair of demes
every such state is reached; otherwise fewer are. The graph adds one starting vertex.
"""

from __future__ import annotations

from typing import Any

from ..errors import StateSpaceTooLargeError


def block_states(n: int, d: int = 1) -> int:
    """The number of block-counting states of ``n`` samples in ``d`` demes (an upper
    bound when some demes cannot reach others).

    Examples
    --------
    >>> block_states(50), block_states(15, 3)
    (204226, 35581)
    """
    c = [1] + [0] * n
    for part in range(1, n + 1):
        for _ in range(d):  # one factor 1/(1 − x^part) per colour
            for m in range(part, n + 1):
                c[m] += c[m - part]
    return c[n]


def check_size(states: int, model: str, how: str, alternative: str, max_states: Any) -> None:
    """Raise :class:`~phasetrace.errors.StateSpaceTooLargeError` if ``states`` (graph
    vertices) exceed the limit: ``max_states`` if given, else the configured one."""
    from ..settings import resolve_setting

    limit = resolve_setting("max_states", max_states)
    if limit is None or states <= limit:
        return
    raise StateSpaceTooLargeError(
        f"{model} would have {states:,} states ({how}), more than max_states={limit:,}; "
        f"{alternative}, or raise the limit (max_states=..., "
        "phasetrace.configure(max_states=...) or the environment variable "
        "PHASETRACE_MAX_STATES; None for no limit)",
        estimate=states,
        limit=limit,
    )
