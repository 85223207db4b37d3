"""Benchmark and validation of the effects model (``psystats fit effects``).

    python benchmarks/bench_fit.py                       # 100 pairs x 150 experiments, timings + gates
    python benchmarks/bench_fit.py --pairs 50 --experiments 100 --checks
    python benchmarks/bench_fit.py --recovery 20         # 90% interval coverage over 20 datasets
    python benchmarks/bench_fit.py --sbc 200             # simulation-based calibration, main layout
    python benchmarks/bench_fit.py --grid 20             # null and small corners, 20 datasets each
    python benchmarks/bench_fit.py --grid 5 --corners type_domain_zero,one_cell
    python benchmarks/bench_fit.py --participants 8 --draws 1000 --tune 500   # fit participants

The grid (``--grid N``) simulates N datasets per corner: every grouped term
(type, family, domain, type x domain, experiment, pair, generation-by-family)
with a true scale of zero and with a large one (5x the default truth), and the
small layouts (2 pairs; 1 pair; 1 experiment; 1 cell).  Each dataset goes
through ``prepare`` with the default spec, as ``psystats fit effects`` would
(so the automatic parameterisation sees each dataset); compiled models are
reused across datasets whose model structure is the same.  Reported per
corner: the share of fits meeting the gates (target >= 95%) and the 90%
coverage per parameter family (target 85-95%; a scale whose truth is 0 is left
out, as a central interval never contains its boundary: its q95 is shown).  A fit that misses its gates
in a way sampling can mend samples again, as
``psystats fit`` does by default (``pipeline.next_attempt``: a few divergences
-> target_accept 0.99; a narrow R-hat/ESS miss -> twice the draws).

Timings are wall-clock on whatever machine runs this; report the machine and
its load with the figures (the numbers printed include ``os.getloadavg()``).
Recovery and SBC compile the model once and re-run it on new data of the same
layout (``compiled.with_data``), so they measure the model, not the compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def full_size(args) -> dict:
    from psystats.stats.effects_fit import EffectsFitSpec, fit_cells
    from psystats.stats.options import SamplingOptions
    from psystats.stats.simulate import simulate_cells

    sim = simulate_cells(
        args.pairs,
        args.experiments,
        n_families=args.families,
        n_types=args.types,
        n_domains=11,
        seed=args.seed,
        missing=args.missing,
    )
    t0 = time.perf_counter()
    fit = fit_cells(
        sim.cells,
        EffectsFitSpec(checks=args.checks, compare=("type_domain",) if args.checks else ()),
        SamplingOptions(draws=args.draws, tune=args.tune, chains=4, seed=args.seed),
        allow_failure=True,
    )
    total = time.perf_counter() - t0
    rec = fit.summary["sampler"]
    d = fit.diagnostics
    return {
        "cells": fit.data.n_cells,
        "pairs": args.pairs,
        "experiments": args.experiments,
        "active_terms": fit.data.active,
        "centred": fit.data.centred,
        "compile_s": round(rec.get("compile_seconds") or 0, 1),
        "sampling_s": round(rec["sampling_seconds"], 1),
        "total_s": round(total, 1),
        "max_rhat": round(d.max_rhat, 4),
        "min_ess_bulk": round(d.min_ess_bulk),
        "min_ess_tail": round(d.min_ess_tail),
        "divergences": d.divergences,
        "min_bfmi": round(d.min_bfmi, 2),
        "passed": d.passed,
        "problems": d.problems,
        "worst": d.worst,
        "ppc": fit.summary.get("ppc"),
        "loo": fit.summary.get("loo"),
        "loadavg": os.getloadavg(),
    }


def _compiled(cells):
    import nutpie

    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model
    from psystats.stats.effects_spec import EffectsSpec

    spec = EffectsSpec()
    data = prepare(cells, spec)
    model = build_effects_model(data, spec)
    t = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    return model, data, compiled, time.perf_counter() - t


def recovery(args) -> dict:
    """Coverage of the 90% central intervals of every true parameter element."""
    import nutpie

    from psystats.stats.effects_model import reported_vars
    from psystats.stats.sampling import diagnose
    from psystats.stats.simulate import simulate_cells, simulate_design

    design = simulate_design(
        args.rec_pairs, args.rec_experiments, n_families=4, n_types=3, n_domains=6, seed=0
    )
    first = simulate_cells(design=design, seed=0)
    model, data, compiled, compile_s = _compiled(first.cells)
    hits, by_param, failed, t_sample = [], {}, 0, 0.0
    for k in range(args.recovery):
        sim = simulate_cells(design=design, seed=1000 + k)
        cells = sim.cells.set_index(["pair", "experiment"]).loc[
            list(zip(data.cells.pair, data.cells.experiment))
        ]
        t = time.perf_counter()
        idata = nutpie.sample(
            compiled.with_data(y_obs=cells.y.to_numpy(), se=cells.se.to_numpy()),
            draws=args.draws,
            tune=args.tune,
            chains=4,
            seed=k,
            progress_bar=False,
            target_accept=0.95,
        )
        t_sample += time.perf_counter() - t
        if not diagnose(idata, var_names=reported_vars(model)).passed:
            failed += 1
        post = idata.posterior
        for name, truth in sim.truth.items():
            if name not in post:
                continue
            da = post[name]
            lo, hi = da.quantile(0.05, ("chain", "draw")), da.quantile(0.95, ("chain", "draw"))
            if np.ndim(truth) == 0:
                inside = [bool(lo <= truth <= hi)]
            else:
                tv = np.asarray(
                    truth.loc[[str(v) for v in da.coords[da.dims[2]].values]]
                    if hasattr(truth, "loc")
                    else truth
                )
                if da.ndim == 4:
                    tv = np.asarray(
                        truth.loc[
                            list(map(str, da.coords[da.dims[2]].values)),
                            list(map(str, da.coords[da.dims[3]].values)),
                        ]
                    )
                inside = list(((lo.values <= tv) & (tv <= hi.values)).ravel())
            hits += inside
            by_param.setdefault(name, []).extend(inside)
    return {
        "datasets": args.recovery,
        "cells": data.n_cells,
        "compile_s": round(compile_s, 1),
        "mean_sampling_s": round(t_sample / args.recovery, 2),
        "coverage_90": round(float(np.mean(hits)), 3),
        "n_intervals": len(hits),
        "coverage_by_parameter": {k: round(float(np.mean(v)), 3) for k, v in by_param.items()},
        "fits_missing_gates": failed,
    }


def _read_log(path: str | None) -> list[dict]:
    """Records of an earlier (perhaps interrupted) run of the same command, to resume from."""
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _append_log(path: str | None, record: dict) -> None:
    """One finished replication or dataset, flushed at once: a killed run loses at most one."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def sbc(args) -> dict:
    """Simulation-based calibration (Talts et al. 2018) on a small configuration."""
    import nutpie
    import pymc as pm

    from psystats.stats.simulate import simulate_cells

    if args.sbc_layout == "main":
        layout = dict(MAIN_LAYOUT)
        small = simulate_cells(layout.pop("n_pairs"), layout.pop("n_experiments"), **layout).cells
    else:
        small = simulate_cells(6, 8, n_families=2, n_types=2, n_domains=2, seed=0).cells
    model, data, compiled, compile_s = _compiled(small)
    scalars = [
        v
        for v in (
            "intercept",
            "size_slope",
            "generation_slope",
            "sigma_cell",
            "sigma_experiment",
            "sigma_pair",
        )
        if v in model.named_vars
    ]
    scalars += [
        v for v in ("sigma_domain", "sigma_type_domain", "sigma_family") if v in model.named_vars
    ]
    vectors = [v for v in ("type", "domain") if v in model.named_vars]
    with model:
        prior = pm.sample_prior_predictive(draws=args.sbc, random_seed=args.seed)
    ranks: dict[str, list[int]] = {}
    thin = 99  # ranks in 0..99 from 99 thinned posterior draws
    done = {r["i"]: r for r in _read_log(args.log) if r.get("kind") == "sbc"}
    for r in done.values():
        for k, v in r["ranks"].items():
            ranks.setdefault(k, []).extend(v)
    for i in range(args.sbc):
        if i in done:
            continue
        y = prior.prior_predictive["y"].values[0, i]
        idata = nutpie.sample(
            compiled.with_data(y_obs=y),
            draws=thin * 10 // 4 + 1,
            tune=500,
            chains=4,
            seed=i,
            progress_bar=False,
            target_accept=0.95,
        )
        rec: dict[str, list[int]] = {}
        for v in scalars + vectors:
            draws = idata.posterior[v].values.reshape(-1, *idata.posterior[v].shape[2:])
            draws = draws[np.linspace(0, len(draws) - 1, thin).astype(int)]
            true = prior.prior[v].values[0, i]
            r = (draws < true).sum(axis=0)
            for j, rr in enumerate(np.atleast_1d(r)):
                rec.setdefault(f"{v}[{j}]" if np.ndim(r) else v, []).append(int(rr))
        for k, v in rec.items():
            ranks.setdefault(k, []).extend(v)
        _append_log(args.log, {"kind": "sbc", "i": i, "ranks": rec})
    return _sbc_summary(ranks, args, len(small), compile_s, thin)


def _sbc_summary(ranks: dict, args, cells: int, compile_s: float | None, thin: int = 99) -> dict:
    """Rank histograms and chi-square uniformity p-values of the replications done so far."""
    from scipy import stats

    out = {}
    for k, r in ranks.items():
        hist = np.histogram(r, bins=10, range=(0, thin + 1))[0]
        out[k] = {"chi2_p": float(stats.chisquare(hist).pvalue), "hist": hist.tolist()}
    return {
        "replications": len(next(iter(ranks.values()), [])),
        "layout": args.sbc_layout,
        "cells": int(cells),
        "compile_s": None if compile_s is None else round(compile_s, 1),
        "min_p": min(v["chi2_p"] for v in out.values()),
        "parameters": out,
    }


MAIN_LAYOUT = dict(n_pairs=24, n_experiments=40, n_families=4, n_types=3, n_domains=6)
GROUPED = {
    "type": "type",
    "family": "sigma_family",
    "domain": "sigma_domain",
    "type_domain": "sigma_type_domain",
    "experiment": "sigma_experiment",
    "pair": "sigma_pair",
    "generation_family": "sigma_generation_family",
}


def corners() -> dict[str, dict]:
    """Corner name -> simulate_cells arguments (layout and true scales)."""
    from psystats.stats.simulate import TRUE_SCALES

    out: dict[str, dict] = {"main": dict(MAIN_LAYOUT)}
    for term, scale in GROUPED.items():
        out[f"{term}_zero"] = dict(MAIN_LAYOUT, scales={scale: 0.0})
        out[f"{term}_large"] = dict(MAIN_LAYOUT, scales={scale: 5 * TRUE_SCALES[scale]})
    out["two_pairs"] = dict(n_pairs=2, n_experiments=20, n_families=1, n_types=2, n_domains=4)
    out["one_pair"] = dict(n_pairs=1, n_experiments=20, n_families=1, n_types=1, n_domains=4)
    out["one_experiment"] = dict(n_pairs=12, n_experiments=1, n_families=3, n_types=2, n_domains=1)
    out["one_cell"] = dict(n_pairs=1, n_experiments=1, n_families=1, n_types=1, n_domains=1)
    return out


def _covered(post, truth: dict) -> dict[str, list[bool]]:
    """Per parameter: is each true element inside its central 90% posterior interval?"""
    out: dict[str, list[bool]] = {}
    for name, tv in truth.items():
        if name not in post:
            continue
        da = post[name]
        lo = da.quantile(0.05, ("chain", "draw"))
        hi = da.quantile(0.95, ("chain", "draw"))
        if np.ndim(tv) == 0:
            out[name] = [bool(lo <= tv <= hi)]
            continue
        labels = [list(map(str, da.coords[d].values)) for d in da.dims[2:]]
        t = np.asarray(tv.loc[labels[0]] if len(labels) == 1 else tv.loc[labels[0], labels[1]])
        out[name] = list(((lo.values <= t) & (t <= hi.values)).ravel())
    return out


def grid(args) -> dict:
    """Gate pass rate and 90% coverage per parameter family, for every corner."""
    import nutpie

    from psystats.stats.effects_design import prepare
    from psystats.stats.effects_model import build_effects_model, reported_vars
    from psystats.stats.effects_spec import EffectsSpec
    from psystats.stats.options import SamplingOptions
    from psystats.stats.pipeline import next_attempt
    from psystats.stats.sampling import diagnose
    from psystats.stats.simulate import simulate_cells, simulate_design

    defaults = SamplingOptions()
    wanted = args.corners.split(",") if args.corners else list(corners())
    results = {}
    for name in wanted:
        kw = dict(corners()[name])
        scales = kw.pop("scales", None)
        # One layout per corner (compiled models bake in sizes, generations and
        # bases); the datasets differ in their effects and cell statistics.
        design = simulate_design(kw.pop("n_pairs"), kw.pop("n_experiments"), seed=0, **kw)
        compiled_by_key: dict = {}
        passed, cover, zero_q95, secs, structures = 0, {}, {}, 0.0, set()
        zero_scales = {k for k, v in (scales or {}).items() if v == 0}
        data = None
        logged = {
            r["k"]: r
            for r in _read_log(args.log)
            if r.get("kind") == "grid" and r["corner"] == name
        }
        for k in range(args.grid):
            if k in logged:
                r = logged[k]
                passed += r["passed"]
                secs += r["seconds"]
                structures.add(r["structure"])
                for n, hits in r["cover"].items():
                    cover.setdefault(n, []).extend(hits)
                for n, q in r["zero_q95"].items():
                    zero_q95.setdefault(n, []).append(q)
                continue
            sim = simulate_cells(design=design, seed=2000 + k, scales=scales)
            spec = EffectsSpec()
            data = prepare(sim.cells, spec)
            key = (
                tuple(data.active),
                tuple(sorted(data.centred.items())),
                tuple(sorted(data.fixed_scale)),
                data.sigma_cell_fixed,
                round(data.prior_scale, 6),
            )
            structures.add(repr(key))
            if key not in compiled_by_key:
                model = build_effects_model(data, spec)
                compiled_by_key[key] = (model, nutpie.compile_pymc_model(model))
            model, compiled = compiled_by_key[key]
            c = data.cells
            t = time.perf_counter()
            idata = nutpie.sample(
                compiled.with_data(y_obs=c.y.to_numpy(float), se=c.se.to_numpy(float)),
                draws=args.draws,
                tune=args.tune,
                chains=4,
                seed=k,
                progress_bar=False,
                target_accept=defaults.target_accept,
            )
            diag = diagnose(idata, var_names=reported_vars(model))
            current = {"draws": args.draws, "target_accept": defaults.target_accept}
            for _ in range(defaults.redraws):  # what run_fit does by default
                nxt = next_attempt(diag, **current)
                if nxt is None:
                    break
                current = nxt
                idata = nutpie.sample(
                    compiled.with_data(y_obs=c.y.to_numpy(float), se=c.se.to_numpy(float)),
                    tune=args.tune,
                    chains=4,
                    seed=k,
                    progress_bar=False,
                    **current,
                )
                diag = diagnose(idata, var_names=reported_vars(model))
            dt = time.perf_counter() - t
            secs += dt
            ok = bool(diag.passed)
            passed += ok
            truth = {n: v for n, v in sim.truth.items() if n not in zero_scales}
            covered = {
                n: [bool(h) for h in hits] for n, hits in _covered(idata.posterior, truth).items()
            }
            for n, hits in covered.items():
                cover.setdefault(n, []).extend(hits)
            q95 = {
                n: float(idata.posterior[n].quantile(0.95))
                for n in zero_scales
                if n in idata.posterior
            }
            for n, q in q95.items():
                zero_q95.setdefault(n, []).append(q)
            _append_log(
                args.log,
                {"kind": "grid", "corner": name, "k": k, "passed": ok, "seconds": dt,
                 "structure": repr(key), "cover": covered, "zero_q95": q95},
            )  # fmt: skip
        if data is None:  # every dataset came from the log: describe the layout all the same
            data = prepare(
                simulate_cells(design=design, seed=2000, scales=scales).cells, EffectsSpec()
            )
        results[name] = {
            "datasets": args.grid,
            "cells": int(len(data.cells)),
            "gate_pass_rate": round(passed / args.grid, 3),
            "coverage_90": {n: round(float(np.mean(v)), 3) for n, v in cover.items()},
            "intervals": {n: len(v) for n, v in cover.items()},
            "zero_scale_q95_median": {
                n: round(float(np.median(v)), 4) for n, v in zero_q95.items()
            },
            "active_terms": list(data.active),
            "model_structures": len(structures),
            "sigma_cell_fixed": data.sigma_cell_fixed,
            "mean_sampling_s": round(secs / args.grid, 2),
        }
        print(name, json.dumps(results[name], default=str), flush=True)
    return {"corners": results, "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--experiments", type=int, default=150)
    ap.add_argument("--families", type=int, default=6)
    ap.add_argument("--types", type=int, default=4)
    ap.add_argument("--missing", type=float, default=0.3, help="share of cells left out")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checks", action="store_true", help="also PPC, LOO and the LOO comparison")
    ap.add_argument("--recovery", type=int, default=0, help="number of recovery datasets")
    ap.add_argument("--rec-pairs", type=int, default=24)
    ap.add_argument("--rec-experiments", type=int, default=40)
    ap.add_argument("--sbc", type=int, default=0, help="number of SBC replications")
    ap.add_argument(
        "--sbc-layout",
        choices=("main", "small"),
        default="main",
        help="main: 24 pairs x 40 experiments (the grid's main layout); small: 6 x 8",
    )
    ap.add_argument("--grid", type=int, default=0, help="datasets per corner of the grid")
    ap.add_argument("--corners", default="", help="comma-separated corners (default: all)")
    ap.add_argument(
        "--log",
        default=None,
        help="JSON-lines file: each SBC replication / grid dataset is appended when done, and "
        "a rerun with the same file resumes after the last one (the summary covers all)",
    )
    ap.add_argument(
        "--participants",
        type=int,
        default=0,
        help="datasets per corner of the fit participants recovery grid (bench_participants.py)",
    )
    args = ap.parse_args()
    if args.participants:
        from bench_participants import participants_grid

        res = participants_grid(args)
    elif args.grid:
        res = grid(args)
    elif args.recovery:
        res = recovery(args)
    elif args.sbc:
        res = sbc(args)
    else:
        res = full_size(args)
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
