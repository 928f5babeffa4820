"""Ready-made models: coalescent state spaces and random graphs for tests and benchmarks."""

from .coalescent import kingman, two_island
from .random import random_graph

__all__ = ["kingman", "random_graph", "two_island"]
