"""Fitting demographic models to data: likelihoods, readers, fits and their uncertainty.

- :func:`loglik` (and :func:`loglik_function` for JAX): log-likelihood of an observed SFS
  or joint SFS, Poisson random field or multinomial, with the exact gradient;
- :func:`observed_sfs`, :func:`read_spectrum`, :func:`write_spectrum`,
  :func:`block_bootstrap`: observed spectra from tskit tree sequences and dadi/moments
  ``.fs`` files, and bootstrap replicates;
- :func:`fit`: maximum likelihood from several starts, each a work item on the configured
  executor, with standard errors from the observed or the Godambe information;
  :func:`bootstrap_fits` refits bootstrap replicates, one work item each.

``docs/inference.md`` walks through a fit. Nothing heavy is imported here: scipy (the
optimizer), tskit and JAX are imported by the functions that need them.
"""

from ._data import ObservedSpectrum
from .fit import FitResult, StartResult, bootstrap_fits, fit
from .likelihood import loglik, loglik_function
from .readers import block_bootstrap, observed_sfs, read_spectrum, write_spectrum

__all__ = [
    "FitResult",
    "ObservedSpectrum",
    "StartResult",
    "block_bootstrap",
    "bootstrap_fits",
    "fit",
    "loglik",
    "loglik_function",
    "observed_sfs",
    "read_spectrum",
    "write_spectrum",
]
