"""A connection that holds the warehouse file only while a statement runs.

DuckDB lets one process write a file and no other process read it meanwhile;
a reader (``read_only``) in turn keeps writers out.  A command that works
for minutes -- a fit sampling its posterior, an import checking 26 M rows,
an ingest parsing 18 studies -- must therefore not keep the file open
between its statements.

:class:`BriefConnection` looks like a ``duckdb`` connection to the code that
uses it (``execute``, ``executemany``, ``register``, ``unregister``,
``cursor``, the ``transaction()`` helper), but the warehouse is ATTACHed to a
private in-memory database only for the duration of each statement:
read-only for a read (results are fetched before the file is let go),
read-write from ``BEGIN`` to ``COMMIT``/``ROLLBACK``.  Temporary tables and
registered Arrow data live in the in-memory database, so they survive
between statements, and spill to the temp folder beyond the memory limit.
Between statements other processes can read and write the file; when one
holds it, the attach waits like any open (``lock_timeout`` of the settings).

Make one with ``psystats.warehouse.db.open(path, "statement")``, which
creates and migrates the file first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import duckdb

from . import locks
from .errors import environment_error
from .settings import Settings

ALIAS = "psystats_wh"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Fetched:
    """A statement's whole result, read before the file was let go (cursor-like)."""

    def __init__(self, rows: list[tuple], description: list | None) -> None:
        self._rows, self.description = rows, description

    def fetchall(self) -> list[tuple]:
        rows, self._rows = self._rows, []
        return rows

    def fetchone(self) -> tuple | None:
        return self._rows.pop(0) if self._rows else None

    def df(self):
        import pandas as pd

        cols = [d[0] for d in self.description or []]
        return pd.DataFrame(self.fetchall(), columns=cols)

    fetchdf = df


class BriefConnection:
    """See the module docstring.  ``path`` must be a current warehouse: make one with
    ``psystats.warehouse.db.open(path, "statement")``, which creates and migrates it first."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        settings: Settings,
        on_wait: Callable[[str], None] | None = _say,
    ) -> None:
        self.path = str(path)
        self.settings = settings
        self.on_wait = on_wait
        self.local = duckdb.connect()
        # Spills of the in-memory database go next to the warehouse, like DuckDB's own.
        self.local.execute("SET memory_limit = ?", [settings.memory_limit])
        self.local.execute("SET temp_directory = ?", [settings.temp_folder(self.path)])
        self.local.execute("SET enable_progress_bar = false")
        self._mode: str | None = None  # None, "ro" or "rw"
        self._in_transaction = False

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Another brief connection to the same file (its own temporary tables)."""
        return BriefConnection(
            self.path, settings=self.settings, on_wait=self.on_wait
        ).as_connection()

    def as_connection(self) -> duckdb.DuckDBPyConnection:
        """This object, typed as the DuckDB connection it stands in for.

        psystats code takes ``duckdb.DuckDBPyConnection`` and uses only what
        this class implements (execute, executemany, register, unregister,
        cursor-like results); the cast tells the type checker so, in one place.
        """
        return cast(duckdb.DuckDBPyConnection, self)

    # ------------------------------------------------------------ the file
    def _attach(self, mode: str) -> None:
        if self._mode == mode:
            return
        self._detach()
        literal = self.path.replace("'", "''")
        sql = f"ATTACH '{literal}' AS {ALIAS}" + (" (READ_ONLY)" if mode == "ro" else "")
        try:
            locks.wait_while_locked(
                lambda: self.local.execute(sql), self.path, self.settings.lock_timeout, self.on_wait
            )
        except duckdb.Error as e:
            raise environment_error(
                e, self.path, read_only=mode == "ro", waited=self.settings.lock_timeout
            ) from None
        self.local.execute(f"USE {ALIAS}")
        self._mode = mode
        locks.write_note(self.path, self.settings.holder(), "statement")

    def _detach(self) -> None:
        if self._mode is None:
            return
        # Forgotten first: a DETACH whose checkpoint fails (disk full) has detached
        # the file all the same, and must not be tried again when the command closes.
        self._mode = None
        self.local.execute("USE memory")
        self.local.execute(f"DETACH {ALIAS}")

    @property
    def holds_file(self) -> bool:
        """Whether the warehouse file is attached right now (only during a statement or
        an open transaction)."""
        return self._mode is not None

    # ------------------------------------------------------------ statements
    def execute(self, query: str, parameters: Sequence[Any] | None = None):
        head = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
        if head in ("BEGIN", "START"):
            self._attach("rw")
            self.local.execute(query, parameters)
            self._in_transaction = True
            return self.local
        if self._in_transaction:
            try:
                result = self.local.execute(query, parameters)
            finally:
                if head in ("COMMIT", "ROLLBACK", "ABORT", "END"):
                    self._in_transaction = False
                    self._detach()
                    # Back-to-back writes (ingest batches) would starve a waiting reader.
                    locks.yield_to_waiters(self.path)
            return result
        self._attach("ro")
        try:
            cur = self.local.execute(query, parameters)
            description = cur.description
            rows = cur.fetchall() if description is not None else []
        finally:
            self._detach()
        return Fetched(rows, description)

    def executemany(self, query: str, parameters: Sequence[Sequence[Any]]):
        if not self._in_transaction:
            with_tx = True
            self.execute("BEGIN TRANSACTION")
        else:
            with_tx = False
        try:
            self.local.executemany(query, parameters)
        except BaseException:
            if with_tx:
                self.execute("ROLLBACK")
            raise
        if with_tx:
            self.execute("COMMIT")
        return self.local

    def register(self, name: str, data: Any):
        return self.local.register(name, data)

    def unregister(self, name: str):
        return self.local.unregister(name)

    def close(self) -> None:
        """Roll back what is open and let the file go; never raises a second error
        while an earlier one (disk full, say) is being reported."""
        try:
            if self._in_transaction:
                self._in_transaction = False
                self.local.execute("ROLLBACK")
            self._detach()
        except duckdb.Error:
            pass  # the in-memory database goes below; the file is let go with it
        finally:
            self.local.close()

    def __enter__(self) -> BriefConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def local_connection(con: Any) -> duckdb.DuckDBPyConnection:
    """Where temporary work of ``con`` runs without touching the warehouse file."""
    return con.local if isinstance(con, BriefConnection) else con
