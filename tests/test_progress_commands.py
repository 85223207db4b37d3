"""Progress of ingest, scores import and fits on a stderr that is not a terminal (issue 22, 2).

Every command reports through ``warehouse.progress``: plain lines with a final
``done`` line when stderr is not a terminal (CliRunner's is not), nothing with
``-q``.  The counts in those lines are checked against what the warehouse (or
the posterior) holds afterwards, counted here in SQL or from the draws.
(``psystats merge`` is checked in test_shards.py, beside its shards.)
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar

STUDIES = ("franke2024bayesian", "guenther2023associations_individual")


def cli(*args):
    from psystats.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def lines_of(text: str, label: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(f"{label}:")]


def number(text: str) -> int:
    return int(text.replace(",", ""))


def count(db: Path, sql: str, params: list | None = None) -> int:
    con = warehouse_db.open(db)
    try:
        return int(scalar(con, sql, params))
    finally:
        con.close()


# --------------------------------------------------------------------------- ingest


def test_ingest_shows_participants_and_responses_read_and_nothing_with_q(tmp_path, psych201):
    db = tmp_path / "w.duckdb"
    res = cli("--db", db, "ingest", *(psych201 / s for s in STUDIES))
    progress = lines_of(res.stderr, "ingesting")
    assert progress and "participants/s" in progress[0], res.stderr
    done = re.fullmatch(
        r"ingesting: done, ([\d,]+) participants \[([\d,]+) responses\] in \d+:\d\d "
        r"\(.* participants/s\)",
        progress[-1],
    )
    assert done, progress[-1]
    assert number(done[1]) == count(db, "SELECT count(*) FROM participants") > 0
    assert number(done[2]) == count(db, "SELECT count(*) FROM responses") > 0
    # The first line's total is the participants the files hold (their lines).
    total = re.search(r"/([\d,]+) participants", progress[0])
    assert total and number(total[1]) == number(done[1])

    other = tmp_path / "q.duckdb"
    res = cli("--db", other, "ingest", "-q", *(psych201 / s for s in STUDIES))
    assert "ingesting" not in res.stderr and "ingested 2 files" in res.stdout
    assert count(other, "SELECT count(*) FROM participants") == number(done[1])


def _jsonl(psych201: Path, study: str) -> bytes:
    with zipfile.ZipFile(psych201 / study / "prompts.jsonl.zip") as z:
        return z.read("prompts.jsonl")


def test_ingest_progress_advances_within_a_file_and_counts_skipped_files(tmp_path, psych201):
    """Library level, lines every advance (interval 0): the count moves record by record
    inside one file; a blank line lowers the total to what was read; a file skipped as
    already ingested is not read, not even to count its lines."""
    from psystats.warehouse.ingest import ingest_paths
    from psystats.warehouse.progress import progress

    raw = _jsonl(psych201, STUDIES[0]).splitlines(keepends=True)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_bytes(b"".join(raw[:7]) + b"\n" + b"".join(raw[7:12]))  # 12 records, 13 lines
    two.write_bytes(b"".join(raw[12:17]))  # 5 records
    db = tmp_path / "w.duckdb"
    con = warehouse_db.open(db, "write", create=True)
    try:
        out = io.StringIO()
        bar = progress("ingesting", None, "participants", stream=out, interval=0, terminal=False)
        ingest_paths(con, [one, two], progress=bar)
        lines = out.getvalue().splitlines()
        counts = [number(m[1]) for ln in lines if (m := re.match(r"ingesting: ([\d,]+)/", ln))]
        assert counts == list(range(1, 18)), lines  # one line per record, within each file
        assert "/18 participants" in lines[0]  # the lines counted before reading
        assert "/17 participants" in lines[-2]  # the blank line left out once read
        assert lines[-1].startswith("ingesting: done, 17 participants [")
        assert int(scalar(con, "SELECT count(*) FROM participants")) == 17

        out = io.StringIO()
        bar = progress("ingesting", None, "participants", stream=out, interval=0, terminal=False)
        ingest_paths(con, [two], progress=bar)  # the same bytes again: skipped unread
        assert out.getvalue().splitlines() == ["ingesting: done, 0 participants in 0:00"]
    finally:
        con.close()


# --------------------------------------------------------------------------- scores import


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_scores_import_counts_the_score_rows_and_nothing_with_q(warehouse_copy, tmp_path, suffix):
    con = warehouse_db.open(warehouse_copy)
    ids = [r[0] for r in con.execute("SELECT response_id FROM responses ORDER BY 1").fetchall()]
    con.close()
    nll = np.random.default_rng(0).uniform(0.1, 5.0, len(ids))
    path = tmp_path / f"scores{suffix}"
    table = pa.table({"response_id": ids, "nll": nll})
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    res = cli("--db", warehouse_copy, "scores", "import", path, "--model", "ext", "--type", "other")
    progress = lines_of(res.stderr, "importing")
    done = re.fullmatch(r"importing: done, ([\d,]+) score rows in .*", progress[-1])
    assert done, res.stderr
    stored = count(warehouse_copy, "SELECT count(*) FROM scores WHERE run_id = 1")
    assert number(done[1]) == stored == len(ids)
    assert re.search(rf"/{len(ids):,} score rows", progress[0]), progress[0]

    res = cli(
        "--db", warehouse_copy, "scores", "import", path, "--model", "ext2", "--type", "other", "-q"
    )
    assert "importing" not in res.stderr and "imported" in res.stdout


# --------------------------------------------------------------------------- fits


def _tiny_model():
    import pymc as pm

    y = np.random.default_rng(1).normal(0.5, 1.0, 40)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 2)
        pm.Normal("y", mu, 1.0, observed=y)
    return model


@pytest.mark.slow  # nutpie compiles with numba, PyMC starts processes: 7-20 s each
@pytest.mark.parametrize("sampler", ["nutpie", "pymc"])
def test_sampling_reports_draws_per_chain_in_plain_lines(capfd, sampler):
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import sample, sampler_record

    opts = SamplingOptions(draws=120, tune=80, chains=2, sampler=sampler, progressbar=True)
    idata = sample(_tiny_model(), opts)
    err = capfd.readouterr().err
    assert "\r" not in err  # no terminal bar in a log
    progress = lines_of(err, "sampling")
    assert progress, err
    done = re.fullmatch(
        r"sampling: done, ([\d,]+) draws \[per chain ([\d, ]+) of ([\d,]+)\] in .*", progress[-1]
    )
    assert done, progress[-1]
    assert sampler_record(idata)["sampler"] == sampler
    # Oracle: the draws in the posterior plus the warm-up, chain by chain.
    chains, kept = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    per_chain = [number(x) for x in done[2].split(", ")]
    assert per_chain == [kept + opts.tune] * chains
    assert number(done[1]) == chains * (kept + opts.tune) and number(done[3]) == kept + opts.tune
    for line in progress[:-1]:
        assert re.match(r"sampling: [\d,]+/400 draws \(\d+%\) \[per chain .*\], .*draws/s", line)

    sample(_tiny_model(), opts.replace(progressbar=False))
    assert "sampling" not in capfd.readouterr().err


@pytest.mark.slow
def test_sampling_with_progress_draws_the_same_as_without():
    """The progress callback changes nothing in nutpie's draws (same seed, same chains)."""
    from psystats.stats.options import SamplingOptions
    from psystats.stats.sampling import sample

    opts = SamplingOptions(draws=100, tune=100, chains=2, seed=5)
    quiet = sample(_tiny_model(), opts)
    shown = sample(_tiny_model(), opts.replace(progressbar=True))
    np.testing.assert_array_equal(quiet.posterior["mu"].values, shown.posterior["mu"].values)


@pytest.mark.slow
def test_fit_command_shows_sampling_progress_and_nothing_with_q(tmp_path):
    """A fit command end to end: the shared -q of sampling_options."""
    import arviz as az
    from reanalysis_helpers import simulated_warehouse

    db = simulated_warehouse(tmp_path / "psych.duckdb")
    exp = count_text(db, "SELECT min(experiment) FROM experiments")
    args = ["--db", db, "fit", "formula", "mean ~ 1", "--experiment", exp, "--chains", "2"]
    args += ["--draws", "100", "--tune", "100", "--allow-diagnostics-failure"]
    res = cli(*args)
    done = lines_of(res.stderr, "sampling")[-1]
    path = count_text(db, "SELECT netcdf_path FROM fits ORDER BY fit_id DESC LIMIT 1")
    post = az.from_netcdf(path).posterior
    assert done.startswith(
        f"sampling: done, {post.sizes['chain'] * (post.sizes['draw'] + 100)} draws"
    )
    res = cli(*args, "-q")
    assert "sampling" not in res.stderr


def count_text(db: Path, sql: str) -> str:
    con = warehouse_db.open(db)
    try:
        return str(scalar(con, sql))
    finally:
        con.close()
