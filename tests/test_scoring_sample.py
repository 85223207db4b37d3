"""Seeded samples (``score --participants N / --sample F``) and options checked before loading."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from helpers import STUDY, cli_base_warehouse, cli_ok
from psystats.scoring.sample import SampleSpec, SampleSpecError, sample_keys
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar


def natural(con, keys):
    rows = con.execute(
        "SELECT study, experiment, participant FROM participants WHERE participant_key IN "
        f"({', '.join('?' * len(keys))})",
        list(keys),
    ).fetchall()
    return sorted(rows)


def test_samples_are_per_experiment_nested_and_independent_of_warehouse_order(
    small_warehouse, psych201, tmp_path
):
    from psystats.warehouse.ingest import ingest_paths

    other = tmp_path / "reversed.duckdb"
    con2 = warehouse_db.open(other, "write", create=True)
    # small_warehouse's studies, ingested in the other order: other participant keys.
    ingest_paths(con2, [psych201 / s for s in ("guenther2023associations_individual", STUDY)])
    con = warehouse_db.open(small_warehouse)
    try:
        sizes = dict(
            con.execute(
                "SELECT experiment, count(*) FROM participants WHERE n_responses > 0 GROUP BY 1"
            ).fetchall()
        )
        five = sample_keys(con, SampleSpec(participants=5))
        # The same people in a warehouse whose keys were assigned in another order.
        assert natural(con, five) == natural(con2, sample_keys(con2, SampleSpec(participants=5)))
        assert set(five) < set(sample_keys(con, SampleSpec(participants=8)))  # nested
        per_exp = dict(
            con.execute(
                "SELECT experiment, count(*) FROM participants WHERE participant_key IN "
                f"({', '.join('?' * len(five))}) GROUP BY 1",
                five,
            ).fetchall()
        )
        assert per_exp == {e: min(5, n) for e, n in sizes.items()}
        tenth = sample_keys(con, SampleSpec(fraction=0.1, seed=3))
        assert len(tenth) == sum(math.ceil(0.1 * n) for n in sizes.values())
        both = sample_keys(con, SampleSpec(participants=2, fraction=0.5))
        assert len(both) == sum(min(2, math.ceil(0.5 * n)) for n in sizes.values())
        # Another seed, other people.
        assert set(sample_keys(con, SampleSpec(participants=5, seed=1))) != set(five)
        only = sample_keys(con, SampleSpec(participants=3), studies=[STUDY])
        assert {s for s, _e, _p in natural(con, only)} == {STUDY} and len(only) == 3
    finally:
        con.close()
        con2.close()


def test_sample_spec_text_and_bad_values():
    assert SampleSpec(participants=5).text == "participants=5 per experiment, seed=0"
    assert SampleSpec(fraction=0.25, seed=7).text == "fraction=0.25 per experiment, seed=7"
    assert SampleSpec(2, 0.5).text == "participants=2 and fraction=0.5 per experiment, seed=0"
    for kw in (
        {},
        {"participants": 0},
        {"participants": -3},
        {"fraction": 0.0},
        {"fraction": 1.5},
        {"fraction": float("nan")},
        {"participants": 2, "seed": -1},
    ):
        with pytest.raises(SampleSpecError):
            SampleSpec(**kw)


def test_sampled_run_is_recorded_and_shown_as_a_sample(tiny_models, psych201, tmp_path):
    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    cli_ok("--db", db, "score", "--model", "tiny-qwen3", "--participants", "2", "-q")
    cli_ok("--db", db, "score", "--model", "tiny-qwen3", "--study", STUDY, "-q")
    con = warehouse_db.open(db)
    try:
        runs = con.execute(
            "SELECT run_id, sample_spec, n_participants, status FROM score_runs ORDER BY run_id"
        ).fetchall()
        n_all = scalar(con, "SELECT count(*) FROM participants")
    finally:
        con.close()
    # The sample and the full run are two runs; only the sample says it is one.
    assert runs == [
        (1, "participants=2 per experiment, seed=0", 2, "complete"),
        (2, None, n_all, "complete"),
    ]
    out = cli_ok("--db", db, "summary", "--by", "model", "--format", "csv").output
    lines = out.strip().splitlines()
    assert lines[0].endswith(",sample")
    assert lines[1].endswith(",2,") and "participants=2 per experiment" in lines[2]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--token-budget", "-1"], "'--token-budget'"),
        (["--cpu-threads", "0"], "'--cpu-threads'"),
        (["--cpu-threads", "-4"], "'--cpu-threads'"),
        (["--commit-chars", "0"], "'--commit-chars'"),
        (["--shard", "5/2"], "--shard '5/2'"),
        (["--condition", "history:x"], "unknown condition"),
        (["--participants", "0"], "'--participants'"),
        (["--sample", "2"], "'--sample'"),
        (["--seed", "3"], "--seed chooses a sample"),
        (["--compile", "--compile-bucket", "100"], "multiple of 128"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(warehouse_copy, args, says):
    """A usage error (exit 2, one line, no traceback) before the model is even looked up."""
    from psystats.cli import main

    r = CliRunner().invoke(
        main, ["--db", str(warehouse_copy), "score", "--model", "no-such-model", *args]
    )
    assert r.exit_code == 2, r.output
    assert says in r.output and "Traceback" not in r.output
    con = warehouse_db.open(warehouse_copy)
    try:
        assert scalar(con, "SELECT count(*) FROM score_runs") == 0
        assert scalar(con, "SELECT count(*) FROM models") == 0
    finally:
        con.close()
