"""A human-fidelity card (the dict of ``reports.card.build_card``) as one HTML page.

The page is drawn from the card's JSON alone, which it also carries
(``<script type="application/json" id="card-data">``), so the HTML and the
JSON of a card always say the same thing.  No scripts run; nothing is
fetched.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any
from xml.sax.saxutils import escape

from .blocks import plural

CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 52em; margin: 1.5em auto; color: #222;
       line-height: 1.4; font-size: 14px; padding: 0 1em; }
h1 { font-size: 1.6em; margin: 0; } h2 { color: #1f3b73; font-size: 1.15em; margin: 1.3em 0 0.3em; }
.sub { color: #555; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.3em 0 0.8em; }
th { text-align: left; border-bottom: 1px solid #000; padding: 2px 8px; }
td { padding: 2px 8px; vertical-align: top; } td.num { text-align: right; }
tr:nth-child(even) td { background: #f3f5f9; }
.caveat { background: #fdf1dc; border-left: 4px solid #d99a27; padding: 0.4em 0.8em; margin: 0.4em 0; }
.ok { background: #eef6ee; border-left: 4px solid #5a9a5a; padding: 0.4em 0.8em; }
code { font-size: 0.85em; word-break: break-all; }
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def _table(columns: list[str], rows: list[list[Any]], numeric: Collection[int] = ()) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_num(v)}</td>" if i in numeric else f"<td>{_e(v)}</td>"
            for i, v in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _interval(iv: dict | None) -> str:
    if not iv:
        return ""
    unit = f" {iv['unit']}" if iv.get("unit") else ""
    return (
        f"{iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]{_e(unit)} "
        f"({int(round(100 * iv['level']))}% interval)"
    )


def _scored(card: dict) -> str:
    s = card["scored_on"]
    kind = "a SAMPLE (" + _e("; ".join(s["sample_specs"])) + ")" if s["sampled"] else "full studies"
    out = [
        f"<p>{plural(s['studies'], 'study', 'studies')}, {plural(s['experiments'], 'experiment')}, "
        f"{plural(s['participants'], 'participant')}, {plural(s['responses'], 'response')}, "
        f"{plural(s['tokens'], 'token')}; conditions: {_e(', '.join(s['conditions']) or 'none')}; "
        f"scored on {kind}.</p>"
    ]
    rows = [
        [
            r["run_id"],
            r["condition"],
            r["status"],
            r["scorer"],
            r["sample_spec"] or "full",
            r["responses"],
            r["tokens"],
            r["device"],
            r["dtype"],
            r["psystats_version"],
        ]
        for r in s["runs"]
    ]
    cols = [
        "run",
        "condition",
        "status",
        "scorer",
        "sample",
        "responses",
        "tokens",
        "device",
        "dtype",
        "psystats",
    ]
    out.append(_table(cols, rows, {5, 6}))
    return "".join(out)


def _nll(card: dict) -> str:
    n = card["nll"]
    if not n["overall"]:
        return "<p>No valid scores under this condition.</p>"
    lvl = int(round(100 * n["level"]))
    rows = []
    for b in [n["overall"], *n["by_domain"]]:
        comps = ([b["vs_base"]] if b["vs_base"] else []) + b["vs_floors"]
        first = [b["domain"], b["participants"], b["mean"], b["low"], b["high"]]
        if not comps:
            rows.append(first + ["", None, None, None])
        for i, c in enumerate(comps):
            lead = first if i == 0 else ["", None, None, None, None]
            rows.append(
                lead + [c["against"], c["difference"], c["difference_low"], c["difference_high"]]
            )
    cols = [
        "domain",
        "participants",
        "mean NLL",
        f"{lvl}% low",
        f"{lvl}% high",
        "minus (same participants)",
        "difference",
        f"{lvl}% low",
        f"{lvl}% high",
    ]
    missing = n["floors_missing"]
    return (
        f"<p>Condition <b>{_e(n['condition'])}</b>; {_e(n['unit'])}; lower is better. "
        f"Differences are this model minus its base or a floor, paired per participant; "
        f"negative: this model predicts people better.</p>"
        + _table(cols, rows, {1, 2, 3, 4, 6, 7, 8})
        + (f"<p class='sub'>Floors not scored: {_e(', '.join(missing))}.</p>" if missing else "")
    )


def _effects(card: dict) -> str:
    out = []
    p = card["post_training_effect"]
    if p:
        out.append(
            f"<h2>Post-training effect</h2><p>{_e(p['pair'])}: {_e(p['measure'])} "
            f"(fit {p['fit_id']}).</p>"
        )
        if p["overall"]:
            out.append(f"<p>Overall: {_interval(p['overall'])}</p>")
        out.append(
            _table(["domain", "effect"], [[d["domain"], _interval(d)] for d in p["by_domain"]])
        )
    g = card["generations"]
    if g:
        out.append(f"<h2>Generations ({_e(g['family'])}, fit {g['fit_id']})</h2>")
        out.append(
            _table(["slope", "estimate"], [[s["parameter"], _interval(s)] for s in g["slopes"]])
        )
    pe = card["persona"]
    if pe:
        out.append(
            f"<h2>Persona (fit {pe['fit_id']}, model effects {_e(pe['model_effects'])})</h2>"
        )
        rows = [
            ["this model", _interval(pe["model"])],
            [f"type {pe['post_training_type']}", _interval(pe["type"])],
            ["verdict", pe["verdict"]],
            ["ROPE", pe["rope"]],
        ]
        out.append(f"<p>{_e(pe['measure'])}.</p>" + _table(["", ""], [r for r in rows if r[1]]))
    return "".join(out)


def _provenance(card: dict) -> str:
    p, m = card["provenance"], card["model"]
    rows = [
        ["source", m["source"]],
        ["revision", m["revision"] or "not recorded"],
        ["gguf file", m["gguf_file"]],
        ["weights sha256", ", ".join(p["weights_sha256"]) or "not recorded (imported scores)"],
        ["tokenizer sha256", ", ".join(p["tokenizer_sha256"]) or "not recorded"],
        ["scorer", ", ".join(p["scorers"])],
        ["scored with psystats", ", ".join(p["psystats_versions"])],
        ["devices / dtypes", ", ".join(p["devices"] + p["dtypes"])],
        ["card written by psystats", card["psystats_version"]],
    ]
    fits = [
        [
            f["fit_id"],
            f["kind"],
            f["name"],
            f["created_at"],
            "met" if f["passed"] else "FAILED",
            "; ".join(f["problems"]),
            f["retries"],
            "yes" if f["used"] else "no",
        ]
        for f in card["fits"]
    ]
    settings: dict[str, set[str]] = {}
    for r in card["scored_on"]["runs"]:
        for k, v in r["settings"].items():
            settings.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    return (
        _table(["", ""], [r for r in rows if r[1]])
        + "<p class='sub'>Scorer settings (every value recorded over the runs):</p>"
        + _table(
            ["setting", "value"], [[k, " | ".join(sorted(v))] for k, v in sorted(settings.items())]
        )
        + "<p class='sub'>Fits that read this model and their gates (only fits that met "
        "them are used):</p>"
        + _table(
            ["fit", "kind", "name", "created", "gates", "problems", "retries", "used"], fits, {6}
        )
    )


def render_card_html(card: dict) -> str:
    """The card as one self-contained HTML page (no scripts), carrying its own JSON."""
    m = card["model"]
    title = f"Human-fidelity card: {m['name']}"
    facts = ", ".join(_e(x) for x in (m["family"], m["generation"], m["post_training"]) if x)
    caveats = "".join(f"<div class='caveat'>{_e(c)}</div>" for c in card["caveats"])
    data = json.dumps(card, sort_keys=True).replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p class='sub'>{facts}"
        + (f"; base model {_e(m['base_model'])}" if m["base_model"] else "")
        + f". Card {_e(card['schema'])}, written {_e(card['generated_at'])}.</p></header>"
        f"<section id='caveats'><h2>Caveats</h2>"
        + (
            caveats
            or "<div class='ok'>None: every fit used met its gates and the runs were full.</div>"
        )
        + f"</section><section id='scored-on'><h2>Scored on</h2>{_scored(card)}</section>"
        f"<section id='nll'><h2>NLL per response</h2>{_nll(card)}</section>"
        f"<section id='effects'>{_effects(card)}</section>"
        f"<section id='provenance'><h2>Provenance</h2>{_provenance(card)}</section>"
        f"<script type='application/json' id='card-data'>{data}</script>"
        "</body></html>"
    )
