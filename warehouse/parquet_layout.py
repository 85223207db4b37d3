"""The score tables as Parquet files that the warehouse reads through views.

A warehouse keeps ``scores``, ``option_scores`` and ``token_scores`` either as
DuckDB tables inside the file (layout ``duckdb``, the default) or as Parquet
files in a folder, one partition per scoring run, read by views of the same
names (layout ``parquet``)::

    <scores dir>/scores/run_id=7/part-<uuid>.parquet      one per committed batch
    <scores dir>/option_scores/run_id=7/part-<uuid>.parquet
    <scores dir>/token_scores/run_id=7/part-<uuid>.parquet
    <scores dir>/scores/run_id=999999999/part-schema.parquet   no rows: the columns

The layout is recorded in ``warehouse_settings`` and chosen by ``psystats
init --scores-layout``.  Every writer goes through :func:`write_rows` (or
:func:`register_file` for a shard file that needs no rewriting), so users'
SQL and every command see the same table either way.

Atomicity.  A file is written under a hidden temporary name in its
partition folder (``.part-<uuid>.parquet.tmp``, which the views' glob never
matches), flushed to disk, recorded in ``score_files`` inside the writer's
transaction, and renamed to its final name when that transaction commits
(:func:`psystats.warehouse.sql.on_transaction_end`).  A rollback deletes it.
A pending-rename note (``.pending-<uuid>.json`` in the scores folder) lets
the next writable open finish the rename of a transaction that committed
just before a crash, or delete the file of one that did not
(:func:`recover`).  Files are never modified after their rename.

Deleting.  Removing a run (``models remove --force``) moves its partition
folders aside when the transaction commits and deletes them.  Replacing a
participant (``ingest --replace-changed``) deletes a few rows of runs that
stay: their ``(run_id, response_id)`` pairs go to ``score_rows_deleted``,
which the views leave out, so Parquet files are still never rewritten.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from .errors import WarehouseError
from .hashing import file_sha256
from .sql import on_transaction_end, scalar, transaction

TABLES = ("scores", "option_scores", "token_scores")
LAYOUTS = ("duckdb", "parquet")
LAYOUT_KEY = "scores_layout"
DIR_KEY = "scores_dir"  # as given: relative to the warehouse file's folder, or absolute
RESOLVED_KEY = "scores_dir_resolved"  # the absolute folder the views read now
UNION_KEY = "union_by_name"  # 'true' once a migration changed a table's columns
ID_KEY = "scores_dir_id"  # also in <scores dir>/OWNER.json: one folder, one warehouse
OWNER_FILE = "OWNER.json"
SCHEMA_FILE = "part-schema.parquet"
# The empty file that lists the columns (so the views' glob always matches a file)
# lies in a partition whose name sorts after every real run's: DuckDB estimates a
# Parquet scan's rows from the FIRST file of the glob, and a first file with no
# rows makes it plan joins as if the scores were empty (a 14 GB spill building
# cells at 6.8 M rows, measured).  Run ids come from a sequence starting at 1.
SCHEMA_RUN_ID = 999_999_999
SCHEMA_PARTITION = f"run_id={SCHEMA_RUN_ID}"
TOMBSTONES = "score_rows_deleted"
# Per-run score tables that stay in the DuckDB file under either layout.
OTHER_TABLES = ("word_scores",)
FILES = "score_files"


def template(table: str) -> str:
    """The empty DuckDB table that keeps ``table``'s columns under the Parquet layout."""
    return f"_{table}_schema"


# --------------------------------------------------------------------------- settings


def settings(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """``warehouse_settings`` as a dict ({} for a warehouse older than the table)."""
    try:
        rows = con.execute("SELECT key, value FROM warehouse_settings").fetchall()
    except duckdb.CatalogException:
        return {}
    return {str(k): str(v) for k, v in rows}


def layout(con: duckdb.DuckDBPyConnection) -> str:
    """``'duckdb'`` or ``'parquet'``."""
    return settings(con).get(LAYOUT_KEY, "duckdb")


def is_parquet(con: duckdb.DuckDBPyConnection) -> bool:
    return layout(con) == "parquet"


def warehouse_file(con: duckdb.DuckDBPyConnection) -> Path:
    """The warehouse file ``con`` works on (DuckDB records it as an absolute path)."""
    path = scalar(
        con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    )
    if not path:
        raise WarehouseError("the Parquet scores layout needs a warehouse file, not :memory:")
    return Path(str(path)).resolve()


def _resolve(db_file: Path, stored: str) -> Path:
    p = Path(stored).expanduser()
    return (p if p.is_absolute() else db_file.parent / p).resolve()


def scores_root(con: duckdb.DuckDBPyConnection, s: dict[str, str] | None = None) -> Path:
    """The folder holding the Parquet partitions (resolved against the warehouse file)."""
    s = settings(con) if s is None else s
    return _resolve(warehouse_file(con), s[DIR_KEY])


def allowed_directories(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Folders a sandboxed connection must be able to read for the views to work."""
    s = settings(con)
    if s.get(LAYOUT_KEY) != "parquet":
        return []
    # The folder the views read now, and where it resolves from the file's place
    # (differs after a move, until a writable open re-points the views).
    folders = {str(scores_root(con, s)), s.get(RESOLVED_KEY) or str(scores_root(con, s))}
    return sorted(f + os.sep for f in folders)


def _stored_form(db_file: Path, scores_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """(what to record, absolute folder): relative to the warehouse's folder when inside it,
    so the warehouse and its scores can be moved together."""
    if scores_dir is None:
        return f"{db_file.name}.scores", db_file.parent / f"{db_file.name}.scores"
    root = Path(scores_dir).expanduser().resolve()
    try:
        return root.relative_to(db_file.parent).as_posix() or ".", root
    except ValueError:
        return str(root), root


def _check_folder_name(root: Path) -> None:
    # The views read a glob: a folder name with glob characters would match other files.
    bad = [c for c in "*?[]{}'" if c in str(root)]
    if bad:
        raise WarehouseError(
            f"{root}: a scores folder name must not contain {' '.join(bad)} "
            "(the views read it as a file pattern); choose another --scores-dir"
        )


# --------------------------------------------------------------------------- views


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [
        (str(n), str(t))
        for n, t in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
    ]


def _required(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        str(n)
        for (n,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ? AND NOT is_nullable",
            [table],
        ).fetchall()
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_views(con: duckdb.DuckDBPyConnection, root: Path, s: dict[str, str]) -> None:
    """(Re)create the three views over ``root``; call inside a transaction."""
    tombstones = bool(scalar(con, f"SELECT count(*) > 0 FROM {TOMBSTONES}"))
    for table in TABLES:
        cols = _columns(con, template(table))
        select = ", ".join(f"CAST(p.{_quote(c)} AS {t}) AS {_quote(c)}" for c, t in cols)
        union = "true" if s.get(f"{UNION_KEY}:{table}") == "true" else "false"
        glob = str(root / table / "run_id=*" / "part-*.parquet")
        sql = (
            f"CREATE OR REPLACE VIEW {table} AS SELECT {select} FROM read_parquet("
            f"{_literal(glob)}, hive_partitioning = true, hive_types = {{'run_id': INTEGER}}, "
            f"union_by_name = {union}) p"
        )
        if tombstones:
            sql += (
                f" WHERE NOT EXISTS (SELECT 1 FROM {TOMBSTONES} d "
                "WHERE d.run_id = p.run_id AND d.response_id = p.response_id)"
            )
        con.execute(sql)


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    """Recreate the views (after the first rows were tombstoned); inside a transaction."""
    if is_parquet(con):
        _create_views(con, scores_root(con), settings(con))


def _set(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute(
        "INSERT INTO warehouse_settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the rename itself is atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_schema_files(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """One empty Parquet file per table with its columns, so the views' glob always
    matches a file (an empty glob is an error) and knows every column."""
    for table in TABLES:
        part = root / table / SCHEMA_PARTITION
        part.mkdir(parents=True, exist_ok=True)
        dest = part / SCHEMA_FILE
        tmp = part / f".{SCHEMA_FILE}.{uuid.uuid4().hex}.tmp"
        names = [c for c, _ in _columns(con, template(table)) if c != "run_id"]
        con.execute(
            f"COPY (SELECT {', '.join(map(_quote, names))} FROM {template(table)} LIMIT 0) "
            f"TO {_literal(str(tmp))} (FORMAT parquet)"
        ).fetchall()
        _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(part)


# --------------------------------------------------------------------------- choosing


def enable(con: duckdb.DuckDBPyConnection, scores_dir: str | os.PathLike | None = None) -> Path:
    """Switch a warehouse without score rows to the Parquet layout; returns the folder.

    On a warehouse that already uses it, ``scores_dir`` re-points the views to
    a folder the partitions were moved to (the folder must hold them).
    """
    db_file = warehouse_file(con)
    s = settings(con)
    if s.get(LAYOUT_KEY) == "parquet":
        if scores_dir is None:
            return refresh(con)
        return repoint(con, scores_dir)
    n = sum(int(scalar(con, f"SELECT count(*) FROM {t}") or 0) for t in TABLES)
    if n:
        raise WarehouseError(
            f"{db_file} already holds {n} score rows in the DuckDB file; the scores layout "
            "is chosen when a warehouse is created: make a new one with `psystats --db "
            "NEW.duckdb init --scores-layout parquet` and ingest and score into it"
        )
    stored, root = _stored_form(db_file, scores_dir)
    _check_folder_name(root)
    owner = _owner(root)
    if owner is not None:
        raise WarehouseError(
            f"{root} already holds the scores of another warehouse ({owner.get('warehouse')}); "
            "run ids would collide: give each warehouse its own --scores-dir"
        )
    for table in TABLES:
        existing = [p for p in (root / table).glob("run_id=*") if p.name != SCHEMA_PARTITION]
        if existing:
            raise WarehouseError(
                f"{root / table} already holds partitions ({existing[0].name}, ...) of "
                "another warehouse; give an empty --scores-dir"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WarehouseError(f"{root}: cannot create the scores folder ({e.strerror})") from None
    folder_id = uuid.uuid4().hex
    with transaction(con):
        for table in TABLES:
            con.execute(f"ALTER TABLE {table} RENAME TO {template(table)}")
        _write_schema_files(con, root)
        _write_note(root / OWNER_FILE, {"id": folder_id, "warehouse": str(db_file)})
        _set(con, ID_KEY, folder_id)
        _set(con, LAYOUT_KEY, "parquet")
        _set(con, DIR_KEY, stored)
        _set(con, RESOLVED_KEY, str(root))
        _create_views(con, root, settings(con))
    return root


def refresh(con: duckdb.DuckDBPyConnection) -> Path:
    """Point the views at the folder the settings name, resolved against where the
    warehouse file is now (after the two were moved together)."""
    s = settings(con)
    root = scores_root(con, s)
    if s.get(RESOLVED_KEY) != str(root):
        _require_partitions(root)
        _require_owner(con, root)
        with transaction(con):
            _set(con, RESOLVED_KEY, str(root))
            _create_views(con, root, settings(con))
    return root


def repoint(con: duckdb.DuckDBPyConnection, scores_dir: str | os.PathLike) -> Path:
    """Record a new folder for the partitions (moved there by the user) and re-point the views."""
    stored, root = _stored_form(warehouse_file(con), scores_dir)
    _check_folder_name(root)
    _require_partitions(root)
    _require_owner(con, root)
    with transaction(con):
        _set(con, DIR_KEY, stored)
        _set(con, RESOLVED_KEY, str(root))
        _create_views(con, root, settings(con))
    return root


def _owner(root: Path) -> dict | None:
    try:
        return dict(json.loads((root / OWNER_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {"warehouse": "unreadable " + OWNER_FILE}


def _require_owner(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Refuse a scores folder that belongs to another warehouse (its run ids are others)."""
    owner, mine = _owner(root), settings(con).get(ID_KEY)
    if owner is not None and mine and owner.get("id") != mine:
        raise WarehouseError(
            f"{root} holds the scores of another warehouse ({owner.get('warehouse')}), "
            "not of this one: give this warehouse's own scores folder"
        )


def _require_partitions(root: Path) -> None:
    missing = [t for t in TABLES if not (root / t / SCHEMA_PARTITION / SCHEMA_FILE).is_file()]
    if missing:
        raise WarehouseError(
            f"{root}: no Parquet scores folder here ({missing[0]}/{SCHEMA_PARTITION}/"
            f"{SCHEMA_FILE} is missing); move the scores folder here, or give its new "
            "place with `psystats init --scores-dir DIR`"
        )


# --------------------------------------------------------------------------- migrations


def before_migrations(con: duckdb.DuckDBPyConnection) -> bool:
    """Turn the views back into the (empty) tables, so migrations can ALTER them.

    Returns whether the warehouse uses the Parquet layout (then call
    :func:`after_migrations` once they ran)."""
    if not is_parquet(con):
        return False
    with transaction(con):
        for table in TABLES:
            con.execute(f"DROP VIEW IF EXISTS {table}")
            con.execute(f"ALTER TABLE {template(table)} RENAME TO {table}")
    return True


def after_migrations(con: duckdb.DuckDBPyConnection, before: dict[str, list]) -> None:
    """Views again after migrations; a table whose columns changed is read by name, so
    files written before the change give NULL for the new columns."""
    root = scores_root(con)
    with transaction(con):
        for table in TABLES:
            if _columns(con, table) != before.get(table):
                _set(con, f"{UNION_KEY}:{table}", "true")
            con.execute(f"ALTER TABLE {table} RENAME TO {template(table)}")
        _write_schema_files(con, root)
        _create_views(con, root, settings(con))


def columns_now(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    return {t: _columns(con, t) for t in TABLES}


# --------------------------------------------------------------------------- writing


def write_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    run_id: int,
    source: str,
    columns: Sequence[str],
    *,
    order_by: str | None = None,
) -> int:
    """THE writer of score rows: ``columns`` of relation ``source`` become rows of
    ``table`` for run ``run_id``; returns how many.

    ``source`` and ``columns`` are identifiers from psystats code (a temporary
    table or a registered Arrow table), never user input.  Under the DuckDB
    layout this is an INSERT; under the Parquet layout one new file in the
    run's partition, visible when the surrounding transaction commits.
    """
    names = ", ".join(map(_quote, columns))
    order = f" ORDER BY {order_by}" if order_by else ""
    if table not in TABLES or not is_parquet(con):
        rows = con.execute(
            f"INSERT INTO {table} (run_id, {names}) SELECT ?, {names} FROM {source}{order}",
            [run_id],
        ).fetchall()
        return int(rows[0][0]) if rows else 0
    have = set(columns)
    cols = [(c, t) for c, t in _columns(con, template(table)) if c != "run_id"]
    # The views cannot enforce NOT NULL: a writer that lacks a required column is
    # refused here, as the DuckDB table would refuse it.  New nullable columns
    # (added by a later migration) are written as NULL.
    missing = [c for c in _required(con, template(table)) if c != "run_id" and c not in have]
    if missing:
        raise WarehouseError(f"{table}: rows without the required column(s) {', '.join(missing)}")
    select = ", ".join(
        f"CAST({_quote(c) if c in have else 'NULL'} AS {t}) AS {_quote(c)}" for c, t in cols
    )
    root = scores_root(con)
    part, name, tmp = _new_file(root, table, run_id)
    try:
        rows = con.execute(
            f"COPY (SELECT {select} FROM {source}{order}) TO {_literal(str(tmp))} "
            "(FORMAT parquet, COMPRESSION zstd)"
        ).fetchall()
        n = int(rows[0][0]) if rows else 0
        if n == 0:
            tmp.unlink(missing_ok=True)
            return 0
        _fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _stage(con, root, table, run_id, part, name, tmp, n, "write")
    return n


def register_file(
    con: duckdb.DuckDBPyConnection, table: str, run_id: int, src: Path, n_rows: int
) -> str:
    """Add an existing Parquet file (a shard's, with exactly the table's columns minus
    run_id) to run ``run_id``'s partition without rewriting it: a hard link when
    ``src`` is on the same filesystem, else a copy.  Returns ``'link'`` or ``'copy'``."""
    root = scores_root(con)
    part, name, tmp = _new_file(root, table, run_id)
    try:
        os.link(src, tmp)
        how = "link"
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(src, tmp)  # another filesystem (or links not allowed there)
        _fsync_file(tmp)
        how = "copy"
    _stage(con, root, table, run_id, part, name, tmp, n_rows, f"{how}:{src}")
    return how


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The columns a Parquet file of ``table`` holds (the table's, minus run_id)."""
    return [c for c, _ in _columns(con, template(table)) if c != "run_id"]


def _new_file(root: Path, table: str, run_id: int) -> tuple[Path, str, Path]:
    if not 0 < int(run_id) < SCHEMA_RUN_ID:
        raise WarehouseError(
            f"run id {run_id}: the Parquet layout needs 0 < run_id < {SCHEMA_RUN_ID}"
        )
    part = root / table / f"run_id={int(run_id)}"
    try:
        part.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WarehouseError(f"{part}: cannot create the partition folder ({e.strerror})") from None
    name = f"part-{uuid.uuid4().hex}.parquet"
    return part, name, part / f".{name}.tmp"


def _stage(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    table: str,
    run_id: int,
    part: Path,
    name: str,
    tmp: Path,
    n_rows: int,
    source: str,
) -> None:
    rel = f"{part.name}/{name}"
    values: dict[str, object] = {
        "table_name": table,
        "run_id": int(run_id),
        "file": rel,
        "n_rows": int(n_rows),
        "source": source,
        "added_at": datetime.now(UTC).replace(tzinfo=None),
    }
    # Size and checksum as written: every open checks the size, `psystats check
    # --checksums` the checksum (warehouse/integrity.py).  A warehouse written by an
    # older psystats (before that migration) records neither.
    if "size_bytes" in {c for c, _ in _columns(con, FILES)}:
        values.update(size_bytes=tmp.stat().st_size, sha256=file_sha256(tmp))
    con.execute(
        f"INSERT INTO {FILES} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        list(values.values()),
    )
    note = root / f".pending-{uuid.uuid4().hex}.json"
    _write_note(note, {"table": table, "file": rel, "pid": os.getpid(), "host": _host()})

    def finish(committed: bool) -> None:
        if committed:
            os.replace(tmp, part / name)
            _fsync_dir(part)
        else:
            tmp.unlink(missing_ok=True)
        note.unlink(missing_ok=True)

    if not on_transaction_end(con, finish):
        finish(True)  # no transaction open: the INSERT above has committed already


def _host() -> str:
    return socket.gethostname()


def _write_note(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    _fsync_file(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- deleting


def delete_runs(con: duckdb.DuckDBPyConnection, run_ids: Sequence[int]) -> None:
    """Delete every score row of these runs (inside the caller's transaction); under
    the Parquet layout their partition folders are removed when it commits."""
    ids = [int(r) for r in run_ids]
    if not ids:
        return
    parquet = is_parquet(con)
    for table in _duckdb_tables(con, parquet):
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::INTEGER[]))", [ids])
    if not parquet:
        return
    root = scores_root(con)
    con.execute(f"DELETE FROM {FILES} WHERE run_id IN (SELECT unnest(?::INTEGER[]))", [ids])
    con.execute(f"DELETE FROM {TOMBSTONES} WHERE run_id IN (SELECT unnest(?::INTEGER[]))", [ids])

    def finish(committed: bool) -> None:
        if committed:
            for table in TABLES:
                for rid in ids:
                    _remove_partition(root / table / f"run_id={rid}")

    if not on_transaction_end(con, finish):
        finish(True)


def _duckdb_tables(con: duckdb.DuckDBPyConnection, parquet: bool) -> list[str]:
    """The per-run score tables held in the DuckDB file (those that exist)."""
    present = {
        str(t)
        for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main'"
        ).fetchall()
    }
    wanted = (() if parquet else TABLES) + OTHER_TABLES
    return [t for t in wanted if t in present]


def _remove_partition(part: Path) -> None:
    if not part.exists():
        return
    # Out of the views' sight at once (one rename), then deleted at leisure.
    trash = part.with_name(f".trash-{part.name}-{uuid.uuid4().hex}")
    os.replace(part, trash)
    shutil.rmtree(trash, ignore_errors=True)


def delete_responses(con: duckdb.DuckDBPyConnection, response_query: str, params: list) -> None:
    """Delete the score rows (every run, every score table) of the responses that
    ``response_query`` selects; inside the caller's transaction."""
    parquet = is_parquet(con)
    for table in _duckdb_tables(con, parquet):
        con.execute(f"DELETE FROM {table} WHERE response_id IN ({response_query})", list(params))
    if not parquet:
        return
    had = bool(scalar(con, f"SELECT count(*) > 0 FROM {TOMBSTONES}"))
    con.execute(
        f"INSERT INTO {TOMBSTONES} (run_id, response_id) SELECT DISTINCT run_id, response_id "
        f"FROM scores WHERE response_id IN ({response_query})",
        list(params),
    )
    if not had and scalar(con, f"SELECT count(*) > 0 FROM {TOMBSTONES}"):
        _create_views(con, scores_root(con), settings(con))


# --------------------------------------------------------------------------- recovery


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(con: duckdb.DuckDBPyConnection) -> int:
    """Finish what a crash interrupted; returns the number of notes handled.

    A pending note whose file ``score_files`` records was committed: finish its
    rename.  One without a record never committed: delete its temporary file.
    Folders of deleted runs left behind are removed.  Notes of a live process on
    this host are left alone (it is between its commit and its rename).
    """
    s = settings(con)
    if s.get(LAYOUT_KEY) != "parquet":
        return 0
    root = scores_root(con, s)
    handled = 0
    for note in sorted(root.glob(".pending-*.json")):
        try:
            info = json.loads(note.read_text())
            table, rel = str(info["table"]), str(info["file"])
        except (OSError, ValueError, KeyError, TypeError):
            note.unlink(missing_ok=True)
            continue
        if info.get("host") == _host() and (
            int(info.get("pid", -1)) == os.getpid() or _alive(int(info.get("pid", -1)))
        ):
            continue
        final = root / table / rel
        tmp = final.with_name(f".{final.name}.tmp")
        committed = scalar(
            con, f"SELECT count(*) FROM {FILES} WHERE table_name = ? AND file = ?", [table, rel]
        )
        if committed and tmp.exists():
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        elif not committed:
            tmp.unlink(missing_ok=True)
        note.unlink(missing_ok=True)
        handled += 1
    for table in TABLES:
        for trash in (root / table).glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
    return handled


def on_open(con: duckdb.DuckDBPyConnection) -> None:
    """After a writable open: re-point the views if the warehouse moved, finish
    interrupted renames.  Costs one query on a DuckDB-layout warehouse."""
    s = settings(con)
    if s.get(LAYOUT_KEY) != "parquet":
        return
    try:
        refresh(con)
    except WarehouseError:
        # The folder is not where the settings say (moved on its own): leave the views
        # alone so that `init --scores-dir NEW` can open the file and re-point them.
        return
    recover(con)
