"""The floors page: is each model better than a trivial predictor?

Every model against the floors (``baseline:uniform``,
``baseline:frequency``: models with ``post_training = 'baseline'``, scored by
``psystats score`` like a model; docs/scoring.md, "Baselines"; one run serves every
condition, ``reports.queries.floor_runs``), per experiment, on the same participants
and responses: which models beat each floor and by how much
(``reports.queries.floor_comparisons``: paired per-participant differences, their mean
and a 90% Student t interval over participants).  No fitted model: the numbers are the
scores' own.
"""

from __future__ import annotations

import pandas as pd

from . import figures as figs
from . import queries as q
from .blocks import Figure, Para, Section, esc, no_data, plural, table_from, title
from .fit_notes import coverage_range, pipeline_check_note

QUESTION = (
    "<b>Is a model better than a trivial predictor?</b> An NLL means little without a "
    "floor. <b>baseline:uniform</b> gives each option of the experiment's option set the "
    "same probability (−log 1/K); <b>baseline:frequency</b> predicts each response by how "
    "often the <i>other</i> participants of the experiment gave it at the same trial "
    "position (additive smoothing a = 1/2, leave-one-participant-out; docs/scoring.md). "
    "A model worse than the frequency floor predicts people less well than a table of "
    "what others did."
)
METHOD = (
    "<b>Method.</b> For each participant, the mean over the responses both the model and "
    "the floor scored validly of NLL(model) − NLL(floor) (latest complete runs, as every "
    "analysis reads them); per experiment, the mean of those paired differences over "
    "participants and its 90% Student t interval, mean ± t(n−1)·sd/√n (none with "
    "one participant). Negative: the model beats the floor. <b>beats</b>: the whole "
    "interval lies below 0; <b>worse</b>: above 0; <b>unclear</b>: it contains 0. The "
    "intervals are marginal, one per row, not adjusted for multiplicity. A floor reads "
    "the responses only, so its numbers are the same under every condition: the models "
    "of each condition are compared with the floor's run in that condition, else its "
    "newest run in any."
)
HOW = (
    'Score the floors with <font face="Courier">psystats score --model baseline:frequency'
    '</font> and <font face="Courier">psystats score --model baseline:uniform</font> '
    "(seconds; no model is loaded)."
)


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Floors"))
    s.add(Para(QUESTION))
    if not q.floor_models(con):
        return s.add(no_data("no floor is registered", HOW))
    shown = False
    for cond in q.conditions_scored(con):
        table = q.floor_comparisons(con, cond)
        if table.empty:
            continue
        if not shown:
            s.add(Para(METHOD, "small"))
            shown = True
        s.add(*condition_blocks(con, cond, table, truth))
    if not shown:
        s.add(
            no_data(
                "no model shares scored responses with a floor",
                HOW,
            )
        )
    return s


def who_beats(table: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, floor): the models that beat it (with how far below it they are),
    those that are worse, and those the data cannot tell."""

    def names(sub: pd.DataFrame, amount: bool) -> str:
        if sub.empty:
            return "none"
        return ", ".join(
            f"{m} ({-d:.2f})" if amount else str(m) for m, d in zip(sub["model"], sub["mean"])
        )

    rows = []
    for (exp, floor), g in table.groupby(["experiment", "floor"], sort=True):
        rows.append(
            {
                "experiment": exp,
                "floor": floor,
                "beat": names(g[g["verdict"] == "beats"], True),
                "unclear": names(g[g["verdict"] == "unclear"], False),
                "worse": names(g[g["verdict"] == "worse"], False),
            }
        )
    return pd.DataFrame(rows)


def condition_blocks(con, condition: str, table: pd.DataFrame, truth: dict | None) -> list:
    out: list = [
        Para(
            f"<b>Condition {esc(condition)}</b>: {plural(table['model'].nunique(), 'model')} "
            f"against {plural(table['floor'].nunique(), 'floor')} in "
            f"{plural(table['experiment'].nunique(), 'experiment')}; "
            f"{int((table['verdict'] == 'beats').sum())} of {len(table)} comparisons beat "
            "their floor."
        )
    ]
    out += pipeline_check_note(con, sorted(set(table["model"])), f"under condition {condition}")
    out += table_from(
        who_beats(table),
        {
            "experiment": "experiment",
            "floor": "floor",
            "beat": "beat it (nats per response below it)",
            "unclear": "unclear",
            "worse": "worse",
        },
        caption=f"Which models beat each floor, per experiment (condition {esc(condition)}).",
    )
    rows = table.assign(group=table["experiment"], label=table["model"])
    rows = rows.assign(q05=rows["lo"], q95=rows["hi"], unit="nats per response")
    series = "floor" if rows["floor"].nunique() > 1 else None
    xlabel = "model − floor NLL (nats per response)"
    out.append(
        Figure(
            figs.forest(rows, xlabel=xlabel, series=series),
            f"Each model against the floors, per experiment (condition {esc(condition)}): "
            "mean paired difference over participants and its 90% t interval; left of 0 the "
            "model beats the floor.",
            rows[["group", "label", "floor", "mean", "q05", "q95", "unit"]],
            chart="forest",
            options={"xlabel": xlabel, **({"series": series} if series else {})},
        )
    )
    out += table_from(
        table,
        {
            "experiment": "experiment",
            "floor": "floor",
            "model": "model",
            "participants": "participants",
            "responses": "responses",
            "model_nll": "model NLL",
            "floor_nll": "floor NLL",
            "mean": "model − floor",
            "lo": "5%",
            "hi": "95%",
            "verdict": "verdict",
        },
        caption=f"Model against floor (condition {esc(condition)}, nats per response): both "
        "means over the same participants and responses, their paired difference and its "
        "90% t interval.",
    )
    # The expected NLLs a truth file holds are those of its own condition (``sim``); the
    # persona and history conditions shift them by the effects those fits estimate.
    if truth and str(truth.get("condition", "")) == str(condition):
        out += truth_blocks(table, truth)
    return out


def truth_rows(table: pd.DataFrame, truth: dict | None) -> pd.DataFrame:
    """Rows of a simulated study's models: the known distance to each floor beside the
    estimate.  Known: the model's expected NLL per response in the experiment
    (``truth.json`` ``floors.expected_nll``) minus the floor's mean on the same
    participants and responses (a floor is a fixed function of the responses)."""
    levels = q.as_dict(q.as_dict((truth or {}).get("floors")).get("expected_nll"))
    if not levels:
        return pd.DataFrame()
    known = [
        q.as_dict(levels.get(str(m))).get(str(e))
        for m, e in zip(table["model"], table["experiment"])
    ]
    rows = table.assign(expected=pd.to_numeric(pd.Series(known, index=table.index)))
    rows = rows[rows["expected"].notna() & rows["lo"].notna() & rows["hi"].notna()].copy()
    rows["truth"] = rows["expected"] - rows["floor_nll"]
    rows["inside"] = (rows["lo"] <= rows["truth"]) & (rows["truth"] <= rows["hi"])
    return rows


def truth_blocks(table: pd.DataFrame, truth: dict | None) -> list:
    rows = truth_rows(table, truth)
    if rows.empty:
        return []
    inside = int(rows["inside"].sum())
    return table_from(
        rows,
        {
            "experiment": "experiment",
            "floor": "floor",
            "model": "model",
            "truth": "truth",
            "mean": "estimate",
            "lo": "5%",
            "hi": "95%",
            "inside": "truth inside",
        },
        caption="SIMULATED study: each model's known distance to the floor (its expected "
        "NLL per response in the experiment, from the simulation, minus the floor's mean on "
        f"the same responses) beside the estimate; {inside} of {len(rows)} truths lie "
        "inside their 90% interval. The interval also carries the floor's spread between "
        "participants, which is fixed here, so it is conservative. " + coverage_range(len(rows)),
    )
