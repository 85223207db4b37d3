"""`psystats scores import | export`: scores from and for other tools."""

from __future__ import annotations

import click

from psystats.scoring.naming import POST_TRAINING_TYPES

from .common import db_option, friendly_errors, open_db, output_option
from .option_types import FILE, ID, POSITIVE


@click.group()
def scores() -> None:
    """Import an external scorer's per-response NLLs, or export a run's scores."""


@scores.command("import")
@click.argument("file", type=FILE)
@click.option(
    "--model",
    help="Model name the scores belong to (registered with no source if new); "
    "required unless --run.",
)
@db_option
@click.option(
    "--condition",
    default="imported",
    show_default=True,
    help="Condition recorded for the run (plain, chat, persona, imported, ...).",
)
@click.option("--scorer", help="Who produced the scores [default: the model name].")
@click.option(
    "--unit",
    type=click.Choice(["nats", "bits", "log10"]),
    default="nats",
    show_default=True,
    help="Unit of nll/first_token_nll/first_token_entropy; stored as nats.",
)
@click.option(
    "--type",
    "post_training",
    type=click.Choice(POST_TRAINING_TYPES),
    help="Post-training type when the model is new [default: inferred from the name].",
)
@click.option("--force", is_flag=True, help="Import again even if this file was imported before.")
@click.option(
    "--options",
    "options",
    type=FILE,
    help="Option scores of the same run (.parquet/.csv/.tsv): key, option, logprob; "
    "one row per response and option (for `psystats fit accuracy`).",
)
@click.option(
    "--run",
    "run_id",
    type=POSITIVE,
    help="Fill this incomplete imported run in place (after `ingest --replace-changed` "
    "replaced responses it had scored): FILE's rows for responses the run lacks are added, "
    "rows it holds are skipped; model, condition and scorer are the run's.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress on stderr (otherwise: score rows read, rate and time left).",
)
@friendly_errors
def import_(
    file: str,
    model: str | None,
    db: str | None,
    condition: str,
    scorer: str | None,
    unit: str,
    post_training: str | None,
    force: bool,
    options: str | None,
    run_id: int | None,
    quiet: bool,
) -> None:
    """Import per-response scores from FILE (.parquet, .csv or .tsv).

    Columns: a key (response_id, or participant + response_index + study
    and/or experiment) and nll, the negative log-likelihood of the whole
    response (or logprob = -nll); optional n_tokens, first_token_nll,
    top1_all, top1_first, first_token_entropy.  Every row must be a distinct
    response of the warehouse with finite values; otherwise the error names
    the line and field and nothing is written.

    With --run N, FILE fills the incomplete imported run N instead of making a
    new run: after `psystats ingest --replace-changed` replaced participants
    the run had scored, FILE holds the scorer's scores of their new
    responses (it may hold more: rows the run already has are skipped).
    The run is complete again once no replaced response lacks a score;
    `psystats summary` says what it still lacks.

    With --options, a second file gives the run's option scores for
    discrete-choice responses: the same key, option (the option's text) and
    logprob (<= 0), one row per response and option; each response must be
    in FILE, and its options are stored renormalised (option_scores).

    The file is streamed in record batches (memory does not grow with it;
    see --memory-limit/--temp-dir of `psystats`), and the warehouse is held
    only per checking query and for the final commit: other commands can
    read and write it meanwhile.  Progress (score rows read out of the
    file's rows, rate, time left) goes to stderr: a bar on a terminal, plain
    lines in a log; -q silences it.

    \b
    Examples:
      psystats scores import results.parquet --model my-cognitive-model --type other
      psystats scores import lm.csv --model Qwen/Qwen2.5-7B --condition plain --unit bits
      psystats scores import lm.parquet --options lm-options.parquet --model my-lm
      psystats scores import rescored.csv --run 7
    """
    from psystats.scoring.importer import import_scores
    from psystats.warehouse.progress import progress

    # The file is checked while other processes may read and write the warehouse;
    # it is held for writing only while the run and its scores are committed.
    if model is None and run_id is None:
        raise click.UsageError("give --model (the model the scores belong to), or --run N")
    con = open_db(db, "statement")
    r = import_scores(
        con,
        file,
        model=model,
        condition=condition,
        scorer=scorer,
        unit=unit,
        post_training=post_training,
        force=force,
        options=options,
        run=run_id,
        progress=progress("importing", None, "score rows", quiet=quiet),
    )
    if r.still_missing is not None:
        state = (
            "complete again"
            if not r.still_missing
            else f"still incomplete: it lacks {'; '.join(r.still_missing[:3])}"
        )
        click.echo(
            f"added {r.n_rows} scores to run {r.run_id} ({r.rows_present} it already held "
            f"skipped); run {r.run_id} is {state}"
        )
        return
    if r.already_imported:
        click.echo(
            f"{file} was imported before as run {r.run_id} ({r.n_rows} scores); "
            f"nothing to do (--force imports it again)"
        )
        return
    if r.model_registered:
        click.echo(
            f"registered model {model} (no source; see `psystats models show {model}`)", err=True
        )
    if r.ignored_columns:
        click.echo(f"ignored columns: {', '.join(r.ignored_columns)}", err=True)
    if "n_tokens" in r.missing_optional:
        click.echo("note: no n_tokens column; n_tokens is stored empty (NULL)", err=True)
    click.echo(
        f"imported {r.n_rows} scores as run {r.run_id} (model {model}, condition {condition})"
        + (f" with {r.n_options} option scores" if options else "")
    )


@scores.command("export")
@db_option
@click.option("--run", "run_id", type=ID, help="The score run to export.")
@click.option("--model", help="Export this model's newest complete run of each condition.")
@click.option("--condition", help="With --model: only this condition.")
@output_option("Output file (.parquet or .csv).", dest="out")
@click.option(
    "--level",
    type=click.Choice(["response", "token", "word"]),
    default="response",
    show_default=True,
    help="One row per response (scores), per token (token_scores) or per word (word_scores).",
)
@friendly_errors
def export(
    db: str | None,
    run_id: int | None,
    model: str | None,
    condition: str | None,
    out: str,
    level: str,
) -> None:
    """Write scores joined with study, experiment, participant and response_index.

    The response level imports back unchanged with `psystats scores import`.
    --level token writes token_scores (log-probability, and entropy and rank
    when the run was scored with --entropy / --rank); --level word writes
    word_scores (runs scored with --word-level; columns in docs/scoring.md).
    The output must be a regular file (or new); it is written under a
    temporary name and renamed, so it is never half-written.

    \b
    Examples:
      psystats scores export --run 3 -o run3.parquet
      psystats scores export --model Qwen/Qwen3-8B --condition chat -o qwen3-chat.csv
      psystats scores export --run 3 --level word -o run3-words.csv
      psystats scores export --run 3 --level token -o run3-tokens.parquet
    """
    from psystats.scoring.importer import export_runs, export_scores

    if condition and not model:
        raise click.UsageError("--condition needs --model")
    from psystats.warehouse.outputs import atomic_output, check_target

    check_target(out)  # before the work: a bad -o fails at once
    con = open_db(db, "read")
    if condition:  # a misspelt condition: "did you mean", not "no complete run"
        from psystats.warehouse.names import check_names

        check_names(con, "condition", [condition])
    if level == "response":
        with atomic_output(out) as tmp:
            runs, n = export_scores(con, tmp, run_id=run_id, model=model, condition=condition)
    else:
        from psystats.scoring.export_levels import export_level

        runs = export_runs(con, run_id=run_id, model=model, condition=condition)
        with atomic_output(out) as tmp:
            n = export_level(con, tmp, runs, level)
    what = "scores" if level == "response" else f"{level} scores"
    click.echo(
        f"wrote {n} {what} from run{'s' if len(runs) > 1 else ''} "
        f"{', '.join(map(str, runs))} to {out}"
    )
