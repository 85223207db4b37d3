"""Issue 21: the probes of a hostile user that were left, each as a regression test.

Option and environment values of the process-wide settings (refused with
one line, never silently replaced), `sql` with no statement, the `sql`
out-of-memory hint, the lock message naming the psystats command that
holds the file, negative RTs, names the notebook API does not know, the
"did you mean" of a condition, and what `ingest --skip-bad` says and
stores.  docs/reliability.md lists each with what the user gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import psystats as ps
from helpers import cli, one_line
from psystats.warehouse import db as warehouse_db
from psystats.warehouse import settings
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.names import check_names

# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--lock-timeout", "nan"),
        ("--lock-timeout", "inf"),
        ("--lock-timeout", "-1"),
        ("--lock-timeout", "1e400"),
        ("--memory-limit", "-5GB"),
        ("--memory-limit", "0GB"),
        ("--memory-limit", "5"),
        ("--memory-limit", "nan"),
        ("--memory-limit", "150%"),
        ("--memory-limit", "-1"),
    ],
)
def test_bad_setting_options_are_usage_errors(warehouse_copy: Path, option: str, value: str):
    line = one_line(cli(option, value, "--db", warehouse_copy, "summary"), 2, option, repr(value))
    assert "expected" in line or "percentage" in line


@pytest.mark.parametrize(
    ("var", "value"),
    [
        (settings.LOCK_TIMEOUT_ENV, "nan"),
        (settings.MEMORY_ENV, "-5GB"),
        (settings.MEMORY_ENV, "lots"),
    ],
)
def test_bad_setting_variables_are_one_line(warehouse_copy: Path, var: str, value: str):
    one_line(cli("--db", warehouse_copy, "summary", env={var: value}), 1, f"{var}={value!r}")


def test_settings_validate_alike_and_reach_workers(tmp_path: Path):
    with pytest.raises(settings.SettingsError, match="lock_timeout nan"):
        settings.Settings(lock_timeout=float("nan"))
    with pytest.raises(settings.SettingsError, match="memory_limit '-5GB'"):
        settings.Settings(memory_limit="-5GB")
    s = settings.Settings(memory_limit="300MB", lock_timeout=4.5, temp_dir=str(tmp_path))
    before = os.environ.get(settings.MEMORY_ENV)
    restore = settings.activate(s)
    try:
        assert settings.current() == s
        # A worker process (a Ray actor, a subprocess) starts with the same settings.
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from psystats.warehouse import settings; s = settings.current(); "
                "print(s.memory_limit, s.lock_timeout, s.temp_dir)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == ["300MB", "4.5", str(tmp_path)]
    finally:
        restore()
    assert os.environ.get(settings.MEMORY_ENV) == before


def test_memory_and_lock_settings_reach_the_connection(warehouse_copy: Path, tmp_path: Path):
    r = cli(
        "--memory-limit",
        "300MB",
        "--temp-dir",
        tmp_path / "spill",
        "--db",
        warehouse_copy,
        "sql",
        "--format",
        "csv",
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')",
    )
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[1] == f"286.1 MiB,{tmp_path / 'spill'}"


# --------------------------------------------------------------------------- sql


@pytest.mark.parametrize("query", [";", " ; ;\n", ""])
def test_sql_without_a_statement_is_one_line(warehouse_copy: Path, query: str):
    one_line(cli("--db", warehouse_copy, "sql", query), 2, "no SQL statement")


def test_sql_from_empty_standard_input_is_one_line(warehouse_copy: Path):
    one_line(cli("--db", warehouse_copy, "sql", "-f", "-", input=""), 2, "no SQL statement")
    one_line(cli("--db", warehouse_copy, "sql", "-f", "-", input=";\n"), 2, "no SQL statement")


def test_sql_out_of_memory_hint_suggests_what_the_sandbox_allows(warehouse_copy: Path):
    r = cli(
        "--memory-limit",
        "10KB",
        "--db",
        warehouse_copy,
        "sql",
        "SELECT r.text, t.text FROM responses r JOIN transcripts t USING (participant_key) "
        "ORDER BY r.text DESC",
    )
    assert r.exit_code == 1, r.output
    assert "--memory-limit" in r.output and "SET threads" not in r.output
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- locks

HOLDER = """
import sys, time
from psystats.warehouse import db as warehouse_db, settings
s = settings.Settings(command="psystats ingest data/ --force")
con = warehouse_db.open(sys.argv[1], "write", settings=s)
print("held", flush=True)
sys.stdin.readline()
"""


def test_lock_message_names_the_psystats_command_and_its_start(warehouse_copy: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(warehouse_copy)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        line = one_line(
            cli("--db", warehouse_copy, "--lock-timeout", "0.2", "summary"),
            1,
            f"in use by `psystats ingest data/ --force` (PID {holder.pid}, started 20",
            "waited 0.2 s",
        )
        assert "python" not in line and time.monotonic() - t0 < 20
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait()
    # The holder is gone: the file opens again (its note no longer names anyone).
    assert cli("--db", warehouse_copy, "summary").exit_code == 0


# --------------------------------------------------------------------------- ingest


def test_negative_rts_are_stored_with_a_warning(tmp_path: Path):
    src = tmp_path / "rt" / "prompts.jsonl"
    src.parent.mkdir()
    recs = [
        {"text": "Go <<a>> and <<b>>.", "experiment": "e", "participant": "1", "RTs": [-5, 300]},
        {"text": "Go <<a>> and <<b>>.", "experiment": "e", "participant": "2", "RTs": [1, 2]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    db = tmp_path / "w.duckdb"
    r = cli("--db", db, "ingest", src)
    assert r.exit_code == 0, r.output
    warning = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert warning == [
        f"warning: {src}: negative RTs stored as given on 1 line (1); check the RT column"
    ]
    r = cli("--db", db, "sql", "--format", "csv", "SELECT rt FROM responses ORDER BY response_id")
    assert r.output.splitlines()[1:] == ["-5", "300", "1", "2"]


def test_one_rejected_line_is_one_line_and_the_help_names_what_is_stored(tmp_path: Path):
    src = tmp_path / "bad" / "prompts.jsonl"
    src.parent.mkdir()
    src.write_text(
        json.dumps({"text": "Go <<a>>.", "experiment": "e", "participant": "1"}) + "\n{oops\n"
    )
    rejects = tmp_path / "rejects.jsonl"
    r = cli("--db", tmp_path / "w.duckdb", "ingest", "--skip-bad", "--rejects", rejects, src)
    assert r.exit_code == 0, r.output
    assert f"1 rejected line written to {rejects}" in r.output
    stored = json.loads(rejects.read_text().splitlines()[0])
    help_text = " ".join(cli("ingest", "--help").output.split())
    for key in stored:
        assert key in help_text
    assert "the line's content is not copied" in help_text


# --------------------------------------------------------------------------- names


@pytest.fixture
def imported_only(warehouse_copy: Path, tmp_path: Path) -> Path:
    """A warehouse whose only scores were imported (condition 'imported')."""
    src = tmp_path / "ext.csv"
    r = cli(
        "--db",
        warehouse_copy,
        "sql",
        "--format",
        "csv",
        "SELECT response_id, 1.0 AS nll FROM responses LIMIT 50",
    )
    src.write_text(r.output)
    r = cli("--db", warehouse_copy, "scores", "import", src, "--model", "ext", "--type", "other")
    assert r.exit_code == 0, r.output
    return warehouse_copy


def test_notebook_api_unknown_names_raise_did_you_mean(imported_only: Path):
    wh = ps.open(imported_only)
    with pytest.raises(WarehouseError, match=r"no such model 'nope'"):
        wh.scores(model="nope")
    with pytest.raises(WarehouseError, match=r"no such model 'Ext'.*did you mean 'ext'"):
        wh.scores(model="Ext")
    study = wh.summary()["study"].iloc[0]
    with pytest.raises(WarehouseError, match=rf"no such study '{study[:-1]}'.*did you mean"):
        wh.responses(study=study[:-1])
    assert len(wh.scores(model="ext")) == 50
    assert len(wh.responses(study=study, limit=3)) == 3


def test_unknown_condition_suggests_the_ones_there_are(imported_only: Path):
    con = warehouse_db.open(imported_only)
    try:
        with pytest.raises(
            WarehouseError, match=r"no such condition 'plain' \(did you mean 'imported'\?\)"
        ):
            check_names(con, "condition", ["plain"])
    finally:
        con.close()
    r = cli("--db", imported_only, "fit", "effects", "--draws", "10", "--tune", "10")
    one_line(r, 1, "no such condition 'plain'", "did you mean 'imported'")
