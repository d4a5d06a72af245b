#!/usr/bin/env bash
# Create .venv-reference: the venv that runs lmms-eval's OWN `llava_onevision` model class
# (LLaVA-NeXT's `llava` package, not on PyPI) as the reference some tests compare against.
# LLaVA-NeXT does not import on the project's transformers 5 (shared/reference/llava-next/README.md),
# so this venv holds only what must differ -- transformers 4.51.3 and the hub/datasets/tokenizers
# versions it accepts, plus the `llava` package (--no-deps) -- and sees the project's .venv
# (torch, lmms-eval, decord, av, ...) underneath through a .pth file: its own site-packages win.
# Needs the project's .venv (scripts/install.sh). Reuses a complete .venv-reference (marker file).
# The llava source: ${REKV_SHARED:-../shared}/reference/llava-next, relative to the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE=${BASE_VENV:-.venv}
VENV=.venv-reference
MARKER=$VENV/.reference-complete
SHARED=${REKV_SHARED:-../shared}
SRC=$SHARED/reference/llava-next
# exact versions: transformers 4.51.3 wants tokenizers <0.22 and huggingface_hub <1;
# huggingface_hub <1 needs datasets <5, and datasets 4.8.5 needs fsspec <=2026.2.0
PINS=(transformers==4.51.3 tokenizers==0.21.4 huggingface_hub==0.36.2 datasets==4.8.5 fsspec==2026.2.0)
LOG=$VENV/install.log

if [ -x "$VENV/bin/python" ] && [ "$(cat "$MARKER" 2>/dev/null)" = "${PINS[*]}" ]; then
  echo "reference_venv: $VENV is complete (remove it to rebuild)"
  exit 0
fi
if [ ! -d "$SRC/llava" ]; then
  echo "reference_venv: no LLaVA-NeXT copy at $SRC (set REKV_SHARED to the folder holding reference/llava-next)" >&2
  exit 2
fi
if [ ! -x "$BASE/bin/python" ]; then
  echo "reference_venv: no $BASE -- run scripts/install.sh first" >&2
  exit 1
fi
rm -f "$MARKER"
[ -x "$VENV/bin/python" ] || "$BASE/bin/python" -m venv "$VENV"
: > "$LOG"
STEP_NAME=reference_venv
# shellcheck source=step.sh
. scripts/step.sh
base_site=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base_site=$(cd "$base_site" && pwd -P)
# the project's packages underneath, appended after this venv's own site-packages
printf 'import site; site.addsitedir(%s)\n' "\"$base_site\"" > "$own_site/zz_rekv_base_venv.pth"
step "${PINS[*]}" "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$SRC/llava" "$SRC/pyproject.toml" "$SRC/README.md" "$work/"
[ -f "$SRC/LICENSE" ] && cp "$SRC/LICENSE" "$work/"
step "llava (LLaVA-NeXT, --no-deps) from $SRC" "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$work"
# offline: llava.conversation asks the hub for a Llama-3 tokenizer at import (and retries)
step "import check" env HF_HUB_OFFLINE=1 "$VENV/bin/python" -c \
  "import transformers, llava.model.builder, lmms_eval.models.simple.llava_onevision; assert transformers.__version__ == '4.51.3', transformers.__version__"
echo "${PINS[*]}" > "$MARKER"
echo "reference_venv: ready ($ROOT/$VENV)"
