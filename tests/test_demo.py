"""`psystats demo` and the embedded sample: plumbing fast, the whole pipeline offline (slow)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import COMMANDS, main
from psystats.commands import demo_cmds
from psystats.sample import sample_path, sample_studies
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar

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

    con = warehouse_db.open(db_path, "write", create=True)
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
    from psystats.stats.demo_study import option_files, study_files

    n_files = len(study_files(tmp_path / "simulated"))
    assert [s.argv[0] for s in p.steps] == [
        "init",
        "ingest",
        "models",
        "models",
        "score",
        "score",
        "fit",
        "simulate",
        "models",
        *["scores"] * n_files,
        "fit",
        "fit",
        "fit",
        "fit",
        "simulate",
        "report",
    ]
    # option scores travel with the generation-2 'sim' runs; the report shows the truth
    with_options = [s for s in p.steps if "--options" in s.argv]
    assert len(with_options) == len(option_files(tmp_path / "simulated"))
    assert [s.argv[:2] for s in p.steps if s.argv[:2] == ["fit", "accuracy"]]
    report = p.steps[-1].argv
    assert report[report.index("--truth") + 1] == str(tmp_path / "simulated" / "truth.json")
    # the offline pair's random base is flagged as a pipeline check, by an ordinary command
    off = demo_cmds.plan(tmp_path, "/m/base", "/m/post.gguf", offline_pair=True)
    flag = next(s for s in off.steps if s.argv[:2] == ["models", "set"])
    assert flag.argv[2] == demo_cmds.OFFLINE_BASE_NAME
    assert flag.argv[3].startswith("pipeline_check=")
    assert "SIMULATED STUDY" in p.steps[-1].argv[p.steps[-1].argv.index("--note") + 1]
    plain = demo_cmds.plan(tmp_path, "/m/base", "/m/post.gguf", simulated=False)
    assert [s.argv[0] for s in plain.steps][-2:] == ["fit", "report"]
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
        grouped = ("models", "fit", "scores", "simulate")
        sub = step.argv[:2] if step.argv[0] in grouped else step.argv[:1]
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


def _check_demo_output(workdir: Path, models: int = 2, simulated: bool = False) -> None:
    from pypdf import PdfReader

    pdf = workdir / "demo.pdf"
    assert pdf.exists()
    text = "\n".join(p.extract_text() or "" for p in PdfReader(str(pdf)).pages)
    assert "1 Data" in text and "8 Methods" in text
    flat = " ".join(text.split())
    if simulated:
        # every section filled; the simulated fits' pages carry the pipeline-check caveat
        # and each estimate beside its truth
        assert "No data for this section" not in flat
        assert "flagged as a pipeline check" in flat
        assert len(re.findall(r"truths lie inside their 90% interval", flat)) == 4
    con = warehouse_db.open(workdir / "demo.duckdb")
    n_resp = scalar(con, "SELECT count(*) FROM responses")
    runs = con.execute("SELECT run_id, status FROM score_runs").fetchall()
    n_scores = scalar(con, "SELECT count(*) FROM scores")
    fits = con.execute("SELECT kind FROM fits").fetchall()
    n_options = scalar(con, "SELECT count(*) FROM option_scores")
    con.close()
    assert (n_options > 0) is simulated
    if simulated:
        from psystats.stats.demo_study import study_files

        models += len(study_files(workdir / "simulated"))
    assert len(runs) == models and all(s == "complete" for _, s in runs)
    assert n_scores == models * n_resp
    kinds = ["effects"] + (["effects", "generations", "persona", "accuracy"] if simulated else [])
    assert [k for (k,) in fits] == kinds


def _demo_on_tiny_models(tiny_models, workdir: Path, *extra: str):
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
            *extra,
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
    _check_demo_output(tmp_path, simulated=True)
    # the simulated study's estimates are printed beside their truth
    assert re.search(r"\d+ of \d+ truths inside their 90% interval", res.output)
    print(f"demo on tiny models: {time.perf_counter() - t0:.0f} s")


@pytest.mark.slow
def test_demo_rerun_resumes(tiny_models, tmp_path: Path):
    """Running the demo again scores nothing twice (finished runs are not redone)."""
    for _ in range(2):
        res = _demo_on_tiny_models(tiny_models, tmp_path, "--no-simulated")
        assert res.exit_code == 0, res.output
    con = warehouse_db.open(tmp_path / "demo.duckdb")
    assert scalar(con, "SELECT count(*) FROM score_runs") == 2
    n_resp = scalar(con, "SELECT count(*) FROM responses")
    assert scalar(con, "SELECT count(*) FROM scores") == 2 * n_resp
    assert scalar(con, "SELECT count(*) FROM fits") == 2
    con.close()


@pytest.mark.slow
def test_demo_offline_default_pair(smollm2_gguf, tmp_path: Path, monkeypatch):
    """`psystats demo` with no hub: the tiny random base + SmolLM2-135M-Instruct GGUF (minutes)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "PIPELINE CHECK ONLY" in res.output
    _check_demo_output(tmp_path, simulated=True)


def test_simulated_study_files_carry_the_known_effects(tmp_path: Path):
    """The files `psystats simulate study` writes: the ones the demo plans to import, and
    per-participant post-minus-base differences centred on the stated effects."""
    import json

    import numpy as np
    import pandas as pd

    from psystats.stats import demo_study as ds
    from psystats.warehouse.ingest import ingest_paths

    con = warehouse_db.open(tmp_path / "w.duckdb", "write", create=True)
    ingest_paths(con, [sample_path()])
    truth = ds.write_study(con, tmp_path / "sim", seed=1)
    resp = pd.DataFrame(
        con.execute(
            "SELECT r.response_id, r.participant_key, r.experiment, e.domain "
            "FROM responses r JOIN experiments e USING (experiment)"
        ).fetchall(),
        columns=["response_id", "participant_key", "experiment", "domain"],
    )
    con.close()
    planned = {(m, c, str(p)) for m, c, p in ds.study_files(tmp_path / "sim")}
    written = {(f["model"], f["condition"], f["path"]) for f in truth["files"]}
    assert planned == written and all(Path(p).exists() for _, _, p in planned)
    assert json.loads((tmp_path / "sim" / "truth.json").read_text())["seed"] == 1

    def nll(name, cond=ds.CONDITION):
        df = pd.read_parquet(tmp_path / "sim" / f"{name}.{cond}.parquet")
        return resp.merge(df, on="response_id")

    # reference: the effects model's mean for each pair, from the constants
    logn = {k: np.log(v) for k, v in ds.N_PARAMS.items()}
    pairs = [(f, g, t) for f in ds.FAMILIES for g in ds.GENERATIONS for t in ds.TYPES]
    centre = np.mean([logn[(f, g)] for f, g, _ in pairs])
    gbar = np.mean(ds.GENERATIONS)
    dom = truth["effects"]["domain"]
    for f, g, t in pairs:
        base, post = nll(ds.model_name(f, g, "base")), nll(ds.model_name(f, g, t))
        d = post["nll"] - base["nll"]
        # one value per participant: every response carries the participant's d_i
        per = d.groupby(post["participant_key"]).agg(["min", "max"])
        assert np.allclose(per["min"], per["max"])
        mu = (
            ds.TRUTH["intercept"]
            + ds.TRUTH["type"][t]
            + ds.TRUTH["family"][f]
            + ds.TRUTH["size_slope"] * (logn[(f, g)] - centre)
            + ds.TRUTH["generation_slope"] * (g - gbar)
        )
        assert np.isclose(
            truth["effects"]["pair_mean"][
                f"{ds.model_name(f, g, t)} vs {ds.model_name(f, g, 'base')}"
            ],
            mu,
        )
        resid = d - mu - post["domain"].map(dom)
        n = post["participant_key"].nunique()
        assert abs(resid.groupby(post["participant_key"]).first().mean()) < 5 * 0.1 / np.sqrt(n)
    # persona: the persona file minus the plain file is the type's effect (+ small wobble)
    for t, eff in ds.TRUTH["persona"].items():
        name = ds.model_name(ds.FAMILIES[0], ds.GENERATIONS[-1], t)
        shift = nll(name, ds.PERSONA_CONDITION)["nll"] - nll(name)["nll"]
        assert abs(shift.mean() - eff) < 0.06  # ~5 SE of wobble and response noise


def test_simulated_option_scores_carry_the_known_accuracy(tmp_path: Path):
    """Option files: renormalised log-probs of each discrete-choice response's options whose
    top-1 accuracy matches the model's known value; the accuracy truth equals an
    independent numerical integral; every SIM model is flagged as a pipeline check."""
    import functools

    import numpy as np
    import pandas as pd
    from scipy.integrate import quad
    from scipy.special import logit
    from scipy.stats import norm

    from psystats.stats import demo_study as ds
    from psystats.warehouse.ingest import ingest_paths

    @functools.cache
    def top1(beta: float, k: int) -> float:
        """P(z_0 + beta > max of k - 1 other standard normals), by quadrature."""
        return quad(lambda x: norm.pdf(x - beta) * norm.cdf(x) ** (k - 1), -10, 12)[0]

    con = warehouse_db.open(tmp_path / "w.duckdb", "write", create=True)
    ingest_paths(con, [sample_path()])
    truth = ds.write_study(con, tmp_path / "sim", seed=2)
    resp = pd.DataFrame(
        con.execute("SELECT response_id, experiment, trim(text) AS text FROM responses").fetchall(),
        columns=["response_id", "experiment", "text"],
    )
    con.close()
    toml = (tmp_path / "sim" / "models.toml").read_text()
    assert toml.count("pipeline_check = ") == toml.count("[[models]]") == 12
    sets = ds.option_sets(resp)
    assert sets and all(2 <= len(o) <= ds.MAX_OPTIONS for o in sets.values())
    ks = {e: len(o) for e, o in sets.items()}
    files = ds.option_files(tmp_path / "sim")
    assert len(files) == 6 and all(p.exists() for p in files.values())
    for model, path in files.items():
        kind = model.rsplit("-", 1)[1]
        df = pd.read_parquet(path).merge(resp, on="response_id")
        assert set(df["experiment"]) == set(sets)
        # renormalised over each response's options
        total = df.groupby("response_id")["logprob"].apply(lambda x: np.exp(x).sum())
        assert np.allclose(total, 1.0, atol=1e-9)
        # top-1 accuracy over responses against the integral: within 5 standard errors
        top = df.loc[df.groupby("response_id")["logprob"].idxmax()]
        hit = (top["option"] == top["text"]).to_numpy()
        beta = ds.TRUTH["option_beta"][kind]
        p = np.array([top1(beta, ks[e]) for e in top["experiment"]])
        se = np.sqrt(np.sum(p * (1 - p))) / len(p)
        assert abs(hit.mean() - p.mean()) < 5 * se, (model, hit.mean(), p.mean())
    # truth: the mean over experiments of the logit top-1 gap (post minus base)
    b = ds.TRUTH["option_beta"]
    for t in ds.TYPES:
        gaps = [logit(top1(b[t], k)) - logit(top1(b["base"], k)) for k in ks.values()]
        assert truth["accuracy"]["accuracy_gap"][t] == pytest.approx(np.mean(gaps), abs=0.02)
