"""What the report says: sections of headings, paragraphs, tables and figures.

``build_report(con)`` reads the warehouse (through ``reports.queries``) and
returns a :class:`Report`, a plain list of blocks per section.  Renderers
(``reports.pdf``, ``reports.html``) only lay these blocks out, so the PDF and
HTML say the same thing, and tests can inspect a report's content (and the
data behind each figure, kept on ``Figure.data``) without parsing a PDF.

Paragraph text may use the tags ``<b>``, ``<i>`` and ``<font face="Courier">``
(understood by reportlab and, translated, by HTML); every value that comes
from the warehouse goes through :func:`esc` first.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from . import figures as figs
from . import queries as q

SECTION_TITLES = (
    "1 Data",
    "2 NLL against model size",
    "3 Post-training effect by model and task domain",
    "4 Generations",
    "5 Effects model",
    "6 Persona and accuracy",
    "7 Diagnostics",
    "8 Methods",
)
MAX_TABLE_ROWS = 60  # longer tables are cut with a pointer to `psystats sql`
SOFTWARE = (
    "psystats",
    "numpy",
    "pandas",
    "scipy",
    "duckdb",
    "pymc",
    "pytensor",
    "nutpie",
    "arviz",
    "torch",
    "transformers",
    "matplotlib",
    "reportlab",
    "pypdf",
)


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


def _summary(fit: dict) -> dict:
    """A fit's ``summary`` JSON as a dict (empty when missing or not an object)."""
    summ = fit.get("summary")
    return summ if isinstance(summ, dict) else {}


def esc(v: Any) -> str:
    return escape("" if v is None else str(v))


# ---------------------------------------------------------------- blocks


@dataclass
class Para:
    text: str  # reportlab mini-markup, values escaped
    style: str = "body"  # body | small | code


@dataclass
class Note:
    text: str  # a boxed callout (warnings, "no data")
    kind: str = "info"  # info | warning


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str | None = None
    numeric: list[bool] | None = None  # right-align these columns


@dataclass
class Figure:
    figure: Any  # matplotlib Figure
    caption: str
    data: Any = None  # the frame the figure was drawn from (tests read it)


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Report:
    title: str
    subtitle: str
    front: list  # blocks before section 1 (notes, headline counts)
    sections: list[Section]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def section(self, number: int) -> Section:
        return self.sections[number - 1]

    def close(self) -> None:
        """Release the matplotlib figures (they hold memory until closed)."""
        import matplotlib.pyplot as plt

        for f in self.figures():
            plt.close(f.figure)


# ------------------------------------------------------------ formatting


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 experiment``, ``2 experiments``, ``1 study``/``3 studies`` (``many`` when irregular)."""
    n = int(n)
    return f"{n:,} " + (noun if n == 1 else (many or noun + "s"))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, (_dt.datetime, pd.Timestamp)):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def table_from(
    df: pd.DataFrame,
    columns: dict[str, str] | None = None,
    *,
    caption: str | None = None,
    formats: dict[str, Any] | None = None,
    max_rows: int = MAX_TABLE_ROWS,
) -> list:
    """A Table block (plus a note when rows were cut) from a DataFrame."""
    columns = columns or {c: c for c in df.columns}
    formats = formats or {}
    shown = df.head(max_rows)
    rows = []
    for d in shown.to_dict("records"):
        rows.append([esc(formats[c](d[c]) if c in formats else fmt(d[c])) for c in columns])
    numeric = [
        pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        for c in columns
    ]
    out: list = [Table(list(columns.values()), rows, caption, numeric)]
    if len(df) > max_rows:
        out.append(
            Para(
                f"... and {len(df) - max_rows:,} more rows (query them with "
                f'<font face="Courier">psystats sql</font>).',
                "small",
            )
        )
    return out


def no_data(what: str, how: str | None = None) -> Note:
    text = f"No data for this section: {what}."
    if how:
        text += f" {how}"
    return Note(text)


# ------------------------------------------------------------ sections


def _section_data(con) -> Section:
    s = Section(SECTION_TITLES[0])
    ov = q.overview(con)
    if ov["participants"] == 0:
        return s.add(
            no_data(
                "the warehouse holds no participants",
                'Ingest studies with <font face="Courier">psystats ingest PATH</font>.',
            )
        )
    s.add(
        Para(
            f"The warehouse holds <b>{plural(ov['studies'], 'study', 'studies')}</b> with "
            f"<b>{plural(ov['experiments'], 'experiment')}</b> in "
            f"<b>{plural(ov['domains'], 'task domain')}</b>: "
            f"<b>{plural(ov['participants'], 'participant')}</b> and "
            f"<b>{plural(ov['responses'], 'response')}</b>. "
            f"<b>{plural(ov['models'], 'model')}</b> "
            f"{'is' if ov['models'] == 1 else 'are'} registered; "
            f"<b>{plural(ov['score_runs'], 'scoring run')}</b> "
            f"wrote <b>{plural(ov['scores'], 'response score')}</b>; "
            f"<b>{plural(ov['fits'], 'Bayesian fit')}</b> "
            f"{'is' if ov['fits'] == 1 else 'are'} stored."
        )
    )
    st = q.studies_table(con)
    pct = lambda v: f"{v:.0f}%" if fmt(v) else ""  # noqa: E731 (NULL/NaN: blank)
    s.add(
        *table_from(
            st,
            {
                "study": "study",
                "domains": "domain",
                "experiments": "exps",
                "participants": "participants",
                "responses": "responses",
                "age": "age",
                "gender": "gender",
                "nationality": "nation.",
                "education": "educ.",
                "diagnosis": "diag.",
                "other_metadata": "other",
            },
            caption="Studies. Metadata columns: share of participants with that field.",
            formats={c: pct for c in (*q.METADATA_FIELDS, "other_metadata")},
        )
    )
    s.add(
        *table_from(
            q.domains_table(con), caption="Task domains (first listed domain of each experiment)."
        )
    )
    models = q.models_table(con)
    if models.empty:
        s.add(
            no_data(
                "no models are registered",
                'Register one with <font face="Courier">psystats models add SOURCE</font>.',
            )
        )
    else:
        s.add(
            *table_from(
                models,
                {
                    "name": "model",
                    "family": "family",
                    "generation": "gen.",
                    "n_params": "parameters",
                    "post_training": "post-training",
                    "base_model": "base",
                },
                caption="Registered models (parameter counts are read from the weights).",
                formats={"n_params": figs.human_params},
            )
        )
    runs = q.runs_table(con)
    if runs.empty:
        s.add(
            no_data(
                "no scoring runs",
                'Score with <font face="Courier">psystats score --model NAME</font>.',
            )
        )
    else:
        # Imported runs have no weights hash: NULL arrives as None or NaN.
        sha = lambda v: v[:12] if isinstance(v, str) else ""  # noqa: E731
        s.add(
            *table_from(
                runs,
                {
                    "run_id": "run",
                    "model": "model",
                    "condition": "condition",
                    "scorer": "scorer",
                    "status": "status",
                    "scored": "responses",
                    "n_skipped": "skipped",
                    "device": "device",
                    "dtype": "dtype",
                    "finished_at": "finished",
                    "psystats_version": "version",
                    "weights_sha256": "weights sha256",
                },
                caption="Scoring runs and their provenance (weights hash: first 12 hex digits).",
                formats={"weights_sha256": sha},
            )
        )
        failed = runs[runs["status"] != "complete"]
        if len(failed):
            s.add(
                Note(
                    f"{len(failed)} run(s) are not complete ("
                    + ", ".join(f"run {r.run_id}: {esc(r.status)}" for r in failed.itertuples())
                    + "); only complete runs enter the figures and fits.",
                    "warning",
                )
            )
    return s


def _section_size(con) -> Section:
    s = Section(SECTION_TITLES[1])
    conditions = q.conditions_scored(con)
    if not conditions:
        return s.add(no_data("no complete scoring runs"))
    for cond in conditions:
        table, info = q.model_nll(con, cond)
        if table.empty:
            s.add(no_data(f"no valid scores under condition '{esc(cond)}'"))
            continue
        missing = table[table["n_params"].isna()]
        plotted = table[table["n_params"].notna()]
        flagged = q.pipeline_checks(con, [str(m) for m in table["model"]])
        if flagged:
            s.add(
                Note(
                    f"<b>{CAVEAT}: {plural(len(flagged), 'model')} under condition "
                    f"{esc(cond)} {'is' if len(flagged) == 1 else 'are'} flagged as a "
                    "pipeline check</b>: "
                    + _flag_list(flagged)
                    + ". Their scores check the pipeline; they are not evidence about "
                    "real models.",
                    "warning",
                )
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
                    figs.nll_by_size(plotted, condition=cond, level=info["level"]), caption, plotted
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
                caption=f"Per-model values behind the figure (condition {esc(cond)}).",
                formats={"n_params": figs.human_params},
            )
        )
    return s


def _fit_caption(fit: dict) -> str:
    name = fit.get("name")
    return (
        f"fit {fit['fit_id']} ({esc(fit['kind'])}"
        + (f" '{esc(name)}'" if isinstance(name, str) and name else "")
        + (f", condition {esc(fit['condition'])}" if fit.get("condition") else "")
        + (f", scale {esc(fit['scale'])}" if fit.get("scale") else "")
        + ")"
    )


CAVEAT = "Caveat"  # every caveat box starts with this word (tests and readers look for it)


def _flag_list(flagged: list[tuple[str, str]]) -> str:
    """Flagged models grouped by their reason: 'a, b (why); c (why 2)'."""
    by_reason: dict[str, list[str]] = {}
    for name, why in flagged:
        by_reason.setdefault(why, []).append(name)
    return "; ".join(
        ", ".join(f"<b>{esc(n)}</b>" for n in names) + f" ({esc(why)})"
        for why, names in by_reason.items()
    )


def _caveats(con, fit: dict, *, short: bool = False) -> list:
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
                f"<b>{CAVEAT}: {_fit_caption(fit)} " + " and ".join(what) + "</b> "
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
                f"<b>{CAVEAT}: {_fit_caption(fit)} failed its diagnostic gates</b> ({gates}). "
                "It was stored only because --allow-diagnostics-failure was given: its "
                "estimates may be wrong. Refit with more draws or tuning, or a simpler model, "
                "before reading them (section 7 lists every gate).",
                "warning",
            )
        )
    if stale:
        out.append(
            Note(
                f"<b>{CAVEAT}: {_fit_caption(fit)} is stale</b>: {esc(stale)}. Refit it to "
                "use the warehouse's current data.",
                "warning",
            )
        )
    if flagged:
        out.append(
            Note(
                f"<b>{CAVEAT}: {_fit_caption(fit)} includes "
                f"{plural(len(flagged), 'model')} flagged as a pipeline check</b>: "
                + _flag_list(flagged)
                + ". A pipeline check shows that scoring and fitting run end to end (and, "
                "for simulated scores, recover what was put in); its estimates say nothing "
                "about real models or about post-training.",
                "warning",
            )
        )
    return out


def _section_heatmap(con) -> Section:
    s = Section(SECTION_TITLES[2])
    fit = q.latest_fit(con, "effects")
    if fit is None:
        return s.add(
            no_data("no effects fit", 'Run <font face="Courier">psystats fit effects</font>.')
        )
    cells = q.pair_domain_effects(con, fit["fit_id"])
    if cells.empty:
        return s.add(no_data(f"{_fit_caption(fit)} stores no pair_domain_effect"))
    s.add(*_caveats(con, fit))
    n_cred = int(cells["credible"].sum())
    s.add(
        Figure(
            figs.effect_heatmap(cells, scale=fit.get("scale")),
            f"Expected post-minus-base NLL difference for each (post-trained model vs base) pair "
            f"in each task domain: posterior means of <i>pair_domain_effect</i> from "
            f"{_fit_caption(fit)}. Blue: the post-trained model predicts people better. "
            f"A dot marks the {n_cred} of {len(cells)} cells whose 90% credible interval "
            f"excludes zero.",
            cells,
        )
    )
    return s


# Keys of fits.summary shown elsewhere (section 7: checks; section 8: terms,
# messages, sampler), or too long for a headline table.
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
)


def _headline(fit: dict) -> pd.DataFrame:
    """The fit's headline summary quantities as (quantity, value) rows."""
    summ = {k: v for k, v in _summary(fit).items() if k not in NOT_HEADLINE}
    return pd.DataFrame(q.flatten(summ) if summ else [], columns=["quantity", "value"])


def _section_generations(con, truth: dict | None = None) -> Section:
    s = Section(SECTION_TITLES[3])
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
        return s.add(no_data(f"{_fit_caption(fit)} stores no base_nll/gap parameters"))
    s.add(*_caveats(con, fit))
    s.add(
        Figure(
            figs.generations(curves),
            f"Left: base-model NLL per response across generations within each family; right: "
            f"post-minus-base gap. Lines: posterior means; bands: 90% credible intervals "
            f"({_fit_caption(fit)}).",
            curves,
        )
    )
    s.add(*_others_note(con, fit))
    slopes = q.generation_slopes(con, fit["fit_id"])
    if not slopes.empty:
        s.add(
            *table_from(
                slopes,
                {
                    "parameter": "parameter",
                    "family": "family",
                    "mean": "mean",
                    "q05": "5%",
                    "q95": "95%",
                },
                caption="Per-family slopes across generations (per generation step).",
            )
        )
    if not _headline(fit).empty:
        s.add(
            *table_from(
                _headline(fit),
                caption="Headline posterior quantities stored with the fit "
                "(e.g. P(gap grows while base NLL falls) per family).",
            )
        )
    s.add(*_truth_blocks(con, fit, truth))
    return s


def _section_forest(con, truth: dict | None = None) -> Section:
    s = Section(SECTION_TITLES[4])
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
        return s.add(*_formula_blocks(con, formula, None))
    s.add(*_effects_blocks(con, fit, truth))
    if formula is not None:
        s.add(*_formula_blocks(con, formula, fit))
    return s


def _others_note(con, fit: dict) -> list:
    """A line naming the other stored fits of the same kind (the page shows the newest)."""
    others = [
        f for f in q.all_fits(con) if f["kind"] == fit["kind"] and f["fit_id"] != fit["fit_id"]
    ]
    if not others:
        return []
    return [
        Para(
            f"This page shows the newest {esc(fit['kind'])} fit; also stored: "
            + "; ".join(_fit_caption(f) for f in others)
            + ' (draw one with <font face="Courier">psystats plot forest --fit ID</font>).',
            "small",
        )
    ]


def _effects_blocks(con, fit: dict, truth: dict | None = None) -> list:
    out: list = []
    rows = q.forest_rows(con, fit["fit_id"])
    if rows.empty:
        return [no_data(f"{_fit_caption(fit)} stores none of the effects model's parameters")]
    out += _caveats(con, fit)
    scale = fit.get("scale") or "nats"
    out.append(
        Figure(
            figs.forest(rows, xlabel=f"post − base NLL difference ({scale} per response)"),
            f"Effects model ({_fit_caption(fit)}): posterior means (dots), 90% credible "
            f"intervals (thick) and 94% HDIs (thin). Negative: post-training helps prediction. "
            f"Slopes are per unit of centred log parameter count and per generation step; "
            f"scale parameters are standard deviations of the partially pooled terms.",
            rows,
        )
    )
    out += _others_note(con, fit)
    out += table_from(
        rows,
        {"group": "term", **POSTERIOR_COLUMNS},
        caption="The forest plot's numbers.",
    )
    out += _truth_blocks(con, fit, truth)
    out += _cohens_d_blocks(con, fit)
    return out


def _diagnostics_line(fit: dict) -> str:
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


def _formula_blocks(con, fit: dict, effects: dict | None) -> list:
    """A formula fit's page: formula, terms, posterior table, diagnostics, comparison."""
    summ = _summary(fit)
    spec = q.as_dict(fit.get("spec"))
    formula = spec.get("formula") or summ.get("formula") or "?"
    out: list = [
        Para(
            f"<b>Formula model</b> ({_fit_caption(fit)}): "
            f'<font face="Courier">{esc(formula)}</font>, fitted with Bambi to the cell table '
            f"({plural(summ.get('n_cells') or 0, 'cell')}), each cell's standard error a known "
            "measurement error (as brms <i>se()</i>). Terms: "
            + (esc(", ".join(map(str, summ.get("terms") or []))) or "as in the formula")
            + f". Diagnostics: {_diagnostics_line(fit)}."
        )
    ]
    out += _caveats(con, fit)
    for m in summ.get("messages") or []:
        out.append(Note(esc(m), "info"))
    rows = q.all_params_rows(con, fit["fit_id"])
    if rows.empty:
        return out + [no_data(f"{_fit_caption(fit)} stores no parameters")]
    scale = fit.get("scale") or "nats"
    out.append(
        Figure(
            figs.forest(rows, xlabel=f"cell value ({scale} per response)"),
            f"Posterior of every reported parameter of {_fit_caption(fit)}: means (dots), 90% "
            "credible intervals (thick), 94% HDIs (thin). Bambi names: 'a|g' is the "
            "group-level effect of a by g, '..._sigma' its standard deviation, 'sigma' the "
            "cell residual beyond the known standard errors. The predictive check is in "
            "section 7.",
            rows,
        )
    )
    out += _others_note(con, fit)
    out += table_from(
        rows,
        {"parameter": "parameter", **POSTERIOR_COLUMNS},
        caption=f"Posterior table of {_fit_caption(fit)}.",
    )
    if effects is not None:
        out += _comparison_blocks(con, effects, fit)
    return out


def _same_cells(a: dict, b: dict) -> bool:
    sa = q.as_dict(a.get("selection"))
    sb = q.as_dict(b.get("selection"))
    return (
        bool(sa.get("runs"))
        and sorted(q._ints(sa.get("runs"))) == sorted(q._ints(sb.get("runs")))
        and a.get("scale") == b.get("scale")
    )


def _comparison_blocks(con, effects: dict, formula: dict) -> list:
    """The built-in effects fit beside the formula fit, where they estimate the same thing."""
    if not _same_cells(effects, formula):
        return [
            Para(
                f"{_fit_caption(formula)} and {_fit_caption(effects)} read different score runs "
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
        elpd = ((_summary(f).get("loo") or {}).get("full") or {}).get("elpd_loo")
        if elpd is not None:
            se = ((_summary(f).get("loo") or {}).get("full") or {}).get("se")
            loo.append((_fit_caption(f), float(elpd), se))
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


def _truth_blocks(con, fit: dict, truth: dict | None) -> list:
    """A simulated study's estimates of this fit beside the truth it should recover."""
    if not truth:
        return []
    from psystats.stats.demo_study import compare, truth_fit_name

    if fit.get("name") != truth_fit_name(truth):
        return []
    table = compare(con, truth)
    table = table[(table["kind"] == fit["kind"]) & (table["fit_id"] == int(fit["fit_id"]))]
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
            caption=f"SIMULATED study ({_fit_caption(fit)}): each estimate beside the truth "
            f"the simulation put in; {inside} of {len(table)} truths lie inside their 90% "
            "interval (about 9 in 10 expected when the fit is calibrated).",
        )
    )


def _cohens_d_blocks(con, fit: dict) -> list:
    """The published study's per-pair mean Cohen's d beside the posterior pair mean."""
    summ = _summary(fit)
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


def _section_persona_accuracy(con, truth: dict | None = None) -> Section:
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
        s.add(*_caveats(con, persona))
        if rows.empty:
            s.add(no_data(f"{_fit_caption(persona)} stores no persona_effect"))
        else:
            s.add(
                Figure(
                    figs.forest(
                        rows,
                        xlabel=f"persona − plain NLL ({persona.get('scale') or 'nats'})",
                        rope=rope,
                    ),
                    f"Persona effect by post-training type ({_fit_caption(persona)})"
                    + (
                        f"; shaded: region of practical equivalence [{rope[0]:g}, {rope[1]:g}]"
                        if rope
                        else ""
                    )
                    + ".",
                    rows,
                )
            )
        if not _headline(persona).empty:
            s.add(
                *table_from(
                    _headline(persona),
                    caption="ROPE bounds and posterior probabilities stored with the persona fit.",
                )
            )
        s.add(*_others_note(con, persona))
        s.add(*_truth_blocks(con, persona, truth))
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
        s.add(*_caveats(con, accuracy))
        if rows.empty:
            s.add(no_data(f"{_fit_caption(accuracy)} stores no accuracy_gap"))
        else:
            rows["series"] = rows["parameter"].map(
                {"accuracy_gap": "raw", "accuracy_gap_calibrated": "calibrated"}
            )
            s.add(
                Figure(
                    figs.forest(rows, xlabel="post − base accuracy (logit)", series="series"),
                    f"Accuracy gap by post-training type, raw and after temperature "
                    f"calibration ({_fit_caption(accuracy)}).",
                    rows,
                )
            )
        if not _headline(accuracy).empty:
            s.add(
                *table_from(
                    _headline(accuracy),
                    caption="Whether the gap survives calibration, as stored with the fit.",
                )
            )
        s.add(*_others_note(con, accuracy))
        s.add(*_truth_blocks(con, accuracy, truth))
    return s


def _section_diagnostics(con) -> Section:
    s = Section(SECTION_TITLES[6])
    diag = q.diagnostics_table(con)
    if diag.empty:
        return s.add(no_data("no fits"))
    s.add(
        Para(
            "Gates: R-hat ≤ 1.01, bulk and tail ESS ≥ 400, no divergent transitions; "
            "E-BFMI below 0.3 is flagged. A fit that misses a gate is stored only when "
            '<font face="Courier">--allow-diagnostics-failure</font> was given.'
        )
    )
    s.add(
        *table_from(
            diag,
            {
                "fit_id": "fit",
                "kind": "kind",
                "condition": "condition",
                "sampler": "sampler",
                "chains": "chains",
                "draws": "draws",
                "max_rhat": "max R-hat",
                "min_ess_bulk": "min ESS bulk",
                "min_ess_tail": "min ESS tail",
                "divergences": "diverg.",
                "min_bfmi": "min E-BFMI",
                "passed": "passed",
                "seconds": "seconds",
            },
            caption="Diagnostics per fit.",
        )
    )
    for r in diag.itertuples():
        if r.problems:
            s.add(Note(f"fit {r.fit_id} ({esc(r.kind)}): {esc(r.problems)}", "warning"))
    # Checks the fits summarised in fits.summary (posterior predictive coverage, PSIS-LOO).
    fits = q.all_fits(con)
    by_id = {int(f["fit_id"]): f for f in fits}
    newest = {f["kind"]: f for f in fits}  # ordered by fit_id: the last one wins
    ppc_rows, loo_rows = _check_rows(list(newest.values()))
    if ppc_rows:
        s.add(
            *table_from(
                pd.DataFrame(ppc_rows, columns=list(PPC_COLUMNS.values())),
                caption="Posterior predictive checks stored with the newest fit of each kind: "
                "'90% predictive coverage' is the share of observations inside their 90% "
                "posterior predictive interval (about 0.9 when the model fits); 'PPC p-value, "
                "T = minimum' is P(T(replicated) ≥ T(observed)) for the statistic T = minimum "
                "of the standardised observations (one p-value per statistic, not the smallest "
                "p-value; values near 0 or 1 signal misfit).",
            )
        )
    if loo_rows:
        s.add(
            *table_from(
                pd.DataFrame(loo_rows, columns=list(LOO_COLUMNS.values())),
                caption="PSIS-LOO of the newest fit of each kind (expected log predictive "
                "density; Pareto k above 0.7 marks observations whose estimate is unreliable).",
            )
        )
    # One predictive check plot per kind: the newest fit of each kind that stored one.
    drawn = 0
    for kind in diag["kind"].unique():
        for r in diag[diag["kind"] == kind].sort_values("fit_id", ascending=False).itertuples():
            idata = _load_idata(con, r.fit_id)
            fig = figs.ppc(idata, title=f"fit {r.fit_id} ({kind})") if idata is not None else None
            if fig is not None:
                s.add(*_caveats(con, by_id[int(r.fit_id)], short=True))
                s.add(
                    Figure(
                        fig,
                        f"Posterior predictive check of fit {r.fit_id} ({esc(kind)}). Left: "
                        f"observed cumulative distribution against 50 replicated data sets. "
                        f"Right: each observation (dot; cross when outside) against its 90% "
                        f"predictive interval.",
                    )
                )
                drawn += 1
                break
    if not drawn:
        s.add(
            Note(
                "No posterior predictive plot: no stored fit's NetCDF has posterior_predictive "
                "and observed_data groups"
                + (" (the summaries above come from the fits)." if ppc_rows or loo_rows else ".")
            )
        )
    return s


PPC_STATISTICS = {"mean": "mean", "sd": "SD", "min": "minimum", "max": "maximum"}
PPC_COLUMNS = {
    "fit": "fit",
    "kind": "kind",
    "observed": "observed",
    "coverage_90": "90% predictive coverage",
    **{f"p_{k}": f"PPC p-value, T = {v}" for k, v in PPC_STATISTICS.items()},
}
LOO_COLUMNS = {
    "fit": "fit",
    "kind": "kind",
    "part": "part",
    "elpd_loo": "elpd (LOO)",
    "se": "SE",
    "p_loo": "p_loo",
    "n": "observations",
    "k": "Pareto k > 0.7",
}


def _check_rows(fits: list[dict]) -> tuple[list[list], list[list]]:
    """One row per observed variable for the predictive checks, one per LOO part."""
    ppc_rows, loo_rows = [], []
    for f in fits:
        summ = _summary(f)
        ppc = q.as_dict(summ.get("ppc"))
        per_var = (
            {"": ppc}
            if "p_values" in ppc or "coverage_90" in ppc
            else {k: v for k, v in ppc.items() if isinstance(v, dict)}
        )
        for var, d in per_var.items():
            pv = q.as_dict(d.get("p_values"))
            ppc_rows.append(
                [f["fit_id"], f["kind"], var or "(all)", fmt(d.get("coverage_90"))]
                + [fmt(pv.get(k)) for k in PPC_STATISTICS]
            )
        loo = q.as_dict(summ.get("loo"))
        parts: dict[str, Any] = {"full": loo.get("full")}
        for group in ("by_variable", "without"):
            for name, sub in q.as_dict(loo.get(group)).items():
                sub = q.as_dict(sub)
                parts[f"{'without ' if group == 'without' else ''}{name}"] = sub.get("loo", sub)
        for part, entry in parts.items():
            d = q.as_dict(entry)
            if d.get("elpd_loo") is None:
                continue
            loo_rows.append(
                [
                    f["fit_id"],
                    f["kind"],
                    part,
                    fmt(d.get("elpd_loo")),
                    fmt(d.get("se")),
                    fmt(d.get("p_loo")),
                    fmt(d.get("n_observations", d.get("n_cells"))),
                    fmt(d.get("pareto_k_over_0.7")),
                ]
            )
    return ppc_rows, loo_rows


def check_label(key: str) -> str:
    """A readable name for a flattened ``ppc``/``loo`` key.

    ``ppc.p_values.min`` is the p-value of the statistic "minimum", not the
    minimum of the p-values: say so.
    """
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] == "p_values":
        stat = PPC_STATISTICS.get(parts[-1], parts[-1])
        where = ".".join(parts[1:-2])
        return f"PPC p-value of T = {stat}" + (f" ({where})" if where else "")
    if parts[-1] == "coverage_90":
        where = ".".join(parts[1:-1])
        return "90% predictive coverage" + (f" ({where})" if where else "")
    if parts[-1] == "draws" and parts[0] == "ppc":
        return "PPC replicated draws" + (f" ({'.'.join(parts[1:-1])})" if len(parts) > 2 else "")
    return key


def _load_idata(con, fit_id: int):
    """A stored fit's posterior through the stats layer (``store.load_fit``), or None.

    A missing or unreadable NetCDF file is reported as "no check", not a crash.
    """
    from psystats.stats.store import load_fit
    from psystats.warehouse.errors import WarehouseError

    try:
        return load_fit(con, int(fit_id))[1]
    except (WarehouseError, OSError, ValueError):
        return None


# ----------------------------------------------------------------- methods

# How each term of the effects model is written; only fitted terms are shown.
EFFECT_TERMS = (
    ("intercept", r"\alpha"),
    ("type", r"\beta^{\mathrm{type}}_{t[c]}"),
    ("family", r"\beta^{\mathrm{family}}_{f[c]}"),
    ("size_slope", r"\beta^{\mathrm{size}}\,\log N_{c}"),
    ("generation_slope", r"(\gamma + \gamma_{f[c]})\,g_{c}"),
    ("domain", r"\delta_{d[c]}"),
    ("type_domain", r"(\beta\delta)_{t[c],d[c]}"),
    ("experiment", r"u_{e[c]}"),
    ("pair", r"v_{p[c]}"),
)

KIND_WORDS = {
    "effects": (
        "For each (post-trained, base) pair and experiment (a cell c), the paired "
        "per-participant difference in mean NLL per response (post minus base) is "
        "summarised by its sufficient statistics, and the cell mean μ_c is modelled "
        "additively with partially pooled terms, as in the equation below. Only terms "
        "the fit stored are shown."
    ),
    "generations": (
        "Base-model NLL and the post-minus-base gap per family and generation, "
        "hierarchical over experiments, with per-family slopes over generations."
    ),
    "persona": (
        "NLL with a persona prompt minus NLL with the plain prompt per participant, "
        "for the same model and responses, hierarchical over experiments and models; "
        "a region of practical equivalence turns 'no benefit' into a posterior probability."
    ),
    "accuracy": (
        "Option-restricted top-1 hits per participant, binomial-logit hierarchical "
        "model of post-trained versus base models, repeated after temperature "
        "calibration fitted on held-out participants."
    ),
}


def _effects_terms_blocks(fit: dict) -> list:
    """Terms kept and dropped, with the reasons, and the fit's own messages."""
    summ = _summary(fit)
    active = summ.get("active_terms") or []
    dropped = summ.get("dropped_terms") or {}
    centred = summ.get("centred") or {}
    if not active and not dropped:
        return []
    rows = [
        (
            t,
            "fitted",
            ("centred" if centred[t] else "non-centred") if t in centred else "",
        )
        for t in active
    ] + [(t, "dropped", why) for t, why in dropped.items()]
    if summ.get("sigma_cell_fixed"):
        rows.append(("sigma_cell", "fixed at 0", "too few cells beyond the location parameters"))
    out = list(
        table_from(
            pd.DataFrame(rows, columns=["term", "status", "parameterisation / reason"]),
            caption=f"Terms of fit {fit['fit_id']}: {plural(len(active), 'term')} fitted, "
            f"{plural(len(dropped), 'term')} dropped (with the reason).",
        )
    )
    for m in summ.get("messages") or []:
        out.append(Note(esc(m), "info"))
    return out


def _compact_selection(sel: dict) -> dict:
    """``fits.selection`` with its per-model run lists as one line (ids still all shown)."""
    out = dict(sel)
    runs = sel.get("runs")
    if isinstance(runs, (dict, list)) and runs:
        ids = sorted(q._ints(runs))
        models = f" of {plural(len(runs), 'model')}" if isinstance(runs, dict) else ""
        out["runs"] = f"{plural(len(ids), 'score run')}{models}: " + ", ".join(map(str, ids))
    pairs = sel.get("pairs")
    if isinstance(pairs, list) and len(pairs) > 3:
        out["pairs"] = f"{len(pairs)}: " + "; ".join(map(str, pairs))
    return out


def _versions() -> list[tuple[str, str]]:
    out = [("python", platform.python_version())]
    for name in SOFTWARE:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _section_methods(con) -> Section:
    s = Section(SECTION_TITLES[7])
    fits = q.all_fits(con)
    runs = q.runs_table(con)
    if not runs.empty:
        complete = runs[runs["status"] == "complete"]
        s.add(
            Para(
                f"<b>Scoring.</b> {len(complete)} complete run(s) over "
                f"{complete['model'].nunique()} model(s) in condition(s) "
                f"{esc(', '.join(sorted(complete['condition'].unique())))}. A response's score "
                f"is the summed negative log-likelihood (nats) of its tokens given everything "
                f"before it in the participant's transcript. The settings of each run, exactly "
                f"as recorded:"
            )
        )
        settings = []
        for r in runs.itertuples():
            for k, v in q.flatten(q.parse_json(r.settings) or {}):
                settings.append((r.run_id, k, v))
        if settings:
            st = pd.DataFrame(settings, columns=["run", "setting", "value"])
            # Settings shared by every run are listed once.
            n_runs = st["run"].nunique()
            shared = st.groupby(["setting", "value"]).filter(lambda g: len(g) == n_runs)
            shared = shared.drop_duplicates(["setting", "value"])
            varying = st.drop(
                st.index[
                    st.set_index(["setting", "value"]).index.isin(
                        shared.set_index(["setting", "value"]).index
                    )
                ]
            )
            if len(shared):
                s.add(
                    *table_from(
                        shared[["setting", "value"]], caption="Scoring settings shared by all runs."
                    )
                )
            if len(varying):
                s.add(*table_from(varying, caption="Scoring settings that differ between runs."))
    if not fits:
        s.add(no_data("no fits, so no statistical methods to describe"))
    latest: dict[str, dict] = {}
    for f in fits:
        latest[f["kind"]] = f  # ordered by fit_id: the last one wins
    for kind, f in latest.items():
        s.add(
            Para(
                f"<b>{esc(kind.capitalize())} model</b> ({_fit_caption(f)}). "
                + esc(KIND_WORDS.get(kind, "A model fitted by psystats."))
            )
        )
        if kind == "effects":
            present = set(q.fit_params(con, f["fit_id"])["parameter"])
            terms = [tex for name, tex in EFFECT_TERMS if name in present]
            if terms:
                lines = [
                    r"$\bar{d}_{c} \sim \mathcal{N}\left(\mu_{c},\ \sigma^2_{c}/n_{c}\right)$"
                    r"$\quad$ (cell mean of $n_c$ participant differences)"
                ]
                if "sigma_cell" in present:
                    terms = terms + [r"\varepsilon_{c}"]
                chunk = []
                for i, t in enumerate(terms):
                    chunk.append(t)
                    if len(chunk) == 5 or i == len(terms) - 1:
                        lead = r"\mu_{c} = " if len(lines) == 1 else r"\qquad + "
                        lines.append("$" + lead + " + ".join(chunk) + "$")
                        chunk = []
                if "sigma_cell" in present:
                    lines.append(
                        r"$\varepsilon_{c} \sim \mathcal{N}(0,\ \sigma^2_{\mathrm{cell}})$"
                        r"$\quad$ (cell residual, integrated out)"
                    )
                s.add(
                    Figure(
                        figs.equation(lines),
                        "The effects model's cell-level equation (terms as fitted). t: "
                        "post-training type, f: family, N: parameters (log, centred), g: "
                        "generation order within family (centred), d: domain, e: experiment, "
                        "p: pair"
                        + (
                            "; ε: cell residual with scale σ_cell."
                            if "sigma_cell" in present
                            else "; σ_cell fixed at 0 (too few cells to learn it)."
                        ),
                    )
                )
            s.add(*_effects_terms_blocks(f))
        for label, key in (
            ("Specification", "spec"),
            ("Priors", "priors"),
            ("Data selection", "selection"),
            ("Sampler", "sampler"),
        ):
            value = f.get(key)
            if kind == "effects" and key == "spec" and isinstance(value, dict):
                # Terms are listed with what was fitted (above); the spec's priors are the
                # requested ones, the priors table below the ones used.
                value = {k: v for k, v in value.items() if k not in ("terms", "priors")}
            if key == "sampler" and isinstance(value, dict):
                # Software versions are in the table at the end of this section.
                value = {k: v for k, v in value.items() if k != "environment"}
            if key == "selection" and isinstance(value, dict):
                value = _compact_selection(value)
            if kind == "effects" and key == "priors" and value:
                factor = float(_summary(f).get("prior_scale") or 1.0)
                label = (
                    f"Priors used (default scales × {factor:.3g}, autoscaled to the data)"
                    if factor != 1.0
                    else "Priors used"
                )
            if value:
                s.add(
                    *table_from(
                        pd.DataFrame(q.flatten(value), columns=[label.lower(), "value"]),
                        caption=f"{label} of fit {f['fit_id']}, as recorded.",
                    )
                )
    s.add(
        Para(
            f"<b>Software.</b> Fits were made with psystats "
            f"{esc(', '.join(sorted({str(f['psystats_version']) for f in fits})) or 'n/a')}; "
            f"this report was generated with:"
        )
    )
    s.add(
        Table(
            ["package", "version"],
            [[esc(a), esc(b)] for a, b in _versions()],
            "Software versions at report time.",
        )
    )
    return s


# ------------------------------------------------------------------ report


def build_report(
    con,
    *,
    title: str = "psystats report",
    note: str | None = None,
    source: str | None = None,
    truth: dict | None = None,
) -> Report:
    """Read the warehouse and assemble every section (sections without data say so).

    ``truth``: a simulated study's truth (``psystats simulate study``'s
    truth.json); each page of its fits then shows every estimate beside it.
    """
    from psystats.warehouse.provenance import __version__

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = f"Generated {now} by psystats {__version__}" + (f" from {source}" if source else "")
    front: list = []
    if note:
        front.append(Note(esc(note), "warning"))
    front.append(
        Para(
            "How well do language models predict what people do in psychology "
            "experiments, and how does post-training change that? Scores are "
            "negative log-likelihoods (NLL, nats) of each human response given the "
            "experiment transcript before it: lower means the model predicts people "
            "better. Effects are estimated with hierarchical Bayesian models; "
            "intervals are 90% credible intervals unless stated otherwise."
        )
    )
    sections = [
        _section_data(con),
        _section_size(con),
        _section_heatmap(con),
        _section_generations(con, truth),
        _section_forest(con, truth),
        _section_persona_accuracy(con, truth),
        _section_diagnostics(con),
        _section_methods(con),
    ]
    return Report(title, subtitle, front, sections)
