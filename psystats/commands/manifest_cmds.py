"""``psystats manifest fit:ID | run:ID``: what it takes to repeat a fit or a score run."""

from __future__ import annotations

import json

import click

from .common import db_option, friendly_errors, open_db


@click.command()
@click.argument("ref")
@db_option
@friendly_errors
def manifest(ref, db):
    """Print the reproducibility manifest of a fit or a score run as JSON.

    REF is fit:ID, run:ID, or a bare fit ID.  A fit's manifest holds its kind,
    spec, priors, sampler settings and seed, the software it ran with
    (psystats, torch, transformers, PyMC, nutpie, DuckDB, ... and the git
    revision when run from a checkout) and the manifests of the score runs
    it read (model, weights and tokenizer hashes, template hash, settings).
    `inspected_with` is the software of the process printing it.

    \b
    Examples:
      psystats manifest fit:3
      psystats manifest run:1
      psystats manifest 3 > fit-3-manifest.json
    """
    from psystats.warehouse.manifest import manifest as build

    con = open_db(db, "read")
    click.echo(json.dumps(build(con, ref), indent=1, default=str, sort_keys=False))
