"""`psystats demo` and the embedded sample: plumbing fast, the whole pipeline offline (slow)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import COMMANDS, main
from psystats.commands import demo_cmds
from psystats.reports.blocks import title
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
    from psystats.stats.demo_study import HISTORY_CONDITION, option_files, study_files

    n_files = len(study_files(tmp_path / "simulated"))
    assert [s.argv[0] for s in p.steps] == [
        "init",
        "ingest",
        "models",
        "models",
        *["score"] * 6,  # plain and history:0 for the pair, then the two floors
        *["fit"] * 3,  # effects, task information, participants
        "simulate",
        "models",
        *["scores"] * n_files,
        *["fit"] * 6,
        "simulate",
        "report",
        "report",
        *["card"] * 4,
    ]
    # history:0 scores a seeded sample of the pair; its contrast with plain is the persona
    # model's, fitted for the real pair and for the simulated study
    history = [s.argv for s in p.steps if "history:0" in s.argv and s.argv[0] == "score"]
    assert [a[a.index("--model") + 1] for a in history] == ["base-folder", "post"]
    assert all(
        a[a.index("--participants") + 1] == str(demo_cmds.HISTORY_PARTICIPANTS) for a in history
    )
    contrasts = [
        (
            s.argv[s.argv.index("--persona-condition") + 1],
            s.argv[s.argv.index("--plain-condition") + 1],
        )
        for s in p.steps
        if s.argv[:2] == ["fit", "persona"]
    ]
    assert contrasts == [
        ("history:0", "plain"),
        ("sim-persona", "sim"),
        (HISTORY_CONDITION, "sim"),
    ]
    floors = [(s.argv[2], s.argv[4]) for s in p.steps if s.argv[2].startswith("baseline:")]
    # once: a floor's numbers are the same under every condition (the report compares
    # the simulated study's models with the plain runs)
    assert floors == [("baseline:frequency", "plain"), ("baseline:uniform", "plain")]
    # option scores travel with the generation-2 'sim' runs; the report shows the truth
    with_options = [s for s in p.steps if "--options" in s.argv]
    assert len(with_options) == len(option_files(tmp_path / "simulated"))
    assert [s.argv[:2] for s in p.steps if s.argv[:2] == ["fit", "accuracy"]]
    # whose behaviour post-training loses: the pair's plain runs, then the simulated study's
    regressions = [s.argv for s in p.steps if s.argv[:2] == ["fit", "participants"]]
    assert [a[a.index("--covariates") + 1] for a in regressions] == ["age", "age"]
    assert "--condition" not in regressions[0]  # plain, the default
    assert regressions[1][regressions[1].index("--condition") + 1] == "sim"
    assert all("--allow-diagnostics-failure" in a and "--draws" in a for a in regressions)
    pdf, html = (s.argv for s in p.steps if s.argv[0] == "report")
    assert pdf[pdf.index("--truth") + 1] == str(tmp_path / "simulated" / "truth.json")
    assert pdf[pdf.index("-o") + 1] == str(tmp_path / "demo.pdf")
    assert html[html.index("-o") + 1] == str(tmp_path / "demo.html")
    assert [a for a in pdf if a != str(tmp_path / "demo.pdf")] == [
        a for a in html if a != str(tmp_path / "demo.html")
    ]
    cards = [s.argv[s.argv.index("-o") + 1] for s in p.steps if s.argv[0] == "card"]
    assert cards == [
        str(tmp_path / f"card-{m}.{x}") for m in ("base-folder", "post") for x in ("html", "json")
    ]
    # the offline pair's random base is flagged as a pipeline check, by an ordinary command
    off = demo_cmds.plan(tmp_path, "/m/base", "/m/post.gguf", offline_pair=True)
    flag = next(s for s in off.steps if s.argv[:2] == ["models", "set"])
    assert flag.argv[2] == demo_cmds.OFFLINE_BASE_NAME
    assert flag.argv[3].startswith("pipeline_check=")
    assert "SIMULATED STUDY" in pdf[pdf.index("--note") + 1]
    plain = demo_cmds.plan(tmp_path, "/m/base", "/m/post.gguf", simulated=False)
    assert [s.argv[0] for s in plain.steps][-9:] == [
        *["fit"] * 3,
        "report",
        "report",
        *["card"] * 4,
    ]
    whole = demo_cmds.plan(tmp_path, "/m/base", "/m/post.gguf", history_participants=None)
    assert not any("--participants" in s.argv for s in whole.steps)
    for step in p.steps:
        assert step.argv[0] in COMMANDS
        assert step.argv[step.argv.index("--db") + 1] == str(tmp_path / "demo.duckdb")
        assert step.command.startswith("psystats ")
        assert step.cost > 0
    add_post = p.steps[3].argv
    assert add_post[add_post.index("--base") + 1] == "base-folder"
    assert add_post[add_post.index("--type") + 1] == "instruct"
    assert p.steps[4].argv[2] == "base-folder" and p.steps[5].argv[2] == "post"
    assert p.steps[10].argv[:2] == ["fit", "effects"] and p.steps[10].may_fail
    # every planned command parses with the real CLI (only --help, nothing runs)
    for step in p.steps:
        grouped = ("models", "fit", "scores", "simulate")
        sub = step.argv[:2] if step.argv[0] in grouped else step.argv[:1]
        res = CliRunner().invoke(main, [*sub, "--help"])
        assert res.exit_code == 0, (step.command, res.output)
        for opt in (a for a in step.argv if a.startswith("--")):
            assert opt in res.output, (opt, step.command)


def test_card_paths_are_safe_file_names(tmp_path: Path):
    assert demo_cmds.card_path(tmp_path, "HuggingFaceTB/SmolLM2-135M", "json") == (
        tmp_path / "card-HuggingFaceTB--SmolLM2-135M.json"
    )
    assert demo_cmds.card_path(tmp_path, "SmolLM2-135M-Instruct.Q4_1", "html").name == (
        "card-SmolLM2-135M-Instruct.Q4_1.html"
    )


def test_step_clock_estimates_from_typical_costs_refined_by_measured_ones():
    """Before any step: the typical costs; after: scaled by measured / typical, shrunk
    toward 1 by the prior's seconds; the header counts steps and formats like progress."""
    now = [100.0]
    steps = [demo_cmds.Step(str(i), ["init"], cost=c) for i, c in enumerate((10.0, 30.0, 60.0))]
    clock = demo_cmds.StepClock(steps, clock=lambda: now[0])
    assert clock.left(0) == pytest.approx(100.0)
    assert clock.header(1) == "[1/3] (0:00 elapsed, about 1:40 left)"
    now[0] += 40.0
    clock.finished(steps[0], 40.0)  # four times slower than typical
    w = demo_cmds.StepClock.PRIOR_SECONDS
    speed = (40.0 + w) / (10.0 + w)
    assert clock.speed() == pytest.approx(speed)
    assert clock.left(1) == pytest.approx(speed * 90.0)
    assert clock.header(2).startswith("[2/3] (0:40 elapsed, about ")
    now[0] += 15.0
    clock.finished(steps[1], 15.0)  # then twice as fast
    assert clock.left(2) == pytest.approx((55.0 + w) / (40.0 + w) * 60.0)


def test_demo_does_not_import_the_cli():
    """The demo runs each step through the root command of its click context: importing
    psystats.cli from psystats.commands would be an upward import (scripts/check_imports.py)."""
    import ast

    tree = ast.parse((ROOT / "psystats" / "commands" / "demo_cmds.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert "psystats.cli" not in imported


def test_offline_pair_note_reaches_the_report(tmp_path: Path):
    p = demo_cmds.plan(tmp_path, "/x/tiny", "/x/SmolLM2-135M-Instruct.Q4_1.gguf", offline_pair=True)
    report = next(s.argv for s in p.steps if s.argv[0] == "report")
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


def _check_demo_output(workdir: Path, pair: tuple[str, str], simulated: bool = False) -> None:
    import json

    import jsonschema
    from pypdf import PdfReader

    from psystats.reports.card import schema

    pdf, html = workdir / "demo.pdf", workdir / "demo.html"
    assert pdf.exists() and html.exists()
    text = "\n".join(p.extract_text() or "" for p in PdfReader(str(pdf)).pages)
    assert "1 Data" in text and title("Methods") in text
    flat = " ".join(text.split())
    page = html.read_text(encoding="utf-8")
    for name in ("Task-information gain", "Floors"):
        assert title(name) in flat and title(name) in page
    assert "from the task, or from the person's own history?" in flat
    assert "Is a model better than a trivial predictor?" in flat
    if simulated:
        # every section filled; the simulated fits' pages carry the pipeline-check caveat
        # and each estimate beside its truth (effects, generations, persona, task
        # information, accuracy, participants, and the floors page's known distances)
        assert "No data for this section" not in flat, flat
        assert "flagged as a pipeline check" in flat
        # one line per simulated fit (effects, generations, persona, task information,
        # accuracy, participants) and one on the floors page, for the truth file's own
        # condition only (sim: the persona and history conditions shift its expected NLLs)
        assert len(re.findall(r"truths lie inside their 90% interval", flat)) == 6 + 1
    for model in pair:
        card = json.loads(demo_cmds.card_path(workdir, model, "json").read_text())
        jsonschema.validate(card, schema())
        assert card["model"]["name"] == model
        assert demo_cmds.card_path(workdir, model, "html").exists()
    con = warehouse_db.open(workdir / "demo.duckdb")
    n_resp = scalar(con, "SELECT count(*) FROM responses")
    runs = con.execute(
        "SELECT sr.model, sr.condition, sr.status, sr.sample_spec, count(s.response_id) "
        "FROM score_runs sr LEFT JOIN scores s USING (run_id) GROUP BY ALL ORDER BY min(sr.run_id)"
    ).fetchall()
    fits = con.execute("SELECT kind, condition FROM fits ORDER BY fit_id").fetchall()
    con.close()
    assert all(status == "complete" for _, _, status, _, _ in runs)
    by = {(m, c): (spec, n) for m, c, _, spec, n in runs}
    for model in pair:
        assert by[(model, "plain")] == (None, n_resp)
        spec, n = by[(model, "history:0")]
        assert spec.startswith(f"participants={demo_cmds.HISTORY_PARTICIPANTS} per experiment")
        assert 0 < n < n_resp
    assert by[("baseline:frequency", "plain")][1] == n_resp
    assert 0 < by[("baseline:uniform", "plain")][1] < n_resp  # experiments with option sets
    n_sim = 0
    if simulated:
        from psystats.stats.demo_study import study_files

        n_sim = len(study_files(workdir / "simulated"))
        assert all(n == n_resp for (m, _), (_, n) in by.items() if m.startswith("SIM-"))
    assert len(runs) == 2 * len(pair) + 2 + n_sim
    # the participants page is filled by the real pair's regression on age, too
    assert "No data for this section: no participants fit" not in flat
    kinds = [("effects", "plain"), ("persona", "history:0 vs plain"), ("participants", "plain")]
    if simulated:
        kinds += [
            ("effects", "sim"),
            ("generations", "sim"),
            ("persona", "sim-persona vs sim"),
            ("persona", "sim-history:0 vs sim"),
            ("accuracy", "sim"),
            ("participants", "sim"),
        ]
    assert fits == kinds


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
    _check_demo_output(tmp_path, (tiny_models["llama"].name, tiny_models["qwen3"].name), True)
    # the simulated study's estimates are printed beside their truth
    assert re.search(r"\d+ of \d+ truths inside their 90% interval", res.output)
    print(f"demo on tiny models: {time.perf_counter() - t0:.0f} s")


@pytest.mark.slow
def test_demo_rerun_resumes(tiny_models, tmp_path: Path):
    """Running the demo again scores nothing twice (finished runs are not redone)."""
    counts = []
    for _ in range(2):
        res = _demo_on_tiny_models(tiny_models, tmp_path, "--no-simulated")
        assert res.exit_code == 0, res.output
        con = warehouse_db.open(tmp_path / "demo.duckdb")
        counts.append(
            con.execute(
                "SELECT (SELECT count(*) FROM score_runs), (SELECT count(*) FROM scores), "
                "(SELECT count(*) FROM fits)"
            ).fetchall()[0]
        )
        con.close()
    # plain and history:0 for the pair, two floors; each demo fits effects, the contrast
    # and the participants regression
    assert counts[0][0] == counts[1][0] == 6
    assert counts[0][1] == counts[1][1]
    assert (counts[0][2], counts[1][2]) == (3, 6)


@pytest.mark.slow
def test_demo_offline_default_pair(smollm2_gguf, tmp_path: Path, monkeypatch):
    """`psystats demo` with no hub: the tiny random base + SmolLM2-135M-Instruct GGUF (minutes)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "PIPELINE CHECK ONLY" in res.output
    assert re.search(r"\[7/\d+\] \(\d+:\d\d elapsed, about \d+:\d\d left\)", res.output)
    _check_demo_output(tmp_path, (demo_cmds.OFFLINE_BASE_NAME, "SmolLM2-135M-Instruct.Q4_1"), True)


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
    _check_age_effect(tmp_path / "sim", truth, resp, nll)


def _check_age_effect(out: Path, truth: dict, resp, nll) -> None:
    """The age effect: its truth from the ages, as `fit participants` standardises them
    (participants with an age in experiments where at least 3 have one; SD with ddof 1),
    a zero-mean shift within each experiment, and each pair's per-participant gap
    regressed on the standardised age (after the pair's and experiment's means) near it."""
    import numpy as np
    import pandas as pd

    from psystats.stats import demo_study as ds

    con = warehouse_db.open(out.parent / "w.duckdb", "read")
    ages = pd.DataFrame(
        con.execute(
            "SELECT participant_key, experiment, age FROM participants WHERE age IS NOT NULL"
        ).fetchall(),
        columns=["participant_key", "experiment", "age"],
    )
    con.close()
    ages = ages[ages.groupby("experiment")["age"].transform("size") >= 3]
    assert len(ages) == 6  # the embedded sample's guenther2024 participants
    sd = float(np.std(ages["age"].to_numpy(float), ddof=1))
    beta = ds.TRUTH["age_effect"]
    assert truth["participants"] == {"effect": {"age": beta}, "slope": {"age": beta / sd}}
    z = (ages["age"] - ages["age"].mean()) / sd
    gaps = []
    for f, g, t in [(f, g, t) for f in ds.FAMILIES for g in ds.GENERATIONS for t in ds.TYPES]:
        post, base = nll(ds.model_name(f, g, t)), nll(ds.model_name(f, g, "base"))
        d = (post["nll"] - base["nll"]).groupby(post["participant_key"]).first()
        d = d.reindex(ages["participant_key"]).to_numpy()
        gaps.append(d - d.mean())  # the pair's (and the one experiment's) mean removed
    # d_i ~ N(mu, 0.1) per pair: averaged over 8 pairs, SD 0.035; the slope SE ~0.016
    slope = np.polyfit(z.to_numpy(), np.mean(gaps, axis=0), 1)[0]
    assert abs(slope - beta) < 0.05, slope  # 3 SE: fails without the shift


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
