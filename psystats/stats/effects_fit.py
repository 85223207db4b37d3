"""Fitting the effects model: sample, check, summarise (:func:`fit_cells`) and store (:func:`fit_effects`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

from .effects_design import EffectsData, prepare
from .effects_model import LABELS, build_effects_model, reported_vars
from .effects_spec import TERMS, EffectsSpec, resolve_priors

log = logging.getLogger(__name__)


def posterior_predictive_summary(
    model,
    idata,
    *,
    max_draws: int = 400,
    seed: int = 0,
    var_name: str = "y",
    add_to_idata: bool = True,
) -> dict:
    """Posterior predictive check on the cell means (:func:`.sampling.ppc_statistics`).

    Replicates ``var_name`` from (at most ``max_draws``) posterior draws and
    reports the share of cells inside their 90% predictive interval and
    Bayesian p-values (P(T(y_rep) >= T(y))) for the mean, SD, minimum and
    maximum of the standardised cell values (y - E y_rep) / sd(y_rep).  With
    ``add_to_idata`` the replicated draws become ``idata``'s
    ``posterior_predictive`` group (stored in the fit's NetCDF, where the
    report draws its predictive check from them).  The fit pipeline
    (:mod:`.pipeline`) runs the same check on every analysis.
    """
    from .sampling import posterior_predictive_draws, ppc_statistics

    rep, y = posterior_predictive_draws(
        model, idata, var_name, max_draws=max_draws, seed=seed, add_to_idata=add_to_idata
    )
    return ppc_statistics(y, rep)


def loo_summary(model, idata, *, max_draws: int = 1000) -> tuple[dict, Any]:
    """PSIS-LOO (leave one cell out) with ArviZ on at most ``max_draws`` draws; (summary, ELPDData).

    The pipeline's :func:`.pipeline.loo_check` on the observed cells ``y``,
    without attaching the pointwise values to ``idata``.
    """
    from .pipeline import loo_check

    summary, res = loo_check(model, idata, ["y"], max_draws=max_draws, attach=False)
    return dict(summary or {}), res


@dataclass
class EffectsFit:
    """What :func:`fit_cells` returns (and :func:`fit_effects` after storing it).

    ``result`` is the fit pipeline's :class:`~.pipeline.FitResult` (the same
    idata, diagnostics and summary); :func:`fit_effects` stores it.
    """

    idata: Any
    model: Any
    data: EffectsData
    spec: EffectsSpec
    diagnostics: Any
    summary: dict
    seconds: float
    fit_id: int | None = None
    result: Any = None


def fit_cells(
    cells: pd.DataFrame,
    spec: EffectsSpec | None = None,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sampler: str = "nutpie",
    target_accept: float = 0.95,
    allow_failure: bool = False,
    compare: bool | Sequence[str] = True,
    checks: bool = True,
    progressbar: bool = False,
) -> EffectsFit:
    """Fit the effects model to a cell table (with ``y``/``se``), check it, summarise it.

    Runs the fit pipeline (:func:`.pipeline.run_fit`: sample, gates on the
    reported variables, posterior predictive check, PSIS-LOO).  Raises
    :class:`~psystats.stats.sampling.DiagnosticsFailure` when a gate fails
    and ``allow_failure`` is false.  ``checks`` runs the posterior
    predictive check and PSIS-LOO; ``compare`` also refits the model without
    each named term (``True``: type x domain; ``False``: none) and compares
    each refit with the full model by PSIS-LOO (``summary["loo"]["without"]``).
    """
    from .pipeline import SamplingOptions, run_fit

    spec = spec or EffectsSpec()
    if compare is True:
        compare_terms = ["type_domain"]
    elif compare is False or compare is None:
        compare_terms = []
    else:
        compare_terms = list(compare)
    unknown = set(compare_terms) - set(TERMS)
    if unknown:
        raise WarehouseError(
            f"cannot compare without {sorted(unknown)}: terms are {', '.join(TERMS)}"
        )
    sampling = SamplingOptions(
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        sampler=sampler,
        target_accept=target_accept,
        progressbar=progressbar,
    )
    t0 = time.perf_counter()
    data = prepare(cells, spec)
    # The messages travel with the result (data.messages) and the stored fit;
    # callers show them (the CLI prints each once as "note: ..."), so the log
    # keeps them at INFO rather than printing them a second time.
    for m in data.messages:
        log.info(m)
    model = build_effects_model(data, spec)
    summary: dict[str, Any] = {
        "messages": data.messages,
        "dropped_terms": data.dropped,
        "active_terms": data.active,
        "centred": data.centred,
        "n_cells": data.n_cells,
        "size_center_log_params": data.size_center,
        "prior_scale": data.prior_scale,
        "scale_estimates": data.scale_estimates,
        "sigma_cell_fixed": data.sigma_cell_fixed,
        "residual_df": data.residual_df,
        "coords": {k: len(v) for k, v in data.coords.items()},
        "units": spec.units(),
    }
    # The published study's headline statistic beside the posterior (docs/model.md).
    from .cohens_d import pair_cohens_d

    cd = pair_cohens_d(data.cells, seed=seed)
    if not cd.empty:
        summary["cohens_d"] = {
            "statistic": "mean over experiments of Cohen's d_av; 90% percentile bootstrap "
            "over experiments",
            "pairs": cd.to_dict("records"),
        }
    # The spec as fitted: every prior explicit, default ones widened by data.prior_scale.
    fitted_spec = resolve_priors(spec, data.prior_scale)
    result = run_fit(
        model,
        kind="effects",
        observed="y",
        reported=reported_vars(model),
        sampling=sampling,
        allow_failure=allow_failure,
        checks=checks,
        spec=spec.to_dict(),
        priors=fitted_spec.all_priors(),
        dropped=data.dropped,
        summary=summary,
        started=t0,
    )
    summary = result.summary
    if checks and compare_terms:
        summary["loo"]["without"] = {
            term: _compare_without(cells, spec, term, data, result.loo, sampling)
            for term in compare_terms
        }
    result.seconds = time.perf_counter() - t0
    return EffectsFit(
        idata=result.idata,
        model=model,
        data=data,
        spec=fitted_spec,
        diagnostics=result.diagnostics,
        summary=summary,
        seconds=result.seconds,
        result=result,
    )


def _compare_without(
    cells: pd.DataFrame, spec: EffectsSpec, term: str, data: EffectsData, loo_full, sampling
) -> dict:
    """Refit without ``term`` through the same pipeline; PSIS-LOO difference to the full fit."""
    from .pipeline import run_fit

    if term not in data.active:
        return {"skipped": f"term {term!r} is not in the fitted model"}
    spec2 = replace(spec, terms={**spec.terms, term: False})
    data2 = prepare(cells, spec2)
    model2 = build_effects_model(data2, spec2)
    # The reduced fit is only scored, not stored: its gates are reported, not enforced.
    reduced = run_fit(
        model2,
        kind="effects",
        observed="y",
        reported=reported_vars(model2),
        sampling=replace(sampling, progressbar=False),
        allow_failure=True,
        ppc=False,
    )
    loo_reduced = reduced.loo
    diff = loo_full.elpd_loo - loo_reduced.elpd_loo
    # SE of the difference from the pointwise differences (as arviz.compare does).
    pw = np.asarray(loo_full.loo_i) - np.asarray(loo_reduced.loo_i)
    se_diff = float(np.sqrt(pw.size * np.var(pw)))
    return {
        "loo": reduced.summary["loo"]["full"],
        "passed": reduced.diagnostics.passed,
        "elpd_diff_full_minus_without": float(diff),
        "se_diff": se_diff,
        "preferred": (
            f"with {term}"
            if diff > 2 * se_diff
            else f"without {term}"
            if diff < -2 * se_diff
            else "no clear difference (|elpd diff| < 2 SE)"
        ),
    }


def fit_effects(
    con,
    *,
    post_condition: str = "plain",
    base_condition: str | None = None,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
    spec: EffectsSpec | None = None,
    netcdf_dir: str | Path | None = None,
    name: str | None = None,
    **fit_kw,
) -> EffectsFit:
    """Cells from the warehouse -> :func:`fit_cells` -> ``fits``/``fit_params`` + NetCDF.

    Nothing is written when the fit misses its gates (unless
    ``allow_failure=True``, then it is stored with ``passed = false``).
    """
    from .cells import build_cells, with_scale
    from .pipeline import StoreOptions, save_result

    spec = spec or EffectsSpec()
    base_condition = base_condition or post_condition
    cells = with_scale(
        build_cells(
            con,
            post_condition=post_condition,
            base_condition=base_condition,
            models=models,
            experiments=experiments,
        ),
        spec.scale,
    )
    fit = fit_cells(cells, spec, **fit_kw)
    selection = {
        "models": list(models) if models else None,
        "experiments": list(experiments) if experiments else None,
        "post_condition": post_condition,
        "base_condition": base_condition,
        "pairs": fit.data.coords["pair"],
        "runs": sorted(
            {int(r) for r in pd.concat([cells.post_run_id, cells.base_run_id]).dropna()}
        ),
        "n_cells": fit.data.n_cells,
        "n_experiments": len(fit.data.coords["experiment"]),
    }
    condition = (
        post_condition
        if post_condition == base_condition
        else f"{post_condition} vs {base_condition}"
    )
    fit.result.selection = selection
    fit.fit_id = save_result(
        con,
        fit.result,
        StoreOptions(
            condition=condition,
            scale=spec.scale,
            name=name,
            labels=LABELS,
            var_names=reported_vars(fit.model),
            netcdf_dir=netcdf_dir,
        ),
    )
    return fit
