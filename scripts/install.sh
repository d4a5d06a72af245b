#!/usr/bin/env bash
# Create .venv and install lmms-rekv (editable) with its test extra.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build (constraints-cpu.txt)
# and the CUDA-only torchvision/timm that lmms-eval drags in are removed (see DESIGN §4);
# with a GPU it is the ordinary `pip install -e ".[test]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q -e ".[test]"
else
  "$VENV/bin/pip" install -q -c constraints-cpu.txt -e ".[test]"
  "$VENV/bin/pip" uninstall -q -y torchvision timm 2>/dev/null || true
fi
"$VENV/bin/python" -c "import torch, transformers, lmms_rekv; print('lmms-rekv ready: torch', torch.__version__, '| transformers', transformers.__version__)"
