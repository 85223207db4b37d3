"""Short-lived warehouse connections for long-running work.

DuckDB lets one process write a file, and no other process can read it while
that process holds it open.  Work that runs for hours (scoring a model) or
minutes (sampling a posterior) therefore must not keep the file open: it
opens it for each short piece of work (read the inputs, commit one batch,
close the run) and closes it again, so `psystats summary`, `psystats sql`
and any DuckDB client can read in between.

:func:`session` gives such a connection.  Callers that already hold a
connection (tests, notebooks, one-shot commands) pass it instead of a path
and it is used as is, left open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

# A path to the warehouse file, or an open connection to use as it is.
Target = str | os.PathLike | duckdb.DuckDBPyConnection


@contextmanager
def session(db: Target, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for one short piece of work.

    ``db`` is a path (opened now, closed when the block ends, which releases
    the file for other processes) or a connection (yielded unchanged and left
    open; ``read_only`` then has no effect).
    """
    if isinstance(db, duckdb.DuckDBPyConnection):
        yield db
        return
    from .db import connect

    # create=False: a typo in --db is an error, not a fresh empty warehouse.
    con = connect(Path(db), read_only=read_only, create=False)
    try:
        yield con
    finally:
        con.close()
