"""Warehouses for the reanalysis tests (API, formula, plot, manifest): real DuckDB files with
the embedded Psych-201 sample and simulated scores with known effects."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def simulated_warehouse(path: Path, *, seed: int = 0) -> Path:
    """The embedded sample, two families x two generations x two types, scored (simulated)."""
    from psystats.sample import sample_path
    from psystats.stats.simulate import simulate_warehouse
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths

    con = warehouse_db.open(path, "write", create=True)
    try:
        ingest_paths(con, [sample_path()])
        simulate_warehouse(
            con,
            families=("qwen", "llama"),
            generations=(1, 2),
            types=("instruct", "reasoning"),
            seed=seed,
        )
    finally:
        con.close()
    return path


def store_prior_fit(path: Path, *, seed: int = 0, kind: str = "test") -> int:
    """A fit stored through ``store.save_fit`` from seeded random draws of a small model.

    Draws of (mu, effect[a, b], sigma) and replicated data (numpy, no sampler:
    these tests are about storage, reading and drawing, not NUTS) in an
    InferenceData with posterior, posterior_predictive and observed_data
    groups like a real fit's.  Returns the fit id.
    """
    import arviz as az

    from psystats.stats.store import save_fit
    from psystats.warehouse import db as warehouse_db

    rng = np.random.default_rng(seed)
    chains, draws = 2, 200
    y = np.array([0.1, -0.2, 0.3, 0.05, 0.0])
    mu = rng.normal(0.05, 0.1, (chains, draws))
    effect = rng.normal(0, 0.2, (chains, draws, 2))
    sigma = np.abs(rng.normal(0.2, 0.05, (chains, draws)))
    level = np.array([0, 1, 0, 1, 0])
    rep = rng.normal(mu[..., None] + effect[..., level], sigma[..., None])
    idata = az.from_dict(
        posterior={"mu": mu, "effect": effect, "sigma": sigma},
        posterior_predictive={"y": rep},
        observed_data={"y": y},
        coords={"level": ["a", "b"], "obs": np.arange(5)},
        dims={"effect": ["level"], "y": ["obs"]},
    )
    con = warehouse_db.open(path, "write", create=True)
    try:
        return save_fit(
            con,
            kind=kind,
            idata=idata,
            spec={"model": "test"},
            selection={"runs": [1, 2]},
            sampler={"sampler": "numpy draws", "seed": seed, "draws": draws, "chains": chains},
            diagnostics={"passed": True},
            var_names=["mu", "effect", "sigma"],
        )
    finally:
        con.close()


def assert_loo_stands_alone(nc_path, summary: dict) -> None:
    """``arviz.loo`` on the stored NetCDF alone (read with arviz only) gives the fit's stored
    PSIS-LOO: ``arviz.loo(idata)`` as a user types it for one observed variable; with several,
    ``arviz.loo(idata, var_name=v)`` each one's, and together the full LOO."""
    import warnings

    import arviz as az
    import pytest

    idata = az.from_netcdf(str(nc_path))
    names = list(idata.log_likelihood.data_vars)
    full = summary["loo"]["full"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(names) == 1:
            res = az.loo(idata)
            assert float(res.elpd_loo) == pytest.approx(full["elpd_loo"], rel=1e-9, abs=1e-9)
            assert float(res.p_loo) == pytest.approx(full["p_loo"], rel=1e-9, abs=1e-9)
            assert int(res.n_data_points) == full["n_observations"]
            return
        total = 0.0
        for name in names:
            res = az.loo(idata, var_name=name)
            own = summary["loo"]["by_variable"][name]
            assert float(res.elpd_loo) == pytest.approx(own["elpd_loo"], rel=1e-9, abs=1e-9)
            total += float(res.elpd_loo)
        assert total == pytest.approx(full["elpd_loo"], rel=1e-9)
