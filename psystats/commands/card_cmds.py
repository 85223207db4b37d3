"""`psystats card MODEL -o card.html|card.json`: one model's human-fidelity card."""

from __future__ import annotations

import click

from .common import db_option, friendly_errors, open_db, output_option


@click.command()
@click.argument("model")
@db_option
@output_option("card.json (the versioned JSON layout) or card.html (the same card as a page).")
@click.option(
    "--condition",
    default=None,
    help="Scoring condition of the NLL numbers [default: plain, else the model's first].",
)
@friendly_errors
def card(model: str, db: str | None, output: str, condition: str | None) -> None:
    """Write a one-page human-fidelity card for MODEL.

    What the model was scored on (studies, responses, tokens, conditions,
    sampled or full), its NLL per response by task domain against its base
    and the floors (baseline:uniform, baseline:frequency) where those were
    scored, the post-training effect with its interval from the newest
    effects fit that met its gates, generation slopes and persona results
    where they apply, and provenance (weights and tokenizer hashes, revision,
    psystats versions, scorer settings, every fit with its gates).  A fit
    that failed its gates is listed but never used, and the card says so,
    as it does for a sampled run.  The JSON follows the schema shipped as
    psystats/reports/card_schema.json (docs/card.md); the HTML renders the
    same JSON.  The warehouse is only read.

    \b
    Examples:
      psystats card Qwen/Qwen2.5-7B-Instruct -o card.html
      psystats card Qwen/Qwen2.5-7B-Instruct -o card.json --condition chat
    """
    import json

    from psystats.reports.card import build_card
    from psystats.reports.card_html import render_card_html
    from psystats.warehouse.errors import WarehouseError
    from psystats.warehouse.outputs import atomic_output, check_target

    lower = output.lower()
    if not lower.endswith((".json", ".html", ".htm")):
        raise WarehouseError(f"{output}: the card file must end in .json or .html")
    check_target(output)
    con = open_db(db, "read")
    try:
        data = build_card(con, model, condition=condition)
    finally:
        con.close()
    text = (
        json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        if lower.endswith(".json")
        else render_card_html(data)
    )
    with atomic_output(output) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    click.echo(
        f"card written to {output}"
        + (f" ({len(data['caveats'])} caveats)" if data["caveats"] else "")
    )
