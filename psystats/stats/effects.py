"""The effects model: how post-training changes NLL, by type, family, size, generation and domain.

A thin re-export of its parts, so ``from psystats.stats.effects import ...``
keeps working:

* :mod:`.effects_spec`: :class:`EffectsSpec`, :class:`Prior`, default priors, autoscaling;
* :mod:`.effects_design`: :func:`prepare`, :class:`EffectsData`, constraint bases;
* :mod:`.effects_model`: :func:`build_effects_model` (the PyMC graph);
* :mod:`.effects_fit`: :func:`fit_cells`, :func:`fit_effects` (sample, check, store).

For cell c = (pair p, experiment e) with observed mean paired difference y_c
and standard error se_c (from n_c participants, plug-in participant SD):

    y_c ~ Normal(eta_c, sqrt(sigma_cell^2 + se_c^2))       (cell residual integrated out)
    eta_c = intercept + type[t(p)] + family[f(p)] + size_slope * x_p
            + generation_slope_family[f(p)] * g_p + domain[d(e)]
            + type_domain[t(p), d(e)] + experiment[e] + pair[p]

``docs/model.md`` writes the model out in full.
"""

from .effects_design import (
    EffectsData,
    constraint_basis,
    fixed_sigma,
    prepare,
)
from .effects_fit import fit_cells, fit_effects
from .effects_model import LABELS, build_effects_model, reported_vars
from .effects_spec import (
    DEFAULT_PRIORS,
    MIN_POOLED_LEVELS,
    MIN_RESIDUAL_DF,
    NO_DOMAIN,
    PRIOR_REFERENCE_SCALE,
    TERMS,
    EffectsSpec,
    Prior,
    prior_scale_for,
    resolve_priors,
)
from .generation_scale import GENERATION_SCALES

__all__ = [
    "DEFAULT_PRIORS",
    "GENERATION_SCALES",
    "LABELS",
    "MIN_POOLED_LEVELS",
    "MIN_RESIDUAL_DF",
    "NO_DOMAIN",
    "PRIOR_REFERENCE_SCALE",
    "TERMS",
    "EffectsData",
    "EffectsSpec",
    "Prior",
    "build_effects_model",
    "constraint_basis",
    "fit_cells",
    "fit_effects",
    "fixed_sigma",
    "prepare",
    "prior_scale_for",
    "reported_vars",
    "resolve_priors",
]
