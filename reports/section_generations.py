"""Section 4 of the report: base-model NLL and the post-training gap across generations."""

from __future__ import annotations

from . import figures as figs
from . import queries as q
from .blocks import Figure, Section, no_data, table_from, title
from .fit_notes import caveats, fit_caption, headline, others_note, truth_blocks, with_units


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Generations"))
    fit = q.latest_fit(con, "generations")
    if fit is None:
        return s.add(
            no_data(
                "no generations fit",
                'Run <font face="Courier">psystats fit generations</font> '
                "(needs at least two generations of a family).",
            )
        )
    curves = q.generation_curves(con, fit["fit_id"])
    if curves.empty:
        return s.add(no_data(f"{fit_caption(fit)} stores no base_nll/gap parameters"))
    s.add(*caveats(con, fit))
    s.add(
        Figure(
            figs.generations(curves),
            f"Left: base-model NLL per response across generations within each family; right: "
            f"post-minus-base gap. Lines: posterior means; bands: 90% credible intervals "
            f"({fit_caption(fit)}).",
            curves,
            chart="generations",
        )
    )
    s.add(*others_note(con, fit))
    slopes = q.generation_slopes(con, fit["fit_id"])
    if not slopes.empty:
        s.add(
            *table_from(
                with_units(fit, slopes),
                {
                    "parameter": "parameter",
                    "family": "family",
                    "mean": "mean",
                    "q05": "5%",
                    "q95": "95%",
                    "unit": "unit",
                },
                caption="Per-family slopes across generations, each in its unit.",
            )
        )
    if not headline(fit).empty:
        s.add(
            *table_from(
                headline(fit),
                caption="Headline posterior quantities stored with the fit "
                "(e.g. P(gap grows while base NLL falls) per family).",
            )
        )
    s.add(*truth_blocks(con, fit, truth))
    return s
