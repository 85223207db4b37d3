"""Lay a :class:`reports.content.Report` out as one self-contained HTML file (inline SVG figures)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from xml.sax.saxutils import escape

from .blocks import Figure, Note, Para, Report, Table

CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 52em; margin: 2em auto; color: #222;
       line-height: 1.45; font-size: 15px; padding: 0 1em; }
h1 { font-size: 1.9em; margin-bottom: 0.1em; } h2 { color: #1f3b73; margin-top: 1.8em; }
.subtitle { color: #555; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.78em; margin: 0.3em 0 1.2em; }
th { text-align: left; border-top: 1.5px solid #000; border-bottom: 1px solid #000; padding: 2px 6px; }
td { padding: 2px 6px; vertical-align: top; } tr:nth-child(even) td { background: #f3f5f9; }
td.num { text-align: right; } tbody tr:last-child td { border-bottom: 1.5px solid #000; }
.caption { font-size: 0.82em; color: #333; } .small { font-size: 0.85em; color: #444; }
.note { background: #eef2f8; border-left: 4px solid #7d93b8; padding: 0.5em 0.8em; margin: 0.8em 0; }
.note.warning { background: #fdf1dc; border-left-color: #d99a27; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
"""


def _markup(text: str) -> str:
    """reportlab's mini-markup to HTML (only the tags content.py uses)."""
    text = re.sub(r'<font face="Courier">(.*?)</font>', r"<code>\1</code>", text)
    return text


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def write_html(report: Report, path: str | Path) -> Path:
    title = escape(report.title)
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{title}</h1><p class='subtitle'>{escape(report.subtitle)}</p>",
    ]

    def add(block):
        if isinstance(block, Para):
            out.append(f"<p class='{block.style}'>{_markup(block.text)}</p>")
        elif isinstance(block, Note):
            out.append(f"<div class='note {block.kind}'>{_markup(block.text)}</div>")
        elif isinstance(block, Table):
            if block.caption:
                out.append(f"<p class='caption'>{_markup(block.caption)}</p>")
            numeric = block.numeric or [False] * len(block.columns)
            head = "".join(f"<th>{c}</th>" for c in block.columns)
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td class='{'num' if numeric[i] else ''}'>{v}</td>" for i, v in enumerate(r)
                )
                + "</tr>"
                for r in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            out.append(
                f"<figure>{_svg(block.figure)}<figcaption class='caption'>"
                f"{_markup(block.caption)}</figcaption></figure>"
            )

    for block in report.front:
        add(block)
    for section in report.sections:
        out.append(f"<h2>{section.title}</h2>")
        for block in section.blocks:
            add(block)
    out.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(out), encoding="utf-8")
    tmp.replace(path)
    return path
