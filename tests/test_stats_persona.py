"""fit persona: paired cells against an independent computation, ROPE statements, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from reanalysis_helpers import assert_loo_stands_alone

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError


def _converged(diag: dict) -> bool:
    """Converged with a margin no CPU or BLAS can cross (the gates themselves are 1.01/400)."""
    return diag["max_rhat"] < 1.05 and diag["min_ess_bulk"] > 100 and diag["divergences"] <= 10


@pytest.fixture
def persona_warehouse(tmp_path):
    from psystats.stats.persona import simulate_persona
    from psystats.stats.simulate import add_synthetic_experiments

    path = tmp_path / "persona.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=8, participants=20, responses=4, seed=4)
    truth = simulate_persona(con, effects={"base": 0.0, "instruct": -0.15}, seed=5)
    con.close()
    return path, truth


def test_persona_cells_match_a_pandas_reference(persona_warehouse):
    from psystats.stats.persona import persona_cells

    path, _ = persona_warehouse
    con = warehouse_db.open(path, "write", create=True)
    # One response's persona score is invalid (no tokens): it must drop out of both sides.
    rid = con.execute("SELECT min(response_id) FROM responses").fetchall()[0][0]
    con.execute(
        "UPDATE scores SET n_tokens = 0 WHERE response_id = ? AND run_id IN "
        "(SELECT run_id FROM score_runs WHERE condition = 'persona')",
        [rid],
    )
    cells = persona_cells(con).set_index(["model", "experiment"])
    raw = pd.DataFrame(
        con.execute(
            "SELECT sr.model, sr.condition, s.response_id, s.nll, s.n_tokens, r.participant_key, "
            "r.experiment FROM scores s JOIN score_runs sr USING (run_id) "
            "JOIN responses r USING (response_id)"
        ).fetchall(),
        columns=[
            "model",
            "condition",
            "response_id",
            "nll",
            "n_tokens",
            "participant_key",
            "experiment",
        ],
    )
    con.close()
    wide = (
        raw[raw.n_tokens > 0]
        .pivot_table(
            index=["model", "experiment", "participant_key", "response_id"],
            columns="condition",
            values="nll",
        )
        .dropna()
    )
    d = (wide["persona"] - wide["plain"]).groupby(level=[0, 1, 2]).mean()
    ref = d.groupby(level=[0, 1]).agg(["size", "mean", "var"])
    assert len(ref) == len(cells)
    for key, row in ref.iterrows():
        assert cells.loc[key, "n"] == row["size"]
        assert cells.loc[key, "mean"] == pytest.approx(row["mean"], abs=1e-12)
        assert cells.loc[key, "var"] == pytest.approx(row["var"], rel=1e-9)
    assert cells["n_responses"].sum() == len(wide)


def test_no_persona_runs_is_a_clear_error(tmp_path):
    from psystats.stats.persona import fit_persona
    from psystats.stats.simulate import add_synthetic_experiments

    con = warehouse_db.open(tmp_path / "p.duckdb", "write", create=True)
    add_synthetic_experiments(con, n_experiments=2, participants=5, responses=2)
    with pytest.raises(WarehouseError, match="no model scored in both the persona and the plain"):
        fit_persona(con)
    with pytest.raises(WarehouseError, match="must differ"):
        fit_persona(con, {"post_condition": "plain"})
    assert con.execute("SELECT count(*) FROM fits").fetchall()[0][0] == 0


def test_prepare_persona_drops_degenerate_cells_with_notes():
    from psystats.stats.persona import prepare_persona

    models = pd.DataFrame({"name": ["m"], "post_training": ["base"]})
    cells = pd.DataFrame(
        {
            "model": ["m", "m", "m"],
            "experiment": ["a", "b", "c"],
            "n": [10, 1, 10],
            "mean": [0.1, 0.2, 0.0],
            "var": [0.04, np.nan, 0.0],
            "sd_persona": [1.0, np.nan, 1.0],
            "sd_plain": [1.0, np.nan, 1.0],
        }
    )
    data = prepare_persona(cells, models)
    assert list(data.cells["experiment"]) == ["a"]
    assert data.rope == 0.01
    assert any("fewer than 2 participants" in n for n in data.notes)
    assert any("all equal" in n for n in data.notes)
    std = prepare_persona(cells, models, scale="standardised")
    assert std.rope == 0.1 and std.cells["y"].iloc[0] == pytest.approx(0.1)
    with pytest.raises(WarehouseError, match="no usable cells"):
        prepare_persona(cells.iloc[1:], models)


@pytest.mark.slow
def test_fit_persona_cli_rope_statements(persona_warehouse):
    """End to end: no effect for base -> in ROPE; a real benefit for instruct -> 'helps'."""
    from click.testing import CliRunner

    from psystats.commands.fit_analyses_cmds import persona

    path, truth = persona_warehouse
    res = CliRunner().invoke(
        persona,
        [
            "--db",
            str(path),
            "--rope",
            "0.05",
            "--draws",
            "1000",
            "--tune",
            "500",
            "--seed",
            "1",
            "--allow-diagnostics-failure",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ROPE: ±0.05" in res.output
    con = warehouse_db.open(path)
    ((fit_id, summary, diag, nc),) = con.execute(
        "SELECT fit_id, summary, diagnostics, netcdf_path FROM fits WHERE kind = 'persona'"
    ).fetchall()
    params = dict(
        con.execute(
            "SELECT label, mean FROM fit_params WHERE fit_id = ? AND parameter = 'persona_effect'",
            [fit_id],
        ).fetchall()
    )
    coords = con.execute(
        "SELECT coords FROM fit_params WHERE fit_id = ? AND parameter = 'persona_effect'", [fit_id]
    ).fetchall()
    con.close()
    assert _converged(json.loads(diag)), diag
    s = json.loads(summary)["by_post_training"]
    assert s["base"]["p_in_rope"] > 0.9 and s["base"]["verdict"].startswith("practically")
    assert s["instruct"]["p_benefit"] > 0.95 and s["instruct"]["verdict"] == "persona helps"
    for t, true in truth["persona_effect"].items():
        assert params[t] == pytest.approx(true, abs=0.03)
    assert {json.loads(c[0])["post_training"] for c in coords} == {"base", "instruct"}
    _assert_checked_and_stored(json.loads(summary), nc, "obs", 32)
    assert_loo_stands_alone(nc, json.loads(summary))
    # Every probability and verdict, stored and printed, from the NetCDF's draws alone.
    import arviz as az

    posterior = az.from_netcdf(nc).posterior
    stored = json.loads(summary)
    _assert_persona_summary_is_its_draws(stored, posterior, 0.05)
    _assert_printed(res.output, stored, posterior, 0.05)
    for t, v in stored["by_post_training"].items():
        assert v["data_size"]["rope_width"] == pytest.approx(0.1), t
        assert v["data_size"]["interval_width_90"] == pytest.approx(v["q95"] - v["q05"])
    con = warehouse_db.open(path)
    units = con.execute(
        "SELECT DISTINCT unit FROM fit_params WHERE fit_id = ?", [fit_id]
    ).fetchall()
    con.close()
    assert units == [("nats",)]


def _assert_printed(output: str, summary: dict, posterior, rope: float) -> None:
    """The CLI's row of each type shows the oracle's numbers (to the digits printed) and
    verdict."""
    import re

    for t in summary["by_post_training"]:
        want = _rope_oracle(posterior["persona_effect"].sel(post_training=t), rope)
        (row,) = [line for line in output.splitlines() if line.split()[:1] == [t]]
        assert want["verdict"] in row, row
        printed = [float(v) for v in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", row)]
        for k in ("mean", "q05", "q95", "p_in_rope", "p_benefit", "p_harm"):
            assert any(abs(p - want[k]) <= 5e-4 for p in printed), (t, k, row)


def _assert_checked_and_stored(summary: dict, nc: str, var: str, n_obs: int) -> None:
    """The observed likelihood's predictive check, pointwise log-likelihood and LOO, stored."""
    import arviz as az

    ppc = summary["ppc"]
    assert ppc["draws"] == 400 and 0.5 < ppc["coverage_90"] <= 1.0, ppc
    loo = summary["loo"]["full"]
    assert loo["n_observations"] == n_obs and np.isfinite(loo["elpd_loo"]), loo
    idata = az.from_netcdf(nc)
    assert idata.posterior_predictive[var].shape[-1] == n_obs
    ll = idata.log_likelihood[var]
    assert ll.dims[:2] == ("chain", "draw") and ll.shape[-1] == n_obs
    assert np.isfinite(ll.values).all()
    # The stored pointwise ELPD adds up to the summary's.
    assert float(idata["psystats_loo"]["loo_i"].sum()) == pytest.approx(loo["elpd_loo"])


@pytest.mark.slow
def test_integrated_random_intercepts_equal_the_dense_normal():
    """crossed_normal_logp (and its gradient) against scipy's multivariate normal."""
    import pytensor
    import pytensor.tensor as pt
    from scipy.stats import multivariate_normal

    from psystats.stats.likelihoods import crossed_normal_logp, grouped_normal_logp

    rng = np.random.default_rng(0)
    g = np.array([0, 0, 1, 2, 2, 2, 1, 0, 1])
    h = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1])
    y, mu0, v = rng.normal(size=9), rng.normal(size=9), rng.uniform(0.1, 1.0, 9)
    s, t = 0.7, 0.4
    Z, H = np.eye(3)[g], np.eye(2)[h]
    dense = multivariate_normal(mu0, np.diag(v) + s**2 * Z @ Z.T + t**2 * H @ H.T).logpdf(y)
    assert float(crossed_normal_logp(y, mu0, v, [(g, 3, s), (h, 2, t)]).eval()) == pytest.approx(
        dense, rel=1e-10
    )
    one = multivariate_normal(mu0, np.diag(v) + s**2 * Z @ Z.T).logpdf(y)
    assert float(grouped_normal_logp(y, mu0, v, g, 3, s).eval()) == pytest.approx(one, rel=1e-10)
    # Gradient (what NUTS uses) against central differences.
    mu, ss = pt.dvector("mu"), pt.dscalar("s")
    lp = crossed_normal_logp(y, mu, v, [(g, 3, ss), (h, 2, t)])
    f = pytensor.function([mu, ss], lp)
    df = pytensor.function([mu, ss], pytensor.grad(lp, [mu, ss]))
    gm, gs = df(mu0, s)
    eps = 1e-6
    num = [(f(mu0 + eps * e, s) - f(mu0 - eps * e, s)) / (2 * eps) for e in np.eye(9)]
    assert np.allclose(gm, num, atol=1e-6)
    assert gs == pytest.approx((f(mu0, s + eps) - f(mu0, s - eps)) / (2 * eps), abs=1e-6)


def test_persona_likelihood_is_the_dense_multivariate_normal():
    """The observed ``obs`` (model and experiment intercepts integrated out) at a point,
    against scipy's multivariate normal with the covariance written out."""
    from scipy.stats import multivariate_normal

    from psystats.stats.persona import build_persona_model, prepare_persona

    rng = np.random.default_rng(7)
    names = ["m0", "m1", "m2", "m3"]
    models = pd.DataFrame(
        {"name": names, "post_training": ["base", "base", "instruct", "instruct"]}
    )
    exps = ["a", "b", "c"]
    cells = pd.DataFrame(
        [(m, e) for m in names for e in exps], columns=["model", "experiment"]
    ).assign(
        n=10,
        mean=lambda d: rng.normal(0.0, 0.1, len(d)),
        var=lambda d: rng.uniform(0.01, 0.05, len(d)),
        sd_persona=1.0,
        sd_plain=1.0,
    )
    data = prepare_persona(cells, models)
    model, spec = build_persona_model(data, model_effects="random")
    assert spec["model_effects"] == "random" and "obs" in [v.name for v in model.observed_RVs]
    point = model.initial_point()
    point["persona_effect"] = np.array([0.03, -0.08])  # base, instruct
    for name, value in (("sigma_model", 0.05), ("sigma_experiment", 0.12), ("sigma_cell", 0.02)):
        point[f"{name}_log__"] = np.log(value)
    got = model.compile_fn(model.logp(vars=[model["obs"]]), mode="FAST_COMPILE")(point)

    c = data.cells
    mu = np.where(c["post_training"] == "base", 0.03, -0.08)
    Zm = np.eye(4)[pd.Index(names).get_indexer(c["model"])]
    Ze = np.eye(3)[pd.Index(exps).get_indexer(c["experiment"])]
    S = np.diag(0.02**2 + c["var"] / c["n"]) + 0.05**2 * Zm @ Zm.T + 0.12**2 * Ze @ Ze.T
    assert float(got) == pytest.approx(multivariate_normal(mu, S).logpdf(c["y"]), rel=1e-10)


@pytest.mark.slow
def test_persona_fits_of_the_same_cells_compare_by_loo(persona_warehouse):
    """Fixed vs random model effects (both marginal normals): `fit compare` ranks them on the
    stored exact-LOO densities of the same cells."""
    from psystats.stats.compare import compare_fits
    from psystats.stats.persona import fit_persona

    path, _ = persona_warehouse
    con = warehouse_db.open(path, "write", create=True)
    sampling = {"draws": 300, "tune": 400, "chains": 2, "seed": 2}
    fixed = fit_persona(con, None, None, sampling, allow_failure=True)
    random = fit_persona(con, None, {"model_effects": "random"}, sampling, allow_failure=True)
    # Short fits (2 x 300 draws) may miss their gates; what is tested is the stored LOO.
    ids = [fixed.fit_id, random.fit_id]
    table = compare_fits(con, ids, include_failed=True).set_index("fit")
    for fit in (fixed, random):
        assert table.loc[f"fit {fit.fit_id}", "elpd_loo"] == pytest.approx(
            fit.summary["loo"]["full"]["elpd_loo"]
        )
        assert fit.summary["loo"]["full"]["n_observations"] == 32
        assert_loo_stands_alone(fit.netcdf_path, fit.summary)
    con.close()


# ---------------------------------------------------------------------------
# Every number and verdict `fit persona` prints, from the draws alone (docs/model.md, "ROPE")


def _rope_oracle(draws, rope: float) -> dict:
    """The ROPE statements of one type, written from docs/model.md with xarray/numpy only.

    ``draws``: the type's persona_effect as a (chain, draw) DataArray.
    """
    x = np.asarray(draws.values, dtype=np.float64).reshape(-1)
    q = draws.quantile([0.05, 0.95], dim=("chain", "draw")).values
    p_in = np.count_nonzero(np.abs(x) < rope) / x.size
    p_help = np.count_nonzero(x < -rope) / x.size
    p_hurt = np.count_nonzero(x > rope) / x.size
    statements = [
        (p_in, "practically equivalent to no effect"),
        (p_help, "persona helps"),
        (p_hurt, "persona hurts"),
    ]
    reached = [v for p, v in statements if p >= 0.95]
    return dict(
        mean=float(x.sum() / x.size),
        q05=float(q[0]),
        q95=float(q[1]),
        p_in_rope=p_in,
        p_benefit=p_help,
        p_harm=p_hurt,
        verdict=reached[0] if reached else "undecided",
    )


def _assert_persona_summary_is_its_draws(summary: dict, posterior, rope: float) -> None:
    pe = posterior["persona_effect"]
    assert set(summary["by_post_training"]) == {str(t) for t in pe.coords["post_training"].values}
    for t, got in summary["by_post_training"].items():
        want = _rope_oracle(pe.sel(post_training=t), rope)
        for k in ("mean", "q05", "q95", "p_in_rope", "p_benefit", "p_harm"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), (t, k)
        assert got["verdict"] == want["verdict"], t


def test_persona_summary_is_its_definition_on_the_draws():
    """summarise_persona against the oracle on draws built to sit on every side of every
    threshold, including exactly 95% of the draws inside the ROPE (>= decides)."""
    import arviz as az

    from psystats.stats.persona import PersonaData, summarise_persona

    rope, n = 0.01, 1000
    rng = np.random.default_rng(7)
    cases = {
        "inside": rng.normal(0.0, 0.002, n),
        "helps": rng.normal(-0.05, 0.01, n),
        "hurts": rng.normal(0.05, 0.01, n),
        "wide": rng.normal(-0.01, 0.03, n),
        # exactly 950 draws inside: P(in ROPE) = 0.95 reaches the decision mass
        "edge_in": np.r_[np.full(950, 0.0), np.full(50, 0.5)],
        # 949 inside, the rest beyond on both sides: nothing reaches 0.95
        "just_short": np.r_[np.full(949, 0.0), np.full(26, 0.5), np.full(25, -0.5)],
        # a draw exactly on -rope is neither inside nor a benefit
        "on_edge": np.r_[np.full(950, -rope), np.full(50, -0.5)],
    }
    types = list(cases)
    values = np.stack([cases[t] for t in types], axis=-1).reshape(2, n // 2, len(types))
    idata = az.from_dict(
        posterior={"persona_effect": values},
        coords={"post_training": types},
        dims={"persona_effect": ["post_training"]},
    )
    cells = pd.DataFrame(
        {"model": types, "post_training": types, "experiment": "e", "n": 10, "y": 0.0}
    )
    s = summarise_persona(idata, PersonaData(cells=cells, scale="nats", rope=rope))
    _assert_persona_summary_is_its_draws(s, idata.posterior, rope)
    verdicts = {t: v["verdict"] for t, v in s["by_post_training"].items()}
    assert verdicts == {
        "inside": "practically equivalent to no effect",
        "helps": "persona helps",
        "hurts": "persona hurts",
        "wide": "undecided",
        "edge_in": "practically equivalent to no effect",
        "just_short": "undecided",
        "on_edge": "undecided",
    }
    assert s["units"]["persona_effect"] == "nats"


def test_data_size_factor_is_where_the_verdict_rule_decides():
    """The data-size line's factor k against the verdict rule itself: draws of the same
    mean with the SD shrunk by sqrt(k) a little beyond k decide (as it says), a little
    short of k do not."""
    from scipy.stats import norm

    from psystats.stats.persona import data_size, verdict

    rope = 0.01
    z = norm.ppf((np.arange(20000) + 0.5) / 20000)  # standard normal quantiles: exact mean 0
    for mean, sd, will_be in (
        (-0.03, 0.02, "persona helps"),
        (0.025, 0.03, "persona hurts"),
        (0.002, 0.01, "practically equivalent to no effect"),
        (-0.006, 0.02, "practically equivalent to no effect"),
    ):
        draws = mean + sd * z
        ds = data_size(draws, rope, participants=160)
        assert ds["decidable_as"] == will_be, (mean, sd, ds)
        k = ds["data_factor"]
        assert k > 1 and ds["participants_needed"] == int(np.ceil(k * 160))
        assert ds["width_over_rope"] == pytest.approx(2 * 1.6449 * sd / (2 * rope), rel=1e-3)

        def decided(factor, mean=mean, sd=sd):
            x = mean + sd / np.sqrt(factor) * z
            return verdict(np.mean(np.abs(x) < rope), np.mean(x < -rope), np.mean(x > rope))

        assert decided(k * 1.02) == will_be
        assert decided(k * 0.98) == "undecided"
        assert f"{ds['participants_needed']} participants instead of 160" in ds["statement"]
    # Already decided: no factor.  A mean next to the ROPE's edge: a huge factor.
    done = data_size(-0.05 + 0.005 * z, rope, participants=40)
    assert done["data_factor"] is None and "decided" in done["statement"]
    edge = data_size(rope * 1.001 + 0.02 * z, rope, participants=40)
    assert edge["data_factor"] > 1e4
