"""``psystats fit participants``: whose behaviour does post-training lose?

A hierarchical regression of a per-participant quantity on participant
metadata chosen by the user (``docs/model.md``, "fit participants"):

    y_i = mean over participant i's validly scored responses of
          NLL_model (outcome ``nll``)   or   NLL_post - NLL_base (outcome ``gap``)

    y_i ~ Normal(a_g(i) + sum_k beta_k z_ik + sum_c gamma_c[level_c(i)] (+ u_p(i)),
                 sigma_g(i))

with g = (model or pair, experiment) a cell with its own intercept
a_g = intercept + sigma_experiment * z_g (experiment effects, partial pooling) and its
own residual SD, z_ik the numeric covariate k standardised over the participants in the
fit (beta_k: nats per SD; ``slope`` = beta_k / SD_k: nats per unit of the covariate),
gamma_c the levels of a categorical covariate c as random effects (partial pooling,
SD ``sigma_level[c]``; reported centred, ``level_effect``: each level against the
average level), and u_p a participant intercept when a participant appears in several
models or pairs (their rows are not independent).

Missing values are never dropped silently: a participant without a value for any chosen
covariate is left out of the fit (complete cases); how many lack each covariate and how
many were left out is a note of the fit and stored in its summary (``missing``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.validators import OneOf

from .analysis_common import prob
from .options import (
    AnalysisSpec,
    OptionError,
    validated,
)
from .participants_data import (
    OUTCOMES,
    available_covariates,
    check_covariates,
    covariate_table,
    outcome_rows,
)
from .pipeline import FitCall, FitResult, ParamRows, fit_entry
from .units import NATS, per

KIND = "participants"
MIN_CELL_PARTICIPANTS = 3  # a cell's own residual SD needs a few participants
POOL_MIN_LEVELS = 5  # levels a categorical covariate needs for an SD between them
PARAMS = [
    "intercept",
    "sigma_experiment",
    "experiment_intercept",
    "effect",
    "slope",
    "sigma_level",
    "level_effect",
    "sigma_participant",
    "sigma_residual",
]
EFFECT_UNIT = per(NATS, "SD of the covariate")
SLOPE_UNIT = per(NATS, "unit of the covariate")


def _names(name: str, value: Any) -> tuple[str, ...]:
    """Covariate names: a comma-separated text or a list (each item may hold commas)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    try:
        parts = [p.strip() for v in items for p in str(v).split(",")]
    except TypeError:
        raise OptionError(
            f"{name} must be a comma-separated text or a list, got {value!r}"
        ) from None
    out: list[str] = []
    for p in parts:
        if p and p not in out:
            out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class ParticipantsSpec(AnalysisSpec):
    """What ``fit participants`` fits: the outcome (``nll`` of ``--model``, or the
    post-minus-base ``gap`` of the selected pairs), the covariates (metadata keys as
    stored, comma-separated or a list) and the keys to read as categories even when
    their values are numbers (``categorical``)."""

    KIND = KIND
    outcome: str = "gap"
    covariates: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validated("outcome", OneOf(OUTCOMES), self.outcome)
        for name in ("covariates", "categorical"):
            object.__setattr__(self, name, _names(name, getattr(self, name)))


@dataclass
class ParticipantsData:
    """The rows the model fits (one per model-or-pair and participant) and how they were made."""

    rows: pd.DataFrame  # unit, experiment, participant_key, n_responses, y, covariates, cell
    outcome: str
    numeric: list[str]
    categorical: list[str]
    scaling: dict[str, dict[str, float]]  # numeric covariate -> mean, sd (participants used)
    levels: dict[str, list[str]]  # categorical covariate -> its levels (sorted)
    missing: dict[str, int]  # covariate -> participants of the selection without it
    participants_selected: int
    participants_used: int
    notes: list[str] = field(default_factory=list)


def _drop_missing(rows: pd.DataFrame, covariates: Sequence[str], notes: list[str]):
    people = rows.drop_duplicates("participant_key")
    missing = {c: int(people[c].isna().sum()) for c in covariates}
    complete = rows[list(covariates)].notna().all(axis=1)
    left_out = rows.loc[~complete, "participant_key"].nunique()
    if left_out:
        each = ", ".join(f"{c}: {n}" for c, n in missing.items() if n)
        notes.append(
            f"{left_out} of {len(people)} participants lack a covariate and are left out of "
            f"this fit (complete cases; participants without each: {each})"
        )
    return rows[complete].copy(), missing


def _drop_thin_cells(rows: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    n = rows.groupby(["unit", "experiment"])["participant_key"].transform("size")
    thin = rows[n < MIN_CELL_PARTICIPANTS]
    if len(thin):
        cells = thin[["unit", "experiment"]].drop_duplicates()
        notes.append(
            f"{len(cells)} (model or pair, experiment) cell(s) with fewer than "
            f"{MIN_CELL_PARTICIPANTS} participants left out ({len(thin)} rows): "
            + ", ".join(f"{u} / {e}" for u, e in zip(cells["unit"], cells["experiment"]))
        )
    return rows[n >= MIN_CELL_PARTICIPANTS].copy()


def prepare_participants(
    rows: pd.DataFrame, covariates: pd.DataFrame, kinds: Mapping[str, str], outcome: str
) -> ParticipantsData:
    """Join the covariates, leave out (and count) incomplete participants and thin cells,
    standardise the numeric covariates and list the levels of the categorical ones."""
    names = list(kinds)
    notes: list[str] = []
    df = rows.merge(covariates, on="participant_key", how="left")
    selected = int(df["participant_key"].nunique())
    df, missing = _drop_missing(df, names, notes)
    df = _drop_thin_cells(df, notes)
    if df.empty:
        raise WarehouseError(
            "fit participants: no participant left to fit; " + "; ".join(notes or ["no rows"])
        )
    people = df.drop_duplicates("participant_key")
    scaling, levels = {}, {}
    for c in names:
        if kinds[c] == "numeric":
            sd = float(people[c].std(ddof=1)) if len(people) > 1 else 0.0
            if not sd > 0:
                raise WarehouseError(
                    f"fit participants: covariate {c!r} has the same value for every "
                    "participant in the fit: nothing to regress on"
                )
            scaling[c] = {"mean": float(people[c].mean()), "sd": sd}
        else:
            levels[c] = sorted(set(people[c]))
            if len(levels[c]) < 2:
                raise WarehouseError(
                    f"fit participants: covariate {c!r} has one level ({levels[c][0]!r}) for "
                    "every participant in the fit: nothing to regress on"
                )
    if float(df["y"].std(ddof=1) if len(df) > 1 else 0.0) == 0.0:
        raise WarehouseError("fit participants: every participant has the same outcome")
    df["cell"] = df["unit"] + " / " + df["experiment"]
    return ParticipantsData(
        rows=df.reset_index(drop=True),
        outcome=outcome,
        numeric=[c for c in names if kinds[c] == "numeric"],
        categorical=[c for c in names if kinds[c] == "categorical"],
        scaling=scaling,
        levels=levels,
        missing=missing,
        participants_selected=selected,
        participants_used=int(people.shape[0]),
        notes=notes,
    )


def prior_scales(y: np.ndarray) -> dict[str, float]:
    """Weakly informative scales from the outcome: R = root mean square, S = its SD.

    ``intercept ~ Normal(0, 2.5 R)``; ``effect`` (per SD of a covariate) ``~ Normal(0, S)``;
    ``sigma_experiment``, ``sigma_level``, ``sigma_participant``, ``sigma_residual``
    ``~ HalfNormal(S)``: a covariate that moved the outcome by more than its whole spread
    per SD is implausible a priori, and the data decide within that.
    """
    y = np.asarray(y, dtype=float)
    return {"intercept_sd": 2.5 * float(np.sqrt(np.mean(y**2))), "scale": float(np.std(y))}


def _level_terms(data: ParticipantsData):
    """(level labels, covariate index of each level, averaging matrix, row level indices)."""
    labels, owner = [], []
    for k, c in enumerate(data.categorical):
        labels += [f"{c}={v}" for v in data.levels[c]]
        owner += [k] * len(data.levels[c])
    owner_arr = np.array(owner, dtype=int)
    avg = np.zeros((len(labels), len(labels)))
    for k in range(len(data.categorical)):
        mask = owner_arr == k
        avg[np.ix_(mask, mask)] = 1.0 / mask.sum()
    idx = {
        c: pd.Index(labels).get_indexer([f"{c}={v}" for v in data.rows[c]])
        for c in data.categorical
    }
    return labels, owner_arr, avg, idx


def _centred(rows: pd.DataFrame) -> bool:
    """Whether the cell intercepts are sampled centred: when the data pin each cell's mean
    down better than the cells' means spread (median standard error below their SD), the
    centred form mixes well and the non-centred one makes the intercept trade off with
    the cells' mean (Betancourt and Girolami 2015); with thin cells, the reverse."""
    g = rows.groupby("cell")["y"]
    se = (g.std(ddof=1) / np.sqrt(g.size())).median()
    return bool(np.isfinite(se) and se < g.mean().std(ddof=1))


def _level_term(data: ParticipantsData, labels, owner, avg, level_idx, s: float, terms):
    """The categorical covariates' part of mu; ``level_effect`` centred within each.

    A covariate with at least :data:`POOL_MIN_LEVELS` levels gets partial pooling: its
    levels ~ Normal(0, sigma_level[c]), sigma_level[c] ~ HalfNormal(S).  With fewer, an
    SD between levels is not estimable (it is the prior, and its funnel stalls the
    sampler; Gelman 2006), so the levels get the fixed scale S.  Both non-centred and
    centred within the covariate, in the likelihood too (the levels' mean would trade off
    with the intercept).
    """
    import pymc as pm
    import pytensor.tensor as pt

    pooled = [c for c in data.categorical if len(data.levels[c]) >= POOL_MIN_LEVELS]
    scale: Any = np.full(len(data.categorical), s)
    if pooled:
        pm.Model.get_context().add_coord("pooled", pooled)
        sig_l = pm.HalfNormal("sigma_level", s, dims="pooled")
        pos = [pooled.index(c) if c in pooled else -1 for c in data.categorical]
        scale = pt.stack([sig_l[i] if i >= 0 else pt.constant(s) for i in pos])
    z_level = pm.Normal("z_level", 0.0, 1.0, dims="level")
    raw = scale[owner] * z_level
    level = pm.Deterministic("level_effect", raw - pt.dot(pt.as_tensor(avg), raw), dims="level")
    for c in data.categorical:
        terms[f"categorical {c}"] = (
            "levels partially pooled (sigma_level), centred"
            if c in pooled
            else f"fewer than {POOL_MIN_LEVELS} levels: levels ~ Normal(0, S), centred"
        )
    return sum(level[level_idx[c]] for c in data.categorical)


def build_participants_model(data: ParticipantsData):
    """The PyMC model (module docstring); returns ``(model, spec)``."""
    import pymc as pm
    import pytensor.tensor as pt

    r = data.rows
    y = r["y"].to_numpy(float)
    p = prior_scales(y)
    s = p["scale"]
    cells = sorted(set(r["cell"]))
    cell_idx = pd.Index(cells).get_indexer(r["cell"])
    people = sorted(set(r["participant_key"]))
    multi = bool(r.groupby("participant_key").size().max() > 1)
    labels, owner, avg, level_idx = _level_terms(data)
    coords: dict[str, Any] = {"cell": cells, "row": np.arange(len(r))}
    extra = dict(covariate=data.numeric, level=labels)
    coords.update({k: v for k, v in extra.items() if v})
    terms: dict[str, str] = {"cell": "(model or pair, experiment) intercept and residual SD"}
    dropped: dict[str, str] = {}
    with pm.Model(coords=coords) as model:
        intercept = pm.Normal("intercept", 0.0, p["intercept_sd"])
        mu: Any = intercept
        if len(cells) > 1:
            sig_e = pm.HalfNormal("sigma_experiment", s)
            if _centred(r):
                a = pm.Normal("experiment_intercept", intercept, sig_e, dims="cell")
            else:
                z_cell = pm.Normal("z_cell", 0.0, 1.0, dims="cell")
                a = pm.Deterministic(
                    "experiment_intercept", intercept + sig_e * z_cell, dims="cell"
                )
            terms["experiment"] = "cell intercepts, " + (
                "centred" if _centred(r) else "non-centred"
            )
            mu = a[cell_idx]
        else:
            dropped["experiment"] = "one (model or pair, experiment) cell only"
        if data.numeric:
            z = np.column_stack(
                [(r[c] - data.scaling[c]["mean"]) / data.scaling[c]["sd"] for c in data.numeric]
            )
            sds = np.array([data.scaling[c]["sd"] for c in data.numeric])
            effect = pm.Normal("effect", 0.0, s, dims="covariate")
            pm.Deterministic("slope", effect / sds, dims="covariate")
            mu = mu + pt.dot(pt.as_tensor(z), effect)
            terms["numeric"] = "slope per SD of each numeric covariate (standardised)"
        if data.categorical:
            mu = mu + _level_term(data, labels, owner, avg, level_idx, s, terms)
        if multi:
            pidx = pd.Index(people).get_indexer(r["participant_key"])
            coords_p = np.arange(len(people))
            model.add_coord("participant", coords_p)
            sig_p = pm.HalfNormal("sigma_participant", s)
            z_p = pm.Normal("z_participant", 0.0, 1.0, dims="participant")
            mu = mu + sig_p * z_p[pidx]
            terms["participant"] = "participant intercept (a participant in several models/pairs)"
        sigma = pm.HalfNormal("sigma_residual", s, dims="cell")
        pm.Normal("obs", mu=mu, sigma=sigma[cell_idx], observed=y, dims="row")
    priors = {
        "intercept": f"Normal(0, {p['intercept_sd']:.4g})",
        "effect": f"Normal(0, {s:.4g}) per SD",
        "sigma_*": f"HalfNormal({s:.4g})",
    }
    spec = dict(
        kind=KIND,
        outcome=data.outcome,
        covariates={
            **{c: "numeric" for c in data.numeric},
            **dict.fromkeys(data.categorical, "categorical"),
        },  # fmt: skip
        likelihood="participant outcome ~ Normal(mu, sigma_residual[cell])",
        terms=terms,
        dropped=dropped,
        priors=priors,
    )
    return model, spec


def _interval(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=float).ravel()
    return dict(
        mean=float(x.mean()),
        q05=float(np.quantile(x, 0.05)),
        q95=float(np.quantile(x, 0.95)),
        p_positive=prob(x > 0),
    )


def summarise_participants(idata, data: ParticipantsData) -> dict[str, Any]:
    """Per covariate: the effect with its 90% interval, unit, P(> 0) and missing count."""
    post = idata.posterior
    people = data.rows.drop_duplicates("participant_key")
    covs: dict[str, Any] = {}
    for c in data.numeric:
        sc = data.scaling[c]
        covs[c] = dict(
            kind="numeric",
            missing=data.missing[c],
            mean=sc["mean"],
            sd=sc["sd"],
            effect=_interval(post["effect"].sel(covariate=c).values),
            slope=_interval(post["slope"].sel(covariate=c).values),
        )
    for c in data.categorical:
        lv = {}
        for v in data.levels[c]:
            d = _interval(post["level_effect"].sel(level=f"{c}={v}").values)
            lv[v] = {**d, "participants": int((people[c] == v).sum())}
        covs[c] = dict(
            kind="categorical",
            missing=data.missing[c],
            levels=lv,
            sigma_level=(
                _interval(post["sigma_level"].sel(pooled=c).values)
                if "sigma_level" in post and c in post["sigma_level"].coords["pooled"]
                else None
            ),
        )
    units = {n: NATS for n in PARAMS}
    units.update(effect=EFFECT_UNIT, slope=SLOPE_UNIT)
    return {
        "outcome": data.outcome,
        "unit": NATS,
        "covariates": covs,
        "missing": dict(data.missing),
        "participants": dict(
            selected=data.participants_selected,
            used=data.participants_used,
            left_out=data.participants_selected - data.participants_used,
            rows=len(data.rows),
            cells=int(data.rows["cell"].nunique()),
        ),
        "units": units,
    }


@fit_entry(KIND, ParticipantsSpec, ["models", "experiments", "families", "post_training"])
def fit_participants(con, call: FitCall) -> FitResult:
    """Read, prepare, sample, check and store a participants fit (the fit contract).

    ``spec.outcome="nll"`` reads ``selection.models``' scores under
    ``selection.condition``; ``"gap"`` reads every registered pair in the selection
    (models, families, types, experiments; post-trained scores under
    ``selection.post``, base under ``selection.base``).  ``spec.covariates`` are
    metadata keys as stored; none given, or one no selected participant has, is a
    one-line error naming the covariates that exist.
    """
    sel, ps = call.selection, call.spec
    if ps.outcome == "nll":
        sel.require(KIND + " --outcome nll", ["models", "experiments"])
        if sel.post_condition or sel.base_condition:
            raise OptionError(
                "fit participants --outcome nll reads one condition: use --condition, not "
                "--post-condition/--base-condition"
            )
    sel.check_names(con, conditions=[sel.post, sel.base])
    rows = outcome_rows(con, sel, ps.outcome)
    keys = sorted(set(rows["participant_key"]))
    check_covariates(ps.covariates, available_covariates(con, keys))
    covs, kinds = covariate_table(con, keys, ps.covariates, ps.categorical)
    data = prepare_participants(rows, covs, kinds, ps.outcome)
    model, model_spec = build_participants_model(data)
    r = data.rows
    record = sel.record() | {"outcome": ps.outcome, "covariates": list(ps.covariates)}
    record |= {"missing": data.missing, "runs": sorted(set(r["runs"])), "notes": data.notes}
    return call.run_fit(
        model,
        con,
        kind=KIND,
        observed=["obs"],
        observation_labels={"obs": [f"{u} / {k}" for u, k in zip(r["unit"], r["participant_key"])]},
        summarise=lambda idata: summarise_participants(idata, data),
        spec=model_spec
        | {
            "spec": {
                "outcome": ps.outcome,
                "covariates": list(ps.covariates),
                "categorical": list(ps.categorical),
            }
        },  # fmt: skip
        priors=model_spec["priors"],
        selection=record,
        dropped=model_spec["dropped"],
        notes=data.notes,
        condition=sel.condition if ps.outcome == "nll" else sel.label,
        scale="nats",
        what=f"outcome {ps.outcome}, {data.participants_used} participants, {len(r)} rows, "
        f"{r['cell'].nunique()} cells, covariates {', '.join(ps.covariates)}",
        params=ParamRows(var_names=[n for n in PARAMS if n in model.named_vars]),
        data=data,
    )
