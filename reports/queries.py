"""Everything the report reads from the warehouse, as pandas DataFrames.

One function per report section.  Each returns an empty DataFrame (or None)
when the warehouse holds nothing for that section, so the layout code can say
"no data" instead of failing.  Nothing here draws or formats; the figures
module gets exactly these frames, and tests check them against independent
computations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from psystats.stats.data import VALID_SCORE
from psystats.warehouse.schema import MODEL_FACTS
from psystats.warehouse.sql import scalar

# Conditions in the order the report shows them.
CONDITION_ORDER = ("plain", "chat", "persona", "imported")
METADATA_FIELDS = ("age", "gender", "nationality", "education", "diagnosis")


def frame(con, query: str, params: list | None = None) -> pd.DataFrame:
    """Run a query and return its rows as a DataFrame (fully read, as DuckDB 2 needs)."""
    cur = con.execute(query, params)
    cols = [d[0] for d in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=cols)


def as_dict(v: Any) -> dict:
    """``v`` when it is a dict (a parsed JSON object), else an empty dict."""
    return v if isinstance(v, dict) else {}


def parse_json(v: Any) -> Any:
    """A JSON column's value parsed (DuckDB returns JSON as text); None stays None."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (dict, list)):
        return v
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


# --------------------------------------------------------------------- 1 Data


def overview(con) -> dict[str, int]:
    """Headline counts of the warehouse."""
    q = {
        "studies": "SELECT count(*) FROM studies",
        "experiments": "SELECT count(*) FROM experiments",
        "domains": "SELECT count(DISTINCT domain) FROM experiments WHERE domain IS NOT NULL",
        "participants": "SELECT count(*) FROM participants",
        "responses": "SELECT count(*) FROM responses",
        "models": "SELECT count(*) FROM models",
        "score_runs": "SELECT count(*) FROM score_runs",
        "scores": "SELECT count(*) FROM scores",
        "fits": "SELECT count(*) FROM fits",
    }
    return {k: int(scalar(con, sql) or 0) for k, sql in q.items()}


def studies_table(con) -> pd.DataFrame:
    """Per study: domains, experiments, participants, responses, metadata coverage (%)."""
    cover = ", ".join(f"100.0 * count(p.{f}) / count(*) AS {f}" for f in METADATA_FIELDS)
    return frame(
        con,
        f"""
        SELECT p.study,
               string_agg(DISTINCT coalesce(e.domain, 'unmapped'), '; ') AS domains,
               count(DISTINCT p.experiment) AS experiments,
               count(*) AS participants,
               sum(p.n_responses)::BIGINT AS responses,
               {cover},
               100.0 * count(*) FILTER (WHERE p.metadata IS NOT NULL
                                         AND p.metadata::VARCHAR NOT IN ('{{}}', 'null'))
                     / count(*) AS other_metadata
        FROM participants p LEFT JOIN experiments e USING (experiment)
        GROUP BY p.study ORDER BY p.study""",
    )


def domains_table(con) -> pd.DataFrame:
    """Per task domain: experiments, participants, responses."""
    return frame(
        con,
        """
        SELECT coalesce(e.domain, 'unmapped') AS domain,
               count(DISTINCT p.experiment) AS experiments,
               count(*) AS participants,
               sum(p.n_responses)::BIGINT AS responses
        FROM participants p LEFT JOIN experiments e USING (experiment)
        GROUP BY 1 ORDER BY responses DESC, domain""",
    )


def models_table(con) -> pd.DataFrame:
    return frame(
        con,
        """
        SELECT name, family, generation, generation_order, n_params, post_training,
               base_model, source, revision, gguf_file
        FROM models ORDER BY family NULLS LAST, generation_order NULLS LAST, n_params, name""",
    )


def runs_table(con) -> pd.DataFrame:
    """Every scoring run with how many responses it scored (its provenance).

    ``scored``: score rows; ``valid``: those every analysis reads
    (``stats.data.VALID_SCORE``: a finite NLL, and tokens unless the scorer has
    none, as baselines and imported scores).

    The counts are read one run at a time (and the cache released after each),
    so memory does not grow with the number of score rows.
    """
    from psystats.warehouse.buffers import release_buffers

    # score_runs.sample_spec (NULL: a full run) is newer than some warehouses: NULL there.
    has_spec = bool(
        scalar(
            con,
            "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'score_runs' "
            "AND column_name = 'sample_spec' AND database_name = current_database()",
        )
    )
    spec = "sr.sample_spec" if has_spec else "NULL::VARCHAR AS sample_spec"
    runs = frame(
        con,
        f"""
        SELECT sr.run_id, sr.model, sr.condition, sr.scorer, sr.status,
               sr.n_skipped, sr.dtype, sr.device, sr.started_at, sr.finished_at,
               sr.psystats_version, sr.weights_sha256, sr.tokenizer_sha256, sr.settings,
               sr.counts, sr.error, {spec}
        FROM score_runs sr ORDER BY sr.run_id""",
    )
    scored, valid = [], []
    for run_id in runs["run_id"]:
        # Valid as every analysis counts it (stats.data.VALID_SCORE): a baseline's or an
        # imported score has n_tokens NULL and counts; a skipped response does not.
        n, k = con.execute(
            f"SELECT count(s.response_id), count(s.response_id) FILTER (WHERE {VALID_SCORE}) "
            "FROM scores s WHERE s.run_id = ?",
            [int(run_id)],
        ).fetchall()[0]
        release_buffers(con)
        scored.append(int(n))
        valid.append(int(k))
    runs.insert(5, "scored", pd.Series(scored, index=runs.index, dtype="int64"))
    runs.insert(6, "valid", pd.Series(valid, index=runs.index, dtype="int64"))
    return runs


# ------------------------------------------------------- 2 NLL against size


def participant_nll(con, condition: str, models: list[str] | None = None) -> pd.DataFrame:
    """Per (model, participant): mean summed NLL per response under ``condition``.

    Uses the statistics layer's definition (latest complete run per model,
    condition and experiment; valid scores as ``stats.data.VALID_SCORE``), so
    the figure and the fits read the same numbers.
    """
    from psystats.stats.data import participant_means

    return participant_means(con, condition=condition, models=models)


def conditions_scored(con) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT condition FROM score_runs WHERE status = 'complete'"
    ).fetchall()
    found = [r[0] for r in rows]
    return sorted(
        found, key=lambda c: (CONDITION_ORDER.index(c) if c in CONDITION_ORDER else 99, c)
    )


def t_half_width(sd: pd.Series, n: pd.Series, level: float) -> pd.Series:
    """Half the width of the Student t interval of a mean over ``n`` participants:
    t_{n-1} · sd / sqrt(n) (the report's intervals over participants)."""
    return stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)


def model_nll(con, condition: str, level: float = 0.95) -> tuple[pd.DataFrame, dict]:
    """Per model: mean NLL per response over participants, with a t interval.

    Models are compared on the same people: only participants scored by every
    model under ``condition`` count (if no participant is common to all, each
    model uses all of its own participants and ``info["common"]`` is False).
    Floors (``post_training = 'baseline'``) are rows too, over the common
    participants they scored, but do not narrow the common set.
    Each participant contributes the mean of their responses' NLLs; the model's
    value is the mean of those, and its ``level`` interval is
    mean ± t_{n-1} · sd / sqrt(n) over participants.

    Returns ``(table, info)``; table columns: ``model, family, generation,
    generation_order, n_params, post_training, base_model, n_participants,
    mean, sd, lo, hi``.
    """
    from psystats.stats.data import participant_means_table

    info = {
        "condition": condition,
        "level": level,
        "common": True,
        "n_participants": 0,
        "experiments": 0,
    }
    # Aggregated inside DuckDB: only one row per model (and one total) reaches Python;
    # the participant means are built one model at a time (bounded by one model's scores).
    # Narrow rows (one model may score a participant once: one run per experiment), no
    # DISTINCT aggregates over them; the experiments are counted over the kept keys.
    q = """WITH participant_means AS (
        SELECT pm.model, pm.participant_key, pm.mean_nll FROM {pm} pm
    ),
    -- Floors (baseline scorers) do not decide who is compared: the uniform floor skips
    -- open-ended experiments, and would otherwise drop their participants for every model.
    scored AS (
        SELECT * FROM participant_means
        WHERE model NOT IN (SELECT name FROM models WHERE post_training = 'baseline')
    ),
    n_models AS (SELECT count(DISTINCT model) AS n FROM scored),
    common AS (
        SELECT participant_key FROM scored GROUP BY participant_key
        HAVING count(*) = (SELECT n FROM n_models)
    ),
    use_common AS (SELECT count(*) > 0 AS yes FROM common),
    kept AS (
        SELECT pm.model, pm.participant_key, pm.mean_nll
        FROM participant_means pm
        WHERE NOT (SELECT yes FROM use_common)
           OR pm.participant_key IN (SELECT participant_key FROM common)
    ),
    per_model AS (
        SELECT model, count(*)::BIGINT AS n_participants, avg(mean_nll) AS mean,
               stddev_samp(mean_nll) AS sd
        FROM kept GROUP BY model
    ),
    total AS (
        SELECT count(*)::BIGINT AS n_keys, count(DISTINCT pa.experiment)::BIGINT AS n_experiments
        FROM (SELECT DISTINCT participant_key FROM kept) k
        JOIN participants pa ON pa.participant_key = k.participant_key
    )
    SELECT model, 0 AS is_total, n_participants, mean, sd, NULL::BIGINT AS n_keys,
           NULL::BIGINT AS n_experiments, (SELECT yes FROM use_common) AS common
    FROM per_model
    UNION ALL
    SELECT NULL, 1, NULL, NULL, NULL, n_keys, n_experiments, (SELECT yes FROM use_common)
    FROM total
    """
    with participant_means_table(con, condition=condition) as pm:
        agg = frame(con, q.format(pm=pm))
    per_model = agg[agg["is_total"] == 0]
    if per_model.empty:
        return pd.DataFrame(), info
    total = agg[agg["is_total"] == 1].iloc[0]
    info["common"] = bool(total["common"])
    info["n_participants"] = int(total["n_keys"])
    info["experiments"] = int(total["n_experiments"])
    out = per_model.set_index("model")[["n_participants", "mean", "sd"]].astype(
        {"n_participants": int, "mean": float, "sd": float}
    )
    half = t_half_width(out["sd"], out["n_participants"], level)
    out["lo"] = out["mean"] - half
    out["hi"] = out["mean"] + half
    out = out.reset_index()
    meta = frame(con, f"SELECT name AS model, {', '.join(MODEL_FACTS)} FROM models")
    out = out.merge(meta, on="model", how="left")
    out["family"] = out["family"].fillna("other")
    out["post_training"] = out["post_training"].fillna("other")
    cols = ["model", *MODEL_FACTS, "n_participants", "mean", "sd", "lo", "hi"]
    return out[cols].sort_values(["family", "post_training", "n_params", "model"]).reset_index(
        drop=True
    ), info


# ------------------------------------------------------------------- fits


def latest_fit(con, kind: str, keep: Callable[[dict], bool] | None = None) -> dict | None:
    """The newest fit of ``kind`` (that ``keep`` accepts) as a dict with its JSON columns
    parsed, or None."""
    for row in fits_of(con, kind):
        if keep is None or keep(row):
            return row
    return None


def fits_of(con, kind: str) -> list[dict]:
    """Every fit of ``kind``, newest first, JSON columns parsed."""
    df = frame(
        con, "SELECT * FROM fits WHERE kind = ? ORDER BY created_at DESC, fit_id DESC", [kind]
    )
    rows = df.to_dict("records")
    for row in rows:
        for k in ("spec", "priors", "selection", "sampler", "diagnostics", "summary"):
            row[k] = parse_json(row.get(k))
    return rows


def all_fits(con) -> list[dict]:
    df = frame(con, "SELECT * FROM fits ORDER BY fit_id")
    rows = df.to_dict("records")
    for row in rows:
        for k in ("spec", "priors", "selection", "sampler", "diagnostics", "summary"):
            row[k] = parse_json(row.get(k))
    return rows


def fit_params(con, fit_id: int, parameters: list[str] | None = None) -> pd.DataFrame:
    """``fit_params`` rows of one fit (optionally only some parameters), coords parsed."""
    if parameters:
        ph = ", ".join("?" * len(parameters))
        df = frame(
            con,
            f"SELECT * FROM fit_params WHERE fit_id = ? AND parameter IN ({ph})",
            [int(fit_id), *parameters],
        )
    else:
        df = frame(con, "SELECT * FROM fit_params WHERE fit_id = ?", [int(fit_id)])
    df["coords"] = [parse_json(c) or {} for c in df["coords"]]
    return df


def unit_column(df: pd.DataFrame) -> list[str]:
    """``["unit"]`` when the fit_params rows carry a unit (warehouses from before the
    ``fit_params.unit`` column have none), else ``[]``."""
    return ["unit"] if "unit" in df.columns else []


def _coord(df: pd.DataFrame, dim: str) -> pd.Series:
    """One dimension's label from the coords dicts (falls back to ``label``)."""
    return pd.Series(
        [
            c.get(dim) if isinstance(c, dict) and dim in c else lab
            for c, lab in zip(df["coords"], df["label"])
        ],
        index=df.index,
    )


# ----------------------------------------------------------- 3 heatmap


def pair_domain_effects(con, fit_id: int) -> pd.DataFrame:
    """``pair_domain_effect`` as long rows: pair, domain, mean, q05, q95, credible (bool).

    ``credible`` marks cells whose 90% interval (q05..q95) excludes zero.
    """
    df = fit_params(con, fit_id, ["pair_domain_effect"])
    if df.empty:
        return pd.DataFrame(columns=["pair", "domain", "mean", "q05", "q95", "credible"])
    out = pd.DataFrame(
        {
            "pair": [c.get("pair") for c in df["coords"]],
            "domain": [c.get("domain") for c in df["coords"]],
            "mean": df["mean"],
            "q05": df["q05"],
            "q95": df["q95"],
        }
    )
    out["credible"] = (out["q05"] > 0) | (out["q95"] < 0)
    return out


# --------------------------------------------------------- 4 generations


def generation_curves(con, fit_id: int) -> pd.DataFrame:
    """``base_nll`` and ``gap`` per (family, generation) in generation order.

    Columns: parameter, family, generation, order, mean, q05, q95, q03, q97.
    The order comes from ``models.generation_order`` of that family and
    generation, else the generation read as a number, else its label.
    """
    df = fit_params(con, fit_id, ["base_nll", "gap"])
    if df.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "parameter": df["parameter"],
            "family": _coord(df, "family"),
            "generation": [str(c.get("generation")) for c in df["coords"]],
            "mean": df["mean"],
            "q03": df["q03"],
            "q05": df["q05"],
            "q95": df["q95"],
            "q97": df["q97"],
        }
    )
    orders = frame(
        con,
        """SELECT family, generation, min(generation_order) AS order_
                           FROM models WHERE generation IS NOT NULL GROUP BY ALL""",
    )
    known = {(f, str(g)): o for f, g, o in orders.itertuples(index=False)}

    def order(fam: str, gen: str) -> float:
        o = known.get((fam, gen))
        if o is not None and not pd.isna(o):
            return float(o)
        try:
            return float(gen)
        except ValueError:
            return float("nan")

    out["order"] = [order(f, g) for f, g in zip(out["family"], out["generation"])]
    return out.sort_values(["parameter", "family", "order", "generation"]).reset_index(drop=True)


def generation_slopes(con, fit_id: int) -> pd.DataFrame:
    df = fit_params(con, fit_id, ["base_slope", "gap_slope"])
    if df.empty:
        return df
    df["family"] = _coord(df, "family")
    return df[["parameter", "family", "mean", "q05", "q95", *unit_column(df)]]


# ---------------------------------------------------------- 5 forest plot

# Parameter groups of the effects model, in the order the forest plot shows them.
FOREST_GROUPS = (
    ("intercept", "Intercept"),
    ("type", "Post-training type"),
    ("family", "Family"),
    ("size_slope", "Size slope (per unit log params)"),
    ("generation_slope", "Generation slope"),
    ("generation_slope_family", "Generation slope by family"),
    ("domain", "Task domain"),
)


def forest_rows(
    con, fit_id: int, groups=FOREST_GROUPS, include_scales: bool = True
) -> pd.DataFrame:
    """Rows for a forest plot: group, label, mean, q05, q95, hdi_low, hdi_high, r_hat, ess_bulk.

    Scale parameters (``sigma_*``) come last when ``include_scales``.
    """
    df = fit_params(con, fit_id)
    if df.empty:
        return pd.DataFrame()
    parts = []
    for name, title in groups:
        sub = df[df["parameter"] == name].copy()
        if sub.empty:
            continue
        sub["group"] = title
        sub["label"] = sub["label"].fillna(name)
        parts.append(sub)
    if include_scales:
        sig = df[df["parameter"].str.startswith("sigma")].copy()
        if not sig.empty:
            sig["group"] = "Scale parameters"
            sig["label"] = [
                p if lab is None or pd.isna(lab) else f"{p}[{lab}]"
                for p, lab in zip(sig["parameter"], sig["label"])
            ]
            parts.append(sig.sort_values("parameter"))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    return out[
        [
            "group",
            "parameter",
            "label",
            "mean",
            "sd",
            "q05",
            "q95",
            "hdi_low",
            "hdi_high",
            "r_hat",
            "ess_bulk",
            *unit_column(out),
        ]
    ]


# ------------------------------------------------- 6 persona and accuracy


def labelled_params(
    con, fit_id: int, parameters: list[str], dim: str | None = None
) -> pd.DataFrame:
    """Rows of some parameters with a readable ``label`` (from ``coords[dim]`` when given)."""
    df = fit_params(con, fit_id, parameters)
    if df.empty:
        return df
    if dim:
        df["label"] = _coord(df, dim)
    df["label"] = [
        lab if lab is not None and not pd.isna(lab) else p
        for lab, p in zip(df["label"], df["parameter"])
    ]
    return df


def rope_bounds(summary: Any) -> tuple[float, float] | None:
    """The ROPE (low, high) a persona fit's summary states, in whatever shape it uses."""
    if not isinstance(summary, dict):
        return None
    for key in ("rope", "rope_bounds", "ROPE"):
        v = summary.get(key)
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return float(v[0]), float(v[1])
        if isinstance(v, dict):
            lo = v.get("low", v.get("lower", v.get("lo")))
            hi = v.get("high", v.get("upper", v.get("hi")))
            if lo is not None and hi is not None:
                return float(lo), float(hi)
    lo = summary.get("rope_low", summary.get("rope_lower"))
    hi = summary.get("rope_high", summary.get("rope_upper"))
    if lo is not None and hi is not None:
        return float(lo), float(hi)
    return None


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested JSON value as (dotted key, text) rows for a table."""
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            rows.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            rows.extend(flatten(v, f"{prefix}[{i}]"))
    else:
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, list):
            text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        else:
            text = "" if value is None else str(value)
        rows.append((prefix or "value", text))
    return rows


# ---------------------------------------------------------- 7 diagnostics


def redrawn(fit: dict) -> list[dict]:
    """The sampling attempts a fit discarded before the one it kept (the pipeline's retry
    rule records them in ``summary.sampler.redrawn``, also stored as ``fits.sampler``)."""
    for record in (
        as_dict(as_dict(fit.get("summary")).get("sampler")),
        as_dict(fit.get("sampler")),
    ):
        attempts = record.get("redrawn")
        if isinstance(attempts, list) and attempts:
            return [a for a in attempts if isinstance(a, dict)]
    return []


def diagnostics_table(con) -> pd.DataFrame:
    """Per fit: gates and headline diagnostics.

    Taken from ``fits.diagnostics``; where a value is missing there, the worst
    R-hat / smallest ESS over the fit's ``fit_params`` rows stands in.
    """
    fits = all_fits(con)
    if not fits:
        return pd.DataFrame()
    agg = frame(
        con,
        """SELECT fit_id, max(r_hat) AS r_hat, min(ess_bulk) AS ess_bulk,
                               min(ess_tail) AS ess_tail, count(*) AS n_params
                        FROM fit_params GROUP BY fit_id""",
    ).set_index("fit_id")
    rows = []
    for f in fits:
        d = f["diagnostics"] if isinstance(f["diagnostics"], dict) else {}
        s = f["sampler"] if isinstance(f["sampler"], dict) else {}
        a = agg.loc[f["fit_id"]] if f["fit_id"] in agg.index else None

        def pick(key, fallback, d=d, a=a):
            v = d.get(key)
            if v is None and a is not None:
                v = a[fallback]
            return v

        attempts = redrawn(f)
        rows.append(
            dict(
                fit_id=f["fit_id"],
                kind=f["kind"],
                name=f.get("name"),
                condition=f.get("condition"),
                sampler=s.get("sampler"),
                chains=s.get("chains", d.get("n_chains")),
                draws=s.get("draws", d.get("n_draws")),
                max_rhat=pick("max_rhat", "r_hat"),
                min_ess_bulk=pick("min_ess_bulk", "ess_bulk"),
                min_ess_tail=pick("min_ess_tail", "ess_tail"),
                divergences=d.get("divergences"),
                min_bfmi=d.get("min_bfmi"),
                passed=f.get("passed"),
                seconds=f.get("seconds"),
                problems="; ".join(map(str, d.get("problems") or [])),
                retries=len(attempts),
                attempts=attempts,
                n_params=None if a is None else int(a["n_params"]),
                netcdf_path=f.get("netcdf_path"),
            )
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ caveats


def _ints(value: Any) -> set[int]:
    """Every integer inside a nested JSON value (run ids in ``selection.runs``)."""
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_ints(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_ints(v) for v in value)) if value else set()
    return set()


def fit_models(con, fit: dict) -> list[str]:
    """The models a stored fit read, from its own record (``fits.selection``).

    Every analysis records the score runs it used in ``selection.runs`` (a
    list of run ids, or a mapping model -> run ids); their models, the
    mapping's keys and the names in ``selection.pairs`` ("post vs base") are
    the fit's models.
    """
    sel = as_dict(fit.get("selection"))
    names: set[str] = set()
    runs = sel.get("runs")
    if isinstance(runs, dict):
        names |= {str(k) for k in runs}
    ids = sorted(_ints(runs))
    if ids:
        ph = ", ".join("?" * len(ids))
        names |= {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT model FROM score_runs WHERE run_id IN ({ph})", ids
            ).fetchall()
        }
    pairs = sel.get("pairs")
    for pair in pairs if isinstance(pairs, list) else []:
        if isinstance(pair, str):
            names |= {p.strip() for p in pair.split(" vs ")}
    return sorted(names)


def pipeline_checks(con, models: list[str]) -> list[tuple[str, str]]:
    """(model, reason) for the given models flagged ``models.pipeline_check``."""
    if not models:
        return []
    ph = ", ".join("?" * len(models))
    return [
        (str(n), str(why))
        for n, why in con.execute(
            f"SELECT name, pipeline_check FROM models WHERE name IN ({ph}) "
            "AND pipeline_check IS NOT NULL ORDER BY name",
            list(models),
        ).fetchall()
    ]


# ------------------------------------------------------------ formula fits


def all_params_rows(con, fit_id: int) -> pd.DataFrame:
    """Every stored parameter of a fit as forest rows, for fits of kinds without a fixed
    layout (formula fits, custom kinds): a group per parameter with levels, scalars
    under "Terms" or "Scales".

    Order: intercepts, other population-level terms, group-level terms
    (``1|...``), then scales (``sigma``, ``..._sigma``), each in stored order.
    """
    p = fit_params(con, fit_id)
    if p.empty:
        return pd.DataFrame()
    scalar = [not isinstance(lab, str) or not lab for lab in p["label"]]
    p["group"] = p["parameter"]
    p["label"] = [
        lab if isinstance(lab, str) and lab else par for lab, par in zip(p["label"], p["parameter"])
    ]

    def rank(name: str) -> int:
        if name.lower() in ("intercept", "alpha"):
            return 0
        if name == "sigma" or name.endswith("_sigma") or name.startswith("sigma"):
            return 3
        return 2 if "|" in name else 1

    p["_rank"] = [rank(str(n)) for n in p["parameter"]]
    # Parameters with levels get a heading each; scalars share one (terms or scales).
    p["group"] = [
        ("Scales" if r == 3 else "Terms") if sc else g
        for sc, r, g in zip(scalar, p["_rank"], p["group"])
    ]
    p["_order"] = range(len(p))
    p = p.sort_values(["_rank", "_order"], kind="stable")
    return p[
        ["group", "parameter", "label", "mean", "sd", "q05", "q95", "hdi_low", "hdi_high"]
        + ["r_hat", "ess_bulk", *unit_column(p)]
    ].reset_index(drop=True)


# The built-in effects model's parameter beside the Bambi term that estimates the
# same quantity when a formula uses that column (docs/model.md, docs/api.md).
COMPARABLE = (
    ("size_slope", "log_params"),
    ("sigma_cell", "sigma"),
    ("sigma_type", "1|type_sigma"),
    ("sigma_family", "1|family_sigma"),
    ("sigma_domain", "1|domain_sigma"),
    ("sigma_experiment", "1|experiment_sigma"),
    ("sigma_pair", "1|pair_sigma"),
)


def comparable_params(con, effects_id: int, formula_id: int) -> pd.DataFrame:
    """Rows (effects parameter, formula term, their means and 90% intervals) for the
    quantities both fits estimate (:data:`COMPARABLE`); empty when none."""
    names = [a for a, _ in COMPARABLE] + [b for _, b in COMPARABLE]
    e = fit_params(con, effects_id, names)
    f = fit_params(con, formula_id, names)
    # Only scalars compare one to one.
    e = e[e["label"].isna() | (e["label"] == "")].set_index("parameter")
    f = f[f["label"].isna() | (f["label"] == "")].set_index("parameter")
    rows = []
    for a, b in COMPARABLE:
        if a in e.index and b in f.index:
            ea, fb = e.loc[a], f.loc[b]
            rows.append(
                dict(
                    effects=a,
                    e_mean=float(ea["mean"]),
                    e_q05=float(ea["q05"]),
                    e_q95=float(ea["q95"]),
                    formula=b,
                    f_mean=float(fb["mean"]),
                    f_q05=float(fb["q05"]),
                    f_q95=float(fb["q95"]),
                )
            )
    return pd.DataFrame(rows)


# ------------------------------------------------- task-information gain

# A history window (docs/scoring.md): `history:K`.  A simulated study may prefix its own
# conditions (the demo's `sim-history:0` beside its `sim`, as its `sim-persona`).
HISTORY_WINDOW = re.compile(r"(?:^|-)history:(\d+)$")


def contrast_conditions(fit: dict) -> tuple[str, str] | None:
    """The two conditions a persona-model fit contrasts (first minus second): from its
    ``selection``, else from ``fits.condition`` ("X vs Y"); None when neither says."""
    sel = as_dict(fit.get("selection"))
    a, b = sel.get("persona_condition"), sel.get("plain_condition")
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    cond = fit.get("condition")
    if isinstance(cond, str) and " vs " in cond:
        first, second = cond.split(" vs ", 1)
        return first, second
    return None


def history_window(fit: dict) -> int | None:
    """K when ``fit`` is the persona model's contrast of a history window ``history:K``
    against another condition (a task-information fit), else None.

    The persona model is a within-model contrast of any two conditions on the same
    responses; with a history window first it measures how much the person's own
    earlier answers help, not a persona prompt, so the report shows it on its own page.
    """
    if fit.get("kind") != "persona":
        return None
    conds = contrast_conditions(fit)
    m = HISTORY_WINDOW.search(conds[0]) if conds else None
    return int(m.group(1)) if m else None


def is_persona_prompt_fit(fit: dict) -> bool:
    """A persona fit about persona prompts (not a history-window contrast)."""
    return history_window(fit) is None


def task_information_fits(con) -> list[dict]:
    """The newest history-window contrast fit for each pair of conditions, newest first."""
    seen: set[tuple[str, str]] = set()
    out = []
    for fit in fits_of(con, "persona"):
        conds = contrast_conditions(fit)
        if history_window(fit) is None or conds is None or conds in seen:
            continue
        seen.add(conds)
        out.append(fit)
    return out


def history_conditions(con) -> list[tuple[str, str]]:
    """(history window, condition it removes history from) pairs with complete runs of the
    same model: ``history:K`` against ``plain``, ``<prefix>-history:K`` against ``<prefix>``."""
    conds = set(conditions_scored(con))
    out = []
    for c in sorted(conds):
        m = HISTORY_WINDOW.search(c)
        if not m:
            continue
        prefix = c[: m.start()]
        against = prefix if prefix else "plain"
        if against in conds:
            out.append((c, against))
    return out


def contrast_cells(con, first: str, second: str, models: list[str] | None = None) -> pd.DataFrame:
    """Per (model, experiment): the raw paired difference first − second, the mean over
    participants of each participant's mean difference on the responses both conditions
    scored validly, with its paired standard error sd/sqrt(n) (the cells the persona model
    reads: ``stats.persona.persona_cells``).

    Columns: model, post_training, experiment, n (participants), n_responses, mean, se.
    """
    from psystats.stats.persona import persona_cells

    cells = persona_cells(con, persona_condition=first, plain_condition=second, models=models)
    if cells.empty:
        return pd.DataFrame(
            columns=["model", "post_training", "experiment", "n", "n_responses", "mean", "se"]
        )
    cells["se"] = np.sqrt(cells["var"] / cells["n"])
    types = frame(con, "SELECT name AS model, post_training FROM models")
    cells = cells.merge(types, on="model", how="left")
    return cells[["model", "post_training", "experiment", "n", "n_responses", "mean", "se"]]


# ------------------------------------------------------------------- floors

FLOOR_LEVEL = 0.90  # the floors page's intervals (paired t intervals over participants)


def floor_models(con) -> list[str]:
    """The floors: models with ``post_training = 'baseline'`` (``baseline:uniform``, ...)."""
    return [
        r[0]
        for r in con.execute(
            "SELECT name FROM models WHERE post_training = 'baseline' ORDER BY name"
        ).fetchall()
    ]


def floor_runs(con, condition: str) -> pd.DataFrame:
    """The floor run each model under ``condition`` is compared with, per (floor,
    experiment): the floor's latest complete run under ``condition``, else its latest
    under any condition (a floor reads responses only: its numbers are the same under
    every condition, docs/scoring.md "Baselines").  Columns: model, experiment, run_id."""
    from psystats.stats.data import run_experiments

    floors = floor_models(con)
    if not floors:
        return pd.DataFrame(columns=["model", "experiment", "run_id"])
    ran = run_experiments(con, conditions_scored(con), models=floors)
    ran["same"] = ran["condition"] == condition
    ran = ran.sort_values(["model", "experiment", "same", "t", "run_id"])
    last = ran.groupby(["model", "experiment"], sort=True).tail(1)
    return last[["model", "experiment", "run_id"]].reset_index(drop=True)


def floor_participants(con, condition: str) -> pd.DataFrame:
    """Per (model, floor, experiment, participant): the participant's mean NLL of the
    model (under ``condition``) and of the floor (:func:`floor_runs`), and the mean
    paired difference model − floor, over the responses both scored validly (latest
    complete run per model, condition and experiment, as every analysis reads).

    Columns: model, floor, experiment, participant_key, n_responses, model_nll,
    floor_nll, difference.  Read one model at a time (memory: one model's scores).
    """
    from psystats.stats.data import latest_runs, valid_score

    cols = ["model", "floor", "experiment", "participant_key", "n_responses"]
    cols += ["model_nll", "floor_nll", "difference"]
    floors = floor_models(con)
    runs = latest_runs(con, [condition])
    fruns = floor_runs(con, condition)
    if fruns.empty:
        return pd.DataFrame(columns=cols)
    parts = []
    for model, mruns in runs[~runs["model"].isin(floors)].groupby("model", sort=True):
        pairs = mruns.merge(fruns, on="experiment", suffixes=("", "_floor"))
        if pairs.empty:
            continue
        values = ", ".join("(?, ?, ?, ?)" for _ in range(len(pairs)))
        params = [
            v
            for r in pairs.itertuples()
            for v in (int(r.run_id), int(r.run_id_floor), str(r.model_floor), str(r.experiment))
        ]
        parts.append(
            frame(
                con,
                f"""WITH p(run_id, floor_run, floor, experiment) AS (VALUES {values})
                SELECT ? AS model, p.floor, r.experiment, r.participant_key,
                       count(*)::BIGINT AS n_responses, avg(sm.nll) AS model_nll,
                       avg(sf.nll) AS floor_nll, avg(sm.nll - sf.nll) AS difference
                FROM p JOIN scores sm ON sm.run_id = p.run_id
                JOIN scores sf ON sf.run_id = p.floor_run AND sf.response_id = sm.response_id
                JOIN responses r ON r.response_id = sm.response_id
                                AND r.experiment = p.experiment
                WHERE {valid_score("sm")} AND {valid_score("sf")}
                GROUP BY ALL ORDER BY p.floor, r.experiment, r.participant_key""",
                [*params, str(model)],
            )
        )
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def floor_comparisons(con, condition: str, level: float = FLOOR_LEVEL) -> pd.DataFrame:
    """Per (experiment, floor, model) for the models scored under ``condition``: how far
    the model's NLL per response lies below the floor's (:func:`floor_runs`), on the same
    participants and responses.

    ``mean`` is the mean over participants of their paired differences model − floor
    (negative: the model beats the floor), ``lo``/``hi`` its ``level`` Student t interval
    over participants (mean ± t_{n-1} sd/sqrt(n); none with one participant);
    ``verdict``: ``beats`` when the whole interval is below 0, ``worse`` when above, else
    ``unclear``.  Also: participants, responses, the model's and the floor's mean NLL.
    """
    per = floor_participants(con, condition)
    cols = ["experiment", "floor", "model", "post_training", "participants", "responses"]
    cols += ["model_nll", "floor_nll", "mean", "sd", "lo", "hi", "verdict"]
    if per.empty:
        return pd.DataFrame(columns=cols)
    g = per.groupby(["experiment", "floor", "model"], sort=True)
    out = g.agg(
        participants=("difference", "size"),
        responses=("n_responses", "sum"),
        model_nll=("model_nll", "mean"),
        floor_nll=("floor_nll", "mean"),
        mean=("difference", "mean"),
        sd=("difference", "std"),
    ).reset_index()
    half = t_half_width(out["sd"], out["participants"], level).where(out["participants"] >= 2)
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    out["verdict"] = np.select(
        [out["hi"] < 0, out["lo"] > 0], ["beats", "worse"], default="unclear"
    )
    types = frame(con, "SELECT name AS model, post_training FROM models")
    out = out.merge(types, on="model", how="left")
    return out[cols]
