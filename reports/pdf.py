"""Lay a :class:`reports.content.Report` out as a PDF.

Route (everything installs from PyPI, no system packages): reportlab lays out
the text, tables and page furniture and reserves a box for each figure;
matplotlib saves each figure as a one-page vector PDF; pypdf then stamps that
page into its box.  Figures therefore stay vector graphics with embedded
TrueType text, and reportlab's flowing layout (page breaks, tables split
across pages, headings kept with what follows) does the typesetting.  See
docs/report.md for why this route.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)
from reportlab.platypus import Table as RLTable

from .blocks import Figure, Note, Para, Report, Table

PAGE = A4
MARGIN = 2 * cm
FRAME_W = PAGE[0] - 2 * MARGIN
# What a flowable may use inside the frame (its 6 pt padding each side): a table
# any wider cannot be split across pages and would jump whole to the next page.
CONTENT_W = FRAME_W - 12
FRAME_H = PAGE[1] - 2 * MARGIN - 0.6 * cm  # room for the footer

_base = getSampleStyleSheet()
STYLES = {
    "title": ParagraphStyle(
        "title", parent=_base["Title"], fontSize=20, leading=24, alignment=TA_LEFT, spaceAfter=4
    ),
    "subtitle": ParagraphStyle(
        "subtitle",
        parent=_base["Normal"],
        fontSize=9,
        textColor=colors.HexColor("#555555"),
        spaceAfter=12,
    ),
    "h1": ParagraphStyle(
        "h1",
        parent=_base["Heading1"],
        fontSize=15,
        leading=18,
        spaceBefore=6,
        spaceAfter=8,
        textColor=colors.HexColor("#1f3b73"),
        keepWithNext=1,
    ),
    "body": ParagraphStyle("body", parent=_base["Normal"], fontSize=9.5, leading=13, spaceAfter=6),
    "small": ParagraphStyle(
        "small",
        parent=_base["Normal"],
        fontSize=8,
        leading=10,
        textColor=colors.HexColor("#444444"),
        spaceAfter=6,
    ),
    "caption": ParagraphStyle(
        "caption",
        parent=_base["Normal"],
        fontSize=8,
        leading=10.5,
        textColor=colors.HexColor("#333333"),
        spaceBefore=2,
        spaceAfter=10,
    ),
    "cell": ParagraphStyle("cell", parent=_base["Normal"], fontSize=7, leading=8.5),
    "cellnum": ParagraphStyle(
        "cellnum", parent=_base["Normal"], fontSize=7, leading=8.5, alignment=2
    ),
    "head": ParagraphStyle(
        "head", parent=_base["Normal"], fontSize=7, leading=8.5, fontName="Helvetica-Bold"
    ),
    "note": ParagraphStyle("note", parent=_base["Normal"], fontSize=8.5, leading=11),
}


@dataclass
class _Placed:
    page: int  # 0-based
    x: float
    y: float
    width: float
    height: float


class FigureBox(Flowable):
    """A figure with its caption: reserves the figure's space, draws the caption under it,
    and remembers where the figure landed (pypdf stamps it there afterwards).

    One unsplittable flowable, so a figure never leaves its caption.  When the
    rest of a page is a little too short, the figure is drawn smaller (down to
    ``MIN_SCALE`` of its size) instead of leaving that space empty.
    """

    MIN_SCALE = 0.7
    GAP = 2.0  # points between figure and caption

    def __init__(
        self, index: int, width: float, height: float, placements: dict, caption: Paragraph
    ):
        super().__init__()
        self.index, self.w0, self.h0 = index, width, height
        self.width, self.height, self.scale = width, height, 1.0
        self.caption = caption
        self._placements = placements
        self._caption_h = 0.0

    def wrap(self, availWidth, availHeight):
        _, ch = self.caption.wrap(CONTENT_W, availHeight)
        self._caption_h = ch + self.GAP + self.caption.style.spaceAfter
        room = availHeight - self._caption_h
        fit = room / self.h0
        self.scale = 1.0 if fit >= 1.0 or fit < self.MIN_SCALE else fit
        self.width, self.height = self.w0 * self.scale, self.h0 * self.scale
        return CONTENT_W, self.height + self._caption_h

    def drawOn(self, canvas, x, y, _sW=0):
        # x, y: the bottom left of this flowable in page coordinates.
        cap_y = y + self.caption.style.spaceAfter
        self.caption.drawOn(canvas, x, cap_y)
        fig_x = x + max(0.0, (CONTENT_W - self.width) / 2)
        fig_y = cap_y + self._caption_h - self.caption.style.spaceAfter
        self._placements[self.index] = _Placed(
            canvas.getPageNumber() - 1, fig_x, fig_y, self.width, self.height
        )

    def draw(self):  # pragma: no cover - drawOn does the work
        pass


class _Doc(SimpleDocTemplate):
    """Adds a PDF outline entry (bookmark) for every section heading."""

    def afterFlowable(self, flowable):
        if isinstance(flowable, Paragraph) and flowable.style.name == "h1":
            text = flowable.getPlainText()
            key = f"s{id(flowable)}"
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(text, key, level=0)


def _footer(title: str):
    def draw(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#777777"))
        canvas.drawString(MARGIN, MARGIN * 0.55, title)
        canvas.drawRightString(PAGE[0] - MARGIN, MARGIN * 0.55, f"page {doc.page}")
        canvas.restoreState()

    return draw


def _table(block: Table) -> list:
    n = len(block.columns)
    numeric = block.numeric or [False] * n
    widths = _column_widths(block, n)
    head = [Paragraph(c, STYLES["head"]) for c in block.columns]
    body = [
        [Paragraph(v, STYLES["cellnum"] if numeric[i] else STYLES["cell"]) for i, v in enumerate(r)]
        for r in block.rows
    ]
    t = RLTable([head] + body, colWidths=widths, repeatRows=1, hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f3f5f9")]),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    out: list = []
    if block.caption:
        out.append(Paragraph(block.caption, STYLES["caption"]))
    out.append(t)
    out.append(Spacer(1, 10))
    return out


def _column_widths(block: Table, n: int) -> list[float]:
    """Each column as wide as its longest cell (headers: longest word), wide ones
    capped at a common width so that the table fits the frame and they wrap."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    pad = 7.0
    natural = []
    for i in range(n):
        head = max(stringWidth(w, "Helvetica-Bold", 7) for w in (block.columns[i].split() or [""]))
        body = max([stringWidth(r[i], "Helvetica", 7) for r in block.rows] or [0.0])
        natural.append(max(head, body, 12.0) + pad)
    if sum(natural) <= CONTENT_W:
        return natural
    lo, hi = 0.0, max(natural)
    for _ in range(40):  # bisect the cap c with sum(min(w, c)) == CONTENT_W
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(min(w, mid) for w in natural) < CONTENT_W else (lo, mid)
    return [min(w, lo) for w in natural]


def _note(block: Note) -> RLTable:
    colour = "#fdf1dc" if block.kind == "warning" else "#eef2f8"
    edge = "#d99a27" if block.kind == "warning" else "#7d93b8"
    t = RLTable([[Paragraph(block.text, STYLES["note"])]], colWidths=[CONTENT_W])
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(colour)),
                ("LINEBEFORE", (0, 0), (0, -1), 2.5, colors.HexColor(edge)),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
                ("LEFTPADDING", (0, 0), (-1, -1), 7),
            ]
        )
    )
    return t


def _figure_size(fig) -> tuple[float, float]:
    w_in, h_in = fig.get_size_inches()
    w, h = w_in * 72, h_in * 72
    scale = min(1.0, CONTENT_W / w, (FRAME_H - 60) / h)
    return w * scale, h * scale


def _flowables(report: Report, placements: dict, figures: list) -> list:
    story: list = [
        Paragraph(escape(report.title), STYLES["title"]),
        Paragraph(escape(report.subtitle), STYLES["subtitle"]),
    ]

    def render(block) -> list:
        if isinstance(block, Para):
            return [Paragraph(block.text, STYLES.get(block.style, STYLES["body"]))]
        if isinstance(block, Note):
            return [_note(block), Spacer(1, 8)]
        if isinstance(block, Table):
            return _table(block)
        if isinstance(block, Figure):
            w, h = _figure_size(block.figure)
            idx = len(figures)
            figures.append(block.figure)
            return [FigureBox(idx, w, h, placements, Paragraph(block.caption, STYLES["caption"]))]
        raise TypeError(f"unknown report block {type(block).__name__}")  # pragma: no cover

    for block in report.front:
        story.extend(render(block))
    for section in report.sections:
        # Sections follow each other; a new page only when little of this one is left.
        story.append(CondPageBreak(FRAME_H * 0.2))
        heading = Paragraph(section.title, STYLES["h1"])
        if not section.blocks:
            story.append(heading)
            continue
        # A heading never ends a page: it moves with its section's first block.
        first, *rest = section.blocks
        story.append(KeepTogether([heading, *render(first)]))
        for block in rest:
            story.extend(render(block))
    return story


def write_pdf(report: Report, path: str | Path) -> Path:
    """Render ``report`` to ``path`` (written atomically: a temp file, then renamed)."""
    from pypdf import PdfReader, PdfWriter, Transformation

    placements: dict[int, _Placed] = {}
    figures: list = []
    buf = io.BytesIO()
    doc = _Doc(
        buf,
        pagesize=PAGE,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 0.6 * cm,
        title=report.title,
        author="psystats",
        subject=report.subtitle,
    )
    footer = _footer(report.title)
    doc.build(_flowables(report, placements, figures), onFirstPage=footer, onLaterPages=footer)

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(buf.getvalue())))
    for idx, fig in enumerate(figures):
        where = placements.get(idx)
        if where is None:  # pragma: no cover - every reserved box is drawn
            raise RuntimeError(f"figure {idx} was not placed")
        fbuf = io.BytesIO()
        fig.savefig(fbuf, format="pdf")
        fpage = PdfReader(fbuf).pages[0]
        fw = float(fpage.mediabox.width)
        s = where.width / fw
        writer.pages[where.page].merge_transformed_page(
            fpage, Transformation().scale(s, s).translate(where.x, where.y)
        )
    writer.add_metadata({"/Title": report.title, "/Creator": "psystats report"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        writer.write(f)
    tmp.replace(path)
    return path
