"""Baseline scorers (scoring/baselines.py) on real Psych-201 data, against a float64
reference written from the definitions (docs/scoring.md, "Baselines").

The small warehouse holds franke2024bayesian (single letters: 26 keys drawn per
trial, no detected option set; a declared one tests the option-set path) and
guenther's association lists (open-ended: every response is its own text).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pytest

from helpers import FRANKE, cli_ok
from psystats.scoring.baselines import ALPHA, baseline_scorer
from psystats.scoring.config import ScorerConfig
from psystats.scoring.inputs import load_inputs
from psystats.scoring.registry import add_model
from psystats.scoring.runner import RunOptions, score
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
UNSEEN = ("an answer no other participant gave",)  # a class, never a response text


def frequency_reference(con, experiment: str, scored: set[int], option_set=None) -> dict:
    """baseline:frequency from its definition, in float64, one participant at a time:
    every number is computed from the OTHER participants' responses only."""
    answers: dict[int, dict[int, tuple[int, str]]] = defaultdict(dict)
    for pk, i, rid, text in con.execute(
        "SELECT participant_key, response_index, response_id, text FROM responses "
        "WHERE experiment = ?",
        [experiment],
    ).fetchall():
        answers[pk][i] = (rid, text)
    out = {}
    for p in scored:
        others = [q for q in answers if q != p]
        if option_set is not None:
            support = list(option_set)
        else:
            support = sorted({t for q in others for _, t in answers[q].values()}) + [UNSEEN]
        for i, (rid, y) in answers[p].items():
            if option_set is not None and y not in option_set:
                continue
            counts = Counter(
                answers[q][i][1]
                for q in others
                if i in answers[q] and (option_set is None or answers[q][i][1] in option_set)
            )
            n = sum(counts.values())
            k = len(support)
            prob = {cls: (counts.get(cls, 0) + ALPHA) / (n + ALPHA * k) for cls in support}
            assert math.isclose(sum(prob.values()), 1.0)
            cls = y if y in prob else UNSEEN
            top = max(prob.values())
            out[rid] = {
                "nll": -math.log(prob[cls]),
                "entropy": -sum(v * math.log(v) for v in prob.values()),
                "top1": prob[cls] == top and sum(v == top for v in prob.values()) == 1,
                "options": {o: math.log(prob[o]) for o in option_set} if option_set else {},
            }
    return out


def _inputs(con, experiment: str, limit: int | None = None):
    ps = [p for p in load_inputs(con) if p.experiment == experiment]
    return ps[:limit] if limit else ps


def _scored(batch) -> dict:
    rows = {r["response_id"]: r for r in batch.scores.to_pylist()}
    for r in batch.options.to_pylist():
        rows[r["response_id"]].setdefault("options", {})[r["option"]] = r["logprob"]
    return rows


def _check(batch, ref: dict) -> None:
    got = _scored(batch)
    assert got.keys() == ref.keys() and got
    for rid, want in ref.items():
        g = got[rid]
        assert g["nll"] == pytest.approx(want["nll"], rel=1e-12, abs=1e-12)
        assert g["first_token_nll"] == g["nll"]
        assert g["first_token_entropy"] == pytest.approx(want["entropy"], rel=1e-10)
        assert g["top1_all"] is want["top1"] and g["top1_first"] is want["top1"]
        assert g["n_tokens"] is None
        assert g.get("options", {}).keys() == want["options"].keys()
        for o, lp in want["options"].items():
            assert g["options"][o] == pytest.approx(lp, rel=1e-12, abs=1e-12)


MODEL = {"name": "baseline:frequency"}


def test_frequency_equals_the_definition_on_open_ended_answers(small_warehouse):
    """guenther: every answer is unique, so each is the 'unseen' class of K = the other
    participants' answers + 1; franke without an option set: letters as open answers."""
    con = warehouse_db.open(small_warehouse)
    try:
        guenther = next(
            e
            for (e,) in con.execute("SELECT experiment FROM experiments").fetchall()
            if e != FRANKE
        )
        for exp, limit in ((guenther, 10), (FRANKE, 120)):
            ps = _inputs(con, exp, limit)
            batch = baseline_scorer(con, MODEL, ps, {}).score(ps)
            ref = frequency_reference(con, exp, {p.participant_key for p in ps})
            _check(batch, ref)
    finally:
        con.close()


def test_frequency_equals_the_definition_over_a_declared_option_set(small_warehouse):
    con = warehouse_db.open(small_warehouse)
    try:
        ps = _inputs(con, FRANKE)
        # A set without four letters: their answers are outside it, not scored.
        options = LETTERS[:22]
        scorer = baseline_scorer(con, MODEL, ps, {FRANKE: options})
        batch = scorer.score(ps)
        ref = frequency_reference(con, FRANKE, {p.participant_key for p in ps}, options)
        _check(batch, ref)
        outside = sum(1 for p in ps for t in p.responses if t not in options)
        assert outside > 0 and batch.counts["responses_outside_option_set"] == outside
        assert scorer.settings["smoothing"] == {"method": "additive", "alpha": 0.5}
    finally:
        con.close()


def test_frequency_never_sees_the_participant_it_predicts(warehouse_copy):
    """One participant answers 'zz-only-mine' at every trial and nobody else ever does.
    Counting them would give (1 + a) / (n + a K) with their answer in the support; left
    out, every one of their answers is the unseen class: a / (n_others + a K_others).
    Their other answers cannot move their own scores either."""
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    try:
        ps = _inputs(con, FRANKE)
        p = ps[0]
        con.execute(
            "UPDATE responses SET text = 'zz-only-mine' WHERE participant_key = ?",
            [p.participant_key],
        )
        others = [q for q in ps if q is not p]
        k_others = len({t for q in others for t in q.responses}) + 1
        batch = baseline_scorer(con, MODEL, ps, {}).score([p])
        got = {r["response_id"]: r["nll"] for r in batch.scores.to_pylist()}
        for i, rid in enumerate(p.response_ids):
            n_others = sum(1 for q in others if len(q.response_ids) > i)
            assert got[rid] == pytest.approx(-math.log(ALPHA / (n_others + ALPHA * k_others)))
            seen = (1 + ALPHA) / (n_others + 1 + ALPHA * (k_others + 1))
            assert got[rid] > -math.log(seen) + 1.0  # far from what seeing them would give
        # New answers of theirs at every other trial (three more texts nobody else gave)
        # leave their first score as it was: their texts never enter the support.
        before = dict(got)
        con.execute(
            "UPDATE responses SET text = 'zz-' || response_index "
            "WHERE participant_key = ? AND response_index > 0",
            [p.participant_key],
        )
        again = baseline_scorer(con, MODEL, ps, {}).score([p])
        first = p.response_ids[0]
        assert {r["response_id"]: r["nll"] for r in again.scores.to_pylist()}[first] == before[
            first
        ]
    finally:
        con.close()


def test_uniform_is_minus_log_one_over_the_option_count(warehouse_copy):
    """Through `psystats models add` and `psystats score`, stored like any run: every franke
    answer scores log 26 under a declared 26-letter set; guenther, with no set, is skipped
    with its reason."""
    db = warehouse_copy
    cli_ok("--db", db, "models", "add", "baseline:uniform")
    out = cli_ok(
        "--db", db, "score", "--model", "baseline:uniform", "-q",
        "--options", f"{FRANKE}={'|'.join(LETTERS)}",
    ).output  # fmt: skip
    assert "complete" in out
    con = warehouse_db.open(db)
    try:
        model = con.execute(
            "SELECT post_training, family, source FROM models WHERE name = 'baseline:uniform'"
        ).fetchall()
        assert model == [("baseline", "baseline", None)]
        run_id, status, counts, settings = con.execute(
            "SELECT run_id, status, counts, settings FROM score_runs "
            "WHERE model = 'baseline:uniform'"
        ).fetchall()[0]
        assert status == "complete"
        n_guenther = scalar(
            con, "SELECT count(*) FROM participants WHERE experiment <> ?", [FRANKE]
        )
        assert json.loads(counts)["skipped:no-option-set"] == n_guenther
        assert json.loads(settings)["baseline"] == "uniform"
        nlls = con.execute(
            "SELECT DISTINCT s.nll, s.first_token_entropy FROM scores s "
            "JOIN responses r USING (response_id) WHERE s.run_id = ?",
            [run_id],
        ).fetchall()
        assert nlls == [(-math.log(1 / 26), math.log(26))]
        n_franke = scalar(con, "SELECT count(*) FROM responses WHERE experiment = ?", [FRANKE])
        assert scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id]) == n_franke
        logprobs = con.execute(
            "SELECT DISTINCT logprob FROM option_scores WHERE run_id = ?", [run_id]
        ).fetchall()
        assert logprobs == [(math.log(1 / 26),)]
    finally:
        con.close()
    # Scoring it again is a complete run already: nothing to do.
    out = cli_ok(
        "--db", db, "score", "--model", "baseline:uniform", "-q",
        "--options", f"{FRANKE}={'|'.join(LETTERS)}",
    ).output  # fmt: skip
    assert "already complete" in out


def test_frequency_runs_through_the_runner_and_is_registered_on_first_use(warehouse_copy):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    try:
        out = score(con, "baseline:frequency", run=RunOptions(studies=(FRANKE.split("/")[0],)))
        assert out.run_id is not None and "complete" in out.message
        row = con.execute(
            "SELECT post_training, base_model FROM models WHERE name = 'baseline:frequency'"
        ).fetchall()
        assert row == [("baseline", None)]
        settings = json.loads(
            scalar(con, "SELECT settings FROM score_runs WHERE run_id = ?", [out.run_id])
        )
        assert settings["baseline"] == "frequency" and len(settings["data_sha256"]) == 64
        n = scalar(con, "SELECT count(*) FROM responses WHERE experiment = ?", [FRANKE])
        assert scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [out.run_id]) == n
        with pytest.raises(WarehouseError, match="has no tokens or words: drop --token-level"):
            score(con, "baseline:frequency", ScorerConfig(token_level=True))
        with pytest.raises(WarehouseError, match="without --engine ray"):
            score(con, "baseline:frequency", run=RunOptions(engine="ray"))
    finally:
        con.close()


def test_baselines_are_registered_under_their_own_names_only(db_path):
    con = warehouse_db.open(db_path, "write", create=True)
    try:
        row = add_model(con, "baseline:frequency")
        assert (row["source"], row["post_training"], row["n_params"]) == (None, "baseline", None)
        assert row["inferred"]["source_kind"] == "baseline"
        assert add_model(con, "baseline:frequency")["model_id"] == row["model_id"]  # idempotent
        with pytest.raises(WarehouseError, match="under its own name only"):
            add_model(con, "baseline:uniform", name="floor")
        with pytest.raises(WarehouseError, match="not one of"):
            add_model(con, None, name="ext", post_training="baseline")
        with pytest.raises(WarehouseError, match="no baseline 'baseline:median'.*uniform"):
            add_model(con, "baseline:median")
    finally:
        con.close()
