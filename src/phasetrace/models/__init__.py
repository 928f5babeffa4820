"""Ready-made models: coalescent state spaces and random graphs for tests and benchmarks."""

from .coalescent import kingman, two_island
from .random import random_graph
from .structured import structured_coalescent, structured_parameters

__all__ = [
    "kingman",
    "random_graph",
    "structured_coalescent",
    "structured_parameters",
    "two_island",
]
