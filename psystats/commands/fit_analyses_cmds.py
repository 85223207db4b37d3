"""``psystats fit generations | persona | accuracy``: the three focused analyses.

Each command reads the warehouse, builds its PyMC model (``psystats.stats``),
samples it (nutpie, 4 chains by default), applies the diagnostic gates and
stores the fit (``fits``, ``fit_params``, NetCDF).  A fit that misses its
gates exits with code 1 and stores nothing, unless
``--allow-diagnostics-failure``.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from .common import db_option, friendly_errors, open_db, print_rows
from .sampling_options import sampling_options as shared_sampling_options


def sampling_options(f: Callable) -> Callable:
    """The options every ``fit`` subcommand shares (``sampling_options``) and --experiment."""
    f = click.option(
        "--experiment",
        "experiments",
        multiple=True,
        help="Only these experiments (repeatable).",
    )(f)
    return shared_sampling_options(f)


def _sampling_kwargs(kw: dict) -> dict:
    keys = (
        "draws",
        "tune",
        "chains",
        "seed",
        "sampler",
        "target_accept",
        "allow_diagnostics_failure",
        "netcdf_dir",
        "name",
        "experiments",
    )
    return {k: kw.pop(k) for k in keys}


def _check_names(con, models, experiments) -> None:
    """'no such model/experiment' (with "did you mean") before any work."""
    from psystats.warehouse.names import check_names

    check_names(con, "model", models)
    check_names(con, "experiment", experiments)


def _report(result) -> None:
    """Notes and the gate line of a ``stats.pipeline.FitResult``."""
    diag = result.diagnostics
    for note in result.notes or []:
        click.echo(f"note: {note}", err=True)
    status = "passed" if diag.passed else "FAILED (" + "; ".join(diag.problems) + ")"
    click.echo(
        f"fit {result.fit_id}: diagnostics {status}; max R-hat {diag.max_rhat:.3f}, "
        f"min ESS bulk {diag.min_ess_bulk:.0f} / tail {diag.min_ess_tail:.0f}, "
        f"{diag.divergences} divergences"
    )


def _fmt(x: float) -> str:
    return f"{x:+.3f}"


def _interval(d: dict) -> str:
    return f"{_fmt(d['mean'])} [{_fmt(d['q05'])}, {_fmt(d['q95'])}]"


@click.command()
@db_option
@click.option(
    "--condition",
    default="plain",
    show_default=True,
    help="Condition of both models' scores (plain, chat, persona, imported).",
)
@click.option(
    "--post-condition",
    default=None,
    help="Condition of the post-trained models' scores [default: --condition].",
)
@click.option(
    "--base-condition",
    default=None,
    help="Condition of the base models' scores [default: --condition].",
)
@click.option("--family", "families", multiple=True, help="Only these families (repeatable).")
@click.option(
    "--type",
    "post_training",
    multiple=True,
    help="Only post-trained models of this type (instruct, reasoning, ...; repeatable).",
)
@sampling_options
@friendly_errors
def generations(db, condition, post_condition, base_condition, families, post_training, **kw):
    """Base NLL and the post-minus-base gap across generations within each family.

    Needs, per family, base models scored in at least two generations
    (models.generation_order) and post-trained models registered with
    --base in at least two generations.  Reports per family the trend of
    base NLL and of the gap per generation step, and the posterior
    probability that the gap grows while the base NLL falls.

    \b
    Examples:
      psystats fit generations
      psystats fit generations --family qwen --type instruct
      psystats fit generations --post-condition chat --base-condition plain
    """
    from psystats.stats.generations import fit_generations

    s = _sampling_kwargs(kw)
    con = open_db(db, "statement")  # not held while sampling (mode docs: warehouse.db.open)
    try:
        _check_names(con, None, s.get("experiments"))
        result = fit_generations(
            con,
            base_condition=base_condition or condition,
            post_condition=post_condition or condition,
            families=families or None,
            post_training=post_training or None,
            **s,
        )
    finally:
        con.close()
    _report(result)
    sm = result.summary
    rows = [
        (
            f,
            _interval(sm["slopes"][f]["base_slope"]),
            _interval(sm["slopes"][f]["gap_slope"]),
            sm["p_base_falls"][f],
            sm["p_gap_grows"][f],
            sm["p_gap_grows_while_base_falls"][f],
        )
        for f in sm["slopes"]
    ]
    print_rows(
        [
            "family",
            "base slope [90%]",
            "gap slope [90%]",
            "P(base falls)",
            "P(gap grows)",
            "P(gap grows while base falls)",
        ],
        rows,
    )


@click.command()
@db_option
@click.option(
    "--persona-condition",
    default="persona",
    show_default=True,
    help="Condition of the persona scores.",
)
@click.option(
    "--plain-condition",
    default="plain",
    show_default=True,
    help="Condition compared against (use chat for chat-scored models).",
)
@click.option("--model", "models", multiple=True, help="Only these models (repeatable).")
@click.option(
    "--scale",
    type=click.Choice(["nats", "standardised"]),
    default="nats",
    show_default=True,
    help="nats per response, or standardised by the pooled participant SD.",
)
@click.option(
    "--rope",
    type=float,
    default=None,
    help="Half-width of the region of practical equivalence "
    "[default: 0.01 nats, or 0.1 SD on the standardised scale].",
)
@click.option(
    "--model-effects",
    type=click.Choice(["fixed", "random"]),
    default="fixed",
    show_default=True,
    help="fixed: the effect is the average over the scored models of each type; "
    "random: the mean of a population of models (needs several per type).",
)
@sampling_options
@friendly_errors
def persona(db, persona_condition, plain_condition, models, scale, rope, model_effects, **kw):
    """Does a persona (the participant's metadata) help the model predict them?

    Fits NLL(persona) - NLL(plain) per participant (same model, same
    responses), hierarchical over experiments and models, one effect per
    post-training type.  "No benefit" is a posterior statement: P(effect in
    ROPE), P(effect < -ROPE) (helps), P(effect > ROPE) (hurts).

    \b
    Examples:
      psystats fit persona
      psystats fit persona --plain-condition chat --rope 0.02
      psystats fit persona --scale standardised
    """
    from psystats.stats.persona import fit_persona

    s = _sampling_kwargs(kw)
    con = open_db(db, "statement")  # not held while sampling (mode docs: warehouse.db.open)
    try:
        _check_names(con, models, s.get("experiments"))
        result = fit_persona(
            con,
            persona_condition=persona_condition,
            plain_condition=plain_condition,
            models=models or None,
            scale=scale,
            rope=rope,
            model_effects=model_effects,
            **s,
        )
    finally:
        con.close()
    _report(result)
    sm = result.summary
    click.echo(f"ROPE: ±{sm['rope'][1]:g} ({sm['scale']})")
    rows = [
        (t, _interval(v), v["p_in_rope"], v["p_benefit"], v["p_harm"], v["verdict"])
        for t, v in sm["by_post_training"].items()
    ]
    print_rows(
        ["post_training", "effect [90%]", "P(in ROPE)", "P(helps)", "P(hurts)", "verdict"], rows
    )


@click.command()
@db_option
@click.option(
    "--condition",
    default="plain",
    show_default=True,
    help="Condition of both models' option scores.",
)
@click.option(
    "--post-condition",
    default=None,
    help="Condition of the post-trained models' scores [default: --condition].",
)
@click.option(
    "--base-condition",
    default=None,
    help="Condition of the base models' scores [default: --condition].",
)
@click.option("--model", "models", multiple=True, help="Only these models (repeatable).")
@click.option(
    "--folds",
    type=click.IntRange(2),
    default=5,
    show_default=True,
    help="Cross-validation folds (over participants) for the temperatures.",
)
@click.option("--no-calibration", is_flag=True, help="Skip the temperature-calibrated refit.")
@sampling_options
@friendly_errors
def accuracy(db, condition, post_condition, base_condition, models, folds, no_calibration, **kw):
    """Option-restricted top-1 accuracy, post-trained vs base, and the determinism check.

    For experiments with option sets (option_scores), fits a binomial-logit
    hierarchical model of top-1 hits (accuracy_gap, logit scale, post minus
    base).  Then fits a temperature per model and experiment on held-out
    participants (K-fold), refits on the expected accuracy when sampling
    from the calibrated option distribution (accuracy_gap_calibrated), and
    reports whether the gap survives calibration.

    \b
    Examples:
      psystats fit accuracy
      psystats fit accuracy --folds 10 --experiment "franke2024bayesian/data-raw-human.csv"
    """
    from psystats.stats.accuracy import fit_accuracy

    s = _sampling_kwargs(kw)
    con = open_db(db, "statement")  # not held while sampling (mode docs: warehouse.db.open)
    try:
        _check_names(con, models, s.get("experiments"))
        result = fit_accuracy(
            con,
            post_condition=post_condition or condition,
            base_condition=base_condition or condition,
            models=models or None,
            folds=folds,
            calibrated=not no_calibration,
            **s,
        )
    finally:
        con.close()
    _report(result)
    sm = result.summary
    rows = [
        (
            t,
            _interval(v["raw"]),
            _interval(v["calibrated"]) if "calibrated" in v else "",
            v["verdict"],
        )
        for t, v in sm["by_post_training"].items()
    ]
    print_rows(["post_training", "gap raw [90%]", "gap calibrated [90%]", "verdict"], rows)
    cal = [
        (
            c["model"],
            c["experiment"],
            c["temperature"],
            c["accuracy_top1"],
            c["accuracy_sampled"],
            c["accuracy_calibrated"],
            c["option_nll_raw"],
            c["option_nll_calibrated"],
        )
        for c in sm["calibration"]
    ]
    if cal and not no_calibration:
        print_rows(
            [
                "model",
                "experiment",
                "T",
                "acc top-1",
                "acc sampled",
                "acc calibrated",
                "option NLL",
                "option NLL calibrated",
            ],
            cal,
        )
