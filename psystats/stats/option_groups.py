"""``fit accuracy``'s option log-probabilities, read one (model, experiment) at a time.

``stats.accuracy.option_rows`` reads every option row of every model into one
DataFrame: (responses x options x models) rows, which grows with the
warehouse.  The accuracy analysis only ever works on one (model, experiment)
at a time (its padded option matrix, its temperature), so
:class:`OptionGroups` lists the groups first (small: which latest run of
which model scored options in which experiment) and reads each group's rows
when it is reached.  Memory is that of the largest group, whatever the number
of models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd

from psystats.warehouse.buffers import release_buffers

from .data import latest_runs

GROUP_COLUMNS = ["model", "condition", "run_id", "experiment"]


class OptionGroups:
    """The groups of ``option_rows``' table; :meth:`load` reads one group's rows.

    ``groups``: one row per (model, experiment) with option scores in the
    model's latest complete run of the experiment in its condition
    (post-trained models: ``post_condition``; base models: ``base_condition``).
    """

    def __init__(
        self,
        con,
        *,
        post_condition: str = "plain",
        base_condition: str | None = None,
        models: Sequence[str] | None = None,
        experiments: Sequence[str] | None = None,
    ) -> None:
        self.con = con
        base_condition = base_condition or post_condition
        lr = latest_runs(
            con, sorted({post_condition, base_condition}), models=models, experiments=experiments
        )
        role = dict(
            con.execute(
                "SELECT name, CASE WHEN post_training = 'base' THEN ? ELSE ? END FROM models",
                [base_condition, post_condition],
            ).fetchall()
        )
        mine = [role.get(m) == c for m, c in zip(lr["model"], lr["condition"])]
        lr = lr[pd.Series(mine, index=lr.index, dtype=bool)]
        keep = []
        for run_id, g in lr.groupby("run_id", sort=True):
            with_options = {
                e
                for (e,) in con.execute(
                    """SELECT DISTINCT r.experiment FROM option_scores o
                    JOIN responses r ON r.response_id = o.response_id
                    WHERE o.run_id = ? AND isfinite(o.logprob)""",
                    [int(run_id)],
                ).fetchall()
            }
            release_buffers(con)
            keep.append(g[g["experiment"].isin(with_options)])
        self.groups = (
            pd.concat(keep)[GROUP_COLUMNS].sort_values(["model", "experiment"])
            if keep
            else pd.DataFrame(columns=GROUP_COLUMNS)
        ).reset_index(drop=True)

    @property
    def empty(self) -> bool:
        return self.groups.empty

    @property
    def models(self) -> set[str]:
        return set(self.groups["model"])

    def load(self, model: str, experiment: str) -> pd.DataFrame:
        """``option_rows``' rows of one (model, experiment), in its order."""
        g = self.groups[(self.groups["model"] == model) & (self.groups["experiment"] == experiment)]
        run_id, condition = int(g["run_id"].iloc[0]), g["condition"].iloc[0]
        cur = self.con.execute(
            """SELECT ? AS model, ? AS condition, o.run_id, r.experiment, r.participant_key,
                   o.response_id, trim(r.text) AS response, trim(o.option) AS option, o.logprob
            FROM option_scores o
            JOIN responses r ON r.response_id = o.response_id
            WHERE o.run_id = ? AND r.experiment = ? AND isfinite(o.logprob)
            ORDER BY o.response_id, option""",
            [model, condition, run_id, experiment],
        )
        rows = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
        release_buffers(self.con)
        return rows

    def iter_groups(
        self, models: set[str] | None = None
    ) -> Iterator[tuple[tuple[str, str], pd.DataFrame]]:
        """((model, experiment), rows) for each group (of ``models``), one at a time."""
        for model, exp in zip(self.groups["model"], self.groups["experiment"]):
            if models is None or model in models:
                yield (model, exp), self.load(model, exp)

    def to_frame(self) -> pd.DataFrame:
        """All groups in one DataFrame (``option_rows``' table; small warehouses only)."""
        parts = [rows for _, rows in self.iter_groups()]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
