"""The published study's own summary: per pair, the mean over experiments of Cohen's d.

The seed study reports, per (post-trained, base) pair, the average over
experiments of a standardised difference.  psystats computes the same
statistic from the cells so users can set it beside the hierarchical
posterior (``pair_mean``) and see what partial pooling adds:

    d_pe   = mean_pe / pooled_sd_pe          (Cohen's d_av of experiment e)
    d_p    = mean over the pair's experiments of d_pe
    interval: percentile bootstrap over the pair's experiments

``mean_pe`` is the cell's mean paired post-minus-base difference and
``pooled_sd_pe`` = sqrt((sd_post² + sd_base²) / 2) of the two models'
per-participant mean NLLs (:func:`psystats.stats.cells.with_scale`).  The
bootstrap resamples experiments with replacement, so the interval reflects
which experiments were studied, as the published summary does; it ignores
the participants' sampling noise within each experiment (the hierarchical
model carries both).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def pair_cohens_d(
    cells: pd.DataFrame, *, n_boot: int = 4000, level: float = 0.9, seed: int = 0
) -> pd.DataFrame:
    """Per pair: ``n_experiments``, ``cohens_d`` (mean over experiments) and a bootstrap interval.

    ``cells`` needs ``pair``, ``experiment``, ``mean`` and ``pooled_sd``;
    cells without a positive finite pooled SD are left out.  ``q_low`` and
    ``q_high`` are the percentile-bootstrap bounds of the central ``level``
    interval (NaN for a pair with one experiment: nothing to resample).
    """
    need = {"pair", "experiment", "mean", "pooled_sd"}
    if cells.empty or not need <= set(cells.columns):
        return pd.DataFrame(columns=["pair", "n_experiments", "cohens_d", "q_low", "q_high"])
    c = cells[list(need)].copy()
    sd = pd.to_numeric(c["pooled_sd"], errors="coerce")
    c = c[np.isfinite(sd) & (sd > 0)]
    c["d"] = c["mean"].astype(float) / c["pooled_sd"].astype(float)
    c = c[np.isfinite(c["d"])]
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    rows = []
    for pair, g in c.sort_values(["pair", "experiment"]).groupby("pair", sort=True):
        d = g["d"].to_numpy(float)
        lo = hi = float("nan")
        if d.size >= 2:
            idx = rng.integers(0, d.size, size=(n_boot, d.size))
            boot = d[idx].mean(axis=1)
            lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
        rows.append((pair, int(d.size), float(d.mean()), lo, hi))
    return pd.DataFrame(rows, columns=["pair", "n_experiments", "cohens_d", "q_low", "q_high"])
