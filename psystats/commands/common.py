"""Pieces every command shares: the --db option, opening the warehouse, errors, output."""

from __future__ import annotations

import csv
import errno
import functools
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
import duckdb

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.db import ENV_VAR, Mode, default_path
from psystats.warehouse.errors import (
    NO_SPACE,
    WarehouseError,
    environment_error,
    is_environment_error,
)
from psystats.warehouse.integrity import damage_error, is_damage_error

# OS errors a user fixes (space, permissions, a missing path): one line, not a traceback.
USER_OS_ERRORS = NO_SPACE + (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
)


def db_option(f: Callable) -> Callable:
    """``--db PATH`` on a subcommand; falls back to the group's ``--db``/$PSYSTATS_DB."""
    return click.option(
        "--db",
        "db",
        # Not checked by click: the warehouse layer says what is wrong and what to do.
        type=click.Path(dir_okay=False, readable=False),
        default=None,
        help=f"Warehouse file [env {ENV_VAR}; default psystats.duckdb].",
    )(f)


def db_path(db: str | None) -> str:
    ctx = click.get_current_context()
    root = ctx.find_root()
    return db or (root.obj or {}).get("db") or default_path()


def _waiting(line: str) -> None:
    click.echo(line, err=True)


def open_db(
    db: str | None,
    mode: Mode,
    *,
    create: bool = False,
    sandbox: bool = False,
    verify: bool = True,
) -> duckdb.DuckDBPyConnection:
    """The command's warehouse through :func:`psystats.warehouse.db.open` (its docstring
    says which ``mode`` to use), closed when the command ends, even on error, so the file
    is released (this matters when commands run in-process).

    The options of ``psystats`` itself (--memory-limit, --temp-dir,
    --lock-timeout) are the current settings (``psystats.cli.main``); a file
    held by another process is waited for with one line on stderr.
    """
    try:
        con = warehouse_db.open(
            db_path(db), mode, create=create, sandbox=sandbox, on_wait=_waiting, verify=verify
        )
    except WarehouseError as e:
        raise click.ClickException(str(e)) from None
    click.get_current_context().call_on_close(con.close)
    return con


def friendly_errors(f: Callable) -> Callable:
    """Show a WarehouseError (and its subclasses) as 'Error: ...' with exit code 1.

    Environment failures met mid-command (disk full, permission denied, a
    file DuckDB cannot read) get the same one-line treatment; anything else
    is a bug and keeps its traceback.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except WarehouseError as e:
            raise click.ClickException(str(e)) from None
        except duckdb.Error as e:
            if is_damage_error(e):  # a damaged Parquet score file (warehouse/integrity.py)
                raise click.ClickException(str(damage_error(e))) from None
            if not is_environment_error(e):
                raise
            raise click.ClickException(str(environment_error(e, _current_db()))) from None
        except OSError as e:
            if e.errno not in USER_OS_ERRORS:
                raise
            where = e.filename or _current_db()
            raise click.ClickException(str(environment_error(e, str(where)))) from None

    return wrapper


def _current_db() -> str:
    try:
        return db_path(click.get_current_context().params.get("db"))
    except RuntimeError:
        return default_path()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", out=None
) -> None:
    """Print a result set as an aligned table, CSV or JSON (one object per row)."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=1) + "\n")
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_cell(v) for v in r] for r in rows])
        out.write(buf.getvalue())
        return
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows
        for i in range(len(columns))
    ]

    def fmt_row(r):
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))
        ).rstrip()

    out.write(fmt_row(list(columns)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write(fmt_row(r) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
