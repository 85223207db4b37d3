"""``psystats fit participants``: per-participant outcomes from DuckDB against a pandas
reference, covariates (numeric, categorical, missing, absent), and recovery of known
covariate effects through the command, every printed number checked against the stored
draws."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from reanalysis_helpers import assert_loo_stands_alone

from psystats.stats.participants_sim import BASE, POST, simulate_participants
from psystats.warehouse import db as warehouse_db


@pytest.fixture
def sim_db(tmp_path):
    path = tmp_path / "participants.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    truth = simulate_participants(
        con, n_experiments=3, participants=30, missing={"age": 0.2, "gender": 0.1}, seed=3
    )
    con.close()
    return path, truth


def _scores(con) -> pd.DataFrame:
    """Every score row with its model and participant (the pandas reference reads all)."""
    cur = con.execute(
        """SELECT sr.model, r.participant_key, r.experiment, s.response_id, s.nll
        FROM scores s JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id)"""
    )
    return pd.DataFrame(cur.fetchall(), columns=["model", "pk", "experiment", "rid", "nll"])


def test_outcome_rows_equal_a_pandas_reference(sim_db):
    from psystats.stats.options import Selection
    from psystats.stats.participants_data import outcome_rows

    path, truth = sim_db
    con = warehouse_db.open(path)
    sc = _scores(con)
    gap = outcome_rows(con, Selection(), "gap")
    nll = outcome_rows(con, Selection(models=[POST]), "nll")
    con.close()
    wide = sc.pivot_table(index=["pk", "rid"], columns="model", values="nll").reset_index()
    ref_gap = (wide[POST] - wide[BASE]).groupby(wide["pk"]).mean()
    ref_nll = sc[sc.model == POST].groupby("pk")["nll"].agg(["mean", "size"])
    assert len(gap) == len(ref_gap) == 90
    assert set(gap["unit"]) == {truth["pair"]} and set(nll["unit"]) == {POST}
    np.testing.assert_allclose(gap.set_index("participant_key")["y"], ref_gap.loc[gap.participant_key], rtol=1e-12)  # fmt: skip
    n = nll.set_index("participant_key")
    np.testing.assert_allclose(n["y"], ref_nll.loc[n.index, "mean"], rtol=1e-12)
    assert (n["n_responses"] == ref_nll.loc[n.index, "size"]).all()


def test_covariates_numeric_categorical_missing_and_forced(sim_db):
    from psystats.stats.participants_data import available_covariates, covariate_table

    path, truth = sim_db
    con = warehouse_db.open(path)
    keys = [k for (k,) in con.execute("SELECT participant_key FROM participants").fetchall()]
    avail = available_covariates(con, keys)
    covs, kinds = covariate_table(con, keys, ["age", "gender", "anxiety"])
    forced, fkinds = covariate_table(con, keys, ["anxiety"], categorical=["anxiety"])
    raw = con.execute("SELECT participant_key, age, gender FROM participants").fetchall()
    con.close()
    assert kinds == {"age": "numeric", "gender": "categorical", "anxiety": "numeric"}
    assert fkinds == {"anxiety": "categorical"} and forced["anxiety"].map(type).eq(str).all()
    assert avail == {"age": 90 - truth["missing"]["age"], "gender": 90 - truth["missing"]["gender"],
                     "anxiety": 90}  # fmt: skip
    assert int(covs["age"].isna().sum()) == truth["missing"]["age"] > 0
    assert int(covs["gender"].isna().sum()) == truth["missing"]["gender"] > 0
    by_key = {k: (a, g) for k, a, g in raw}
    for row in covs.itertuples():
        a, g = by_key[row.participant_key]
        assert (a is None and np.isnan(row.age)) or a == row.age
        assert (g is None and pd.isna(row.gender)) or g == row.gender


def test_prepare_counts_and_leaves_out_missing_participants():
    from psystats.stats.participants import prepare_participants
    from psystats.warehouse.errors import WarehouseError

    rng = np.random.default_rng(0)
    keys = np.arange(12)
    rows = pd.DataFrame(
        dict(unit="p vs b", experiment=np.where(keys < 6, "e1", "e2"), study="s",
             participant_key=keys, n_responses=3, y=rng.normal(0, 1, 12), runs="1-2")
    )  # fmt: skip
    covs = pd.DataFrame(
        dict(participant_key=keys, age=[np.nan, np.nan, *rng.normal(40, 10, 10)],
             gender=["f", "m", "f", None, "m", "f", "m", "f", "m", "f", "m", "f"])
    )  # fmt: skip
    d = prepare_participants(rows, covs, {"age": "numeric", "gender": "categorical"}, "gap")
    assert d.missing == {"age": 2, "gender": 1}
    assert (d.participants_selected, d.participants_used) == (12, 9)
    assert "3 of 12 participants lack a covariate" in d.notes[0] and "age: 2" in d.notes[0]
    used = covs[covs.participant_key.isin(d.rows.participant_key)]
    assert d.scaling["age"]["sd"] == pytest.approx(used["age"].std(ddof=1))
    assert d.levels == {"gender": ["f", "m"]}
    covs["gender"] = "f"
    with pytest.raises(WarehouseError, match="one level"):
        prepare_participants(rows, covs, {"gender": "categorical"}, "gap")


def test_no_metadata_and_unknown_covariate_are_one_line_errors(tmp_path):
    from psystats.commands.fit_cmds import fit
    from psystats.stats.simulate import add_synthetic_experiments, register_models, write_run
    from psystats.warehouse.sql import transaction

    path = tmp_path / "bare.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    add_synthetic_experiments(con, n_experiments=2, participants=5, responses=2, seed=1)
    rid = [r for (r,) in con.execute("SELECT response_id FROM responses").fetchall()]
    with transaction(con):
        register_models(con, [dict(name="b", post_training="base"),
                              dict(name="p", post_training="instruct", base_model="b")])  # fmt: skip
        write_run(con, "b", "plain", rid, np.ones(len(rid)))
        write_run(con, "p", "plain", rid, np.full(len(rid), 1.5))
    con.close()
    res = CliRunner().invoke(fit, ["participants", "--db", str(path), "--covariates", "age"])
    assert res.exit_code == 1, res.output
    (line,) = res.output.strip().splitlines()
    assert "no selected participant has covariate 'age'" in line and "no metadata at all" in line
    assert "Traceback" not in res.output


def test_spec_and_option_names():
    from psystats.stats.fit_kinds import fit_request
    from psystats.stats.options import OptionError
    from psystats.stats.participants import ParticipantsSpec

    s = ParticipantsSpec.of({"covariates": ["age,gender", "FACSIMILE A/D", "age"]})
    assert s.covariates == ("age", "gender", "FACSIMILE A/D") and s.outcome == "gap"
    with pytest.raises(OptionError, match="outcome must be one of"):
        ParticipantsSpec(outcome="loss")
    req = fit_request("participants", covariates="age", outcome="nll", models=["m"], draws=10)
    assert req.spec.covariates == ("age",) and req.selection.models == ("m",)
    with pytest.raises(OptionError, match="did you mean 'covariates'"):
        fit_request("participants", covariate="age")


def _oracle(x) -> list[float]:
    x = np.asarray(x, dtype=float).ravel()
    return [x.mean(), np.quantile(x, 0.05), np.quantile(x, 0.95), float(np.mean(x > 0))]


def _close(printed: float, want: float) -> bool:
    """Equal to the 4 significant digits printed."""
    return abs(printed - want) <= 5e-4 * max(abs(want), 1e-12) * 10 + 1e-12


@pytest.mark.slow
def test_fit_participants_recovers_known_effects_and_prints_its_draws(tmp_path):
    """Through the command: the known slopes and level effects inside generous margins,
    missing counts stored, every printed number and the stored summary from the NetCDF."""
    import arviz as az

    from psystats.commands.fit_cmds import fit

    path = tmp_path / "rec.duckdb"
    con = warehouse_db.open(path, "write", create=True)
    truth = simulate_participants(con, participants=40, missing={"age": 0.15}, seed=7)
    con.close()
    res = CliRunner().invoke(
        fit,
        ["participants", "--db", str(path), "--covariates", "age,gender,anxiety",
         "--draws", "800", "--tune", "600", "--chains", "2", "--seed", "2",
         "--allow-diagnostics-failure"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    con = warehouse_db.open(path)
    ((fit_id, summary, diag, nc),) = con.execute(
        "SELECT fit_id, summary, diagnostics, netcdf_path FROM fits WHERE kind = 'participants'"
    ).fetchall()
    units = dict(con.execute(
        "SELECT DISTINCT parameter, unit FROM fit_params WHERE fit_id = ?", [fit_id]
    ).fetchall())  # fmt: skip
    con.close()
    d, sm = json.loads(diag), json.loads(summary)
    assert d["max_rhat"] < 1.05 and d["min_ess_bulk"] > 100 and d["divergences"] <= 10, d
    assert sm["missing"] == {"age": truth["missing"]["age"], "gender": 0, "anxiety": 0}
    assert f"{truth['missing']['age']} of 160 participants lack a covariate" in res.output
    assert units["slope"] == "nats per unit of the covariate" and units["level_effect"] == "nats"
    post = az.from_netcdf(nc).posterior
    for c, true in truth["slope"].items():
        s = sm["covariates"][c]["slope"]
        assert s["q05"] - 0.5 * abs(true) < true < s["q95"] + 0.5 * abs(true), (c, s, true)
    for lv, true in truth["level_effect"].items():
        s = sm["covariates"]["gender"]["levels"][lv.split("=")[1]]
        assert abs(s["mean"] - true) < 0.02, (lv, s)
    for c in ("age", "anxiety"):
        for var in ("effect", "slope"):
            want = _oracle(post[var].sel(covariate=c))
            stored = sm["covariates"][c][var]
            assert [stored[k] for k in ("mean", "q05", "q95", "p_positive")] == pytest.approx(want)
        (line,) = [ln for ln in res.output.splitlines() if ln.startswith(c) and "per SD (" in ln]
        assert _close(float(line.split("per SD (")[1].split(")")[0]), sm["covariates"][c]["sd"])
    for line in res.output.splitlines():
        for c, var in (("age", "slope"), ("anxiety", "slope"), ("age", "effect")):
            unit = "nats per unit" if var == "slope" else "nats per SD"
            if line.startswith(c) and unit in line:
                nums = [float(v) for v in re.findall(r"[-+]\d+\.?\d*(?:e[-+]?\d+)?", line)]
                want = _oracle(post[var].sel(covariate=c))
                assert all(_close(p, w) for p, w in zip(nums[-3:], want[:3])), (line, want)
    for lv in truth["level_effect"]:
        want = _oracle(post["level_effect"].sel(level=lv))
        (line,) = [ln for ln in res.output.splitlines() if ln.startswith("gender") and
                   f" {lv.split('=')[1]} (n=" in ln]  # fmt: skip
        nums = [float(v) for v in re.findall(r"[-+]\d+\.?\d*(?:e[-+]?\d+)?", line)]
        assert all(_close(p, w) for p, w in zip(nums[:3], want[:3])), (line, want)
    assert_loo_stands_alone(nc, sm)
    _assert_report_page(path, sm)


@pytest.mark.slow
def test_wh_fit_participants_nll_outcome(sim_db):
    """The notebook API with the CLI's names: outcome nll of one model, age and gender."""
    import psystats as ps

    path, truth = sim_db
    wh = ps.open(path)
    r = wh.fit("participants", outcome="nll", models=[POST], covariates="age,gender",
               draws=300, tune=300, chains=2, redraws=0, allow_failure=True)  # fmt: skip
    assert r.kind == "participants" and r.fit_id is not None
    assert r.summary["outcome"] == "nll" and r.condition == "plain"
    left = r.summary["participants"]["left_out"]
    assert left >= max(truth["missing"]["age"], truth["missing"]["gender"]) and left > 0
    assert set(r.summary["covariates"]) == {"age", "gender"}
    assert r.idata.log_likelihood["obs"].shape[-1] == r.summary["participants"]["rows"]


def _assert_report_page(path, sm: dict) -> None:
    """The report's participants page shows the stored numbers (to the digits it prints)."""
    from psystats.reports.blocks import Table
    from psystats.reports.section_participants import build

    con = warehouse_db.open(path)
    section = build(con)
    con.close()
    assert section.title.endswith("Participants")
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    for cov, term, mean, q05, q95, _unit, _p, missing in table.rows:
        v = sm["covariates"][cov]
        if v["kind"] == "numeric":
            d = v["effect"] if term.startswith("per SD") else v["slope"]
        else:
            d = v["levels"][term.split(" (")[0]]
        for shown, key in ((mean, "mean"), (q05, "q05"), (q95, "q95")):
            assert float(shown) == pytest.approx(d[key], abs=5e-4 + 5e-3 * abs(d[key])), (cov, term)
        assert int(missing) == v["missing"]
