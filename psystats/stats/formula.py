"""Any Bambi formula over the cell table, with each cell's standard error as known error.

The built-in effects model (:mod:`.effects`) is one fixed design.  A
statistician who wants another one writes a formula instead of PyMC code:

    mean ~ type + log_params + (1|family) + (1|experiment)

Bambi (and its formula parser, formulae) turns it into a PyMC model; psystats
supplies the data and the likelihood, then samples, checks and stores the fit
exactly like the built-in ones (nutpie, diagnostics gates, ``fits`` /
``fit_params``, NetCDF).

**Likelihood.**  Each cell c carries the mean y_c of its participants'
paired differences and its standard error se_c (``cells.with_scale``).  As
brms' ``se()`` term, se_c is a *known* measurement error added to the
model's residual scale:

    y_c ~ Normal(mu_c, sqrt(sigma^2 + se_c^2)),   mu_c = the formula's linear predictor

which is the built-in model's marginal cell likelihood (docs/model.md), so
a formula equivalent to the built-in design gives the same posterior (tested).

**Columns a formula may use** (:func:`formula_frame`): ``mean`` (the cell
value on the fit's scale; ``y`` is the same), ``se``, ``type`` (the post-
training type), ``family``, ``generation``, ``generation_order``,
``log_params`` (natural log of the parameter count, centred over pairs as in
the built-in model; ``log_params_raw`` uncentred), ``domain`` ("(no domain)"
when unknown), ``experiment``, ``study``, ``pair``, ``post_model``,
``base_model``, ``n``.  Cells with fewer than two participants or a
non-finite value or standard error are left out, as in the built-in model.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.validators import OneOf

from .cells import SCALES, cell_runs, selected_cells
from .fit_checks import refresh_loo
from .options import (
    AnalysisSpec,
    OptionError,
    SamplingOptions,
    validated,
)
from .pipeline import FitCall, FitResult, ParamRows, fit_entry, run_fit, save_result

log = logging.getLogger(__name__)

NO_DOMAIN = "(no domain)"
RESPONSE = "mean"  # the formula's left-hand side: the cell value
FORMULA_COLUMNS = [
    "mean",
    "se",
    "type",
    "family",
    "generation",
    "generation_order",
    "log_params",
    "log_params_raw",
    "domain",
    "experiment",
    "study",
    "pair",
    "post_model",
    "base_model",
    "n",
]
DEFAULT_SIGMA_PRIOR = {"dist": "HalfNormal", "sigma": 0.5}  # as the built-in sigma_cell


def formula_frame(cells: pd.DataFrame, *, min_participants: int = 2) -> tuple[pd.DataFrame, list]:
    """The cell table (with ``y``/``se`` from ``with_scale``) as formula columns.

    Returns (frame, messages); the messages say which cells were left out and why.
    """
    if cells.empty:
        raise WarehouseError("no cells to fit: score a post-trained model and its base first")
    for col in ("y", "se"):
        if col not in cells:
            raise WarehouseError(
                f"the cell table has no {col!r} column: pass it through "
                "psystats.stats.cells.with_scale() first"
            )
    c = cells.copy()
    y, se = c["y"].astype(float), c["se"].astype(float)
    n = c["n"].astype(float) if "n" in c else pd.Series(np.inf, index=c.index)
    keep = np.isfinite(y) & np.isfinite(se) & (se > 0) & (n >= min_participants)
    messages = []
    if (~keep).any():
        messages.append(
            f"{int((~keep).sum())} cell(s) left out (fewer than {min_participants} "
            "participants, zero variance or a non-finite value)"
        )
    c = c[keep].reset_index(drop=True)
    if c.empty:
        raise WarehouseError("no cell has at least two participants and a finite value")
    out = pd.DataFrame(
        {
            "mean": c["y"].astype(float),
            "se": c["se"].astype(float),
            "type": c.get("post_training", pd.Series("post", index=c.index)).astype(str),
            "family": c.get("family", pd.Series("?", index=c.index)).fillna("?").astype(str),
            "generation": c.get("generation", pd.Series("?", index=c.index))
            .fillna("?")
            .astype(str),
            "generation_order": pd.to_numeric(
                c.get("generation_order", pd.Series(np.nan, index=c.index)), errors="coerce"
            ),
            "domain": c.get("domain", pd.Series(None, index=c.index)).fillna(NO_DOMAIN).astype(str),
            "experiment": c["experiment"].astype(str),
            "study": c.get("study", c["experiment"]).astype(str),
            "pair": c["pair"].astype(str),
            "post_model": c.get("post_model", c["pair"]).astype(str),
            "base_model": c.get("base_model", c["pair"]).astype(str),
            "n": n[keep].to_numpy(),
        }
    )
    npar = pd.to_numeric(c.get("n_params", pd.Series(np.nan, index=c.index)), errors="coerce")
    raw = np.log(npar.where(npar > 0))
    out["log_params_raw"] = raw
    # Centred over pairs (each pair once), as the built-in size term.
    centre = raw.groupby(out["pair"]).first().mean()
    out["log_params"] = raw - centre if np.isfinite(centre) else raw
    return out[FORMULA_COLUMNS], messages


def _me_gaussian(se: np.ndarray):
    """A Bambi family: Normal(mu, sqrt(sigma^2 + se^2)) with ``se`` known per cell."""
    import bambi as bmb
    import pymc as pm
    import pytensor.tensor as pt

    def dist(name, mu, sigma, observed=None, **kw):
        total = pt.sqrt(sigma**2 + pt.as_tensor_variable(np.asarray(se, dtype=float)) ** 2)
        return pm.Normal(name, mu=mu, sigma=total, observed=observed, **kw)

    lik = bmb.Likelihood("KnownErrorNormal", params=["mu", "sigma"], parent="mu", dist=dist)
    return bmb.Family("gaussian_known_se", lik, link={"mu": "identity", "sigma": "log"})


PRIOR_GROUPS = ("common", "group_specific")  # Bambi's keys for every term of a kind


def _bambi_prior(term: str, p: Any):
    """``{"dist": "Normal", "mu": 0, "sigma": {"dist": "HalfNormal", "sigma": 0.5}}`` -> a
    ``bambi.Prior`` (nested tables are hyperpriors, as a group-level term needs)."""
    import bambi as bmb

    if isinstance(p, bmb.Prior):
        return p
    if not isinstance(p, Mapping) or "dist" not in p:
        raise WarehouseError(
            f"prior for {term!r} must be like {{'dist': 'Normal', 'mu': 0, 'sigma': 1}}"
            + (
                "; a group-level term takes a prior on its SD: {'dist': 'Normal', 'mu': 0, "
                "'sigma': {'dist': 'HalfNormal', 'sigma': 0.5}}"
                if "|" in term
                else ""
            )
        )
    args = {
        k: _bambi_prior(f"{term}: {k}", v) if isinstance(v, Mapping) else v
        for k, v in p.items()
        if k != "dist"
    }
    return bmb.Prior(str(p["dist"]), **args)


def _bambi_priors(priors: Mapping[str, Any] | None) -> dict:
    """``{"term": {"dist": "Normal", "mu": 0, "sigma": 1}}`` -> Bambi priors; sigma by default
    HalfNormal(0.5) (the built-in model's ``sigma_cell``)."""
    spec = {"sigma": dict(DEFAULT_SIGMA_PRIOR), **dict(priors or {})}
    return {term: _bambi_prior(term, p) for term, p in spec.items()}


def _set_priors(model, priors: Mapping[str, Any] | None) -> None:
    """The user's priors (and psystats' sigma default) on ``model``; every name must be a term."""
    given = _bambi_priors(priors)
    parent = model.components[model.family.likelihood.parent]
    group_terms = set(parent.group_specific_terms)
    known = [*parent.terms, *model.constant_components]
    unknown = [t for t in given if t not in known and t not in PRIOR_GROUPS]
    if unknown:
        from psystats.warehouse.validators import did_you_mean

        raise WarehouseError(
            f"--priors: {unknown[0]!r} is not a term of this model"
            f"{did_you_mean(unknown[0], known)}; its terms: {', '.join(known)} (or "
            f"'common' / 'group_specific' for every term of that kind)"
        )
    for term, prior in given.items():
        is_group = term in group_terms or term == "group_specific"
        if is_group and not any(isinstance(v, type(prior)) for v in prior.args.values()):
            raise WarehouseError(
                f"--priors: the group-level term {term!r} takes a prior on its SD, e.g. "
                "{'dist': 'Normal', 'mu': 0, 'sigma': {'dist': 'HalfNormal', 'sigma': 0.5}}"
            )
    model.set_priors(
        priors={t: p for t, p in given.items() if t not in PRIOR_GROUPS},
        common=given.get("common"),
        group_specific=given.get("group_specific"),
    )


def _prior_record(prior: Any) -> Any:
    """A ``bambi.Prior`` as the table ``--priors`` reads (hyperpriors nested), or the value."""
    if hasattr(prior, "name") and hasattr(prior, "args"):
        return {"dist": prior.name, **{k: _prior_record(v) for k, v in prior.args.items()}}
    arr = np.asarray(prior)
    if arr.dtype.kind in "biuf":
        return float(arr) if arr.ndim == 0 else arr.astype(float).tolist()
    return str(prior)


def used_priors(model) -> dict[str, Any]:
    """Every prior the built model uses, Bambi's defaults included, as ``--priors`` tables.

    Common and group-level terms of the mean and the auxiliary parameters
    (``sigma``); fed back through ``--priors`` they give the same model.
    """
    out: dict[str, Any] = {}
    for comp in model.distributional_components.values():
        for name, term in comp.terms.items():
            if getattr(term, "prior", None) is not None:
                out[name] = _prior_record(term.prior)
    for name, comp in model.constant_components.items():
        out[name] = _prior_record(comp.prior)
    return out


def _column_error(formula: str, e: Exception) -> WarehouseError | None:
    """'unknown column ...' with the columns a formula may use, when ``e`` is a missing name."""
    from psystats.warehouse.validators import did_you_mean

    name = e.args[0] if isinstance(e, KeyError) and e.args else None
    if not isinstance(name, str) or name in FORMULA_COLUMNS:
        return None
    return WarehouseError(
        f"unknown column {name!r} in the formula {formula!r}{did_you_mean(name, FORMULA_COLUMNS)}"
        f"; the columns are {', '.join(FORMULA_COLUMNS)}"
    )


def build_formula_model(
    frame: pd.DataFrame, formula: str, *, priors: Mapping[str, Any] | None = None
):
    """A Bambi model of ``formula`` on a :func:`formula_frame`, se as known error."""
    import bambi as bmb

    lhs = formula.split("~", 1)[0].strip() if "~" in formula else ""
    if lhs not in (RESPONSE, "y"):
        raise WarehouseError(
            f"the formula {formula!r} must model the cell value: write it as "
            f"'mean ~ ...' (columns: {', '.join(FORMULA_COLUMNS)})"
        )
    data = frame.copy()
    data["y"] = data["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = bmb.Model(
                formula,
                data,
                family=_me_gaussian(data["se"].to_numpy(float)),
                priors=_bambi_priors(None),
                dropna=False,
            )
        except Exception as e:  # formulae/bambi explain a bad formula or column
            raise _column_error(formula, e) or WarehouseError(
                f"cannot build the formula model {formula!r}: {e} "
                f"(columns: {', '.join(FORMULA_COLUMNS)})"
            ) from None
        if priors:
            try:
                _set_priors(model, priors)
            except WarehouseError:
                raise
            except Exception as e:  # Bambi refuses a prior it cannot use
                raise WarehouseError(f"--priors: {e}") from None
        model.build()
    return model


def reported_vars(bambi_model) -> list[str]:
    """Gated, stored variables: every parameter and pooled effect, not the per-cell ``mu``."""
    from .sampling import gated_vars

    pm_model = bambi_model.backend.model
    per_cell = {bambi_model.response_component.response.name, "mu"}
    # A categorical term with one level has no columns: nothing to report.
    shapes = {v.name for v in pm_model.free_RVs + pm_model.deterministics}
    out = []
    for v in gated_vars(pm_model):
        if v in per_cell or v not in shapes:
            continue
        dims = pm_model.named_vars_to_dims.get(v, ())
        if any(len(pm_model.coords.get(d, ()) or ()) == 0 for d in dims):
            continue
        out.append(v)
    return out


def as_bambi_fit(model, idata) -> None:
    """Turn the sampler's draws into what ``bambi.Model.fit`` returns, in place.

    psystats samples ``model.backend.model`` through its own pipeline (nutpie,
    gates, retries, PPC, LOO), so Bambi's steps after sampling are applied
    here, by Bambi's own code: the PyMC model samples the intercept of
    *centred* predictors, and ``fit`` turns it back into the model's intercept
    (``Intercept - mean(X) @ beta``); it also leaves out the per-cell ``mu``
    (a likelihood parameter Bambi does not keep), drops the ``*_offset``
    helpers of group-level terms, orders the dimensions and marks the groups
    ``modeling_interface = "bambi"`` (how :func:`load_formula_fit` tells a
    converted posterior from one stored before this step existed).  After it,
    ``model.predict`` and every Bambi tool read the posterior correctly; the
    PyMC model's own log-likelihood no longer does (the pipeline's PPC and
    LOO ran before, on the draws as sampled).
    """
    pm_model = model.backend.model
    likelihood_params = [
        n
        for n in model.family.likelihood.params
        if n in pm_model.named_vars and pm_model[n] in pm_model.deterministics
    ]
    drop = [n for n in likelihood_params if n in idata.posterior]
    if drop:
        post = idata.posterior.drop_vars(drop)
        used = {d for v in post.data_vars.values() for d in v.dims}
        idata.posterior = post.drop_dims([d for d in post.dims if d not in used])
    # Bambi's Model.fit -> PyMCModel.run -> _run_mcmc -> _clean_results(idata, omit_offsets=True,
    # include_response_params=False); the oracle tests compare with Model.fit itself.
    model.backend._clean_results(idata, omit_offsets=True, include_response_params=False)


def is_bambi_fit(idata) -> bool:
    """Whether ``idata``'s posterior went through :func:`as_bambi_fit`."""
    return idata.posterior.attrs.get("modeling_interface") == "bambi"


def _gate_converted(result, allow_failure: bool) -> None:
    """Diagnose the reported variables again after :func:`as_bambi_fit`.

    The model's intercept is a combination of the sampled one and the slopes,
    so its R-hat and ESS are its own; the stored diagnostics and the gate are
    those of what ``fit_params`` reports.
    """
    from .sampling import diagnose, enforce

    before = result.diagnostics.passed
    result.diagnostics = diagnose(result.idata, var_names=result.reported)
    if before:  # a fit that missed its gates already raised or was allowed by the pipeline
        enforce(result.diagnostics, allow_failure)


@dataclass(frozen=True)
class FormulaSpec(AnalysisSpec):
    """What ``fit formula`` fits: the formula, its priors, the cell scale, whether to check.

    ``priors``: ``{term: {"dist": ..., params}}``, or that as JSON text or a
    .json/.toml/.yaml file (what ``--priors`` takes).
    """

    KIND = "formula"
    formula: str
    priors: Mapping[str, Any] | None = None
    scale: str = "nats"
    checks: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.formula, str) or "~" not in self.formula:
            raise OptionError(
                f"a formula looks like 'mean ~ type + (1|experiment)', got {self.formula!r}"
            )
        validated("scale", OneOf(SCALES), self.scale)
        if isinstance(self.priors, str):
            object.__setattr__(self, "priors", read_priors(self.priors))
        elif self.priors is not None and not isinstance(self.priors, Mapping):
            raise OptionError(f"priors must be a dict, JSON text or a file, got {self.priors!r}")
        object.__setattr__(self, "checks", bool(self.checks))

    @classmethod
    def of(cls, value: Any) -> FormulaSpec:
        """A :class:`FormulaSpec` from itself, a formula, or a mapping of its field names."""
        if isinstance(value, str):
            return cls(formula=value)
        if value is None:
            raise OptionError(NEEDS_FORMULA)
        return super().of(value)

    @classmethod
    def from_options(cls, spec: Any = None, **options: Any) -> FormulaSpec:
        """The spec from the ``fit formula`` options (field names; unknown names refused)."""
        if spec is None and "formula" not in options:
            raise OptionError(NEEDS_FORMULA)
        return super().from_options(spec, **options)


NEEDS_FORMULA = "fit formula needs a formula, e.g. 'mean ~ type + (1|experiment)'"


def read_priors(text: str) -> dict:
    """``--priors``: JSON text, or a .json/.toml/.yaml file of ``{term: {dist: ..., ...}}``."""
    p = Path(text)
    try:
        if p.suffix.lower() in (".json", ".toml", ".yaml", ".yml") and p.is_file():
            raw = p.read_text()
            if p.suffix.lower() == ".toml":
                import tomllib

                return tomllib.loads(raw)
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                return dict(yaml.safe_load(raw) or {})
            return dict(json.loads(raw))
        out = json.loads(text)
    except Exception as e:  # any parser's complaint, in one line
        raise OptionError(f"priors {text!r}: cannot read them ({e})") from None
    if not isinstance(out, dict):
        raise OptionError(
            'priors: give JSON like \'{"type": {"dist": "Normal", "mu": 0, "sigma": 1}}\' or a '
            ".json/.toml/.yaml file"
        )
    return out


def fit_formula_cells(
    cells: pd.DataFrame,
    formula: str,
    *,
    priors: Mapping[str, Any] | None = None,
    sampling: SamplingOptions | Mapping[str, Any] | None = None,
    allow_failure: bool = False,
    checks: bool = True,
) -> FitResult:
    """Fit ``formula`` to a cell table (with ``y``/``se``), check it, summarise it.

    Raises :class:`~psystats.stats.sampling.DiagnosticsFailure` when a gate
    fails and ``allow_failure`` is false.  ``checks`` adds the posterior
    predictive check (draws kept in the NetCDF) and PSIS-LOO over cells.
    """
    t0 = time.perf_counter()
    frame, messages = formula_frame(cells)
    for m in messages:  # also notes of the fit, which the CLI prints
        log.info(m)
    model = build_formula_model(frame, formula, priors=priors)
    response = model.response_component.response.name
    summary: dict[str, Any] = {
        "formula": formula,
        "messages": messages,
        "n_cells": len(frame),
        "response": response,
        "terms": [str(t) for t in model.components[model.family.likelihood.parent].terms],
        "size_center_log_params": float(
            (frame["log_params_raw"] - frame["log_params"]).dropna().iloc[0]
        )
        if frame["log_params_raw"].notna().any()
        else None,
    }
    priors_used = used_priors(model)
    result = run_fit(
        model.backend.model,
        kind="formula",
        observed=response,
        reported=reported_vars(model),
        sampling=sampling,
        allow_failure=allow_failure,
        checks=checks,
        # Cells named as in the effects fit, so `fit compare` matches them up.
        observation_labels=[f"{p} / {e}" for p, e in zip(frame["pair"], frame["experiment"])],
        spec={"formula": formula, "priors": dict(priors or {})},
        priors=priors_used,
        notes=messages,
        summary=summary,
        what=f"{formula} on {len(frame)} cells",
        params=ParamRows(var_names=reported_vars(model)),
        started=t0,
    )
    as_bambi_fit(model, result.idata)
    _gate_converted(result, allow_failure)
    if checks:  # scored against the posterior as stored, as arviz.loo on the file does
        full, result.loo = refresh_loo(result.idata)
        result.summary["loo"]["full"] = full
    _attach_frame(result.idata, frame)
    result.data = frame
    result.extras.update(formula=formula, bambi_model=model)
    return result


FRAME_GROUP = "formula_data"  # the cells the formula saw, kept in the NetCDF for predictions


def _attach_frame(idata, frame: pd.DataFrame) -> None:
    import xarray as xr

    ds = xr.Dataset(
        {c: ("cell_row", frame[c].to_numpy()) for c in frame.columns},
        coords={"cell_row": np.arange(len(frame))},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about a group name it does not know
        idata.add_groups({FRAME_GROUP: ds})


def stored_frame(idata) -> pd.DataFrame:
    """The cell frame a stored formula fit was fitted to (from its NetCDF)."""
    if FRAME_GROUP not in idata.groups():
        raise WarehouseError("this fit has no stored formula data: is it a formula fit?")
    ds = idata[FRAME_GROUP]
    df = pd.DataFrame({c: ds[c].values for c in ds.data_vars})
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype).startswith(("<U", "|S")):
            df[c] = df[c].astype(str)
    return df[[c for c in FORMULA_COLUMNS if c in df.columns]]


@fit_entry("formula", FormulaSpec, ["models", "experiments"])
def fit_formula(con, call: FitCall) -> FitResult:
    """Cells from the warehouse -> :func:`fit_formula_cells` -> ``fits``/``fit_params`` + NetCDF.

    The fit contract (docs/api.md); ``spec`` is the formula (a
    :class:`FormulaSpec`, or just the formula text).  Stored with
    ``fits.kind = 'formula'`` and the formula in ``fits.spec``; the result's
    ``data`` is the cell frame the formula saw and ``extras`` hold the
    ``formula`` and the ``bambi_model``.  Nothing is written when a gate
    fails (unless ``allow_failure``).
    """
    sel, fs, sampling = call.selection, call.spec, call.sampling
    cells = selected_cells(con, sel, fs.scale)
    priors = dict(fs.priors) if fs.priors else None
    result = fit_formula_cells(
        cells,
        fs.formula,
        priors=priors,
        sampling=sampling,
        allow_failure=call.allow_failure,
        checks=fs.checks,
    )
    result.selection = {
        **sel.record(),
        "pairs": sorted(result.data["pair"].unique().tolist()),
        "runs": cell_runs(cells),
        "n_cells": len(result.data),
    }
    result.spec = {"formula": fs.formula, "priors": dict(priors or {}), "scale": fs.scale}
    result.condition, result.scale = sel.label, fs.scale
    save_result(con, result, call.store)
    return result


# ---------------------------------------------------------------------------
# Predictions from a stored fit (psystats.stats.predict summarises them)


def new_pair_rows(
    model, frame: pd.DataFrame, new_pair: Mapping[str, Any], size_center: float | None
) -> pd.DataFrame:
    """The new pair in every fitted experiment (with its domain and study), as formula rows.

    ``n_params`` becomes ``log_params`` centred like the fitted data.
    """
    new = dict(new_pair)
    if "n_params" in new:
        raw = float(np.log(float(new.pop("n_params"))))
        new["log_params_raw"] = raw
        new["log_params"] = raw - (size_center or 0.0)
    unknown = [k for k in new if k not in FORMULA_COLUMNS or k in ("mean", "se")]
    if unknown:
        from psystats.warehouse.validators import did_you_mean

        keys = [c for c in FORMULA_COLUMNS if c not in ("mean", "se")] + ["n_params"]
        raise WarehouseError(
            f"--new-pair: unknown column {unknown[0]!r}{did_you_mean(unknown[0], keys)}; "
            f"give any of {', '.join(keys)}"
        )
    new.setdefault("pair", "(new pair)")
    new.setdefault("post_model", new["pair"])
    new.setdefault("base_model", new["pair"])
    exps = frame.drop_duplicates("experiment")[["experiment", "domain", "study", "n"]]
    rows = exps.assign(**new).reset_index(drop=True)
    for col in FORMULA_COLUMNS:
        if col not in rows:
            rows[col] = frame[col].iloc[0] if col in ("mean", "se") else np.nan
    missing = [c for c in _needed_columns(model) if rows[c].isna().any()]
    if missing:
        raise WarehouseError(
            f"the formula uses {', '.join(missing)}: give them in --new-pair "
            "(e.g. type=instruct,family=llama,n_params=70e9)"
        )
    rows["y"] = rows["mean"]
    return rows


def prediction_draws(model, idata, rows: pd.DataFrame, *, seed: int = 0) -> np.ndarray:
    """Posterior draws (samples x rows) of the linear predictor ``mu`` at ``rows``.

    Bambi's ``Model.predict`` on the converted posterior.  A group level the
    fit has not seen (the new pair; a new family) gets its effect drawn from
    the term's fitted distribution, Normal(mu, sigma) at each posterior draw
    (brms' ``sample_new_levels = "gaussian"``); one draw per new level, shared
    by every row that has it.  Bambi's own ``sample_new_groups`` instead
    reuses the effect of a randomly chosen *fitted* level, which with two
    families would predict a new family to be one of those two.  The draws
    are placed on every fitted level of the term before Bambi's predict runs,
    so whichever level Bambi picks carries them.
    """
    parent = model.components[model.family.likelihood.parent]
    signatures = _new_levels_by_row(parent, rows)
    rng = np.random.default_rng(seed)
    shared: dict = {}
    out: np.ndarray | None = None
    for sig in dict.fromkeys(signatures):
        idx = [i for i, s in enumerate(signatures) if s == sig]
        post = idata.posterior.copy()
        for factor, level in sig:
            for term_name in parent.group_specific_groups[factor]:
                term = parent.group_specific_terms[term_name]
                name = term.alias or term.name
                if (name, level) not in shared:
                    shared[(name, level)] = _new_level_effect(term, name, post, rng)
                post[name] = (
                    shared[(name, level)].broadcast_like(post[name]).transpose(*post[name].dims)
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = model.predict(
                _with_posterior(idata, post),
                data=rows.iloc[idx].reset_index(drop=True),
                kind="response_params",
                inplace=False,
                sample_new_groups=bool(sig),
            )
        mu = pred.posterior["mu"].values
        mu = mu.reshape(-1, mu.shape[-1])
        if out is None:
            out = np.empty((mu.shape[0], len(rows)))
        out[:, idx] = mu
    assert out is not None
    return out


def _with_posterior(idata, posterior):
    import arviz as az

    return az.InferenceData(posterior=posterior)


def _new_levels_by_row(parent, rows: pd.DataFrame) -> list[tuple]:
    """Per row: ((factor, level key), ...) for each grouping factor whose level is new there."""
    import formulae as fm

    if not parent.design.group:
        return [()] * len(rows)
    old = fm.config["EVAL_UNSEEN_CATEGORIES"]
    fm.config["EVAL_UNSEEN_CATEGORIES"] = "silent"
    try:
        out = []
        for i in range(len(rows)):
            row = rows.iloc[[i]].reset_index(drop=True)
            new = parent.design.group.evaluate_new_data(row).factors_with_new_levels
            out.append(
                tuple((f, tuple(str(row[c].iloc[0]) for c in f.split(":"))) for f in sorted(new))
            )
        return out
    finally:
        fm.config["EVAL_UNSEEN_CATEGORIES"] = old


def _new_level_effect(term, name: str, posterior, rng):
    """One new level's effect per draw: Normal(mu, sigma) with the term's fitted hyperparameters."""
    import xarray as xr

    prior = term.prior
    if prior.name != "Normal":
        raise WarehouseError(
            f"the group-level term {name!r} has a {prior.name} prior: a new level can be "
            "predicted only for Normal group effects"
        )
    params = {}
    for key in ("mu", "sigma"):
        value = prior.args.get(key, 0.0)
        if hasattr(value, "args"):  # a hyperprior: its posterior draws
            alias = term.hyperprior_alias.get(key, key)
            params[key] = posterior[f"{name}_{alias}"]
        else:
            params[key] = xr.DataArray(float(np.asarray(value)))
    sigma = params["sigma"]
    z = xr.DataArray(rng.standard_normal(sigma.shape), dims=sigma.dims, coords=sigma.coords)
    return params["mu"] + sigma * z


def _needed_columns(model) -> list[str]:
    """Data columns the formula's right-hand side reads."""
    import re

    rhs = model.formula.main.split("~", 1)[1]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rhs))
    return [c for c in FORMULA_COLUMNS if c in words and c not in ("mean", "se")]


def load_formula_fit(con, fit_id: int, *, notes: list[str] | None = None):
    """(fits row, InferenceData, rebuilt bambi model, frame) of a stored formula fit.

    What the user should know (a fit stored before the intercept conversion)
    is appended to ``notes`` (logged when None).
    """
    from .store import load_fit

    row, idata = load_fit(con, fit_id)
    if row["kind"] != "formula":
        raise WarehouseError(
            f"fit {fit_id} is a {row['kind']!r} fit: predictions need a formula fit "
            "(psystats fit formula)"
        )
    spec = row["spec"] if isinstance(row["spec"], dict) else json.loads(row["spec"])
    frame = stored_frame(idata)
    model = build_formula_model(frame, spec["formula"], priors=spec.get("priors") or None)
    if not is_bambi_fit(idata):
        # Stored before psystats applied Bambi's post-processing: the draws are as
        # sampled (intercept of centred predictors), so convert them the same way now.
        as_bambi_fit(model, idata)
        note = (
            f"fit {fit_id} was stored by an earlier psystats with the intercept of centred "
            "predictors: its draws are converted here, but its fit_params 'Intercept' row is "
            "that centred intercept (refit it to correct the table)"
        )
        if notes is None:
            log.warning(note)
        else:
            notes.append(note)
    return row, idata, model, frame
