"""The sampling and storing options every ``psystats fit`` subcommand shares, validated alike.

The ranges are those of :class:`psystats.stats.pipeline.SamplingOptions`, so
a bad value is a usage error (exit 2) on every subcommand, before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

SAMPLING_KEYS = ("draws", "tune", "chains", "seed", "sampler", "target_accept")


def sampling_options(f: Callable) -> Callable:
    """--draws/--tune/--chains/--seed/--sampler/--target-accept/--allow-diagnostics-failure,
    --name and --netcdf-dir."""
    from psystats.stats.options import SAMPLERS, TARGET_ACCEPT_RANGE

    lo, hi = TARGET_ACCEPT_RANGE
    opts = [
        click.option(
            "--draws",
            type=click.IntRange(1),
            default=1000,
            show_default=True,
            help="Posterior draws per chain.",
        ),
        click.option(
            "--tune",
            type=click.IntRange(0),
            default=1000,
            show_default=True,
            help="Warm-up draws per chain.",
        ),
        click.option(
            "--chains",
            type=click.IntRange(1),
            default=4,
            show_default=True,
            help="Chains (R-hat needs at least 2; use 4 or more).",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Random seed of the sampler and of anything random in the analysis (recorded).",
        ),
        click.option(
            "--sampler",
            type=click.Choice(list(SAMPLERS)),
            default="nutpie",
            show_default=True,
            help="NUTS implementation: nutpie, or PyMC's own NUTS.",
        ),
        click.option(
            "--target-accept",
            type=click.FloatRange(lo, hi),
            default=0.95,
            show_default=True,
            help="NUTS target acceptance; raise it (0.99) against divergences.",
        ),
        click.option(
            "--allow-diagnostics-failure",
            is_flag=True,
            help="Store the fit (passed = false) even if the R-hat/ESS/divergence gates fail.",
        ),
        click.option("--name", default=None, help="A name stored with the fit (fits.name)."),
        click.option(
            "--netcdf-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder for the NetCDF posterior [default: <db file>.fits/].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pop_sampling(kw: dict[str, Any]) -> dict[str, Any]:
    """Remove the sampling options from a command's keyword arguments; return them."""
    return {k: kw.pop(k) for k in SAMPLING_KEYS}
