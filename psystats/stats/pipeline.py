"""One fit pipeline for every analysis: sample -> diagnose -> gate -> PPC -> PSIS-LOO -> store.

Every analysis (effects, formula, generations, persona, accuracy) builds its
PyMC model and hands it to :func:`run_fit`, which

1. samples it (:func:`.sampling.sample`: nutpie, PyMC's NUTS as fallback);
2. diagnoses it (:func:`.sampling.diagnose`) on the *reported* variables:
   by default :func:`.sampling.gated_vars` (every free and deterministic
   variable except the sampler's helpers ``*_raw``, ``*_coef``, ``*_z``,
   ``z_*``), with the same thresholds for every analysis (R-hat <= 1.01,
   bulk and tail ESS >= 400, no divergence);
3. gates it (:func:`.sampling.enforce`); a miss that sampling can mend
   (:func:`next_attempt`: a few divergences -> target_accept 0.99; a narrow
   R-hat/ESS miss without divergences -> twice the draws) first samples
   again (``SamplingOptions.redraws`` times, default twice; noted in the
   fit); a missed gate then raises
   :class:`.sampling.DiagnosticsFailure` and nothing is stored, unless
   ``allow_failure`` (then stored with ``passed = false``);
4. runs the posterior predictive check of every observed variable
   (:func:`.sampling.ppc_statistics`; the replicated draws become the
   ``posterior_predictive`` group);
5. computes PSIS-LOO from the pointwise log-likelihood: a
   ``log_likelihood`` group already on the posterior, else
   ``pm.compute_log_likelihood`` of the observed variables, else the
   caller's ``pointwise_loglik(idata)`` (for likelihoods that do not
   factorise over observations, e.g. marginalised Gaussian effects); the
   pointwise values are kept in the NetCDF (``psystats_loo`` group) for
   ``psystats fit compare``;
6. stores it (:func:`.store.save_fit`) when a connection is given: ``fits``,
   ``fit_params`` and a NetCDF whose ``attrs["psystats_fit"]`` holds the
   spec, priors actually used, data selection, dropped terms, notes,
   diagnostics and package versions.

Example (what ``fit_generations`` etc. do)::

    from psystats.stats.pipeline import SamplingOptions, StoreOptions, run_fit

    result = run_fit(
        model,                                  # a built pm.Model
        kind="persona",
        observed=["d"],                         # default: every observed RV
        reported=["effect", "sigma_exp"],       # default: sampling.gated_vars(model)
        sampling=SamplingOptions(draws=1000, tune=1000, chains=4, seed=0),
        allow_failure=False,
        spec={"model_effects": "fixed"},
        priors={"effect": "Normal(0, 0.5)"},    # after any autoscaling
        selection={"models": [...], "experiments": [...], "condition": "persona"},
        dropped={"sigma_model": "one model per type"},
        notes=["..."],
        summary={"by_post_training": {...}},    # the analysis' own summary
        pointwise_loglik=None,                  # or f(idata) -> (chain, draw, obs)
        con=con,                                # None: do not store
        store=StoreOptions(condition="persona vs plain", scale="nats", name=None,
                           labels={...}, element_coords={...}, var_names=None,
                           netcdf_dir=None),
    )
    result.fit_id, result.diagnostics.passed, result.summary["ppc"], result.summary["loo"]

Without ``con``, :func:`save_result` stores a result later (the effects fit
does so after its comparison refits).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psystats.warehouse.errors import WarehouseError

from .sampling import Diagnostics

log = logging.getLogger(__name__)

SAMPLERS = ("nutpie", "pymc")
TARGET_ACCEPT_RANGE = (0.5, 0.999)
LOO_MAX_DRAWS = 1000  # PSIS-LOO on at most this many (thinned) draws
PPC_MAX_DRAWS = 400  # replicated data sets for the predictive check
PARETO_K_BAD = 0.7


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: the same settings and the same validation for every analysis."""

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 0
    sampler: str = "nutpie"
    target_accept: float = 0.95
    progressbar: bool = False
    cores: int | None = None
    # How many times a fit that misses its gates in a way sampling longer or
    # more carefully can mend may sample again (see next_attempt); 0: never.
    redraws: int = 2

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise WarehouseError(f"unknown sampler {self.sampler!r}: use 'nutpie' or 'pymc'")
        if int(self.draws) < 1 or int(self.chains) < 1 or int(self.tune) < 0:
            raise WarehouseError("draws and chains must be at least 1 and tune at least 0")
        if int(self.redraws) < 0:
            raise WarehouseError("redraws must be at least 0")
        lo, hi = TARGET_ACCEPT_RANGE
        if not lo <= float(self.target_accept) <= hi:
            raise WarehouseError(f"target_accept must be between {lo} and {hi}")

    @classmethod
    def of(cls, value: SamplingOptions | Mapping[str, Any] | None) -> SamplingOptions:
        """``value`` as options (a mapping of field names, or None for the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, SamplingOptions):
            return value
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in fields})

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`.sampling.sample`."""
        out = asdict(self)
        out.pop("redraws")
        return out


def redraw_may_help(diag: Diagnostics) -> bool:
    """Whether drawing longer chains can be expected to meet the gates ``diag`` missed.

    Only when R-hat or ESS alone fell short, narrowly (R-hat <= 1.05, bulk and
    tail ESS >= 100) and without a divergence: longer chains raise ESS and
    bring R-hat down (Vehtari et al. 2021 recommend exactly this), whereas a
    divergence means a geometry longer chains do not fix, and a far miss means
    a problem to look at rather than to outlast.
    """
    if diag.passed or diag.divergences or diag.n_chains < 2:
        return False
    vals = (diag.max_rhat, diag.min_ess_bulk, diag.min_ess_tail)
    if not all(np.isfinite(v) for v in vals):
        return False
    return diag.max_rhat <= 1.05 and min(diag.min_ess_bulk, diag.min_ess_tail) >= 100


RETRY_TARGET_ACCEPT = 0.99
FEW_DIVERGENCES = 0.01  # at most this share of the draws diverged: a narrow region, not a wall


def next_attempt(diag: Diagnostics, draws: int, target_accept: float) -> dict[str, Any] | None:
    """The settings to sample again with after the gates ``diag`` missed, or None.

    * A few divergences (at most 1% of the draws) with ``target_accept``
      below 0.99: sample again at 0.99, the remedy Stan and PyMC prescribe (a
      smaller step size follows the curvature of a narrow region, such as
      the neck of a scale near zero).  Many divergences are left to the user.
    * No divergence and a narrow miss of R-hat/ESS (:func:`redraw_may_help`):
      twice the draws per chain.
    """
    if diag.passed or diag.n_chains < 2:
        return None
    if diag.divergences:
        few = diag.divergences <= FEW_DIVERGENCES * diag.n_chains * diag.n_draws
        if few and target_accept < RETRY_TARGET_ACCEPT:
            return {"draws": draws, "target_accept": RETRY_TARGET_ACCEPT}
        return None
    if redraw_may_help(diag):
        return {"draws": 2 * draws, "target_accept": target_accept}
    return None


@dataclass(frozen=True)
class StoreOptions:
    """How a fit is stored (:func:`.store.save_fit`): labels, coords, names, folder."""

    condition: str | None = None
    scale: str | None = None
    name: str | None = None
    labels: Mapping[str, str] | None = None
    element_coords: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None
    var_names: Sequence[str] | None = None  # fit_params rows (default: the reported variables)
    netcdf_dir: str | Path | None = None

    @classmethod
    def of(cls, value: StoreOptions | Mapping[str, Any] | None) -> StoreOptions:
        if value is None:
            return cls()
        if isinstance(value, StoreOptions):
            return value
        return cls(**value)


@dataclass
class FitResult:
    """One fit, whatever the analysis: what :func:`run_fit` returns."""

    kind: str
    idata: Any
    model: Any  # the pm.Model that was sampled
    diagnostics: Diagnostics
    summary: dict
    reported: list[str]
    observed: list[str]
    spec: Any = None
    priors: Any = None
    selection: Any = None
    dropped: Any = None  # terms left out, with the reason: {term: reason} or a list
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    loo: Any = None  # the ArviZ ELPDData (pointwise), None without checks
    fit_id: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.diagnostics.passed)


def observed_names(model) -> list[str]:
    """Names of the model's observed random variables (empty for a Potential-only model)."""
    return [rv.name for rv in model.observed_RVs]


def run_fit(
    model,
    *,
    kind: str,
    observed: str | Sequence[str] | None = None,
    reported: Sequence[str] | None = None,
    sampling: SamplingOptions | Mapping[str, Any] | None = None,
    allow_failure: bool = False,
    checks: bool = True,
    ppc: bool = True,
    pointwise_loglik: Callable[[Any], Any] | None = None,
    pointwise_observed: Sequence[float] | np.ndarray | None = None,
    observation_labels: Sequence[str] | None = None,
    spec: Any = None,
    priors: Any = None,
    selection: Any = None,
    dropped: Any = None,
    notes: Sequence[str] | None = None,
    summary: Mapping[str, Any] | None = None,
    con=None,
    store: StoreOptions | Mapping[str, Any] | None = None,
    started: float | None = None,
    idata: Any = None,
) -> FitResult:
    """Sample ``model``, gate it, check it, and (with ``con``) store it; see the module docstring.

    ``observed``: the observed variable(s) to check and score (default:
    every observed RV).  ``reported``: the variables the gates check and
    ``fit_params`` stores (default :func:`.sampling.gated_vars`).
    ``checks=False`` skips the predictive check and LOO; ``ppc=False`` only
    the predictive check.  ``pointwise_loglik(idata)`` returns the pointwise
    log-likelihood as (chain, draw, observation) (an array or DataArray;
    a coordinate on the last dimension names the observations) for the
    thinned posterior it is given; ``pointwise_observed`` are the matching
    observed values (by default the observed variables' values), which
    ``fit compare`` uses to check that two fits saw the same data;
    ``observation_labels`` name the observations for it (default: the
    observed variables' coordinates), e.g. "pair / experiment" per cell.
    ``started`` (a ``time.perf_counter()`` value) makes ``seconds`` include
    the caller's data preparation.  ``idata``: posterior draws of ``model``
    already drawn (a stored fit's, say): the pipeline checks, scores and
    stores them instead of sampling.
    """
    from .sampling import diagnose, enforce, gated_vars, sample, sampler_record

    t0 = time.perf_counter() if started is None else started
    opts = SamplingOptions.of(sampling)
    obs = _observed_list(model, observed)
    gated = list(reported) if reported is not None else gated_vars(model)
    out_notes = list(notes or [])
    redrawn: list[dict[str, Any]] = []
    sampled_here = idata is None
    if idata is None:
        idata = sample(model, **opts.kwargs())
    diag = diagnose(idata, var_names=gated)
    current: dict[str, Any] = {"draws": opts.draws, "target_accept": opts.target_accept}
    while sampled_here and len(redrawn) < opts.redraws:
        nxt = next_attempt(diag, **current)
        if nxt is None:
            break
        redrawn.append({**current, "problems": list(diag.problems)})
        out_notes.append(
            f"{current['draws']} draws per chain at target_accept {current['target_accept']} "
            f"missed the gates ({'; '.join(diag.problems)}); sampled again with "
            f"{nxt['draws']} draws at target_accept {nxt['target_accept']}"
        )
        current = nxt
        idata = sample(model, **{**opts.kwargs(), **current})
        diag = diagnose(idata, var_names=gated)
    enforce(diag, allow_failure)
    summ: dict[str, Any] = dict(summary or {})
    loo = None
    if checks:
        if ppc:
            summ["ppc"] = predictive_check(model, idata, obs, seed=opts.seed, notes=out_notes)
        loo_dict, loo = loo_check(
            model,
            idata,
            obs,
            pointwise_loglik=pointwise_loglik,
            pointwise_observed=pointwise_observed,
            observation_labels=observation_labels,
            notes=out_notes,
        )
        if loo_dict is not None:
            summ["loo"] = {**dict(summ.get("loo") or {}), "full": loo_dict}
    summ["sampler"] = sampler_record(idata)
    if redrawn:
        summ["sampler"]["redrawn"] = redrawn
    summ["gates"] = gate_record(gated)
    if out_notes:
        summ["notes"] = out_notes
    result = FitResult(
        kind=kind,
        idata=idata,
        model=model,
        diagnostics=diag,
        summary=summ,
        reported=gated,
        observed=obs,
        spec=spec,
        priors=priors,
        selection=selection,
        dropped=dropped,
        notes=out_notes,
        seconds=time.perf_counter() - t0,
        loo=loo,
    )
    if con is not None:
        save_result(con, result, store)
    return result


def save_result(
    con, result: FitResult, store: StoreOptions | Mapping[str, Any] | None = None
) -> int:
    """Store ``result`` (``fits``, ``fit_params``, NetCDF); sets and returns ``result.fit_id``."""
    from .store import save_fit

    so = StoreOptions.of(store)
    result.fit_id = save_fit(
        con,
        kind=result.kind,
        idata=result.idata,
        spec=result.spec,
        priors=result.priors,
        selection=result.selection,
        condition=so.condition,
        scale=so.scale,
        sampler=result.summary.get("sampler"),
        diagnostics=result.diagnostics,
        summary=result.summary,
        seconds=result.seconds,
        netcdf_dir=so.netcdf_dir,
        var_names=list(so.var_names) if so.var_names is not None else result.reported,
        labels=so.labels,
        name=so.name,
        element_coords=so.element_coords,
        dropped=result.dropped,
        notes=result.notes,
    )
    return result.fit_id


def gate_record(gated: Sequence[str]) -> dict[str, Any]:
    """The gate rule a fit was held to (stored in its summary and NetCDF)."""
    from .sampling import ESS_MIN, RHAT_MAX

    return {
        "rhat_max": RHAT_MAX,
        "ess_bulk_min": ESS_MIN,
        "ess_tail_min": ESS_MIN,
        "divergences_max": 0,
        "variables": list(gated),
    }


def _observed_list(model, observed: str | Sequence[str] | None) -> list[str]:
    names = observed_names(model)
    if observed is None:
        return names
    want = [observed] if isinstance(observed, str) else list(observed)
    missing = [n for n in want if n not in names]
    if missing:
        raise ValueError(f"{missing} are not observed variables of the model (those: {names})")
    return want


# ---------------------------------------------------------------------------
# Posterior predictive check


def predictive_check(
    model, idata, observed: Sequence[str], *, seed: int = 0, notes: list[str] | None = None
) -> dict:
    """PPC statistics of each observed variable; replicated draws added to ``idata``.

    One observed variable: its :func:`.sampling.ppc_statistics` dict; several:
    one such dict per variable name.
    """
    from .sampling import posterior_predictive_draws, ppc_statistics

    if not observed:
        if notes is not None:
            notes.append(
                "no posterior predictive check: the model has no observed variable "
                "(its likelihood is a Potential)"
            )
        return {}
    out = {}
    for name in observed:
        rep, y = posterior_predictive_draws(model, idata, name, max_draws=PPC_MAX_DRAWS, seed=seed)
        out[name] = ppc_statistics(y, rep)
    return out[observed[0]] if len(observed) == 1 else out


# ---------------------------------------------------------------------------
# PSIS-LOO


def loo_check(
    model,
    idata,
    observed: Sequence[str],
    *,
    pointwise_loglik: Callable[[Any], Any] | None = None,
    pointwise_observed: Sequence[float] | np.ndarray | None = None,
    observation_labels: Sequence[str] | None = None,
    notes: list[str] | None = None,
    max_draws: int = LOO_MAX_DRAWS,
    attach: bool = True,
) -> tuple[dict | None, Any]:
    """PSIS-LOO over the observations: (summary dict, ArviZ ELPDData), or (None, None).

    With ``attach`` the pointwise values go into ``idata`` (``psystats_loo``
    group, kept in the NetCDF) for ``psystats fit compare``.
    """
    import arviz as az
    import xarray as xr

    from .compare import attach_pointwise_loo
    from .sampling import thin_draws

    thin = thin_draws(idata, max_draws)
    ll, labels, values = _pointwise(model, thin, observed, pointwise_loglik, pointwise_observed)
    if ll is None:
        if notes is not None:
            notes.append(
                "no PSIS-LOO: the model has no observed variable and no pointwise "
                "log-likelihood was given"
            )
        return None, None
    if observation_labels is not None:
        if len(observation_labels) != len(labels):
            raise ValueError(
                f"{len(observation_labels)} observation labels for {len(labels)} observations"
            )
        labels = [str(v) for v in observation_labels]
    joint = az.InferenceData(
        posterior=thin.posterior, log_likelihood=xr.Dataset({"observations": ll})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(joint, pointwise=True, var_name="observations")
    k = np.asarray(res.pareto_k)
    what = ", ".join(observed) if observed else "pointwise log-likelihood"
    summary: dict[str, Any] = {
        "elpd_loo": float(res.elpd_loo),
        "se": float(res.se),
        "p_loo": float(res.p_loo),
        "n_observations": int(k.size),
        f"pareto_k_over_{PARETO_K_BAD}": int(np.sum(k > PARETO_K_BAD)),
        "draws": int(thin.posterior.sizes["chain"] * thin.posterior.sizes["draw"]),
        "observed": what,
    }
    if attach:
        attach_pointwise_loo(
            idata,
            res,
            labels=labels,
            values=values,
            observed_variable=what,
        )
    return summary, res


def _pointwise(model, thin, observed, hook, hook_observed):
    """(log-lik DataArray (chain, draw, observation), labels, observed values) or Nones."""
    import pymc as pm
    import xarray as xr

    values = _observed_values(thin, observed)
    if hook is not None:
        raw = hook(thin)
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
        arr = np.asarray(da.values, dtype=float)
        if hook_observed is not None:
            values = np.asarray(hook_observed, dtype=float).ravel()
        if values is None or values.size != arr.shape[-1]:
            raise ValueError(
                f"pointwise_loglik gave {arr.shape[-1]} observations but the observed values "
                f"number {0 if values is None else values.size}: pass pointwise_observed"
            )
        return _as_loglik(arr, thin), labels, values
    if not observed:
        return None, None, None
    if "log_likelihood" in thin.groups() and all(n in thin.log_likelihood for n in observed):
        ds = thin.log_likelihood
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ll = pm.compute_log_likelihood(
                thin,
                model=model,
                var_names=list(observed),
                extend_inferencedata=False,
                progressbar=False,
            )
        ds = ll.log_likelihood if hasattr(ll, "log_likelihood") else ll
    parts, labels = [], []
    for name in observed:
        da = ds[name]
        n_chain, n_draw = da.sizes["chain"], da.sizes["draw"]
        parts.append(np.asarray(da.values, dtype=float).reshape(n_chain, n_draw, -1))
        labels += _element_labels(thin.observed_data[name], name if len(observed) > 1 else None)
    arr = np.concatenate(parts, axis=-1)
    if arr.shape[-1] != values.size:  # a multivariate observation: one log-lik per block
        raise ValueError(
            f"{observed}: {arr.shape[-1]} log-likelihood terms for {values.size} observed "
            "values; give a pointwise_loglik for a likelihood that does not factorise"
        )
    return _as_loglik(arr, thin), labels, values


def _as_loglik(arr: np.ndarray, thin):
    import xarray as xr

    post = thin.posterior
    return xr.DataArray(
        arr,
        dims=("chain", "draw", "observation"),
        coords={"chain": post["chain"].values, "draw": post["draw"].values},
    )


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
