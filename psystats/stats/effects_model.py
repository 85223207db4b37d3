"""The effects model's PyMC graph (:func:`build_effects_model`) for prepared cells."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError

from .effects_design import EffectsData, fixed_sigma
from .effects_spec import EffectsSpec, Prior, resolve_priors


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
    import pytensor.tensor as pt

    spec = resolve_priors(spec or EffectsSpec(), data.prior_scale)
    c = data.cells
    active = set(data.active)
    # PyMC forbids a variable named like its dimension: the dims are "<name>_level"
    # (the store writes them back as "<name>" in fit_params.coords).
    coords: dict[str, list[str] | list[int]] = {f"{k}_level": v for k, v in data.coords.items()}
    coords["cell"] = [f"{p} / {e}" for p, e in zip(c["pair"], c["experiment"])]
    for term, B in data.bases.items():
        coords[f"{term}_basis"] = list(range(B.shape[1]))
    T, D = len(data.coords["type"]), len(data.coords["domain"])
    P, E = len(data.coords["pair"]), len(data.coords["experiment"])

    def constrained(term: str, sigma_name: str | None, fixed_prior: Prior | None = None):
        """basis @ coefficients: centred (coef ~ N(0, sigma)) or non-centred (sigma * N(0, 1))."""
        B = pt.as_tensor_variable(data.bases[term])
        if fixed_prior is not None:
            coef = pm.Normal(
                f"{term}_coef", 0.0, fixed_prior.params.get("sigma", 1.0), dims=f"{term}_basis"
            )
            return pt.dot(B, coef)
        assert sigma_name is not None, f"{term}: no sigma and no fixed prior"
        sigma = spec.prior(sigma_name).rv(sigma_name)
        if data.centred.get(term, False):
            return pt.dot(B, pm.Normal(f"{term}_coef", 0.0, sigma, dims=f"{term}_basis"))
        return sigma * pt.dot(B, pm.Normal(f"{term}_coef", 0.0, 1.0, dims=f"{term}_basis"))

    def grouped(term: str, dims, sigma_name: str | None, fixed_prior: Prior | None = None):
        if fixed_prior is None and term in data.fixed_scale:
            fixed_prior = Prior("Normal", mu=0.0, sigma=fixed_sigma(spec, term))
        value = constrained(term, sigma_name, fixed_prior)
        if isinstance(dims, tuple):
            value = value.reshape([len(coords[d]) for d in dims])
        return pm.Deterministic(term, value, dims=dims)

    with pm.Model(coords=coords) as model:
        intercept = spec.prior("intercept").rv("intercept")
        pair_part = intercept * pt.ones(P)
        type_eff = None
        if "type" in active:
            tp = spec.prior("type")
            if tp.dist != "Normal" or tp.params.get("mu", 0.0) != 0.0:
                raise WarehouseError(
                    "the 'type' prior must be Normal with mu = 0 (a sum-to-zero "
                    "effect); set its sigma"
                )
            type_eff = grouped("type", "type_level", None, fixed_prior=tp)
            pm.Deterministic("type_mean", intercept + type_eff, dims="type_level")
            pair_part = pair_part + type_eff[data.pair_type]
        if "family" in active:
            fam = grouped("family", "family_level", "sigma_family")
            pair_part = pair_part + fam[data.pair_family]
        if "size" in active:
            size = spec.prior("size_slope").rv("size_slope")
            pair_part = pair_part + size * data.size_x
        if "generation" in active:
            gslope = spec.prior("generation_slope").rv("generation_slope")
            slope_by_pair = gslope * pt.ones(P)
            if "generation_family" in active:
                # Stored as each family's total slope: global + its (sum-to-zero) deviation.
                dev = (
                    constrained(
                        "generation_family",
                        None,
                        fixed_prior=Prior(
                            "Normal", mu=0.0, sigma=fixed_sigma(spec, "generation_family")
                        ),
                    )
                    if "generation_family" in data.fixed_scale
                    else constrained("generation_family", "sigma_generation_family")
                )
                fam_slope = pm.Deterministic(
                    "generation_slope_family", gslope + dev, dims="generation_family_level"
                )
                gf_names = data.coords["generation_family"]
                to_gf = np.array(
                    [
                        gf_names.index(data.coords["family"][f])
                        if data.coords["family"][f] in gf_names
                        else -1
                        for f in data.pair_family
                    ]
                )
                has = to_gf >= 0
                slope_by_pair = pt.switch(has, fam_slope[np.where(has, to_gf, 0)], gslope)
            pair_part = pair_part + slope_by_pair * data.generation_x
        if "pair" in active:
            pair_part = pair_part + grouped("pair", "pair_level", "sigma_pair")
        pair_mean = pm.Deterministic("pair_mean", pair_part, dims="pair_level")

        exp_part = pt.zeros(E)
        dom_eff = pt.zeros(D)
        if "domain" in active:
            dom_eff = grouped("domain", "domain_level", "sigma_domain")
            exp_part = exp_part + dom_eff[data.experiment_domain]
        if "experiment" in active:
            exp_part = exp_part + grouped("experiment", "experiment_level", "sigma_experiment")
        td = pt.zeros((T, D))
        if "type_domain" in active:
            td = grouped("type_domain", ("type_level", "domain_level"), "sigma_type_domain")

        pm.Deterministic(
            "pair_domain_effect",
            pair_mean[:, None] + dom_eff[None, :] + td[data.pair_type, :],
            dims=("pair_level", "domain_level"),
        )

        pi, ei = c["pair_idx"].to_numpy(), c["experiment_idx"].to_numpy()
        eta = (
            pair_part[pi] + exp_part[ei] + td[c["type_idx"].to_numpy(), c["domain_idx"].to_numpy()]
        )
        if extra is not None:
            eta = eta + extra(model, data)
        # Data containers: a compiled model can be re-run on new cell values of the
        # same layout (nutpie's ``compiled.with_data(y_obs=..., se=...)``).
        se = pm.Data("se", c["se"].to_numpy(float), dims="cell")
        y_obs = pm.Data("y_obs", c["y"].to_numpy(float), dims="cell")
        if data.sigma_cell_fixed:
            # Too few cells to learn it (prepare() said so): the cell SEs alone.
            pm.Normal("y", mu=eta, sigma=se, observed=y_obs, dims="cell")
            return model
        sigma_cell = spec.prior("sigma_cell").rv("sigma_cell")
        if spec.residual == "marginal":
            pm.Normal(
                "y", mu=eta, sigma=pt.sqrt(sigma_cell**2 + se**2), observed=y_obs, dims="cell"
            )
        else:
            z = pm.Normal("cell_z", 0.0, 1.0, dims="cell")
            pm.Normal("y", mu=eta + sigma_cell * z, sigma=se, observed=y_obs, dims="cell")
    return model


def reported_vars(model) -> list[str]:
    """The variables that get ``fit_params`` rows: effects, slopes, scales, derived."""
    from .sampling import gated_vars

    return gated_vars(model)


LABELS = {"type_domain": "{type} × {domain}", "pair_domain_effect": "{pair} × {domain}"}
