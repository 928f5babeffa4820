"""Ready-made models: coalescent state spaces and random graphs for tests and benchmarks."""

from ..demography.model import from_demes
from .coalescent import kingman, two_island
from .random import random_graph
from .structured import structured_coalescent, structured_parameters

__all__ = [
    "from_demes",
    "kingman",
    "random_graph",
    "structured_coalescent",
    "structured_parameters",
    "two_island",
]
