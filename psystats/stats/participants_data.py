"""What ``fit participants`` reads: one row per participant (and model or pair) with its
outcome, and the participant metadata chosen as covariates.

Outcomes (each participant's mean over the responses scored validly, in nats per response):

* ``nll``: a model's mean NLL of the participant's responses (its latest complete run
  of that experiment under the selection's condition);
* ``gap``: post-trained minus base mean NLL on the responses both scored, for each
  registered pair in the selection (post-trained scores under ``post_condition``, base
  scores under ``base_condition``, as every pair analysis reads them).

Both are aggregated inside DuckDB one run (or one pair of runs) at a time, so memory
holds one run's scores, never the warehouse's; only the per-participant rows (models or
pairs x participants) reach pandas.

Covariates: the participant columns ``age`` (numeric) and ``gender``, ``nationality``,
``education``, ``diagnosis`` (categorical), and every key of ``participant_metadata``
(questionnaire scores such as ``FACSIMILE A/D``, a study's own ``condition``, ...), by the
name it is stored under.  A metadata key is numeric when every value given is a number
(``value_num``), else categorical (its text); ``categorical`` forces a key to be read as
categories.  A participant without a value for a covariate has it missing (NaN / None):
:func:`covariate_table` never drops anyone; the fit decides and says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from psystats.warehouse.buffers import release_buffers
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.names import did_you_mean

from .cells import _pair_runs
from .data import pairs, participant_means_table, valid_score
from .options import Selection

OUTCOMES = ("nll", "gap")
# The typed columns of ``participants`` (warehouse/schema.py) and how each is read.
STANDARD_COVARIATES = {
    "age": "numeric",
    "gender": "categorical",
    "nationality": "categorical",
    "education": "categorical",
    "diagnosis": "categorical",
}
ROW_COLUMNS = ["unit", "experiment", "study", "participant_key", "n_responses", "y", "runs"]


def nll_rows(con, selection: Selection) -> pd.DataFrame:
    """One row per (model, participant): the model's mean NLL per response (``y``)."""
    models = selection.only("models")
    if not models:
        raise WarehouseError(
            "fit participants --outcome nll needs --model MODEL (the model whose mean NLL "
            "per participant is regressed on the covariates)"
        )
    with participant_means_table(
        con,
        condition=selection.condition,
        models=models,
        experiments=selection.only("experiments"),
    ) as rel:
        cur = con.execute(
            f"""SELECT model AS unit, experiment, study, participant_key, n_responses,
            mean_nll AS y, run_id::VARCHAR AS runs FROM {rel} p
            ORDER BY unit, experiment, participant_key"""
        )
        df = pd.DataFrame(cur.fetchall(), columns=ROW_COLUMNS)
    if df.empty:
        raise WarehouseError(
            f"fit participants: no complete run of {', '.join(models)} under condition "
            f"{selection.condition!r}"
            + (f" for {', '.join(selection.experiments)}" if selection.experiments else "")
            + ": score it first (`psystats score`)"
        )
    return df


_PAIR_PARTICIPANTS_SQL = """
    WITH d AS (
        SELECT r.participant_key, count(*)::BIGINT AS n, avg(sp.nll - sb.nll) AS y
        FROM scores sp
        JOIN scores sb ON sb.response_id = sp.response_id
        JOIN responses r ON r.response_id = sp.response_id
        WHERE sp.run_id = ? AND sb.run_id = ? AND {valid_p} AND {valid_b}
        GROUP BY r.participant_key
    )
    SELECT pa.experiment, pa.study, d.participant_key, d.n, d.y
    FROM d JOIN participants pa ON pa.participant_key = d.participant_key
    WHERE pa.experiment IN ({exps})
    ORDER BY pa.experiment, d.participant_key
"""


def gap_rows(con, selection: Selection) -> pd.DataFrame:
    """One row per (pair, participant): post minus base mean NLL on the same responses."""
    pr = pairs(con, selection.only("models"))
    if selection.families:
        pr = pr[pr["family"].isin(selection.families)]
    if selection.post_training:
        pr = pr[pr["post_training"].isin(selection.post_training)]
    if pr.empty:
        raise WarehouseError(
            "fit participants --outcome gap found no registered (post-trained, base) pair in "
            "the selection: register one with `psystats models add MODEL --base BASE_MODEL`, "
            "or use --outcome nll --model MODEL"
        )
    runs = _pair_runs(con, pr, selection.post, selection.base, selection.only("experiments"))
    rows = []
    # Both score scans are limited to one run by a constant: one run pair in memory at a time.
    for (post, base, post_run, base_run), g in runs.groupby(
        ["post_model", "base_model", "post_run_id", "base_run_id"], sort=True
    ):
        exps = sorted(g["experiment"])
        sql = _PAIR_PARTICIPANTS_SQL.format(
            valid_p=valid_score("sp"), valid_b=valid_score("sb"), exps=", ".join("?" * len(exps))
        )
        for e, s, pk, n, y in con.execute(sql, [int(post_run), int(base_run), *exps]).fetchall():
            rows.append((f"{post} vs {base}", e, s, pk, n, y, f"{post_run}-{base_run}"))
        release_buffers(con)
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    if df.empty:
        raise WarehouseError(
            "fit participants --outcome gap: no pair has both models scored on the same "
            f"responses (post-trained under {selection.post!r}, base under "
            f"{selection.base!r}): score both models first (`psystats score`)"
        )
    return df.sort_values(["unit", "experiment", "participant_key"]).reset_index(drop=True)


def outcome_rows(con, selection: Selection, outcome: str) -> pd.DataFrame:
    """:func:`nll_rows` or :func:`gap_rows` (columns :data:`ROW_COLUMNS`; ``y`` float)."""
    df = nll_rows(con, selection) if outcome == "nll" else gap_rows(con, selection)
    df["y"] = df["y"].astype(float)
    df["participant_key"] = df["participant_key"].astype("int64")
    return df


def _keys_table(con, keys: Sequence[int]) -> str:
    name = "_psystats_participants_keys"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} (participant_key BIGINT)")
    con.executemany(f"INSERT INTO {name} VALUES (?)", [(int(k),) for k in keys])
    return name


def available_covariates(con, keys: Sequence[int]) -> dict[str, int]:
    """``{covariate: participants (of keys) that have it}`` for every covariate that exists."""
    table = _keys_table(con, keys)
    try:
        counts = ", ".join(f"count({c})" for c in STANDARD_COVARIATES)
        (row,) = con.execute(
            f"SELECT {counts} FROM participants WHERE participant_key IN "
            f"(SELECT participant_key FROM {table})"
        ).fetchall()
        out = {c: int(n) for c, n in zip(STANDARD_COVARIATES, row) if n}
        for key, n in con.execute(
            f"""SELECT key, count(DISTINCT participant_key) FROM participant_metadata
            WHERE participant_key IN (SELECT participant_key FROM {table})
              AND (value_num IS NOT NULL OR value_text IS NOT NULL)
            GROUP BY key ORDER BY key"""
        ).fetchall():
            out.setdefault(str(key), int(n))
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.{table}")
    return out


def describe_available(available: dict[str, int]) -> str:
    """``age (120 participants), gender (80 participants)``, or a line saying there is none."""
    if not available:
        return (
            "the selected participants have no metadata at all (no age, gender, nationality, "
            "education, diagnosis or other key)"
        )
    return "covariates that exist: " + ", ".join(
        f"{k!r} ({n} participant{'s' if n != 1 else ''})" for k, n in available.items()
    )


def check_covariates(covariates: Sequence[str], available: dict[str, int]) -> None:
    """One line naming what exists when no covariate is given or one has no value at all."""
    if not covariates:
        raise WarehouseError(
            "fit participants needs --covariates (comma-separated metadata keys); "
            + describe_available(available)
        )
    for c in covariates:
        if c not in available:
            hint = did_you_mean(c, list(available)) if available else ""
            raise WarehouseError(
                f"fit participants: no selected participant has covariate {c!r}{hint}; "
                + describe_available(available)
            )


def covariate_table(
    con, keys: Sequence[int], covariates: Sequence[str], categorical: Sequence[str] = ()
) -> tuple[pd.DataFrame, dict[str, str]]:
    """(one row per participant key with a column per covariate, ``{covariate: kind}``).

    Numeric columns are float (NaN where missing), categorical ones text
    (None where missing); ``kind`` is ``numeric`` or ``categorical``.
    """
    table = _keys_table(con, keys)
    kinds: dict[str, str] = {}
    try:
        std = [c for c in covariates if c in STANDARD_COVARIATES]
        cols = "".join(f", {c}" for c in std)
        cur = con.execute(
            f"SELECT k.participant_key{cols} FROM {table} k "
            "LEFT JOIN participants pa USING (participant_key) ORDER BY 1"
        )
        out = pd.DataFrame(cur.fetchall(), columns=["participant_key", *std])
        for c in std:
            kinds[c] = "categorical" if c in categorical else STANDARD_COVARIATES[c]
        for key in [c for c in covariates if c not in STANDARD_COVARIATES]:
            cur = con.execute(
                f"""SELECT participant_key, any_value(value_num), any_value(value_text),
                       any_value(value_json::VARCHAR)
                FROM participant_metadata WHERE key = ?
                  AND participant_key IN (SELECT participant_key FROM {table})
                GROUP BY participant_key""",
                [key],
            )
            m = pd.DataFrame(cur.fetchall(), columns=["participant_key", "num", "text", "json"])
            m = m[m["num"].notna() | m["text"].notna()]
            numeric = key not in categorical and bool(m["num"].notna().all())
            kinds[key] = "numeric" if numeric else "categorical"
            vals = m["num"] if numeric else m["text"].fillna(m["json"])
            out[key] = out["participant_key"].map(dict(zip(m["participant_key"], vals)))
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.{table}")
    for c, k in kinds.items():
        if k == "numeric":
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
            out.loc[~np.isfinite(out[c]), c] = np.nan
        else:
            out[c] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                      for v in out[c]]  # fmt: skip
    return out, kinds
