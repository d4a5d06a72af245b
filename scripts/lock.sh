#!/usr/bin/env bash
# Refresh the tested lock (lmms_rekv/requirements-lock.txt).
# Resolves the newest versions pyproject.toml's ranges allow into a scratch venv (on a CPU
# machine with the torch/torchvision pair of constraints-cpu.txt), installs the package from
# its wheel, runs the test suite against the installed package, and rewrites the lock only
# when the suite is green. Run it when you want newer dependencies; commit the new lock with
# a note of what changed. A red suite leaves the lock untouched and names the scratch venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SCRATCH=${SCRATCH:-$(mktemp -d -t rekv-lock-XXXX)}
LOCK=lmms_rekv/requirements-lock.txt
"$PYTHON" -m venv "$SCRATCH/venv"
"$SCRATCH/venv/bin/python" -m pip install -q --upgrade pip build "setuptools>=77" wheel
"$SCRATCH/venv/bin/python" -m build -q --no-isolation --wheel --outdir "$SCRATCH/dist" . >/dev/null
wheel=$(ls "$SCRATCH"/dist/lmms_rekv-*.whl)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$SCRATCH/venv/bin/pip" install -q "$wheel[test,clip,bench]"
else
  "$SCRATCH/venv/bin/pip" install -q -c constraints-cpu.txt "$wheel[test,clip,bench]"
fi
bash scripts/freeze_lock.sh "$SCRATCH/venv" "$SCRATCH/lock.txt"
if ! LMMS_REKV_LOCK="$SCRATCH/lock.txt" bash scripts/test_installed.sh "$SCRATCH/venv"; then
  echo "lock.sh: the suite failed with the newest versions; lock unchanged (venv: $SCRATCH/venv)" >&2
  exit 1
fi
echo "lock.sh: suite green; changes to $LOCK:"
diff <(grep '==' "$LOCK" 2>/dev/null || true) <(grep '==' "$SCRATCH/lock.txt") || true
cp "$SCRATCH/lock.txt" "$LOCK"
rm -rf "$SCRATCH"
echo "lock.sh: wrote $LOCK ($(grep -c '==' "$LOCK") pins); run the suite once more and commit it"
