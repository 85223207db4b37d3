"""Section 6 of the report: persona prompts (with the ROPE verdicts and what data would
decide them) and accuracy (raw and calibrated)."""

from __future__ import annotations

import math

import pandas as pd

from . import figures as figs
from . import queries as q
from .blocks import Figure, Para, Section, fmt, no_data, summary_of, table_from, title
from .fit_notes import caveats, fit_caption, headline, others_note, truth_blocks

MAX_FACTOR = 100.0  # beyond this "more data" is not a plan: say so instead of a number


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Persona and accuracy"))
    # A persona-model fit of a history window is the task-information page's.
    persona = q.latest_fit(con, "persona", q.is_persona_prompt_fit)
    accuracy = q.latest_fit(con, "accuracy")
    if persona is None and accuracy is None:
        return s.add(
            no_data(
                "no persona or accuracy fit",
                'Score with <font face="Courier">--condition persona</font> and run '
                '<font face="Courier">psystats fit persona</font>; for discrete-option '
                'experiments run <font face="Courier">psystats fit accuracy</font>.',
            )
        )
    if persona is None:
        s.add(
            no_data(
                "no persona fit",
                'Run <font face="Courier">psystats fit persona</font> '
                'after scoring with <font face="Courier">--condition persona</font>.',
            )
        )
    else:
        s.add(*persona_blocks(con, persona, truth))
    if accuracy is None:
        s.add(
            no_data(
                "no accuracy fit",
                'Run <font face="Courier">psystats fit accuracy</font> '
                "(needs option sets and option scores).",
            )
        )
    else:
        s.add(*accuracy_blocks(con, accuracy, truth))
    return s


def persona_scope(fit: dict) -> str:
    """For which models the persona verdicts hold, from the fit's own ``model_effects``."""
    if q.as_dict(fit.get("spec")).get("model_effects") == "random":
        return (
            "Models are modelled as a sample of a population of models of each post-training "
            "type (--model-effects random), so each verdict is about models like those scored; "
            "with few models per type that population is barely learnt."
        )
    return (
        "<b>Scope:</b> this fit has one fixed effect per model (--model-effects fixed, the "
        "default): each post-training type's effect is the average over the models scored, "
        "so the verdicts below hold for those models only, not for other models of the same "
        "type. Fit with --model-effects random (several models per type) to speak for "
        "models like them."
    )


def rope_outlook(mean: float, q05: float, q95: float, rope: tuple[float, float]) -> str:
    """How wide the 90% interval is against the ROPE, and roughly how much more data would
    decide (interval widths shrink about as 1/sqrt(data) when participants limit them)."""
    lo, hi = rope
    width, rope_w = q95 - q05, hi - lo
    head = f"interval {width:.3g} wide, ROPE {rope_w:.3g} wide ({width / rope_w:.1f}×)"
    if lo <= q05 and q95 <= hi:
        return head + ": decided (inside the ROPE)"
    if q95 < lo or q05 > hi:
        return head + ": decided (outside the ROPE)"
    half = width / 2

    def factor(room: float) -> str:
        f = (half / room) ** 2 if room > 0 else math.inf
        return f"about {f:.0f}×" if f <= MAX_FACTOR else f"more than {MAX_FACTOR:.0f}×"

    here = min(abs(mean - lo), abs(mean - hi))
    zero = min(-lo, hi) if lo < 0 < hi else 0.0
    return (
        head + f": undecided; {factor(zero)} the data if the true effect is 0, "
        f"{factor(here)} if it is the current estimate {mean:+.3g}"
    )


def rope_table(fit: dict, rows: pd.DataFrame, rope: tuple[float, float]) -> list:
    """Per post-training type: the stored verdict (and whatever else the summary stores per
    type) beside the interval against the ROPE and the data that would decide."""
    stored = q.as_dict(summary_of(fit).get("by_post_training"))
    table = []
    for r in rows.itertuples():
        entry = q.as_dict(stored.get(str(r.label)))
        extra = {k: v for k, v in entry.items() if k not in ("mean", "q05", "q95")}
        table.append(
            {
                "type": r.label,
                "mean": r.mean,
                "q05": r.q05,
                "q95": r.q95,
                **{k: (fmt(v) if not isinstance(v, str) else v) for k, v in extra.items()},
                "outlook": rope_outlook(float(r.mean), float(r.q05), float(r.q95), rope),
            }
        )
    df = pd.DataFrame(table)
    columns = {c: c.replace("_", " ") for c in df.columns}
    columns.update({"q05": "5%", "q95": "95%", "outlook": "interval against the ROPE"})
    return table_from(
        df,
        columns,
        caption="Persona verdicts per post-training type (as stored with the fit) and, "
        "computed here from the stored 90% interval, its width against the ROPE and roughly "
        "how much more data (participants, at the same experiments) would decide: widths "
        "shrink about as 1/√data when participant noise limits them, more slowly when "
        "differences between experiments do.",
    )


def persona_blocks(con, persona: dict, truth: dict | None) -> list:
    rows = q.labelled_params(con, persona["fit_id"], ["persona_effect"], "post_training")
    rope = q.rope_bounds(persona.get("summary"))
    out: list = [
        Para(
            "<b>Persona.</b> Does describing the participant (age, gender, ... from the "
            "study's metadata) in the prompt help a model predict them? Effect = NLL with "
            "persona − NLL plain, per response; negative helps. " + persona_scope(persona)
        )
    ]
    out += caveats(con, persona)
    if rows.empty:
        out.append(no_data(f"{fit_caption(persona)} stores no persona_effect"))
    else:
        xlabel = f"persona − plain NLL ({persona.get('scale') or 'nats'})"
        out.append(
            Figure(
                figs.forest(rows, xlabel=xlabel, rope=rope),
                f"Persona effect by post-training type ({fit_caption(persona)})"
                + (
                    f"; shaded: region of practical equivalence [{rope[0]:g}, {rope[1]:g}]"
                    if rope
                    else ""
                )
                + ".",
                rows,
                chart="forest",
                options={"xlabel": xlabel, "rope": rope},
            )
        )
        if rope:
            out += rope_table(persona, rows, rope)
    shown = ("by_post_training",) if rope and not rows.empty else ()
    if not headline(persona, shown).empty:
        out += table_from(
            headline(persona, shown),
            caption="ROPE bounds and posterior probabilities stored with the persona fit.",
        )
    out += others_note(con, persona)
    out += truth_blocks(con, persona, truth)
    return out


def accuracy_blocks(con, accuracy: dict, truth: dict | None) -> list:
    rows = q.labelled_params(
        con, accuracy["fit_id"], ["accuracy_gap", "accuracy_gap_calibrated"], "post_training"
    )
    out: list = [
        Para(
            "<b>Accuracy and calibration.</b> Option-restricted top-1 accuracy of post-trained "
            "models against their bases (logit scale), before and after fitting a "
            "temperature per model and experiment on held-out participants. A gap that "
            "disappears after calibration reflects over-confidence rather than worse "
            "knowledge of people."
        )
    ]
    out += caveats(con, accuracy)
    if rows.empty:
        out.append(no_data(f"{fit_caption(accuracy)} stores no accuracy_gap"))
    else:
        rows["series"] = rows["parameter"].map(
            {"accuracy_gap": "raw", "accuracy_gap_calibrated": "calibrated"}
        )
        xlabel = "post − base accuracy (logit)"
        out.append(
            Figure(
                figs.forest(rows, xlabel=xlabel, series="series"),
                f"Accuracy gap by post-training type, raw and after temperature "
                f"calibration ({fit_caption(accuracy)}).",
                rows,
                chart="forest",
                options={"xlabel": xlabel, "series": "series"},
            )
        )
    if not headline(accuracy).empty:
        out += table_from(
            headline(accuracy),
            caption="Whether the gap survives calibration, as stored with the fit.",
        )
    out += others_note(con, accuracy)
    out += truth_blocks(con, accuracy, truth)
    return out
