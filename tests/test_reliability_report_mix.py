"""The report renders a warehouse holding both a psystats scoring run and an imported run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from helpers import cli_base_warehouse, cli_ok
from psystats.reports.content import build_report


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
    from psystats import warehouse

    con = warehouse.connect(db, read_only=True)
    try:
        report = build_report(con)
        report.close()
    finally:
        con.close()
