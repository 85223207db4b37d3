"""``psystats fit persona``: does telling the model who the participant is help it predict them?

For every model scored in both the ``persona`` condition (a metadata interview
before the transcript) and the ``plain`` condition, and every participant, the
paired difference

    d_i = mean over i's responses r of [NLL_persona(r) - NLL_plain(r)]

over the responses both runs scored validly (same model, same responses;
participants without metadata are skipped by the persona scorer and so drop
out here).  Negative d = the persona helps.  Cells (model, experiment) keep
(n, mean, var); the model (``docs/model.md``) is hierarchical over
experiments (and over models with ``model_effects="random"``; by default each
model has its own effect and ``persona_effect`` per post-training type is their
average, a statement about the models scored) with one ``persona_effect`` per
post-training type.

"No benefit" is a posterior statement through a region of practical
equivalence (ROPE) around zero: ``P(|effect| < rope)``, ``P(effect < -rope)``
(benefit) and ``P(effect > rope)`` (harm), in ``fits.summary``, with how wide
the interval is against the ROPE and roughly how much more data would decide
(:func:`data_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import where_clause
from psystats.warehouse.validators import OneOf

from .analysis_common import prob, resolve_prior_scales, without_thin_cells
from .data import load_models
from .likelihoods import marginal_normal
from .options import (
    ANALYSIS,
    PERSONA_CONDITION,
    AnalysisSpec,
    options_of,
    validated,
)
from .pipeline import FitCall, FitResult, ParamRows, built, fit_entry
from .units import outcome_unit, same_unit

KIND = "persona"
SCALES = ("nats", "standardised")
# Default ROPE half-widths.  0.01 nats per response is a likelihood ratio of
# exp(0.01) ~ 1.01: the persona would change the probability the model gives
# each human response by about 1 %.  0.1 SD is Kruschke's (2018) default ROPE
# for standardised effects: half of Cohen's "small" effect.
DEFAULT_ROPE = {"nats": 0.01, "standardised": 0.1}
DECISION = 0.95  # posterior mass needed to call an effect equivalent / beneficial / harmful


@dataclass
class PersonaPriors:
    """Prior scales (on the fit's scale).  ``None``: scaled from the data.

    With S = max(root mean square of the cell means, rope):
    ``persona_effect ~ Normal(0, 2.5 S)``, ``sigma_model``,
    ``sigma_experiment``, ``sigma_cell ~ HalfNormal(S)``.
    """

    effect_sd: float | None = None
    model_sd: float | None = None
    experiment_sd: float | None = None
    cell_sd: float | None = None

    def resolved(self, cells: pd.DataFrame, rope: float) -> dict[str, float]:
        s = max(float(np.sqrt(np.mean(np.square(cells["y"])))), rope)
        auto = dict(effect_sd=2.5 * s, model_sd=s, experiment_sd=s, cell_sd=s)
        return resolve_prior_scales(self, auto, "persona")


@dataclass
class PersonaData:
    """Cells (model, experiment) with ``y``/``se`` on ``scale`` and the model metadata."""

    cells: pd.DataFrame
    scale: str
    rope: float
    notes: list[str] = field(default_factory=list)
    selection: dict = field(default_factory=dict)


def persona_cells(
    con,
    *,
    persona_condition: str = "persona",
    plain_condition: str = "plain",
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """(model, experiment) cells of paired persona-minus-plain differences, from DuckDB.

    Columns: model, experiment, n, mean, var, sd_persona, sd_plain,
    n_responses, persona_run_id, plain_run_id.  Each condition's scores come
    from the model's latest complete run of that experiment (``stats.data``).
    """
    from .data import VALID_SCORE, latest_runs_sql

    if persona_condition == plain_condition:
        raise WarehouseError(
            f"the persona and plain conditions must differ (both are {persona_condition!r})"
        )
    filt, fparams = where_clause({"lp.model": models, "lp.experiment": experiments})
    extra = (" AND " + filt.removeprefix("WHERE ")) if filt else ""
    valid_p = VALID_SCORE.replace("s.", "sp.")
    valid_q = VALID_SCORE.replace("s.", "sq.")
    q = f"""
    WITH {latest_runs_sql("?, ?")},
    model_runs AS (
        SELECT lp.model, lp.experiment, lp.run_id AS persona_run_id, lq.run_id AS plain_run_id
        FROM latest_runs lp
        JOIN latest_runs lq ON lq.model = lp.model AND lq.experiment = lp.experiment
                           AND lq.condition = ?
        WHERE lp.condition = ?{extra}
    ),
    diffs AS (
        SELECT mr.model, mr.experiment, r.participant_key, mr.persona_run_id, mr.plain_run_id,
               count(*)::BIGINT AS n_responses, avg(sp.nll) AS mean_persona,
               avg(sq.nll) AS mean_plain, avg(sp.nll - sq.nll) AS d
        FROM model_runs mr
        JOIN scores sp ON sp.run_id = mr.persona_run_id
        JOIN responses r ON r.response_id = sp.response_id AND r.experiment = mr.experiment
        JOIN scores sq ON sq.run_id = mr.plain_run_id AND sq.response_id = sp.response_id
        WHERE {valid_p} AND {valid_q}
        GROUP BY ALL
    )
    SELECT model, experiment, count(*)::BIGINT AS n, avg(d) AS mean, var_samp(d) AS var,
           stddev_samp(mean_persona) AS sd_persona, stddev_samp(mean_plain) AS sd_plain,
           sum(n_responses)::BIGINT AS n_responses,
           any_value(persona_run_id) AS persona_run_id, any_value(plain_run_id) AS plain_run_id
    FROM diffs GROUP BY model, experiment ORDER BY model, experiment
    """
    cur = con.execute(
        q, [persona_condition, plain_condition, plain_condition, persona_condition, *fparams]
    )
    df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    for col in ("mean", "var", "sd_persona", "sd_plain"):
        df[col] = df[col].astype(float)
    return df


def prepare_persona(
    cells: pd.DataFrame, models: pd.DataFrame, *, scale: str = "nats", rope: float | None = None
) -> PersonaData:
    """Put cells on ``scale`` (``y``, ``se``), attach post-training types, drop unusable cells."""
    if scale not in SCALES:
        raise WarehouseError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    rope = DEFAULT_ROPE[scale] if rope is None else float(rope)
    if not rope > 0:
        raise WarehouseError(f"--rope must be positive, got {rope}")
    notes: list[str] = []
    if cells.empty:
        raise WarehouseError(
            "fit persona found no model scored in both the persona and the plain condition "
            "on the same responses: run `psystats score --model MODEL --condition persona` (and "
            "`--condition plain`) first"
        )
    c = cells.copy()
    c = without_thin_cells(c, notes, "cell(s) with fewer than 2 participants", "model")
    se = np.sqrt(c["var"] / c["n"])
    if scale == "nats":
        c["y"], c["se"] = c["mean"], se
    else:
        pooled = np.sqrt((c["sd_persona"] ** 2 + c["sd_plain"] ** 2) / 2)
        flat = c[~(pooled > 0)]
        if len(flat):
            notes.append(
                f"{len(flat)} cell(s) with zero participant SD cannot be standardised "
                "and are left out"
            )
        c, pooled, se = c[pooled > 0], pooled[pooled > 0], se[pooled > 0]
        c["y"], c["se"] = c["mean"] / pooled, se / pooled
    zero = c[~(c["se"] > 0)]
    if len(zero):
        # All participants' differences equal: the cell's likelihood would be a spike.
        notes.append(
            f"{len(zero)} cell(s) whose participant differences are all equal left out "
            "(identical persona and plain scores?)"
        )
        c = c[c["se"] > 0]
    if c.empty:
        raise WarehouseError(
            "fit persona: no usable cells (each needs at least 2 participants "
            "whose persona-minus-plain differences vary); " + "; ".join(notes)
        )
    types = models.set_index("name")["post_training"]
    c["post_training"] = c["model"].map(types).fillna("unregistered")
    return PersonaData(cells=c.reset_index(drop=True), scale=scale, rope=rope, notes=notes)


def build_persona_model(
    data: PersonaData, priors: PersonaPriors | None = None, *, model_effects: str = "fixed"
):
    """The PyMC persona model; returns ``(model, spec)`` (see ``docs/model.md``).

    ``model_effects="fixed"`` (default): one effect per model, ``persona_effect``
    = the average over the type's scored models.  ``"random"``: models are a
    sample from a population of models of that type (``sigma_model``), which
    needs several models per type to say anything beyond the prior.
    """
    if model_effects not in ("fixed", "random"):
        raise WarehouseError(f"model_effects must be 'fixed' or 'random', not {model_effects!r}")
    import pymc as pm
    import pytensor.tensor as pt

    c = data.cells
    p = (priors or PersonaPriors()).resolved(c, data.rope)
    types = sorted(set(c["post_training"]))
    model_names = sorted(set(c["model"]))
    exps = sorted(set(c["experiment"]))
    spec: dict[str, Any] = dict(
        kind=KIND,
        scale=data.scale,
        rope=data.rope,
        likelihood="cell mean ~ Normal(mu + intercepts, sqrt(sigma_cell^2 + var/n)); the "
        "experiment (and random model) intercepts integrated out: one observed multivariate "
        "normal over cells (stats.likelihoods.marginal_normal)",
        terms={},
        dropped={},
    )
    use_model = bool((c.groupby("post_training")["model"].nunique() >= 2).any())
    spec["model_effects"] = model_effects if use_model else "fixed"
    spec["terms"]["model"] = (
        "random intercept over models of a type (integrated out analytically)"
        if model_effects == "random" and use_model
        else "one effect per model; persona_effect = average over the type's models"
    )
    use_exp = len(exps) >= 2
    spec["terms" if use_exp else "dropped"]["experiment"] = (
        "random intercept over experiments (integrated out analytically; persona_effect is "
        "the effect in a typical experiment)"
        if use_exp
        else "one experiment only"
    )
    use_cell = len(c) > len(model_names) + (len(exps) - 1 if use_exp else 0)
    spec["terms" if use_cell else "dropped"]["cell residual"] = (
        "model x experiment residual" if use_cell else "one cell per parameter: not identified"
    )

    coords = {"post_training": types, "cell": np.arange(len(c)), "model": model_names}
    m_idx = pd.Index(model_names).get_indexer(c["model"])
    model_type = (
        c.drop_duplicates("model").set_index("model").loc[model_names, "post_training"].to_numpy()
    )
    with pm.Model(coords=coords) as model:
        var = c["se"].to_numpy(float) ** 2
        if use_cell:
            s_c = pm.HalfNormal("sigma_cell", p["cell_sd"])
            var = s_c**2 + var
        factors = []
        if model_effects == "fixed" or not use_model:
            # Each model's own effect; persona_effect[type] is their average: the effect for
            # the models that were scored (no funnel however few models a type has).
            per_model = pm.Normal("persona_model_effect", 0.0, p["effect_sd"], dims="model")
            avg = np.zeros((len(types), len(model_names)))
            for j, t in enumerate(model_type):
                avg[types.index(t), j] = 1.0
            avg /= avg.sum(axis=1, keepdims=True)
            pm.Deterministic(
                "persona_effect", pt.dot(pt.as_tensor(avg), per_model), dims="post_training"
            )
            mu = per_model[m_idx]
        else:
            # Population of models: persona_effect[type] is the mean of a Normal over models,
            # the model intercepts integrated out exactly.
            effect = pm.Normal("persona_effect", 0.0, p["effect_sd"], dims="post_training")
            mu = effect[pd.Index(types).get_indexer(c["post_training"])]
            factors.append((m_idx, len(model_names), pm.HalfNormal("sigma_model", p["model_sd"])))
        if use_exp:
            # Experiment random intercept, integrated out exactly (no funnel for small sigma).
            factors.append(
                (
                    pd.Index(exps).get_indexer(c["experiment"]),
                    len(exps),
                    pm.HalfNormal("sigma_experiment", p["experiment_sd"]),
                )
            )
        if factors:
            # Observed multivariate normal with the intercepts integrated out exactly: same
            # density as before, but with predictive draws and exact LOO densities.
            marginal_normal("obs", mu, var, factors, c["y"].to_numpy(float), dims="cell")
        else:
            spec["likelihood"] = "cell mean ~ Normal(mu, sqrt(sigma_cell^2 + var/n))"
            pm.Normal(
                "obs", mu=mu, sigma=pt.sqrt(var), observed=c["y"].to_numpy(float), dims="cell"
            )
    spec["priors"] = p
    return model, spec


PARAMS = ["persona_effect", "persona_model_effect", "sigma_model", "sigma_experiment", "sigma_cell"]


def persona_units(scale: str) -> dict[str, str]:
    """The unit of every reported parameter: the cell values' (``nats`` per response or ``SD``)."""
    return same_unit(PARAMS, outcome_unit(scale))


def verdict(p_in: float, p_benefit: float, p_harm: float) -> str:
    """The ROPE decision rule (docs/model.md): the statement whose posterior mass reaches DECISION."""
    if p_in >= DECISION:
        return "practically equivalent to no effect"
    if p_benefit >= DECISION:
        return "persona helps"
    if p_harm >= DECISION:
        return "persona hurts"
    return "undecided"


def _sd_deciding(mean: float, rope: float) -> tuple[float, str | None]:
    """The posterior SD at which a Normal(mean, sd) posterior reaches a verdict, and which.

    Inside the ROPE (|mean| < rope): the sd with P(|x| < rope) = DECISION;
    outside: the sd with P(x beyond the ROPE on mean's side) = DECISION.
    On the ROPE's edge no sd decides: (0, None).
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    z = float(norm.ppf(DECISION))
    gap = abs(mean) - rope
    if gap > 0:
        return gap / z, "persona helps" if mean < 0 else "persona hurts"
    if gap == 0:
        return 0.0, None

    def mass_in(sd: float) -> float:
        return float(norm.cdf((rope - mean) / sd) - norm.cdf((-rope - mean) / sd)) - DECISION

    # mass_in falls from 1 - DECISION (sd -> 0) to -DECISION (sd -> infinity).
    hi = rope
    while mass_in(hi) > 0:
        hi *= 2
    return float(brentq(mass_in, hi * 1e-9, hi, xtol=1e-14 * rope)), (
        "practically equivalent to no effect"
    )


def data_size(draws: np.ndarray, rope: float, participants: int) -> dict[str, Any]:
    """How wide the 90% interval is against the ROPE, and roughly how much more data would decide.

    A rough guide, not a power analysis: the posterior is taken as
    Normal(mean, sd) of the draws, its mean as staying where it is, and its SD
    as shrinking as 1/sqrt(n) with the data (true while the participants'
    noise dominates; spread between experiments and models shrinks only with
    more experiments and models).  ``data_factor`` is then (sd / sd*)^2, sd*
    the SD at which the verdict rule decides (:func:`_sd_deciding`), at least
    1; ``participants_needed`` = that factor x ``participants``.  None when
    already decided or when no amount of data would move a mean that sits on
    the ROPE's edge.
    """
    x = np.asarray(draws, dtype=float).ravel()
    q05, q95 = (float(v) for v in np.quantile(x, [0.05, 0.95]))
    width, rope_width = q95 - q05, 2 * rope
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    decided = verdict(prob(np.abs(x) < rope), prob(x < -rope), prob(x > rope)) != "undecided"
    out: dict[str, Any] = dict(
        interval_width_90=width,
        rope_width=rope_width,
        width_over_rope=width / rope_width,
        participants=int(participants),
        decidable_as=None,
        data_factor=None,
        participants_needed=None,
    )
    head = f"the 90% interval is {width:.3g} wide against a ROPE {rope_width:.3g} wide"
    if decided:
        out["statement"] = f"{head}; decided with the data at hand"
        return out
    sd_star, what = _sd_deciding(mean, rope)
    if what is None or sd_star <= 0:
        out["statement"] = (
            f"{head}; the mean sits on the ROPE's edge, so more data of the same kind "
            "would not decide it"
        )
        return out
    factor = max(1.0, (sd / sd_star) ** 2)
    needed = int(np.ceil(factor * participants))
    out.update(decidable_as=what, data_factor=factor, participants_needed=needed)
    out["statement"] = (
        f"{head}; if the mean stayed at {mean:+.3g} and the interval narrowed as 1/sqrt(n), "
        f"about {factor:.3g} times the data (about {needed} participants instead of "
        f"{participants}) would decide it ({what})"
    )
    return out


def type_participants(cells: pd.DataFrame, post_training: str) -> int:
    """Participants behind a type's effect: per experiment, the most any of its models had."""
    c = cells[cells["post_training"] == post_training]
    return int(c.groupby("experiment")["n"].max().sum()) if len(c) else 0


def summarise_persona(idata, data: PersonaData) -> dict:
    """ROPE probabilities, a verdict and the data-size line per post-training type."""
    rope = data.rope
    out: dict[str, Any] = {
        "rope": [-rope, rope],
        "scale": data.scale,
        "decision_mass": DECISION,
        "units": persona_units(data.scale),
        "by_post_training": {},
    }
    post = idata.posterior["persona_effect"]
    for t in post.coords["post_training"].values:
        x = post.sel(post_training=t).values.ravel()
        p_in, p_ben, p_harm = prob(np.abs(x) < rope), prob(x < -rope), prob(x > rope)
        out["by_post_training"][str(t)] = dict(
            mean=float(x.mean()),
            q05=float(np.quantile(x, 0.05)),
            q95=float(np.quantile(x, 0.95)),
            p_in_rope=p_in,
            p_benefit=p_ben,
            p_harm=p_harm,
            verdict=verdict(p_in, p_ben, p_harm),
            n_models=int(data.cells.loc[data.cells["post_training"] == t, "model"].nunique()),
            data_size=data_size(x, rope, type_participants(data.cells, str(t))),
        )
    return out


MODEL_EFFECTS = ("fixed", "random")


@dataclass(frozen=True)
class PersonaSpec(AnalysisSpec):
    """What ``fit persona`` fits beyond its selection: the scale, the ROPE half-width
    (None: :data:`DEFAULT_ROPE` of the scale), fixed or random model effects, the prior
    scales (:class:`PersonaPriors` or a dict of its fields; default: from the data)."""

    KIND = "persona"
    scale: str = "nats"
    rope: float | None = None
    model_effects: str = "fixed"
    priors: PersonaPriors | None = None

    def __post_init__(self) -> None:
        validated("scale", OneOf(SCALES), self.scale)
        validated("model_effects", OneOf(MODEL_EFFECTS), self.model_effects)
        object.__setattr__(self, "rope", ANALYSIS["rope"].validate(self.rope))
        object.__setattr__(self, "priors", options_of(PersonaPriors, self.priors, "priors"))


@fit_entry(KIND, PersonaSpec, ["models", "experiments"])
def fit_persona(con, call: FitCall) -> FitResult:
    """Load, build, sample, check and store a persona fit (the fit contract, docs/api.md).

    The persona condition is ``selection.post_condition`` (default
    ``"persona"``), compared with ``selection.base`` (``base_condition``, else
    ``condition``; default ``"plain"``); models and experiments narrow it.
    Returns the pipeline's :class:`~psystats.stats.pipeline.FitResult`
    (``data``: the :class:`PersonaData`): its summary holds the ROPE
    statements, the posterior predictive check of the cells (``ppc``) and
    PSIS-LOO over cells (``loo``; exact leave-one-cell-out densities of the
    marginal normal).
    """
    sel, ps = call.selection, call.spec
    sel.check_names(con)
    persona, plain = sel.post_condition or PERSONA_CONDITION, sel.base
    cells = persona_cells(
        con,
        persona_condition=persona,
        plain_condition=plain,
        models=sel.only("models"),
        experiments=sel.only("experiments"),
    )
    data = prepare_persona(cells, load_models(con), scale=ps.scale, rope=ps.rope)
    data.selection = dict(
        persona_condition=persona,
        plain_condition=plain,
        models=sel.only("models"),
        experiments=sel.only("experiments"),
        runs={
            m: {
                "persona": sorted(set(map(int, g["persona_run_id"]))),
                "plain": sorted(set(map(int, g["plain_run_id"]))),
            }
            for m, g in data.cells.groupby("model")
        },
        n_cells=len(data.cells),
        notes=data.notes,
    )
    model, model_spec = build_persona_model(data, ps.priors, model_effects=ps.model_effects)
    c = data.cells
    return call.run_fit(
        model,
        con,
        kind=KIND,
        observed=["obs"],
        observation_labels={"obs": [f"{m} / {e}" for m, e in zip(c["model"], c["experiment"])]},
        summarise=lambda idata: summarise_persona(idata, data),
        **built(model_spec, data),
        condition=f"{persona} vs {plain}",
        scale=ps.scale,
        what=f"{len(c)} cells, {c['model'].nunique()} models, {c['experiment'].nunique()} "
        "experiments",
        params=ParamRows(var_names=[n for n in PARAMS if n in model.named_vars]),
    )


def simulate_persona(
    con,
    *,
    effects: dict[str, float] | None = None,
    models_per_type: int = 2,
    model_sd: float = 0.0,
    difference_sd: float = 0.05,
    persona_condition: str = "persona",
    plain_condition: str = "plain",
    seed: int = 0,
) -> dict:
    """Write plain and persona runs with a known persona effect per post-training type.

    For each type, ``models_per_type`` models (post-trained ones get the
    first base as ``base_model``).  Per response: plain NLL = 1 + Exponential(1);
    persona NLL = plain NLL + effect[type] + model deviation (N(0, model_sd))
    + d_i, d_i ~ N(0, difference_sd) per participant.  Returns the truth.
    """
    from psystats.warehouse.sql import transaction

    from .simulate import register_models, responses_frame, write_run

    effects = effects or {"base": 0.0, "instruct": -0.1}
    rng = np.random.default_rng(seed)
    resp = responses_frame(con)
    parts = sorted(set(resp["participant_key"]))
    rows, runs = [], []
    first_base = None
    for t, eff in effects.items():
        for j in range(models_per_type):
            name = f"sim-persona-{t}-{j}"
            if t == "base" and first_base is None:
                first_base = name
            rows.append(
                dict(
                    name=name,
                    family="sim",
                    generation="1",
                    generation_order=1.0,
                    post_training=t,
                    base_model=None if t == "base" else first_base,
                )
            )
            plain = 1.0 + rng.exponential(1.0, len(resp))
            shift = eff + rng.normal(0.0, model_sd) if model_sd else eff
            d = dict(zip(parts, rng.normal(0.0, difference_sd, len(parts))))
            runs += [
                (name, plain_condition, plain),
                (
                    name,
                    persona_condition,
                    plain + shift + resp["participant_key"].map(d).to_numpy(),
                ),
            ]
    with transaction(con):
        register_models(con, rows)
        for model, cond, nll in runs:
            write_run(con, model, cond, resp["response_id"], nll)
    return {"persona_effect": dict(effects)}
