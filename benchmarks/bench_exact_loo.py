"""Cost of the exact leave-one-out densities of the marginal normal (issue 13 item 3).

``stats.likelihoods.marginal_normal_loo`` computes log p(y_i | y_-i, theta) for
every cell and posterior draw (what PSIS-LOO needs for the persona cells and
the generations gap cells, whose crossed intercepts are integrated out).
This times it on synthetic layouts: experiments x models cells, one factor
(experiment: the generations gap cells, persona with fixed model effects) and
two crossed factors (experiment and model: persona with random model
effects), on 1,000 draws (the pipeline's LOO thinning).

    python benchmarks/bench_exact_loo.py [--draws 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    from psystats.stats.likelihoods import marginal_normal_loo

    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    for n_exp, n_models in ((18, 30), (100, 60)):
        e = np.repeat(np.arange(n_exp), n_models)
        m = np.tile(np.arange(n_models), n_exp)
        n = e.size
        mu = rng.normal(size=(args.draws, n))
        var = rng.uniform(0.01, 0.1, (args.draws, n))
        sig = rng.uniform(0.1, 1.0, (args.draws, 2))
        y = rng.normal(size=n)
        row = {"cells": n, "experiments": n_exp, "models": n_models, "draws": args.draws}
        t = time.perf_counter()
        marginal_normal_loo(y, mu, var, sig[:, :1], [(e, n_exp)])
        row["one_factor_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        marginal_normal_loo(y, mu, var, sig, [(e, n_exp), (m, n_models)])
        row["two_factors_s"] = round(time.perf_counter() - t, 3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
