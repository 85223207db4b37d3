"""Is the warehouse what it recorded?  Cheap checks on every open, a full check on demand.

Under the Parquet scores layout the score rows live in files a user can
delete, truncate or add to by hand, and DuckDB's views read whatever the
folders hold: a deleted file silently halves a count, a truncated one fails
every query with "No magic bytes".  The warehouse records each file it
writes in ``score_files`` (rows, size, SHA-256), so:

* every open (:func:`psystats.warehouse.db.open`) runs :func:`quick_scan`:
  each recorded file exists with its recorded size, and no partition holds a
  file it did not write; it costs one ``stat`` per file.  When something is
  wrong, :func:`guard` makes every query of the score tables on that
  connection fail with one line naming the damaged run and
  ``psystats check --repair``; the other tables stay readable;
* ``psystats check`` runs :func:`check`: the above, plus each file's row
  count and columns (from its Parquet footer), optionally its checksum,
  leftovers of interrupted writes, score rows of no run or no response,
  every run's row count against ``score_runs`` and the tables and columns
  against the schema -- for both layouts;
* ``psystats check --repair`` runs :func:`repair`: what cannot be trusted is
  moved to a quarantine folder next to the warehouse (never deleted), its
  record dropped, and every run that lost rows is marked incomplete with
  what restores it (``psystats score`` resumes it; an imported run is filled
  in place with ``psystats scores import FILE --run N``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from . import parquet_layout as layout
from . import staleness
from .errors import WarehouseError
from .hashing import file_sha256
from .schema import MIGRATIONS
from .sql import scalar, transaction

REPAIR = "psystats check --repair"
# Kinds whose file cannot be trusted: repair moves it to the quarantine folder.
QUARANTINED = ("size", "unreadable", "rows", "schema", "checksum", "unrecorded", "leftover")
# Kinds after which the run holds fewer rows than it recorded.
LOSES_ROWS = ("missing", "size", "unreadable", "rows", "schema", "checksum")


@dataclass(frozen=True)
class Problem:
    """One thing that is not as the warehouse recorded it."""

    kind: str  # see the module docstring and docs/reliability.md
    detail: str
    run_id: int | None = None
    table: str | None = None
    file: str | None = None  # relative to the scores folder: <table>/run_id=N/part-....parquet
    run: str = ""  # "score run 7 (model, condition)", when the run is known

    def line(self) -> str:
        where = f"{self.run}: " if self.run else ""
        return f"{where}{self.detail}"


def _runs(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[str, str, str, str, int | None]]:
    """run_id -> (model, condition, scorer, status, n_responses)."""
    return {
        int(r): (str(m), str(c), str(s), str(st), None if n is None else int(n))
        for r, m, c, s, st, n in con.execute(
            "SELECT run_id, model, condition, scorer, status, n_responses FROM score_runs"
        ).fetchall()
    }


def _label(runs: dict, run_id: int | None) -> str:
    if run_id is None:
        return ""
    if run_id not in runs:
        return f"score run {run_id} (not in score_runs)"
    model, condition = runs[run_id][:2]
    return f"score run {run_id} ({model}, {condition})"


def _partition_run(name: str) -> int | None:
    if not name.startswith("run_id="):
        return None
    try:
        return int(name.split("=", 1)[1])
    except ValueError:
        return None


def _records(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        f"SELECT table_name, run_id, file, n_rows, size_bytes, sha256 FROM {layout.FILES} "
        "ORDER BY table_name, run_id, file"
    ).fetchall()


# --------------------------------------------------------------------------- every open


def quick_scan(con: duckdb.DuckDBPyConnection) -> list[Problem]:
    """Recorded files present with their recorded sizes, and no file the warehouse did not
    write, under the Parquet layout ([] under the DuckDB layout).  One stat per file."""
    s = layout.settings(con)
    if s.get(layout.LAYOUT_KEY) != "parquet":
        return []
    root = layout.scores_root(con, s)
    if not root.is_dir():
        return []  # moved with the file: `init --scores-dir` re-points (parquet_layout.refresh)
    runs = _runs(con)
    problems: list[Problem] = []
    recorded: set[str] = set()
    for table, run_id, rel, _n, size, _sha in _records(con):
        recorded.add(f"{table}/{rel}")
        path = root / table / rel
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            if path.with_name(f".{path.name}.tmp").exists():
                continue  # committed, its rename is under way (or finished by the next open)
            problems.append(_problem("missing", table, run_id, rel, runs))
            continue
        except OSError as e:  # a folder this user may not read
            problems.append(_problem("unreadable", table, run_id, rel, runs, why=e.strerror))
            continue
        if size is not None and actual != size:
            problems.append(_problem("size", table, run_id, rel, runs, size=size, actual=actual))
    for table, run_id, rel in _files_on_disk(root):
        if f"{table}/{rel}" not in recorded:
            problems.append(_problem("unrecorded", table, run_id, rel, runs))
    return problems


def _files_on_disk(root: Path) -> Iterable[tuple[str, int, str]]:
    """(table, run_id, 'run_id=N/part-....parquet') of every file the views would read."""
    for table in layout.TABLES:
        folder = root / table
        try:
            parts = sorted(folder.iterdir())
        except OSError:  # missing, or not readable: the recorded files say what is lost
            continue
        for part in parts:
            run_id = _partition_run(part.name)
            if run_id is None or part.name == layout.SCHEMA_PARTITION or not part.is_dir():
                continue
            try:
                files = sorted(part.glob("part-*.parquet"))
            except OSError:
                continue
            for f in files:
                yield table, run_id, f"{part.name}/{f.name}"


def _problem(
    kind: str,
    table: str,
    run_id: int,
    rel: str,
    runs: dict,
    **facts: object,
) -> Problem:
    file = f"{table}/{rel}"
    detail = {
        "missing": f"file {file} is missing (deleted or moved by hand?)",
        "size": f"file {file} has {facts.get('actual')} bytes, {facts.get('size')} were "
        "written (truncated or changed by hand?)",
        "unrecorded": f"file {file} was not written by this warehouse (added by hand?)",
        "unreadable": f"file {file} cannot be read as Parquet ({facts.get('why')})",
        "rows": f"file {file} holds {facts.get('actual')} rows, {facts.get('n')} were written",
        "schema": f"file {file} does not have the columns of {table} ({facts.get('why')})",
        "checksum": f"file {file} does not have the checksum it was written with",
        "unverified": f"file {file} was written before sizes and checksums were recorded",
        "orphan-record": f"file {file} is recorded for a run that does not exist",
        "leftover": f"file {file} is a leftover of an interrupted write",
    }[kind]
    label = _label(runs, run_id) if kind != "orphan-record" else f"score run {run_id}"
    return Problem(kind, detail, run_id, table, file, label)


def guard(con: duckdb.DuckDBPyConnection, problems: Sequence[Problem]) -> None:
    """Make every query of the score tables on ``con`` fail with one line naming what is
    damaged (temporary views over the real ones); the other tables stay readable."""
    if not problems:
        return
    message = damage_message(problems)
    literal = message.replace("'", "''")
    catalog = str(scalar(con, "SELECT current_database()")).replace('"', '""')
    for table in layout.TABLES:
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW {table} AS SELECT s.* FROM "{catalog}".main.{table} s, '
            f"(SELECT error('{literal}') AS e) x WHERE x.e IS NULL"
        )


def damage_message(problems: Sequence[Problem]) -> str:
    """One line: the damaged runs, the first problem, and the command that repairs."""
    runs = sorted({p.run_id for p in problems if p.run_id is not None})
    first = problems[0]
    more = (
        f" (and {len(problems) - 1} more: `psystats check` lists them)" if len(problems) > 1 else ""
    )
    which = (
        f"score run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))} "
        f"{'are' if len(runs) > 1 else 'is'} damaged"
        if runs
        else "the scores folder is damaged"
    )
    return f"{which}: {first.line()}{more}; `{REPAIR}` sets it aside and says how to restore it"


def is_damage_error(e: BaseException) -> bool:
    """Whether a DuckDB error is the one :func:`guard` raises."""
    return isinstance(e, duckdb.Error) and f"`{REPAIR}`" in str(e)


def damage_error(e: BaseException) -> WarehouseError:
    """The guard's error as a WarehouseError (DuckDB's prefix removed)."""
    text = str(e).strip().splitlines()[0]
    for prefix in ("Invalid Input Error: ",):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return WarehouseError(text)


# --------------------------------------------------------------------------- psystats check


def check(con: duckdb.DuckDBPyConnection, *, checksums: bool = False) -> list[Problem]:
    """Every problem :func:`repair` knows, for either layout (see the module docstring)."""
    problems = _schema_problems(con)
    if problems:
        return problems  # the tables below may not be there to check
    parquet = layout.is_parquet(con)
    if parquet:
        problems += _file_problems(con, checksums=checksums)
    damaged = any(p.kind in LOSES_ROWS or p.kind == "unrecorded" for p in problems)
    problems += _count_problems(con, parquet, problems)
    if not damaged:
        problems += _orphan_row_problems(con, parquet)
    return problems


def _expected_schema() -> dict[str, list[str]]:
    mem = duckdb.connect()
    try:
        for m in MIGRATIONS:
            mem.execute(m)
        return _columns_by_table(mem)
    finally:
        mem.close()


def _columns_by_table(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "ORDER BY table_name, column_index"
    ).fetchall():
        out.setdefault(str(table), []).append(str(column))
    return out


def _schema_problems(con: duckdb.DuckDBPyConnection) -> list[Problem]:
    expected, actual = _expected_schema(), _columns_by_table(con)
    problems = []
    for table, cols in expected.items():
        have = actual.get(table)
        if have is None:
            problems.append(Problem("schema-table", f"table {table} is missing"))
            continue
        missing = [c for c in cols if c not in have]
        if missing:
            problems.append(
                Problem("schema-table", f"table {table} lacks column(s) {', '.join(missing)}")
            )
    return problems


def _arrow_family(t) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)


_DUCK_FAMILY = {
    "TINYINT": "int",
    "SMALLINT": "int",
    "INTEGER": "int",
    "BIGINT": "int",
    "DOUBLE": "float",
    "FLOAT": "float",
    "VARCHAR": "text",
    "BOOLEAN": "bool",
}


def _read_footer(path: Path, columns: dict[str, str]) -> tuple[int | None, str | None]:
    """(rows, None) from a Parquet footer, or (None, why it is unreadable) / (rows, schema
    problem) when its columns do not fit ``columns`` (name -> DuckDB type)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n, schema = pf.metadata.num_rows, pf.schema_arrow
    except Exception as e:  # pyarrow says precisely what is wrong
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    for field in schema:
        if field.name not in columns:
            return n, f"unknown column {field.name!r}"
        want = _DUCK_FAMILY.get(columns[field.name], columns[field.name])
        if _arrow_family(field.type) != want:
            return n, f"column {field.name!r} is {field.type}, expected {columns[field.name]}"
    return n, None


def _file_problems(con: duckdb.DuckDBPyConnection, *, checksums: bool) -> list[Problem]:
    problems = quick_scan(con)
    root = layout.scores_root(con)
    runs = _runs(con)
    bad = {p.file for p in problems}
    types = {
        t: dict(
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = "
                "current_database() AND schema_name = 'main' AND table_name = ?",
                [layout.template(t)],
            ).fetchall()
        )
        for t in layout.TABLES
    }
    for table, run_id, rel, n, size, sha in _records(con):
        file = f"{table}/{rel}"
        if file in bad:
            continue
        if run_id not in runs:
            problems.append(_problem("orphan-record", table, run_id, rel, runs))
            continue
        path = root / table / rel
        if not path.exists():
            continue  # its rename is under way (quick_scan)
        rows, why = _read_footer(path, types[table])
        if rows is None:
            problems.append(_problem("unreadable", table, run_id, rel, runs, why=why))
        elif why is not None:
            problems.append(_problem("schema", table, run_id, rel, runs, why=why))
        elif rows != n:
            problems.append(_problem("rows", table, run_id, rel, runs, actual=rows, n=n))
        elif size is None or sha is None:
            problems.append(_problem("unverified", table, run_id, rel, runs))
        elif checksums and file_sha256(path) != sha:
            problems.append(_problem("checksum", table, run_id, rel, runs))
    for table in layout.TABLES:
        for tmp in sorted((root / table).glob("run_id=*/.part-*.parquet.tmp")):
            if not any(root.glob(".pending-*.json")):
                run_id = _partition_run(tmp.parent.name)
                rel = f"{tmp.parent.name}/{tmp.name}"
                problems.append(_problem("leftover", table, run_id or 0, rel, runs))
    return problems


def _actual_rows(con: duckdb.DuckDBPyConnection, parquet: bool) -> dict[int, int]:
    """Score rows each run holds (``scores`` only: what ``n_responses`` counts)."""
    if parquet:
        # From the records (the views may be unreadable while files are damaged).
        rows = con.execute(
            f"SELECT f.run_id, sum(f.n_rows) - coalesce(any_value(d.n), 0) FROM {layout.FILES} f "
            f"LEFT JOIN (SELECT run_id, count(*) AS n FROM {layout.TOMBSTONES} GROUP BY run_id) d "
            "USING (run_id) WHERE f.table_name = 'scores' GROUP BY f.run_id"
        ).fetchall()
    else:
        rows = con.execute("SELECT run_id, count(*) FROM scores GROUP BY run_id").fetchall()
    return {int(r): int(n) for r, n in rows}


def _count_problems(
    con: duckdb.DuckDBPyConnection, parquet: bool, file_problems: Sequence[Problem]
) -> list[Problem]:
    """Complete and incomplete runs whose recorded response count is not what they hold
    (rows in files that cannot be trusted do not count)."""
    runs = _runs(con)
    actual = _actual_rows(con, parquet)
    lost = _lost_rows(con, file_problems)
    problems = []
    for run_id, (_m, _c, _s, status, n) in sorted(runs.items()):
        if status not in ("complete", "incomplete") or n is None:
            continue
        have = actual.get(run_id, 0) - lost.get(run_id, 0)
        if have != n:
            problems.append(
                Problem(
                    "count",
                    f"holds {have} score rows, score_runs.n_responses says {n}",
                    run_id,
                    "scores",
                    None,
                    _label(runs, run_id),
                )
            )
    return problems


def _lost_rows(con: duckdb.DuckDBPyConnection, problems: Sequence[Problem]) -> dict[int, int]:
    """Rows of ``scores`` in files that cannot be trusted, per run (counted from records)."""
    lost: dict[int, int] = {}
    for p in problems:
        if p.kind in LOSES_ROWS and p.table == "scores" and p.run_id is not None and p.file:
            rel = p.file.split("/", 1)[1]
            n = scalar(
                con,
                f"SELECT n_rows FROM {layout.FILES} WHERE table_name = 'scores' AND file = ?",
                [rel],
            )
            lost[p.run_id] = lost.get(p.run_id, 0) + int(n or 0)
    return lost


_SCORE_TABLES = (*layout.TABLES, *layout.OTHER_TABLES)


def _orphan_row_problems(con: duckdb.DuckDBPyConnection, parquet: bool) -> list[Problem]:
    problems = []
    for table in _SCORE_TABLES:
        if not parquet or table in layout.OTHER_TABLES:
            n = scalar(con, f"SELECT count(*) FROM {table} ANTI JOIN score_runs USING (run_id)")
            if n:
                problems.append(
                    Problem(
                        "orphan-rows", f"{n} rows of {table} belong to no score run", None, table
                    )
                )
        n = scalar(con, f"SELECT count(*) FROM {table} ANTI JOIN responses USING (response_id)")
        if n:
            problems.append(
                Problem(
                    "orphan-responses",
                    f"{n} rows of {table} score responses the warehouse does not hold",
                    None,
                    table,
                )
            )
    return problems


# --------------------------------------------------------------------------- repair


@dataclass
class Repaired:
    """What :func:`repair` did: one line per action, and the runs that lost rows."""

    actions: list[str]
    runs_lost_rows: dict[int, int]  # run_id -> rows it held before
    quarantine: Path | None


def quarantine_folder(con: duckdb.DuckDBPyConnection) -> Path:
    """``<warehouse>.quarantine/<UTC time>/``: where repair moves what it cannot trust."""
    db_file = layout.warehouse_file(con)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return db_file.parent / f"{db_file.name}.quarantine" / stamp


def repair(con: duckdb.DuckDBPyConnection, problems: Sequence[Problem]) -> Repaired:
    """Set aside what cannot be trusted and make the records tell the truth (one
    transaction for the records; files move to the quarantine folder, never deleted)."""
    if any(p.kind == "schema-table" for p in problems):
        raise WarehouseError(
            "the warehouse's tables differ from its schema ("
            + next(p.detail for p in problems if p.kind == "schema-table")
            + "): check cannot repair that; restore the file from a copy"
        )
    parquet = layout.is_parquet(con)
    runs = _runs(con)
    before = {r: v[4] for r, v in runs.items()}
    actions: list[str] = []
    moves: list[tuple[Path, Path]] = []
    folder = quarantine_folder(con)
    root = layout.scores_root(con) if parquet else None
    touched: set[int] = set()
    with transaction(con):
        for p in problems:
            if p.kind in ("count", "orphan-rows", "orphan-responses"):
                continue
            assert root is not None and p.file is not None and p.table is not None
            table, rel = p.file.split("/", 1)
            if p.kind == "unverified":
                path = root / p.file
                con.execute(
                    f"UPDATE {layout.FILES} SET size_bytes = ?, sha256 = ? "
                    "WHERE table_name = ? AND file = ?",
                    [path.stat().st_size, file_sha256(path), table, rel],
                )
                actions.append(f"recorded the size and checksum of {p.file} (rows verified)")
                continue
            if p.kind != "unrecorded" and p.kind != "leftover":
                con.execute(
                    f"DELETE FROM {layout.FILES} WHERE table_name = ? AND file = ?", [table, rel]
                )
            if p.kind in QUARANTINED or (p.kind == "orphan-record" and (root / p.file).exists()):
                moves.append((root / p.file, folder / "scores-folder" / p.file))
                actions.append(f"moved {p.file} to {folder / 'scores-folder' / p.file}: {p.detail}")
            elif p.kind in ("missing", "orphan-record"):
                actions.append(f"forgot {p.file}: {p.detail}")
            if p.kind in LOSES_ROWS and p.run_id is not None:
                touched.add(p.run_id)
        actions += _repair_rows(con, problems, parquet, folder)
        touched |= {p.run_id for p in problems if p.kind == "count" and p.run_id is not None}
        lost = _recount(con, touched, parquet, before, runs)
    for src, dest in moves:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
    if moves or any(p.kind in ("orphan-rows", "orphan-responses") for p in problems):
        _write_manifest(folder, problems, actions)
    return Repaired(actions, lost, folder if moves else None)


def _repair_rows(
    con: duckdb.DuckDBPyConnection, problems: Sequence[Problem], parquet: bool, folder: Path
) -> list[str]:
    """Score rows of no run (copied to the quarantine folder, then deleted) or of no
    response (the same; under the Parquet layout tombstoned, files untouched)."""
    actions = []
    for p in problems:
        if p.kind not in ("orphan-rows", "orphan-responses") or p.table is None:
            continue
        join = (
            "score_runs USING (run_id)"
            if p.kind == "orphan-rows"
            else "responses USING (response_id)"
        )
        select = f"SELECT * FROM {p.table} ANTI JOIN {join}"
        if parquet and p.table in layout.TABLES:
            con.execute(
                f"INSERT INTO {layout.TOMBSTONES} (run_id, response_id) "
                f"SELECT DISTINCT run_id, response_id FROM ({select})"
            )
            layout.refresh_views(con)
            actions.append(f"left out {p.detail} (listed in {layout.TOMBSTONES})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{p.table}-{p.kind}.parquet"
        literal = str(out).replace("'", "''")
        con.execute(f"COPY ({select}) TO '{literal}' (FORMAT parquet)").fetchall()
        key = "run_id" if p.kind == "orphan-rows" else "response_id"
        other = "score_runs" if p.kind == "orphan-rows" else "responses"
        con.execute(f"DELETE FROM {p.table} WHERE {key} NOT IN (SELECT {key} FROM {other})")
        actions.append(f"moved {p.detail} to {out}")
    return actions


def _recount(
    con: duckdb.DuckDBPyConnection,
    touched: set[int],
    parquet: bool,
    before: dict[int, int | None],
    runs: dict,
) -> dict[int, int]:
    """Record the true row count of each touched run; a complete run that lost rows becomes
    incomplete (an imported one with a 'lost' gap).  Returns run -> rows it held before."""
    actual = _actual_rows(con, parquet)
    lost: dict[int, int] = {}
    for run_id in sorted(touched):
        if run_id not in runs:
            continue
        have, had = actual.get(run_id, 0), before.get(run_id)
        con.execute("UPDATE score_runs SET n_responses = ? WHERE run_id = ?", [have, run_id])
        if had is not None and have < had:
            lost[run_id] = had
    if lost:
        staleness.mark_lost(con, lost, f"`{REPAIR}` set aside rows it could not trust")
    return lost


def _write_manifest(folder: Path, problems: Sequence[Problem], actions: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "REPAIR.json").write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "problems": [p.line() for p in problems],
                "actions": actions,
                "pid": os.getpid(),
            },
            indent=1,
        )
    )
