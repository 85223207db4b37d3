"""A human-fidelity card for one model: ``build_card(con, model) -> dict``.

One page that says how well a model predicts people and on what evidence,
with its provenance, in a documented, versioned JSON layout
(``card_schema.json`` beside this module, docs/card.md) so that cards made by
different groups compare field by field.  ``reports.card_html`` renders the
same dict as HTML.

What the card reads (the warehouse only, nothing is refitted):

* what the model was scored on: its complete score runs (studies,
  experiments, participants, responses, tokens, conditions; sampled or full
  from ``score_runs.sample_spec``, a missing column meaning full);
* its NLL per response by task domain, on the participants it shares with
  its base model and with each floor (``baseline:uniform``,
  ``baseline:frequency``; ``post_training = 'baseline'``) where those were
  scored: paired differences per participant with a 95% t interval;
* the post-training effect (``pair_mean``, ``pair_domain_effect``) from the
  newest effects fit that read the model and met its gates; generation
  slopes of its family and its persona effect from the newest passing fits
  of those kinds;
* provenance: weights hash, revision, tokenizer hash, psystats versions,
  scorer settings, every fit that read the model with its gates.

A fit that failed its gates is never used for a number; the card lists it and
says so in ``caveats``, as it does for sampled runs and pipeline checks.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from psystats.stats.data import VALID_SCORE
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.names import check_names

from . import queries as q

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "psystats-card/1.0"
FLOORS = ("baseline:uniform", "baseline:frequency")
LEVEL = 0.95  # the NLL intervals: t intervals over participants, as section 2 of the report


def schema() -> dict:
    """The card's JSON Schema (shipped with the package as ``card_schema.json``)."""
    text = resources.files("psystats.reports").joinpath("card_schema.json").read_text("utf-8")
    return json.loads(text)


def _clean(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to None, timestamps to ISO text."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, (pd.Timestamp, _dt.datetime)):
        return v.isoformat()
    if v is pd.NaT:
        return None
    return v


def _model_row(con, model: str) -> dict:
    check_names(con, "model", [model])  # an unknown name: one line with "did you mean"
    return q.frame(con, "SELECT * FROM models WHERE name = ?", [model]).iloc[0].to_dict()


def _runs(con, model: str) -> pd.DataFrame:
    """The model's score runs (every column the warehouse has), with per-run counts."""
    runs = q.frame(con, "SELECT * FROM score_runs WHERE model = ? ORDER BY run_id", [model])
    counts = q.frame(
        con,
        f"""SELECT s.run_id, count(*)::BIGINT AS responses,
                  coalesce(sum(s.n_tokens), 0)::BIGINT AS tokens,
                  count(DISTINCT r.participant_key)::BIGINT AS participants,
                  count(DISTINCT r.experiment)::BIGINT AS experiments,
                  count(DISTINCT r.study)::BIGINT AS studies
           FROM scores s JOIN responses r USING (response_id)
           JOIN score_runs sr USING (run_id)
           WHERE sr.model = ? AND {VALID_SCORE} GROUP BY s.run_id""",
        [model],
    )
    runs = runs.merge(counts, on="run_id", how="left")
    if "sample_spec" not in runs.columns:  # warehouses from before sampled runs: all full
        runs["sample_spec"] = None
    return runs


def scored_on(con, model: str, runs: pd.DataFrame) -> dict:
    """What the card's numbers rest on: the complete runs and what they covered."""
    complete = runs[runs["status"] == "complete"]
    ids = [int(r) for r in complete["run_id"]]
    totals = {"studies": 0, "experiments": 0, "participants": 0, "responses": 0, "tokens": 0}
    if ids:
        ph = ", ".join("?" * len(ids))
        row = con.execute(
            f"""SELECT count(DISTINCT r.study), count(DISTINCT r.experiment),
                       count(DISTINCT r.participant_key), count(DISTINCT s.response_id),
                       coalesce(sum(s.n_tokens), 0)
                FROM scores s JOIN responses r USING (response_id)
                WHERE s.run_id IN ({ph}) AND {VALID_SCORE}""",
            ids,
        ).fetchall()[0]
        totals = dict(zip(totals, (int(v or 0) for v in row)))
    specs = [str(s) for s in complete["sample_spec"] if isinstance(s, str) and s]
    return {
        **totals,
        "conditions": sorted({str(c) for c in complete["condition"]}),
        "sampled": bool(specs),
        "sample_specs": sorted(set(specs)),
        "runs": [_run_entry(r) for r in runs.to_dict("records")],
    }


def _count(v: Any) -> int | None:
    """A per-run count (NaN where the run wrote no valid score) as an int or None."""
    return None if v is None or pd.isna(v) else int(v)


def _run_entry(r: dict) -> dict:
    settings = q.parse_json(r.get("settings"))
    spec = r.get("sample_spec")
    return {
        "run_id": int(r["run_id"]),
        "condition": r.get("condition"),
        "status": r.get("status"),
        "scorer": r.get("scorer"),
        "sampled": isinstance(spec, str) and bool(spec),
        "sample_spec": spec if isinstance(spec, str) and spec else None,
        **{
            k: _count(r.get(k))
            for k in ("studies", "experiments", "participants", "responses", "tokens")
        },
        "device": r.get("device"),
        "dtype": r.get("dtype"),
        "psystats_version": r.get("psystats_version"),
        "weights_sha256": r.get("weights_sha256"),
        "tokenizer_sha256": r.get("tokenizer_sha256"),
        "settings": settings if isinstance(settings, dict) else {},
        "finished_at": r.get("finished_at"),
    }


def _t_interval(x: np.ndarray) -> tuple[float | None, float | None]:
    if len(x) < 2:
        return None, None
    half = stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _comparison(pm: pd.DataFrame, model: str, other: str, domain: str | None) -> dict | None:
    """``model`` minus ``other`` on the participants both were scored on (paired)."""
    sub = pm if domain is None else pm[pm["domain_"] == domain]
    a = sub[sub["model"] == model].set_index("participant_key")["mean_nll"]
    b = sub[sub["model"] == other].set_index("participant_key")["mean_nll"]
    common = a.index.intersection(b.index)
    if not len(common):
        return None
    d = (a.loc[common] - b.loc[common]).to_numpy(float)
    lo, hi = _t_interval(d)
    return {
        "against": other,
        "participants": int(len(common)),
        "model_mean": float(a.loc[common].mean()),
        "other_mean": float(b.loc[common].mean()),
        "difference": float(d.mean()),
        "difference_low": lo,
        "difference_high": hi,
    }


def nll(con, model: str, base: str | None, condition: str) -> dict:
    """Mean NLL per response overall and by domain, against the base and the floors."""
    others = [m for m in (base, *FLOORS) if m]
    pm = q.participant_nll(con, condition, [model, *others])
    pm["domain_"] = pm["domain"].fillna("unmapped")
    mine = pm[pm["model"] == model]
    floors = [f for f in FLOORS if f in set(pm["model"])]

    def block(domain: str | None) -> dict:
        sub = mine if domain is None else mine[mine["domain_"] == domain]
        x = sub["mean_nll"].to_numpy(float)
        lo, hi = _t_interval(x)
        return {
            "domain": domain or "all",
            "participants": int(len(x)),
            "responses": int(sub["n_responses"].sum()),
            "mean": float(x.mean()) if len(x) else None,
            "low": lo,
            "high": hi,
            "vs_base": _comparison(pm, model, base, domain) if base else None,
            "vs_floors": [c for f in floors if (c := _comparison(pm, model, f, domain))],
        }

    domains = sorted(mine["domain_"].unique())
    return {
        "condition": condition,
        "level": LEVEL,
        "unit": "nats per response (summed over the response's tokens)",
        "base_model": base,
        "floors_scored": floors,
        "floors_missing": [f for f in FLOORS if f not in floors],
        "overall": block(None) if len(mine) else None,
        "by_domain": [block(d) for d in domains],
    }


# ------------------------------------------------------------------- fits


def _fit_entry(con, f: dict) -> dict:
    diag = q.as_dict(f.get("diagnostics"))
    stale = f.get("stale_reason")
    return {
        "fit_id": int(f["fit_id"]),
        "kind": f["kind"],
        "name": f.get("name") if isinstance(f.get("name"), str) else None,
        "created_at": f.get("created_at"),
        "condition": f.get("condition"),
        "passed": f.get("passed") is True,
        "problems": [str(p) for p in diag.get("problems") or []],
        "stale": isinstance(stale, str) and bool(stale),
        "retries": len(q.redrawn(f)),
        "psystats_version": f.get("psystats_version"),
        "used": False,
    }


def fits_of(con, model: str) -> list[dict]:
    """Every stored fit that read ``model`` (from the fit's own ``selection``), oldest first."""
    return [f for f in q.all_fits(con) if model in q.fit_models(con, f)]


def _newest_passing(fits: list[dict], kind: str) -> dict | None:
    ok = [
        f
        for f in fits
        if f["kind"] == kind
        and f.get("passed") is True
        and not (isinstance(f.get("stale_reason"), str) and f.get("stale_reason"))
    ]
    return max(ok, key=lambda f: (str(f.get("created_at")), int(f["fit_id"]))) if ok else None


def _interval(row: dict) -> dict:
    return {
        "mean": row["mean"],
        "low": row["q05"],
        "high": row["q95"],
        "level": 0.9,
        "unit": row.get("unit") if isinstance(row.get("unit"), str) else None,
    }


def post_training_effect(con, model: dict, fits: list[dict]) -> dict | None:
    """The pair's posterior (post − base NLL) overall and by domain from the newest passing
    effects fit; None for a model without a base or without such a fit."""
    from psystats.stats.data import pair_label

    base = model.get("base_model")
    fit = _newest_passing(fits, "effects")
    if not isinstance(base, str) or not base or fit is None:
        return None
    pair = pair_label(model["name"], base)
    p = q.fit_params(con, fit["fit_id"], ["pair_mean", "pair_domain_effect"])
    p = p[[c.get("pair", lab) == pair for c, lab in zip(p["coords"], p["label"])]]
    if p.empty:
        return None
    overall = p[p["parameter"] == "pair_mean"].to_dict("records")
    scale = fit.get("scale") or "nats"
    return {
        "fit_id": int(fit["fit_id"]),
        "pair": pair,
        "measure": f"post − base NLL ({scale} per response); negative: post-training helps",
        "overall": {**_interval(overall[0]), "unit": overall[0].get("unit") or scale}
        if overall
        else None,
        "by_domain": [
            {"domain": r["coords"].get("domain"), **_interval(r), "unit": r.get("unit") or scale}
            for r in p[p["parameter"] == "pair_domain_effect"].to_dict("records")
        ],
    }


def generations(con, model: dict, fits: list[dict]) -> dict | None:
    """The family's base and gap slopes across generations from the newest passing fit."""
    from .fit_notes import unit_of

    fit = _newest_passing(fits, "generations")
    family = model.get("family")
    if fit is None or not isinstance(family, str):
        return None
    slopes = q.generation_slopes(con, fit["fit_id"])
    slopes = slopes[slopes["family"] == family] if not slopes.empty else slopes
    if slopes.empty:
        return None
    rows = slopes.to_dict("records")
    return {
        "fit_id": int(fit["fit_id"]),
        "family": family,
        "slopes": [
            {
                "parameter": r["parameter"],
                **_interval(r),
                "unit": unit_of(fit, str(r["parameter"]), r.get("unit")),
            }
            for r in rows
        ],
    }


def persona(con, model: dict, fits: list[dict]) -> dict | None:
    """The model's own persona effect (fixed model effects) or its type's, with the verdict."""
    # Persona prompts only: a persona-model fit of a history window is not about them.
    fit = _newest_passing([f for f in fits if q.is_persona_prompt_fit(f)], "persona")
    if fit is None:
        return None
    own = q.fit_params(con, fit["fit_id"], ["persona_model_effect"])
    own = own[[c.get("model", lab) == model["name"] for c, lab in zip(own["coords"], own["label"])]]
    ptype = model.get("post_training")
    typ = q.labelled_params(con, fit["fit_id"], ["persona_effect"], "post_training")
    typ = typ[typ["label"] == ptype] if not typ.empty else typ
    if own.empty and typ.empty:
        return None
    verdict = q.as_dict(q.as_dict(q.as_dict(fit.get("summary")).get("by_post_training")).get(ptype))
    scale = fit.get("scale") or "nats"
    return {
        "fit_id": int(fit["fit_id"]),
        "measure": "persona − plain NLL per response; negative: the persona helps",
        "model_effects": q.as_dict(fit.get("spec")).get("model_effects") or "fixed",
        "rope": list(q.rope_bounds(fit.get("summary")) or []) or None,
        "model": {**_interval(own.iloc[0].to_dict()), "unit": own.iloc[0].get("unit") or scale}
        if not own.empty
        else None,
        "post_training_type": ptype,
        "type": {**_interval(typ.iloc[0].to_dict()), "unit": typ.iloc[0].get("unit") or scale}
        if not typ.empty
        else None,
        "verdict": verdict.get("verdict") if isinstance(verdict.get("verdict"), str) else None,
    }


# ------------------------------------------------------------------- card


def card_caveats(model: dict, scored: dict, nll_part: dict, fits: list[dict], used: set) -> list:
    """What a reader must know before quoting the card, each in one sentence."""
    out = []
    why = model.get("pipeline_check")
    if isinstance(why, str) and why:
        out.append(
            f"{model['name']} is flagged as a pipeline check ({why}): its numbers say "
            "nothing about a real model."
        )
    if scored["sampled"]:
        out.append(
            "Scored on a sample, not the full studies ("
            + "; ".join(scored["sample_specs"])
            + "): the numbers describe that sample."
        )
    if not scored["conditions"]:
        out.append("No complete scoring run: nothing to report.")
    for f in fits:
        if f.get("passed") is not True:
            problems = "; ".join(map(str, q.as_dict(f.get("diagnostics")).get("problems") or []))
            out.append(
                f"Fit {f['fit_id']} ({f['kind']}) failed its diagnostic gates"
                + (f" ({problems})" if problems else "")
                + ": not used on this card."
            )
        elif isinstance(f.get("stale_reason"), str) and f.get("stale_reason"):
            out.append(f"Fit {f['fit_id']} ({f['kind']}) is stale ({f['stale_reason']}): not used.")
    if model.get("base_model") and "effects" not in used:
        out.append(
            "No effects fit that read this model met its gates: no post-training effect "
            "is shown (run `psystats fit effects`)."
        )
    if nll_part["floors_missing"]:
        out.append(
            "Floors not scored: "
            + ", ".join(nll_part["floors_missing"])
            + " (register and score the baseline scorers to compare with them)."
        )
    return out


def flagged_caveats(con, model: dict, used_fits: list[dict]) -> list[str]:
    """The base, or another model a used fit read, flagged as a pipeline check: the
    comparisons through it say nothing about post-training."""
    out = []
    base = model.get("base_model")
    for name, why in q.pipeline_checks(con, [base] if isinstance(base, str) and base else []):
        out.append(
            f"Its base model {name} is flagged as a pipeline check ({why}): the comparison "
            "with the base and the post-training effect say nothing about post-training."
        )
    for f in used_fits:
        others = [
            n
            for n, _ in q.pipeline_checks(con, q.fit_models(con, f))
            if n not in (model["name"], base)
        ]
        if others:
            out.append(
                f"Fit {f['fit_id']} ({f['kind']}) also read {len(others)} model(s) flagged as "
                "pipeline checks (" + ", ".join(others) + "); its estimates pool over them."
            )
    return out


def build_card(con, model: str, *, condition: str | None = None) -> dict:
    """The card of ``model`` as a dict following ``card_schema.json`` (version
    :data:`SCHEMA_VERSION`)."""
    from psystats.warehouse.provenance import __version__

    m = _model_row(con, model)
    runs = _runs(con, model)
    scored = scored_on(con, model, runs)
    if condition is None:
        conds = scored["conditions"]
        condition = "plain" if "plain" in conds or not conds else conds[0]
    elif condition not in scored["conditions"]:
        raise WarehouseError(
            f"{model} has no complete run under condition {condition!r} (it has: "
            + (", ".join(scored["conditions"]) or "none")
            + ")"
        )
    base = m.get("base_model") if isinstance(m.get("base_model"), str) else None
    nll_part = nll(con, model, base, condition)
    fits = fits_of(con, model)
    parts = {
        "post_training_effect": post_training_effect(con, m, fits),
        "generations": generations(con, m, fits),
        "persona": persona(con, m, fits),
    }
    used = {int(p["fit_id"]) for p in parts.values() if p}
    entries = [_fit_entry(con, f) for f in fits]
    for e in entries:
        e["used"] = e["fit_id"] in used
    card = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "psystats_version": __version__,
        "model": {
            k: m.get(k)
            for k in (
                "name",
                "source",
                "revision",
                "family",
                "generation",
                "n_params",
                "post_training",
                "base_model",
                "gguf_file",
                "pipeline_check",
            )
        },
        "provenance": provenance(runs),
        "scored_on": scored,
        "nll": nll_part,
        **parts,
        "fits": entries,
        "caveats": card_caveats(
            m, scored, nll_part, fits, {e["kind"] for e in entries if e["used"]}
        )
        + flagged_caveats(con, m, [f for f in fits if int(f["fit_id"]) in used]),
    }
    return _clean(card)


def provenance(runs: pd.DataFrame) -> dict:
    """The hashes, versions and scorer settings of the model's complete runs."""
    complete = runs[runs["status"] == "complete"]

    def distinct(col: str) -> list[str]:
        return sorted({str(v) for v in complete.get(col, []) if isinstance(v, str) and v})

    return {
        "weights_sha256": distinct("weights_sha256"),
        "tokenizer_sha256": distinct("tokenizer_sha256"),
        "scorers": distinct("scorer"),
        "psystats_versions": distinct("psystats_version"),
        "devices": distinct("device"),
        "dtypes": distinct("dtype"),
    }
