"""Running statements on a warehouse connection: one value, one transaction, filters.

These work on any connection :func:`psystats.warehouse.db.open` returns
(and on a plain DuckDB connection).  DuckDB 2 refuses new work on a
connection whose last result was not read to the end: never
``execute(...).fetchone()``, use :func:`scalar` or ``fetchall()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb


def scalar(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None):
    """The single value a query returns.

    Uses ``fetchall`` rather than ``fetchone``: DuckDB 2 refuses new work on a
    connection whose previous result was not read to the end.
    """
    rows = con.execute(query, params).fetchall()
    return rows[0][0] if rows else None


# Work to finish when the transaction open on a connection ends (by id(con)):
# a Parquet score file is renamed into sight on commit, deleted on rollback.
_TX_HOOKS: dict[int, list[Callable[[bool], None]]] = {}


def on_transaction_end(con: duckdb.DuckDBPyConnection, hook: Callable[[bool], None]) -> bool:
    """Call ``hook(committed)`` when the :func:`transaction` open on ``con`` ends.

    Returns False (and registers nothing) when no such transaction is open.
    """
    hooks = _TX_HOOKS.get(id(con))
    if hooks is None:
        return False
    hooks.append(hook)
    return True


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with transaction(con):`` commits on success and rolls back on any exception."""
    con.execute("BEGIN TRANSACTION")
    hooks: list[Callable[[bool], None]] = []
    _TX_HOOKS[id(con)] = hooks
    try:
        yield con
    except BaseException:
        _TX_HOOKS.pop(id(con), None)
        con.execute("ROLLBACK")
        _end_hooks(hooks, committed=False)
        raise
    _TX_HOOKS.pop(id(con), None)
    try:
        con.execute("COMMIT")
    except BaseException:
        _end_hooks(hooks, committed=False)
        raise
    _end_hooks(hooks, committed=True)


def _end_hooks(hooks: list[Callable[[bool], None]], *, committed: bool) -> None:
    """Run every hook; after a commit re-raise the first failure, after a rollback keep
    the error that caused it (what a hook leaves undone, the next writable open does:
    warehouse.parquet_layout.recover)."""
    first: BaseException | None = None
    for hook in hooks:
        try:
            hook(committed)
        except Exception as e:
            first = first or e
    if first is not None and committed:
        raise first


def next_id(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """1 + the largest id in ``table.column`` (0-based tables start at 1).

    Only for the ingest's bulk id assignment, which runs inside a transaction
    on a connection that holds the file's write lock.  ``table``/``column`` are
    identifiers from this package, never user input.
    """
    v = scalar(con, f"SELECT max({column}) FROM {table}")
    return int(v or 0) + 1


def where_clause(filters: dict[str, Sequence[Any] | None], alias: str = "") -> tuple[str, list]:
    """``WHERE col IN (?, ...) AND ...`` for the non-empty filters, with its parameters.

    Column names come from the caller (code, not user input); values are bound.
    """
    parts, params = [], []
    prefix = f"{alias}." if alias else ""
    for col, values in filters.items():
        if values:
            values = list(values)
            parts.append(f"{prefix}{col} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    return ("WHERE " + " AND ".join(parts)) if parts else "", params
