"""The report's figures, drawn with matplotlib from the frames in ``reports.queries``.

Every function takes data (never a connection) and returns a
``matplotlib.figure.Figure`` sized in inches for the page; the layout code
saves it as a vector PDF (or SVG for HTML).  Conventions across figures:
points are posterior means (or sample means), thick bars/bands are 90%
intervals, thin bars 94% HDIs, and negative differences mean the post-trained
model predicts people *better* (lower NLL).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg")  # no display: figures only go to files

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.typing import ColorType, LineStyleType, RcKeyType

TEXT_WIDTH_IN = 6.5  # the PDF's text column (A4 with 2 cm margins is ~6.7 in)

STYLE: dict[RcKeyType, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "pdf.fonttype": 42,  # TrueType, so figure text is selectable and searchable
    "svg.fonttype": "none",
}

# One colour per post-training type, stable across figures.
TYPE_COLOURS = {
    "base": "#4d4d4d",
    "instruct": "#1f77b4",
    "reasoning": "#d62728",
    "vision": "#2ca02c",
    "code": "#9467bd",
    "math": "#ff7f0e",
    "other": "#8c564b",
}
_TAB10 = plt.get_cmap("tab10")
assert isinstance(_TAB10, ListedColormap)  # a qualitative map: its colours are listed
# Ten RGB tuples (the stubs type ``ListedColormap.colors`` as ArrayLike | ColorType).
PALETTE = cast("tuple[ColorType, ...]", _TAB10.colors)


@contextmanager
def style() -> Iterator[None]:
    with plt.rc_context(STYLE):
        yield


def type_colour(t: str, i: int = 0) -> ColorType:
    return TYPE_COLOURS.get(t, PALETTE[i % len(PALETTE)])


def human_params(n: float) -> str:
    """135e6 -> '135M', 7.6e9 -> '7.6B'."""
    if n is None or pd.isna(n):
        return "?"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return f"{int(n)}"


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


# --------------------------------------------------------- 2 NLL vs size


def nll_by_size(table: pd.DataFrame, *, condition: str, level: float = 0.95) -> Figure:
    """One panel per family: mean NLL per response against parameter count.

    One line per post-training type, a band (and bars) for the ``level``
    interval over participants.  Models without a parameter count are left
    out (the caller lists them).
    """
    table = table[table["n_params"].notna()]
    families = sorted(table["family"].unique())
    rows, cols = _grid(len(families))
    with style():
        fig, axes = plt.subplots(
            rows, cols, figsize=(TEXT_WIDTH_IN, 2.4 * rows + 0.4), squeeze=False, sharey=True
        )
        types_seen: dict[str, ColorType] = {}
        gen_styles: dict[str, LineStyleType] = {}
        styles: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")
        for ax, fam in zip(axes.flat, families):
            sub = table[table["family"] == fam]
            # One line per (type, generation): sizes are only comparable within a generation.
            gens = (
                sub.drop_duplicates("generation")
                .sort_values(["generation_order", "generation"])["generation"]
                .tolist()
            )
            for i, (t, g_t) in enumerate(
                sorted(sub.groupby("post_training"), key=lambda kv: kv[0] != "base")
            ):
                c = type_colour(t, i)
                types_seen[t] = c
                for k, gen in enumerate(gens):
                    g = (
                        g_t[g_t["generation"].isna()]
                        if gen is None or pd.isna(gen)
                        else g_t[g_t["generation"] == gen]
                    )
                    if g.empty:
                        continue
                    g = g.sort_values("n_params")
                    ls = styles[k % len(styles)]
                    if len(gens) > 1:
                        gen_styles[f"{fam} {gen}"] = ls
                    x = g["n_params"].astype(float).to_numpy()
                    ax.plot(x, g["mean"], ls, marker="o", color=c, markersize=3.5)
                    ax.fill_between(x, g["lo"], g["hi"], color=c, alpha=0.18, linewidth=0)
                    ax.errorbar(
                        x,
                        g["mean"],
                        yerr=[g["mean"] - g["lo"], g["hi"] - g["mean"]],
                        fmt="none",
                        ecolor=c,
                        elinewidth=0.8,
                        capsize=2,
                    )
            ax.set_xscale("log")
            ax.set_title(fam)
            ax.set_xlabel("parameters")
            ticks = sorted(sub["n_params"].astype(float).unique())
            ax.set_xticks(ticks, [human_params(t) for t in ticks], minor=False)
            ax.minorticks_off()
            if len(ticks) == 1:
                ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
        for ax in axes[:, 0]:
            ax.set_ylabel("NLL per response (nats)")
        for ax in list(axes.flat)[len(families) :]:
            ax.set_visible(False)
        handles = [
            plt.Line2D([], [], color=c, marker="o", markersize=3.5, label=t)
            for t, c in types_seen.items()
        ]
        handles += [
            plt.Line2D([], [], color="#777777", linestyle=ls, label=f"gen. {g}")
            for g, ls in gen_styles.items()
        ]
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=min(len(handles), 6),
            frameon=False,
            bbox_to_anchor=(0.5, 1.0),
        )
        fig.suptitle(
            f"condition: {condition}; bands and bars: {int(level * 100)}% t intervals "
            f"over participants",
            y=0.02,
            fontsize=7,
            va="bottom",
        )
        fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    return fig


# ------------------------------------------------------------- 3 heatmap


def effect_heatmap(cells: pd.DataFrame, *, scale: str | None = None) -> Figure:
    """Pairs x domains heatmap of posterior mean effects; a dot where the 90% interval excludes 0."""
    pairs = list(dict.fromkeys(cells["pair"]))
    domains = sorted(cells["domain"].unique())
    grid = np.full((len(pairs), len(domains)), np.nan)
    mark = np.zeros_like(grid, dtype=bool)
    for r in cells.itertuples(index=False):
        i, j = pairs.index(r.pair), domains.index(r.domain)
        grid[i, j] = r.mean
        mark[i, j] = bool(r.credible)
    lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    lim = lim or 1.0
    label_w = max(len(p) for p in pairs) * 0.055
    width = min(TEXT_WIDTH_IN, 1.5 + label_w + 0.55 * len(domains))
    height = 1.6 + 0.28 * len(pairs) + 0.05 * max(len(d) for d in domains)
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        # pcolormesh, not imshow: imshow would embed a raster image in the PDF.
        im = ax.pcolormesh(
            np.arange(len(domains) + 1) - 0.5,
            np.arange(len(pairs) + 1) - 0.5,
            np.ma.masked_invalid(grid),
            cmap="RdBu_r",
            vmin=-lim,
            vmax=lim,
            edgecolors="white",
            linewidth=0.5,
        )
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        ax.grid(False)
        ax.set_xticks(range(len(domains)), domains, rotation=40, ha="right")
        ax.set_yticks(range(len(pairs)), pairs)
        small = len(pairs) * len(domains) <= 80
        for i in range(len(pairs)):
            for j in range(len(domains)):
                if np.isnan(grid[i, j]):
                    continue
                dark = abs(grid[i, j]) > 0.6 * lim
                colour = "white" if dark else "black"
                text = (f"{grid[i, j]:+.2f}" if small else "") + (" •" if mark[i, j] else "")
                if text:
                    ax.text(
                        j, i, text.strip(), ha="center", va="center", fontsize=6.5, color=colour
                    )
        # Explicit boundaries make the colour bar vector patches instead of an image.
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, boundaries=np.linspace(-lim, lim, 41))
        cb.locator = matplotlib.ticker.MaxNLocator(5)
        cb.update_ticks()
        cb.set_label(f"post − base ({scale or 'nats'})")
        ax.set_title("• 90% interval excludes 0", fontsize=7, loc="left")
        fig.tight_layout()
    return fig


# ----------------------------------------------------------- 4 generations


def generations(curves: pd.DataFrame) -> Figure:
    """Per family (one row each): base NLL and post-minus-base gap across its generations.

    Lines are posterior means, bands 90% intervals.  Families have their own
    generations, so each row has its own x axis in the family's order.
    """
    families = sorted(curves["family"].dropna().unique())
    panels = [("base_nll", "base-model NLL per response"), ("gap", "post − base gap")]
    with style():
        fig, axes = plt.subplots(
            len(families), 2, figsize=(TEXT_WIDTH_IN, 0.5 + 1.9 * len(families)), squeeze=False
        )
        for i, fam in enumerate(families):
            c = PALETTE[i % len(PALETTE)]
            for ax, (param, title) in zip(axes[i], panels):
                g = curves[(curves["family"] == fam) & (curves["parameter"] == param)]
                g = g.sort_values(["order", "generation"])
                x = np.arange(len(g))
                ax.plot(x, g["mean"], "-o", color=c, markersize=3.5)
                ax.fill_between(x, g["q05"], g["q95"], color=c, alpha=0.2, linewidth=0)
                ax.set_xticks(x, [f"{fam} {gen}" for gen in g["generation"]])
                if len(x) == 1:
                    ax.set_xlim(-1, 1)
                if param == "gap":
                    ax.axhline(0, color="black", linewidth=0.6)
                ax.set_ylabel("nats per response")
                if i == 0:
                    ax.set_title(title)
        fig.tight_layout()
    return fig


# --------------------------------------------------------------- forests


def forest(
    rows: pd.DataFrame,
    *,
    title: str | None = None,
    zero: bool = True,
    xlabel: str = "effect (nats per response)",
    rope: tuple[float, float] | None = None,
    series: str | None = None,
) -> Figure:
    """Forest plot: mean (dot), 90% interval (thick), 94% HDI (thin), grouped by ``group``.

    ``series``: a column whose values are drawn side by side in different
    colours for the same label (e.g. raw vs calibrated accuracy gaps).
    """
    rows = rows.reset_index(drop=True)
    if "group" not in rows:
        rows = rows.assign(group="")
    keys = list(dict.fromkeys(zip(rows["group"], rows["label"])))
    groups = list(dict.fromkeys(rows["group"]))
    # y positions: one line per (group, label), a gap and a heading per group
    ypos, headings, y = {}, [], 0.0
    for grp in groups:
        if grp:
            headings.append((y, grp))
            y += 1
        for key in keys:
            if key[0] == grp:
                ypos[key] = y
                y += 1
        y += 0.4
    series_vals = list(dict.fromkeys(rows[series])) if series else [None]
    offsets = np.linspace(-0.18, 0.18, len(series_vals)) if len(series_vals) > 1 else [0.0]
    height = 0.8 + 0.17 * y
    with style():
        fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN * 0.85, max(1.6, height)))
        for k, sv in enumerate(series_vals):
            sub = rows if sv is None else rows[rows[series] == sv]
            c = PALETTE[k % len(PALETTE)] if sv is not None else "#1f3b73"
            ys = np.array([ypos[(g, l)] + offsets[k] for g, l in zip(sub["group"], sub["label"])])
            if "hdi_low" in sub and sub["hdi_low"].notna().any():
                ax.hlines(ys, sub["hdi_low"], sub["hdi_high"], color=c, linewidth=0.8)
            ax.hlines(ys, sub["q05"], sub["q95"], color=c, linewidth=2.6)
            ax.plot(
                sub["mean"],
                ys,
                "o",
                color="white",
                markeredgecolor=c,
                markersize=4,
                label=None if sv is None else str(sv),
            )
        if zero:
            ax.axvline(0, color="black", linewidth=0.6)
        if rope:
            ax.axvspan(rope[0], rope[1], color="#f2c14e", alpha=0.3, linewidth=0, label="ROPE")
        # Group headings are bold tick labels on their own rows.
        ticks = [(ypos[k], k[1], False) for k in keys] + [(yh, g, True) for yh, g in headings]
        ax.set_yticks([t[0] for t in ticks], [t[1] for t in ticks])
        for tick, (_, _, bold) in zip(ax.get_yticklabels(), ticks):
            if bold:
                tick.set_fontweight("bold")
                tick.set_fontsize(7.5)
        ax.set_ylim(y - 0.4, -0.8)
        ax.grid(axis="y", alpha=0)
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title)
        if series or rope:  # above the axes, where it cannot hide an interval
            ax.legend(frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3)
        fig.tight_layout()
    return fig


# ---------------------------------------------------- 7 predictive check


def ppc(idata, *, title: str, max_vars: int = 2, level: float = 0.9) -> Figure | None:
    """Posterior predictive check from an InferenceData with ``posterior_predictive``.

    Per observed variable: left, the empirical CDF of the observations over
    50 replicated data sets' CDFs (ArviZ's cumulative PPC); right, each
    observation against its predictive mean and ``level`` interval, with the
    share of observations inside the interval.  That share is in sample (each
    observation helped fit the posterior), so it is usually above ``level``
    even for a model that overfits; the report's LOO-PIT columns are the
    out-of-sample check.  Returns None when the groups are missing.
    """
    import arviz as az

    if not (hasattr(idata, "posterior_predictive") and hasattr(idata, "observed_data")):
        return None
    names = [v for v in idata.observed_data.data_vars if v in idata.posterior_predictive][:max_vars]
    if not names:
        return None
    with style():
        fig, axes = plt.subplots(
            len(names), 2, figsize=(TEXT_WIDTH_IN, 2.5 * len(names)), squeeze=False
        )
        for (ax_l, ax_r), name in zip(axes, names):
            obs = np.asarray(idata.observed_data[name].values, dtype=float).ravel()
            pp = idata.posterior_predictive[name].values
            pp = pp.reshape(-1, obs.size).astype(float)
            az.plot_ppc(
                idata,
                var_names=[name],
                kind="cumulative",
                num_pp_samples=50,
                ax=ax_l,
                legend=True,
                random_seed=0,
            )
            ax_l.set_title(f"{name}: cumulative distribution")
            lo, hi = np.quantile(pp, [(1 - level) / 2, (1 + level) / 2], axis=0)
            mean = pp.mean(axis=0)
            inside = (obs >= lo) & (obs <= hi)
            order = np.argsort(mean)
            x = np.arange(obs.size)
            ax_r.vlines(x, lo[order], hi[order], color="#9bb7d4", linewidth=1.0)
            ax_r.plot(x, mean[order], "_", color="#1f3b73", markersize=4)
            ax_r.plot(x[inside[order]], obs[order][inside[order]], ".", color="black", markersize=3)
            ax_r.plot(
                x[~inside[order]], obs[order][~inside[order]], "x", color="#d62728", markersize=3.5
            )
            ax_r.set_title(
                f"in sample: {inside.mean():.0%} of {obs.size} inside their "
                f"{int(level * 100)}% interval",
                fontsize=8,
            )
            ax_r.set_xlabel("observations, sorted by predictive mean")
            ax_r.set_ylabel(name)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def ppc_frame(idata) -> pd.DataFrame:
    """Per observation of each observed variable: observed value, predictive mean and 90%
    interval (in sample), whether it lies inside; the data of :func:`ppc`."""
    parts = []
    for name in idata.observed_data.data_vars:
        if name not in idata.posterior_predictive:
            continue
        obs = np.asarray(idata.observed_data[name].values, dtype=float).ravel()
        pp = idata.posterior_predictive[name].values.reshape(-1, obs.size).astype(float)
        lo, hi = np.quantile(pp, [0.05, 0.95], axis=0)
        parts.append(
            pd.DataFrame(
                {
                    "variable": name,
                    "observation": np.arange(obs.size),
                    "observed": obs,
                    "predictive_mean": pp.mean(axis=0),
                    "q05": lo,
                    "q95": hi,
                    "inside_90": (obs >= lo) & (obs <= hi),
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ----------------------------------------------------------- 8 equations


def equation(lines: Sequence[str], *, fontsize: float = 10) -> Figure:
    """Typeset matplotlib mathtext lines (a vector image of the model's equations)."""
    with style():
        fig = plt.figure(figsize=(TEXT_WIDTH_IN, 0.32 * len(lines) + 0.15))
        for i, line in enumerate(lines):
            fig.text(
                0.02,
                1 - (i + 0.75) / (len(lines) + 0.3),
                line,
                fontsize=fontsize,
                ha="left",
                va="center",
            )
    return fig
