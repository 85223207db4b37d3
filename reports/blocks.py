"""The report's content model: blocks (paragraphs, notes, tables, figures) in sections.

Every section module builds these blocks from the warehouse; every renderer
(``reports.pdf``, ``reports.html``) only lays them out, so the PDF and the
HTML say the same thing, and tests inspect a report's content (and the data
behind each figure, kept on ``Figure.data``) without parsing a PDF.

Paragraph text may use the tags ``<b>``, ``<i>`` and ``<font face="Courier">``
(understood by reportlab and, translated, by HTML); every value that comes
from the warehouse goes through :func:`esc` first.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

# The report's sections in order; each is numbered by its place (``SECTION_TITLES``).
# A new page is one name here and one ``reports/section_*.py`` module (content.py).
SECTION_NAMES = (
    "Data",
    "NLL against model size",
    "Post-training effect by model and task domain",
    "Generations",
    "Effects model",
    "Persona and accuracy",
    "Task-information gain",
    "Floors",
    "Participants",
    "Diagnostics",
    "Methods",
)
SECTION_TITLES = tuple(f"{i} {name}" for i, name in enumerate(SECTION_NAMES, 1))
MAX_TABLE_ROWS = 60  # longer tables are cut with a pointer to `psystats sql`


def title(name: str) -> str:
    """The numbered title of the section called ``name`` (one of :data:`SECTION_NAMES`)."""
    return SECTION_TITLES[SECTION_NAMES.index(name)]


def esc(v: Any) -> str:
    return escape("" if v is None else str(v))


def summary_of(fit: dict) -> dict:
    """A fit's ``summary`` JSON as a dict (empty when missing or not an object)."""
    summ = fit.get("summary")
    return summ if isinstance(summ, dict) else {}


# ---------------------------------------------------------------- blocks


@dataclass
class Para:
    text: str  # reportlab mini-markup, values escaped
    style: str = "body"  # body | small | code


@dataclass
class Note:
    text: str  # a boxed callout (warnings, "no data")
    kind: str = "info"  # info | warning


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str | None = None
    numeric: list[bool] | None = None  # right-align (and sort numerically) these columns


@dataclass
class Figure:
    """A figure: the matplotlib drawing (PDF, static HTML) and the frame it was drawn from.

    ``chart`` names the interactive version ``reports.charts`` draws from
    ``data`` for the HTML report (``None``: the HTML shows the static
    drawing only); ``options`` are that chart's settings (axis label, ROPE,
    series column), the same ones the matplotlib function was given.
    """

    figure: Any  # matplotlib Figure
    caption: str
    data: Any = None  # the frame the figure was drawn from (tests and the HTML's CSV read it)
    chart: str | None = None  # nll_by_size | heatmap | generations | forest | ppc
    options: dict = field(default_factory=dict)


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Report:
    title: str
    subtitle: str
    front: list  # blocks before section 1 (notes, headline counts)
    sections: list[Section]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]

    def section(self, key: int | str) -> Section:
        """A section by its number (1-based) or its name (``"Diagnostics"``): names stay
        right when pages are added before it."""
        if isinstance(key, str):
            return next(s for s in self.sections if s.title == title(key))
        return self.sections[key - 1]

    def close(self) -> None:
        """Release the matplotlib figures (they hold memory until closed)."""
        import matplotlib.pyplot as plt

        for f in self.figures():
            plt.close(f.figure)


# ------------------------------------------------------------ formatting


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 experiment``, ``2 experiments``, ``1 study``/``3 studies`` (``many`` when irregular)."""
    n = int(n)
    return f"{n:,} " + (noun if n == 1 else (many or noun + "s"))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, (_dt.datetime, pd.Timestamp)):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def table_from(
    df: pd.DataFrame,
    columns: dict[str, str] | None = None,
    *,
    caption: str | None = None,
    formats: dict[str, Any] | None = None,
    max_rows: int = MAX_TABLE_ROWS,
) -> list:
    """A Table block (plus a note when rows were cut) from a DataFrame."""
    columns = columns or {c: c for c in df.columns}
    formats = formats or {}
    shown = df.head(max_rows)
    rows = []
    for d in shown.to_dict("records"):
        rows.append([esc(formats[c](d[c]) if c in formats else fmt(d[c])) for c in columns])
    numeric = [
        pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        for c in columns
    ]
    out: list = [Table(list(columns.values()), rows, caption, numeric)]
    if len(df) > max_rows:
        out.append(
            Para(
                f"... and {len(df) - max_rows:,} more rows (query them with "
                f'<font face="Courier">psystats sql</font>).',
                "small",
            )
        )
    return out


def no_data(what: str, how: str | None = None) -> Note:
    text = f"No data for this section: {what}."
    if how:
        text += f" {how}"
    return Note(text)
