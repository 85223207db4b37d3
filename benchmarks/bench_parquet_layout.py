"""The two scores layouts side by side (issue 12 item 4): DuckDB file vs Parquet files.

Builds a warehouse of the local Psych-201 studies once, then for each layout
(``duckdb``, ``parquet``) copies it, imports ``--models`` synthetic models
(as ``bench_scale.py`` does: one Parquet file of per-response NLLs per model),
merges one more model delivered as ``--shard`` style shards (one unit per
study), and measures, each command in its own process (time, peak RSS):

* ``scores import`` per model; ``merge`` of the shards (Parquet: registered by
  hard link; DuckDB: rows copied into the file);
* the size of the DuckDB file and of the scores folder;
* ``export cells``, the ``fit effects`` data preparation, ``scores export`` of
  one model, one user query through ``psystats sql``;

and checks that both layouts give the same cells.

    nice python benchmarks/bench_parquet_layout.py --work /tmp/layouts --models 4

Results go to ``<work>/bench_parquet_layout.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import (  # noqa: E402  (a sibling script, not a package)
    DEFAULT_DATA,
    PREP,
    PSYSTATS,
    USER_QUERY,
    folder_mib,
    model_names,
    register_pairs,
    run_rss,
    score_rows,
    write_scores_file,
)

SHARD_MODEL = "synth/shard-merged"


def write_shards(db: Path, out: Path) -> int:
    """Shards of one more model, one unit per study, as `score --shard 0/1` writes them
    (synthetic NLLs; not timed).  Returns the rows."""
    import pyarrow as pa

    from psystats.scoring.assemble import OPTION_SCHEMA, SCORE_SCHEMA, ScoreBatch
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.shard_files import done_marker_path, write_shard
    from psystats.scoring.shard_keys import _write_json_atomic, run_dir, run_key
    from psystats.scoring.shard_units import WorkUnit
    from psystats.stats.simulate import register_models
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.sql import scalar, transaction

    con = warehouse_db.open(db, "write", create=True)
    if not scalar(con, "SELECT count(*) FROM models WHERE name = ?", [SHARD_MODEL]):
        with transaction(con):
            register_models(con, [{"name": SHARD_MODEL, "post_training": "base"}])
    studies = [s for (s,) in con.execute("SELECT study FROM studies ORDER BY 1").fetchall()]
    key = run_key(SHARD_MODEL, "plain", {}, {"synthetic": True}, {})
    rdir = run_dir(out, key)
    units, rows = [], 0
    for i, study in enumerate(studies):
        part = load_inputs(con, studies=[study])
        ids = [r for p in part for r in p.response_ids]
        n = len(ids)
        scores = pa.table(
            {
                "response_id": pa.array(ids, pa.int64()),
                "nll": pa.array([1.0 + (r % 997) / 300 for r in ids], pa.float64()),
                "n_tokens": pa.array([1 + r % 7 for r in ids], pa.int32()),
                "first_token_nll": pa.nulls(n, pa.float64()),
                "top1_all": pa.nulls(n, pa.bool_()),
                "top1_first": pa.nulls(n, pa.bool_()),
                "first_token_entropy": pa.nulls(n, pa.float64()),
            }
        ).cast(SCORE_SCHEMA)
        batch = ScoreBatch(
            scores=scores,
            options=OPTION_SCHEMA.empty_table(),
            tokens=None,
            participant_keys=[p.participant_key for p in part],
            counts={},
        )
        unit = WorkUnit(f"s0000of0001-{i}", tuple(p.participant_key for p in part), n)
        write_shard(rdir, key, unit, batch, part, shard=(0, 1))
        units.append(unit.unit_id)
        rows += n
    con.close()
    _write_json_atomic(
        done_marker_path(rdir, 0, 1),
        {"i": 0, "n": 1, "units": units, "partition_sha256": "synthetic", "counts": {}},
    )
    return rows


def measure(layout: str, base: Path, work: Path, n_models: int, shards: Path) -> dict:
    db = work / f"{layout}.duckdb"
    for p in (db, Path(f"{db}.wal"), Path(f"{db}.scores")):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    shutil.copy(base, db)
    if layout == "parquet":
        run_rss([*PSYSTATS, "--db", str(db), "init", "--scores-layout", "parquet"])
    res: dict = {"layout": layout, "imports": []}
    files = work / "files"
    files.mkdir(exist_ok=True)
    for i in range(n_models):
        k, which = divmod(i, 2)
        f = files / f"m{i:03d}.parquet"
        n = write_scores_file(base, f, seed=i, shift=0.2 * which)
        r = run_rss(
            [
                *PSYSTATS,
                "--db",
                str(db),
                "scores",
                "import",
                str(f),
                "--model",
                model_names(k)[which],
                "--condition",
                "plain",
            ]  # fmt: skip
        )
        res["imports"].append({"rows": n, "seconds": r["seconds"], "rss_mib": r["rss_mib"]})
        print(f"  {layout} import {i}: {n} rows {r['seconds']} s {r['rss_mib']} MiB", flush=True)
        f.unlink()
    r = run_rss([*PSYSTATS, "--db", str(db), "merge", "-q", str(shards)])
    res["merge"] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
    print(f"  {layout} merge: {r['seconds']} s {r['rss_mib']} MiB", flush=True)
    res["score_rows"] = score_rows(db)
    res["file_mib"] = round(db.stat().st_size / 2**20, 1)
    res["scores_dir_mib"] = round(folder_mib(Path(f"{db}.scores")), 1)
    cells = work / f"cells-{layout}.csv"
    for name, cmd in (
        ("export_cells", ["export", "cells", "-o", str(cells)]),
        (
            "scores_export",
            [
                "scores",
                "export",
                "--model",
                model_names(0)[0],
                "-o",
                str(work / f"export-{layout}.parquet"),
            ],
        ),  # fmt: skip
        ("user_query", ["sql", "--format", "csv", USER_QUERY]),
    ):
        r = run_rss([*PSYSTATS, "--db", str(db), *cmd], Path(f"{db}.tmp"))
        res[name] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
        print(f"  {layout} {name}: {r['seconds']} s {r['rss_mib']} MiB", flush=True)
    r = run_rss([sys.executable, "-c", PREP, str(db)])
    res["fit_prep"] = {"seconds": r["seconds"], "rss_mib": r["rss_mib"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, required=True, help="Scratch folder (needs GBs of disk).")
    ap.add_argument("--models", type=int, default=4, help="Imported models per layout (even).")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    base = a.work / "base.duckdb"
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f} at start",
        "layouts": [],
    }
    if not base.exists():
        studies = sorted(p for p in a.data.iterdir() if p.is_dir())
        run_rss([*PSYSTATS, "--db", str(base), "ingest", *map(str, studies)])
    register_pairs(base, a.models // 2)
    shards = a.work / "shards"
    if shards.exists():
        shutil.rmtree(shards)
    results["shard_rows"] = write_shards(base, shards)
    for layout in ("duckdb", "parquet"):
        results["layouts"].append(measure(layout, base, a.work, a.models, shards))
    import pandas as pd

    c = [pd.read_csv(a.work / f"cells-{lay}.csv") for lay in ("duckdb", "parquet")]
    num = c[0].select_dtypes("number").columns
    results["cells_max_abs_diff"] = float((c[0][num] - c[1][num]).abs().max().max())
    (a.work / "bench_parquet_layout.json").write_text(json.dumps(results, indent=1))
    print_table(results)


def print_table(r: dict) -> None:
    print(f"\n{r['date']}, {r['machine']}; shard rows merged: {r['shard_rows']:,}; "
          f"cells max |diff| between layouts: {r['cells_max_abs_diff']:.1e}\n")  # fmt: skip
    print("| measure | " + " | ".join(x["layout"] for x in r["layouts"]) + " |")
    print("| --- | " + " | ".join("---" for _ in r["layouts"]) + " |")

    def row(name: str, f) -> None:
        print(f"| {name} | " + " | ".join(f(x) for x in r["layouts"]) + " |")

    row("score rows", lambda x: f"{x['score_rows']:,}")
    row("DuckDB file (MiB)", lambda x: f"{x['file_mib']}")
    row("scores folder (MiB)", lambda x: f"{x['scores_dir_mib']}")
    row(
        "scores import, mean per model (s / MiB)",
        lambda x: (
            f"{sum(i['seconds'] for i in x['imports']) / len(x['imports']):.1f} / "
            f"{max(i['rss_mib'] for i in x['imports']):.0f}"
        ),
    )
    for key in ("merge", "export_cells", "fit_prep", "scores_export", "user_query"):
        row(f"{key} (s / MiB)", lambda x, k=key: f"{x[k]['seconds']:.1f} / {x[k]['rss_mib']:.0f}")


if __name__ == "__main__":
    main()
