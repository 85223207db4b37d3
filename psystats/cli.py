"""The ``psystats`` command line.

Each command lives in its own module under ``psystats/commands`` and is
imported only when it runs, so ``psystats --help`` and ``psystats sql`` stay
fast (torch and PyMC take seconds to import).
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

import click

from psystats.warehouse import settings
from psystats.warehouse.db import ENV_VAR, default_path
from psystats.warehouse.settings import SettingsError

# name -> (module, attribute, one-line help shown by `psystats --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("psystats.commands.warehouse_cmds", "init", "Create (or migrate) a warehouse file."),
    "ingest": (
        "psystats.commands.warehouse_cmds",
        "ingest",
        "Ingest Psych-101/201 studies (jsonl, zip, folders, Parquet).",
    ),
    "summary": (
        "psystats.commands.warehouse_cmds",
        "summary",
        "Counts per study: experiments, participants, responses, scores.",
    ),
    "sql": ("psystats.commands.warehouse_cmds", "sql", "Run SQL against the warehouse."),
    "check": (
        "psystats.commands.check_cmds",
        "check",
        "Check the warehouse against its records (like fsck); --repair what it can.",
    ),
    "models": ("psystats.commands.models_cmds", "models", "Register and edit models."),
    "score": ("psystats.commands.score_cmds", "score", "Score responses with a language model."),
    "scores": ("psystats.commands.scores_cmds", "scores", "Import or export scores."),
    "merge": (
        "psystats.commands.shard_cmds",
        "merge",
        "Merge Parquet score shards (from --shard or Ray) into the warehouse.",
    ),
    "fit": ("psystats.commands.fit_cmds", "fit", "Fit hierarchical Bayesian models."),
    "export": ("psystats.commands.fit_cmds", "export", "Export analysis tables (cells)."),
    "report": ("psystats.commands.report_cmds", "report", "The report (PDF, or interactive HTML)."),
    "plot": (
        "psystats.commands.plot_cmds",
        "plot",
        "Write one report figure (svg/png/pdf) and its data as CSV.",
    ),
    "card": ("psystats.commands.card_cmds", "card", "A model's human-fidelity card (HTML/JSON)."),
    "manifest": (
        "psystats.commands.manifest_cmds",
        "manifest",
        "Reproducibility manifest of a fit or score run.",
    ),
    "simulate": (
        "psystats.commands.simulate_cmds",
        "simulate",
        "Write a SIMULATED study with known effects; check its recovery.",
    ),
    "demo": (
        "psystats.commands.demo_cmds",
        "demo",
        "Run the whole pipeline on the embedded sample.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the short help above instead of importing every module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


def _setting(validate):
    """A click callback checking an option with the validator the environment variable
    goes through too (psystats.warehouse.settings): one rule, one message."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return None
        try:
            return validate(value)
        except SettingsError as e:
            raise click.BadParameter(f"{value!r}: {e}") from None

    return callback


@click.group(cls=LazyGroup)
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Warehouse file [env {ENV_VAR}; default psystats.duckdb].",
)
@click.option(
    "--memory-limit",
    default=None,
    metavar="SIZE",
    callback=_setting(settings.memory_limit),
    help="DuckDB memory limit, e.g. 4GB, 512MiB or 50% (of RAM); larger is faster on big "
    f"joins [env {settings.MEMORY_ENV}; default {settings.DEFAULT_MEMORY_LIMIT}].",
)
@click.option(
    "--temp-dir",
    default=None,
    metavar="DIR",
    callback=_setting(settings.temp_dir),
    help="Where DuckDB spills what exceeds the memory limit "
    f"[env {settings.TEMP_DIR_ENV}; default <db>.tmp].",
)
@click.option(
    "--lock-timeout",
    default=None,
    metavar="SECONDS",
    callback=_setting(settings.lock_timeout),
    help="How long to wait for a warehouse another process holds "
    f"[env {settings.LOCK_TIMEOUT_ENV}; default {settings.DEFAULT_LOCK_TIMEOUT:g}; "
    "0 = do not wait].",
)
@click.version_option(package_name="psystats")
@click.pass_context
def main(
    ctx: click.Context,
    db: str | None,
    memory_limit: str | None,
    temp_dir: str | None,
    lock_timeout: float | None,
) -> None:
    """psystats: how well language models predict people in psychology experiments.

    Data flow: ingest studies -> register models -> score responses -> fit
    hierarchical models -> report.  Everything lands in one DuckDB file you
    can query with `psystats sql` or any DuckDB client.
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db or default_path()
    # One validated settings object: the options over the environment variables
    # (checked alike); current for this command and exported to its workers.
    try:
        base = settings.from_env()
    except SettingsError as e:  # a bad environment: exit 1 like a bad file, not a usage error
        raise click.ClickException(str(e)) from None
    given = {
        k: v
        for k, v in (
            ("memory_limit", memory_limit),
            ("temp_dir", temp_dir),
            ("lock_timeout", lock_timeout),
        )
        if v is not None
    }
    command = f"psystats {ctx.invoked_subcommand or ''}".strip()
    if Path(sys.argv[0]).name == "psystats":  # the real command line, not a test runner's
        command = shlex.join(["psystats", *sys.argv[1:]])[:300]
    ctx.call_on_close(settings.activate(base.replace(**given, command=command)))


if __name__ == "__main__":  # pragma: no cover
    main()
