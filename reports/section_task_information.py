"""The task-information gain page: does a model predict a person from the task, or from
the person's own earlier answers?

The gain is NLL under a history window (``history:0``: every earlier answer of the
participant removed from the transcript, docs/scoring.md) minus NLL under ``plain``
(the whole history), per response.  Its uncertainty is the persona model's: the
hierarchical within-model contrast of two conditions on the same responses
(``psystats fit persona --persona-condition history:0 --plain-condition plain``), so
no second copy of that model exists; :func:`reports.queries.history_window` tells
such a fit from a persona-prompt fit by its first condition.
"""

from __future__ import annotations

import pandas as pd

from . import figures as figs
from . import queries as q
from .blocks import Figure, Para, Section, esc, no_data, table_from, title
from .fit_notes import POSTERIOR_COLUMNS, caveats, fit_caption, truth_blocks, with_units

QUESTION = (
    "<b>Does a model predict a person from the task, or from the person's own history?</b> "
    "A published critique of Centaur found much of its edge in the participant's earlier "
    "choices. Each response is scored twice by the same model: with the whole transcript "
    "before it (<i>plain</i>) and with every earlier answer of the participant removed, "
    'instructions, trial texts and feedback kept (<font face="Courier">history:0</font>; '
    '<font face="Courier">history:K</font> keeps the K most recent answers). The '
    "<b>task-information gain</b> is NLL at history:0 minus NLL at plain, nats per "
    "response: how much the person's own answers help the model. Near 0, the model "
    "predicts people from the task alone; positive, it leans on their history."
)
HOW = (
    'Score with <font face="Courier">psystats score --model MODEL --condition history:0'
    '</font> (and <font face="Courier">--condition plain</font>), then run '
    '<font face="Courier">psystats fit persona --persona-condition history:0 '
    "--plain-condition plain</font>."
)


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Task-information gain"))
    s.add(Para(QUESTION))
    fits = q.task_information_fits(con)
    pending = [c for c in q.history_conditions(con) if c not in {_conds(f) for f in fits}]
    if not fits and not pending:
        return s.add(no_data("no model scored both under a history window and plain", HOW))
    for fit in fits:
        s.add(*fit_blocks(con, fit, truth))
    for first, second in pending:
        s.add(
            no_data(
                f"no fit of {esc(first)} against {esc(second)} yet",
                f'Run <font face="Courier">psystats fit persona --persona-condition '
                f"{esc(first)} --plain-condition {esc(second)}</font>; the raw differences "
                "follow.",
            )
        )
        s.add(*raw_blocks(con, first, second))
    return s


def _conds(fit: dict) -> tuple[str, str]:
    conds = q.contrast_conditions(fit)
    assert conds is not None  # task_information_fits keeps only fits that name them
    return conds


def effect_rows(con, fit: dict) -> pd.DataFrame:
    """The fit's gain per post-training type and (fixed model effects) per model, as forest
    rows with their unit."""
    fid = int(fit["fit_id"])
    parts = []
    types = q.labelled_params(con, fid, ["persona_effect"], "post_training")
    if not types.empty:
        parts.append(types.assign(group="Post-training type"))
    models = q.labelled_params(con, fid, ["persona_model_effect"], "model")
    if not models.empty:
        parts.append(models.assign(group="Model"))
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True)
    return with_units(fit, rows)[
        ["group", "parameter", "label", "mean", "sd", "q05", "q95", "hdi_low", "hdi_high"]
        + ["r_hat", "ess_bulk", "unit"]
    ]


def scope(fit: dict) -> str:
    """For which models the per-type gains speak, from the fit's own ``model_effects``."""
    if q.as_dict(fit.get("spec")).get("model_effects") == "random":
        return (
            "Models are modelled as a sample of the models of each type (--model-effects "
            "random): a type's gain speaks for models like those scored."
        )
    return (
        "Each model has its own fixed gain (--model-effects fixed, the default) and a type's "
        "gain is their average: it speaks for the models scored only."
    )


def fit_blocks(con, fit: dict, truth: dict | None) -> list:
    first, second = _conds(fit)
    rows = effect_rows(con, fit)
    out: list = [
        Para(
            f"<b>{esc(first)} − {esc(second)}</b> ({fit_caption(fit)}). Per type and per "
            "model: the hierarchical persona model's contrast of the two conditions on the "
            "same responses (cell means of per-participant differences, experiments as a "
            "random intercept; docs/model.md). " + scope(fit)
        )
    ]
    out += caveats(con, fit)
    if rows.empty:
        out.append(no_data(f"{fit_caption(fit)} stores no persona_effect"))
    else:
        unit = next((u for u in rows["unit"] if u), "nats")
        xlabel = f"{first} − {second} NLL ({unit})"
        out.append(
            Figure(
                figs.forest(rows, xlabel=xlabel),
                f"Task-information gain by post-training type and model ({fit_caption(fit)}): "
                "posterior mean, 90% interval (thick) and 94% HDI (thin); positive: the "
                "participant's own earlier answers help the model.",
                rows,
                chart="forest",
                options={"xlabel": xlabel},
            )
        )
        out += table_from(
            rows,
            {"group": "effect", **POSTERIOR_COLUMNS, "unit": "unit"},
            caption=f"The gains' posterior ({first} − {second}, per response).",
        )
    out += raw_blocks(con, first, second, q.fit_models(con, fit) or None)
    out += truth_blocks(con, fit, truth)
    return out


def raw_blocks(con, first: str, second: str, models: list[str] | None = None) -> list:
    """Per (model, experiment): the raw mean difference and its paired standard error."""
    cells = q.contrast_cells(con, first, second, models)
    if cells.empty:
        return [no_data(f"no model has valid scores under both {esc(first)} and {esc(second)}")]
    return table_from(
        cells,
        {
            "model": "model",
            "post_training": "post-training",
            "experiment": "experiment",
            "n": "participants",
            "n_responses": "responses",
            "mean": f"{first} − {second}",
            "se": "paired SE",
        },
        caption=f"Raw task-information gain per model and experiment ({esc(first)} − "
        f"{esc(second)}, nats per response): the mean over participants of each "
        "participant's mean difference on the responses both conditions scored, and its "
        "paired standard error sd/√n over participants (no pooling; the fit above pools "
        "them).",
    )
