"""Tokens each condition forwards over whole studies: the cost of history windows against plain.

Forward cost grows with the tokens forwarded (plus attention over them), and
those are fixed by the plan alone: this plans every participant of each study
under ``plain`` and ``history:K`` with the SmolLM2 tokenizer (no model is
loaded, so it runs in seconds on a busy machine) and prints the tokens
forwarded, the ratio to ``plain``, and what one sequence per response (the
sum of every reduced transcript's tokens) would have cost instead.

    python benchmarks/bench_history_tokens.py --study franke2024bayesian \\
        --study guenther2023associations_individual --study shahar2019twosteptask
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

KS = (0, 1, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/psych201")
    )
    ap.add_argument("--study", action="append", default=[])
    ap.add_argument("--max-context", type=int, default=8192)  # SmolLM2-135M's positions
    ap.add_argument("--participants", type=int, default=None, help="first N of each study")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from psystats.scoring.config import ScorerConfig
    from psystats.scoring.inputs import load_inputs
    from psystats.scoring.plan import Planner
    from psystats.scoring.tiny import save_smollm2_tokenizer
    from psystats.scoring.tokenize import leading_special_ids
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths

    studies = args.study or ["franke2024bayesian", "guenther2023associations_individual"]
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(save_smollm2_tokenizer(Path(tmp) / "tok")))
        prefix = leading_special_ids(tok)
        con = warehouse_db.open(Path(tmp) / "b.duckdb", "write", create=True)
        ingest_paths(con, [Path(args.data) / s for s in studies])
        by_study = {s: load_inputs(con, studies=[s])[: args.participants] for s in studies}
        con.close()
    print(f"{'study':<38} {'condition':<11} {'tokens':>11} {'x plain':>8} {'plan s':>7}")
    for study, inputs in by_study.items():
        plain = None
        for cond in ["plain"] + [f"history:{k}" for k in KS]:
            planner = Planner(ScorerConfig(condition=cond), tok, prefix, args.max_context)
            t = time.perf_counter()
            prepared, counts = planner.prepare(inputs)
            seconds = time.perf_counter() - t
            n = sum(p.n_tokens for p in prepared)
            plain = plain or n or 1
            skipped = sum(v for k, v in counts.items() if k.startswith("skipped:"))
            print(
                f"{study:<38} {cond:<11} {n:>11,} {n / plain:>8.2f} {seconds:>7.1f}"
                + (f"  ({skipped} skipped)" if skipped else "")
            )
        per_response = sum(
            len(tok(_reduced(p, i), add_special_tokens=False)["input_ids"])
            for p in inputs
            for i in range(len(p.spans))
        )
        print(f"{study:<38} {'1 seq/resp':<11} {per_response:>11,} {per_response / plain:>8.2f}")


def _reduced(p, i: int) -> str:
    """history:0's reduced transcript of response i, cut after the response."""
    text = p.text[: p.spans[i][1]]
    for a, b in reversed(p.spans[:i]):
        text = text[: a - 2] + text[b + 2 :]
    return text


if __name__ == "__main__":
    main()
