"""The one fit pipeline (psystats.stats.pipeline): gates, checks, LOO, the stored record.

The fast tests hand the pipeline exact posterior draws of a conjugate model
(``run_fit(..., idata=...)``), so the gate rule, the predictive check, PSIS-LOO
and the stored record are tested on known draws without the cost of
compiling a sampler; LOO is checked against ``arviz.loo`` on a log-likelihood
computed independently with scipy.  One slow test samples for real.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

warnings.filterwarnings("ignore")

N_OBS = 30
PRIOR_SD = 5.0


def _data(seed: int = 0, n: int = N_OBS) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.5, 1.0, n)


def _model(y: np.ndarray, *, labels=None, helper: bool = True):
    """y_i ~ Normal(mu, 1), mu ~ Normal(0, 5); with a helper theta_raw -> theta = 2 theta_raw."""
    import pymc as pm

    labels = labels or [f"o{i}" for i in range(len(y))]
    with pm.Model(coords={"obs": labels}) as m:
        mu = pm.Normal("mu", 0.0, PRIOR_SD)
        if helper:
            raw = pm.Normal("theta_raw", 0.0, 1.0)
            pm.Deterministic("theta", 2 * raw)
        pm.Normal("y", mu, 1.0, observed=y, dims="obs")
    return m


def _exact_draws(
    y: np.ndarray, *, seed: int = 1, stuck: tuple[str, ...] = (), labels=None, draws: int = 250
):
    """Independent posterior draws (4 chains x ``draws``) of ``_model``; ``stuck`` variables
    get chains that sit in different places (R-hat far above any gate)."""
    import arviz as az

    rng = np.random.default_rng(seed)
    prec = 1 / PRIOR_SD**2 + len(y)
    post = {
        "mu": rng.normal(y.sum() / prec, 1 / np.sqrt(prec), size=(4, draws)),
        "theta_raw": rng.normal(0, 1, size=(4, draws)),
    }
    post["theta"] = 2 * post["theta_raw"]
    for name in stuck:  # after theta: a stuck helper need not make its image stuck
        post[name] = post[name] * 0.01 + np.arange(4)[:, None]
    labels = labels or [f"o{i}" for i in range(len(y))]
    return az.from_dict(
        posterior=post,
        sample_stats={"diverging": np.zeros((4, draws), dtype=bool)},
        observed_data={"y": y},
        dims={"y": ["obs"]},
        coords={"obs": labels},
    )


def _reference_loo(y: np.ndarray, idata):
    """arviz.loo on a log-likelihood computed with scipy, not with PyMC (same posterior, so
    the same relative ESS)."""
    import arviz as az
    import xarray as xr
    from scipy import stats

    mu = idata.posterior["mu"].values
    ll = stats.norm.logpdf(y[None, None, :], mu[..., None], 1.0)
    ref = az.InferenceData(
        posterior=idata.posterior,
        log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll)}),
    )
    return az.loo(ref, pointwise=True)


# --------------------------------------------------------------------------- the gate rule


def test_gate_rule_checks_reported_quantities_not_helpers():
    from psystats.stats.pipeline import run_fit
    from psystats.stats.sampling import DiagnosticsFailure, gated_vars

    y = _data()
    model = _model(y)
    assert gated_vars(model) == ["mu", "theta"]
    # A stuck helper (theta_raw) does not fail the fit; its reported image would.
    ok = run_fit(model, kind="t", idata=_exact_draws(y, stuck=("theta_raw",)), checks=False)
    assert ok.passed and ok.reported == ["mu", "theta"]
    assert ok.diagnostics.max_rhat < 1.01 and ok.diagnostics.min_ess_bulk > 400
    gates = ok.summary["gates"]
    assert gates["rhat_max"] == 1.01 and gates["ess_bulk_min"] == 400
    assert gates["variables"] == ["mu", "theta"]
    with pytest.raises(DiagnosticsFailure, match=r"R-hat .* \(at mu\)"):
        run_fit(model, kind="t", idata=_exact_draws(y, stuck=("mu",)), checks=False)
    kept = run_fit(
        model, kind="t", idata=_exact_draws(y, stuck=("mu",)), checks=False, allow_failure=True
    )
    assert not kept.passed and any("R-hat" in p for p in kept.diagnostics.problems)
    # An explicit reported list is what the gates look at.
    only_theta = run_fit(
        model, kind="t", idata=_exact_draws(y, stuck=("mu",)), reported=["theta"], checks=False
    )
    assert only_theta.passed and only_theta.summary["gates"]["variables"] == ["theta"]


def test_sampling_options_validate_like_the_cli():
    from psystats.stats.options import SamplingOptions

    assert SamplingOptions.of({"draws": 10}).draws == 10
    with pytest.raises(WarehouseError, match="unknown sampling option 'drwas' .*'draws'"):
        SamplingOptions.of({"drwas": 10})
    for bad in ({"draws": 0}, {"chains": 0}, {"tune": -1}, {"target_accept": 1.0}):
        with pytest.raises(WarehouseError):
            SamplingOptions.of(bad)
    with pytest.raises(WarehouseError, match="sampler must be one of nutpie, pymc"):
        SamplingOptions(sampler="stan")


# --------------------------------------------------------------------------- checks and LOO


def test_predictive_check_and_loo_match_an_independent_computation():
    from psystats.stats.pipeline import run_fit

    y = _data()
    idata = _exact_draws(y)
    res = run_fit(_model(y), kind="t", idata=idata)
    ref = _reference_loo(y, idata)
    loo = res.summary["loo"]["full"]
    assert loo["elpd_loo"] == pytest.approx(float(ref.elpd_loo), rel=1e-9)
    assert loo["p_loo"] == pytest.approx(float(ref.p_loo), rel=1e-9)
    assert loo["n_observations"] == N_OBS and loo["draws"] == 1000
    ppc = res.summary["ppc"]
    assert 300 <= ppc["draws"] <= 400 and 0.7 < ppc["coverage_90"] <= 1.0
    assert set(ppc["p_values"]) == {"mean", "sd", "min", "max"}
    assert res.idata.posterior_predictive["y"].shape[-1] == N_OBS
    group = res.idata["psystats_loo"]
    np.testing.assert_allclose(group["loo_i"].values, np.asarray(ref.loo_i), rtol=1e-9)
    np.testing.assert_allclose(group["observed"].values, y)
    assert list(group["observation"].values) == [f"o{i}" for i in range(N_OBS)]


def test_pointwise_loglik_hook_for_a_potential_likelihood():
    """A likelihood written as a Potential: no observed RV, so no PPC; LOO from the hook."""
    import pymc as pm
    import xarray as xr
    from scipy import stats

    from psystats.stats.pipeline import run_fit

    y = _data(3)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, PRIOR_SD)
        pm.Potential("lik", pm.logp(pm.Normal.dist(mu, 1.0), y).sum())
        raw = pm.Normal("theta_raw", 0.0, 1.0)
        pm.Deterministic("theta", 2 * raw)
    idata = _exact_draws(y)
    del idata.observed_data

    def hook(thin):
        mu_d = thin.posterior["mu"].values
        ll = stats.norm.logpdf(y[None, None, :], mu_d[..., None], 1.0)
        return xr.DataArray(
            ll, dims=("chain", "draw", "cell"), coords={"cell": [f"c{i}" for i in range(len(y))]}
        )

    with pytest.raises(ValueError, match="pointwise_observed"):
        run_fit(model, kind="t", idata=idata.copy(), pointwise_loglik=hook)
    res = run_fit(model, kind="t", idata=idata, pointwise_loglik=hook, pointwise_observed=y)
    ref = _reference_loo(y, idata)
    assert res.summary["loo"]["full"]["elpd_loo"] == pytest.approx(float(ref.elpd_loo), rel=1e-9)
    assert res.summary["ppc"] == {} and any("no posterior predictive" in n for n in res.notes)
    assert list(res.idata["psystats_loo"]["observation"].values)[:2] == ["c0", "c1"]


def test_several_observed_variables_are_checked_and_scored_together():
    import pymc as pm
    from scipy import stats

    from psystats.stats.pipeline import run_fit

    y1, y2 = _data(4, 12), _data(5, 8)
    with pm.Model(
        coords={"a": [f"a{i}" for i in range(12)], "b": [f"b{i}" for i in range(8)]}
    ) as m:
        mu = pm.Normal("mu", 0.0, PRIOR_SD)
        pm.Normal("y1", mu, 1.0, observed=y1, dims="a")
        pm.Normal("y2", mu, 1.0, observed=y2, dims="b")
    import arviz as az

    y = np.concatenate([y1, y2])
    idata = _exact_draws(y)
    idata = az.from_dict(
        posterior={"mu": idata.posterior["mu"].values},
        observed_data={"y1": y1, "y2": y2},
        dims={"y1": ["a"], "y2": ["b"]},
        coords={"a": [f"a{i}" for i in range(12)], "b": [f"b{i}" for i in range(8)]},
    )
    res = run_fit(m, kind="t", idata=idata, reported=["mu"])
    assert set(res.summary["ppc"]) == {"y1", "y2"}
    labels = list(res.idata["psystats_loo"]["observation"].values)
    assert labels[0] == "y1[a0]" and labels[-1] == "y2[b7]" and len(labels) == 20
    mu_d = idata.posterior["mu"].values
    ll = stats.norm.logpdf(y[None, None, :], mu_d[..., None], 1.0)
    ref = az.loo(az.from_dict(posterior={"mu": mu_d}, log_likelihood={"y": ll}))
    assert res.summary["loo"]["full"]["elpd_loo"] == pytest.approx(float(ref.elpd_loo), rel=1e-9)


# --------------------------------------------------------------------------- the stored record


def test_netcdf_alone_carries_spec_priors_selection_dropped_and_versions(db_path, tmp_path):
    import arviz as az

    from psystats.stats.options import StoreOptions
    from psystats.stats.pipeline import run_fit

    y = _data()
    con = warehouse_db.open(db_path, "write", create=True)
    res = run_fit(
        _model(y),
        kind="test",
        idata=_exact_draws(y),
        spec={"terms": {"mu": True, "tau": False}},
        priors={"mu": {"dist": "Normal", "mu": 0, "sigma": 5.0 * 88.7}},
        selection={"condition": "plain", "models": ["m1"], "experiments": ["e1"]},
        dropped={"tau": "one group: its scale cannot be learned"},
        notes=["tau was dropped"],
        summary={"own": 1.5},
        con=con,
        condition="plain",
        scale="nats",
        store=StoreOptions(name="n1", netcdf_dir=tmp_path),
    )
    row = con.execute(
        "SELECT kind, name, condition, scale, passed, netcdf_path FROM fits WHERE fit_id = ?",
        [res.fit_id],
    ).fetchall()[0]
    params = {
        r[0]
        for r in con.execute(
            "SELECT parameter FROM fit_params WHERE fit_id = ?", [res.fit_id]
        ).fetchall()
    }
    con.close()
    assert row[:5] == ("test", "n1", "plain", "nats", True) and params == {"mu", "theta"}
    # Only arviz and json: the file stands alone.
    idata = az.from_netcdf(row[5])
    rec = json.loads(idata.attrs["psystats_fit"])
    assert rec["fit_id"] == res.fit_id and rec["kind"] == "test" and rec["passed"] is True
    assert rec["spec"] == {"terms": {"mu": True, "tau": False}}
    assert rec["priors"]["mu"]["sigma"] == pytest.approx(443.5)
    assert rec["selection"] == {"condition": "plain", "models": ["m1"], "experiments": ["e1"]}
    assert rec["dropped_terms"] == {"tau": "one group: its scale cannot be learned"}
    assert rec["notes"] == ["tau was dropped"]
    assert rec["gates"]["variables"] == ["mu", "theta"]
    assert rec["diagnostics"]["passed"] is True and rec["condition"] == "plain"
    v = rec["versions"]
    for pkg in ("psystats", "pymc", "nutpie", "arviz", "numpy", "duckdb", "python"):
        assert v[pkg], pkg
    import arviz
    import numpy

    assert v["arviz"] == arviz.__version__ and v["numpy"] == numpy.__version__
    assert {"posterior", "posterior_predictive", "observed_data", "psystats_loo"} <= set(
        idata.groups()
    )
    assert rec["summary"]["own"] == 1.5 and "elpd_loo" in rec["summary"]["loo"]["full"]


# --------------------------------------------------------------------------- fit compare


def _stored(con, tmp_path, y, *, seed=1, labels=None, scale="nats"):
    """A stored fit whose draws carry their log-likelihood (computed with scipy): the
    pipeline scores a ``log_likelihood`` group already on the posterior as it is."""
    import xarray as xr
    from scipy import stats

    from psystats.stats.pipeline import run_fit

    idata = _exact_draws(y, seed=seed, labels=labels)
    mu = idata.posterior["mu"].values
    ll = stats.norm.logpdf(y[None, None, :], mu[..., None], 1.0)
    idata.add_groups({"log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), ll)})})
    return run_fit(
        _model(y, labels=labels),
        kind="test",
        idata=idata,
        ppc=False,  # LOO is what compare needs
        con=con,
        scale=scale,
        store={"netcdf_dir": tmp_path},
    ).fit_id


def test_compare_refuses_other_data_and_names_what_differs(db_path, tmp_path):
    from psystats.cli import main
    from psystats.stats.compare import compare_fits

    y = _data()
    con = warehouse_db.open(db_path, "write", create=True)
    a = _stored(con, tmp_path, y)
    fewer = _stored(con, tmp_path, y[:20], scale="standardised")
    other = _stored(con, tmp_path, np.where(np.arange(N_OBS) == 3, y + 1, y))
    renamed = _stored(con, tmp_path, y, labels=[f"x{i}" for i in range(N_OBS)])
    with pytest.raises(
        WarehouseError, match="30 vs 20 observations; scale 'nats' vs 'standardised'"
    ):
        compare_fits(con, [a, fewer])
    with pytest.raises(WarehouseError, match="different observed values, first at 'o3'"):
        compare_fits(con, [a, other])
    with pytest.raises(WarehouseError, match="observation 1 is 'o0' in one and 'x0'"):
        compare_fits(con, [a, renamed])
    con.close()
    res = CliRunner().invoke(main, ["--db", str(db_path), "fit", "compare", str(a), str(fewer)])
    assert res.exit_code == 1 and "30 vs 20 observations" in res.output
    assert "Traceback" not in res.output


def test_compare_matches_observations_listed_in_another_order(db_path, tmp_path):
    import arviz as az

    from psystats.stats.compare import compare_fits

    y = _data()
    labels = [f"o{i}" for i in range(N_OBS)]
    perm = np.random.default_rng(7).permutation(N_OBS)
    con = warehouse_db.open(db_path, "write", create=True)
    a = _stored(con, tmp_path, y, seed=1)
    b = _stored(con, tmp_path, y[perm], seed=2, labels=[labels[i] for i in perm])
    got = compare_fits(con, [a, b]).set_index("fit")
    con.close()
    ref_a = _reference_loo(y, _exact_draws(y, seed=1))
    ref_b = _reference_loo(y[perm], _exact_draws(y[perm], seed=2, labels=[labels[i] for i in perm]))
    assert got.loc[f"fit {a}", "elpd_loo"] == pytest.approx(float(ref_a.elpd_loo), rel=1e-9)
    assert got.loc[f"fit {b}", "elpd_loo"] == pytest.approx(float(ref_b.elpd_loo), rel=1e-9)
    # The SE of the difference pairs each observation with itself.
    pw = np.asarray(ref_a.loo_i) - np.asarray(ref_b.loo_i)[np.argsort(perm)]
    worse = got.iloc[1]
    assert worse["dse"] == pytest.approx(float(np.sqrt(N_OBS * np.var(pw))), rel=1e-6)
    assert az is not None


# --------------------------------------------------------------------------- one option block


@pytest.mark.parametrize("command", ["effects", "formula", "generations", "persona", "accuracy"])
def test_every_fit_command_validates_sampling_options_alike(command, tmp_path):
    from psystats.cli import main

    args = ["--db", str(tmp_path / "none.duckdb"), "fit", command]
    if command == "formula":
        args.append("mean ~ type")
    runner = CliRunner()
    for bad in (
        ["--draws", "0"],
        ["--draws", "99999999999999999999"],
        ["--chains", "0"],
        ["--tune", "-1"],
        ["--seed", "-1"],
        ["--target-accept", "1.5"],
        ["--target-accept", "nan"],
        ["--redraws", "6"],
        ["--sampler", "stan"],
    ):
        res = runner.invoke(main, args + bad)
        assert res.exit_code == 2 and "Invalid value" in res.output, (bad, res.output)
        assert "Traceback" not in res.output and not isinstance(res.exception, OverflowError)
    assert not (tmp_path / "none.duckdb").exists()  # refused before the warehouse opened
    help_text = runner.invoke(main, ["fit", command, "--help"]).output
    for opt in (
        "--draws",
        "--tune",
        "--chains",
        "--seed",
        "--sampler",
        "--target-accept",
        "--redraws",
        "--allow-diagnostics-failure",
        "--name",
        "--netcdf-dir",
    ):
        assert opt in help_text, (command, opt)


@pytest.mark.slow
def test_run_fit_samples_and_recovers_a_conjugate_posterior(db_path, tmp_path):
    """Sampled for real (nutpie): the posterior matches the exact one within MC error."""
    from psystats.stats.options import SamplingOptions
    from psystats.stats.pipeline import run_fit

    y = _data()
    con = warehouse_db.open(db_path, "write", create=True)
    res = run_fit(
        _model(y),
        kind="test",
        sampling=SamplingOptions(draws=1000, tune=500, chains=4, seed=3),
        allow_failure=True,
        con=con,
        store={"netcdf_dir": tmp_path},
    )
    con.close()
    prec = 1 / PRIOR_SD**2 + N_OBS
    mu = res.idata.posterior["mu"].values.ravel()
    assert abs(mu.mean() - y.sum() / prec) < 0.05 and abs(mu.std() - prec**-0.5) < 0.03
    assert res.summary["sampler"]["sampler"] == "nutpie" and res.fit_id is not None
    assert res.summary["loo"]["full"]["n_observations"] == N_OBS


@pytest.mark.slow
def test_effects_netcdf_record_matches_the_fit(db_path, tmp_path):
    """A real effects fit through the pipeline: its .nc alone gives back the priors after
    autoscaling, the terms it dropped (with the reasons) and the data it saw."""
    import arviz as az

    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions, StoreOptions
    from psystats.stats.pipeline import save_result
    from psystats.stats.simulate import simulate_cells

    cells = simulate_cells(4, 6, n_families=2, n_types=2, n_domains=1, seed=3).cells
    cells["y"], cells["se"] = cells["y"] * 60, cells["se"] * 60  # forces autoscaled priors
    sampling = SamplingOptions(draws=300, tune=300, seed=1)
    fit = fit_cells(cells, EffectsFitSpec(compare=()), sampling, allow_failure=True)
    assert fit.data.prior_scale > 1 and fit.data.dropped
    fit.selection = {"experiments": sorted(cells["experiment"].unique().tolist())}
    con = warehouse_db.open(db_path, "write", create=True)
    fid = save_result(con, fit, StoreOptions(netcdf_dir=tmp_path))
    path = scalar(con, "SELECT netcdf_path FROM fits WHERE fit_id = ?", [fid])
    con.close()
    rec = json.loads(az.from_netcdf(path).attrs["psystats_fit"])
    assert rec["kind"] == "effects" and rec["fit_id"] == fid
    assert rec["priors"] == json.loads(json.dumps(fit.extras["fitted_spec"].all_priors()))
    assert rec["dropped_terms"] == json.loads(json.dumps(fit.data.dropped))
    assert rec["spec"]["terms"] == json.loads(json.dumps(fit.spec["terms"]))
    assert rec["selection"]["experiments"] == sorted(cells["experiment"].unique().tolist())
    assert rec["summary"]["prior_scale"] == pytest.approx(fit.data.prior_scale)
    assert rec["gates"]["variables"] == fit.reported
    assert rec["versions"]["pymc"] and rec["versions"]["python"]


def _diag(**kw):
    from psystats.stats.sampling import Diagnostics

    base = dict(
        max_rhat=1.003, min_ess_bulk=900.0, min_ess_tail=800.0, divergences=0, min_bfmi=0.9,
        n_chains=4, n_draws=1000, passed=True,
    )  # fmt: skip
    base.update(kw)
    return Diagnostics(**base)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, False),  # passed: nothing to redo
        ({"min_ess_tail": 370.0, "passed": False}, True),  # the two_pairs grid miss
        ({"max_rhat": 1.013, "passed": False}, True),
        ({"max_rhat": 1.2, "passed": False}, False),  # far off: look, do not outlast
        ({"min_ess_bulk": 40.0, "passed": False}, False),
        ({"divergences": 3, "min_ess_tail": 370.0, "passed": False}, False),  # geometry
        ({"max_rhat": float("nan"), "passed": False}, False),
        ({"n_chains": 1, "min_ess_tail": 370.0, "passed": False}, False),
    ],
)
def test_redraw_only_for_narrow_misses_of_rhat_or_ess(kw, expected):
    from psystats.stats.pipeline import redraw_may_help

    assert redraw_may_help(_diag(**kw)) is expected


def test_redraws_option_is_validated_and_not_passed_to_the_sampler():
    from psystats.stats.options import SamplingOptions

    assert "redraws" not in SamplingOptions().sampler_kwargs() and SamplingOptions().redraws == 2
    with pytest.raises(WarehouseError, match="redraws"):
        SamplingOptions(redraws=-1)


@pytest.mark.parametrize(
    ("kw", "draws", "ta", "expected"),
    [
        ({}, 1000, 0.95, None),
        # a few divergences: a smaller step, the same draws
        ({"divergences": 3, "passed": False}, 1000, 0.95, {"draws": 1000, "target_accept": 0.99}),
        ({"divergences": 3, "passed": False}, 1000, 0.99, None),  # already careful: look
        ({"divergences": 200, "passed": False}, 1000, 0.95, None),  # 5%: a wall, not a neck
        # the allowance is a count, whatever the draws: 10 retry, 11 do not, at any length
        ({"divergences": 10, "passed": False}, 1000, 0.95, {"draws": 1000, "target_accept": 0.99}),
        (
            {"divergences": 10, "n_draws": 100, "passed": False},
            100,
            0.95,
            {"draws": 100, "target_accept": 0.99},
        ),
        ({"divergences": 11, "n_draws": 100_000, "passed": False}, 100_000, 0.95, None),
        # a narrow ESS miss without divergences: longer chains
        (
            {"min_ess_tail": 370.0, "passed": False},
            1000,
            0.99,
            {"draws": 2000, "target_accept": 0.99},
        ),
        ({"max_rhat": 1.3, "passed": False}, 1000, 0.95, None),
    ],
)
def test_next_attempt_mends_only_what_sampling_can(kw, draws, ta, expected):
    from psystats.stats.pipeline import next_attempt

    assert next_attempt(_diag(**kw), draws=draws, target_accept=ta) == expected


def test_a_failed_retry_names_every_attempt_and_advises_only_what_was_not_tried():
    from psystats.stats.sampling import DiagnosticsFailure, enforce, failure_message

    diag = _diag(divergences=3, passed=False, problems=["3 divergent transitions"])
    attempts = [
        {"draws": 1000, "target_accept": 0.95, "problems": ["5 divergent transitions"]},
        {"draws": 1000, "target_accept": 0.99, "problems": ["3 divergent transitions"]},
    ]
    msg = failure_message(diag, attempts)
    assert "Sampled 2 times: 1000 draws per chain at target_accept 0.95 (5 divergent" in msg
    assert "then 1000 draws per chain at target_accept 0.99 (3 divergent transitions)" in msg
    assert "--target-accept" not in msg and "survived target_accept 0.99" in msg
    assert "--allow-diagnostics-failure" in msg
    first = failure_message(diag, attempts[:1])
    assert "raise --target-accept to 0.99" in first and "Sampled" not in first
    ess = _diag(min_ess_tail=300.0, passed=False, problems=["tail ESS 300 < 400"])
    assert "more --draws/--tune" in failure_message(ess, attempts[:1])
    with pytest.raises(DiagnosticsFailure, match="Sampled 2 times"):
        enforce(diag, False, attempts)


def test_retries_are_recorded_and_printed_the_same_way_for_every_kind(db_path, tmp_path):
    """The one printer: notes (each retry is one), the gates line with the retries, where
    the fit is stored; summary.sampler keeps 'redrawn' (the report reads it) and 'retries'."""
    import click

    from psystats.commands.fit_output import print_fit
    from psystats.stats.pipeline import run_fit

    y = _data()
    con = warehouse_db.open(db_path, "write", create=True)
    res = run_fit(
        _model(y), kind="t", idata=_exact_draws(y), con=con, store={"netcdf_dir": tmp_path}
    )
    con.close()
    assert res.summary["sampler"]["retries"] == 0 and res.redrawn == []
    res.summary["sampler"]["redrawn"] = [
        {"draws": 1000, "target_accept": 0.95, "divergences": 2, "problems": ["2 divergent"]}
    ]
    res.notes.append("retry 1: 1000 draws per chain at target_accept 0.95 missed the gates")

    @click.command()
    def show():
        print_fit(res)

    out = CliRunner().invoke(show).output
    lines = out.splitlines()
    assert "note: retry 1: 1000 draws per chain at target_accept 0.95" in out
    assert any(ln.startswith("gates passed after 1 retry: max R-hat") for ln in lines), out
    assert (
        f"stored: fit {res.fit_id} (fits, fit_params) and its posterior in {res.netcdf_path}" in out
    )
    assert str(tmp_path) in res.netcdf_path


# --------------------------------------------------------------------------- stored log-likelihood


def test_the_stored_netcdf_alone_gives_the_fits_loo(db_path, tmp_path):
    """Thinned draws (2,000 > 1,000): arviz.loo on the file reproduces the stored LOO, whose
    pointwise values match an independent scipy log-likelihood of the same thinned draws."""
    import arviz as az
    from reanalysis_helpers import assert_loo_stands_alone
    from scipy import stats

    from psystats.stats.pipeline import run_fit

    y = _data()
    idata = _exact_draws(y, draws=500)
    con = warehouse_db.open(db_path, "write", create=True)
    res = run_fit(_model(y), kind="t", idata=idata, con=con, store={"netcdf_dir": tmp_path})
    con.close()
    stored = az.from_netcdf(res.netcdf_path)
    ll = stored.log_likelihood["y"]
    assert ll.sizes["chain"] * ll.sizes["draw"] == 1000 and list(stored.log_likelihood) == ["y"]
    mu = stored.posterior["mu"].sel(draw=ll["draw"]).values
    ref = stats.norm.logpdf(y[None, None, :], mu[..., None], 1.0)
    np.testing.assert_allclose(ll.values, ref, rtol=1e-9)
    assert_loo_stands_alone(res.netcdf_path, res.summary)
    assert res.summary["loo"]["full"]["draws"] == 1000
