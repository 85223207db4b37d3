"""Opening a warehouse file and migrating its schema forward."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from .schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_DB = "psystats.duckdb"
ENV_VAR = "PSYSTATS_DB"
LOCK_TIMEOUT_VAR = "PSYSTATS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 30.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

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


class WarehouseError(Exception):
    """A problem the user can fix; the message says what and where."""


class WarehouseLocked(WarehouseError):
    """Another process holds the warehouse file; ``holder`` says which."""

    def __init__(self, path: str, holder: str, waited: float) -> None:
        self.path, self.holder, self.waited = path, holder, waited
        waited_s = f" (waited {waited:g} s)" if waited else ""
        super().__init__(
            f"{path} is in use by {holder}{waited_s}: wait for that command to finish "
            f"and run this one again, or set {LOCK_TIMEOUT_VAR}=<seconds> to wait longer"
        )


def _say(line: str) -> None:
    """The default waiting message: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


MEMORY_ENV = "PSYSTATS_MEMORY_LIMIT"
TEMP_DIR_ENV = "PSYSTATS_TEMP_DIR"
# DuckDB's own default is 80% of RAM, which lets one big join take a shared
# workstation's memory; 1 GB keeps a command's peak RSS under ~2 GiB and
# spills the rest of a large join or sort to the temp folder.
DEFAULT_MEMORY_LIMIT = "1GB"


def memory_settings(path: str | os.PathLike | None) -> dict[str, str]:
    """DuckDB ``memory_limit`` and ``temp_directory`` for a connection to ``path``.

    From $PSYSTATS_MEMORY_LIMIT (default 1GB) and $PSYSTATS_TEMP_DIR (default
    ``<warehouse>.tmp`` next to the file, DuckDB's own choice; ``.tmp`` in the
    current folder for an in-memory database).
    """
    temp = os.environ.get(TEMP_DIR_ENV) or (
        f"{path}.tmp" if path and str(path) != ":memory:" else ".tmp"
    )
    return {
        "memory_limit": os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_LIMIT,
        "temp_directory": str(temp),
    }


def apply_memory_settings(con: duckdb.DuckDBPyConnection, path: str | os.PathLike | None) -> None:
    """Set :func:`memory_settings` on ``con`` (instance-wide); a bad value is a WarehouseError."""
    for name, value in memory_settings(path).items():
        if name == "temp_directory" and scalar(con, "SELECT current_setting(?)", [name]) == value:
            continue  # an instance shared in-process: changing a used temp folder is refused
        try:
            con.execute(f"SET {name} = ?", [value])
        except (duckdb.InvalidInputException, duckdb.ParserException) as e:
            env = MEMORY_ENV if name == "memory_limit" else TEMP_DIR_ENV
            raise WarehouseError(
                f"{name} {value!r} (--{'memory-limit' if env == MEMORY_ENV else 'temp-dir'} "
                f"or ${env}): {str(e).splitlines()[0]}"
            ) from None
    # DuckDB draws a progress bar on stdout for queries over 2 s, even into a pipe,
    # which would corrupt `psystats sql --format csv` output at scale.
    con.execute("SET enable_progress_bar = false")


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
    # Under the Parquet scores layout the score tables are views; migrations
    # ALTER the empty tables that keep their columns (warehouse/parquet_layout.py).
    from . import parquet_layout

    layout_cols = None
    if 0 < current < SCHEMA_VERSION and parquet_layout.before_migrations(con):
        layout_cols = parquet_layout.columns_now(con)
    for version in range(current + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    if layout_cols is not None:
        parquet_layout.after_migrations(con, layout_cols)
    return SCHEMA_VERSION


def connect(
    path: str | os.PathLike | None = None,
    *,
    read_only: bool = False,
    create: bool = True,
    config: dict | None = None,
    lock_timeout: float | None = None,
    on_wait: Callable[[str], None] | None = _say,
) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create and migrate) the warehouse at ``path``.

    ``create=False`` refuses to make a new file, so a typo in ``--db`` is an
    error rather than a fresh empty warehouse.  ``read_only=True`` never
    changes the file: a warehouse of an older schema is refused with the
    command that upgrades it.  When another process holds the file, the open
    is retried for ``lock_timeout`` seconds (default ``$PSYSTATS_LOCK_TIMEOUT``
    or 30 s), telling ``on_wait`` once; then a :class:`WarehouseLocked` names
    the holder's PID.  Every other failure to open (permission, missing
    folder, corrupt or truncated file, disk full) is a one-line
    :class:`WarehouseError`.
    """
    path = str(path or default_path())
    if path != ":memory:":
        if Path(path).is_dir():
            raise WarehouseError(f"{path} is a folder, not a warehouse file: give a file path")
        parent = Path(path).parent
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            # DuckDB would block forever on a pipe, and misreport a device.
            raise WarehouseError(
                f"{path} is not a regular file (a device, pipe or socket): give a warehouse file"
            )
        if not Path(path).exists():
            if not create or read_only:
                raise WarehouseError(
                    f"no warehouse at {path}: create it with `psystats init --db {path}`, "
                    f"or ingest studies into it with `psystats ingest --db {path} FOLDER`"
                )
            if not parent.is_dir():
                raise WarehouseError(
                    f"{path}: folder {parent} does not exist; create it first (mkdir -p {parent})"
                )
    locked = bool(config and config.get("lock_configuration"))
    no_external = False
    if locked:  # no SET after a locked configuration: pass the memory settings with it
        # DuckDB applies settings in order, and refuses temp_directory when it
        # comes before enable_external_access=false: the sandbox goes first.
        # The progress bar is a per-connection setting: set below, then lock.
        # External access goes off after the open, once the Parquet scores
        # folder (if any) is allowed: DuckDB refuses allowed_directories later.
        no_external = (config or {}).get("enable_external_access") is False
        config = {
            **{
                k: v
                for k, v in (config or {}).items()
                if k != "lock_configuration" and not (no_external and k == "enable_external_access")
            },
            **memory_settings(path),
        }
    con = open_file(
        path, read_only=read_only, config=config, lock_timeout=lock_timeout, on_wait=on_wait
    )
    try:
        if not locked:
            apply_memory_settings(con, path)
        else:
            if no_external:
                from .parquet_layout import allowed_directories

                folders = allowed_directories(con)
                if folders:
                    con.execute("SET allowed_directories = ?", [folders])
                con.execute("SET enable_external_access = false")
            con.execute("SET enable_progress_bar = false")
            con.execute("SET lock_configuration = true")
        if not read_only:
            migrate(con)
            from .parquet_layout import on_open

            on_open(con)
        else:
            check_schema(con, path)
    except duckdb.Error as e:
        con.close()
        raise environment_error(e, path, read_only=read_only) from None
    except BaseException:
        con.close()
        raise
    return con


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


def open_file(
    path: str,
    *,
    read_only: bool = False,
    config: dict | None = None,
    lock_timeout: float | None = None,
    on_wait: Callable[[str], None] | None = _say,
) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect`` that waits a bounded time for another process's lock.

    Every failure becomes a one-line WarehouseError (see :func:`environment_error`).
    """
    timeout = lock_wait_seconds() if lock_timeout is None else max(0.0, float(lock_timeout))
    deadline = time.monotonic() + timeout
    delay, told = 0.05, False
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=dict(config or {}))
        except duckdb.Error as e:
            holder = lock_holder(str(e))
            if holder is None:
                raise environment_error(e, path, read_only=read_only) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarehouseLocked(path, holder, timeout) from None
            if not told and on_wait is not None:
                on_wait(
                    f"{path} is in use by {holder}; waiting up to {timeout:g} s for it "
                    f"(set {LOCK_TIMEOUT_VAR} to change)"
                )
                told = True
            # Short first tries catch a writer's brief commit; back off to 1 s after.
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)


def lock_wait_seconds() -> float:
    """How long to wait for another process's lock: ``$PSYSTATS_LOCK_TIMEOUT`` or 30 s."""
    raw = os.environ.get(LOCK_TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise WarehouseError(
            f"{LOCK_TIMEOUT_VAR}={raw!r}: expected a number of seconds (0 = do not wait)"
        )
    return value


def lock_holder(message: str) -> str | None:
    """'PID 123 (/usr/bin/python3)' from DuckDB's lock error, None for any other error."""
    if "Could not set lock" not in message:
        return None
    m = re.search(r"held in (.*?) \(PID (\d+)\)", message)
    if not m:
        return "another process"
    return f"PID {m.group(2)} ({m.group(1)})"


_ENVIRONMENT_WORDS = (
    "no space left",
    "file too large",
    "quota",
    "permission denied",
    "read-only file system",
    "could not write file",
    "could not read enough bytes",
    "could not set lock",
    "not a valid duckdb database",
)


def is_environment_error(e: BaseException) -> bool:
    """True for a DuckDB error caused by the file or disk, not by the query or the code."""
    if isinstance(e, (duckdb.IOException, duckdb.PermissionException)):
        return True
    if isinstance(e, duckdb.OutOfMemoryException):  # the memory limit, or a loaded machine
        return True
    low = str(e).lower()
    return isinstance(e, duckdb.Error) and any(w in low for w in _ENVIRONMENT_WORDS)


def environment_error(e: BaseException, path: str, *, read_only: bool = False) -> WarehouseError:
    """A one-line WarehouseError for a DuckDB or OS failure on the warehouse file ``path``."""
    msg = str(e).strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    low = msg.lower()
    err = getattr(e, "errno", None)
    if lock_holder(msg) is not None:
        return WarehouseLocked(path, lock_holder(msg) or "another process", 0.0)
    if err in NO_SPACE or any(s in low for s in ("no space left", "file too large", "quota")):
        return WarehouseError(
            f"no space left writing {path} ({first}): free disk space or move the "
            "warehouse, then run the command again (the unfinished transaction was "
            "rolled back)"
        )
    if (
        err in (errno.EACCES, errno.EPERM, errno.EROFS)
        or "permission denied" in low
        or ("read-only file system" in low)
    ):
        need = "read" if read_only else "read and write"
        hint = (
            ""
            if read_only
            else "; read-only commands (summary, sql, report, export) need only read access"
        )
        return WarehouseError(f"{path}: permission denied ({need} access needed){hint}")
    if "no such file or directory" in low or "does not exist" in low:
        return WarehouseError(f"{path}: no such file or folder ({first})")
    if (
        "not a valid duckdb database" in low
        or "could not read enough bytes" in low
        or "corrupt" in low
        or "checksum" in low
        or "serialization" in low
        or isinstance(e, duckdb.SerializationException)
    ):
        return WarehouseError(
            f"{path} is not a readable DuckDB warehouse (corrupt or truncated?): {first}. "
            "Restore it from a copy, or give another --db"
        )
    if "different configuration" in low:
        return WarehouseError(
            f"{path} is already open in this process with other settings; close that "
            "connection first"
        )
    if isinstance(e, duckdb.OutOfMemoryException):
        return WarehouseError(
            f"{path}: DuckDB ran out of memory ({first}): raise --memory-limit (or "
            f"${MEMORY_ENV}), give --temp-dir a folder with free space to spill to, or "
            "run the command again when the machine is less loaded"
        )
    return WarehouseError(f"{path}: {first}")


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
