"""`psystats models add | list | show | set | load | remove`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from psystats.scoring.naming import POST_TRAINING_TYPES

from .common import db_option, friendly_errors, open_db, print_rows
from .option_types import FILE

FORMATS = click.Choice(["table", "csv", "json"])
LIST_COLUMNS = (
    "name",
    "family",
    "generation",
    "release_date",
    "n_params",
    "post_training",
    "base_model",
    "source",
)


def human_count(n: int | None) -> str:
    """134515008 -> '134.5M', 7615616512 -> '7.62B'."""
    if n is None:
        return ""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def _show(row: dict) -> None:
    width = max(len(k) for k in row)
    for key, value in row.items():
        if key == "inferred":
            continue
        if key == "n_params" and value is not None:
            value = f"{value} ({human_count(value)})"
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}")
    click.echo("inferred:")
    for key, info in row["inferred"].items():
        if isinstance(info, dict) and "from" in info:
            extra = f" (rule: {info['candidate']})" if info.get("candidate") else ""
            click.echo(f"  {key}: {info.get('value')!r} <- {info['from']}{extra}")
        else:
            click.echo(f"  {key}: {info!r}")


@click.group()
def models() -> None:
    """Register models and edit what psystats knows about them.

    A model is a Hugging Face id, a local safetensors folder, a local .gguf
    file, or one of psystats' baselines (baseline:uniform, baseline:frequency).
    Family, generation, post-training type, parameter count and base model are
    inferred (see docs/models.md); `models set` and `models load`
    override anything.
    """


@models.command("add")
@click.argument("source")
@db_option
@click.option(
    "--name", help="Name in the warehouse [default: the hub id, folder name or GGUF file stem]."
)
@click.option("--base", help="The base model it descends from (a registered name, path or hub id).")
@click.option(
    "--type",
    "post_training",
    type=click.Choice(POST_TRAINING_TYPES),
    help="Post-training type [default: inferred from the name].",
)
@click.option("--gguf-file", help="GGUF file inside a folder or hub repository.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Note that the model needs its repository's own code. A note only: scoring runs "
    "that code only with `psystats score --trust-remote-code` (or PSYSTATS_TRUST_REMOTE_CODE=1).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Override any field at registration (repeatable), e.g. --set generation=3.1.",
)
@click.option(
    "--adapter",
    metavar="PATH_OR_HUB_ID",
    help="Register a PEFT adapter (LoRA) on SOURCE, the base: applied when scoring; its "
    "weights hash is recorded [default name: the adapter's folder name or hub id].",
)
@click.option("--adapter-revision", help="Hub revision of --adapter.")
@click.option(
    "--release-date",
    metavar="YYYY-MM-DD",
    help="Public release date (YYYY-MM or YYYY-MM-DD), read by `fit effects "
    "--generation-scale date` [default: from the registry's table for the models it knows].",
)
@friendly_errors
def add(
    source: str,
    db: str | None,
    name: str | None,
    base: str | None,
    post_training: str | None,
    gguf_file: str | None,
    revision: str | None,
    trust_remote_code: bool,
    sets: tuple[str, ...],
    adapter: str | None,
    adapter_revision: str | None,
    release_date: str | None,
) -> None:
    """Register the model at SOURCE (hub id, safetensors folder, .gguf file or baseline).

    Adding an already registered name and source again only applies the
    options given.  The parameter count is read from the weight files'
    headers (never loading the weights); for a hub id without local files it
    comes from the hub when online, else it stays empty.  SOURCE
    baseline:uniform or baseline:frequency registers a floor every model must
    beat, scored by `psystats score` like a model (docs/scoring.md,
    "Baselines").

    \b
    Examples:
      psystats models add Qwen/Qwen3-8B-Base
      psystats models add Qwen/Qwen3-8B --base Qwen/Qwen3-8B-Base
      psystats models add ./SmolLM2-135M-Instruct.Q4_1.gguf
      psystats models add ./my-finetune --name mine --type instruct --base Qwen/Qwen2.5-7B
      psystats models add Qwen/Qwen2.5-VL-7B-Instruct      # type vision, base Qwen/Qwen2.5-7B
      psystats models add meta-llama/Llama-3.1-70B \\
          --adapter marcelbinz/Llama-3.1-Centaur-70B-adapter
      psystats models add ./base-model --adapter ./my-lora --name my-lora --type other
      psystats models add ./my-finetune --name mine --base Qwen/Qwen2.5-7B \\
          --release-date 2025-02-14
      psystats models add baseline:frequency
    """
    from psystats.scoring.adapter_models import add_adapter
    from psystats.scoring.registry import add_model

    con = open_db(db, "write", create=True)
    overrides = {**_pairs(sets), **({"release_date": release_date} if release_date else {})}
    common: dict[str, Any] = dict(
        name=name,
        post_training=post_training,
        gguf_file=gguf_file,
        revision=revision,
        trust_remote_code=trust_remote_code,
        overrides=overrides,
    )
    if adapter is not None:
        row = add_adapter(con, source, adapter, adapter_revision=adapter_revision, **common)
    else:
        row = add_model(con, source, base=base, **common)
    _show(row)
    note = _unchecked_hub_id(row)
    if note:
        click.echo(note, err=True)


def _unchecked_hub_id(row: dict) -> str | None:
    """A warning when a hub id was registered without being able to check that it exists."""
    source = row.get("source")
    if not source or row.get("gguf_file") or Path(source).is_absolute():
        return None
    how = str((row.get("inferred") or {}).get("n_params", {}).get("from", ""))
    if "offline" not in how and "unavailable" not in how:
        return None
    return (
        f"warning: could not check that {source} exists on the Hugging Face hub (offline, "
        "and not in the local cache): it is registered unchecked, so a typo shows only when "
        f"`psystats score --model {row['name']}` cannot find the weights"
    )


@models.command("list")
@db_option
@click.option(
    "--format",
    "fmt",
    type=FORMATS,
    default="table",
    show_default=True,
    help="table (sizes shortened), or csv/json with every column.",
)
@friendly_errors
def list_(db: str | None, fmt: str) -> None:
    """List registered models (by family, generation and size).

    \b
    Examples:
      psystats models list
      psystats models list --format csv > models.csv
    """
    from psystats.scoring.registry import list_models

    con = open_db(db, "read")
    rows = list_models(con)
    if fmt == "table":
        print_rows(
            LIST_COLUMNS,
            [[human_count(r[c]) if c == "n_params" else r[c] for c in LIST_COLUMNS] for r in rows],
            fmt,
        )
        return
    columns = [c for c in rows[0]] if rows else list(LIST_COLUMNS)
    print_rows(
        columns,
        [[json.dumps(r[c]) if c == "inferred" else r[c] for c in columns] for r in rows],
        fmt,
    )


@models.command("show")
@click.argument("name")
@db_option
@friendly_errors
def show(name: str, db: str | None) -> None:
    """Every field of model NAME, and what was inferred from what.

    \b
    Examples:
      psystats models show Qwen/Qwen3-8B
      psystats models show SmolLM2-135M-Instruct
    """
    from psystats.scoring.registry import get_model

    _show(get_model(open_db(db, "read"), name))


@models.command("set")
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True, metavar="FIELD=VALUE...")
@db_option
@friendly_errors
def set_(name: str, assignments: tuple[str, ...], db: str | None) -> None:
    """Override fields of model NAME.

    Fields: source, revision, gguf_file, tokenizer_source, family, generation,
    generation_order, n_params, post_training (alias type), base_model (alias
    base), trust_remote_code, quantization, pipeline_check (why the model only
    checks the pipeline, e.g. random weights: the report puts a caveat on every
    page that shows it), release_date (YYYY-MM-DD or YYYY-MM).  'null' clears a
    field.  Setting generation also sets generation_order when the generation
    is a number, and release_date from the registry's table unless you set the
    date yourself.

    \b
    Examples:
      psystats models set allenai/Olmo-3-7B-Think base=allenai/Olmo-3-1025-7B
      psystats models set my-model family=qwen generation=2.5 type=instruct
      psystats models set my-model release_date=2024-09-19
    """
    from psystats.scoring.registry import set_fields

    row = set_fields(open_db(db, "write"), name, _pairs(assignments))
    _show(row)


@models.command("load")
@click.argument("file", type=FILE)
@db_option
@friendly_errors
def load(file: str, db: str | None) -> None:
    """Register or update the models listed in a TOML or YAML FILE (one transaction).

    Each entry has a name and/or a source plus any fields; a registered name
    is updated, anything else is added.

    \b
    Example models.toml:
      [[models]]
      source = "allenai/Olmo-3-7B-Think"
      base = "allenai/Olmo-3-1025-7B"
      [[models]]
      name = "my-cognitive-model"
      type = "other"

    \b
    Examples:
      psystats models load models.toml
      psystats --db psych.duckdb models load study-models.yaml
    """
    from psystats.scoring.registry_file import load_file

    rows = load_file(open_db(db, "write", create=True), file)
    print_rows(
        LIST_COLUMNS,
        [[human_count(r[c]) if c == "n_params" else r[c] for c in LIST_COLUMNS] for r in rows],
    )


@models.command("remove")
@click.argument("name")
@db_option
@click.option("--force", is_flag=True, help="Also delete the model's score runs and scores.")
@friendly_errors
def remove(name: str, db: str | None, force: bool) -> None:
    """Remove model NAME (refused while it has scores, unless --force).

    With --force its score runs and scores go too; fits that used them are
    kept (their parameters are stored) but no longer match the warehouse.

    \b
    Examples:
      psystats models remove my-typo-model
      psystats models remove old-checkpoint --force
    """
    from psystats.scoring.registry import remove_model

    gone = remove_model(open_db(db, "write"), name, force=force)
    click.echo(
        f"removed {name}"
        + (f" with {gone['runs']} run(s) and {gone['scores']} scores" if gone["runs"] else "")
    )


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"expected FIELD=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
