"""Scoring on a local Ray cluster: same numbers as one process, survives a killed worker.

One Ray session (2 CPUs, no dashboard) is shared by the module: Ray takes
seconds to start.  Workers are CPU actors running the real Scorer on a tiny
random-initialised model.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers import cli_base_warehouse, cli_ok, reference_run, snapshot
from psystats.scoring import shard_files
from psystats.warehouse import db as warehouse_db

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    # Functions and classes of this test module reach the workers by value
    # (the workers cannot import tests/ as a module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, small_warehouse, tiny_models):
    return reference_run(tmp_path_factory.mktemp("ray"), small_warehouse, tiny_models["qwen3"])


def _run(scored, db: Path, out: Path, factory=None, num_workers: int = 2, **kw):
    from psystats.scoring.distributed import run_ray
    from psystats.scoring.engine import Scorer

    factory = factory or functools.partial(Scorer, scored["model"], **scored["scorer_kwargs"])
    events = []
    con = warehouse_db.open(db, "write", create=True)
    try:
        result = run_ray(
            con,
            scored["model"],
            factory,
            condition="plain",
            selection=scored["selection"],
            inputs=scored["inputs"],
            out_dir=out,
            num_workers=num_workers,
            num_gpus_per_worker=0,
            unit_tokens=1500,
            progress=lambda p: events.append(
                (p.units_done, p.units_total, p.tokens_done, p.tokens_per_second)
            ),
            **kw,
        )
    finally:
        con.close()
    return result, events


@pytest.fixture(scope="module")
def ray_run(ray_session, scored, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_run")
    db = root / "w.duckdb"
    shutil.copy(scored["base"], db)
    result, events = _run(scored, db, root / "out")
    return {"db": db, "out": root / "out", "result": result, "events": events}


@pytest.mark.slow
def test_ray_scores_equal_the_single_process_run(scored, ray_run):
    result = ray_run["result"]
    assert not result.already_complete and result.units >= 3
    assert result.participants == len(scored["inputs"])
    assert snapshot(ray_run["db"]) == scored["reference"]
    # Progress reached the driver once per unit, ending at all units and tokens.
    events = ray_run["events"]
    assert [e[0] for e in events] == list(range(1, result.units + 1))
    assert events[-1][1] == result.units and events[-1][3] > 0
    # Every unit left its shard with a manifest.
    rdir = Path(result.run_dir)
    assert len(shard_files.finished_units(rdir)) == result.units


@pytest.mark.slow
def test_a_restarted_driver_merges_the_shards_already_written(scored, ray_run, tmp_path):
    # The driver of ray_run died after its workers' shards reached disk but
    # before its merges committed: a fresh warehouse copy stands for that.
    db = tmp_path / "w.duckdb"
    shutil.copy(scored["base"], db)
    out = tmp_path / "out"
    shutil.copytree(ray_run["out"], out)
    result, events = _run(scored, db, out, num_workers=1)
    assert result.resumed_units == ray_run["result"].units
    assert result.units == 0 and events == []  # nothing left to score
    assert snapshot(db) == scored["reference"]


class CrashingScorer:
    """The real Scorer, except that its worker process dies (``os._exit``) the
    first time it is handed participant ``victim``, as when the OOM killer or
    a failing node takes a GPU worker down mid-unit."""

    def __init__(self, model: dict, kwargs: dict, victim: int, marker: str):
        from psystats.scoring.engine import Scorer

        self.inner = Scorer(model, **kwargs)
        self.victim, self.marker = victim, Path(marker)

    @property
    def settings(self):
        return self.inner.settings

    @property
    def fingerprints(self):
        return self.inner.fingerprints

    def count_tokens(self, p):
        return self.inner.count_tokens(p)

    def score(self, participants):
        if any(p.participant_key == self.victim for p in participants) and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.score(participants)


@pytest.mark.slow
@pytest.mark.parametrize(
    "max_restarts",
    [
        3,  # Ray restarts the actor and retries the unit
        pytest.param(0, marks=pytest.mark.slow),  # the actor stays dead: the driver re-dispatches
    ],
)
def test_a_worker_killed_mid_unit_is_restarted_and_its_unit_retried(
    ray_session, scored, tmp_path, max_restarts
):
    db = tmp_path / "w.duckdb"
    shutil.copy(scored["base"], db)
    victim = scored["inputs"][len(scored["inputs"]) // 2].participant_key
    marker = tmp_path / "crashed"
    factory = functools.partial(
        CrashingScorer, scored["model"], scored["scorer_kwargs"], victim, str(marker)
    )
    result, events = _run(scored, db, tmp_path / "out", factory=factory, max_restarts=max_restarts)
    assert marker.exists()  # a worker really died mid-unit
    assert len(events) == result.units  # every unit finished once
    assert result.retries == (1 if max_restarts == 0 else 0)
    # No loss, no duplicates: exactly the single-process rows.
    assert snapshot(db) == scored["reference"]


@pytest.mark.slow
def test_cli_engine_ray_equals_cli_local(ray_session, tmp_path, psych201, tiny_models):
    """`psystats score --engine ray` (joining the running Ray) stores what
    `psystats score` stores, and a second call finds the run complete."""
    base = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    local, distributed = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    shutil.copy(base, local)
    shutil.copy(base, distributed)
    cli_ok("--db", local, "score", "--model", "tiny-qwen3", "-q")
    ray_args = (
        "--db",
        distributed,
        "score",
        "--model",
        "tiny-qwen3",
        "--engine",
        "ray",
        "--num-gpus-per-worker",
        "0",
        "--num-workers",
        "1",
        "--unit-tokens",
        "3000",
        "--out",
        tmp_path / "shards",
        "-q",
    )
    res = cli_ok(*ray_args)
    assert "complete" in res.output
    assert snapshot(distributed) == snapshot(local)
    assert "already complete" in cli_ok(*ray_args).output
