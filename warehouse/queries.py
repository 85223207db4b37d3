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


def model_run_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    """Per model and condition: scored runs by status and the responses they scored.

    Runs of a seeded sample (``score --participants/--sample``) are counted on
    rows of their own, whose ``sample`` says what they sampled (empty: full
    runs), so a sample is never read as a full run.  Read from ``score_runs``
    alone (one row per run), so it costs the same with a thousand score rows
    or billions.
    """
    q = """
    SELECT model, condition,
           count(*) FILTER (WHERE status = 'complete')            AS complete,
           count(*) FILTER (WHERE status <> 'complete')           AS unfinished,
           coalesce(sum(n_responses) FILTER (WHERE status = 'complete'), 0)::BIGINT
                                                                  AS responses_scored,
           max(run_id)                                            AS newest_run,
           coalesce(sample_spec, '')                              AS sample
    FROM score_runs GROUP BY model, condition, sample_spec
    ORDER BY model, condition, sample_spec NULLS FIRST
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


# What a user may name on the command line, and where the names live.
NAMED: dict[str, tuple[str, str]] = {
    "experiment": (
        "SELECT DISTINCT experiment FROM participants",
        'psystats sql "SELECT DISTINCT study, experiment FROM participants ORDER BY 1, 2"',
    ),
    "study": (
        "SELECT DISTINCT study FROM participants",
        "psystats summary",
    ),
    "condition": (
        "SELECT DISTINCT condition FROM score_runs",
        'psystats sql "SELECT model, condition, status FROM score_runs"',
    ),
    "model": ("SELECT name FROM models", "psystats models list"),
}


def did_you_mean(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """`` (did you mean 'x' or 'y'?)`` for the candidates close to ``name``, else ``""``."""
    import difflib

    cands = [c for c in candidates if c is not None]
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.6)
    if not close:
        # A different case or a name's tail (the hub id's model part) also counts.
        low = name.lower()
        close = [c for c in cands if c.lower() == low or c.lower().endswith("/" + low)][:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def check_names(con: duckdb.DuckDBPyConnection, kind: str, names: Sequence[str] | None) -> None:
    """A WarehouseError for the first of ``names`` that is not a known ``kind``.

    The message has a "did you mean" from the known names and a command that
    lists them; an experiment that is really a study says so.
    """
    from .db import WarehouseError

    if not names:
        return
    query, listing = NAMED[kind]
    known = [r[0] for r in con.execute(query).fetchall()]
    have = set(known)
    for name in names:
        if name in have:
            continue
        if kind == "experiment":
            studies = {r[0] for r in con.execute(NAMED["study"][0]).fetchall()}
            if name in studies:
                raise WarehouseError(
                    f"no such experiment {name!r}: that is a study; list its experiments "
                    f'with `psystats sql "SELECT DISTINCT experiment FROM participants '
                    f'WHERE study = ?" -p {name}`'
                )
        if not known:
            where = "scored" if kind == "condition" else "in this warehouse"
            raise WarehouseError(f"no such {kind} {name!r}: no {kind} is {where} yet")
        raise WarehouseError(
            f"no such {kind} {name!r}{did_you_mean(name, known)}; list them with `{listing}`"
        )
