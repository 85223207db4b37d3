"""``psystats check``: is the warehouse what it recorded?  (``--repair`` what it can.)"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import db_option, friendly_errors, open_db


@click.command()
@db_option
@click.option(
    "--checksums",
    is_flag=True,
    help="Also read every Parquet score file whole and compare its SHA-256 with the one "
    "recorded when it was written (slow: reads all score data).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Set aside what cannot be trusted (moved to <warehouse>.quarantine/, never "
    "deleted), correct the records, mark runs that lost rows incomplete and re-import "
    "imported runs whose source file is unchanged.",
)
@friendly_errors
def check(db: str | None, checksums: bool, repair: bool) -> None:
    """Check the warehouse against its own records, like a file-system check.

    For both scores layouts: the tables and columns against the schema, each
    run's score rows against score_runs, and score rows of no run or of no
    response.  Under the Parquet layout also every partition file: present,
    its recorded size, row count and columns (and with --checksums its
    SHA-256), and no file the warehouse did not write.  Prints one line per
    problem and exits 1 when there is any.

    --repair moves every file it cannot trust to a quarantine folder next to
    the warehouse (with REPAIR.json saying why), forgets missing files, makes
    each run's recorded count true, and marks runs that lost rows
    incomplete, printing the command that restores each: `psystats score`
    resumes a psystats run; an imported run whose source file is still there
    unchanged is re-imported in place now, else `psystats scores import FILE
    --run N` fills it.  Fits built on such runs are marked stale.

    \b
    Examples:
      psystats check
      psystats check --checksums
      psystats check --repair
    """
    from psystats.warehouse import integrity
    from psystats.warehouse.staleness import stale_notes

    con = open_db(db, "write" if repair else "read", verify=False)
    problems = integrity.check(con, checksums=checksums)
    for p in problems:
        click.echo(f"{p.kind}: {p.line()}")
    if not repair:
        if problems:
            raise click.ClickException(
                f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found: "
                "`psystats check --repair` sets aside what cannot be trusted and says how "
                "to restore it"
            )
        click.echo("warehouse consistent: every recorded file and count checked")
        return
    if not problems:
        click.echo("warehouse consistent: nothing to repair")
        return
    done = integrity.repair(con, problems)
    for line in done.actions:
        click.echo(f"repaired: {line}")
    for line in _reimport(con, done.runs_lost_rows):
        click.echo(f"repaired: {line}")
    for note in stale_notes(con):
        click.echo(f"todo: {note}")
    left = integrity.check(con, checksums=False)
    if left:
        raise click.ClickException(
            f"{len(left)} problem(s) remain after the repair: {left[0].kind}: {left[0].line()}"
        )
    click.echo(
        "warehouse consistent" + (f"; set aside under {done.quarantine}" if done.quarantine else "")
    )


def _reimport(con, runs: dict[int, int]) -> list[str]:
    """Re-import, in place, each imported run that lost rows and whose source file is
    still there with the bytes it was imported from."""
    from psystats.scoring.importer import import_scores
    from psystats.warehouse.hashing import file_sha256

    out = []
    for run_id in sorted(runs):
        rows = con.execute(
            "SELECT model, scorer, settings FROM score_runs WHERE run_id = ? "
            "AND scorer <> 'psystats'",
            [run_id],
        ).fetchall()
        if not rows:
            continue
        model, _scorer, settings = rows[0]
        s = json.loads(settings or "{}")
        source = Path(str(s.get("source_file", "")))
        if not source.is_file() or file_sha256(source) != s.get("content_sha256"):
            continue
        options = s.get("options_file")
        r = import_scores(
            con,
            source,
            model=model,
            unit=s.get("unit", "nats"),
            run=run_id,
            options=options if options and Path(options).is_file() else None,
        )
        out.append(
            f"re-imported {r.n_rows} rows of score run {run_id} from {source}"
            + (f"; it still lacks {r.still_missing[0]}" if r.still_missing else "")
        )
    return out
