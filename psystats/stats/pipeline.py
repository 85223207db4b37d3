"""One fit pipeline for every analysis: sample -> gate (and retry) -> PPC -> PSIS-LOO -> store.

Every analysis (effects, formula, generations, persona, accuracy) prepares its
data, builds its PyMC model and hands it to :func:`run_fit`, which

1. samples it (:func:`.sampling.sample`: nutpie, PyMC's NUTS as fallback)
   with the fit's :class:`~.options.SamplingOptions`;
2. diagnoses it (:func:`.sampling.diagnose`) on the *reported* variables:
   by default :func:`.sampling.gated_vars` (every free and deterministic
   variable except the sampler's helpers ``*_raw``, ``*_coef``, ``*_z``,
   ``z_*``), with the same thresholds for every analysis (R-hat <= 1.01,
   bulk and tail ESS >= 400, no divergence);
3. gates it: a miss that sampling can mend (:func:`next_attempt`: at most
   :data:`RETRY_MAX_DIVERGENCES` divergences -> target_accept 0.99; a narrow
   R-hat/ESS miss without divergences -> twice the draws) first samples
   again (``SamplingOptions.redraws`` times, default twice; each retry is a
   note of the fit and an entry of ``summary["sampler"]["redrawn"]``); a
   missed gate then raises :class:`.sampling.DiagnosticsFailure` naming
   every attempt, and nothing is stored, unless ``allow_failure`` (then
   stored with ``passed = false``);
4. runs the posterior predictive check of every observed variable and
5. PSIS-LOO from the pointwise log-likelihood (:mod:`.fit_checks`), which
   it keeps as the ``log_likelihood`` group (and ``psystats_loo`` for
   ``psystats fit compare``): the stored NetCDF alone answers
   ``arviz.loo(arviz.from_netcdf(path))``;
6. stores it (:func:`save_result`, :func:`.store.save_fit`) when a
   connection is given: ``fits``, ``fit_params`` and a NetCDF whose
   ``attrs["psystats_fit"]`` holds the spec, priors actually used, data
   selection, dropped terms, notes, diagnostics and package versions.

It returns one :class:`FitResult`, the only return type of every
``fit_<kind>`` function; an analysis hangs its own extras on it (``data``,
``extras``).  Example (what ``fit_persona`` does)::

    from psystats.stats.options import SamplingOptions, StoreOptions
    from psystats.stats.pipeline import ParamRows, run_fit

    result = run_fit(
        model,                                  # a built pm.Model
        kind="persona",
        observed=["obs"],                       # default: every observed RV
        sampling=SamplingOptions(draws=1000),
        allow_failure=False,
        observation_labels={"obs": ["qwen3-8b / exp1", ...]},   # for fit compare
        spec={"model_effects": "fixed"},
        priors={"effect": "Normal(0, 0.5)"},    # after any autoscaling
        selection={"models": [...], "experiments": [...]},
        dropped={"sigma_model": "one model per type"},
        notes=["..."],
        summarise=lambda idata: {...},          # the analysis' own summary
        condition="persona vs plain",
        scale="nats",
        params=ParamRows(var_names=["effect", "sigma_exp"]),
        con=con,                                # None: do not store
        store=StoreOptions(name=None, netcdf_dir=None),
    )
    result.fit_id, result.passed, result.summary["ppc"], result.summary["loo"]

Without ``con``, :func:`save_result` stores a result later (the effects fit
does so after its comparison refits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from psystats.warehouse.sql import scalar

from .fit_checks import loo_check, predictive_check
from .options import MAX_DRAWS, SamplingOptions, Selection, StoreOptions
from .sampling import (
    ESS_MIN,
    RETRY_TARGET_ACCEPT,
    RHAT_MAX,
    Diagnostics,
    diagnose,
    enforce,
    gated_vars,
    sample,
    sampler_record,
)
from .store import save_fit

log = logging.getLogger(__name__)


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


# A retry against divergences only when at most this many transitions diverged, in all
# chains together, whatever the number of draws (docs/model.md, "One pipeline", says why).
RETRY_MAX_DIVERGENCES = 10


def next_attempt(diag: Diagnostics, draws: int, target_accept: float) -> dict[str, Any] | None:
    """The settings to sample again with after the gates ``diag`` missed, or None.

    * A few divergences (at most :data:`RETRY_MAX_DIVERGENCES`, an absolute
      count) with ``target_accept`` below 0.99: sample again at 0.99, the
      remedy Stan and PyMC prescribe (a smaller step size follows the
      curvature of a narrow region, such as the neck of a scale near zero).
      More divergences are left to the user, at any number of draws.
    * No divergence and a narrow miss of R-hat/ESS (:func:`redraw_may_help`):
      twice the draws per chain (at most ``options.MAX_DRAWS``).
    """
    if diag.passed or diag.n_chains < 2:
        return None
    if diag.divergences:
        few = diag.divergences <= RETRY_MAX_DIVERGENCES
        if few and target_accept < RETRY_TARGET_ACCEPT:
            return {"draws": draws, "target_accept": RETRY_TARGET_ACCEPT}
        return None
    if redraw_may_help(diag) and draws < MAX_DRAWS:
        return {"draws": min(2 * draws, MAX_DRAWS), "target_accept": target_accept}
    return None


@dataclass(frozen=True)
class ParamRows:
    """Which ``fit_params`` rows a fit gets and how they read (:func:`.store.summarise_posterior`).

    ``var_names``: the stored variables (default: the reported ones);
    ``labels``: a format string per variable over its dimension names;
    ``element_coords``: the ``coords`` written for a flattened dimension.
    """

    var_names: Sequence[str] | None = None
    labels: Mapping[str, str] | None = None
    element_coords: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None


@dataclass
class FitResult:
    """One fit, whatever the analysis: what :func:`run_fit` and every ``fit_<kind>`` return.

    ``condition`` and ``scale`` are what ``fits.condition``/``fits.scale``
    say (the scale is the unit of the cell values); ``what`` says in a few
    words what was fitted ("32 cells, 8 pairs, 4 experiments").  ``data`` is
    the analysis' prepared input (``EffectsData``, the formula's cell frame,
    ``GenerationsData``, ``PersonaData``, ``AccuracyData``) and ``extras``
    anything else it hands back (the formula's Bambi model, the effects
    model's fitted ``EffectsSpec``).  ``fit_id``/``netcdf_path``: where it was
    stored (None until then).
    """

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
    condition: str | None = None
    scale: str | None = None
    what: str = ""
    params: ParamRows = field(default_factory=ParamRows)
    data: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    netcdf_path: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.diagnostics.passed)

    @property
    def redrawn(self) -> list[dict]:
        """The attempts that missed the gates and were sampled again (empty: none)."""
        return list((self.summary.get("sampler") or {}).get("redrawn") or [])


def observed_names(model) -> list[str]:
    """Names of the model's observed random variables (empty for a Potential-only model)."""
    return [rv.name for rv in model.observed_RVs]


@dataclass(frozen=True)
class FitCall:
    """The validated arguments of one ``fit_<kind>`` call, what the analysis' body reads."""

    selection: Selection
    spec: Any  # the kind's spec dataclass
    sampling: SamplingOptions
    store: StoreOptions
    allow_failure: bool
    started: float  # time.perf_counter() at the call: ``seconds`` include loading the data

    def run_fit(self, model, con, **fit: Any) -> FitResult:
        """:func:`run_fit` with this call's sampling, ``allow_failure``, store and start time."""
        return run_fit(
            model,
            sampling=self.sampling,
            allow_failure=self.allow_failure,
            con=con,
            store=self.store,
            started=self.started,
            **fit,
        )


def built(model_spec: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """What :func:`run_fit` records of a model builder's output: the ``spec`` dict with the
    ``priors`` used and the ``dropped`` terms, and ``data`` with its ``selection``/``notes``."""
    return dict(
        spec=model_spec,
        priors=model_spec["priors"],
        selection=data.selection,
        dropped=model_spec.get("dropped"),
        notes=data.notes,
        data=data,
    )


def fit_entry(
    kind: str, spec_class: Any, selects: Sequence[str]
) -> Callable[[Callable[[Any, FitCall], FitResult]], Callable[..., FitResult]]:
    """Make ``body(con, call: FitCall)`` the kind's entry function, the fit contract::

        fit_<kind>(con, selection=None, spec=None, sampling=None, *,
                   allow_failure=False, store=None) -> FitResult

    the one place its arguments are built and checked: :class:`~.options.Selection`
    (refusing a list field the kind cannot apply; ``selects`` are those it can),
    ``spec_class.of(spec)``, :class:`~.options.SamplingOptions` and
    :class:`~.options.StoreOptions`, each from itself, a mapping of its fields or
    None.  The entry function keeps the body's name and docstring.
    """

    def entry(body: Callable[[Any, FitCall], FitResult]) -> Callable[..., FitResult]:
        def fit(
            con,
            selection: Selection | Mapping[str, Any] | None = None,
            spec: Any = None,
            sampling: SamplingOptions | Mapping[str, Any] | None = None,
            *,
            allow_failure: bool = False,
            store: StoreOptions | Mapping[str, Any] | None = None,
        ) -> FitResult:
            started = time.perf_counter()
            sel, kind_spec = Selection.of(selection), spec_class.of(spec)
            sel.require(kind, selects)
            store, sampling = StoreOptions.of(store), SamplingOptions.of(sampling)
            return body(con, FitCall(sel, kind_spec, sampling, store, allow_failure, started))

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(fit, attr, getattr(body, attr))
        return fit

    return entry


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
    observation_labels: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    spec: Any = None,
    priors: Any = None,
    selection: Any = None,
    dropped: Any = None,
    notes: Sequence[str] | None = None,
    summary: Mapping[str, Any] | None = None,
    summarise: Callable[[Any], Mapping[str, Any]] | None = None,
    condition: str | None = None,
    scale: str | None = None,
    what: str = "",
    params: ParamRows | None = None,
    data: Any = None,
    extras: Mapping[str, Any] | None = None,
    con=None,
    store: StoreOptions | Mapping[str, Any] | None = None,
    started: float | None = None,
    idata: Any = None,
) -> FitResult:
    """Sample ``model``, gate it, check it, and (with ``con``) store it; see the module docstring.

    ``observed``: the observed variable(s) to check and score (default:
    every observed RV).  ``reported``: the variables the gates check
    (default :func:`.sampling.gated_vars`).  ``checks=False`` skips the
    predictive check and LOO; ``ppc=False`` only the predictive check.
    ``pointwise_loglik``, ``pointwise_observed``, ``observation_labels``: see
    :func:`.fit_checks.loo_check`.  ``summary`` is the analysis' own summary,
    or ``summarise(idata)`` computes it from the draws; the pipeline's
    ``ppc``, ``loo``, ``sampler`` and ``gates`` go beside it.  ``started``
    (a ``time.perf_counter()`` value) makes ``seconds`` include the caller's
    data preparation.  ``idata``: posterior draws of ``model`` already drawn
    (a stored fit's, say): the pipeline checks, scores and stores them
    instead of sampling.
    """
    t0 = time.perf_counter() if started is None else started
    opts = SamplingOptions.of(sampling)
    obs = _observed_list(model, observed)
    gated = list(reported) if reported is not None else gated_vars(model)
    out_notes = list(notes or [])
    if idata is None:
        idata, diag, attempts = _sample_until_gates_or_mended(model, opts, gated, out_notes)
    else:
        diag = diagnose(idata, var_names=gated)
        attempts = [_attempt(opts, diag)]
    enforce(diag, allow_failure, attempts)
    summ: dict[str, Any] = dict(summary or {})
    loo = None
    if checks:
        loo = _check(
            model,
            idata,
            obs,
            summ,
            out_notes,
            seed=opts.seed if ppc else None,
            pointwise_loglik=pointwise_loglik,
            pointwise_observed=pointwise_observed,
            observation_labels=observation_labels,
        )
    if summarise is not None:
        summ = {**summarise(idata), **summ}
    summ["sampler"] = {**sampler_record(idata), "retries": len(attempts) - 1}
    if len(attempts) > 1:
        summ["sampler"]["redrawn"] = attempts[:-1]
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
        condition=condition,
        scale=scale,
        what=what,
        params=params or ParamRows(),
        data=data,
        extras=dict(extras or {}),
    )
    if con is not None:
        save_result(con, result, store)
    return result


def _check(model, idata, obs, summ: dict, notes: list[str], *, seed: int | None, **loo_kw):
    """The predictive check (unless ``seed`` is None) and PSIS-LOO, into ``summ``; the ELPD."""
    if seed is not None:
        summ["ppc"] = predictive_check(model, idata, obs, seed=seed, notes=notes)
    loo_dict, loo = loo_check(model, idata, obs, notes=notes, **loo_kw)
    if loo_dict is not None:
        by_variable = loo_dict.pop("by_variable", None)
        summ["loo"] = {**dict(summ.get("loo") or {}), "full": loo_dict}
        if by_variable:
            summ["loo"]["by_variable"] = by_variable
    return loo


def _attempt(opts: SamplingOptions, diag: Diagnostics) -> dict[str, Any]:
    """One sampling of a fit as recorded: its settings and the gates it missed."""
    return {
        "draws": opts.draws,
        "target_accept": opts.target_accept,
        "divergences": int(diag.divergences),
        "problems": list(diag.problems),
    }


def _sample_until_gates_or_mended(model, opts: SamplingOptions, gated, notes: list[str]):
    """Sample; while a miss is one sampling can mend (:func:`next_attempt`), sample again.

    At most ``opts.redraws`` times.  Returns (idata, diagnostics of the last
    attempt, every attempt as recorded); each retry adds a note.
    """
    current = opts
    idata = sample(model, current)
    diag = diagnose(idata, var_names=gated)
    attempts = [_attempt(current, diag)]
    while len(attempts) <= opts.redraws:
        nxt = next_attempt(diag, current.draws, current.target_accept)
        if nxt is None:
            break
        notes.append(
            f"retry {len(attempts)}: {current.draws} draws per chain at target_accept "
            f"{current.target_accept} missed the gates ({'; '.join(diag.problems)}); sampled "
            f"again with {nxt['draws']} draws at target_accept {nxt['target_accept']}"
        )
        current = current.replace(**nxt)
        idata = sample(model, current)
        diag = diagnose(idata, var_names=gated)
        attempts.append(_attempt(current, diag))
    return idata, diag, attempts


def save_result(
    con, result: FitResult, store: StoreOptions | Mapping[str, Any] | None = None
) -> int:
    """Store ``result`` (``fits``, ``fit_params``, NetCDF); sets its ``fit_id`` and
    ``netcdf_path`` and returns the fit id."""
    so = StoreOptions.of(store)
    rows = result.params
    result.fit_id = save_fit(
        con,
        kind=result.kind,
        idata=result.idata,
        spec=result.spec,
        priors=result.priors,
        selection=result.selection,
        condition=result.condition,
        scale=result.scale,
        sampler=result.summary.get("sampler"),
        diagnostics=result.diagnostics,
        summary=result.summary,
        seconds=result.seconds,
        netcdf_dir=so.netcdf_dir,
        var_names=list(rows.var_names) if rows.var_names is not None else result.reported,
        labels=rows.labels,
        name=so.name,
        element_coords=rows.element_coords,
        dropped=result.dropped,
        notes=result.notes,
    )
    result.netcdf_path = scalar(
        con, "SELECT netcdf_path FROM fits WHERE fit_id = ?", [result.fit_id]
    )
    return result.fit_id


def gate_record(gated: Sequence[str]) -> dict[str, Any]:
    """The gate rule a fit was held to (stored in its summary and NetCDF)."""
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
