"""Psych-201 at scale (issue 12): time and peak RSS of each command against score rows.

Builds a warehouse of the local Psych-201 studies, then imports synthetic
models (one Parquet file of per-response NLLs each, as an external scorer
would deliver: ``response_id, nll, n_tokens``) in base/instruct pairs.  After
each step (N models imported) it runs, each in its own process so the peak
RSS is that command's own:

* ``psystats scores import`` of the step's new models (rows/s, peak RSS);
* the warehouse file size;
* ``psystats export cells`` (the cell build ``fit effects`` runs first);
* the ``fit effects`` data preparation (cells through the brief connection);
* ``psystats report`` (HTML; every section's queries);
* ``psystats scores export`` of one model;
* one user query through ``psystats sql`` (mean NLL per model);

and at the end fits ``log(y) = a + b log(score rows)`` per measure (b: the
growth exponent; ~0 flat, ~1 linear).

    nice python benchmarks/bench_scale.py --steps 4,8,16 --work /tmp/scale

Results go to ``<work>/bench_scale.json`` and a Markdown table on stdout.
``PSYSTATS_MEMORY_LIMIT``/``PSYSTATS_TEMP_DIR`` apply as for any command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from psystats.warehouse import settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "psych201"
# Each command runs in a child that reports its own peak RSS (VmHWM) on its last stderr
# line.  Not the child's ru_maxrss: Linux carries the pre-exec image's peak into it, so
# every figure would have this (bigger) benchmark process's RSS as a floor.
HWM_TAG = "BENCH_VMHWM_KIB"
REPORT_HWM = f"""
def _report_hwm():
    import sys
    try:
        with open("/proc/self/status") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("{HWM_TAG}", kib, file=sys.stderr, flush=True)
"""
WRAP_CLI = (
    REPORT_HWM
    + """
import sys
from psystats.cli import main
try:
    main(sys.argv[1:], prog_name="psystats")
finally:
    _report_hwm()
"""
)
PSYSTATS = [sys.executable, "-c", WRAP_CLI]


def folder_mib(folder: Path) -> float:
    total = 0
    for f in folder.rglob("*") if folder.exists() else []:
        try:
            total += f.stat().st_size
        except OSError:  # a spill file removed while we looked
            pass
    return total / 2**20


def run_rss(cmd: list[str], temp: Path | None = None) -> dict:
    """Run ``cmd``: wall time (s), the child's own peak RSS (MiB, from os.wait4), output,
    and the peak size of the DuckDB temp folder ``temp`` while it ran (sampled)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while temp is not None and not done.wait(0.25):
            peak[0] = max(peak[0], folder_mib(temp))

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Read both pipes without deadlock, then reap with wait4 for the child's rusage.
    bufs: dict[str, bytes] = {}

    def drain(name, f):
        bufs[name] = f.read()

    ts = [
        threading.Thread(target=drain, args=(n, f)) for n, f in (("o", p.stdout), ("e", p.stderr))
    ]
    for t in ts:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    for t in ts:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    out, err = bufs["o"].decode(errors="replace"), bufs["e"].decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    hwm = [ln.split()[1] for ln in err.splitlines() if ln.startswith(HWM_TAG)]
    return {
        "seconds": round(wall, 3),
        # The child's own VmHWM; ru_maxrss (KiB on Linux) only where it could not say.
        "rss_mib": round((int(hwm[-1]) if hwm else ru.ru_maxrss) / 1024, 1),
        "temp_peak_mib": round(peak[0], 1),
        "stdout": out,
        "stderr": err,
    }


def model_names(k: int) -> tuple[str, str]:
    """The k-th pair: (base, post-trained)."""
    return f"synth/base-{k:03d}", f"synth/instruct-{k:03d}"


def write_scores_file(db: Path, path: Path, seed: int, shift: float) -> int:
    """One model's scores for every response, deterministic in ``seed`` (not timed)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        # A deterministic pseudo-random NLL per (response, model): 1 + U(0, 4) + shift,
        # with a per-participant part so participants differ.
        con.execute(
            f"""COPY (
                SELECT response_id,
                       1.0 + (hash(response_id, {seed}) % 100000) / 25000.0
                           + (hash(participant_key, {seed}) % 1000) / 2000.0 + {shift!r} AS nll,
                       1 + (hash(response_id) % 7)::BIGINT AS n_tokens
                FROM responses ORDER BY response_id
            ) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 100000)"""
        )
        return int(con.execute("SELECT count(*) FROM responses").fetchall()[0][0])
    finally:
        con.close()


def register_pairs(db: Path, n_pairs: int) -> None:
    sys.path.insert(0, str(ROOT))
    from psystats.stats.simulate import register_models
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.sql import scalar, transaction

    con = warehouse_db.open(db, "write", create=True)
    try:
        rows = []
        for k in range(n_pairs):
            base, post = model_names(k)
            if scalar(con, "SELECT count(*) FROM models WHERE name = ?", [post]):
                continue
            fam = f"fam{k % 4}"
            size = 1e8 * (1 + k // 4)
            rows.append(dict(name=base, family=fam, n_params=size, post_training="base"))
            rows.append(
                dict(
                    name=post,
                    family=fam,
                    n_params=size,
                    post_training="instruct" if k % 2 == 0 else "reasoning",
                    base_model=base,
                )
            )
        with transaction(con):
            register_models(con, rows)
    finally:
        con.close()


def score_rows(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM scores").fetchall()[0][0])
    finally:
        con.close()


PREP = (
    REPORT_HWM
    + """
import sys, time
from psystats.warehouse import db as warehouse_db
from psystats.stats.cells import build_cells, with_scale
t = time.perf_counter()
con = warehouse_db.open(sys.argv[1], "statement")
cells = with_scale(build_cells(con), "nats")
con.close()
print("PREP", len(cells), round(time.perf_counter() - t, 3))
_report_hwm()
"""
)

USER_QUERY = (
    "SELECT sr.model, count(*) AS n, avg(s.nll) AS mean_nll FROM scores s "
    "JOIN score_runs sr USING (run_id) GROUP BY sr.model ORDER BY sr.model"
)


def growth(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx, 3) if sxx else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, required=True, help="Scratch folder (needs GBs of disk).")
    ap.add_argument("--steps", default="4,8,16", help="Models imported at each step (even).")
    ap.add_argument("--keep", action="store_true", help="Keep an existing warehouse in --work.")
    a = ap.parse_args()
    steps = [int(s) for s in a.steps.split(",")]
    if any(s % 2 for s in steps):
        raise SystemExit("--steps must be even numbers (base/instruct pairs)")
    a.work.mkdir(parents=True, exist_ok=True)
    db = a.work / "scale.duckdb"
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f} at start",
        "memory_limit": settings.current().memory_limit,
        "steps": [],
    }
    if not (a.keep and db.exists()):
        for p in (db, Path(f"{db}.wal")):
            p.unlink(missing_ok=True)
        studies = sorted(p for p in a.data.iterdir() if p.is_dir())
        r = run_rss([*PSYSTATS, "--db", str(db), "ingest", *map(str, studies)])
        results["ingest"] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
        print(f"ingest: {r['seconds']} s, {r['rss_mib']} MiB", flush=True)
    register_pairs(db, max(steps) // 2)
    files = a.work / "files"
    files.mkdir(exist_ok=True)
    imported = 0
    import duckdb

    c = duckdb.connect(str(db), read_only=True)
    imported = c.execute("SELECT count(DISTINCT model) FROM score_runs").fetchall()[0][0]
    c.close()
    for n_models in steps:
        step: dict = {"models": n_models, "imports": []}
        while imported < n_models:
            k, which = divmod(imported, 2)
            name = model_names(k)[which]
            f = files / f"m{imported:03d}.parquet"
            n = write_scores_file(db, f, seed=imported, shift=0.2 * which)
            r = run_rss(
                [
                    *PSYSTATS,
                    "--db",
                    str(db),
                    "scores",
                    "import",
                    str(f),
                    "--model",
                    name,
                    "--condition",
                    "plain",
                ]
            )
            step["imports"].append(
                {
                    "rows": n,
                    "seconds": r["seconds"],
                    "rows_per_s": round(n / r["seconds"]),
                    "rss_mib": r["rss_mib"],
                }
            )
            print(f"  import {name}: {n} rows {r['seconds']} s {r['rss_mib']} MiB", flush=True)
            f.unlink()
            imported += 1
        step["score_rows"] = score_rows(db)
        step["load_avg"] = round(os.getloadavg()[0], 1)  # other jobs on a shared machine
        step["file_gib"] = round(db.stat().st_size / 2**30, 3)
        out = a.work / "cells.parquet"
        tmp = Path(f"{db}.tmp")
        r = run_rss([*PSYSTATS, "--db", str(db), "export", "cells", "-o", str(out)], tmp)
        step["export_cells"] = {
            "seconds": r["seconds"],
            "rss_mib": r["rss_mib"],
            "temp_peak_mib": r["temp_peak_mib"],
        }
        r = run_rss([sys.executable, "-c", PREP, str(db)], tmp)
        n_cells, prep_s = r["stdout"].split("PREP")[-1].split()
        step["fit_prep"] = {
            "seconds": float(prep_s),
            "rss_mib": r["rss_mib"],
            "cells": int(n_cells),
            "temp_peak_mib": r["temp_peak_mib"],
        }
        r = run_rss([*PSYSTATS, "--db", str(db), "report", "-o", str(a.work / "report.html")], tmp)
        step["report"] = {
            "seconds": r["seconds"],
            "rss_mib": r["rss_mib"],
            "temp_peak_mib": r["temp_peak_mib"],
        }
        r = run_rss(
            [
                *PSYSTATS,
                "--db",
                str(db),
                "scores",
                "export",
                "--model",
                model_names(0)[1],
                "-o",
                str(a.work / "export.parquet"),
            ]
        )
        step["scores_export"] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
        r = run_rss([*PSYSTATS, "--db", str(db), "sql", "--format", "csv", USER_QUERY])
        step["user_query"] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
        imp = step["imports"]
        if imp:
            step["import"] = {
                "rows_per_s": round(sum(i["rows"] for i in imp) / sum(i["seconds"] for i in imp)),
                "rss_mib": max(i["rss_mib"] for i in imp),
                "seconds": round(sum(i["seconds"] for i in imp) / len(imp), 3),
            }
        step["temp_dir_mib_after"] = (
            round(sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 2**20, 1)
            if tmp.exists()
            else 0.0
        )
        results["steps"].append(step)
        print(json.dumps({k: v for k, v in step.items() if k != "imports"}), flush=True)
        (a.work / "bench_scale.json").write_text(json.dumps(results, indent=1))
    xs = [s["score_rows"] for s in results["steps"]]
    results["exponents"] = {
        f"{what}.{m}": growth(xs, [s.get(what, {}).get(m) for s in results["steps"]])
        for what in ("import", "export_cells", "fit_prep", "report", "scores_export", "user_query")
        for m in ("seconds", "rss_mib")
    }
    results["exponents"]["file_gib"] = growth(xs, [s["file_gib"] for s in results["steps"]])
    (a.work / "bench_scale.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    shutil.rmtree(a.work / "files", ignore_errors=True)


def print_table(results: dict) -> None:
    print(f"\n{results['date']}; {results['machine']}; memory_limit {results['memory_limit']}\n")
    cols = ["import", "export_cells", "fit_prep", "report", "scores_export", "user_query"]
    print(
        "| score rows | file GiB | "
        + " | ".join(f"{c} s / MiB" for c in cols)
        + " | export_cells temp MiB | load |"
    )
    print("| ---: | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |")
    for s in results["steps"]:
        cells = [f"{s[c]['seconds']:.1f} / {s[c]['rss_mib']:.0f}" if c in s else "-" for c in cols]
        temp = s["export_cells"].get("temp_peak_mib", "-")
        print(
            f"| {s['score_rows']:,} | {s['file_gib']:.2f} | "
            + " | ".join(cells)
            + f" | {temp} | {s.get('load_avg', '-')} |"
        )
    print("\ngrowth exponents (log-log slope against score rows):")
    for k, v in results["exponents"].items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
