"""Formula models through Bambi: the known-error likelihood, the data frame, and agreement
with the built-in effects model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from psystats.stats.formula import build_formula_model, formula_frame
from psystats.stats.predict import parse_new_pair
from psystats.stats.simulate import simulate_cells
from psystats.warehouse.errors import WarehouseError


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return simulate_cells(8, 6, seed=3, n_families=2, n_types=2, n_domains=3).cells


def test_frame_columns_and_centring(cells):
    bad = cells.copy()
    bad.loc[0, "n"] = 1
    bad.loc[1, "se"] = np.nan
    frame, messages = formula_frame(bad)
    assert len(frame) == len(cells) - 2 and "2 cell(s) left out" in messages[0]
    assert np.allclose(frame["mean"], bad["y"].iloc[2:])
    assert list(frame["type"]) == list(bad["post_training"].iloc[2:])
    # log_params is centred over pairs (each pair counted once), as the built-in size term
    per_pair = np.log(cells.drop_duplicates("pair")["n_params"].astype(float))
    raw = np.log(bad["n_params"].iloc[2:].astype(float)).to_numpy()
    assert np.allclose(frame["log_params"], raw - per_pair.mean())


def test_likelihood_is_normal_with_known_se(cells):
    """log p(y | mu, sigma) of the Bambi model = sum log N(y | mu, sqrt(sigma^2 + se^2))."""
    frame, _ = formula_frame(cells)
    model = build_formula_model(frame, "mean ~ 0 + type + log_params")
    pm_model = model.backend.model
    obs = pm_model[model.response_component.response.name]
    import pytensor

    with pytensor.config.change_flags(mode="FAST_COMPILE"):  # no C compile: seconds, not tens
        logp = pm_model.compile_logp(vars=[obs], jacobian=False)
    types = sorted(frame["type"].unique())
    coef, slope, sigma = np.array([0.12, -0.07]), -0.04, 0.08
    point = {
        "type": coef,
        "log_params": np.array(slope),
        "sigma_log__": np.array(np.log(sigma)),
    }
    mu = coef[[types.index(t) for t in frame["type"]]] + slope * frame["log_params"].to_numpy()
    ref = stats.norm.logpdf(
        frame["mean"], mu, np.sqrt(sigma**2 + frame["se"].to_numpy() ** 2)
    ).sum()
    assert np.isclose(logp(point), ref, rtol=1e-10)


def test_bad_formulas_are_user_errors(cells):
    frame, _ = formula_frame(cells)
    with pytest.raises(WarehouseError, match="must model the cell value"):
        build_formula_model(frame, "se ~ type")
    for formula in ("mean ~ typ + log_params", "mean ~ type + (1|typ)", "mean ~ log(typ)"):
        with pytest.raises(WarehouseError) as e:
            build_formula_model(frame, formula)
        msg = str(e.value)
        assert "unknown column 'typ'" in msg and "did you mean 'type'" in msg, msg
        assert "the columns are mean, se, type, family" in msg and "log_params_raw" in msg
    with pytest.raises(WarehouseError, match="cannot build the formula model"):
        build_formula_model(frame, "mean ~ type +")
    with pytest.raises(WarehouseError, match="key=value"):
        parse_new_pair("instruct")
    assert parse_new_pair("type=instruct, family=llama,n_params=7e10") == {
        "type": "instruct",
        "family": "llama",
        "n_params": 7e10,
    }


def test_every_prior_is_settable_and_recorded(cells):
    """Group-level priors through --priors (a nested hyperprior), unknown terms refused by
    name, and every prior the model uses (Bambi's defaults too) recorded as a --priors table
    that rebuilds the same model."""
    from psystats.stats.formula import used_priors

    frame, _ = formula_frame(cells)
    formula = "mean ~ type + log_params + (1|family)"
    default = used_priors(build_formula_model(frame, formula))
    assert set(default) == {"Intercept", "type", "log_params", "1|family", "sigma"}
    assert default["sigma"] == {"dist": "HalfNormal", "sigma": 0.5}
    group = default["1|family"]
    assert group["dist"] == "Normal" and group["sigma"]["dist"] == "HalfNormal"
    mine = {"1|family": {"dist": "Normal", "mu": 0, "sigma": {"dist": "HalfNormal", "sigma": 0.2}}}
    model = build_formula_model(frame, formula, priors=mine)
    got = used_priors(model)
    assert got["1|family"] == {
        "dist": "Normal",
        "mu": 0.0,
        "sigma": {"dist": "HalfNormal", "sigma": 0.2},
    }
    assert got["Intercept"] == default["Intercept"]  # the others keep Bambi's defaults
    # The PyMC model really has the prior: logp of the group SD is HalfNormal(0.2)'s.
    import pymc as pm
    from scipy import stats

    rv = model.backend.model["1|family_sigma"]
    assert float(pm.logp(rv, 0.3).eval()) == pytest.approx(stats.halfnorm.logpdf(0.3, scale=0.2))
    # The record is a --priors table: fed back, it gives the same priors.
    assert used_priors(build_formula_model(frame, formula, priors=got)) == got
    every = {
        "group_specific": {"dist": "Normal", "mu": 0, "sigma": {"dist": "HalfNormal", "sigma": 0.3}}
    }
    assert used_priors(build_formula_model(frame, formula, priors=every))["1|family"]["sigma"] == {
        "dist": "HalfNormal",
        "sigma": 0.3,
    }
    with pytest.raises(WarehouseError, match="'typ' is not a term of this model.*'type'"):
        build_formula_model(frame, formula, priors={"typ": {"dist": "Normal", "mu": 0, "sigma": 1}})
    with pytest.raises(WarehouseError, match="takes a prior on its SD"):
        build_formula_model(
            frame, formula, priors={"1|family": {"dist": "Normal", "mu": 0, "sigma": 1}}
        )


@pytest.mark.slow
def test_formula_reproduces_builtin_effects_posterior():
    """Built-in effects model (type + size terms only) = 'mean ~ 0 + type + log_params':
    the same posterior within Monte Carlo error on simulated cells."""
    import arviz as az

    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.effects_spec import TERMS, EffectsSpec
    from psystats.stats.formula import fit_formula_cells
    from psystats.stats.options import SamplingOptions

    sim = simulate_cells(12, 10, seed=3, n_families=3, n_types=2, n_domains=3)
    spec = EffectsSpec(terms={t: t in ("type", "size") for t in TERMS})
    sampling = SamplingOptions(draws=1000, tune=500, chains=4, seed=1)
    b = fit_cells(sim.cells, EffectsFitSpec(spec, compare=(), checks=False), sampling)
    f = fit_formula_cells(
        sim.cells,
        "mean ~ 0 + type + log_params",
        # likelihood-dominated data: priors wide against the posterior SDs (~0.02)
        priors={
            "type": {"dist": "Normal", "mu": 0, "sigma": 1},
            "log_params": {"dist": "Normal", "mu": 0, "sigma": 0.5},
        },
        checks=False,
        sampling=sampling,
    )
    assert b.diagnostics.passed and f.diagnostics.passed
    pairs = [("type_mean", "type"), ("size_slope", "log_params"), ("sigma_cell", "sigma")]
    for bn, fn in pairs:
        bd, fd = b.idata.posterior[bn], f.idata.posterior[fn]
        bm, fm = bd.mean(("chain", "draw")).values, fd.mean(("chain", "draw")).values
        mcse = np.sqrt(
            np.asarray(az.mcse(b.idata, var_names=[bn])[bn].values) ** 2
            + np.asarray(az.mcse(f.idata, var_names=[fn])[fn].values) ** 2
        )
        assert np.all(np.abs(bm - fm) < 5 * mcse + 1e-4), (bn, bm, fm, mcse)
        bs, fs = bd.std(("chain", "draw")).values, fd.std(("chain", "draw")).values
        assert np.allclose(bs, fs, rtol=0.15), (bn, bs, fs)


@pytest.mark.slow
def test_cli_fit_formula_predict_plot(tmp_path):
    """`psystats fit formula` stores a fit like the built-in ones; `fit predict` widens for a
    new family (new-group uncertainty); `plot forest` and `manifest` work on it."""
    import json

    from click.testing import CliRunner
    from reanalysis_helpers import assert_loo_stands_alone, simulated_warehouse

    from psystats.cli import main
    from psystats.warehouse import db as warehouse_db

    db = simulated_warehouse(tmp_path / "psych.duckdb")
    run = CliRunner().invoke
    d = ["--db", str(db)]
    r = run(
        main,
        ["fit", "formula", "mean ~ type + log_params + (1|family)", *d]
        + ["--draws", "500", "--tune", "500", "--allow-diagnostics-failure"],
    )
    assert r.exit_code == 0, r.output
    con = warehouse_db.open(db)
    kind, spec, path, summary = con.execute(
        "SELECT kind, spec, netcdf_path, summary FROM fits"
    ).fetchall()[0]
    params = {p for (p,) in con.execute("SELECT DISTINCT parameter FROM fit_params").fetchall()}
    con.close()
    assert kind == "formula" and json.loads(spec)["formula"].startswith("mean ~ type")
    assert {"Intercept", "type", "log_params", "sigma", "1|family", "1|family_sigma"} <= params
    assert Path(path).exists()
    assert_loo_stands_alone(path, json.loads(summary))
    r = run(
        main,
        ["fit", "predict", "1", *d, "--format", "csv"]
        + ["--new-pair", "type=instruct,family=llama,n_params=70e9"]
        + ["--new-pair", "type=instruct,family=unseen,n_params=70e9"],
    )
    assert r.exit_code == 0, r.output
    out = pd.read_csv(__import__("io").StringIO(r.output))
    width = (out["q95"] - out["q05"]).to_numpy()
    assert width[1] > width[0]
    r = run(main, ["fit", "predict", "1", *d, "--new-pair", "type=instruct"])
    assert r.exit_code == 1 and "give them in --new-pair" in r.output
    r = run(main, ["plot", "forest", "--fit", "1", *d, "-o", str(tmp_path / "f.svg")])
    assert r.exit_code == 0 and (tmp_path / "f.csv").exists()
    assert "Examples:" in run(main, ["fit", "formula", "--help"]).output
