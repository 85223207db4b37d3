"""The Parquet scores layout: score tables as Parquet partitions read through views.

Both layouts must give the same rows, cells, fits and report inputs; writes
must be atomic (no partial file ever visible), idempotent, and `merge` must
register shard files rather than copy their rows into the DuckDB file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import cli_ok
from psystats.warehouse import db as warehouse_db
from psystats.warehouse import parquet_layout
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar, transaction

SEED = 3


def _make(src: Path, dest: Path, layout: str) -> Path:
    shutil.copy(src, dest)
    if layout == "parquet":
        cli_ok("--db", dest, "init", "--scores-layout", "parquet")
    return dest


@pytest.fixture(scope="module")
def both(small_warehouse, tmp_path_factory) -> dict[str, Path]:
    """The same simulated study (12 runs) in a DuckDB-layout and a Parquet-layout warehouse."""
    from psystats.stats.simulate import simulate_warehouse

    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in ("duckdb", "parquet"):
        path = _make(small_warehouse, root / f"{layout}.duckdb", layout)
        con = warehouse_db.open(path, "write", create=True)
        simulate_warehouse(con, seed=SEED)
        con.close()
        out[layout] = path
    return out


def _rows(path: Path, query: str) -> list[tuple]:
    con = warehouse_db.open(path)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------- layout basics


def test_parquet_warehouse_keeps_rows_out_of_the_duckdb_file(both):
    p = both["parquet"]
    root = Path(str(p) + ".scores")
    assert _rows(p, "SELECT value FROM warehouse_settings WHERE key = 'scores_layout'") == [
        ("parquet",)
    ]
    assert _rows(both["duckdb"], "SELECT value FROM warehouse_settings") == [("duckdb",)]
    # The score tables are views; the DuckDB file's own tables stay empty.
    kinds = dict(_rows(p, "SELECT table_name, table_type FROM information_schema.tables"))
    assert {kinds[t] for t in parquet_layout.TABLES} == {"VIEW"}
    assert _rows(p, "SELECT count(*) FROM _scores_schema") == [(0,)]
    files = sorted(root.glob("scores/run_id=*/part-*.parquet"))
    # The empty column-list file sorts last: DuckDB estimates a scan's rows from the
    # glob's first file, and an estimate of 0 rows wrecks join orders (cells spilled 14 GB).
    assert files[-1].name == parquet_layout.SCHEMA_FILE and files[0].stat().st_size > 1000
    plan = _rows(p, "EXPLAIN SELECT * FROM scores")[0][1]
    estimates = [int(x.replace(",", "")) for x in re.findall(r"~([\d,]+) rows", plan)]
    assert estimates and min(estimates) > 0
    # Independent count: the Parquet files themselves, read with pyarrow.
    n_files = sum(pq.read_metadata(f).num_rows for f in files)
    n_view = _rows(p, "SELECT count(*) FROM scores")[0][0]
    assert n_view == n_files == _rows(both["duckdb"], "SELECT count(*) FROM scores")[0][0] > 0
    # One partition per run, and every file recorded in score_files.
    runs = {int(f.parent.name.split("=")[1]) for f in files} - {parquet_layout.SCHEMA_RUN_ID}
    assert runs == {r for (r,) in _rows(p, "SELECT run_id FROM score_runs")}
    recorded = _rows(p, "SELECT file, n_rows FROM score_files WHERE table_name = 'scores'")
    assert sorted(recorded) == sorted(
        (f"{f.parent.name}/{f.name}", pq.read_metadata(f).num_rows)
        for f in files
        if f.name != parquet_layout.SCHEMA_FILE
    )


def test_both_layouts_hold_identical_rows_and_types(both):
    q = "SELECT * FROM scores ORDER BY run_id, response_id"
    a, b = (_rows(both[k], q) for k in ("duckdb", "parquet"))
    assert a == b
    types = "SELECT column_name, data_type FROM information_schema.columns "
    types += "WHERE table_name = 'scores' ORDER BY ordinal_position"
    assert _rows(both["duckdb"], types) == _rows(both["parquet"], types)


def test_export_cells_and_summary_agree(both, tmp_path):
    """`export cells` from both layouts: the same cells (to summation order: DuckDB
    aggregates files in parallel), and the same `summary`."""
    frames = {}
    for layout, db in both.items():
        out = tmp_path / f"{layout}.csv"
        cli_ok("--db", db, "export", "cells", "-o", out)
        frames[layout] = pd.read_csv(out)
    a, b = frames["duckdb"], frames["parquet"]
    assert len(a) == 16
    pd.testing.assert_frame_equal(
        a.select_dtypes(exclude="number"), b.select_dtypes(exclude="number")
    )
    np.testing.assert_allclose(
        a.select_dtypes("number").to_numpy(float),
        b.select_dtypes("number").to_numpy(float),
        rtol=1e-12,
        atol=1e-14,
    )
    summaries = [
        cli_ok("--db", db, "summary").output.replace(str(db), "DB") for db in both.values()
    ]
    assert summaries[0] == summaries[1]


@pytest.mark.slow
def test_report_inputs_agree(both):
    from psystats.reports import queries

    out = {}
    for layout, db in both.items():
        con = warehouse_db.open(db)
        try:
            conds = queries.conditions_scored(con)
            runs = queries.runs_table(con)
            out[layout] = {
                "overview": queries.overview(con),
                "conditions": conds,
                "models": queries.models_table(con),
                "runs": runs.drop(columns=[c for c in runs if "_at" in c or c == "seconds"]),
                **{f"nll:{c}": queries.participant_nll(con, c) for c in conds},
                **{f"model_nll:{c}": queries.model_nll(con, c)[0] for c in conds},
            }
        finally:
            con.close()
    a, b = out["duckdb"], out["parquet"]
    assert a.keys() == b.keys() and a["conditions"] == ["plain"]
    for key in a:
        if isinstance(a[key], pd.DataFrame):
            assert len(a[key]) > 0, key
            # Exact but for the order DuckDB sums in (it reads several files in parallel).
            pd.testing.assert_frame_equal(
                a[key].reset_index(drop=True), b[key].reset_index(drop=True), rtol=1e-12
            )
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
def test_fit_effects_posteriors_agree(both, tmp_path):
    """The same seed on both layouts: the same posterior (cells agree to summation order,
    so draws agree far inside any statistical margin)."""
    params = {}
    for layout, db in both.items():
        copy = tmp_path / f"{layout}.duckdb"
        shutil.copy(db, copy)
        if layout == "parquet":
            shutil.copytree(str(db) + ".scores", str(copy) + ".scores")
            cli_ok("--db", copy, "init")  # re-point the views after the move
        cli_ok(
            "--db", copy, "fit", "effects", "--draws", "200", "--tune", "200",
            "--chains", "2", "--seed", "11", "--allow-diagnostics-failure",
        )  # fmt: skip
        params[layout] = pd.DataFrame(
            _rows(
                copy,
                "SELECT parameter, label, mean, sd, q05, q95 FROM fit_params "
                "ORDER BY parameter, label",
            ),  # fmt: skip
            columns=["parameter", "label", "mean", "sd", "q05", "q95"],
        )
    a, b = params["duckdb"], params["parquet"]
    assert len(a) > 10
    pd.testing.assert_frame_equal(a[["parameter", "label"]], b[["parameter", "label"]])
    np.testing.assert_allclose(
        a[["mean", "sd", "q05", "q95"]].to_numpy(float),
        b[["mean", "sd", "q05", "q95"]].to_numpy(float),
        rtol=1e-6, atol=1e-8,
    )  # fmt: skip


# --------------------------------------------------------------------------- writes


def _batch(response_ids, nll_offset: float = 0.0):
    from psystats.scoring.assemble import OPTION_SCHEMA, SCORE_SCHEMA, ScoreBatch

    ids = np.asarray(response_ids, dtype=np.int64)
    scores = pa.table(
        {
            "response_id": pa.array(ids, pa.int64()),
            "nll": pa.array(1.0 + nll_offset + ids % 7 / 10, pa.float64()),
            "n_tokens": pa.array(1 + ids % 3, pa.int32()),
            "first_token_nll": pa.array(0.5 + ids % 5 / 10, pa.float64()),
            "top1_all": pa.array(ids % 2 == 0),
            "top1_first": pa.array(ids % 3 == 0),
            "first_token_entropy": pa.array(ids % 4 / 4, pa.float64()),
        }
    ).cast(SCORE_SCHEMA)
    options = pa.table(
        {
            "response_id": pa.array(np.repeat(ids, 2), pa.int64()),
            "option": pa.array(["a", "b"] * len(ids)),
            "logprob": pa.array([-0.5, -1.0] * len(ids), pa.float64()),
        }
    ).cast(OPTION_SCHEMA)
    return ScoreBatch(scores=scores, options=options, tokens=None, participant_keys=[], counts={})


@pytest.fixture
def parquet_run(warehouse_copy):
    """A Parquet-layout copy of the small warehouse with one open score run."""
    from psystats.scoring.runs import start_run
    from psystats.stats.simulate import register_models

    cli_ok("--db", warehouse_copy, "init", "--scores-layout", "parquet")
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    with transaction(con):
        register_models(con, [{"name": "m-test", "post_training": "base"}])
    run_id, _ = start_run(con, {"name": "m-test"}, "plain", {}, {"x": 1}, {})
    ids = [r for (r,) in con.execute("SELECT response_id FROM responses ORDER BY 1").fetchall()]
    yield con, run_id, ids, warehouse_copy
    con.close()


def _visible_files(db: Path) -> list[Path]:
    """The files the views read, the column-list files aside."""
    files = Path(str(db) + ".scores").glob("*/run_id=*/part-*.parquet")
    return sorted(f for f in files if f.name != parquet_layout.SCHEMA_FILE)


def _all_files(db: Path) -> list[Path]:
    return sorted(p for p in Path(str(db) + ".scores").rglob("*") if p.is_file())


def test_write_batch_is_idempotent_under_parquet(parquet_run):
    from psystats.scoring.runs import write_batch

    con, run_id, ids, db = parquet_run
    assert write_batch(con, run_id, _batch(ids[:50])) == 50
    assert write_batch(con, run_id, _batch(ids[:50])) == 0  # a retried batch adds nothing
    assert write_batch(con, run_id, _batch(ids[40:80])) == 30  # only the new responses
    assert scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id]) == 80
    assert scalar(con, "SELECT count(DISTINCT response_id) FROM scores") == 80
    assert scalar(con, "SELECT count(*) FROM option_scores") == 160
    # One file per committed batch that added rows, per table: 2 scores + 2 options.
    assert len(_visible_files(db)) == 4
    assert not [p for p in _all_files(db) if p.name.startswith(".")]
    # Rows equal what was written (independent read of the files with pyarrow).
    got = pa.concat_tables(
        [pq.read_table(f) for f in _visible_files(db) if "/scores/" in str(f)]
    ).sort_by("response_id")
    want = _batch(ids[:80]).scores
    assert got.equals(want)


def test_failed_batch_leaves_no_file(parquet_run):
    """A batch whose transaction fails after its scores file was written: the file goes
    with the rollback, nothing becomes visible, no temporary file stays."""
    from psystats.scoring.assemble import ScoreBatch
    from psystats.scoring.runs import write_batch

    con, run_id, ids, db = parquet_run
    good = _batch(ids[:20])
    bad = ScoreBatch(
        scores=good.scores,
        options=good.options,
        tokens=pa.table({"response_id": good.scores["response_id"]}),  # no token columns
        participant_keys=[],
        counts={},
    )
    with pytest.raises(WarehouseError, match="token_index"):
        write_batch(con, run_id, bad)
    assert scalar(con, "SELECT count(*) FROM scores") == 0
    assert _visible_files(db) == []
    assert not [p for p in _all_files(db) if p.name.startswith(".")]
    assert scalar(con, "SELECT count(*) FROM score_files") == 0
    assert write_batch(con, run_id, good) == 20


CRASH = """
import os
import pyarrow as pa
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import on_transaction_end, transaction
from psystats.warehouse.parquet_layout import write_rows
con = warehouse_db.open({db!r}, "write", create=True)
rows = pa.table({{"response_id": pa.array(range({lo}, {hi}), pa.int64()), "nll": [0.5] * 25}})
con.register("_rows", rows)
with transaction(con):
    if {after_commit}:
        on_transaction_end(con, lambda committed: os._exit(3))  # dies before the rename
    write_rows(con, "scores", {run_id}, "_rows", rows.column_names)
    if not {after_commit}:
        os._exit(3)  # dies before the commit
"""


@pytest.mark.parametrize("after_commit", [False, True])
def test_killed_writer_leaves_no_partial_file_visible(parquet_run, after_commit):
    """A process killed mid-write: before its commit nothing becomes visible and the next
    writable open deletes its temporary file; after its commit (before the rename) the
    next writable open finishes the rename, so the committed rows appear exactly once."""
    con, run_id, ids, db = parquet_run
    con.close()
    code = CRASH.format(
        db=str(db),
        lo=ids[0],
        hi=ids[0] + 25,
        run_id=run_id,
        after_commit=after_commit,
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 3, res.stderr
    hidden = [p for p in _all_files(db) if p.name.startswith(".")]
    assert any(p.name.endswith(".parquet.tmp") for p in hidden)  # the interrupted file
    assert _visible_files(db) == []
    ro = duckdb.connect(str(db), read_only=True)  # a plain reader: nothing half-written
    assert ro.execute("SELECT count(*) FROM scores").fetchall() == [(0,)]
    ro.close()
    con = warehouse_db.open(db, "write", create=True)  # a writable open recovers
    try:
        n = scalar(con, "SELECT count(*) FROM scores WHERE run_id = ?", [run_id])
        assert n == (25 if after_commit else 0)
        assert len(_visible_files(db)) == (1 if after_commit else 0)
        assert not [p for p in _all_files(db) if p.name.startswith(".")]
    finally:
        con.close()


def test_import_resume_and_cli_under_parquet(parquet_run, tmp_path):
    """`scores import` writes one file; importing again is a no-op; export round-trips."""
    con, run_id, ids, db = parquet_run
    con.close()
    src = tmp_path / "ext.parquet"
    pq.write_table(pa.table({"response_id": ids[:30], "nll": [0.25 * i for i in range(30)]}), src)
    cli_ok("--db", db, "scores", "import", src, "--model", "ext-m")
    cli_ok("--db", db, "scores", "import", src, "--model", "ext-m")
    got = _rows(db, "SELECT response_id, nll FROM scores s JOIN score_runs USING (run_id) "
                "WHERE model = 'ext-m' ORDER BY 1")  # fmt: skip
    assert got == [(r, 0.25 * i) for i, r in enumerate(ids[:30])]
    assert len(_visible_files(db)) == 1
    out = tmp_path / "back.parquet"
    cli_ok("--db", db, "scores", "export", "--model", "ext-m", "-o", out)
    assert pq.read_table(out).column("nll").to_pylist() == [0.25 * i for i in range(30)]


def test_replace_and_remove_under_parquet(parquet_run, tmp_path, psych201):
    """Deleting rows (ingest --replace-changed) hides them through score_rows_deleted;
    removing a model deletes its runs' partition folders."""
    from psystats.scoring.runs import write_batch
    from psystats.warehouse.ingest import _delete_participant

    con, run_id, ids, db = parquet_run
    write_batch(con, run_id, _batch(ids[:100]))
    pkey, n_resp = con.execute(
        "SELECT participant_key, count(*) FROM responses WHERE response_id IN "
        "(SELECT unnest(?::BIGINT[])) GROUP BY 1 ORDER BY 1 LIMIT 1",
        [ids[:100]],
    ).fetchall()[0]
    with transaction(con):
        _delete_participant(con, pkey)
    assert scalar(con, "SELECT count(*) FROM scores") == 100 - n_resp
    assert scalar(con, "SELECT count(*) FROM option_scores") == 2 * (100 - n_resp)
    assert len(_visible_files(db)) == 2  # files are never rewritten
    part = Path(str(db) + ".scores") / "scores" / f"run_id={run_id}"
    assert part.is_dir()
    cli_ok("--db", db, "models", "remove", "m-test", "--force")
    assert not part.exists() and _visible_files(db) == []
    assert scalar(con, "SELECT count(*) FROM scores") == 0


# --------------------------------------------------------------------------- readers


def test_plain_reader_from_another_folder_sees_the_view(both, tmp_path):
    """`duckdb.connect(read_only=True)` from another working directory (and a relative
    path to the file) reads the scores through the view; so does the `sql` sandbox."""
    db = both["parquet"]
    want = _rows(both["duckdb"], "SELECT count(*), sum(nll) FROM scores")
    other = tmp_path / "elsewhere"
    other.mkdir()
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print(c.execute('SELECT count(*), sum(nll) FROM scores').fetchall())"
    )
    rel = os.path.relpath(db, other)
    res = subprocess.run(
        [sys.executable, "-c", code, rel], cwd=other, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    count, total = eval(res.stdout)[0]
    assert count == want[0][0] and total == pytest.approx(want[0][1], rel=1e-12)
    out = cli_ok("--db", db, "sql", "--format", "json", "SELECT count(*) AS n FROM scores")
    assert json.loads(out.output)[0]["n"] == want[0][0]
    # The sandbox still keeps other files out.
    from click.testing import CliRunner

    from psystats.cli import main

    res2 = CliRunner().invoke(
        main, ["--db", str(db), "sql", "SELECT * FROM read_csv('/etc/hostname')"]
    )
    assert res2.exit_code == 1


def test_moving_warehouse_and_scores_together(both, tmp_path):
    """Moved together (the folder is stored relative to the file): `init` re-points the
    views; a scores folder moved alone is given with --scores-dir."""
    dest = tmp_path / "moved"
    dest.mkdir()
    db = dest / both["parquet"].name  # the folder is stored as <file name>.scores
    shutil.copy(both["parquet"], db)
    shutil.copytree(str(both["parquet"]) + ".scores", str(db) + ".scores")
    cli_ok("--db", db, "init")
    n = _rows(both["duckdb"], "SELECT count(*) FROM scores")
    assert _rows(db, "SELECT count(*) FROM scores") == n
    shared = tmp_path / "shared" / "scores"
    shared.parent.mkdir()
    shutil.move(str(db) + ".scores", shared)
    cli_ok("--db", db, "init", "--scores-dir", shared)
    assert _rows(db, "SELECT count(*) FROM scores") == n
    assert _rows(db, "SELECT value FROM warehouse_settings WHERE key = 'scores_dir'") == [
        (str(shared.resolve()),)
    ]


def test_layout_is_chosen_when_created(both, db_path):
    from click.testing import CliRunner

    from psystats.cli import main

    res = CliRunner().invoke(
        main, ["--db", str(both["duckdb"]), "init", "--scores-layout", "parquet"]
    )
    assert res.exit_code == 1 and "already holds" in res.output and "score rows" in res.output
    res = CliRunner().invoke(
        main, ["--db", str(both["parquet"]), "init", "--scores-layout", "duckdb"]
    )
    assert res.exit_code == 1 and "cannot be changed back" in res.output
    res = CliRunner().invoke(main, ["--db", str(db_path), "init", "--scores-dir", "x"])
    assert res.exit_code == 1 and "--scores-layout parquet" in res.output
    # One scores folder, one warehouse: a second would reuse run ids.
    taken = str(both["parquet"]) + ".scores"
    res = CliRunner().invoke(
        main, ["--db", str(db_path), "init", "--scores-layout", "parquet", "--scores-dir", taken]
    )
    assert res.exit_code == 1 and "another warehouse" in res.output
    con = warehouse_db.open(db_path, "write", create=True)
    with pytest.raises(WarehouseError, match="must not contain"):
        parquet_layout.enable(con, str(db_path.parent / "bad*name"))
    con.close()


# --------------------------------------------------------------------------- merge


def _write_shards(db: Path, out: Path, model: str, n_units: int = 2) -> tuple[list[int], Path]:
    """Shard files as `score --shard I/N` writes them, with synthetic scores."""
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.shard_files import done_marker_path, write_shard
    from psystats.scoring.shard_keys import _write_json_atomic, run_dir, run_key
    from psystats.scoring.shard_units import WorkUnit

    con = warehouse_db.open(db)
    keys = [k for (k,) in con.execute(
        "SELECT participant_key FROM participants ORDER BY 1 LIMIT 6").fetchall()]  # fmt: skip
    inputs = load_inputs(con, participant_keys=keys)
    con.close()
    key = run_key(model, "plain", {"participant_keys": keys}, {"x": 1}, {})
    rdir = run_dir(out, key)
    per = len(inputs) // n_units
    units = []
    all_ids = []
    for u in range(n_units):
        part = inputs[u * per : (u + 1) * per]
        unit = WorkUnit(f"s0000of0001-{u}", tuple(p.participant_key for p in part), 100)
        ids = [r for p in part for r in p.response_ids]
        all_ids += ids
        batch = _batch(ids)
        batch.participant_keys = [p.participant_key for p in part]
        write_shard(rdir, key, unit, batch, part, shard=(0, 1))
        units.append(unit.unit_id)
    _write_json_atomic(
        done_marker_path(rdir, 0, 1),
        {"i": 0, "n": 1, "units": units, "partition_sha256": "x", "counts": {}},
    )
    return all_ids, rdir


def test_merge_registers_shard_files(parquet_run, tmp_path):
    """Under the Parquet layout `merge` links the shard files into the run's partition:
    no score row enters the DuckDB file, the view counts them once, merging again adds
    nothing, and the linked files are the shard files (same inode)."""
    con, _run, _ids, db = parquet_run
    con.close()
    shards = tmp_path / "shards"
    ids, rdir = _write_shards(db, shards, "m-test")
    out = cli_ok("--db", db, "merge", shards).output
    assert "complete" in out
    run_id = _rows(db, "SELECT max(run_id) FROM score_runs WHERE status = 'complete'")[0][0]
    assert _rows(db, "SELECT count(*), count(DISTINCT response_id) FROM scores "
                 "WHERE run_id = ?".replace("?", str(run_id))) == [(len(ids), len(ids))]  # fmt: skip
    assert _rows(db, "SELECT count(*) FROM _scores_schema") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM _option_scores_schema") == [(0,)]
    registered = _rows(db, "SELECT table_name, source FROM score_files ORDER BY 1, 2")
    assert len(registered) == 4 and all(s.startswith("link:") for _, s in registered)
    shard_inodes = {p.stat().st_ino for p in rdir.glob("unit-*.parquet")}
    linked = {p.stat().st_ino for p in _visible_files(db)}
    assert linked == shard_inodes
    cli_ok("--db", db, "merge", shards)
    assert _rows(db, "SELECT count(*) FROM scores")[0][0] == len(ids)
    assert len(_visible_files(db)) == 4
    # Deleting the shard folder afterwards leaves the warehouse's links intact.
    shutil.rmtree(shards)
    assert _rows(db, "SELECT count(*) FROM option_scores")[0][0] == 2 * len(ids)


def test_merge_under_duckdb_layout_copies_rows(warehouse_copy, tmp_path):
    from psystats.stats.simulate import register_models

    con = warehouse_db.open(warehouse_copy, "write", create=True)
    with transaction(con):
        register_models(con, [{"name": "m-test", "post_training": "base"}])
    con.close()
    ids, _ = _write_shards(warehouse_copy, tmp_path / "shards", "m-test")
    cli_ok("--db", warehouse_copy, "merge", tmp_path / "shards")
    assert _rows(warehouse_copy, "SELECT count(*) FROM scores")[0][0] == len(ids)
    assert _rows(warehouse_copy, "SELECT count(*) FROM score_files") == [(0,)]


# --------------------------------------------------------------------------- migrations


def test_migration_adding_a_column_under_parquet(parquet_run, monkeypatch):
    """A later migration that adds a score column: it is applied to the empty table that
    keeps the columns, the view gains the column, files written before give NULL."""
    from psystats.warehouse import db as wdb

    con, run_id, ids, db = parquet_run
    con.register("_rows", pa.table({"response_id": ids[:5], "nll": [1.0] * 5}))
    with transaction(con):
        parquet_layout.write_rows(con, "scores", run_id, "_rows", ["response_id", "nll"])
    con.close()
    extra = "ALTER TABLE scores ADD COLUMN later_metric DOUBLE;"
    monkeypatch.setattr(wdb, "MIGRATIONS", [*wdb.MIGRATIONS, extra])
    monkeypatch.setattr(wdb, "SCHEMA_VERSION", wdb.SCHEMA_VERSION + 1)
    con = warehouse_db.open(db, "write", create=True)
    try:
        con.register("_new", pa.table({"response_id": ids[5:8], "nll": [2.0] * 3,
                                       "later_metric": [0.5] * 3}))  # fmt: skip
        with transaction(con):
            parquet_layout.write_rows(
                con, "scores", run_id, "_new", ["response_id", "nll", "later_metric"]
            )
        got = con.execute(
            "SELECT response_id, nll, later_metric FROM scores ORDER BY response_id"
        ).fetchall()
        assert got == [(r, 1.0, None) for r in ids[:5]] + [(r, 2.0, 0.5) for r in ids[5:8]]
        cols = [c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'scores' "
            "ORDER BY ordinal_position").fetchall()]  # fmt: skip
        assert cols[0] == "run_id" and cols[-1] == "later_metric"
        kinds = dict(con.execute(
            "SELECT table_name, table_type FROM information_schema.tables").fetchall())  # fmt: skip
        assert kinds["scores"] == "VIEW" and kinds["_scores_schema"] == "BASE TABLE"
    finally:
        con.close()


# --------------------------------------------------------------------------- real scoring


@pytest.mark.slow
def test_score_and_shard_merge_under_parquet_equal_duckdb(tmp_path, psych201, tiny_models):
    """A real (tiny) model: `psystats score` into both layouts, and `--shard I/2` jobs
    merged into a Parquet warehouse, store the same rows (tokens included); the merged
    shard files are registered by hard link."""
    from helpers import cli_base_warehouse, snapshot

    base = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    local, pq_local, pq_merged = (tmp_path / f"{n}.duckdb" for n in ("l", "pl", "pm"))
    for p in (local, pq_local, pq_merged):
        shutil.copy(base, p)
    for p in (pq_local, pq_merged):
        cli_ok("--db", p, "init", "--scores-layout", "parquet")
    score = ("score", "--model", "tiny-qwen3", "--token-level", "-q")
    cli_ok("--db", local, *score)
    cli_ok("--db", pq_local, *score)
    out = tmp_path / "shards"
    for i in range(2):
        cli_ok(
            "--db", pq_merged, *score, "--shard", f"{i}/2", "--out", out, "--unit-tokens", "2000"
        )
    cli_ok("--db", pq_merged, "merge", out)
    tokens = "SELECT response_id, token_index, token_id, logprob FROM token_scores ORDER BY 1, 2"
    want = snapshot(local)
    assert want["scores"] and want["run"][0][2] == "complete"
    for db in (pq_local, pq_merged):
        assert snapshot(db) == want
        assert _rows(db, tokens) == _rows(local, tokens)
        assert _rows(db, "SELECT count(*) FROM _scores_schema") == [(0,)]
    sources = {s.split(":")[0] for (s,) in _rows(pq_merged, "SELECT source FROM score_files")}
    assert sources == {"link"}
    assert {s for (s,) in _rows(pq_local, "SELECT source FROM score_files")} == {"write"}


@pytest.mark.parametrize("layout", ["duckdb", "parquet"])
def test_out_of_memory_is_one_line(both, tmp_path, layout, monkeypatch):
    """DuckDB out of memory (a 10 KB limit: below one DuckDB block on any machine) is an
    environment error: one line with the settings that help, exit code 1, no traceback."""
    from click.testing import CliRunner

    from psystats.cli import main

    # --memory-limit sets $PSYSTATS_MEMORY_LIMIT for the process: monkeypatch restores it.
    monkeypatch.setenv("PSYSTATS_MEMORY_LIMIT", "1GB")
    res = CliRunner().invoke(
        main,
        [
            "--memory-limit",
            "10KB",
            "--db",
            str(both[layout]),
            "export",
            "cells",
            "-o",
            str(tmp_path / "c.csv"),
        ],  # fmt: skip
    )
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and "ran out of memory" in res.output
    assert "--memory-limit" in res.output and len(res.output.strip().splitlines()) == 1
    assert not isinstance(res.exception, duckdb.Error)


READER = """
import sys, time
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.settings import Settings
db, final, seen = sys.argv[1], int(sys.argv[2]), set()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    con = warehouse_db.open(db, settings=Settings(lock_timeout=60), on_wait=None)
    n = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
    con.close()
    seen.add(n)
    if n == final:
        break
    time.sleep(0.01)
print(sorted(seen))
"""


@pytest.mark.slow
def test_reader_in_another_process_sees_whole_batches_only(parquet_run, tmp_path):
    """Two processes: a reader in a loop during three `scores import`s into a Parquet
    warehouse only ever counts whole imports (101, 202, 404 rows: every prefix sum is
    distinguishable), and ends at the total."""
    con, _run, ids, db = parquet_run
    con.close()
    sizes = [101, 202, 404]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), str(sum(sizes))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lo = 0
    for i, n in enumerate(sizes):
        src = tmp_path / f"m{i}.parquet"
        pq.write_table(pa.table({"response_id": ids[lo : lo + n], "nll": [1.0] * n}), src)
        cli_ok("--db", db, "scores", "import", src, "--model", f"ext-{i}")
        lo += n
    out, err = reader.communicate(timeout=180)
    assert reader.returncode == 0, err
    seen = set(json.loads(out))
    assert seen <= {0, 101, 303, 707} and 707 in seen


def test_merge_copies_shard_files_across_filesystems(parquet_run, tmp_path):
    """Shards on another filesystem than the scores folder cannot be hard-linked: they are
    copied (flushed, renamed into place) and recorded as copies; the rows are the same."""
    import tempfile

    con, _run, _ids, db = parquet_run
    con.close()
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        ids, rdir = _write_shards(db, Path(other) / "shards", "m-test")
        cli_ok("--db", db, "merge", Path(other) / "shards")
        registered = _rows(db, "SELECT source FROM score_files")
        assert len(registered) == 4 and all(s.startswith("copy:") for (s,) in registered)
        shard_ino = {p.stat().st_ino for p in rdir.glob("unit-*.parquet")}
    assert not shard_ino & {p.stat().st_ino for p in _visible_files(db)}
    # The shards are gone with their filesystem's folder; the copies hold the rows.
    got = _rows(db, "SELECT response_id, nll FROM scores ORDER BY 1")
    want = _batch(sorted(ids)).scores
    assert got == list(zip(want["response_id"].to_pylist(), want["nll"].to_pylist()))
