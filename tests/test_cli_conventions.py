"""One set of conventions over every command: examples in --help, -o/--output, a current reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from psystats.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _leaves(cmd: click.Command, path: list[str], parent: click.Context | None):
    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path)} lists {name} but cannot load it"
            yield from _leaves(sub, [*path, name], ctx)
    else:
        yield " ".join(path), cmd, ctx


LEAVES = list(_leaves(main, ["psystats"], None))


@pytest.mark.parametrize("name,cmd,ctx", LEAVES, ids=[n for n, _, _ in LEAVES])
def test_every_command_has_examples(name, cmd, ctx):
    assert "Examples:" in cmd.get_help(ctx), f"`{name} --help` has no Examples section"


@pytest.mark.parametrize("name,cmd,ctx", LEAVES, ids=[n for n, _, _ in LEAVES])
def test_output_files_are_dash_o_output(name, cmd, ctx):
    for p in cmd.params:
        opts = set(getattr(p, "opts", []))
        if "-o" in opts:
            assert "--output" in opts, f"{name}: -o must be -o/--output, got {sorted(opts)}"


def test_cli_reference_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_summary_shows_scored_runs_per_model(warehouse_copy: Path):
    from psystats.warehouse import db as warehouse_db

    con = warehouse_db.open(warehouse_copy, "write", create=True)
    try:
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version, "
            "started_at, status, n_responses) VALUES "
            "(1, 'm-a', 'plain', 'psystats', '0', now(), 'complete', 10), "
            "(2, 'm-a', 'plain', 'psystats', '0', now(), 'failed', NULL), "
            "(3, 'm-b', 'chat', 'psystats', '0', now(), 'complete', 7)"
        )
    finally:
        con.close()
    r = CliRunner().invoke(
        main, ["--db", str(warehouse_copy), "summary", "--by", "model", "--format", "csv"]
    )
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == (
        "model,condition,complete,incomplete,unfinished,responses_scored,newest_run,sample"
    )
    assert lines[1:] == ["m-a,plain,1,0,1,10,2,", "m-b,chat,1,0,0,7,3,"]
    # The default table view shows both tables.
    r = CliRunner().invoke(main, ["--db", str(warehouse_copy), "summary"])
    assert r.exit_code == 0 and "Scored runs per model" in r.output and "m-b" in r.output
