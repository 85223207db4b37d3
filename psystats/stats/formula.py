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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

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


def _bambi_priors(priors: Mapping[str, Any] | None) -> dict:
    """``{"term": {"dist": "Normal", "mu": 0, "sigma": 1}}`` -> Bambi priors; sigma by default
    HalfNormal(0.5) (the built-in model's ``sigma_cell``)."""
    import bambi as bmb

    spec = {"sigma": dict(DEFAULT_SIGMA_PRIOR), **dict(priors or {})}
    out = {}
    for term, p in spec.items():
        if isinstance(p, bmb.Prior):
            out[term] = p
            continue
        if not isinstance(p, Mapping) or "dist" not in p:
            raise WarehouseError(
                f"prior for {term!r} must be like {{'dist': 'Normal', 'mu': 0, 'sigma': 1}}"
            )
        p = dict(p)
        out[term] = bmb.Prior(p.pop("dist"), **p)
    return out


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
                priors=_bambi_priors(priors),
                dropna=False,
            )
        except WarehouseError:
            raise
        except Exception as e:  # formulae/bambi explain a bad formula or column
            raise WarehouseError(
                f"cannot build the formula model {formula!r}: {e} "
                f"(columns: {', '.join(FORMULA_COLUMNS)})"
            ) from None
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


@dataclass
class FormulaFit:
    """What :func:`fit_formula_cells` returns (and :func:`fit_formula` after storing it)."""

    formula: str
    idata: Any
    model: Any  # the bambi.Model
    frame: pd.DataFrame
    diagnostics: Any
    summary: dict
    seconds: float
    priors: dict = field(default_factory=dict)
    fit_id: int | None = None
    result: Any = None  # the fit pipeline's FitResult (stats.pipeline)


def fit_formula_cells(
    cells: pd.DataFrame,
    formula: str,
    *,
    priors: Mapping[str, Any] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sampler: str = "nutpie",
    target_accept: float = 0.95,
    allow_failure: bool = False,
    checks: bool = True,
) -> FormulaFit:
    """Fit ``formula`` to a cell table (with ``y``/``se``), check it, summarise it.

    Raises :class:`~psystats.stats.sampling.DiagnosticsFailure` when a gate
    fails and ``allow_failure`` is false.  ``checks`` adds the posterior
    predictive check (draws kept in the NetCDF) and PSIS-LOO over cells.
    """
    from .pipeline import SamplingOptions, run_fit

    sampling = SamplingOptions(
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        sampler=sampler,
        target_accept=target_accept,
    )
    t0 = time.perf_counter()
    frame, messages = formula_frame(cells)
    for m in messages:
        log.warning(m)
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
    used_priors = {k: str(v) for k, v in _bambi_priors(priors).items()}
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
        priors=used_priors,
        summary=summary,
        started=t0,
    )
    _attach_frame(result.idata, frame)
    return FormulaFit(
        formula=formula,
        idata=result.idata,
        model=model,
        frame=frame,
        diagnostics=result.diagnostics,
        summary=result.summary,
        seconds=result.seconds,
        priors=used_priors,
        result=result,
    )


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


def fit_formula(
    con,
    formula: str,
    *,
    post_condition: str = "plain",
    base_condition: str | None = None,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
    scale: str = "nats",
    priors: Mapping[str, Any] | None = None,
    netcdf_dir=None,
    name: str | None = None,
    **fit_kw,
) -> FormulaFit:
    """Cells from the warehouse -> :func:`fit_formula_cells` -> ``fits``/``fit_params`` + NetCDF.

    Stored with ``fits.kind = 'formula'`` and the formula in ``fits.spec``.
    Nothing is written when a gate fails (unless ``allow_failure=True``).
    """
    from .cells import build_cells, with_scale
    from .pipeline import StoreOptions, save_result

    base_condition = base_condition or post_condition
    cells = with_scale(
        build_cells(
            con,
            post_condition=post_condition,
            base_condition=base_condition,
            models=models,
            experiments=experiments,
        ),
        scale,
    )
    fit = fit_formula_cells(cells, formula, priors=priors, **fit_kw)
    selection = {
        "models": list(models) if models else None,
        "experiments": list(experiments) if experiments else None,
        "post_condition": post_condition,
        "base_condition": base_condition,
        "pairs": sorted(fit.frame["pair"].unique().tolist()),
        "runs": sorted(
            {int(r) for r in pd.concat([cells.post_run_id, cells.base_run_id]).dropna()}
        ),
        "n_cells": len(fit.frame),
    }
    condition = (
        post_condition
        if post_condition == base_condition
        else f"{post_condition} vs {base_condition}"
    )
    fit.result.spec = {"formula": formula, "priors": dict(priors or {}), "scale": scale}
    fit.result.selection = selection
    fit.fit_id = save_result(
        con,
        fit.result,
        StoreOptions(
            condition=condition,
            scale=scale,
            name=name,
            var_names=reported_vars(fit.model),
            netcdf_dir=netcdf_dir,
        ),
    )
    return fit


# ---------------------------------------------------------------------------
# Predictions from a stored fit


def parse_new_pair(text: str) -> dict[str, Any]:
    """``"type=instruct,family=llama,n_params=70e9"`` -> a dict of pair-level columns.

    ``n_params`` becomes ``log_params`` (centred like the fitted data) later;
    numbers are parsed, everything else stays text.
    """
    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise WarehouseError(
                f"--new-pair {text!r}: write key=value pairs separated by commas, e.g. "
                "type=instruct,family=llama,n_params=70e9"
            )
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = float(v) if k in ("n_params", "log_params", "generation_order") else v
        except ValueError:
            raise WarehouseError(f"--new-pair: {k}={v!r} is not a number") from None
    return out


def predict_new_pair(
    model,
    idata,
    frame: pd.DataFrame,
    new_pair: Mapping[str, Any],
    *,
    size_center: float | None = None,
    per_experiment: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Posterior of the expected cell value for a new pair, over the fitted experiments.

    The new pair gets every experiment the fit saw (with its domain and
    study); its own group levels (a new ``pair``, perhaps a new ``family``)
    are drawn from their fitted group distributions (Bambi's
    ``sample_new_groups``), so the interval includes the new-group
    uncertainty.  Returns one row, the average over experiments (or one row
    per experiment with ``per_experiment``): mean, sd, q05, q50, q95, and
    ``p_worse`` = P(expected difference > 0).
    """
    new = dict(new_pair)
    if "n_params" in new:
        raw = float(np.log(float(new.pop("n_params"))))
        new["log_params_raw"] = raw
        new["log_params"] = raw - (size_center or 0.0)
    new.setdefault("pair", "(new pair)")
    new.setdefault("post_model", new["pair"])
    new.setdefault("base_model", new["pair"])
    exps = frame.drop_duplicates("experiment")[["experiment", "domain", "study", "n"]]
    rows = exps.assign(**new).reset_index(drop=True)
    for col in FORMULA_COLUMNS:
        if col not in rows:
            rows[col] = frame[col].iloc[0] if col in ("mean", "se") else np.nan
    needed = _needed_columns(model)
    missing = [c for c in needed if rows[c].isna().any()]
    if missing:
        raise WarehouseError(
            f"the formula uses {', '.join(missing)}: give them in --new-pair "
            "(e.g. type=instruct,family=llama,n_params=70e9)"
        )
    rows["y"] = rows["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict(
            idata,
            data=rows,
            kind="response_params",
            inplace=False,
            sample_new_groups=True,
            random_seed=seed,
        )
    mu = pred.posterior["mu"].values  # (chain, draw, rows)
    draws = mu.reshape(-1, mu.shape[-1])
    if per_experiment:
        out = pd.DataFrame({"experiment": rows["experiment"], "domain": rows["domain"]})
        vals = draws
    else:
        out = pd.DataFrame({"experiment": ["(average over experiments)"], "domain": [None]})
        vals = draws.mean(axis=1, keepdims=True)
    out["mean"] = vals.mean(axis=0)
    out["sd"] = vals.std(axis=0, ddof=1)
    q = np.quantile(vals, [0.05, 0.5, 0.95], axis=0)
    out["q05"], out["q50"], out["q95"] = q
    out["p_worse"] = (vals > 0).mean(axis=0)
    return out


def _needed_columns(model) -> list[str]:
    """Data columns the formula's right-hand side reads."""
    import re

    rhs = model.formula.main.split("~", 1)[1]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rhs))
    return [c for c in FORMULA_COLUMNS if c in words and c not in ("mean", "se")]


def load_formula_fit(con, fit_id: int):
    """(fits row, InferenceData, rebuilt bambi model, frame) of a stored formula fit."""
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
    return row, idata, model, frame
