"""Storing fits in the warehouse (``fits``, ``fit_params``) and their full posterior as NetCDF.

One fit = one ``fits`` row (what was fitted, on which data, how it was
sampled, whether it passed its gates), one ``fit_params`` row per scalar
element of every stored variable (so SQL can answer "which domain suffers
most" directly), and one NetCDF file with the whole ``InferenceData`` (the
statistician's entry point: ``arviz.from_netcdf``).  The NetCDF lives in
``<warehouse file>.fits/fit-<id>.nc`` unless a folder is given.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar, transaction

from .sampling import Diagnostics

PARAM_COLUMNS = [
    "fit_id",
    "parameter",
    "label",
    "coords",
    "mean",
    "sd",
    "q03",
    "q05",
    "q50",
    "q95",
    "q97",
    "hdi_low",
    "hdi_high",
    "r_hat",
    "ess_bulk",
    "ess_tail",
    "unit",  # last: not a number (summarise_posterior)
]


def _jsonable(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return v.to_dict() if hasattr(v, "to_dict") else asdict(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def to_json(v: Any) -> str | None:
    """JSON text for a spec/summary/diagnostics value (dataclasses, numpy scalars, NaN -> null)."""
    if v is None:
        return None
    if is_dataclass(v) and not isinstance(v, type):
        v = _jsonable(v)
    return json.dumps(_clean(v), default=_jsonable, sort_keys=True)


def _clean(v: Any) -> Any:
    # json.dumps writes NaN as the non-standard token NaN; DuckDB's JSON type refuses it.
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def warehouse_file(con) -> str | None:
    """Path of the DuckDB file behind ``con`` (None for an in-memory database)."""
    rows = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    return rows[0][0] if rows and rows[0][0] else None


def default_netcdf_dir(con) -> Path:
    """``<warehouse file>.fits/`` (or ``./psystats.fits`` for an in-memory warehouse)."""
    path = warehouse_file(con)
    return Path(f"{path}.fits") if path else Path("psystats.fits")


def summarise_posterior(
    idata,
    var_names: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    element_coords: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    units: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per scalar element of each posterior variable: the ``fit_params`` columns.

    ``units`` maps a variable to its unit (``unit``; NULL for a variable not in it).

    ``labels`` maps a variable to a format string over its dimension names,
    e.g. ``{"type_domain": "{type} × {domain}"}``; by default the label is the
    element's coordinate values joined by " × " (None for a scalar).

    A dimension named ``<name>_level`` is written as ``<name>`` in ``coords``
    and labels: PyMC forbids a variable named like its dimension, so the
    effects model's ``type`` effect has dimension ``type_level``.

    ``element_coords`` overrides the ``coords`` written for a dimension: it
    maps a dimension name to ``{coordinate value: coords dict}``, e.g. a
    flattened (family, generation) dimension ``{"gap_generation": {"qwen 2.5":
    {"family": "qwen", "generation": "2.5"}}}`` gives those elements
    ``{"family": "qwen", "generation": "2.5"}`` instead of
    ``{"gap_generation": "qwen 2.5"}``.  Labels are unchanged.
    """
    import arviz as az

    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    post = idata.posterior
    names = list(var_names) if var_names is not None else list(post.data_vars)
    missing = [n for n in names if n not in post]
    if missing:
        raise WarehouseError(f"no posterior variable(s) {missing} in this fit")
    labels = dict(labels or {})
    element_coords = dict(element_coords or {})
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = post[names]
        rhat, ess_b, ess_t = az.rhat(sub), az.ess(sub, method="bulk"), az.ess(sub, method="tail")
        hdi = az.hdi(sub, hdi_prob=0.94)
    for name in names:
        da = post[name]
        dims = [d for d in da.dims if d not in ("chain", "draw")]
        flat = da.values.reshape(-1, *da.shape[2:])  # (samples, *element shape)
        q = np.quantile(flat, [0.03, 0.05, 0.5, 0.95, 0.97], axis=0)
        mean = flat.mean(axis=0)
        sd = flat.std(axis=0, ddof=1) if flat.shape[0] > 1 else np.full(mean.shape, np.nan)
        h = hdi[name].values  # (*element shape, 2)
        r, eb, et = rhat[name].values, ess_b[name].values, ess_t[name].values
        coord_vals = [list(map(str, da.coords[d].values)) for d in dims]
        dim_names = [d.removesuffix("_level") for d in dims]
        for idx in np.ndindex(*da.shape[2:]):
            coords = {d: coord_vals[k][i] for k, (d, i) in enumerate(zip(dim_names, idx))}
            label: str | None
            if name in labels:
                label = labels[name].format(**coords)
            else:
                label = " × ".join(coords.values()) if coords else None
            stored: dict[str, Any] = {}
            for dim, (d, value) in zip(dims, coords.items()):
                override = element_coords.get(dim, {}).get(value)
                stored.update(
                    {str(k): str(v) for k, v in override.items()} if override else {d: value}
                )
            rows.append(
                dict(
                    parameter=name,
                    label=label,
                    coords=json.dumps(stored) if stored else None,
                    mean=mean[idx],
                    sd=sd[idx],
                    q03=q[0][idx],
                    q05=q[1][idx],
                    q50=q[2][idx],
                    q95=q[3][idx],
                    q97=q[4][idx],
                    hdi_low=h[idx + (0,)],
                    hdi_high=h[idx + (1,)],
                    r_hat=r[idx],
                    ess_bulk=eb[idx],
                    ess_tail=et[idx],
                )
            )
    df = pd.DataFrame(rows, columns=PARAM_COLUMNS[1:-1])
    num = PARAM_COLUMNS[4:-1]
    df[num] = df[num].astype(float)
    df["unit"] = df["parameter"].map(dict(units or {}))
    return df


VERSION_PACKAGES = ("pymc", "nutpie", "arviz", "numpy", "duckdb", "pytensor", "bambi")


def package_versions() -> dict[str, str | None]:
    """psystats, the statistical packages and Python: the versions a reanalysis needs."""
    import platform
    from importlib import metadata

    from psystats.warehouse.provenance import __version__

    out: dict[str, str | None] = {"psystats": __version__}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def netcdf_record(
    *, summary: Any = None, dropped: Any = None, notes: Any = None, **fields: Any
) -> dict:
    """The ``psystats_fit`` attribute of a fit's NetCDF (JSON; :func:`netcdf_attrs` reads it).

    Spec, priors actually used, data selection, terms kept and dropped (with
    the reasons), the fit's messages and notes, the gate rule and the
    diagnostics, sampler settings and package versions (``versions``).
    """
    summary = dict(summary or {}) if isinstance(summary, Mapping) else {}
    return {
        **fields,
        "active_terms": summary.get("active_terms"),
        "dropped_terms": dropped if dropped is not None else summary.get("dropped_terms"),
        "messages": summary.get("messages"),
        "notes": list(notes) if notes else summary.get("notes"),
        "gates": summary.get("gates"),
        "versions": package_versions(),
        "summary": summary or None,
    }


def netcdf_attrs(path: str | os.PathLike) -> dict:
    """The ``psystats_fit`` record stored in a fit's NetCDF file (empty dict if none)."""
    import arviz as az

    idata = az.from_netcdf(str(path))
    raw = idata.attrs.get("psystats_fit")
    return json.loads(raw) if raw else {}


def summary_units(summary: Any) -> dict[str, str]:
    """``{parameter: unit}`` for ``fit_params.unit``: the summary's ``units`` (:mod:`.units`)."""
    units = summary.get("units") if isinstance(summary, Mapping) else None
    return {str(k): str(v) for k, v in units.items()} if isinstance(units, Mapping) else {}


def save_fit(
    con,
    *,
    kind: str,
    idata,
    spec: Any = None,
    priors: Any = None,
    selection: Any = None,
    condition: str | None = None,
    scale: str | None = None,
    sampler: Any = None,
    diagnostics: Diagnostics | Mapping | None = None,
    summary: Any = None,
    seconds: float | None = None,
    netcdf_dir: str | os.PathLike | None = None,
    var_names: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
    element_coords: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    dropped: Any = None,
    notes: Sequence[str] | None = None,
) -> int:
    """Write one fit: its ``fits`` row, its ``fit_params`` rows and its NetCDF; returns fit_id.

    Everything happens in one transaction; the NetCDF is written to a
    temporary name and moved into place just before the commit, and removed
    if anything fails, so an interrupted save leaves neither a half-written
    fit nor an orphan file behind.  ``var_names`` chooses the variables that
    get ``fit_params`` rows (default: every posterior variable); the NetCDF
    always holds the whole ``InferenceData``.  ``labels`` and
    ``element_coords`` shape the ``fit_params`` labels and coords
    (:func:`summarise_posterior`).  ``dropped`` (terms left out, with the
    reason) and ``notes`` go into the NetCDF's record (:func:`netcdf_record`;
    by default the summary's ``dropped_terms`` and ``notes``).  Units: :func:`summary_units`.
    """
    from psystats.warehouse.provenance import __version__

    params = summarise_posterior(idata, var_names, labels, element_coords, summary_units(summary))
    passed: bool | None
    if isinstance(diagnostics, Diagnostics):
        passed = diagnostics.passed
        diagnostics = diagnostics.to_dict()
    else:
        diagnostics = dict(diagnostics or {})
        passed = diagnostics.get("passed")
    sampler = _sampler_with_environment(idata, sampler)
    folder = Path(netcdf_dir) if netcdf_dir is not None else default_netcdf_dir(con)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = final = None
    try:
        with transaction(con):
            fit_id = int(scalar(con, "SELECT nextval('fit_id_seq')"))
            final = folder / f"fit-{fit_id}.nc"
            tmp = folder / f".fit-{fit_id}.nc.partial"
            # The NetCDF stands alone for a reanalysis: what was fitted, to which
            # data, with which priors and terms, by which software.
            idata.attrs["psystats_fit"] = to_json(
                netcdf_record(
                    fit_id=fit_id,
                    kind=kind,
                    name=name,
                    condition=condition,
                    scale=scale,
                    spec=spec,
                    priors=priors,
                    selection=selection,
                    sampler=sampler,
                    summary=summary,
                    dropped=dropped,
                    notes=notes,
                    diagnostics=diagnostics,
                    passed=passed,
                    version=__version__,
                )
            )
            idata.to_netcdf(str(tmp))
            con.execute(
                "INSERT INTO fits (fit_id, kind, name, condition, scale, spec, priors, selection,"
                " sampler, diagnostics, summary, passed, netcdf_path, seconds, psystats_version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    fit_id,
                    kind,
                    name,
                    condition,
                    scale,
                    to_json(spec),
                    to_json(priors),
                    to_json(selection),
                    to_json(sampler),
                    to_json(diagnostics),
                    to_json(summary),
                    None if passed is None else bool(passed),
                    str(final.resolve()),
                    None if seconds is None else float(seconds),
                    __version__,
                ],
            )
            _insert_params(con, fit_id, params)
            os.replace(tmp, final)
    except BaseException:
        for p in (tmp, final):
            if p is not None and p.exists():
                p.unlink()
        raise
    return fit_id


def _sampler_with_environment(idata, sampler: Any) -> Any:
    """The sampler record (read from ``idata`` when not given) with the software environment."""
    if sampler is None:
        from .sampling import sampler_record

        sampler = sampler_record(idata)
    if isinstance(sampler, Mapping) and "environment" not in sampler:
        # Software versions and git revision: `psystats manifest fit:ID` shows them.
        from psystats.warehouse.manifest import environment

        sampler = {**sampler, "environment": environment()}
    return sampler


def _insert_params(con, fit_id: int, params) -> None:
    """The ``fit_params`` rows of one fit (inside the caller's transaction)."""
    params.insert(0, "fit_id", fit_id)
    con.register("_psystats_fit_params", params)
    try:
        con.execute(
            f"INSERT INTO fit_params ({', '.join(PARAM_COLUMNS)}) "
            f"SELECT {', '.join(PARAM_COLUMNS)} FROM _psystats_fit_params"
        )
    finally:
        con.unregister("_psystats_fit_params")


def load_fit(con, fit_id: int):
    """``(fits row as a dict, InferenceData)`` of a stored fit.

    JSON columns come back parsed.  Raises :class:`WarehouseError` when the
    fit or its NetCDF file is missing.
    """
    import arviz as az

    cur = con.execute("SELECT * FROM fits WHERE fit_id = ?", [int(fit_id)])
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if not rows:
        raise WarehouseError(
            f"no fit with fit_id {fit_id}: see `psystats sql "
            f'"SELECT fit_id, kind, created_at FROM fits"`'
        )
    row = dict(zip(cols, rows[0]))
    for k in ("spec", "priors", "selection", "sampler", "diagnostics", "summary"):
        if isinstance(row.get(k), str):
            row[k] = json.loads(row[k])
    path = row.get("netcdf_path")
    if not path or not Path(path).exists():
        raise WarehouseError(
            f"fit {fit_id}: its NetCDF file {path} is missing "
            f"(moved or deleted?); the fit_params rows are still in the warehouse"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_netcdf(path)
    return row, idata
