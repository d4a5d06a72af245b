#!/usr/bin/env bash
# Create .venv and install lmms-rekv (editable) with its test, clip and bench extras, every
# package pinned by the tested lock (lmms_rekv/requirements-lock.txt, written by
# scripts/lock.sh from a venv whose suite passed).
#   CPU (no NVIDIA GPU): the whole lock, torch/torchvision included (the pair these machines
#     serve from local disk -- a CUDA build, ~7 GB venv; see docs/installation.md).
#   GPU: the lock without its torch/torchvision/CUDA lines, so pip keeps or picks the torch
#     build that matches the machine.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: torch/torchvision at the locked
#     versions from that index first (PyTorch's small CPU-only wheels), then the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=lmms_rekv/requirements-lock.txt
TORCH_LINES='^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)=='
LOG=${INSTALL_LOG:-$VENV/install.log}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
: > "$LOG"
# pip's own output (and setuptools' notices) go to the log; a failure prints its end
STEP_NAME=install
# shellcheck source=step.sh
. scripts/step.sh
step "pip up to date" "$VENV/bin/python" -m pip install -q --upgrade pip
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pins=$(grep -E '^(torch|torchvision)==' "$LOCK" | tr '\n' ' ')
  # shellcheck disable=SC2086
  step "torch from $TORCH_INDEX_URL" "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX_URL" $pins
  grep -v -E "$TORCH_LINES" "$LOCK" > "$constraints"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  grep -v -E "$TORCH_LINES" "$LOCK" > "$constraints"
else
  cp "$LOCK" "$constraints"
fi
step "lmms-rekv (editable) and every dependency at its locked version -- a few minutes the first time" \
  "$VENV/bin/pip" install -q -c "$constraints" -e ".[test,clip,bench]"
"$VENV/bin/python" -m lmms_rekv.commands.doctor  # versions against the lock + functional checks; non-zero on a problem
