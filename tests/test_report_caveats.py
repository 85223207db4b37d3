"""Caveats on the report's results pages, checked against each fit's own stored record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from psystats.cli import main
from psystats.reports import queries as q
from psystats.reports.blocks import Figure, Note, esc
from psystats.reports.content import build_report
from psystats.warehouse import db as warehouse_db
from report_fixture import fabricate

FLAG = "random weights standing in for a model (test)"


def page_texts(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [" ".join((p.extract_text() or "").split()) for p in PdfReader(str(path)).pages]


def caveats(blocks, fit_id: int) -> list[str]:
    return [
        b.text
        for b in blocks
        if isinstance(b, Note) and b.text.startswith(f"<b>Caveat: fit {fit_id} (")
    ]


@pytest.fixture(scope="module")
def flagged_warehouse(small_warehouse: Path, tmp_path_factory) -> tuple[Path, dict, str]:
    """Fabricated fits of every kind; effects and persona stored with passed = false; one
    Llama model flagged as a pipeline check through the registry (`models set`)."""
    import shutil

    from psystats.scoring.registry import set_fields

    root = tmp_path_factory.mktemp("caveats")
    db = root / "w.duckdb"
    shutil.copy(small_warehouse, db)
    con = warehouse_db.open(db, "write", create=True)
    truth = fabricate(con, netcdf_dir=root / "fits", failed=("effects", "persona"))
    flagged = sorted(m for m in truth.runs if m.startswith("Llama"))[0]
    set_fields(con, flagged, {"pipeline_check": FLAG})
    fits = {f["kind"]: f for f in q.all_fits(con)}
    con.close()
    return db, fits, flagged


def test_caveat_boxes_follow_each_fits_record(flagged_warehouse):
    """Failed gates (with the stored problems), and pipeline-check models, on exactly the
    sections whose fit has them."""
    db, fits, flagged = flagged_warehouse
    con = warehouse_db.open(db)
    # The fits' own records decide: passed from fits.passed, problems from fits.diagnostics,
    # the models from fits.selection.runs -> score_runs.model.
    stored = {
        k: (p, d)
        for k, p, d in con.execute("SELECT kind, passed, diagnostics FROM fits").fetchall()
    }
    report = build_report(con)
    con.close()
    try:
        import json

        expect = {
            3: ["effects"],
            4: ["generations"],
            5: ["effects"],
            6: ["persona", "accuracy"],
        }
        reads_flagged = {"effects", "generations", "accuracy"}  # persona reads Qwen3 only
        for section, kinds in expect.items():
            blocks = report.section(section).blocks
            for kind in kinds:
                fid = int(fits[kind]["fit_id"])
                texts = caveats(blocks, fid)
                passed, diag = stored[kind]
                problems = json.loads(diag).get("problems") or []
                gates = [t for t in texts if "failed its diagnostic gates" in t]
                assert bool(gates) == (passed is False), (section, kind)
                for p in problems if passed is False else []:
                    assert esc(p) in gates[0]
                checks = [t for t in texts if "flagged as a pipeline check" in t]
                assert bool(checks) == (kind in reads_flagged), (section, kind)
                if checks:
                    assert esc(flagged) in checks[0] and esc(FLAG) in checks[0]
                    assert "say nothing about real models" in checks[0]
        # Section 2 shows the flagged model's scores: its caveat is there too.
        s2 = [b.text for b in report.section(2).blocks if isinstance(b, Note)]
        assert any("pipeline check" in t and esc(flagged) in t for t in s2)
        # The predictive-check plot of the failed effects fit carries its caveat.
        s7 = report.section("Diagnostics").blocks
        fid = int(fits["effects"]["fit_id"])
        ppc = [i for i, b in enumerate(s7) if isinstance(b, Figure) and f"fit {fid}" in b.caption]
        assert ppc and any(
            isinstance(b, Note) and b.text.startswith(f"<b>Caveat: fit {fid} (")
            for b in s7[: ppc[0]]
        )
    finally:
        report.close()


@pytest.mark.slow
def test_caveats_in_the_pdf_sit_with_their_figures(flagged_warehouse, tmp_path: Path):
    """The same caveats in the rendered PDF, on their figure's page (or at the foot of the
    page before it); none for fits that passed or read no flagged model."""
    db, fits, flagged = flagged_warehouse
    out = tmp_path / "r.pdf"
    res = CliRunner().invoke(main, ["report", "--db", str(db), "-o", str(out)])
    assert res.exit_code == 0, res.output
    pages = page_texts(out)
    text = " ".join(pages)

    def pages_with(pattern: str) -> list[int]:
        return [i for i, t in enumerate(pages) if re.search(pattern, t)]

    for kind, caption in (
        ("effects", r"Expected post-minus-base NLL difference"),
        ("generations", r"Left: base-model NLL per response"),
        ("persona", r"Persona effect by post-training type"),
        ("accuracy", r"Accuracy gap by post-training type"),
    ):
        fid = int(fits[kind]["fit_id"])
        fig_page = pages_with(caption)[0]
        failed = rf"Caveat: fit {fid} \({kind}[^)]*\) failed its diagnostic gates"
        flagged_re = rf"Caveat: fit {fid} \({kind}[^)]*\) includes 1 model flagged"
        if fits[kind]["passed"] is False:
            # on the figure's page, or at the foot of the page before it
            assert set(pages_with(failed)) & {fig_page, fig_page - 1}, kind
        else:
            assert not re.search(failed, text), kind
        if kind != "persona":
            assert set(pages_with(flagged_re)) & {fig_page, fig_page - 1}, kind
        else:
            assert not re.search(flagged_re, text)
    assert flagged in text and "random weights standing in" in text


@pytest.mark.slow
def test_report_of_real_failed_effects_and_formula_fits(tmp_path: Path):
    """Real sampling with too few draws (total draws far below the ESS gate of 400, so the
    gates fail on any machine), stored with --allow-diagnostics-failure: every results page
    of both fits carries the caveat with the stored failed gates; the formula fit has its
    own page whose table is its fit_params rows, compared with the effects fit."""
    import json

    from reanalysis_helpers import simulated_warehouse

    db = simulated_warehouse(tmp_path / "w.duckdb")
    few = ["--draws", "25", "--tune", "150", "--chains", "2", "--allow-diagnostics-failure"]
    formula = "mean ~ type + log_params + (1|family)"
    for argv in (
        ["fit", "effects", "--no-compare", *few],
        ["fit", "formula", formula, *few],
    ):
        res = CliRunner().invoke(main, ["--db", str(db), *argv])
        assert res.exit_code == 0, res.output
    con = warehouse_db.open(db)
    fits = {f["kind"]: f for f in q.all_fits(con)}
    params = q.fit_params(con, fits["formula"]["fit_id"])
    size = q.fit_params(con, fits["effects"]["fit_id"], ["size_slope"])
    report = build_report(con)
    con.close()
    try:
        assert fits["effects"]["passed"] is False and fits["formula"]["passed"] is False
        for kind, sections in (("effects", (3, 5)), ("formula", (5,))):
            fid = int(fits[kind]["fit_id"])
            problems = fits[kind]["diagnostics"]["problems"]
            assert problems
            for n in sections:
                texts = caveats(report.section(n).blocks, fid)
                gates = [t for t in texts if "failed its diagnostic gates" in t]
                assert gates and all(esc(p) in gates[0] for p in problems), (kind, n)
        s5 = report.section(5).blocks
        intro = next(b for b in s5 if hasattr(b, "text") and "<b>Formula model</b>" in b.text)
        assert esc(fits["formula"]["spec"]["formula"]) in intro.text
        table = next(
            b
            for b in s5
            if getattr(b, "caption", None)
            and b.caption.startswith(f"Posterior table of fit {fits['formula']['fit_id']}")
        )
        assert len(table.rows) == len(params)
        got = {(r[0], r[1]): r[2] for r in table.rows}
        for p in params.itertuples():
            label = p.label if isinstance(p.label, str) and p.label else p.parameter
            assert float(got[(p.parameter, label)]) == pytest.approx(p.mean, abs=1e-3, rel=1e-3)
        comp = next(b for b in s5 if getattr(b, "caption", None) and "same quantities" in b.caption)
        row = next(r for r in comp.rows if r[0] == "size_slope")
        assert row[4] == "log_params"
        assert float(row[1]) == pytest.approx(float(size["mean"].iloc[0]), abs=1e-3, rel=1e-3)
        lp = params[params["parameter"] == "log_params"]["mean"].iloc[0]
        assert float(row[5]) == pytest.approx(float(lp), abs=1e-3, rel=1e-3)
        # Methods: the formula fit's specification exactly as recorded.
        spec = next(
            b
            for b in report.section("Methods").blocks
            if getattr(b, "caption", None)
            and b.caption.startswith(f"Specification of fit {fits['formula']['fit_id']}")
        )
        assert dict((r[0], r[1]) for r in spec.rows) == {
            esc(k): esc(v) for k, v in q.flatten(fits["formula"]["spec"])
        }
        assert json.loads(json.dumps(fits["formula"]["spec"]))["formula"] == formula
    finally:
        report.close()
    out = tmp_path / "r.pdf"
    res = CliRunner().invoke(main, ["report", "--db", str(db), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(page_texts(out))
    assert formula in text
    assert re.search(rf"Caveat: fit {fits['formula']['fit_id']} \(formula", text)
