"""Section 7 of the report: diagnostics of every fit, predictive checks, PSIS-LOO."""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import figures as figs
from . import queries as q
from .blocks import (
    SECTION_TITLES,
    Figure,
    Note,
    Para,
    Section,
    esc,
    fmt,
    no_data,
    summary_of,
    table_from,
)
from .fit_notes import caveats


def build(con) -> Section:
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
    ppc_rows, loo_rows = check_rows(list(newest.values()))
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
            idata = load_idata(con, r.fit_id)
            fig = figs.ppc(idata, title=f"fit {r.fit_id} ({kind})") if idata is not None else None
            if fig is not None:
                s.add(*caveats(con, by_id[int(r.fit_id)], short=True))
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


def check_rows(fits: list[dict]) -> tuple[list[list], list[list]]:
    """One row per observed variable for the predictive checks, one per LOO part."""
    ppc_rows, loo_rows = [], []
    for f in fits:
        summ = summary_of(f)
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


def load_idata(con, fit_id: int):
    """A stored fit's posterior through the stats layer (``store.load_fit``), or None.

    A missing or unreadable NetCDF file is reported as "no check", not a crash.
    """
    from psystats.stats.store import load_fit
    from psystats.warehouse.db import WarehouseError

    try:
        return load_fit(con, int(fit_id))[1]
    except (WarehouseError, OSError, ValueError):
        return None
