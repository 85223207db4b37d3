"""Recovery grid of ``psystats fit participants`` (run through ``bench_fit.py --participants N``).

Each dataset is a fresh warehouse from
:func:`psystats.stats.participants_sim.simulate_participants` with true effects drawn
anew (slope of age ~ N(0, 0.004) nats per year, of anxiety ~ N(0, 0.01) nats per point,
gender level effects ~ N(0, 0.03) nats), a share of ages missing, fitted through
``fit_participants`` exactly as the command does (gates, retries, PPC, LOO, stored).
Reported per corner: the share of fits that meet the gates (target >= 95%), the
coverage of the 90% intervals of every slope and level effect (target 85-95%), the
missing counts the fits stored against the simulated ones, and seconds per fit.

Corners: ``two_levels`` (gender with 2 levels: fixed scale, sum to zero) and
``five_levels`` (5 levels: partial pooling with sigma_level).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

CORNERS = {
    "two_levels": dict(levels=("female", "male")),
    "five_levels": dict(levels=("a", "b", "c", "d", "e")),
}


def _dataset(corner: str, k: int, args) -> dict:
    from psystats.stats.options import SamplingOptions
    from psystats.stats.participants import fit_participants
    from psystats.stats.participants_sim import simulate_participants
    from psystats.warehouse import db as warehouse_db

    rng = np.random.default_rng(1000 + k)
    slopes = {"age": rng.normal(0, 0.004), "anxiety": rng.normal(0, 0.01)}
    levels = {lv: rng.normal(0, 0.03) for lv in CORNERS[corner]["levels"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.duckdb"
        con = warehouse_db.open(path, "write", create=True)
        truth = simulate_participants(
            con, slopes=slopes, gender_effects=levels, missing={"age": 0.15}, seed=k
        )
        con.close()
        con = warehouse_db.open(path, "statement")
        t0 = time.perf_counter()
        r = fit_participants(
            con,
            None,
            {"covariates": "age,gender,anxiety"},
            SamplingOptions(draws=args.draws, tune=args.tune, chains=2, seed=k),
            allow_failure=True,
        )
        dt = time.perf_counter() - t0
        con.close()
    sm = r.summary["covariates"]
    covered = []
    for c, true in truth["slope"].items():
        covered.append(sm[c]["slope"]["q05"] <= true <= sm[c]["slope"]["q95"])
    # Two levels: the second is the negative of the first (one interval, counted once).
    names = list(truth["level_effect"])[: 1 if len(levels) == 2 else None]
    for lv in names:
        d = sm["gender"]["levels"][lv.split("=", 1)[1]]
        covered.append(d["q05"] <= truth["level_effect"][lv] <= d["q95"])
    return dict(
        passed=r.passed,
        retries=len(r.redrawn),
        covered=covered,
        missing_ok=r.summary["missing"]["age"] == truth["missing"]["age"],
        seconds=dt,
    )


def participants_grid(args) -> dict:
    """Gate pass rate and 90% coverage per corner over ``args.participants`` datasets each."""
    import os

    out = {}
    for corner in CORNERS:
        runs = [_dataset(corner, k, args) for k in range(args.participants)]
        cov = [c for r in runs for c in r["covered"]]
        out[corner] = dict(
            datasets=len(runs),
            gates_passed=float(np.mean([r["passed"] for r in runs])),
            retried=int(sum(r["retries"] > 0 for r in runs)),
            coverage_90=float(np.mean(cov)),
            intervals=len(cov),
            missing_counts_right=all(r["missing_ok"] for r in runs),
            median_seconds=float(np.median([r["seconds"] for r in runs])),
        )
        print(corner, out[corner], flush=True)
    return {"participants": out, "loadavg": os.getloadavg()}
