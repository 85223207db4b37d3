"""Ingest: counts against an independent reading of the files, idempotence,
bad input refused cleanly (file, line, field; warehouse unchanged)."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from conftest import SMALL_STUDIES

from psystats.cli import main
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.ingest import ingest_paths


def independent_counts(zip_path: Path) -> tuple[int, int, list[str]]:
    """Participants, responses and response texts, read without psystats' code."""
    with zipfile.ZipFile(zip_path) as zf:
        name = [n for n in zf.namelist() if n.endswith("prompts.jsonl") and "MACOSX" not in n][0]
        lines = zf.read(name).decode("utf-8").splitlines()
    texts = []
    for line in lines:
        if line.strip():
            texts.extend(re.findall(r"<<(.*?)>>", json.loads(line)["text"], flags=re.S))
    return sum(1 for l in lines if l.strip()), len(texts), texts


def table_snapshot(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    tables = [
        t
        for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall()
    ]
    snap = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables}
    con.close()
    return snap


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_counts_match_independent_reading(db_path, psych201):
    paths = [psych201 / s for s in SMALL_STUDIES]
    res = run_cli("--db", str(db_path), "ingest", *map(str, paths))
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db_path), read_only=True)
    for study in SMALL_STUDIES:
        n_p, n_r, texts = independent_counts(psych201 / study / "prompts.jsonl.zip")
        got = con.execute(
            "SELECT count(*), sum(n_responses) FROM participants WHERE study = ?", [study]
        ).fetchall()[0]
        assert got == (n_p, n_r)
        got_r = con.execute(
            "SELECT text FROM responses WHERE study = ? ORDER BY participant_key, response_index",
            [study],
        ).fetchall()
        assert sorted(t for (t,) in got_r) == sorted(texts)


def test_spans_point_into_transcripts(small_warehouse):
    con = duckdb.connect(str(small_warehouse), read_only=True)
    bad = con.execute("""
        SELECT count(*) FROM responses r JOIN transcripts t USING (participant_key)
        WHERE substring(t.text, r.char_start + 1, r.char_end - r.char_start) != r.text
           OR substring(t.text, r.char_start - 1, 2) != '<<'
           OR substring(t.text, r.char_end + 1, 2) != '>>'
    """).fetchall()[0][0]
    assert bad == 0
    # Reaction times are attached in order (franke has RTs).
    rts = con.execute(
        "SELECT count(rt) FROM responses WHERE study = 'franke2024bayesian'"
    ).fetchall()[0][0]
    assert (
        rts
        == con.execute(
            "SELECT count(*) FROM responses WHERE study = 'franke2024bayesian'"
        ).fetchall()[0][0]
    )


def test_domains_resolved_from_shipped_mapping(small_warehouse):
    con = duckdb.connect(str(small_warehouse), read_only=True)
    rows = dict(con.execute("SELECT experiment, domain FROM experiments").fetchall())
    assert set(rows.values()) == {"Psycholinguistics"}


def test_second_ingest_adds_nothing(db_path, psych201):
    path = str(psych201 / SMALL_STUDIES[0])
    assert run_cli("--db", str(db_path), "ingest", path).exit_code == 0
    before = table_snapshot(db_path)
    res = run_cli("--db", str(db_path), "ingest", path)
    assert res.exit_code == 0
    after = table_snapshot(db_path)
    assert {k: v for k, v in after.items() if k != "ingests"} == {
        k: v for k, v in before.items() if k != "ingests"
    }
    # Same records from a different file (unzipped copy): still nothing added.
    res = run_cli("--db", str(db_path), "ingest", "--force", path)
    assert res.exit_code == 0 and "+0 participants" in res.output
    assert table_snapshot(db_path)["responses"] == before["responses"]


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


GOOD = {
    "text": "Pick a door. You press <<A>>. Again: <<B>>.",
    "experiment": "toy",
    "participant": 1,
    "RTs": [100, 200],
    "age": 30,
    "FACSIMILE A/D": 0.5,
}

BAD_LINES = [
    ("not json {", "<line>", "malformed JSON"),
    ({"experiment": "toy", "participant": 2}, "text", "is missing"),
    ({"text": "a <<b>>", "participant": 2}, "experiment", "is missing"),
    ({"text": "a <<b>>", "experiment": "toy"}, "participant", "is missing"),
    ({"text": "a <<b", "experiment": "toy", "participant": 2}, "text", "unbalanced"),
    ({"text": "a <<b <<c>> d>>", "experiment": "toy", "participant": 2}, "text", "nested"),
    ({"text": "a b>> c", "experiment": "toy", "participant": 2}, "text", "without an opening"),
    (
        {"text": "a <<b>> <<c>>", "experiment": "toy", "participant": 2, "RTs": [1]},
        "RTs",
        "has 1 values but the text has 2 responses",
    ),
    ({"text": "   ", "experiment": "toy", "participant": 2}, "text", "empty transcript"),
]


@pytest.mark.parametrize("bad,field,fragment", BAD_LINES)
def test_bad_line_names_file_line_field_and_writes_nothing(tmp_path, db_path, bad, field, fragment):
    # A warehouse that already holds one good study.
    ok = write_jsonl(tmp_path / "ok" / "prompts.jsonl", [GOOD])
    assert run_cli("--db", str(db_path), "ingest", str(ok)).exit_code == 0
    before = table_snapshot(db_path)

    good2 = dict(GOOD, participant=3)
    src = write_jsonl(tmp_path / "bad" / "prompts.jsonl", [good2, bad])
    res = CliRunner().invoke(main, ["--db", str(db_path), "ingest", str(src)])
    assert res.exit_code != 0
    assert f"{src}:2: field '{field}'" in res.output
    assert fragment in res.output
    assert table_snapshot(db_path) == before  # good line 1 was rolled back too


def test_non_utf8_is_refused(tmp_path, db_path):
    src = tmp_path / "s" / "prompts.jsonl"
    src.parent.mkdir()
    src.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + b'{"text": "caf\xe9 <<x>>", "experiment": "toy", "participant": 9}\n'
    )
    res = CliRunner().invoke(main, ["--db", str(db_path), "ingest", str(src)])
    assert res.exit_code != 0
    assert f"{src}:2: field '<line>': not valid UTF-8" in res.output
    assert table_snapshot(db_path)["participants"] == 0


def test_skip_bad_ingests_good_lines_and_reports_rejects(tmp_path, db_path):
    records = [GOOD] + [b for b, _, _ in BAD_LINES] + [dict(GOOD, participant=99)]
    src = write_jsonl(tmp_path / "s" / "prompts.jsonl", records)
    rejects = tmp_path / "rejects.jsonl"
    res = run_cli("--db", str(db_path), "ingest", "--skip-bad", "--rejects", str(rejects), str(src))
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db_path), read_only=True)
    assert con.execute(
        "SELECT list(participant ORDER BY participant) FROM participants"
    ).fetchall()[0][0] == ["1", "99"]
    assert con.execute("SELECT count(*) FROM responses").fetchall()[0][0] == 4
    rej = [json.loads(l) for l in rejects.read_text().splitlines()]
    assert [r["line"] for r in rej] == list(range(2, 2 + len(BAD_LINES)))
    assert [r["field"] for r in rej] == [f for _, f, _ in BAD_LINES]
    n_rej = con.execute("SELECT n_rejected FROM ingests").fetchall()[0][0]
    assert n_rej == len(BAD_LINES)


def test_changed_participant_is_reported_not_duplicated(tmp_path, db_path):
    src = write_jsonl(tmp_path / "s" / "prompts.jsonl", [GOOD])
    assert run_cli("--db", str(db_path), "ingest", str(src)).exit_code == 0
    changed = dict(GOOD, text="Pick a door. You press <<C>>. Again: <<B>>.")
    write_jsonl(src, [changed])
    res = run_cli("--db", str(db_path), "ingest", str(src))
    assert res.exit_code == 0 and "1 CHANGED" in res.output
    con = duckdb.connect(str(db_path))
    assert con.execute("SELECT list(text ORDER BY response_index) FROM responses").fetchall()[0][
        0
    ] == ["A", "B"]
    assert con.execute("SELECT action, line FROM ingest_conflicts").fetchall() == [("kept-old", 1)]
    con.close()
    res = run_cli("--db", str(db_path), "ingest", "--replace-changed", "--force", str(src))
    assert res.exit_code == 0
    con = duckdb.connect(str(db_path), read_only=True)
    assert con.execute("SELECT list(text ORDER BY response_index) FROM responses").fetchall()[0][
        0
    ] == ["C", "B"]
    assert con.execute("SELECT count(*) FROM participants").fetchall()[0][0] == 1


def test_duplicate_key_with_other_content_in_one_file(tmp_path, db_path):
    src = write_jsonl(
        tmp_path / "s" / "prompts.jsonl", [GOOD, dict(GOOD, text="other <<Z>> <<Y>>")]
    )
    res = CliRunner().invoke(main, ["--db", str(db_path), "ingest", str(src)])
    assert res.exit_code != 0
    assert ":2: field 'participant'" in res.output and "first at line 1" in res.output


def test_metadata_normalised_and_typed(tmp_path, db_path):
    rec = dict(
        GOOD,
        gender="female",
        nationality="DE",
        education="MSc",
        diagnosis="none",
        condition="A",
        scores={"x": 1},
    )
    src = write_jsonl(
        tmp_path / "meta" / "prompts.jsonl", [rec, dict(GOOD, participant=2, age="18-25")]
    )
    assert run_cli("--db", str(db_path), "ingest", str(src)).exit_code == 0
    con = duckdb.connect(str(db_path), read_only=True)
    row = con.execute(
        "SELECT age, gender, nationality, education, diagnosis, metadata "
        "FROM participants WHERE participant = '1'"
    ).fetchall()[0]
    assert row[:5] == (30.0, "female", "DE", "MSc", "none")
    assert json.loads(row[5]) == {"FACSIMILE A/D": 0.5, "condition": "A", "scores": {"x": 1}}
    kv = dict(
        (
            (k, (n, t))
            for k, n, t in con.execute(
                "SELECT key, value_num, value_text FROM participant_metadata m "
                "JOIN participants p USING (participant_key) WHERE p.participant = '1'"
            ).fetchall()
        )
    )
    assert kv["FACSIMILE A/D"] == (0.5, None) and kv["condition"] == (None, "A")
    # An age that is not a number stays in metadata rather than being lost.
    row2 = con.execute("SELECT age, metadata FROM participants WHERE participant = '2'").fetchall()[
        0
    ]
    assert row2[0] is None and json.loads(row2[1])["age"] == "18-25"


def test_zip_parquet_and_folder_sources_agree(tmp_path, psych201):
    import pyarrow as pa
    import pyarrow.parquet as pq

    study = SMALL_STUDIES[0]
    zpath = psych201 / study / "prompts.jsonl.zip"
    with zipfile.ZipFile(zpath) as zf:
        name = [n for n in zf.namelist() if n.endswith("prompts.jsonl") and "MACOSX" not in n][0]
        raw = zf.read(name)
    records = [json.loads(l) for l in raw.decode().splitlines() if l.strip()]
    jl = tmp_path / "jsonl" / study / "prompts.jsonl"
    jl.parent.mkdir(parents=True)
    jl.write_bytes(raw)
    other_zip = tmp_path / "zips" / f"{study}.zip"
    other_zip.parent.mkdir()
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("data/prompts.jsonl", raw)
        zf.writestr("__MACOSX/data/._prompts.jsonl", b"junk")
    pq_path = tmp_path / "pq" / f"{study}.parquet"
    pq_path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(records), pq_path)

    def content(path) -> list:
        db = tmp_path / f"{hashlib.md5(str(path).encode()).hexdigest()}.duckdb"
        con = warehouse_db.open(db, "write", create=True)
        ingest_paths(con, [path])
        return con.execute(
            "SELECT study, experiment, participant, response_index, text, rt "
            "FROM responses ORDER BY ALL"
        ).fetchall()

    reference = content(psych201 / study)
    assert len(reference) > 0
    assert content(jl) == reference
    assert content(jl.parent.parent) == reference  # folder of study folders
    assert content(other_zip) == reference
    assert content(pq_path) == reference


def test_domains_file_overrides_and_validates(tmp_path, db_path, psych201):
    assert run_cli("--db", str(db_path), "ingest", str(psych201 / SMALL_STUDIES[0])).exit_code == 0
    mapping = tmp_path / "map.csv"
    mapping.write_text("experiment,dataset,Reasoning,Memory\nfranke2024bayesian,mine,1,1\n")
    res = run_cli("--db", str(db_path), "ingest", "--domains", str(mapping))
    assert res.exit_code == 0
    con = duckdb.connect(str(db_path), read_only=True)
    assert con.execute("SELECT domain, domains FROM experiments").fetchall() == [
        ("Reasoning", ["Reasoning", "Memory"])
    ]
    con.close()
    bad = tmp_path / "bad.csv"
    bad.write_text("experiment,dataset,Reasoning\nfoo,x,2\n")
    res = CliRunner().invoke(main, ["--db", str(db_path), "ingest", "--domains", str(bad)])
    assert res.exit_code != 0 and f"{bad}:2: field 'Reasoning': expected 0 or 1" in res.output


def test_sql_command_formats_and_bound_params(small_warehouse):
    res = run_cli(
        "--db",
        str(small_warehouse),
        "sql",
        "--format",
        "json",
        "SELECT study, count(*) AS n FROM participants WHERE study = ? GROUP BY study",
        "-p",
        "franke2024bayesian",
    )
    assert json.loads(res.output) == [{"study": "franke2024bayesian", "n": 302}]
    res = run_cli(
        "--db",
        str(small_warehouse),
        "sql",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM responses WHERE study = ?",
        "-p",
        "x' OR '1'='1",
    )
    assert res.output.splitlines() == ["n", "0"]
    res = CliRunner().invoke(main, ["--db", str(small_warehouse), "sql", "DELETE FROM responses"])
    assert res.exit_code != 0  # read-only unless --write


def test_missing_db_is_an_error_for_queries(tmp_path):
    res = CliRunner().invoke(main, ["--db", str(tmp_path / "nope.duckdb"), "sql", "SELECT 1"])
    assert res.exit_code != 0 and "no warehouse at" in res.output
    assert not (tmp_path / "nope.duckdb").exists()


def test_schema_version_and_migrate_idempotent(db_path):
    con = warehouse_db.open(db_path, "write", create=True)
    from psystats.warehouse.db import migrate
    from psystats.warehouse.schema import SCHEMA_VERSION

    assert migrate(con) == SCHEMA_VERSION
    assert con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == SCHEMA_VERSION


def _rows_by_key(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute(
        "SELECT p.study, p.experiment, p.participant, p.content_sha256, r.response_index, r.text "
        "FROM participants p JOIN responses r USING (participant_key) ORDER BY ALL"
    ).fetchall()
    con.close()
    return rows


def test_ingest_commits_in_batches_and_an_interrupted_file_resumes(tmp_path, psych201, monkeypatch):
    """Issue 21, item 4: a file is committed in batches (readers get the file between
    them).  Interrupted after some batches, it leaves whole participants and no
    `complete` ingests row; the next ingest adds the rest, equal to a fresh ingest."""
    from psystats.warehouse import ingest

    study = psych201 / SMALL_STUDIES[0]
    fresh = tmp_path / "fresh.duckdb"
    assert run_cli("--db", str(fresh), "ingest", str(study)).exit_code == 0

    monkeypatch.setattr(ingest, "COMMIT_RESPONSES", 100)  # several batches for this study
    batches = []
    real_commit = ingest._commit_batch

    def commit_then_die(con, src, ingest_id, keys, *args):
        real_commit(con, src, ingest_id, keys, *args)
        batches.append(keys)
        if len(batches) == 3:
            raise KeyboardInterrupt  # as if killed between two batches

    monkeypatch.setattr(ingest, "_commit_batch", commit_then_die)
    db = tmp_path / "w.duckdb"
    con = warehouse_db.open(db, "statement", create=True)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(con, [study])
    con.close()
    partial = _rows_by_key(db)
    assert 0 < len(partial) < len(_rows_by_key(fresh))
    snap = table_snapshot(db)
    assert snap["ingests"] == 0  # not marked complete: the next ingest reads it again
    # Whole participants only: each has all its responses.
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT count(*) FROM participants p WHERE n_responses <> "
        "(SELECT count(*) FROM responses r WHERE r.participant_key = p.participant_key)"
    ).fetchall() == [(0,)]
    con.close()

    monkeypatch.setattr(ingest, "_commit_batch", real_commit)
    r = run_cli("--db", str(db), "ingest", str(study))
    assert r.exit_code == 0, r.output
    assert "already present" in r.output
    assert _rows_by_key(db) == _rows_by_key(fresh)
    assert table_snapshot(db)["participants"] == table_snapshot(fresh)["participants"]
