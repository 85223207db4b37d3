"""What the statistical models read from the warehouse.

Two views every analysis shares:

* :func:`participant_means` -- one row per (model, experiment, participant):
  the mean over that participant's responses of the summed response NLL.
* :func:`pairs` -- the registered (post-trained, base) pairs with the
  metadata the models use (type of post-training, family, generation, size).

Which run counts: for each (model, condition, experiment), the latest
*complete* run (by finish time) that scored that experiment.  Scoring an
experiment again therefore replaces, never adds to, its earlier scores, and
runs over different studies combine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd

from psystats.warehouse.schema import MODEL_FACTS
from psystats.warehouse.sql import where_clause

# Scores that count: the response produced tokens and the NLL is known
# (responses skipped or truncated away by the scorer have n_tokens = 0 or NULL nll).
# Imported scores from non-token models (cognitive models) have n_tokens NULL:
# they are valid whenever their nll is finite.
VALID_SCORE = "coalesce(s.n_tokens, 1) > 0 AND s.nll IS NOT NULL AND isfinite(s.nll)"


def valid_score(alias: str) -> str:
    """The VALID_SCORE condition for a scores table under another alias."""
    return VALID_SCORE.replace("s.", f"{alias}.")


def latest_runs_sql(condition_param: str = "?") -> str:
    """SQL for ``latest_runs(model, condition, experiment, run_id)``; binds one condition list.

    The run that counts for a (model, condition, experiment) is the newest
    full run, else (only samples scored it) the newest sampled run: a quick
    ``score --participants N`` after a full run never displaces it.

    ``condition_param`` is the placeholder text for the ``IN (...)`` list of
    conditions (e.g. ``"?, ?"``).
    """
    return f"""
    run_experiments AS (
        SELECT sr.run_id, sr.model, sr.condition, sr.sample_spec IS NULL AS full_run,
               coalesce(sr.finished_at, sr.started_at) AS t, r.experiment
        FROM score_runs sr
        JOIN scores s ON s.run_id = sr.run_id
        JOIN responses r ON r.response_id = s.response_id
        WHERE sr.status = 'complete' AND sr.condition IN ({condition_param})
        GROUP BY ALL
    ),
    latest_runs AS (
        SELECT model, condition, experiment, arg_max(run_id, (full_run, t, run_id)) AS run_id
        FROM run_experiments GROUP BY model, condition, experiment
    )"""


def run_experiments(
    con,
    conditions: Sequence[str],
    *,
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Which experiments each complete run under ``conditions`` scored, one run at a time.

    Columns: ``run_id, model, condition, full_run`` (not a sample), ``t``
    (finish time, else start time), ``experiment``.  Each query reads only one run's scores (and the cache is
    released after it), so memory is that of the largest run, not of the
    warehouse; the result has one row per (run, experiment).
    """
    from psystats.warehouse.buffers import release_buffers

    filt, params = where_clause({"condition": list(conditions), "model": models})
    cur = con.execute(
        f"""SELECT run_id, model, condition, sample_spec IS NULL AS full_run,
               coalesce(finished_at, started_at) AS t
        FROM score_runs {filt} {"AND" if filt else "WHERE"} status = 'complete'
        ORDER BY run_id""",
        params,
    )
    runs = cur.fetchall()
    rows = []
    for run_id, model, condition, full_run, t in runs:
        # Responses contribute only their participant (two numbers a row in the join).
        exps = con.execute(
            """SELECT DISTINCT pa.experiment FROM participants pa
            WHERE pa.participant_key IN (
                SELECT r.participant_key FROM scores s
                JOIN responses r ON r.response_id = s.response_id
                WHERE s.run_id = ?)
            ORDER BY 1""",
            [run_id],
        ).fetchall()
        release_buffers(con)
        rows += [(run_id, model, condition, full_run, t, e) for (e,) in exps]
    return pd.DataFrame(
        rows, columns=["run_id", "model", "condition", "full_run", "t", "experiment"]
    )


def latest_runs(
    con,
    conditions: Sequence[str],
    *,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``latest_runs_sql``'s table, read one run at a time: the run that counts for each
    (model, condition, experiment).

    Columns ``model, condition, experiment, run_id``, sorted by them.  Small
    (models x conditions x experiments rows) whatever the number of score rows.
    """
    ran = run_experiments(con, conditions, models=models)
    if experiments:
        ran = ran[ran["experiment"].isin(list(experiments))]
    cols = ["model", "condition", "experiment", "run_id"]
    if ran.empty:
        return pd.DataFrame(columns=cols)
    # Full runs first, then the latest by (time, run_id), as latest_runs_sql's
    # arg_max(run_id, (full_run, t, run_id)).
    ran = ran.sort_values(["model", "condition", "experiment", "full_run", "t", "run_id"])
    last = ran.groupby(["model", "condition", "experiment"], sort=True).tail(1)
    out = last[cols].reset_index(drop=True)
    out["run_id"] = out["run_id"].astype(int)
    return out


def participant_means_sql(
    *,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> tuple[str, list]:
    """``WITH ..., participant_means AS (...)``: the CTEs behind :func:`participant_means`.

    Returns (SQL text, parameters after the condition): bind
    ``[condition] + params``.  Analyses that only need aggregates over
    participants append their own ``SELECT ... FROM participant_means`` so the
    participant rows stay inside DuckDB.
    """
    filt, params = where_clause({"lr.model": models, "lr.experiment": experiments})
    conditions = " AND ".join([VALID_SCORE] + ([filt.removeprefix("WHERE ")] if filt else []))
    q = f"""
    WITH {latest_runs_sql()},
    participant_means AS (
        SELECT lr.model, lr.run_id, r.experiment, e.domain, r.study, r.participant_key,
               count(*)::BIGINT AS n_responses, avg(s.nll) AS mean_nll
        FROM latest_runs lr
        JOIN scores s ON s.run_id = lr.run_id
        JOIN responses r ON r.response_id = s.response_id AND r.experiment = lr.experiment
        LEFT JOIN experiments e ON e.experiment = r.experiment
        WHERE {conditions}
        GROUP BY ALL
    )"""
    return q, params


PARTICIPANT_MEANS_TABLE = "_psystats_participant_means"


@contextmanager
def participant_means_table(
    con,
    *,
    condition: str,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> Iterator[str]:
    """:func:`participant_means`' rows, built one (model, run) at a time inside DuckDB.

    Yields SQL for a relation (a parenthesised query, use it as
    ``FROM {rel} p``) with :func:`participant_means`' columns.  Each build
    query reads one run's scores (the cache released after it), so DuckDB
    holds one run at a time; the rows are kept narrow in a temporary table
    (model index, run, participant, n, mean: ~40 bytes a row, spilled past
    ``memory_limit``) and the names come from small tables when the relation
    is read.  Callers aggregate it in SQL, so the participant rows never
    reach Python.  The temporary tables are dropped afterwards.
    """
    from psystats.warehouse.buffers import release_buffers

    lr = latest_runs(con, [condition], models=models, experiments=experiments)
    rows, names = f"{PARTICIPANT_MEANS_TABLE}_rows", f"{PARTICIPANT_MEANS_TABLE}_models"
    for t in (rows, names):
        con.execute(f"DROP TABLE IF EXISTS temp.{t}")
    con.execute(
        f"""CREATE TEMP TABLE {rows} (model_idx INTEGER, run_id INTEGER,
        participant_key BIGINT, n_responses BIGINT, mean_nll DOUBLE)"""
    )
    con.execute(f"CREATE TEMP TABLE {names} (model_idx INTEGER, model VARCHAR)")
    try:
        index = {m: i for i, m in enumerate(sorted(set(lr.model)))}
        if index:
            con.execute(
                f"INSERT INTO temp.{names} VALUES " + ", ".join(["(?, ?)"] * len(index)),
                [v for m, i in index.items() for v in (i, m)],
            )
        # One query per (model, run): the scores scan is limited to one run by a constant,
        # responses contribute only their participant, and the participant's experiment
        # (kept when this run is the latest for it) comes after the aggregation.
        for (model, run), g in lr.groupby(["model", "run_id"], sort=True):
            exps = sorted(g.experiment)
            con.execute(
                f"""INSERT INTO temp.{rows}
                WITH a AS (
                    SELECT r.participant_key, count(*)::BIGINT AS n, avg(s.nll) AS mean_nll
                    FROM scores s JOIN responses r ON r.response_id = s.response_id
                    WHERE s.run_id = ? AND {VALID_SCORE}
                    GROUP BY r.participant_key
                )
                SELECT ?, ?, a.participant_key, a.n, a.mean_nll
                FROM a JOIN participants pa ON pa.participant_key = a.participant_key
                WHERE pa.experiment IN ({", ".join("?" * len(exps))})""",
                [int(run), index[model], int(run), *exps],
            )
            release_buffers(con)
        yield f"""(
            SELECT m.model, p.run_id, pa.experiment, e.domain, pa.study, p.participant_key,
                   p.n_responses, p.mean_nll
            FROM temp.{rows} p
            JOIN temp.{names} m ON m.model_idx = p.model_idx
            JOIN participants pa ON pa.participant_key = p.participant_key
            LEFT JOIN experiments e ON e.experiment = pa.experiment
        )"""
    finally:
        for t in (rows, names):
            con.execute(f"DROP TABLE IF EXISTS temp.{t}")


def participant_means(
    con,
    *,
    condition: str,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-participant mean response NLL of each model under ``condition``.

    Columns: ``model, run_id, experiment, domain, study, participant_key,
    n_responses, mean_nll`` where ``n_responses`` counts the responses with a
    valid score (``n_tokens > 0``) and ``mean_nll`` is their mean summed NLL
    in nats.  ``domain`` is the experiment's first listed domain (NULL if none).
    """
    q, params = participant_means_sql(models=models, experiments=experiments)
    q += """
    SELECT * FROM participant_means ORDER BY model, experiment, participant_key
    """
    cur = con.execute(q, [condition] + params)
    return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])


# A pair's names and its post model's facts (the base's where the post model's are unknown)...
PAIR_FACTS = [
    "pair",
    "post_model",
    "base_model",
    "post_training",
    "family",
    "generation",
    "generation_order",
    "n_params",
    "release_date",
]
# ... then the base's own.
PAIR_COLUMNS = [
    *PAIR_FACTS,
    "base_family",
    "base_generation",
    "base_generation_order",
    "base_n_params",
]


def pair_label(post: str, base: str) -> str:
    """How a pair is named in coordinates and ``fit_params.label``."""
    return f"{post} vs {base}"


def pairs(con, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Registered (post-trained, base) pairs: every model whose ``base_model`` is set.

    Columns (see ``PAIR_COLUMNS``): ``pair`` ("post vs base"), ``post_model``,
    ``base_model``, ``post_training`` and the post model's ``family``,
    ``generation``, ``generation_order``, ``n_params``, ``release_date`` (each
    falling back to the base's value when the post model's is unknown), then
    the base's own.
    ``models`` keeps the pairs whose post or base model is listed.
    Pairs whose base is not registered are left out.
    """
    q = """
    SELECT p.name AS post_model, b.name AS base_model, p.post_training,
           coalesce(p.family, b.family) AS family,
           coalesce(p.generation, b.generation) AS generation,
           coalesce(p.generation_order, b.generation_order) AS generation_order,
           coalesce(p.n_params, b.n_params) AS n_params,
           coalesce(p.release_date, b.release_date) AS release_date,
           b.family AS base_family, b.generation AS base_generation,
           b.generation_order AS base_generation_order, b.n_params AS base_n_params
    FROM models p JOIN models b ON b.name = p.base_model
    WHERE p.base_model IS NOT NULL AND p.name <> b.name
    ORDER BY p.name
    """
    cur = con.execute(q)
    df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    if models:
        wanted = set(models)
        df = df[df.post_model.isin(wanted) | df.base_model.isin(wanted)]
    df.insert(0, "pair", [pair_label(p, b) for p, b in zip(df.post_model, df.base_model)])
    return df[PAIR_COLUMNS].reset_index(drop=True)


MODEL_COLUMNS = ["name", *MODEL_FACTS]


def load_models(con) -> pd.DataFrame:
    """The ``models`` table (the columns the analyses use), one row per model."""
    cur = con.execute(f"SELECT {', '.join(MODEL_COLUMNS)} FROM models ORDER BY name")
    return pd.DataFrame(cur.fetchall(), columns=MODEL_COLUMNS)
