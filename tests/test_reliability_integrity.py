"""Issue 21, item 2: the warehouse checks that its Parquet score files are the ones it wrote.

Real files, damaged by hand as a user would: a partition file deleted,
truncated, added, or changed in place.  `summary` warns with one line naming
the run, every read of the scores fails with one line naming the run and
`psystats check --repair`, `psystats check` lists the problem (exit 1), and
`check --repair` restores a consistent warehouse: what cannot be trusted is
moved to a quarantine folder (never deleted), runs that lost rows are
incomplete with the command that restores them, and an imported run whose
source file is unchanged is re-imported in place.  The DuckDB layout is
checked too (counts, orphan rows, schema).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import psystats as ps
from helpers import cli_ok
from psystats.cli import main
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(res, *needles: str, code: int = 1) -> str:
    """The command failed with exactly one line (no traceback) containing ``needles``."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def rows(db: Path, query: str) -> list[tuple]:
    con = warehouse_db.open(db, verify=False)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def base(small_warehouse, tmp_path_factory) -> Path:
    """A Parquet-layout warehouse: 12 simulated psystats runs and one imported run."""
    from psystats.stats.simulate import simulate_warehouse

    root = tmp_path_factory.mktemp("integrity")
    db = root / "w.duckdb"
    shutil.copy(small_warehouse, db)
    cli_ok("--db", db, "init", "--scores-layout", "parquet")
    con = warehouse_db.open(db, "write")
    simulate_warehouse(con, seed=5)
    # As psystats scores them (simulated runs are otherwise external, filled by import).
    con.execute("UPDATE score_runs SET scorer = 'psystats'")
    con.close()
    cli_ok("--db", db, "scores", "export", "--run", "1", "-o", root / "ext.csv")
    cli_ok(
        "--db", db, "scores", "import", root / "ext.csv", "--model", "ext-model", "--type", "other"
    )
    return db


@pytest.fixture
def wh(base: Path, tmp_path: Path) -> Path:
    """A private copy (file and scores folder), re-pointed at its own folder."""
    db = tmp_path / base.name
    shutil.copy(base, db)
    shutil.copytree(f"{base}.scores", f"{db}.scores")
    cli_ok("--db", db, "init")
    return db


def part_files(db: Path, run_id: int) -> list[Path]:
    return sorted(Path(f"{db}.scores/scores/run_id={run_id}").glob("part-*.parquet"))


def imported_run(db: Path) -> int:
    return rows(db, "SELECT run_id FROM score_runs WHERE scorer <> 'psystats'")[0][0]


def assert_every_scores_read_names(db: Path, tmp_path: Path, run_id: int) -> None:
    """summary warns; sql, scores export, export cells and the notebook API refuse; check
    lists it: each with one line naming the run."""
    needle = f"score run {run_id} "
    r = run("--db", db, "summary")
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert any(needle in w and "psystats check --repair" in w for w in warnings), r.output
    one_line(run("--db", db, "sql", "SELECT count(*) FROM scores"), needle, "check --repair")
    one_line(
        run("--db", db, "scores", "export", "--run", 2, "-o", tmp_path / "x.csv"),
        needle,
        "check --repair",
    )
    one_line(run("--db", db, "export", "cells", "-o", tmp_path / "c.csv"), needle)
    with pytest.raises(WarehouseError, match=needle):
        ps.open(db).scores()
    for mode in ("read", "write", "statement"):  # every way a command holds the file
        with warehouse_db.open(db, mode) as con, pytest.raises(duckdb.Error, match=needle):
            con.execute("SELECT count(*) FROM option_scores").fetchall()
    # Tables other than the scores stay readable.
    assert run("--db", db, "sql", "SELECT count(*) FROM responses").exit_code == 0
    r = run("--db", db, "check")
    assert r.exit_code == 1, r.output
    assert any(needle in x for x in r.output.splitlines()[:-1]), r.output


def assert_consistent(db: Path) -> None:
    r = run("--db", db, "check")
    assert r.exit_code == 0, r.output
    assert "warehouse consistent" in r.output


def test_an_intact_warehouse_checks_clean(wh: Path):
    assert_consistent(wh)
    r = run("--db", wh, "check", "--checksums")
    assert r.exit_code == 0, r.output


def test_deleted_partition_file_is_named_everywhere_and_repaired(wh: Path, tmp_path: Path):
    before = dict(rows(wh, "SELECT run_id, n_responses FROM score_runs"))
    victim = part_files(wh, 3)[0]
    lost = pq.read_metadata(victim).num_rows
    victim.unlink()
    assert_every_scores_read_names(wh, tmp_path, 3)
    r = run("--db", wh, "check", "--repair")
    assert r.exit_code == 0, r.output
    assert f"forgot scores/run_id=3/{victim.name}" in r.output
    assert_consistent(wh)
    # The run lost those rows: incomplete, counted truly, and `psystats score` resumes it.
    status, n = rows(wh, "SELECT status, n_responses FROM score_runs WHERE run_id = 3")[0]
    assert (status, n) == ("incomplete", before[3] - lost)
    assert rows(wh, "SELECT count(*) FROM scores WHERE run_id = 3") == [(before[3] - lost,)]
    summary = run("--db", wh, "summary")
    assert "score run 3 (" in summary.output and "psystats score --model" in summary.output
    # Other runs untouched.
    assert rows(wh, "SELECT count(*) FROM scores WHERE run_id = 4") == [(before[4],)]


def test_truncated_partition_file_is_quarantined_not_deleted(wh: Path, tmp_path: Path):
    victim = part_files(wh, 5)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert_every_scores_read_names(wh, tmp_path, 5)
    r = run("--db", wh, "check")
    assert "size: score run 5 (" in r.output and "truncated" in r.output
    r = run("--db", wh, "check", "--repair")
    assert r.exit_code == 0, r.output
    kept = list(Path(f"{wh}.quarantine").rglob(victim.name))
    assert len(kept) == 1 and kept[0].read_bytes() == data[: len(data) // 2]
    assert (kept[0].parents[3] / "REPAIR.json").is_file()
    assert_consistent(wh)
    assert rows(wh, "SELECT status FROM score_runs WHERE run_id = 5") == [("incomplete",)]


def test_file_added_by_hand_is_detected_and_set_aside(wh: Path, tmp_path: Path):
    n_before = rows(wh, "SELECT count(*) FROM scores")[0][0]
    src = part_files(wh, 6)[0]
    extra = src.with_name("part-added-by-hand.parquet")
    shutil.copy(src, extra)
    assert_every_scores_read_names(wh, tmp_path, 6)
    assert "unrecorded: score run 6 (" in run("--db", wh, "check").output
    r = run("--db", wh, "check", "--repair")
    assert r.exit_code == 0, r.output
    assert not extra.exists() and list(Path(f"{wh}.quarantine").rglob(extra.name))
    assert_consistent(wh)
    # Nothing was lost: the run stays complete with all its rows.
    assert rows(wh, "SELECT count(*) FROM scores") == [(n_before,)]
    assert rows(wh, "SELECT status FROM score_runs WHERE run_id = 6") == [("complete",)]


def test_changed_bytes_are_found_by_checksums_only(wh: Path):
    victim = part_files(wh, 7)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, footer intact
    victim.write_bytes(bytes(data))
    assert run("--db", wh, "check").exit_code == 0
    r = run("--db", wh, "check", "--checksums")
    assert r.exit_code == 1 and "checksum: score run 7 (" in r.output, r.output
    r = run("--db", wh, "check", "--checksums", "--repair")
    assert r.exit_code == 0, r.output
    assert run("--db", wh, "check", "--checksums").exit_code == 0


def test_imported_run_is_reimported_from_its_unchanged_source(wh: Path):
    run_id = imported_run(wh)
    before = rows(wh, f"SELECT response_id, nll FROM scores WHERE run_id = {run_id} ORDER BY 1")
    for f in part_files(wh, run_id):
        f.unlink()
    r = run("--db", wh, "check", "--repair")
    assert r.exit_code == 0, r.output
    assert f"re-imported {len(before)} rows of score run {run_id}" in r.output
    assert_consistent(wh)
    assert rows(wh, f"SELECT status FROM score_runs WHERE run_id = {run_id}") == [("complete",)]
    after = rows(wh, f"SELECT response_id, nll FROM scores WHERE run_id = {run_id} ORDER BY 1")
    assert after == before


def test_imported_run_without_its_source_says_how_to_fill_it(wh: Path):
    run_id = imported_run(wh)
    query = f"SELECT settings->>'source_file' FROM score_runs WHERE run_id = {run_id}"
    source = Path(rows(wh, query)[0][0])
    moved = source.with_name("moved.csv")
    shutil.copy(source, moved)
    source.unlink()
    try:
        for f in part_files(wh, run_id):
            f.unlink()
        r = run("--db", wh, "check", "--repair")
        assert r.exit_code == 0, r.output
        hint = f"psystats scores import FILE --run {run_id}"
        assert hint in r.output
        # The hint runs as written, FILE being the scorer's output.
        args = [str(moved) if w == "FILE" else w for w in hint.split()[1:]]
        r = run("--db", wh, *args)
        assert r.exit_code == 0, r.output
        assert f"run {run_id} is complete again" in r.output
        assert_consistent(wh)
    finally:
        shutil.copy(moved, source)


def test_duckdb_layout_counts_are_checked_and_repaired(warehouse_copy: Path, tmp_path: Path):
    from psystats.stats.simulate import simulate_warehouse

    con = warehouse_db.open(warehouse_copy, "write")
    simulate_warehouse(con, seed=2)
    con.close()
    assert_consistent(warehouse_copy)
    cli_ok(
        "--db",
        warehouse_copy,
        "sql",
        "--write",
        "DELETE FROM scores WHERE run_id = 1 AND response_id IN "
        "(SELECT response_id FROM scores WHERE run_id = 1 ORDER BY 1 LIMIT 5)",
    )
    r = run("--db", warehouse_copy, "check")
    assert r.exit_code == 1 and "count: score run 1 (" in r.output, r.output
    r = run("--db", warehouse_copy, "check", "--repair")
    assert r.exit_code == 0, r.output
    assert_consistent(warehouse_copy)
    assert rows(warehouse_copy, "SELECT status FROM score_runs WHERE run_id = 1") == [
        ("incomplete",)
    ]


def test_duckdb_layout_orphan_rows_are_moved_out(warehouse_copy: Path):
    from psystats.stats.simulate import simulate_warehouse

    con = warehouse_db.open(warehouse_copy, "write")
    simulate_warehouse(con, seed=2)
    con.execute("INSERT INTO scores (run_id, response_id, nll) VALUES (999, 1, 1.0)")
    con.close()
    r = run("--db", warehouse_copy, "check")
    assert r.exit_code == 1 and "1 rows of scores belong to no score run" in r.output
    r = run("--db", warehouse_copy, "check", "--repair")
    assert r.exit_code == 0, r.output
    kept = list(Path(f"{warehouse_copy}.quarantine").rglob("scores-orphan-rows.parquet"))
    assert len(kept) == 1 and pq.read_metadata(kept[0]).num_rows == 1
    assert_consistent(warehouse_copy)
