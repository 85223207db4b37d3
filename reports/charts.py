"""Interactive versions of the report's figures, as Vega-Lite specifications built with Altair.

Each function takes the same frame the matplotlib figure was drawn from
(``Figure.data``) and the same settings (``Figure.options``) and returns a
Vega-Lite spec (a dict) that ``reports.html`` embeds with the Vega runtime
inlined, so the HTML figure shows exactly the PDF figure's numbers.  Every
chart shows values and intervals on hover, zooms and pans (drag, wheel;
double-click resets), and where it has a legend a click on an entry keeps
that entry (shift-click adds more; a click on empty space shows all again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from .figures import human_params

WIDTH = 620  # pixels: the HTML text column
HIDDEN_OPACITY = 0.12  # a legend-deselected series stays faintly visible


def _values(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns a chart reads, JSON-safe (no NaN, no objects Vega cannot read)."""
    out = df[[c for c in columns if c in df.columns]].copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = [
                None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                for v in out[c]
            ]
    return out.replace({np.nan: None})


def _legend_filter(field: str) -> tuple[alt.Parameter, Any]:
    """A legend-bound selection on ``field`` and the opacity rule that applies it."""
    sel = alt.selection_point(fields=[field], bind="legend")
    return sel, alt.condition(sel, alt.value(1.0), alt.value(HIDDEN_OPACITY))


def nll_by_size(data: pd.DataFrame, options: dict) -> dict:
    """Section 2: mean NLL against parameter count, a panel per family, a colour per type."""
    df = _values(
        data,
        [
            "model",
            "family",
            "generation",
            "post_training",
            "n_params",
            "n_participants",
            "mean",
            "lo",
            "hi",
        ],
    )
    df["parameters"] = [human_params(n) for n in df["n_params"]]
    df["line"] = [f"{t} {g}" for t, g in zip(df["post_training"], df["generation"])]
    level = int(round(100 * float(options.get("level", 0.95))))
    sel, opacity = _legend_filter("post_training")
    # No data on the layers: the facet hands each panel its family's rows.
    base = alt.Chart().encode(
        x=alt.X(
            "n_params:Q",
            scale=alt.Scale(type="log"),
            title="parameters",
            axis=alt.Axis(format="~s", labelExpr="replace(datum.label, 'G', 'B')"),
        ),
        color=alt.Color("post_training:N", title="post-training"),
        opacity=opacity,
        tooltip=[
            alt.Tooltip("model:N"),
            alt.Tooltip("parameters:N"),
            alt.Tooltip("mean:Q", title="mean NLL", format=".3f"),
            alt.Tooltip("lo:Q", title=f"{level}% low", format=".3f"),
            alt.Tooltip("hi:Q", title=f"{level}% high", format=".3f"),
            alt.Tooltip("n_participants:Q", title="participants"),
        ],
    )
    y = alt.Y("mean:Q", title="NLL per response (nats)", scale=alt.Scale(zero=False))
    layers = alt.layer(
        base.mark_line(point=True).encode(y=y, detail="line:N"),
        base.mark_rule().encode(y="lo:Q", y2="hi:Q"),
    ).add_params(sel)
    zoom = alt.selection_interval(bind="scales")
    chart = (
        layers.add_params(zoom)
        .properties(width=190, height=170)
        .facet(column=alt.Column("family:N", title=None), data=df)
        .properties(title=f"condition {options.get('condition', '')}: {level}% t intervals")
    )
    return chart.to_dict()


def heatmap(data: pd.DataFrame, options: dict) -> dict:
    """Section 3: pair x domain posterior means, a dot where the 90% interval excludes zero."""
    df = _values(data, ["pair", "domain", "mean", "q05", "q95", "credible"])
    df["excludes zero"] = ["yes" if c else "no" for c in df["credible"]]
    means = np.abs(pd.to_numeric(data["mean"], errors="coerce").to_numpy(float))
    lim = float(np.max(means[np.isfinite(means)])) if np.isfinite(means).any() else 1.0
    tooltip = [
        alt.Tooltip("pair:N"),
        alt.Tooltip("domain:N"),
        alt.Tooltip("mean:Q", format="+.3f"),
        alt.Tooltip("q05:Q", title="5%", format="+.3f"),
        alt.Tooltip("q95:Q", title="95%", format="+.3f"),
        alt.Tooltip("excludes zero:N", title="90% interval excludes 0"),
    ]
    base = alt.Chart(df).encode(
        x=alt.X("domain:N", title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("pair:N", title=None, sort=None, axis=alt.Axis(labelLimit=320)),
        tooltip=tooltip,
    )
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color(
            "mean:Q",
            title=f"post − base ({options.get('scale', 'nats')})",
            scale=alt.Scale(scheme="redblue", reverse=True, domain=[-lim or -1, lim or 1]),
        )
    )
    dots = base.transform_filter("datum.credible").mark_point(filled=True, color="black", size=25)
    height = max(120, 22 * df["pair"].nunique())
    return alt.layer(cells, dots).properties(width=WIDTH - 360, height=height).to_dict()


def generations(data: pd.DataFrame, options: dict) -> dict:
    """Section 4: base NLL and post − base gap across generations, 90% bands, per family."""
    df = _values(data, ["parameter", "family", "generation", "order", "mean", "q05", "q95"])
    df["panel"] = df["parameter"].map({"base_nll": "base-model NLL", "gap": "post − base gap"})
    # Each family has its own generations (Qwen 3 is not Llama 3): one x position each.
    df["step"] = [f"{f} {g}" for f, g in zip(df["family"], df["generation"])]
    order = df.sort_values(["family", "order", "generation"])["step"].drop_duplicates().tolist()
    sel, opacity = _legend_filter("family")
    base = alt.Chart().encode(
        x=alt.X("step:O", sort=order, title="generation", axis=alt.Axis(labelAngle=0)),
        color=alt.Color("family:N"),
        opacity=opacity,
        tooltip=[
            alt.Tooltip("family:N"),
            alt.Tooltip("generation:N"),
            alt.Tooltip("panel:N", title="quantity"),
            alt.Tooltip("mean:Q", format=".3f"),
            alt.Tooltip("q05:Q", title="5%", format=".3f"),
            alt.Tooltip("q95:Q", title="95%", format=".3f"),
        ],
    )
    layers = alt.layer(
        base.mark_area().encode(
            y=alt.Y("q05:Q", title="nats per response"),
            y2="q95:Q",
            opacity=alt.condition(sel, alt.value(0.2), alt.value(0.03)),
        ),
        base.mark_line(point=True).encode(y=alt.Y("mean:Q", scale=alt.Scale(zero=False))),
    ).add_params(sel, alt.selection_interval(bind="scales", encodings=["y"]))
    return (
        layers.properties(width=270, height=200)
        .facet(column=alt.Column("panel:N", title=None), data=df)
        .resolve_scale(y="independent")
        .to_dict()
    )


def forest(data: pd.DataFrame, options: dict) -> dict:
    """Forest plot: mean, 90% interval (thick), 94% HDI (thin), grouped rows, optional ROPE
    band and series (e.g. raw vs calibrated)."""
    series = options.get("series")
    cols = ["group", "parameter", "label", "mean", "sd", "q05", "q95", "hdi_low", "hdi_high"]
    df = _values(data, [*cols, "r_hat", "ess_bulk", "unit", *([series] if series else [])])
    if "group" not in df:
        df["group"] = ""
    df["row"] = [f"{g} · {l}" if g else str(l) for g, l in zip(df["group"], df["label"])]
    colour_field = series or "group"
    df[colour_field] = df[colour_field].fillna("")
    sel, opacity = _legend_filter(colour_field)
    # One group and no series (persona, a single-term forest): one colour, no legend.
    legend = bool(series) or df[colour_field].nunique() > 1
    tooltip = [
        alt.Tooltip(f"{c}:N") for c in ("group", "label", *([series] if series else [])) if c in df
    ] + [
        alt.Tooltip("mean:Q", format="+.4f"),
        alt.Tooltip("q05:Q", title="5%", format="+.4f"),
        alt.Tooltip("q95:Q", title="95%", format="+.4f"),
    ]
    tooltip += [
        alt.Tooltip(f"{c}:Q", title=t, format=f)
        for c, t, f in (
            ("hdi_low", "94% HDI low", "+.4f"),
            ("hdi_high", "94% HDI high", "+.4f"),
            ("r_hat", "R-hat", ".3f"),
            ("ess_bulk", "ESS bulk", ".0f"),
        )
        if c in df and df[c].notna().any()
    ]
    if "unit" in df:
        tooltip.append(alt.Tooltip("unit:N"))
    rows = list(dict.fromkeys(df["row"]))
    y = alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=260))
    base = alt.Chart(df).encode(
        y=y,
        color=alt.Color(f"{colour_field}:N", title=colour_field or None)
        if legend
        else alt.value("#1f3b73"),
        opacity=opacity if legend else alt.value(1.0),
        tooltip=tooltip,
    )
    if series:  # side by side within a row (raw vs calibrated)
        base = base.encode(yOffset=alt.YOffset(f"{series}:N"))
    x_title = options.get("xlabel", "effect")
    layers: list = []
    rope = options.get("rope")
    if rope:
        band = pd.DataFrame({"lo": [float(rope[0])], "hi": [float(rope[1])], "what": ["ROPE"]})
        layers.append(
            alt.Chart(band)
            .mark_rect(color="#f2c14e", opacity=0.3)
            .encode(
                x="lo:Q",
                x2="hi:Q",
                tooltip=[
                    alt.Tooltip("lo:Q", title="ROPE low"),
                    alt.Tooltip("hi:Q", title="ROPE high"),
                ],
            )
        )
    layers.append(
        alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="black").encode(x="zero:Q")
    )
    if "hdi_low" in df and df["hdi_low"].notna().any():
        layers.append(
            base.mark_rule(strokeWidth=1).encode(
                x=alt.X("hdi_low:Q", title=x_title), x2="hdi_high:Q"
            )
        )
    layers.append(base.mark_rule(strokeWidth=4).encode(x=alt.X("q05:Q", title=x_title), x2="q95:Q"))
    layers.append(
        base.mark_point(filled=False, fill="white", size=40, strokeWidth=1.5).encode(
            x=alt.X("mean:Q", title=x_title)
        )
    )
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    chart = alt.layer(*layers).add_params(*([sel] if legend else []), zoom)
    return chart.properties(width=WIDTH - 300, height=max(80, 16 * len(rows))).to_dict()


def ppc(data: pd.DataFrame, options: dict) -> dict:
    """Section 7: each observation against its (in-sample) 90% predictive interval."""
    df = _values(
        data, ["variable", "observation", "observed", "predictive_mean", "q05", "q95", "inside_90"]
    )
    df["inside"] = ["inside" if v else "outside" for v in df["inside_90"]]
    df["rank"] = df.groupby("variable")["predictive_mean"].rank(method="first")
    sel, opacity = _legend_filter("inside")
    base = alt.Chart().encode(
        x=alt.X("rank:Q", title="observations, sorted by predictive mean"),
        tooltip=[
            alt.Tooltip("variable:N"),
            alt.Tooltip("observation:Q"),
            alt.Tooltip("observed:Q", format=".4f"),
            alt.Tooltip("predictive_mean:Q", title="predictive mean", format=".4f"),
            alt.Tooltip("q05:Q", title="5%", format=".4f"),
            alt.Tooltip("q95:Q", title="95%", format=".4f"),
            alt.Tooltip("inside:N", title="in-sample 90% interval"),
        ],
    )
    layers = alt.layer(
        base.mark_rule(color="#9bb7d4").encode(y=alt.Y("q05:Q", title="value"), y2="q95:Q"),
        base.mark_point(filled=True, size=18).encode(
            y="observed:Q",
            color=alt.Color(
                "inside:N",
                scale=alt.Scale(domain=["inside", "outside"], range=["black", "#d62728"]),
            ),
            opacity=opacity,
        ),
    ).add_params(sel, alt.selection_interval(bind="scales"))
    return (
        layers.properties(width=WIDTH - 140, height=200)
        .facet(row=alt.Row("variable:N", title=None), data=df)
        .resolve_scale(x="independent", y="independent")
        .properties(title=options.get("title", ""))
        .to_dict()
    )


CHARTS: dict[str, Callable[[pd.DataFrame, dict], dict]] = {
    "nll_by_size": nll_by_size,
    "heatmap": heatmap,
    "generations": generations,
    "forest": forest,
    "ppc": ppc,
}


def spec(chart: str, data: pd.DataFrame, options: dict[str, Any]) -> dict:
    """The Vega-Lite spec of one report figure (``Figure.chart``, ``.data``, ``.options``)."""
    return CHARTS[chart](data, options)
