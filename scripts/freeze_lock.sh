#!/usr/bin/env bash
# Write the lock of a venv (every installed package but lmms-rekv and pip, pinned exactly).
#   bash scripts/freeze_lock.sh VENV OUT
set -euo pipefail
VENV=$1 OUT=$2
{
  echo "# Tested lock for lmms-rekv: every package of a venv whose test suite passed."
  echo "# Written on $(date -u +%Y-%m-%d) (python $("$VENV/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())')) by scripts/lock.sh; do not edit by hand."
  echo "# scripts/install.sh and CI install through it (GPU: without the torch/CUDA lines)."
  "$VENV/bin/pip" freeze --all --exclude lmms-rekv --exclude pip | grep -v '^-e ' | LC_ALL=C sort -f
} > "$OUT"
