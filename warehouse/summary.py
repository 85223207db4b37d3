"""What ``psystats summary`` shows: counts per study, scored runs per model.

Read from the participant and run tables alone (one row per participant,
one per run), so it costs the same with a thousand score rows or billions.
"""

from __future__ import annotations

import duckdb


def summary_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    """Per study: experiments, domains, participants, responses, participants with an age."""
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
    """Per model and condition: runs by status and the responses they hold.

    ``incomplete`` runs lost rows (a replaced participant, a repaired file)
    and are resumed or filled in place; ``unfinished`` ones are running or
    failed.  ``responses_scored`` counts the rows complete and incomplete
    runs hold (``score_runs.n_responses``, kept true when rows go).  Runs of
    a seeded sample (``score --participants/--sample``) are counted on rows
    of their own, whose ``sample`` says what they sampled (empty: full
    runs), so a sample is never read as a full run.
    """
    q = """
    SELECT model, condition,
           count(*) FILTER (WHERE status = 'complete')                      AS complete,
           count(*) FILTER (WHERE status = 'incomplete')                    AS incomplete,
           count(*) FILTER (WHERE status NOT IN ('complete', 'incomplete'))  AS unfinished,
           coalesce(sum(n_responses) FILTER (WHERE status IN ('complete', 'incomplete')), 0)
               ::BIGINT                                                     AS responses_scored,
           max(run_id)                                                      AS newest_run,
           coalesce(sample_spec, '')                                        AS sample
    FROM score_runs GROUP BY model, condition, sample_spec
    ORDER BY model, condition, sample_spec NULLS FIRST
    """
    cur = con.execute(q)
    return [d[0] for d in cur.description], cur.fetchall()
