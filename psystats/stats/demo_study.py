"""A SIMULATED study with known effects on a warehouse's real responses (the demo's second part).

The demo's real scoring step compares one small pair; it cannot fill the
report's family, size, generation, domain and persona pages.  This module
writes, for the responses already in the warehouse (the embedded Psych-201
sample), the files of a clearly labelled simulated study:

* ``models.toml`` — two families (``SIM-qwen``, ``SIM-llama``) x two
  generations, each a base with an instruct and a reasoning model on top,
  with parameter counts (``psystats models load``);
* one Parquet of per-response NLLs per model in condition ``sim`` and, for
  the second generation, in condition ``sim-persona``
  (``psystats scores import``);
* for the second generation, one more per model in condition ``sim-history:0``:
  its ``sim`` scores as if the participant's earlier answers were removed, with a
  known task-information gain per type (``fit persona --persona-condition
  sim-history:0 --plain-condition sim``; the report's task-information page);
* in the post-trained models' ``sim`` scores (and so in their ``sim-persona`` and
  ``sim-history:0`` scores, which add to them), a known effect of the participants'
  ``age`` on the post-minus-base gap (``fit participants --condition sim --covariates
  age``; the report's participants page);
* for the second generation, a Parquet of option scores (the log-probability
  of each option of the discrete-choice responses) beside the ``sim`` scores
  (``psystats scores import ... --options``), with a known accuracy gap;
* ``truth.json`` — the values the fits should recover.

Every SIM-* model is registered with ``pipeline_check`` set, so each report
page that shows it carries a caveat: its scores are made up.

Post-minus-base differences follow the effects model (docs/model.md):

    d_i ~ N(mu_c, participant_sd),
    mu_c = intercept + type_t + family_f + size_slope * x_p + generation_slope * g_p + domain_d

with x the centred log parameter count and g the generation centred within
the family, so ``type_mean``, ``family``, ``size_slope``,
``generation_slope`` and ``domain`` of ``psystats fit effects --condition
sim`` estimate exactly the truth.  Base NLLs fall by ``base_slope[family]``
per generation (``fit generations``), a persona prompt shifts each
response's NLL by ``persona[type]`` (``fit persona``), and removing the
history by ``task_information[type]``.

The age effect: each participant i whom ``fit participants --covariates age`` uses (those
with an age, in experiments where at least ``MIN_CELL_PARTICIPANTS`` have one) has every
post-trained model's NLLs shifted by ``age_effect * (z_i - mean_e z)``, z_i its age
standardised over those participants exactly as the fit standardises it (mean, SD with
ddof 1), mean_e z the mean over those participants of its experiment.  The shift is a
constant per participant and zero-mean over the participants of each experiment, so every
cell mean above (and the persona, history and floors truths, which contrast or average
them) stays as it was (the floors' per-response expectation exactly so when the
participants of an experiment gave equally many responses, as in the embedded sample);
the fit's cell intercepts absorb mean_e z, so its ``effect`` for age (nats per SD)
estimates ``age_effect`` and its ``slope`` ``age_effect / SD(age)``.  ``truth.json`` also holds every SIM
model's expected NLL per response in each experiment (``floors``): the
report's floors page compares the SIM models with the real floors
(``psystats score --model baseline:frequency``: one run serves every
condition), which are fixed functions of the responses, so each model's
distance to a floor is known up to the simulation's noise.

Option scores follow ``psystats.stats.accuracy.simulate_accuracy``'s model:
for each response with options O (the distinct responses of its
experiment, when there are at most ``MAX_OPTIONS``), z_o = beta_m 1[o =
response] + N(0, 1) and logprob = log softmax(sharpness_m z), so beta sets
the top-1 accuracy and sharpness the over-confidence (``fit accuracy``).
:func:`compare` prints every estimate beside its truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

CONDITION = "sim"
PERSONA_CONDITION = "sim-persona"
# The simulated study's own history window: its `sim` scores with every earlier answer
# removed (the report's task-information page reads `<prefix>-history:K` against `<prefix>`).
HISTORY_CONDITION = "sim-history:0"
FIT_NAME = "SIMULATED study"
FAMILIES = ("SIM-qwen", "SIM-llama")
GENERATIONS = (1, 2)
TYPES = ("instruct", "reasoning")
TRUTH: dict[str, Any] = {
    "intercept": 0.15,
    "type": {"instruct": -0.12, "reasoning": 0.12},  # sums to zero
    "family": {"SIM-qwen": 0.06, "SIM-llama": -0.06},
    "size_slope": -0.05,  # per unit of log parameter count
    "generation_slope": 0.08,  # per generation step
    "base_slope": {"SIM-qwen": -0.30, "SIM-llama": -0.15},
    "persona": {"base": 0.0, "instruct": -0.10, "reasoning": 0.05},
    # Task-information gain: NLL at history:0 minus NLL with the whole history, per type
    # (positive: the person's own earlier answers help the model).
    "task_information": {"base": 0.30, "instruct": 0.15, "reasoning": 0.40},
    "domain_range": 0.2,  # domain effects spread evenly over [-range, range]
    "participant_sd": 0.1,
    # fit participants: the gap's change per SD of age (older participants: larger gap).
    "age_effect": 0.1,
    # Option scores: accuracy (beta) and over-confidence (sharpness) per type.
    "option_beta": {"base": 1.0, "instruct": 1.8, "reasoning": 0.6},
    "option_sharpness": {"base": 1.0, "instruct": 3.0, "reasoning": 0.6},
}
MAX_OPTIONS = 20  # an experiment with more distinct responses is not discrete choice
PIPELINE_CHECK = (
    "SIMULATED scores with known effects (psystats simulate study): a check that the "
    "fits recover what was put in"
)
# Parameter counts per (family, generation): not a sum of a family and a generation
# part, so size stays separable from family and generation.
N_PARAMS = {
    ("SIM-qwen", 1): 5e8,
    ("SIM-qwen", 2): 7e9,
    ("SIM-llama", 1): 1e9,
    ("SIM-llama", 2): 7e10,
}


def model_name(family: str, generation: int, kind: str) -> str:
    return f"{family}{generation}-{kind}"


def truth_fit_name(truth: dict) -> str:
    """The name of the fits a truth file describes (``fits.name``)."""
    return str(truth.get("fit_name") or FIT_NAME)


def option_files(out: Path) -> dict[str, Path]:
    """model -> its option-scores file (imported with its ``sim`` scores via ``--options``)."""
    return {
        model_name(f, GENERATIONS[-1], kind): out / f"{model_name(f, GENERATIONS[-1], kind)}"
        f".{CONDITION}.options.parquet"
        for f in FAMILIES
        for kind in ("base", *TYPES)
    }


def study_files(out: Path) -> list[tuple[str, str, Path]]:
    """(model, condition, path) of every score file :func:`write_study` writes, in order."""
    files = []
    for f in FAMILIES:
        for g in GENERATIONS:
            for kind in ("base", *TYPES):
                name = model_name(f, g, kind)
                conds = (
                    (CONDITION, PERSONA_CONDITION, HISTORY_CONDITION)
                    if g == GENERATIONS[-1]
                    else (CONDITION,)
                )
                files += [(name, c, out / f"{name}.{c}.parquet") for c in conds]
    return files


def _responses(con) -> pd.DataFrame:
    rows = con.execute(
        "SELECT r.response_id, r.participant_key, r.experiment, e.domain, trim(r.text) "
        "FROM responses r LEFT JOIN experiments e USING (experiment) ORDER BY r.response_id"
    ).fetchall()
    if not rows:
        raise WarehouseError("the warehouse has no responses: ingest studies first")
    resp = pd.DataFrame(
        rows, columns=["response_id", "participant_key", "experiment", "domain", "text"]
    )
    resp["domain"] = resp["domain"].fillna("(no domain)")
    return resp


# Base NLL = |level + participant + response noise| + 0.05: the two noise SDs.
PARTICIPANT_SD, RESPONSE_SD = 0.3, 0.3


def abs_normal_mean(mean: float, sd: float) -> float:
    """E|X| for X ~ Normal(mean, sd) (the folded normal's mean)."""
    from scipy.stats import norm

    return float(sd * np.sqrt(2 / np.pi) * np.exp(-(mean**2) / (2 * sd**2))) + mean * (
        1 - 2 * float(norm.cdf(-mean / sd))
    )


def age_shift(con, resp: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """Per response: the post-trained models' known age shift (module docstring), and the
    ``participants`` truth section (empty when no experiment has enough ages)."""
    from .participants import MIN_CELL_PARTICIPANTS

    ages = dict(
        con.execute(
            "SELECT participant_key, age FROM participants WHERE age IS NOT NULL"
        ).fetchall()
    )
    people = resp.drop_duplicates("participant_key")[["participant_key", "experiment"]]
    people = people[people["participant_key"].isin(list(ages))].copy()
    people["age"] = people["participant_key"].map(ages).astype(float)
    n = people.groupby("experiment")["participant_key"].transform("size")
    people = people[n >= MIN_CELL_PARTICIPANTS]
    if len(people) < 2 or not people["age"].std(ddof=1) > 0:
        return np.zeros(len(resp)), {}
    mean, sd = float(people["age"].mean()), float(people["age"].std(ddof=1))
    z = (people["age"] - mean) / sd
    beta = TRUTH["age_effect"]
    shift = beta * (z - z.groupby(people["experiment"]).transform("mean"))
    by_person = dict(zip(people["participant_key"], shift))
    section = {"effect": {"age": beta}, "slope": {"age": beta / sd}}
    return resp["participant_key"].map(by_person).fillna(0.0).to_numpy(float), section


def write_study(con, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Write models.toml, the score files and truth.json into ``out``; returns the truth."""
    resp = _responses(con)
    if not option_sets(resp):  # checked before any file is written
        raise WarehouseError(
            "simulate study needs an experiment with 2 to "
            f"{MAX_OPTIONS} distinct answers (discrete choice, for the option scores); the "
            "warehouse holds none: ingest such a study too"
        )
    rng = np.random.default_rng(seed)
    # What was added later (history windows) draws from a stream of its own, so every
    # file an earlier version wrote for a seed stays as it was.
    rng_history = np.random.default_rng([seed, 1])
    out.mkdir(parents=True, exist_ok=True)

    domains = sorted(resp["domain"].unique())
    spread = np.linspace(-TRUTH["domain_range"], TRUTH["domain_range"], len(domains))
    domain_eff = dict(zip(domains, spread - spread.mean()))
    exps = sorted(resp["experiment"].unique())
    exp_level = dict(zip(exps, rng.normal(0, 0.5, len(exps))))  # base NLL level per experiment
    exp_domain = dict(zip(resp.experiment, resp.domain))

    pairs = [(f, g, t) for f in FAMILIES for g in GENERATIONS for t in TYPES]
    logn = {fg: np.log(n) for fg, n in N_PARAMS.items()}
    size_centre = float(np.mean([logn[(f, g)] for f, g, _ in pairs]))
    gen_centre = {f: float(np.mean([g for ff, g, _ in pairs if ff == f])) for f in FAMILIES}

    participants = resp.drop_duplicates("participant_key")[["participant_key", "experiment"]]
    u = dict(zip(participants.participant_key, rng.normal(0, PARTICIPANT_SD, len(participants))))
    # No draw: every other file of a seed stays as an earlier version wrote it.
    by_age, age_truth = age_shift(con, resp)
    files: list[dict] = []
    plain: dict[str, np.ndarray] = {}  # model -> its `sim` NLLs
    levels: dict[str, dict[str, float]] = {}  # model -> experiment -> expected NLL
    models_toml = ["# SIMULATED models of the demo's simulated study (psystats.stats.demo_study)\n"]

    def save(name: str, condition: str, nll: np.ndarray) -> None:
        path = out / f"{name}.{condition}.parquet"
        pd.DataFrame({"response_id": resp["response_id"], "nll": nll}).to_parquet(path, index=False)
        files.append({"model": name, "condition": condition, "path": str(path)})
        if condition == CONDITION:
            plain[name] = nll

    cell_truth = []
    for f in FAMILIES:
        for g in GENERATIONS:
            base = model_name(f, g, "base")
            models_toml.append(_toml(base, "base", f, g))
            level = {
                e: 2.0 + exp_level[e] + TRUTH["base_slope"][f] * (g - gen_centre[f]) for e in exps
            }
            base_nll = (
                resp["experiment"].map(level).to_numpy()
                + resp["participant_key"].map(u).to_numpy()
                + rng.normal(0, RESPONSE_SD, len(resp))
            )
            base_nll = np.abs(base_nll) + 0.05  # an NLL is positive
            sd = float(np.hypot(PARTICIPANT_SD, RESPONSE_SD))
            levels[base] = {e: abs_normal_mean(a, sd) + 0.05 for e, a in level.items()}
            save(base, CONDITION, base_nll)
            with_persona = g == GENERATIONS[-1]
            if with_persona:
                _save_options(out / f"{base}.{CONDITION}.options.parquet", resp, "base", rng)
            if with_persona:
                save(
                    base, PERSONA_CONDITION, base_nll + _shift(resp, TRUTH["persona"]["base"], rng)
                )
            for t in TYPES:
                post = model_name(f, g, t)
                models_toml.append(_toml(post, t, f, g, base))
                pair_mu = (
                    TRUTH["intercept"]
                    + TRUTH["type"][t]
                    + TRUTH["family"][f]
                    + TRUTH["size_slope"] * (logn[(f, g)] - size_centre)
                    + TRUTH["generation_slope"] * (g - gen_centre[f])
                )
                mu = {e: pair_mu + domain_eff[d] for e, d in exp_domain.items()}
                d_i = {
                    p: rng.normal(mu[e], TRUTH["participant_sd"])
                    for p, e in zip(participants.participant_key, participants.experiment)
                }
                post_nll = base_nll + resp["participant_key"].map(d_i).to_numpy() + by_age
                levels[post] = {e: levels[base][e] + mu[e] for e in exps}
                save(post, CONDITION, post_nll)
                if with_persona:
                    save(post, PERSONA_CONDITION, post_nll + _shift(resp, TRUTH["persona"][t], rng))
                    _save_options(out / f"{post}.{CONDITION}.options.parquet", resp, t, rng)
                cell_truth.append({"pair": f"{post} vs {base}", "mean": pair_mu})
    for f in FAMILIES:  # the second generation without the participants' history
        for kind in ("base", *TYPES):
            name = model_name(f, GENERATIONS[-1], kind)
            gain = TRUTH["task_information"][kind]
            save(name, HISTORY_CONDITION, plain[name] + _shift(resp, gain, rng_history))
    (out / "models.toml").write_text("\n".join(models_toml))
    truth = _truth(domain_eff, cell_truth, logn, levels, option_sets(resp))
    if age_truth:
        truth["participants"] = age_truth
    truth.update(files=files, seed=seed)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _toml(name: str, kind: str, family: str, generation: int, base: str | None = None) -> str:
    return (
        f'[[models]]\nname = "{name}"\ntype = "{kind}"\n'
        + (f'base = "{base}"\n' if base else "")
        + f'family = "{family}"\ngeneration = "{generation}"\n'
        f"n_params = {int(N_PARAMS[(family, generation)])}\n"
        f'pipeline_check = "{PIPELINE_CHECK}"\n'
    )


def _truth(
    domain_eff: dict,
    cell_truth: list[dict],
    logn: dict,
    levels: dict[str, dict[str, float]],
    sets: dict[str, list[str]],
) -> dict[str, Any]:
    """What the fits (and the floors page) should recover (``truth.json`` less its files)."""
    return {
        "about": "SIMULATED study on the sample's real responses: known effects",
        "fit_name": FIT_NAME,
        "condition": CONDITION,
        "persona_condition": PERSONA_CONDITION,
        "history_condition": HISTORY_CONDITION,
        "effects": {
            "intercept": TRUTH["intercept"],
            "type_mean": {t: TRUTH["intercept"] + v for t, v in TRUTH["type"].items()},
            "family": TRUTH["family"],
            "size_slope": TRUTH["size_slope"],
            "generation_slope": TRUTH["generation_slope"],
            "domain": domain_eff,
            "pair_mean": {c["pair"]: c["mean"] for c in cell_truth},
        },
        "generations": {
            "base_slope": TRUTH["base_slope"],
            # Within a family the size changes with the generation, so the gap's
            # change per generation step carries both slopes.
            "gap_slope": {
                f: TRUTH["generation_slope"]
                + TRUTH["size_slope"]
                * (logn[(f, GENERATIONS[-1])] - logn[(f, GENERATIONS[0])])
                / (GENERATIONS[-1] - GENERATIONS[0])
                for f in FAMILIES
            },
        },
        "persona": {"persona_effect": TRUTH["persona"]},
        # The persona model's contrast of sim-history:0 against sim: per type the gain.
        "task_information": {"persona_effect": TRUTH["task_information"]},
        "accuracy": accuracy_truth(sets),
        # Expected NLL per response of every SIM model in each experiment (over
        # participants and responses): model − floor on the floors page is this minus the
        # floor's own mean on the same participants (a floor is a fixed function of the
        # responses, scored for real).
        "floors": {"expected_nll": levels},
    }


def option_sets(resp: pd.DataFrame) -> dict[str, list[str]]:
    """Experiment -> its options: the distinct (trimmed) responses, when 2..MAX_OPTIONS."""
    sets = resp.groupby("experiment")["text"].agg(lambda t: sorted(set(t)))
    return {str(e): list(o) for e, o in sets.items() if 2 <= len(o) <= MAX_OPTIONS}


def _save_options(path: Path, resp: pd.DataFrame, kind: str, rng) -> None:
    """Option log-probs of every discrete-choice response for a model of type ``kind``."""
    from scipy.special import log_softmax

    beta, sharp = TRUTH["option_beta"][kind], TRUTH["option_sharpness"][kind]
    parts = []
    for exp, opts in option_sets(resp).items():
        g = resp[resp["experiment"] == exp]
        z = rng.normal(size=(len(g), len(opts)))
        z[np.arange(len(g)), pd.Index(opts).get_indexer(g["text"])] += beta
        parts.append(
            pd.DataFrame(
                {
                    "response_id": np.repeat(g["response_id"].to_numpy(), len(opts)),
                    "option": np.tile(opts, len(g)),
                    "logprob": log_softmax(sharp * z, axis=1).ravel(),
                }
            )
        )
    pd.concat(parts, ignore_index=True).to_parquet(path, index=False)


def expected_accuracy(beta: float, k: int, *, draws: int = 100_000, seed: int = 0) -> dict:
    """Monte-Carlo truth of the option model: top-1 accuracy and the calibrated
    probability of the response, E[softmax(beta z)_response] (Bayes' rule)."""
    from scipy.special import log_softmax

    z = np.random.default_rng(seed).normal(size=(draws, k))
    z[:, 0] += beta
    return {
        "top1": float(np.mean(z.argmax(axis=1) == 0)),
        "calibrated": float(np.exp(log_softmax(beta * z, axis=1)[:, 0]).mean()),
    }


def accuracy_truth(sets: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per post-training type: the logit accuracy gap (post minus base), raw top-1 and
    calibrated, averaged over the discrete-choice experiments (``fit accuracy``'s
    ``accuracy_gap`` / ``accuracy_gap_calibrated``)."""

    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))

    ks = [len(o) for o in sets.values()]
    b = TRUTH["option_beta"]
    acc = {(t, k): expected_accuracy(b[t], k) for t in b for k in set(ks)}
    out: dict[str, dict[str, float]] = {"accuracy_gap": {}, "accuracy_gap_calibrated": {}}
    for t in TYPES:
        for key, name in (("top1", "accuracy_gap"), ("calibrated", "accuracy_gap_calibrated")):
            gaps = [logit(acc[(t, k)][key]) - logit(acc[("base", k)][key]) for k in ks]
            out[name][t] = float(np.mean(gaps)) if gaps else float("nan")
    return out


def _shift(resp: pd.DataFrame, effect: float, rng) -> np.ndarray:
    """Per response: a condition's known effect, a per-participant wobble and response noise.

    The noise keeps every cell's variance well estimated even with two
    participants (near-zero variances make the persona posterior needle-sharp
    and slow to sample)."""
    parts = resp["participant_key"].unique()
    wobble = dict(zip(parts, rng.normal(0, 0.05, len(parts))))
    noise = rng.normal(0, 0.2, len(resp))
    return effect + resp["participant_key"].map(wobble).to_numpy() + noise


# Truth sections that fits estimate: section -> (fit kind, truth key of the fit's first
# condition).  The persona model fits two of them, told apart by their conditions
# (``fits.condition`` = "<first> vs <second>", the second being the study's condition).
FITTED = {
    "effects": ("effects", None),
    "generations": ("generations", None),
    "persona": ("persona", "persona_condition"),
    "task_information": ("persona", "history_condition"),
    "accuracy": ("accuracy", None),
    "participants": ("participants", None),
}


def _flat(truth: dict) -> list[tuple[str, str, str | None, float]]:
    rows: list[tuple[str, str, str | None, float]] = []
    for kind in FITTED:
        for param, v in truth.get(kind, {}).items():
            if isinstance(v, dict):
                rows += [(kind, param, str(k), float(x)) for k, x in v.items()]
            else:
                rows.append((kind, param, None, float(v)))
    return rows


def _fit_of(con, truth: dict, section: str) -> int | None:
    """The newest simulated-study fit that estimates ``section`` of the truth."""
    kind, key = FITTED[section]
    sql = "SELECT max(fit_id) FROM fits WHERE kind = ? AND name = ?"
    params = [kind, truth_fit_name(truth)]
    first = truth.get(key) if key else None
    if first:
        sql += " AND condition = ?"
        params.append(f"{first} vs {truth.get('condition') or CONDITION}")
    fit = con.execute(sql, params).fetchall()[0][0]
    return None if fit is None else int(fit)


def compare(con, truth: dict) -> pd.DataFrame:
    """Every estimate of the newest simulated-study fit of each kind beside its truth.

    Columns: kind (the truth's section: effects, generations, persona,
    task_information, accuracy, participants), fit_id, parameter, level, truth, mean, q05,
    q95, inside (truth within the 90% interval).  Sections without a fit are
    left out.
    """
    out = []
    fits = {section: _fit_of(con, truth, section) for section in FITTED}
    for kind, param, level, value in _flat(truth):
        fit = fits[kind]
        if fit is None:
            continue
        rows = con.execute(
            "SELECT label, coords, mean, q05, q95 FROM fit_params WHERE fit_id = ? AND "
            "parameter = ?",
            [fit, param],
        ).fetchall()
        for label, coords, mean, q05, q95 in rows:
            vals = set(json.loads(coords).values()) if coords else set()
            if level is None or level == label or level in vals:
                out.append(
                    dict(
                        kind=kind,
                        fit_id=int(fit),
                        parameter=param,
                        level=level or "",
                        truth=value,
                        mean=mean,
                        q05=q05,
                        q95=q95,
                        inside=bool(q05 <= value <= q95),
                    )
                )
                break
    return pd.DataFrame(
        out,
        columns=["kind", "fit_id", "parameter", "level", "truth", "mean", "q05", "q95", "inside"],
    )
