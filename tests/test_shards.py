"""Shards for SLURM-style job arrays: partition, files, merge (idempotent, restartable)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from helpers import N_PARTICIPANTS, STUDY, cli_base_warehouse, cli_ok, reference_run, snapshot
from psystats.scoring import shard_files, shard_job, shard_keys, shard_merge, shard_units
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

# ---------------------------------------------------------------------------
# Partitioning (pure)
# ---------------------------------------------------------------------------


def _random_counts(n: int, seed: int = 0) -> dict[int, int]:
    rng = random.Random(seed)
    # Heavy-tailed like real transcripts: most short, a few very long.
    return {1000 + 3 * i: int(rng.paretovariate(1.5) * 500) for i in range(n)}


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_partition_covers_every_participant_once_and_balances_tokens(n_shards):
    counts = _random_counts(200)
    parts = shard_units.partition(counts, n_shards)
    assert len(parts) == n_shards
    flat = [k for p in parts for k in p]
    assert sorted(flat) == sorted(counts) and len(flat) == len(set(flat))
    loads = [sum(counts[k] for k in p) for p in parts]
    # Longest-first greedy: the largest shard exceeds the smallest by at most
    # one participant's tokens.
    assert max(loads) - min(loads) <= max(counts.values())


def test_partition_is_deterministic_whatever_the_input_order():
    counts = _random_counts(100, seed=3)
    shuffled = list(counts.items())
    random.Random(1).shuffle(shuffled)
    assert shard_units.partition(counts, 4) == shard_units.partition(dict(shuffled), 4)


def test_partition_balances_better_than_contiguous_split():
    counts = _random_counts(300, seed=5)
    loads = [sum(counts[k] for k in p) for p in shard_units.partition(counts, 5)]
    keys = sorted(counts)
    contiguous = [sum(counts[k] for k in keys[i::5]) for i in range(5)]
    assert max(loads) <= max(contiguous)


def test_make_units_respects_target_and_order():
    counts = _random_counts(120, seed=7)
    target = 3000
    units = shard_units.make_units(counts, target, prefix="x-")
    flat = [k for u in units for k in u.participant_keys]
    assert flat == sorted(counts)  # consecutive, in key order
    for u in units:
        assert u.n_tokens == sum(counts[k] for k in u.participant_keys)
        assert u.n_tokens <= target or len(u.participant_keys) == 1
        assert u.unit_id.startswith("x-")
    assert len({u.unit_id for u in units}) == len(units)
    # The same counts give the same units (ids included); other keys other ids.
    assert shard_units.make_units(counts, target, prefix="x-") == units
    other = dict(counts)
    other.pop(min(other))
    assert shard_units.make_units(other, target, prefix="x-")[0].unit_id != units[0].unit_id


def test_parse_shard_spec():
    assert shard_units.parse_shard_spec("0/3") == (0, 3)
    assert shard_units.parse_shard_spec("2/3") == (2, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "1/0"):
        with pytest.raises(WarehouseError, match="--shard"):
            shard_units.parse_shard_spec(bad)


def test_run_key_hash_ignores_key_order_and_tuples():
    a = shard_keys.run_key(
        "m", "plain", {"studies": ("s1", "s2")}, {"b": 1, "a": [1, 2]}, {"weights_sha256": "x"}
    )
    b = shard_keys.run_key(
        {"name": "m", "family": "qwen"},
        "plain",
        {"studies": ["s1", "s2"]},
        {"a": (1, 2), "b": 1},
        {"weights_sha256": "x"},
    )
    assert shard_keys.run_hash(a) == shard_keys.run_hash(b)
    c = shard_keys.run_key(
        "m", "chat", {"studies": ["s1", "s2"]}, {"a": [1, 2], "b": 1}, {"weights_sha256": "x"}
    )
    assert shard_keys.run_hash(c) != shard_keys.run_hash(a)


# ---------------------------------------------------------------------------
# Shards of a real run: tiny model, real warehouse, merged into DuckDB
# ---------------------------------------------------------------------------

UNIT_TOKENS = 1500  # several units per shard


@pytest.fixture(scope="module")
def scored(tmp_path_factory, small_warehouse, tiny_models):
    return reference_run(tmp_path_factory.mktemp("shards"), small_warehouse, tiny_models["qwen3"])


def run_jobs(scored, out: Path, n: int, only: Sequence[int] | None = None):
    """The ``--shard I/N`` jobs of an array (all of them, or ``only`` these I)."""
    return [
        shard_job.run_shard(
            scored["scorer"],
            scored["model"],
            condition="plain",
            selection=scored["selection"],
            inputs=scored["inputs"],
            shard=(i, n),
            out_dir=out,
            unit_tokens=UNIT_TOKENS,
        )
        for i in (range(n) if only is None else only)
    ]


@pytest.fixture(scope="module")
def array_out(scored, tmp_path_factory) -> Path:
    """The shards of a finished 3-task array, computed once; tests work on copies."""
    out = tmp_path_factory.mktemp("array") / "out"
    jobs = run_jobs(scored, out, 3)
    assert sum(j.participants for j in jobs) == N_PARTICIPANTS
    assert all(j.units >= 2 for j in jobs)
    return out


@pytest.fixture
def out(array_out, tmp_path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(array_out, dest)
    return dest


@pytest.fixture
def db(scored, tmp_path) -> Path:
    dest = tmp_path / "w.duckdb"
    shutil.copy(scored["base"], dest)
    return dest


def merge(db: Path, out: Path):
    con = warehouse_db.open(db, "write", create=True)
    try:
        return shard_merge.merge_dir(con, out)
    finally:
        con.close()


def test_three_shards_merged_equal_the_single_run(scored, out, db):
    (result,) = merge(db, out)
    assert result.complete and result.shards_done == "3/3" and not result.errors
    assert result.rows_added == len(scored["reference"]["scores"]) > 0
    assert len(scored["reference"]["options"]) > 0
    assert snapshot(db) == scored["reference"]


def test_merging_twice_adds_nothing(scored, out, db):
    merge(db, out)
    (again,) = merge(db, out)
    assert again.rows_added == 0 and again.rows_skipped == len(scored["reference"]["scores"])
    assert again.complete
    assert snapshot(db) == scored["reference"]
    con = warehouse_db.open(db)
    assert scalar(con, "SELECT count(*) FROM score_runs") == 1
    assert (
        scalar(
            con,
            "SELECT count(*) - count(DISTINCT (run_id, response_id, option)) FROM option_scores",
        )
        == 0
    )
    con.close()


def test_an_unfinished_array_leaves_the_run_open(scored, out, db, tmp_path):
    rdir = next(out.glob("run-*"))
    held = tmp_path / "held"
    held.mkdir()
    for p in [*rdir.glob("unit-s0001of0003-*"), shard_files.done_marker_path(rdir, 1, 3)]:
        shutil.move(p, held / p.name)  # task 1 has not run yet
    (r,) = merge(db, out)
    assert not r.complete and r.shards_done == "2/3"
    snap = snapshot(db)
    assert snap["run"][0][2] == "running"
    assert 0 < len(snap["scores"]) < len(scored["reference"]["scores"])
    for p in held.iterdir():  # task 1 finishes
        shutil.move(p, rdir / p.name)
    (r,) = merge(db, out)
    assert r.complete and r.rows_added == len(scored["reference"]["scores"]) - len(snap["scores"])
    assert snapshot(db) == scored["reference"]


def test_a_merge_stopped_by_a_corrupt_shard_is_rerun_after_the_fix(scored, out, db):
    rdir = next(out.glob("run-*"))
    victim = sorted(rdir.glob("unit-s0001of0003-*.scores.parquet"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a half-copied file
    with pytest.raises(shard_keys.ShardError, match=victim.name) as err:
        merge(db, out)
    (r,) = err.value.results
    assert not r.complete
    snap = snapshot(db)
    assert snap["run"][0][2] == "running"
    # Every other unit went in; the damaged unit's responses are missing.
    assert 0 < len(snap["scores"]) < len(scored["reference"]["scores"])
    assert set(snap["scores"]) < set(scored["reference"]["scores"])

    # Rerunning that task rescores only the damaged unit; the merge then completes.
    (job,) = run_jobs(scored, out, 3, only=[1])
    assert job.units == 1 and job.units_skipped >= 1
    (r,) = merge(db, out)
    assert r.complete and r.rows_added == len(scored["reference"]["scores"]) - len(snap["scores"])
    assert snapshot(db) == scored["reference"]


def test_a_task_killed_before_its_manifest_redoes_only_that_unit(scored, out, db):
    rdir = next(out.glob("run-*"))
    # Killed after writing a unit's Parquet but before its manifest and done
    # marker: that unit does not count as written.
    manifests = sorted(rdir.glob("unit-s0000of0003-*.manifest.json"))
    manifests[-1].unlink()
    shard_files.done_marker_path(rdir, 0, 3).unlink()
    (r,) = merge(db, out)
    assert not r.complete
    (again,) = run_jobs(scored, out, 3, only=[0])
    assert again.units == 1 and again.units_skipped == len(manifests) - 1
    (r,) = merge(db, out)
    assert r.complete
    assert snapshot(db) == scored["reference"]


def test_shards_from_another_warehouse_are_refused(scored, out, tmp_path, psych201):
    from psystats.scoring.registry import add_model
    from psystats.warehouse.ingest import ingest_paths

    # The same studies ingested in the other order: the same people get other keys.
    other = tmp_path / "other.duckdb"
    con = warehouse_db.open(other, "write", create=True)
    ingest_paths(con, [psych201 / "guenther2023associations_individual", psych201 / STUDY])
    add_model(con, scored["model"]["source"], name="tiny-qwen3")
    con.close()
    with pytest.raises(shard_keys.ShardError, match="another warehouse"):
        merge(other, out)
    con = warehouse_db.open(other)
    assert scalar(con, "SELECT count(*) FROM scores") == 0
    con.close()


def test_merge_command(scored, out, db):
    from click.testing import CliRunner

    from psystats.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["--db", str(db), "merge", str(out)])
    assert res.exit_code == 0, res.output
    assert "complete" in res.output and "3/3" in res.output
    assert snapshot(db) == scored["reference"]
    res = runner.invoke(main, ["--db", str(db), "merge", "-q", str(out)])
    assert res.exit_code == 0, res.output
    # A damaged manifest: exit code 1, the file named, nothing else disturbed.
    m = sorted(out.glob("run-*/unit-*.manifest.json"))[0]
    m.write_text("{not json")
    res = runner.invoke(main, ["--db", str(db), "merge", str(out)])
    assert res.exit_code == 1 and m.name in res.output
    assert snapshot(db) == scored["reference"]


def test_cli_job_array_on_a_read_only_warehouse_then_merge_equals_local_score(
    tmp_path, psych201, tiny_models
):
    """The SLURM path end to end through the CLI: N=2 tasks read a warehouse
    they cannot write (file mode 0444), `psystats merge` ingests their shards,
    and the result equals a plain `psystats score` row for row."""
    import os
    import stat

    # A six-participant slice of a real study keeps three model loads cheap.
    base = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    local, readonly, merged = (tmp_path / f"{n}.duckdb" for n in ("local", "ro", "merged"))
    for p in (local, readonly, merged):
        shutil.copy(base, p)

    cli_ok("--db", local, "score", "--model", "tiny-qwen3", "-q")

    os.chmod(readonly, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    before = readonly.read_bytes()
    # Holding a read-only connection makes any read-write open of the same
    # file in this process fail (DuckDB refuses a second configuration), so
    # the tasks below must really open it read-only (root ignores 0444).
    holder = warehouse_db.open(readonly)
    out = tmp_path / "shards"
    try:
        for i in range(2):
            res = cli_ok(
                "--db",
                readonly,
                "score",
                "--model",
                "tiny-qwen3",
                "--shard",
                f"{i}/2",
                "--out",
                out,
                "--unit-tokens",
                "2000",
                "-q",
            )
            assert f"shard {i}/2" in res.output
    finally:
        holder.close()
    assert readonly.read_bytes() == before
    cli_ok("--db", merged, "merge", out)
    assert snapshot(merged) == snapshot(local)
    assert snapshot(merged)["run"][0][2] == "complete"


def test_merge_command_progress_counts_the_score_rows_and_nothing_with_q(scored, out, db):
    """Plain lines on a non-terminal stderr; the rows counted are the run's rows in the
    warehouse afterwards; -q prints none."""
    import re

    res = cli_ok("--db", db, "merge", out)
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("merging:")]
    done = re.fullmatch(r"merging: done, ([\d,]+) score rows in .*", progress[-1])
    assert done, res.stderr
    con = warehouse_db.open(db)
    stored = scalar(con, "SELECT count(*) FROM scores")
    con.close()
    assert int(done[1].replace(",", "")) == stored == len(scored["reference"]["scores"])
    assert f"/{stored:,} score rows" in progress[0]
    res = cli_ok("--db", db, "merge", "-q", out)  # again: rows present, counted, not shown
    assert "merging" not in res.stderr and "merged unit" not in res.stderr
