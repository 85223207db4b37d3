"""`psystats sql` is sandboxed: read-only, and nothing outside this warehouse, unless asked."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from psystats.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "psystats" / "sample" / "psych201"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def wh(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("sql") / "w.duckdb"
    assert cli("--db", db, "ingest", SAMPLE, "-q").exit_code == 0
    return db


@pytest.fixture
def world(tmp_path: Path, wh: Path):
    """A copy of the warehouse, a second warehouse beside it, and a secret file."""
    import shutil

    db = tmp_path / "w.duckdb"
    shutil.copy(wh, db)
    other = tmp_path / "other.duckdb"
    c = duckdb.connect(str(other))
    c.execute("CREATE TABLE t AS SELECT 1 AS x")
    c.close()
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nalice,hunter2\n")
    return db, other, secret


def _state(*paths: Path) -> list[bytes | None]:
    return [p.read_bytes() if p.exists() else None for p in paths]


REFUSED = {
    "attach": ("ATTACH '{other}' AS o", "file system operations are disabled"),
    "attach_rw_delete": ("ATTACH '{other}' AS o (READ_WRITE); DELETE FROM o.t", "disabled"),
    "copy_to": ("COPY participants TO '{out}'", "file system operations are disabled"),
    "export_database": ("EXPORT DATABASE '{outdir}'", "file system operations are disabled"),
    "read_csv": ("SELECT * FROM read_csv('{secret}')", "file system operations are disabled"),
    "read_text": ("SELECT * FROM read_text('{secret}')", "file system operations are disabled"),
    "replacement_scan": ("SELECT * FROM '{secret}'", "disabled"),
    "glob": ("SELECT * FROM glob('{outdir}/../*')", "file system operations are disabled"),
    "read_blob": ("SELECT * FROM read_blob('{secret}')", "file system operations are disabled"),
    "read_json": ("SELECT * FROM read_json_auto('{secret}')", "disabled"),
    "sqlite_scan": ("SELECT * FROM sqlite_scan('{other}', 't')", "sqlite_scanner extension"),
    "secrets": ("CALL duckdb_secrets()", "disabled"),
    "set_memory": ("SET memory_limit = '100GB'", "configuration has been locked"),
    "set_temp_dir": ("SET temp_directory = '{outdir}'", "configuration has been locked"),
    "install": ("INSTALL httpfs", "disabled"),
    "load": ("LOAD httpfs", "disabled"),
    "set_back_on": ("SET enable_external_access = true", "configuration has been locked"),
    "reset": ("RESET enable_external_access", "configuration has been locked"),
    "pragma": ("PRAGMA enable_external_access=true", "configuration has been locked"),
    "delete": ("DELETE FROM participants", "read-only"),
    "create_table": ("CREATE TABLE x AS SELECT 1", "read-only"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_sandbox_refuses(world, tmp_path: Path, case: str):
    db, other, secret = world
    out, outdir = tmp_path / "out.csv", tmp_path / "dump"
    sql, needle = REFUSED[case]
    sql = sql.format(other=other, secret=secret, out=out, outdir=outdir)
    before = _state(db, other)
    res = cli("--db", db, "sql", sql)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("Error: ")
    assert needle in res.output
    # The hint names the flag that would allow it.
    flag = "--write" if needle == "read-only" else "--allow-external"
    assert flag in res.output
    assert "hunter2" not in res.output
    assert _state(db, other) == before
    assert not out.exists() and not outdir.exists()


def test_write_allows_this_warehouse_only(world, tmp_path: Path):
    db, other, secret = world
    res = cli("--db", db, "sql", "--write", "DELETE FROM ingest_conflicts")
    assert res.exit_code == 0, res.output
    res = cli("--db", db, "sql", "--write", f"ATTACH '{other}' AS o (READ_WRITE)")
    assert res.exit_code == 1 and "--allow-external" in res.output
    assert duckdb.connect(str(other), read_only=True).execute("SELECT x FROM t").fetchall() == [
        (1,)
    ]


def test_allow_external_reads_and_writes_other_files(world, tmp_path: Path):
    db, other, secret = world
    res = cli("--db", db, "sql", "--allow-external", f"SELECT * FROM read_csv('{secret}')")
    assert res.exit_code == 0, res.output
    assert "hunter2" in res.output
    out = tmp_path / "exp.csv"
    res = cli(
        "--db",
        db,
        "sql",
        "--allow-external",
        f"COPY (SELECT experiment FROM experiments ORDER BY 1) TO '{out}'",
    )
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[0] == "experiment"
    assert len(out.read_text().splitlines()) == 1 + 4  # the sample's four experiments


def test_plain_queries_still_work(world):
    db, _, _ = world
    res = cli("--db", db, "sql", "--format", "csv", "SELECT count(*) AS n FROM participants")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["n", "18"]
    res = cli("--db", db, "sql", "SELECT ? AS v", "-p", "x")
    assert res.exit_code == 0 and "x" in res.output
