"""``psystats simulate study|check``: a SIMULATED study with known effects, and its recovery.

Used by ``psystats demo`` to fill every section of the report; the files it
writes go in through the ordinary ``models load`` and ``scores import``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.outputs import output_folder

from .common import db_option, friendly_errors, open_db, print_rows
from .option_types import FILE, SEED


@click.group()
def simulate() -> None:
    """Simulated studies with known effects (clearly labelled SIM-*)."""


@simulate.command("study")
@db_option
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for models.toml, the score files and truth.json.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@friendly_errors
def study(db, out, seed):
    """Write a SIMULATED study on the warehouse's real responses: files to import.

    Two families (SIM-qwen, SIM-llama) x two generations, each a base with an
    instruct and a reasoning model, with known effects of type, family, size,
    generation and domain on the post-minus-base NLL, known base-NLL trends
    over generations, known persona effects, known task-information gains
    (the second generation's scores without the participants' history), a
    known effect of the participants' age on the post-minus-base gap, and
    (second generation) option scores of the discrete-choice responses with
    a known accuracy gap.  Writes OUT/models.toml (`psystats models load`;
    every model is flagged as a pipeline check), one Parquet per model and
    condition (`psystats scores import --condition sim` / `sim-persona` /
    `sim-history:0`), the option files
    (`scores import ... --options`) and OUT/truth.json (`psystats simulate
    check`, `psystats report --truth`).  Nothing is written to the warehouse.

    \b
    Examples:
      psystats simulate study -o simulated/
      psystats models load simulated/models.toml
      psystats scores import simulated/SIM-qwen1-base.sim.parquet --model SIM-qwen1-base --condition sim
      psystats scores import simulated/SIM-qwen2-base.sim.parquet --options simulated/SIM-qwen2-base.sim.options.parquet --model SIM-qwen2-base --condition sim
    """
    from psystats.stats.demo_study import write_study

    con = open_db(db, "read")
    with output_folder(out) as folder:  # a failure leaves none of its files
        truth = write_study(con, folder, seed=seed)
    click.echo(
        f"wrote {len(truth['files'])} score files, models.toml and truth.json to {out} "
        "(SIMULATED data)"
    )


@simulate.command("check")
@click.argument("truth_file", type=FILE)
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly_errors
def check(truth_file, db, fmt):
    """Print each estimate of the simulated study's fits beside the truth it should recover.

    Reads the newest fit of each kind named 'SIMULATED study' (effects,
    generations, persona: prompts (sim-persona vs sim) and the task-information
    gain (sim-history:0 vs sim), accuracy, participants: the gap's effect
    of age).  `inside`: the truth lies in the
    90% interval (expect about 9 in 10 when the fits are calibrated).  The
    SIM models' known distances to the floors are on the report's floors page
    (`psystats report --truth`).

    \b
    Examples:
      psystats simulate check simulated/truth.json
    """
    truth_file = Path(truth_file)
    from psystats.stats.demo_study import compare

    try:
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WarehouseError(f"{truth_file}: not a truth file ({e})") from None
    if not isinstance(truth, dict):
        raise WarehouseError(f"{truth_file}: not a truth file (expected a JSON object)")
    con = open_db(db, "read")
    df = compare(con, truth)
    if df.empty:
        click.echo(
            "no fit of the simulated study yet: run `psystats fit effects --condition sim "
            "--name 'SIMULATED study'`"
        )
        return
    print_rows(list(df.columns), [tuple(r) for r in df.itertuples(index=False)], fmt)
    if fmt == "table":
        click.echo(f"{int(df['inside'].sum())} of {len(df)} truths inside their 90% interval")
