#!/usr/bin/env bash
# Set up a development/runtime environment in .venv: CPU PyTorch, metis and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU wheel of torch 2.13.0 (an unpinned `torch` would pull a multi-GB CUDA build).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" \
  || python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -e ".[test]"
echo "metis installed in $(pwd)/.venv — activate with: . .venv/bin/activate" >&2
