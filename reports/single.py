"""One report figure as its own file (SVG, PNG or PDF), with the data behind it as CSV.

``psystats plot NAME -o fig.svg`` and ``wh.plot(NAME, "fig.svg")`` call
:func:`write_figure`; it draws with the report's own figure functions
(``reports.figures``) from the report's own queries (``reports.queries``),
so a figure in a paper is the figure in the report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from psystats.warehouse.errors import WarehouseError

from . import figures as figs
from . import queries as q

FIGURES = ("nll-vs-size", "domain-heatmap", "forest", "generations", "ppc")
FORMATS = (".svg", ".png", ".pdf")
KIND_OF = {"domain-heatmap": "effects", "forest": "effects", "generations": "generations"}


def _fit(con, fit_id: int | None, kind: str | None) -> dict:
    """The fits row to draw: the given one, or the newest of ``kind``."""
    if fit_id is None:
        fit = q.latest_fit(con, kind or "effects")
        if fit is None:
            raise WarehouseError(f"no {kind} fit in the warehouse: run `psystats fit {kind}`")
        return fit
    rows = [f for f in q.all_fits(con) if int(f["fit_id"]) == int(fit_id)]
    if not rows:
        raise WarehouseError(f'no fit {fit_id}: see `psystats sql "SELECT fit_id, kind FROM fits"`')
    return rows[0]


def figure_and_data(
    con, name: str, *, fit_id: int | None = None, condition: str | None = None
) -> tuple:
    """(matplotlib Figure, DataFrame behind it) of one report figure."""
    if name not in FIGURES:
        raise WarehouseError(f"unknown figure {name!r}: use one of {', '.join(FIGURES)}")
    if name == "nll-vs-size":
        conds = q.conditions_scored(con)
        if not conds:
            raise WarehouseError("no scores yet: run `psystats score` or `psystats scores import`")
        condition = condition or ("plain" if "plain" in conds else conds[0])
        table, _ = q.model_nll(con, condition)
        if table.empty or table["n_params"].isna().all():
            raise WarehouseError(
                f"no model scored under condition {condition!r} has a parameter count"
            )
        return figs.nll_by_size(table, condition=condition), table
    if name == "ppc":
        from psystats.stats.store import load_fit

        fit = _fit(con, fit_id, "effects")
        _, idata = load_fit(con, int(fit["fit_id"]))
        fig = figs.ppc(idata, title=f"fit {fit['fit_id']} ({fit['kind']})")
        if fig is None:
            raise WarehouseError(
                f"fit {fit['fit_id']} stored no posterior predictive draws (fitted with --no-checks?)"
            )
        return fig, figs.ppc_frame(idata)
    fit = _fit(con, fit_id, KIND_OF[name])
    fid = int(fit["fit_id"])
    if name == "domain-heatmap":
        cells = q.pair_domain_effects(con, fid)
        if cells.empty:
            raise WarehouseError(f"fit {fid} ({fit['kind']}) stores no pair_domain_effect")
        return figs.effect_heatmap(cells, scale=fit.get("scale")), cells
    if name == "generations":
        curves = q.generation_curves(con, fid)
        if curves.empty:
            raise WarehouseError(f"fit {fid} ({fit['kind']}) stores no base_nll/gap parameters")
        return figs.generations(curves), curves
    # forest: the effects model's groups, or every stored parameter of another kind of fit
    rows = q.forest_rows(con, fid) if fit["kind"] == "effects" else pd.DataFrame()
    if rows.empty:
        p = q.fit_params(con, fid)
        if p.empty:
            raise WarehouseError(f"fit {fid} has no fit_params rows")
        p["group"] = p["parameter"]
        p["label"] = [
            lab if isinstance(lab, str) and lab else par
            for lab, par in zip(p["label"], p["parameter"])
        ]
        rows = p[
            ["group", "parameter", "label", "mean", "sd", "q05", "q95", "hdi_low", "hdi_high"]
            + ["r_hat", "ess_bulk"]
        ]
    scale = fit.get("scale") or "nats"
    fig = figs.forest(
        rows,
        title=f"fit {fid} ({fit['kind']})",
        xlabel=f"post − base NLL difference ({scale} per response)",
    )
    return fig, rows


def write_figure(
    con,
    name: str,
    output: Path,
    *,
    fit_id: int | None = None,
    condition: str | None = None,
    csv: bool = True,
) -> tuple[Path, Path | None]:
    """Draw figure ``name`` into ``output`` and its data into ``output`` with ``.csv``."""
    import matplotlib.pyplot as plt

    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise WarehouseError(f"{output}: the figure file must end in {', '.join(FORMATS)}")
    fig, data = figure_and_data(con, name, fit_id=fit_id, condition=condition)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(output, dpi=300 if output.suffix.lower() == ".png" else None)
    finally:
        plt.close(fig)
    out_csv = None
    if csv:
        out_csv = output.with_suffix(".csv")
        data = data.copy()
        if "coords" in data:
            data["coords"] = data["coords"].astype(str)
        data.to_csv(out_csv, index=False)
    return output, out_csv
