#!/usr/bin/env bash
# Create .venv and install lmms-rekv (editable) with its test, clip and bench extras.
# On a machine without an NVIDIA GPU, torch/torchvision are pinned to the pair served from
# local disk (constraints-cpu.txt) so that pip downloads no other build; with a GPU it is
# the ordinary `pip install -e ".[test,clip,bench]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q -e ".[test,clip,bench]"
else
  "$VENV/bin/pip" install -q -c constraints-cpu.txt -e ".[test,clip,bench]"
fi
"$VENV/bin/python" -c "import torch, torchvision, transformers, open_clip, lmms_rekv; print('lmms-rekv ready: torch', torch.__version__, '| transformers', transformers.__version__, '| open_clip', open_clip.__version__)"
