"""Section 5 of the report: the effects model (forest plot, posterior table, Cohen's d),
followed by the newest formula fit (``reports.section_formula``)."""

from __future__ import annotations

import pandas as pd

from . import queries as q
from .blocks import Section, esc, no_data, summary_of, table_from, title
from .fit_notes import (
    caveats,
    fit_caption,
    forest_blocks,
    truth_blocks,
    unit_of,
)
from .section_formula import formula_blocks


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Effects model"))
    fit = q.latest_fit(con, "effects")
    formula = q.latest_fit(con, "formula")
    if fit is None:
        if formula is None:
            return s.add(
                no_data(
                    "no effects or formula fit",
                    'Run <font face="Courier">psystats fit effects</font> or '
                    '<font face="Courier">psystats fit formula "mean ~ type + (1|family)"</font>.',
                )
            )
        return s.add(*formula_blocks(con, formula, None))
    s.add(*effects_blocks(con, fit, truth))
    if formula is not None:
        s.add(*formula_blocks(con, formula, fit))
    return s


def effects_blocks(con, fit: dict, truth: dict | None = None) -> list:
    out: list = []
    rows = q.forest_rows(con, fit["fit_id"])
    if rows.empty:
        return [no_data(f"{fit_caption(fit)} stores none of the effects model's parameters")]
    out += caveats(con, fit)
    scale = fit.get("scale") or "nats"
    out += forest_blocks(
        con,
        fit,
        rows,
        xlabel=f"post − base NLL difference ({scale} per response)",
        caption=f"Effects model ({fit_caption(fit)}): posterior means (dots), 90% credible "
        f"intervals (thick) and 94% HDIs (thin). Negative: post-training helps prediction. "
        f"Units: the size slope is {esc(unit_of(fit, 'size_slope'))}; the generation "
        f"slopes are {esc(unit_of(fit, 'generation_slope'))}; scale parameters are "
        f"standard deviations of the partially pooled terms (the table gives each row's unit).",
        first={"group": "term"},
        table="The forest plot's numbers.",
    )
    out += truth_blocks(con, fit, truth)
    out += cohens_d_blocks(con, fit)
    return out


def cohens_d_blocks(con, fit: dict) -> list:
    """The published study's per-pair mean Cohen's d beside the posterior pair mean."""
    summ = summary_of(fit)
    pairs = (summ.get("cohens_d") or {}).get("pairs")
    if not pairs:
        return []
    cd = pd.DataFrame(pairs)
    pm = q.fit_params(con, fit["fit_id"], ["pair_mean"])
    pm = pm.assign(pair=[c.get("pair", lab) for c, lab in zip(pm["coords"], pm["label"])])
    table = cd.merge(
        pm[["pair", "mean", "q05", "q95"]].rename(
            columns={"mean": "post_mean", "q05": "post_q05", "q95": "post_q95"}
        ),
        on="pair",
        how="left",
    )
    scale = fit.get("scale") or "nats"
    return list(
        table_from(
            table,
            {
                "pair": "pair",
                "n_experiments": "experiments",
                "cohens_d": "mean Cohen's d",
                "q_low": "5%",
                "q_high": "95%",
                "post_mean": "posterior pair mean",
                "post_q05": "5%",
                "post_q95": "95%",
            },
            caption="The published study's summary beside the hierarchical one. Left: per "
            "pair, the mean over experiments of Cohen's d_av (cell mean difference / pooled "
            "participant SD) with a 90% percentile bootstrap interval over experiments "
            "(blank with a single experiment). Right: the effects model's posterior "
            f"pair_mean ({esc(scale)}), which also carries participant noise and partial "
            "pooling across pairs.",
        )
    )
