"""Paired post-minus-base differences, aggregated to (pair, experiment) cells.

For a pair (post-trained model P, its base B) and participant i, the paired
difference is

    d_i = mean over i's responses r of [NLL_P(r) - NLL_B(r)]

over the responses both models scored validly (``n_tokens > 0``), each
model's NLL taken from its latest complete run of that experiment in its
condition (``post_condition`` for P, ``base_condition`` for B).

A cell (pair, experiment) keeps only the sufficient statistics of its
participants' differences: n, mean and (unbiased) variance.  For a Gaussian
participant-level model d_i ~ N(mu, s) they carry all the information:

    sum_i log N(d_i | mu, s)
        = -n/2 log(2 pi s^2) - [(n - 1) var + n (mean - mu)^2] / (2 s^2)

(:func:`suffstat_loglik`), so a model over ~10,000 cells evaluates exactly
the same likelihood as one over millions of participant rows.

Two scales (``with_scale``):

* ``nats``: y = mean, se = sqrt(var / n), in nats per response;
* ``standardised``: both divided by the cell's pooled participant SD
  sqrt((sd_post^2 + sd_base^2) / 2) of the two models' per-participant mean
  NLLs, so y is the seed study's Cohen's d (d_av) for that experiment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from psystats.warehouse.buffers import release_buffers
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import where_clause

from .data import PAIR_FACTS, latest_runs, latest_runs_sql, pairs, valid_score
from .options import Selection

SCALES = ("nats", "standardised")

CELL_COLUMNS = [
    *PAIR_FACTS,
    "experiment",
    "study",
    "domain",
    "n",
    "mean",
    "var",
    "sd_post",
    "sd_base",
    "pooled_sd",
    "n_responses",
    "post_run_id",
    "base_run_id",
    "post_condition",
    "base_condition",
]


def _differences_sql(n_pairs: int, exp_filter: str) -> str:
    """The CTEs down to ``diffs``: one row per (pair, participant) with d_i."""
    values = ", ".join(["(?, ?)"] * n_pairs)
    return f"""
    WITH {latest_runs_sql("?, ?")},
    pair_list(post_model, base_model) AS (VALUES {values}),
    pair_runs AS (
        SELECT pl.post_model, pl.base_model, lp.experiment,
               lp.run_id AS post_run_id, lb.run_id AS base_run_id
        FROM pair_list pl
        JOIN latest_runs lp ON lp.model = pl.post_model AND lp.condition = ?
        JOIN latest_runs lb ON lb.model = pl.base_model AND lb.condition = ?
                           AND lb.experiment = lp.experiment
        {exp_filter}
    ),
    diffs AS (
        SELECT pr.post_model, pr.base_model, pr.experiment, r.study, r.participant_key,
               pr.post_run_id, pr.base_run_id,
               count(*)::BIGINT AS n_responses,
               avg(sp.nll) AS mean_post, avg(sb.nll) AS mean_base,
               avg(sp.nll - sb.nll) AS d
        FROM pair_runs pr
        JOIN scores sp ON sp.run_id = pr.post_run_id
        JOIN responses r ON r.response_id = sp.response_id AND r.experiment = pr.experiment
        JOIN scores sb ON sb.run_id = pr.base_run_id AND sb.response_id = sp.response_id
        WHERE {valid_score("sp")} AND {valid_score("sb")}
        GROUP BY ALL
    )"""


def _pairs_or_fail(con, models) -> pd.DataFrame:
    pr = pairs(con, models)
    if pr.empty:
        what = f" among {list(models)}" if models else ""
        raise WarehouseError(
            f"no (post-trained, base) pairs registered{what}: register the post-trained "
            "model with its base, e.g. `psystats models add MODEL --base BASE_MODEL`"
        )
    return pr


def _params(
    pr: pd.DataFrame, post_condition: str, base_condition: str, experiments
) -> tuple[list, str]:
    exp_filter, exp_params = where_clause({"lp.experiment": experiments})
    params: list = [post_condition, base_condition]
    for p, b in zip(pr.post_model, pr.base_model):
        params += [p, b]
    params += [post_condition, base_condition] + exp_params
    return params, exp_filter


def participant_differences(con, selection: Selection | None = None) -> pd.DataFrame:
    """One row per (pair, participant): ``d`` and both models' mean NLL.

    Columns: ``pair, post_model, base_model, experiment, study, domain,
    participant_key, n_responses, mean_post, mean_base, d, post_run_id,
    base_run_id``.  ``selection``: conditions, models, experiments (default:
    all, plain).
    """
    sel = selection or Selection()
    pr = _pairs_or_fail(con, sel.only("models"))
    params, exp_filter = _params(pr, sel.post, sel.base, sel.only("experiments"))
    q = (
        _differences_sql(len(pr), exp_filter)
        + """
    SELECT d.post_model, d.base_model, d.experiment, d.study, e.domain, d.participant_key,
           d.n_responses, d.mean_post, d.mean_base, d.d, d.post_run_id, d.base_run_id
    FROM diffs d LEFT JOIN experiments e ON e.experiment = d.experiment
    ORDER BY d.post_model, d.base_model, d.experiment, d.participant_key
    """
    )
    cur = con.execute(q, params)
    df = pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])
    df.insert(0, "pair", [f"{p} vs {b}" for p, b in zip(df.post_model, df.base_model)])
    return df


def aggregate_cells(diffs: pd.DataFrame) -> pd.DataFrame:
    """Sufficient statistics per (pair, experiment) from participant rows (pandas).

    The reference for :func:`build_cells` (which aggregates inside DuckDB) and
    the route for data that never was in a warehouse.  Needs columns
    ``pair, experiment, d, mean_post, mean_base``; carries along the
    ``post_model, base_model, study, domain`` and run columns when present.
    """
    keys = ["pair", "experiment"]
    g = diffs.groupby(keys, sort=True)
    out = g.agg(
        n=("d", "size"),
        mean=("d", "mean"),
        var=("d", "var"),
        sd_post=("mean_post", "std"),
        sd_base=("mean_base", "std"),
    ).reset_index()
    if "n_responses" in diffs:
        out["n_responses"] = g["n_responses"].sum().to_numpy()
    for col in ("post_model", "base_model", "study", "domain", "post_run_id", "base_run_id"):
        if col in diffs:
            out[col] = g[col].first().to_numpy()
    out["pooled_sd"] = np.sqrt((out.sd_post**2 + out.sd_base**2) / 2)
    return out


def _pair_runs(
    con, pr: pd.DataFrame, post_condition: str, base_condition: str, experiments
) -> pd.DataFrame:
    """(post_model, base_model, experiment, post_run_id, base_run_id): which runs each cell
    compares.  Small (pairs x experiments rows); read one run at a time
    (:func:`~psystats.stats.data.latest_runs`), so it never holds more than one run."""
    cols = ["post_model", "base_model", "experiment", "post_run_id", "base_run_id"]
    models = sorted(set(pr.post_model) | set(pr.base_model))
    lr = latest_runs(
        con, sorted({post_condition, base_condition}), models=models, experiments=experiments
    )
    lp = lr[lr.condition == post_condition][["model", "experiment", "run_id"]]
    lb = lr[lr.condition == base_condition][["model", "experiment", "run_id"]]
    out = (
        pr[["post_model", "base_model"]]
        .merge(lp.rename(columns={"model": "post_model", "run_id": "post_run_id"}))
        .merge(
            lb.rename(columns={"model": "base_model", "run_id": "base_run_id"}),
            on=["base_model", "experiment"],
        )
    )
    return out[cols].sort_values(cols[:3]).reset_index(drop=True)


def _run_pair_cells_sql(n_experiments: int) -> str:
    """Cells of one (post run, base run) of a pair, for the experiments it is used for.

    Both scores scans are limited to one run by a constant (a run holds each
    response once), so every join is on ``response_id`` alone and can never
    multiply rows, whatever plan DuckDB picks (the Parquet scores layout has
    no column statistics).  Responses contribute only their participant; the
    experiment, study and domain come from the participant after the
    per-participant aggregation, so the joins hold two numbers per response.
    """
    exps = ", ".join(["?"] * n_experiments)
    return f"""
    WITH diffs AS (
        SELECT r.participant_key, count(*)::BIGINT AS n_responses,
               avg(sp.nll) AS mean_post, avg(sb.nll) AS mean_base,
               avg(sp.nll - sb.nll) AS d
        FROM scores sp
        JOIN scores sb ON sb.response_id = sp.response_id
        JOIN responses r ON r.response_id = sp.response_id
        WHERE sp.run_id = ? AND sb.run_id = ?
          AND {valid_score("sp")} AND {valid_score("sb")}
        GROUP BY r.participant_key
    )
    SELECT pa.experiment, any_value(pa.study) AS study,
           any_value(e.domain) AS domain, count(*)::BIGINT AS n, avg(d.d) AS mean,
           var_samp(d.d) AS var, stddev_samp(d.mean_post) AS sd_post,
           stddev_samp(d.mean_base) AS sd_base, sum(d.n_responses)::BIGINT AS n_responses
    FROM diffs d
    JOIN participants pa ON pa.participant_key = d.participant_key
    LEFT JOIN experiments e ON e.experiment = pa.experiment
    WHERE pa.experiment IN ({exps})
    GROUP BY pa.experiment
    ORDER BY pa.experiment
    """


def build_cells(
    con,
    *,
    post_condition: str = "plain",
    base_condition: str | None = None,
    models: Sequence[str] | None = None,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The cell table: one row per (pair, experiment) with n, mean, var and pair metadata.

    Aggregated inside DuckDB (the participant rows never reach Python), one
    pair at a time: a query joins only that pair's two runs per experiment,
    so memory and temp space are bounded by the largest pair, not by the
    number of models.  Columns: ``CELL_COLUMNS``; ``var``/``sd_*`` are NaN
    for a one-participant cell.  Raises :class:`WarehouseError` when there is
    no pair or no experiment that both models of some pair scored.
    """
    base_condition = base_condition or post_condition
    pr = _pairs_or_fail(con, models)
    runs = _pair_runs(con, pr, post_condition, base_condition, experiments)
    parts = []
    # One query per (pair, post run, base run): usually one per pair, more when some
    # experiments were scored again in a newer run.
    combos = runs.groupby(["post_model", "base_model", "post_run_id", "base_run_id"], sort=True)
    for (post, base, p_run, b_run), g in combos:
        exps = sorted(g.experiment)
        cur = con.execute(_run_pair_cells_sql(len(exps)), [int(p_run), int(b_run), *exps])
        part = pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])
        release_buffers(con)  # the next query reads other runs: drop these runs' blocks
        part.insert(0, "base_model", base)
        part.insert(0, "post_model", post)
        part["post_run_id"], part["base_run_id"] = int(p_run), int(b_run)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not df.empty:
        df = df.sort_values(["post_model", "base_model", "experiment"], ignore_index=True)
    if df.empty:
        raise WarehouseError(
            f"no cells: no experiment was scored by both models of any pair "
            f"(post condition {post_condition!r}, base condition {base_condition!r}); "
            'check `psystats sql "SELECT model, condition, status FROM score_runs"`'
        )
    for col in ("mean", "var", "sd_post", "sd_base"):
        df[col] = df[col].astype(float)
    df["pooled_sd"] = np.sqrt((df.sd_post**2 + df.sd_base**2) / 2)
    df = df.merge(
        pr[PAIR_FACTS],
        on=["post_model", "base_model"],
        how="left",
    )
    df["post_condition"], df["base_condition"] = post_condition, base_condition
    return df[CELL_COLUMNS]


def selected_cells(con, selection: Selection, scale: str) -> pd.DataFrame:
    """The cells ``selection`` reads (conditions, models, experiments) on ``scale``, its
    names checked first: what the effects and formula fits and ``wh.cells`` read."""
    selection.check_names(con, conditions=[selection.post, selection.base])
    return with_scale(build_cells(con, **selection.reads("models", "experiments")), scale)


def cell_runs(cells: pd.DataFrame) -> list[int]:
    """The score runs a cell table compares (post and base), sorted: ``fits.selection.runs``."""
    return sorted({int(r) for r in pd.concat([cells.post_run_id, cells.base_run_id]).dropna()})


def with_scale(cells: pd.DataFrame, scale: str = "nats") -> pd.DataFrame:
    """Add ``y`` (cell mean difference) and ``se`` (its standard error) on ``scale``.

    ``se`` = sqrt(var / n) uses the cell's own participant SD as a plug-in;
    it is NaN for a one-participant cell.  On the standardised scale both
    are divided by ``pooled_sd``.
    """
    if scale not in SCALES:
        raise WarehouseError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    out = cells.copy()
    se = np.sqrt(out["var"].astype(float) / out["n"].astype(float))
    if scale == "nats":
        out["y"], out["se"] = out["mean"].astype(float), se
    else:
        c = out["pooled_sd"].astype(float).where(lambda v: v > 0)
        out["y"], out["se"] = out["mean"].astype(float) / c, se / c
    out["scale"] = scale
    return out


def suffstat_loglik(n, mean, var, mu, s):
    """sum_i log N(d_i | mu, s) from the cell's sufficient statistics (elementwise).

    ``var`` is the unbiased sample variance (any finite value when n = 1,
    where its term vanishes).
    """
    n, mean, var, mu, s = (np.asarray(a, dtype=float) for a in (n, mean, var, mu, s))
    ss = np.where(n > 1, (n - 1) * np.nan_to_num(var), 0.0)
    return -0.5 * n * np.log(2 * np.pi * s**2) - (ss + n * (mean - mu) ** 2) / (2 * s**2)
