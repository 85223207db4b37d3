"""`psystats report`: render the warehouse's scores and fits as a PDF (or HTML)."""

from __future__ import annotations

import click

from .common import db_option, db_path, friendly_errors, open_db, output_option
from .option_types import FILE


@click.command()
@db_option
@output_option("Where to write the report.", default="report.pdf")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pdf", "html"]),
    default=None,
    help="pdf (vector figures) or html (one self-contained, offline file: interactive charts, "
    "sortable tables, each figure's data as CSV); default: from the output's suffix, else pdf.",
)
@click.option(
    "--title", default="psystats report", show_default=True, help="Title on the first page."
)
@click.option("--note", help="A boxed note at the top of the first page (e.g. what the data are).")
@click.option(
    "--truth",
    "truth_file",
    type=FILE,
    help="A simulated study's truth.json (`psystats simulate study`): the pages of its fits "
    "show every estimate beside the truth it should recover.",
)
@friendly_errors
def report(
    db: str | None,
    output: str,
    fmt: str | None,
    title: str,
    note: str | None,
    truth_file: str | None,
) -> None:
    """Write a report of everything in the warehouse: data, scores, fits, diagnostics, methods.

    Sections: 1 data; 2 NLL against parameter count per family; 3 post-training
    effect by model and task domain (heatmap); 4 generations; 5 effects-model
    forest plot; 6 persona and accuracy; 7 diagnostics and posterior predictive
    checks; 8 methods generated from what was fitted.  A section without data
    says so.  The HTML says the same with the same numbers, and is explorable:
    hover a point for its values and interval, zoom, click a legend entry to
    filter, sort and filter tables, download each figure's data as CSV; it
    loads nothing from any host and shows static figures with scripts off.  The newest fit of each kind is shown; every fit is listed in the
    diagnostics table.  Every results page carries a caveat box when its fit
    failed its diagnostic gates, is stale, or includes a model flagged as a
    pipeline check (`psystats models set NAME pipeline_check=WHY`).  The
    warehouse is only read.  The output must be a
    regular file (or new): folders, links and devices are refused; it is
    written under a temporary name and renamed, so it is never half-written.

    \b
    Examples:
      psystats report --db study.duckdb -o report.pdf
      psystats report --db study.duckdb -o report.html
      psystats report --db demo.duckdb -o demo.pdf --truth simulated/truth.json
    """
    from psystats.reports import render_report

    if fmt is None:
        fmt = "html" if output.lower().endswith((".html", ".htm")) else "pdf"
    from psystats.warehouse.outputs import atomic_output, check_target

    check_target(output)  # before the work: a bad -o fails at once
    truth = None
    if truth_file:
        import json

        from psystats.warehouse.errors import WarehouseError

        try:
            truth = json.loads(open(truth_file, encoding="utf-8").read())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise WarehouseError(f"{truth_file}: not a truth file ({e})") from None
        if not isinstance(truth, dict):
            raise WarehouseError(f"{truth_file}: not a truth file (expected a JSON object)")
    con = open_db(db, "read")
    try:
        with atomic_output(output) as tmp:
            render_report(
                con, tmp, fmt=fmt, title=title, note=note, source=db_path(db), truth=truth
            )
    finally:
        con.close()
    click.echo(f"report written to {output}")
