"""Opening the warehouse: the one way (:func:`open`), and migrating its schema forward."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import duckdb

from . import integrity, locks, parquet_layout
from . import settings as settings_mod
from .brief import BriefConnection
from .errors import WarehouseError, environment_error
from .schema import MIGRATIONS, SCHEMA_VERSION
from .settings import Settings, SettingsError
from .sql import scalar, transaction

DEFAULT_DB = "psystats.duckdb"
ENV_VAR = "PSYSTATS_DB"

# `psystats sql` without --allow-external: no file, network or extension access
# from a query (ATTACH, COPY TO, read_csv, INSTALL/LOAD), and no SET that
# would turn it back on.  DuckDB enforces it; no SQL is parsed here.
SANDBOX: dict[str, object] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}

Mode = Literal["read", "write", "statement"]
MODES: tuple[str, ...] = ("read", "write", "statement")
# A path to the warehouse file, or an open connection to use as it is.
Target = str | os.PathLike | duckdb.DuckDBPyConnection


def _say(line: str) -> None:
    """The default waiting message: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


def default_path() -> str:
    """The warehouse path used when none is given: ``$PSYSTATS_DB`` or ``psystats.duckdb``."""
    return os.environ.get(ENV_VAR) or DEFAULT_DB


def open(  # noqa: A001 - the warehouse's open, called as db.open / warehouse_db.open
    target: Target | None = None,
    mode: Mode = "read",
    *,
    create: bool = False,
    sandbox: bool = False,
    settings: Settings | None = None,
    on_wait: Callable[[str], None] | None = _say,
    verify: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse at ``target``: the one way every command, the notebook API,
    scoring, fits, reports, benchmarks and tests hold the file.

    DuckDB lets one process write a file while no other process reads it, and
    a reader keeps writers out; so the mode says how long the file is held:

    ``"read"``
        Read-only, held until ``close()``: other readers may share it, writers
        wait.  Never changes the file (an older schema is refused with the
        command that upgrades it).  For a command that reads and ends
        (``summary``, ``sql``, ``report``, ``scores export``).
    ``"write"``
        Read-write for one unit of work, held until ``close()``: creates the
        file if ``create``, migrates it, finishes interrupted Parquet renames.
        Keep the unit short (a batch, a run's bookkeeping) and close it, so
        readers get the file in between; ``with open(db, "write") as con:``.
    ``"statement"``
        Read-write, but the file is held only while a statement runs (a read)
        or from ``BEGIN`` to ``COMMIT`` (a write); temporary tables live in a
        private in-memory database in between.  For long commands that must
        not keep the file: ingest, ``scores import``, fits
        (:class:`~psystats.warehouse.brief.BriefConnection`).

    ``target`` is a path (default ``$PSYSTATS_DB`` or ``psystats.duckdb``) or
    a connection already open, which is then used as it is: the result is a
    new cursor on it (closing it leaves the original open; ``mode`` and
    ``create`` have no effect).  ``create=False`` refuses to make a new file,
    so a typo in ``--db`` is an error rather than a fresh empty warehouse.
    ``sandbox`` (``psystats sql``) lets queries reach this warehouse only.

    Process-wide options (memory limit, spill folder, how long to wait for a
    file another process holds) come from ``settings`` or
    :func:`psystats.warehouse.settings.current`.  While another process
    holds the file the open is retried for ``lock_timeout`` seconds, telling
    ``on_wait`` once; then :class:`~psystats.warehouse.errors.WarehouseLocked`
    names the holder's command from its lock note.  Every other failure
    (permission, missing folder, corrupt or truncated file, disk full, a bad
    setting) is a one-line :class:`WarehouseError`.

    Integrity (``verify``, default on): under the Parquet scores layout the
    partition files the warehouse recorded are checked cheaply (existence,
    size; no unrecorded files); if one is damaged, every query of the score
    tables on this connection fails with one line naming the run and
    ``psystats check --repair``, while other tables stay readable.
    """
    if isinstance(target, (duckdb.DuckDBPyConnection, BriefConnection)):
        return target.cursor()
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    try:
        s = settings if settings is not None else settings_mod.current()
    except SettingsError as e:
        raise WarehouseError(str(e)) from None
    path = str(target or default_path())
    _check_path(path, create=create and mode != "read")
    if mode == "statement":
        # Create/migrate once, briefly, with the ordinary checks and messages.
        first = _open_file(path, "write", sandbox=False, settings=s, on_wait=on_wait)
        try:
            damage = integrity.quick_scan(first) if verify else []
        finally:
            first.close()
        brief = BriefConnection(path, settings=s, on_wait=on_wait)
        try:
            integrity.guard(brief.as_connection(), damage)
        except BaseException:
            brief.close()
            raise
        return brief.as_connection()
    con = _open_file(path, mode, sandbox=sandbox, settings=s, on_wait=on_wait)
    if verify:
        try:
            integrity.guard(con, integrity.quick_scan(con))
        except BaseException:
            con.close()
            raise
    return con


def _check_path(path: str, *, create: bool) -> None:
    """Refuse, before DuckDB sees it, a path that is not (or cannot become) a warehouse file."""
    if path == ":memory:":
        return
    if Path(path).is_dir():
        raise WarehouseError(f"{path} is a folder, not a warehouse file: give a file path")
    try:
        st_mode: int | None = os.stat(path).st_mode
    except OSError:
        st_mode = None
    if st_mode is not None and not stat.S_ISREG(st_mode):
        # DuckDB would block forever on a pipe, and misreport a device.
        raise WarehouseError(
            f"{path} is not a regular file (a device, pipe or socket): give a warehouse file"
        )
    if Path(path).exists():
        return
    if not create:
        raise WarehouseError(
            f"no warehouse at {path}: create it with `psystats init --db {path}`, "
            f"or ingest studies into it with `psystats ingest --db {path} FOLDER`"
        )
    parent = Path(path).parent
    if not parent.is_dir():
        raise WarehouseError(
            f"{path}: folder {parent} does not exist; create it first (mkdir -p {parent})"
        )


def _open_file(
    path: str,
    mode: str,
    *,
    sandbox: bool,
    settings: Settings,
    on_wait: Callable[[str], None] | None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path`` (waiting for another process's lock), with the
    memory settings, the sandbox, and a current schema (migrated, or checked when read)."""
    read_only = mode == "read"
    config: dict = {}
    if sandbox:
        # No SET after a locked configuration: the memory settings go with the open.
        # DuckDB applies settings in order, and refuses temp_directory when it comes
        # after enable_external_access=false; external access goes off after the open,
        # once the Parquet scores folder (if any) is allowed (DuckDB refuses
        # allowed_directories later).  The progress bar is per connection: set below.
        config = {
            k: v
            for k, v in SANDBOX.items()
            if k not in ("lock_configuration", "enable_external_access")
        }
        config.update(memory_limit=settings.memory_limit, temp_directory=settings.temp_folder(path))

    def connect() -> duckdb.DuckDBPyConnection:
        return duckdb.connect(path, read_only=read_only, config=dict(config))

    try:
        con = locks.wait_while_locked(connect, path, settings.lock_timeout, on_wait)
    except duckdb.Error as e:
        raise environment_error(
            e, path, read_only=read_only, waited=settings.lock_timeout
        ) from None
    try:
        if sandbox:
            folders = parquet_layout.allowed_directories(con)
            if folders:
                con.execute("SET allowed_directories = ?", [folders])
            con.execute("SET enable_external_access = false")
            con.execute("SET enable_progress_bar = false")
            con.execute("SET lock_configuration = true")
        else:
            apply_memory_settings(con, path, settings)
        if read_only:
            check_schema(con, path)
        else:
            migrate(con)
            parquet_layout.on_open(con)
    except duckdb.Error as e:
        con.close()
        raise environment_error(e, path, read_only=read_only) from None
    except BaseException:
        con.close()
        raise
    locks.write_note(path, settings.holder(), mode)
    return con


def apply_memory_settings(
    con: duckdb.DuckDBPyConnection, path: str | os.PathLike | None, settings: Settings
) -> None:
    """Set the memory limit and spill folder of ``settings`` on ``con`` (instance-wide)."""
    wanted = {"memory_limit": settings.memory_limit, "temp_directory": settings.temp_folder(path)}
    for name, value in wanted.items():
        if name == "temp_directory" and scalar(con, "SELECT current_setting(?)", [name]) == value:
            continue  # an instance shared in-process: changing a used temp folder is refused
        try:
            con.execute(f"SET {name} = ?", [value])
        except (duckdb.InvalidInputException, duckdb.ParserException) as e:
            flag = "--memory-limit" if name == "memory_limit" else "--temp-dir"
            raise WarehouseError(f"{name} {value!r} ({flag}): {str(e).splitlines()[0]}") from None
    # DuckDB draws a progress bar on stdout for queries over 2 s, even into a pipe,
    # which would corrupt `psystats sql --format csv` output at scale.
    con.execute("SET enable_progress_bar = false")


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
    # Under the Parquet scores layout the score tables are views; migrations
    # ALTER the empty tables that keep their columns (warehouse/parquet_layout.py).
    layout_cols = None
    if 0 < current < SCHEMA_VERSION and parquet_layout.before_migrations(con):
        layout_cols = parquet_layout.columns_now(con)
    for version in range(current + 1, SCHEMA_VERSION + 1):
        with transaction(con):
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
    if layout_cols is not None:
        parquet_layout.after_migrations(con, layout_cols)
    return SCHEMA_VERSION


def check_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Refuse (without writing) a read-only warehouse whose schema is not this version's."""
    try:
        current = schema_version(con)
    except duckdb.Error as e:
        raise environment_error(e, path, read_only=True) from None
    if current == SCHEMA_VERSION:
        return
    if current == 0:
        raise WarehouseError(
            f"{path} is a DuckDB file but not a psystats warehouse (no schema_version "
            f"table): run `psystats init --db {path}` to make it one"
        )
    if current > SCHEMA_VERSION:
        raise WarehouseError(
            f"warehouse schema version {current} is newer than this psystats "
            f"understands ({SCHEMA_VERSION}); upgrade psystats"
        )
    raise WarehouseError(
        f"{path} has schema version {current}, this psystats uses {SCHEMA_VERSION}: "
        f"run `psystats init --db {path}` to upgrade it (read-only commands never "
        "change a file)"
    )
