"""`psystats report`: the warehouse as a PDF (or HTML) a researcher can show colleagues.

``content.build_report`` decides what the report says (sections 1-8, from the
warehouse alone, one ``section_*`` module each) as the content model of
``blocks``; ``pdf.write_pdf`` and ``html.write_html`` lay it out (the HTML
with ``charts``' interactive Vega-Lite versions of the figures); ``queries``
holds every SQL query and ``figures`` every matplotlib figure.  ``card``
builds one model's human-fidelity card, ``card_html`` renders it.
"""

from __future__ import annotations

from pathlib import Path


def render_report(
    con,
    out: str | Path,
    *,
    fmt: str = "pdf",
    title: str = "psystats report",
    note: str | None = None,
    source: str | None = None,
    truth: dict | None = None,
) -> Path:
    """Build the report from the warehouse behind ``con`` and write it to ``out``.

    ``truth``: a simulated study's truth.json (parsed): its fits' pages show
    every estimate beside the truth.
    """
    from .content import build_report

    report = build_report(con, title=title, note=note, source=source, truth=truth)
    try:
        if fmt == "pdf":
            from .pdf import write_pdf

            return write_pdf(report, out)
        if fmt == "html":
            from .html import write_html

            return write_html(report, out)
        raise ValueError(f"unknown report format {fmt!r}: use pdf or html")
    finally:
        report.close()
