"""Two real processes: a reader in a loop keeps succeeding while a scoring run, an import
or a fit runs.

The reader opens the warehouse read-only (``psystats.warehouse.db.open``,
which waits a bounded time for another process's lock) in a loop and counts
its reads; a read that meets the lock for longer than ``READER_WAIT`` s is a
failure.  A command that held the file for its whole run (the old ``scores
import``, ``fit effects``) fails this test as soon as it runs longer than
that; the commands now hold it only per statement / for the final commit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar

READER_WAIT = 3.0  # seconds a read may wait for a writer's commit

READER = r"""
import json, sys, time
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.settings import Settings
from psystats.warehouse.sql import scalar
db, stop, out = sys.argv[1:4]
wait = float(sys.argv[4])
query = sys.argv[5]
reads, failures = [], []
while True:
    t = time.time()
    try:
        c = warehouse_db.open(db, settings=Settings(lock_timeout=wait), on_wait=None)
        try:
            n = scalar(c, query)
        finally:
            c.close()
        reads.append([t, time.time(), n])
    except WarehouseError as e:
        failures.append([t, time.time(), str(e)])
    with open(out, "w") as f:
        json.dump({"reads": reads, "failures": failures}, f)
    if __import__("os").path.exists(stop):
        break
    time.sleep(0.05)
"""


class Reader:
    """A reader process looping over read-only opens until stopped."""

    def __init__(
        self,
        db: Path,
        tmp: Path,
        wait: float = READER_WAIT,
        query: str = "SELECT count(*) FROM score_runs",
    ) -> None:
        self.stop, self.out = tmp / "stop", tmp / "reads.json"
        self.stop.unlink(missing_ok=True)
        args = [str(db), str(self.stop), str(self.out), str(wait), query]
        self.proc = subprocess.Popen([sys.executable, "-c", READER, *args])
        deadline = time.time() + 120
        while not self.result()["reads"]:  # started and read once
            assert self.proc.poll() is None, "reader died"
            assert time.time() < deadline, "reader never read"
            time.sleep(0.1)

    def result(self) -> dict:
        try:
            return json.loads(self.out.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"reads": [], "failures": []}

    def finish(self) -> dict:
        self.stop.touch()
        self.proc.wait(timeout=120)
        return self.result()


def psystats(db: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    env = {**os.environ, "PSYSTATS_LOCK_TIMEOUT": "60"}
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "psystats.cli", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    return r, t0, time.time()


def during(result: dict, t0: float, t1: float) -> int:
    return sum(1 for a, b, _ in result["reads"] if a >= t0 and b <= t1)


@pytest.fixture
def import_file(warehouse_copy, tmp_path) -> Path:
    c = warehouse_db.open(warehouse_copy)
    rows = c.execute("SELECT response_id FROM responses ORDER BY response_id").fetchall()
    c.close()
    ids = [r[0] for r in rows]
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"response_id": ids, "nll": [1.0 + (i % 7) / 3 for i in ids]}), path)
    return path


@pytest.mark.slow
def test_reader_succeeds_throughout_an_import(warehouse_copy, import_file, tmp_path):
    reader = Reader(warehouse_copy, tmp_path)
    try:
        r, t0, t1 = psystats(
            warehouse_copy,
            "scores",
            "import",
            str(import_file),
            "--model",
            "ext",
            "--type",
            "other",
        )
    finally:
        res = reader.finish()
    assert r.returncode == 0, r.stderr
    assert res["failures"] == []
    assert during(res, t0, t1) >= 1
    # The reader saw the import land: 0 runs before, 1 after.
    assert res["reads"][0][2] == 0 and res["reads"][-1][2] == 1
    c = warehouse_db.open(warehouse_copy)
    try:
        assert scalar(c, "SELECT count(*) FROM scores") == pq.read_metadata(import_file).num_rows
    finally:
        c.close()


@pytest.fixture(scope="module")
def paired_warehouse(small_warehouse, tmp_path_factory) -> Path:
    from psystats.stats.simulate import simulate_warehouse

    path = tmp_path_factory.mktemp("conc") / "sim.duckdb"
    shutil.copy(small_warehouse, path)
    c = warehouse_db.open(path, "write", create=True)
    simulate_warehouse(c, families=("qwen",), generations=(1, 2), types=("instruct",), seed=1)
    c.close()
    return path


@pytest.mark.slow
def test_reader_and_writer_succeed_throughout_a_fit(paired_warehouse, import_file, tmp_path):
    """While `fit effects` samples, readers read and another command (an import) writes."""
    db = tmp_path / "w.duckdb"
    shutil.copy(paired_warehouse, db)
    runs_before = warehouse_db.open(db)
    n_runs = scalar(runs_before, "SELECT count(*) FROM score_runs")
    runs_before.close()
    reader = Reader(db, tmp_path)
    env = {**os.environ, "PSYSTATS_LOCK_TIMEOUT": "60"}
    try:
        t0 = time.time()
        fit = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "psystats.cli",
                "--db",
                str(db),
                "fit",
                "effects",
                "--draws",
                "200",
                "--tune",
                "200",
                "--chains",
                "4",
                "--no-compare",
                "--no-checks",
                "--allow-diagnostics-failure",
                "--no-term",
                "generation",
                "--no-term",
                "family",
                "--no-term",
                "size",
                "--no-term",
                "generation_family",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # Once the fit has read its cells and is compiling/sampling, write from outside.
        time.sleep(8)
        imp, i0, i1 = psystats(
            db, "scores", "import", str(import_file), "--model", "ext", "--type", "other"
        )
        fit_alive_during_import = fit.poll() is None
        out, err = fit.communicate(timeout=900)
        t1 = time.time()
    finally:
        res = reader.finish()
    assert fit.returncode == 0, err
    assert imp.returncode == 0, imp.stderr
    assert res["failures"] == []
    assert during(res, t0, t1) >= 3
    c = warehouse_db.open(db)
    try:
        assert scalar(c, "SELECT count(*) FROM fits") == 1
        assert scalar(c, "SELECT count(*) FROM score_runs") == n_runs + 1
    finally:
        c.close()
    # Only meaningful if the import really ran while the fit was alive.
    assert fit_alive_during_import, "the fit ended before the import: make it longer"


@pytest.mark.slow
def test_reader_succeeds_throughout_a_scoring_run(tiny_models, warehouse_copy, tmp_path):
    """`psystats score` holds the file only to start the run, commit a batch and close it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PSYSTATS_LOCK_TIMEOUT": "60"}
    reader = Reader(warehouse_copy, tmp_path)
    try:
        t0 = time.time()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "psystats.cli",
                "--db",
                str(warehouse_copy),
                "score",
                "--model",
                str(tiny_models["qwen3"]),
                "--study",
                "franke2024bayesian",
                "--cpu-threads",
                "1",
                "--commit-chars",
                "40000",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        t1 = time.time()
    finally:
        res = reader.finish()
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("committed batch") >= 2  # several commits, readers in between
    assert res["failures"] == []
    assert during(res, t0, t1) >= 3
    assert res["reads"][0][2] == 0 and res["reads"][-1][2] == 1


@pytest.mark.slow
def test_reader_succeeds_throughout_a_full_ingest(psych201, tmp_path):
    """Issue 21, item 4: ingest reads and stages each file without the warehouse and holds
    it only for the file's short write transaction, so a reader with the default wait
    (30 s) never fails during an ingest of the 18 shared studies, and sees it progress."""
    from psystats.warehouse.settings import DEFAULT_LOCK_TIMEOUT

    db = tmp_path / "w.duckdb"
    r, _, _ = psystats(db, "init")
    assert r.returncode == 0, r.stderr
    reader = Reader(
        db, tmp_path, wait=DEFAULT_LOCK_TIMEOUT, query="SELECT count(*) FROM participants"
    )
    try:
        r, t0, t1 = psystats(db, "ingest", str(psych201))
    finally:
        res = reader.finish()
    assert r.returncode == 0, r.stderr
    assert "ingested 18 files" in r.stdout
    assert res["failures"] == []
    inside = [(a, b, n) for a, b, n in res["reads"] if a >= t0 and b <= t1]
    assert len(inside) >= 5
    # Files land one transaction at a time: the reader saw several partial counts.
    assert len({n for _, _, n in inside}) >= 3
    waits = sorted(b - a for a, b, _ in inside)
    print(
        f"reads during ingest: {len(inside)}, median {waits[len(waits) // 2]:.3f} s, "
        f"max {waits[-1]:.3f} s, ingest {t1 - t0:.1f} s"
    )
