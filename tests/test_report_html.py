"""The HTML report: one self-contained file, explorable, with the PDF's numbers (both are
rendered from the same content model, and checked against it here)."""

from __future__ import annotations

import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from psystats.reports.blocks import SECTION_TITLES, Figure, Table
from psystats.reports.content import build_report
from psystats.reports.html import render_html
from psystats.reports.pdf import write_pdf
from psystats.warehouse import db as warehouse_db
from report_fixture import full_copy


class _Page(HTMLParser):
    """Tables (cell texts), spec scripts and CSV links of a rendered report."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.specs: dict[str, dict] = {}
        self.csv: list[str] = []
        self.scripts = 0
        self._cell: list[str] | None = None
        self._spec: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "script":
            self.scripts += 1
            if a.get("type") == "application/json" and a.get("id", "").startswith("spec-"):
                self._spec, self._buf = a["id"], []
        elif tag == "a" and (a.get("href") or "").startswith("data:text/csv"):
            self.csv.append(a["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "script" and self._spec:
            self.specs[self._spec] = json.loads("".join(self._buf))
            self._spec = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._spec:
            self._buf.append(data)


def _plain(markup: str) -> str:
    """A table cell of the content model as a reader sees it (tags dropped, unescaped)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup)).strip()


def spec_rows(spec: dict) -> list[dict]:
    """Every data row a Vega-Lite spec carries (Altair puts them in ``datasets``)."""
    rows = [r for values in spec.get("datasets", {}).values() for r in values]
    return rows + list(spec.get("data", {}).get("values", []))


@pytest.fixture(scope="module")
def rendered(small_warehouse: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    db, _ = full_copy(small_warehouse, root)
    con = warehouse_db.open(db)
    report = build_report(con)
    con.close()
    page = render_html(report)
    pdf = write_pdf(report, root / "r.pdf")
    yield report, page, pdf, db
    report.close()


def test_html_tables_are_the_content_models_tables(rendered):
    report, page, _, _ = rendered
    parsed = _Page()
    parsed.feed(page)
    tables = report.tables()
    assert len(parsed.tables) == len(tables) > 10
    for block, got in zip(tables, parsed.tables):
        assert got[0] == [_plain(c) for c in block.columns]
        assert got[1:] == [[_plain(c) for c in r] for r in block.rows], block.caption


def test_html_numbers_equal_the_pdfs(rendered):
    """Every number in a table is in both files: the PDF's text and the HTML's tables."""
    from pypdf import PdfReader

    report, page, pdf, _ = rendered
    pdf_text = re.sub(r"\s+", "", "".join(p.extract_text() or "" for p in PdfReader(pdf).pages))
    parsed = _Page()
    parsed.feed(page)
    html_cells = {c for t in parsed.tables for r in t for c in r}
    checked = 0
    for block in report.tables():
        for row in block.rows:
            for cell, numeric in zip(row, block.numeric or [False] * len(row)):
                text = _plain(cell)
                if numeric and re.fullmatch(r"[-+−]?[\d,.]+(e[-+]?\d+)?%?", text):
                    assert text in html_cells
                    assert text.replace(" ", "") in pdf_text, (block.caption, text)
                    checked += 1
    assert checked > 200


def test_charts_carry_the_figures_numbers(rendered):
    report, page, _, _ = rendered
    parsed = _Page()
    parsed.feed(page)
    figures = report.figures()
    charts = [f for f in figures if f.chart]
    assert len(parsed.specs) == len(charts) >= 6
    assert len(parsed.csv) == sum(1 for f in figures if f.data is not None and len(f.data))
    for n, fig in enumerate(figures, 1):
        if not fig.chart:
            continue
        spec = parsed.specs[f"spec-{n}"]
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        rows = spec_rows(spec)
        column = "mean" if "mean" in fig.data else "observed"
        want = sorted(round(float(v), 9) for v in fig.data[column].dropna())
        got = sorted(round(float(r[column]), 9) for r in rows if r.get(column) is not None)
        assert got == want, fig.chart
    # each CSV link holds its figure's frame
    with_data = [f for f in figures if f.data is not None and len(f.data)]
    for fig, href in zip(with_data, parsed.csv):
        csv = pd.read_csv(io.StringIO(unquote(href.split(",", 1)[1])))
        assert list(csv.columns) == [str(c) for c in fig.data.columns]
        num = [c for c in ("mean", "q05", "q95", "lo", "hi", "observed") if c in csv]
        assert num and (csv[num] - fig.data[num].astype(float).to_numpy()).abs().max().max() < 1e-9


def test_one_self_contained_file(rendered):
    report, page, _, _ = rendered
    # no resource from any host: nothing is loaded by src/href from http(s), and the page's
    # Content-Security-Policy forbids every request (default-src 'none')
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "default-src 'none'" in page and "connect-src" not in page
    assert "<script type='module'>" in page and "vegaEmbed" not in page.split("</script>")[-1]
    for i, title in enumerate(SECTION_TITLES, 1):
        assert f"<section id='section-{i}'><h2>{title}</h2>" in page
    # static fallback: each figure's SVG is in the page, shown until its chart renders
    assert page.count("<div class='static'><svg") == len(report.figures())
    static = render_html(report, interactive=False)
    assert "<script" not in static and static.count("<svg") >= len(report.figures())


def test_markup_is_escaped_in_html(warehouse_copy: Path, tmp_path: Path):
    from report_fixture import fabricate

    con = warehouse_db.open(warehouse_copy, "write", create=True)
    fabricate(con, kinds=())
    con.execute("UPDATE models SET name = 'A<b>&co' WHERE name = 'Qwen3-0.6B-Base'")
    con.execute("UPDATE score_runs SET model = 'A<b>&co' WHERE model = 'Qwen3-0.6B-Base'")
    report = build_report(con, title="R&D <draft>", note="</script><b>x")
    con.close()
    try:
        page = render_html(report)
    finally:
        report.close()
    assert "A&lt;b&gt;&amp;co" in page and "R&amp;D &lt;draft&gt;" in page
    assert "&lt;/script&gt;&lt;b&gt;x" in page
    # a name inside a chart's JSON cannot close its script element
    specs = re.findall(r"<script type='application/json' id='spec-\d+'>(.*?)</script>", page, re.S)
    assert specs and all(json.loads(s) for s in specs)
    assert any("A<b>&co" in json.dumps(json.loads(s)) for s in specs)


def test_table_and_figure_blocks_only():
    """The content model has four blocks; the HTML layout refuses anything else."""
    from psystats.reports.blocks import Note, Para
    from psystats.reports.html import _Page as Layout

    layout = Layout(interactive=False)
    for block in (Para("a"), Note("b"), Table(["x"], [["1"]])):
        layout.add(block)
    with pytest.raises(TypeError):
        layout.add(Figure)  # a class, not a block


def test_undefined_numbers_in_a_chart_become_null(rendered):
    """A tiny or degenerate fit can leave an interval undefined (NaN, inf): the chart's
    JSON carries null there (JSON has no NaN) instead of the report failing."""
    import copy
    import math

    from psystats.reports.blocks import Report, Section

    report = rendered[0]
    fig = copy.copy(next(f for f in report.figures() if f.chart == "forest"))
    data = fig.data.copy()
    num = [c for c in ("q05", "q95", "mean") if c in data]
    data.loc[data.index[0], num[0]] = math.nan
    data.loc[data.index[-1], num[-1]] = math.inf
    fig.data = data
    page = render_html(Report(title="t", subtitle="", front=[], sections=[Section("x", [fig])]))
    parsed = _Page()
    parsed.feed(page)
    (spec,) = parsed.specs.values()
    values = [r.get(c) for r in spec_rows(spec) for c in num]
    assert None in values and all(v is None or math.isfinite(v) for v in values)
