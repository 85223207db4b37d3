"""Issue 11 (ingest side): real-world encodings accepted, hostile input refused
with one exact `FILE:LINE: field` message, and the warehouse unchanged."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SMALL_STUDIES

from psystats.cli import main
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.ingest import ingest_paths

BASE = {
    "text": "Pick a door. You press <<A>>. Again: <<B>>.",
    "experiment": "toy",
    "participant": 1,
    "RTs": [1159, 200.5],
    "age": 30,
    "score": 3,
}


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in lines:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def snapshot(db: Path) -> dict[str, list]:
    """Every row of every table (small warehouses only)."""
    con = duckdb.connect(str(db), read_only=True)
    tables = [
        t
        for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
    ]
    out = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    con.close()
    return out


def content(db: Path) -> dict[str, list]:
    """The behavioural rows, without ids/provenance that differ between warehouses."""
    con = duckdb.connect(str(db), read_only=True)
    q = {
        "participants": "SELECT study, experiment, participant, age, gender, metadata, "
        "n_responses, content_sha256 FROM participants ORDER BY ALL",
        "responses": "SELECT study, experiment, participant, response_index, text, char_start, "
        "char_end, rt FROM responses ORDER BY ALL",
        "metadata": "SELECT p.participant, m.key, m.value_num, m.value_text, m.value_json "
        "FROM participant_metadata m JOIN participants p USING (participant_key) ORDER BY ALL",
    }
    out = {k: con.execute(v).fetchall() for k, v in q.items()}
    con.close()
    return out


@pytest.fixture
def seeded(tmp_path) -> Path:
    """A warehouse already holding one good study (so 'unchanged' means something)."""
    db = tmp_path / "w.duckdb"
    ok = write_lines(tmp_path / "ok" / "prompts.jsonl", [BASE])
    assert cli("--db", str(db), "ingest", str(ok)).exit_code == 0
    return db


def assert_refused(db: Path, args: list[str], expected: str) -> None:
    before = snapshot(db)
    res = cli("--db", str(db), "ingest", *args)
    assert res.exit_code == 1, res.output
    assert f"Error: {expected}" in res.output, res.output
    assert "Traceback" not in res.output
    assert snapshot(db) == before


# ----------------------------------------------------------------- 1. normalisation


def test_numbers_as_strings_and_missing_spellings_give_identical_rows(tmp_path):
    numbers = [
        BASE,
        dict(BASE, participant=2, RTs=[None, 7], age=None, score=2.0),
        dict(BASE, participant=3, RTs=[1.5, 2]),
    ]
    strings = [
        dict(BASE, participant="1", RTs=["1159", " 200.5 "], age="30", score=3.0),
        dict(BASE, participant="2.0", RTs=["NA", "7"], age="nan", score=2),
        dict(BASE, participant=" 3 ", RTs=["1.5", 2.0], age=30.0, score=3),
    ]
    parquet_path = tmp_path / "pq" / "toy.parquet"
    parquet_path.parent.mkdir()
    # Parquet: participant int64, an int column with a null becomes float.
    pq.write_table(
        pa.table(
            {
                "text": [BASE["text"]] * 3,
                "experiment": ["toy"] * 3,
                "participant": pa.array([1, 2, 3], pa.int64()),
                "RTs": [[1159.0, 200.5], [None, 7.0], [1.5, 2.0]],
                "age": [30.0, None, 30.0],
                "score": [3.0, 2.0, 3.0],
            }
        ),
        parquet_path,
    )
    a = write_lines(tmp_path / "a" / "toy.jsonl", numbers)
    b = write_lines(tmp_path / "b" / "toy.jsonl", strings)
    rows = {}
    for name, path in (("a", a), ("b", b), ("pq", parquet_path)):
        con = warehouse_db.open(tmp_path / f"{name}.duckdb", "write", create=True)
        ingest_paths(con, [path])
        con.close()
        rows[name] = content(tmp_path / f"{name}.duckdb")
    assert rows["a"] == rows["b"] == rows["pq"]
    resp = rows["a"]["responses"]
    assert [r[-1] for r in resp] == [1159.0, 200.5, None, 7.0, 1.5, 2.0]
    assert [r[2] for r in rows["a"]["participants"]] == ["1", "2", "3"]
    assert [r[3] for r in rows["a"]["participants"]] == [30.0, None, 30.0]
    # One warehouse, all three files: nothing added, nothing reported as changed.
    db = tmp_path / "all.duckdb"
    res = cli("--db", str(db), "ingest", "--study", "toy", str(a))
    assert res.exit_code == 0, res.output
    for path in (b, parquet_path):
        res = cli("--db", str(db), "ingest", "--study", "toy", str(path))
        assert res.exit_code == 0, res.output
        assert "+0 participants" in res.output and "CHANGED" not in res.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM ingest_conflicts").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM participants").fetchall() == [(3,)]


def test_numeric_strings_fill_value_num_and_text_answers_stay_text(tmp_path):
    rec = dict(BASE, score="12.5", diagnosis="none", region="NA", blank="", nothing=None)
    db = tmp_path / "w.duckdb"
    src = write_lines(tmp_path / "s" / "prompts.jsonl", [rec])
    assert cli("--db", str(db), "ingest", str(src)).exit_code == 0
    con = duckdb.connect(str(db), read_only=True)
    kv = {
        k: (n, t)
        for k, n, t in con.execute(
            "SELECT key, value_num, value_text FROM participant_metadata"
        ).fetchall()
    }
    # "none" is an answer in a text field; "" and null are not given at all.
    assert kv == {"score": (12.5, "12.5"), "region": (None, "NA")}
    assert con.execute("SELECT diagnosis FROM participants").fetchall() == [("none",)]


def test_real_study_with_string_rts_equals_the_original(tmp_path, psych201):
    """A real Psych-201 study re-encoded the way other studies write numbers."""
    study = "franke2024bayesian"
    assert study in SMALL_STUDIES
    with zipfile.ZipFile(psych201 / study / "prompts.jsonl.zip") as zf:
        name = [n for n in zf.namelist() if n.endswith(".jsonl") and "MACOSX" not in n][0]
        records = [json.loads(x) for x in zf.read(name).decode().splitlines() if x.strip()]
    assert any(r.get("RTs") for r in records)
    recoded = [
        dict(
            r,
            participant=str(r["participant"]),
            **(
                {"RTs": [str(v) if v is not None else "NA" for v in r["RTs"]]} if "RTs" in r else {}
            ),
        )
        for r in records
    ]
    src = write_lines(tmp_path / study / "prompts.jsonl", recoded)
    db = tmp_path / "w.duckdb"
    assert cli("--db", str(db), "ingest", str(psych201 / study)).exit_code == 0
    reference = content(db)
    res = cli("--db", str(db), "ingest", str(src))
    assert res.exit_code == 0 and "+0 participants" in res.output and "CHANGED" not in res.output
    assert content(db) == reference
    other = tmp_path / "other.duckdb"
    assert cli("--db", str(other), "ingest", str(src)).exit_code == 0
    assert content(other) == reference


def test_warehouse_from_before_normalisation_sees_no_change(tmp_path):
    """Old hashes (over the record as given) still count as the same content."""
    from psystats.warehouse.transcript import canonical_hash

    db = tmp_path / "w.duckdb"
    src = write_lines(tmp_path / "s" / "prompts.jsonl", [BASE])
    assert cli("--db", str(db), "ingest", str(src)).exit_code == 0
    con = duckdb.connect(str(db))
    con.execute("UPDATE participants SET content_sha256 = ?", [canonical_hash(BASE)])
    con.close()
    res = cli("--db", str(db), "ingest", "--force", str(src))
    assert res.exit_code == 0 and "CHANGED" not in res.output and "+0 participants" in res.output


# ------------------------------------------------------ 2. one error path, --skip-bad

HOSTILE = [
    # (line text, field, message)
    (
        dict(BASE, RTs=["fast", 1]),
        "RTs",
        "value 0 is not a number: 'fast'",
    ),
    (dict(BASE, RTs=[True, 1]), "RTs", "value 0 is not a number: True"),
    (dict(BASE, RTs="1159"), "RTs", "must be a list, got str"),
    (dict(BASE, participant=None), "participant", "is null"),
    (dict(BASE, participant="NA"), "participant", "is a missing value ('NA')"),
    (dict(BASE, experiment=[1]), "experiment", "must be a string or number, got list"),
    (dict(BASE, experiment=True), "experiment", "must be a string or number, got boolean"),
    (
        '{"text": "a <<\\ud800>>", "experiment": "toy", "participant": 5}',
        "text",
        "contains a lone surrogate (\\ud800) at character 4, which is not valid Unicode text",
    ),
    (
        '{"text": "a <<b>>", "experiment": "toy", "participant": 5, "note": "x\\udfff"}',
        "note",
        "contains a lone surrogate (\\udfff) at character 1",
    ),
    ("[" * 100_000 + "]" * 100_000, "<line>", "JSON nested too deeply to read"),
    (
        dict(BASE, deep=json.loads("[" * 40 + "]" * 40)),
        "deep",
        "is nested deeper than 32 levels",
    ),
    (
        '{"text": "a <<b>>", "experiment": "toy", "participant": 1' + "0" * 5000 + "}",
        "<line>",
        "malformed JSON: Exceeds the limit",
    ),
    ("42", "<line>", "expected a JSON object, got int"),
    ('{"text": 5, "experiment": "toy", "participant": 5}', "text", "must be a string, got int"),
]


@pytest.mark.parametrize("line,field,message", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_line_exact_message_and_nothing_written(seeded, tmp_path, line, field, message):
    src = write_lines(tmp_path / "bad" / "prompts.jsonl", [dict(BASE, participant=4), line])
    assert_refused(seeded, [str(src)], f"{src}:2: field '{field}': {message}")


def test_skip_bad_skips_every_hostile_line(seeded, tmp_path):
    lines = [dict(BASE, participant=4)] + [h[0] for h in HOSTILE] + [dict(BASE, participant=6)]
    src = write_lines(tmp_path / "bad" / "prompts.jsonl", lines)
    rejects = tmp_path / "rejects.jsonl"
    res = cli("--db", str(seeded), "ingest", "--skip-bad", "--rejects", str(rejects), str(src))
    assert res.exit_code == 0, res.output
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rej] == [
        (i + 2, f) for i, (_, f, _) in enumerate(HOSTILE)
    ]
    assert all(m in r["message"] for r, (_, _, m) in zip(rej, HOSTILE))
    con = duckdb.connect(str(seeded), read_only=True)
    got = con.execute("SELECT participant FROM participants WHERE study = 'bad' ORDER BY 1")
    assert got.fetchall() == [("4",), ("6",)]


def _corrupt_zip(path: Path, lines: list[dict]) -> Path:
    """A stored (uncompressed) zip whose member's bytes no longer match its CRC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r) + "\n" for r in lines).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("prompts.jsonl", body)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"Pick')  # inside the first record's text: still valid JSON
    raw[at + 1] = ord("Q")
    path.write_bytes(bytes(raw))
    return path


def test_corrupt_zip_member_is_one_error_and_skip_bad_rejects_the_file(seeded, tmp_path):
    bad = _corrupt_zip(
        tmp_path / "broken" / "prompts.jsonl.zip", [dict(BASE, participant=p) for p in (7, 8)]
    )
    label = f"{bad}:prompts.jsonl"
    assert_refused(
        seeded,
        [str(bad)],
        f"{label}:1: field '<file>': corrupt zip member: Bad CRC-32 for file 'prompts.jsonl'",
    )
    good = write_lines(tmp_path / "fine" / "prompts.jsonl", [dict(BASE, participant=9)])
    rejects = tmp_path / "rej.jsonl"
    res = cli(
        "--db", str(seeded), "ingest", "--skip-bad", "--rejects", str(rejects), str(bad), str(good)
    )
    assert res.exit_code == 0, res.output
    assert "broken: whole file rejected" in res.output
    [rej] = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert (rej["file"], rej["line"], rej["field"]) == (label, 1, "<file>")
    assert rej["message"].endswith("(whole file not ingested)")
    con = duckdb.connect(str(seeded), read_only=True)
    assert con.execute("SELECT DISTINCT study FROM participants ORDER BY 1").fetchall() == [
        ("fine",),
        ("ok",),
    ]
    assert con.execute("SELECT count(*) FROM ingests WHERE study = 'broken'").fetchall() == [(0,)]


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("x.parquet", b"this is not parquet at all", "not a readable Parquet file ("),
        ("x.zip", b"PK\x03\x04 truncated", "not a readable zip file ("),
        ("x.parquet", b"", "not a readable Parquet file ("),
    ],
)
def test_unreadable_files_are_errors_naming_the_file(seeded, tmp_path, name, data, message):
    path = tmp_path / "junk" / name
    path.parent.mkdir()
    path.write_bytes(data)
    assert_refused(seeded, [str(path)], f"{path}:0: field '<file>': {message}")


def test_parquet_timestamps_decimals_and_bad_dates(tmp_path):
    import datetime as dt
    from decimal import Decimal

    path = tmp_path / "ts.parquet"
    pq.write_table(
        pa.table(
            {
                "text": [BASE["text"]] * 3,
                "experiment": ["toy"] * 3,
                "participant": [1, 2, 3],
                "when": pa.array([dt.datetime(2024, 5, 1, 12, 30), None, None], pa.timestamp("us")),
                "far": pa.array([None, None, 10**12], pa.timestamp("s")),  # year 33658
                "price": pa.array([Decimal("1.50"), Decimal("2"), None], pa.decimal128(5, 2)),
            }
        ),
        path,
    )
    db = tmp_path / "w.duckdb"
    assert_refused_new = cli("--db", str(db), "ingest", str(path))
    assert assert_refused_new.exit_code == 1
    assert f"Error: {path}:3: field 'far': value cannot be read: date value out of range" in (
        assert_refused_new.output
    )
    assert snapshot(db)["participants"] == []
    res = cli("--db", str(db), "ingest", "--skip-bad", "--rejects", str(tmp_path / "r"), str(path))
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(db), read_only=True)
    meta = con.execute("SELECT participant, metadata FROM participants ORDER BY 1").fetchall()
    assert [(p, json.loads(m)) for p, m in meta] == [
        ("1", {"when": "2024-05-01T12:30:00", "price": 1.5}),
        ("2", {"price": 2}),
    ]


# -------------------------------------------------------------- 3. bounded memory


def test_line_over_the_limit_is_refused_while_reading(seeded, tmp_path):
    long_line = dict(BASE, participant=5, text="x" * (1 << 20) + " <<a>> <<b>>")
    src = write_lines(tmp_path / "long" / "prompts.jsonl", [dict(BASE, participant=4), long_line])
    assert_refused(
        seeded,
        ["--max-line-mib", "1", str(src)],
        f"{src}:2: field '<line>': longer than the limit of 1 MiB per line "
        "(raise it with --max-line-mib)",
    )
    # Raising the limit lets the same line in.
    res = cli("--db", str(seeded), "ingest", "--max-line-mib", "2", str(src))
    assert res.exit_code == 0 and "+2 participants" in res.output, res.output


def test_zip_bomb_line_is_rejected_and_later_lines_still_read(seeded, tmp_path):
    """8 MiB of spaces in a few KiB of zip, under a 1 MiB limit, with --skip-bad."""
    path = tmp_path / "bomb" / "prompts.jsonl.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("prompts.jsonl", "w") as f:
            f.write(json.dumps(dict(BASE, participant=4)).encode() + b"\n")
            for _ in range(8):
                f.write(b" " * (1 << 20))
            f.write(b"\n" + json.dumps(dict(BASE, participant=6)).encode() + b"\n")
    assert path.stat().st_size < 100_000
    rejects = tmp_path / "r.jsonl"
    res = cli(
        "--db", str(seeded), "ingest", "--max-line-mib", "1", "--skip-bad",
        "--rejects", str(rejects), str(path),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    [rej] = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert (rej["line"], rej["field"]) == (2, "<line>")
    con = duckdb.connect(str(seeded), read_only=True)
    got = con.execute("SELECT participant, line FROM participants WHERE study = 'bomb' ORDER BY 1")
    assert got.fetchall() == [("4", 1), ("6", 3)]


def test_parquet_transcript_over_the_limit(seeded, tmp_path):
    path = tmp_path / "big.parquet"
    big = "y" * ((1 << 20) + 1) + " <<a>>"
    pq.write_table(pa.table({"text": [big], "experiment": ["toy"], "participant": [1]}), path)
    assert_refused(
        seeded,
        ["--max-line-mib", "1", str(path)],
        f"{path}:1: field 'text': longer than the limit of 1 MiB per line",
    )


# --------------------------------------------------------------- 4. discovery


def _study(root: Path, name: str, participant: int) -> Path:
    return write_lines(root / name / "prompts.jsonl", [dict(BASE, participant=participant)])


def test_stray_data_file_beside_study_folders_is_an_error(seeded, tmp_path):
    root = tmp_path / "collection"
    _study(root, "s1", 1)
    _study(root, "s2", 2)
    write_lines(root / "stray.jsonl", [dict(BASE, participant=3)])
    assert_refused(
        seeded,
        [str(root)],
        f"{root}: holds both data files (stray.jsonl) and study folders (s1, s2); a folder is "
        "one study or a folder of studies, not both: move the stray files, or ingest them by name",
    )


def test_other_stray_files_and_empty_folders_are_warned_about(seeded, tmp_path):
    root = tmp_path / "collection"
    _study(root, "s1", 1)
    (root / "notes").mkdir()
    (root / "notes" / "prompts.csv").write_text("a,b\n")
    (root / "experiment_domains.csv").write_text("experiment,dataset\n")
    (root / "LICENSE").write_text("Apache-2.0")
    (root / "README.md").write_text("hi")
    res = cli("--db", str(seeded), "ingest", str(root))
    assert res.exit_code == 0, res.output
    warnings = [x for x in res.output.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: {root / 'notes'}: no .jsonl, .zip or .parquet file inside; not ingested",
        f"warning: {root / 'experiment_domains.csv'}: not a study file beside study folders; "
        "not ingested (a domain mapping? load it with --domains)",
    ]
    assert "+1 participants" in res.output


def test_psych201_layout_has_no_warnings_beyond_its_mapping(tmp_path, psych201):
    from psystats.warehouse.sources import discover_all

    found = discover_all([psych201])
    assert len(found.sources) == len([d for d in psych201.iterdir() if d.is_dir()])
    assert found.warnings == [
        f"{psych201 / 'experiment_domains.csv'}: not a study file beside study folders; "
        "not ingested (a domain mapping? load it with --domains)"
    ]


# The child's own peak RSS is VmHWM, the high-water mark of the address space it
# runs in.  Not ru_maxrss: Linux carries the pre-exec image's peak into it, and
# that image is the forked pytest worker, whose RSS (1.5 GiB after a demo ran in
# the same worker) has nothing to do with the ingest under test.
BOMB_CHILD = """
import json, sys
from psystats.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_mib": int(hwm.split()[1]) / 1024}))
"""


def make_bomb(path: Path, gib: float) -> Path:
    """A zip of a few MB holding one line of ``gib`` GiB of spaces between two good lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = b" " * (16 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("prompts.jsonl", "w", force_zip64=True) as f:
            f.write(json.dumps(dict(BASE, participant=1)).encode() + b"\n")
            for _ in range(int(gib * 64)):
                f.write(block)
            f.write(b"\n" + json.dumps(dict(BASE, participant=2)).encode() + b"\n")
    return path


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM needs Linux /proc")
def test_one_gib_line_bomb_refused_under_one_gib_rss(tmp_path):
    import subprocess
    import sys

    bomb = make_bomb(tmp_path / "bomb" / "prompts.jsonl.zip", 1.0)
    assert bomb.stat().st_size < 8 << 20
    db = tmp_path / "w.duckdb"
    args = ["--db", str(db), "ingest", str(bomb)]
    out = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, *args], capture_output=True, text=True, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["code"] == 1
    assert (
        f"Error: {bomb}:prompts.jsonl:2: field '<line>': longer than the limit of 64 MiB per "
        "line (raise it with --max-line-mib)" in out.stderr + out.stdout
    )
    assert res["peak_mib"] < 1024, res
    # With --skip-bad the lines around it are kept, still in bounded memory.
    out = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, *args[:3], "--skip-bad", "--rejects",
         str(tmp_path / "r.jsonl"), str(bomb)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["code"] in (0, None) and res["peak_mib"] < 1024, res
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT participant, line FROM participants ORDER BY 1").fetchall() == [
        ("1", 1),
        ("2", 3),
    ]
