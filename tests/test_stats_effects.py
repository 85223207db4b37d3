"""The effects model: preparation, identification, likelihood identity, recovery, CLI."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from reanalysis_helpers import assert_loo_stands_alone

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

warnings.filterwarnings("ignore", category=FutureWarning)


def _cells(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


# ---------------------------------------------------------------------------
# preparation and identification (no sampling)


def test_constraint_basis_is_orthonormal_and_constrained():
    from psystats.stats.effects_design import constraint_basis

    groups = np.array([0, 0, 0, 1, 1, 2])
    G = np.eye(3)[groups]
    B = constraint_basis(G)
    assert B.shape == (6, 3)  # 6 levels - 3 group sums
    np.testing.assert_allclose(B.T @ B, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(G.T @ B, 0, atol=1e-12)


def test_degenerate_data_drop_terms_with_messages():
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_spec import NO_DOMAIN
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(6, 8, n_families=1, n_types=1, n_domains=1, seed=2)
    c = sim.cells
    # An experiment with one participant, a pair with a single experiment, a missing domain,
    # a cell whose differences are all equal.
    c.loc[0, "n"], c.loc[0, "se"] = 1, np.nan
    c.loc[1, "se"] = 0.0
    c.loc[c.experiment == "exp007", "domain"] = None
    lone = c.iloc[[5]].assign(pair="lone vs base", post_model="lone", experiment="exp003")
    data = prepare(pd.concat([c, lone], ignore_index=True))
    text = " | ".join(data.messages)
    assert "fewer than 2 participant" in text and "zero variance" in text
    assert NO_DOMAIN in data.coords["domain"]
    for term in ("type", "family", "type_domain"):
        assert term not in data.active and term in data.dropped
    assert "domain" in data.active  # two levels now: the real one and NO_DOMAIN
    assert "lone vs base" in data.coords["pair"]
    assert data.n_cells == len(c) + 1 - 2


def test_single_pair_drops_experiment_term_and_all_zero_variance_fails():
    from psystats.stats.effects_design import prepare

    one = _cells(
        pair=["p"] * 4,
        experiment=list("abcd"),
        y=[0.1, 0.2, 0.0, 0.3],
        se=[0.05] * 4,
        domain=["X", "X", "Y", "Y"],
        n=[10] * 4,
    )
    data = prepare(one)
    assert "experiment" in data.dropped and "pair" not in data.active
    assert "single cell" in data.dropped["experiment"]
    with pytest.raises(WarehouseError, match="none of the 4 cell"):
        prepare(one.assign(se=0.0))


def test_absent_type_domain_is_noncentred_and_a_large_one_centred():
    """The issue's failing default, cheaply: the choice a centred funnel would need."""
    from psystats.stats.effects_design import prepare
    from psystats.stats.simulate import simulate_cells, simulate_design

    design = simulate_design(24, 40, n_families=4, n_types=3, n_domains=6, seed=0)
    absent = prepare(simulate_cells(design=design, scales={"sigma_type_domain": 0.0}).cells)
    assert absent.centred["type_domain"] is False and absent.scale_estimates["type_domain"] < 0.03
    large = prepare(simulate_cells(design=design, scales={"sigma_type_domain": 0.5}).cells)
    assert large.centred["type_domain"] is True
    assert 0.25 < large.scale_estimates["type_domain"] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("term", ["sigma_type_domain", "sigma_experiment", "sigma_pair"])
def test_absent_effect_is_noncentred_and_a_large_one_centred(term):
    """The funnel corner: a term whose true scale is 0 must not get a centred parameterisation.

    (A centred type x domain at sigma near 0 was the issue's failing default.)
    The margin: with sigma = 0 the moment estimate exceeds twice the level SE only
    when chi2_k / k > 5 (k >= 10 coefficients here), probability < 1e-6 per seed.
    """
    from psystats.stats.effects_design import prepare
    from psystats.stats.simulate import simulate_cells

    name = term.removeprefix("sigma_")
    for seed in range(4):
        kw = dict(n_families=4, n_types=3, n_domains=6, seed=seed)
        absent = prepare(simulate_cells(24, 40, scales={term: 0.0}, **kw).cells)
        assert absent.centred[name] is False, (seed, absent.scale_estimates)
        assert absent.scale_estimates[name] < 0.03
        large = prepare(simulate_cells(24, 40, scales={term: 0.5}, **kw).cells)
        assert large.centred[name] is True, (seed, large.scale_estimates)
        assert 0.25 < large.scale_estimates[name] < 1.0


def test_moment_scale_estimates_match_the_truth_on_a_big_layout():
    from psystats.stats.effects_design import prepare
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(
        30,
        60,
        n_families=6,
        n_types=3,
        n_domains=6,
        seed=7,
        scales={"sigma_experiment": 0.2, "sigma_pair": 0.1},
    )
    est = prepare(sim.cells).scale_estimates
    assert abs(est["experiment"] - 0.2) < 0.06 and abs(est["pair"] - 0.1) < 0.04


@pytest.mark.parametrize(
    ("layout", "fixed"),
    [
        ((1, 1, 1, 1, 1), True),  # one cell: intercept only
        ((2, 1, 1, 2, 1), True),  # two pairs (two types) on one experiment
        ((1, 3, 1, 1, 1), False),  # one pair, three experiments: 2 residual df
        ((2, 20, 1, 2, 4), False),
    ],
)
def test_small_layouts_say_which_scales_cannot_be_learned(layout, fixed):
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.simulate import simulate_cells

    P, E, F, T, D = layout
    data = prepare(simulate_cells(P, E, n_families=F, n_types=T, n_domains=D, seed=1).cells)
    text = " | ".join(data.messages)
    assert data.sigma_cell_fixed is fixed
    assert ("sigma_cell cannot be learned" in text) is fixed
    model = build_effects_model(data, EffectsSpec())
    assert ("sigma_cell" in model.named_vars) is not fixed
    if fixed:
        assert "fixed at 0" in text and f"{P * E} cell" in text
    # Plurals: never "1 cells" or "1 location parameters".
    assert "1 cells" not in text and " 1 location parameters" not in text


def test_spec_from_toml_and_errors(tmp_path):
    from psystats.stats.effects_spec import EffectsSpec, Prior

    p = tmp_path / "spec.toml"
    p.write_text(
        'parameterization = "noncentred"\n[terms]\ngeneration = false\n'
        '[priors]\nsigma_pair = {dist = "HalfStudentT", nu = 3, sigma = 0.2}\n'
    )
    spec = EffectsSpec.from_file(p)
    assert spec.terms["generation"] is False and spec.terms["pair"] is True
    assert spec.prior("sigma_pair") == Prior("HalfStudentT", nu=3, sigma=0.2)
    assert spec.to_dict()["priors"]["sigma_cell"] == {"dist": "HalfNormal", "sigma": 0.5}
    bad = tmp_path / "bad.yaml"
    bad.write_text("priors:\n  sigma_pear: {dist: HalfNormal, sigma: 1}\n")
    with pytest.raises(WarehouseError, match="bad.yaml: unknown prior.*sigma_pear"):
        EffectsSpec.from_file(bad)
    with pytest.raises(WarehouseError, match="unknown prior distribution"):
        Prior("Uniformish", lower=0)


# ---------------------------------------------------------------------------
# likelihood identity: sufficient statistics vs participant rows


def _participant_data(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c, (n, mu) in enumerate([(12, 0.3), (7, 0.1), (20, 0.25), (9, -0.05)]):
        d = rng.normal(mu, 0.4, n)
        rows += [dict(pair=f"p{c}", experiment="e", d=x) for x in d]
    df = pd.DataFrame(rows)
    cells = df.groupby("pair").d.agg(n="size", mean="mean", var="var").reset_index()
    cells["experiment"], cells["y"] = "e", cells["mean"]
    cells["se"] = np.sqrt(cells["var"] / cells["n"])
    return df, cells


def _row_model(df, cells, spec):
    import pymc as pm

    s = np.sqrt(cells["var"].to_numpy())
    idx = df.pair.map({p: i for i, p in enumerate(cells.pair)}).to_numpy()
    with pm.Model(coords={"cell": cells.pair.tolist()}) as m:
        b0 = spec.prior("intercept").rv("intercept")
        sc = spec.prior("sigma_cell").rv("sigma_cell")
        z = pm.Normal("cell_z", 0, 1, dims="cell")
        pm.Normal("d", b0 + sc * z[idx], s[idx], observed=df.d.to_numpy())
    return m


def test_suffstat_model_logp_equals_row_level_model_logp():
    from psystats.stats.cells import suffstat_loglik
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model
    from psystats.stats.effects_spec import EffectsSpec

    df, cells = _participant_data()
    spec = EffectsSpec(residual="explicit")
    data = prepare(cells, spec)
    assert data.active == []  # intercept + cell residual only
    suff, row = build_effects_model(data, spec), _row_model(df, cells, spec)
    # The constant: row-level minus mean-only likelihood, at any mu (here mu = mean).
    s = np.sqrt(cells["var"])
    const = (
        suffstat_loglik(cells.n, cells["mean"], cells["var"], cells["mean"], s)
        - (-0.5 * np.log(2 * np.pi * s**2 / cells.n))
    ).sum()
    f_suff, f_row = suff.compile_logp(), row.compile_logp()
    rng = np.random.default_rng(1)
    for _ in range(5):
        pt = {
            "intercept": rng.normal(),
            "sigma_cell_log__": rng.normal(-1, 0.5),
            "cell_z": rng.normal(size=len(cells)),
        }
        assert f_row(pt) == pytest.approx(f_suff(pt) + const, rel=1e-10)


@pytest.mark.slow
def test_suffstat_posterior_agrees_with_row_level_posterior():
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import sample

    df, cells = _participant_data()
    spec = EffectsSpec()  # marginal: cell residual integrated out
    opts = SamplingOptions(draws=1500, tune=1000, seed=3, sampler="pymc", target_accept=0.9)
    a = sample(build_effects_model(prepare(cells, spec), spec), opts)
    b = sample(_row_model(df, cells, spec), opts.replace(seed=4))
    for v in ("intercept", "sigma_cell"):
        x, y = a.posterior[v].values.ravel(), b.posterior[v].values.ravel()
        assert abs(x.mean() - y.mean()) < 0.1 * max(x.std(), 0.01) + 4 * x.std() / np.sqrt(1500)
        assert np.quantile(x, 0.9) == pytest.approx(np.quantile(y, 0.9), rel=0.1, abs=0.02)


@pytest.mark.slow
def test_eight_schools_through_the_effects_builder():
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model
    from psystats.stats.effects_spec import EffectsSpec, Prior
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import diagnose, sample

    cells = _cells(
        pair=["school"] * 8,
        experiment=list("ABCDEFGH"),
        y=[28, 8, -3, 7, -1, 1, 18, 12.0],
        se=[15, 10, 16, 11, 9, 11, 10, 18.0],
    )
    spec = EffectsSpec(
        priors={
            "intercept": Prior("Normal", mu=0, sigma=5),
            "sigma_cell": Prior("HalfCauchy", beta=5),
        }
    )
    data = prepare(cells, spec)
    assert data.active == [] and "experiment" in data.dropped
    opts = SamplingOptions(draws=2000, tune=1000, seed=5, target_accept=0.9)
    idata = sample(build_effects_model(data, spec), opts)
    d = diagnose(idata)
    assert d.max_rhat < 1.02 and d.min_ess_bulk > 200 and d.divergences <= 5, d.problems
    mu, tau = idata.posterior.intercept.values.ravel(), idata.posterior.sigma_cell.values.ravel()
    assert abs(mu.mean() - 4.4) < 0.4 and abs(mu.std() - 3.3) < 0.3
    assert abs(tau.mean() - 3.6) < 0.4 and abs(tau.std() - 3.2) < 0.5


# ---------------------------------------------------------------------------
# recovery (one dataset; the coverage study is benchmarks/bench_fit.py --recovery)


@pytest.mark.slow
def test_recovery_point_estimates_one_dataset():
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(12, 16, n_families=3, n_types=2, n_domains=4, seed=11)
    no_checks, sampling = EffectsFitSpec(checks=False), SamplingOptions(seed=1)
    fit = fit_cells(sim.cells, no_checks, sampling, allow_failure=True)
    # Recovery is the claim; convergence is checked with margins, not at the gates' edge.
    d = fit.diagnostics
    assert d.max_rhat < 1.05 and d.min_ess_bulk > 100 and d.divergences <= 10, d.problems
    post = fit.idata.posterior
    for name in ("intercept", "size_slope"):
        x = post[name].values.ravel()
        assert abs(x.mean() - sim.truth[name]) < 4 * x.std(), name
    for name in ("type", "domain", "pair_mean"):
        est = post[name].mean(("chain", "draw")).to_series()
        truth = sim.truth[name]
        sd = post[name].std(("chain", "draw")).to_series()
        assert (
            np.abs(est.to_numpy() - truth[est.index.astype(str)].to_numpy())
            < 4 * sd.to_numpy() + 1e-3
        ).all(), name
    pde = post["pair_domain_effect"].mean(("chain", "draw")).to_pandas()
    assert (
        np.corrcoef(
            pde.to_numpy().ravel(),
            sim.truth["pair_domain_effect"].loc[pde.index, pde.columns].to_numpy().ravel(),
        )[0, 1]
        > 0.9
    )


# ---------------------------------------------------------------------------
# end to end through the CLI on a real warehouse file


@pytest.fixture(scope="module")
def sim_wh(small_warehouse, tmp_path_factory):
    from psystats.stats.simulate import add_synthetic_experiments, simulate_warehouse

    path = tmp_path_factory.mktemp("e2e") / "sim.duckdb"
    shutil.copy(small_warehouse, path)
    con = warehouse_db.open(path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=6, participants=30, responses=4)
    simulate_warehouse(con, seed=3, scales={"sigma_experiment": 0.2, "sigma_type_domain": 0.1})
    con.close()
    return path


@pytest.mark.slow
def test_cli_fit_effects_gate_failure_leaves_warehouse_unchanged(sim_wh, tmp_path):
    from psystats.cli import main

    db = tmp_path / "w.duckdb"
    shutil.copy(sim_wh, db)
    # Too few draws: the gates fail, the command exits 1 and stores nothing.
    r = CliRunner().invoke(
        main, ["--db", str(db), "fit", "effects", "--draws", "30", "--tune", "30", "--no-checks"]
    )
    assert r.exit_code == 1 and "diagnostic gates" in r.output and "ESS" in r.output
    con = warehouse_db.open(db)
    assert scalar(con, "SELECT count(*) FROM fits") == 0
    assert scalar(con, "SELECT count(*) FROM fit_params") == 0
    assert not (tmp_path / "w.duckdb.fits").exists() or not any(
        (tmp_path / "w.duckdb.fits").iterdir()
    )


@pytest.mark.slow
def test_cli_fit_effects_end_to_end(sim_wh, tmp_path):
    from psystats.cli import main

    db = tmp_path / "w.duckdb"
    shutil.copy(sim_wh, db)
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "--db",
            str(db),
            "fit",
            "effects",
            "--draws",
            "600",
            "--tune",
            "600",
            "--no-compare",
            "--target-accept",
            "0.99",
        ],
    )
    assert r.exit_code == 0, r.output
    con = warehouse_db.open(db)
    fit = con.execute(
        "SELECT kind, passed, scale, condition, diagnostics, summary, netcdf_path FROM fits"
    ).fetchall()
    assert len(fit) == 1
    kind, passed, scale, condition, diag, summary, nc = fit[0]
    assert (kind, passed, scale, condition) == ("effects", True, "nats", "plain")
    summary = json.loads(summary)
    assert 0.5 < summary["ppc"]["coverage_90"] <= 1 and "elpd_loo" in summary["loo"]["full"]
    params = {r[0] for r in con.execute("SELECT DISTINCT parameter FROM fit_params").fetchall()}
    assert {
        "intercept",
        "type",
        "type_mean",
        "domain",
        "type_domain",
        "experiment",
        "pair_domain_effect",
        "sigma_cell",
    } <= params
    td = con.execute(
        "SELECT label, coords FROM fit_params WHERE parameter = 'type_domain' "
        "ORDER BY label LIMIT 1"
    ).fetchall()[0]
    assert set(json.loads(td[1])) == {"type", "domain"} and " × " in td[0]
    n_pde = scalar(con, "SELECT count(*) FROM fit_params WHERE parameter = 'pair_domain_effect'")
    assert n_pde == 8 * 4  # 8 pairs x (Psycholinguistics + 3 synthetic domains)
    from pathlib import Path

    assert Path(nc).exists()
    # The posterior predictive draws are stored beside the observations ...
    import arviz as az

    idata = az.from_netcdf(nc)
    assert {"posterior_predictive", "observed_data"} <= set(idata.groups())
    assert_loo_stands_alone(nc, summary)
    rep = idata.posterior_predictive["y"].values.reshape(-1, idata.observed_data["y"].size)
    assert rep.shape[0] == summary["ppc"]["draws"] and np.all(np.isfinite(rep))
    assert rep.std(axis=0).min() > 0
    # ... so the report draws its predictive check plot for this fit.
    from psystats.reports.content import build_report

    report = build_report(con)
    try:
        ppc = [f for f in report.figures() if f.caption.startswith("Posterior predictive check")]
        assert len(ppc) == 1 and "(effects)" in ppc[0].caption
        notes = [
            b
            for b in report.section("Diagnostics").blocks
            if "No posterior predictive plot" in str(b)
        ]
        assert not notes
    finally:
        report.close()


def test_cli_export_cells(sim_wh, tmp_path):
    from psystats.cli import main

    runner = CliRunner()
    for ext in ("parquet", "csv"):
        out = tmp_path / f"cells.{ext}"
        r = runner.invoke(main, ["--db", str(sim_wh), "export", "cells", "-o", str(out)])
        assert r.exit_code == 0, r.output
        df = pd.read_parquet(out) if ext == "parquet" else pd.read_csv(out)
        assert len(df) == 64
        np.testing.assert_allclose(df.se_nats, np.sqrt(df["var"] / df.n))
        np.testing.assert_allclose(df.y_std, df["mean"] / df.pooled_sd)
    r = runner.invoke(main, ["--db", str(sim_wh), "export", "cells", "-o", str(tmp_path / "x.txt")])
    assert r.exit_code != 0 and ".parquet or .csv" in r.output


@pytest.mark.slow
def test_ppc_is_sensible_on_large_scale_data_from_the_model():
    """Cells of many nats (as a random model against a trained one): the default priors widen
    with the data, and the predictive check's p-values are neither 0 nor 1.

    Before autoscaling, such data met priors built for tenths of a nat: the fit sat between
    prior and data and every p-value was 0 or 1 (the demo's stored ppc).
    """
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.effects_spec import EffectsSpec, prior_scale_for
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import TRUE_SCALES, simulate_cells

    big = {k: 100 * v for k, v in TRUE_SCALES.items()}  # an intercept of 15 nats
    sim = simulate_cells(2, 8, n_families=1, n_types=1, n_domains=3, seed=5, scales=big)
    assert prior_scale_for(sim.cells["y"]) > 10
    sampling = SamplingOptions(draws=400, tune=400, chains=2, seed=1)
    fit = fit_cells(sim.cells, EffectsFitSpec(compare=()), sampling, allow_failure=True)
    assert fit.data.prior_scale == pytest.approx(prior_scale_for(sim.cells["y"]))
    assert any("default prior scales multiplied" in m for m in fit.data.messages)
    fitted = fit.extras["fitted_spec"]
    assert fitted.prior("sigma_cell").params["sigma"] == pytest.approx(0.5 * fit.data.prior_scale)
    ppc = fit.summary["ppc"]
    assert all(0 < p < 1 for p in ppc["p_values"].values()), ppc
    assert ppc["coverage_90"] >= 0.6, ppc
    assert "posterior_predictive" in fit.idata.groups()
    # The same data with the priors left as they are: the degenerate check of the demo.
    spec = EffectsFitSpec(EffectsSpec(autoscale=False), compare=())
    fixed = fit_cells(sim.cells, spec, sampling, allow_failure=True)
    assert fixed.data.prior_scale == 1.0
    assert any(p in (0.0, 1.0) for p in fixed.summary["ppc"]["p_values"].values())


def test_default_priors_unchanged_on_the_nats_scale_and_user_priors_kept():
    from psystats.stats.effects_spec import DEFAULT_PRIORS, EffectsSpec, Prior, resolve_priors

    spec = EffectsSpec(priors={"sigma_pair": Prior("HalfNormal", sigma=0.2)})
    assert resolve_priors(spec, 1.0) is spec
    wide = resolve_priors(spec, 10.0)
    assert wide.prior("sigma_pair").params == {"sigma": 0.2}  # the user's, as given
    assert wide.prior("intercept").params == {"mu": 0.0, "sigma": 10.0}
    assert wide.prior("generation_family").params["sigma"] == pytest.approx(1.0)
    assert resolve_priors(wide, 10.0) is wide  # resolved once
    assert DEFAULT_PRIORS["intercept"].params["sigma"] == 1.0  # defaults untouched
    assert EffectsSpec.from_dict(EffectsSpec(autoscale=False).to_dict()).autoscale is False


# ---------------------------------------------------------------------------
# null and small corners, fitted with the defaults


@pytest.mark.slow
def test_default_fit_without_true_type_domain_converges_and_covers_the_truth():
    """The issue's failing case: no true type x domain interaction, plain defaults."""
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(
        24, 40, n_families=4, n_types=3, n_domains=6, seed=3, scales={"sigma_type_domain": 0.0}
    )
    no_checks = EffectsFitSpec(checks=False)
    fit = fit_cells(sim.cells, no_checks, SamplingOptions(seed=3), allow_failure=True)
    d = fit.diagnostics
    assert d.max_rhat < 1.02 and d.min_ess_bulk > 250 and d.divergences == 0, d.problems
    post = fit.idata.posterior
    assert float(post["sigma_type_domain"].quantile(0.95)) < 0.05  # truth 0; others ~0.1
    for name in ("domain", "type", "type_domain", "pair_mean"):
        mean = post[name].mean(("chain", "draw")).values
        sd = post[name].std(("chain", "draw")).values
        truth = sim.truth[name]
        t = truth.to_numpy()
        assert (np.abs(mean - t) < 4 * sd + 1e-3).all(), name


@pytest.mark.slow
def test_one_cell_posterior_is_the_conjugate_normal():
    """One cell: sigma_cell fixed at 0, so intercept | y is Normal-Normal conjugate."""
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    cells = simulate_cells(1, 1, n_families=1, n_types=1, n_domains=1, seed=4).cells
    no_checks = EffectsFitSpec(checks=False)
    fit = fit_cells(cells, no_checks, SamplingOptions(seed=4), allow_failure=True)
    y, se = float(cells.y.iloc[0]), float(cells.se.iloc[0])
    prior_sd = 1.0  # intercept ~ Normal(0, 1)
    post_var = 1 / (1 / prior_sd**2 + 1 / se**2)
    post_mean = post_var * y / se**2
    x = fit.idata.posterior["intercept"].values.ravel()
    assert fit.diagnostics.divergences == 0
    assert abs(x.mean() - post_mean) < 0.15 * np.sqrt(post_var)
    assert abs(x.std() / np.sqrt(post_var) - 1) < 0.1


def test_compare_rejects_unknown_terms_before_sampling():
    from psystats.stats.effects_fit import EffectsFitSpec

    with pytest.raises(WarehouseError, match="cannot compare without \\['colour'\\]"):
        EffectsFitSpec(compare=["colour"])


@pytest.mark.slow
def test_compare_without_a_named_term_prefers_the_true_model():
    """A large true experiment effect: LOO must prefer the model that keeps it."""
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(
        6, 12, n_families=2, n_types=2, n_domains=2, seed=5, scales={"sigma_experiment": 0.4}
    )
    spec = EffectsFitSpec(compare=("experiment", "size"))
    fit = fit_cells(
        sim.cells, spec, SamplingOptions(draws=400, tune=400, seed=5), allow_failure=True
    )
    without = fit.summary["loo"]["without"]
    exp = without["experiment"]
    # The experiment effect is 8x the cell residual: dozens of ELPD units, many SEs.
    assert exp["elpd_diff_full_minus_without"] > 4 * exp["se_diff"] > 0
    assert exp["preferred"] == "with experiment"
    assert set(without) == {"experiment", "size"}


def test_generation_rank_scale_is_invariant_to_renaming_versions():
    """Pooled slopes per successive generation: the design (hence the posterior) is the
    same whatever the version numbers, as long as their order within a family is."""
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.simulate import simulate_cells

    cells = simulate_cells(24, 6, n_families=4, n_types=3, n_domains=2, seed=2).cells
    renamed = cells.copy()
    # qwen 1, 2, 3, 4 -> 2, 2.5, 3, 3.1; llama -> 3, 3.1, 3.2, 3.3; others x 10.
    maps = {"qwen": {1: 2, 2: 2.5, 3: 3, 4: 3.1}, "llama": {1: 3, 2: 3.1, 3: 3.2, 4: 3.3}}
    renamed["generation_order"] = [
        maps[f][g] if f in maps else 10 * g
        for f, g in zip(renamed["family"], renamed["generation_order"])
    ]
    a, b = prepare(cells), prepare(renamed)
    assert a.active == b.active and "generation" in a.active
    np.testing.assert_allclose(a.generation_x, b.generation_x, atol=1e-12)
    for term in a.bases:
        np.testing.assert_allclose(a.bases[term], b.bases[term], atol=1e-12)
    # On the version-number scale the renamed design differs: the slope's unit changed.
    num = prepare(renamed, EffectsSpec(generation_scale="number"))
    assert not np.allclose(num.generation_x, a.generation_x)
    with pytest.raises(WarehouseError, match="generation_scale must be one of rank, number, date"):
        EffectsSpec(generation_scale="decade")
    assert EffectsSpec.from_dict(EffectsSpec().to_dict()).generation_scale == "rank"


def test_design_is_its_definition():
    """prepare()'s covariates and constraint bases against docs/model.md, computed here
    from the cell table alone: each basis is orthonormal and spans exactly its
    constraint subspace (projectors compared, so the choice of basis does not matter)."""
    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_spec import TERMS, EffectsSpec
    from psystats.stats.simulate import simulate_cells

    c = simulate_cells(24, 9, n_families=4, n_types=3, n_domains=3, seed=4).cells
    d = prepare(c, EffectsSpec())
    assert d.active == list(TERMS)  # every term identified in this layout
    pairs = c.groupby("pair", sort=True).first()
    assert list(pairs.index) == d.coords["pair"]
    # Covariates: log size centred over pairs; rank within family, centred within family.
    logp = np.log(pairs["n_params"].to_numpy(float))
    np.testing.assert_allclose(d.size_x, logp - logp.mean(), atol=1e-12)
    rank = pairs.groupby("family")["generation_order"].rank(method="dense")
    gen = (rank - rank.groupby(pairs["family"]).transform("mean")).to_numpy()
    np.testing.assert_allclose(d.generation_x, gen, atol=1e-12)

    def centring(k):  # projector onto {v : sum v = 0}
        return np.eye(k) - np.ones((k, k)) / k

    def complement(X):  # projector onto the orthogonal complement of X's columns
        return np.eye(len(X)) - X @ np.linalg.pinv(X)

    def onehot(values, levels):
        return (np.asarray(values)[:, None] == np.asarray(levels)[None, :]).astype(float)

    T, D = len(d.coords["type"]), len(d.coords["domain"])
    exps = c.groupby("experiment", sort=True)["domain"].first()
    fam = onehot(pairs["family"], d.coords["family"])
    want = {
        "type": centring(T),
        "family": centring(len(d.coords["family"])),
        "domain": centring(D),
        "generation_family": centring(len(d.coords["generation_family"])),
        "type_domain": np.kron(centring(T), centring(D)),
        "experiment": complement(onehot(exps, d.coords["domain"])),
        "pair": complement(
            np.column_stack(
                [
                    np.ones(len(pairs)),
                    onehot(pairs["post_training"], d.coords["type"]),
                    fam,
                    d.size_x,
                    gen,
                    fam * gen[:, None],
                ]
            )
        ),
    }
    assert set(d.bases) == set(want)
    for term, P in want.items():
        B = d.bases[term]
        np.testing.assert_allclose(B.T @ B, np.eye(B.shape[1]), atol=1e-10, err_msg=term)
        np.testing.assert_allclose(B @ B.T, P, atol=1e-10, err_msg=term)


def test_simulated_warehouse_cells_scatter_as_their_standard_errors_say(db_path):
    """The warehouse simulate_warehouse writes: each cell's mean, read back through
    build_cells, sits around the truth (pair, domain, experiment effects) with variance
    sigma_cell^2 + participant_sd^2 / n (benchmarks/bench_sim_check.py does this over
    many seeds on the real layout)."""
    from psystats.stats.cells import build_cells
    from psystats.stats.simulate import add_synthetic_experiments, simulate_warehouse

    con = warehouse_db.open(db_path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=8, participants=25, responses=2, seed=2)
    sim = simulate_warehouse(
        con, families=("a", "b"), generations=(1, 2, 3), types=("instruct", "reasoning"), seed=5
    )
    cells = build_cells(con)
    con.close()
    tr = sim.truth
    dom = cells["domain"].fillna("(no domain)")
    expected = (
        cells["pair"].map(tr["pair_mean"])
        + dom.map(tr["domain"])
        + cells["experiment"].map(tr["experiment"])
        + [tr["type_domain"].loc[t, d] for t, d in zip(cells["post_training"], dom)]
    )
    z = (cells["mean"] - expected) / np.sqrt(tr["sigma_cell"] ** 2 + 0.3**2 / cells["n"])
    assert len(z) == 12 * 8 and z.notna().all()
    assert abs(z.mean()) < 3 / np.sqrt(len(z)) and 0.75 < z.std() < 1.25, (z.mean(), z.std())
    # The participants' own spread is what was simulated.
    assert np.sqrt(cells["var"].mean()) == pytest.approx(0.3, rel=0.05)
