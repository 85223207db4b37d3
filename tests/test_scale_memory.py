"""Bounded memory by design: streamed import/export, DuckDB-side aggregates, memory settings.

The streaming paths are exercised with tiny record batches so a small file
crosses many batch boundaries; results must equal the one-batch path and an
independent computation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from scipy import stats

from psystats.scoring import importer
from psystats.scoring.importer import export_scores, import_scores
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar, transaction

SCORE_COLS = "response_id, nll, n_tokens, first_token_nll, top1_all, top1_first"


def _external(con, seed: int = 0) -> pa.Table:
    rows = con.execute(
        "SELECT response_id, study, experiment, participant, response_index FROM responses "
        "ORDER BY response_id"
    ).fetchall()
    rng = np.random.default_rng(seed)
    k = len(rows)
    return pa.table(
        {
            "Study": [r[1] for r in rows],
            "experiment": [r[2] for r in rows],
            "participant": [r[3] for r in rows],
            "response_index": [r[4] for r in rows],
            "nll": rng.exponential(2.0, k),
            "n_tokens": rng.integers(1, 6, k),
            "first_token_nll": rng.exponential(1.0, k),
            "top1_all": rng.random(k) < 0.3,
            "top1_first": rng.random(k) < 0.5,
        }
    )


def _stored(con, run_id: int) -> list[tuple]:
    return con.execute(
        f"SELECT {SCORE_COLS} FROM scores WHERE run_id = ? ORDER BY response_id", [run_id]
    ).fetchall()


@pytest.fixture
def con(warehouse_copy):
    c = warehouse_db.open(warehouse_copy, "write", create=True)
    yield c
    c.close()


def test_import_in_small_batches_equals_one_batch(con, tmp_path, monkeypatch):
    table = _external(con)
    src_pq, src_csv = tmp_path / "s.parquet", tmp_path / "s.csv"
    pq.write_table(table, src_pq, row_group_size=50)  # many row groups as well
    pcsv.write_csv(table, src_csv)
    one = import_scores(con, src_pq, model="m-one", post_training="other")
    monkeypatch.setattr(importer, "BATCH_ROWS", 7)
    many_pq = import_scores(con, src_pq, model="m-many", post_training="other")
    many_csv = import_scores(con, src_csv, model="m-csv", post_training="other")
    assert one.n_rows == many_pq.n_rows == many_csv.n_rows == table.num_rows
    ref = _stored(con, one.run_id)
    assert _stored(con, many_pq.run_id) == ref
    assert _stored(con, many_csv.run_id) == ref
    # Independent check of a value: row 123 of the file is stored for its response.
    rid = scalar(
        con,
        "SELECT response_id FROM responses WHERE participant = ? AND response_index = ? "
        "AND experiment = ?",
        [
            table["participant"][123].as_py(),
            table["response_index"][123].as_py(),
            table["experiment"][123].as_py(),
        ],
    )
    got = scalar(
        con, "SELECT nll FROM scores WHERE run_id = ? AND response_id = ?", [many_csv.run_id, rid]
    )
    assert got == pytest.approx(table["nll"][123].as_py(), rel=1e-15)


def test_row_numbers_survive_batch_boundaries(con, tmp_path, monkeypatch):
    """A bad value far past the first batch is reported at its own CSV line."""
    table = _external(con).slice(0, 60)
    nll = table["nll"].to_pylist()
    nll[41] = -3.0  # data row 42 = CSV line 43
    nll[58] = -1.0  # line 60
    table = table.set_column(table.column_names.index("nll"), "nll", pa.array(nll))
    src = tmp_path / "bad.csv"
    pcsv.write_csv(table, src)
    monkeypatch.setattr(importer, "BATCH_ROWS", 5)
    before = scalar(con, "SELECT count(*) FROM scores")
    with pytest.raises(WarehouseError, match=r"line 43: nll=-3.0; line 60: nll=-1.0"):
        import_scores(con, src, model="m-bad", post_training="other")
    assert scalar(con, "SELECT count(*) FROM scores") == before
    assert not con.execute(
        "SELECT * FROM duckdb_tables() WHERE table_name IN ('_import_raw', '_import_rows')"
    ).fetchall()


def test_export_in_small_batches_equals_one_batch(con, tmp_path, monkeypatch):
    src = tmp_path / "s.parquet"
    pq.write_table(_external(con), src)
    r = import_scores(con, src, model="m-exp", post_training="other")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    export_scores(con, a, run_id=r.run_id)
    monkeypatch.setattr(importer, "BATCH_ROWS", 11)
    _, n = export_scores(con, b, run_id=r.run_id)
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert n == ta.num_rows == r.n_rows and tb.equals(ta)
    csv = tmp_path / "b.csv"
    export_scores(con, csv, run_id=r.run_id)
    back = pcsv.read_csv(
        csv,
        convert_options=pcsv.ConvertOptions(
            column_types={
                "participant": pa.string(),
                "study": pa.string(),
                "experiment": pa.string(),
            }
        ),
    )
    assert back.num_rows == n
    np.testing.assert_array_equal(back["response_id"].to_numpy(), ta["response_id"].to_numpy())
    np.testing.assert_allclose(back["nll"].to_numpy(), ta["nll"].to_numpy(), rtol=1e-15)


# ---------------------------------------------------------------- memory settings


def test_memory_settings_reach_duckdb(db_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PSYSTATS_MEMORY_LIMIT", "300MB")
    monkeypatch.setenv("PSYSTATS_TEMP_DIR", str(tmp_path / "spill"))
    c = warehouse_db.open(db_path, "write", create=True)
    try:
        # 300 MB = 286.1 MiB as DuckDB shows it
        assert scalar(c, "SELECT current_setting('memory_limit')") == "286.1 MiB"
        assert scalar(c, "SELECT current_setting('temp_directory')") == str(tmp_path / "spill")
    finally:
        c.close()
    monkeypatch.setenv("PSYSTATS_MEMORY_LIMIT", "lots")
    with pytest.raises(WarehouseError, match=r"PSYSTATS_MEMORY_LIMIT='lots': expected a size"):
        warehouse_db.open(db_path, "write", create=True)


def test_memory_settings_defaults(db_path, monkeypatch):
    monkeypatch.delenv("PSYSTATS_MEMORY_LIMIT", raising=False)
    monkeypatch.delenv("PSYSTATS_TEMP_DIR", raising=False)
    c = warehouse_db.open(db_path, "write", create=True)
    try:
        assert scalar(c, "SELECT current_setting('memory_limit')") == "953.6 MiB"  # 1 GB
        assert scalar(c, "SELECT current_setting('temp_directory')") == f"{db_path}.tmp"
    finally:
        c.close()


def test_cli_memory_options_reach_duckdb(db_path, tmp_path):
    """The global --memory-limit/--temp-dir, through `psystats sql` (a locked configuration)."""
    warehouse_db.open(db_path, "write", create=True).close()
    spill = tmp_path / "spill"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "psystats.cli",
            "--db",
            str(db_path),
            "--memory-limit",
            "200MB",
            "--temp-dir",
            str(spill),
            "sql",
            "--format",
            "csv",
            "SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') AS t",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == f"190.7 MiB,{spill}"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "psystats.cli",
            "--db",
            str(db_path),
            "--memory-limit",
            "x",
            "summary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A bad option value is a usage error (exit 2), refused before the warehouse is opened.
    assert r.returncode == 2 and "Invalid value for '--memory-limit': 'x'" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- brief connection


def test_brief_connection_holds_the_file_only_per_statement(warehouse_copy, tmp_path):
    bc = warehouse_db.open(warehouse_copy, "statement")
    try:
        n = scalar(bc, "SELECT count(*) FROM responses")
        assert n > 0 and not bc.holds_file
        # Another process can write the file between two statements.
        code = (
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            'c.execute("CREATE TABLE other_writer AS SELECT 1 AS x"); c.close()'
        )
        r = subprocess.run(
            [sys.executable, "-c", code, str(warehouse_copy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        # Temp tables live in memory across statements; writes commit in one transaction.
        bc.execute("CREATE TEMP TABLE t AS SELECT response_id FROM responses LIMIT 3")
        with transaction(bc):
            assert bc.holds_file
            bc.execute(
                "INSERT INTO models (model_id, name, post_training) "
                "SELECT nextval('model_id_seq'), 'brief-model', 'other'"
            )
        assert not bc.holds_file
        assert scalar(bc, "SELECT count(*) FROM t") == 3
    finally:
        bc.close()
    c = warehouse_db.open(warehouse_copy)
    try:
        assert scalar(c, "SELECT count(*) FROM models WHERE name = 'brief-model'") == 1
    finally:
        c.close()


# ---------------------------------------------------------------- report aggregates


@pytest.fixture(scope="module")
def scored(small_warehouse, tmp_path_factory):
    """Simulated runs; one model misses some participants (the 'common' rule matters)."""
    from psystats.stats.simulate import simulate_warehouse

    path = tmp_path_factory.mktemp("scale") / "sim.duckdb"
    shutil.copy(small_warehouse, path)
    c = warehouse_db.open(path, "write", create=True)
    simulate_warehouse(c, seed=5)
    model = scalar(c, "SELECT min(model) FROM score_runs")
    c.execute(
        "DELETE FROM scores WHERE run_id IN (SELECT run_id FROM score_runs WHERE model = ?) "
        "AND response_id IN (SELECT response_id FROM responses WHERE participant_key % 3 = 0)",
        [model],
    )
    c.close()
    return path


def _reference_model_nll(pm: pd.DataFrame, level: float) -> tuple[pd.DataFrame, int, bool]:
    """The report's former pandas computation over per-participant rows."""
    n_models = pm["model"].nunique()
    per = pm.groupby("participant_key")["model"].nunique()
    common = per.index[per == n_models]
    if len(common):
        pm = pm[pm["participant_key"].isin(common)]
    g = pm.groupby("model")["mean_nll"]
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "sd": g.std(ddof=1)})
    half = stats.t.ppf(0.5 + level / 2, out["n"] - 1) * out["sd"] / np.sqrt(out["n"])
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out, int(pm["participant_key"].nunique()), bool(len(common))


def test_report_model_nll_aggregates_in_duckdb_equal_pandas(scored):
    from psystats.reports.queries import model_nll
    from psystats.stats.data import participant_means

    c = warehouse_db.open(scored)
    try:
        for cond in [
            r[0] for r in c.execute("SELECT DISTINCT condition FROM score_runs").fetchall()
        ]:
            table, info = model_nll(c, cond)
            ref, n_part, common = _reference_model_nll(participant_means(c, condition=cond), 0.95)
            assert info["n_participants"] == n_part and info["common"] == common
            t = table.set_index("model").loc[ref.index]
            assert (t["n_participants"].to_numpy() == ref["n"].to_numpy()).all()
            for col in ("mean", "sd", "lo", "hi"):
                np.testing.assert_allclose(t[col], ref[col], rtol=1e-10)
    finally:
        c.close()


def test_cells_one_pair_at_a_time_mix_runs_per_experiment(scored, tmp_path):
    """A newer run of ONE experiment replaces only that experiment's cells (known answer:
    every participant's difference moves by exactly the shift), and the pair-by-pair
    build equals building each pair alone."""
    from psystats.stats.cells import build_cells

    path = tmp_path / "w.duckdb"
    shutil.copy(scored, path)
    c = warehouse_db.open(path, "write", create=True)
    try:
        before = build_cells(c)
        post = before.post_model.iloc[0]
        exp = before[before.post_model == post].experiment.iloc[-1]
        old = int(
            before[(before.post_model == post) & (before.experiment == exp)].post_run_id.iloc[0]
        )
        new = int(scalar(c, "SELECT nextval('run_id_seq')"))
        c.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version,"
            " started_at, finished_at, status) VALUES (?, ?, 'plain', 'x', 'x',"
            " current_timestamp, current_timestamp + INTERVAL 1 DAY, 'complete')",
            [new, post],
        )
        c.execute(
            "INSERT INTO scores (run_id, response_id, nll, n_tokens) SELECT ?, s.response_id,"
            " s.nll + 0.75, s.n_tokens FROM scores s JOIN responses r USING (response_id)"
            " WHERE s.run_id = ? AND r.experiment = ?",
            [new, old, exp],
        )
        after = build_cells(c)
        alone = pd.concat(
            [build_cells(c, models=[p]) for p in sorted(set(after.post_model))]
        ).drop_duplicates(["pair", "experiment"])
    finally:
        c.close()
    key = ["pair", "experiment"]
    m = before.merge(after, on=key, suffixes=("_b", "_a"))
    assert len(m) == len(before) == len(after)
    hit = (m.post_model_a == post) & (m.experiment == exp)
    assert hit.sum() == 1 and (m.post_run_id_a[hit] == new).all()
    assert (m.post_run_id_a[~hit] == m.post_run_id_b[~hit]).all()
    np.testing.assert_allclose(m.mean_a[hit], m.mean_b[hit] + 0.75, rtol=1e-12)
    np.testing.assert_allclose(m.var_a, m.var_b, rtol=1e-9)
    np.testing.assert_allclose(m.mean_a[~hit], m.mean_b[~hit], rtol=1e-12)
    same = after.merge(alone, on=key, suffixes=("", "_1"))
    assert len(same) == len(after)
    np.testing.assert_allclose(same["mean"], same["mean_1"], rtol=1e-12)
    assert (same.n == same.n_1).all()


# ------------------------------------------------ one run / one model at a time


def _with_newer_run(src, dest) -> tuple[str, str, int]:
    """A copy of ``src`` where one model has a newer complete run of ONE experiment (its
    NLLs shifted by 0.5), and an older failed run that must never count."""
    shutil.copy(src, dest)
    c = warehouse_db.open(dest, "write", create=True)
    try:
        model, old = c.execute(
            "SELECT model, run_id FROM score_runs WHERE condition = 'plain' ORDER BY run_id LIMIT 1"
        ).fetchall()[0]
        exp = scalar(
            c,
            "SELECT max(r.experiment) FROM scores s JOIN responses r USING (response_id) "
            "WHERE s.run_id = ?",
            [old],
        )
        for status, days in (("complete", 1), ("failed", 2)):
            new = int(scalar(c, "SELECT nextval('run_id_seq')"))
            c.execute(
                "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version,"
                " started_at, finished_at, status) VALUES (?, ?, 'plain', 'x', 'x',"
                " current_timestamp, current_timestamp + to_days(?), ?)",
                [new, model, days, status],
            )
            c.execute(
                "INSERT INTO scores (run_id, response_id, nll, n_tokens) SELECT ?, s.response_id,"
                " s.nll + 0.5, s.n_tokens FROM scores s JOIN responses r USING (response_id)"
                " WHERE s.run_id = ? AND r.experiment = ?",
                [new, old, exp],
            )
            if status == "complete":
                newest = new
    finally:
        c.close()
    return model, exp, newest


def _latest_runs_one_query(c, conditions, models=None, experiments=None) -> pd.DataFrame:
    """The reference: latest_runs_sql over all runs in one statement, filtered after."""
    from psystats.stats.data import latest_runs_sql

    ph = ", ".join("?" * len(conditions))
    cur = c.execute(
        f"WITH {latest_runs_sql(ph)} SELECT model, condition, experiment, run_id "
        "FROM latest_runs ORDER BY ALL",
        list(conditions),
    )
    df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    if models:
        df = df[df.model.isin(models)]
    if experiments:
        df = df[df.experiment.isin(experiments)]
    return df.reset_index(drop=True)


def test_latest_runs_one_run_at_a_time_equal_one_query(scored, tmp_path):
    from psystats.stats.data import latest_runs

    model, exp, newest = _with_newer_run(scored, tmp_path / "w.duckdb")
    c = warehouse_db.open(tmp_path / "w.duckdb")
    try:
        conds = [r[0] for r in c.execute("SELECT DISTINCT condition FROM score_runs").fetchall()]
        for args in (
            dict(conditions=["plain"]),
            dict(conditions=sorted(conds)),
            dict(conditions=["plain"], models=[model]),
            dict(conditions=["plain"], experiments=[exp]),
        ):
            got = latest_runs(
                c,
                args["conditions"],
                models=args.get("models"),
                experiments=args.get("experiments"),
            )
            ref = _latest_runs_one_query(c, **args)
            assert len(ref) > 0
            pd.testing.assert_frame_equal(
                got.reset_index(drop=True), ref, check_dtype=False, check_like=False
            )
        # The known answer: the newer complete run counts for that experiment only.
        got = latest_runs(c, ["plain"], models=[model])
        assert got.set_index("experiment").loc[exp, "run_id"] == newest
        assert (got[got.experiment != exp].run_id != newest).all()
    finally:
        c.close()


def test_participant_means_table_equals_participant_means(scored):
    from psystats.stats.data import participant_means, participant_means_table

    c = warehouse_db.open(scored)
    try:
        ref = participant_means(c, condition="plain")
        key = ["model", "experiment", "participant_key"]
        with participant_means_table(c, condition="plain") as rel:
            cur = c.execute(f"SELECT * FROM {rel} p ORDER BY ALL")
            got = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
        # Dropped afterwards: nothing of it is left in the connection.
        assert not c.execute(
            "SELECT * FROM duckdb_tables() WHERE table_name LIKE '_psystats_participant_means%'"
        ).fetchall()
    finally:
        c.close()
    got = got.sort_values(key).reset_index(drop=True)
    ref = ref.sort_values(key).reset_index(drop=True)
    assert list(got.columns) == list(ref.columns) and len(got) == len(ref) > 0
    for col in ("model", "run_id", "experiment", "domain", "study", "participant_key"):
        assert (got[col].astype(str) == ref[col].astype(str)).all(), col
    assert (got.n_responses.to_numpy() == ref.n_responses.to_numpy()).all()
    np.testing.assert_allclose(got.mean_nll, ref.mean_nll, rtol=1e-12)


def test_runs_table_counts_per_run_equal_one_query(scored, tmp_path):
    from psystats.reports.queries import runs_table

    _with_newer_run(scored, tmp_path / "w.duckdb")
    c = warehouse_db.open(tmp_path / "w.duckdb")
    try:
        got = runs_table(c)
        ref = c.execute(
            "SELECT sr.run_id, count(s.response_id), "
            "count(s.response_id) FILTER (WHERE (s.n_tokens IS NULL OR s.n_tokens > 0) "
            "AND s.nll IS NOT NULL AND isfinite(s.nll)) "
            "FROM score_runs sr LEFT JOIN scores s USING (run_id) GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        c.close()
    assert [tuple(r) for r in got[["run_id", "scored", "valid"]].itertuples(index=False)] == [
        tuple(r) for r in ref
    ]
    assert list(got.columns[:7]) == [
        "run_id",
        "model",
        "condition",
        "scorer",
        "status",
        "scored",
        "valid",
    ]


def _cached_mib(c) -> float:
    return scalar(
        c,
        "SELECT coalesce(sum(memory_usage_bytes), 0) / 2^20 FROM duckdb_memory() "
        "WHERE tag = 'BASE_TABLE'",
    )


def test_release_buffers_evicts_the_file_cache_and_keeps_the_limit(scored, monkeypatch):
    from psystats.warehouse import buffers
    from psystats.warehouse.buffers import release_buffers

    # The small warehouse's cache fits in the production headroom (32 MB): evict all of it.
    monkeypatch.setattr(buffers, "HEADROOM", 0)
    c = warehouse_db.open(scored)
    try:
        limit = scalar(c, "SELECT current_setting('memory_limit')")
        c.execute("CREATE TEMP TABLE keep AS SELECT range AS x FROM range(100000)")
        c.execute("SELECT sum(nll), sum(response_id) FROM scores").fetchall()
        before = _cached_mib(c)
        assert before > 0
        for _ in range(5):  # repeated releases never creep the limit down
            assert release_buffers(c)
            assert scalar(c, "SELECT current_setting('memory_limit')") == limit
        assert _cached_mib(c) < before
        # What is not the file's cache is kept, and results do not change.
        assert scalar(c, "SELECT sum(x) FROM keep") == 100000 * 99999 // 2
    finally:
        c.close()
    bc = warehouse_db.open(scored, "statement")
    try:
        assert release_buffers(bc) is False  # it detaches after each statement anyway
    finally:
        bc.close()


# ------------------------------------------------ fit generations: base cells in SQL


@pytest.fixture(scope="module")
def generations_db(tmp_path_factory):
    """Two families of base models in 3 and 2 generations; one base model misses a third
    of the participants of every experiment (the 'complete participants' rule matters)."""
    from psystats.stats.generations import simulate_generations
    from psystats.stats.simulate import add_synthetic_experiments

    path = tmp_path_factory.mktemp("gen") / "gen.duckdb"
    c = warehouse_db.open(path, "write", create=True)
    try:
        add_synthetic_experiments(c, n_experiments=4, participants=9, responses=3, seed=3)
        simulate_generations(c, families={"qwen": (1, 2, 3), "llama": (1, 2)}, seed=4)
        model = scalar(
            c, "SELECT min(name) FROM models WHERE family = 'qwen' AND post_training = 'base'"
        )
        c.execute(
            "DELETE FROM scores WHERE run_id IN (SELECT run_id FROM score_runs WHERE model = ?)"
            " AND response_id IN (SELECT response_id FROM responses"
            " WHERE participant_key % 3 = 0)",
            [model],
        )
    finally:
        c.close()
    return path


def test_base_cells_in_duckdb_equal_the_pandas_two_way_table(generations_db):
    from psystats.stats.base_cells import base_cells
    from psystats.stats.data import load_models, participant_means
    from psystats.stats.generations import _base_cells_one

    c = warehouse_db.open(generations_db)
    try:
        models = load_models(c)
        bases = models[models.post_training == "base"].set_index("name")
        # One family as it is, and one where a single base model is alone (own SD).
        solo = bases.family.copy()
        solo[solo.index[solo == "llama"][0]] = "alone"
        got = {
            k: base_cells(c, fam, condition="plain")
            for k, fam in (("as is", bases.family), ("solo", solo))
        }
        pm = participant_means(c, condition="plain")
    finally:
        c.close()
    for key, fam in (("as is", bases.family), ("solo", solo)):
        g = got[key]
        bm = pm[pm.model.isin(fam.index)]
        bm = bm.assign(family=bm.model.map(fam))
        n_ref = 0
        for (f, exp), frame in bm.groupby(["family", "experiment"]):
            ref, dropped = _base_cells_one(frame)
            mine = g[(g.family == f) & (g.experiment == exp)]
            assert (mine.dropped == dropped).all()
            if f == "qwen":
                assert dropped > 0  # the rule is exercised
            if ref.empty:
                assert mine["mean"].isna().all()
                continue
            mine = mine.set_index("model").loc[list(ref.model)]
            assert (mine.n.to_numpy() == ref.n.to_numpy()).all()
            np.testing.assert_allclose(mine["mean"], ref["mean"], rtol=1e-12)
            np.testing.assert_allclose(mine["se"], ref["se"], rtol=1e-10)
            n_ref += len(ref)
        assert n_ref == g["mean"].notna().sum() > 0
    assert (got["solo"].family == "alone").any()


def test_load_generations_data_equals_the_pandas_route(generations_db):
    """`fit generations` reads base cells aggregated in DuckDB: the same data, notes and
    cells as preparing them from every participant row in pandas."""
    from psystats.stats.cells import build_cells
    from psystats.stats.data import load_models, participant_means
    from psystats.stats.generations import load_generations_data, prepare_generations

    c = warehouse_db.open(generations_db)
    try:
        got = load_generations_data(c)
        ref = prepare_generations(
            participant_means(c, condition="plain"), build_cells(c), load_models(c)
        )
    finally:
        c.close()
    assert got.notes == ref.notes and any("not scored by every base model" in n for n in got.notes)
    assert got.families == ref.families and got.reference_type == ref.reference_type
    pd.testing.assert_frame_equal(got.generations, ref.generations)
    pd.testing.assert_frame_equal(got.gap_cells, ref.gap_cells)
    key = ["family", "experiment", "model"]
    a = got.base_cells.sort_values(key).reset_index(drop=True)
    b = ref.base_cells.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a, b[a.columns], check_dtype=False, rtol=1e-10)
    assert set(got.selection["runs"]) >= set(a.model)


# ------------------------------------------- fit accuracy: one (model, experiment) at a time


def test_option_groups_equal_option_rows_and_prepare_the_same_data(tmp_path):
    from psystats.stats.accuracy import option_rows, prepare_accuracy, simulate_accuracy
    from psystats.stats.data import load_models
    from psystats.stats.option_groups import OptionGroups
    from psystats.stats.options import Selection
    from psystats.stats.simulate import add_synthetic_experiments

    path = tmp_path / "acc.duckdb"
    c = warehouse_db.open(path, "write", create=True)
    try:
        add_synthetic_experiments(c, n_experiments=2, participants=6, responses=3, seed=1)
        simulate_accuracy(c, seed=2)
        ref = option_rows(c)
        groups = OptionGroups(c)
        got = groups.to_frame()
        one_exp = sorted(set(ref.experiment))[0]
        ref_one = option_rows(c, Selection(experiments=[one_exp]))
        got_one = OptionGroups(c, experiments=[one_exp]).to_frame()
        models = load_models(c)
        a = prepare_accuracy(ref, models, folds=3, seed=0)
        b = prepare_accuracy(groups, models, folds=3, seed=0)
    finally:
        c.close()
    key = ["model", "response_id", "option"]
    assert len(ref) > 0 and len(groups.groups) == ref.groupby(["model", "experiment"]).ngroups
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        got_one.sort_values(key).reset_index(drop=True),
        ref_one.sort_values(key).reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(a.participants, b.participants)
    pd.testing.assert_frame_equal(a.calibration, b.calibration)
    pd.testing.assert_frame_equal(a.pairs, b.pairs)
    assert a.notes == b.notes
