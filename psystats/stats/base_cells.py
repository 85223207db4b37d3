"""Base-model cells of ``fit generations``, aggregated inside DuckDB.

Within a (family, experiment) the family's base models are compared on the
same people: only participants scored by every base model of the family that
scored the experiment count.  Per model the cell is the mean over those
participants of their mean NLL per response, and its standard error uses the
within-participant residual SD of the two-way (participant x model) table

    resid = y[i, j] - mean_i - mean_j + grand,   sd^2 = sum resid^2 / ((n - 1)(m - 1))

(the model's own participant SD when the family has one base model there).
This is ``stats.generations._base_cells_one`` computed in SQL over
:func:`~psystats.stats.data.participant_means_table` (built one model at a
time), so only one row per (model, experiment) reaches Python, whatever the
number of participants or score rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .data import participant_means_table

BASE_CELL_COLUMNS = ["model", "family", "experiment", "n", "mean", "se", "dropped", "run_id"]


def base_cells(
    con,
    families: pd.Series,
    *,
    condition: str,
    experiments: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Base cells for the base models in ``families`` (a Series: model name -> family).

    Columns ``BASE_CELL_COLUMNS``: ``n`` participants scored by every base
    model of the family in that experiment, ``mean``, ``se``, ``dropped``
    (participants of the (family, experiment) left out because some base
    model did not score them) and the ``run_id`` the model's scores came
    from.  (family, experiment) groups with fewer than 2 complete
    participants get no cells but keep a row with ``n`` < 2 and NaN
    ``mean``/``se``, so callers can say what was dropped.
    """
    fam = families.dropna()
    if fam.empty:
        return pd.DataFrame(columns=BASE_CELL_COLUMNS)
    models = sorted(fam.index)
    values = ", ".join(["(?, ?)"] * len(models))
    fam_params: list = []
    for m in models:
        fam_params += [m, str(fam[m])]
    with participant_means_table(
        con, condition=condition, models=models, experiments=experiments
    ) as pm:
        q = f"""
        WITH fm(model, family) AS (VALUES {values}),
        x AS (
            SELECT fm.family, p.experiment, p.participant_key, p.model, p.run_id, p.mean_nll
            FROM {pm} p JOIN fm ON fm.model = p.model
        ),
        width AS (SELECT family, experiment, count(DISTINCT model) AS m FROM x GROUP BY ALL),
        people AS (
            SELECT x.family, x.experiment, x.participant_key, count(*) = any_value(w.m) AS is_full
            FROM x JOIN width w USING (family, experiment) GROUP BY ALL
        ),
        dropped AS (
            SELECT family, experiment, count(*) FILTER (WHERE NOT is_full) AS dropped,
                   count(*) FILTER (WHERE is_full) AS n
            FROM people GROUP BY ALL
        ),
        y AS (
            SELECT x.* FROM x JOIN people p USING (family, experiment, participant_key)
            WHERE p.is_full
        ),
        rowm AS (
            SELECT family, experiment, participant_key, avg(mean_nll) AS rm FROM y GROUP BY ALL
        ),
        colm AS (
            SELECT family, experiment, model, any_value(run_id) AS run_id,
                   avg(mean_nll) AS cm, stddev_samp(mean_nll) AS sd_own
            FROM y GROUP BY ALL
        ),
        grand AS (
            SELECT family, experiment, avg(mean_nll) AS g, count(DISTINCT model) AS m
            FROM y GROUP BY ALL
        ),
        resid AS (
            SELECT y.family, y.experiment,
                   sum((y.mean_nll - r.rm - c.cm + g.g) ^ 2) AS ss
            FROM y
            JOIN rowm r USING (family, experiment, participant_key)
            JOIN colm c USING (family, experiment, model)
            JOIN grand g USING (family, experiment)
            GROUP BY ALL
        )
        SELECT w.family, w.experiment, d.n, d.dropped, c.model, c.run_id,
               CASE WHEN d.n >= 2 THEN c.cm END AS mean,
               CASE WHEN d.n < 2 THEN NULL
                    WHEN g.m >= 2 THEN sqrt(r.ss / ((d.n - 1) * (g.m - 1))) / sqrt(d.n)
                    ELSE c.sd_own / sqrt(d.n) END AS se
        FROM width w
        JOIN dropped d USING (family, experiment)
        LEFT JOIN colm c USING (family, experiment)
        LEFT JOIN grand g USING (family, experiment)
        LEFT JOIN resid r USING (family, experiment)
        ORDER BY w.family, w.experiment, c.model
        """
        cur = con.execute(q, fam_params)
        df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    for col in ("mean", "se"):
        df[col] = df[col].astype(float)
    return df[BASE_CELL_COLUMNS]
