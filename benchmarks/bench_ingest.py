"""Ingest all of ../shared/data/psych201 into a fresh warehouse, then again.

Prints wall time, responses/s and peak RSS of each pass (each pass runs in a
fresh subprocess so its peak RSS is its own), and the ratio second/first.

    python benchmarks/bench_ingest.py [--data ../shared/data/psych201] [--repeat 3]

Targets (issue 2, 2-core machine): first pass < 60 s and < 2 GiB peak RSS;
second pass < 1/4 of the first.

    python benchmarks/bench_ingest.py --bomb-gib 1

Issue 11: a zip of a few MB holding one line of 1 GiB of spaces; prints the
time and peak RSS until the line is refused (target < 1 GiB RSS), in a fresh
subprocess.  The long property-based fuzz runs as the slow tests of
tests/test_ingest_fuzz.py (``PSYSTATS_FUZZ_EXAMPLES=N`` sets the budget).

    python benchmarks/bench_ingest.py --reader

Issue 21, item 4: `psystats ingest` of all the studies while another process
opens the warehouse read-only in a loop (default 30 s wait): the ingest's
wall time, and how long each read took from its open to its close (the time
it waited for a batch commit included); no read may fail.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM on Linux (ru_maxrss elsewhere).

    ru_maxrss also counts the peak of the image before ``exec`` (the forked
    parent), so a child of a big process would inherit the parent's figure.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_pass(db: str, data: str) -> dict:
    """Run in a child process: ingest, report time/RSS/counts as JSON."""
    sys.path.insert(0, str(ROOT))
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.ingest import ingest_paths
    from psystats.warehouse.sql import scalar

    t0 = time.perf_counter()
    con = warehouse_db.open(db, "write", create=True)
    results = ingest_paths(con, [data])
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "responses_added": sum(r.responses_added for r in results),
        "responses_total": scalar(con, "SELECT count(*) FROM responses"),
        "participants_total": scalar(con, "SELECT count(*) FROM participants"),
        "peak_rss_mib": peak_rss_mib(),
    }


def bomb_pass(db: str, path: str) -> dict:
    """Run in a child process: ingest the bomb, report the outcome, time and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from psystats.warehouse import db as warehouse_db
    from psystats.warehouse.errors import WarehouseError
    from psystats.warehouse.ingest import ingest_paths

    t0 = time.perf_counter()
    con = warehouse_db.open(db, "write", create=True)
    try:
        ingest_paths(con, [path])
        outcome = "accepted"
    except WarehouseError as e:
        outcome = str(e)
    return {
        "seconds": time.perf_counter() - t0,
        "outcome": outcome,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_bomb(gib: float) -> None:
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb" / "prompts.jsonl.zip"
        path.parent.mkdir()
        block = b" " * (16 << 20)
        line = b'{"text": "a <<b>>", "experiment": "e", "participant": 1}\n'
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            with zf.open("prompts.jsonl", "w", force_zip64=True) as f:
                f.write(line)
                for _ in range(int(gib * 64)):
                    f.write(block)
                f.write(b"\n" + line)
        out = subprocess.run(
            [sys.executable, __file__, "--bomb-child", str(Path(tmp) / "w.duckdb"), str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"bomb: {path.stat().st_size / 2**20:.1f} MiB zip holding a {gib:g} GiB line")
        print(f"  {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB: {r['outcome']}")


READER = r"""
import json, sys, time
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar
db, stop, out = sys.argv[1:4]
reads, failures = [], []
while not __import__("os").path.exists(stop):
    t = time.perf_counter()
    try:
        c = warehouse_db.open(db, on_wait=None)
        scalar(c, "SELECT count(*) FROM participants")
        c.close()
        reads.append(time.perf_counter() - t)
    except Exception as e:
        failures.append(str(e))
    time.sleep(0.05)
json.dump({"reads": reads, "failures": failures}, open(out, "w"))
"""


def run_reader(data: str) -> None:
    """`psystats ingest` with a reader looping beside it (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        db, stop, out = Path(tmp) / "w.duckdb", Path(tmp) / "stop", Path(tmp) / "reads.json"
        cli = [sys.executable, "-m", "psystats.cli", "--db", str(db)]
        subprocess.run([*cli, "init"], check=True, capture_output=True)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop), str(out)])
        time.sleep(1.0)
        t0 = time.perf_counter()
        subprocess.run([*cli, "ingest", "-q", data], check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        stop.touch()
        reader.wait(timeout=120)
        r = json.loads(out.read_text())
        waits = sorted(r["reads"])
        print(f"ingest (per-statement connection, batch commits): {seconds:.1f} s")
        print(
            f"reads: {len(waits)}, median {statistics.median(waits):.3f} s, "
            f"95th percentile {waits[int(0.95 * (len(waits) - 1))]:.3f} s, "
            f"max {waits[-1]:.3f} s, failures {len(r['failures'])}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "psych201"))
    ap.add_argument(
        "--repeat", type=int, default=3, help="fresh warehouses to time (median reported)"
    )
    ap.add_argument(
        "--bomb-gib", type=float, default=None, help="only the decompression-bomb case (GiB line)"
    )
    ap.add_argument("--reader", action="store_true", help="only the reader-during-ingest case")
    ap.add_argument("--child", nargs=2, metavar=("DB", "DATA"), help=argparse.SUPPRESS)
    ap.add_argument("--bomb-child", nargs=2, metavar=("DB", "ZIP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_pass(*args.child)))
        return
    if args.bomb_child:
        print(json.dumps(bomb_pass(*args.bomb_child)))
        return
    if args.bomb_gib:
        run_bomb(args.bomb_gib)
        return
    if args.reader:
        run_reader(args.data)
        return

    def run(db: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--child", db, args.data],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    firsts, seconds = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "bench.duckdb")
            first = run(db)
            second = run(db)
            firsts.append(first)
            seconds.append(second)
            print(
                f"run {i + 1}: first {first['seconds']:.1f}s "
                f"({first['responses_added'] / first['seconds']:,.0f} responses/s, "
                f"peak RSS {first['peak_rss_mib']:.0f} MiB); second {second['seconds']:.2f}s "
                f"(+{second['responses_added']} responses)"
            )
    f_med = statistics.median(r["seconds"] for r in firsts)
    s_med = statistics.median(r["seconds"] for r in seconds)
    rss = max(r["peak_rss_mib"] for r in firsts)
    n = firsts[0]["responses_total"]
    print(f"\nparticipants {firsts[0]['participants_total']:,}, responses {n:,}")
    print(
        f"first ingest   median {f_med:.1f} s  ({n / f_med:,.0f} responses/s), max peak RSS {rss:.0f} MiB"
    )
    print(f"second ingest  median {s_med:.2f} s  (ratio second/first {s_med / f_med:.3f})")


if __name__ == "__main__":
    main()
