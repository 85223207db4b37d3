"""Do the simulated warehouse's cells scatter around the truth as their standard errors say?

    nice python benchmarks/bench_sim_check.py --db ingested.duckdb --seeds 0 40
    nice python benchmarks/bench_sim_check.py --synthetic --seeds 0 20

For each seed, draws exactly what :func:`psystats.stats.simulate.simulate_warehouse`
writes (its own functions: layout, truth, cell means, per-response scores;
nothing is written) on the responses of ``--db`` (e.g. the ingested main
layout of ``bench_null_e2e.py``) or of a synthetic warehouse, aggregates the
cells as ``stats.cells`` does (participant mean difference, then the mean over
participants) and compares them with the truth: cell residual
r_c = mean_c - (pair_mean + domain + type x domain + experiment), whose
variance is sigma_cell^2 + participant_sd^2 / n_c.  Prints per seed the z of
the overall mean residual and of each type's deviation from the grand mean
(what the fit's ``type`` estimates); over seeds both should be N(0, 1).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from psystats.stats import simulate as S
from psystats.warehouse import db as warehouse_db

FAMILIES = ("qwen", "llama", "olmo", "gemma")
TYPES = ("instruct", "reasoning", "code")


def seed_check(resp: pd.DataFrame, seed: int, scales: dict, participant_sd: float = 0.3):
    models, pairs = S.simulated_models(FAMILIES, (1, 2, 3), TYPES)
    design = S.warehouse_design(resp, pairs, participant_sd)
    truth = S.simulate_cells(design=design, seed=seed, scales=scales).truth
    rng = np.random.default_rng(seed)  # the generator simulate_warehouse draws with
    mu = S.draw_cell_means(design, truth, rng)
    nll = S.draw_scores(resp, models, pairs, mu, rng, participant_sd)
    means = []
    for p in pairs:
        d = pd.Series(nll[p["post_model"]] - nll[p["base_model"]])
        part = d.groupby([resp["experiment"], resp["participant_key"]]).mean()
        means.append(part.groupby(level=0).mean().rename(p["pair"]))
    cells = pd.concat(means, axis=1).stack().rename("mean").reset_index()
    cells.columns = ["experiment", "pair", "mean"]
    c = design.merge(cells, on=["pair", "experiment"])
    dom = c["domain"].fillna("(no domain)")
    expected = c["pair"].map(truth["pair_mean"]) + c["experiment"].map(truth["experiment"])
    expected += dom.map(truth["domain"]).fillna(0.0)
    if "type_domain" in truth:
        td = truth["type_domain"]
        expected += [td.loc[t, x] if x in td.columns else 0.0 for t, x in zip(c.post_training, dom)]
    r = (c["mean"] - expected).to_numpy()
    v = truth["sigma_cell"] ** 2 + participant_sd**2 / c["n"].to_numpy(float)
    out = {"overall": r.sum() / np.sqrt(v.sum())}
    for t in TYPES:
        w = np.where(c.post_training == t, 1 / (c.post_training == t).sum(), 0) - 1 / len(c)
        out[t] = float((w * r).sum() / np.sqrt((w**2 * v).sum()))
    return out, len(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="warehouse whose responses to simulate on (read only)")
    ap.add_argument("--synthetic", action="store_true", help="9 synthetic experiments instead")
    ap.add_argument("--seeds", nargs=2, type=int, default=(0, 10), metavar=("FIRST", "STOP"))
    args = ap.parse_args()
    if args.synthetic:
        path = Path(tempfile.mkdtemp()) / "synthetic.duckdb"
        con = warehouse_db.open(path, "write", create=True)
        S.add_synthetic_experiments(con, n_experiments=9, participants=40, responses=3, seed=1)
    else:
        con = warehouse_db.open(args.db)
    resp = S.warehouse_responses(con)
    con.close()
    rows = []
    for seed in range(*args.seeds):
        t0 = time.perf_counter()
        z, n_cells = seed_check(resp, seed, {"sigma_type_domain": 0.0})
        rows.append(z)
        print(
            f"seed {seed}: {n_cells} cells, overall z {z['overall']:+.2f}, type deviation z "
            + ", ".join(f"{t} {z[t]:+.2f}" for t in TYPES)
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    df = pd.DataFrame(rows)
    types = df[list(TYPES)].to_numpy().ravel()
    print(
        f"{len(df)} seeds: overall z mean {df['overall'].mean():+.2f} SD "
        f"{df['overall'].std():.2f}; type deviation z SD {types.std():.2f}, "
        f"|z| > 1.645 in {int((abs(types) > 1.645).sum())} of {types.size} (10% expected)"
    )


if __name__ == "__main__":
    main()
