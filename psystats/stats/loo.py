"""PSIS-LOO comparison of stored fits of the same cells (built-in effects and formula fits).

Both model the cell values with the same likelihood, Normal(mu_c,
sqrt(sigma^2 + se_c^2)), so their leave-one-cell-out predictive densities are
comparable.  The pointwise log-likelihood is recomputed from each fit's
stored posterior (the NetCDF) and its rebuilt model, cells are matched by
(pair, experiment), and ``arviz.compare`` ranks the fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from psystats.warehouse.db import WarehouseError


def _pointwise_effects(con, row: dict, idata):
    """(log-likelihood DataArray (chain, draw, cell), cell keys) of a stored effects fit."""
    import pymc as pm

    from .cells import build_cells, with_scale
    from .effects import EffectsSpec, build_effects_model, prepare

    sel = row.get("selection") or {}
    spec = EffectsSpec.from_dict(row.get("spec") or {})
    cells = with_scale(
        build_cells(
            con,
            post_condition=sel.get("post_condition", "plain"),
            base_condition=sel.get("base_condition"),
            models=sel.get("models"),
            experiments=sel.get("experiments"),
        ),
        spec.scale,
    )
    data = prepare(cells, spec)
    model = build_effects_model(data, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(
            idata, model=model, var_names=["y"], extend_inferencedata=False, progressbar=False
        )
    c = data.cells
    keys = [f"{p} / {e}" for p, e in zip(c["pair"], c["experiment"])]
    return ll["y"], keys


def _pointwise_formula(con, fit_id: int):
    import pymc as pm

    from .formula import load_formula_fit

    _, idata, model, frame = load_formula_fit(con, fit_id)
    var = model.response_component.response.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(
            idata,
            model=model.backend.model,
            var_names=[var],
            extend_inferencedata=False,
            progressbar=False,
        )
    keys = [f"{p} / {e}" for p, e in zip(frame["pair"], frame["experiment"])]
    return ll[var], keys


def compare_fits(con, fit_ids: Sequence[int]) -> pd.DataFrame:
    """``arviz.compare`` of effects/formula fits on the same cells (rows named ``fit <id>``)."""
    import arviz as az

    from .store import load_fit

    if len(fit_ids) < 2:
        raise WarehouseError("compare needs at least two fits")
    pointwise, order = {}, None
    for fid in fit_ids:
        row, idata = load_fit(con, fid)
        if row["kind"] == "effects":
            ll, keys = _pointwise_effects(con, row, idata)
        elif row["kind"] == "formula":
            ll, keys = _pointwise_formula(con, fid)
        else:
            raise WarehouseError(
                f"fit {fid} is a {row['kind']!r} fit: LOO comparison covers effects and "
                "formula fits (models of the same cells)"
            )
        arr = np.asarray(ll.values).reshape(ll.shape[0], ll.shape[1], -1)
        frame = dict(zip(keys, range(len(keys))))
        if order is None:
            order = keys
        elif set(keys) != set(order):
            raise WarehouseError(
                f"fit {fid} was fitted to other cells than fit {fit_ids[0]} "
                f"({len(keys)} vs {len(order)} cells): LOO compares fits of the same data"
            )
        idx = [frame[k] for k in order]
        vals = arr[:, :, idx]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pointwise[f"fit {fid} ({row['kind']})"] = az.from_dict(
                posterior={"_": vals[:, :, 0]}, log_likelihood={"cell": vals}
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(pointwise, ic="loo")
