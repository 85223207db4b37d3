"""Section 6 of the report: persona prompts and accuracy (raw and calibrated)."""

from __future__ import annotations

from . import figures as figs
from . import queries as q
from .blocks import SECTION_TITLES, Figure, Para, Section, no_data, table_from
from .fit_notes import caveats, fit_caption, headline, others_note, truth_blocks


def build(con, truth: dict | None = None) -> Section:
    s = Section(SECTION_TITLES[5])
    persona = q.latest_fit(con, "persona")
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
        rows = q.labelled_params(con, persona["fit_id"], ["persona_effect"], "post_training")
        rope = q.rope_bounds(persona.get("summary"))
        s.add(
            Para(
                "<b>Persona.</b> Does describing the participant (age, gender, ... from the "
                "study's metadata) in the prompt help a model predict them? Effect = NLL with "
                "persona − NLL plain, per response; negative helps."
            )
        )
        s.add(*caveats(con, persona))
        if rows.empty:
            s.add(no_data(f"{fit_caption(persona)} stores no persona_effect"))
        else:
            s.add(
                Figure(
                    figs.forest(
                        rows,
                        xlabel=f"persona − plain NLL ({persona.get('scale') or 'nats'})",
                        rope=rope,
                    ),
                    f"Persona effect by post-training type ({fit_caption(persona)})"
                    + (
                        f"; shaded: region of practical equivalence [{rope[0]:g}, {rope[1]:g}]"
                        if rope
                        else ""
                    )
                    + ".",
                    rows,
                )
            )
        if not headline(persona).empty:
            s.add(
                *table_from(
                    headline(persona),
                    caption="ROPE bounds and posterior probabilities stored with the persona fit.",
                )
            )
        s.add(*others_note(con, persona))
        s.add(*truth_blocks(con, persona, truth))
    if accuracy is None:
        s.add(
            no_data(
                "no accuracy fit",
                'Run <font face="Courier">psystats fit accuracy</font> '
                "(needs option sets and option scores).",
            )
        )
    else:
        rows = q.labelled_params(
            con, accuracy["fit_id"], ["accuracy_gap", "accuracy_gap_calibrated"], "post_training"
        )
        s.add(
            Para(
                "<b>Accuracy and calibration.</b> Option-restricted top-1 accuracy of post-trained "
                "models against their bases (logit scale), before and after fitting a "
                "temperature per model and experiment on held-out participants. A gap that "
                "disappears after calibration reflects over-confidence rather than worse "
                "knowledge of people."
            )
        )
        s.add(*caveats(con, accuracy))
        if rows.empty:
            s.add(no_data(f"{fit_caption(accuracy)} stores no accuracy_gap"))
        else:
            rows["series"] = rows["parameter"].map(
                {"accuracy_gap": "raw", "accuracy_gap_calibrated": "calibrated"}
            )
            s.add(
                Figure(
                    figs.forest(rows, xlabel="post − base accuracy (logit)", series="series"),
                    f"Accuracy gap by post-training type, raw and after temperature "
                    f"calibration ({fit_caption(accuracy)}).",
                    rows,
                )
            )
        if not headline(accuracy).empty:
            s.add(
                *table_from(
                    headline(accuracy),
                    caption="Whether the gap survives calibration, as stored with the fit.",
                )
            )
        s.add(*others_note(con, accuracy))
        s.add(*truth_blocks(con, accuracy, truth))
    return s
