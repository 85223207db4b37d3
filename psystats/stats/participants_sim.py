"""A simulated warehouse for ``fit participants``: participants with metadata and a
post-trained model whose gap to its base depends on that metadata by known amounts.

:func:`simulate_participants` adds synthetic experiments
(:func:`.simulate.add_synthetic_experiments`), gives each participant an ``age``
(participants.age), a ``gender`` (participants.gender) and an ``anxiety`` score
(participant_metadata, numeric), each missing for a chosen share of participants, and
writes a base and a post-trained model's complete runs.  Per participant i of experiment e

    d_i = a_e + slope_age * age_i + slope_anxiety * anxiety_i + gender_effect[gender_i]
          + N(0, residual_sd),           a_e ~ N(0.1, experiment_sd)

(a missing covariate still has a true value: missingness is at random), each response's
base NLL is 1 + Exponential(1) and its post-trained NLL base + d_i, so the participant's
mean gap is exactly d_i.  The truth is returned in the units the fit reports: ``slope``
per unit of each numeric covariate and ``level_effect`` (levels sum to zero, so each is
its deviation from the average level).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from psystats.warehouse.sql import transaction

from .simulate import add_synthetic_experiments, register_models, responses_frame, write_run

BASE, POST = "sim-participants-base", "sim-participants-instruct"
DEFAULT_SLOPES = {"age": 0.004, "anxiety": -0.01}  # nats per year, per questionnaire point
DEFAULT_LEVELS = {"female": 0.03, "male": -0.03}


def simulate_participants(
    con,
    *,
    n_experiments: int = 4,
    participants: int = 40,
    responses: int = 3,
    slopes: Mapping[str, float] | None = None,
    gender_effects: Mapping[str, float] | None = None,
    missing: Mapping[str, float] | None = None,
    experiment_sd: float = 0.05,
    residual_sd: float = 0.05,
    seed: int = 0,
) -> dict:
    """Write the study, its metadata and the two runs (one transaction each); returns the
    truth: ``slope`` {age, anxiety}, ``level_effect`` {gender=level}, ``missing`` counts,
    ``pair``, ``experiments``.  ``missing``: share of participants without each covariate."""
    slopes = dict(DEFAULT_SLOPES if slopes is None else slopes)
    levels = dict(DEFAULT_LEVELS if gender_effects is None else gender_effects)
    missing = dict(missing or {})
    rng = np.random.default_rng(seed)
    exps = add_synthetic_experiments(
        con,
        n_experiments=n_experiments,
        participants=participants,
        responses=responses,
        seed=seed,
        study="psystats-participants",
    )
    resp = responses_frame(con, exps)
    keys = np.array(sorted(set(resp["participant_key"])))
    n = len(keys)
    age = rng.normal(40.0, 12.0, n)
    anxiety = rng.normal(10.0, 4.0, n)
    names = sorted(levels)
    gender = rng.choice(names, n)
    exp_of = resp.drop_duplicates("participant_key").set_index("participant_key")["experiment"]
    a = dict(zip(exps, rng.normal(0.1, experiment_sd, len(exps))))
    d = (
        np.array([a[exp_of[k]] for k in keys])
        + slopes.get("age", 0.0) * age
        + slopes.get("anxiety", 0.0) * anxiety
        + np.array([levels[g] for g in gender])
        + rng.normal(0.0, residual_sd, n)
    )
    lack = {c: rng.random(n) < missing.get(c, 0.0) for c in ("age", "gender", "anxiety")}
    with transaction(con):
        con.executemany(
            "UPDATE participants SET age = ?, gender = ? WHERE participant_key = ?",
            [
                (
                    None if lack["age"][i] else float(age[i]),
                    None if lack["gender"][i] else str(gender[i]),
                    int(k),
                )  # fmt: skip
                for i, k in enumerate(keys)
            ],
        )
        con.executemany(
            "INSERT INTO participant_metadata VALUES (?, 'anxiety', ?, NULL, ?)",
            [
                (int(k), float(anxiety[i]), json.dumps(float(anxiety[i])))
                for i, k in enumerate(keys)
                if not lack["anxiety"][i]
            ],
        )
    base = 1.0 + rng.exponential(1.0, len(resp))
    post = base + resp["participant_key"].map(dict(zip(keys, d))).to_numpy()
    with transaction(con):
        register_models(
            con,
            [
                dict(
                    name=BASE,
                    family="sim",
                    generation="1",
                    generation_order=1.0,
                    post_training="base",
                ),
                dict(
                    name=POST,
                    family="sim",
                    generation="1",
                    generation_order=1.0,
                    post_training="instruct",
                    base_model=BASE,
                ),
            ],  # fmt: skip
        )
        write_run(con, BASE, "plain", resp["response_id"], base)
        write_run(con, POST, "plain", resp["response_id"], post)
    mean_level = float(np.mean(list(levels.values())))
    return {
        "slope": {c: float(slopes.get(c, 0.0)) for c in ("age", "anxiety")},
        "level_effect": {f"gender={g}": levels[g] - mean_level for g in names},
        "missing": {c: int(v.sum()) for c, v in lack.items()},
        "pair": f"{POST} vs {BASE}",
        "experiments": exps,
    }
