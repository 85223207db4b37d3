"""Per-pair mean-over-experiments Cohen's d with a bootstrap interval (the published summary)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats


def _cells(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p, (true_d, n_exp) in {
        "a vs b": (0.3, 20),
        "c vs d": (-0.1, 12),
        "e vs f": (0.5, 1),
    }.items():
        for e in range(n_exp):
            sd = float(np.exp(rng.normal(0, 0.3)))
            rows.append((p, f"exp{e}", (true_d + rng.normal(0, 0.2)) * sd, sd))
    return pd.DataFrame(rows, columns=["pair", "experiment", "mean", "pooled_sd"])


def test_point_estimate_is_the_mean_of_per_experiment_d_and_interval_matches_scipy():
    from psystats.stats.cohens_d import pair_cohens_d

    cells = _cells()
    got = pair_cohens_d(cells, n_boot=20000, seed=1).set_index("pair")
    for pair, g in cells.groupby("pair"):
        d = (g["mean"] / g["pooled_sd"]).to_numpy()
        assert got.loc[pair, "n_experiments"] == len(d)
        assert got.loc[pair, "cohens_d"] == pytest.approx(d.mean(), rel=1e-12)
        if len(d) < 2:
            assert np.isnan(got.loc[pair, "q_low"]) and np.isnan(got.loc[pair, "q_high"])
            continue
        ref = stats.bootstrap(
            (d,),
            np.mean,
            confidence_level=0.9,
            method="percentile",
            n_resamples=20000,
            random_state=2,
        ).confidence_interval
        # Two independent Monte Carlo bootstraps: agree to a few % of the interval width.
        width = ref.high - ref.low
        assert abs(got.loc[pair, "q_low"] - ref.low) < 0.05 * width
        assert abs(got.loc[pair, "q_high"] - ref.high) < 0.05 * width


def test_cells_without_a_pooled_sd_are_left_out():
    from psystats.stats.cohens_d import pair_cohens_d

    cells = _cells()
    cells.loc[0, "pooled_sd"] = 0.0
    cells.loc[1, "pooled_sd"] = np.nan
    got = pair_cohens_d(cells).set_index("pair")
    assert got.loc["a vs b", "n_experiments"] == 18
    assert pair_cohens_d(cells.drop(columns="pooled_sd")).empty
