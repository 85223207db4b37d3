"""Running a fit from a command and printing it: the same lines for every ``psystats fit``.

:func:`run_fit_command` checks every option (a bad one is a usage error,
exit 2, before the warehouse is opened), runs ``fit_<kind>`` through the one
adapter (``psystats.stats.fit_kinds``, which the notebook API uses too) on a
connection that holds the file only per statement, and prints
:func:`print_fit`'s lines:

    note: <each note of the fit: data left out, terms dropped, each retry>   (stderr)
    fit 3: effects, 32 cells, 8 pairs, 4 experiments (condition plain; scale nats)
    gates passed after 1 retry: max R-hat 1.004, min ESS bulk 812 / tail 790, 0 divergences
    stored: fit 3 (fits, fit_params) and its posterior in <db>.fits/fit-3.nc

The command then prints its own table (:func:`print_params` for the stored
parameters, with their unit where ``fit_params`` has one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click

from psystats.stats.fit_kinds import fit_request
from psystats.stats.options import OptionError
from psystats.warehouse.sql import where_clause

from .common import open_db, print_rows


def run_fit_command(kind: str, db: str | None, **options: Any) -> tuple[Any, Any]:
    """Check the options, fit, print the common lines; returns (FitResult, connection).

    ``options``: ``selection``, ``sampling``, ``store``, ``allow_failure``
    (from the decorators of ``fit_options``) and the kind's spec options by
    name.  The connection stays open for the command's own table and is
    closed when the command ends.
    """
    # Library warnings as plain lines; set before PyMC loads, so its INFO chatter
    # ("Sampling: [y]") stays out of the output.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        request = fit_request(kind, **options)
    except OptionError as e:
        raise click.UsageError(str(e)) from None
    # Read the data, let go of the file while sampling, write the fit in one short
    # transaction: other commands can read and write meanwhile (warehouse.db.open's modes).
    con = open_db(db, "statement")
    result = request.run(con)
    print_fit(result)
    return result, con


def print_fit(result) -> None:
    """The notes, the gates line (with the retries) and where the fit is stored."""
    for note in result.notes or []:
        click.echo(f"note: {note}", err=True)
    what = f"{result.kind}, {result.what}" if result.what else result.kind
    click.echo(f"fit {result.fit_id}: {what} (condition {result.condition}; scale {result.scale})")
    d = result.diagnostics
    status = "passed" if d.passed else "FAILED (" + "; ".join(d.problems) + ")"
    n = len(result.redrawn)
    after = f" after {n} {'retry' if n == 1 else 'retries'}" if n else ""
    click.echo(
        f"gates {status}{after}: max R-hat {d.max_rhat:.3f}, min ESS bulk "
        f"{d.min_ess_bulk:.0f} / tail {d.min_ess_tail:.0f}, {d.divergences} divergences"
    )
    if result.fit_id is not None:
        click.echo(
            f"stored: fit {result.fit_id} (fits, fit_params) and its posterior in "
            f"{result.netcdf_path}"
        )


PARAM_COLUMNS = ["parameter", "label", "mean", "q05", "q95", "r_hat"]


def print_params(
    con, fit_id: int, parameters: Sequence[str] | None = None, limit: int | None = None
) -> None:
    """The fit's ``fit_params`` rows (mean, 90% interval, R-hat, and the unit when stored)."""
    filt, params = where_clause({"fit_id": [int(fit_id)], "parameter": parameters})
    cur = con.execute(f"SELECT * FROM fit_params {filt} ORDER BY parameter, label", params)
    names = [c[0] for c in cur.description]
    cols = PARAM_COLUMNS + (["unit"] if "unit" in names else [])
    rows = [tuple(r[names.index(c)] for c in cols) for r in cur.fetchall()]
    print_rows(cols, rows[:limit] if limit else rows)
    if limit and len(rows) > limit:
        click.echo(
            f"... {len(rows) - limit} more: "
            f'psystats sql "SELECT * FROM fit_params WHERE fit_id = {fit_id}"'
        )
