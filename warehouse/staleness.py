"""Keeping scores honest when ingest replaces a changed participant.

``psystats ingest --replace-changed`` deletes a changed participant's old
responses and every score of them.  A run that had scored them is then no
longer complete, and a fit built on that run describes data the warehouse no
longer holds.  So, in the ingest's own transaction:

* every ``complete`` score run that lost scores gets ``status = 'incomplete'``
  and ``error`` saying why; ``psystats score`` resumes such a run and scores
  exactly the participants without scores (the replaced ones);
* every fit whose ``selection.runs`` names one of those runs gets
  ``fits.stale_reason`` (NULL means current).

``psystats summary`` lists both (:func:`stale_notes`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from typing import Any

import duckdb

from .db import scalar

SCORE_TABLES = ("scores", "option_scores", "token_scores")


def runs_scoring(con: duckdb.DuckDBPyConnection, participant_key: int) -> set[int]:
    """Score runs holding any score of this participant's responses."""
    runs: set[int] = set()
    for table in SCORE_TABLES:
        rows = con.execute(
            f"SELECT DISTINCT run_id FROM {table} WHERE response_id IN "
            "(SELECT response_id FROM responses WHERE participant_key = ?)",
            [participant_key],
        ).fetchall()
        runs.update(int(r) for (r,) in rows)
    return runs


def _run_ids(selection: Any) -> set[int]:
    """Every run id under ``selection["runs"]`` (a list, or dicts of lists, per fit kind)."""
    found: set[int] = set()
    stack = [selection.get("runs") if isinstance(selection, dict) else None]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            found.add(v)
        elif isinstance(v, float) and v.is_integer():
            found.add(int(v))
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return found


def mark_stale(con: duckdb.DuckDBPyConnection, runs: Iterable[int], why: str) -> tuple[int, int]:
    """Mark ``runs`` incomplete and the fits built on them stale; ``(n_runs, n_fits)``.

    Call inside the transaction that deletes the scores, so both land or neither.
    """
    runs = sorted(set(runs))
    if not runs:
        return 0, 0
    marks = ", ".join("?" * len(runs))
    n_runs = scalar(
        con,
        f"SELECT count(*) FROM score_runs WHERE status = 'complete' AND run_id IN ({marks})",
        runs,
    )
    con.execute(
        f"UPDATE score_runs SET status = 'incomplete', error = ? "
        f"WHERE status = 'complete' AND run_id IN ({marks})",
        [why, *runs],
    )
    hit = set(runs)
    stale = []
    for fit_id, selection in con.execute(
        "SELECT fit_id, selection FROM fits WHERE stale_reason IS NULL"
    ).fetchall():
        try:
            used = _run_ids(json.loads(selection)) if selection else set()
        except ValueError:
            continue
        if used & hit:
            stale.append((fit_id, sorted(used & hit)))
    for fit_id, which in stale:
        con.execute(
            "UPDATE fits SET stale_reason = ? WHERE fit_id = ?",
            [f"built on score run(s) {', '.join(map(str, which))}: {why}", fit_id],
        )
    return int(n_runs or 0), len(stale)


def rescore_command(model: str, condition: str, selection: str | None) -> str:
    """The ``psystats score`` command that resumes a run (same model, condition, selection)."""
    parts = ["psystats", "score", "--model", model, "--condition", condition]
    try:
        sel = json.loads(selection) if selection else {}
    except ValueError:
        sel = {}
    for key, flag in (("studies", "--study"), ("experiments", "--experiment")):
        for v in (sel or {}).get(key) or []:
            parts += [flag, str(v)]
    return shlex.join(parts)


def stale_notes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """One line per incomplete run and per stale fit, with what to do about it."""
    notes = []
    for run_id, model, condition, scorer, selection in con.execute(
        "SELECT run_id, model, condition, scorer, selection FROM score_runs "
        "WHERE status = 'incomplete' ORDER BY run_id"
    ).fetchall():
        if scorer == "psystats":
            todo = f"run `{rescore_command(model, condition, selection)}` to re-score them"
        else:
            todo = "import its scores again with `psystats scores import`"
        notes.append(
            f"score run {run_id} ({model}, {condition}) is incomplete: participants it "
            f"scored were replaced; {todo}"
        )
    has_column = scalar(
        con,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'fits' AND column_name = 'stale_reason'",
    )
    if not has_column:  # an older warehouse, read without migrating
        return notes
    for fit_id, kind, reason in con.execute(
        "SELECT fit_id, kind, stale_reason FROM fits WHERE stale_reason IS NOT NULL ORDER BY fit_id"
    ).fetchall():
        notes.append(f"fit {fit_id} ({kind}) is stale: {reason}; fit it again")
    return notes
