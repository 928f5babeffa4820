"""Time-inhomogeneous models: epochs, boundary maps, demographic models read from demes.

Nothing here imports ``demes`` (or anything heavy) at import time.
"""
