"""Keeping scores honest when their rows go: replaced participants, repaired files.

``psystats ingest --replace-changed`` deletes a changed participant's old
responses and every score of them; ``psystats check --repair`` sets aside
score files it cannot trust.  A run that lost rows is then no longer
complete, and a fit built on it describes data the warehouse no longer
holds.  So, in the transaction that removes the rows:

* every run that lost rows gets ``status = 'incomplete'``, ``error`` saying
  why, and ``n_responses`` reduced to the rows it still holds (``psystats
  summary`` counts them);
* an imported run (an external scorer's) records what it needs to be
  complete again in ``score_run_gaps``: the replaced participants (every
  response of their new version needs a score) or, after a repair, the rows
  it held before.  ``psystats scores import FILE --run N`` fills them in
  place (:func:`close_gaps`); a psystats run resumes with ``psystats score``
  and scores exactly the participants without scores;
* every fit whose ``selection.runs`` names one of those runs gets
  ``fits.stale_reason`` (NULL means current).

``psystats summary`` lists both (:func:`stale_notes`), each with the command
that restores it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb

from .sql import scalar

SCORE_TABLES = ("scores", "option_scores", "token_scores")


def rows_scoring(con: duckdb.DuckDBPyConnection, participant_key: int) -> dict[int, int]:
    """Score runs holding any score of this participant's responses -> their ``scores``
    rows of it (0 for a run with only option or token scores of it)."""
    runs: dict[int, int] = {}
    for table in SCORE_TABLES:
        rows = con.execute(
            f"SELECT run_id, count(*) FROM {table} WHERE response_id IN "
            "(SELECT response_id FROM responses WHERE participant_key = ?) GROUP BY run_id",
            [participant_key],
        ).fetchall()
        for run_id, n in rows:
            runs.setdefault(int(run_id), 0)
            if table == "scores":
                runs[int(run_id)] += int(n)
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


def mark_stale(
    con: duckdb.DuckDBPyConnection,
    lost: Mapping[int, int],
    why: str,
    replaced: Iterable[tuple[int, str, str, str]] = (),
) -> tuple[int, int]:
    """Runs that lost rows to a replacement: ``lost`` maps run -> ``scores`` rows deleted,
    ``replaced`` lists (run, study, experiment, participant) of the replaced participants.
    Marks the runs incomplete and the fits built on them stale; ``(n_runs, n_fits)``.

    Call inside the transaction that deletes the scores, so both land or neither.
    """
    runs = sorted(lost)
    if not runs:
        return 0, 0
    for run_id, n in lost.items():
        if n:
            con.execute(
                "UPDATE score_runs SET n_responses = greatest(n_responses - ?, 0) WHERE run_id = ?",
                [int(n), run_id],
            )
    imported = _imported(con, runs)
    gaps = [
        (run_id, "replaced", study, experiment, participant, None, why, _now())
        for run_id, study, experiment, participant in replaced
        if run_id in imported
    ]
    if gaps:
        con.executemany(f"INSERT INTO score_run_gaps VALUES ({', '.join('?' * 8)})", gaps)
    return _incomplete(con, runs, why), _stale_fits(con, runs, why)


def mark_lost(con: duckdb.DuckDBPyConnection, had: Mapping[int, int], why: str) -> tuple[int, int]:
    """Runs that lost rows to a repair (``had``: run -> rows it held before, when it was
    last complete): incomplete; imported ones must hold that many again."""
    runs = sorted(had)
    if not runs:
        return 0, 0
    imported = _imported(con, runs)
    gaps = [
        (run_id, "lost", None, None, None, int(n), why, _now())
        for run_id, n in had.items()
        if run_id in imported
        and not scalar(
            con, "SELECT count(*) FROM score_run_gaps WHERE run_id = ? AND kind = 'lost'", [run_id]
        )
    ]
    if gaps:
        con.executemany(f"INSERT INTO score_run_gaps VALUES ({', '.join('?' * 8)})", gaps)
    return _incomplete(con, runs, why), _stale_fits(con, runs, why)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _imported(con: duckdb.DuckDBPyConnection, runs: Sequence[int]) -> set[int]:
    marks = ", ".join("?" * len(runs))
    return {
        int(r)
        for (r,) in con.execute(
            f"SELECT run_id FROM score_runs WHERE scorer <> 'psystats' AND run_id IN ({marks})",
            list(runs),
        ).fetchall()
    }


def _incomplete(con: duckdb.DuckDBPyConnection, runs: Sequence[int], why: str) -> int:
    marks = ", ".join("?" * len(runs))
    n_runs = scalar(
        con,
        f"SELECT count(*) FROM score_runs WHERE status = 'complete' AND run_id IN ({marks})",
        list(runs),
    )
    con.execute(
        f"UPDATE score_runs SET status = 'incomplete', error = ? "
        f"WHERE status = 'complete' AND run_id IN ({marks})",
        [why, *runs],
    )
    return int(n_runs or 0)


def _stale_fits(con: duckdb.DuckDBPyConnection, runs: Sequence[int], why: str) -> int:
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
    return len(stale)


# --------------------------------------------------------------------------- gaps


def open_gaps(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """What the imported run ``run_id`` still lacks, one phrase each ([]: nothing)."""
    out = []
    missing = con.execute(
        "SELECT g.study, g.experiment, g.participant, count(*) FROM score_run_gaps g "
        "JOIN responses r ON r.study = g.study AND r.experiment = g.experiment "
        "AND r.participant = g.participant "
        "WHERE g.run_id = ? AND g.kind = 'replaced' AND r.response_id NOT IN "
        "(SELECT response_id FROM scores WHERE run_id = ?) "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        [run_id, run_id],
    ).fetchall()
    for study, experiment, participant, n in missing:
        out.append(
            f"{n} response{'s' if n != 1 else ''} of participant {participant!r} "
            f"({study}/{experiment})"
        )
    expected = scalar(
        con,
        "SELECT max(expected_rows) FROM score_run_gaps WHERE run_id = ? AND kind = 'lost'",
        [run_id],
    )
    if expected is not None:
        have = int(scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id]) or 0)
        if have < int(expected):
            out.append(f"{int(expected) - have} of the {int(expected)} rows it held before")
    return out


def close_gaps(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """After rows were added to an incomplete imported run: record its true row count, and
    when nothing is missing any more mark it complete again (its gaps forgotten).
    Returns what is still missing.  Inside the caller's transaction."""
    have = int(scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id]) or 0)
    n_participants = scalar(
        con,
        "SELECT count(DISTINCT r.participant_key) FROM scores s JOIN responses r "
        "USING (response_id) WHERE s.run_id = ?",
        [run_id],
    )
    still = open_gaps(con, run_id)
    if still:
        con.execute(
            "UPDATE score_runs SET n_responses = ?, n_participants = ? WHERE run_id = ?",
            [have, n_participants, run_id],
        )
        return still
    con.execute(
        "UPDATE score_runs SET status = 'complete', error = NULL, n_responses = ?, "
        "n_participants = ?, finished_at = ? WHERE run_id = ?",
        [have, n_participants, _now(), run_id],
    )
    con.execute("DELETE FROM score_run_gaps WHERE run_id = ?", [run_id])
    return []


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


def import_command(run_id: int) -> str:
    """The command that fills an incomplete imported run in place (FILE: the scorer's
    output for what it lacks; rows the run already holds are skipped)."""
    return f"psystats scores import FILE --run {int(run_id)}"


def stale_notes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """One line per incomplete run and per stale fit, with what to do about it."""
    notes = []
    for run_id, model, condition, scorer, selection, error in con.execute(
        "SELECT run_id, model, condition, scorer, selection, error FROM score_runs "
        "WHERE status = 'incomplete' ORDER BY run_id"
    ).fetchall():
        why = "participants it scored were replaced"
        if error and "check --repair" in str(error):
            why = "rows it held were set aside by `psystats check --repair`"
        if scorer == "psystats":
            todo = f"run `{rescore_command(model, condition, selection)}` to re-score them"
        else:
            try:
                lacks = open_gaps(con, run_id)
            except duckdb.Error:  # damaged score files: `psystats check` says which
                lacks = []
            todo = (
                f"it lacks {'; '.join(lacks[:3])}{' ...' if len(lacks) > 3 else ''}: "
                if lacks
                else ""
            ) + (
                f"import them into it with `{import_command(run_id)}` (FILE: {scorer}'s "
                "scores of them; rows the run already holds are skipped)"
            )
        notes.append(f"score run {run_id} ({model}, {condition}) is incomplete: {why}; {todo}")
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
