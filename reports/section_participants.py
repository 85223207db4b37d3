"""The participants page: whose behaviour does post-training lose?

From the newest ``psystats fit participants`` fit's stored summary
(``fits.summary["covariates"]``, written by ``psystats.stats.participants``): per
covariate and term, the posterior mean, 90% interval, unit and P(> 0), and how many
participants lacked each covariate (left out of the fit, never silently).
"""

from __future__ import annotations

import pandas as pd

from . import queries as q
from .blocks import Para, Section, esc, no_data, summary_of, table_from, title
from .fit_notes import caveats, fit_caption, truth_blocks

QUESTION = (
    "<b>Whose behaviour does post-training lose?</b> Each participant's mean NLL per "
    "response, post-trained minus base on the same responses (outcome <i>gap</i>; or one "
    "model's NLL, outcome <i>nll</i>), regressed on the participant metadata chosen, "
    "within experiments (each (model or pair, experiment) has its own intercept and "
    "residual SD). Numeric covariates: nats per SD and per unit; categorical ones: each "
    "level against the average level. On the gap, an effect above 0 means post-training "
    'loses more of those participants\' behaviour (docs/model.md, "Participants").'
)


def covariate_rows(summary: dict) -> pd.DataFrame:
    """One row per (covariate, term) of a participants fit's summary."""
    rows = []
    for c, v in (summary.get("covariates") or {}).items():
        if v.get("kind") == "numeric":
            for key, term, unit in (
                ("effect", f"per SD ({v['sd']:.4g})", "nats per SD"),
                ("slope", "per unit", "nats per unit"),
            ):
                d = v[key]
                rows.append((c, term, d["mean"], d["q05"], d["q95"], unit, d["p_positive"],
                             v["missing"]))  # fmt: skip
        else:
            for level, d in (v.get("levels") or {}).items():
                rows.append((c, f"{level} (n={d['participants']})", d["mean"], d["q05"],
                             d["q95"], "nats vs average level", d["p_positive"],
                             v["missing"]))  # fmt: skip
    cols = ["covariate", "term", "mean", "q05", "q95", "unit", "p_positive", "missing"]
    return pd.DataFrame(rows, columns=cols)


def build(con, truth: dict | None = None) -> Section:
    s = Section(title("Participants"))
    fit = q.latest_fit(con, "participants")
    if fit is None:
        return s.add(
            no_data(
                "no participants fit",
                'Run <font face="Courier">psystats fit participants --covariates '
                "age,gender</font> (needs participant metadata).",
            )
        )
    sm = summary_of(fit)
    s.add(*caveats(con, fit))
    s.add(Para(QUESTION))
    p = sm.get("participants") or {}
    missing = ", ".join(f"{esc(k)}: {n}" for k, n in (sm.get("missing") or {}).items())
    s.add(
        Para(
            f"{fit_caption(fit)}: outcome <b>{esc(sm.get('outcome'))}</b>; "
            f"{p.get('selected', 0):,} participants selected, {p.get('used', 0):,} fitted, "
            f"{p.get('left_out', 0):,} left out for a missing covariate (participants "
            f"without each: {missing or 'none'})."
        )
    )
    rows = covariate_rows(sm)
    if rows.empty:
        return s.add(no_data(f"{fit_caption(fit)} stores no covariate effects"))
    s.add(
        *table_from(
            rows,
            {
                "covariate": "covariate",
                "term": "term",
                "mean": "mean",
                "q05": "5%",
                "q95": "95%",
                "unit": "unit",
                "p_positive": "P(>0)",
                "missing": "missing",
            },
            caption="Covariate effects (posterior mean and 90% interval, each in its unit).",
            # Four significant digits: a slope per year of age is often below 0.01 nats.
            formats={k: "{:+.4g}".format for k in ("mean", "q05", "q95")},
        )
    )
    # A simulated study's fit (psystats demo): its known covariate effects beside these.
    return s.add(*truth_blocks(con, fit, truth))
