"""Named queries the CLI and reports share.  Filters are always bound parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb


def summary_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    q = """
    SELECT p.study,
           count(DISTINCT p.experiment)              AS experiments,
           string_agg(DISTINCT e.domain, '; ')       AS domains,
           count(*)                                  AS participants,
           sum(p.n_responses)::BIGINT                AS responses,
           count(p.age)                              AS with_age
    FROM participants p LEFT JOIN experiments e USING (experiment)
    GROUP BY p.study ORDER BY p.study
    """
    cur = con.execute(q)
    return [d[0] for d in cur.description], cur.fetchall()


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
