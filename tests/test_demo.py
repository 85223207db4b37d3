"""`psystats demo` and the embedded sample: plumbing fast, the whole pipeline offline (slow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats import warehouse
from psystats.cli import COMMANDS, main
from psystats.commands import demo_cmds
from psystats.sample import sample_path, sample_studies

ROOT = Path(__file__).resolve().parent.parent


def test_sample_is_real_psych201_with_attribution(psych201: Path, tmp_path: Path):
    """The shipped sample is byte-identical to what scripts/make_sample.py cuts from Psych-201."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "scripts" / "make_sample.py"
    )
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    counts = make_sample.cut(psych201, tmp_path / "cut", make_sample.STUDIES, make_sample.SEED)
    assert counts == sample_studies()
    shipped = sample_path()
    assert (shipped / "LICENSE").read_bytes() == (psych201 / "LICENSE").read_bytes()
    for study, n in counts.items():
        assert (shipped / study / "README.md").read_bytes() == (
            psych201 / study / "README.md"
        ).read_bytes()
        data = (shipped / study / "prompts.jsonl").read_bytes()
        assert data == (tmp_path / "cut" / study / "prompts.jsonl").read_bytes()
        full = set(make_sample.read_lines(psych201 / study))
        lines = data.splitlines()
        assert len(lines) == n and all(line in full for line in lines)


def test_sample_ingests_into_several_domains(db_path: Path):
    from psystats.warehouse.ingest import ingest_paths

    con = warehouse.connect(db_path)
    ingest_paths(con, [sample_path()])
    rows = con.execute(
        "SELECT p.study, e.domain, count(*) FROM participants p "
        "JOIN experiments e USING (experiment) GROUP BY ALL"
    ).fetchall()
    con.close()
    assert {r[0]: r[2] for r in rows} == sample_studies()
    assert len({r[1] for r in rows}) >= 3


def test_plan_is_ordinary_commands(tmp_path: Path):
    p = demo_cmds.plan(
        tmp_path,
        "/models/base-folder",
        "/models/post.gguf",
        draws=50,
        tune=50,
        chains=4,
        post_type="instruct",
    )
    assert [s.argv[0] for s in p.steps] == [
        "init",
        "ingest",
        "models",
        "models",
        "score",
        "score",
        "fit",
        "report",
    ]
    for step in p.steps:
        assert step.argv[0] in COMMANDS
        assert step.argv[step.argv.index("--db") + 1] == str(tmp_path / "demo.duckdb")
        assert step.command.startswith("psystats ")
    add_post = p.steps[3].argv
    assert add_post[add_post.index("--base") + 1] == "base-folder"
    assert add_post[add_post.index("--type") + 1] == "instruct"
    assert p.steps[4].argv[2] == "base-folder" and p.steps[5].argv[2] == "post"
    assert p.steps[6].argv[:2] == ["fit", "effects"] and p.steps[6].may_fail
    assert p.steps[-1].argv[p.steps[-1].argv.index("-o") + 1] == str(tmp_path / "demo.pdf")
    # every planned command parses with the real CLI (only --help, nothing runs)
    for step in p.steps:
        sub = step.argv[:2] if step.argv[0] in ("models", "fit") else step.argv[:1]
        res = CliRunner().invoke(main, [*sub, "--help"])
        assert res.exit_code == 0, (step.command, res.output)
        for opt in (a for a in step.argv if a.startswith("--")):
            assert opt in res.output, (opt, step.command)


def test_offline_pair_note_reaches_the_report(tmp_path: Path):
    p = demo_cmds.plan(tmp_path, "/x/tiny", "/x/SmolLM2-135M-Instruct.Q4_1.gguf", offline_pair=True)
    report = p.steps[-1].argv
    assert "PIPELINE CHECK ONLY" in report[report.index("--note") + 1]
    assert p.base_name == demo_cmds.OFFLINE_BASE_NAME
    assert p.steps[2].argv[-2:] == ["--type", "base"]


def test_hub_offline_env_means_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok, why = demo_cmds.hub_reachable()
    assert not ok and "HF_HUB_OFFLINE" in why


def test_demo_needs_two_models(tmp_path: Path):
    res = CliRunner().invoke(
        main, ["demo", "--offline", "--workdir", str(tmp_path), "--model", "only-one"]
    )
    assert res.exit_code == 2 and "exactly twice" in res.output


def _check_demo_output(workdir: Path, models: int = 2) -> None:
    from pypdf import PdfReader

    pdf = workdir / "demo.pdf"
    assert pdf.exists()
    text = "\n".join(p.extract_text() or "" for p in PdfReader(str(pdf)).pages)
    assert "1 Data" in text and "8 Methods" in text
    con = warehouse.connect(workdir / "demo.duckdb", read_only=True)
    n_resp = warehouse.db.scalar(con, "SELECT count(*) FROM responses")
    runs = con.execute("SELECT run_id, status FROM score_runs").fetchall()
    n_scores = warehouse.db.scalar(con, "SELECT count(*) FROM scores")
    fits = con.execute("SELECT kind FROM fits").fetchall()
    con.close()
    assert len(runs) == models and all(s == "complete" for _, s in runs)
    assert n_scores == models * n_resp
    assert fits == [("effects",)]


def _demo_on_tiny_models(tiny_models, workdir: Path):
    return CliRunner().invoke(
        main,
        [
            "demo",
            "--offline",
            "--workdir",
            str(workdir),
            "--model",
            str(tiny_models["llama"]),
            "--model",
            str(tiny_models["qwen3"]),
            "--post-type",
            "instruct",
            "--draws",
            "100",
            "--tune",
            "100",
        ],
    )


@pytest.mark.slow
def test_demo_end_to_end_with_local_models(tiny_models, tmp_path: Path):
    """The whole demo, offline, on two tiny local models: every step a real command.

    20-70 s on two shared cores (nutpie's compile dominates); kept out of the
    slow set because this is the test that shows the demo works in CI.
    """
    t0 = time.perf_counter()
    res = _demo_on_tiny_models(tiny_models, tmp_path)
    assert res.exit_code == 0, res.output
    assert "The same, one command at a time" in res.output
    _check_demo_output(tmp_path)
    print(f"demo on tiny models: {time.perf_counter() - t0:.0f} s")


@pytest.mark.slow
def test_demo_rerun_resumes(tiny_models, tmp_path: Path):
    """Running the demo again scores nothing twice (finished runs are not redone)."""
    for _ in range(2):
        res = _demo_on_tiny_models(tiny_models, tmp_path)
        assert res.exit_code == 0, res.output
    con = warehouse.connect(tmp_path / "demo.duckdb", read_only=True)
    assert warehouse.db.scalar(con, "SELECT count(*) FROM score_runs") == 2
    n_resp = warehouse.db.scalar(con, "SELECT count(*) FROM responses")
    assert warehouse.db.scalar(con, "SELECT count(*) FROM scores") == 2 * n_resp
    assert warehouse.db.scalar(con, "SELECT count(*) FROM fits") == 2
    con.close()


@pytest.mark.slow
def test_demo_offline_default_pair(smollm2_gguf, tmp_path: Path, monkeypatch):
    """`psystats demo` with no hub: the tiny random base + SmolLM2-135M-Instruct GGUF (minutes)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "PIPELINE CHECK ONLY" in res.output
    _check_demo_output(tmp_path)
