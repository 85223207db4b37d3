"""Formula fits and `fit predict` against independent oracles (issue 19).

* the stored posterior against ``bambi.Model.fit`` of the same model on the same cells;
* `fit predict` against Bambi's own ``Model.predict`` on the stored posterior, and against
  a hand computation from the stored draws (numpy) for new group levels;
* the mean residual of the stored posterior's predictions over the fitted cells.

The Bambi model of the oracles is written here (its known-SE family too), not taken
from psystats.  Before the fix the stored intercept was the one for centred
predictors: 0.11 where Bambi's fit says 0.23 on this warehouse, a residual of +0.11.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

warnings.filterwarnings("ignore")

FIXED = "mean ~ type + log_params + experiment"
GROUPS = "mean ~ type + log_params + (1|family)"
NEW_PAIR = "type=instruct,n_params=7e9"


def _known_se_model(frame: pd.DataFrame, formula: str):
    """A Bambi model written from the definition: mean ~ N(mu, sqrt(sigma^2 + se^2)),
    sigma ~ HalfNormal(0.5), every other prior Bambi's default."""
    import bambi as bmb
    import pymc as pm
    import pytensor.tensor as pt

    se = frame["se"].to_numpy(float)

    def dist(name, mu, sigma, observed=None, **kw):
        return pm.Normal(name, mu=mu, sigma=pt.sqrt(sigma**2 + se**2), observed=observed, **kw)

    family = bmb.Family(
        "known_se",
        bmb.Likelihood("KnownSE", params=["mu", "sigma"], parent="mu", dist=dist),
        link={"mu": "identity", "sigma": "log"},
    )
    return bmb.Model(
        formula,
        frame.copy(),
        family=family,
        priors={"sigma": bmb.Prior("HalfNormal", sigma=0.5)},
        dropna=False,
    )


def _stored(db, fit_id: int):
    """(fits row, InferenceData read straight from the NetCDF, the cells it was fitted to)."""
    import arviz as az

    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(db)
    try:
        cur = con.execute("SELECT spec, summary, netcdf_path FROM fits WHERE fit_id = ?", [fit_id])
        spec, summary, path = cur.fetchall()[0]
    finally:
        con.close()
    idata = az.from_netcdf(path)
    ds = idata["formula_data"]
    frame = pd.DataFrame({c: ds[c].values for c in ds.data_vars})
    for c in frame.columns:
        if frame[c].dtype.kind in "OUS":
            frame[c] = frame[c].astype(str)
    return {"spec": json.loads(spec), "summary": json.loads(summary)}, idata, frame


def _new_rows(frame: pd.DataFrame, **pair) -> pd.DataFrame:
    """The new pair in every fitted experiment, log_params centred over the fitted pairs."""
    rows = frame.drop_duplicates("experiment").copy().reset_index(drop=True)
    centre = frame.groupby("pair")["log_params_raw"].first().mean()
    n_params = pair.pop("n_params")
    rows["log_params_raw"] = np.log(n_params)
    rows["log_params"] = np.log(n_params) - centre
    for k, v in pair.items():
        rows[k] = v
    rows["pair"] = "(new pair)"
    return rows


def _predict_cli(db, fit_id: int, *pairs: str, extra=()) -> pd.DataFrame:
    from psystats.cli import main

    args = ["--db", str(db), "fit", "predict", str(fit_id), "--format", "json", *extra]
    for p in pairs:
        args += ["--new-pair", p]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return pd.DataFrame(json.loads(res.stdout))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The simulated warehouse of the issue (32 cells, 8 pairs, 4 experiments), two formula
    fits stored through the CLI."""
    from reanalysis_helpers import simulated_warehouse

    from psystats.cli import main

    db = simulated_warehouse(tmp_path_factory.mktemp("oracle") / "psych.duckdb")
    for formula, draws in ((FIXED, "1000"), (GROUPS, "1000")):
        res = CliRunner().invoke(
            main,
            ["--db", str(db), "fit", "formula", formula, "--draws", draws, "--tune", "1000"]
            + ["--seed", "3", "--allow-diagnostics-failure"],
        )
        assert res.exit_code == 0, res.output
    return db


def test_the_intercept_conversion_is_bambis_definition():
    """Fast: draws placed on a Bambi model come back with Intercept - mean(X) @ beta
    (float64 numpy from the definition), mu and the offsets gone, marked as Bambi's."""
    import arviz as az

    from psystats.stats.formula import as_bambi_fit, build_formula_model, formula_frame
    from psystats.stats.simulate import simulate_cells

    cells = simulate_cells(8, 6, seed=3, n_families=2, n_types=2, n_domains=3).cells
    frame, _ = formula_frame(cells)
    model = build_formula_model(frame, "mean ~ type + log_params + (1|family)")
    rng = np.random.default_rng(0)
    c, d = 2, 50
    types = sorted(frame["type"].unique())[1:]
    post = {
        "Intercept": rng.normal(0.1, 0.05, (c, d)),
        "type": rng.normal(0.05, 0.05, (c, d, len(types))),
        "log_params": rng.normal(-0.04, 0.01, (c, d)),
        "sigma": np.abs(rng.normal(0.1, 0.02, (c, d))),
        "1|family_sigma": np.abs(rng.normal(0.1, 0.02, (c, d))),
        "1|family_offset": rng.normal(0, 1, (c, d, 2)),
        "1|family": rng.normal(0, 0.1, (c, d, 2)),
        "mu": rng.normal(0, 0.1, (c, d, len(frame))),
    }
    idata = az.from_dict(
        posterior=post,
        coords={"type_dim": types, "family__factor_dim": ["llama", "qwen"][:2]},
        dims={
            "type": ["type_dim"],
            "1|family_offset": ["family__factor_dim"],
            "1|family": ["family__factor_dim"],
            "mu": ["__obs__"],
        },
    )
    as_bambi_fit(model, idata)
    is_type = np.stack([(frame["type"] == t).to_numpy(float) for t in types], axis=1)
    xbar = np.concatenate([is_type.mean(axis=0), [frame["log_params"].mean()]])
    beta = np.concatenate([post["type"], post["log_params"][..., None]], axis=-1)
    want = post["Intercept"] - beta @ xbar
    assert np.allclose(idata.posterior["Intercept"].values, want, rtol=0, atol=1e-12)
    assert "mu" not in idata.posterior and "1|family_offset" not in idata.posterior
    assert np.array_equal(idata.posterior["log_params"].values, post["log_params"])
    assert idata.posterior.attrs["modeling_interface"] == "bambi"


def test_new_group_levels_are_drawn_from_the_fitted_distribution():
    """Fast, no sampling: on given draws, a fitted family's prediction is Bambi's predict
    exactly, and an unseen family adds u_s = sigma_s * z_s with z_s standard normal, the same
    u_s in every experiment of the pair (numpy from the definition).  This is also the test
    that fails with formulae 0.6 under bambi 0.16 (why pyproject pins formulae < 0.6)."""
    import arviz as az
    from scipy import stats as st

    from psystats.stats.formula import (
        build_formula_model,
        formula_frame,
        new_pair_rows,
        prediction_draws,
    )
    from psystats.stats.simulate import simulate_cells

    cells = simulate_cells(8, 6, seed=3, n_families=2, n_types=2, n_domains=3).cells
    frame, _ = formula_frame(cells)
    model = build_formula_model(frame, "mean ~ type + log_params + (1|family)")
    families = sorted(frame["family"].unique())
    types = sorted(frame["type"].unique())
    rng = np.random.default_rng(1)
    c, d = 4, 500
    post = {
        "Intercept": rng.normal(0.1, 0.05, (c, d)),
        "type": rng.normal(0.05, 0.05, (c, d, len(types) - 1)),
        "log_params": rng.normal(-0.04, 0.01, (c, d)),
        "sigma": np.abs(rng.normal(0.1, 0.02, (c, d))),
        "1|family_sigma": np.abs(rng.normal(0.3, 0.1, (c, d))),
        "1|family": rng.normal(0, 0.3, (c, d, len(families))),
    }
    idata = az.from_dict(
        posterior=post,
        coords={"type_dim": types[1:], "family__factor_dim": families},
        dims={"type": ["type_dim"], "1|family": ["family__factor_dim"]},
    )
    pair = {"type": types[0], "n_params": 7e9}
    centre = frame.groupby("pair")["log_params_raw"].first().mean()
    fixed = (post["Intercept"] + post["log_params"] * (np.log(7e9) - centre)).reshape(-1)

    known = new_pair_rows(model, frame, {**pair, "family": families[0]}, centre)
    got = prediction_draws(model, idata, known, seed=0)
    want = fixed + post["1|family"][..., 0].reshape(-1)
    assert np.allclose(got, want[:, None], rtol=1e-12, atol=1e-12)

    new = new_pair_rows(model, frame, {**pair, "family": "unseen"}, centre)
    got = prediction_draws(model, idata, new, seed=0)
    u = got - fixed[:, None]
    assert np.allclose(u, u[:, :1])  # one draw per new level, shared by its experiments
    z = u[:, 0] / post["1|family_sigma"].reshape(-1)
    assert st.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.05
    assert np.array_equal(prediction_draws(model, idata, new, seed=0), got)  # seeded


@pytest.mark.slow
def test_stored_posterior_equals_bambis_own_fit(fitted):
    """(a) Every stored variable against bambi.Model.fit on the same cells and priors:
    means within 5 Monte Carlo SEs, SDs within 15%."""
    import arviz as az

    row, idata, frame = _stored(fitted, 1)
    assert row["spec"]["formula"] == FIXED
    ref = _known_se_model(frame, FIXED).fit(
        draws=1000, tune=1000, chains=4, random_seed=11, inference_method="nutpie"
    )
    got, want = idata.posterior, ref.posterior
    names = sorted(v for v in want.data_vars if not v.endswith("__"))
    assert sorted(got.data_vars) == names  # what Bambi keeps: no mu, no offsets
    for v in names:
        gm, wm = got[v].mean(("chain", "draw")).values, want[v].mean(("chain", "draw")).values
        mcse = np.hypot(az.mcse(idata, var_names=[v])[v].values, az.mcse(ref, var_names=[v])[v])
        assert np.all(np.abs(gm - wm) < 5 * np.asarray(mcse) + 1e-4), (v, gm, wm)
        gs, ws = got[v].std(("chain", "draw")).values, want[v].std(("chain", "draw")).values
        assert np.allclose(gs, ws, rtol=0.15), (v, gs, ws)
    # The bug: the centred intercept sat 3 posterior SDs below the model's.
    assert abs(float(got["Intercept"].mean()) - float(want["Intercept"].mean())) < 0.03


@pytest.mark.slow
def test_predict_equals_bambi_predict_on_the_stored_posterior(fitted):
    """(b) Fixed effects and intercept: `fit predict` is Bambi's Model.predict of the new pair
    in every fitted experiment, averaged, draw by draw (the same numbers)."""
    row, idata, frame = _stored(fitted, 1)
    model = _known_se_model(frame, FIXED)
    rows = _new_rows(frame, type="instruct", n_params=7e9)
    pred = model.predict(idata, data=rows, kind="response_params", inplace=False)
    mu = pred.posterior["mu"].values.reshape(-1, len(rows))
    avg = mu.mean(axis=1)
    got = _predict_cli(fitted, 1, NEW_PAIR)
    assert got["mean"].iloc[0] == pytest.approx(avg.mean(), rel=1e-9, abs=1e-12)
    assert got["sd"].iloc[0] == pytest.approx(avg.std(ddof=1), rel=1e-9)
    q = np.quantile(avg, [0.05, 0.5, 0.95])
    assert got[["q05", "q50", "q95"]].iloc[0].to_numpy() == pytest.approx(q, rel=1e-9)
    assert got["p_worse"].iloc[0] == pytest.approx((avg > 0).mean())
    per = _predict_cli(fitted, 1, NEW_PAIR, extra=["--per-experiment"])
    by_exp = dict(zip(rows["experiment"], mu.mean(axis=0)))
    for e, m in zip(per["experiment"], per["mean"]):
        assert m == pytest.approx(by_exp[e], rel=1e-9, abs=1e-12)
    # And the sign the issue got wrong: on this warehouse the model says "worse" (> 0).
    assert got["mean"].iloc[0] > 0 and got["p_worse"].iloc[0] > 0.5


@pytest.mark.slow
def test_predict_new_groups_against_the_stored_draws(fitted):
    """(b) New group levels: a known family uses its fitted effect (Bambi's predict, exactly);
    an unseen family draws u ~ N(0, sigma_family) per draw: mean, SD and quantiles agree with
    a numpy computation from the stored draws within Monte Carlo error."""
    row, idata, frame = _stored(fitted, 2)
    post = idata.posterior
    centre = frame.groupby("pair")["log_params_raw"].first().mean()
    lp = np.log(7e9) - centre
    # instruct is Bambi's reference level of type: no type coefficient.
    fixed = (post["Intercept"] + post["log_params"] * lp).values.ravel()
    qwen = post["1|family"].sel(family__factor_dim="qwen").values.ravel()
    got = _predict_cli(
        fitted, 2, NEW_PAIR + ",family=qwen", NEW_PAIR + ",family=unseen", extra=["--seed", "5"]
    )
    known = fixed + qwen
    assert got["mean"].iloc[0] == pytest.approx(known.mean(), rel=1e-9)
    assert got["q95"].iloc[0] == pytest.approx(np.quantile(known, 0.95), rel=1e-9)
    model = _known_se_model(frame, GROUPS)
    rows = _new_rows(frame, type="instruct", n_params=7e9, family="qwen")
    bambi = model.predict(idata, data=rows, kind="response_params", inplace=False)
    assert np.allclose(bambi.posterior["mu"].values.reshape(-1, len(rows)).mean(1), known)

    rng = np.random.default_rng(0)
    sig = post["1|family_sigma"].values.ravel()
    reps = np.concatenate([fixed + rng.normal(0, sig) for _ in range(20)])  # many u per draw
    new = got.iloc[1]
    n = fixed.size
    assert abs(new["mean"] - reps.mean()) < 5 * reps.std() / np.sqrt(n)
    assert new["sd"] == pytest.approx(reps.std(), rel=0.1)
    for q, col in ((0.05, "q05"), (0.5, "q50"), (0.95, "q95")):
        assert new[col] == pytest.approx(np.quantile(reps, q), abs=0.15 * reps.std())
    assert new["p_worse"] == pytest.approx((reps > 0).mean(), abs=0.05)
    assert new["sd"] > got["sd"].iloc[0]  # the new family's spread widens the interval


@pytest.mark.slow
def test_mean_residual_of_stored_predictions_is_near_zero(fitted):
    """(c) Bambi's predictions from the stored posterior leave a mean residual near 0 over the
    fitted cells (the centred intercept left +0.11 here), as predictions from Bambi's own
    fit do."""
    row, idata, frame = _stored(fitted, 1)
    model = _known_se_model(frame, FIXED)
    pred = model.predict(idata, data=frame, kind="response_params", inplace=False)
    mu = pred.posterior["mu"].mean(("chain", "draw")).values
    resid = frame["mean"].to_numpy() - mu
    # Weighted least squares leaves sum(w * resid) = 0; the plain mean is a few thousandths.
    assert abs(resid.mean()) < 0.2 * frame["mean"].std() / np.sqrt(len(frame)) + 0.01
