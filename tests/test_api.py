"""The notebook API (psystats.api): real warehouse files, simulated scores, real PyMC draws."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reanalysis_helpers import simulated_warehouse, store_prior_fit

import psystats as ps
from psystats.warehouse.errors import WarehouseError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sim_db(tmp_path_factory) -> Path:
    path = simulated_warehouse(tmp_path_factory.mktemp("api") / "psych.duckdb")
    store_prior_fit(path)
    return path


def test_import_psystats_stays_light():
    """`import psystats` and `ps.open` resolve without importing torch or PyMC."""
    code = (
        "import sys, psystats as ps; ps.open; ps.Warehouse; "
        "print('torch' in sys.modules, 'pymc' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_open_refuses_missing_file(tmp_path: Path):
    with pytest.raises(WarehouseError, match="no warehouse at"):
        ps.open(tmp_path / "nope.duckdb")
    wh = ps.open(tmp_path / "new.duckdb", create=True)
    assert wh.summary().empty and (tmp_path / "new.duckdb").exists()


def test_responses_and_filters(sim_db: Path):
    wh = ps.open(sim_db)
    allr = wh.responses()
    raw = wh.sql("SELECT count(*) AS n FROM responses")["n"].iloc[0]
    assert len(allr) == raw
    fr = wh.responses(study="franke2024bayesian")
    assert (
        set(fr["study"]) == {"franke2024bayesian"}
        and len(fr) == (allr["study"] == "franke2024bayesian").sum()
    )
    assert len(wh.responses(limit=5)) == 5
    # domain comes from the experiments table
    dom = wh.sql("SELECT experiment, domain FROM experiments")
    merged = fr.merge(dom, on="experiment", suffixes=("", "_ref"))
    assert (merged["domain"].fillna("") == merged["domain_ref"].fillna("")).all()


def test_scores_latest_run_rule(sim_db: Path, tmp_path: Path):
    """A newer complete run of the same model replaces the old one in wh.scores()."""
    from psystats.stats.simulate import write_run
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.sql import transaction

    db = tmp_path / "w.duckdb"
    shutil.copy(sim_db, db)
    if Path(f"{sim_db}.fits").exists():
        shutil.copytree(f"{sim_db}.fits", f"{db}.fits")
    wh = ps.open(db)
    model = "sim-qwen1-base"
    before = wh.scores(model=model, condition="plain")
    con = warehouse_db.open(db, "write", create=True)
    rids = before["response_id"].to_numpy()
    with transaction(con):
        new_run = write_run(con, model, "plain", rids, np.full(len(rids), 7.5))
    con.close()
    after = wh.scores(model=model, condition="plain")
    assert set(after["run_id"]) == {new_run} and np.allclose(after["nll"], 7.5)
    every = wh.scores(model=model, latest=False)
    assert len(every) == 2 * len(before)
    one = wh.scores(run_id=int(before["run_id"].iloc[0]))
    assert np.allclose(
        one.sort_values("response_id")["nll"], before.sort_values("response_id")["nll"]
    )


def test_cells_match_an_independent_computation(sim_db: Path):
    """wh.cells() equals a pandas aggregation of the raw scores (paired per participant)."""
    wh = ps.open(sim_db)
    cells = wh.cells()
    s = wh.scores(condition="plain")
    s = s.merge(wh.sql("SELECT response_id, participant_key FROM responses"), on="response_id")
    pairs = wh.models().dropna(subset=["base_model"])
    for _, pr in pairs.iterrows():
        post = s[s.model == pr["name"]].set_index("response_id")
        base = s[s.model == pr.base_model].set_index("response_id")
        d = (post["nll"] - base["nll"].reindex(post.index)).to_frame("d")
        d["participant_key"], d["experiment"] = post["participant_key"], post["experiment"]
        per = d.groupby(["experiment", "participant_key"])["d"].mean().reset_index()
        for exp, g in per.groupby("experiment"):
            row = cells[(cells.post_model == pr["name"]) & (cells.experiment == exp)]
            assert len(row) == 1
            assert row["n"].iloc[0] == len(g)
            assert np.isclose(row["y"].iloc[0], g["d"].mean(), atol=1e-10)
            if len(g) > 1:
                se = g["d"].std(ddof=1) / np.sqrt(len(g))
                assert np.isclose(row["se"].iloc[0], se, atol=1e-10)
    fc = wh.cells(formula_columns=True)
    # the selection by the names `export cells` takes: one model's pairs only
    one = pairs["name"].iloc[0]
    mine = wh.cells(models=one)
    assert len(mine) == (cells.post_model == one).sum() > 0 and mine["pair"].nunique() == 1
    with pytest.raises(WarehouseError, match="did you mean"):
        wh.cells(experiments=["zhu2024game"])
    assert {"mean", "se", "type", "family", "log_params", "experiment"} <= set(fc.columns)


def test_fits_params_posterior(sim_db: Path):
    wh = ps.open(sim_db)
    fits = wh.fits()
    fid = int(fits["fit_id"].iloc[0])
    idata = wh.posterior(fid)
    params = wh.params(fid)
    mu = params[params.parameter == "mu"].iloc[0]
    draws = idata.posterior["mu"].values.ravel()
    assert np.isclose(mu["mean"], draws.mean()) and np.isclose(mu["sd"], draws.std(ddof=1))
    eff = wh.params(fid, "effect")
    assert list(eff["label"]) == ["a", "b"]
    info = wh.fit_info(fid)
    assert info["kind"] == "test" and info["sampler"]["seed"] == 0
    with pytest.raises(WarehouseError, match="no fit with fit_id 999"):
        wh.posterior(999)
    with pytest.raises(WarehouseError, match="unknown fit kind"):
        wh.fit("nonsense")


def test_fit_takes_the_cli_option_names_and_refuses_others_with_did_you_mean(sim_db: Path):
    """wh.fit and the CLI share one adapter (stats.fit_kinds): the same names, checked before
    the warehouse is touched."""
    from psystats.stats.effects_fit import EffectsFitSpec
    from psystats.stats.fit_kinds import fit_request
    from psystats.stats.options import OptionError, Selection

    wh = ps.open(sim_db)
    before = sim_db.read_bytes()
    with pytest.raises(
        OptionError, match=r"unknown fit effects option 'drwas' \(did you mean 'draws'"
    ):
        wh.fit("effects", drwas=10)
    with pytest.raises(OptionError, match=r"did you mean 'allow_failure'"):
        wh.fit("effects", allow_diagnostics_failure=True)
    with pytest.raises(OptionError, match="draws must be an integer from 1"):
        wh.fit("effects", draws=99999999999999999999)
    with pytest.raises(OptionError, match="fit generations cannot select by models"):
        wh.fit("generations", models=["x"])
    with pytest.raises(OptionError, match=r"unknown fit kind 'efects' \(did you mean 'effects'"):
        wh.fit("efects")
    assert sim_db.read_bytes() == before
    req = fit_request(
        "effects",
        post_condition="chat",
        models="m",
        draws=50,
        no_terms=["type"],
        compare=False,
        name="n",
    )
    assert req.selection == Selection(post_condition="chat", models=("m",))
    assert (req.selection.post, req.selection.base) == ("chat", "plain")
    assert req.sampling.draws == 50 and req.store.name == "n"
    assert isinstance(req.spec, EffectsFitSpec) and req.spec.compare == ()
    assert req.spec.model.terms["type"] is False and req.spec.checks
    persona = fit_request("persona", plain_condition="chat", rope=0.02)
    assert persona.selection.post_condition is None and persona.selection.base == "chat"
    assert persona.spec.rope == 0.02
    formula = fit_request("formula", formula="mean ~ type", priors='{"type": {"dist": "Normal"}}')
    assert formula.spec.priors == {"type": {"dist": "Normal"}}
    # options given as objects and by name: the names win, field by field
    both = fit_request("accuracy", {"models": ["a"]}, {"folds": 3}, {"draws": 5}, chains=2)
    assert both.selection.models == ("a",) and both.spec.folds == 3
    assert (both.sampling.draws, both.sampling.chains) == (5, 2)


def _doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_have_snippets_for_every_step():
    code = "\n".join(_doc_blocks())
    for call in (
        "ps.open(",
        "wh.responses(",
        "wh.scores(",
        "wh.cells(",
        "wh.fit(",
        "wh.posterior(",
        "wh.fit_formula(",
        "wh.compare(",
        "wh.predict(",
        "wh.plot(",
        "wh.manifest(",
    ):
        assert call in code, call


@pytest.mark.slow
def test_docs_api_snippets_run(tmp_path: Path):
    """Every python block of docs/api.md runs, in order, against a small warehouse."""
    simulated_warehouse(tmp_path / "psych.duckdb")
    namespace: dict = {}
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(_doc_blocks()):
            try:
                exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
            except Exception as e:  # name the failing block
                raise AssertionError(f"docs/api.md block {i + 1} failed: {e!r}\n{block}") from e
    finally:
        os.chdir(old)
    assert (tmp_path / "forest.pdf").stat().st_size > 1000
    data = pd.read_csv(tmp_path / "forest.csv")
    assert {"parameter", "mean", "q05", "q95"} <= set(data.columns)
    # the new-family prediction is wider than the known-family one (new-group uncertainty)
    same, new = namespace["same_family"], namespace["new_family"]
    assert (new["q95"] - new["q05"]).iloc[0] > (same["q95"] - same["q05"]).iloc[0]
