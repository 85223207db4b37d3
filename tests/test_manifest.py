"""Reproducibility manifests: software versions, git revision, seeds, hashes of runs and fits."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner
from reanalysis_helpers import store_prior_fit

from psystats.cli import main
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.manifest import environment, manifest, parse_ref

ROOT = Path(__file__).resolve().parent.parent


def test_environment_versions_and_git():
    env = environment()
    for name in ("psystats", "torch", "transformers", "pymc", "nutpie", "duckdb"):
        assert env["packages"][name] == metadata.version(name)
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert env["git"]["commit"] == head


def test_parse_ref():
    assert parse_ref("fit:3") == ("fit", 3) and parse_ref("run:7") == ("run", 7)
    assert parse_ref(4) == ("fit", 4)
    with pytest.raises(WarehouseError, match="fit:ID or run:ID"):
        parse_ref("model:1")


def test_run_and_fit_manifests(db_path: Path):
    from psystats.scoring.runs import start_run

    con = warehouse_db.open(db_path, "write", create=True)
    con.execute(
        "INSERT INTO models (model_id, name, source, post_training) "
        "VALUES (nextval('model_id_seq'), 'm', '/models/m', 'base')"
    )
    settings = {"dtype": "float32", "render": {"template_sha256": "abc"}, "batching": {}}
    rid, done = start_run(
        con,
        {"name": "m"},
        "plain",
        {},
        settings,
        {"weights_sha256": "w" * 64, "tokenizer_sha256": "t" * 64},
    )
    assert not done
    # the environment is recorded but not part of the run's identity: resuming matches
    assert start_run(con, {"name": "m"}, "plain", {}, settings, {})[0] == rid
    con.close()
    fid = store_prior_fit(db_path, seed=5)
    con = warehouse_db.open(db_path)
    try:
        run = manifest(con, f"run:{rid}")
        fit = manifest(con, fid)
    finally:
        con.close()
    assert run["weights_sha256"] == "w" * 64 and run["tokenizer_sha256"] == "t" * 64
    assert run["template_sha256"] == "abc" and run["model"]["source"] == "/models/m"
    assert run["environment"]["packages"]["torch"] == metadata.version("torch")
    assert fit["seed"] == 5 and fit["environment"]["packages"]["pymc"] == metadata.version("pymc")
    assert [r["run_id"] for r in fit["runs"]] == [rid]  # run 2 of the selection does not exist
    r = CliRunner().invoke(main, ["manifest", f"fit:{fid}", "--db", str(db_path)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fit_id"] == fid
    r = CliRunner().invoke(main, ["manifest", "fit:99", "--db", str(db_path)])
    assert r.exit_code == 1 and "Error: no fit 99" in r.output
