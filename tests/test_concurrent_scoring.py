"""A reader is never locked out while `psystats score` runs in another process.

The scoring run opens the warehouse only to start the run, to commit each
batch and to close the run (psystats.scoring.runner); in between, any reader
gets the file.  Two real processes: `psystats score` on a tiny model, and this
test reading the scores table in a loop through `warehouse.db.open`, which
waits a bounded time for a writer's lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.settings import Settings
from psystats.warehouse.sql import scalar

STUDY = "franke2024bayesian"


@pytest.mark.slow
def test_reader_loop_succeeds_throughout_a_scoring_run(tiny_models, small_warehouse, tmp_path):
    import shutil

    db = tmp_path / "w.duckdb"
    shutil.copy(small_warehouse, db)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PSYSTATS_LOCK_TIMEOUT": "30"}
    cmd = [
        sys.executable,
        "-m",
        "psystats.cli",
        "--db",
        str(db),
        "score",
        "--model",
        str(tiny_models["qwen3"]),
        "--study",
        STUDY,
        "--commit-chars",
        "40000",  # many small batches: many short write sessions
        "--cpu-threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    reads: list[int] = []
    failures: list[str] = []
    try:
        while proc.poll() is None:
            try:
                con = warehouse_db.open(db)
                try:
                    reads.append(int(scalar(con, "SELECT count(*) FROM scores")))
                finally:
                    con.close()
            except Exception as e:  # the test fails below; keep the scorer's output
                failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.2)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert not failures, failures[:3]
    # The reader saw the run grow: several distinct partial counts, never a decrease.
    assert len(set(reads)) >= 3, reads
    assert reads == sorted(reads)
    con = warehouse_db.open(db)
    try:
        n_resp = scalar(con, "SELECT count(*) FROM responses WHERE study = ?", [STUDY])
        assert scalar(con, "SELECT count(*) FROM scores") == n_resp
    finally:
        con.close()


def test_score_cli_releases_the_file_between_sessions(tiny_models, warehouse_copy: Path):
    """After the CLI returns, the file is free: a writer in this process opens it at once."""
    from click.testing import CliRunner

    from psystats.cli import main

    r = CliRunner().invoke(
        main,
        [
            "--db",
            str(warehouse_copy),
            "score",
            "--model",
            str(tiny_models["llama"]),
            "--experiment",
            "nonexistent-experiment",
        ],
    )
    assert r.exit_code == 1
    assert "no such experiment 'nonexistent-experiment'" in r.output
    con = warehouse_db.open(warehouse_copy, "write", create=True, settings=Settings(lock_timeout=0))
    con.close()
