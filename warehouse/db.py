"""Opening a warehouse file and migrating its schema forward."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from .schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_DB = "psystats.duckdb"
ENV_VAR = "PSYSTATS_DB"


class WarehouseError(Exception):
    """A problem the user can fix; the message says what and where."""


def default_path() -> str:
    """The warehouse path used when none is given: ``$PSYSTATS_DB`` or ``psystats.duckdb``."""
    return os.environ.get(ENV_VAR) or DEFAULT_DB


def scalar(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None):
    """The single value a query returns.

    Uses ``fetchall`` rather than ``fetchone``: DuckDB 2 refuses new work on a
    connection whose previous result was not read to the end.
    """
    rows = con.execute(query, params).fetchall()
    return rows[0][0] if rows else None


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = scalar(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    )
    if not exists:
        return 0
    v = scalar(con, "SELECT max(version) FROM schema_version")
    return int(v or 0)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the file's version, each in its own transaction."""
    current = schema_version(con)
    if current > SCHEMA_VERSION:
        raise WarehouseError(
            f"warehouse schema version {current} is newer than this psystats "
            f"understands ({SCHEMA_VERSION}); upgrade psystats"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def connect(
    path: str | os.PathLike | None = None, *, read_only: bool = False, create: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create and migrate) the warehouse at ``path``.

    ``create=False`` refuses to make a new file, so a typo in ``--db`` is an
    error rather than a fresh empty warehouse.
    """
    path = str(path or default_path())
    if path != ":memory:" and not Path(path).exists():
        if not create:
            raise WarehouseError(
                f"no warehouse at {path}: run `psystats init --db {path}` or "
                f"`psystats ingest` first"
            )
        if read_only:
            raise WarehouseError(f"no warehouse at {path}")
    con = duckdb.connect(path, read_only=read_only)
    if not read_only:
        migrate(con)
    elif schema_version(con) != SCHEMA_VERSION:
        con.close()
        con = duckdb.connect(path)
        migrate(con)
    return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with transaction(con):`` commits on success and rolls back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


def next_id(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """1 + the largest id in ``table.column`` (0-based tables start at 1).

    Only for the ingest's bulk id assignment, which runs inside a transaction
    on a connection that holds the file's write lock.  ``table``/``column`` are
    identifiers from this package, never user input.
    """
    v = scalar(con, f"SELECT max({column}) FROM {table}")
    return int(v or 0) + 1
