"""``psystats fit generations | persona | accuracy``: the three focused analyses.

Each command reads the warehouse, builds its PyMC model (``psystats.stats``),
samples it (nutpie, 4 chains by default), applies the diagnostic gates and
stores the fit (``fits``, ``fit_params``, NetCDF).  A fit that misses its
gates exits with code 1 and stores nothing, unless
``--allow-diagnostics-failure``.
"""

from __future__ import annotations

import click

from psystats.stats.options import ANALYSIS

from .common import db_option, friendly_errors, print_rows
from .fit_options import sampling_options, selection_options, setting_option
from .fit_output import run_fit_command

MODELS_HELP = "Only these models (repeatable)."


def _fmt(x: float) -> str:
    return f"{x:+.3f}"


def _interval(d: dict) -> str:
    return f"{_fmt(d['mean'])} [{_fmt(d['q05'])}, {_fmt(d['q95'])}]"


@click.command()
@db_option
@selection_options("families", "post_training", "experiments")
@click.option(
    "--generation-scale",
    type=click.Choice(["rank", "number", "date"]),
    default="rank",
    show_default=True,
    help="Generation steps of the slopes: rank within family (one step per successive "
    "generation, as fit effects), the version number (generation_order) or the release "
    "date (years; models.release_date).",
)
@sampling_options
@friendly_errors
def generations(db, **options):
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
    result, _ = run_fit_command("generations", db, **options)
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
@selection_options("models", "experiments", persona=True, models_help=MODELS_HELP)
@click.option(
    "--scale",
    type=click.Choice(["nats", "standardised"]),
    default="nats",
    show_default=True,
    help="nats per response, or standardised by the pooled participant SD.",
)
@setting_option("--rope", ANALYSIS["rope"], "FLOAT")
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
def persona(db, **options):
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
    result, _ = run_fit_command("persona", db, **options)
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
@selection_options("models", "experiments", models_help=MODELS_HELP)
@setting_option("--folds", ANALYSIS["folds"], "INTEGER")
@click.option(
    "--calibration/--no-calibration",
    default=True,
    show_default=True,
    help="Refit on the accuracy under the temperature-calibrated option distribution.",
)
@sampling_options
@friendly_errors
def accuracy(db, **options):
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
    result, _ = run_fit_command("accuracy", db, **options)
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
    if cal and options.get("calibration", True):
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


def _g(d) -> str:
    """mean [q05, q95] to 4 significant digits (slopes per year can be small)."""
    return f"{d['mean']:+.4g} [{d['q05']:+.4g}, {d['q95']:+.4g}]"


@click.command()
@db_option
@selection_options("models", "experiments", "families", "post_training")
@click.option(
    "--outcome",
    type=click.Choice(["gap", "nll"]),
    default="gap",
    show_default=True,
    help="gap: post-trained minus base mean NLL per participant on the same responses, for "
    "each registered pair in the selection; nll: the mean NLL per participant of --model.",
)
@click.option(
    "--covariates",
    "covariates",
    multiple=True,
    help="Participant metadata keys as stored, comma-separated (age, gender, nationality, "
    "education, diagnosis, or a study's own key such as 'FACSIMILE A/D'); repeatable.",
)
@click.option(
    "--categorical",
    "categorical",
    multiple=True,
    help="Read these covariates as categories even if their values are numbers "
    "(comma-separated; repeatable).",
)
@sampling_options
@friendly_errors
def participants(db, **options):
    """Whose behaviour does post-training lose? Regress per-participant scores on metadata.

    Per participant: the post-minus-base gap in mean NLL per response (or one
    model's mean NLL with --outcome nll), regressed on the chosen covariates
    with an intercept and residual SD per (pair or model, experiment), the
    experiment intercepts partially pooled.  Numeric covariates are
    standardised (effect per SD, and per unit); categorical ones get one
    effect per level (against the average level; partially pooled with 5 or
    more levels).  A participant lacking a covariate is left out of the fit,
    counted per covariate in a note and in the stored summary.  An effect > 0
    on the gap: post-training loses more of those participants' behaviour.

    \b
    Examples:
      psystats fit participants --covariates age,gender
      psystats fit participants --covariates "FACSIMILE A/D" --type instruct
      psystats fit participants --outcome nll --model qwen3-8b --covariates age
      psystats fit participants --covariates condition --categorical condition
    """
    result, _ = run_fit_command("participants", db, **options)
    sm = result.summary
    p = sm["participants"]
    click.echo(
        f"outcome {sm['outcome']}: "
        + ("post-trained minus base" if sm["outcome"] == "gap" else "the model's")
        + f" mean NLL per response (nats); participants: {p['selected']} selected, "
        f"{p['used']} fitted, {p['left_out']} left out for a missing covariate"
    )
    # The same rows as the report's participants page.
    from psystats.reports.section_participants import covariate_rows

    rows = covariate_rows(sm)
    print_rows(
        ["covariate", "term", "effect [90%]", "unit", "P(>0)", "missing"],
        [
            (r.covariate, r.term, _g(r._asdict()), r.unit, r.p_positive, r.missing)
            for r in rows.itertuples(index=False)
        ],  # fmt: skip
    )
