"""Pieces every command shares: the --db option, opening the warehouse, errors, output."""

from __future__ import annotations

import csv
import errno
import functools
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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


def output_option(help: str, *, dest: str = "output", default: str | None = None):
    """``-o/--output FILE``: the one output-file option of the commands that write a file
    (the file itself is checked and written by ``warehouse.outputs``)."""
    extra = {"default": default, "show_default": True} if default else {"required": True}
    return click.option("-o", "--output", dest, type=click.Path(dir_okay=False), help=help, **extra)


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
    path = db_path(db)
    # A new file for one unit of work (models add/load, init) is removed again if the
    # command fails before storing anything; ingest (mode "statement") keeps its new,
    # empty warehouse, which shows that the file was read and refused.
    new = create and mode == "write" and not os.path.lexists(path)
    try:
        con = warehouse_db.open(
            path, mode, create=create, sandbox=sandbox, on_wait=_waiting, verify=verify
        )
    except WarehouseError as e:
        raise click.ClickException(one_line(str(e))) from None
    ctx = click.get_current_context()
    ctx.call_on_close(con.close)
    if new:  # made by this command: gone again if the command fails before it holds data
        ctx.meta[_NEW_WAREHOUSE] = (path, con)
    return con


_NEW_WAREHOUSE = "psystats.new_warehouse"
# Tables a new warehouse fills by itself (the schema, the shipped domain map).
_BOOKKEEPING = ("schema_version", "warehouse_settings", "domain_map")


def _drop_new_empty_warehouse() -> None:
    """After a failed command: remove the warehouse file it created (``--db`` with a typo,
    ``models add`` of a source that is not a model) if nothing was stored in it."""
    ctx = click.get_current_context(silent=True)
    made = ctx.meta.pop(_NEW_WAREHOUSE, None) if ctx is not None else None
    if made is None:
        return
    path, con = made
    try:
        con.close()
        check = duckdb.connect(path, read_only=True)
        try:
            tables = check.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
            ).fetchall()
            held = any(
                check.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchall()
                for (t,) in tables
                if t not in _BOOKKEEPING
            )
        finally:
            check.close()
    except (duckdb.Error, OSError):
        return  # cannot tell: keep it
    if not held:
        for p in (path, f"{path}.wal"):
            Path(p).unlink(missing_ok=True)
        shutil.rmtree(f"{path}.lock-notes", ignore_errors=True)


def friendly_errors(f: Callable) -> Callable:
    """Show a WarehouseError (and its subclasses) as 'Error: ...' with exit code 1.

    Environment failures met mid-command (disk full, permission denied, a
    file DuckDB cannot read) get the same one-line treatment; anything else
    is a bug and keeps its traceback.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return shown(*args, **kwargs)
        except BaseException:
            _drop_new_empty_warehouse()
            raise

    def shown(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except WarehouseError as e:
            raise click.ClickException(one_line(str(e))) from None
        except duckdb.Error as e:
            if is_damage_error(e):  # a damaged Parquet score file (warehouse/integrity.py)
                raise click.ClickException(one_line(str(damage_error(e)))) from None
            if not is_environment_error(e):
                raise
            raise click.ClickException(one_line(str(environment_error(e, _current_db())))) from None
        except OSError as e:
            if e.errno not in USER_OS_ERRORS:
                raise
            where = e.filename or _current_db()
            raise click.ClickException(one_line(str(environment_error(e, str(where))))) from None

    return wrapper


def one_line(message: str) -> str:
    """A message as the one line a user reads: its lines joined, and a line break inside a
    name the user gave (a path with a carriage return) no longer starts a new line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


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
