"""The hierarchical Bayesian layer.

* :mod:`.sampling` -- sample a PyMC model (nutpie, PyMC fallback), diagnostics gates.
* :mod:`.store` -- fits and their parameters in the warehouse, posteriors as NetCDF.
* :mod:`.data` -- per-participant mean NLL and the registered (post-trained, base) pairs.
* :mod:`.cells` -- paired differences aggregated to (pair, experiment) sufficient statistics.
* :mod:`.effects` -- the effects model: specification, priors, the PyMC builder, the fit.
* :mod:`.simulate` -- simulated cells and warehouses with known effects, for validation.

Submodules are imported on use (PyMC takes seconds to import).
"""

import warnings as _warnings

# PyTensor warns on import, once per process, when pip-installed and unable to
# link a system BLAS.  psystats samples with nutpie, whose numba backend does
# its own linear algebra, so the warning only alarms users: silence that one.
_warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation")
