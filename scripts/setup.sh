#!/usr/bin/env bash
# One-time set-up: torch (kept if already installed), then rlmin with its test extra.
# A CPU machine of this kind gets the CPU wheel of torch 2.13.0 that lies on its disk; a GPU
# machine keeps the CUDA torch it has. An unpinned install would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[dev]"
"$PY" -c "import torch, rlmin; print(f'rlmin installed (torch {torch.__version__})')"
