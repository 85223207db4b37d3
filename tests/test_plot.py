"""`psystats plot`: one report figure as a file, with its data as CSV beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from reanalysis_helpers import simulated_warehouse, store_prior_fit

from psystats.cli import main


@pytest.fixture(scope="module")
def sim_db(tmp_path_factory) -> Path:
    path = simulated_warehouse(tmp_path_factory.mktemp("plot") / "psych.duckdb")
    store_prior_fit(path)
    return path


def test_nll_vs_size_svg_and_csv(sim_db: Path, tmp_path: Path):
    out = tmp_path / "size.svg"
    r = CliRunner().invoke(main, ["plot", "nll-vs-size", "--db", str(sim_db), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    data = pd.read_csv(tmp_path / "size.csv")
    # independent reference: mean over participants of each model's per-participant mean NLL
    import psystats as ps

    wh = ps.open(sim_db)
    pm = wh.participant_means("plain")
    ref = pm.groupby("model")["mean_nll"].mean()
    got = data.set_index(data.columns[0] if "model" not in data else "model")["mean"]
    for model, v in ref.items():
        assert np.isclose(got[model], v, rtol=1e-9), model


def test_forest_and_ppc_of_a_stored_fit(sim_db: Path, tmp_path: Path):
    import psystats as ps

    wh = ps.open(sim_db)
    fid = int(wh.fits()["fit_id"].iloc[0])
    fig, csv = wh.plot("forest", tmp_path / "forest.pdf", fit_id=fid)
    assert fig.read_bytes()[:4] == b"%PDF"
    rows = pd.read_csv(csv)
    params = wh.params(fid)
    assert sorted(rows["mean"].round(12)) == sorted(params["mean"].round(12))
    fig, csv = wh.plot("ppc", tmp_path / "ppc.png", fit_id=fid)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ppc = pd.read_csv(csv)
    idata = wh.posterior(fid)
    rep = idata.posterior_predictive["y"].values.reshape(-1, 5)
    assert np.allclose(ppc["predictive_mean"], rep.mean(axis=0))
    assert np.allclose(ppc["observed"], idata.observed_data["y"].values)


def test_plot_errors_are_clean(sim_db: Path, tmp_path: Path):
    run = CliRunner().invoke
    r = run(main, ["plot", "domain-heatmap", "--db", str(sim_db), "-o", str(tmp_path / "h.svg")])
    assert r.exit_code == 1 and "Error: no effects fit" in r.output
    r = run(
        main, ["plot", "forest", "--db", str(sim_db), "--fit", "99", "-o", str(tmp_path / "f.svg")]
    )
    assert r.exit_code == 1 and "Error: no fit 99" in r.output
    r = run(main, ["plot", "forest", "--db", str(sim_db), "-o", str(tmp_path / "f.jpg")])
    assert r.exit_code == 1 and "must end in" in r.output
    assert "Examples:" in run(main, ["plot", "--help"]).output
