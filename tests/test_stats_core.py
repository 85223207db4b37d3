"""Sampling, diagnostics gates, fit storage, the warehouse -> cells path (psystats.stats)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

warnings.filterwarnings("ignore", category=FutureWarning)

EIGHT_Y = np.array([28, 8, -3, 7, -1, 1, 18, 12.0])
EIGHT_SIGMA = np.array([15, 10, 16, 11, 9, 11, 10, 18.0])


def eight_schools_model():
    import pymc as pm

    with pm.Model(coords={"school": list("ABCDEFGH")}) as m:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        z = pm.Normal("z", 0, 1, dims="school")
        theta = pm.Deterministic("theta", mu + tau * z, dims="school")
        pm.Normal("y", theta, EIGHT_SIGMA, observed=EIGHT_Y, dims="school")
    return m


@pytest.fixture(scope="module")
def eight_idata():
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import sample

    opts = SamplingOptions(draws=2000, tune=1000, chains=4, seed=1, target_accept=0.9)
    return sample(eight_schools_model(), opts)


def test_eight_schools_reproduces_published_posterior(eight_idata):
    # Non-centred eight schools (Rubin 1981; Gelman et al. BDA3 5.5; PyMC/Stan
    # case studies): mu 4.4 (sd 3.3), tau 3.6 (sd 3.2).
    from psystats.stats.sampling import diagnose, sampler_record

    post = eight_idata.posterior
    assert abs(float(post.mu.mean()) - 4.4) < 0.4
    assert abs(float(post.mu.std()) - 3.3) < 0.3
    assert abs(float(post.tau.mean()) - 3.6) < 0.4
    assert abs(float(post.tau.std()) - 3.2) < 0.5
    assert set(post.data_vars) == {"mu", "tau", "z", "theta"}  # no unconstrained copies
    rec = sampler_record(eight_idata)
    assert rec["sampler"] == "nutpie" and rec["seed"] == 1 and rec["chains"] == 4
    d = diagnose(eight_idata)
    # Convergence with margins another CPU or BLAS cannot cross (8,000 draws: R-hat is
    # typically 1.001-1.003, bulk ESS in the thousands); the gates' edges are not asserted.
    assert d.max_rhat < 1.02 and d.min_ess_bulk > 200 and d.divergences <= 5, d.problems
    assert len(d.bfmi) == 4


@pytest.mark.slow
def test_diagnostics_gate_fails_on_short_single_chain():
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import DiagnosticsFailure, diagnose, enforce, sample

    opts = SamplingOptions(draws=30, tune=30, chains=1, seed=0, sampler="pymc", target_accept=0.9)
    idata = sample(eight_schools_model(), opts)
    d = diagnose(idata)
    assert not d.passed
    assert any("chain" in p for p in d.problems) and any("ESS" in p for p in d.problems)
    with pytest.raises(DiagnosticsFailure, match="bulk ESS"):
        enforce(d, allow_failure=False)
    enforce(d, allow_failure=True)  # logged, not raised
    json.dumps(d.to_dict())  # NaN-free, storable


def test_save_and_load_fit_roundtrip(eight_idata, db_path):
    from psystats.stats.sampling import diagnose
    from psystats.stats.store import load_fit, save_fit

    con = warehouse_db.open(db_path, "write", create=True)
    fid = save_fit(
        con,
        kind="test",
        idata=eight_idata,
        spec={"model": "eight schools"},
        priors={"mu": "Normal(0, 5)"},
        diagnostics=diagnose(eight_idata),
        summary={"x": float("nan")},
        seconds=1.5,
        labels={"theta": "school {school}"},
    )
    rows = con.execute(
        "SELECT parameter, label, coords, mean, q05, q95, hdi_low, hdi_high, r_hat "
        "FROM fit_params WHERE fit_id = ? ORDER BY parameter, label",
        [fid],
    ).fetchall()
    # One row per scalar element: mu, tau, 8 z, 8 theta.
    assert len(rows) == 18
    theta_a = [r for r in rows if r[0] == "theta" and r[1] == "school A"][0]
    assert json.loads(theta_a[2]) == {"school": "A"}
    draws = eight_idata.posterior.theta.sel(school="A").values.ravel()
    assert theta_a[3] == pytest.approx(draws.mean())
    assert theta_a[4] == pytest.approx(np.quantile(draws, 0.05))
    assert theta_a[5] == pytest.approx(np.quantile(draws, 0.95))
    assert theta_a[6] < theta_a[3] < theta_a[7]
    row, idata = load_fit(con, fid)
    assert row["kind"] == "test" and row["passed"] is True and row["summary"] == {"x": None}
    assert row["sampler"]["sampler"] == "nutpie"
    assert row["netcdf_path"].endswith(f"test.duckdb.fits/fit-{fid}.nc")
    np.testing.assert_allclose(idata.posterior.mu.values, eight_idata.posterior.mu.values)
    # The NetCDF stands alone: spec, priors, sampler and package versions in its attrs.
    from psystats.stats.store import netcdf_attrs

    rec = netcdf_attrs(row["netcdf_path"])
    assert rec["fit_id"] == fid and rec["kind"] == "test"
    assert rec["spec"] == {"model": "eight schools"} and rec["priors"] == {"mu": "Normal(0, 5)"}
    assert rec["sampler"]["environment"]["packages"] and rec["passed"] is True
    with pytest.raises(WarehouseError, match="no fit with fit_id 999"):
        load_fit(con, 999)


def test_save_fit_failure_leaves_nothing(eight_idata, db_path, tmp_path):
    from psystats.stats.store import save_fit

    con = warehouse_db.open(db_path, "write", create=True)
    with pytest.raises(Exception):
        save_fit(con, kind=None, idata=eight_idata, netcdf_dir=tmp_path / "nc")  # kind NOT NULL
    assert scalar(con, "SELECT count(*) FROM fits") == 0
    assert scalar(con, "SELECT count(*) FROM fit_params") == 0
    assert list((tmp_path / "nc").iterdir()) == []


# ---------------------------------------------------------------------------
# warehouse -> participant differences -> cells


@pytest.fixture(scope="module")
def sim_warehouse(small_warehouse, tmp_path_factory):
    """The small real warehouse + synthetic experiments, scored by simulated models."""
    from psystats.stats.simulate import add_synthetic_experiments, simulate_warehouse

    path = tmp_path_factory.mktemp("simwh") / "sim.duckdb"
    shutil.copy(small_warehouse, path)
    con = warehouse_db.open(path, "write", create=True)
    add_synthetic_experiments(
        con, n_experiments=6, participants=10, responses=4, domains=["Risky Choice", "Memory", None]
    )
    sim = simulate_warehouse(con, seed=3)
    con.close()
    return path, sim


def _reference_cells(con) -> pd.DataFrame:
    """Cells computed independently with pandas from the raw tables."""
    scores = con.execute(
        "SELECT s.run_id, s.response_id, s.nll, s.n_tokens, sr.model "
        "FROM scores s JOIN score_runs sr USING (run_id) "
        "WHERE sr.status = 'complete'"
    ).df()
    resp = con.execute("SELECT response_id, participant_key, experiment FROM responses").df()
    models = con.execute("SELECT name, base_model FROM models WHERE base_model IS NOT NULL").df()
    s = scores.merge(resp, on="response_id")
    out = []
    for post, base in zip(models.name, models.base_model):
        a = s[s.model == post][["response_id", "participant_key", "experiment", "nll"]]
        b = s[s.model == base][["response_id", "nll"]]
        m = a.merge(b, on="response_id", suffixes=("_p", "_b"))
        per = (
            m.groupby(["experiment", "participant_key"])
            .agg(mp=("nll_p", "mean"), mb=("nll_b", "mean"))
            .reset_index()
        )
        per["d"] = per.mp - per.mb
        for exp, g in per.groupby("experiment"):
            out.append(
                dict(
                    pair=f"{post} vs {base}",
                    experiment=exp,
                    n=len(g),
                    mean=g.d.mean(),
                    var=g.d.var(ddof=1),
                    sd_post=g.mp.std(ddof=1),
                    sd_base=g.mb.std(ddof=1),
                )
            )
    return pd.DataFrame(out)


def test_cells_match_independent_computation(sim_warehouse):
    from psystats.stats.cells import aggregate_cells, build_cells, participant_differences

    path, _ = sim_warehouse
    con = warehouse_db.open(path)
    cells = build_cells(con)
    ref = _reference_cells(con)
    assert len(cells) == len(ref) == 8 * 8  # 8 pairs x 8 experiments
    m = cells.merge(ref, on=["pair", "experiment"], suffixes=("", "_ref"))
    for col in ("n", "mean", "var", "sd_post", "sd_base"):
        np.testing.assert_allclose(m[col].astype(float), m[col + "_ref"].astype(float), rtol=1e-9)
    agg = aggregate_cells(participant_differences(con)).merge(
        cells, on=["pair", "experiment"], suffixes=("", "_sql")
    )
    np.testing.assert_allclose(agg["var"], agg["var_sql"], rtol=1e-9)
    assert set(cells.post_training) == {"instruct", "reasoning"}
    assert cells.domain.isna().sum() == 2 * 8  # synthetic experiments without a domain


def test_participant_means_and_latest_run(sim_warehouse, tmp_path):
    from psystats.stats.cells import build_cells
    from psystats.stats.data import pairs, participant_means

    path = tmp_path / "w.duckdb"
    shutil.copy(sim_warehouse[0], path)
    con = warehouse_db.open(path, "write", create=True)
    pm_ = participant_means(con, condition="plain", models=["sim-qwen1-base"])
    raw = con.execute(
        "SELECT r.participant_key, avg(s.nll) FROM scores s JOIN score_runs sr "
        "USING (run_id) JOIN responses r USING (response_id) "
        "WHERE sr.model = 'sim-qwen1-base' GROUP BY 1"
    ).df()
    m = pm_.merge(raw, on="participant_key")
    assert len(m) == len(raw) and np.allclose(m.mean_nll, m.iloc[:, -1])
    assert pairs(con).shape[0] == 8
    before = build_cells(con, models=["sim-qwen1-instruct"])
    # A newer complete run replaces the old one; a failed run is ignored.
    old = scalar(con, "SELECT run_id FROM score_runs WHERE model = 'sim-qwen1-instruct'")
    for status, shift in (("complete", 1.0), ("failed", 50.0)):
        new = scalar(con, "SELECT nextval('run_id_seq')")
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version,"
            " started_at, finished_at, status) VALUES (?, 'sim-qwen1-instruct', 'plain',"
            " 'x', 'x', current_timestamp, current_timestamp + INTERVAL 1 SECOND, ?)",
            [new, status],
        )
        con.execute(
            "INSERT INTO scores (run_id, response_id, nll, n_tokens) SELECT ?, response_id,"
            " nll + ?, n_tokens FROM scores WHERE run_id = ?",
            [new, shift, old],
        )
    after = build_cells(con, models=["sim-qwen1-instruct"])
    np.testing.assert_allclose(after["mean"], before["mean"] + 1.0)
    np.testing.assert_allclose(after["var"], before["var"])


def test_a_newer_sample_never_displaces_a_full_run(sim_warehouse, tmp_path):
    """A full run counts before a newer sampled one; where only samples exist, the newest does."""
    from psystats.stats.cells import build_cells
    from psystats.stats.data import latest_runs

    path = tmp_path / "w.duckdb"
    shutil.copy(sim_warehouse[0], path)
    con = warehouse_db.open(path, "write", create=True)
    full = scalar(con, "SELECT run_id FROM score_runs WHERE model = 'sim-qwen1-instruct'")
    before = build_cells(con, models=["sim-qwen1-instruct"])

    def add_run(source: int, shift: float, sample_spec: str | None) -> int:
        new = scalar(con, "SELECT nextval('run_id_seq')")
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version,"
            " started_at, finished_at, status, sample_spec) VALUES (?, 'sim-qwen1-instruct',"
            " 'plain', 'x', 'x', current_timestamp, current_timestamp + INTERVAL 1 SECOND,"
            " 'complete', ?)",
            [new, sample_spec],
        )
        con.execute(
            "INSERT INTO scores (run_id, response_id, nll, n_tokens) SELECT ?, response_id,"
            " nll + ?, n_tokens FROM scores WHERE run_id = ?",
            [new, shift, source],
        )
        return new

    sampled = add_run(full, 3.0, "participants=5 per experiment, seed=0")
    chosen = latest_runs(con, ["plain"], models=["sim-qwen1-instruct"])
    assert set(chosen["run_id"]) == {full}
    np.testing.assert_allclose(
        build_cells(con, models=["sim-qwen1-instruct"])["mean"], before["mean"]
    )
    # Only samples: the newest sample counts (the full run's status no longer complete).
    con.execute("UPDATE score_runs SET status = 'failed' WHERE run_id = ?", [full])
    newer = add_run(sampled, 1.0, "participants=5 per experiment, seed=1")
    assert set(latest_runs(con, ["plain"], models=["sim-qwen1-instruct"])["run_id"]) == {newer}
    con.close()


def test_no_pairs_is_a_clear_error(small_warehouse):
    from psystats.stats.cells import build_cells

    con = warehouse_db.open(small_warehouse)
    with pytest.raises(WarehouseError, match="no \\(post-trained, base\\) pairs"):
        build_cells(con)


def test_suffstat_identity_equals_row_level_loglik():
    from psystats.stats.cells import suffstat_loglik

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 300):
        d = rng.normal(0.2, 0.5, n)
        var = d.var(ddof=1) if n > 1 else np.nan
        for mu, s in ((0.0, 0.5), (0.3, 1.7)):
            assert suffstat_loglik(n, d.mean(), var, mu, s) == pytest.approx(
                stats.norm.logpdf(d, mu, s).sum(), rel=1e-12
            )


def test_save_fit_element_coords_written_with_the_fit(eight_idata, db_path):
    """element_coords replaces a dimension's coords per element, in save_fit's one transaction."""
    from psystats.stats.store import save_fit

    con = warehouse_db.open(db_path, "write", create=True)
    override = {
        "school": {"A": {"state": "NJ", "school": "A"}, "C": {"state": "NY", "school": "C"}}
    }
    fid = save_fit(
        con,
        kind="test",
        idata=eight_idata,
        var_names=["theta"],
        labels={"theta": "school {school}"},
        element_coords=override,
    )
    rows = dict(
        con.execute("SELECT label, coords FROM fit_params WHERE fit_id = ?", [fid]).fetchall()
    )
    assert json.loads(rows["school A"]) == {"state": "NJ", "school": "A"}
    assert json.loads(rows["school C"]) == {"state": "NY", "school": "C"}
    assert json.loads(rows["school B"]) == {"school": "B"}  # not overridden: the default
    # A failing save with element_coords leaves nothing (no second, separate write).
    with pytest.raises(Exception):
        save_fit(con, kind=None, idata=eight_idata, element_coords=override)
    assert scalar(con, "SELECT count(*) FROM fits") == 1


def test_save_fit_writes_each_parameters_unit(eight_idata, db_path):
    """fit_params.unit from the summary's units; NULL where none is given."""
    from psystats.stats.store import save_fit

    con = warehouse_db.open(db_path, "write", create=True)
    units = {"mu": "nats", "theta": "nats per year"}
    fid = save_fit(con, kind="test", idata=eight_idata, summary={"units": units})
    rows = con.execute(
        "SELECT DISTINCT parameter, unit FROM fit_params WHERE fit_id = ? ORDER BY parameter",
        [fid],
    ).fetchall()
    assert rows == [("mu", "nats"), ("tau", None), ("theta", "nats per year"), ("z", None)]
    fid2 = save_fit(con, kind="test", idata=eight_idata, summary={"x": 1})
    got = con.execute("SELECT count(*) FROM fit_params WHERE fit_id = ? AND unit IS NULL", [fid2])
    assert got.fetchall()[0][0] == 18
    con.close()


def test_stats_internals_have_no_function_over_120_lines():
    """Issue 20: small functions with one job; the statistics internals, measured by
    scripts/check_function_length.py."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "check_function_length.py"
    spec = importlib.util.spec_from_file_location("check_function_length", path)
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    modules = (
        "effects_design effects_model effects_spec generations persona accuracy likelihoods "
        "cells data base_cells option_groups simulate demo_study cohens_d generation_scale units"
    ).split()
    internals = [f"psystats/stats/{m}.py:" for m in modules]
    long = [where for _, where in check.long_functions(120) if where.startswith(tuple(internals))]
    assert not long, long
