"""``psystats fit formula`` (any Bambi formula over the cells) and ``psystats fit predict``.

Thin layers over :mod:`psystats.api` / :mod:`psystats.stats.formula`; both
are attached to the ``fit`` group in ``fit_cmds``.
"""

from __future__ import annotations

import click

from .common import db_option, friendly_errors, print_rows
from .fit_options import sampling_options, selection_options
from .fit_output import print_params, run_fit_command
from .option_types import ID, SEED


@click.command("formula")
@click.argument("formula")
@db_option
@selection_options("models", "experiments")
@click.option(
    "--scale",
    type=click.Choice(["nats", "standardised"]),
    default="nats",
    show_default=True,
    help="Cell values in nats per response or standardised (Cohen's d_av).",
)
@click.option(
    "--priors",
    default=None,
    help="Bambi priors as JSON or a .json/.toml/.yaml file: {term: {dist: ..., params}}; "
    "sigma defaults to HalfNormal(0.5).",
)
@click.option(
    "--checks/--no-checks",
    default=True,
    show_default=True,
    help="Run the posterior predictive check and PSIS-LOO.",
)
@sampling_options
@friendly_errors
def formula(formula, db, **options):
    """Fit any Bambi formula to the (pair, experiment) cells.

    The response is `mean`, the cell's mean post-minus-base difference; its
    standard error is a known measurement error (as brms' se()):
    mean ~ Normal(mu, sqrt(sigma^2 + se^2)).  Columns: type, family,
    generation, generation_order, log_params (centred), log_params_raw,
    domain, experiment, study, pair, post_model, base_model, n.  Stored like
    the built-in fits (kind 'formula': gates, fit_params, NetCDF).

    \b
    Examples:
      psystats fit formula "mean ~ type + log_params + (1|family) + (1|experiment)"
      psystats fit formula "mean ~ 0 + type + (1|domain)" --post-condition chat --base-condition plain
      psystats fit formula "mean ~ type * domain" --priors '{"type": {"dist": "Normal", "mu": 0, "sigma": 0.5}}'
    """
    result, con = run_fit_command("formula", db, formula=formula, **options)
    print_params(con, result.fit_id, limit=40)


@click.command("predict")
@click.argument("fit_id", type=ID)
@db_option
@click.option(
    "--new-pair",
    "new_pairs",
    multiple=True,
    required=True,
    help="Pair-level values of a new pair, e.g. type=instruct,family=llama,n_params=70e9 "
    "(repeatable).",
)
@click.option("--per-experiment", is_flag=True, help="One row per fitted experiment.")
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Seed for the new-group draws."
)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly_errors
def predict(fit_id, db, new_pairs, per_experiment, seed, fmt):
    """Predict the post-minus-base difference of a new pair from a stored formula or effects fit.

    The new pair is placed in every experiment the fit saw; levels it brings
    that the fit has not seen (the pair itself, a new family) get effects
    drawn from their fitted group distributions, Normal(0, sigma) at each
    posterior draw, so the interval includes that uncertainty.  Output:
    posterior mean, SD, 5/50/95% quantiles and P(worse) = P(difference > 0),
    averaged over experiments.  A formula fit reads the columns its formula
    uses (n_params becomes the centred log_params); an effects fit reads
    type, family, n_params and, with a generation term, generation_order (or
    release_date on the date scale).

    \b
    Examples:
      psystats fit predict 3 --new-pair type=instruct,family=llama,n_params=70e9
      psystats fit predict 3 --new-pair type=reasoning,family=newfam,n_params=8e9 --per-experiment
      psystats fit predict 1 --new-pair type=instruct,family=qwen,n_params=8e9,generation_order=3
    """
    import pandas as pd

    from psystats.api import Warehouse
    from psystats.commands.common import db_path

    wh = Warehouse(db_path(db))
    parts = []
    for text in new_pairs:
        df = wh.predict(fit_id, text, per_experiment=per_experiment, seed=seed)
        for note in dict.fromkeys(df.attrs.get("notes") or []):
            click.echo(f"note: {note}", err=True)
        df.insert(0, "new_pair", text)
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    print_rows(list(out.columns), [tuple(r) for r in out.itertuples(index=False)], fmt)
