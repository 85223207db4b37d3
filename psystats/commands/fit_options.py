"""The option blocks of the ``psystats fit`` commands (and ``export cells``), one decorator each.

* :func:`selection_options` adds the selection options (conditions, --model,
  --experiment, --family, --type) and hands the command one
  :class:`~psystats.stats.options.Selection` as ``selection``;
* :func:`sampling_options` adds --draws ... --redraws,
  --allow-diagnostics-failure, -q/--quiet, --name and --netcdf-dir and hands the command
  ``sampling`` (:class:`~psystats.stats.options.SamplingOptions`), ``store``
  (:class:`~psystats.stats.options.StoreOptions`) and ``allow_failure``.

Defaults, help and checks come from the registry in ``psystats.stats.options``
(``option_types.Checked`` runs the registry's validator), so a value is refused as
a usage error (exit 2) before any work, with the words the notebook API uses,
and every command agrees.  The option names are the Selection and
SamplingOptions field names, which ``wh.fit`` takes as keywords.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from psystats.stats.options import (
    PERSONA_CONDITION,
    SAMPLING,
    OptionError,
    SamplingOptions,
    Selection,
    Setting,
    StoreOptions,
)
from psystats.warehouse.validators import OneOf

from .option_types import FOLDER, TEXT, Checked


def setting_option(flag: str, setting: Setting, metavar: str, **kw: Any) -> Callable:
    """A click option whose default, help and check are ``setting``'s."""
    # A range goes into the help; a choice is the metavar already.
    describe = "" if isinstance(setting.check, OneOf) else setting.check.describe()
    help_text = f"{setting.help} [{describe}]" if describe else setting.help
    return click.option(
        flag,
        setting.name,
        type=Checked(setting.check, metavar, label=setting.name),
        default=setting.default,
        show_default=setting.default is not None,
        help=help_text,
        **kw,
    )


def _usage(build: Callable[[], Any]) -> Any:
    """``build()``, with an :class:`OptionError` shown as a usage error (exit 2)."""
    try:
        return build()
    except OptionError as e:
        raise click.UsageError(str(e)) from None


def _with_options(f: Callable, options: list[Callable], pack: Callable[[dict], None]) -> Callable:
    """``f`` behind ``options``; ``pack`` turns the options' values into ``f``'s keywords."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        pack(kw)
        return f(*args, **kw)

    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


PAIR_MODELS_HELP = "Only pairs with this post-trained or base model (repeatable)."


def selection_options(
    *lists: str, persona: bool = False, models_help: str = PAIR_MODELS_HELP
) -> Callable[[Callable], Callable]:
    """The selection options; the command gets ``selection`` (a :class:`Selection`).

    ``lists``: which of models, experiments, families, post_training the
    command selects by.  ``persona``: --persona-condition/--plain-condition
    (post_condition/base_condition, docs in ``stats.options``) instead of
    --condition/--post-condition/--base-condition.
    """
    if persona:
        conditions = [
            click.option(
                "--persona-condition",
                "post_condition",
                default=PERSONA_CONDITION,
                show_default=True,
                help="Condition of the persona scores.",
            ),
            click.option(
                "--plain-condition",
                "base_condition",
                default="plain",
                show_default=True,
                help="Condition compared against (use chat for chat-scored models).",
            ),
        ]
    else:
        conditions = [
            click.option(
                "--condition",
                default="plain",
                show_default=True,
                help="Condition of both models' scores (plain, chat, persona, imported).",
            ),
            click.option(
                "--post-condition",
                default=None,
                help="Condition of the post-trained models' scores [default: --condition].",
            ),
            click.option(
                "--base-condition",
                default=None,
                help="Condition of the base models' scores [default: --condition].",
            ),
        ]
    named = {
        "models": click.option("--model", "models", multiple=True, help=models_help),
        "experiments": click.option(
            "--experiment", "experiments", multiple=True, help="Only this experiment (repeatable)."
        ),
        "families": click.option(
            "--family", "families", multiple=True, help="Only these families (repeatable)."
        ),
        "post_training": click.option(
            "--type",
            "post_training",
            multiple=True,
            help="Only post-trained models of this type (instruct, reasoning, ...; repeatable).",
        ),
    }
    fields = (["post_condition", "base_condition"] if persona else
              ["condition", "post_condition", "base_condition"]) + list(lists)  # fmt: skip

    def pack(kw: dict) -> None:
        values = {k: kw.pop(k) for k in fields}
        kw["selection"] = _usage(lambda: Selection(**values))

    return lambda f: _with_options(f, conditions + [named[n] for n in lists], pack)


def sampling_options(f: Callable) -> Callable:
    """--draws/--tune/--chains/--seed/--sampler/--target-accept/--redraws,
    --allow-diagnostics-failure, -q/--quiet (``progressbar``: the sampling progress),
    --name and --netcdf-dir; the command gets ``sampling``,
    ``store`` and ``allow_failure``."""
    metavars = {"sampler": "[nutpie|pymc]", "target_accept": "FLOAT"}
    flags = [n for n in SAMPLING if n != "progressbar"]
    opts = [
        setting_option(f"--{n.replace('_', '-')}", SAMPLING[n], metavars.get(n, "INTEGER"))
        for n in flags
    ]
    opts += [
        click.option(
            "--allow-diagnostics-failure",
            "allow_failure",
            is_flag=True,
            help="Store the fit (passed = false) even if the R-hat/ESS/divergence gates fail.",
        ),
        click.option(
            "--quiet",
            "-q",
            "quiet",
            is_flag=True,
            help="No sampling progress on stderr (otherwise: draws per chain, rate and time "
            "left; a bar on a terminal, plain lines in a log).",
        ),
        click.option(
            "--name", type=TEXT, default=None, help="A name stored with the fit (fits.name)."
        ),
        click.option(
            "--netcdf-dir",
            type=FOLDER,
            default=None,
            help="Folder for the NetCDF posterior [default: <db file>.fits/].",
        ),
    ]

    def pack(kw: dict) -> None:
        values = {k: kw.pop(k) for k in flags}
        # Draws per chain on stderr (warehouse.progress: plain lines when not a terminal).
        values["progressbar"] = not kw.pop("quiet")
        kw["sampling"] = _usage(lambda: SamplingOptions(**values))
        store = {"name": kw.pop("name"), "netcdf_dir": kw.pop("netcdf_dir")}
        kw["store"] = _usage(lambda: StoreOptions(**store))

    return _with_options(f, opts, pack)
