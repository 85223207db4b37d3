"""The effects model's PyMC graph (:func:`build_effects_model`) for prepared cells.

How post-training changes NLL, by type, family, size, generation and domain.
Its parts: :mod:`.effects_spec` (:class:`EffectsSpec`, :class:`Prior`,
default priors, autoscaling), :mod:`.effects_design` (:func:`prepare`,
:class:`EffectsData`, constraint bases), this graph, and :mod:`.effects_fit`
(:func:`fit_cells`, :func:`fit_effects`: sample, check, store).

For cell c = (pair p, experiment e) with observed mean paired difference y_c
and standard error se_c (from n_c participants, plug-in participant SD):

    y_c ~ Normal(eta_c, sqrt(sigma_cell^2 + se_c^2))       (cell residual integrated out)
    eta_c = intercept + type[t(p)] + family[f(p)] + size_slope * x_p
            + generation_slope_family[f(p)] * g_p + domain[d(e)]
            + type_domain[t(p), d(e)] + experiment[e] + pair[p]

``docs/model.md`` writes the model out in full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError

from .effects_design import EffectsData, fixed_sigma
from .effects_spec import EffectsSpec, Prior, resolve_priors


class _Terms:
    """Builds the grouped terms of one effects model: ``basis @ coefficients`` per term.

    Centred (coef ~ N(0, sigma)) or non-centred (sigma * N(0, 1)) as
    ``data.centred`` says, with a pooled scale ``sigma_<term>`` or, for terms
    in ``data.fixed_scale``, a fixed-scale prior.  Call inside the model context.
    """

    def __init__(self, data: EffectsData, spec: EffectsSpec, coords: dict):
        self.data, self.spec, self.coords = data, spec, coords

    def constrained(self, term: str, sigma_name: str | None, fixed_prior: Prior | None = None):
        """basis @ coefficients: centred (coef ~ N(0, sigma)) or non-centred (sigma * N(0, 1))."""
        import pymc as pm
        import pytensor.tensor as pt

        B = pt.as_tensor_variable(self.data.bases[term])
        if fixed_prior is not None:
            coef = pm.Normal(
                f"{term}_coef", 0.0, fixed_prior.params.get("sigma", 1.0), dims=f"{term}_basis"
            )
            return pt.dot(B, coef)
        assert sigma_name is not None, f"{term}: no sigma and no fixed prior"
        sigma = self.spec.prior(sigma_name).rv(sigma_name)
        if self.data.centred.get(term, False):
            return pt.dot(B, pm.Normal(f"{term}_coef", 0.0, sigma, dims=f"{term}_basis"))
        return sigma * pt.dot(B, pm.Normal(f"{term}_coef", 0.0, 1.0, dims=f"{term}_basis"))

    def fixed_prior(self, term: str) -> Prior:
        return Prior("Normal", mu=0.0, sigma=fixed_sigma(self.spec, term))

    def grouped(self, term: str, dims, sigma_name: str | None, fixed_prior: Prior | None = None):
        """The term's effects as a Deterministic named ``term`` over ``dims``."""
        import pymc as pm

        if fixed_prior is None and term in self.data.fixed_scale:
            fixed_prior = self.fixed_prior(term)
        value = self.constrained(term, sigma_name, fixed_prior)
        if isinstance(dims, tuple):
            value = value.reshape([len(self.coords[d]) for d in dims])
        return pm.Deterministic(term, value, dims=dims)


def _model_coords(data: EffectsData) -> dict[str, list[str] | list[int]]:
    # PyMC forbids a variable named like its dimension: the dims are "<name>_level"
    # (the store writes them back as "<name>" in fit_params.coords).
    coords: dict[str, list[str] | list[int]] = {f"{k}_level": v for k, v in data.coords.items()}
    c = data.cells
    coords["cell"] = [f"{p} / {e}" for p, e in zip(c["pair"], c["experiment"])]
    for term, B in data.bases.items():
        coords[f"{term}_basis"] = list(range(B.shape[1]))
    return coords


def _type_term(terms: _Terms, intercept):
    """Sum-to-zero type effects with their fixed Normal(0, sigma) prior, and ``type_mean``."""
    import pymc as pm

    tp = terms.spec.prior("type")
    if tp.dist != "Normal" or tp.params.get("mu", 0.0) != 0.0:
        raise WarehouseError(
            "the 'type' prior must be Normal with mu = 0 (a sum-to-zero effect); set its sigma"
        )
    type_eff = terms.grouped("type", "type_level", None, fixed_prior=tp)
    pm.Deterministic("type_mean", intercept + type_eff, dims="type_level")
    return type_eff


def _generation_slope_by_pair(terms: _Terms):
    """The generation slope of each pair: the global slope, or its family's total slope
    (global + a sum-to-zero deviation, stored as ``generation_slope_family``)."""
    import pymc as pm
    import pytensor.tensor as pt

    data, spec = terms.data, terms.spec
    P = len(data.coords["pair"])
    gslope = spec.prior("generation_slope").rv("generation_slope")
    if "generation_family" not in data.active:
        return gslope * pt.ones(P)
    dev = (
        terms.constrained(
            "generation_family", None, fixed_prior=terms.fixed_prior("generation_family")
        )
        if "generation_family" in data.fixed_scale
        else terms.constrained("generation_family", "sigma_generation_family")
    )
    fam_slope = pm.Deterministic(
        "generation_slope_family", gslope + dev, dims="generation_family_level"
    )
    gf_names = data.coords["generation_family"]
    to_gf = np.array(
        [
            gf_names.index(data.coords["family"][f]) if data.coords["family"][f] in gf_names else -1
            for f in data.pair_family
        ]
    )
    has = to_gf >= 0
    return pt.switch(has, fam_slope[np.where(has, to_gf, 0)], gslope)


def _pair_part(terms: _Terms):
    """Per pair: intercept + type + family + size + generation + pair effect (``pair_mean``)."""
    import pymc as pm
    import pytensor.tensor as pt

    data, spec, active = terms.data, terms.spec, set(terms.data.active)
    intercept = spec.prior("intercept").rv("intercept")
    pair_part = intercept * pt.ones(len(data.coords["pair"]))
    if "type" in active:
        pair_part = pair_part + _type_term(terms, intercept)[data.pair_type]
    if "family" in active:
        fam = terms.grouped("family", "family_level", "sigma_family")
        pair_part = pair_part + fam[data.pair_family]
    if "size" in active:
        size = spec.prior("size_slope").rv("size_slope")
        pair_part = pair_part + size * data.size_x
    if "generation" in active:
        pair_part = pair_part + _generation_slope_by_pair(terms) * data.generation_x
    if "pair" in active:
        pair_part = pair_part + terms.grouped("pair", "pair_level", "sigma_pair")
    pm.Deterministic("pair_mean", pair_part, dims="pair_level")
    return pair_part


def _experiment_part(terms: _Terms):
    """Per experiment: domain + experiment effects; also the domain and type x domain effects."""
    import pytensor.tensor as pt

    data, active = terms.data, set(terms.data.active)
    T, D = len(data.coords["type"]), len(data.coords["domain"])
    exp_part = pt.zeros(len(data.coords["experiment"]))
    dom_eff = pt.zeros(D)
    if "domain" in active:
        dom_eff = terms.grouped("domain", "domain_level", "sigma_domain")
        exp_part = exp_part + dom_eff[data.experiment_domain]
    if "experiment" in active:
        exp_part = exp_part + terms.grouped("experiment", "experiment_level", "sigma_experiment")
    td = pt.zeros((T, D))
    if "type_domain" in active:
        td = terms.grouped("type_domain", ("type_level", "domain_level"), "sigma_type_domain")
    return exp_part, dom_eff, td


def _likelihood(data: EffectsData, spec: EffectsSpec, eta) -> None:
    """The observed cell means ``y``: cell residual integrated out (marginal) or explicit."""
    import pymc as pm
    import pytensor.tensor as pt

    c = data.cells
    # Data containers: a compiled model can be re-run on new cell values of the
    # same layout (nutpie's ``compiled.with_data(y_obs=..., se=...)``).
    se = pm.Data("se", c["se"].to_numpy(float), dims="cell")
    y_obs = pm.Data("y_obs", c["y"].to_numpy(float), dims="cell")
    if data.sigma_cell_fixed:
        # Too few cells to learn it (prepare() said so): the cell SEs alone.
        pm.Normal("y", mu=eta, sigma=se, observed=y_obs, dims="cell")
        return
    sigma_cell = spec.prior("sigma_cell").rv("sigma_cell")
    if spec.residual == "marginal":
        pm.Normal("y", mu=eta, sigma=pt.sqrt(sigma_cell**2 + se**2), observed=y_obs, dims="cell")
    else:
        z = pm.Normal("cell_z", 0.0, 1.0, dims="cell")
        pm.Normal("y", mu=eta + sigma_cell * z, sigma=se, observed=y_obs, dims="cell")


def build_effects_model(
    data: EffectsData,
    spec: EffectsSpec | None = None,
    *,
    extra: Callable[[Any, EffectsData], Any] | None = None,
):
    """The PyMC model for prepared cells; returns ``pm.Model``.

    Variables (dims in brackets): ``intercept``, ``type[type]``,
    ``type_mean[type]`` (intercept + type), ``family[family]``,
    ``sigma_family``, ``size_slope``, ``generation_slope``,
    ``generation_slope_family[generation_family]`` (total slope per family),
    ``domain[domain]``, ``type_domain[type, domain]``,
    ``experiment[experiment]``, ``pair[pair]``, the ``sigma_*`` scales,
    ``pair_mean[pair]`` and ``pair_domain_effect[pair, domain]`` (expected
    post-minus-base difference of the pair, averaged over experiments and
    over domains / in one domain), and the observed ``y[cell]``.
    Raw basis coefficients are ``<term>_coef``.

    ``extra(model, data)``, called inside the model context, may return a
    tensor of length ``data.n_cells`` added to the linear predictor: the hook
    for covariates of your own.
    """
    import pymc as pm

    spec = resolve_priors(spec or EffectsSpec(), data.prior_scale)
    coords = _model_coords(data)
    terms = _Terms(data, spec, coords)
    with pm.Model(coords=coords) as model:
        pair_part = _pair_part(terms)
        exp_part, dom_eff, td = _experiment_part(terms)
        pm.Deterministic(
            "pair_domain_effect",
            model["pair_mean"][:, None] + dom_eff[None, :] + td[data.pair_type, :],
            dims=("pair_level", "domain_level"),
        )
        c = data.cells
        pi, ei = c["pair_idx"].to_numpy(), c["experiment_idx"].to_numpy()
        eta = (
            pair_part[pi] + exp_part[ei] + td[c["type_idx"].to_numpy(), c["domain_idx"].to_numpy()]
        )
        if extra is not None:
            eta = eta + extra(model, data)
        _likelihood(data, spec, eta)
    return model


def reported_vars(model) -> list[str]:
    """The variables that get ``fit_params`` rows: effects, slopes, scales, derived."""
    from .sampling import gated_vars

    return gated_vars(model)


LABELS = {"type_domain": "{type} × {domain}", "pair_domain_effect": "{pair} × {domain}"}
