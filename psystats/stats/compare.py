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

from psystats.warehouse.errors import WarehouseError

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


def attach_pointwise_loo(
    idata,
    elpd,
    observed: str = "y",
    *,
    labels: Sequence[str] | None = None,
    values: Sequence[float] | np.ndarray | None = None,
    observed_variable: str | None = None,
) -> None:
    """Add ``elpd`` (an ArviZ ``ELPDData`` with ``pointwise=True``) to ``idata`` as a group.

    The observations are named by ``labels`` and their observed ``values``
    are kept beside them (``fit compare`` checks both); by default both come
    from ``idata.observed_data[observed]``.
    """
    import warnings

    import xarray as xr

    if labels is None or values is None:
        obs = idata.observed_data[observed]
        dim = obs.dims[0] if obs.dims else "observation"
        if labels is None:
            labels = (
                [str(v) for v in obs.coords[dim].values]
                if dim in obs.coords
                else [str(i) for i in range(obs.size)]
            )
        if values is None:
            values = np.asarray(obs.values, dtype=float).ravel()
    dim = "observation"
    ds = xr.Dataset(
        {
            "loo_i": (dim, np.asarray(elpd.loo_i, dtype=float).ravel()),
            "pareto_k": (dim, np.asarray(elpd.pareto_k, dtype=float).ravel()),
            "observed": (dim, np.asarray(values, dtype=float).ravel()),
        },
        coords={dim: np.asarray([str(v) for v in labels], dtype=str)},
        attrs={
            "elpd_loo": float(elpd.elpd_loo),
            "se": float(elpd.se),
            "p_loo": float(elpd.p_loo),
            "n_samples": int(elpd.n_samples),
            "good_k": float(getattr(elpd, "good_k", 0.7)),
            "observed_variable": observed_variable or observed,
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


def _data_key(fid: int, row: dict, ds) -> dict:
    dim = ds["loo_i"].dims[0]
    return {
        "fit": fid,
        "kind": row["kind"],
        "scale": row.get("scale"),
        "condition": row.get("condition"),
        "variable": ds.attrs.get("observed_variable"),
        "labels": list(map(str, ds[dim].values)) if dim in ds.coords else None,
        "values": np.asarray(ds["observed"].values, dtype=float),
    }


def _aligned(ds, key: dict, ref: dict):
    """``ds``/``key`` in ``ref``'s order of observations when both name the same ones.

    Fits of the same cells may list them in another order (an effects fit
    and a formula fit): their labels match them up.
    """
    a, b = ref["labels"], key["labels"]
    if a is None or b is None or a == b or len(a) != len(b) or len(set(a)) != len(a):
        return ds, key
    if set(a) != set(b):
        return ds, key
    dim = ds["loo_i"].dims[0]
    pos = {lab: i for i, lab in enumerate(b)}
    ds = ds.isel({dim: [pos[lab] for lab in a]})
    return ds, {**key, "labels": list(a), "values": np.asarray(ds["observed"].values, float)}


def _data_difference(a: dict, b: dict) -> str | None:
    """What differs between the observations of two fits, in words (None: the same data)."""
    extra = []
    for k, what in (("scale", "scale"), ("condition", "condition")):
        if a[k] != b[k]:
            extra.append(f"{what} {a[k]!r} vs {b[k]!r}")
    extra_text = "; " + ", ".join(extra) if extra else ""
    n_a, n_b = a["values"].size, b["values"].size
    if n_a != n_b:
        return f"{n_a} vs {n_b} observations{extra_text}"
    if a["labels"] is not None and b["labels"] is not None and a["labels"] != b["labels"]:
        i = next(i for i, (x, y) in enumerate(zip(a["labels"], b["labels"])) if x != y)
        return (
            f"observation {i + 1} is {a['labels'][i]!r} in one and {b['labels'][i]!r} in the "
            f"other{extra_text}"
        )
    close = np.isclose(a["values"], b["values"], rtol=1e-9, atol=1e-12, equal_nan=True)
    if not close.all():
        i = int(np.argmin(close))
        name = a["labels"][i] if a["labels"] is not None else str(i + 1)
        return (
            f"different observed values, first at {name!r}: {a['values'][i]:.6g} vs "
            f"{b['values'][i]:.6g}{extra_text}"
        )
    return None


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
    loos: dict = {}
    ref: dict | None = None
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
        key = _data_key(fid, row, ds)
        if ref is None:
            ref = key
        else:
            ds, key = _aligned(ds, key, ref)
            why = _data_difference(ref, key)
            if why:
                raise WarehouseError(
                    f"fits {ref['fit']} and {fid} are not of the same data ({why}): "
                    "PSIS-LOO can only compare models of the same observations"
                )
        loos[f"fit {fid}"] = _elpd(ds, f"fit {fid}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(loos, ic="loo")
    table = table.reset_index(names="fit")
    table.insert(1, "kind", [kinds[int(f.split()[1])] for f in table["fit"]])
    return table
