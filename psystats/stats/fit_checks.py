"""The checks a fit gets after sampling: the posterior predictive check and PSIS-LOO.

:func:`predictive_check` replicates every observed variable from (at most
400) thinned posterior draws and summarises how the data sit among the
replicates (:func:`ppc_statistics`); the replicates become the
``posterior_predictive`` group.

:func:`loo_check` computes PSIS-LOO from the pointwise log-likelihood of the
observations on (at most 1,000) thinned draws and keeps, in the fit's
``InferenceData`` (so in its NetCDF):

* ``log_likelihood``: the pointwise log-likelihood, one variable per
  observed variable, named like it (ArviZ's convention), on the thinned
  draws; for a likelihood that does not factorise over observations (the
  marginal normals of :mod:`.likelihoods`) these are the exact leave-one-out
  conditional densities log p(y_i | y_-i, theta), the quantity PSIS-LOO
  needs.  ``arviz.loo(arviz.from_netcdf(path))`` on the stored file gives
  exactly ``summary["loo"]["full"]`` (a fit with two observed variables:
  ``arviz.loo(idata, var_name=v)`` gives ``summary["loo"]["by_variable"][v]``)
  because the pipeline computes it the way ArviZ does on the file: the
  thinned log-likelihood, the relative efficiency from the whole posterior;
* ``psystats_loo``: the pointwise ELPD, Pareto k and observed value of each
  named observation, which ``psystats fit compare`` matches across fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .likelihoods import pointwise_log_likelihood

LOO_MAX_DRAWS = 1000  # PSIS-LOO on at most this many (thinned) draws
PPC_MAX_DRAWS = 400  # replicated data sets for the predictive check
PARETO_K_BAD = 0.7  # above it, PSIS-LOO is unreliable for that observation (Vehtari et al. 2024)
GROUP = "psystats_loo"  # the pointwise LOO a fit keeps for `fit compare`
HOOK_VARIABLE = "observations"  # the log_likelihood variable of a caller's pointwise function


def thin_draws(idata, max_draws: int):
    """``idata`` with every k-th draw, k chosen so at most about ``max_draws`` draws remain."""
    n = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    step = max(1, int(np.ceil(n / max_draws)))
    return idata.sel(draw=slice(None, None, step)) if step > 1 else idata


# --------------------------------------------------------------------------- predictive check


def posterior_predictive_draws(
    model,
    idata,
    var_name: str,
    *,
    max_draws: int = PPC_MAX_DRAWS,
    seed: int = 0,
    add_to_idata: bool = True,
):
    """(replicated draws as (draws, observations), observed values) of an observed variable.

    At most ``max_draws`` thinned posterior draws; with ``add_to_idata`` they
    are added to ``idata`` as its ``posterior_predictive`` group.
    """
    import pymc as pm

    thin = thin_draws(idata, max_draws)
    with model, warnings.catch_warnings():
        # PyMC warns that Potentials are ignored: they are not, here, because the
        # parameters are posterior draws (the Potentials shaped them already).
        warnings.filterwarnings("ignore", message=".*Potentials.*")
        pp = pm.sample_posterior_predictive(
            thin,
            var_names=[var_name],
            random_seed=seed,
            progressbar=False,
            extend_inferencedata=False,
        )
    if add_to_idata:
        if "posterior_predictive" in idata.groups():
            idata.posterior_predictive = idata.posterior_predictive.merge(pp.posterior_predictive)
        else:
            idata.add_groups({"posterior_predictive": pp.posterior_predictive})
    values = pp.posterior_predictive[var_name].values
    y = np.asarray(idata.observed_data[var_name].values, dtype=float).ravel()
    return values.reshape(-1, y.size), y


def ppc_statistics(y: np.ndarray, rep: np.ndarray) -> dict:
    """Coverage of the 90% predictive intervals and p-values of summary statistics.

    ``rep`` is (draws, observations).  Each observation is standardised by its
    predictive mean and SD; p-values P(T(y_rep) >= T(y)) for T = mean, SD,
    min and max over observations.  Values near 0 or 1 signal misfit.
    """
    lo, hi = np.quantile(rep, [0.05, 0.95], axis=0)
    m, s = rep.mean(axis=0), rep.std(axis=0)
    z_obs, z_rep = (y - m) / s, (rep - m) / s
    stats: dict[str, Callable[..., Any]] = {
        "mean": np.mean,
        "sd": np.std,
        "min": np.min,
        "max": np.max,
    }
    pvals = {k: float(np.mean(f(z_rep, axis=1) >= f(z_obs))) for k, f in stats.items()}
    return {
        "draws": int(rep.shape[0]),
        "coverage_90": float(np.mean((y >= lo) & (y <= hi))),
        "p_values": pvals,
    }


def predictive_check(
    model, idata, observed: Sequence[str], *, seed: int = 0, notes: list[str] | None = None
) -> dict:
    """PPC statistics of each observed variable; replicated draws added to ``idata``.

    One observed variable: its :func:`ppc_statistics` dict; several: one such
    dict per variable name.
    """
    if not observed:
        if notes is not None:
            notes.append(
                "no posterior predictive check: the model has no observed variable "
                "(its likelihood is a Potential)"
            )
        return {}
    out = {}
    for name in observed:
        rep, y = posterior_predictive_draws(model, idata, name, seed=seed)
        out[name] = ppc_statistics(y, rep)
    return out[observed[0]] if len(observed) == 1 else out


# --------------------------------------------------------------------------- PSIS-LOO


def psis_loo(posterior, ll) -> tuple[dict, Any]:
    """PSIS-LOO of the pointwise log-likelihood ``ll`` (chain, draw, observation): (summary, ELPD).

    Exactly what ``arviz.loo`` computes on a file holding ``posterior`` and
    ``ll`` as its ``log_likelihood`` group (the relative efficiency comes
    from the whole ``posterior``).
    """
    import arviz as az
    import xarray as xr

    name = str(ll.name or HOOK_VARIABLE)
    joint = az.InferenceData(posterior=posterior, log_likelihood=xr.Dataset({name: ll}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(joint, pointwise=True, var_name=name)
    k = np.asarray(res.pareto_k)
    summary = {
        "elpd_loo": float(res.elpd_loo),
        "se": float(res.se),
        "p_loo": float(res.p_loo),
        "n_observations": int(k.size),
        f"pareto_k_over_{PARETO_K_BAD}": int(np.sum(k > PARETO_K_BAD)),
        "draws": int(ll.sizes["chain"] * ll.sizes["draw"]),
    }
    return summary, res


def loo_check(
    model,
    idata,
    observed: Sequence[str],
    *,
    pointwise_loglik: Callable[[Any], Any] | None = None,
    pointwise_observed: Sequence[float] | np.ndarray | None = None,
    observation_labels: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    notes: list[str] | None = None,
    max_draws: int = LOO_MAX_DRAWS,
    attach: bool = True,
) -> tuple[dict | None, Any]:
    """PSIS-LOO over the observations: (summary dict, ArviZ ELPDData), or (None, None).

    The pointwise log-likelihood comes from ``pointwise_loglik(thin)`` when
    given (for a likelihood written as a Potential: an array or DataArray
    (chain, draw, observation), whose last coordinate names the
    observations; ``pointwise_observed`` are their values), else from a
    ``log_likelihood`` group already on ``idata``, else from
    :func:`.likelihoods.pointwise_log_likelihood` of each observed variable.
    ``observation_labels`` name the observations for ``fit compare`` (a
    mapping: per observed variable, prefixed with its name when there are
    several).  With several observed variables the summary also holds each
    one's own LOO (``by_variable``).  With ``attach`` the ``log_likelihood``
    and ``psystats_loo`` groups are added to ``idata`` (module docstring).
    """
    thin = thin_draws(idata, max_draws)
    arrays, labels, values = _pointwise(model, thin, observed, pointwise_loglik, pointwise_observed)
    if not arrays:
        if notes is not None:
            notes.append(
                "no PSIS-LOO: the model has no observed variable and no pointwise "
                "log-likelihood was given"
            )
        return None, None
    labels = _labels(observation_labels, labels, arrays)
    summary, res = psis_loo(idata.posterior, _joined(arrays, thin))
    what = (
        ", ".join(observed) if observed and pointwise_loglik is None else "pointwise log-likelihood"
    )
    summary["observed"] = what
    if len(arrays) > 1:
        summary["by_variable"] = {n: psis_loo(idata.posterior, a)[0] for n, a in arrays.items()}
    if attach:
        import xarray as xr

        if "log_likelihood" in idata.groups():
            del idata["log_likelihood"]
        idata.add_groups({"log_likelihood": xr.Dataset(dict(arrays))})
        attach_pointwise_loo(idata, res, labels=labels, values=values, observed_variable=what)
    return summary, res


def refresh_loo(idata) -> tuple[dict, Any]:
    """PSIS-LOO again from the stored ``log_likelihood`` group, after the posterior changed.

    The relative efficiency comes from the posterior, so a fit whose stored
    posterior is not the one sampled (a formula fit, turned into what
    ``bambi.Model.fit`` returns) scores its stored pointwise values against
    the stored posterior: what ``arviz.loo`` computes on the file.  Replaces
    the ``psystats_loo`` group; returns (summary of the full LOO, ELPDData).
    """
    arrays = {str(n): da for n, da in idata.log_likelihood.data_vars.items()}
    old = idata[GROUP]
    summary, res = psis_loo(idata.posterior, _joined(arrays, idata.log_likelihood))
    summary["observed"] = str(old.attrs.get("observed_variable", ""))
    labels = [str(v) for v in old["observation"].values]
    values = np.asarray(old["observed"].values, dtype=float)
    attach_pointwise_loo(
        idata, res, labels=labels, values=values, observed_variable=summary["observed"]
    )
    return summary, res


def _labels(given, default: list[str], arrays: Mapping[str, Any]) -> list[str]:
    if given is None:
        return default
    if isinstance(given, Mapping):
        several = len(arrays) > 1
        given = [f"{n}: {lab}" if several else str(lab) for n in arrays for lab in given[n]]
    if len(given) != len(default):
        raise ValueError(f"{len(given)} observation labels for {len(default)} observations")
    return [str(v) for v in given]


def _joined(arrays: Mapping[str, Any], thin):
    """The per-variable arrays as one DataArray (chain, draw, observation) on the draws of
    ``thin`` (an InferenceData, or a Dataset with chain and draw)."""
    import xarray as xr

    post = thin.posterior if hasattr(thin, "posterior") else thin
    c, d = post.sizes["chain"], post.sizes["draw"]
    arr = np.concatenate(
        [np.asarray(a.values, float).reshape(c, d, -1) for a in arrays.values()], -1
    )
    return xr.DataArray(
        arr,
        dims=("chain", "draw", "observation"),
        coords={"chain": post["chain"].values, "draw": post["draw"].values},
        name=next(iter(arrays)) if len(arrays) == 1 else "observations",
    )


def _pointwise(model, thin, observed, hook, hook_observed):
    """({variable: log-lik DataArray (chain, draw, obs)}, labels, observed values)."""
    values = _observed_values(thin, observed)
    if hook is not None:
        da, labels = _hook_array(hook(thin), thin)
        if hook_observed is not None:
            values = np.asarray(hook_observed, dtype=float).ravel()
        if values is None or values.size != da.shape[-1]:
            raise ValueError(
                f"pointwise_loglik gave {da.shape[-1]} observations but the observed values "
                f"number {0 if values is None else values.size}: pass pointwise_observed"
            )
        return {HOOK_VARIABLE: da}, labels, values
    if not observed:
        return {}, [], None
    have = "log_likelihood" in thin.groups() and all(n in thin.log_likelihood for n in observed)
    if have:
        arrays = {n: thin.log_likelihood[n] for n in observed}
    else:
        arrays = {n: pointwise_log_likelihood(model, thin, n) for n in observed}
    labels: list[str] = []
    for name in observed:
        labels += _element_labels(thin.observed_data[name], name if len(observed) > 1 else None)
    n_ll = sum(int(np.prod(a.shape[2:])) for a in arrays.values())
    if n_ll != values.size:  # a multivariate observation: one log-lik per block
        raise ValueError(
            f"{observed}: {n_ll} log-likelihood terms for {values.size} observed "
            "values; give a pointwise_loglik for a likelihood that does not factorise"
        )
    return arrays, labels, values


def _hook_array(raw, thin):
    """A caller's pointwise log-likelihood as a DataArray on ``thin``'s draws, and its labels."""
    import xarray as xr

    da = raw if isinstance(raw, xr.DataArray) else xr.DataArray(np.asarray(raw, dtype=float))
    if da.ndim != 3:
        raise ValueError(
            f"pointwise_loglik must return (chain, draw, observation), got shape {da.shape}"
        )
    last = da.dims[-1]
    labels = (
        [str(v) for v in da.coords[last].values]
        if last in da.coords
        else [str(i) for i in range(da.shape[-1])]
    )
    post = thin.posterior
    out = xr.DataArray(
        np.asarray(da.values, dtype=float),
        dims=("chain", "draw", "observation"),
        coords={"chain": post["chain"].values, "draw": post["draw"].values, "observation": labels},
        name=HOOK_VARIABLE,
    )
    return out, labels


def _observed_values(idata, observed: Sequence[str]) -> np.ndarray | None:
    if not observed or "observed_data" not in idata.groups():
        return None
    vals = [np.asarray(idata.observed_data[n].values, dtype=float).ravel() for n in observed]
    return np.concatenate(vals) if vals else None


def _element_labels(da, prefix: str | None) -> list[str]:
    """One label per element of an observed variable: its coordinate values."""
    dims = list(da.dims)
    coords = [[str(v) for v in da.coords[d].values] if d in da.coords else [] for d in dims]
    out = []
    for idx in np.ndindex(*da.shape):
        parts = [coords[k][i] if coords[k] else str(i) for k, i in enumerate(idx)]
        text = " / ".join(parts) if parts else "0"
        out.append(f"{prefix}[{text}]" if prefix else text)
    return out


def attach_pointwise_loo(
    idata,
    elpd,
    observed: str = "y",
    *,
    labels: Sequence[str] | None = None,
    values: Sequence[float] | np.ndarray | None = None,
    observed_variable: str | None = None,
) -> None:
    """Add ``elpd`` (an ArviZ ``ELPDData`` with ``pointwise=True``) to ``idata`` as a group.

    The observations are named by ``labels`` and their observed ``values``
    are kept beside them (``fit compare`` checks both); by default both come
    from ``idata.observed_data[observed]``.
    """
    import xarray as xr

    if labels is None or values is None:
        obs = idata.observed_data[observed]
        dim = obs.dims[0] if obs.dims else "observation"
        if labels is None:
            labels = (
                [str(v) for v in obs.coords[dim].values]
                if dim in obs.coords
                else [str(i) for i in range(obs.size)]
            )
        if values is None:
            values = np.asarray(obs.values, dtype=float).ravel()
    dim = "observation"
    ds = xr.Dataset(
        {
            "loo_i": (dim, np.asarray(elpd.loo_i, dtype=float).ravel()),
            "pareto_k": (dim, np.asarray(elpd.pareto_k, dtype=float).ravel()),
            "observed": (dim, np.asarray(values, dtype=float).ravel()),
        },
        coords={dim: np.asarray([str(v) for v in labels], dtype=str)},
        attrs={
            "elpd_loo": float(elpd.elpd_loo),
            "se": float(elpd.se),
            "p_loo": float(elpd.p_loo),
            "n_samples": int(elpd.n_samples),
            "good_k": float(getattr(elpd, "good_k", 0.7)),
            "observed_variable": observed_variable or observed,
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about a group it does not know
        if GROUP in idata.groups():
            del idata[GROUP]
        idata.add_groups({GROUP: ds})
