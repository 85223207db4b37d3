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
    return (
        f"fit {fit['fit_id']} ({esc(fit['kind'])}"
        + (f", condition {esc(fit['condition'])}" if fit.get("condition") else "")
        + (f", scale {esc(fit['scale'])}" if fit.get("scale") else "")
        + ")"
    )


def _failed_note(fit: dict) -> list:
    if fit.get("passed") is False:
        return [
            Note(
                f"{_fit_caption(fit)} did not meet its diagnostic gates (see section 7); "
                "read its estimates with caution.",
                "warning",
            )
        ]
    return []


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
    s.add(*_failed_note(fit))
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


def _section_generations(con) -> Section:
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
    s.add(*_failed_note(fit))
    s.add(
        Figure(
            figs.generations(curves),
            f"Left: base-model NLL per response across generations within each family; right: "
            f"post-minus-base gap. Lines: posterior means; bands: 90% credible intervals "
            f"({_fit_caption(fit)}).",
            curves,
        )
    )
    slopes = q.generation_slopes(con, fit["fit_id"])
    summary = _summary(fit)
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
    if summary:
        s.add(
            *table_from(
                pd.DataFrame(q.flatten(summary), columns=["quantity", "value"]),
                caption="Headline posterior quantities stored with the fit "
                "(e.g. P(gap grows while base NLL falls) per family).",
            )
        )
    return s


def _section_forest(con) -> Section:
    s = Section(SECTION_TITLES[4])
    fit = q.latest_fit(con, "effects")
    if fit is None:
        return s.add(
            no_data("no effects fit", 'Run <font face="Courier">psystats fit effects</font>.')
        )
    rows = q.forest_rows(con, fit["fit_id"])
    if rows.empty:
        return s.add(no_data(f"{_fit_caption(fit)} stores none of the effects model's parameters"))
    s.add(*_failed_note(fit))
    scale = fit.get("scale") or "nats"
    s.add(
        Figure(
            figs.forest(rows, xlabel=f"post − base NLL difference ({scale} per response)"),
            f"Effects model ({_fit_caption(fit)}): posterior means (dots), 90% credible "
            f"intervals (thick) and 94% HDIs (thin). Negative: post-training helps prediction. "
            f"Slopes are per unit of centred log parameter count and per generation step; "
            f"scale parameters are standard deviations of the partially pooled terms.",
            rows,
        )
    )
    s.add(
        *table_from(
            rows,
            {
                "group": "term",
                "label": "level",
                "mean": "mean",
                "sd": "sd",
                "q05": "5%",
                "q95": "95%",
                "r_hat": "R-hat",
                "ess_bulk": "ESS bulk",
            },
            caption="The forest plot's numbers.",
        )
    )
    s.add(*_cohens_d_blocks(con, fit))
    return s


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


def _section_persona_accuracy(con) -> Section:
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
        s.add(*_failed_note(persona))
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
        if isinstance(persona.get("summary"), dict) and persona["summary"]:
            s.add(
                *table_from(
                    pd.DataFrame(q.flatten(persona["summary"]), columns=["quantity", "value"]),
                    caption="ROPE bounds and posterior probabilities stored with the persona fit.",
                )
            )
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
        s.add(*_failed_note(accuracy))
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
        if isinstance(accuracy.get("summary"), dict) and accuracy["summary"]:
            s.add(
                *table_from(
                    pd.DataFrame(q.flatten(accuracy["summary"]), columns=["quantity", "value"]),
                    caption="Whether the gap survives calibration, as stored with the fit.",
                )
            )
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
    checks = []
    newest = {f["kind"]: f for f in q.all_fits(con)}  # ordered by fit_id: the last one wins
    for f in newest.values():
        summ = _summary(f)
        for key in ("ppc", "loo"):
            if key in summ:
                checks += [
                    (f["fit_id"], f["kind"], check_label(k), v)
                    for k, v in q.flatten(summ[key], key)
                ]
    if checks:
        s.add(
            *table_from(
                pd.DataFrame(checks, columns=["fit", "kind", "check", "value"]),
                caption="Model checks stored with the newest fit of each kind: "
                "'90% predictive coverage' is the share of observations inside their 90% "
                "posterior predictive interval (about 0.9 when the model fits); "
                "'PPC p-value of T' is P(T(replicated) ≥ T(observed)) for the statistic T "
                "of the standardised observations (one p-value per statistic; values near "
                "0 or 1 signal misfit); loo: PSIS-LOO.",
            )
        )
    # One predictive check plot per kind: the newest fit of each kind that stored one.
    drawn = 0
    for kind in diag["kind"].unique():
        for r in diag[diag["kind"] == kind].sort_values("fit_id", ascending=False).itertuples():
            idata = _load_idata(con, r.fit_id)
            fig = figs.ppc(idata, title=f"fit {r.fit_id} ({kind})") if idata is not None else None
            if fig is not None:
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
                + (" (the summaries above come from the fits)." if checks else ".")
            )
        )
    return s


PPC_STATISTICS = {"mean": "mean", "sd": "SD", "min": "minimum", "max": "maximum"}


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
    from psystats.warehouse.db import WarehouseError

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
    con, *, title: str = "psystats report", note: str | None = None, source: str | None = None
) -> Report:
    """Read the warehouse and assemble every section (sections without data say so)."""
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
        _section_generations(con),
        _section_forest(con),
        _section_persona_accuracy(con),
        _section_diagnostics(con),
        _section_methods(con),
    ]
    return Report(title, subtitle, front, sections)
