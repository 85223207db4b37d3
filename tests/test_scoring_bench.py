"""The scoring benchmark runs end to end on CPU with the tiny shape (CI smoke test).

It goes the way ``benchmarks/gpu_check.sh`` goes on a GPU machine: ``--prepare``
writes the tokenizer and the selected transcripts, then the benchmark reads them
with ``--data participants.jsonl --tokenizer DIR`` (no GGUF, no Psych-201 folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(ROOT / "benchmarks" / "bench_scoring.py")


@pytest.mark.slow
def test_bench_scoring_tiny_cpu(smollm2_gguf, psych201, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prep = tmp_path / "prep"
    r = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--device",
            "cpu",
            "--prepare",
            str(prep),
            "--participants",
            "3",
            "--max-tokens",
            "900",
            "--data",
            str(psych201),
            "--gguf",
            str(smollm2_gguf),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((prep / "participants.jsonl").read_text().splitlines()) == 3
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--device",
            "cpu",
            "--shape",
            "tiny",
            "--participants",
            "3",
            "--max-tokens",
            "900",
            "--no-warmup",
            "--data",
            str(prep / "participants.jsonl"),
            "--tokenizer",
            str(prep / "tokenizer"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max rel NLL diff" in r.stdout
    data = json.loads(out.read_text())
    assert [row["method"] for row in data["rows"]] == [
        "seed",
        "psystats-1",
        "psystats-packed",
        "psystats-flex",
    ]
    for row in data["rows"]:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["participants"] == 3
        # Every method scores the same tokens: float32 agrees with the float32 reference.
        assert row["rel_diff"] < 1e-4
