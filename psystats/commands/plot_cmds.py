"""``psystats plot NAME -o fig.svg``: one report figure as a file, its data as CSV beside it."""

from __future__ import annotations

from pathlib import Path

import click

from .common import db_option, friendly_errors, open_db
from .option_types import ID

FIGURES = ("nll-vs-size", "domain-heatmap", "forest", "generations", "ppc")


@click.command()
@click.argument("name", type=click.Choice(FIGURES))
@db_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Figure file: .svg, .png (300 dpi) or .pdf.",
)
@click.option(
    "--fit",
    "fit_id",
    type=ID,
    default=None,
    help="Fit to draw [default: the newest fit of the kind the figure needs].",
)
@click.option("--condition", default=None, help="nll-vs-size: scoring condition [default: plain].")
@click.option("--no-csv", is_flag=True, help="Do not write the data beside the figure.")
@friendly_errors
def plot(name, db, output, fit_id, condition, no_csv):
    """Write one figure of the report, with the data behind it as CSV.

    NAME: nll-vs-size (mean NLL against parameter count), domain-heatmap
    (pair x domain effects of an effects fit), forest (an effects fit's
    terms, or every parameter of another fit, e.g. a formula fit),
    generations (a generations fit) or ppc (posterior predictive check of
    any fit that stored one).  The CSV has the figure's name with .csv.

    \b
    Examples:
      psystats plot nll-vs-size -o size.pdf
      psystats plot domain-heatmap --fit 3 -o heatmap.svg
      psystats plot forest --fit 5 -o forest.png
      psystats plot ppc --fit 3 -o ppc.pdf
    """
    from psystats.reports.single import write_figure

    con = open_db(db, "read")
    fig, csv = write_figure(con, name, output, fit_id=fit_id, condition=condition, csv=not no_csv)
    click.echo(f"wrote {fig}" + (f" and {csv}" if csv else ""))
