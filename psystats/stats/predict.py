"""A new pair's expected post-minus-base difference from a stored fit (``psystats fit predict``).

A formula fit predicts through Bambi (:func:`.formula.prediction_draws`); an
effects fit through the effects model's own equation on the stored draws
(:func:`effects_prediction_draws`).  Both place the new pair in every
experiment the fit saw and draw the group levels the fit has not seen (the
pair itself; a new family) from their fitted distributions, so the interval
includes what is not known about a new pair.  :func:`summarise` turns the
draws into the table ``fit predict`` prints, one definition for both kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

from .generation_scale import generation_values

NUMERIC_KEYS = ("n_params", "log_params", "generation_order")
PREDICTABLE_KINDS = ("formula", "effects")


def parse_new_pair(text: str) -> dict[str, Any]:
    """``"type=instruct,family=llama,n_params=70e9"`` -> a dict of pair-level values.

    ``n_params``, ``log_params`` and ``generation_order`` are numbers;
    everything else stays text.
    """
    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise WarehouseError(
                f"--new-pair {text!r}: write key=value pairs separated by commas, e.g. "
                "type=instruct,family=llama,n_params=70e9"
            )
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = float(v) if k in NUMERIC_KEYS else v
        except ValueError:
            raise WarehouseError(f"--new-pair: {k}={v!r} is not a number") from None
    return out


def summarise(draws: np.ndarray, rows: pd.DataFrame, *, per_experiment: bool) -> pd.DataFrame:
    """Posterior summary of prediction draws (samples x experiments).

    One row, the average over the experiments (or one row per experiment):
    mean, sd, q05, q50, q95 and ``p_worse`` = P(expected difference > 0),
    i.e. the post-trained model predicts people worse than its base.
    """
    if per_experiment:
        out = pd.DataFrame({"experiment": rows["experiment"], "domain": rows["domain"]})
        vals = draws
    else:
        out = pd.DataFrame({"experiment": ["(average over experiments)"], "domain": [None]})
        vals = draws.mean(axis=1, keepdims=True)
    out["mean"] = vals.mean(axis=0)
    out["sd"] = vals.std(axis=0, ddof=1)
    q = np.quantile(vals, [0.05, 0.5, 0.95], axis=0)
    out["q05"], out["q50"], out["q95"] = q
    out["p_worse"] = (vals > 0).mean(axis=0)
    return out.reset_index(drop=True)


def predict_fit(
    con,
    fit_id: int,
    new_pair: Mapping[str, Any] | str,
    *,
    per_experiment: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Prediction for a new pair from stored fit ``fit_id`` (a formula or an effects fit).

    What the user should know about how it was made (a group scale that was
    fixed, a fit converted on reading) is in ``result.attrs["notes"]``.
    """
    from .store import load_fit

    if isinstance(new_pair, str):
        new_pair = parse_new_pair(new_pair)
    kind = _fit_kind(con, fit_id)
    notes: list[str] = []
    if kind == "formula":
        from .formula import load_formula_fit, new_pair_rows, prediction_draws

        row, idata, model, frame = load_formula_fit(con, fit_id, notes=notes)
        size_center = (row.get("summary") or {}).get("size_center_log_params")
        rows = new_pair_rows(model, frame, new_pair, size_center)
        draws = prediction_draws(model, idata, rows, seed=seed)
    else:
        row, idata = load_fit(con, fit_id)
        rows, draws = effects_prediction_draws(con, row, idata, new_pair, seed=seed, notes=notes)
    out = summarise(draws, rows, per_experiment=per_experiment)
    out.attrs["notes"] = notes
    return out


def _fit_kind(con, fit_id: int) -> str:
    from psystats.warehouse.sql import scalar

    kind = scalar(con, "SELECT kind FROM fits WHERE fit_id = ?", [int(fit_id)])
    if kind is None:
        raise WarehouseError(
            f"no fit with fit_id {fit_id}: see `psystats sql "
            f'"SELECT fit_id, kind, created_at FROM fits"`'
        )
    if kind not in PREDICTABLE_KINDS:
        raise WarehouseError(
            f"fit {fit_id} is a {kind!r} fit: predictions for a new pair need an effects "
            "fit (psystats fit effects) or a formula fit (psystats fit formula)"
        )
    return str(kind)


# ---------------------------------------------------------------------------
# Effects fits: the model's equation (docs/model.md) on the stored draws

EFFECTS_KEYS = ("type", "family", "n_params", "generation_order", "release_date")


def effects_prediction_draws(
    con,
    row: dict,
    idata,
    new_pair: Mapping[str, Any],
    *,
    seed: int = 0,
    notes: list[str] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """(experiments, draws as samples x experiments) of a new pair under an effects fit.

    mu(e) = intercept + type[t] + family[f] + size_slope * (log n_params - centre)
            + slope_f * (generation - family centre) + pair_new
            + domain[d(e)] + experiment[e] + type_domain[t, d(e)]

    for each fitted experiment e, every term as the fit had it (a dropped
    term contributes nothing).  A new family's effect and the new pair's
    effect are drawn per posterior draw from Normal(0, sigma_family) and
    Normal(0, sigma_pair); a term whose scale was fixed (too few levels to
    learn one) draws from its fixed prior instead, and a note says so.  The
    fitted pairs' own values are rebuilt from the warehouse's model table and
    checked against the stored ``pair_mean`` draws, so a model edited since
    the fit is refused rather than mispredicted.  ``notes`` collects what
    the user should read.
    """
    unknown = [k for k in new_pair if k not in EFFECTS_KEYS]
    if unknown:
        from psystats.warehouse.validators import did_you_mean

        raise WarehouseError(
            f"--new-pair: an effects fit reads {', '.join(EFFECTS_KEYS)}; not "
            f"{unknown[0]!r}{did_you_mean(unknown[0], EFFECTS_KEYS)}"
        )
    post = idata.posterior
    flat = {v: _flat(post[v]) for v in post.data_vars}
    spec = row.get("spec") or {}
    summary = row.get("summary") or {}
    active = set(summary.get("active_terms") or [])
    pairs = _fitted_pairs(con, row, post)
    rng = np.random.default_rng(seed)
    notes = notes if notes is not None else []
    t = _new_type(new_pair, post, pairs, active)
    part = flat["intercept"].copy()
    if "type" in active:
        part += _level(flat, post, "type", t)
    part += _family_effect(new_pair, flat, post, row, active, rng, notes)
    part += _size_effect(new_pair, flat, summary, active)
    part += _generation_effect(new_pair, flat, post, pairs, spec, active)
    part += _scale_draw("pair", flat, row, active, rng, "the new pair", notes)
    _check_rebuilt_pairs(flat, post, pairs, summary, spec, active)

    exps = [str(e) for e in post["experiment_level"].values]
    domains = _experiment_domains(con, exps)
    cols = []
    for e in exps:
        v = part.copy()
        d = domains[e]
        if "domain" in active:
            v += _level(flat, post, "domain", d)
        if "experiment" in active:
            v += _level(flat, post, "experiment", e)
        if "type_domain" in active:
            i = list(map(str, post["type_level"].values)).index(t)
            j = list(map(str, post["domain_level"].values)).index(d)
            v += flat["type_domain"][:, i, j]
        cols.append(v)
    rows = pd.DataFrame({"experiment": exps, "domain": [domains[e] for e in exps]})
    return rows, np.stack(cols, axis=1)


def _flat(da) -> np.ndarray:
    """(chain, draw, ...) -> (samples, ...)."""
    v = np.asarray(da.values, dtype=float)
    return v.reshape(-1, *v.shape[2:])


def _level(flat, post, term: str, level: str) -> np.ndarray:
    levels = list(map(str, post[f"{term}_level"].values))
    return flat[term][:, levels.index(level)]


def _fitted_pairs(con, row: dict, post) -> pd.DataFrame:
    """The fitted pairs' metadata (models table), in the fit's pair order."""
    from .data import pairs

    names = [str(p) for p in post["pair_level"].values]
    tab = pairs(con).set_index("pair")
    gone = [p for p in names if p not in tab.index]
    if gone:
        raise WarehouseError(
            f"fit {row['fit_id']}: pair {gone[0]!r} is no longer registered; predictions "
            "rebuild each fitted pair from the models table"
        )
    out = tab.loc[names].reset_index()
    for col in ("post_training", "family"):  # as the effects model codes them
        out[col] = out[col].fillna("unknown").astype(str)
    return out


def _new_type(new_pair, post, pairs: pd.DataFrame, active: set) -> str:
    types = (
        list(map(str, post["type_level"].values))
        if "type" in active
        else sorted(pairs["post_training"].astype(str).unique())
    )
    t = str(new_pair.get("type", types[0] if len(types) == 1 else ""))
    if t not in types:
        raise WarehouseError(
            f"--new-pair needs type=... with a type the fit saw: {', '.join(types)}"
            + (f" (not {t!r})" if t else "")
        )
    return t


def _family_effect(new_pair, flat, post, row, active: set, rng, notes: list) -> np.ndarray:
    fam = new_pair.get("family")
    if "family" not in active:
        return np.zeros_like(flat["intercept"])
    if fam is None:
        raise WarehouseError("--new-pair needs family=... (a fitted family or a new one)")
    if str(fam) in map(str, post["family_level"].values):
        return _level(flat, post, "family", str(fam))
    return _scale_draw("family", flat, row, active, rng, f"the new family {fam!r}", notes)


def _scale_draw(term: str, flat, row: dict, active: set, rng, what: str, notes: list) -> np.ndarray:
    """A new level of a grouped term: Normal(0, sigma_<term>) per draw (its fixed prior's
    scale when the fit could not learn one)."""
    n = flat["intercept"].shape[0]
    if term not in active:
        return np.zeros(n)
    z = rng.standard_normal(n)
    if f"sigma_{term}" in flat:
        return flat[f"sigma_{term}"] * z
    prior = (row.get("priors") or {}).get(f"sigma_{term}") or {}
    scale = float(prior.get("sigma", prior.get("beta", 0.5)))
    notes.append(
        f"{what}: the {term} effects had a fixed Normal(0, {scale:g}) prior (too few levels "
        "to learn their spread), so its effect is drawn from that prior"
    )
    return scale * z


def _size_effect(new_pair, flat, summary: dict, active: set) -> np.ndarray:
    if "size" not in active:
        return np.zeros_like(flat["intercept"])
    if "n_params" not in new_pair:
        raise WarehouseError("--new-pair needs n_params=... (the fit has a size term)")
    x = float(np.log(float(new_pair["n_params"]))) - float(summary["size_center_log_params"])
    return flat["size_slope"] * x


def generation_positions(pairs: pd.DataFrame, scale: str) -> pd.Series:
    """Each pair's generation on the fit's scale before centring (the effects model's rule,
    :mod:`.generation_scale`); a date that is missing or unreadable is NaN."""
    return generation_values(pairs, scale, strict=False)


def _generation_x(pairs: pd.DataFrame, scale: str) -> np.ndarray:
    """Centred within family over the fitted pairs with a known generation (as fitted)."""
    g = generation_positions(pairs, scale)
    centre = g.groupby(pairs["family"]).transform("mean")
    varying = g.groupby(pairs["family"]).transform("nunique") >= 2
    return np.where(varying & g.notna(), g - centre, 0.0)


def _generation_effect(new_pair, flat, post, pairs, spec, active: set) -> np.ndarray:
    zero = np.zeros_like(flat["intercept"])
    fam = str(new_pair.get("family", ""))
    if "generation" not in active or fam not in set(pairs["family"].astype(str)):
        return zero  # a new family's single pair sits at its family's centre
    scale = spec.get("generation_scale") or "rank"
    mine = pairs[pairs["family"].astype(str) == fam].reset_index(drop=True)
    key = "release_date" if scale == "date" else "generation_order"
    if key not in new_pair:
        raise WarehouseError(
            f"--new-pair needs {key}=... for a pair of the fitted family {fam!r} "
            f"(the fit has a generation term on the {scale!r} scale)"
        )
    new = pd.DataFrame([{**mine.iloc[0].to_dict(), "pair": "(new pair)", key: new_pair[key]}])
    g = generation_positions(pd.concat([mine, new], ignore_index=True), scale)
    old, x_new = g.iloc[:-1], g.iloc[-1]
    if scale == "rank" and not np.allclose(
        old.to_numpy(float), generation_positions(mine, scale).to_numpy(float), equal_nan=True
    ):
        raise WarehouseError(
            f"generation_order={new_pair[key]} lies between the fitted generations of "
            f"{fam!r}, which have no rank between them; refit with --generation-scale number"
        )
    if not np.isfinite(x_new) or old.isna().all():
        raise WarehouseError(
            f"--new-pair {key}={new_pair[key]!r}: no position on the {scale!r} scale "
            f"(a number for generation_order, YYYY-MM-DD for release_date)"
        )
    slope = flat["generation_slope"]
    if "generation_family" in active:
        gf = list(map(str, post["generation_family_level"].values))
        if fam in gf:
            slope = flat["generation_slope_family"][:, gf.index(fam)]
    return slope * float(x_new - old.mean())


def _check_rebuilt_pairs(flat, post, pairs, summary, spec, active: set) -> None:
    """The fitted pairs' pair_mean rebuilt from the models table equals the stored draws."""
    pred = np.repeat(flat["intercept"][:, None], len(pairs), axis=1)
    if "type" in active:
        levels = list(map(str, post["type_level"].values))
        pred += flat["type"][:, [levels.index(str(t)) for t in pairs["post_training"]]]
    if "family" in active:
        levels = list(map(str, post["family_level"].values))
        pred += flat["family"][:, [levels.index(str(f)) for f in pairs["family"]]]
    if "size" in active:
        x = np.log(pairs["n_params"].astype(float)) - float(summary["size_center_log_params"])
        pred += flat["size_slope"][:, None] * x.to_numpy()[None, :]
    if "generation" in active:
        x = _generation_x(pairs, spec.get("generation_scale") or "rank")
        slope = np.repeat(flat["generation_slope"][:, None], len(pairs), axis=1)
        if "generation_family" in active:
            gf = list(map(str, post["generation_family_level"].values))
            for j, f in enumerate(pairs["family"].astype(str)):
                if f in gf:
                    slope[:, j] = flat["generation_slope_family"][:, gf.index(f)]
        pred += slope * x[None, :]
    if "pair" in active:
        pred += flat["pair"]
    if not np.allclose(pred, flat["pair_mean"], rtol=1e-6, atol=1e-9):
        raise WarehouseError(
            "the models table no longer describes the fitted pairs as the fit saw them "
            "(type, family, size or generation changed since): refit before predicting"
        )


def _experiment_domains(con, experiments: list[str]) -> dict[str, str]:
    from .effects_spec import NO_DOMAIN

    cur = con.execute("SELECT experiment, domain FROM experiments")
    known = {str(e): d for e, d in cur.fetchall()}
    return {e: str(known.get(e) or NO_DOMAIN) for e in experiments}
