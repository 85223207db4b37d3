"""Section 5 of the report, second part: the newest formula fit and its comparison
with the effects fit where both estimate the same quantity."""

from __future__ import annotations

from . import queries as q
from .blocks import Note, Para, esc, no_data, plural, summary_of, table_from, title
from .fit_notes import (
    caveats,
    diagnostics_line,
    fit_caption,
    forest_blocks,
)


def formula_blocks(con, fit: dict, effects: dict | None) -> list:
    """A formula fit's page: formula, terms, posterior table, diagnostics, comparison."""
    summ = summary_of(fit)
    spec = q.as_dict(fit.get("spec"))
    formula = spec.get("formula") or summ.get("formula") or "?"
    out: list = [
        Para(
            f"<b>Formula model</b> ({fit_caption(fit)}): "
            f'<font face="Courier">{esc(formula)}</font>, fitted with Bambi to the cell table '
            f"({plural(summ.get('n_cells') or 0, 'cell')}), each cell's standard error a known "
            "measurement error (as brms <i>se()</i>). Terms: "
            + (esc(", ".join(map(str, summ.get("terms") or []))) or "as in the formula")
            + f". Diagnostics: {diagnostics_line(fit)}."
        )
    ]
    out += caveats(con, fit)
    for m in summ.get("messages") or []:
        out.append(Note(esc(m), "info"))
    rows = q.all_params_rows(con, fit["fit_id"])
    if rows.empty:
        return out + [no_data(f"{fit_caption(fit)} stores no parameters")]
    scale = fit.get("scale") or "nats"
    out += forest_blocks(
        con,
        fit,
        rows,
        xlabel=f"cell value ({scale} per response)",
        caption=f"Posterior of every reported parameter of {fit_caption(fit)}: means (dots), "
        "90% credible intervals (thick), 94% HDIs (thin). Bambi names: 'a|g' is the "
        "group-level effect of a by g, '..._sigma' its standard deviation, 'sigma' the "
        "cell residual beyond the known standard errors. The predictive check is in "
        f"section {title('Diagnostics').split()[0]}.",
        first={"parameter": "parameter"},
        table=f"Posterior table of {fit_caption(fit)}.",
    )
    if effects is not None:
        out += comparison_blocks(con, effects, fit)
    return out


def same_cells(a: dict, b: dict) -> bool:
    sa = q.as_dict(a.get("selection"))
    sb = q.as_dict(b.get("selection"))
    return (
        bool(sa.get("runs"))
        and sorted(q._ints(sa.get("runs"))) == sorted(q._ints(sb.get("runs")))
        and a.get("scale") == b.get("scale")
    )


def comparison_blocks(con, effects: dict, formula: dict) -> list:
    """The built-in effects fit beside the formula fit, where they estimate the same thing."""
    if not same_cells(effects, formula):
        return [
            Para(
                f"{fit_caption(formula)} and {fit_caption(effects)} read different score runs "
                "or scales, so their estimates are not compared here.",
                "small",
            )
        ]
    out: list = []
    comp = q.comparable_params(con, int(effects["fit_id"]), int(formula["fit_id"]))
    if not comp.empty:
        out += table_from(
            comp,
            {
                "effects": f"effects fit {effects['fit_id']}",
                "e_mean": "mean",
                "e_q05": "5%",
                "e_q95": "95%",
                "formula": f"formula fit {formula['fit_id']}",
                "f_mean": "mean",
                "f_q05": "5%",
                "f_q95": "95%",
            },
            caption="The same quantities in the built-in effects model and the formula model, "
            "fitted to the same score runs (the size slope, and the standard deviations of the "
            "group terms both have).",
        )
    loo = []
    for f in (effects, formula):
        elpd = ((summary_of(f).get("loo") or {}).get("full") or {}).get("elpd_loo")
        if elpd is not None:
            se = ((summary_of(f).get("loo") or {}).get("full") or {}).get("se")
            loo.append((fit_caption(f), float(elpd), se))
    if len(loo) == 2:
        out.append(
            Para(
                "PSIS-LOO over cells: "
                + "; ".join(
                    f"{c}: elpd {v:.2f}" + (f" (SE {float(se):.2f})" if se is not None else "")
                    for c, v, se in loo
                )
                + ' (higher is better; <font face="Courier">psystats fit compare</font> '
                "gives the difference with its standard error).",
                "small",
            )
        )
    return out
