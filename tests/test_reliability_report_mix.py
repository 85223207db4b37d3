"""The report renders a warehouse holding both a psystats scoring run and an imported run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from helpers import cli_base_warehouse, cli_ok
from psystats.cli import main
from psystats.reports.content import build_report
from psystats.warehouse import db as warehouse_db

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "psystats" / "sample" / "psych201"


def test_report_content_with_a_psystats_like_run_and_an_imported_run(tmp_path: Path):
    """Fast version: an imported run, and a copy of it given a psystats run's provenance
    (weights and tokenizer hashes, settings); NaN ages as a hand-made table may hold."""
    db = tmp_path / "w.duckdb"
    assert CliRunner().invoke(main, ["--db", str(db), "ingest", str(SAMPLE), "-q"]).exit_code == 0
    con = duckdb.connect(str(db))
    ids = [r for (r,) in con.execute("SELECT response_id FROM responses").fetchall()]
    con.close()
    f = tmp_path / "imported.csv"
    f.write_text("response_id,nll\n" + "".join(f"{r},{1 + r % 3}\n" for r in ids))
    res = CliRunner().invoke(
        main,
        [
            "--db",
            str(db),
            "scores",
            "import",
            str(f),
            "--model",
            "imported-there",
            "--type",
            "other",
        ],
    )
    assert res.exit_code == 0, res.output
    # A second run with a psystats run's provenance, over the same scores.
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO models (model_id, name, post_training, trust_remote_code, inferred, created_at) "
        "SELECT model_id + 1, 'scored-here', post_training, false, inferred, created_at FROM models"
    )
    con.execute(
        "INSERT INTO score_runs SELECT * REPLACE (2 AS run_id, 'scored-here' AS model, "
        "'psystats' AS scorer, repeat('ab', 32) AS weights_sha256, repeat('cd', 32) AS "
        "tokenizer_sha256, 'cpu' AS device, 'float32' AS dtype, '{\"token_budget\": 4096}' "
        "AS settings, 0 AS n_skipped) FROM score_runs WHERE run_id = 1"
    )
    con.execute("INSERT INTO scores SELECT * REPLACE (2 AS run_id) FROM scores WHERE run_id = 1")
    con.execute("UPDATE participants SET age = 'NaN'::DOUBLE WHERE hash(participant) % 2 = 0")
    con.close()
    con = warehouse_db.open(db)
    try:
        report = build_report(con)  # used to raise TypeError: 'float' object is not subscriptable
        try:
            text = repr([b for s in report.sections for b in s.blocks])
        finally:
            report.close()
    finally:
        con.close()
    assert "scored-here" in text and "imported-there" in text
    assert "abababababab" in text  # the psystats run's hash, first 12 digits


@pytest.mark.slow  # scores a tiny model (~10 s with the model build)
def test_report_with_psystats_and_imported_runs_and_nulls(tmp_path: Path, psych201, tiny_models):
    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    cli_ok("--db", db, "score", "--model", "tiny-qwen3", "-q")
    exported = tmp_path / "run1.csv"
    cli_ok("--db", db, "scores", "export", "--run", "1", "-o", exported)
    cli_ok("--db", db, "scores", "import", exported, "--model", "ext-scorer", "--type", "other")
    # NULLs and NaN where a hand-made or imported table may have them.
    con = duckdb.connect(str(db))
    con.execute("UPDATE scores SET n_tokens = NULL, top1_all = NULL WHERE run_id = 2")
    con.execute("UPDATE participants SET age = 'NaN'::DOUBLE WHERE hash(participant) % 2 = 0")
    con.close()
    before = db.read_bytes()
    out = tmp_path / "mix.html"
    res = cli_ok("--db", db, "report", "-o", out)
    assert "report written" in res.output
    text = out.read_text()
    assert "tiny-qwen3" in text and "ext-scorer" in text
    assert db.read_bytes() == before
    pdf = tmp_path / "mix.pdf"
    cli_ok("--db", db, "report", "-o", pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    con = warehouse_db.open(db)
    try:
        report = build_report(con)
        report.close()
    finally:
        con.close()
