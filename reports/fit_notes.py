"""What every results page says about its fit: caption, caveats, other fits, headline, truth.

One place for the lines that depend on a fit's own record (``fits`` row):
how a fit is named (:func:`fit_caption`), the caveat boxes (failed gates,
stale, pipeline-check models), the other stored fits of the same kind, the
headline quantities of ``fits.summary``, the one-line diagnostics, a
simulated study's truth beside the estimates, and the multiplicity note
wherever intervals are counted.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

from . import figures as figs
from . import queries as q
from .blocks import Figure, Note, Para, esc, fmt, plural, summary_of, table_from, title


def fit_caption(fit: dict) -> str:
    name = fit.get("name")
    return (
        f"fit {fit['fit_id']} ({esc(fit['kind'])}"
        + (f" '{esc(name)}'" if isinstance(name, str) and name else "")
        + (f", condition {esc(fit['condition'])}" if fit.get("condition") else "")
        + (f", scale {esc(fit['scale'])}" if fit.get("scale") else "")
        + ")"
    )


CAVEAT = "Caveat"  # every caveat box starts with this word (tests and readers look for it)


def flag_list(flagged: list[tuple[str, str]]) -> str:
    """Flagged models grouped by their reason: 'a, b (why); c (why 2)'."""
    by_reason: dict[str, list[str]] = {}
    for name, why in flagged:
        by_reason.setdefault(why, []).append(name)
    return "; ".join(
        ", ".join(f"<b>{esc(n)}</b>" for n in names) + f" ({esc(why)})"
        for why, names in by_reason.items()
    )


def pipeline_check_note(con, models: list[str], where: str) -> list:
    """A caveat box naming the ``models`` (shown ``where``, e.g. "under condition plain")
    that are flagged as a pipeline check; empty when none is."""
    flagged = q.pipeline_checks(con, models)
    if not flagged:
        return []
    return [
        Note(
            f"<b>{CAVEAT}: {plural(len(flagged), 'model')} {esc(where)} "
            f"{'is' if len(flagged) == 1 else 'are'} flagged as a pipeline check</b>: "
            + flag_list(flagged)
            + ". Their scores check the pipeline; they are not evidence about real models.",
            "warning",
        )
    ]


def caveats(con, fit: dict, *, short: bool = False) -> list:
    """Warning boxes for a results page, from the fit's own record.

    One box when the fit missed its diagnostic gates (``fits.passed`` false;
    the failed gates from ``fits.diagnostics.problems``), one when it is
    stale (``fits.stale_reason``), and one naming the models it read that
    are flagged as pipeline checks (``models.pipeline_check``).  ``short``:
    one line for a page that repeats a fit shown in full elsewhere.
    """
    failed = fit.get("passed") is False
    stale = fit.get("stale_reason")
    stale = stale if isinstance(stale, str) and stale else None
    flagged = q.pipeline_checks(con, q.fit_models(con, fit))
    if short:
        what = [
            *(["failed its diagnostic gates"] if failed else []),
            *(["is stale"] if stale else []),
            *(
                [f"includes {plural(len(flagged), 'model')} flagged as a pipeline check"]
                if flagged
                else []
            ),
        ]
        if not what:
            return []
        return [
            Note(
                f"<b>{CAVEAT}: {fit_caption(fit)} " + " and ".join(what) + "</b> "
                "(its results page says more).",
                "warning",
            )
        ]
    out = []
    if failed:
        diag = q.as_dict(fit.get("diagnostics"))
        problems = [str(p) for p in (diag.get("problems") or [])]
        gates = "; ".join(esc(p) for p in problems) if problems else "passed = false"
        out.append(
            Note(
                f"<b>{CAVEAT}: {fit_caption(fit)} failed its diagnostic gates</b> ({gates}). "
                "It was stored only because --allow-diagnostics-failure was given: its "
                "estimates may be wrong. Refit with more draws or tuning, or a simpler model, "
                f"before reading them (section {title('Diagnostics').split()[0]} lists every "
                "gate).",
                "warning",
            )
        )
    if stale:
        out.append(
            Note(
                f"<b>{CAVEAT}: {fit_caption(fit)} is stale</b>: {esc(stale)}. Refit it to "
                "use the warehouse's current data.",
                "warning",
            )
        )
    if flagged:
        out.append(
            Note(
                f"<b>{CAVEAT}: {fit_caption(fit)} includes "
                f"{plural(len(flagged), 'model')} flagged as a pipeline check</b>: "
                + flag_list(flagged)
                + ". A pipeline check shows that scoring and fitting run end to end (and, "
                "for simulated scores, recover what was put in); its estimates say nothing "
                "about real models or about post-training.",
                "warning",
            )
        )
    return out


def others_note(con, fit: dict) -> list:
    """A line naming the other stored fits of the same kind (the page shows the newest)."""
    others = [
        f for f in q.all_fits(con) if f["kind"] == fit["kind"] and f["fit_id"] != fit["fit_id"]
    ]
    if not others:
        return []
    return [
        Para(
            f"This page shows the newest {esc(fit['kind'])} fit; also stored: "
            + "; ".join(fit_caption(f) for f in others)
            + ' (draw one with <font face="Courier">psystats plot forest --fit ID</font>).',
            "small",
        )
    ]


NOT_HEADLINE = (
    "ppc",
    "loo",
    "sampler",
    "messages",
    "notes",
    "cohens_d",
    "active_terms",
    "dropped_terms",
    "centred",
    "prior_scale",
    "sigma_cell_fixed",
    "calibration",
    "terms",
    "formula",
    "gates",
    "slopes",
    "coords",
    "scale_estimates",
    "residual_df",
    "size_center_log_params",
    "response",
    "n_cells",
    "units",
)


def headline(fit: dict, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """The fit's headline summary quantities as (quantity, value) rows (without the keys
    in ``exclude``, which the page shows in a table of its own)."""
    summ = {k: v for k, v in summary_of(fit).items() if k not in NOT_HEADLINE and k not in exclude}
    return pd.DataFrame(q.flatten(summ) if summ else [], columns=["quantity", "value"])


def diagnostics_line(fit: dict) -> str:
    d = q.as_dict(fit.get("diagnostics"))
    parts = [
        f"max R-hat {fmt(d.get('max_rhat'))}" if d.get("max_rhat") is not None else "",
        f"min bulk ESS {fmt(d.get('min_ess_bulk'))}" if d.get("min_ess_bulk") is not None else "",
        f"min tail ESS {fmt(d.get('min_ess_tail'))}" if d.get("min_ess_tail") is not None else "",
        f"{plural(d['divergences'], 'divergence')}" if d.get("divergences") is not None else "",
    ]
    passed = fit.get("passed")
    verdict = "gates met" if passed is True else "gates FAILED" if passed is False else "gates ?"
    return "; ".join(p for p in parts if p) + f" ({verdict})"


def truth_blocks(con, fit: dict, truth: dict | None) -> list:
    """A simulated study's estimates of this fit beside the truth it should recover."""
    if not truth:
        return []
    from psystats.stats.demo_study import compare, truth_fit_name

    if fit.get("name") != truth_fit_name(truth):
        return []
    table = compare(con, truth)
    # By fit: one kind of fit can estimate two parts of a truth (the persona model's
    # persona prompts and its history-window contrast).
    table = table[table["fit_id"] == int(fit["fit_id"])]
    if table.empty:
        return []
    inside = int(table["inside"].sum())
    return list(
        table_from(
            table,
            {
                "parameter": "parameter",
                "level": "level",
                "truth": "truth",
                "mean": "estimate",
                "q05": "5%",
                "q95": "95%",
                "inside": "truth inside",
            },
            caption=f"SIMULATED study ({fit_caption(fit)}): each estimate beside the truth "
            f"the simulation put in; {inside} of {len(table)} truths lie inside their 90% "
            f"interval. {coverage_range(len(table))}",
        )
    )


# ------------------------------------------------------------ counted intervals


def binomial_range(n: int, p: float) -> tuple[int, int]:
    """The central 90% range of a Binomial(n, p) count."""
    return int(stats.binom.ppf(0.05, n, p)), int(stats.binom.ppf(0.95, n, p))


def coverage_range(n: int, level: float = 0.9) -> str:
    """What a count of truths inside ``n`` calibrated ``level`` intervals should look like."""
    lo, hi = binomial_range(n, level)
    return (
        f"With {plural(n, 'calibrated interval')}, {lo} to {hi} inside is typical (central "
        f"90% of a Binomial({n}, {level:g})); intervals of one fit are correlated, so the "
        "count varies more than that."
    )


def multiplicity_note(n_excluding: int, n: int, level: float = 0.9) -> str:
    """The multiplicity caution for a count of intervals that exclude zero."""
    p = 1 - level
    _, hi = binomial_range(n, p)
    return (
        f"{n_excluding} of {n} {int(level * 100)}% intervals exclude zero. These are {n} "
        "marginal intervals read together, not adjusted for multiplicity: if every true "
        f"effect were zero, about {n * p:.1f} of {n} calibrated intervals would exclude zero "
        f"by chance (up to {hi} in 19 of 20 such studies). Partial pooling shrinks the "
        "estimates toward each other, which tempers this but does not remove it; read a "
        "single marked cell as a lead, not a finding."
    )


# ------------------------------------------------------------------ units

# How a generation slope is measured when the fit does not store its unit (warehouses
# from before fit_params.unit): from the fit's own generation scale.
GENERATION_SCALE_UNITS = {
    "rank": "per generation step (rank within family)",
    "date": "per year since the family's first release",
    "order": "per unit of models.generation_order",
}


def unit_of(fit: dict, parameter: str, stored: object = None) -> str:
    """The unit of one reported parameter: ``fit_params.unit`` when stored, else the
    summary's ``units`` (a mapping, or one string for the slopes), else what the fit's
    recorded generation scale implies for a generation slope; '' when unknown."""
    if isinstance(stored, str) and stored:
        return stored
    units = summary_of(fit).get("units")
    if isinstance(units, dict) and isinstance(units.get(parameter), str):
        return units[parameter]
    if "slope" not in parameter:
        return ""
    if isinstance(units, str) and units:
        return units
    measure = str(fit.get("scale") or "nats")
    spec = q.as_dict(fit.get("spec"))
    if parameter.startswith("generation_slope"):
        scale = str(spec.get("generation_scale") or "rank")
        return f"{measure} {GENERATION_SCALE_UNITS.get(scale, f'per unit of {scale}')}"
    if parameter in ("base_slope", "gap_slope"):
        return f"{measure} {GENERATION_SCALE_UNITS['order']}"
    if parameter == "size_slope":
        return f"{measure} per unit of log parameter count"
    return ""


def with_units(fit: dict, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (with a ``parameter`` column) with a ``unit`` column for every row."""
    stored = (
        rows["unit"] if "unit" in rows.columns else pd.Series([None] * len(rows), index=rows.index)
    )
    return rows.assign(unit=[unit_of(fit, str(p), s) for p, s in zip(rows["parameter"], stored)])


# A stored fit's posterior table (fit_params columns -> headings), after its name column.
POSTERIOR_COLUMNS = {
    "label": "level",
    "mean": "mean",
    "sd": "sd",
    "q05": "5%",
    "q95": "95%",
    "r_hat": "R-hat",
    "ess_bulk": "ESS bulk",
}


def forest_blocks(
    con, fit: dict, rows: pd.DataFrame, *, xlabel: str, caption: str, first: dict, table: str
) -> list:
    """A fit's forest plot (interactive in the HTML), the other stored fits of its kind, and
    the plot's numbers with each row's unit.  ``first``: the table's leading column."""
    rows = with_units(fit, rows)
    return [
        Figure(
            figs.forest(rows, xlabel=xlabel),
            caption,
            rows,
            chart="forest",
            options={"xlabel": xlabel},
        ),
        *others_note(con, fit),
        *table_from(rows, {**first, **POSTERIOR_COLUMNS, "unit": "unit"}, caption=table),
    ]
