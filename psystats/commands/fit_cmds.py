"""``psystats fit ...`` (hierarchical Bayesian fits) and ``psystats export cells``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import db_option, friendly_errors, open_db, output_option, print_rows
from .fit_options import sampling_options, selection_options
from .fit_output import print_params, run_fit_command
from .option_types import FILE, ID, SEED, at_least


@click.group()
def fit() -> None:
    """Fit hierarchical Bayesian models to the scores in the warehouse.

    Each fit is stored in the `fits` and `fit_params` tables and as a NetCDF
    file (`<db>.fits/fit-<id>.nc`) holding the whole posterior.
    """


@fit.command("effects")
@db_option
@selection_options("models", "experiments")
@click.option(
    "--scale",
    type=click.Choice(["nats", "standardised"]),
    default=None,
    help="nats per response (default) or standardised by the pooled participant SD.",
)
@click.option(
    "--generation-scale",
    type=click.Choice(["rank", "number", "date"]),
    default=None,
    help="Generation steps: rank within family (default; one step per successive "
    "generation), the version number (generation_order) or the release date (years; "
    "models.release_date, refused while a pair's model has none).",
)
@click.option(
    "--spec",
    "spec",
    type=FILE,
    default=None,
    help="Model specification (TOML, YAML or JSON): terms, priors, parameterization.",
)
@click.option(
    "--no-term",
    "no_terms",
    multiple=True,
    help="Leave a term out: type, family, size, generation, generation_family, domain, "
    "type_domain, experiment, pair (repeatable).",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Refit without type x domain (or each --compare-without term) and compare by PSIS-LOO.",
)
@click.option(
    "--compare-without",
    "compare_without",
    multiple=True,
    help="Refit without this term and compare by PSIS-LOO (repeatable; replaces the default "
    "type_domain comparison).",
)
@click.option(
    "--checks/--no-checks",
    default=True,
    show_default=True,
    help="Run the posterior predictive check and PSIS-LOO.",
)
@sampling_options
@friendly_errors
def effects(db, **options):
    """Post-training effects by type, family, size, generation and domain.

    Pairs each post-trained model with its registered base on the same
    responses, aggregates per-participant differences to (pair, experiment)
    cells and fits the hierarchical model of docs/model.md.  Exits non-zero
    if R-hat > 1.01, ESS < 400 or any divergence (unless
    --allow-diagnostics-failure).

    \b
    Examples:
      psystats fit effects
      psystats fit effects --post-condition chat --base-condition plain
      psystats fit effects --scale standardised --spec my_priors.toml
      psystats fit effects --model qwen3-8b --no-term generation --draws 2000
      psystats fit effects --compare-without experiment --compare-without pair
      psystats fit effects --generation-scale number
      psystats fit effects --generation-scale date
    """
    result, con = run_fit_command("effects", db, **options)
    print_params(
        con,
        result.fit_id,
        ["intercept", "type_mean", "size_slope", "generation_slope", "domain"],
    )


@fit.command("compare")
@db_option
@click.argument("fit_ids", nargs=-1, type=ID, required=True)
@click.option(
    "--kfold",
    type=at_least(2),
    default=None,
    help="Compare by K-fold cross-validation instead of PSIS-LOO: refit every fit K times, "
    "each without one fold of observations (effects and formula fits).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the K-fold folds.")
@click.option(
    "--include-failed",
    is_flag=True,
    help="Compare fits that missed their diagnostic gates too (marked FAILED).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly_errors
def compare(db, fit_ids, kfold, seed, include_failed, fmt):
    """Compare stored fits of the same data by PSIS-LOO (arviz.compare) or K-fold.

    Any kind of fit qualifies if it ran its checks (it stores its pointwise
    LOO in its NetCDF); the fits must have seen the same observations, e.g.
    `fit effects` with and without a term or with other priors, or an
    effects fit and a `fit formula` fit of the same cells (matched cell by
    cell).  Otherwise the error says what differs.  A fit that missed its
    diagnostic gates is refused (or, with --include-failed, marked FAILED).
    Prints, best first: gates, method, ELPD with its SE, the effective
    number of parameters p, the ELPD difference to the best fit and its SE
    (from the pointwise differences), the stacking weight and how many
    observations have Pareto k > 0.7 and > 1.  Notes below the table say
    what the weights mean, which differences are not decisive, and, when
    Pareto k is high, the remedy: --kfold K refits each fit K times (effects
    and formula fits) and computes the held-out log predictive densities
    exactly.

    \b
    Examples:
      psystats fit effects && psystats fit effects --no-term type_domain
      psystats fit compare 1 2
      psystats fit compare 1 2 --kfold 10
      psystats fit formula "mean ~ type + (1|experiment)" && psystats fit compare 1 3
    """
    from psystats.stats.compare import compare_fits

    # The refits take minutes: hold the file per statement only.
    con = open_db(db, "statement" if kfold else "read")
    table = compare_fits(con, fit_ids, kfold=kfold, seed=seed, include_failed=include_failed)
    # One header for PSIS-LOO and K-fold values; the method column says which.
    table = table.rename(
        columns={"elpd_loo": "elpd", "p_loo": "p", "elpd_kfold": "elpd", "p_kfold": "p"}
    )
    cols = ["fit", "kind", "gates", "method", "rank", "elpd", "se", "p", "elpd_diff", "dse"]
    cols += ["weight", "k>0.7", "k>1"]
    rows = [
        [r[c] if not isinstance(r[c], float) or fmt != "table" else round(r[c], 2) for c in cols]
        for r in table.to_dict("records")
    ]
    print_rows(cols, rows, fmt)
    for note in table.attrs.get("notes") or []:
        click.echo(f"note: {note}", err=fmt != "table")


@click.group()
def export() -> None:
    """Export analysis tables."""


@export.command("cells")
@db_option
@output_option("Output file: .parquet or .csv.")
@selection_options("models", "experiments")
@friendly_errors
def cells(db, output, selection):
    """Write the (pair, experiment) cell table the effects model fits.

    One row per cell: pair and model metadata, n participants, mean and
    variance of the paired per-participant difference (nats per response),
    each model's participant SD, and y/se on both scales (y_nats, se_nats,
    y_std, se_std).

    \b
    Examples:
      psystats export cells -o cells.parquet
      psystats export cells -o cells.csv --post-condition chat --base-condition plain
    """
    from psystats.stats.cells import build_cells, with_scale

    out = Path(output)
    if out.suffix not in (".parquet", ".csv"):
        raise click.BadParameter("the output must end in .parquet or .csv", param_hint="-o")
    from psystats.warehouse.outputs import check_target

    check_target(out)  # before the work: a bad -o fails at once
    con = open_db(db, "read")
    try:
        selection.check_names(con, conditions=[selection.post, selection.base])
        df = build_cells(
            con,
            post_condition=selection.post,
            base_condition=selection.base,
            models=selection.only("models"),
            experiments=selection.only("experiments"),
        )
    finally:
        con.close()
    nats, std = with_scale(df, "nats"), with_scale(df, "standardised")
    df["y_nats"], df["se_nats"] = nats["y"], nats["se"]
    df["y_std"], df["se_std"] = std["y"], std["se"]
    from psystats.warehouse.outputs import atomic_output

    with atomic_output(out) as tmp:  # regular files only; never half-written
        if out.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    click.echo(f"wrote {len(df)} cells to {out}")


# The focused analyses live in their own module (generations, persona, accuracy).
from .fit_analyses_cmds import accuracy, generations, participants, persona  # noqa: E402

fit.add_command(generations)
fit.add_command(persona)
fit.add_command(accuracy)
fit.add_command(participants)

# Any Bambi formula over the cells, and predictions from it (psystats/commands/formula_cmds.py).
from .formula_cmds import formula, predict  # noqa: E402

fit.add_command(formula)
fit.add_command(predict)
