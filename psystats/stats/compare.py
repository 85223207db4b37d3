"""Compare stored fits of the same data by PSIS-LOO (``psystats fit compare``).

A fit that ran its checks keeps its pointwise leave-one-out ELPD (one value
per observation, with the Pareto k of each) in its NetCDF's ``psystats_loo``
group (:func:`attach_pointwise_loo`).  :func:`compare_fits` reads those back,
checks that the fits saw the same observations, and hands them to
``arviz.compare``: ELPD differences to the best fit, their standard errors
from the pointwise differences, and stacking weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from psystats.warehouse.db import WarehouseError

GROUP = "psystats_loo"
_ELPD_INDEX = [
    "elpd_loo",
    "se",
    "p_loo",
    "n_samples",
    "n_data_points",
    "warning",
    "loo_i",
    "pareto_k",
    "scale",
    "good_k",
]


def attach_pointwise_loo(idata, elpd, observed: str = "y") -> None:
    """Add ``elpd`` (an ArviZ ``ELPDData`` with ``pointwise=True``) to ``idata`` as a group."""
    import warnings

    import xarray as xr

    obs = idata.observed_data[observed]
    dim = obs.dims[0] if obs.dims else "observation"
    coords = {dim: obs.coords[dim].values} if dim in obs.coords else {}
    ds = xr.Dataset(
        {
            "loo_i": (dim, np.asarray(elpd.loo_i, dtype=float).ravel()),
            "pareto_k": (dim, np.asarray(elpd.pareto_k, dtype=float).ravel()),
            "observed": (dim, np.asarray(obs.values, dtype=float).ravel()),
        },
        coords=coords,
        attrs={
            "elpd_loo": float(elpd.elpd_loo),
            "se": float(elpd.se),
            "p_loo": float(elpd.p_loo),
            "n_samples": int(elpd.n_samples),
            "good_k": float(getattr(elpd, "good_k", 0.7)),
            "observed_variable": observed,
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about a group it does not know
        if GROUP in idata.groups():
            del idata[GROUP]
        idata.add_groups({GROUP: ds})


def _elpd(ds, name: str):
    import arviz as az
    import xarray as xr

    a = ds.attrs
    k = np.asarray(ds["pareto_k"].values, dtype=float)
    good = float(a.get("good_k", 0.7))
    return az.ELPDData(
        data=[
            float(a["elpd_loo"]),
            float(a["se"]),
            float(a["p_loo"]),
            int(a["n_samples"]),
            int(k.size),
            bool((k > good).any()),
            xr.DataArray(np.asarray(ds["loo_i"].values, dtype=float), dims="observation"),
            xr.DataArray(k, dims="observation"),
            "log",
            good,
        ],
        index=_ELPD_INDEX,
    )


def compare_fits(con, fit_ids: Sequence[int]) -> pd.DataFrame:
    """``arviz.compare`` over stored fits of the same data; one row per fit, best first.

    Raises :class:`WarehouseError` when fewer than two fits are given, a fit
    stored no pointwise LOO (run it with its checks), or the fits did not see
    the same observations.
    """
    import warnings

    import arviz as az

    from .store import load_fit

    ids = [int(f) for f in fit_ids]
    if len(set(ids)) < 2:
        raise WarehouseError("fit compare needs at least two different fit ids")
    loos, ref, ref_id = {}, None, None
    kinds = {}
    for fid in ids:
        row, idata = load_fit(con, fid)
        kinds[fid] = row["kind"]
        if GROUP not in idata.groups():
            raise WarehouseError(
                f"fit {fid} ({row['kind']}) stored no pointwise PSIS-LOO: refit it with its "
                "checks (without --no-checks); fits stored before this feature lack it"
            )
        ds = idata[GROUP]
        dim = ds["loo_i"].dims[0]
        key = (
            list(map(str, ds[dim].values)) if dim in ds.coords else None,
            np.asarray(ds["observed"].values, dtype=float),
        )
        if ref is None:
            ref, ref_id = key, fid
        elif (
            key[0] != ref[0]
            or key[1].shape != ref[1].shape
            or not np.allclose(key[1], ref[1], rtol=1e-9, atol=1e-12)
        ):
            raise WarehouseError(
                f"fits {ref_id} and {fid} are not of the same data (different "
                "observations): LOO can only compare models of the same observations"
            )
        loos[f"fit {fid}"] = _elpd(ds, f"fit {fid}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(loos, ic="loo")
    table = table.reset_index(names="fit")
    table.insert(1, "kind", [kinds[int(f.split()[1])] for f in table["fit"]])
    return table
