"""``psystats merge DIR``: ingest Parquet score shards written by ``--shard I/N`` jobs or Ray."""

from __future__ import annotations

import click

from .common import db_option, friendly_errors, open_db, print_rows
from .option_types import EXISTING_FOLDER


@click.command("merge")
@click.argument("directory", type=EXISTING_FOLDER)
@db_option
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print only the summary table: no progress, no line per unit.",
)
@friendly_errors
def merge(directory: str, db: str | None, quiet: bool) -> None:
    """Merge the score shards under DIRECTORY into the warehouse.

    DIRECTORY is the --out folder given to `psystats score --shard I/N` (or
    `--engine ray`), or one of its run-<hash> folders.  Each shard is checked
    against the hashes in its manifest and against this warehouse's
    transcripts, then added in its own transaction.  Rows already present are
    skipped, so merging twice adds nothing and an interrupted merge is
    simply run again.  A run is marked complete once all N shard jobs of
    some --shard I/N array have finished.  Progress (score rows merged out
    of those the shards list, rate, time left) goes to stderr: a bar on a
    terminal, plain lines in a log; -q silences it.

    \b
    Examples:
      psystats merge shards/
      psystats --db big.duckdb merge /scratch/me/shards/run-3f2a9c0d1e4b5a6f
    """
    from psystats.scoring.shard_keys import ShardError
    from psystats.scoring.shard_merge import merge_dir
    from psystats.warehouse.progress import progress

    con = open_db(db, "write")
    bar = progress("merging", None, "score rows", quiet=quiet)

    def on_unit(unit_id: str, added: int) -> None:
        bar.say(f"merged unit {unit_id}: {added} new score rows")  # silent when quiet

    error: ShardError | None = None
    try:
        results = merge_dir(con, directory, on_unit=on_unit, progress=bar)
    except ShardError as e:
        partial = getattr(e, "results", None)
        if partial is None:
            raise
        results, error = partial, e
    rows = [
        (
            r.run_id,
            r.run_dir.rsplit("/", 1)[-1],
            r.units,
            r.rows_added,
            r.rows_skipped,
            r.shards_done or "-",
            "complete" if r.complete else "open",
        )
        for r in results
    ]
    print_rows(
        ["run_id", "folder", "units", "rows_added", "rows_present", "shard_jobs", "run"], rows
    )
    if error is not None:
        raise click.ClickException(str(error))
