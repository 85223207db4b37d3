"""What progress costs: `psystats ingest` of all of ../shared/data/psych201 with its
progress (stderr not a terminal: plain lines) and with -q, first and second pass.

The progress counts the lines of the files it will read before reading them
(decompressing each zip once more); a second pass skips files by their hash
without counting.  Each command runs in a fresh process, the two variants
alternating, ``--repeat`` times; medians are printed.

    python benchmarks/bench_progress.py [--data ../shared/data/psych201] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(db: Path, data: str, quiet: bool) -> float:
    cmd = [sys.executable, "-m", "psystats.cli", "--db", str(db), "ingest", data]
    cmd += ["-q"] if quiet else []
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(res.stderr)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "psych201"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    times: dict[tuple[bool, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for quiet in (False, True):
                db = Path(tmp) / f"w-{i}-{quiet}.duckdb"
                for n in (1, 2):
                    times.setdefault((quiet, n), []).append(run(db, args.data, quiet))
    for (quiet, n), ts in sorted(times.items()):
        label = "-q" if quiet else "progress"
        print(f"{label:9} pass {n}: median {statistics.median(ts):.2f} s  ({ts})")
    for n in (1, 2):
        ratio = statistics.median(times[(False, n)]) / statistics.median(times[(True, n)])
        print(f"pass {n}: progress / -q = {ratio:.3f}")


if __name__ == "__main__":
    main()
