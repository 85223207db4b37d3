"""Section 7 of the report: diagnostics of every fit (with its retries), predictive checks
(in-sample coverage and LOO-PIT calibration), PSIS-LOO, predictive check plots."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import figures as figs
from . import queries as q
from .blocks import (
    Figure,
    Note,
    Para,
    Section,
    esc,
    fmt,
    no_data,
    plural,
    summary_of,
    table_from,
    title,
)
from .fit_notes import caveats

DIAGNOSTICS_COLUMNS = {
    "fit_id": "fit",
    "kind": "kind",
    "condition": "condition",
    "sampler": "sampler",
    "chains": "chains",
    "draws": "draws",
    "retries": "retries",
    "max_rhat": "max R-hat",
    "min_ess_bulk": "min ESS bulk",
    "min_ess_tail": "min ESS tail",
    "divergences": "diverg.",
    "min_bfmi": "min E-BFMI",
    "passed": "passed",
    "seconds": "seconds",
}
PPC_STATISTICS = {"mean": "mean", "sd": "SD", "min": "minimum", "max": "maximum"}
PPC_COLUMNS = {
    "fit": "fit",
    "kind": "kind",
    "observed": "observed",
    "coverage_90": "in-sample 90% coverage",
    "pit_low": "LOO-PIT < 0.05",
    "pit_high": "LOO-PIT > 0.95",
    "pit_ks": "LOO-PIT KS p",
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
PPC_CAPTION = (
    "Posterior predictive checks of the newest fit of each kind. 'In-sample 90% coverage' is "
    "the share of observations inside their 90% posterior predictive interval, with the same "
    "data the posterior was fitted to: each observation helped set its own interval, so the "
    "share is usually above 0.9 and reaches 1.0 even for a model that overfits; it cannot "
    "show that kind of misfit. The LOO-PIT columns are the check that can fail: each "
    "observation's predictive probability P(y_rep ≤ y) with that observation left out "
    "(PSIS importance weights from the stored pointwise log-likelihood; arviz.loo_pit). For "
    "a calibrated model these values are uniform: about 5% below 0.05 and 5% above 0.95 (more "
    "in both tails: intervals too narrow; fewer: too wide), and the Kolmogorov-Smirnov p "
    "against the uniform is not small (approximate: LOO-PIT values are not independent). "
    "Counts (hits) get the randomised PIT. Blank: the fit's NetCDF holds no log_likelihood "
    "group (or too few draws shared with the replications), or the observations are not of "
    "the replications' kind (fractional expected hits against counts). 'PPC p-value, T = minimum' is "
    "P(T(replicated) ≥ T(observed)) for the statistic T = minimum of the standardised "
    "observations (one p-value per statistic, not the smallest p-value; values near 0 or 1 "
    "signal misfit)."
)


def build(con) -> Section:
    s = Section(title("Diagnostics"))
    diag = q.diagnostics_table(con)
    if diag.empty:
        return s.add(no_data("no fits"))
    s.add(
        Para(
            "Gates: R-hat ≤ 1.01, bulk and tail ESS ≥ 400, no divergent transitions; "
            "E-BFMI below 0.3 is flagged. A fit that misses a gate is stored only when "
            '<font face="Courier">--allow-diagnostics-failure</font> was given. A fit that '
            "missed a gate sampling can mend is sampled again (same seed, more draws or a "
            "higher target_accept); 'retries' counts those attempts, listed below the table."
        )
    )
    s.add(*table_from(diag, DIAGNOSTICS_COLUMNS, caption="Diagnostics per fit."))
    for r in diag.itertuples():
        if r.problems:
            s.add(Note(f"fit {r.fit_id} ({esc(r.kind)}): {esc(r.problems)}", "warning"))
        if r.retries:
            s.add(Para(retry_line(int(r.fit_id), str(r.kind), r.attempts), "small"))
    fits = q.all_fits(con)
    newest = {f["kind"]: f for f in fits}  # ordered by fit_id: the last one wins
    idatas: dict[int, Any] = {}
    for f in newest.values():
        idatas[int(f["fit_id"])] = load_idata(con, f["fit_id"])
    ppc_rows, loo_rows = check_rows(list(newest.values()), idatas)
    if ppc_rows:
        s.add(
            *table_from(
                pd.DataFrame(ppc_rows, columns=list(PPC_COLUMNS.values())), caption=PPC_CAPTION
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
    s.add(*ppc_blocks(con, diag, {int(f["fit_id"]): f for f in fits}, idatas))
    if not any(isinstance(b, Figure) for b in s.blocks):
        s.add(
            Note(
                "No posterior predictive plot: no stored fit's NetCDF has posterior_predictive "
                "and observed_data groups"
                + (" (the summaries above come from the fits)." if ppc_rows or loo_rows else ".")
            )
        )
    return s


def retry_line(fit_id: int, kind: str, attempts: list[dict]) -> str:
    """The attempts a fit discarded, each with what it missed, then the one kept."""
    tried = "; ".join(
        f"{a.get('draws', '?')} draws at target_accept {a.get('target_accept', '?')} missed "
        + (esc(", ".join(map(str, a.get("problems") or []))) or "a gate")
        for a in attempts
    )
    return (
        f"Retries of fit {fit_id} ({esc(kind)}): {plural(len(attempts), 'attempt')} discarded "
        f"({tried}); the stored draws are those of the last attempt."
    )


def ppc_blocks(con, diag: pd.DataFrame, by_id: dict[int, dict], idatas: dict) -> list:
    """One predictive check plot per kind: the newest fit of each kind that stored one."""
    out: list = []
    for kind in diag["kind"].unique():
        for r in diag[diag["kind"] == kind].sort_values("fit_id", ascending=False).itertuples():
            fid = int(r.fit_id)
            idata = idatas[fid] if fid in idatas else load_idata(con, fid)
            fig = figs.ppc(idata, title=f"fit {fid} ({kind})") if idata is not None else None
            if fig is None:
                continue
            out += caveats(con, by_id[fid], short=True)
            out.append(
                Figure(
                    fig,
                    f"Posterior predictive check of fit {fid} ({esc(kind)}). Left (static "
                    f"figure): observed cumulative distribution against 50 replicated data "
                    f"sets. Right (and the interactive chart): each observation (dot; cross "
                    f"when outside) against its 90% "
                    f"predictive interval, in sample (so usually more than 90% inside; the "
                    f"LOO-PIT columns above are the out-of-sample check).",
                    figs.ppc_frame(idata),
                    chart="ppc",
                    options={"title": f"fit {fid} ({kind})"},
                )
            )
            break
    return out


# ------------------------------------------------------------------ LOO-PIT


MIN_PIT_DRAWS = 100


def loo_pit(idata, name: str) -> np.ndarray | None:
    """LOO-PIT values of one observed variable, or None when the NetCDF cannot give them.

    The pointwise log-likelihood (``log_likelihood`` group; the variable of the same name,
    else the only one when it has as many observations) and the replicated draws are
    restricted to the posterior draws both hold (matched by chain and draw: the pipeline
    thins them differently), at least :data:`MIN_PIT_DRAWS`; the log-likelihood becomes
    PSIS weights (``arviz.psislw``), handed with the replications to ``arviz.loo_pit``.
    """
    import arviz as az

    if not {"log_likelihood", "posterior_predictive", "observed_data"} <= set(idata.groups()):
        return None
    if name not in idata.posterior_predictive or name not in idata.observed_data:
        return None
    obs = np.asarray(idata.observed_data[name].values, dtype=float).ravel()
    ll_vars = list(idata.log_likelihood.data_vars)
    ll = idata.log_likelihood[name] if name in ll_vars else None
    if ll is None and len(ll_vars) == 1:
        ll = idata.log_likelihood[ll_vars[0]]
    if ll is None or ll.size // (ll.sizes["chain"] * ll.sizes["draw"]) != obs.size:
        return None
    pp = idata.posterior_predictive[name]
    chains = np.intersect1d(pp["chain"].values, ll["chain"].values)
    draws = np.intersect1d(pp["draw"].values, ll["draw"].values)
    if len(chains) * len(draws) < MIN_PIT_DRAWS:
        return None  # too few posterior draws with both a replication and a log-likelihood
    pp = pp.sel(chain=chains, draw=draws).transpose("chain", "draw", ...)
    ll = ll.sel(chain=chains, draw=draws).transpose("chain", "draw", ...)
    y_hat = pp.values.reshape(-1, obs.size).astype(float).T  # (observations, draws)
    lw = ll.values.reshape(-1, obs.size).astype(float).T
    log_weights, _ = az.psislw(-lw, reff=_relative_efficiency(idata, lw.shape[1]))
    if np.all(y_hat == np.round(y_hat)):  # counts
        if not np.all(obs == np.round(obs)):
            return None  # fractional observations (expected hits) against counts: no PIT
        return randomized_pit(obs, y_hat, log_weights)
    return np.asarray(az.loo_pit(y=obs, y_hat=y_hat, log_weights=log_weights), dtype=float)


def randomized_pit(obs: np.ndarray, y_hat: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """LOO-PIT of counts (hits): P(y_rep < y) + U * P(y_rep = y), U uniform (seed 0).

    Without the uniform draw a discrete variable's PIT values pile up on a few
    values and no calibrated model looks uniform; with it they are uniform when
    the model is calibrated (the randomised PIT of Czado, Gneiting and Held 2009).
    """
    w = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    below = (w * (y_hat < obs[:, None])).sum(axis=1)
    equal = (w * (y_hat == obs[:, None])).sum(axis=1)
    return below + np.random.default_rng(0).uniform(size=obs.size) * equal


def _relative_efficiency(idata, n_samples: int) -> float:
    """Mean bulk ESS of the posterior over the number of draws, as ``arviz.loo_pit`` uses
    for its PSIS weights (1 with a single chain); for a thinned subset of the posterior's
    draws at most 1 (thinned draws are at best independent)."""
    import arviz as az

    post = idata.posterior
    if post.sizes.get("chain", 1) < 2:
        return 1.0
    n_posterior = post.sizes["chain"] * post.sizes["draw"]
    ess = az.ess(post, method="mean")
    values = np.hstack([np.asarray(ess[v].values).ravel() for v in ess.data_vars])
    reff = float(values.mean() / n_samples)
    return reff if n_samples >= n_posterior else min(reff, 1.0)


def pit_columns(pit: np.ndarray | None) -> list[str]:
    """Share below 0.05, share above 0.95, KS p against the uniform ('' when no LOO-PIT)."""
    if pit is None or not len(pit):
        return ["", "", ""]
    ks = stats.kstest(pit, "uniform").pvalue
    return [f"{np.mean(pit < 0.05):.0%}", f"{np.mean(pit > 0.95):.0%}", fmt(float(ks))]


def check_rows(fits: list[dict], idatas: dict | None = None) -> tuple[list[list], list[list]]:
    """One row per observed variable for the predictive checks, one per LOO part."""
    ppc_rows, loo_rows = [], []
    idatas = idatas or {}
    for f in fits:
        summ = summary_of(f)
        idata = idatas.get(int(f["fit_id"]))
        ppc = q.as_dict(summ.get("ppc"))
        per_var = (
            {"": ppc}
            if "p_values" in ppc or "coverage_90" in ppc
            else {k: v for k, v in ppc.items() if isinstance(v, dict)}
        )
        for var, d in per_var.items():
            pv = q.as_dict(d.get("p_values"))
            name = var or observed_name(idata)
            pit = loo_pit(idata, name) if idata is not None and name else None
            ppc_rows.append(
                [f["fit_id"], f["kind"], var or "(all)", fmt(d.get("coverage_90"))]
                + pit_columns(pit)
                + [fmt(pv.get(k)) for k in PPC_STATISTICS]
            )
        loo_rows += loo_part_rows(f, q.as_dict(summ.get("loo")))
    return ppc_rows, loo_rows


def observed_name(idata) -> str | None:
    """The only observed variable of a fit (for a summary that is not per variable)."""
    if idata is None or "observed_data" not in idata.groups():
        return None
    names = list(idata.observed_data.data_vars)
    return names[0] if len(names) == 1 else None


def loo_part_rows(f: dict, loo: dict) -> list[list]:
    parts: dict[str, Any] = {"full": loo.get("full")}
    for group in ("by_variable", "without"):
        for name, sub in q.as_dict(loo.get(group)).items():
            sub = q.as_dict(sub)
            parts[f"{'without ' if group == 'without' else ''}{name}"] = sub.get("loo", sub)
    rows = []
    for part, entry in parts.items():
        d = q.as_dict(entry)
        if d.get("elpd_loo") is None:
            continue
        rows.append(
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
    return rows


def load_idata(con, fit_id: int):
    """A stored fit's posterior through the stats layer (``store.load_fit``), or None.

    A missing or unreadable NetCDF file is reported as "no check", not a crash.
    """
    from psystats.stats.store import load_fit
    from psystats.warehouse.errors import WarehouseError

    try:
        return load_fit(con, int(fit_id))[1]
    except (WarehouseError, OSError, ValueError):
        return None
