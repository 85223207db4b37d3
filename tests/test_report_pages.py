"""The task-information gain and floors pages: every number against an oracle computed
here from the scores table (pandas, float64, from the definitions) or from the stored
draws, and the persona page and card kept to persona-prompt fits."""

from __future__ import annotations

import shutil
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from psystats.cli import main
from psystats.reports import queries as q
from psystats.reports import section_floors, section_task_information
from psystats.reports.blocks import Figure, Note, Table
from psystats.reports.card import build_card
from psystats.reports.content import build_report
from psystats.warehouse import db as warehouse_db
from report_fixture import GAIN, add_floor, add_task_information, fabricate

VALID = "(s.n_tokens IS NULL OR s.n_tokens > 0) AND s.nll IS NOT NULL AND isfinite(s.nll)"


@pytest.fixture(scope="module")
def wh(small_warehouse: Path, tmp_path_factory) -> tuple[Path, object, int]:
    """Fabricated models and scores, a persona-prompt fit, then history:0 runs and their
    contrast fit (newer than the persona fit), and two floors: baseline:frequency over
    every response, baseline:uniform over one experiment only (as the real one skips
    experiments without an option set), both with n_tokens NULL."""
    root = tmp_path_factory.mktemp("pages")
    db = root / "w.duckdb"
    shutil.copy(small_warehouse, db)
    con = warehouse_db.open(db, "write", create=True)
    truth = fabricate(con, kinds=("persona",), netcdf_dir=root / "fits")
    history_fit = add_task_information(con, truth, root / "fits")
    first = sorted(
        r[0] for r in con.execute("SELECT DISTINCT experiment FROM responses").fetchall()
    )
    add_floor(con, "baseline:frequency", nll=2.5)
    add_floor(con, "baseline:uniform", nll=4.0, seed=3, experiments=first[:1])
    con.close()
    return db, truth, history_fit


def scores_frame(con, condition: str) -> pd.DataFrame:
    """Valid scores of the complete runs under ``condition``, straight from the tables."""
    return q.frame(
        con,
        f"""SELECT sr.model, r.experiment, r.participant_key, s.response_id, s.nll
            FROM scores s JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id)
            WHERE sr.status = 'complete' AND sr.condition = ? AND {VALID}""",
        [condition],
    )


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, participant): mean over the shared responses of a − b."""
    m = a.merge(b[["response_id", "nll"]], on="response_id", suffixes=("_a", "_b"))
    m["d"] = m["nll_a"] - m["nll_b"]
    return (
        m.groupby(["experiment", "participant_key"])
        .agg(d=("d", "mean"), a=("nll_a", "mean"), b=("nll_b", "mean"), k=("d", "size"))
        .reset_index()
    )


# ------------------------------------------------------------------- floors


@pytest.mark.parametrize("condition", ["plain", "history:0"])
def test_floor_comparisons_equal_a_direct_computation(wh, condition):
    """Under plain, and under history:0 (the floors were scored once, under plain: their
    numbers are the same under every condition, so that run serves)."""
    db, _, _ = wh
    con = warehouse_db.open(db)
    got = q.floor_comparisons(con, condition)
    sc = scores_frame(con, condition)
    floor_scores = scores_frame(con, "plain")
    types = dict(con.execute("SELECT name, post_training FROM models").fetchall())
    con.close()
    floors = ["baseline:frequency", "baseline:uniform"]
    rows = []
    for model, mine in sc[~sc["model"].isin(floors)].groupby("model"):
        for floor in floors:
            per = paired(mine, floor_scores[floor_scores["model"] == floor])
            for exp, g in per.groupby("experiment"):
                x = g["d"].to_numpy(np.float64)
                n = len(x)
                lo, hi = stats.t.interval(0.90, n - 1, loc=x.mean(), scale=x.std(ddof=1) / n**0.5)
                rows.append(
                    (
                        exp,
                        floor,
                        model,
                        n,
                        g["k"].sum(),
                        g["a"].mean(),
                        g["b"].mean(),
                        x.mean(),
                        lo,
                        hi,
                    )
                )
    ref = (
        pd.DataFrame(
            rows,
            columns=[
                "experiment",
                "floor",
                "model",
                "participants",
                "responses",
                "model_nll",
                "floor_nll",
                "mean",
                "lo",
                "hi",
            ],
        )
        .sort_values(["experiment", "floor", "model"])
        .reset_index(drop=True)
    )
    got = got.sort_values(["experiment", "floor", "model"]).reset_index(drop=True)
    assert len(got) == len(ref) > 0
    assert (
        got[["experiment", "floor", "model"]].values == ref[["experiment", "floor", "model"]].values
    ).all()
    assert (got["participants"] == ref["participants"]).all()
    assert (got["responses"] == ref["responses"]).all()
    for c in ("model_nll", "floor_nll", "mean", "lo", "hi"):
        np.testing.assert_allclose(got[c].to_numpy(float), ref[c].to_numpy(float), rtol=1e-9)
    verdict = np.where(ref["hi"] < 0, "beats", np.where(ref["lo"] > 0, "worse", "unclear"))
    assert got["verdict"].tolist() == verdict.tolist()
    assert got["post_training"].tolist() == [types[m] for m in got["model"]]
    # the uniform floor was scored on one experiment only: compared there only
    assert got.loc[got["floor"] == "baseline:uniform", "experiment"].nunique() == 1
    # the floors sit at 2.5 and 4 nats, the fabricated models around them: the page has
    # both verdicts to show
    if condition == "plain":
        assert {"beats", "worse"} <= set(got["verdict"])


def test_floors_page_shows_the_comparisons(wh):
    db, _, _ = wh
    con = warehouse_db.open(db)
    section = section_floors.build(con)
    table = q.floor_comparisons(con, "plain")
    con.close()
    figs = [b for b in section.blocks if isinstance(b, Figure)]
    # one figure per condition with models: plain, persona, history:0 (one floor run each)
    assert [f.caption.split("(condition ")[1].split(")")[0] for f in figs] == [
        "plain",
        "persona",
        "history:0",
    ]
    data = figs[0].data
    np.testing.assert_allclose(data["mean"], table["mean"])
    np.testing.assert_allclose(data["q05"], table["lo"])
    np.testing.assert_allclose(data["q95"], table["hi"])
    assert figs[0].options["series"] == "floor"
    text = " ".join(b.text for b in section.blocks if hasattr(b, "text"))
    assert "Is a model better than a trivial predictor?" in text
    assert "Student t interval" in text and "leave-one-participant-out" in text
    who = next(b for b in section.blocks if isinstance(b, Table) and "Which models" in b.caption)
    beat = who.columns.index("beat it (nats per response below it)")
    for row, (key, g) in zip(who.rows, table.groupby(["experiment", "floor"], sort=True)):
        winners = g[g["verdict"] == "beats"]
        expect = ", ".join(f"{m} ({-d:.2f})" for m, d in zip(winners["model"], winners["mean"]))
        assert [row[0], row[1]] == list(key)
        assert row[beat] == (expect or "none")


def test_floors_are_rows_that_do_not_narrow_the_compared_participants(wh):
    """Section 2's table: the floors are rows, but the uniform floor (one experiment) does
    not shrink every model's participants to that experiment's."""
    db, _, _ = wh
    con = warehouse_db.open(db)
    table, info = q.model_nll(con, "plain")
    sc = scores_frame(con, "plain")
    runs = q.runs_table(con)
    report = build_report(con)
    con.close()
    everyone = sc.loc[~sc["model"].str.startswith("baseline:"), "participant_key"].nunique()
    assert info["common"] and info["n_participants"] == everyone
    rows = table.set_index("model")
    uniform = sc[sc["model"] == "baseline:uniform"]
    assert rows.loc["baseline:uniform", "n_participants"] == uniform["participant_key"].nunique()
    assert rows.loc["baseline:uniform", "mean"] == pytest.approx(
        uniform.groupby("participant_key")["nll"].mean().mean(), rel=1e-12
    )
    assert rows.loc["baseline:frequency", "n_participants"] == everyone
    # a baseline's scores (n_tokens NULL) are valid in the runs table too
    floor_runs = runs[runs["model"].str.startswith("baseline:")]
    assert len(floor_runs) == 2 and (floor_runs["valid"] == floor_runs["scored"]).all()
    s2 = report.section(2)
    fig = next(b for b in s2.blocks if isinstance(b, Figure))
    assert not fig.data["model"].str.startswith("baseline:").any()  # rows, not points
    assert not any(isinstance(b, Note) and "baseline:" in b.text for b in s2.blocks)
    tab = next(b for b in s2.blocks if isinstance(b, Table))
    assert "Floors" in tab.caption and {"baseline:uniform", "baseline:frequency"} <= {
        r[0] for r in tab.rows
    }
    report.close()


def test_floor_truth_rows_follow_their_definition():
    table = pd.DataFrame(
        {
            "experiment": ["e1", "e1", "e2"],
            "floor": ["baseline:frequency"] * 3,
            "model": ["A", "B", "A"],
            "floor_nll": [2.0, 2.0, 3.0],
            "mean": [-0.4, 0.2, 0.1],
            "lo": [-0.6, 0.1, -0.2],
            "hi": [-0.2, 0.3, float("nan")],
        }
    )
    truth = {"floors": {"expected_nll": {"A": {"e1": 1.5, "e2": 3.1}, "B": {"e1": 2.5}}}}
    rows = section_floors.truth_rows(table, truth)
    # no interval (one participant): no truth row; truth = expected NLL − floor mean
    assert rows["model"].tolist() == ["A", "B"]
    np.testing.assert_allclose(rows["truth"], [-0.5, 0.5])
    assert rows["inside"].tolist() == [True, False]
    assert section_floors.truth_rows(table, {}).empty


def test_no_floor_says_how_to_score_one(warehouse_copy: Path):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=())
    section = section_floors.build(con)
    con.close()
    notes = [b for b in section.blocks if isinstance(b, Note)]
    assert notes and "No data" in notes[0].text
    assert "psystats score --model baseline:frequency" in notes[0].text


# ------------------------------------------------------- task-information gain


def test_task_information_page_numbers_equal_the_draws_and_the_scores(wh):
    db, truth, fit_id = wh
    con = warehouse_db.open(db)
    section = section_task_information.build(con)
    fit = q.latest_fit(con, "persona")
    h0, plain = scores_frame(con, "history:0"), scores_frame(con, "plain")
    con.close()
    assert int(fit["fit_id"]) == fit_id and q.history_window(fit) == 0
    fig = next(b for b in section.blocks if isinstance(b, Figure))
    data = fig.data.set_index(["group", "label"])
    post = az.from_netcdf(fit["netcdf_path"]).posterior
    for var, group, dim in (
        ("persona_effect", "Post-training type", "post_training"),
        ("persona_model_effect", "Model", "model"),
    ):
        for level in post[var].coords[dim].values:
            x = post[var].sel({dim: level}).values.ravel().astype(np.float64)
            row = data.loc[(group, str(level))]
            assert row["mean"] == pytest.approx(x.mean(), rel=1e-9)
            assert (row["q05"], row["q95"]) == pytest.approx(tuple(np.quantile(x, [0.05, 0.95])))
            assert row["unit"] == "nats"
    types = data.loc["Post-training type"]["mean"]
    for t, gain in GAIN.items():
        assert types[t] == pytest.approx(gain, abs=0.01)  # the draws centre on the gain
    # raw table: per (model, experiment) mean paired difference and its SE over participants
    raw = next(b for b in section.blocks if isinstance(b, Table) and "Raw" in (b.caption or ""))
    cells = q.contrast_cells(warehouse_db.open(db), "history:0", "plain")
    assert len(raw.rows) == len(cells)
    for r in cells.itertuples():
        per = paired(h0[h0["model"] == r.model], plain[plain["model"] == r.model])
        g = per[per["experiment"] == r.experiment]["d"].to_numpy(np.float64)
        assert r.n == len(g)
        assert r.mean == pytest.approx(g.mean(), rel=1e-9)
        assert r.se == pytest.approx(g.std(ddof=1) / np.sqrt(len(g)), rel=1e-9)
    text = " ".join(b.text for b in section.blocks if hasattr(b, "text"))
    assert "from the task, or from the person's own history?" in text
    assert "history:0 − plain" in text


def test_persona_page_and_card_keep_to_persona_prompt_fits(wh):
    """The history-window contrast is newer, but the persona page, the methods and the
    card read the persona-prompt fit."""
    db, truth, fit_id = wh
    con = warehouse_db.open(db)
    report = build_report(con)
    card = build_card(con, "Qwen3-0.6B-Instruct")
    con.close()
    persona_id = truth.fits["persona"]
    s6 = " ".join(
        getattr(b, "text", "") + getattr(b, "caption", "")
        for b in report.section(6).blocks
        if not isinstance(b, Table)
    )
    assert (
        f"fit {persona_id} (persona" in s6
        and f"fit {fit_id} (persona" not in s6.split("also stored")[0]
    )
    methods = " ".join(getattr(b, "text", "") for b in report.section("Methods").blocks)
    assert (
        "Task-information gain (persona) model" in methods
        and "history:0 (earlier answers" in methods
    )
    assert card["persona"] is None or card["persona"]["fit_id"] == persona_id
    report.close()


def test_no_history_runs_say_how_to_make_them(warehouse_copy: Path):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=())
    section = section_task_information.build(con)
    con.close()
    notes = [b for b in section.blocks if isinstance(b, Note)]
    assert notes and "--condition history:0" in notes[0].text
    assert "fit persona --persona-condition history:0 --plain-condition plain" in notes[0].text


def test_history_window_names():
    def fit(a, b, kind="persona"):
        return {"kind": kind, "selection": {"persona_condition": a, "plain_condition": b}}

    assert q.history_window(fit("history:0", "plain")) == 0
    assert q.history_window(fit("sim-history:12", "sim")) == 12
    assert q.history_window({"kind": "persona", "condition": "history:3 vs plain"}) == 3
    for a in ("persona", "sim-persona", "history:all", "myhistory:0", "history:0x"):
        assert q.history_window(fit(a, "plain")) is None, a
    assert q.history_window(fit("history:0", "plain", kind="effects")) is None


@pytest.mark.slow
def test_task_information_page_on_a_real_fit(warehouse_copy: Path, tmp_path: Path):
    """`fit persona --persona-condition history:0 --plain-condition plain` (real PyMC
    sampling, small): the page's gains equal the stored draws, and recover the gains
    written into the scores."""
    from psystats.stats.persona import simulate_persona

    con = warehouse_db.open(warehouse_copy, "write", create=True)
    known = {"base": 0.2, "instruct": 0.05}
    simulate_persona(con, effects=known, persona_condition="history:0", plain_condition="plain")
    con.close()
    res = CliRunner().invoke(
        main,
        [
            "fit",
            "persona",
            "--db",
            str(warehouse_copy),
            "--persona-condition",
            "history:0",
            "--plain-condition",
            "plain",
            "--draws",
            "300",
            "--tune",
            "300",
            "--chains",
            "2",
            "--allow-diagnostics-failure",
        ],
    )
    assert res.exit_code == 0, res.output
    con = warehouse_db.open(warehouse_copy)
    section = section_task_information.build(con)
    fit = q.task_information_fits(con)[0]
    con.close()
    post = az.from_netcdf(fit["netcdf_path"]).posterior["persona_effect"]
    data = next(b for b in section.blocks if isinstance(b, Figure)).data
    types = data[data["group"] == "Post-training type"].set_index("label")
    for t, gain in known.items():
        x = post.sel(post_training=t).values.ravel()
        assert types.loc[t, "mean"] == pytest.approx(x.mean(), rel=1e-9)
        assert types.loc[t, "q05"] <= gain <= types.loc[t, "q95"]
