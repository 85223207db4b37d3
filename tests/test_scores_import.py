"""`scores import` / `scores export`: external scorers' results in and out of the warehouse."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.scoring import registry
from psystats.scoring.importer import export_scores, import_scores
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.sql import scalar

SCORE_COLS = ["nll", "n_tokens", "first_token_nll", "top1_all", "top1_first", "first_token_entropy"]


pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def con(warehouse_copy):
    c = warehouse_db.open(warehouse_copy, "write", create=True)
    yield c
    c.close()


def external_scores(con, n: int | None = None, seed: int = 0) -> pa.Table:
    """What an external scorer might deliver: natural keys plus random but valid scores."""
    rows = con.execute(
        "SELECT response_id, study, experiment, participant, response_index FROM responses "
        "ORDER BY response_id" + (f" LIMIT {int(n)}" if n else "")
    ).fetchall()
    rng = np.random.default_rng(seed)
    k = len(rows)
    n_tokens = rng.integers(1, 6, k)
    first = rng.exponential(2.0, k)
    return pa.table(
        {
            "response_id": [r[0] for r in rows],
            "study": [r[1] for r in rows],
            "experiment": [r[2] for r in rows],
            "participant": [r[3] for r in rows],
            "response_index": [r[4] for r in rows],
            "nll": first + rng.exponential(1.0, k) * (n_tokens - 1),
            "n_tokens": n_tokens,
            "first_token_nll": first,
            "top1_all": rng.random(k) < 0.3,
            "top1_first": rng.random(k) < 0.5,
            "first_token_entropy": rng.exponential(1.5, k),
        }
    )


def stored(con, run_id: int) -> pa.Table:
    return con.sql(
        f"SELECT response_id, {', '.join(SCORE_COLS)} FROM scores WHERE run_id = ? "
        f"ORDER BY response_id",
        params=[run_id],
    ).to_arrow_table()


def counts(con) -> tuple[int, int, int]:
    return tuple(
        scalar(con, f"SELECT count(*) FROM {t}") for t in ("models", "score_runs", "scores")
    )


def test_round_trip_parquet(con, tmp_path):
    original = external_scores(con)
    src = tmp_path / "external.parquet"
    pq.write_table(original, src)
    r = import_scores(con, src, model="my-cognitive-model", post_training="other")
    assert r.n_rows == original.num_rows == scalar(con, "SELECT count(*) FROM responses")
    assert r.model_registered
    run = con.execute(
        "SELECT model, condition, scorer, status, n_responses, n_participants "
        "FROM score_runs WHERE run_id = ?",
        [r.run_id],
    ).fetchall()[0]
    assert run == (
        "my-cognitive-model",
        "imported",
        "my-cognitive-model",
        "complete",
        original.num_rows,
        scalar(con, "SELECT count(*) FROM participants"),
    )
    model = registry.get_model(con, "my-cognitive-model")
    assert model["source"] is None and model["post_training"] == "other"

    # the stored values are the file's values
    got = stored(con, r.run_id)
    want = original.select(["response_id", *SCORE_COLS]).sort_by("response_id")
    for c in SCORE_COLS:
        assert got[c].to_pylist() == want[c].to_pylist(), c

    # export, import the export under another model, export again: identical files
    out1 = tmp_path / "export1.parquet"
    runs, n = export_scores(con, out1, run_id=r.run_id)
    assert runs == [r.run_id] and n == original.num_rows
    r2 = import_scores(con, out1, model="copy")
    out2 = tmp_path / "export2.parquet"
    export_scores(con, out2, model="copy")
    t1, t2 = pq.read_table(out1), pq.read_table(out2)
    keep = [c for c in t1.column_names if c not in ("run_id", "model", "scorer")]
    assert t1.select(keep).equals(t2.select(keep))
    assert set(t2["run_id"].to_pylist()) == {r2.run_id}
    # the export carries the natural keys of the warehouse
    keys = ["study", "experiment", "participant", "response_index"]
    assert t1.select(keys).to_pylist() == original.sort_by("response_id").select(keys).to_pylist()


def test_csv_with_natural_key_in_bits(con, tmp_path):
    table = external_scores(con, n=40, seed=1).drop_columns(["response_id"])
    src = tmp_path / "bits.csv"
    pcsv.write_csv(table, src)
    r = import_scores(con, src, model="Qwen/Qwen2.5-7B", condition="plain", unit="bits")
    got = stored(con, r.run_id)
    ln2 = math.log(2.0)
    for c in ("nll", "first_token_nll", "first_token_entropy"):
        np.testing.assert_allclose(got[c].to_numpy(), table[c].to_numpy() * ln2, rtol=1e-12)
    assert got["n_tokens"].to_pylist() == table["n_tokens"].to_pylist()
    # a model named like a hub model gets the name rules, even without a source
    m = registry.get_model(con, "Qwen/Qwen2.5-7B")
    assert (m["family"], m["generation"], m["post_training"], m["source"]) == (
        "qwen",
        "2.5",
        "base",
        None,
    )


def test_logprob_column_and_missing_optional_columns(con, tmp_path):
    t = external_scores(con, n=10)
    src = tmp_path / "lp.parquet"
    pq.write_table(
        pa.table(
            {
                "response_id": t["response_id"],
                "logprob": pa.array([-v for v in t["nll"].to_pylist()]),
            }
        ),
        src,
    )
    r = import_scores(con, src, model="m", unit="log10")
    assert "n_tokens" in r.missing_optional
    got = stored(con, r.run_id)
    np.testing.assert_allclose(
        got["nll"].to_numpy(), t["nll"].to_numpy() * math.log(10.0), rtol=1e-12
    )
    assert got["n_tokens"].null_count == 10


def test_reimport_is_a_no_op_unless_forced(con, tmp_path):
    src = tmp_path / "s.parquet"
    pq.write_table(external_scores(con, n=20), src)
    first = import_scores(con, src, model="m")
    again = import_scores(con, src, model="m")
    assert again.already_imported and again.run_id == first.run_id
    assert counts(con) == (1, 1, 20)
    forced = import_scores(con, src, model="m", force=True)
    assert forced.run_id != first.run_id and counts(con) == (1, 2, 40)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _first_keys(con, n=3):
    return con.execute(
        "SELECT response_id, study, experiment, participant, response_index "
        "FROM responses ORDER BY response_id LIMIT ?",
        [n],
    ).fetchall()


BAD_CASES = {
    # name: (csv body builder, expected message fragment)
    "unknown response_id": (
        lambda k: f"response_id,nll\n{k[0][0]},1.0\n99999999,2.0\n",
        "response_id not in the warehouse: line 3: response_id=99999999",
    ),
    "unknown participant": (
        lambda k: (
            f"study,participant,response_index,nll\n"
            f"{k[0][1]},{k[0][3]},{k[0][4]},1\n{k[0][1]},no-such-person,0,1\n"
        ),
        "no such response in the warehouse: line 3: study=",
    ),
    "duplicate": (
        lambda k: f"response_id,nll\n{k[0][0]},1\n{k[1][0]},1\n{k[0][0]},2\n",
        "the same response appears more than once: line 2: response_id=",
    ),
    "nan": (lambda k: f"response_id,nll\n{k[0][0]},nan\n", "field 'nll' is not finite: line 2"),
    "inf entropy": (
        lambda k: f"response_id,nll,first_token_entropy\n{k[0][0]},1,inf\n",
        "field 'first_token_entropy' is not finite: line 2",
    ),
    "negative nll": (
        lambda k: f"response_id,nll\n{k[0][0]},1\n{k[1][0]},-0.5\n",
        "field 'nll' is negative: give the NEGATIVE log-likelihood (>= 0): line 3",
    ),
    "positive logprob": (
        lambda k: f"response_id,logprob\n{k[0][0]},0.5\n",
        "field 'logprob' is positive",
    ),
    "not a number": (
        lambda k: f"response_id,nll\n{k[0][0]},abc\n",
        "field 'nll' is not a number: line 2: nll=abc",
    ),
    "empty nll": (lambda k: f"response_id,nll\n{k[0][0]},\n", "field 'nll' is empty: line 2"),
    "fractional index": (
        lambda k: f"study,participant,response_index,nll\n{k[0][1]},{k[0][3]},0.5,1\n",
        "field 'response_index' is not a whole number: line 2",
    ),
    "bad boolean": (
        lambda k: f"response_id,nll,top1_all\n{k[0][0]},1,maybe\n",
        "field 'top1_all' is not a boolean",
    ),
    "negative n_tokens": (
        lambda k: f"response_id,nll,n_tokens\n{k[0][0]},1,-2\n",
        "field 'n_tokens' is negative: line 2",
    ),
    "keys disagree": (
        lambda k: f"response_id,participant,nll\n{k[0][0]},someone-else,1\n",
        "field 'participant' disagrees with the warehouse for that response_id: line 2",
    ),
    "no key": (lambda k: "participant,nll\nx,1\n", "no key columns"),
    "no nll": (lambda k: f"response_id,score\n{k[0][0]},1\n", "no 'nll' column"),
    "no rows": (lambda k: "response_id,nll\n", "no rows"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_files_name_line_and_field_and_write_nothing(con, tmp_path, case):
    build, fragment = BAD_CASES[case]
    src = _write(tmp_path, "bad-scores.csv", build(_first_keys(con)))
    before = counts(con)
    with pytest.raises(WarehouseError) as e:
        import_scores(con, src, model="new-model")
    msg = str(e.value)
    assert str(src) in msg and fragment in msg, msg
    assert counts(con) == before  # no model, run or score written
    # the connection is still usable (no half-finished transaction or temp table left)
    assert scalar(con, "SELECT count(*) FROM responses") > 0
    assert not con.execute(
        "SELECT * FROM duckdb_tables() WHERE table_name = '_import_rows'"
    ).fetchall()


def test_error_lists_first_rows_and_total(con, tmp_path):
    keys = _first_keys(con, 8)
    body = "response_id,nll\n" + "".join(f"{k[0]},-1\n" for k in keys)
    src = _write(tmp_path, "many.csv", body)
    with pytest.raises(WarehouseError, match=r"line 2: .*line 6: .*\(and 3 more\)"):
        import_scores(con, src, model="m")


def test_export_by_model_takes_newest_complete_run_per_condition(con, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(external_scores(con, n=15, seed=1), a)
    pq.write_table(external_scores(con, n=15, seed=2), b)
    r_plain = import_scores(con, a, model="m", condition="plain")
    r_plain2 = import_scores(con, b, model="m", condition="plain")
    r_chat = import_scores(con, a, model="m", condition="chat")
    out = tmp_path / "out.csv"
    runs, n = export_scores(con, out, model="m")
    assert runs == [r_plain2.run_id, r_chat.run_id] and n == 30
    assert r_plain.run_id not in runs
    runs, n = export_scores(con, out, model="m", condition="chat")
    assert runs == [r_chat.run_id] and n == 15
    with pytest.raises(WarehouseError, match="no complete score run under condition 'persona'"):
        export_scores(con, out, model="m", condition="persona")
    with pytest.raises(WarehouseError, match="no score run 999"):
        export_scores(con, out, run_id=999)


def test_cli_import_export(warehouse_copy, tmp_path):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    src = tmp_path / "ext.parquet"
    pq.write_table(external_scores(con, n=25), src)
    con.close()
    runner = CliRunner()
    db = ["--db", str(warehouse_copy)]
    r = runner.invoke(
        main, ["scores", "import", str(src), "--model", "cog", "--type", "other", *db]
    )
    assert r.exit_code == 0, r.output
    assert "imported 25 scores as run 1" in r.output
    r = runner.invoke(main, ["scores", "import", str(src), "--model", "cog", *db])
    assert r.exit_code == 0 and "imported before as run 1" in r.output
    out = tmp_path / "o.parquet"
    r = runner.invoke(main, ["scores", "export", "--run", "1", "-o", str(out), *db])
    assert r.exit_code == 0 and pq.read_table(out).num_rows == 25
    bad = _write(tmp_path, "bad.csv", "response_id,nll\n99999999,1\n")
    r = runner.invoke(main, ["scores", "import", str(bad), "--model", "cog2", *db])
    assert r.exit_code == 1 and "Error:" in r.output and "line 2" in r.output
    r = runner.invoke(main, ["scores", "export", "-o", str(out), *db])
    assert r.exit_code == 1 and "exactly one of --run or --model" in r.output


def test_study_without_experiment_is_ambiguous_when_the_study_has_several(db_path, tmp_path):
    from psystats.warehouse.ingest import ingest_paths

    study = tmp_path / "twoexp"
    study.mkdir()
    (study / "prompts.jsonl").write_text(
        '{"text": "You press <<A>>. Again: <<B>>.", "experiment": "e1", "participant": "1"}\n'
        '{"text": "Pick: <<X>>.", "experiment": "e2", "participant": "1"}\n'
    )
    con = warehouse_db.open(db_path, "write", create=True)
    ingest_paths(con, [study])
    src = _write(
        tmp_path,
        "amb.csv",
        "study,participant,response_index,nll\ntwoexp,1,1,0.5\ntwoexp,1,0,0.7\n",
    )
    with pytest.raises(
        WarehouseError,
        match="key matches several responses .*line 3: study=twoexp, "
        "participant=1, response_index=0 matches 2",
    ):
        import_scores(con, src, model="m")
    assert counts(con) == (0, 0, 0)
    ok = _write(
        tmp_path, "ok.csv", "study,experiment,participant,response_index,nll\ntwoexp,e2,1,0,0.25\n"
    )
    r = import_scores(con, ok, model="m")
    got = con.execute(
        "SELECT r.experiment, r.text, s.nll FROM scores s JOIN responses r "
        "USING (response_id) WHERE run_id = ?",
        [r.run_id],
    ).fetchall()
    assert got == [("e2", "X", 0.25)]


def test_float16_columns_are_widened_exactly(con, tmp_path):
    """Half-precision scores (which DuckDB cannot read) import as their exact float32 values."""
    t = external_scores(con, n=20)
    half = np.asarray(t["nll"].to_numpy(), dtype=np.float16)
    t = t.set_column(t.column_names.index("nll"), "nll", pa.array(half))
    src = tmp_path / "half.parquet"
    pq.write_table(t, src)
    r = import_scores(con, src, model="half-model")
    got = stored(con, r.run_id)["nll"].to_pylist()
    order = np.argsort(t["response_id"].to_numpy())
    assert got == [float(np.float32(v)) for v in half[order]]


def test_n_tokens_beyond_32_bits_is_a_field_error_and_writes_nothing(con, tmp_path):
    t = external_scores(con, n=5)
    big = pa.array([2**40] * 5, pa.int64())
    t = t.set_column(t.column_names.index("n_tokens"), "n_tokens", big)
    src = tmp_path / "big.parquet"
    pq.write_table(t, src)
    before = counts(con)
    with pytest.raises(WarehouseError, match=r"big\.parquet: field 'n_tokens' is too large.*row 1"):
        import_scores(con, src, model="big-model")
    assert counts(con) == before


# ------------------------------------------------------------------ option scores


def _option_rows(con, n: int, seed: int = 0) -> tuple[list, list, list, np.ndarray]:
    """Three options per response for the first ``n`` responses (the response's own text
    among them), with log-probs that do not sum to one (they get renormalised)."""
    rows = con.execute(
        "SELECT response_id, trim(text) FROM responses ORDER BY response_id LIMIT ?", [n]
    ).fetchall()
    rng = np.random.default_rng(seed)
    rid, opt, lp = [], [], []
    for r, text in rows:
        for o in (text, "other A", "other B"):
            rid.append(r)
            opt.append(o)
            lp.append(float(np.log(rng.uniform(0.05, 0.3))))
    return rid, opt, lp, np.array(lp)


def test_option_scores_import_with_their_run_renormalised(con, tmp_path):
    scores = _write_parquet(tmp_path / "s.parquet", external_scores(con, 10))
    rid, opt, lp, _ = _option_rows(con, 10)
    opts = tmp_path / "o.parquet"
    pq.write_table(pa.table({"response_id": rid, "option": opt, "logprob": lp}), opts)
    r = import_scores(con, scores, model="opt-model", options=opts)
    assert r.n_rows == 10 and r.n_options == 30
    got = con.execute(
        "SELECT response_id, option, logprob FROM option_scores WHERE run_id = ? "
        "ORDER BY response_id, option",
        [r.run_id],
    ).fetchall()
    # independent reference: log p - log sum_o p over each response's options
    ref = {}
    for k in set(rid):
        idx = [i for i, x in enumerate(rid) if x == k]
        norm = math.log(sum(math.exp(lp[i]) for i in idx))
        ref.update({(k, opt[i]): lp[i] - norm for i in idx})
    assert len(got) == len(ref)
    for k, o, v in got:
        assert v == pytest.approx(ref[(k, o)], abs=1e-12)
    # the same files again: nothing to do; another options file: a new run
    assert import_scores(con, scores, model="opt-model", options=opts).already_imported
    pq.write_table(pa.table({"response_id": rid, "option": opt, "logprob": lp[::-1]}), opts)
    again = import_scores(con, scores, model="opt-model", options=opts)
    assert not again.already_imported and again.run_id != r.run_id


def _write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


OPTION_CASES = {
    "no option column": ("response_id,logprob\n{a},-1\n", "needs the columns 'option'"),
    "positive logprob": (
        "response_id,option,logprob\n{a},x,-1\n{a},y,0.5\n",
        "field 'logprob' is positive: a log-probability is <= 0: line 3: logprob=0.5",
    ),
    "not in scores file": (
        "response_id,option,logprob\n{a},x,-1\n{c},x,-1\n",
        "response not in the scores file (option scores belong to its responses): line 3",
    ),
    "duplicate option": (
        "response_id,option,logprob\n{a},x,-1\n{a},x,-2\n",
        "the same option of a response appears more than once: line 2",
    ),
    "sums above one": (
        "response_id,option,logprob\n{a},x,-0.1\n{a},y,-0.2\n",
        "a response's option probabilities sum to more than 1: line 2",
    ),
    "empty option": ("response_id,option,logprob\n{a},,-1\n", "field 'option' is empty: line 2"),
    "not a number": (
        "response_id,option,logprob\n{a},x,abc\n",
        "field 'logprob' is not a number: line 2",
    ),
    "unknown response": (
        "response_id,option,logprob\n99999999,x,-1\n",
        "response_id not in the warehouse: line 2",
    ),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_files_name_line_and_field_and_write_nothing(con, tmp_path, case):
    keys = _first_keys(con)
    scores = _write(tmp_path, "s.csv", f"response_id,nll\n{keys[0][0]},1\n{keys[1][0]},1\n")
    body, fragment = OPTION_CASES[case]
    opts = _write(tmp_path, "o.csv", body.format(a=keys[0][0], b=keys[1][0], c=keys[2][0]))
    before = counts(con), scalar(con, "SELECT count(*) FROM option_scores")
    with pytest.raises(WarehouseError) as e:
        import_scores(con, scores, model="new-model", options=opts)
    assert str(opts) in str(e.value) and fragment in str(e.value), str(e.value)
    assert (counts(con), scalar(con, "SELECT count(*) FROM option_scores")) == before


def test_cli_import_with_options_natural_key_and_bits(warehouse_copy, tmp_path):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    # a response whose text needs no CSV quoting
    k = con.execute(
        "SELECT response_id, study, experiment, participant, response_index FROM responses "
        "WHERE regexp_full_match(trim(text), '[A-Za-z0-9]+') ORDER BY response_id LIMIT 1"
    ).fetchall()[0]
    text = con.execute("SELECT trim(text) FROM responses WHERE response_id = ?", [k[0]]).fetchall()
    con.close()
    scores = _write(tmp_path, "s.csv", f"response_id,nll\n{k[0]},2\n")
    # natural key, log2 probabilities 0.5 / 0.25 (renormalised to 2/3, 1/3)
    opts = _write(
        tmp_path,
        "o.csv",
        "study,experiment,participant,response_index,option,logprob\n"
        f"{k[1]},{k[2]},{k[3]},{k[4]},{text[0][0]},-1\n"
        f"{k[1]},{k[2]},{k[3]},{k[4]},zzz,-2\n",
    )
    res = CliRunner().invoke(
        main,
        ["scores", "import", str(scores), "--options", str(opts), "--model", "m-bits"]
        + ["--unit", "bits", "--db", str(warehouse_copy)],
    )
    assert res.exit_code == 0, res.output
    assert "with 2 option scores" in res.output
    con = warehouse_db.open(warehouse_copy)
    got = dict(con.execute("SELECT option, logprob FROM option_scores").fetchall())
    con.close()
    assert got[text[0][0]] == pytest.approx(math.log(2 / 3), abs=1e-12)
    assert got["zzz"] == pytest.approx(math.log(1 / 3), abs=1e-12)
    res = CliRunner().invoke(main, ["scores", "import", "--help"])
    assert "--options" in res.output and "option" in res.output
