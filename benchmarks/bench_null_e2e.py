"""The field check of issue 13: a plain `psystats fit effects` on simulated scores over REAL
Psych-201 experiments, brought in the way a user's scores come in (`psystats scores import`).

    nice python benchmarks/bench_null_e2e.py                          # type x domain null, seed 0
    nice python benchmarks/bench_null_e2e.py --seeds 0 1 2 --json out.jsonl
    nice python benchmarks/bench_null_e2e.py --corner all --seeds 0   # every null corner
    nice python benchmarks/bench_null_e2e.py --corner family_zero --corner pair_zero

For each (corner, seed):

1. real studies are ingested once with `psystats ingest` (their experiments and
   domains come from the Psych-201 files and experiment_domains.csv);
2. on a copy, :func:`psystats.stats.simulate.simulate_warehouse` simulates a
   base per (family, generation) and a post-trained model per type on top of
   it (sizes differ per family and generation), with per-participant
   post-minus-base differences that follow the effects model with known
   values (:data:`psystats.stats.simulate.TRUE_SCALES`) and, in every corner,
   NO type x domain interaction; the corner sets one more scale to zero;
3. the simulated runs are written as score files (Parquet: response_id, nll)
   and a models.toml, and brought into a fresh copy of the ingested warehouse
   with `psystats models load` and `psystats scores import`;
4. `psystats fit effects` runs with its defaults (draws, tune, chains, priors,
   parameterisation, the refit without type x domain), plus
   ``--allow-diagnostics-failure`` so a fit that misses its gates is stored
   (``fits.passed = false``) and its intervals can still be compared;
5. the stored ``fit_params`` 90% intervals (q05-q95) are compared with the
   truth, per parameter family; a scale whose truth is 0 is reported by its
   q95 (a central interval never contains its boundary).

The commands run in-process through the click entry point (``psystats.cli.main``),
exactly the code a shell call runs, without paying the interpreter start-up
per command.  Timings are wall-clock on whatever machine runs this; report the
machine and load with them.  ``--json`` appends one JSON object per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PSYCH201 = Path(
    os.environ.get("PSYCH201_DIR", ROOT.parent / "shared" / "data" / "psych201")
)
# Real studies of moderate size: 27 experiments in Psycholinguistics, Risky Choice,
# Reasoning, Reinforcement Learning and one experiment without a domain (little2024),
# ~315k responses.  (alsobay2025 adds ~350 experiments of a few participants each,
# shahar2019 350k responses: left out to keep a seed within minutes.)
DEFAULT_STUDIES = (
    "franke2024bayesian",
    "guenther2022relational",
    "guenther2023associations_individual",
    "guenther2023grammaticality",
    "guenther2024associations_sentences_texts",
    "guenther2024comprehension",
    "olschewski2024skewness",
    "schiekiera2025metascience",
    "spektor2019contexteffects",
    "thoma2025problearn",
    "little2024functionestimation",
)
# Every corner keeps the type x domain interaction absent; the others zero one more scale.
CORNERS: dict[str, dict[str, float]] = {
    "type_domain_zero": {"sigma_type_domain": 0.0},
    "family_zero": {"sigma_type_domain": 0.0, "sigma_family": 0.0},
    "domain_zero": {"sigma_type_domain": 0.0, "sigma_domain": 0.0},
    "experiment_zero": {"sigma_type_domain": 0.0, "sigma_experiment": 0.0},
    "pair_zero": {"sigma_type_domain": 0.0, "sigma_pair": 0.0},
}
# Parameter families compared with the truth (fit_params.parameter == truth key).
EFFECTS = (
    "intercept",
    "type",
    "type_mean",
    "family",
    "size_slope",
    "generation_slope",
    "generation_slope_family",
    "domain",
    "type_domain",
    "experiment",
    "pair",
    "pair_mean",
)
SCALES = (
    "sigma_family",
    "sigma_generation_family",
    "sigma_domain",
    "sigma_type_domain",
    "sigma_experiment",
    "sigma_pair",
    "sigma_cell",
)


def _cli(args: list[str]) -> tuple[int, str]:
    """Run one psystats command in-process; (exit code, output)."""
    from click.testing import CliRunner

    from psystats.cli import main

    r = CliRunner().invoke(main, args, catch_exceptions=True)
    out = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        out += f"\n{type(r.exception).__name__}: {r.exception}"
    return r.exit_code, out


def ingest_once(psych201: Path, studies: list[str], workdir: Path) -> tuple[Path, float]:
    """The ingested warehouse (made with `psystats ingest` unless already in workdir)."""
    key = hashlib.sha256("\n".join(studies).encode()).hexdigest()[:12]
    db = workdir / f"ingested-{key}.duckdb"
    if db.exists():
        return db, 0.0
    t0 = time.perf_counter()
    tmp = db.with_suffix(".partial.duckdb")
    tmp.unlink(missing_ok=True)
    code, out = _cli(["--db", str(tmp), "ingest", "--quiet", *[str(psych201 / s) for s in studies]])
    if code != 0:
        raise SystemExit(f"ingest failed:\n{out}")
    tmp.rename(db)
    return db, time.perf_counter() - t0


def simulate_files(
    ingested: Path,
    out: Path,
    *,
    seed: int,
    scales: dict[str, float],
    families: tuple[str, ...],
    generations: tuple[int, ...],
    types: tuple[str, ...],
) -> tuple[Any, list[dict], Path]:
    """Simulated runs on a scratch copy -> score Parquet files + models.toml in ``out``.

    Returns (the simulation with its truth, [{model, path}], models.toml).
    """
    import pyarrow.parquet as pq

    from psystats.stats.simulate import simulate_warehouse
    from psystats.warehouse import db as warehouse_db

    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "scratch.duckdb"
    shutil.copy(ingested, scratch)
    con = warehouse_db.open(scratch, "write", create=True)
    try:
        sim = simulate_warehouse(
            con,
            families=families,
            generations=generations,
            types=types,
            seed=seed,
            scales=scales,
        )
        models = con.execute(
            "SELECT name, family, generation, n_params, post_training, base_model "
            "FROM models ORDER BY base_model NULLS FIRST, name"
        ).fetchall()
        toml = ["# simulated models of benchmarks/bench_null_e2e.py\n"]
        for name, fam, gen, npar, post, base in models:
            toml.append(
                f'[[models]]\nname = "{name}"\ntype = "{post}"\nfamily = "{fam}"\n'
                f'generation = "{gen}"\nn_params = {int(npar)}\n'
                + (f'base = "{base}"\n' if base else "")
            )
        # simulate_warehouse draws base NLL ~ 1 + Exp(1) and post = base + d_i, so a
        # post NLL can fall below 0, which `scores import` rightly refuses.  One
        # constant added to every score of every model keeps each post-minus-base
        # difference, hence every cell, exactly as simulated.
        low = float(con.execute("SELECT min(nll) FROM scores").fetchall()[0][0])
        offset = float(np.ceil(max(0.0, -low)))
        files = []
        for run_id, model in con.execute(
            "SELECT run_id, model FROM score_runs ORDER BY run_id"
        ).fetchall():
            path = out / f"{model}.parquet"
            table = con.execute(
                "SELECT response_id, nll + ? AS nll FROM scores WHERE run_id = ? "
                "ORDER BY response_id",
                [offset, run_id],
            ).to_arrow_table()
            pq.write_table(table, path)
            files.append({"model": model, "path": path, "rows": table.num_rows})
    finally:
        con.close()
    scratch.unlink()
    models_toml = out / "models.toml"
    models_toml.write_text("\n".join(toml))
    return sim, files, models_toml


def import_files(db: Path, files: list[dict], models_toml: Path) -> None:
    """`psystats models load` then one `psystats scores import` per file."""
    code, out = _cli(["--db", str(db), "models", "load", str(models_toml)])
    if code != 0:
        raise SystemExit(f"models load failed:\n{out}")
    for f in files:
        code, out = _cli(
            [
                "--db",
                str(db),
                "scores",
                "import",
                str(f["path"]),
                "--model",
                f["model"],
                "--condition",
                "plain",
            ]
        )
        if code != 0:
            raise SystemExit(f"scores import {f['path']} failed:\n{out}")


def coverage(con, fit_id: int, truth: dict) -> tuple[dict, dict, pd.DataFrame]:
    """(per family [inside, total], q95 of truth-0 scales, every compared row) of a stored fit."""
    rows = con.execute(
        "SELECT parameter, label, q05, q95, mean FROM fit_params WHERE fit_id = ?", [fit_id]
    ).fetchall()
    params = pd.DataFrame(rows, columns=["parameter", "label", "q05", "q95", "mean"])
    compared = []
    for name in (*EFFECTS, *SCALES):
        if name not in truth:
            continue
        value = truth[name]
        got = params[params.parameter == name]
        if got.empty:
            continue
        if isinstance(value, pd.DataFrame):  # type x domain: label "type × domain"
            want = {
                f"{t} × {d}": float(value.loc[t, d]) for t in value.index for d in value.columns
            }
        elif isinstance(value, pd.Series):
            want = {str(k): float(v) for k, v in value.items()}
        else:
            want = {None: float(value)}
        for label, q05, q95, mean in got[["label", "q05", "q95", "mean"]].itertuples(index=False):
            key = None if len(want) == 1 and None in want else str(label)
            if key not in want:
                continue
            compared.append(
                dict(
                    parameter=name,
                    label=label,
                    truth=want[key],
                    mean=mean,
                    q05=q05,
                    q95=q95,
                    inside=bool(q05 <= want[key] <= q95),
                )
            )
    df = pd.DataFrame(
        compared, columns=["parameter", "label", "truth", "mean", "q05", "q95", "inside"]
    )
    per: dict[str, list[int]] = {}
    zero_q95: dict[str, float] = {}
    for name, g in df.groupby("parameter", sort=False):
        if name in SCALES and (g["truth"] == 0).all():
            zero_q95[str(name)] = float(g["q95"].iloc[0])
            continue
        per[str(name)] = [int(g["inside"].sum()), len(g)]
    return per, zero_q95, df


def run_one(
    ingested: Path,
    workdir: Path,
    corner: str,
    seed: int,
    *,
    families: tuple[str, ...],
    generations: tuple[int, ...],
    types: tuple[str, ...],
    fit_args: list[str],
) -> dict:
    from psystats.warehouse import db as warehouse_db

    run_dir = workdir / f"{corner}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    sim, files, models_toml = simulate_files(
        ingested,
        run_dir / "files",
        seed=seed,
        scales=CORNERS[corner],
        families=families,
        generations=generations,
        types=types,
    )
    t_sim = time.perf_counter() - t0
    db = run_dir / "study.duckdb"
    shutil.copy(ingested, db)
    t0 = time.perf_counter()
    import_files(db, files, models_toml)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    code, out = _cli(
        [
            "--db",
            str(db),
            "fit",
            "effects",
            "--seed",
            str(seed),
            "--allow-diagnostics-failure",
            *fit_args,
        ]
    )
    t_fit = time.perf_counter() - t0
    con = warehouse_db.open(db)
    try:
        fit = con.execute(
            "SELECT fit_id, passed, diagnostics, summary, selection FROM fits "
            "WHERE kind = 'effects' ORDER BY fit_id DESC LIMIT 1"
        ).fetchall()
        if not fit:
            raise SystemExit(f"fit effects stored no fit (exit {code}):\n{out}")
        fit_id, passed, diag_json, summary_json, selection_json = fit[0]
        diag = json.loads(diag_json)
        summary = json.loads(summary_json)
        selection = json.loads(selection_json)
        per, zero_q95, compared = coverage(con, int(fit_id), sim.truth)
        n_scores = int(con.execute("SELECT count(*) FROM scores").fetchall()[0][0])
        domains = con.execute(
            "SELECT count(DISTINCT coalesce(domain, '(no domain)')) FROM experiments"
        ).fetchall()[0][0]
    finally:
        con.close()
    without = (summary.get("loo") or {}).get("without", {}).get("type_domain", {})
    result = dict(
        corner=corner,
        seed=seed,
        scales=CORNERS[corner],
        n_pairs=len(selection.get("pairs") or []),
        n_experiments=selection.get("n_experiments"),
        n_domains=int(domains),
        n_cells=selection.get("n_cells"),
        n_scores=n_scores,
        exit_code=code,
        passed=bool(passed),
        max_rhat=diag.get("max_rhat"),
        min_ess_bulk=diag.get("min_ess_bulk"),
        min_ess_tail=diag.get("min_ess_tail"),
        divergences=diag.get("divergences"),
        worst=diag.get("worst"),
        problems=diag.get("problems"),
        dropped_terms=summary.get("dropped_terms"),
        centred=summary.get("centred"),
        refit_without_type_domain_passed=without.get("passed"),
        loo_preferred=without.get("preferred"),
        coverage=per,
        zero_scale_q95=zero_q95,
        seconds=dict(simulate=round(t_sim, 1), import_=round(t_import, 1), fit=round(t_fit, 1)),
        load=os.getloadavg(),
    )
    # The compared rows of the headline families (truth, mean, interval), to see margins.
    result["rows"] = (
        compared[compared.parameter.isin(["type", "type_mean", "family", "domain"])]
        .round(4)
        .to_dict("records")
    )
    result["type_effects_covered"] = all(
        per.get(k, [0, 0])[0] == per.get(k, [0, 0])[1] for k in ("type", "type_mean")
    )
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _commit() -> str:
    """The checkout's commit (+ "-dirty" with uncommitted changes), for the record."""
    import subprocess

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _table(results: list[dict]) -> str:
    """Markdown: one row per run."""
    lines = [
        "| corner | seed | pairs x exps (cells) | gates | max R-hat | min bulk ESS | div. | "
        "type | type_mean | domain | family | type x domain | all effects | truth-0 q95 |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def c(r, k):
        v = r["coverage"].get(k)
        return f"{v[0]}/{v[1]}" if v else "—"

    for r in results:
        tot = [sum(v[i] for k, v in r["coverage"].items() if k in EFFECTS) for i in (0, 1)]
        q = ", ".join(f"{k} {v:.3g}" for k, v in r["zero_scale_q95"].items()) or "—"
        lines.append(
            f"| {r['corner']} | {r['seed']} | {r['n_pairs']} x {r['n_experiments']} "
            f"({r['n_cells']}) | {'met' if r['passed'] else 'MISSED'} | "
            f"{r['max_rhat']:.3f} | {r['min_ess_bulk']:.0f} | {r['divergences']} | "
            f"{c(r, 'type')} | {c(r, 'type_mean')} | {c(r, 'domain')} | {c(r, 'family')} | "
            f"{c(r, 'type_domain')} | {tot[0]}/{tot[1]} | {q} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from psystats.stats.simulate import FAMILIES, TYPES

    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--psych201", type=Path, default=DEFAULT_PSYCH201)
    ap.add_argument("--studies", default=",".join(DEFAULT_STUDIES), help="comma-separated")
    ap.add_argument(
        "--corner",
        action="append",
        choices=[*CORNERS, "all"],
        help="null corner(s) [default: type_domain_zero]; 'all': every corner",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--families", type=int, default=4)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--types", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="[default: a temporary folder]")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON object per run")
    ap.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="extra argument for `fit effects` (repeatable), e.g. --fit-arg=--draws=500",
    )
    args = ap.parse_args(argv)
    corners = args.corner or ["type_domain_zero"]
    if "all" in corners:
        corners = list(CORNERS)
    studies = [s for s in args.studies.split(",") if s]
    missing = [s for s in studies if not (args.psych201 / s).exists()]
    if missing:
        raise SystemExit(f"not in {args.psych201}: {', '.join(missing)} (set --psych201)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_null_e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ingested, t_ingest = ingest_once(args.psych201, studies, workdir)
    print(f"ingested {len(studies)} studies in {t_ingest:.1f} s -> {ingested}", flush=True)
    layout = dict(
        families=tuple(FAMILIES[: args.families]),
        generations=tuple(range(1, args.generations + 1)),
        types=tuple(TYPES[: args.types]),
    )
    results = []
    for corner in corners:
        for seed in args.seeds:
            r = run_one(ingested, workdir, corner, seed, fit_args=args.fit_arg, **layout)
            r["studies"] = studies
            r["commit"] = _commit()
            results.append(r)
            print(json.dumps(r, default=str), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(r, default=str) + "\n")
    print(_table(results))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
