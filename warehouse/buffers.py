"""Letting DuckDB drop the table blocks it cached, between units of work.

DuckDB keeps every block of the warehouse file it has read in its buffer
pool until the pool reaches ``memory_limit``; only then does it evict.  A
command that reads the scores one pair (or one model, one run) at a time
would therefore still grow with the number of score rows, up to the limit,
although each unit of work is bounded.  :func:`release_buffers` evicts the
unpinned blocks after each unit, so a command's memory is that of its
largest unit, whatever the size of the warehouse.

DuckDB evicts when ``memory_limit`` is lowered (its one public trigger
besides running out of memory), so the limit is lowered for a moment and set
back.  A :class:`~psystats.warehouse.brief.BriefConnection` needs nothing:
it detaches the file after every statement, and the cache goes with it.
"""

from __future__ import annotations

from typing import Any

import duckdb

from . import settings
from .brief import BriefConnection

# Room left for what is not a cached table block (metadata, results being read).
HEADROOM = 32 * 2**20

# DuckDB shows the limit truncated to 0.1 MiB ("953.6 MiB" for 1 GB), and setting
# that text back gives a limit that shows as "953.5 MiB": restoring the shown text
# would lower the limit a little at every release.  Shown text -> the value that gives it.
_RESTORED: dict[str, str] = {}


def _restore(con: Any, shown: str) -> None:
    """Set the limit back to what showed as ``shown``: the configured value when it is
    that one (exact), else the shown text (then remembered, so it never creeps)."""
    try:
        configured = settings.current().memory_limit
    except settings.SettingsError:
        configured = shown
    for value in dict.fromkeys(v for v in (_RESTORED.get(shown), configured, shown) if v):
        try:
            con.execute("SET memory_limit = ?", [value])
            now = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        except duckdb.Error:
            continue
        if now == shown or value == shown:
            _RESTORED[now] = value
            return


def release_buffers(con: Any) -> bool:
    """Evict DuckDB's cached blocks of ``con``'s database; True when it did.

    Never fails: when the limit cannot be lowered (a temporary table or
    result still pinned in memory, a locked configuration) the cache stays
    as it was, which is only a matter of memory, never of results.
    """
    if isinstance(con, BriefConnection):
        return False  # the file (and its cache) is detached after every statement
    try:
        limit, other = con.execute(
            """SELECT current_setting('memory_limit'),
                      coalesce(sum(memory_usage_bytes) FILTER (WHERE tag <> 'BASE_TABLE'), 0)
               FROM duckdb_memory()"""
        ).fetchall()[0]
    except duckdb.Error:
        return False
    try:
        # Only the file's cached blocks go: temporary tables and the like keep their
        # memory instead of spilling to the temp folder.
        con.execute(f"SET memory_limit = '{int(other) + HEADROOM}B'")
        return True
    except duckdb.Error:
        return False
    finally:
        _restore(con, limit)
