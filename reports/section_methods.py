"""Section 8 of the report: methods generated from what was scored and fitted."""

from __future__ import annotations

import importlib.metadata
import platform

import pandas as pd

from . import figures as figs
from . import queries as q
from .blocks import (
    Figure,
    Note,
    Para,
    Section,
    Table,
    esc,
    no_data,
    plural,
    summary_of,
    table_from,
    title,
)
from .fit_notes import fit_caption

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
    "accuracy": (
        "Option-restricted top-1 hits per participant, binomial-logit hierarchical "
        "model of post-trained versus base models, repeated after temperature "
        "calibration fitted on held-out participants."
    ),
}


def effects_terms_blocks(fit: dict) -> list:
    """Terms kept and dropped, with the reasons, and the fit's own messages."""
    summ = summary_of(fit)
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


def compact_selection(sel: dict) -> dict:
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


def versions() -> list[tuple[str, str]]:
    out = [("python", platform.python_version())]
    for name in SOFTWARE:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def scoring_blocks(runs: pd.DataFrame) -> list:
    """What scoring did, and every run's settings (shared ones once, the rest per run)."""
    if runs.empty:
        return []
    complete = runs[runs["status"] == "complete"]
    out: list = [
        Para(
            f"<b>Scoring.</b> {len(complete)} complete run(s) over "
            f"{complete['model'].nunique()} model(s) in condition(s) "
            f"{esc(', '.join(sorted(complete['condition'].unique())))}. A response's score "
            f"is the summed negative log-likelihood (nats) of its tokens given everything "
            f"before it in the participant's transcript. The settings of each run, exactly "
            f"as recorded:"
        )
    ]
    settings = []
    for r in runs.itertuples():
        for k, v in q.flatten(q.parse_json(r.settings) or {}):
            settings.append((r.run_id, k, v))
    if not settings:
        return out
    st = pd.DataFrame(settings, columns=["run", "setting", "value"])
    # Settings shared by every run are listed once.
    n_runs = st["run"].nunique()
    shared = st.groupby(["setting", "value"]).filter(lambda g: len(g) == n_runs)
    shared = shared.drop_duplicates(["setting", "value"])
    keys = st.set_index(["setting", "value"]).index
    varying = st.drop(st.index[keys.isin(shared.set_index(["setting", "value"]).index)])
    if len(shared):
        out += table_from(
            shared[["setting", "value"]], caption="Scoring settings shared by all runs."
        )
    if len(varying):
        out += table_from(varying, caption="Scoring settings that differ between runs.")
    return out


def kind_words(kind: str, fit: dict) -> str:
    """The model in words, true to what this fit did (e.g. persona's model effects)."""
    if kind != "persona":
        return KIND_WORDS.get(kind, "A model fitted by psystats.")
    conds = q.contrast_conditions(fit)
    first, second = conds if conds else ("persona", "plain")
    spec = q.as_dict(fit.get("spec"))
    if spec.get("model_effects") == "random":
        scope = (
            "hierarchical over experiments and over models (model effects drawn from a "
            "population of models per post-training type), so the type-level effect speaks "
            "for models like those scored"
        )
    else:
        # The default, --model-effects fixed: no population of models is modelled.
        scope = (
            "hierarchical over experiments, with one fixed effect per model (no population "
            "of models; fitted with --model-effects fixed), so its verdicts hold for the "
            "models scored only, not for other models of the same type"
        )
    if q.history_window(fit) is not None:
        return (
            f"NLL under {first} (earlier answers of the participant removed) minus NLL "
            f"under {second} per participant (the task-information gain), for the same "
            f"model and responses, with the persona model: {scope}."
        )
    return (
        f"NLL with a persona prompt ({first}) minus NLL with the plain prompt ({second}) "
        f"per participant, for the same model and responses, {scope}; a region of "
        "practical equivalence turns 'no benefit' into a posterior probability."
    )


def equation_figure(present: set[str]) -> Figure | None:
    """The effects model's cell-level equation with exactly the terms the fit stored."""
    terms = [tex for name, tex in EFFECT_TERMS if name in present]
    if not terms:
        return None
    lines = [
        r"$\bar{d}_{c} \sim \mathcal{N}\left(\mu_{c},\ \sigma^2_{c}/n_{c}\right)$"
        r"$\quad$ (cell mean of $n_c$ participant differences)"
    ]
    if "sigma_cell" in present:
        terms = terms + [r"\varepsilon_{c}"]
    for i in range(0, len(terms), 5):
        lead = r"\mu_{c} = " if i == 0 else r"\qquad + "
        lines.append("$" + lead + " + ".join(terms[i : i + 5]) + "$")
    if "sigma_cell" in present:
        lines.append(
            r"$\varepsilon_{c} \sim \mathcal{N}(0,\ \sigma^2_{\mathrm{cell}})$"
            r"$\quad$ (cell residual, integrated out)"
        )
    return Figure(
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


RECORDS = (
    ("Specification", "spec"),
    ("Priors", "priors"),
    ("Data selection", "selection"),
    ("Sampler", "sampler"),
)


def record_tables(kind: str, f: dict) -> list:
    """The fit's recorded specification, priors used, data selection and sampler."""
    out: list = []
    for label, key in RECORDS:
        value = f.get(key)
        if kind == "effects" and key == "spec" and isinstance(value, dict):
            # Terms are listed with what was fitted (above); the spec's priors are the
            # requested ones, the priors table below the ones used.
            value = {k: v for k, v in value.items() if k not in ("terms", "priors")}
        if key == "sampler" and isinstance(value, dict):
            # Software versions are in the table at the end of this section, the
            # discarded attempts in the diagnostics (section 7, "retries").
            value = {k: v for k, v in value.items() if k not in ("environment", "redrawn")}
        if key == "selection" and isinstance(value, dict):
            value = compact_selection(value)
        if kind == "effects" and key == "priors" and value:
            factor = float(summary_of(f).get("prior_scale") or 1.0)
            label = (
                f"Priors used (default scales × {factor:.3g}, autoscaled to the data)"
                if factor != 1.0
                else "Priors used"
            )
        if value:
            out += table_from(
                pd.DataFrame(q.flatten(value), columns=[label.lower(), "value"]),
                caption=f"{label} of fit {f['fit_id']}, as recorded.",
            )
    return out


def build(con) -> Section:
    s = Section(title("Methods"))
    fits = q.all_fits(con)
    s.add(*scoring_blocks(q.runs_table(con)))
    if not fits:
        s.add(no_data("no fits, so no statistical methods to describe"))
    latest: dict[str, dict] = {}
    for f in fits:
        # ordered by fit_id: the last one wins; a history-window contrast of the persona
        # model is described apart from the persona-prompt fits
        history = f["kind"] == "persona" and q.history_window(f) is not None
        latest["Task-information gain (persona)" if history else f["kind"]] = f
    for heading, f in latest.items():
        kind = f["kind"]
        s.add(
            Para(
                f"<b>{esc(heading[0].upper() + heading[1:])} model</b> ({fit_caption(f)}). "
                + esc(kind_words(kind, f))
            )
        )
        if kind == "effects":
            eq = equation_figure(set(q.fit_params(con, f["fit_id"])["parameter"]))
            s.add(*([eq] if eq is not None else []), *effects_terms_blocks(f))
        s.add(*record_tables(kind, f))
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
            [[esc(a), esc(b)] for a, b in versions()],
            "Software versions at report time.",
        )
    )
    return s
