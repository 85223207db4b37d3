"""Section 2 of the report: mean NLL per response against parameter count."""

from __future__ import annotations

from . import figures as figs
from . import queries as q
from .blocks import Figure, Note, Section, esc, no_data, plural, table_from, title
from .fit_notes import pipeline_check_note


def build(con) -> Section:
    s = Section(title("NLL against model size"))
    conditions = q.conditions_scored(con)
    if not conditions:
        return s.add(no_data("no complete scoring runs"))
    for cond in conditions:
        table, info = q.model_nll(con, cond)
        if table.empty:
            s.add(no_data(f"no valid scores under condition '{esc(cond)}'"))
            continue
        floor = table["post_training"] == "baseline"  # floors are rows, not points
        missing = table[table["n_params"].isna() & ~floor]
        plotted = table[table["n_params"].notna() & ~floor]
        s.add(
            *pipeline_check_note(con, [str(m) for m in table["model"]], f"under condition {cond}")
        )
        if not plotted.empty:
            common = (
                "the same " if info["common"] else ""
            ) + f"{info['n_participants']:,} participants"
            caption = (
                f"Mean NLL per response (nats, summed over a response's tokens) against "
                f"parameter count, condition <b>{esc(cond)}</b>, one panel per family and one "
                f"line per post-training type; computed over {common} in "
                f"{plural(info['experiments'], 'experiment')}. Bands and bars: 95% t intervals "
                f"over participants (each participant contributes the mean of their "
                f"responses' NLL). Lower is better."
            )
            if not info["common"]:
                caption += " No participant was scored by every model, so each model uses its own participants."
            s.add(
                Figure(
                    figs.nll_by_size(plotted, condition=cond, level=info["level"]),
                    caption,
                    plotted,
                    chart="nll_by_size",
                    options={"condition": cond, "level": info["level"]},
                )
            )
        if len(missing):
            s.add(
                Note(
                    "Not plotted (parameter count unknown): "
                    + ", ".join(esc(m) for m in missing["model"])
                    + ".",
                    "warning",
                )
            )
        s.add(
            *table_from(
                table,
                {
                    "model": "model",
                    "post_training": "post-training",
                    "n_params": "parameters",
                    "n_participants": "participants",
                    "mean": "mean NLL",
                    "lo": "95% low",
                    "hi": "95% high",
                },
                caption=f"Per-model values behind the figure (condition {esc(cond)})."
                + (
                    " Floors (post-training 'baseline', section "
                    f"{title('Floors').split()[0]}) are rows here, over the compared "
                    "participants they scored (baseline:uniform scores only experiments "
                    "with an option set), not points of the figure."
                    if floor.any()
                    else ""
                ),
                formats={"n_params": figs.human_params},
            )
        )
    return s
