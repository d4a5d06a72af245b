#!/usr/bin/env bash
# The GPU campaign in one command, on the device tool's machine (its own python3 and torch):
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)   # after: bash scripts/gpu_wheels.sh
# Installs the carried wheels (the locked transformers and what it needs) when the machine's
# transformers is not the locked one,
# then runs `python -m benchmarks.gpu_campaign` (real shapes, bf16; extra arguments pass on)
# into $OUT/gpu (or benchmarks/gpu-campaign without $OUT), logging to $OUT/gpu/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
locked=$(sed -n 's/^transformers==//p' lmms_rekv/requirements-lock.txt)
have=$("$python" -c "import transformers; print(transformers.__version__)" 2>/dev/null || echo none)
if [ "$have" != "$locked" ] && compgen -G ".whl/*.whl" >/dev/null; then  # the machine's own transformers is not the tested one
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rekv-site .whl/*.whl
    export PYTHONPATH="/tmp/rekv-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the package as the wheel lays it out (pyproject's package-dir: patches/ and tasks/ inside
# lmms_rekv), without building or installing it; the checkout gives research/ and benchmarks/
src=/tmp/rekv-src
rm -rf "$src" && mkdir -p "$src"
cp -r lmms_rekv "$src/lmms_rekv" && cp -r patches "$src/lmms_rekv/patches" && cp -r tasks "$src/lmms_rekv/tasks"
export PYTHONPATH="$src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=$(realpath -m "${OUT:-benchmarks}/gpu-campaign")
mkdir -p "$out"
cd "$src"  # python puts its working folder first on the path: not the checkout's lmms_rekv/ (no patches/ in it)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
"$python" -c "import torch, transformers, lmms_rekv.patches; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), 'lmms_rekv', lmms_rekv.__file__)"
"$python" -m benchmarks.gpu_campaign --out "$out" "$@" 2>&1 | tee "$out/log.txt"
