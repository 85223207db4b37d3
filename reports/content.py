"""What the report says: ``build_report(con)`` assembles the sections from the warehouse.

Each section (``blocks.SECTION_NAMES``, in order) is built by the module named
after it (``reports.section_data`` ... ``reports.section_methods``) from ``reports.queries`` into the blocks of
``reports.blocks``; ``reports.pdf`` and ``reports.html`` lay the same
:class:`~reports.blocks.Report` out, so both formats say the same thing.
"""

from __future__ import annotations

import datetime as _dt

from . import (
    section_data,
    section_diagnostics,
    section_effects,
    section_floors,
    section_generations,
    section_heatmap,
    section_methods,
    section_participants,
    section_persona,
    section_size,
    section_task_information,
)
from .blocks import Note, Para, Report, esc


def build_report(
    con,
    *,
    title: str = "psystats report",
    note: str | None = None,
    source: str | None = None,
    truth: dict | None = None,
) -> Report:
    """Read the warehouse and assemble every section (sections without data say so).

    ``truth``: a simulated study's truth (``psystats simulate study``'s
    truth.json); each page of its fits then shows every estimate beside it.
    """
    from psystats.warehouse.provenance import __version__

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = f"Generated {now} by psystats {__version__}" + (f" from {source}" if source else "")
    front: list = []
    if note:
        front.append(Note(esc(note), "warning"))
    front.append(
        Para(
            "How well do language models predict what people do in psychology "
            "experiments, and how does post-training change that? Scores are "
            "negative log-likelihoods (NLL, nats) of each human response given the "
            "experiment transcript before it: lower means the model predicts people "
            "better. Effects are estimated with hierarchical Bayesian models; "
            "intervals are 90% credible intervals unless stated otherwise."
        )
    )
    sections = [
        section_data.build(con),
        section_size.build(con),
        section_heatmap.build(con),
        section_generations.build(con, truth),
        section_effects.build(con, truth),
        section_persona.build(con, truth),
        section_task_information.build(con, truth),
        section_floors.build(con, truth),
        section_participants.build(con, truth),
        section_diagnostics.build(con),
        section_methods.build(con),
    ]
    return Report(title, subtitle, front, sections)
