"""Issue 11, item 5: `ingest --replace-changed` keeps scores honest.

Replacing a participant deletes its old scores, marks the runs that held them
incomplete and the fits built on those runs stale (in `summary`, and queryable
as score_runs.status / fits.stale_reason); `psystats score` then re-scores
exactly the replaced participant, and the result equals a fresh run.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from psystats.cli import main

TEXTS = {
    1: "Choose a door. You press <<A>>. Again you press <<B>>.",
    2: "Choose a door. You press <<B>>. Again you press <<B>>.",
    3: "Choose a door. You press <<A>>. Again you press <<A>>.",
}


def cli(db: Path, *args: str):
    return CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)


def write_study(path: Path, texts: dict[int, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"text": t, "experiment": "toy", "participant": p}) + "\n"
            for p, t in texts.items()
        )
    )
    return path


def scores_by_natural_key(db: Path) -> dict[tuple, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT r.participant, r.response_index, s.response_id, s.nll, s.n_tokens, "
        "s.first_token_nll, s.top1_all, s.top1_first, s.first_token_entropy "
        "FROM scores s JOIN responses r USING (response_id)"
    ).fetchall()
    con.close()
    return {(p, i): rest for p, i, *rest in rows}


def test_replace_marks_runs_and_fits_and_leaves_only_the_replaced_pending(tmp_path):
    """The bookkeeping alone, without a model: scores written as a run would write them."""
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.runs import pending_participants, start_run
    from psystats.warehouse import db as warehouse_db

    src = write_study(tmp_path / "toy" / "prompts.jsonl", TEXTS)
    db = tmp_path / "w.duckdb"
    assert cli(db, "ingest", str(src)).exit_code == 0
    con = warehouse_db.open(db, "write", create=True)
    run_id, _ = start_run(con, {"name": "m"}, "plain", {"studies": ["toy"]}, {}, {})
    other, _ = start_run(con, {"name": "m2"}, "plain", {"studies": ["toy"]}, {}, {})
    con.execute(
        "INSERT INTO scores (run_id, response_id, nll) SELECT ?, response_id, 1.0 FROM responses",
        [run_id],
    )
    # The other run scored only participant 1: replacing 2 leaves it complete.
    con.execute(
        "INSERT INTO scores (run_id, response_id, nll) SELECT ?, response_id, 1.0 "
        "FROM responses WHERE participant = '1'",
        [other],
    )
    con.execute("UPDATE score_runs SET status = 'complete'")
    con.execute(
        "INSERT INTO fits (fit_id, kind, selection, psystats_version) VALUES "
        "(1, 'persona', ?, 'x'), (2, 'effects', ?, 'x')",
        [
            json.dumps({"runs": {"m": {"persona": [run_id], "plain": [other]}}}),
            json.dumps({"runs": [other]}),
        ],
    )
    con.close()

    write_study(src, {**TEXTS, 2: "Choose a door. You press <<C>>. Again <<C>>."})
    r = cli(db, "ingest", "--replace-changed", str(src))
    assert r.exit_code == 0, r.output
    assert "1 score runs now incomplete, 1 fits stale" in r.output
    con = warehouse_db.open(db)
    assert con.execute("SELECT run_id, status FROM score_runs ORDER BY 1").fetchall() == [
        (run_id, "incomplete"),
        (other, "complete"),
    ]
    assert con.execute("SELECT fit_id FROM fits WHERE stale_reason IS NOT NULL").fetchall() == [
        (1,)
    ]
    # Run 1 lost participant 2's two scores; the other run kept its two.
    assert con.execute("SELECT run_id, count(*) FROM scores GROUP BY 1 ORDER BY 1").fetchall() == [
        (run_id, 4),
        (other, 2),
    ]
    # What `psystats score` would do next: resume the run, score participant 2 only.
    con.close()
    con = warehouse_db.open(db, "write", create=True)
    assert start_run(con, {"name": "m"}, "plain", {"studies": ["toy"]}, {}, {}) == (run_id, False)
    pending = pending_participants(con, run_id, load_inputs(con, studies=["toy"]))
    assert [p.text for p in pending] == ["Choose a door. You press <<C>>. Again <<C>>."]
    con.execute("UPDATE score_runs SET status = 'incomplete' WHERE run_id = ?", [run_id])
    con.close()
    r = cli(db, "summary")
    assert r.exit_code == 0
    warnings = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: score run {run_id} (m, plain) is incomplete: participants it scored were "
        "replaced; run `psystats score --model m --condition plain --study toy` to re-score them",
        f"warning: fit 1 (persona) is stale: built on score run(s) {run_id}: ingest 2 of {src} "
        "replaced changed participants it had scored (see ingest_conflicts); fit it again",
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_replace_marks_runs_incomplete_fits_stale_and_rescore_equals_fresh(tiny_models, tmp_path):
    model = str(tiny_models["qwen3"])
    src = write_study(tmp_path / "toy" / "prompts.jsonl", TEXTS)
    db = tmp_path / "w.duckdb"
    assert cli(db, "ingest", str(src)).exit_code == 0
    r = cli(db, "score", "--model", model, "--study", "toy", "-q")
    assert r.exit_code == 0, r.output
    before = scores_by_natural_key(db)
    assert len(before) == 6

    con = duckdb.connect(str(db))
    [(run_id,)] = con.execute("SELECT run_id FROM score_runs").fetchall()
    # Fits as the analyses record them: runs as a list, or per model, or per condition.
    for fit_id, runs in ((1, [run_id]), (2, {"m": [run_id, 99]}), (3, [99])):
        con.execute(
            "INSERT INTO fits (fit_id, kind, selection, psystats_version) VALUES (?, ?, ?, 'x')",
            [fit_id, "effects", json.dumps({"runs": runs})],
        )
    con.close()

    changed = {**TEXTS, 2: "Choose a door. You press <<A>>. Again you press <<A>>!"}
    write_study(src, changed)
    r = cli(db, "ingest", "--replace-changed", str(src))
    assert r.exit_code == 0, r.output
    assert "1 participant replaced (2 responses)" in r.output
    assert "1 score runs now incomplete, 2 fits stale" in r.output

    con = duckdb.connect(str(db), read_only=True)
    status, error = con.execute("SELECT status, error FROM score_runs").fetchall()[0]
    assert status == "incomplete" and "replaced changed participants" in error
    stale = con.execute("SELECT fit_id, stale_reason FROM fits ORDER BY fit_id").fetchall()
    assert [f for f, why in stale if why] == [1, 2]
    assert stale[0][1].startswith(f"built on score run(s) {run_id}: ingest ")
    # Participants 1 and 3 keep their scores untouched; 2 has none.
    after_replace = scores_by_natural_key(db)
    assert after_replace == {k: v for k, v in before.items() if k[0] != "2"}
    con.close()

    r = cli(db, "summary")
    assert r.exit_code == 0
    [hint] = re.findall(
        rf"warning: score run {run_id} \(.*?\) is incomplete: .*?run `(.*?)`", r.output
    )
    assert "warning: fit 1 (effects) is stale: built on score run(s)" in r.output
    assert "warning: fit 3" not in r.output

    # The hint is a valid command: running it resumes the same run and scores
    # exactly the replaced participant.
    program, *args = shlex.split(hint)
    assert program == "psystats" and args[:2] == ["score", "--model"]
    r = cli(db, *args)
    assert r.exit_code == 0, r.output
    assert f"resuming run {run_id}: 2 of 3 participants already scored" in r.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id, status, error, n_responses FROM score_runs").fetchall() == [
        (run_id, "complete", None, 6)
    ]
    con.close()
    rescored = scores_by_natural_key(db)
    for k in before:
        if k[0] != "2":
            assert rescored[k] == before[k]

    # The same data, ingested and scored fresh, gives the same scores.
    fresh_db = tmp_path / "fresh.duckdb"
    fresh_src = write_study(tmp_path / "fresh" / "toy" / "prompts.jsonl", changed)
    assert cli(fresh_db, "ingest", str(fresh_src)).exit_code == 0
    assert cli(fresh_db, "score", "--model", model, "--study", "toy", "-q").exit_code == 0
    fresh = scores_by_natural_key(fresh_db)
    assert fresh.keys() == rescored.keys()
    for k, (_, *vals) in fresh.items():
        _, *got = rescored[k]
        for a, b in zip(vals, got):
            if isinstance(a, float):
                assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (k, a, b)
            else:
                assert a == b, (k, a, b)


# --------------------------------------------------------------------------- issue 21, item 3


def _external_scores(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    """An external scorer's file keyed by the natural key (study, experiment, participant,
    response_index), as `scores import` takes it."""
    lines = ["study,experiment,participant,response_index,nll"]
    lines += [f"toy,toy,{p},{i},{nll}" for p, i, nll in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary_models(db: Path) -> list[str]:
    r = cli(db, "summary", "--by", "model", "--format", "csv")
    assert r.exit_code == 0, r.output
    return [x for x in r.output.splitlines() if not x.startswith("warning:")]


def test_imported_run_is_completed_in_place_by_the_hinted_command(tmp_path):
    src = write_study(tmp_path / "toy" / "prompts.jsonl", TEXTS)
    db = tmp_path / "w.duckdb"
    assert cli(db, "ingest", str(src)).exit_code == 0
    first = _external_scores(
        tmp_path / "ext.csv", [(p, i, 0.5 + p + i / 10) for p in TEXTS for i in (0, 1)]
    )
    r = cli(db, "scores", "import", str(first), "--model", "ext", "--type", "other")
    assert r.exit_code == 0 and "as run 1" in r.output, r.output

    write_study(src, {**TEXTS, 2: "Choose a door. You press <<C>>. Again <<C>>."})
    r = cli(db, "ingest", "--replace-changed", "--force", str(src))
    assert r.exit_code == 0, r.output
    # A replacement is reported as one, not as a new participant.
    assert "toy: +0 participants, +0 responses, 1 participant replaced (2 responses)" in r.output
    assert "ingested 1 file: +0 participants, +0 responses, 1 participant replaced" in r.output
    # summary counts the incomplete run truly: it holds 4 of its 6 rows.
    assert _summary_models(db) == [
        "model,condition,complete,incomplete,unfinished,responses_scored,newest_run,sample",
        "ext,imported,0,1,0,4,1,",
    ]
    warning = [x for x in cli(db, "summary").output.splitlines() if "score run 1" in x]
    assert len(warning) == 1 and "2 responses of participant '2' (toy/toy)" in warning[0]
    hint = re.search(r"`(psystats scores import FILE --run 1)`", warning[0]).group(1)
    # The file the run came from predates the replacement: refused, nothing written.
    r = cli(db, *[str(first) if w == "FILE" else w for w in shlex.split(hint)[1:]])
    assert r.exit_code == 1 and "old responses" in r.output, r.output
    # The hint as written, FILE the scorer's scores of the new responses: the run is whole.
    new = _external_scores(tmp_path / "new.csv", [("2", 0, 9.0), ("2", 1, 9.5)])
    r = cli(db, *[str(new) if w == "FILE" else w for w in shlex.split(hint)[1:]])
    assert r.exit_code == 0, r.output
    assert "added 2 scores to run 1 (0 it already held skipped); run 1 is complete again" in (
        r.output
    )
    assert _summary_models(db)[1] == "ext,imported,1,0,0,6,1,"
    con = duckdb.connect(str(db), read_only=True)
    got = con.execute(
        "SELECT r.participant, r.response_index, s.nll FROM scores s JOIN responses r "
        "USING (response_id) WHERE s.run_id = 1 ORDER BY 1, 2"
    ).fetchall()
    assert con.execute("SELECT count(*) FROM score_runs").fetchall() == [(1,)]
    assert con.execute("SELECT count(*) FROM score_run_gaps").fetchall() == [(0,)]
    con.close()
    assert got == [
        ("1", 0, 1.5),
        ("1", 1, 1.6),
        ("2", 0, 9.0),
        ("2", 1, 9.5),
        ("3", 0, 3.5),
        ("3", 1, 3.6),
    ]


def test_fill_that_misses_a_replaced_response_keeps_the_run_incomplete(tmp_path):
    src = write_study(tmp_path / "toy" / "prompts.jsonl", TEXTS)
    db = tmp_path / "w.duckdb"
    cli(db, "ingest", str(src))
    first = _external_scores(tmp_path / "ext.csv", [(p, i, 1.0) for p in TEXTS for i in (0, 1)])
    cli(db, "scores", "import", str(first), "--model", "ext", "--type", "other")
    write_study(src, {**TEXTS, 2: "Choose a door. You press <<C>>. Again <<C>>."})
    cli(db, "ingest", "--replace-changed", "--force", str(src))
    # A fuller file: rows the run holds are skipped, the one new response is added.
    part = _external_scores(tmp_path / "p.csv", [("1", 0, 1.0), ("2", 0, 2.0)])
    r = cli(db, "scores", "import", str(part), "--run", "1")
    assert r.exit_code == 0, r.output
    assert "added 1 scores to run 1 (1 it already held skipped)" in r.output
    assert "still incomplete: it lacks 1 response of participant '2' (toy/toy)" in r.output
    # A run of another status or scorer is refused with what to do instead.
    r = cli(db, "scores", "import", str(part), "--run", "7")
    assert r.exit_code == 1 and "no score run 7" in r.output


def test_replace_changed_on_bytes_ingested_before_says_force_is_needed(tmp_path):
    src = write_study(tmp_path / "toy" / "prompts.jsonl", TEXTS)
    db = tmp_path / "w.duckdb"
    cli(db, "ingest", str(src))
    r = cli(db, "ingest", "--replace-changed", str(src))
    assert r.exit_code == 0
    assert "unchanged since last ingest" in r.output
    assert "add --force to read it again and replace the participants that changed" in r.output
    # Without --replace-changed the plain message stays short.
    r = cli(db, "ingest", str(src))
    assert "--force" not in r.output
