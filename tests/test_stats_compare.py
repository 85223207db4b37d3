"""`psystats fit compare`: PSIS-LOO comparison of stored fits, checked against arviz.compare."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError

warnings.filterwarnings("ignore")


def _normal_fit(y: np.ndarray, sd_prior: float, seed: int):
    """Exact posterior draws of mu for y_i ~ N(mu, 1), mu ~ N(0, sd_prior): idata with log lik."""
    import arviz as az
    from scipy import stats

    rng = np.random.default_rng(seed)
    prec = 1 / sd_prior**2 + len(y)
    mu = rng.normal(y.sum() / prec, 1 / np.sqrt(prec), size=(4, 500))
    ll = stats.norm.logpdf(y[None, None, :], mu[..., None], 1.0)
    idata = az.from_dict(
        posterior={"mu": mu},
        log_likelihood={"y": ll},
        observed_data={"y": y},
        dims={"y": ["cell"]},
        coords={"cell": [f"c{i}" for i in range(len(y))]},
    )
    return idata, az.loo(idata, pointwise=True)


def _store(con, idata, loo, tmp_path, passed=True):
    from psystats.stats.fit_checks import attach_pointwise_loo
    from psystats.stats.store import save_fit

    attach_pointwise_loo(idata, loo)
    return save_fit(
        con,
        kind="effects",
        idata=idata,
        netcdf_dir=tmp_path / "nc",
        diagnostics={"passed": passed},
    )


def test_compare_fits_equals_arviz_compare_on_the_same_loo(db_path, tmp_path):
    import arviz as az

    from psystats.cli import main
    from psystats.stats.compare import compare_fits

    y = np.random.default_rng(0).normal(2.0, 1.0, 40)
    con = warehouse_db.open(db_path, "write", create=True)
    loos, ids = {}, []
    for k, sd in enumerate((10.0, 0.05)):  # a vague prior and one that fights the data
        idata, loo = _normal_fit(y, sd, seed=k)
        ids.append(_store(con, idata, loo, tmp_path))
        loos[f"fit {ids[-1]}"] = loo
    got = compare_fits(con, ids).set_index("fit")
    ref = az.compare(loos, ic="loo")
    for name in ref.index:
        for col in ("rank", "elpd_loo", "p_loo", "elpd_diff", "se", "dse", "weight"):
            assert got.loc[name, col] == pytest.approx(ref.loc[name, col], rel=1e-9, abs=1e-9)
        assert got.loc[name, "method"] == "PSIS-LOO" and got.loc[name, "gates"] == "passed"
    assert got.index[0] == f"fit {ids[0]}"  # the vague prior predicts better
    con.close()
    res = CliRunner().invoke(main, ["--db", str(db_path), "fit", "compare", *map(str, ids)])
    assert res.exit_code == 0, res.output
    assert f"fit {ids[0]}" in res.output and "elpd_diff" in res.output
    assert "note: weight: stacking weights" in res.output


def test_compare_refuses_failed_fits_and_counts_pareto_k(db_path, tmp_path):
    """A fit that missed its gates is refused, or with --include-failed marked FAILED; the
    Pareto k counts per fit are arviz.loo's on the same log-likelihood, and high k names the
    remedy (a command that runs)."""
    from psystats.cli import main
    from psystats.stats.compare import compare_fits

    rng = np.random.default_rng(0)
    y = np.r_[rng.normal(0, 1, 18), 9.0, 6.5]  # two outliers: high Pareto k
    con = warehouse_db.open(db_path, "write", create=True)
    loos, ids = [], []
    for k, (sd, passed) in enumerate(((10.0, True), (1.0, False))):
        idata, loo = _normal_fit(y, sd, seed=k)
        loos.append(loo)
        ids.append(_store(con, idata, loo, tmp_path, passed=passed))
    with pytest.raises(WarehouseError, match=f"fit {ids[1]} \\(effects\\) missed its diagnostic"):
        compare_fits(con, ids)
    table = compare_fits(con, ids, include_failed=True).set_index("fit")
    con.close()
    for fid, loo in zip(ids, loos):
        k = np.asarray(loo.pareto_k)  # arviz.loo of the fit's own log-likelihood
        row = table.loc[f"fit {fid}"]
        assert row["k>0.7"] == int(np.sum(k > 0.7)) and row["k>1"] == int(np.sum(k > 1))
    assert table["k>0.7"].max() >= 1
    assert table.loc[f"fit {ids[1]}", "gates"] == "FAILED"
    notes = " ".join(table.attrs["notes"])
    assert "FAILED its diagnostic gates" in notes and "Pareto k > 0.7" in notes
    assert f"psystats fit compare {ids[0]} {ids[1]} --kfold 10" in notes
    run = CliRunner().invoke
    res = run(main, ["--db", str(db_path), "fit", "compare", *map(str, ids)])
    assert res.exit_code == 1 and "--include-failed" in res.output
    res = run(main, ["--db", str(db_path), "fit", "compare", *map(str, ids), "--include-failed"])
    assert res.exit_code == 0 and "FAILED" in res.output and "k>0.7" in res.output


def test_compare_refuses_different_data_missing_loo_and_one_fit(db_path, tmp_path):
    import arviz as az

    from psystats.cli import main
    from psystats.stats.compare import compare_fits
    from psystats.stats.store import save_fit

    rng = np.random.default_rng(1)
    con = warehouse_db.open(db_path, "write", create=True)
    a = _store(con, *_normal_fit(rng.normal(0, 1, 20), 1.0, 0), tmp_path)
    b = _store(con, *_normal_fit(rng.normal(0, 1, 20), 1.0, 1), tmp_path)
    bare = save_fit(
        con,
        kind="persona",
        idata=az.from_dict(posterior={"m": np.zeros((2, 10))}),
        netcdf_dir=tmp_path / "nc",
    )
    with pytest.raises(WarehouseError, match="not of the same data"):
        compare_fits(con, [a, b])
    with pytest.raises(WarehouseError, match=f"fit {bare} \\(persona\\) stored no pointwise"):
        compare_fits(con, [a, bare])
    with pytest.raises(WarehouseError, match="at least two"):
        compare_fits(con, [a, a])
    con.close()
    res = CliRunner().invoke(main, ["--db", str(db_path), "fit", "compare", str(a), str(b)])
    assert res.exit_code == 1 and "Error: " in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_fit_compare_on_two_real_effects_fits(db_path, tmp_path):
    """Two effects fits of the same cells (with and without experiment effects), stored,
    then compared: the model with the true experiment effect wins clearly."""
    from psystats.stats.compare import compare_fits
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells
    from psystats.stats.store import save_fit

    cells = simulate_cells(
        6, 12, n_families=2, n_types=2, n_domains=2, seed=5, scales={"sigma_experiment": 0.4}
    ).cells
    con = warehouse_db.open(db_path, "write", create=True)
    ids = []
    sampling = SamplingOptions(draws=300, tune=300, seed=2)
    for terms in ({}, {"experiment": False}):
        spec = EffectsFitSpec(EffectsSpec(terms=terms), compare=())
        fit = fit_cells(cells, spec, sampling, allow_failure=True)
        ids.append(
            save_fit(con, kind="effects", idata=fit.idata, summary=fit.summary, netcdf_dir=tmp_path)
        )
    table = compare_fits(con, ids).set_index("fit")
    con.close()
    assert table.index[0] == f"fit {ids[0]}"
    worse = table.loc[f"fit {ids[1]}"]
    assert worse["elpd_diff"] > 4 * worse["dse"] > 0
