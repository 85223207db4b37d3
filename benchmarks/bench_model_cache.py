"""First and second load of the SmolLM2-135M GGUF: the converted-model cache (issue 22 item 3).

Each load runs in a fresh Python process (as a second ``psystats score``
would), loading the tokenizer and the model the way the scorer does
(``scoring.loader.load_tokenizer`` + ``load_model``, float32, CPU), and is
timed from the start of the loads (the imports of torch, transformers and
the Llama classes excluded, they cost the same either way; ``--cold-imports``
includes them):

* ``first``:  an empty cache: the GGUF is dequantised and its tokenizer
  converted, then both are stored (``scoring.model_cache``);
* ``second``: the same file again: both are read back from the cache,
  after checking the entry's sizes and SHA-256.

``--repeats N`` alternates the two N times, each pair on a new empty cache
folder, and reports medians and their ratio.  The start-up self-check of the
scorer is not part of either (it is the same either way).

    .venv/bin/python benchmarks/bench_model_cache.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t = time.perf_counter()
from psystats.scoring import loader
from psystats.scoring.tiny import find_smollm2_gguf
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
p = find_smollm2_gguf()
row = {"name": "SmolLM2-135M-Instruct", "source": str(p.parent), "gguf_file": p.name}
if not COLD_IMPORTS:
    t = time.perf_counter()
tok = loader.load_tokenizer(row)
t_tok = time.perf_counter() - t
lm = loader.load_model(row, dtype="float32")
print(json.dumps({"tokenizer_s": t_tok, "total_s": time.perf_counter() - t}))
"""


def load_once(cache: Path, cold_imports: bool) -> dict:
    env = dict(os.environ, PSYSTATS_MODEL_CACHE=str(cache), TQDM_DISABLE="1")
    code = f"COLD_IMPORTS = {cold_imports}\n" + CHILD
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cold-imports",
        action="store_true",
        help="start the clock before importing torch, transformers and the Llama classes "
        "(what a user waits for; the imports cost the same with or without the cache)",
    )
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"first": [], "second": []}
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="psystats-bench-cache-") as tmp:
            for label in ("first", "second"):
                r = load_once(Path(tmp), args.cold_imports)
                runs[label].append(r)
                print(
                    f"repeat {i + 1}: {label:6s} load {r['total_s']:6.2f} s "
                    f"(tokenizer {r['tokenizer_s']:5.2f} s)",
                    flush=True,
                )
    med = {k: statistics.median(r["total_s"] for r in v) for k, v in runs.items()}
    print(
        f"median first {med['first']:.2f} s, second {med['second']:.2f} s, "
        f"ratio {med['first'] / med['second']:.1f}x ({args.repeats} repeats)"
    )


if __name__ == "__main__":
    main()
