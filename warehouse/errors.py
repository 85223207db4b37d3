"""Problems a user can fix, and DuckDB or OS failures on the warehouse file as one line.

Every failure to open or use the file (permission, missing folder, corrupt
or truncated file, disk full, out of memory, another process's lock)
becomes a :class:`WarehouseError` whose message says what and where; the
CLI shows it as ``Error: ...`` (exit 1) and the notebook API raises it.
"""

from __future__ import annotations

import errno

import duckdb

from . import locks
from .settings import LOCK_TIMEOUT_ENV, MEMORY_ENV

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WarehouseError(Exception):
    """A problem the user can fix; the message says what and where."""


class WarehouseLocked(WarehouseError):
    """Another process holds the warehouse file; ``holder`` says which (from its lock note)."""

    def __init__(self, path: str, holder: str, waited: float) -> None:
        self.path, self.holder, self.waited = path, holder, waited
        waited_s = f" (waited {waited:g} s)" if waited else ""
        super().__init__(
            f"{path} is in use by {holder}{waited_s}: wait for that command to finish "
            f"and run this one again, or wait longer with --lock-timeout SECONDS "
            f"(or {LOCK_TIMEOUT_ENV}=<seconds>)"
        )


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


def environment_error(
    e: BaseException, path: str, *, read_only: bool = False, waited: float = 0.0
) -> WarehouseError:
    """A one-line WarehouseError for a DuckDB or OS failure on the warehouse file ``path``."""
    msg = str(e).strip()
    first = msg.splitlines()[0] if msg else type(e).__name__
    low = msg.lower()
    err = getattr(e, "errno", None)
    holder = locks.holder(path, msg)
    if holder is not None:
        return WarehouseLocked(path, holder, waited)
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
