"""`psystats card`: a model's human-fidelity card, its JSON Schema, its numbers against an
independent computation from the scores table, and what it says about failed fits and
sampled runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from psystats.cli import main
from psystats.reports.card import build_card, schema
from psystats.reports.card_html import render_card_html
from psystats.warehouse import db as warehouse_db
from report_fixture import add_floor, full_copy

POST, BASE = "Qwen3-0.6B-Instruct", "Qwen3-0.6B-Base"


@pytest.fixture(scope="module")
def wh(small_warehouse: Path, tmp_path_factory) -> Path:
    """Fabricated models, scores and fits; one floor (baseline:uniform) scored; the
    accuracy fit stored as failing its gates."""
    db, _ = full_copy(small_warehouse, tmp_path_factory.mktemp("card"), failed=("accuracy",))
    con = warehouse_db.open(db, "write", create=True)
    add_floor(con, "baseline:uniform", nll=4.0)
    con.close()
    return db


def card_of(db: Path, model: str, **kw) -> dict:
    con = warehouse_db.open(db)
    try:
        return build_card(con, model, **kw)
    finally:
        con.close()


def participant_means(db: Path) -> pd.DataFrame:
    """Per (model, participant) mean NLL of the plain runs, straight from the tables."""
    con = warehouse_db.open(db)
    cur = con.execute(
        """SELECT sr.model, r.participant_key, e.domain, s.nll FROM scores s
           JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id)
           LEFT JOIN experiments e ON e.experiment = r.experiment
           WHERE sr.status = 'complete' AND sr.condition = 'plain'
             AND (s.n_tokens IS NULL OR s.n_tokens > 0) AND isfinite(s.nll)"""
    )
    df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    con.close()
    return df.groupby(["model", "participant_key"]).agg(
        nll=("nll", "mean"), domain=("domain", "first")
    )


def test_card_follows_its_schema(wh):
    sch = schema()
    jsonschema.Draft202012Validator.check_schema(sch)
    for model in (POST, BASE, "Llama3-1B-Instruct", "baseline:uniform"):
        card = card_of(wh, model)
        jsonschema.validate(card, sch)
        assert json.loads(json.dumps(card)) == card  # plain JSON
    # the schema refuses what it does not describe
    bad = card_of(wh, POST)
    bad["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, sch)
    bad = card_of(wh, POST)
    bad["scored_on"]["sampled"] = "no"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, sch)


def test_nll_against_base_and_floor_equals_a_direct_computation(wh):
    card = card_of(wh, POST)
    pm = participant_means(wh)
    mine = pm.loc[POST]["nll"]
    overall = card["nll"]["overall"]
    lo, hi = stats.t.interval(0.95, len(mine) - 1, loc=mine.mean(), scale=stats.sem(mine))
    assert overall["participants"] == len(mine)
    assert overall["mean"] == pytest.approx(mine.mean(), rel=1e-12)
    assert (overall["low"], overall["high"]) == pytest.approx((lo, hi), rel=1e-9)
    for other, got in [(BASE, overall["vs_base"]), ("baseline:uniform", overall["vs_floors"][0])]:
        d = (mine - pm.loc[other]["nll"]).dropna()
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert got["against"] == other and got["participants"] == len(d)
        assert got["difference"] == pytest.approx(d.mean(), rel=1e-10)
        assert (got["difference_low"], got["difference_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert card["nll"]["floors_scored"] == ["baseline:uniform"]
    assert card["nll"]["floors_missing"] == ["baseline:frequency"]
    domains = {b["domain"] for b in card["nll"]["by_domain"]}
    assert domains == set(pm.loc[POST]["domain"].fillna("unmapped"))
    for b in card["nll"]["by_domain"]:
        sub = pm.loc[POST]
        x = sub[sub["domain"].fillna("unmapped") == b["domain"]]["nll"]
        assert b["mean"] == pytest.approx(x.mean(), rel=1e-12)


def test_scored_on_counts(wh):
    card = card_of(wh, POST)
    con = warehouse_db.open(wh)
    n, tokens, people = con.execute(
        """SELECT count(DISTINCT s.response_id), sum(s.n_tokens), count(DISTINCT r.participant_key)
           FROM scores s JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id)
           WHERE sr.model = ? AND sr.status = 'complete' AND s.n_tokens > 0""",
        [POST],
    ).fetchall()[0]
    con.close()
    s = card["scored_on"]
    assert (s["responses"], s["tokens"], s["participants"]) == (n, tokens, people)
    assert s["conditions"] == ["persona", "plain"] and s["sampled"] is False
    assert all(r["sample_spec"] is None for r in s["runs"])


def test_effects_from_the_newest_passing_fit(wh):
    import arviz as az

    card = card_of(wh, POST)
    eff = card["post_training_effect"]
    con = warehouse_db.open(wh)
    path = con.execute("SELECT netcdf_path FROM fits WHERE fit_id = ?", [eff["fit_id"]]).fetchall()
    con.close()
    post = az.from_netcdf(path[0][0]).posterior["pair_domain_effect"]
    pair = f"{POST} vs {BASE}"
    assert eff["pair"] == pair
    for d in eff["by_domain"]:
        x = post.sel(pair_level=pair, domain_level=d["domain"]).values.ravel()
        assert d["mean"] == pytest.approx(x.mean(), abs=1e-9)
        assert (d["low"], d["high"]) == pytest.approx(tuple(np.quantile(x, [0.05, 0.95])), abs=1e-6)
    assert card["generations"]["family"] == "qwen"
    assert {s["parameter"] for s in card["generations"]["slopes"]} == {"base_slope", "gap_slope"}
    assert all(s["unit"] for s in card["generations"]["slopes"])
    assert card["persona"]["type"]["mean"] == pytest.approx(0.0, abs=0.01)
    used = {f["fit_id"] for f in card["fits"] if f["used"]}
    assert used == {eff["fit_id"], card["generations"]["fit_id"], card["persona"]["fit_id"]}


def test_failed_fit_is_listed_never_used(wh):
    card = card_of(wh, "Llama3-1B-Instruct")  # the accuracy fit reads the Llama models
    acc = [f for f in card["fits"] if f["kind"] == "accuracy"]
    assert acc and acc[0]["passed"] is False and acc[0]["used"] is False and acc[0]["problems"]
    assert any(
        c.startswith(f"Fit {acc[0]['fit_id']} (accuracy) failed its diagnostic gates")
        for c in card["caveats"]
    )
    # a failed effects fit: no post-training effect on the card, and it says so
    con = warehouse_db.open(wh, "write", create=True)
    con.execute("UPDATE fits SET passed = false WHERE kind = 'effects'")
    con.close()
    try:
        card = card_of(wh, POST)
        assert card["post_training_effect"] is None
        assert any(
            "No effects fit that read this model met its gates" in c for c in card["caveats"]
        )
        page = render_card_html(card)
        assert "failed its diagnostic gates" in page and "FAILED" in page
    finally:
        con = warehouse_db.open(wh, "write", create=True)
        con.execute("UPDATE fits SET passed = true WHERE kind = 'effects'")
        con.close()


def test_sampled_run_is_stated(wh, tmp_path: Path):
    db = tmp_path / "w.duckdb"
    shutil.copy(wh, db)
    con = warehouse_db.open(db, "write", create=True)
    # score_runs.sample_spec (scoring engineer's column): added here if this warehouse lacks it
    cols = {r[0] for r in con.execute("DESCRIBE score_runs").fetchall()}
    if "sample_spec" not in cols:
        con.execute("ALTER TABLE score_runs ADD COLUMN sample_spec VARCHAR")
    spec = "participants=5 per experiment, seed=0"
    con.execute("UPDATE score_runs SET sample_spec = ? WHERE model = ?", [spec, POST])
    con.close()
    card = card_of(db, POST)
    jsonschema.validate(card, schema())
    assert card["scored_on"]["sampled"] is True and card["scored_on"]["sample_specs"] == [spec]
    assert any(c.startswith("Scored on a sample") and spec in c for c in card["caveats"])
    assert "a SAMPLE (participants=5 per experiment, seed=0)" in render_card_html(card)


def test_card_html_renders_the_same_json(wh):
    card = card_of(wh, POST)
    page = render_card_html(card)
    data = re.search(r"<script type='application/json' id='card-data'>(.*?)</script>", page, re.S)
    assert data and json.loads(data.group(1)) == card
    for sec in ("caveats", "scored-on", "nll", "effects", "provenance"):
        assert f"<section id='{sec}'>" in page
    assert f"{card['nll']['overall']['mean']:.3f}" in page
    assert card["provenance"]["tokenizer_sha256"][0] in page
    assert "<script>" not in page and "default-src 'none'" in page


def test_cli(wh, tmp_path: Path):
    run = CliRunner().invoke
    out = tmp_path / "c.json"
    res = run(main, ["card", POST, "--db", str(wh), "-o", str(out)])
    assert res.exit_code == 0, res.output
    jsonschema.validate(json.loads(out.read_text()), schema())
    out = tmp_path / "c.html"
    assert run(main, ["card", POST, "--db", str(wh), "-o", str(out)]).exit_code == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    res = run(main, ["card", "Qwen3-0.6B-Instrct", "--db", str(wh), "-o", str(out)])
    assert res.exit_code == 1 and "did you mean 'Qwen3-0.6B-Instruct'" in res.output
    res = run(main, ["card", POST, "--db", str(wh), "-o", str(tmp_path / "c.txt")])
    assert res.exit_code == 1 and "must end in .json or .html" in res.output
    res = run(main, ["card", POST, "--db", str(wh), "-o", str(out), "--condition", "chat"])
    assert res.exit_code == 1 and "no complete run under condition 'chat'" in res.output
    assert "Traceback" not in res.output


def test_docs_publish_the_schema_exactly():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "card.md").read_text()
    block = doc.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block) == schema()


def test_edge_cases_a_failed_run_and_a_model_never_scored(wh, tmp_path: Path):
    card = card_of(wh, "Qwen2.5-0.5B-Base")  # the fixture's interrupted run is this model's
    jsonschema.validate(card, schema())
    statuses = {r["status"] for r in card["scored_on"]["runs"]}
    assert statuses == {"complete", "failed"}
    assert card["nll"]["overall"]["mean"] < 10  # the failed run's NLL 99 rows never enter
    db = tmp_path / "w.duckdb"
    shutil.copy(wh, db)
    con = warehouse_db.open(db, "write", create=True)
    con.execute(
        "INSERT INTO models (model_id, name, source, post_training, base_model) "
        "SELECT max(model_id) + 1, 'never-scored', 'x', 'instruct', 'Qwen3-0.6B-Base' FROM models"
    )
    con.close()
    card = card_of(db, "never-scored")
    jsonschema.validate(card, schema())
    assert card["nll"]["overall"] is None and card["scored_on"]["responses"] == 0
    assert "No complete scoring run: nothing to report." in card["caveats"]
    assert "No valid scores" in render_card_html(card)


def test_a_flagged_base_is_stated(wh, tmp_path: Path):
    from psystats.scoring.registry import set_fields

    db = tmp_path / "w.duckdb"
    shutil.copy(wh, db)
    con = warehouse_db.open(db, "write", create=True)
    set_fields(con, BASE, {"pipeline_check": "random weights (test)"})
    con.close()
    card = card_of(db, POST)
    assert any(
        c.startswith(f"Its base model {BASE} is flagged as a pipeline check (random weights")
        for c in card["caveats"]
    )
    # the fits read the base too: it is named once, not again for each fit
    assert any(c.startswith("Fit ") and "pipeline checks" in c for c in card["caveats"]) is False
    assert card_of(db, BASE)["caveats"][0].startswith(f"{BASE} is flagged as a pipeline check")
