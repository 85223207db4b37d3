"""The generations, persona and accuracy fits through the shared pipeline (``stats.pipeline``).

:func:`fit_analysis` hands a built model to :func:`.pipeline.run_fit`
(sample, gates, posterior predictive check of every observed variable,
PSIS-LOO), with the pointwise log-likelihood of each observed variable from
:func:`.likelihoods.pointwise_log_likelihood` (exact leave-one-out
conditional densities for the marginalised normals, ordinary pointwise
densities otherwise), then adds the analysis' own summary, keeps the
pointwise log-likelihood as the ``log_likelihood`` group of the NetCDF, adds
a PSIS-LOO per observed variable when there are several, and stores the fit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .options import SamplingOptions
from .pipeline import FitResult, StoreOptions


def _per_variable_loo(arrays: Mapping[str, Any], posterior) -> dict[str, dict]:
    """PSIS-LOO of each observed variable on its own (summary dicts)."""
    import arviz as az
    import xarray as xr

    from .pipeline import PARETO_K_BAD

    out = {}
    for name, da in arrays.items():
        joint = az.InferenceData(posterior=posterior, log_likelihood=xr.Dataset({name: da}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = az.loo(joint, pointwise=True, var_name=name)
        k = np.asarray(res.pareto_k)
        out[name] = {
            "elpd_loo": float(res.elpd_loo),
            "se": float(res.se),
            "p_loo": float(res.p_loo),
            "n_observations": int(k.size),
            f"pareto_k_over_{PARETO_K_BAD}": int(np.sum(k > PARETO_K_BAD)),
        }
    return out


def fit_analysis(
    model,
    *,
    kind: str,
    con,
    sampling: SamplingOptions | Mapping[str, Any],
    allow_failure: bool,
    summarise: Callable[[Any], dict],
    observation_labels: Mapping[str, Sequence[str]],
    spec: Any,
    priors: Any,
    selection: Any,
    dropped: Any = None,
    notes: Sequence[str] | None = None,
    store: StoreOptions | Mapping[str, Any] | None = None,
    started: float | None = None,
) -> FitResult:
    """Sample, gate, check, score and store ``model``; returns the pipeline's :class:`FitResult`.

    ``observation_labels``: for each observed variable (in order), one label
    per observation (e.g. ``"model / experiment"``); they name the
    observations for ``psystats fit compare``.  ``summarise(idata)`` is the
    analysis' own summary, merged under the pipeline's ``ppc``/``loo``.
    """
    from .likelihoods import pointwise_log_likelihood
    from .pipeline import run_fit, save_result

    t0 = time.perf_counter() if started is None else started
    observed = list(observation_labels)
    kept: dict[str, Any] = {}

    def pointwise(thin):
        # Each variable's pointwise log-likelihood (exact LOO conditionals for a marginal
        # normal), concatenated in ``observed`` order as the pipeline's LOO expects.
        kept.clear()
        for name in observed:
            kept[name] = pointwise_log_likelihood(model, thin, name)
        c, d = thin.posterior.sizes["chain"], thin.posterior.sizes["draw"]
        return np.concatenate([kept[n].values.reshape(c, d, -1) for n in observed], axis=-1)

    labels = [
        (f"{name}: {lab}" if len(observed) > 1 else str(lab))
        for name in observed
        for lab in observation_labels[name]
    ]
    result = run_fit(
        model,
        kind=kind,
        observed=observed,
        sampling=sampling,
        allow_failure=allow_failure,
        pointwise_loglik=pointwise,
        observation_labels=labels,
        spec=spec,
        priors=priors,
        selection=selection,
        dropped=dropped,
        notes=notes,
        con=None,
        started=t0,
    )
    result.summary = {**summarise(result.idata), **result.summary}
    if kept:
        import xarray as xr

        # The (thinned) draws' pointwise log-likelihood, the input of PSIS-LOO, in the NetCDF
        # (replacing any the sampler computed: a marginal normal's would be the joint density).
        if "log_likelihood" in result.idata.groups():
            del result.idata["log_likelihood"]
        result.idata.add_groups({"log_likelihood": xr.Dataset(dict(kept))})
        if len(kept) > 1:
            loo = dict(result.summary.get("loo") or {})
            loo["by_variable"] = _per_variable_loo(kept, result.idata.posterior)
            result.summary["loo"] = loo
    result.seconds = time.perf_counter() - t0
    if con is not None:
        save_result(con, result, store)
    return result
