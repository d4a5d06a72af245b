#!/usr/bin/env bash
# Build the wheel and sdist, install the wheel into a fresh venv through the tested lock,
# and prove the installed package works: doctor, the test suite run against site-packages
# (scripts/test_installed.sh), and the README's lmms-eval rekv_demo run with no failed
# document. Used by CI on every change.   bash scripts/check_wheel.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=${1:-$(mktemp -d -t rekv-wheel-XXXX)}
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m venv "$WORK/venv"
LOCK=$ROOT/lmms_rekv/requirements-lock.txt
LOG="$WORK/check_wheel.log"
quiet() {  # pip's and the build's own output go to the log; a failure prints its end
  if ! "$@" >> "$LOG" 2>&1; then
    echo "check_wheel: FAILED: $* -- the end of its output:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
quiet "$WORK/venv/bin/python" -m pip install -q --upgrade pip
quiet "$WORK/venv/bin/pip" install -q -c "$LOCK" build "setuptools>=77" wheel
quiet "$WORK/venv/bin/python" -m build --no-isolation --wheel --sdist --outdir "$WORK/dist" .
wheel=$(ls "$WORK"/dist/lmms_rekv-*.whl)
echo "check_wheel: built $(basename "$wheel") and $(basename "$WORK"/dist/lmms_rekv-*.tar.gz)"
quiet "$WORK/venv/bin/pip" install -q -c "$LOCK" "$wheel[test,clip,bench]"
bash scripts/test_installed.sh "$WORK/venv"
cd "$WORK"
export HF_HOME="$WORK/hf" HF_HUB_OFFLINE=1 LMMS_REKV_HOME="$WORK/home"
"$WORK/venv/bin/rekv-eval" --model rekv_llava_ov --model_args pretrained=miniature,window_tokens=16,topk_frames=4 \
  --tasks rekv_demo --output_path "$WORK/out" --log_samples
echo "check_wheel: the installed wheel passed (doctor, suite, rekv_demo)"
cd "$ROOT"
