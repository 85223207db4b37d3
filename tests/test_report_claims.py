"""The report claims only what holds: scope of persona verdicts, in-sample coverage beside
LOO-PIT calibration, multiplicity notes, ROPE outlook, units, retries (issue 19)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from psystats.reports import queries as q
from psystats.reports import section_data
from psystats.reports.blocks import Figure, Para, Table, esc
from psystats.reports.content import build_report
from psystats.reports.section_diagnostics import loo_pit
from psystats.reports.section_persona import rope_outlook
from psystats.warehouse import db as warehouse_db
from report_fixture import REDRAWN, full_copy


@pytest.fixture(scope="module")
def full(small_warehouse: Path, tmp_path_factory):
    return full_copy(small_warehouse, tmp_path_factory.mktemp("claims"))


@pytest.fixture(scope="module")
def report(full):
    con = warehouse_db.open(full[0])
    r = build_report(con)
    con.close()
    yield r
    r.close()


def texts(blocks) -> str:
    return " ".join(getattr(b, "text", "") or getattr(b, "caption", "") or "" for b in blocks)


def table(blocks, start: str) -> Table:
    return next(b for b in blocks if isinstance(b, Table) and (b.caption or "").startswith(start))


def test_persona_scope_follows_the_fits_model_effects(report):
    from psystats.reports.section_methods import kind_words
    from psystats.reports.section_persona import persona_scope

    # The stored fit has no model_effects: the default (fixed) is what it did.
    s6, s8 = texts(report.section(6).blocks), texts(report.section("Methods").blocks)
    assert "hold for those models only" in s6
    assert "models scored only" in s8 and "hierarchical over experiments and models" not in s8
    for spec, own in (({"model_effects": "fixed"}, True), ({"model_effects": "random"}, False)):
        fit = {"spec": spec}
        assert ("hold for those models only" in persona_scope(fit)) is own
        assert ("models scored only" in kind_words("persona", fit)) is own
        assert ("drawn from a population of models" in kind_words("persona", fit)) is not own


def test_heatmap_count_carries_a_multiplicity_note(report):
    s3 = report.section(3).blocks
    cells = next(b for b in s3 if isinstance(b, Figure)).data
    k, n = int(cells["credible"].sum()), len(cells)
    note = next(b.text for b in s3 if isinstance(b, Para) and "multiplicity" in b.text)
    assert note.startswith(f"{k} of {n} 90% intervals exclude zero")
    # independent: the expected number under the null and the binomial 95th percentile
    assert f"about {0.1 * n:.1f} of {n}" in note
    assert f"up to {int(stats.binom.ppf(0.95, n, 0.1))} in 19 of 20" in note


def test_rope_outlook_against_its_definition():
    # inside / outside the ROPE: decided
    assert rope_outlook(0.0, -0.005, 0.005, (-0.01, 0.01)).endswith("decided (inside the ROPE)")
    assert rope_outlook(0.05, 0.03, 0.07, (-0.01, 0.01)).endswith("decided (outside the ROPE)")
    # the case: an interval 0.06 wide against a 0.02 ROPE around a -0.03 estimate
    text = rope_outlook(-0.03, -0.06, 0.0, (-0.01, 0.01))
    assert "interval 0.06 wide, ROPE 0.02 wide (3.0×)" in text
    # effect 0: the half-width 0.03 must shrink to 0.01, (0.03/0.01)^2 = 9 times the data;
    # at -0.03 it must shrink to the distance to the ROPE edge, 0.02: (0.03/0.02)^2 = 2.25
    assert "about 9× the data if the true effect is 0" in text
    assert "about 2× if it is the current estimate -0.03" in text
    # on the ROPE edge no amount of data decides
    assert "more than 100×" in rope_outlook(0.01, -0.02, 0.04, (-0.01, 0.01))


def test_persona_page_shows_the_outlook_per_type(report, full):
    rows = table(report.section(6).blocks, "Persona verdicts").rows
    con = warehouse_db.open(full[0])
    fid = q.latest_fit(con, "persona")["fit_id"]
    params = q.labelled_params(con, fid, ["persona_effect"], "post_training").set_index("label")
    con.close()
    assert {r[0] for r in rows} == set(params.index)
    for r in rows:
        p = params.loc[r[0]]
        width = p["q95"] - p["q05"]
        assert f"interval {width:.3g} wide, ROPE 0.02 wide" in r[-1]


def test_every_generation_slope_has_a_unit(report, full):
    gen = table(report.section(4).blocks, "Per-family slopes")
    assert gen.columns[-1] == "unit" and all(r[-1] for r in gen.rows)
    forest = table(report.section(5).blocks, "The forest plot's numbers")
    for r in forest.rows:
        if r[0].startswith(("Generation slope", "Size slope")):
            assert r[-1].startswith("nats per"), r
    # a stored unit (fit_params.unit, or the summary's units) wins over the fallback
    from psystats.reports.fit_notes import unit_of

    fit = {"scale": "nats", "spec": {"generation_scale": "date"}, "summary": {}}
    assert unit_of(fit, "generation_slope") == "nats per year since the family's first release"
    assert unit_of(fit, "generation_slope", "nats per generation step") == (
        "nats per generation step"
    )
    assert unit_of({"summary": {"units": {"gap": "nats"}}}, "gap") == "nats"
    assert unit_of({"summary": {"units": "x per y"}}, "gap_slope") == "x per y"
    assert unit_of({}, "intercept") == ""


def test_retries_column_and_attempts(report, full):
    s7 = report.section("Diagnostics").blocks
    diag = table(s7, "Diagnostics per fit")
    i = diag.columns.index("retries")
    kinds = diag.columns.index("kind")
    got = {r[kinds]: int(r[i]) for r in diag.rows}
    assert got == {k: len(REDRAWN.get(k, [])) for k in got}
    line = next(b.text for b in s7 if isinstance(b, Para) and b.text.startswith("Retries of fit"))
    a = REDRAWN["generations"][0]
    assert f"{a['draws']} draws at target_accept {a['target_accept']} missed" in line
    assert esc(a["problems"][0]) in line
    # the flattened redrawn[0]... rows are gone from the methods' sampler tables
    assert "redrawn" not in texts(report.section("Methods").blocks)
    assert not any(
        "redrawn" in r[0]
        for b in report.section("Methods").blocks
        if isinstance(b, Table)
        for r in b.rows
    )


def test_coverage_is_called_in_sample_and_loo_pit_sits_beside_it(report):
    ppc = table(report.section("Diagnostics").blocks, "Posterior predictive checks")
    assert "in-sample 90% coverage" in ppc.columns and "LOO-PIT KS p" in ppc.columns
    assert "about 0.9 when the model fits" not in ppc.caption
    assert "usually above 0.9" in ppc.caption
    row = dict(zip(ppc.columns, ppc.rows[0]))
    # the fabricated effects fit is calibrated: about 5% in each tail, KS p not small
    assert row["LOO-PIT < 0.05"].endswith("%") and float(row["LOO-PIT KS p"]) > 0.01


def _idata(pred_sd: float, seed: int = 0, n: int = 300, draws: int = 400):
    """Observations y ~ N(m, 1) and posterior draws of m (flat prior: N(mean y, 1/n));
    replications drawn with sd pred_sd (1: calibrated; smaller: over-confident) and the
    log-likelihood of the same model."""
    import arviz as az

    rng = np.random.default_rng(seed)
    y = rng.normal(0.3, 1, n)
    m = y.mean() + rng.normal(0, 1 / np.sqrt(n), (2, draws, 1))
    mu = np.broadcast_to(m, (2, draws, n))
    rep = mu + rng.normal(0, pred_sd, (2, draws, n))
    ll = stats.norm.logpdf(y, mu, pred_sd)
    return az.from_dict(
        posterior={"mu": mu},
        posterior_predictive={"y": rep},
        log_likelihood={"y": ll},
        observed_data={"y": y},
        dims={"mu": ["obs"], "y": ["obs"]},
    )


def test_loo_pit_equals_arviz_and_can_fail():
    import arviz as az

    good, narrow = _idata(1.0), _idata(0.4)
    for idata in (good, narrow):
        ours = loo_pit(idata, "y")
        oracle = np.asarray(az.loo_pit(idata, y="y"))  # ArviZ on the InferenceData itself
        assert ours is not None and np.allclose(ours, oracle, atol=1e-9)
    # calibrated: about 5% in each outer tail; over-confident: far more, and KS rejects
    pit = loo_pit(good, "y")
    assert 0.01 < np.mean(pit < 0.05) < 0.12 and stats.kstest(pit, "uniform").pvalue > 0.001
    pit = loo_pit(narrow, "y")
    assert np.mean(pit < 0.05) + np.mean(pit > 0.95) > 0.4
    assert stats.kstest(pit, "uniform").pvalue < 1e-6


def test_loo_pit_without_log_likelihood_is_blank():
    import arviz as az

    idata = _idata(1.0)
    bare = az.InferenceData(
        posterior=idata.posterior,
        posterior_predictive=idata.posterior_predictive,
        observed_data=idata.observed_data,
    )
    assert loo_pit(bare, "y") is None
    # predictive draws that are not among the log-likelihood's draws: no LOO-PIT
    shifted = idata.posterior_predictive.assign_coords(
        draw=idata.posterior_predictive.draw + 10_000
    )
    mixed = az.InferenceData(
        posterior=idata.posterior,
        posterior_predictive=shifted,
        log_likelihood=idata.log_likelihood,
        observed_data=idata.observed_data,
    )
    assert loo_pit(mixed, "y") is None


def test_truth_tables_carry_the_binomial_range():
    from psystats.reports.fit_notes import coverage_range

    text = coverage_range(18)
    lo, hi = int(stats.binom.ppf(0.05, 18, 0.9)), int(stats.binom.ppf(0.95, 18, 0.9))
    assert f"{lo} to {hi} inside is typical" in text and math.isclose(lo, 14) and hi == 18


def test_sampled_runs_are_said_to_be_samples(full, tmp_path: Path):
    import shutil

    db = tmp_path / "w.duckdb"
    shutil.copy(full[0], db)
    con = warehouse_db.open(db, "write", create=True)
    runs = table(section_data.build(con).blocks, "Scoring runs")
    i = runs.columns.index("sample")
    assert {row[i] for row in runs.rows} == {"full"}  # no sample_spec column: every run full
    cols = {c for (c, *_) in con.execute("DESCRIBE score_runs").fetchall()}
    if "sample_spec" not in cols:  # the scoring engineer's column, where this schema lacks it
        con.execute("ALTER TABLE score_runs ADD COLUMN sample_spec VARCHAR")
    spec = "participants=5 per experiment, seed=0"
    con.execute("UPDATE score_runs SET sample_spec = ? WHERE run_id = 1", [spec])
    blocks = section_data.build(con).blocks
    con.close()
    runs = table(blocks, "Scoring runs")
    assert [row[i] for row in runs.rows if row[0] == "1"] == [spec]
    assert any("1 run scored a sample" in t and spec in t for t in [texts([b]) for b in blocks])


def test_loo_pit_on_differently_thinned_draws():
    """The pipeline thins the replications and the log-likelihood differently: LOO-PIT
    uses the draws both hold, and equals ArviZ's on that subset."""
    import arviz as az

    idata = _idata(1.0, draws=400)
    pp = idata.posterior_predictive.isel(draw=slice(0, None, 2))  # draws 0, 2, 4, ...
    ll = idata.log_likelihood.isel(draw=slice(0, None, 3))  # draws 0, 3, 6, ...
    thinned = az.InferenceData(
        posterior=idata.posterior,
        posterior_predictive=pp,
        log_likelihood=ll,
        observed_data=idata.observed_data,
    )
    ours = loo_pit(thinned, "y")
    common = np.arange(0, 400, 6)
    subset = az.InferenceData(
        posterior=idata.posterior.sel(draw=common),
        posterior_predictive=idata.posterior_predictive.sel(draw=common),
        log_likelihood=idata.log_likelihood.sel(draw=common),
        observed_data=idata.observed_data,
    )
    # the same draws; ArviZ's relative efficiency uses the subset's own ESS, ours the full
    # posterior's (capped at 1): the PSIS smoothing differs a little, the PIT barely
    assert np.allclose(ours, np.asarray(az.loo_pit(subset, y="y")), atol=5e-3)


def _counts(p_rep: float, seed: int = 1, n: int = 400, draws: int = 300):
    """Observed counts y ~ Binomial(10, 0.3) with replications Binomial(10, p_rep)."""
    import arviz as az

    rng = np.random.default_rng(seed)
    y = rng.binomial(10, 0.3, n).astype(float)
    p = np.clip(p_rep + rng.normal(0, 0.01, (2, draws, 1)), 0.01, 0.99)
    rep = rng.binomial(10, np.broadcast_to(p, (2, draws, n))).astype(float)
    ll = stats.binom.logpmf(y, 10, np.broadcast_to(p, (2, draws, n)))
    return az.from_dict(
        posterior={"p": p[..., 0]},
        posterior_predictive={"hits": rep},
        log_likelihood={"hits": ll},
        observed_data={"hits": y},
        dims={"hits": ["row"]},
    )


def test_randomised_pit_for_counts():
    pit = loo_pit(_counts(0.3), "hits")
    assert stats.kstest(pit, "uniform").pvalue > 0.001  # calibrated: uniform
    pit = loo_pit(_counts(0.5), "hits")  # replications too high: PIT piles up low
    assert np.mean(pit < 0.05) > 0.3 and stats.kstest(pit, "uniform").pvalue < 1e-6
    # fractional observations (expected hits) against counts: no PIT
    idata = _counts(0.3)
    idata.observed_data["hits"] = idata.observed_data["hits"] + 0.5
    assert loo_pit(idata, "hits") is None
