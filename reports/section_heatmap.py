"""Section 3 of the report: the post-training effect by pair and task domain (heatmap)."""

from __future__ import annotations

from . import figures as figs
from . import queries as q
from .blocks import Figure, Para, Section, no_data, title
from .fit_notes import caveats, fit_caption, multiplicity_note


def build(con) -> Section:
    s = Section(title("Post-training effect by model and task domain"))
    fit = q.latest_fit(con, "effects")
    if fit is None:
        return s.add(
            no_data("no effects fit", 'Run <font face="Courier">psystats fit effects</font>.')
        )
    cells = q.pair_domain_effects(con, fit["fit_id"])
    if cells.empty:
        return s.add(no_data(f"{fit_caption(fit)} stores no pair_domain_effect"))
    s.add(*caveats(con, fit))
    n_cred = int(cells["credible"].sum())
    s.add(
        Figure(
            figs.effect_heatmap(cells, scale=fit.get("scale")),
            f"Expected post-minus-base NLL difference for each (post-trained model vs base) pair "
            f"in each task domain: posterior means of <i>pair_domain_effect</i> from "
            f"{fit_caption(fit)}. Blue: the post-trained model predicts people better. "
            f"A dot marks the {n_cred} of {len(cells)} cells whose 90% credible interval "
            f"excludes zero.",
            cells,
            chart="heatmap",
            options={"scale": fit.get("scale") or "nats"},
        )
    )
    s.add(Para(multiplicity_note(n_cred, len(cells)), "small"))
    return s
