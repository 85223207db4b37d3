#!/usr/bin/env bash
# The GPU throughput check of issue 4, prepared here and run once on a lent H100/H200.
#
# Here (a machine with the venv, ../shared/data/psych201 and the SmolLM2 wheel), once:
#     bash benchmarks/gpu_check.sh --prepare
# writes, into folders git ignores:
#     .cache/gpu-bench/tokenizer/          the SmolLM2 tokenizer (from its GGUF)
#     .cache/gpu-bench/participants.jsonl  64 real Psych-201 transcripts (~370k tokens, 4.5 MiB)
#     .whl/duckdb-*.whl                    duckdb for Python 3.12 (the GPU image lacks it)
# On the GPU machine (device tool: carry [".whl", ".cache/gpu-bench"], timeout_s 480):
#     bash benchmarks/gpu_check.sh
# Output: the table on stdout, and $OUT/bench.json + $OUT/bench.log (JSON rewritten after
# every method, so a run cut short keeps what it measured).  Environment knobs:
#     SHAPES="1.7b 8b 0.6b"  PARTICIPANTS=48  METHODS=""  (empty: all five methods)
#     MODEL_CLASSES=1  (issue 14, after the main table: a Qwen2.5-VL-shaped model scored on
#                       text, $OUT/bench_vl.json, and the 1.7b model loaded through
#                       --device-map auto with 2 GiB on the GPU and the rest offloaded to
#                       CPU, $OUT/bench_devmap.json; MODEL_CLASSES=0 skips them)
set -euo pipefail
cd "$(dirname "$0")/.."
PREP=.cache/gpu-bench

if [ "${1:-}" = "--prepare" ]; then
    if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
    python benchmarks/bench_scoring.py --prepare "$PREP" --participants 64 --max-tokens 32768
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl duckdb==2.0.1
    du -sh "$PREP" .whl
    exit 0
fi

[ -f "$PREP/participants.jsonl" ] || { echo "missing $PREP: run 'bash benchmarks/gpu_check.sh --prepare' first and carry it"; exit 2; }
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, duckdb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'duckdb', duckdb.__version__)"

args=()
for s in ${SHAPES:-1.7b 8b 0.6b}; do args+=(--shape "$s"); done
for m in ${METHODS:-}; do args+=(--method "$m"); done
set -o pipefail
python3 benchmarks/bench_scoring.py --device cuda --dtype bfloat16 \
    --data "$PREP/participants.jsonl" --tokenizer "$PREP/tokenizer" \
    --participants "${PARTICIPANTS:-48}" --json "$OUT/bench.json" "${args[@]}" 2>&1 | tee "$OUT/bench.log"

if [ "${MODEL_CLASSES:-1}" = "1" ]; then
    # Vision-language architecture (text only; Qwen VL has no FlexAttention support in
    # transformers, so the packed method is the dense one).
    python3 benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --arch qwen2_5_vl \
        --shape 1.7b --method seed --method psystats-1 --method psystats-packed \
        --data "$PREP/participants.jsonl" --tokenizer "$PREP/tokenizer" \
        --participants "${PARTICIPANTS:-48}" --json "$OUT/bench_vl.json" 2>&1 | tee -a "$OUT/bench.log"
    # Device map: the same weights through accelerate with CPU offload (the 70B path).
    python3 benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --shape 1.7b \
        --method psystats-1 --method psystats-devmap --device-map auto \
        --max-memory 0=2GiB --max-memory cpu=64GiB \
        --data "$PREP/participants.jsonl" --tokenizer "$PREP/tokenizer" \
        --participants 16 --json "$OUT/bench_devmap.json" 2>&1 | tee -a "$OUT/bench.log"
fi
