"""``scores export --level token|word``: token and word scores joined with their natural keys.

The response level (``scores``) is ``scoring.importer.export_scores``, which
also imports back; token and word files are for analysis (R, pandas,
psycholinguistic pipelines) and do not import.  Rows stream from DuckDB to
the writer in record batches, so memory does not grow with the run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.outputs import table_suffix, write_batches
from psystats.warehouse.sql import scalar

LEVELS = ("response", "token", "word")
BATCH_ROWS = 65_536

KEYS = (
    "x.run_id, sr.model, sr.condition, sr.scorer, x.response_id, r.study, r.experiment, "
    "r.participant, r.response_index"
)
QUERIES = {
    "token": (
        "token_scores",
        f"SELECT {KEYS}, x.token_index, x.token_id, x.token, x.logprob, x.entropy, x.rank "
        "FROM token_scores x JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id) "
        "WHERE x.run_id IN ({runs}) ORDER BY x.run_id, x.response_id, x.token_index",
        "--token-level (or --entropy / --rank)",
    ),
    "word": (
        "word_scores",
        f"SELECT {KEYS}, x.word_index, x.word, x.char_start, x.char_end, x.token_start, "
        "x.n_tokens, x.nll, x.token_nll "
        "FROM word_scores x JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id) "
        "WHERE x.run_id IN ({runs}) ORDER BY x.run_id, x.response_id, x.word_index",
        "--word-level",
    ),
}


def level_query(
    con: duckdb.DuckDBPyConnection, runs: list[int], level: str
) -> tuple[str, list[int]]:
    """SQL and parameters for the ``level`` ('token' or 'word') rows of ``runs``.

    A run without rows at that level is an error naming the run and the
    option that stores them (the API and the CLI share this).
    """
    if level not in QUERIES:
        raise WarehouseError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    table, query, option = QUERIES[level]
    for run in runs:
        if not scalar(con, f"SELECT count(*) > 0 FROM {table} WHERE run_id = ?", [run]):
            raise WarehouseError(
                f"score run {run} has no {level} scores: they are stored by `psystats score "
                f"{option}` (a new run)"
            )
    return query.format(runs=", ".join("?" * len(runs))), list(runs)


def export_level(
    con: duckdb.DuckDBPyConnection, out: str | Path, runs: list[int], level: str
) -> int:
    """Write the ``level`` ('token' or 'word') rows of ``runs`` to ``out`` (.parquet or .csv).

    Returns the row count.
    """
    out = Path(out)
    suffix = table_suffix(out)
    sql, params = level_query(con, runs, level)
    return write_batches(con.sql(sql, params=params).to_arrow_reader(BATCH_ROWS), out, suffix)
