"""``psystats fit formula`` (any Bambi formula over the cells) and ``psystats fit predict``.

Thin layers over :mod:`psystats.api` / :mod:`psystats.stats.formula`; both
are attached to the ``fit`` group in ``fit_cmds``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from .common import db_option, friendly_errors, open_db, print_rows
from .sampling_options import sampling_options


def _load_priors(text: str | None) -> dict | None:
    """--priors: JSON text, or a .json/.toml/.yaml file of {term: {dist: ..., ...}}."""
    if not text:
        return None
    p = Path(text)
    if p.suffix.lower() in (".json", ".toml", ".yaml", ".yml") and p.exists():
        raw = p.read_text()
        if p.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(raw)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(raw)
        return json.loads(raw)
    try:
        return json.loads(text)
    except ValueError:
        raise click.BadParameter(
            'give JSON like \'{"type": {"dist": "Normal", "mu": 0, "sigma": 1}}\' or a '
            ".json/.toml/.yaml file",
            param_hint="--priors",
        ) from None


@click.command("formula")
@click.argument("formula")
@db_option
@click.option("--condition", default="plain", show_default=True, help="Condition of both models.")
@click.option("--post-condition", default=None, help="Condition of the post-trained models.")
@click.option("--base-condition", default=None, help="Condition of the base models.")
@click.option("--model", "models", multiple=True, help="Only pairs with this model (repeatable).")
@click.option(
    "--experiment", "experiments", multiple=True, help="Only this experiment (repeatable)."
)
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
@click.option("--no-checks", is_flag=True, help="Skip the posterior predictive check and LOO.")
@sampling_options
@friendly_errors
def formula(
    formula,
    db,
    condition,
    post_condition,
    base_condition,
    models,
    experiments,
    scale,
    priors,
    no_checks,
    draws,
    tune,
    chains,
    seed,
    sampler,
    target_accept,
    allow_diagnostics_failure,
    name,
    netcdf_dir,
):
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
    from psystats.stats.formula import fit_formula

    logging.basicConfig(level=logging.WARNING, format="note: %(message)s")
    # Read the cells, let go of the file while sampling, write the fit in one transaction.
    con = open_db(db, "statement")
    result = fit_formula(
        con,
        formula,
        post_condition=post_condition or condition,
        base_condition=base_condition or post_condition or condition,
        models=models or None,
        experiments=experiments or None,
        scale=scale,
        priors=_load_priors(priors),
        netcdf_dir=netcdf_dir,
        name=name,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        sampler=sampler,
        target_accept=target_accept,
        allow_failure=allow_diagnostics_failure,
        checks=not no_checks,
    )
    d = result.diagnostics
    click.echo(
        f"fit {result.fit_id}: {formula} on {len(result.frame)} cells; max R-hat "
        f"{d.max_rhat:.3f}, min ESS bulk {d.min_ess_bulk:.0f} / tail {d.min_ess_tail:.0f}, "
        f"{d.divergences} divergences, "
        f"{'passed' if d.passed else 'FAILED: ' + '; '.join(d.problems)}"
    )
    cur = con.execute(
        "SELECT parameter, label, mean, q05, q95, r_hat FROM fit_params WHERE fit_id = ? "
        "ORDER BY parameter, label",
        [result.fit_id],
    )
    rows = cur.fetchall()
    print_rows([c[0] for c in cur.description], rows[:40])
    if len(rows) > 40:
        click.echo(
            f'... {len(rows) - 40} more: psystats sql "SELECT * FROM fit_params WHERE fit_id = {result.fit_id}"'
        )


@click.command("predict")
@click.argument("fit_id", type=int)
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
@click.option("--seed", default=0, show_default=True, help="Seed for the new-group draws.")
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
