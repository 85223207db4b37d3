"""`psystats init | ingest | summary | sql`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from psystats.warehouse import domains as domain_map
from psystats.warehouse.sql import transaction
from psystats.warehouse.summary import summary_rows
from psystats.warehouse.validators import IntIn

from .common import db_option, db_path, friendly_errors, open_db, print_rows
from .option_types import FILE, FOLDER, Checked

if TYPE_CHECKING:
    from psystats.warehouse.ingest import FileResult

FORMATS = click.Choice(["table", "csv", "json"])
MAX_SQL_FILE_CHARS = 10_000_000  # a script longer than this is not SQL a person wrote


@click.command()
@db_option
@click.option(
    "--scores-layout",
    type=click.Choice(["duckdb", "parquet"]),
    help="Where score rows live: inside the DuckDB file (the default), or as Parquet "
    "files, one folder per scoring run, read through views (for billions of rows on "
    "shared storage).  Chosen when the warehouse is created (it must hold no scores).",
)
@click.option(
    "--scores-dir",
    type=FOLDER,
    help="Folder of the Parquet scores (default: <warehouse>.scores next to the file).  "
    "On a Parquet warehouse whose scores folder was moved: its new place.",
)
@friendly_errors
def init(db: str | None, scores_layout: str | None, scores_dir: str | None) -> None:
    """Create the warehouse file (or migrate an old one) and load the default domain map.

    Other commands create the file on first use too; `init` is for making it
    explicitly, or for upgrading a warehouse written by an older psystats
    (read-only commands never upgrade a file themselves).  After moving a
    warehouse with its scores folder, `init` re-points the views to it.

    \b
    Examples:
      psystats init
      psystats --db /data/psych201.duckdb init
      PSYSTATS_DB=psych.duckdb psystats init
      psystats --db big.duckdb init --scores-layout parquet
      psystats --db big.duckdb init --scores-layout parquet --scores-dir /shared/psych/scores
      psystats --db big.duckdb init --scores-dir /new/place/scores   # after moving it
    """
    from psystats.warehouse import parquet_layout
    from psystats.warehouse.errors import WarehouseError

    con = open_db(db, "write", create=True)
    with transaction(con):
        domain_map.ensure_builtin(con)
    current = parquet_layout.layout(con)
    if scores_layout == "duckdb" and current == "parquet":
        raise WarehouseError(
            f"{db_path(db)} keeps its scores as Parquet files "
            f"({parquet_layout.scores_root(con)}); a warehouse's scores layout cannot be "
            "changed back: create a new warehouse for the DuckDB-file layout"
        )
    if scores_dir is not None and scores_layout is None and current != "parquet":
        raise WarehouseError("--scores-dir is for the Parquet layout: add --scores-layout parquet")
    if scores_layout == "parquet" or (scores_dir is not None and current == "parquet"):
        root = parquet_layout.enable(con, scores_dir)
        click.echo(f"warehouse ready: {db_path(db)} (scores: Parquet files under {root})")
        return
    click.echo(f"warehouse ready: {db_path(db)}")


@click.command()
@click.argument("paths", nargs=-1, required=False, type=click.Path(exists=True))
@db_option
@click.option(
    "--study", help="Study name for a single file (default: its folder, as Psych-201 names them)."
)
@click.option(
    "--domains",
    "domains_file",
    type=FILE,
    help="Experiment->domain mapping CSV (experiment_domains.csv format); "
    "overrides the shipped mapping for the keys it lists.",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Ingest the good lines and write rejected ones to --rejects instead of stopping "
    "(a file that cannot be read at all is rejected whole).",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    default="psystats-rejects.jsonl",
    show_default=True,
    help="Where --skip-bad writes one JSON object per rejected line with the keys file, "
    "line, field and message (the line's content is not copied: find it by file and line).",
)
@click.option(
    "--replace-changed",
    is_flag=True,
    help="Replace participants whose content changed (their old scores are deleted; the "
    "runs that scored them become incomplete: `psystats score` re-scores just them, "
    "`psystats scores import FILE --run N` fills an imported run). Default: keep the old "
    "content and report the change.  A file whose bytes were ingested before is skipped "
    "unless --force.",
)
@click.option(
    "--force", is_flag=True, help="Re-read files even if their bytes were ingested before."
)
@click.option(
    "--max-line-mib",
    type=Checked(IntIn(1, 1 << 20), "MIB"),
    default=64,
    show_default=True,
    help="Longest line (or Parquet transcript) accepted, in MiB; checked while reading, "
    "so a longer line is refused without being held in memory.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print only the final totals (and warnings): no progress, no line per file.",
)
@friendly_errors
def ingest(
    paths: tuple[str, ...],
    db: str | None,
    study: str | None,
    domains_file: str | None,
    skip_bad: bool,
    rejects: str,
    replace_changed: bool,
    force: bool,
    max_line_mib: int,
    quiet: bool,
) -> None:
    """Ingest Psych-101/201 studies into the warehouse.

    PATHS may be prompts.jsonl files, zips holding one jsonl (prompts.jsonl.zip),
    Parquet files with the same columns, a study folder, or a folder of study
    folders laid out as Psych-201 is (the study is the folder name).

    Each file is one transaction: a bad line stops the command with its file,
    line and field, and that file leaves no trace (earlier files stay).
    Ingesting the same content again adds nothing.  RTs and numbers may
    be JSON numbers or numeric strings, and there null, "", "NA", "nan",
    "None" mean missing (docs/warehouse.md, "Normalisation").  Files beside
    study folders that are not studies are reported as warnings.

    Progress goes to stderr: participants read out of the lines the files
    hold (and their responses), with rate and time left, advancing within
    each file; a bar on a terminal, plain lines in a log; -q silences it.

    \b
    Examples:
      psystats ingest ../shared/data/psych201
      psystats ingest --domains experiment_domains.csv my_study/prompts.jsonl
      psystats ingest --skip-bad --rejects rejects.jsonl messy_study/
      psystats ingest --replace-changed --force my_study/prompts.jsonl
    """
    from psystats.warehouse.ingest import ingest_paths
    from psystats.warehouse.sources import discover_all

    if not paths and not domains_file:
        raise click.UsageError("give PATHS to ingest, or --domains FILE to load a mapping")
    if skip_bad:  # a bad --rejects target fails now, not after the ingest
        from psystats.warehouse.outputs import check_target

        check_target(rejects)
    if paths:  # a path holding no study fails here, before a new warehouse file is made
        discover_all(list(paths), study)
    # Per statement: files are read and staged without holding the warehouse, which is
    # held only for each file's short write transaction (readers wait at most that long).
    con = open_db(db, "statement", create=True)
    if domains_file:
        with transaction(con):
            domain_map.ensure_builtin(con)
            n = domain_map.load_mapping(con, domains_file)
            domain_map.resolve(con)
        click.echo(f"loaded domain mapping for {n} experiments from {domains_file}")
    if not paths:
        return
    from psystats.warehouse.progress import progress

    bar = progress("ingesting", None, "participants", quiet=quiet)
    results = ingest_paths(
        con,
        paths,
        study=study,
        skip_bad=skip_bad,
        replace_changed=replace_changed,
        force=force,
        max_line_bytes=max_line_mib << 20,
        on_file=lambda r: _report_file(r, replace_changed, quiet, bar.say),
        on_warning=lambda w: click.echo(f"warning: {w}", err=True),
        progress=bar,
    )
    rejected = [rej for r in results for rej in r.rejected]
    if rejected:
        from psystats.warehouse.outputs import atomic_output

        with atomic_output(rejects) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for rej in rejected:
                f.write(json.dumps(rej.__dict__) + "\n")
        click.echo(f"{_plural(len(rejected), 'rejected line')} written to {rejects}", err=True)
    added_p = sum(r.participants_added for r in results)
    added_r = sum(r.responses_added for r in results)
    replaced = sum(r.participants_replaced for r in results)
    kept = sum(r.participants_changed - r.participants_replaced for r in results)
    click.echo(
        f"ingested {_plural(len(results), 'file')}: +{added_p} participants, +{added_r} responses"
        + (f", {_plural(replaced, 'participant')} replaced" if replaced else "")
        + (f", {_plural(kept, 'changed participant')} reported (kept old)" if kept else "")
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _report_file(
    r: FileResult, replace_changed: bool, quiet: bool, say: Callable[[str], None]
) -> None:
    """One line per file on stderr through ``say`` (above a live progress bar); warnings
    even with --quiet."""
    if r.negative_rt_lines:
        lines = ", ".join(map(str, r.negative_rt_lines[:5]))
        more = " ..." if len(r.negative_rt_lines) > 5 else ""
        click.echo(
            f"warning: {r.source}: negative RTs stored as given on "
            f"{_plural(len(r.negative_rt_lines), 'line')} ({lines}{more}); check the RT column",
            err=True,
        )
    if quiet:
        return
    if r.status == "skipped-same-content":
        hint = (
            f"; its bytes were ingested before (ingest {r.ingested_before}), so "
            "--replace-changed compares nothing: add --force to read it again and replace "
            "the participants that changed"
            if replace_changed
            else ""
        )
        say(f"{r.study}: unchanged since last ingest ({r.source}){hint}")
        return
    if r.status == "rejected":
        say(f"{r.study}: whole file rejected: {r.rejected[0].message}")
        return
    extra = []
    if r.participants_unchanged:
        extra.append(f"{r.participants_unchanged} already present")
    kept = r.participants_changed - r.participants_replaced
    if kept:
        extra.append(f"{kept} CHANGED (kept old; see ingest_conflicts)")
    if r.rejected:
        extra.append(f"{len(r.rejected)} rejected")
    if r.runs_marked_incomplete or r.fits_marked_stale:
        extra.append(
            f"{r.runs_marked_incomplete} score runs now incomplete, "
            f"{r.fits_marked_stale} fits stale: see `psystats summary`"
        )
    replaced = (
        f", {_plural(r.participants_replaced, 'participant')} replaced "
        f"({r.responses_replaced} responses)"
        if r.participants_replaced
        else ""
    )
    say(
        f"{r.study}: +{r.participants_added} participants, +{r.responses_added} "
        f"responses{replaced} in {r.seconds:.1f}s" + (f" ({'; '.join(extra)})" if extra else "")
    )


@click.command()
@db_option
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option(
    "--by",
    type=click.Choice(["all", "study", "model"]),
    default="all",
    show_default=True,
    help="study: counts per study; model: scored runs per model and condition; "
    "all: both tables (with --format csv/json: the study table).",
)
@friendly_errors
def summary(db: str | None, fmt: str, by: str) -> None:
    """What the warehouse holds: per study, then scored runs per model.

    Per study: experiments, domains, participants, responses and how many
    participants report an age.  Per model and condition: complete,
    incomplete (they lost rows: a replaced participant, a repaired file) and
    unfinished (running or failed) scoring runs, the responses the complete
    and incomplete runs hold, the newest run id, and for runs of a seeded
    sample (score --participants / --sample) the sample, on rows of their
    own.  Incomplete runs, stale fits and damaged score files (`psystats
    check`) are listed as warnings on stderr, each with the command that
    restores it.

    \b
    Examples:
      psystats summary
      psystats summary --by model
      psystats --db psych.duckdb summary --by study --format csv > studies.csv
    """
    from psystats.warehouse.integrity import damage_message, quick_scan
    from psystats.warehouse.staleness import stale_notes
    from psystats.warehouse.summary import model_run_rows

    if by == "all" and fmt != "table":
        by = "study"  # one machine-readable table per call
    con = open_db(db, "read")
    if by in ("all", "study"):
        cols, rows = summary_rows(con)
        print_rows(cols, rows, fmt)
    if by in ("all", "model"):
        cols, rows = model_run_rows(con)
        if by == "all":
            click.echo("")
            click.echo("Scored runs per model" if rows else "No scored runs yet (psystats score).")
        if rows or by == "model":
            print_rows(cols, rows, fmt)
    # Runs and fits invalidated by `ingest --replace-changed` (stderr: the
    # table on stdout stays machine-readable).
    for note in stale_notes(con):
        click.echo(f"warning: {note}", err=True)
    damage = quick_scan(con)
    if damage:
        click.echo(f"warning: {damage_message(damage)}", err=True)


@click.command()
@click.argument("query", required=False)
@db_option
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option(
    "--file",
    "-f",
    "query_file",
    type=click.File("r"),
    help="Read the SQL from a file ('-' for stdin).",
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    help="Bound parameter for a '?' placeholder (repeatable, in order).",
)
@click.option(
    "--write",
    is_flag=True,
    help="Open the warehouse writable (default read-only). Still no access to other files.",
)
@click.option(
    "--allow-external",
    is_flag=True,
    help="Let the query read and write other files and databases (read_csv, COPY TO, "
    "ATTACH) and load extensions. Off by default: only this warehouse is reachable.",
)
@friendly_errors
def sql(
    query: str | None,
    db: str | None,
    fmt: str,
    query_file,
    params: tuple[str, ...],
    write: bool,
    allow_external: bool,
) -> None:
    """Run a SQL QUERY against the warehouse and print the result.

    Sandboxed by default: the warehouse is opened read-only and the query
    cannot reach anything else (no ATTACH, COPY ... TO, read_csv/read_parquet
    of other files, INSTALL/LOAD, and no SET that would undo this).  --write
    allows changes to this warehouse; --allow-external allows other files.
    A read-only query never changes the file, not even to upgrade its schema.

    \b
    Examples:
      psystats sql "SELECT experiment, count(*) FROM responses GROUP BY 1"
      psystats sql "SELECT * FROM participants WHERE study = ?" -p franke2024bayesian
      psystats sql --write "DELETE FROM ingest_conflicts"
      psystats sql --allow-external "COPY (SELECT * FROM experiments) TO 'experiments.csv'"
    """
    if query_file is not None:
        # Bounded: `--file /dev/zero` or a huge file is refused, not read into memory.
        query = query_file.read(MAX_SQL_FILE_CHARS + 1)
        if len(query) > MAX_SQL_FILE_CHARS:
            raise click.UsageError(
                f"the file given with --file holds more than {MAX_SQL_FILE_CHARS:,} characters"
            )
    if query is None:
        raise click.UsageError("give a QUERY or --file")
    if not query.replace(";", " ").strip():
        where = "the file given with --file" if query_file is not None else "QUERY"
        raise click.UsageError(f"{where} holds no SQL statement")
    con = open_db(db, "write" if write else "read", sandbox=not allow_external)
    try:
        cur = con.execute(query, list(params) if params else None)
    except Exception as e:  # duckdb's errors are precise; show them as they are
        raise click.ClickException(_sql_error(str(e), write, allow_external)) from None
    if cur is None or cur.description is None:
        return
    cols = [d[0] for d in cur.description]
    print_rows(cols, cur.fetchall(), fmt)


def _sql_error(message: str, write: bool, allow_external: bool) -> str:
    """:func:`_sql_message` on one line: DuckDB's "LINE 1: ..." context kept, its caret
    line (which points into a line no longer shown above it) dropped."""
    lines = _sql_message(message, write, allow_external).splitlines()
    return " ".join(x.strip() for x in lines if x.strip() and set(x.strip()) != {"^"})


def _sql_message(message: str, write: bool, allow_external: bool) -> str:
    """DuckDB's message, plus which flag would allow what the sandbox refused."""
    low = message.lower()
    if "out of memory" in low:
        # DuckDB's own advice (SET threads, SET memory_limit) is refused by the sandbox.
        first = message.strip().splitlines()[0]
        return (
            f"{first}\n(give the query more memory with `psystats --memory-limit 4GB sql ...`, "
            "or spill to a folder with free space with --temp-dir DIR; a smaller result or "
            "an aggregate needs less)"
        )
    if "`psystats check --repair`" in message:  # a damaged Parquet score file
        return message.strip().splitlines()[0].removeprefix("Invalid Input Error: ")
    if not allow_external and (
        "disabled by configuration" in low
        or "disabled through configuration" in low
        or "configuration has been locked" in low
        or ("but it exists in the" in low and "extension" in low)
    ):
        return (
            f"{message.strip()}\n(psystats sql reaches only this warehouse; "
            "--allow-external lets a query use other files, databases and extensions)"
        )
    if not write and "read-only mode" in low:
        return f"{message.strip()}\n(the warehouse is opened read-only; --write allows changes)"
    return message
