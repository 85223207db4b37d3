"""``psystats fit accuracy``: option-restricted accuracy of post-trained vs base models,
and whether the difference survives temperature calibration.

Data: experiments whose responses come from a finite option set, scored into
``option_scores`` (log-probability of each option, renormalised over the
set).  For each (model, response) the response text must be one of the
options (compared after trimming whitespace); other responses are left out
and counted.

1. **Raw accuracy**: a response is a top-1 hit when the participant's option
   has the highest log-probability (ties: 1/k of a hit, the expected hit of a
   random tie-break).  Per participant: hits out of n responses.
2. **Determinism check**: post-trained models are often over-confident, so a
   deterministic argmax (the seed study's accuracy) can differ from what the
   model predicts as a distribution.  For every (model, experiment) a
   temperature T is fitted on held-out participants (K-fold: fitted on the
   other folds by minimising the option NLL of the people's responses with
   ``scipy.optimize.minimize_scalar``, applied to the fold), giving calibrated
   option probabilities softmax(logprob / T).  Per participant: the calibrated
   option NLL and the *accuracy under sampling*, the expected hits
   sum_r p_T(response_r).  (Temperature never changes the argmax, so the
   calibrated comparison must use the probabilities.)

Both outcomes get the same binomial-logit hierarchical model (``docs/model.md``):
for participant i of experiment e scored by base model b and its post-trained
model p, logit P(hit) = alpha[b, e] + zeta_i for b and
alpha[b, e] + gap[p, e] + zeta_i for p, with
gap[p, e] = accuracy_gap[type(p)] + pair and experiment deviations.  Fractional
counts (ties, expected hits) enter through the binomial log density
k log(q) + (n - k) log(1 - q) + log C(n, k) (``gammaln`` form) of an observed
variable (``hits``, ``hits_calibrated``; ``stats.likelihoods.binomial_logit``),
so each fit has a posterior predictive check and PSIS-LOO over
(model, participant) rows.

``fits.summary["survives_calibration"]`` says, per post-training type, whether
the raw gap is credible (90% interval excludes 0) and whether the calibrated
gap is credible with the same sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import where_clause
from psystats.warehouse.validators import Flag

from .analysis_common import prob
from .data import load_models
from .likelihoods import binomial_logit
from .option_groups import OptionGroups
from .options import (
    ANALYSIS,
    AnalysisSpec,
    Selection,
    options_of,
    validated,
)
from .pipeline import FitCall, FitResult, ParamRows, built, fit_entry
from .units import LOGIT, same_unit

KIND = "accuracy"
LOG_T_BOUNDS = (np.log(0.02), np.log(50.0))  # temperatures searched (ample for real models)


# --------------------------------------------------------------------------- data


def option_rows(con, selection: Selection | None = None) -> pd.DataFrame:
    """Option log-probabilities of every scored response of the pairs' models.

    One row per (model, response, option): model, condition, run_id,
    experiment, participant_key, response_id, response (trimmed text),
    option (trimmed), logprob.  Each model's rows come from its latest
    complete run of the experiment in its condition (post-trained models:
    ``selection.post``; base models: ``selection.base``); ``selection``
    (default: all, plain) also picks models and experiments.
    """
    from .data import latest_runs_sql

    sel = selection or Selection()
    post_condition, base_condition = sel.post, sel.base
    filt, fparams = where_clause(
        {"lr.model": sel.only("models"), "lr.experiment": sel.only("experiments")}
    )
    extra = (" AND " + filt.removeprefix("WHERE ")) if filt else ""
    q = f"""
    WITH {latest_runs_sql("?, ?")},
    roles AS (
        SELECT name AS model, CASE WHEN post_training = 'base' THEN ? ELSE ? END AS condition
        FROM models
    )
    SELECT lr.model, lr.condition, lr.run_id, r.experiment, r.participant_key, o.response_id,
           trim(r.text) AS response, trim(o.option) AS option, o.logprob
    FROM latest_runs lr
    JOIN roles ro ON ro.model = lr.model AND ro.condition = lr.condition
    JOIN option_scores o ON o.run_id = lr.run_id
    JOIN responses r ON r.response_id = o.response_id AND r.experiment = lr.experiment
    WHERE isfinite(o.logprob){extra}
    ORDER BY lr.model, o.response_id, option
    """
    cur = con.execute(q, [post_condition, base_condition, base_condition, post_condition, *fparams])
    return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])


@dataclass
class OptionMatrix:
    """The option log-probs of one (model, experiment) as a padded matrix.

    ``logprob``: (responses, max options), -inf padding; ``target``: column of
    the participant's option; ``participant``: participant_key per row.
    """

    logprob: np.ndarray
    target: np.ndarray
    participant: np.ndarray
    response_id: np.ndarray


def option_matrix(rows: pd.DataFrame) -> tuple[OptionMatrix, int]:
    """Padded option matrix of one (model, experiment); returns it and the unmatched count."""
    rows = rows.sort_values(["response_id", "option"])
    rid = rows["response_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    counts = np.diff(np.r_[starts, len(rid)])
    k = int(counts.max())
    n = len(starts)
    lp = np.full((n, k), -np.inf)
    col = np.arange(len(rid)) - np.repeat(starts, counts)
    row = np.repeat(np.arange(n), counts)
    lp[row, col] = rows["logprob"].to_numpy(float)
    is_target = rows["option"].to_numpy() == rows["response"].to_numpy()
    target = np.full(n, -1)
    target[row[is_target]] = col[is_target]
    keep = target >= 0
    m = OptionMatrix(
        logprob=lp[keep],
        target=target[keep],
        participant=rows["participant_key"].to_numpy()[starts][keep],
        response_id=rid[starts][keep],
    )
    return m, int((~keep).sum())


def log_softmax(lp: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Row-wise log softmax of ``lp / temperature`` (-inf padding stays -inf)."""
    z = lp / temperature
    return z - logsumexp(z, axis=1, keepdims=True)


def option_nll(m: OptionMatrix, temperature: float = 1.0) -> np.ndarray:
    """Per-response NLL of the participant's option under softmax(logprob / T)."""
    ls = log_softmax(m.logprob, temperature)
    return -ls[np.arange(len(m.target)), m.target]


def top1_hits(m: OptionMatrix) -> np.ndarray:
    """Per-response top-1 hit, 1/k when the participant's option ties k-way for the top."""
    top = m.logprob.max(axis=1, keepdims=True)
    at_top = np.isclose(m.logprob, top, rtol=0, atol=1e-12) & np.isfinite(m.logprob)
    hit = at_top[np.arange(len(m.target)), m.target]
    return hit / at_top.sum(axis=1)


def fit_temperature(m: OptionMatrix, rows: np.ndarray | None = None) -> float:
    """The temperature minimising the mean option NLL of ``rows`` (all rows by default)."""
    sub = (
        m
        if rows is None
        else OptionMatrix(m.logprob[rows], m.target[rows], m.participant[rows], m.response_id[rows])
    )
    res = minimize_scalar(
        lambda lt: option_nll(sub, float(np.exp(lt))).mean(),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def folds_for(participants: np.ndarray, k: int, seed: int) -> dict[Any, int]:
    """Fold of each participant: a seeded shuffle of the sorted keys, dealt round-robin."""
    keys = np.array(sorted(set(participants.tolist())))
    order = np.random.default_rng(seed).permutation(len(keys))
    return {keys[j].item(): i % k for i, j in enumerate(order)}


def calibrate(m: OptionMatrix, *, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Cross-validated temperatures: each response's T is fitted on the other folds.

    Returns (temperature per response, temperature per fold).  With fewer
    than 2 participants nothing is held out and T = 1 (uncalibrated).
    """
    parts = m.participant
    n_part = len(set(parts.tolist()))
    k = min(folds, n_part)
    if k < 2:
        return np.ones(len(parts)), [1.0]
    fold_of = folds_for(parts, k, seed)
    f = np.array([fold_of[p.item() if hasattr(p, "item") else p] for p in parts])
    temps = np.empty(len(parts))
    per_fold = []
    for j in range(k):
        t = fit_temperature(m, np.flatnonzero(f != j))
        temps[f == j] = t
        per_fold.append(t)
    return temps, per_fold


@dataclass
class AccuracyData:
    """Per (model, participant) outcomes and per (model, experiment) calibration results.

    ``participants``: model, experiment, participant_key, n, hits (top-1),
    hits_sampled (expected hits at T = 1), hits_calibrated (expected hits at
    the cross-validated T), nll_raw, nll_calibrated (sums over responses).
    ``calibration``: model, experiment, n_responses, n_unmatched, temperature
    (mean over folds), temperatures (per fold), accuracy_top1,
    accuracy_sampled, accuracy_calibrated, option_nll_raw,
    option_nll_calibrated (per response).  ``pairs``: pair, post_model,
    base_model, post_training.
    """

    participants: pd.DataFrame
    calibration: pd.DataFrame
    pairs: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    selection: dict = field(default_factory=dict)


def _pairs(models: pd.DataFrame, have: set[str]) -> pd.DataFrame:
    """(post-trained, base) pairs whose two models both have option scores."""
    pr = models[(models["post_training"] != "base") & models["base_model"].notna()]
    pr = pr[pr["name"].isin(have) & pr["base_model"].isin(have)]
    if pr.empty:
        raise WarehouseError(
            "fit accuracy needs a post-trained model and its base (models.base_model) both "
            f"with option scores; models with option scores: {', '.join(sorted(have))}"
        )
    return pd.DataFrame(
        {
            "pair": pr["name"] + " vs " + pr["base_model"],
            "post_model": pr["name"],
            "base_model": pr["base_model"],
            "post_training": pr["post_training"],
        }
    ).reset_index(drop=True)


def _calibration_notes(model: str, exp: str, per_fold: list[float], notes: list[str]) -> None:
    """Say when a (model, experiment) is not calibrated or its temperature hit a bound."""
    if len(per_fold) == 1 and per_fold[0] == 1.0:
        notes.append(f"{model} / {exp}: fewer than 2 participants, not calibrated (T = 1)")
    at_bound = [t for t in per_fold if min(abs(np.log(t) - b) for b in LOG_T_BOUNDS) < 1e-3]
    if at_bound:
        why = (
            "the options become nearly uniform: the model's ranking carries almost no "
            "information about the responses"
            if at_bound[0] > 1
            else "the model is far too flat: its ranking is right but its confidence tiny"
        )
        notes.append(
            f"{model} / {exp}: temperature at the search bound "
            f"({at_bound[0]:.3g}) in some fold; {why}"
        )


def _outcomes(
    model: str, exp: str, m: OptionMatrix, unmatched: int, folds: int, seed: int, notes: list[str]
) -> tuple[pd.DataFrame, dict]:
    """One (model, experiment): per-participant outcomes and its row of the calibration table."""
    temps, per_fold = calibrate(m, folds=folds, seed=seed)
    _calibration_notes(model, exp, per_fold, notes)
    hit = top1_hits(m)
    nll_raw = option_nll(m, 1.0)
    ls_cal = log_softmax(m.logprob, temps[:, None])
    nll_cal = -ls_cal[np.arange(len(m.target)), m.target]
    df = pd.DataFrame(
        {
            "participant_key": m.participant,
            "hit": hit,
            "p_raw": np.exp(-nll_raw),
            "p_cal": np.exp(-nll_cal),
            "nll_raw": nll_raw,
            "nll_cal": nll_cal,
        }
    )
    agg = (
        df.groupby("participant_key")
        .agg(
            n=("hit", "size"),
            hits=("hit", "sum"),
            hits_sampled=("p_raw", "sum"),
            hits_calibrated=("p_cal", "sum"),
            nll_raw=("nll_raw", "sum"),
            nll_calibrated=("nll_cal", "sum"),
        )
        .reset_index()
    )
    agg.insert(0, "experiment", exp)
    agg.insert(0, "model", model)
    calib = dict(
        model=model,
        experiment=exp,
        n_responses=len(m.target),
        n_unmatched=unmatched,
        temperature=float(np.mean(per_fold)),
        temperatures=per_fold,
        accuracy_top1=float(hit.mean()),
        accuracy_sampled=float(np.exp(-nll_raw).mean()),
        accuracy_calibrated=float(np.exp(-nll_cal).mean()),
        option_nll_raw=float(nll_raw.mean()),
        option_nll_calibrated=float(nll_cal.mean()),
    )
    return agg, calib


def _paired_participants(participants: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Participants scored by both models of some pair (the comparison is paired)."""
    keep = []
    for _, p in pairs.iterrows():
        a = participants[participants["model"] == p["post_model"]]
        b = participants[participants["model"] == p["base_model"]]
        both = a.merge(b[["experiment", "participant_key"]], on=["experiment", "participant_key"])
        keep.append(both[["experiment", "participant_key"]].assign(model=p["post_model"]))
        keep.append(both[["experiment", "participant_key"]].assign(model=p["base_model"]))
    kept = pd.concat(keep).drop_duplicates()
    participants = participants.merge(kept, on=["model", "experiment", "participant_key"])
    if participants.empty:
        raise WarehouseError(
            "fit accuracy: no participant was scored with options by both models of any pair"
        )
    return participants


def prepare_accuracy(
    rows: pd.DataFrame | OptionGroups, models: pd.DataFrame, *, folds: int = 5, seed: int = 0
) -> AccuracyData:
    """Hits, calibration and pairing from :func:`option_rows`' table, or from
    :class:`~psystats.stats.option_groups.OptionGroups` (the same rows read one
    (model, experiment) at a time, as :func:`fit_accuracy` does)."""
    notes: list[str] = []
    if rows.empty:
        raise WarehouseError(
            "fit accuracy found no option scores: it needs experiments with an option set "
            "(table option_sets) scored by a base model and its post-trained model, which "
            "writes option_scores (`psystats score ...`)"
        )
    have = rows.models if isinstance(rows, OptionGroups) else set(rows["model"])
    pairs = _pairs(models, have)
    used = set(pairs["post_model"]) | set(pairs["base_model"])
    per_part, calib = [], []
    groups = (
        rows.iter_groups(used)
        if isinstance(rows, OptionGroups)
        else rows[rows["model"].isin(used)].groupby(["model", "experiment"], sort=True)
    )
    for (model, exp), g in groups:
        m, unmatched = option_matrix(g)
        if len(m.target) == 0:
            notes.append(f"{model} / {exp}: no response is one of its options; left out")
            continue
        agg, row = _outcomes(model, exp, m, unmatched, folds, seed, notes)
        per_part.append(agg)
        calib.append(row)
        if unmatched:
            notes.append(f"{model} / {exp}: {unmatched} response(s) not among the options left out")
    if not per_part:
        raise WarehouseError(
            "fit accuracy: no response matched one of its options; "
            "check option_sets against the responses' text"
        )
    participants = _paired_participants(pd.concat(per_part, ignore_index=True), pairs)
    pairs = pairs[pairs["post_model"].isin(set(participants["model"]))].reset_index(drop=True)
    return AccuracyData(
        participants=participants, calibration=pd.DataFrame(calib), pairs=pairs, notes=notes
    )


# --------------------------------------------------------------------------- model


@dataclass
class AccuracyPriors:
    """Prior scales on the logit scale.

    ``alpha ~ Normal(0, baseline_sd)`` for each (base model, experiment),
    ``accuracy_gap ~ Normal(0, gap_sd)``, ``sigma_participant``,
    ``sigma_pair``, ``sigma_experiment``, ``sigma_cell ~ HalfNormal(scale)``.
    A logit difference of 1 is a large accuracy change (50 % -> 73 %).
    """

    baseline_sd: float = 2.0
    gap_sd: float = 1.0
    participant_sd: float = 1.0
    pair_sd: float = 0.5
    experiment_sd: float = 0.5
    cell_sd: float = 0.5


def _add_submodel(data: AccuracyData, hits_col: str, suffix: str, p: dict, spec: dict):
    """One binomial-logit model of ``hits_col`` inside the current PyMC model."""
    import pymc as pm

    d = data.participants
    pairs = data.pairs
    post_of = dict(zip(pairs["post_model"], pairs["base_model"]))
    pair_of = dict(zip(pairs["post_model"], pairs["pair"]))
    type_of = dict(zip(pairs["post_model"], pairs["post_training"]))
    is_post = d["model"].isin(post_of).to_numpy()
    base = np.where(is_post, d["model"].map(post_of), d["model"])
    be = pd.Series(base).astype(str) + " | " + d["experiment"].astype(str).to_numpy()
    be_levels = sorted(set(be))
    part = d["experiment"].astype(str) + " | " + d["participant_key"].astype(str)
    part_levels = sorted(set(part))
    types = sorted(set(pairs["post_training"]))
    pair_levels = sorted(set(pairs["pair"]))
    post_rows = d[is_post]
    exps = sorted(set(post_rows["experiment"]))
    cells = sorted(set(post_rows["model"] + " | " + post_rows["experiment"]))

    use_pair = bool((pairs.groupby("post_training")["pair"].nunique() >= 2).any())
    use_exp = len(exps) >= 2
    use_cell = len(cells) > len(types) + (len(exps) - 1 if use_exp else 0) + (
        len(pair_levels) - len(types) if use_pair else 0
    )
    use_part = bool(d["n"].max() > 1)
    if not suffix:
        spec["terms"] = {
            "pair": use_pair,
            "experiment (sum to zero)": use_exp,
            "pair x experiment cell": use_cell,
            "participant": use_part,
        }
        why = {
            "pair": "one pair per post-training type: a pair deviation is the type's gap",
            "experiment (sum to zero)": "one experiment",
            "pair x experiment cell": "no more pair x experiment cells than gap parameters",
            "participant": "one response per participant",
        }
        spec["dropped"] = {t: why[t] for t, used in spec["terms"].items() if not used}

    model = pm.modelcontext(None)
    for dim, vals in (
        ("base_experiment", be_levels),
        ("post_training", types),
        ("pair", pair_levels),
        ("experiment", exps),
        ("gap_cell", cells),
        ("participant", part_levels),
        ("row", np.arange(len(d))),
    ):
        if dim not in model.coords:
            model.add_coord(dim, vals)

    alpha = pm.Normal(f"alpha{suffix}", 0.0, p["baseline_sd"], dims="base_experiment")
    eta = alpha[pd.Index(be_levels).get_indexer(be)]
    # The gap terms are evaluated for every row and switched on by the post-model mask
    # (base rows point at level 0 of each index; their value is multiplied by 0).
    mask = is_post.astype(float)

    def idx(levels, values):
        out = pd.Index(levels).get_indexer(values)
        return np.where(is_post, out, 0)

    post_model = d["model"].where(is_post, pairs["post_model"].iloc[0])
    gap = pm.Normal(f"accuracy_gap{suffix}", 0.0, p["gap_sd"], dims="post_training")
    g = gap[idx(types, post_model.map(type_of))]
    if use_pair:
        s = pm.HalfNormal(f"sigma_pair{suffix}", p["pair_sd"])
        z = pm.Normal(f"z_pair{suffix}", 0.0, 1.0, dims="pair")
        g = g + s * z[idx(pair_levels, post_model.map(pair_of))]
    if use_exp:
        s = pm.HalfNormal(f"sigma_experiment{suffix}", p["experiment_sd"])
        z = pm.ZeroSumNormal(f"z_experiment{suffix}", sigma=1.0, dims="experiment")
        g = g + s * z[idx(exps, d["experiment"])]
    if use_cell:
        s = pm.HalfNormal(f"sigma_cell{suffix}", p["cell_sd"])
        z = pm.Normal(f"z_cell{suffix}", 0.0, 1.0, dims="gap_cell")
        g = g + s * z[idx(cells, post_model + " | " + d["experiment"])]
    eta = eta + mask * g
    if use_part:
        s = pm.HalfNormal(f"sigma_participant{suffix}", p["participant_sd"])
        z = pm.Normal(f"z_participant{suffix}", 0.0, 1.0, dims="participant")
        eta = eta + s * z[pd.Index(part_levels).get_indexer(part)]
    # Observed binomial-logit hits (fractional counts allowed: ties, expected hits under
    # sampling), so the fit has predictive draws and pointwise log-likelihoods.
    binomial_logit(
        hits_col,
        eta,
        d["n"].to_numpy(float),
        d[hits_col].to_numpy(float),
        dims="row",
    )


def build_accuracy_model(
    data: AccuracyData, priors: AccuracyPriors | None = None, *, calibrated: bool = True
):
    """The PyMC model: raw top-1 hits (``accuracy_gap``) and, with ``calibrated``,
    expected hits under the calibrated distribution (``accuracy_gap_calibrated``),
    as two independent submodels of one model.  Returns ``(model, spec)``."""
    import pymc as pm

    p = asdict(priors or AccuracyPriors())
    bad = [k for k, v in p.items() if not (v > 0)]
    if bad:
        raise WarehouseError(f"accuracy priors must be positive: {', '.join(bad)}")
    spec: dict[str, Any] = dict(
        kind=KIND,
        scale="logit",
        raw="top-1 hits (ties count 1/k) ~ binomial-logit (observed; fractional counts through "
        "the gammaln binomial coefficient)",
        calibrated="expected hits sum_r softmax(logprob_r / T)[response_r], T cross-validated "
        "per (model, experiment)",
        reference="accuracy_gap = post minus base on the logit scale, mean over experiments",
    )
    with pm.Model() as model:
        _add_submodel(data, "hits", "", p, spec)
        if calibrated:
            _add_submodel(data, "hits_calibrated", "_calibrated", p, spec)
    spec["priors"] = p
    return model, spec


PARAMS = [
    "accuracy_gap",
    "accuracy_gap_calibrated",
    "sigma_pair",
    "sigma_experiment",
    "sigma_cell",
    "sigma_participant",
    "sigma_pair_calibrated",
    "sigma_experiment_calibrated",
    "sigma_cell_calibrated",
    "sigma_participant_calibrated",
]


def _interval(x: np.ndarray) -> dict:
    return dict(
        mean=float(x.mean()),
        q05=float(np.quantile(x, 0.05)),
        q95=float(np.quantile(x, 0.95)),
        p_negative=prob(x < 0),
    )


def summarise_accuracy(idata, data: AccuracyData, folds: int) -> dict:
    """Raw vs calibrated gap per type, whether it survives, and the calibration table."""
    post = idata.posterior
    out: dict[str, Any] = {
        "scale": "logit (post minus base)",
        "units": same_unit(PARAMS, LOGIT),
        "folds": folds,
        "by_post_training": {},
        "survives_calibration": {},
    }
    for t in post["accuracy_gap"].coords["post_training"].values:
        raw = post["accuracy_gap"].sel(post_training=t).values.ravel()
        entry: dict[str, Any] = {"raw": _interval(raw)}
        credible_raw = entry["raw"]["q05"] > 0 or entry["raw"]["q95"] < 0
        survives = None
        if "accuracy_gap_calibrated" in post:
            cal = post["accuracy_gap_calibrated"].sel(post_training=t).values.ravel()
            entry["calibrated"] = _interval(cal)
            same_side = (entry["raw"]["q95"] < 0 and entry["calibrated"]["q95"] < 0) or (
                entry["raw"]["q05"] > 0 and entry["calibrated"]["q05"] > 0
            )
            survives = bool(same_side) if credible_raw else None
        entry["raw_gap_credible"] = bool(credible_raw)
        entry["survives"] = survives
        entry["verdict"] = (
            "no credible raw gap (90% interval includes 0)"
            if not credible_raw
            else "gap survives calibration"
            if survives
            else "gap does not survive calibration"
            if survives is False
            else "not calibrated"
        )
        out["by_post_training"][str(t)] = entry
        out["survives_calibration"][str(t)] = survives
    cal = data.calibration.copy()
    out["calibration"] = cal.to_dict(orient="records")
    return out


@dataclass(frozen=True)
class AccuracySpec(AnalysisSpec):
    """What ``fit accuracy`` fits beyond its selection: the folds of the temperature
    calibration, whether to refit on the calibrated accuracy, the prior scales
    (:class:`AccuracyPriors` or a dict of its fields)."""

    KIND = "accuracy"
    folds: int = ANALYSIS["folds"].default
    calibration: bool = True
    priors: AccuracyPriors | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "folds", ANALYSIS["folds"].validate(self.folds))
        validated("calibration", Flag(), self.calibration)
        object.__setattr__(self, "priors", options_of(AccuracyPriors, self.priors, "priors"))


@fit_entry(KIND, AccuracySpec, ["models", "experiments"])
def fit_accuracy(con, call: FitCall) -> FitResult:
    """Load, calibrate, build, sample, check and store an accuracy fit (the fit contract).

    ``selection``: conditions (post-trained models' scores: ``selection.post``;
    base models': ``selection.base``), models, experiments.  Returns the
    pipeline's :class:`~psystats.stats.pipeline.FitResult` (``data``: the
    :class:`AccuracyData`); its summary holds the raw and calibrated gaps,
    the posterior predictive check of the hits (``ppc``) and PSIS-LOO over
    (model, participant) rows (``loo``, also per outcome).
    """
    sel, acc, sampling = call.selection, call.spec, call.sampling
    sel.check_names(con)  # conditions: "no option scores" below says what to score
    # One (model, experiment) at a time: the option rows never all sit in memory.
    rows = OptionGroups(con, **sel.reads("models", "experiments"))
    data = prepare_accuracy(rows, load_models(con), folds=acc.folds, seed=sampling.seed)
    runs = rows.groups.groupby("model")["run_id"].agg(lambda s: sorted(set(map(int, s))))
    data.selection = dict(
        sel.reads("models", "experiments"),
        pairs=list(data.pairs["pair"]),
        runs={m: runs[m] for m in sorted(set(data.participants["model"]))},
        n_participants=int(data.participants.groupby(["experiment", "participant_key"]).ngroups),
        notes=data.notes,
    )
    model, model_spec = build_accuracy_model(data, acc.priors, calibrated=acc.calibration)
    d = data.participants
    rows_lab = [
        f"{m} / {e} / {p}" for m, e, p in zip(d["model"], d["experiment"], d["participant_key"])
    ]
    observed = {"hits": rows_lab, **({"hits_calibrated": rows_lab} if acc.calibration else {})}
    return call.run_fit(
        model,
        con,
        kind=KIND,
        observed=list(observed),
        observation_labels=observed,
        summarise=lambda idata: summarise_accuracy(idata, data, acc.folds),
        **built(model_spec, data),
        condition=sel.label,
        scale="logit",
        what=f"{len(d)} (model, participant) rows, {len(data.pairs)} pairs",
        params=ParamRows(var_names=[n for n in PARAMS if n in model.named_vars]),
    )


# --------------------------------------------------------------------------- simulation


def expected_accuracy(
    beta: float,
    n_options: int,
    *,
    temperature_ratio: float | None = None,
    draws: int = 200_000,
    seed: int = 0,
) -> dict[str, float]:
    """Monte-Carlo truth for :func:`simulate_accuracy`'s generative model.

    Option scores z_o = beta 1[o = response] + N(0, 1).  Returns the top-1
    accuracy and the accuracy under sampling from softmax(beta z), the
    calibrated distribution (P(response | z) by Bayes' rule).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(draws, n_options))
    z[:, 0] += beta
    top1 = float(np.mean(z.argmax(axis=1) == 0))
    p = np.exp(log_softmax(beta * z)[:, 0])
    return {"top1": top1, "sampled_calibrated": float(p.mean())}


def simulate_accuracy(
    con,
    *,
    experiments: Sequence[str] | None = None,
    beta: dict[str, float] | None = None,
    sharpness: dict[str, float] | None = None,
    participant_sd: float = 0.5,
    condition: str = "plain",
    seed: int = 0,
) -> dict:
    """Write option scores for a base and an instruct model with known accuracy and confidence.

    The option set of an experiment is the set of its distinct response texts
    (also written to ``option_sets``).  For model m and each response of
    participant i, option scores z_o = (beta_m + b_i) 1[o = response] + N(0, 1),
    b_i ~ N(0, participant_sd) (some people are easier to predict), and the
    stored log-probs are log softmax(sharpness_m z): beta sets the accuracy,
    sharpness the over-confidence.  The calibrating temperature is about
    sharpness / beta.  Returns the truth (per model: beta, sharpness,
    temperature, expected top-1 and calibrated sampling accuracy at b = 0;
    ``accuracy_gap``/``accuracy_gap_calibrated``: the logit gap post minus base
    averaged over b, the model's participant-conditional estimand).
    """
    from psystats.warehouse.sql import transaction

    from .simulate import register_models, responses_frame, write_run

    beta = beta or {"sim-acc-base": 1.0, "sim-acc-instruct": 1.6}
    sharpness = sharpness or {"sim-acc-base": 1.0, "sim-acc-instruct": 4.0}
    rng = np.random.default_rng(seed)
    resp = responses_frame(con, experiments)
    resp["text"] = resp["text"].str.strip()
    parts = sorted(set(resp["participant_key"]))
    b_i = dict(zip(parts, rng.normal(0.0, participant_sd, len(parts))))
    options = resp.groupby("experiment")["text"].apply(lambda s: sorted(set(s)))
    names = list(beta)
    base, post = names[0], names[1]
    truth: dict[str, Any] = {"models": {}}
    runs = []
    for m in names:
        rows = []
        for exp, g in resp.groupby("experiment"):
            opts = options[exp]
            z = rng.normal(size=(len(g), len(opts)))
            target = pd.Index(opts).get_indexer(g["text"])
            z[np.arange(len(g)), target] += beta[m] + g["participant_key"].map(b_i).to_numpy()
            lp = log_softmax(sharpness[m] * z)
            rows.append(
                pd.DataFrame(
                    {
                        "response_id": np.repeat(g["response_id"].to_numpy(), len(opts)),
                        "option": np.tile(opts, len(g)),
                        "logprob": lp.ravel(),
                    }
                )
            )
        opt = pd.concat(rows, ignore_index=True)
        k = int(options.map(len).median())
        ea = expected_accuracy(beta[m], k, seed=seed)
        truth["models"][m] = dict(
            beta=beta[m], sharpness=sharpness[m], temperature=sharpness[m] / beta[m], **ea
        )
        runs.append((m, 1.0 + rng.exponential(1.0, len(resp)), opt))

    def logit(p):
        return float(np.log(p / (1 - p)))

    k = int(options.map(len).median())
    gaps: dict[str, list[float]] = {"top1": [], "sampled_calibrated": []}
    for q in np.linspace(0.025, 0.975, 20):  # average over people (normal quantiles of b)
        from scipy.stats import norm

        b = float(norm.ppf(q)) * participant_sd
        ep = expected_accuracy(beta[post] + b, k, draws=40_000, seed=seed)
        eb = expected_accuracy(beta[base] + b, k, draws=40_000, seed=seed)
        for key in gaps:
            gaps[key].append(logit(ep[key]) - logit(eb[key]))
    truth["accuracy_gap"] = float(np.mean(gaps["top1"]))
    truth["accuracy_gap_calibrated"] = float(np.mean(gaps["sampled_calibrated"]))
    with transaction(con):
        register_models(
            con,
            [
                dict(
                    name=base,
                    family="sim",
                    generation="1",
                    generation_order=1.0,
                    post_training="base",
                ),
                dict(
                    name=post,
                    family="sim",
                    generation="1",
                    generation_order=1.0,
                    post_training="instruct",
                    base_model=base,
                ),
            ],
        )
        for exp, opts in options.items():
            con.executemany(
                "INSERT INTO option_sets VALUES (?, ?, 'declared')", [(exp, o) for o in opts]
            )
        for m, nll, opt in runs:
            write_run(con, m, condition, resp["response_id"], nll, opt)
    return truth
