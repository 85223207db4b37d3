"""`psystats report`: content from real warehouses, a PDF that opens, renders and says what it should."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from psystats.cli import main
from psystats.reports import queries as q
from psystats.reports.blocks import SECTION_TITLES, Figure, Note, Table, esc
from psystats.reports.content import build_report
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar
from report_fixture import add_floor, add_participants, add_task_information, fabricate


def pdf_text(path: Path) -> tuple[int, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return len(reader.pages), "\n".join(p.extract_text() or "" for p in reader.pages)


def page_pixel_std(path: Path, page: int) -> float:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    img = np.asarray(pdf[page].render(scale=0.7).to_pil().convert("L"), dtype=float)
    pdf.close()
    return float(img.std())


def run_report(db: Path, out: Path, *extra: str) -> None:
    res = CliRunner().invoke(main, ["report", "--db", str(db), "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    assert out.exists()


@pytest.fixture(scope="module")
def full_warehouse(small_warehouse: Path, tmp_path_factory) -> tuple[Path, object]:
    """small_warehouse + fabricated models, runs, scores and fits of every kind."""
    root = tmp_path_factory.mktemp("full")
    db = root / "full.duckdb"
    shutil.copy(small_warehouse, db)
    con = warehouse_db.open(db, "write", create=True)
    truth = fabricate(con, netcdf_dir=root / "fits")
    add_floor(con, "baseline:frequency", nll=6.0)
    add_task_information(con, truth, root / "fits")
    add_participants(con, truth, root / "fits")
    con.close()
    return db, truth


def test_empty_warehouse_says_no_data(db_path: Path, tmp_path: Path):
    warehouse_db.open(db_path, "write", create=True).close()
    out = tmp_path / "empty.pdf"
    run_report(db_path, out)
    pages, text = pdf_text(out)
    assert pages >= 1
    assert "No data for this section" in text
    for title in SECTION_TITLES:
        assert title in text


def test_no_fits_report(warehouse_copy: Path, tmp_path: Path):
    """Ingested data and scores but no fits: sections 1-2 have content, the rest say why not."""
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=())
    report = build_report(con)
    assert any(isinstance(b, Figure) for b in report.section(2).blocks)
    for n in (3, 4, 5, 6, 7, 8, 9):
        notes = [b for b in report.section(n).blocks if isinstance(b, Note)]
        assert notes and "No data" in notes[0].text, SECTION_TITLES[n - 1]
    report.close()
    con.close()
    out = tmp_path / "nofits.pdf"
    run_report(warehouse_copy, out)
    pages, text = pdf_text(out)
    assert 3 <= pages <= 12
    assert "no effects fit" in text and "NLL against model size" in text


def test_fits_without_persona(warehouse_copy: Path, tmp_path: Path):
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=("effects", "generations"), netcdf_dir=tmp_path / "fits")
    report = build_report(con)
    s6 = report.section(6)
    assert not any(isinstance(b, Figure) for b in s6.blocks)
    assert "no persona or accuracy fit" in s6.blocks[0].text
    assert any(isinstance(b, Figure) for b in report.section(3).blocks)
    report.close()
    con.close()
    out = tmp_path / "nopersona.pdf"
    run_report(warehouse_copy, out)
    _, text = pdf_text(out)
    assert "no persona or accuracy fit" in text
    assert "Effects model" in text


def test_full_report_pdf(full_warehouse, tmp_path: Path):
    db, truth = full_warehouse
    out = tmp_path / "full.pdf"
    run_report(db, out, "--note", "Fabricated example data")
    pages, text = pdf_text(out)
    assert 6 <= pages <= 25
    for title in SECTION_TITLES:
        assert title in text
    assert "No data for this section" not in text
    assert "Fabricated example data" in text
    # every fit passed its gates and no model is a pipeline check: no caveat anywhere
    assert "Caveat" not in text
    # figure text is real (vector, searchable) text, stamped into the pages
    assert "post − base gap" in text or "post - base gap" in text
    assert "cumulative distribution" in text
    # pages with figures render to something that is not blank
    for page in range(pages):
        assert page_pixel_std(out, page) > 5.0, f"page {page} looks blank"
    # figures stay vector: no raster images on any page
    from pypdf import PdfReader

    assert all(not p.images for p in PdfReader(str(out)).pages)


def test_nll_by_size_matches_independent_computation(full_warehouse):
    """Section 2's per-model values equal a direct pandas computation from `scores`."""
    db, truth = full_warehouse
    con = warehouse_db.open(db)
    table, info = q.model_nll(con, "plain")
    scores = q.frame(
        con,
        """
        SELECT sr.model, r.participant_key, s.nll FROM scores s
        JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id)
        WHERE sr.status = 'complete' AND sr.condition = 'plain'
          AND (s.n_tokens IS NULL OR s.n_tokens > 0) AND isfinite(s.nll)""",
    )
    con.close()
    per_person = scores.groupby(["model", "participant_key"])["nll"].mean()
    # the floor (n_tokens NULL, as a baseline writes it) is a row of its own
    assert table.loc[table["model"] == "baseline:frequency", "post_training"].tolist() == [
        "baseline"
    ]
    for row in table.itertuples():
        x = per_person.loc[row.model].to_numpy()
        n = len(x)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert row.n_participants == n
        assert row.mean == pytest.approx(x.mean(), rel=1e-12)
        assert (row.lo, row.hi) == pytest.approx((lo, hi), rel=1e-9)
    # the failed run (NLL 99) never enters
    assert table["mean"].max() < 10
    # known values: differences between models follow the fabrication formula
    # (participant effects are shared, so they cancel in differences)
    m = table[table["post_training"] != "baseline"].set_index("model")["mean"]
    names = list(m.index)
    for a, b in zip(names, names[1:]):
        assert m[a] - m[b] == pytest.approx(truth.model_mean[a] - truth.model_mean[b], abs=0.06)
    assert info["common"] and info["n_participants"] == scores["participant_key"].nunique()


def test_heatmap_data_and_markers(full_warehouse):
    """Heatmap cells equal the posterior draws' means; markers follow the 90% interval."""
    import arviz as az

    db, truth = full_warehouse
    con = warehouse_db.open(db)
    fit = q.latest_fit(con, "effects")
    report = build_report(con)
    con.close()
    fig = next(b for b in report.section(3).blocks if isinstance(b, Figure))
    cells = fig.data.set_index(["pair", "domain"])
    report.close()
    post = az.from_netcdf(fit["netcdf_path"]).posterior["pair_domain_effect"]
    draws = post.values.reshape(-1, *post.shape[2:])
    pairs = [str(p) for p in post.coords["pair_level"].values]
    domains = [str(d) for d in post.coords["domain_level"].values]
    assert len(cells) == len(pairs) * len(domains)
    for i, p in enumerate(pairs):
        for j, d in enumerate(domains):
            x = draws[:, i, j]
            lo, hi = np.quantile(x, [0.05, 0.95])
            assert cells.loc[(p, d), "mean"] == pytest.approx(x.mean(), abs=1e-9)
            assert bool(cells.loc[(p, d), "credible"]) == bool(lo > 0 or hi < 0)
            # the fabricated truth: clear effects are marked, null ones are not
            true = truth.effects["pair_domain_effect"][i][j]
            assert bool(cells.loc[(p, d), "credible"]) == (true != 0)


def test_forest_and_generations_data(full_warehouse):
    db, truth = full_warehouse
    con = warehouse_db.open(db)
    report = build_report(con)
    con.close()
    forest = next(b for b in report.section(5).blocks if isinstance(b, Figure)).data
    groups = list(dict.fromkeys(forest["group"]))
    assert groups[:3] == ["Intercept", "Post-training type", "Family"]
    assert "Task domain" in groups and groups[-1] == "Scale parameters"
    t = forest[forest["parameter"] == "type"].set_index("label")["mean"]
    assert t["instruct"] == pytest.approx(0.4, abs=0.02) and t["reasoning"] == pytest.approx(
        0.6, abs=0.02
    )
    curves = next(b for b in report.section(4).blocks if isinstance(b, Figure)).data
    # only the generations each family has, in the registry's order
    qwen = curves[(curves["family"] == "qwen") & (curves["parameter"] == "base_nll")]
    assert list(qwen["generation"]) == ["2.5", "3"]
    assert list(curves[curves["family"] == "llama"]["generation"].unique()) == ["3", "3.1"]
    report.close()


def test_html_report(full_warehouse, tmp_path: Path):
    db, _ = full_warehouse
    out = tmp_path / "r.html"
    run_report(db, out)  # format from the suffix
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "data-spec='spec-" in html
    assert html.count("<svg") >= 6
    for title in SECTION_TITLES:
        assert title in html


def test_missing_warehouse_is_a_clean_error(tmp_path: Path):
    res = CliRunner().invoke(
        main, ["report", "--db", str(tmp_path / "nope.duckdb"), "-o", str(tmp_path / "r.pdf")]
    )
    assert res.exit_code == 1
    assert "no warehouse" in res.output
    assert not (tmp_path / "r.pdf").exists()


def test_markup_in_names_is_escaped(warehouse_copy: Path, tmp_path: Path):
    """Model names, titles and notes with <, & or > do not break the layout."""
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=())
    con.execute("UPDATE models SET name = 'A<b>&co' WHERE name = 'Qwen3-0.6B-Base'")
    con.execute("UPDATE score_runs SET model = 'A<b>&co' WHERE model = 'Qwen3-0.6B-Base'")
    con.close()
    out = tmp_path / "esc.pdf"
    run_report(warehouse_copy, out, "--title", "R&D <draft>", "--note", "x < y & z")
    _, text = pdf_text(out)
    assert "A<b>&co" in text and "R&D <draft>" in text and "x < y & z" in text


@pytest.mark.slow
def test_report_on_a_real_effects_fit(small_warehouse: Path, tmp_path: Path):
    """Simulated scores -> the real `psystats fit effects` -> report: the heatmap and forest
    show exactly that fit's fit_params rows."""
    from psystats.stats.simulate import add_synthetic_experiments, simulate_warehouse

    db = tmp_path / "sim.duckdb"
    shutil.copy(small_warehouse, db)
    con = warehouse_db.open(db, "write", create=True)
    add_synthetic_experiments(con, n_experiments=6, participants=10, responses=4)
    simulate_warehouse(con, seed=3)
    con.close()
    res = CliRunner().invoke(
        main,
        [
            "--db",
            str(db),
            "fit",
            "effects",
            "--draws",
            "200",
            "--tune",
            "200",
            "--no-compare",
            "--allow-diagnostics-failure",
        ],
    )
    assert res.exit_code == 0, res.output
    con = warehouse_db.open(db)
    fit_id = scalar(con, "SELECT max(fit_id) FROM fits")
    expected = q.frame(
        con,
        "SELECT coords, mean, q05, q95 FROM fit_params "
        "WHERE fit_id = ? AND parameter = 'pair_domain_effect'",
        [fit_id],
    )
    report = build_report(con)
    con.close()
    cells = next(b for b in report.section(3).blocks if isinstance(b, Figure)).data
    assert len(cells) == len(expected) > 0
    got = {(r.pair, r.domain): (r.mean, r.credible) for r in cells.itertuples()}
    import json

    for coords, mean, q05, q95 in expected.itertuples(index=False):
        c = json.loads(coords)
        assert got[(c["pair"], c["domain"])] == (pytest.approx(mean), bool(q05 > 0 or q95 < 0))
    forest = next(b for b in report.section(5).blocks if isinstance(b, Figure)).data
    assert {"Post-training type", "Family", "Task domain"} <= set(forest["group"])
    # Methods say exactly what was fitted, checked against the fit's own record.
    con = warehouse_db.open(db)
    row = q.latest_fit(con, "effects")
    con.close()
    summ = row["summary"]
    methods = report.section("Methods").blocks
    tables = [b for b in methods if isinstance(b, Table)]
    terms = next(t for t in tables if t.caption and t.caption.startswith("Terms of fit"))
    status = {r[0]: r[1] for r in terms.rows}
    assert {t for t, v in status.items() if v == "fitted"} == set(summ["active_terms"])
    assert {t for t, v in status.items() if v == "dropped"} == set(summ["dropped_terms"])
    for t, why in summ["dropped_terms"].items():
        assert any(r[0] == t and r[2] == why for r in terms.rows)
    spec_table = next(t for t in tables if t.caption.startswith("Specification"))
    assert not any(r[0].startswith(("terms.", "priors.")) for r in spec_table.rows)
    priors = next(t for t in tables if t.caption.startswith("Priors used"))
    assert dict((r[0], r[1]) for r in priors.rows) == dict(q.flatten(row["priors"]))
    notes = " ".join(b.text for b in methods if isinstance(b, Note))
    for m in summ["messages"]:
        assert esc(m) in notes
    # The published study's summary sits beside the posterior, from the fit's own record.
    cd = next(
        b
        for b in report.section(5).blocks
        if isinstance(b, Table) and b.caption.startswith("The published study's summary")
    )
    stored = {r["pair"]: r for r in summ["cohens_d"]["pairs"]}
    assert {r[0] for r in cd.rows} == set(stored)
    for r in cd.rows:
        assert float(r[2]) == pytest.approx(stored[r[0]]["cohens_d"], abs=1e-3, rel=1e-3)
    eq = next(b for b in methods if isinstance(b, Figure) and "equation" in b.caption)
    assert ("σ_cell fixed at 0" in eq.caption) is bool(summ.get("sigma_cell_fixed"))
    report.close()
    out = tmp_path / "r.pdf"
    run_report(db, out)
    pages, text = pdf_text(out)
    assert "pair_domain_effect" in text and pages >= 5


def test_plurals():
    from psystats.reports.blocks import plural

    assert plural(1, "experiment") == "1 experiment" and plural(2, "experiment") == "2 experiments"
    assert (
        plural(1, "study", "studies") == "1 study" and plural(0, "study", "studies") == "0 studies"
    )
    assert plural(1234, "response") == "1,234 responses"
