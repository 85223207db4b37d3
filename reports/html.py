"""Lay a :class:`reports.blocks.Report` out as one self-contained, explorable HTML file.

The same blocks as the PDF, in the same order, with the same text and
numbers.  What the HTML adds, all inlined (the file makes no request to any
host; its Content-Security-Policy forbids it):

* every figure with data is an interactive Vega-Lite chart (``reports.charts``;
  the Vega, Vega-Lite and vega-embed runtime comes inlined from
  ``vl-convert-python``): hover shows values and intervals, drag or wheel
  zooms, a legend click filters; beside it a link downloads the figure's data
  as CSV (a ``data:`` link, so it works with scripts off too);
* tables sort by a click on a column heading and filter by typing;
* static fallback: each figure's matplotlib SVG (the PDF's drawing) is in the
  page and stays visible until its interactive chart has rendered, so a
  reader with scripts off (or a failed chart) still sees every figure, and
  tables are plain tables.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

import pandas as pd

from .blocks import Figure, Note, Para, Report, Table

CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 60em; margin: 2em auto; color: #222;
       line-height: 1.45; font-size: 15px; padding: 0 1em; }
h1 { font-size: 1.9em; margin-bottom: 0.1em; } h2 { color: #1f3b73; margin-top: 1.8em; }
.subtitle { color: #555; font-size: 0.85em; }
nav.toc { font-size: 0.85em; background: #f3f5f9; padding: 0.4em 0.8em; border-radius: 4px; }
nav.toc a { margin-right: 1em; white-space: nowrap; }
table { border-collapse: collapse; font-size: 0.78em; margin: 0.3em 0 1.2em; }
th { text-align: left; border-top: 1.5px solid #000; border-bottom: 1px solid #000; padding: 2px 6px; }
td { padding: 2px 6px; vertical-align: top; } tr:nth-child(even) td { background: #f3f5f9; }
td.num { text-align: right; } tbody tr:last-child td { border-bottom: 1.5px solid #000; }
.js th { cursor: pointer; user-select: none; }
.js th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 0.8em; }
.js th[aria-sort=descending]::after { content: " \\25BC"; font-size: 0.8em; }
input.filter { font-size: 0.8em; margin: 0.2em 0; padding: 2px 4px; width: 16em; }
.caption { font-size: 0.82em; color: #333; } .small { font-size: 0.85em; color: #444; }
.note { background: #eef2f8; border-left: 4px solid #7d93b8; padding: 0.5em 0.8em; margin: 0.8em 0; }
.note.warning { background: #fdf1dc; border-left-color: #d99a27; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figure.live .static { display: none; }
.downloads { font-size: 0.8em; margin: 0.2em 0; }
.chart-error { color: #a33; font-size: 0.8em; }
"""

# Network: none.  Inline scripts and styles only; Vega compiles expressions with
# Function (hence 'unsafe-eval'); vega-embed's PNG export draws on a canvas (data:/blob:).
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:"
)

# Embeds every chart; appended to the inlined runtime bundle (an ES module in which
# `vegaEmbed` is in scope).  A chart that fails leaves its static drawing in place.
EMBED_SNIPPET = """
const opts = {renderer: "svg", actions: {export: true, source: false, compiled: false,
              editor: false}};
for (const el of document.querySelectorAll("div.chart[data-spec]")) {
  const spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
  vegaEmbed(el, spec, opts)
    .then(() => el.closest("figure").classList.add("live"))
    .catch((err) => {
      el.innerHTML = "<p class='chart-error'>Interactive figure unavailable (" +
        String(err).replace(/[<&]/g, "") + "); the static figure is shown.</p>";
    });
}
"""

# Sortable, filterable tables (no library: a few lines over the plain HTML tables).
TABLE_SCRIPT = """
(function () {
  document.documentElement.classList.add("js");
  function key(cell, numeric) {
    var t = cell.textContent.trim();
    if (!numeric) return t.toLowerCase();
    var m = t.replace(/,/g, "").replace(/%$/, "").match(/^([-+\\u2212]?[0-9.]+(?:e[-+]?[0-9]+)?)([KMBT]?)$/i);
    if (!m) return t === "" ? -Infinity : t.toLowerCase();
    var scale = {"": 1, K: 1e3, M: 1e6, B: 1e9, T: 1e12}[m[2].toUpperCase()];
    return parseFloat(m[1].replace("\\u2212", "-")) * scale;
  }
  function compare(a, b) {
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.data").forEach(function (table) {
    var body = table.tBodies[0];
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.title = "Click to sort";
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var numeric = th.dataset.type === "num";
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c = compare(key(r1.cells[col], numeric), key(r2.cells[col], numeric));
          return dir === "ascending" ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    if (body.rows.length > 5) {
      var input = document.createElement("input");
      input.type = "search";
      input.className = "filter";
      input.placeholder = "Filter " + body.rows.length + " rows";
      input.setAttribute("aria-label", "Filter the table below");
      input.addEventListener("input", function () {
        var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
        Array.prototype.forEach.call(body.rows, function (r) {
          var text = r.textContent.toLowerCase();
          r.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
        });
      });
      table.parentNode.insertBefore(input, table);
    }
  });
})();
"""


def _markup(text: str) -> str:
    """reportlab's mini-markup to HTML (only the tags the section modules use)."""
    return re.sub(r'<font face="Courier">(.*?)</font>', r"<code>\1</code>", text)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def figure_csv(fig: Figure) -> str:
    """The data behind a figure as CSV text (nested values written as text)."""
    data = pd.DataFrame(fig.data).copy()
    for c in data.columns:
        if data[c].dtype == object:
            data[c] = [v if v is None or isinstance(v, str) else str(v) for v in data[c]]
    return data.to_csv(index=False)


def _finite(obj):
    """``obj`` with every NaN or infinite float as None (JSON's null, which Vega reads as
    missing): a tiny or degenerate fit can leave an interval or a statistic undefined."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_script(obj) -> str:
    """JSON for a <script type="application/json">: '</' cannot end the element early;
    non-finite numbers become null (JSON has no NaN)."""
    return json.dumps(_finite(obj), allow_nan=False, default=str).replace("</", "<\\/")


def runtime_bundle() -> str:
    """The Vega + Vega-Lite + vega-embed runtime with :data:`EMBED_SNIPPET`, one ES module,
    for the Vega-Lite version Altair writes."""
    import altair as alt
    import vl_convert

    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    known = vl_convert.get_vegalite_versions()
    version = major_minor if major_minor in known else known[-1]
    return vl_convert.javascript_bundle(EMBED_SNIPPET, vl_version=version)


class _Page:
    """The HTML of one report, block by block."""

    def __init__(self, interactive: bool):
        self.interactive = interactive
        self.out: list[str] = []
        self.n_figures = 0
        self.n_charts = 0

    def table(self, block: Table) -> None:
        if block.caption:
            self.out.append(f"<p class='caption'>{_markup(block.caption)}</p>")
        numeric = block.numeric or [False] * len(block.columns)
        head = "".join(
            f"<th data-type='{'num' if numeric[i] else 'text'}'>{c}</th>"
            for i, c in enumerate(block.columns)
        )
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td class='{'num' if numeric[i] else ''}'>{v}</td>" for i, v in enumerate(r)
            )
            + "</tr>"
            for r in block.rows
        )
        self.out.append(
            f"<table class='data'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )

    def figure(self, block: Figure) -> None:
        self.n_figures += 1
        n = self.n_figures
        parts = [f"<figure id='figure-{n}'>"]
        if self.interactive and block.chart and block.data is not None:
            from .charts import spec

            self.n_charts += 1
            parts.append(f"<div class='chart' data-spec='spec-{n}'></div>")
            parts.append(
                f"<script type='application/json' id='spec-{n}'>"
                f"{_json_script(spec(block.chart, block.data, block.options))}</script>"
            )
        parts.append(f"<div class='static'>{_svg(block.figure)}</div>")
        parts.append(f"<figcaption class='caption'>{_markup(block.caption)}</figcaption>")
        if block.data is not None and len(block.data):
            name = f"figure-{n}-{block.chart or 'data'}.csv"
            href = "data:text/csv;charset=utf-8," + quote(figure_csv(block), safe="")
            parts.append(
                f"<p class='downloads'><a download='{name}' href='{href}'>"
                f"Download this figure's data (CSV, {len(block.data):,} rows)</a></p>"
            )
        parts.append("</figure>")
        self.out.append("".join(parts))

    def add(self, block) -> None:
        if isinstance(block, Para):
            self.out.append(f"<p class='{block.style}'>{_markup(block.text)}</p>")
        elif isinstance(block, Note):
            self.out.append(f"<div class='note {block.kind}'>{_markup(block.text)}</div>")
        elif isinstance(block, Table):
            self.table(block)
        elif isinstance(block, Figure):
            self.figure(block)
        else:  # pragma: no cover - the content model has only these blocks
            raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(report: Report, *, interactive: bool = True) -> str:
    """The whole report as one HTML document (``interactive=False``: no scripts at all)."""
    title = escape(report.title)
    page = _Page(interactive)
    for block in report.front:
        page.add(block)
    toc = []
    for i, section in enumerate(report.sections, 1):
        page.out.append(f"<section id='section-{i}'><h2>{section.title}</h2>")
        toc.append(f"<a href='#section-{i}'>{section.title}</a>")
        for block in section.blocks:
            page.add(block)
        page.out.append("</section>")
    scripts = ""
    if interactive:
        scripts = f"<script>{TABLE_SCRIPT}</script>"
        if page.n_charts:
            scripts += f"<script type='module'>{runtime_bundle()}</script>"
    head = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{CSS}</style></head><body>"
        f"<h1>{title}</h1><p class='subtitle'>{escape(report.subtitle)}</p>"
        f"<nav class='toc'>{''.join(toc)}</nav>"
    )
    return head + "\n".join(page.out) + scripts + "</body></html>"


def write_html(report: Report, path: str | Path, *, interactive: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(render_html(report, interactive=interactive), encoding="utf-8")
    tmp.replace(path)
    return path
