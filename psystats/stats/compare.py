"""Compare stored fits of the same data (``psystats fit compare``): PSIS-LOO or K-fold.

A fit that ran its checks keeps its pointwise leave-one-out ELPD (one value
per observation, with the Pareto k of each) in its NetCDF's ``psystats_loo``
group (:func:`.fit_checks.attach_pointwise_loo`).  :func:`compare_fits` reads those back,
checks that the fits saw the same observations and met their gates, and
hands them to ``arviz.compare``: ELPD differences to the best fit, their
standard errors from the pointwise differences, and stacking weights.  When
Pareto k is high it names the remedy, K-fold cross-validation
(:mod:`.kfold`), which ``kfold=K`` runs instead of PSIS-LOO.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError

from .fit_checks import GROUP, PARETO_K_BAD

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
        return ds, key, None
    if set(a) != set(b):
        return ds, key, None
    dim = ds["loo_i"].dims[0]
    pos = {lab: i for i, lab in enumerate(b)}
    order = [pos[lab] for lab in a]
    ds = ds.isel({dim: order})
    key = {**key, "labels": list(a), "values": np.asarray(ds["observed"].values, float)}
    return ds, key, order


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


def stored_observations(idata) -> dict:
    """Labels and observed values of a fit's pointwise LOO (its ``psystats_loo`` group)."""
    ds = idata[GROUP]
    dim = ds["loo_i"].dims[0]
    return {
        "labels": [str(v) for v in ds[dim].values],
        "values": np.asarray(ds["observed"].values, dtype=float),
    }


@dataclass
class _Stored:
    fid: int
    row: dict
    idata: Any
    ds: Any  # the psystats_loo group, in the reference fit's order of observations
    order: list[int] | None = None  # that order as positions in the fit's own (None: same)


def compare_fits(
    con,
    fit_ids: Sequence[int],
    *,
    kfold: int | None = None,
    seed: int = 0,
    include_failed: bool = False,
) -> pd.DataFrame:
    """Compare stored fits of the same data; one row per fit, best first.

    By PSIS-LOO from each fit's stored pointwise values (``arviz.compare``:
    ELPD differences to the best fit, their SEs from the pointwise
    differences, stacking weights), or with ``kfold=K`` by K-fold
    cross-validation (:mod:`.kfold`: every fit refitted K times on the same
    folds; effects and formula fits).  Columns: fit, kind, gates (passed /
    FAILED), method, then ``arviz.compare``'s rank, elpd_loo, p_loo,
    elpd_diff, weight, se, dse (``elpd_kfold`` and ``p_kfold`` with K-fold),
    and the counts of observations with Pareto k > 0.7 and > 1 in the
    PSIS-LOO (``k>0.7``, ``k>1``).
    ``table.attrs["notes"]`` says what a statistician should know: failed
    gates, high Pareto k and the remedy, what the weights mean.

    Raises :class:`WarehouseError` when fewer than two fits are given, a fit
    stored no pointwise LOO, the fits did not see the same observations, or a
    fit failed its gates (unless ``include_failed``, then it is marked).
    """
    import arviz as az

    ids = [int(f) for f in fit_ids]
    if len(set(ids)) < 2:
        raise WarehouseError("fit compare needs at least two different fit ids")
    fits = _load_same_data(con, ids)
    notes = _gate_notes(fits, include_failed)
    psis = {f"fit {f.fid}": _psis(f) for f in fits}
    if kfold:
        elpds, kf_notes = _kfold_elpds(con, fits, int(kfold), seed)
        notes += kf_notes
        method = f"K-fold (K={int(kfold)})"
    else:
        elpds, method = psis, "PSIS-LOO"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(elpds, ic="loo")
    table = table.reset_index(names="fit")
    if kfold:  # ArviZ names the columns after PSIS-LOO; these values are K-fold's
        table = table.rename(columns={"elpd_loo": "elpd_kfold", "p_loo": "p_kfold"})
    by_name = {f"fit {f.fid}": f for f in fits}
    table.insert(1, "kind", [by_name[n].row["kind"] for n in table["fit"]])
    table.insert(
        2, "gates", ["passed" if by_name[n].row["passed"] else "FAILED" for n in table["fit"]]
    )
    table.insert(3, "method", method)
    k = {n: np.asarray(psis[n].pareto_k, dtype=float) for n in table["fit"]}
    table[f"k>{PARETO_K_BAD}"] = [int(np.sum(k[n] > PARETO_K_BAD)) for n in table["fit"]]
    table["k>1"] = [int(np.sum(k[n] > 1.0)) for n in table["fit"]]
    table = table.drop(columns=["warning", "scale"], errors="ignore")
    if not kfold:
        notes += _pareto_notes(fits, k)
    notes += _weight_notes(table)
    table.attrs["notes"] = notes
    return table


def _load_same_data(con, ids: list[int]) -> list[_Stored]:
    """Each fit's row, idata and pointwise LOO; refuses fits of different observations."""
    from .store import load_fit

    out: list[_Stored] = []
    ref: dict | None = None
    for fid in ids:
        row, idata = load_fit(con, fid)
        if GROUP not in idata.groups():
            raise WarehouseError(
                f"fit {fid} ({row['kind']}) stored no pointwise PSIS-LOO: refit it with its "
                "checks (without --no-checks); fits stored before this feature lack it"
            )
        ds = idata[GROUP]
        key = _data_key(fid, row, ds)
        order = None
        if ref is None:
            ref = key
        else:
            ds, key, order = _aligned(ds, key, ref)
            why = _data_difference(ref, key)
            if why:
                raise WarehouseError(
                    f"fits {ref['fit']} and {fid} are not of the same data ({why}): "
                    "PSIS-LOO can only compare models of the same observations"
                )
        out.append(_Stored(fid, row, idata, ds, order))
    return out


def _psis(f: _Stored):
    """PSIS-LOO of one fit: ``arviz.loo`` on its NetCDF's ``log_likelihood`` group when that
    holds the observations as one variable (so the stored file alone gives the same numbers),
    else the pointwise values its checks stored (``psystats_loo``)."""
    import arviz as az
    import xarray as xr

    groups = f.idata.groups()
    n = f.ds["loo_i"].size
    if "log_likelihood" in groups and len(f.idata.log_likelihood.data_vars) == 1:
        (da,) = f.idata.log_likelihood.data_vars.values()
        v = np.asarray(da.values, dtype=float)
        v = v.reshape(v.shape[0], v.shape[1], -1)
        if v.shape[-1] == n:
            if f.order is not None:
                v = v[..., f.order]
            ll = xr.Dataset(
                {"observations": (("chain", "draw", "observation"), v)},
                coords={"chain": da["chain"].values, "draw": da["draw"].values},
            )
            joint = az.InferenceData(posterior=f.idata.posterior, log_likelihood=ll)
            with warnings.catch_warnings():  # the posterior sets the relative efficiency
                warnings.simplefilter("ignore")
                return az.loo(joint, pointwise=True)
    return _elpd(f.ds, f"fit {f.fid}")


def _gate_notes(fits: list[_Stored], include_failed: bool) -> list[str]:
    failed = [f for f in fits if f.row.get("passed") is False]
    if not failed:
        return []
    names = ", ".join(f"fit {f.fid} ({f.row['kind']})" for f in failed)
    if not include_failed:
        raise WarehouseError(
            f"{names} missed {'its' if len(failed) == 1 else 'their'} diagnostic gates "
            "(passed = false): a posterior that did not converge gives an elpd that cannot be "
            "trusted; refit it, or add --include-failed to compare it anyway (marked FAILED)"
        )
    return [
        f"{names}: FAILED its diagnostic gates (passed = false); its elpd comes from draws "
        "that did not meet R-hat/ESS/divergence gates and may be wrong"
    ]


def _pareto_notes(fits: list[_Stored], k: dict) -> list[str]:
    from .kfold import KFOLD_KINDS

    notes = []
    high = [f for f in fits if np.any(k[f"fit {f.fid}"] > PARETO_K_BAD)]
    for f in high:
        kk = k[f"fit {f.fid}"]
        notes.append(
            f"fit {f.fid}: {_of(int(np.sum(kk > PARETO_K_BAD)), kk.size)} "
            f"Pareto k > {PARETO_K_BAD} ({int(np.sum(kk > 1))} above 1): PSIS-LOO is unreliable "
            "for them, and so is this comparison"
        )
    if high:
        ids = " ".join(str(f.fid) for f in fits)
        able = all(f.row["kind"] in KFOLD_KINDS for f in fits)
        notes.append(
            (
                f"remedy: `psystats fit compare {ids} --kfold 10` refits each fit 10 times "
                "without one tenth of the observations and computes their held-out log "
                "predictive density exactly"
                if able
                else "remedy: K-fold refits (--kfold K) are available for effects and formula "
                "fits only; "
                + ", ".join(
                    f"fit {f.fid} is {f.row['kind']}"
                    for f in fits
                    if f.row["kind"] not in KFOLD_KINDS
                )
            )
            + " (moment matching is not available in psystats)"
        )
    return notes


def _of(k: int, n: int) -> str:
    """``"1 of 32 observations has"``, ``"5 of 32 observations have"``."""
    return f"{k} of {n} observations {'has' if k == 1 else 'have'}"


def _weight_notes(table: pd.DataFrame) -> list[str]:
    notes = [
        "weight: stacking weights (Yao et al. 2018), the mix of these fits that best predicts "
        "left-out observations; not the probability that a fit is the true model, and no more "
        "certain than the elpd differences behind them"
    ]
    for r in table.iloc[1:].itertuples(index=False):
        diff, dse = float(r.elpd_diff), float(r.dse)
        if diff < 4 or diff < 2 * dse:
            notes.append(
                f"{r.fit} trails {table['fit'].iloc[0]} by {diff:.1f} ± {dse:.1f}: a difference "
                "under 4, or under two of its SEs, does not tell the fits apart (Sivula et al. "
                "2022)"
            )
    return notes


def _kfold_elpds(con, fits: list[_Stored], k: int, seed: int) -> tuple[dict, list[str]]:
    """K-fold ELPDData of every fit, on the same folds (the first fit's observation labels)."""
    import arviz as az
    import xarray as xr

    from . import kfold as kf

    labels = stored_observations(fits[0].idata)["labels"]
    # The folds follow the reference order; each fit's own order maps onto it by label.
    fold_ref = dict(zip(labels, kf.folds(labels, k, seed)))
    refits = [kf.refittable(con, f.row, f.idata, stored_observations(f.idata)) for f in fits]
    out, notes = (
        {},
        [
            f"method: K-fold cross-validation, K = {k} (folds seeded with {seed}; every fit refitted "
            f"{k} times with its own sampler settings); the Pareto k columns are those of the "
            "PSIS-LOO it replaces"
        ],
    )
    for f, ref in zip(fits, refits):
        if set(ref.labels) != set(labels):
            raise WarehouseError(
                f"fit {f.fid}: its refits do not name the observations as its stored LOO does"
            )
        fold_of = np.array([fold_ref[lab] for lab in ref.labels])
        a = f.ds.attrs
        res = kf.kfold(
            ref, fold_of, fit_id=f.fid, full_lpd=float(a["elpd_loo"]) + float(a["p_loo"])
        )
        notes += res.notes
        pos = {lab: i for i, lab in enumerate(ref.labels)}
        elpd_i = res.elpd_i[[pos[lab] for lab in labels]]
        out[f"fit {f.fid}"] = az.ELPDData(
            data=[
                res.elpd,
                res.se,
                res.p,
                int(a["n_samples"]),
                len(labels),
                False,
                xr.DataArray(elpd_i, dims="observation"),
                xr.DataArray(np.zeros(len(labels)), dims="observation"),
                "log",
                PARETO_K_BAD,
            ],
            index=_ELPD_INDEX,
        )
    return out, notes
