"""Issue 21 item 1: option values refused before any work, one line, no traceback.

Each traceback a hostile user met is a regression test here (the settings and
`sql` probes are in test_reliability_probes.py); the property-based walk over
the whole command tree is test_cli_fuzz.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from helpers import cli, one_line


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "0", "nan", "1e400", "ten"])
def test_fit_draws_beyond_any_integer_is_a_usage_error(warehouse_copy: Path, value: str):
    before = digest(warehouse_copy)
    one_line(cli("--db", warehouse_copy, "fit", "effects", "--draws", value), 2, "--draws")
    assert digest(warehouse_copy) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--cpu-threads", "-4"),
        ("--cpu-threads", "0"),
        ("--shard", "5/2"),
        ("--shard", "1/0"),
        ("--shard", "x"),
        ("--commit-chars", "0"),
        ("--token-budget", "-1"),
        ("--token-budget", "99999999999999999999"),
        ("--participants", "0"),
        ("--sample", "nan"),
        ("--sample", "1.5"),
        ("--num-gpus-per-worker", "-1"),
        ("--unit-tokens", "0"),
        ("--stride", "0"),
    ],
)
def test_score_options_are_refused_before_the_model_loads(
    warehouse_copy: Path, smollm2_gguf: Path, option: str, value: str
):
    """A real model that would load (seconds): the option is refused first."""
    before = digest(warehouse_copy)
    r = cli("--db", warehouse_copy, "score", "--model", smollm2_gguf, option, value, "-q")
    one_line(r, 2, option)
    assert digest(warehouse_copy) == before


@pytest.mark.parametrize("study", ["franke2024bayesian", "guenther2023grammaticality"])
def test_simulate_study_without_discrete_choice_is_one_line_and_writes_nothing(
    tmp_path: Path, psych201: Path, study: str
):
    db = tmp_path / "one.duckdb"
    assert cli("--db", db, "ingest", psych201 / study).exit_code == 0
    out = tmp_path / "sim" / "deeper"
    one_line(cli("--db", db, "simulate", "study", "-o", out), 1, "discrete choice")
    assert not (tmp_path / "sim").exists()
    # An existing folder keeps what it held and gets nothing new.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("mine")
    one_line(cli("--db", db, "simulate", "study", "-o", kept), 1, "discrete choice")
    assert [p.name for p in kept.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("target", ["/dev/full", "file"])
def test_simulate_study_refuses_an_output_that_is_not_a_folder(
    warehouse_copy: Path, tmp_path: Path, target: str
):
    out = Path(target) if target.startswith("/") else tmp_path / target
    if not out.exists():
        out.write_text("x")
    r = cli("--db", warehouse_copy, "simulate", "study", "-o", out)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output, r.output
