"""`fit predict` from a stored effects fit, against a hand computation on the stored draws.

The oracle reads the NetCDF with ArviZ and writes the effects model's equation
(docs/model.md) in numpy: intercept + type + family + size + generation + the
experiment-level terms, averaged over the fitted experiments.  A fitted pair's
own values reproduce the model's deterministic ``pair_mean``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

warnings.filterwarnings("ignore")


def _cli(db, *args):
    from psystats.cli import main

    return CliRunner().invoke(main, ["--db", str(db), *args])


def _predict(db, fit_id, *pairs, extra=()):
    args = ["fit", "predict", str(fit_id), "--format", "json", *extra]
    for p in pairs:
        args += ["--new-pair", p]
    res = _cli(db, *args)
    assert res.exit_code == 0, res.output
    return pd.DataFrame(json.loads(res.stdout))


@pytest.fixture(scope="module")
def effects_fit(tmp_path_factory):
    """An effects fit of the simulated warehouse (8 pairs, 4 experiments) without pair effects,
    so that a known family's prediction is a deterministic function of the draws."""
    from reanalysis_helpers import simulated_warehouse

    db = simulated_warehouse(tmp_path_factory.mktemp("predict") / "psych.duckdb")
    res = _cli(
        db,
        *["fit", "effects", "--no-term", "pair", "--no-compare", "--draws", "500"],
        *["--tune", "500", "--seed", "2", "--allow-diagnostics-failure"],
    )
    assert res.exit_code == 0, res.output
    return db


def _stored(db, fit_id: int):
    import arviz as az

    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(db)
    try:
        path, summary, priors = con.execute(
            "SELECT netcdf_path, summary, priors FROM fits WHERE fit_id = ?", [fit_id]
        ).fetchall()[0]
        domains = dict(con.execute("SELECT experiment, domain FROM experiments").fetchall())
    finally:
        con.close()
    post = az.from_netcdf(path).posterior.stack(s=("chain", "draw"))
    return post, json.loads(summary), json.loads(priors), domains


def _experiment_part(post, domains, active, t):
    """(samples, experiments): domain + experiment + type x domain of each fitted experiment."""
    cols = []
    for e in post["experiment_level"].values:
        d = domains[str(e)]
        v = 0.0
        if "domain" in active:
            v = v + post["domain"].sel(domain_level=d).values
        if "experiment" in active:
            v = v + post["experiment"].sel(experiment_level=e).values
        if "type_domain" in active:
            v = v + post["type_domain"].sel(type_level=t, domain_level=d).values
        cols.append(np.broadcast_to(v, post.sizes["s"]))
    return np.stack(cols, axis=1)


@pytest.mark.slow
def test_effects_predict_equals_the_equation_on_the_stored_draws(effects_fit):
    post, summary, priors, domains = _stored(effects_fit, 1)
    active = set(summary["active_terms"])
    assert {"type", "family", "size", "generation"} <= active and "pair" not in active
    centre = summary["size_center_log_params"]
    # qwen's fitted generations 1 and 2 are ranks 0 and 1 (centre 0.5); generation 2 -> +0.5.
    fixed = (
        post["intercept"].values
        + post["type"].sel(type_level="instruct").values
        + post["family"].sel(family_level="qwen").values
        + post["size_slope"].values * (np.log(7e9) - centre)
        + post["generation_slope"].values * 0.5
    )
    want = fixed[:, None] + _experiment_part(post, domains, active, "instruct")
    pair = "type=instruct,family=qwen,n_params=7e9,generation_order=2"
    got = _predict(effects_fit, 1, pair)
    avg = want.mean(axis=1)
    assert got["mean"][0] == pytest.approx(avg.mean(), rel=1e-9)
    assert got["sd"][0] == pytest.approx(avg.std(ddof=1), rel=1e-9)
    q = np.quantile(avg, [0.05, 0.5, 0.95])
    assert got[["q05", "q50", "q95"]].iloc[0].to_numpy() == pytest.approx(q, rel=1e-9)
    assert got["p_worse"][0] == pytest.approx((avg > 0).mean())
    per = _predict(effects_fit, 1, pair, extra=["--per-experiment"]).set_index("experiment")
    for j, e in enumerate(post["experiment_level"].values):
        assert per.loc[str(e), "mean"] == pytest.approx(want[:, j].mean(), rel=1e-9)

    # A fitted pair's own values give the model's deterministic pair_mean (+ experiments).
    name = "sim-llama2-instruct vs sim-llama2-base"
    own = _predict(effects_fit, 1, "type=instruct,family=llama,n_params=8.1e9,generation_order=2")
    pm = post["pair_mean"].sel(pair_level=name).values
    exp_avg = _experiment_part(post, domains, active, "instruct").mean(axis=1)
    assert own["mean"][0] == pytest.approx((pm + exp_avg).mean(), rel=1e-9)


@pytest.mark.slow
def test_effects_predict_new_family_draws_from_its_prior_scale(effects_fit):
    """Two families: the family scale was fixed (not learned), so a new family's effect is
    Normal(0, s) with s the fixed prior's scale from fits.priors, per draw; the prediction's
    mean, SD and quantiles agree with numpy replicates within Monte Carlo error."""
    post, summary, priors, domains = _stored(effects_fit, 1)
    active = set(summary["active_terms"])
    s = priors["sigma_family"]["sigma"]
    base = (
        post["intercept"].values
        + post["type"].sel(type_level="reasoning").values
        + post["size_slope"].values * (np.log(3e10) - summary["size_center_log_params"])
    ) + _experiment_part(post, domains, active, "reasoning").mean(axis=1)
    rng = np.random.default_rng(1)
    reps = np.concatenate([base + s * rng.standard_normal(base.size) for _ in range(50)])
    res = _cli(
        effects_fit,
        *["fit", "predict", "1", "--format", "json", "--seed", "4"],
        *["--new-pair", "type=reasoning,family=mistral,n_params=3e10"],
    )
    assert res.exit_code == 0, res.output
    assert "fixed Normal(0, 0.5) prior" in res.stderr
    got = pd.DataFrame(json.loads(res.stdout)).iloc[0]
    n = base.size
    assert abs(got["mean"] - reps.mean()) < 5 * reps.std() / np.sqrt(n)
    assert got["sd"] == pytest.approx(reps.std(), rel=0.08)
    for q, col in ((0.05, "q05"), (0.5, "q50"), (0.95, "q95")):
        assert got[col] == pytest.approx(np.quantile(reps, q), abs=0.12 * reps.std())


@pytest.mark.slow
def test_effects_predict_refuses_what_it_cannot_predict(effects_fit, tmp_path):
    """Clear one-line errors: a type the fit never saw, a missing generation, a rank between
    fitted generations, a key the model does not read, and models edited since the fit."""
    import shutil

    cases = [
        ("type=chat,family=qwen,n_params=7e9,generation_order=2", "type the fit saw"),
        ("type=instruct,family=qwen,n_params=7e9", "needs generation_order"),
        ("type=instruct,family=qwen,n_params=7e9,generation_order=1.5", "no rank between"),
        ("type=instruct,family=qwen,n_params=7e9,domian=x", "not 'domian'"),
    ]
    for pair, msg in cases:
        res = _cli(effects_fit, "fit", "predict", "1", "--new-pair", pair)
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, (
            pair,
            res.output,
        )
    db = tmp_path / "edited.duckdb"
    shutil.copy(effects_fit, db)
    shutil.copytree(f"{effects_fit}.fits", f"{db}.fits")
    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(db, "write", create=True)
    con.execute("UPDATE models SET n_params = 1e12 WHERE name = 'sim-qwen1-instruct'")
    con.execute(
        "UPDATE fits SET netcdf_path = replace(netcdf_path, ?, ?)", [str(effects_fit), str(db)]
    )
    con.close()
    res = _cli(db, "fit", "predict", "1", "--new-pair", cases[0][0].replace("chat", "instruct"))
    assert res.exit_code == 1 and "refit before predicting" in res.output, res.output
